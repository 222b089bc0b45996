#!/usr/bin/env bash
# Benchmark: `manifold registry serve` against Debian's docker-registry (distribution 2.8), skopeo
# as the client for both, in the same run:
#   - push and pull of a two-platform image, 4 gzip layers per platform of incompressible data
#     (~209 MB), to a fresh registry directory, pulled to a fresh OCI layout;
#   - push and pull of an image of 1,000 small layers (1 KiB each);
#   - 16 skopeo clients pulling the big image at once; then the server's peak RSS (VmHWM).
# Prints one markdown row per server; times are wall-clock seconds of the skopeo commands, each
# with the CPU time the server process spent on it (utime+stime from /proc) in brackets: the
# client's own work (hashing, writing, and skopeo's blob-info cache, which fsyncs about 7 times
# per blob) is in every wall time, for both servers alike. Each row gets a fresh, empty skopeo
# blob-info cache (a private bind mount over /var/lib/containers/cache, when run as root), so
# neither server pays for the other's entries. A second table gives the server alone: `ab`
# fetching one 1 KiB blob 3,000 times, with keep-alive one at a time and without keep-alive six
# at a time (skopeo's default parallelism).
#
#   bench/registry.sh        (needs skopeo, docker-registry, python3; builds manifold --release,
#                             or takes the binary from MANIFOLD_BIN)
# MANIFOLD_BASE_BIN=PATH adds a row for another manifold binary (a before/after in one run);
# SMALL=0 leaves out the 1,000-blob image (its columns show "-"); ROWS="manifold distribution"
# changes the order of the servers.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -z "${MANIFOLD_BIN:-}" ]; then cargo build --release -q -p manifold-cli; fi
m=${MANIFOLD_BIN:-$PWD/target/release/manifold}
work=$(mktemp -d /tmp/manifold-rbench.XXXXXX)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$work"; }
trap cleanup EXIT

free_port() { python3 -c 'import socket;s=socket.socket();s.bind(("127.0.0.1",0));print(s.getsockname()[1])'; }
wait_port() { for _ in $(seq 200); do (exec 3<>/dev/tcp/127.0.0.1/$1) 2>/dev/null && return; sleep 0.05; done; echo "port $1 never opened" >&2; exit 1; }
start_distribution() { # dir -> ADDR, PID
  local dir=$1 port; port=$(free_port); mkdir -p "$dir"
  printf 'version: 0.1\nlog: {level: error, accesslog: {disabled: true}}\nstorage: {filesystem: {rootdirectory: %s}, delete: {enabled: true}}\nhttp: {addr: 127.0.0.1:%s}\n' "$dir/data" "$port" > "$dir/config.yml"
  docker-registry serve "$dir/config.yml" >/dev/null 2>&1 &
  PID=$!; pids+=("$PID"); wait_port "$port"; ADDR="127.0.0.1:$port"
}
start_manifold() { # dir -> ADDR, PID
  local dir=$1 port; port=$(free_port)
  "${BIN:-$m}" --root "$dir" registry serve --addr "127.0.0.1:$port" >/dev/null 2>"$dir.log" &
  PID=$!; pids+=("$PID"); wait_port "$port"; ADDR="127.0.0.1:$port"
}

python3 - "$work/big" "$work/small" <<'PY'
import gzip, hashlib, json, os, sys, io, tarfile
def layout(out, platforms, make_layers):
    os.makedirs(f"{out}/blobs/sha256")
    def put(b):
        d = hashlib.sha256(b).hexdigest(); open(f"{out}/blobs/sha256/{d}", "wb").write(b); return "sha256:" + d, len(b)
    entries = []
    for arch in platforms:
        layers, diffs = [], []
        for name, data in make_layers(arch):
            buf = io.BytesIO()
            with tarfile.open(fileobj=buf, mode="w") as t:
                ti = tarfile.TarInfo(name); ti.size = len(data); t.addfile(ti, io.BytesIO(data))
            raw = buf.getvalue(); diffs.append("sha256:" + hashlib.sha256(raw).hexdigest())
            d, n = put(gzip.compress(raw, compresslevel=1, mtime=0))
            layers.append({"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": d, "size": n})
        cd, cn = put(json.dumps({"architecture": arch, "os": "linux", "rootfs": {"type": "layers", "diff_ids": diffs}}).encode())
        md, mn = put(json.dumps({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": cd, "size": cn}, "layers": layers}).encode())
        entries.append({"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": md, "size": mn,
                        "platform": {"architecture": arch, "os": "linux"}})
    d, n = put(json.dumps({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json", "manifests": entries}).encode())
    open(f"{out}/oci-layout", "w").write('{"imageLayoutVersion":"1.0.0"}')
    open(f"{out}/index.json", "w").write(json.dumps({"schemaVersion": 2, "manifests": [{"mediaType": "application/vnd.oci.image.index.v1+json",
        "digest": d, "size": n, "annotations": {"org.opencontainers.image.ref.name": "bench"}}]}))
layout(sys.argv[1], ["amd64", "arm64"], lambda a: [(f"data-{a}-{i}.bin", os.urandom(25 << 20)) for i in range(4)])
if os.environ.get("SMALL", "1") != "0": layout(sys.argv[2], ["amd64"], lambda a: [(f"f{i}", os.urandom(1024)) for i in range(1000)])
PY

cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
# Wall seconds of a command, and the server's ($SERVER_PID) CPU seconds meanwhile.
t() {
  local s e c0 c1; c0=$(cpu_ticks "$SERVER_PID"); s=$(date +%s.%N)
  "$@" >/dev/null 2>&1 || { echo "failed: $*" >&2; exit 1; }
  e=$(date +%s.%N); c1=$(cpu_ticks "$SERVER_PID")
  python3 -c "print(f'{$e-$s:.2f} s ({($c1-$c0)/$(getconf CLK_TCK):.2f})')"
}
# skopeo with this row's own blob-info cache (root can give it one by a private mount).
sk() {
  if [ "$(id -u)" = 0 ] && [ -n "${SKOPEO_CACHE:-}" ]; then
    mkdir -p /var/lib/containers/cache "$SKOPEO_CACHE"
    unshare -m sh -c 'mount --bind "$0" /var/lib/containers/cache && exec skopeo copy --all --src-tls-verify=false --dest-tls-verify=false "$@"' "$SKOPEO_CACHE" "$@"
  else
    skopeo copy --all --src-tls-verify=false --dest-tls-verify=false "$@"
  fi
}

row() { # name start-function
  local name=$1 dir="$work/reg-$1"
  $2 "$dir"
  local a=$ADDR pid=$PID
  SERVER_PID=$pid SKOPEO_CACHE="$work/skopeo-cache-$name"
  local push_big pull_big push_small pull_small conc
  push_big=$(t sk "oci:$work/big:bench" "docker://$a/bench/big:1")
  pull_big=$(t sk "docker://$a/bench/big:1" "oci:$work/out-$name-big:x")
  push_small=- pull_small=-
  if [ "${SMALL:-1}" != 0 ]; then
    push_small=$(t sk "oci:$work/small:bench" "docker://$a/bench/small:1")
    pull_small=$(t sk "docker://$a/bench/small:1" "oci:$work/out-$name-small:x")
  fi
  rm -rf "$work/out-$name-big" "$work/out-$name-small"
  local s e; s=$(date +%s.%N)
  for i in $(seq 16); do sk "docker://$a/bench/big:1" "oci:$work/conc-$name-$i:x" >/dev/null 2>&1 & done
  wait $(jobs -p | grep -v "^$pid$") 2>/dev/null || true
  e=$(date +%s.%N); conc=$(python3 -c "print(f'{$e-$s:.2f} s')")
  for i in $(seq 16); do [ -f "$work/conc-$name-$i/index.json" ] || { echo "concurrent pull $i failed" >&2; exit 1; }; done
  rm -rf "$work"/conc-$name-*
  local rss; rss=$(awk '/VmHWM/ {printf "%.0f", $2/1024}' /proc/$pid/status)
  echo "| $name | $push_big | $pull_big | $push_small | $pull_small | $conc | $rss MB |"
  # The server alone, on one small blob of the image pushed above.
  if [ "${SMALL:-1}" != 0 ] && command -v ab >/dev/null; then
    local blob keep fresh
    blob=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["layers"][0]["digest"])' "$small_manifest")
    keep=$(ab -q -k -n 3000 -c 1 "http://$a/v2/bench/small/blobs/$blob" | awk '/Time per request.*\(mean\)$/ {print $4}')
    fresh=$(ab -q -n 3000 -c 6 "http://$a/v2/bench/small/blobs/$blob" | awk '/Time per request.*\(mean\)$/ {print $4}')
    ab_rows+=("| $name | $keep ms | $fresh ms |")
  fi
  kill "$pid"; wait "$pid" 2>/dev/null || true
}
ab_rows=()
small_manifest=
if [ "${SMALL:-1}" != 0 ]; then
  small_manifest=$(python3 -c '
import json, sys
blob = lambda d: sys.argv[1] + "/blobs/sha256/" + d.split(":")[1]
index = json.load(open(blob(json.load(open(sys.argv[1] + "/index.json"))["manifests"][0]["digest"])))
print(blob(index["manifests"][0]["digest"]))' "$work/small")
fi

echo "| server | push 2×4×25 MB | pull | push 1,000 blobs | pull | 16 concurrent pulls | peak RSS |"
echo "|---|---|---|---|---|---|---|"
start_base() { BIN=$MANIFOLD_BASE_BIN start_manifold "$@"; }
for r in ${ROWS:-distribution manifold manifold-base}; do
  case $r in
    distribution) row distribution start_distribution ;;
    manifold) row manifold start_manifold ;;
    manifold-base) if [ -n "${MANIFOLD_BASE_BIN:-}" ]; then row manifold-base start_base; fi ;;
  esac
done
if [ ${#ab_rows[@]} -gt 0 ]; then
  echo
  echo "| server | one 1 KiB blob, keep-alive, 1 at a time | new connection each, 6 at a time |"
  echo "|---|---|---|"
  printf '%s\n' "${ab_rows[@]}"
fi
