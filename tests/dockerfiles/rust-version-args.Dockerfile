ARG RUST_VERSION=1.77
ARG DEBIAN=bookworm
FROM rust:${RUST_VERSION}-slim-${DEBIAN} AS build
WORKDIR /build
COPY . .
RUN cargo build --release

FROM debian:${DEBIAN}-slim
ARG DEBIAN
LABEL base.distro="debian-${DEBIAN}"
COPY --from=build /build/target/release/cli /usr/local/bin/cli
ENTRYPOINT ["cli"]
