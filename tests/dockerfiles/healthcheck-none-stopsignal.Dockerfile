FROM postgres:16
HEALTHCHECK NONE
STOPSIGNAL SIGINT
ENV POSTGRES_DB=app
COPY --chown=postgres:postgres init.sql /docker-entrypoint-initdb.d/
