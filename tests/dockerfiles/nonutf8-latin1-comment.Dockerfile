FROM alpine:3.19
# Auteur : François (Latin-1, not UTF-8)
LABEL org.opencontainers.image.authors="François"
RUN echo ok
