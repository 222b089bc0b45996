# syntax=docker/dockerfile:1.17
FROM alpine:3.19
ADD --checksum=sha256:93dcc18adc78c65a028a84799ecf8ad40c936fdfc5f2a57b1acda5a8117fa82c \
    --chmod=0755 https://github.com/krallin/tini/releases/download/v0.19.0/tini-static /sbin/tini
ADD --keep-git-dir=true https://github.com/moby/buildkit.git#v0.14.0 /src/buildkit
ADD --unpack=true --link vendor.tar.gz /opt/vendor/
ADD --exclude=*.md --chown=1000:1000 docs/ /usr/share/doc/app/
ENTRYPOINT ["/sbin/tini", "--"]
CMD ["/bin/sh"]
