#!/usr/bin/env bash
# Benchmark: a push to a running pull-request environment, redeployed in place (EC2
# Instance Connect key, check, upload, scripts, service restart, health check) vs the
# named baseline, replacing it (destroy, then create and deliver anew: what spot did
# before and what peer actions do on every push). The action's main step as the runner
# runs it, on a copy of examples/hello (COUNT instances; its service binds 127.0.0.1:8080
# and the played instances share this machine's network, so keep COUNT at 1), against
# moto behind the
# fault proxy adding DELAY_MS to every EC2 call; instances are real sshd (the player).
# Each round: one push that fits (redeploy) and one that changes the time to live
# (replace), side by side. Prints best and median of RUNS rounds and the ratio.
#
# On the emulator an instance is `running` at once and its sshd starts in ~0.1 s; on
# EC2 a replacement also waits 30-90 s for boot and cloud-init, so the real ratio is
# larger than this one.
#
#   bench/redeploy.sh                  # uses target/release/spot (builds it if missing)
#   SPOT_BIN=target/debug/spot RUNS=5 DELAY_MS=50 bench/redeploy.sh
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$PWD
SPOT_BIN=$repo/${SPOT_BIN:-target/release/spot}
RUNS=${RUNS:-5}
COUNT=${COUNT:-1}
DELAY_MS=${DELAY_MS:-50}
[[ -x $SPOT_BIN ]] || cargo build --release --quiet --bin spot

source scripts/emulator.sh
start_moto >/dev/null
start_proxy "$DELAY_MS"
export AWS_REGION=us-west-2 AWS_CONFIG_FILE=/nonexistent AWS_SHARED_CREDENTIALS_FILE=/nonexistent
start_player us-west-2

app=$work/app
cp -r examples/hello "$app"
sed -i "s/total_instances: [0-9]*/total_instances: $COUNT/" "$app/.spot/config.yaml"
grep -q "^  ttl:" "$app/.spot/config.yaml" || sed -i 's/^aws:/aws:\n  ttl: 8h/' "$app/.spot/config.yaml"
export APP_TOKEN=bench-token
echo '{"action": "synchronize", "pull_request": {"number": 9, "head": {"sha": "feedfacefeedface"}}}' >"$work/event.json"

# One main step of the action for a push; prints its wall time in ms.
push() {
  local n=$1 start
  echo "build $n" >"$app/.spot/files/build.txt"
  start=$(date +%s%N)
  env GITHUB_ACTIONS=true GITHUB_RUN_ID="77$n" GITHUB_RUN_ATTEMPT=1 GITHUB_REPOSITORY=acme/app \
    GITHUB_EVENT_NAME=pull_request GITHUB_EVENT_PATH="$work/event.json" \
    GITHUB_OUTPUT="$work/output" GITHUB_STATE="$work/state" GITHUB_STEP_SUMMARY="$work/summary" \
    INPUT_MODE=up INPUT_KEEP=true "INPUT_WORKING-DIRECTORY=$app" "INPUT_SSH-CIDR=127.0.0.1/32" \
    "$SPOT_BIN" action main >"$work/push-$n.log" 2>&1 || { cat "$work/push-$n.log"; exit 1; }
  echo $((($(date +%s%N) - start) / 1000000))
}
set_ttl() { sed -i "s/^  ttl: .*/  ttl: $1/" "$app/.spot/config.yaml"; }

set_ttl 8h
first=$(push 0)
echo "first push (create, $COUNT instance(s)): ${first} ms"
in_place=()
replaced=()
ttl=8h
for round in $(seq 1 "$RUNS"); do
  in_place+=("$(push "$round"1)")
  grep -q "redeployed into the running pr-9" "$work/push-${round}1.log" || { echo "round $round did not redeploy" >&2; cat "$work/push-${round}1.log"; exit 1; }
  ttl=$([[ $ttl == 8h ]] && echo 9h || echo 8h)
  set_ttl "$ttl"
  replaced+=("$(push "$round"2)")
  grep -q "replacing pr-9" "$work/push-${round}2.log" || { echo "round $round did not replace" >&2; exit 1; }
done
stats() { printf '%s\n' "$@" | sort -n | awk '{a[NR]=$1} END {printf "best %d ms, median %d ms", a[1], a[int((NR+1)/2)]}'; }
median() { printf '%s\n' "$@" | sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
echo "redeploy in place: $(stats "${in_place[@]}")"
echo "replace (baseline): $(stats "${replaced[@]}")"
awk -v a="$(median "${replaced[@]}")" -v b="$(median "${in_place[@]}")" \
  'BEGIN {printf "replace / redeploy (medians): %.2fx\n", a / b}'
env GITHUB_ACTIONS=true GITHUB_EVENT_NAME=pull_request GITHUB_EVENT_PATH="$work/event.json" \
  GITHUB_OUTPUT="$work/output" GITHUB_STATE="$work/state" GITHUB_STEP_SUMMARY="$work/summary" \
  INPUT_MODE=down "INPUT_WORKING-DIRECTORY=$app" "$SPOT_BIN" action main >/dev/null 2>&1
