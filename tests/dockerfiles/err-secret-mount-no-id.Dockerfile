FROM alpine
RUN --mount=type=secret,required cat /x
