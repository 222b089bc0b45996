FROM --platform=$BUILDPLATFORM python:3.12-slim AS assets
WORKDIR /build
COPY --parents ./services/*/static ./
RUN python -m compileall -q /build

FROM python:3.12-slim
RUN useradd --system --uid 10001 app
WORKDIR /srv
COPY --link --chown=app:app --chmod=u=rwX,go=rX --exclude=*.pyc --exclude=**/__pycache__ src/ ./src/
COPY --from=assets --chown=10001:10001 --chmod=0644 /build/services /srv/services
COPY --from=python:3.12-slim /usr/local/bin/python3 /usr/local/bin/python3-copy
COPY --link=false ["requirements.txt", "pyproject.toml", "./"]
USER app
CMD ["python", "-m", "src"]
