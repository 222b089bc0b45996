#!/usr/bin/env bash
# Makes a real multi-platform busybox image as an OCI image layout, from Debian's busybox-static
# packages: one rootfs layer per architecture (busybox, its applet links, /etc/passwd, /tmp),
# a config and manifest each, and one index over them. Deterministic: same debs, same digests.
#
#   scripts/busybox-image.sh OUT_DIR [DEB_ARCH...]     (default: amd64 arm64)
#
# DEB_ARCH is a Debian architecture: amd64 arm64 armhf armel i386 riscv64 s390x ppc64el mips64el.
# Needs: apt-get (for downloads; uses the cache in $BUSYBOX_DEB_CACHE when set), dpkg-deb,
# tar, gzip, sha256sum, and a busybox for the host to list applets.
set -euo pipefail
out=${1:?usage: busybox-image.sh OUT_DIR [DEB_ARCH...]}
shift
arches=("$@")
[ ${#arches[@]} -gt 0 ] || arches=(amd64 arm64)
cache=${BUSYBOX_DEB_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/manifold/debs}
mkdir -p "$cache" "$out/blobs/sha256"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

oci_platform() { # debian arch -> "arch variant"
  case $1 in
    amd64) echo "amd64 -";; arm64) echo "arm64 -";; armhf) echo "arm v7";; armel) echo "arm v5";;
    i386) echo "386 -";; ppc64el) echo "ppc64le -";; mips64el) echo "mips64le -";; *) echo "$1 -";;
  esac
}

fetch_deb() {
  local a=$1 f
  f=$(ls "$cache"/busybox-static_*_"$a".deb 2>/dev/null | head -n1 || true)
  if [ -z "$f" ]; then
    if ! dpkg --print-foreign-architectures | grep -qx "$a" && [ "$a" != "$(dpkg --print-architecture)" ]; then
      dpkg --add-architecture "$a"
      for i in 1 2 3; do apt-get update -qq >/dev/null 2>&1 && break || sleep 2; done
    fi
    (cd "$cache" && apt-get download -qq "busybox-static:$a" >/dev/null 2>&1) || {
      for i in 1 2 3; do apt-get update -qq >/dev/null 2>&1 && break || sleep 2; done
      (cd "$cache" && apt-get download -qq "busybox-static:$a" >/dev/null 2>&1)
    }
    f=$(ls "$cache"/busybox-static_*_"$a".deb | head -n1)
  fi
  echo "$f"
}

host_busybox=$(command -v busybox || true)
put_blob() { # file -> prints "digest size"
  local d s
  d=$(sha256sum "$1" | cut -d' ' -f1); s=$(stat -c %s "$1")
  cp "$1" "$out/blobs/sha256/$d"
  echo "$d $s"
}

entries=()
for a in "${arches[@]}"; do
  deb=$(fetch_deb "$a")
  root="$work/$a/rootfs"; mkdir -p "$root/bin" "$root/etc" "$root/tmp" "$root/root"
  dpkg-deb -x "$deb" "$work/$a/x"
  cp "$work/$a/x/bin/busybox" "$root/bin/busybox"
  lister=${host_busybox:-$work/$a/x/bin/busybox}
  for app in $("$lister" --list); do
    [ "$app" = busybox ] || ln -sf busybox "$root/bin/$app"
  done
  printf 'root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n' > "$root/etc/passwd"
  printf 'root:x:0:\nnogroup:x:65534:\n' > "$root/etc/group"
  chmod 1777 "$root/tmp"
  tar --sort=name --mtime=@0 --owner=0 --group=0 --numeric-owner -C "$root" -cf "$work/$a/layer.tar" .
  diffid=$(sha256sum "$work/$a/layer.tar" | cut -d' ' -f1)
  gzip -n -6 -c "$work/$a/layer.tar" > "$work/$a/layer.tar.gz"
  read -r ldig lsize < <(put_blob "$work/$a/layer.tar.gz")
  read -r arch variant < <(oci_platform "$a")
  vfield=""; vdesc=""
  if [ "$variant" != "-" ]; then vfield=",\"variant\":\"$variant\""; vdesc=",\"variant\":\"$variant\""; fi
  printf '{"created":"1970-01-01T00:00:00Z","architecture":"%s","os":"linux"%s,"config":{"Env":["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"],"Cmd":["sh"]},"rootfs":{"type":"layers","diff_ids":["sha256:%s"]},"history":[{"created":"1970-01-01T00:00:00Z","created_by":"busybox-static from Debian (%s)"}]}' \
    "$arch" "$vfield" "$diffid" "$(basename "$deb")" > "$work/$a/config.json"
  read -r cdig csize < <(put_blob "$work/$a/config.json")
  printf '{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"sha256:%s","size":%s},"layers":[{"mediaType":"application/vnd.oci.image.layer.v1.tar+gzip","digest":"sha256:%s","size":%s}]}' \
    "$cdig" "$csize" "$ldig" "$lsize" > "$work/$a/manifest.json"
  read -r mdig msize < <(put_blob "$work/$a/manifest.json")
  entries+=("{\"mediaType\":\"application/vnd.oci.image.manifest.v1+json\",\"digest\":\"sha256:$mdig\",\"size\":$msize,\"platform\":{\"architecture\":\"$arch\",\"os\":\"linux\"$vdesc}}")
done
list=$(IFS=,; echo "${entries[*]}")
printf '{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json","manifests":[%s]}' "$list" > "$work/index-blob.json"
read -r idig isize < <(put_blob "$work/index-blob.json")
printf '{"imageLayoutVersion":"1.0.0"}' > "$out/oci-layout"
printf '{"schemaVersion":2,"mediaType":"application/vnd.oci.image.index.v1+json","manifests":[{"mediaType":"application/vnd.oci.image.index.v1+json","digest":"sha256:%s","size":%s,"annotations":{"org.opencontainers.image.ref.name":"latest"}}]}' \
  "$idig" "$isize" > "$out/index.json"
echo "sha256:$idig"
