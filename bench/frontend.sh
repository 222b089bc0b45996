#!/usr/bin/env bash
# Benchmark: `manifold build --check` (parse, every check, plan without steps) over the
# tests/dockerfiles corpus and over generated large files: 50 MB of RUN lines, one ENV with 20,000
# pairs, 16,000 global ARGs, a chain of 10,000 stages. The 50 MB come twice: as short RUN lines
# (~90 bytes) and as long ones (~400 bytes), since memory per instruction has a fixed part. Two
# target platforms (linux/amd64, linux/arm64), as a multi-platform build would. Wall time and peak RSS from /usr/bin/time.
# No BuildKit peer: the BuildKit here (docker 20.10's built-in 0.8) has no --check.
#
#   bench/frontend.sh [RUNS]     (default 3; needs /usr/bin/time, python3)
set -euo pipefail
cd "$(dirname "$0")/.."
runs=${1:-3}
cargo build --release -q -p manifold-cli
m=$PWD/target/release/manifold
work=$(mktemp -d /tmp/manifold-bench-frontend.XXXXXX)
trap 'rm -rf "$work"' EXIT
mkdir -p "$work/ctx" "$work/root"

python3 - "$work" <<'PY'
import sys
w = sys.argv[1]
with open(f"{w}/run-lines.Dockerfile", "w") as f:
    f.write("FROM alpine:3.19\n")
    n, i = 17, 0
    while n < 50 * 1024 * 1024:
        line = f"RUN echo step {i} && test -d /usr/local/share && printf '%s\\n' \"value $i\" > /dev/null\n"
        f.write(line); n += len(line); i += 1
# The same 50 MB as real-world-length RUN lines (~400 bytes: apt-get installs, build commands).
with open(f"{w}/run-long-lines.Dockerfile", "w") as f:
    f.write("FROM alpine:3.19\n")
    n, i = 17, 0
    pkgs = " ".join(f"package-{k}-dev" for k in range(24))
    while n < 50 * 1024 * 1024:
        line = f"RUN apt-get update && apt-get install -y --no-install-recommends {pkgs} && rm -rf /var/lib/apt/lists/* # {i}\n"
        f.write(line); n += len(line); i += 1
with open(f"{w}/env-pairs.Dockerfile", "w") as f:
    f.write("FROM alpine:3.19\nENV " + " ".join(f"K{i}=value{i}" for i in range(20000)) + "\nRUN true\n")
with open(f"{w}/global-args.Dockerfile", "w") as f:
    f.write("".join(f"ARG A{i}=v{i}\n" for i in range(16000)) + "FROM alpine:3.19\nARG A0\nRUN true\n")
with open(f"{w}/stage-chain.Dockerfile", "w") as f:
    f.write("FROM alpine:3.19 AS s0\n" + "".join(f"FROM s{i-1} AS s{i}\nRUN echo {i}\n" for i in range(1, 10000)))
PY

# /usr/bin/time reports "seconds KB"; --check exits 1 when it finds something, which is fine.
measure() { /usr/bin/time -f "%e %M" -o "$work/t" "$@" >/dev/null 2>"$work/err" || true; cat "$work/t"; }
check() { "$m" --root "$work/root" build --check --platform linux/amd64,linux/arm64 -f "$1" "$work/ctx"; }

corpus() { for f in tests/dockerfiles/*.Dockerfile; do check "$f" >/dev/null 2>&1 || true; done; }
export -f check corpus; export m work

printf '%-16s %10s %10s %10s %12s\n' input size_MB best_s peak_MB peak/size
for name in corpus run-lines run-long-lines env-pairs global-args stage-chain; do
  best=; peak=0
  for _ in $(seq "$runs"); do
    if [ "$name" = corpus ]; then
      r=$(measure bash -c corpus); size=$(cat tests/dockerfiles/*.Dockerfile | wc -c)
    else
      r=$(measure bash -c "check $work/$name.Dockerfile"); size=$(wc -c < "$work/$name.Dockerfile")
    fi
    t=${r% *}; kb=${r#* }
    if [ -z "$best" ] || awk "BEGIN{exit !($t < $best)}"; then best=$t; fi
    [ "$kb" -gt "$peak" ] && peak=$kb
  done
  awk -v n="$name" -v s="$size" -v t="$best" -v k="$peak" \
    'BEGIN{printf "%-16s %10.2f %10.2f %10.1f %12s\n", n, s/1048576, t, k/1024, (s > 1048576 ? sprintf("%.2fx", k*1024/s) : "-")}'
done
