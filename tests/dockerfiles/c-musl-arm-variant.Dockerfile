FROM --platform=$BUILDPLATFORM alpine:3.19 AS build
ARG TARGETARCH TARGETVARIANT
RUN echo "arch=${TARGETARCH} variant=${TARGETVARIANT:-none}" > /target.txt
RUN apk add --no-cache clang lld musl-dev make
COPY . /src
RUN make -C /src ARCH=$TARGETARCH

FROM alpine:3.19
COPY --from=build /target.txt /src/bin/prog /usr/bin/
CMD ["prog"]
