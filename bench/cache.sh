#!/usr/bin/env bash
# Benchmark: a build cache that travels between CI runners. The W1 two-platform build of
# bench/build.sh (linux/amd64 + linux/arm64, arm64 under QEMU): runner 1 builds cold and exports
# its cache to a local docker-registry; runner 2 starts from empty storage, imports that cache and
# pushes the image to the same registry. manifold (`--cache-to type=registry,ref=…,mode=max`,
# `--cache-from type=registry,ref=…`, `--push`) against buildah 1.28 (`--layers --cache-to REPO`,
# `--cache-from REPO`, then `manifest push --all`), same registry, same run. Timed: runner 2.
# Layer bytes downloaded by runner 2 are read from the registry's access log (every blob GET
# answered 200: layers, configs and manifold's records blob) and, for manifold, from its own
# counts of layer bytes fetched from the imported cache and from base images' registries.
#
#   bench/cache.sh [RUNS]     (default 3; needs buildah, docker-registry, /usr/bin/time; root)
set -euo pipefail
cd "$(dirname "$0")/.."
runs=${1:-3}
cargo build --release -q
m=$PWD/target/release/manifold
work=$(mktemp -d /tmp/manifold-bench-cache.XXXXXX)
reg_pid=
cleanup() { [ -n "$reg_pid" ] && kill "$reg_pid" 2>/dev/null; rm -rf "$work" 2>/dev/null || true; }
trap cleanup EXIT

port=$(python3 -c 'import socket;s=socket.socket();s.bind(("127.0.0.1",0));print(s.getsockname()[1])')
reg=127.0.0.1:$port
printf 'version: 0.1\nlog: {level: error}\nstorage: {filesystem: {rootdirectory: %s}}\nhttp: {addr: %s}\n' "$work/reg" "$reg" > "$work/reg.yml"
docker-registry serve "$work/reg.yml" >"$work/access.log" 2>&1 & reg_pid=$!
for _ in $(seq 100); do (exec 3<>/dev/tcp/127.0.0.1/$port) 2>/dev/null && break; sleep 0.05; done
scripts/busybox-image.sh "$work/bb" amd64 arm64 >/dev/null
"$m" -q --root "$work/seed" cp "oci:$work/bb:latest" "$reg/base/busybox:1" >/dev/null

ctx=$work/ctx; mkdir -p "$ctx/files"
for i in $(seq 2000); do echo "file $i" > "$ctx/files/f$i.txt"; done
cat > "$ctx/Dockerfile" <<DF
FROM $reg/base/busybox:1
RUN seq 1 20000 | sed 's/^/line /' > /lines.txt
RUN mkdir /rand && for i in \$(seq 1 200); do head -c 102400 /dev/urandom > /rand/f\$i; done
COPY files /files
RUN uname -m > /arch
DF

# Bytes of blob GETs answered 200 in the access log since line $1.
blob_bytes() {
  tail -n +"$1" "$work/access.log" | python3 -c '
import re, sys
n = 0
for l in sys.stdin:
    m = re.search(r"\"GET /v2/\S+/blobs/sha256:\S+ HTTP/[0-9.]+\" 200 (\d+)", l)
    if m: n += int(m.group(1))
print(n)'
}
lines() { wc -l < "$work/access.log"; }
measure() { /usr/bin/time -f "%e %M" -o "$work/t" "$@" >/dev/null 2>"$work/err" || { tail -20 "$work/err" >&2; exit 1; }; cat "$work/t"; }
P=linux/amd64,linux/arm64
rows=()
for i in $(seq "$runs"); do
  # manifold: runner 1 cold with --cache-to, runner 2 empty with --cache-from and --push.
  rm -rf "$work/m1" "$work/m2"
  measure "$m" --root "$work/m1" build --platform $P -t "$reg/app/m:$i" --push \
    --cache-to "type=registry,ref=$reg/cache/m:$i,mode=max" "$ctx" >/dev/null
  from=$(( $(lines) + 1 ))
  r=$(measure "$m" --root "$work/m2" build --platform $P -t "$reg/app/m2:$i" --push \
    --cache-from "type=registry,ref=$reg/cache/m:$i" "$ctx")
  cached=$(grep -c ' CACHED' "$work/err" || true)
  own=$(sed -n 's/^cache: downloaded [0-9]* layers, \([0-9]*\) bytes.*/\1/p' "$work/err")
  base=$(sed -n 's/^base images: downloaded [0-9]* layers, \([0-9]*\) bytes.*/\1/p' "$work/err")
  got=$(blob_bytes "$from")
  echo "manifold runner 2 run $i: ${r% *} s, $cached steps CACHED, cache layer bytes downloaded $own, base layer bytes downloaded ${base:-0}, all blob bytes GET $got"
  rows+=("manifold ${r% *} $own $got ${base:-0}")

  # buildah: the same two runners.
  rm -rf "$work/b1" "$work/b1r" "$work/b2" "$work/b2r"
  b1=(buildah --root "$work/b1" --runroot "$work/b1r" --storage-driver overlay)
  b2=(buildah --root "$work/b2" --runroot "$work/b2r" --storage-driver overlay)
  measure "${b1[@]}" build --tls-verify=false --layers --platform $P --manifest bl1 \
    --cache-to "$reg/cache/b$i" "$ctx" >/dev/null
  measure "${b1[@]}" manifest push --tls-verify=false --all bl1 "docker://$reg/app/b:$i" >/dev/null
  from=$(( $(lines) + 1 ))
  cat > "$work/b2.sh" <<SH
set -e
${b2[*]} build --tls-verify=false --layers --platform $P --manifest bl2 --cache-from $reg/cache/b$i $ctx > $work/b2.out
${b2[*]} manifest push --tls-verify=false --all bl2 docker://$reg/app/b2:$i
SH
  r=$(measure sh "$work/b2.sh")
  got=$(blob_bytes "$from")
  cached=$(grep -c 'Using cache' "$work/b2.out" || true)
  echo "buildah  runner 2 run $i: ${r% *} s, $cached steps 'Using cache', all blob bytes GET $got"
  rows+=("buildah ${r% *} - $got -")
  "${b1[@]}" rm -a >/dev/null 2>&1 || true
  "${b2[@]}" rm -a >/dev/null 2>&1 || true
  rm -rf "$work/b1" "$work/b1r" "$work/b2" "$work/b2r" 2>/dev/null || true
done
printf '%s\n' "${rows[@]}" | python3 -c '
import sys, statistics as st
rows = [l.split() for l in sys.stdin if l.strip()]
med = {k: st.median(float(r[1]) for r in rows if r[0] == k) for k in ("manifold", "buildah")}
for k in med:
    got = [int(r[3]) for r in rows if r[0] == k]
    print("%-8s runner 2 median %6.2f s   blob bytes GET (median) %d" % (k, med[k], st.median(got)))
print("manifold cache layer bytes downloaded: %s" % ", ".join(r[2] for r in rows if r[0] == "manifold"))
print("manifold base layer bytes downloaded: %s" % ", ".join(r[4] for r in rows if r[0] == "manifold"))
print("runner 2 manifold / buildah: %.2fx (target <= 0.30x)" % (med["manifold"] / med["buildah"]))
'
