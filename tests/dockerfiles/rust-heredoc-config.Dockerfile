# syntax=docker/dockerfile:1.4
FROM rust:1.77-slim AS build
WORKDIR /app
COPY <<EOF /usr/local/cargo/config.toml
[net]
git-fetch-with-cli = true
[build]
rustflags = ["-C", "target-cpu=generic"]
EOF
COPY . .
RUN cargo build --release

FROM debian:bookworm-slim
RUN <<EOF
set -eux
apt-get update
apt-get install -y --no-install-recommends ca-certificates
rm -rf /var/lib/apt/lists/*
EOF
COPY --from=build /app/target/release/app /usr/bin/app
CMD ["app"]
