FROM alpine AS build
FROM debian AS build
