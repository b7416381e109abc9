#!/usr/bin/env bash
# Benchmark: what `expose` costs a create and a destroy. Two deployments side by side,
# the same but for config.yaml's `expose` (baseline: none; the other: 10 entries, 19
# rules besides SSH's, from the runner, CIDRs and `anywhere`), created and destroyed in turn ROUNDS
# times against moto's server through the fault proxy adding DELAY_MS to every EC2 call.
# Prints medians, the ratio to the baseline, and EC2 calls by operation (the rules must
# cost calls per group, not per rule). A stand-in for checkip.amazonaws.com answers
# 127.0.0.1. No asserts.
#
#   bench/expose.sh                         # uses target/release/spot (builds it if missing)
#   SPOT_BIN=target/debug/spot DELAY_MS=100 ROUNDS=5 bench/expose.sh
set -euo pipefail
cd "$(dirname "$0")/.."
SPOT_BIN=${SPOT_BIN:-target/release/spot}
DELAY_MS=${DELAY_MS:-100}
ROUNDS=${ROUNDS:-5}
[[ -x $SPOT_BIN ]] || cargo build --release --quiet

# shellcheck source=bench/emulator.sh
source bench/emulator.sh
checkip_port=$(free_port)
python3 -c '
import http.server, sys
class H(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200); self.end_headers(); self.wfile.write(b"127.0.0.1\n")
    def log_message(self, *a): pass
http.server.HTTPServer(("127.0.0.1", int(sys.argv[1])), H).serve_forever()' "$checkip_port" &
pids+=($!)
wait_port "$checkip_port"
export SPOT_EMULATOR_CHECKIP="127.0.0.1:$checkip_port"

project() { # name [expose lines]
  local dir=$work/$1
  mkdir -p "$dir/.spot"
  printf 'aws: {total_instances: 4}\nregions:\n  - us-east-1: {machine_type: [t3.micro, t3a.micro]}\n%s' "${2:-}" >"$dir/.spot/config.yaml"
  echo "version: 1" >"$dir/.spot/deployment.yaml"
  echo "$dir"
}
expose='expose:
  - {port: 8080, http: true}
  - {port: 8443, http: true, from: [runner, 203.0.113.0/24, "2001:db8::/64"]}
  - {port: 3000-3010, from: [runner, 198.51.100.0/24]}
  - {port: 9000-9010, protocol: udp, from: anywhere}
  - {port: 5432, from: [10.0.0.0/8, 172.16.0.0/12, 192.168.0.0/16]}
  - {port: 6379, from: runner}
  - {port: 4000, from: [anywhere]}
  - {port: 4001, protocol: udp, from: [runner, "2001:db8:1::/48"]}
  - {port: 27017, from: [198.51.100.7/32, 198.51.100.8/32]}
  - {port: 11211, protocol: udp}
'
plain=$(project plain)
exposed=$(project exposed "$expose")
median() { tr ' ' '\n' | sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }

cycle() { # name dir round -> "create_ms destroy_ms"
  local id="$1-$3" t0 t1 t2
  t0=$(ms)
  "$SPOT_BIN" create --no-deliver --deployment-id "$id" "$2" >/dev/null 2>"$work/$id.log" || { cat "$work/$id.log" >&2; exit 1; }
  t1=$(ms)
  "$SPOT_BIN" destroy "$id" --dir "$2" >/dev/null 2>>"$work/$id.log" || { cat "$work/$id.log" >&2; exit 1; }
  t2=$(ms)
  echo "$((t1 - t0)) $((t2 - t1))"
}

# moto builds a region's backend on first use: do that before timing.
python3 tests/support/ec2_inventory.py "http://127.0.0.1:$moto_port" us-east-1 >/dev/null
echo "4 instances in us-east-1, ${DELAY_MS} ms added to every EC2 call, $ROUNDS rounds in turn, $SPOT_BIN"
pc=() pd=() ec=() ed=()
for r in $(seq 1 "$ROUNDS"); do
  read -r c d < <(cycle plain "$plain" "$r"); pc+=("$c"); pd+=("$d")
  before=$(stats)
  read -r c d < <(cycle exposed "$exposed" "$r"); ec+=("$c"); ed+=("$d")
  after=$(stats)
done
calls_plain_before=$(stats)
cycle plain "$plain" calls >/dev/null
calls_plain=$(diff_calls "$calls_plain_before" "$(stats)")
rules=$(python3 -c '
import boto3, sys
e = boto3.client("ec2", region_name="us-east-1", endpoint_url=sys.argv[1], aws_access_key_id="t", aws_secret_access_key="t")
print("(checked: no group left)" if all(g["GroupName"] == "default" for g in e.describe_security_groups()["SecurityGroups"]) else "GROUPS LEFT")' "http://127.0.0.1:$moto_port")
m() { printf '%s ' "$@" | median; }
mpc=$(m "${pc[@]}") mpd=$(m "${pd[@]}") mec=$(m "${ec[@]}") med=$(m "${ed[@]}")
echo "| | create (median ms) | destroy (median ms) | EC2 calls create+destroy |"
echo "|---|---|---|---|"
echo "| no expose (baseline) | $mpc | $mpd | $(cut -d' ' -f1 <<<"$calls_plain") |"
echo "| 10 entries, 19 rules + SSH | $mec | $med | $(cut -d' ' -f1 <<<"$(diff_calls "$before" "$after")") |"
awk -v a="$mec" -v b="$mpc" -v c="$med" -v d="$mpd" \
  'BEGIN { printf "| ratio | %.2fx | %.2fx | |\n", a / b, c / d }'
echo "baseline calls: $calls_plain"
echo "expose calls:   $(diff_calls "$before" "$after")"
echo "$rules"
