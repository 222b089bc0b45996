FROM golang:1.22 AS Builder
RUN go build -o /app .

FROM alpine:3.19
COPY --from=Builder /app /app
COPY --from=docker.io/library/busybox:1.36 /bin/busybox /bin/busybox
COPY --from=ghcr.io/example/tools:v1 /usr/bin/tool /usr/bin/
