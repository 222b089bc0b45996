FROM alpine:3.19
COPY https://example.com/file.txt /file.txt
