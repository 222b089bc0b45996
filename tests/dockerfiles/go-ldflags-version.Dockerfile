ARG VERSION=dev
ARG COMMIT=unknown
FROM golang:1.22-bookworm AS build
ARG VERSION
ARG COMMIT
ENV CGO_ENABLED=0
WORKDIR /go/src/example.com/svc
COPY . .
RUN go build -ldflags "-X main.version=${VERSION} -X main.commit=${COMMIT}" -o /svc .

FROM gcr.io/distroless/base-debian12
LABEL org.opencontainers.image.version=$VERSION \
      org.opencontainers.image.revision="${COMMIT}"
COPY --from=build /svc /svc
ENTRYPOINT ["/svc"]
