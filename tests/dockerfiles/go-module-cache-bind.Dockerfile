FROM golang:1.21 AS deps
WORKDIR /src
RUN --mount=type=bind,source=go.mod,target=go.mod \
    --mount=type=bind,source=go.sum,target=go.sum \
    --mount=type=cache,target=/go/pkg/mod,sharing=locked \
    go mod download -x

FROM deps AS build
RUN --mount=type=bind,target=. \
    --mount=type=cache,target=/go/pkg/mod \
    go build -trimpath -ldflags="-s -w" -o /bin/tool ./cmd/tool

FROM scratch
COPY --from=build /bin/tool /tool
ENTRYPOINT ["/tool"]
