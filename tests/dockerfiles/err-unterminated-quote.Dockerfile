FROM alpine
ENV GREETING="hello
