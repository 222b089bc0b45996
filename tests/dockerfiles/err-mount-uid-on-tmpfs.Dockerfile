FROM alpine
RUN --mount=type=tmpfs,target=/x,uid=1000 true
