# syntax=docker/dockerfile:1-labs
FROM alpine:3.19
RUN --network=none echo "no network here"
RUN --network=host apk add --no-cache curl
RUN --security=insecure mount -t tmpfs none /mnt
