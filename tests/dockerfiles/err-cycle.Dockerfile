FROM alpine AS a
RUN --mount=from=b,target=/b ls /b

FROM alpine AS b
COPY --from=a /a /a
