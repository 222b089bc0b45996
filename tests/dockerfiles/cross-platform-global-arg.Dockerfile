ARG BUILDER_PLATFORM=$BUILDPLATFORM
FROM --platform=${BUILDER_PLATFORM} golang:1.22 AS build
ARG TARGETOS TARGETARCH
RUN GOOS=$TARGETOS GOARCH=$TARGETARCH go build -o /out/bin ./...

FROM alpine
COPY --from=build /out/bin /usr/local/bin/
