# syntax=docker/dockerfile:1
FROM golang:1.22 AS deps
WORKDIR /src
COPY go.mod go.sum ./
RUN --mount=type=cache,id=gomod,target=/go/pkg/mod,sharing=locked \
    --mount=type=ssh,id=github,required=true \
    go mod download

FROM --platform=$BUILDPLATFORM golang:1.22 AS build
ARG TARGETOS TARGETARCH
WORKDIR /src
RUN --mount=type=bind,from=deps,source=/go/pkg/mod,target=/go/pkg/mod,rw \
    --mount=type=bind,target=.,readonly \
    --mount=type=cache,target=/root/.cache/go-build,uid=0,gid=0,mode=0755 \
    --mount=type=tmpfs,target=/tmp,size=64m \
    --mount=type=secret,id=netrc,target=/root/.netrc,required \
    --mount=type=secret,id=api_token,env=API_TOKEN \
    --network=none \
    GOOS=$TARGETOS GOARCH=$TARGETARCH go build -o /out/app ./cmd/app

FROM gcr.io/distroless/static-debian12
COPY --from=build /out/app /app
ENTRYPOINT ["/app"]
