FROM alpine
ADD --from=other a /b
