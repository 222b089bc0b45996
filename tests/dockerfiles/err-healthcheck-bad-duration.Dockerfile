FROM alpine
HEALTHCHECK --interval=ten CMD true
