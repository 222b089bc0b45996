FROM python:3.12-slim
ONBUILD ARG APP_ENV=production
ONBUILD ENV APP_ENV=${APP_ENV}
ONBUILD COPY --chown=1000:1000 requirements.txt /app/
ONBUILD RUN --mount=type=cache,target=/root/.cache pip install -r /app/requirements.txt
ONBUILD HEALTHCHECK CMD curl -f http://localhost/
