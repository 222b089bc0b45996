#!/usr/bin/env bash
# Benchmark: what the isolated default network (a private namespace plus slirp4netns per RUN
# step) costs against --network none and --network host, in the same run:
#   - per RUN step: a build of 10 `RUN true` steps (amd64, --no-cache), per mode;
#   - a large download: one RUN fetching Packages.xz (~9 MB) of the apt mirror this machine's
#     apt sources name, by host name, default vs host.
#
#   bench/network.sh [RUNS]   (default 3; root, docker-registry, slirp4netns, /usr/bin/time)
#   MANIFOLD=target/debug/manifold bench/network.sh   to skip the release build
set -euo pipefail
cd "$(dirname "$0")/.."
runs=${1:-3}
m=${MANIFOLD:-}
if [ -z "$m" ]; then cargo build --release -q; m=$PWD/target/release/manifold; fi
work=$(mktemp -d /tmp/manifold-bench-net.XXXXXX)
reg_pid=
cleanup() { [ -n "$reg_pid" ] && kill "$reg_pid" 2>/dev/null; rm -rf "$work"; }
trap cleanup EXIT

port=$(python3 -c 'import socket;s=socket.socket();s.bind(("127.0.0.1",0));print(s.getsockname()[1])')
printf 'version: 0.1\nlog: {level: error, accesslog: {disabled: true}}\nstorage: {filesystem: {rootdirectory: %s}}\nhttp: {addr: 127.0.0.1:%s}\n' "$work/reg" "$port" > "$work/reg.yml"
docker-registry serve "$work/reg.yml" >/dev/null 2>&1 & reg_pid=$!
for _ in $(seq 100); do (exec 3<>/dev/tcp/127.0.0.1/$port) 2>/dev/null && break; sleep 0.05; done
scripts/busybox-image.sh "$work/bb" amd64 >/dev/null
"$m" -q --root "$work/seed" cp "oci:$work/bb:latest" "127.0.0.1:$port/base/busybox:1" >/dev/null

# The apt mirror, as in the runtime's download test: first http URI and suite.
read -r mirror suite < <(python3 - <<'PY'
import glob, re
for f in ["/etc/apt/sources.list"] + sorted(glob.glob("/etc/apt/sources.list.d/*")):
    try: t = open(f).read()
    except OSError: continue
    m = re.search(r"^deb\s+(?:\[[^\]]*\]\s+)?(http://\S+)\s+(\S+)", t, re.M)
    if m: print(m.group(1).rstrip("/"), m.group(2)); break
    u, s = re.search(r"^URIs:\s*(http://\S+)", t, re.M), re.search(r"^Suites:\s*(\S+)", t, re.M)
    if u and s: print(u.group(1).rstrip("/"), s.group(1)); break
PY
)
url="$mirror/dists/$suite/main/binary-amd64/Packages.xz"

mkdir -p "$work/steps" "$work/dl"
{ echo "FROM 127.0.0.1:$port/base/busybox:1"; for i in $(seq 10); do echo "RUN true $i"; done; } > "$work/steps/Dockerfile"
printf 'FROM 127.0.0.1:%s/base/busybox:1\nRUN wget -q -O /dev/null %s\n' "$port" "$url" > "$work/dl/Dockerfile"
"$m" -q --root "$work/root" build -t warm "$work/steps" >/dev/null   # pull the base once

t() { /usr/bin/time -f "%e" -o "$work/t" "$@" >/dev/null 2>"$work/err" || { tail -20 "$work/err" >&2; exit 1; }; cat "$work/t"; }
rows=()
for i in $(seq "$runs"); do
  for net in default none host; do
    r=$(t "$m" -q --root "$work/root" build --no-cache --network "$net" --allow network.host -t s "$work/steps")
    echo "10 RUN steps, --network $net, run $i: $r s"; rows+=("steps-$net $r")
  done
  for net in default host; do
    r=$(t "$m" -q --root "$work/root" build --no-cache --network "$net" --allow network.host -t d "$work/dl")
    echo "download ($url), --network $net, run $i: $r s"; rows+=("dl-$net $r")
  done
done
printf '%s\n' "${rows[@]}" | python3 -c '
import sys, statistics as st
rows = [l.split() for l in sys.stdin if l.strip()]
med = {k: st.median(float(r[1]) for r in rows if r[0] == k) for k in {r[0] for r in rows}}
d, n, h = med["steps-default"], med["steps-none"], med["steps-host"]
dd, dh = med["dl-default"], med["dl-host"]
print("medians: 10 steps default %.2f s, none %.2f s, host %.2f s; default costs %+.0f ms per RUN step vs none, %+.0f ms vs host; download default %.2f s vs host %.2f s (%.2fx)"
      % (d, n, h, (d - n) * 100, (d - h) * 100, dd, dh, dd / dh))
'
