FROM alpine
cpoy . /app
