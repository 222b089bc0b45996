FROM golang:1.22 AS build
RUN go build -o /app .
FROM Build
COPY --from=build /app /app
