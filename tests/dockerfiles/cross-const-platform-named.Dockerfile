FROM --platform=linux/amd64 debian:bookworm AS fetch_amd64
RUN apt-get update && apt-get install -y curl
RUN curl -fsSLo /tool https://example.com/tool-linux-x86_64

FROM alpine:3.19
COPY --from=fetch_amd64 /tool /usr/local/bin/tool
