FROM alpine
HEALTHCHECK --interval=5s CURL http://x/
