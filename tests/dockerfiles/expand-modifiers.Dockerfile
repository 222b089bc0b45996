ARG IMAGE_TAG=3.19.1
ARG REPO=docker.io/library/alpine
FROM ${REPO}:${IMAGE_TAG%.*}
# Global ARGs are visible inside the stage only when redeclared.
ARG IMAGE_TAG
ARG FULL=/usr/local/lib/tool-v1.2.3.tar.gz
ARG EMPTY=
ARG UNSET
ENV BASE=${FULL##*/} \
    STEM=${FULL%%.tar*} \
    DIR=${FULL%/*} \
    NOPREFIX=${FULL#/usr} \
    DASHED=${IMAGE_TAG//./-} \
    FIRST=${IMAGE_TAG/./_} \
    DEF_UNSET=${UNSET:-fallback} \
    DEF_EMPTY_COLON=${EMPTY:-fallback} \
    DEF_EMPTY_NOCOLON=${EMPTY-fallback} \
    ALT_SET=${FULL:+yes} \
    ALT_EMPTY=${EMPTY+set-but-empty}
WORKDIR /opt/${BASE%.tar.gz}
