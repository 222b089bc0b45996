FROM gcc:13 AS build
WORKDIR /usr/src/app
COPY . .
RUN make CFLAGS="-O2 -static" && strip hello

FROM scratch
COPY --from=build /usr/src/app/hello /hello
ENTRYPOINT ["/hello"]
