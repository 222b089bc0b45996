FROM alpine
RUN --network=bridge apk add curl
