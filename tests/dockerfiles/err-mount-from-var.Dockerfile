ARG SRC=deps
FROM alpine:3.19 AS deps
FROM alpine:3.19
RUN --mount=from=$SRC,target=/deps ls /deps
