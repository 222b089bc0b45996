# syntax=docker/dockerfile:1.7-labs
FROM node:20-alpine
WORKDIR /srv
COPY --link package.json package-lock.json ./
RUN npm ci
COPY --link --exclude=*.test.js --exclude=docs/ . .
COPY --parents --chmod=0644 config/*/settings.json /srv/
CMD ["npm", "start"]
