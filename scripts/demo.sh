#!/usr/bin/env bash
# The main job on a fresh machine: install what is needed (QEMU's user-mode emulators,
# busybox-static for amd64 and arm64, ...), build manifold, register QEMU's arm64 handler with
# `manifold binfmt install`, make a two-platform busybox base from Debian's packages and load it
# into the local store, then build examples/cross for linux/amd64 and linux/arm64, show the index
# digest and each platform's digest, and run each platform's image with `manifold run`.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ "$(id -u)" = 0 ]; then scripts/install-deps.sh; else echo "not root: skipping package installs"; fi
cargo build --release --locked -q
m=target/release/manifold
if [ "$(id -u)" = 0 ]; then
  echo "== manifold binfmt install arm64   (QEMU's handler, flag F; what tonistiigi/binfmt does)"
  "$m" binfmt install arm64
  echo
fi
layout=$(mktemp -d)
trap 'rm -rf "$layout"' EXIT
echo "== a busybox base for linux/amd64 and linux/arm64, from Debian's busybox-static"
scripts/busybox-image.sh "$layout/busybox" amd64 arm64 >/dev/null
"$m" load -i "$layout/busybox"
echo
echo "== manifold build --platform linux/amd64,linux/arm64 -t localhost/hello:demo examples/cross"
"$m" build --platform linux/amd64,linux/arm64 -t localhost/hello:demo examples/cross
echo
"$m" imagetools inspect store:localhost/hello:demo
echo
echo "== manifold run --platform linux/arm64 localhost/hello:demo   (and amd64; arm64 under QEMU)"
for p in linux/amd64 linux/arm64; do
  if [ "$(id -u)" = 0 ]; then "$m" run --platform "$p" localhost/hello:demo; else echo "$p: (manifold run needs root)"; fi
done
echo
echo "the store is an OCI layout at ${MANIFOLD_ROOT:-${XDG_DATA_HOME:-$HOME/.local/share}/manifold}; next:"
echo "  $m save --type docker -o hello.tar localhost/hello:demo   # for docker load"
echo "  $m build --platform linux/amd64,linux/arm64 -t REGISTRY/hello:1 --push examples/cross"
