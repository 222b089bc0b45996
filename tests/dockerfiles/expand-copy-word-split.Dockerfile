FROM alpine
# BuildKit expands each COPY source as one word: $FILES names one file, "a.txt b.txt".
ARG FILES="a.txt b.txt"
ARG DEST=/data
COPY $FILES "${DEST}/"
COPY ["with space.txt", "${DEST}/spaced/"]
EXPOSE 80 443/tcp ${PORT:-8080}
VOLUME ["/data", "/logs"]
VOLUME /cache /tmp/x
USER ${UID:-1000}:${GID:-1000}
STOPSIGNAL ${SIGNAL:-SIGQUIT}
