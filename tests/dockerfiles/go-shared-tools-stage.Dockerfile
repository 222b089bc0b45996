# syntax=docker/dockerfile:1
ARG GO_VERSION=1.22
FROM --platform=$BUILDPLATFORM golang:${GO_VERSION} AS tools
RUN go install github.com/golangci/golangci-lint/cmd/golangci-lint@v1.57.2

FROM --platform=$BUILDPLATFORM golang:${GO_VERSION} AS build
ARG TARGETARCH
WORKDIR /src
COPY --from=tools /go/bin/golangci-lint /usr/local/bin/
COPY . .
RUN golangci-lint run ./... && GOARCH=${TARGETARCH} go build -o /bin/server .

FROM alpine:3.19
RUN apk add --no-cache ca-certificates tzdata
COPY --from=build /bin/server /usr/local/bin/server
EXPOSE 8080
CMD ["server"]
