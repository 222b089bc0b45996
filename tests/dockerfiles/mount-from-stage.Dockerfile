FROM alpine:3.19 AS certs
RUN apk add --no-cache ca-certificates

FROM golang:1.22 AS build
WORKDIR /src
RUN --mount=type=bind,from=certs,source=/etc/ssl/certs,target=/etc/ssl/certs \
    --mount=type=bind,target=/src,rw \
    go build -o /out/app .

FROM scratch
COPY --from=build /out/app /app
COPY --from=certs /etc/ssl/certs/ca-certificates.crt /etc/ssl/certs/
ENTRYPOINT ["/app"]
