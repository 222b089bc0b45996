FROM rust:1.77 AS build
WORKDIR /usr/src/app
ENV CARGO_TERM_COLOR=always \
    CARGO_INCREMENTAL=0
COPY Cargo.toml Cargo.lock ./
COPY crates crates
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/usr/src/app/target \
    cargo build --release --locked && cp target/release/server /server

FROM gcr.io/distroless/cc-debian12
COPY --from=build /server /
EXPOSE 3000/tcp
ENTRYPOINT ["/server"]
