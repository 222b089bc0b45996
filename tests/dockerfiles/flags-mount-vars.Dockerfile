FROM node:20-bookworm AS build
ARG TARGETARCH
ARG CACHE_TYPE=cache
ARG NPM_CACHE=/root/.npm
ARG READONLY=false
ENV SHARING=private
ARG SECRET_REQUIRED=true
WORKDIR /app
COPY package.json package-lock.json ./
RUN --mount=type=$CACHE_TYPE,target=$NPM_CACHE,id=npm-$TARGETARCH,sharing=${SHARING},ro=$READONLY \
    --mount=type=secret,id=npmrc,target=/root/.npmrc,required=$SECRET_REQUIRED \
    npm ci --ignore-scripts
COPY . .
RUN npm run build

FROM --platform=$BUILDPLATFORM node:20-bookworm-slim
COPY --from=build /app/dist /srv
CMD ["node", "/srv/index.js"]
