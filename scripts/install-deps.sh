#!/usr/bin/env bash
# Installs what manifold's tests and demo need on a Debian machine (run as root). Idempotent.
set -euo pipefail
export DEBIAN_FRONTEND=noninteractive
pkgs=(skopeo umoci docker-registry apache2-utils openssl busybox-static qemu-user-static
      binfmt-support jq ca-certificates docker.io slirp4netns libseccomp-dev gcc libc6-dev)
missing=()
for p in "${pkgs[@]}"; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
# Foreign architectures for the busybox fixtures (arm64, arm/v7).
for a in arm64 armhf; do
  dpkg --print-foreign-architectures | grep -qx "$a" || { dpkg --add-architecture "$a"; }
done
apt_update() {
  # A mirror mid-sync can fail one index while the rest is fine: retry, never fail on it alone.
  for i in 1 2 3; do apt-get update -qq >/dev/null 2>&1 && return 0; sleep 3; done
  echo "apt-get update reported errors; continuing with what it fetched" >&2
}
policy=$(apt-cache policy busybox-static:arm64 busybox-static:armhf 2>/dev/null || true)
if [ ${#missing[@]} -gt 0 ] || [ "$(grep -c 'Candidate: [0-9]' <<<"$policy")" != 2 ]; then
  apt_update
fi
if [ ${#missing[@]} -gt 0 ]; then
  apt-get install -y -qq "${missing[@]}" >/dev/null
fi
# QEMU user emulation through binfmt_misc (flag F), as buildah and BuildKit use it.
if [ -d /proc/sys/fs/binfmt_misc ] && [ ! -e /proc/sys/fs/binfmt_misc/status ]; then
  mount -t binfmt_misc binfmt_misc /proc/sys/fs/binfmt_misc 2>/dev/null || true
fi
if [ ! -e /proc/sys/fs/binfmt_misc/qemu-aarch64 ] && command -v update-binfmts >/dev/null; then
  update-binfmts --enable >/dev/null 2>&1 || true
fi
echo "dependencies ready: ${pkgs[*]}"
