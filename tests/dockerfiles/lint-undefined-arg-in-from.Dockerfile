ARG VERSION=3.19
FROM alpine:${VERSON:-3.19} AS base
RUN echo hi
