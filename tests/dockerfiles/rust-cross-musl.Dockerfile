# syntax=docker/dockerfile:1
FROM --platform=$BUILDPLATFORM rust:1.77-alpine AS build
ARG TARGETARCH
RUN case "$TARGETARCH" in \
      amd64) echo x86_64-unknown-linux-musl > /target ;; \
      arm64) echo aarch64-unknown-linux-musl > /target ;; \
      *) echo "unsupported $TARGETARCH" && exit 1 ;; \
    esac
RUN rustup target add "$(cat /target)"
WORKDIR /src
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry,id=cargo-registry \
    --mount=type=cache,target=/src/target,id=target-${TARGETARCH} \
    cargo build --release --target "$(cat /target)" && \
    cp target/$(cat /target)/release/tool /tool

FROM scratch
COPY --from=build /tool /tool
ENTRYPOINT ["/tool"]
