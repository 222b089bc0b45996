FROM alpine:3.19
RUN apk add --no-cache git openssh-client
RUN mkdir -p -m 0700 ~/.ssh && ssh-keyscan github.com >> ~/.ssh/known_hosts
RUN --mount=type=ssh git clone git@github.com:example/private.git /src
RUN --mount=type=secret,id=token,env=GITHUB_TOKEN,required=true \
    --mount=type=tmpfs,target=/tmp,size=64m \
    wget --header="Authorization: Bearer $GITHUB_TOKEN" -O /tmp/x https://api.github.com/
RUN --mount=type=secret,target=/run/secrets/netrc,mode=0400,uid=1000 cat /run/secrets/netrc >/dev/null
