FROM --platform=$BUILDPLATFORM busybox:1.36 AS info
ARG BUILDPLATFORM BUILDOS BUILDARCH
RUN echo "building on $BUILDPLATFORM ($BUILDOS/$BUILDARCH)" > /build.txt

FROM busybox:1.36
ARG TARGETPLATFORM
COPY --from=info /build.txt /
RUN echo "running on $TARGETPLATFORM" > /target.txt
