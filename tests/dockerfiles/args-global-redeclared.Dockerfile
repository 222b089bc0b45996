ARG VERSION=1.0
ARG DISTRO=alpine
FROM ${DISTRO}:latest
# Without redeclaring, VERSION is not visible inside the stage.
RUN echo "version is [$VERSION]"
ARG VERSION
RUN echo "version is [$VERSION]"
ARG DISTRO=overridden-in-stage
LABEL distro=$DISTRO version=$VERSION
