FROM alpine AS base
ENV APP_HOME=/opt/app LANG=C.UTF-8
WORKDIR $APP_HOME
USER nobody
SHELL ["/bin/ash", "-eo", "pipefail", "-c"]

FROM base AS child
ENV APP_BIN=${APP_HOME}/bin
RUN echo "$APP_BIN"
CMD echo "shell form uses the inherited shell"
