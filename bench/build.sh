#!/usr/bin/env bash
# Benchmark: one two-platform build (linux/amd64 + linux/arm64, arm64 under QEMU) with manifold
# and with `buildah build --platform ... --layers`, in the same run. The workload: a busybox base
# (Debian's busybox-static, served by a local docker-registry), a RUN that writes a 20,000-line
# text file, a RUN that writes 200 files of 100 KB of random bytes, a COPY of a 2,000-file
# context, a RUN of `uname -m`. Cold builds start from empty storage (the base is pulled);
# the cached rebuild runs right after.
#
#   bench/build.sh [RUNS]     (default 3; needs buildah, docker-registry, /usr/bin/time; root)
#   MANIFOLD_BUILD_FLAGS="--network none" bench/build.sh   to compare a flag in the same conditions
#   BASELINE=/path/to/older/manifold bench/build.sh   also measures that binary in the same runs
#                             (skip buildah with NO_BUILDAH=1)
set -euo pipefail
cd "$(dirname "$0")/.."
runs=${1:-3}
cargo build --release -q
m=$PWD/target/release/manifold
work=$(mktemp -d /tmp/manifold-bench-build.XXXXXX)
reg_pid=
cleanup() { [ -n "$reg_pid" ] && kill "$reg_pid" 2>/dev/null; rm -rf "$work"; }
trap cleanup EXIT

port=$(python3 -c 'import socket;s=socket.socket();s.bind(("127.0.0.1",0));print(s.getsockname()[1])')
printf 'version: 0.1\nlog: {level: error, accesslog: {disabled: true}}\nstorage: {filesystem: {rootdirectory: %s}}\nhttp: {addr: 127.0.0.1:%s}\n' "$work/reg" "$port" > "$work/reg.yml"
docker-registry serve "$work/reg.yml" >/dev/null 2>&1 & reg_pid=$!
for _ in $(seq 100); do (exec 3<>/dev/tcp/127.0.0.1/$port) 2>/dev/null && break; sleep 0.05; done
scripts/busybox-image.sh "$work/bb" amd64 arm64 >/dev/null
"$m" -q --root "$work/seed" cp "oci:$work/bb:latest" "127.0.0.1:$port/base/busybox:1" >/dev/null

ctx=$work/ctx; mkdir -p "$ctx/files"
for i in $(seq 2000); do echo "file $i" > "$ctx/files/f$i.txt"; done
cat > "$ctx/Dockerfile" <<DF
FROM 127.0.0.1:$port/base/busybox:1
RUN seq 1 20000 | sed 's/^/line /' > /lines.txt
RUN mkdir /rand && for i in \$(seq 1 200); do head -c 102400 /dev/urandom > /rand/f\$i; done
COPY files /files
RUN uname -m > /arch
DF

measure() { /usr/bin/time -f "%e %M" -o "$work/t" "$@" >/dev/null 2>"$work/err" || { tail -20 "$work/err" >&2; exit 1; }; cat "$work/t"; }
rows=()
for i in $(seq "$runs"); do
  rm -rf "$work/m-root"
  r=$(measure "$m" -q --root "$work/m-root" build ${MANIFOLD_BUILD_FLAGS:-} --platform linux/amd64,linux/arm64 -t bench/app:1 "$ctx")
  echo "manifold cold  run $i: ${r% *} s, peak RSS $(( ${r#* } / 1024 )) MB"; rows+=("manifold-cold $r")
  r=$(measure "$m" -q --root "$work/m-root" build ${MANIFOLD_BUILD_FLAGS:-} --platform linux/amd64,linux/arm64 -t bench/app:1 "$ctx")
  echo "manifold cached run $i: ${r% *} s, peak RSS $(( ${r#* } / 1024 )) MB"; rows+=("manifold-cached $r")
  if [ -n "${BASELINE:-}" ]; then
    rm -rf "$work/base-root"
    r=$(measure "$BASELINE" -q --root "$work/base-root" build --platform linux/amd64,linux/arm64 -t bench/app:1 "$ctx")
    echo "baseline cold  run $i: ${r% *} s"; rows+=("baseline-cold $r")
    r=$(measure "$BASELINE" -q --root "$work/base-root" build --platform linux/amd64,linux/arm64 -t bench/app:1 "$ctx")
    echo "baseline cached run $i: ${r% *} s"; rows+=("baseline-cached $r")
  fi
  [ -n "${NO_BUILDAH:-}" ] && continue

  rm -rf "$work/b-root" "$work/b-run"
  b=(buildah --root "$work/b-root" --runroot "$work/b-run" --storage-driver overlay)
  r=$(measure "${b[@]}" build --tls-verify=false --layers --platform linux/amd64,linux/arm64 --manifest bench-app "$ctx")
  echo "buildah  cold  run $i: ${r% *} s, peak RSS $(( ${r#* } / 1024 )) MB"; rows+=("buildah-cold $r")
  r=$(measure "${b[@]}" build --tls-verify=false --layers --platform linux/amd64,linux/arm64 --manifest bench-app2 "$ctx")
  echo "buildah  cached run $i: ${r% *} s, peak RSS $(( ${r#* } / 1024 )) MB"; rows+=("buildah-cached $r")
  "${b[@]}" rm -a >/dev/null 2>&1 || true
  rm -rf "$work/b-root" "$work/b-run" 2>/dev/null || true
done
printf '%s\n' "${rows[@]}" | python3 -c '
import sys, statistics as st
rows = [l.split() for l in sys.stdin if l.strip()]
med = {}
for k in ("manifold-cold", "manifold-cached", "baseline-cold", "baseline-cached", "buildah-cold", "buildah-cached"):
    t = [float(r[1]) for r in rows if r[0] == k]
    if not t:
        continue
    m = [int(r[2]) for r in rows if r[0] == k]
    med[k] = st.median(t)
    print("%-16s median %7.2f s   peak RSS max %7.1f MB" % (k, med[k], max(m) / 1024))
if "baseline-cold" in med:
    print("manifold / baseline: cold %.2fx, cached %.2fx" % (med["manifold-cold"] / med["baseline-cold"], med["manifold-cached"] / med["baseline-cached"]))
if "buildah-cold" in med:
    print("cold build manifold / buildah: %.2fx (target <= 0.60x)" % (med["manifold-cold"] / med["buildah-cold"]))
print("manifold cached rebuild: %.2f s (target <= 0.30 s)" % med["manifold-cached"])
'
