#!/usr/bin/env bash
# Installs what manifold's tests and demo need on a Debian machine (run as root). Idempotent.
set -euo pipefail
export DEBIAN_FRONTEND=noninteractive
pkgs=(skopeo umoci docker-registry apache2-utils openssl busybox-static qemu-user-static
      jq ca-certificates docker.io openssh-server openssh-client gcc libc6-dev buildah
      slirp4netns libseccomp-dev golang-github-docker-docker-dev)
missing=()
for p in "${pkgs[@]}"; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
# Foreign architectures for the busybox fixtures (manifold run's tests cover each).
# (Debian 12 has no riscv64 port; its busybox-static comes with Debian 13.)
fixture_arches=(arm64 armhf i386 ppc64el s390x mips64el)
for a in "${fixture_arches[@]}"; do
  dpkg --print-foreign-architectures | grep -qx "$a" || { dpkg --add-architecture "$a"; }
done
apt_update() {
  # A mirror mid-sync can fail one index while the rest is fine: retry, never fail on it alone.
  for i in 1 2 3; do apt-get update -qq >/dev/null 2>&1 && return 0; sleep 3; done
  echo "apt-get update reported errors; continuing with what it fetched" >&2
}
policy=$(apt-cache policy "${fixture_arches[@]/#/busybox-static:}" 2>/dev/null || true)
if [ ${#missing[@]} -gt 0 ] || [ "$(grep -c 'Candidate: [0-9]' <<<"$policy")" != ${#fixture_arches[@]} ]; then
  apt_update
fi
if [ ${#missing[@]} -gt 0 ]; then
  apt-get install -y -qq "${missing[@]}" >/dev/null
fi
# QEMU's binfmt_misc handlers are registered by `manifold binfmt install` (scripts/test.sh and
# scripts/demo.sh run it once manifold is built).
echo "dependencies ready: ${pkgs[*]}"
