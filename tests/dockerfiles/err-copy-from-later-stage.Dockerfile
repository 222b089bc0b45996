FROM alpine AS final
COPY --from=assets /out /usr/share/assets

FROM --platform=$BUILDPLATFORM alpine AS assets
RUN mkdir /out && echo built > /out/index.html
