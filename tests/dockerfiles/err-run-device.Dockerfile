FROM alpine:3.19
RUN --device=/dev/fuse fusermount -V
