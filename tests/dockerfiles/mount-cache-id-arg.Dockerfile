FROM node:20
ARG CACHE_NS=default
ARG TARGETARCH
RUN --mount=type=cache,id=npm-${CACHE_NS}-${TARGETARCH},target=/root/.npm,uid=1000,gid=1000 \
    npm install -g typescript
