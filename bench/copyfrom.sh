#!/usr/bin/env bash
# Benchmark: `COPY --from` of single files out of a large stage, two platforms (linux/amd64 +
# linux/arm64), manifold and `buildah build --layers` in the same run. The source stage holds a
# 500 MB, 20,000-file tree (ADD of a tar from the context); the final stage copies three single
# files from it. After a cold build, a context file the final stage reads first changes, so the
# large stage stays cached and the three COPYs run again: that rebuild is what is measured
# (manifold also reports each COPY's own seconds, summed per platform).
#
#   bench/copyfrom.sh [RUNS]   (default 1; needs buildah, docker-registry, /usr/bin/time; root)
set -euo pipefail
cd "$(dirname "$0")/.."
runs=${1:-1}
cargo build --release -q
m=$PWD/target/release/manifold
work=$(mktemp -d /tmp/manifold-bench-copyfrom.XXXXXX)
reg_pid=
cleanup() { [ -n "$reg_pid" ] && kill "$reg_pid" 2>/dev/null; rm -rf "$work"; }
trap cleanup EXIT

port=$(python3 -c 'import socket;s=socket.socket();s.bind(("127.0.0.1",0));print(s.getsockname()[1])')
printf 'version: 0.1\nlog: {level: error, accesslog: {disabled: true}}\nstorage: {filesystem: {rootdirectory: %s}}\nhttp: {addr: 127.0.0.1:%s}\n' "$work/reg" "$port" > "$work/reg.yml"
docker-registry serve "$work/reg.yml" >/dev/null 2>&1 & reg_pid=$!
for _ in $(seq 100); do (exec 3<>/dev/tcp/127.0.0.1/$port) 2>/dev/null && break; sleep 0.05; done
scripts/busybox-image.sh "$work/bb" amd64 arm64 >/dev/null
"$m" -q --root "$work/seed" cp "oci:$work/bb:latest" "127.0.0.1:$port/base/busybox:1" >/dev/null

# 20,000 files of 25 KB of random bytes (500 MB) in 100 directories, as one tar in the context.
ctx=$work/ctx; mkdir -p "$ctx"
python3 - "$work/tree" <<'PY'
import os, sys
root = sys.argv[1]
for d in range(100):
    p = os.path.join(root, f"d{d:03}")
    os.makedirs(p)
    for f in range(200):
        with open(os.path.join(p, f"f{f:03}.bin"), "wb") as fh:
            fh.write(os.urandom(25_000))
PY
tar -C "$work/tree" -cf "$ctx/tree.tar" .
rm -rf "$work/tree"
echo 1 > "$ctx/stamp"
cat > "$ctx/Dockerfile" <<DF
FROM 127.0.0.1:$port/base/busybox:1 AS big
ADD tree.tar /tree/

FROM 127.0.0.1:$port/base/busybox:1
COPY stamp /stamp
COPY --from=big /tree/d000/f000.bin /one.bin
COPY --from=big /tree/d050/f100.bin /two.bin
COPY --from=big /tree/d099/f199.bin /three.bin
DF

measure() { /usr/bin/time -f "%e %M" -o "$work/t" "$@" >/dev/null 2>"$work/err" || { tail -20 "$work/err" >&2; exit 1; }; cat "$work/t"; }
rows=()
for i in $(seq "$runs"); do
  rm -rf "$work/m-root"; echo 1 > "$ctx/stamp"
  r=$(measure "$m" -q --root "$work/m-root" build --platform linux/amd64,linux/arm64 -t bench/copyfrom:1 "$ctx")
  echo "manifold cold    run $i: ${r% *} s"; rows+=("manifold-cold $r")
  echo "$i$RANDOM" > "$ctx/stamp"
  /usr/bin/time -f "%e %M" -o "$work/t" "$m" --root "$work/m-root" build --progress rawjson \
      --platform linux/amd64,linux/arm64 -t bench/copyfrom:1 "$ctx" >/dev/null 2>"$work/log"
  r=$(cat "$work/t")
  copies=$(python3 -c '
import json, sys
per = {}
for l in open(sys.argv[1]):
    l = l.strip()
    if not l.startswith("{"): continue
    e = json.loads(l)
    if e.get("type") == "done" and e.get("instruction", "").startswith("COPY --from=big"):
        per[e["platform"]] = per.get(e["platform"], 0) + e["seconds"]
print(" ".join(f"{p}={s:.3f}" for p, s in sorted(per.items())), max(per.values()))
' "$work/log")
  echo "manifold rebuild run $i: ${r% *} s; three COPY --from, seconds per platform: ${copies% *}"
  rows+=("manifold-rebuild $r" "manifold-copies ${copies##* } 0")

  rm -rf "$work/b-root" "$work/b-run"; echo 1 > "$ctx/stamp"
  b=(buildah --root "$work/b-root" --runroot "$work/b-run" --storage-driver overlay)
  r=$(measure "${b[@]}" build --tls-verify=false --layers --platform linux/amd64,linux/arm64 --manifest bench-cf "$ctx")
  echo "buildah  cold    run $i: ${r% *} s"; rows+=("buildah-cold $r")
  echo "$i$RANDOM" > "$ctx/stamp"
  r=$(measure "${b[@]}" build --tls-verify=false --layers --platform linux/amd64,linux/arm64 --manifest bench-cf2 "$ctx")
  echo "buildah  rebuild run $i: ${r% *} s"; rows+=("buildah-rebuild $r")
  "${b[@]}" rm -a >/dev/null 2>&1 || true
  rm -rf "$work/b-root" "$work/b-run" 2>/dev/null || true
done
printf '%s\n' "${rows[@]}" | python3 -c '
import sys, statistics as st
rows = [l.split() for l in sys.stdin if l.strip()]
med = {k: st.median([float(r[1]) for r in rows if r[0] == k]) for k in
       ("manifold-cold", "manifold-rebuild", "manifold-copies", "buildah-cold", "buildah-rebuild")}
print("median: manifold cold %.2f s, rebuild %.2f s (three COPY --from: %.3f s on the slower platform); "
      "buildah cold %.2f s, rebuild %.2f s" % (med["manifold-cold"], med["manifold-rebuild"],
      med["manifold-copies"], med["buildah-cold"], med["buildah-rebuild"]))
'
