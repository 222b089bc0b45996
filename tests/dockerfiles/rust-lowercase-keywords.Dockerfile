from rust:1.77 as build
workdir /src
copy . .
run cargo build --release
from debian:bookworm-slim
copy --from=build /src/target/release/app /app
cmd ["/app"]
