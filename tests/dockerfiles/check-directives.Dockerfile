# check=skip=JSONArgsRecommended;experimental=InvalidDefinitionDescription
FROM alpine:3.19 AS base
# check=skip=SecretsUsedInArgOrEnv
ARG GITHUB_TOKEN
# VERSION of the tool to install
ARG VERSION=1.0
# the tool we ship
ARG TOOL=app
ENV DB_PASSWORD=changeme
CMD echo $VERSION
EXPOSE 0.0.0.0:8080:80/TCP
WORKDIR "/srv"
WORKDIR data
