# syntax=docker/dockerfile:1.7
FROM --platform=$BUILDPLATFORM tonistiigi/xx:1.4.0 AS xx

FROM --platform=$BUILDPLATFORM golang:1.22-alpine AS build
COPY --from=xx / /
RUN apk add --no-cache clang lld
ARG TARGETPLATFORM
RUN xx-apk add --no-cache musl-dev gcc
WORKDIR /src
COPY . .
RUN --mount=type=cache,target=/root/.cache \
    CGO_ENABLED=1 xx-go build -o /out/app . && xx-verify /out/app

FROM alpine:3.19
COPY --from=build /out/app /usr/local/bin/app
ENTRYPOINT ["app"]
