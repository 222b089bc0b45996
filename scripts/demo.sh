#!/usr/bin/env bash
# The main job on a fresh machine: install what is needed, build manifold, make a real
# two-platform busybox image (linux/amd64 + linux/arm64) from Debian's busybox-static packages,
# load it into the local store and list it.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ "$(id -u)" = 0 ]; then scripts/install-deps.sh; else echo "not root: skipping package installs"; fi
cargo build --release --locked -q
m=target/release/manifold
layout=$(mktemp -d)
trap 'rm -rf "$layout"' EXIT
echo "making busybox for linux/amd64 and linux/arm64 from Debian's busybox-static..."
scripts/busybox-image.sh "$layout/busybox" amd64 arm64 >/dev/null
"$m" load -i "$layout/busybox"
"$m" tag localhost/busybox:latest localhost/busybox:demo
"$m" images
echo
echo "the store is an OCI layout at ${MANIFOLD_ROOT:-${XDG_DATA_HOME:-$HOME/.local/share}/manifold}; try:"
echo "  $m save --format docker -o busybox.tar localhost/busybox:demo"
