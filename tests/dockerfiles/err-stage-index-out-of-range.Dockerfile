FROM alpine
FROM alpine
COPY --from=5 /x /x
