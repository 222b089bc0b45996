#!/usr/bin/env bash
# Benchmark: the W1 two-platform build (bench/build.sh's workload) on one node, against the same
# build split over two nodes: this machine builds linux/amd64, an SSH node (a real sshd on a
# loopback port, the same machine, its own store) builds linux/arm64 under QEMU. Both cold (empty
# stores, base pulled from a local docker-registry), then cached. The split pays for streaming
# the context to the node and its result back; the gain comes on separate machines, where the
# arm64 node runs natively. Each run also builds linux/arm64 alone on one machine: the SSH
# node's share, which no split can go below, since a two-platform build on one node makes the
# 2,000-file COPY's layer once for both platforms. CPU seconds (user + system) of this process
# and of the node's manifold show the work done twice (ssh and sshd are not counted).
#
#   bench/builders.sh [RUNS]    (default 3; needs docker-registry, openssh-server, /usr/bin/time; root)
set -euo pipefail
cd "$(dirname "$0")/.."
runs=${1:-3}
cargo build --release -q
m=$PWD/target/release/manifold
work=$(mktemp -d /tmp/manifold-bench-builders.XXXXXX)
reg_pid= sshd_pid=
cleanup() { [ -n "$reg_pid" ] && kill "$reg_pid" 2>/dev/null; [ -n "$sshd_pid" ] && kill "$sshd_pid" 2>/dev/null; rm -rf "$work"; }
trap cleanup EXIT
free_port() { python3 -c 'import socket;s=socket.socket();s.bind(("127.0.0.1",0));print(s.getsockname()[1])'; }

port=$(free_port)
printf 'version: 0.1\nlog: {level: error, accesslog: {disabled: true}}\nstorage: {filesystem: {rootdirectory: %s}}\nhttp: {addr: 127.0.0.1:%s}\n' "$work/reg" "$port" > "$work/reg.yml"
docker-registry serve "$work/reg.yml" >/dev/null 2>&1 & reg_pid=$!
for _ in $(seq 100); do (exec 3<>/dev/tcp/127.0.0.1/$port) 2>/dev/null && break; sleep 0.05; done
scripts/busybox-image.sh "$work/bb" amd64 arm64 >/dev/null
"$m" -q --root "$work/seed" cp "oci:$work/bb:latest" "127.0.0.1:$port/base/busybox:1" >/dev/null

# The SSH node: its own host key, an authorized key whose environment gives it this manifold and
# its own store.
ssh_port=$(free_port)
mkdir -p "$work/node/bin" /run/sshd
# The node's manifold notes its CPU time (user + system seconds) for the table.
printf '#!/bin/sh\nexec /usr/bin/time -f "%%U %%S" -a -o %s %s "$@"\n' "$work/node-cpu" "$m" > "$work/node/bin/manifold"
chmod +x "$work/node/bin/manifold"
ssh-keygen -q -t ed25519 -N '' -f "$work/node/host_key"
ssh-keygen -q -t ed25519 -N '' -f "$work/node/id"
echo "environment=\"PATH=$work/node/bin:/usr/bin:/bin:/usr/sbin:/sbin\",environment=\"MANIFOLD_ROOT=$work/node/root\" $(cat "$work/node/id.pub")" > "$work/node/authorized_keys"
cat > "$work/node/sshd_config" <<CFG
Port $ssh_port
ListenAddress 127.0.0.1
HostKey $work/node/host_key
AuthorizedKeysFile $work/node/authorized_keys
PidFile $work/node/sshd.pid
PermitUserEnvironment yes
PasswordAuthentication no
UsePAM no
StrictModes no
LogLevel ERROR
CFG
/usr/sbin/sshd -D -e -f "$work/node/sshd_config" 2>/dev/null & sshd_pid=$!
for _ in $(seq 100); do (exec 3<>/dev/tcp/127.0.0.1/$ssh_port) 2>/dev/null && break; sleep 0.05; done
echo "[127.0.0.1]:$ssh_port $(cat "$work/node/host_key.pub")" > "$work/node/known_hosts"
printf 'Host *\n  IdentityFile %s\n  IdentitiesOnly yes\n  UserKnownHostsFile %s\n  StrictHostKeyChecking yes\n  LogLevel ERROR\n' \
  "$work/node/id" "$work/node/known_hosts" > "$work/node/ssh_config"
export MANIFOLD_SSH="ssh -F $work/node/ssh_config" MANIFOLD_CONFIG=$work/config
"$m" builder create --name split --node here --platform linux/amd64 local >/dev/null
"$m" builder create --name split --append --node arm --platform linux/arm64 "ssh://root@127.0.0.1:$ssh_port" >/dev/null

ctx=$work/ctx; mkdir -p "$ctx/files"
for i in $(seq 2000); do echo "file $i" > "$ctx/files/f$i.txt"; done
cat > "$ctx/Dockerfile" <<DF
FROM 127.0.0.1:$port/base/busybox:1
RUN seq 1 20000 | sed 's/^/line /' > /lines.txt
RUN mkdir /rand && for i in \$(seq 1 200); do head -c 102400 /dev/urandom > /rand/f\$i; done
COPY files /files
RUN uname -m > /arch
DF

# Wall seconds, peak RSS, and CPU seconds (user + system) of this process and of the node's
# manifold processes meanwhile: on a machine whose cores the one-node build already keeps
# busy, work the split does twice shows as CPU time.
measure() {
  : > "$work/node-cpu"
  /usr/bin/time -f "%e %M %U %S" -o "$work/t" "$@" >/dev/null 2>"$work/err" || { tail -20 "$work/err" >&2; exit 1; }
  python3 - "$work/t" "$work/node-cpu" <<'PY'
import sys
e, rss, u, s = open(sys.argv[1]).read().split()[-4:]
node = sum(float(x) for l in open(sys.argv[2]) for x in l.split()[-2:] if l.strip())
print(f"{e} {rss} {float(u) + float(s):.2f} {node:.2f}")
PY
}
rows=()
for i in $(seq "$runs"); do
  # The floor for any split: what one machine takes to build linux/arm64 alone, which is the
  # SSH node's share (the two-platform build on one node makes the COPY's layer once for both).
  rm -rf "$work/root-alone"
  r=$(measure "$m" --root "$work/root-alone" build --platform linux/arm64 -t bench/app:1 "$ctx")
  read -r wall _ cpu _ <<<"$r"
  echo "arm64 alone run $i: $wall s (CPU $cpu s)"; rows+=("alone-cold $r")
  for b in default split; do
    rm -rf "$work/root-$b" "$work/node/root"
    r=$(measure "$m" --root "$work/root-$b" build --builder "$b" --platform linux/amd64,linux/arm64 -t bench/app:1 "$ctx")
    read -r wall _ cpu ncpu <<<"$r"
    echo "$b cold   run $i: $wall s (CPU here $cpu s, on the node $ncpu s)"; rows+=("$b-cold $r")
    [ "$b" = split ] && grep -h 'done:' "$work/err" | sed 's/^/  /'
    r=$(measure "$m" --root "$work/root-$b" build --builder "$b" --platform linux/amd64,linux/arm64 -t bench/app:1 "$ctx")
    read -r wall _ cpu ncpu <<<"$r"
    echo "$b cached run $i: $wall s (CPU here $cpu s, on the node $ncpu s)"; rows+=("$b-cached $r")
    [ "$b" = split ] && grep -h 'done:' "$work/err" | sed 's/^/  /'
  done
done
# Raw cost of moving bytes through ssh here, for the per-MB overhead.
head -c 100000000 /dev/zero > "$work/100mb"
t0=$(date +%s.%N); $MANIFOLD_SSH -p "$ssh_port" root@127.0.0.1 'cat > /dev/null' < "$work/100mb"; t1=$(date +%s.%N)
printf '%s\n' "${rows[@]}" | python3 -c '
import sys, statistics as st
rows = [l.split() for l in sys.stdin if l.strip()]
med = {}
for k in ("default-cold", "default-cached", "split-cold", "split-cached", "alone-cold"):
    t = [float(r[1]) for r in rows if r[0] == k]
    cpu = [float(r[3]) + float(r[4]) for r in rows if r[0] == k]
    med[k] = st.median(t)
    med[k + "-cpu"] = st.median(cpu)
    print("%-15s median %7.2f s, CPU %6.2f s" % (k, med[k], med[k + "-cpu"]))
print("split / one node, cold:   %.2fx (target <= 1.15x); CPU %.2fx" % (med["split-cold"] / med["default-cold"], med["split-cold-cpu"] / med["default-cold-cpu"]))
print("split / one node, cached: %.2fx" % (med["split-cached"] / med["default-cached"]))
print("floor, arm64 alone / one node (both platforms), cold: %.2fx" % (med["alone-cold"] / med["default-cold"]))
'
python3 -c "print('ssh stream of 100 MB over loopback: %.2f s (%.1f ms per MB)' % ($t1-$t0, ($t1-$t0)*10))"
