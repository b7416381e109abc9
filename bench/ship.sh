#!/usr/bin/env bash
# Benchmark: shipping a bundle over SSH with spot's SSH layer (examples/ship.rs: the same
# `remote` code `spot create` uses: pinned host key, streaming upload, sha256 checked on
# the far side) against OpenSSH's `scp`, side by side, then fan-out to 8 hosts vs 1.
# Prints times and ratios; no asserts. Needs root (private sshd, a network namespace).
#
# 1. upload: a SIZE_MB (1024) bundle to one private sshd on 127.0.0.1, spot vs scp,
#    best of RUNS (3). Target: spot >= 0.8x scp's throughput.
# 2. fan-out: a FAN_MB (100) bundle to 8 sshd vs 1, inside a private network namespace
#    where `tc` (htb on lo, one 50 Mbit/s class per sshd port) throttles each host's
#    link, so the figure measures parallelism, not this machine's cores.
#    Target: 8 hosts <= 1.5x the single-host wall time.
#
#   bench/ship.sh
#   SIZE_MB=256 FAN_MB=50 RUNS=1 bench/ship.sh
set -euo pipefail
cd "$(dirname "$0")/.."
SIZE_MB=${SIZE_MB:-1024}
FAN_MB=${FAN_MB:-100}
RUNS=${RUNS:-3}
SHIP=target/release/examples/ship

if [[ ${1:-} != --in-netns ]]; then
  cargo build --release --quiet --example ship
  mkdir -p /run/sshd
  exec unshare --net -- "$0" --in-netns
fi

ip link set lo up
ip link set lo mtu 1500
work=$(mktemp -d)
pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
  rm -rf "$work"
}
trap cleanup EXIT
ssh-keygen -q -t ed25519 -N '' -f "$work/host" -C bench-host
ssh-keygen -q -t ed25519 -N '' -f "$work/client" -C bench-client
cp "$work/client.pub" "$work/authorized_keys"
mkdir -p "$work/dest"

start_sshd() { # port
  cat >"$work/sshd_$1.conf" <<CONF
Port $1
ListenAddress 127.0.0.1
HostKey $work/host
AuthorizedKeysFile $work/authorized_keys
PidFile $work/sshd_$1.pid
StrictModes no
PasswordAuthentication no
KbdInteractiveAuthentication no
PermitRootLogin prohibit-password
UsePAM no
LogLevel ERROR
Subsystem sftp internal-sftp
CONF
  /usr/sbin/sshd -D -e -f "$work/sshd_$1.conf" 2>>"$work/sshd.log" &
  pids+=($!)
  for _ in $(seq 1 100); do (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0; sleep 0.05; done
  echo "sshd on $1 did not start" >&2
  cat "$work/sshd.log" >&2
  exit 1
}
ship() { # file [--raw] port...
  local file=$1
  shift
  "$SHIP" --user root --host-key "$work/host.pub" --key "$work/client" --file "$file" --dest "$work/dest" "$@" |
    cut -d' ' -f1
}
scp_once() { # file port
  local t0 t1
  t0=$(date +%s.%N)
  scp -q -i "$work/client" -P "$2" -o UserKnownHostsFile="$work/known" -o StrictHostKeyChecking=no \
    -o LogLevel=ERROR "$1" "root@127.0.0.1:$work/dest/scp.bin" || { echo "scp failed" >&2; exit 1; }
  t1=$(date +%s.%N)
  calc "$t1 - $t0"
}
best() { sort -g | head -n 1; }
calc() { awk "BEGIN { printf \"%.6f\\n\", $1 }"; }

# 1. One host, no throttle: spot vs scp.
if [[ ${PARTS:-upload,fanout} == *upload* ]]; then
head -c "$((SIZE_MB * 1024 * 1024))" /dev/urandom >"$work/bundle.bin"
start_sshd 2200
timed() { local t0 t1; t0=$(date +%s.%N); "$@" >/dev/null; t1=$(date +%s.%N); calc "$t1 - $t0"; }
ssh_cat() {
  ssh -i "$work/client" -p "$2" -o UserKnownHostsFile="$work/known" -o StrictHostKeyChecking=no \
    -o LogLevel=ERROR root@127.0.0.1 'cat > /dev/null' <"$1"
}
scp_verified() { # scp, then sha256sum on the server: the same work as spot's upload
  scp_once "$1" "$2" >/dev/null
  ssh -i "$work/client" -p "$2" -o UserKnownHostsFile="$work/known" -o StrictHostKeyChecking=no \
    -o LogLevel=ERROR root@127.0.0.1 "sha256sum $work/dest/scp.bin" >/dev/null
}
runs() { for _ in $(seq 1 "$RUNS"); do "$@"; rm -f "$work"/dest/*; done | best; }
raw_t=$(runs ship "$work/bundle.bin" --raw 2200)
cat_t=$(runs timed ssh_cat "$work/bundle.bin" 2200)
spot_t=$(runs ship "$work/bundle.bin" 2200)
scp_t=$(runs scp_once "$work/bundle.bin" 2200)
scpv_t=$(runs timed scp_verified "$work/bundle.bin" 2200)
sha_t=$(timed sha256sum "$work/bundle.bin")
mbs() { calc "$SIZE_MB / $1"; }
printf 'upload %d MB to 1 sshd, best of %d (MB/s):\n' "$SIZE_MB" "$RUNS"
printf '  transport only: spot %.0f, ssh "cat > /dev/null" %.0f -> %.2fx\n' \
  "$(mbs "$raw_t")" "$(mbs "$cat_t")" "$(calc "$cat_t / $raw_t")"
printf '  upload: spot (written + sha256 checked on the server) %.0f, scp (no check) %.0f -> %.2fx (target >= 0.8x)\n' \
  "$(mbs "$spot_t")" "$(mbs "$scp_t")" "$(calc "$scp_t / $spot_t")"
printf '  same work: spot %.0f, scp + sha256sum on the server %.0f -> %.2fx\n' \
  "$(mbs "$spot_t")" "$(mbs "$scpv_t")" "$(calc "$scpv_t / $spot_t")"
printf '  (this machine'"'"'s sha256sum alone: %.0f MB/s)\n' "$(mbs "$sha_t")"
rm -f "$work/bundle.bin"
fi
[[ ${PARTS:-upload,fanout} == *fanout* ]] || exit 0

# 2. Fan-out over 50 Mbit/s links.
head -c "$((FAN_MB * 1024 * 1024))" /dev/urandom >"$work/fan.bin"
tc qdisc add dev lo root handle 1: htb default 99 r2q 100
tc class add dev lo parent 1: classid 1:99 htb rate 10gbit
ports=()
for i in $(seq 1 8); do
  port=$((2300 + i))
  ports+=("$port")
  start_sshd "$port"
  tc class add dev lo parent 1: classid "1:$i" htb rate 50mbit ceil 50mbit
  tc filter add dev lo parent 1: protocol ip prio 1 u32 match ip dport "$port" 0xffff flowid "1:$i"
done
one=$(ship "$work/fan.bin" "${ports[0]}")
rm -f "$work"/dest/*
eight=$(ship "$work/fan.bin" "${ports[@]}")
printf 'fan-out %d MB over 50 Mbit/s links: 1 host %.2fs, 8 hosts %.2fs\n' "$FAN_MB" "$one" "$eight"
printf 'ratio 8 hosts / 1 host: %.2fx (target <= 1.5x)\n' "$(calc "$eight / $one")"
