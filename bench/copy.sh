#!/usr/bin/env bash
# Benchmark: copy a two-platform image of 8 gzip layers (~200 MB compressed) between two local
# registries (Debian's docker-registry), with `manifold cp --all` and `skopeo copy --all` in the
# same run. Each copy goes to a fresh destination registry, so nothing is skipped or mounted.
# Prints wall time and peak RSS per run, and the medians.
#
#   bench/copy.sh [RUNS]        (default 3; needs skopeo, docker-registry, /usr/bin/time, python3)
set -euo pipefail
cd "$(dirname "$0")/.."
runs=${1:-3}
cargo build --release -q
m=$PWD/target/release/manifold
work=$(mktemp -d /tmp/manifold-bench.XXXXXX)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$work"; }
trap cleanup EXIT

free_port() { python3 -c 'import socket;s=socket.socket();s.bind(("127.0.0.1",0));print(s.getsockname()[1])'; }
start_registry() { # dir -> sets REG_ADDR and REG_PID (no subshell, so cleanup sees the pid)
  local dir=$1 port; port=$(free_port); mkdir -p "$dir"
  printf 'version: 0.1\nlog: {level: error, accesslog: {disabled: true}}\nstorage: {filesystem: {rootdirectory: %s}}\nhttp: {addr: 127.0.0.1:%s}\n' "$dir/data" "$port" > "$dir/config.yml"
  docker-registry serve "$dir/config.yml" >/dev/null 2>&1 &
  REG_PID=$!; pids+=("$REG_PID")
  for _ in $(seq 100); do (exec 3<>/dev/tcp/127.0.0.1/$port) 2>/dev/null && break; sleep 0.05; done
  REG_ADDR="127.0.0.1:$port"
}

# The image: per platform 4 layers of 25 MB of incompressible bytes, gzip -1, plus config.
python3 - "$work/layout" <<'PY'
import gzip, hashlib, json, os, sys, io, tarfile
out = sys.argv[1]; os.makedirs(f"{out}/blobs/sha256")
def put(b):
    d = hashlib.sha256(b).hexdigest(); open(f"{out}/blobs/sha256/{d}", "wb").write(b); return d, len(b)
entries = []
for arch in ["amd64", "arm64"]:
    layers, diffs = [], []
    for i in range(4):
        data = os.urandom(25 << 20)
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w") as t:
            ti = tarfile.TarInfo(f"data-{arch}-{i}.bin"); ti.size = len(data); t.addfile(ti, io.BytesIO(data))
        raw = buf.getvalue(); diffs.append("sha256:" + hashlib.sha256(raw).hexdigest())
        d, n = put(gzip.compress(raw, compresslevel=1, mtime=0))
        layers.append({"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": "sha256:" + d, "size": n})
    cfg = json.dumps({"architecture": arch, "os": "linux", "rootfs": {"type": "layers", "diff_ids": diffs}}).encode()
    cd, cn = put(cfg)
    man = json.dumps({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": "sha256:" + cd, "size": cn},
        "layers": layers}).encode()
    md, mn = put(man)
    entries.append({"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": "sha256:" + md, "size": mn,
                    "platform": {"architecture": arch, "os": "linux"}})
idx = json.dumps({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json", "manifests": entries}).encode()
d, n = put(idx)
open(f"{out}/oci-layout", "w").write('{"imageLayoutVersion":"1.0.0"}')
open(f"{out}/index.json", "w").write(json.dumps({"schemaVersion": 2, "manifests": [{"mediaType": "application/vnd.oci.image.index.v1+json",
    "digest": "sha256:" + d, "size": n, "annotations": {"org.opencontainers.image.ref.name": "bench"}}]}))
PY
size=$(du -sb "$work/layout/blobs" | cut -f1)
start_registry "$work/src"; src=$REG_ADDR
skopeo copy -q --all --dest-tls-verify=false "oci:$work/layout:bench" "docker://$src/bench/app:1"
echo "image: 2 platforms x 4 gzip layers, $((size / 1000000)) MB compressed; source $src"

results=()
measure() { # name cmd... ; prints "seconds peak_kb"
  local t=$work/time.txt
  /usr/bin/time -f "%e %M" -o "$t" "$@" >/dev/null 2>"$work/err" || { cat "$work/err" >&2; exit 1; }
  cat "$t"
}
for tool in manifold skopeo; do
  for i in $(seq "$runs"); do
    start_registry "$work/dst-$tool-$i"; dst=$REG_ADDR
    if [ "$tool" = manifold ]; then
      r=$(measure "$m" -q cp --all "$src/bench/app:1" "$dst/bench/app:1")
    else
      r=$(measure skopeo copy -q --all --src-tls-verify=false --dest-tls-verify=false "docker://$src/bench/app:1" "docker://$dst/bench/app:1")
    fi
    echo "$tool run $i: ${r% *} s, peak RSS $(( ${r#* } / 1024 )) MB"
    results+=("$tool $r")
    kill "$REG_PID"; wait "$REG_PID" 2>/dev/null || true; rm -rf "$work/dst-$tool-$i"
  done
done
printf '%s\n' "${results[@]}" | python3 -c '
import sys, statistics as st
rows = [l.split() for l in sys.stdin if l.strip()]
med = {}
for tool in ("manifold", "skopeo"):
    t = [float(r[1]) for r in rows if r[0] == tool]; m = [int(r[2]) for r in rows if r[0] == tool]
    med[tool] = st.median(t)
    print(f"{tool:9s} median {st.median(t):6.2f} s   peak RSS max {max(m)/1024:6.1f} MB")
ratio = med["manifold"] / med["skopeo"]
print(f"manifold / skopeo wall time: {ratio:.2f}x (target <= 0.70x)")
'
