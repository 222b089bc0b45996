FROM alpine
WORKDIR /a
WORKDIR b
WORKDIR ../c/./d
RUN pwd
COPY x.txt rel/

FROM scratch AS empty
WORKDIR relative-on-scratch
COPY --from=0 /a/c/d/rel/x.txt .
