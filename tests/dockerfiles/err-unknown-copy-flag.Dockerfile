FROM alpine
COPY --chwon=1000 a /b
