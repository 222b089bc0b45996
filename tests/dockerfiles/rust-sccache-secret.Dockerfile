FROM rust:1.77 AS build
RUN cargo install sccache --locked
ENV RUSTC_WRAPPER=sccache SCCACHE_BUCKET=build-cache SCCACHE_REGION=eu-west-1
WORKDIR /src
COPY . .
RUN --mount=type=secret,id=aws,target=/root/.aws/credentials \
    --mount=type=cache,target=/usr/local/cargo/registry \
    cargo build --release

FROM debian:bookworm-slim
COPY --from=build /src/target/release/daemon /usr/sbin/daemon
STOPSIGNAL SIGTERM
CMD ["/usr/sbin/daemon", "--foreground"]
