FROM --platform=$BUILDPLATFORM debian:bookworm AS cross
ARG TARGETARCH
RUN dpkg --add-architecture ${TARGETARCH} && apt-get update && \
    apt-get install -y crossbuild-essential-${TARGETARCH} libssl-dev:${TARGETARCH}
WORKDIR /src
COPY . .
RUN make CC=$(dpkg-architecture -A ${TARGETARCH} -q DEB_HOST_GNU_TYPE)-gcc

FROM debian:bookworm-slim
COPY --from=cross /src/out/daemon /usr/sbin/
CMD ["/usr/sbin/daemon"]
