FROM alpine:3.19
COPY --chmod=64a app /app
