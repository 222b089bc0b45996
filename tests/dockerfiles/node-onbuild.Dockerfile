FROM node:20-alpine
WORKDIR /usr/src/app
ONBUILD COPY package*.json ./
ONBUILD RUN npm install
ONBUILD COPY . .
CMD [ "npm", "start" ]
