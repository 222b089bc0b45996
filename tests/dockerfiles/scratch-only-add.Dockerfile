FROM scratch
ADD rootfs.tar.xz /
ADD --chmod=755 --link https://example.com/bin/tini /tini
ENTRYPOINT ["/tini", "--"]
