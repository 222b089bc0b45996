FROM golang:1.22 AS build
WORKDIR /src
COPY . .
RUN for b in api worker migrate; do go build -o /out/$b ./cmd/$b; done

FROM gcr.io/distroless/static AS api
COPY --from=build /out/api /api
ENTRYPOINT ["/api"]

FROM gcr.io/distroless/static AS worker
COPY --from=build /out/worker /worker
ENTRYPOINT ["/worker"]

FROM gcr.io/distroless/static AS migrate
COPY --from=build /out/migrate /migrate
ENTRYPOINT ["/migrate"]
