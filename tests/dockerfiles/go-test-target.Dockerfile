FROM golang:1.22 AS base
WORKDIR /app
COPY go.* ./
RUN go mod download
COPY . .

FROM base AS test
RUN go test ./...

FROM base AS build
RUN go build -o /app/bin/api ./cmd/api

FROM debian:bookworm-slim AS release
COPY --from=build /app/bin/api /usr/bin/api
CMD ["api"]
