# The builder stage does not use TARGET* at all: one instance for every platform.
FROM --platform=$BUILDPLATFORM alpine:3.19 AS assets
RUN apk add --no-cache nodejs npm
WORKDIR /assets
COPY web/ .
RUN npm ci && npm run build

FROM nginx:1.25-alpine
COPY --from=assets /assets/dist /usr/share/nginx/html
