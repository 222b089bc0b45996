FROM alpine
ARG TAG
ENV T="${TAG:?TAG must be set}"
