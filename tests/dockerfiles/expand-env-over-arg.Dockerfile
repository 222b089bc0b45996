FROM alpine
# BuildKit keeps one environment in declaration order: the later of ENV and ARG wins.
ARG FIRST=arg-value
ENV FIRST=env-value
ENV SECOND=env-value
ARG SECOND=arg-value
WORKDIR /srv/${FIRST}/${SECOND}
RUN echo "$FIRST $SECOND"
ENV LATER=${SECOND}
