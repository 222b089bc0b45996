FROM alpine AS bins
RUN mkdir -p /out && touch /out/tool

FROM alpine
WORKDIR /work
# Without a target, a mount lands on the working directory; a relative target is under it.
RUN --mount=from=bins,source=/out ls
RUN --mount=type=cache,id=x,target=cache ls cache
