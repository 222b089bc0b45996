FROM --platform=linux/amd64 node:20 AS frontend
WORKDIR /ui
COPY ui/ .
RUN npm ci && npm run build

FROM python:3.12-slim
COPY --from=frontend /ui/dist /app/static
CMD ["python", "-m", "http.server", "-d", "/app/static"]
