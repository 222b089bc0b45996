ARG TARGETARCH
FROM alpine:3.19 AS base-amd64
ENV QEMU_ARCH=x86_64

FROM arm64v8/alpine:3.19 AS base-arm64
ENV QEMU_ARCH=aarch64

FROM base-${TARGETARCH} AS final
RUN echo "qemu arch is $QEMU_ARCH"
CMD ["sh"]
