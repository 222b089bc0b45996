FROM alpine:3.19
ARG T=nfs
RUN --mount=type=$T,target=/data ls /data
