FROM golang:1.22 AS builder
WORKDIR /src
COPY main.go .
RUN go build -o hello main.go

FROM busybox:1.36
COPY --from=0 /src/hello /bin/hello
CMD ["/bin/hello"]
