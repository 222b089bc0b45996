FROM alpine:3.19 AS build
RUN apk add --no-cache build-base autoconf automake libtool
ADD --checksum=sha256:24454f830cdb571e2c4ad15481119c43b3cafd48dd869a9b2945d1036d1dc68d https://ftp.gnu.org/gnu/hello/hello-2.12.1.tar.gz /tmp/
RUN tar -C /tmp -xzf /tmp/hello-2.12.1.tar.gz && \
    cd /tmp/hello-2.12.1 && ./configure --prefix=/usr && make -j"$(nproc)" && make install DESTDIR=/out

FROM alpine:3.19
COPY --from=build /out/ /
CMD ["hello"]
