FROM alpine
RUN --mount=type=cache,target=/var/cache/apk \
    <<EOF
apk add --no-cache curl
curl --version
EOF
CMD ["curl", "--help"]
