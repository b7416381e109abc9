#!/usr/bin/env bash
# Benchmark: `spot create` + `spot destroy` of 50 instances in 5 regions vs 50 in 1 region,
# against moto's server through the fault proxy adding 100 ms to every EC2 call.
# Prints wall times, the 5:1 ratio, and EC2 calls by operation (they must grow with
# regions, not instances). No asserts.
#
#   bench/ec2.sh                       # uses target/release/spot (builds it if missing)
#   SPOT_BIN=target/debug/spot DELAY_MS=100 COUNT=50 bench/ec2.sh
#   CALLS=1 SPOT_BIN=target/debug/spot DELAY_MS=0 bench/ec2.sh
#       instead: a table of EC2 calls per create+destroy of 1, 12 and 36 instances in 3
#       regions, pagination off and with 2-item pages (instant fleets listed only by id
#       and client tokens honoured in both)
set -euo pipefail
cd "$(dirname "$0")/.."
SPOT_BIN=${SPOT_BIN:-target/release/spot}
DELAY_MS=${DELAY_MS:-100}
COUNT=${COUNT:-50}
[[ -x $SPOT_BIN ]] || cargo build --release --quiet

# shellcheck source=bench/emulator.sh
source bench/emulator.sh

project() { # name regions...
  local dir=$work/$1; shift
  mkdir -p "$dir/.spot"
  { echo "aws: {total_instances: $COUNT, ssh_cidr: 127.0.0.1/32}"; echo "regions:"
    for r in "$@"; do echo "  - $r: {machine_type: [t3.micro, t3a.micro]}"; done; } >"$dir/.spot/config.yaml"
  echo "version: 1" >"$dir/.spot/deployment.yaml"
  echo "$dir"
}

run() { # label dir id
  local before mid after t0 t1 t2
  before=$(stats); t0=$(ms)
  "$SPOT_BIN" create --no-deliver --deployment-id "$3" "$2" >/dev/null 2>"$work/$3.create.log" || { cat "$work/$3.create.log"; exit 1; }
  t1=$(ms); mid=$(stats)
  "$SPOT_BIN" destroy "$3" --dir "$2" >/dev/null 2>"$work/$3.destroy.log" || { cat "$work/$3.destroy.log"; exit 1; }
  t2=$(ms); after=$(stats)
  [[ -n ${SHOW_LOGS:-} ]] && cat "$work/$3.destroy.log" "$work/$3.create.log" >&2
  left=$(python3 tests/support/ec2_inventory.py "http://127.0.0.1:$moto_port" us-east-1 us-west-2 eu-west-1 eu-central-1 ap-southeast-2)
  echo "$1: create $((t1 - t0)) ms, destroy $((t2 - t1)) ms, left behind: $left"
  echo "  create calls:  $(diff_calls "$before" "$mid")"
  echo "  destroy calls: $(diff_calls "$mid" "$after")"
  eval "${3//-/_}_create=$((t1 - t0)) ${3//-/_}_destroy=$((t2 - t1))"
}

# moto builds each region's backend on first use (seconds): do that before timing.
python3 tests/support/ec2_inventory.py "http://127.0.0.1:$moto_port" us-east-1 us-west-2 eu-west-1 eu-central-1 ap-southeast-2 >/dev/null
if [[ -n ${CALLS:-} ]]; then
  echo "| instances (3 regions) | pages | create calls | destroy calls | total |"
  echo "|---|---|---|---|---|"
  for pages in off 2; do
    b='{"instant_fleets": true, "client_tokens": true}'
    [[ $pages == off ]] || b="{\"instant_fleets\": true, \"client_tokens\": true, \"pages\": $pages}"
    curl -s -X POST -d "$b" "http://127.0.0.1:$proxy_port/__behaviours" >/dev/null
    for n in 1 12 36; do
      dir=$(COUNT=$n project "c$n-$pages" us-east-1 us-west-2 eu-west-1)
      id="calls-$n-$pages"; before=$(stats)
      "$SPOT_BIN" create --no-deliver --deployment-id "$id" "$dir" >/dev/null 2>"$work/$id.log" || { cat "$work/$id.log"; exit 1; }
      mid=$(stats)
      "$SPOT_BIN" destroy "$id" --dir "$dir" >/dev/null 2>>"$work/$id.log" || { cat "$work/$id.log"; exit 1; }
      after=$(stats)
      c=$(diff_calls "$before" "$mid" | cut -d' ' -f1); d=$(diff_calls "$mid" "$after" | cut -d' ' -f1)
      echo "| $n | $pages | $c | $d | $((c + d)) |"
      [[ -n ${SHOW_CALLS:-} ]] && echo "  create: $(diff_calls "$before" "$mid")" && echo "  destroy: $(diff_calls "$mid" "$after")"
    done
  done
  exit 0
fi
one=$(project one us-east-1)
five=$(project five us-east-1 us-west-2 eu-west-1 eu-central-1 ap-southeast-2)
echo "$COUNT instances, ${DELAY_MS} ms added to every EC2 call, $SPOT_BIN"
run "1 region " "$one" b-one
run "5 regions" "$five" b-five
echo "emulator time by action (ms, summed over calls): $(curl -s "http://127.0.0.1:$proxy_port/__stats/upstream-ms")"
awk -v a="$b_five_create" -v b="$b_one_create" -v c="$b_five_destroy" -v d="$b_one_destroy" \
  'BEGIN { printf "ratio 5 regions / 1 region: create %.2fx, destroy %.2fx (target <= 1.5x)\n", a / b, c / d }'
echo "original Python tool, same machine, same 100 ms: 2.2 s to its last launch call (37 calls), destroy 201 calls / 6.0 s, 1 security group per region left"
