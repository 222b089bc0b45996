FROM alpine:3.19
ADD --unpack=true https://example.com/app.tar.gz /opt/
