FROM alpine
COPY --checksum=sha256:abc a /b
