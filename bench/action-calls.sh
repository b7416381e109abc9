#!/usr/bin/env bash
# Counts what the Action costs at the edges, for two binaries side by side: TCP
# connections opened to the EC2 endpoint (bench/tcp-count.py in front of the fault proxy,
# which plays Instance Connect's key push, in front of moto) and AWS credential
# resolutions (a `credential_process` that logs each call). Two jobs: a push (`mode: up`
# main, then post), and a pull request environment (`keep: true`: a first push that
# creates, a second that redeploys into the same instances through Instance Connect, then
# `mode: down`). Instances are played by tests/support/instance_player.py.
#   bench/action-calls.sh [BASELINE_BINARY]   (default: only target/debug/spot)
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$PWD
cargo build --quiet
binaries=("$repo/target/debug/spot")
[[ -n ${1:-} ]] && binaries=("$1" "${binaries[@]}")
source scripts/emulator.sh
start_moto
export AWS_REGION=us-west-2
start_proxy
start_player us-west-2
relay_port=$(port)
python3 bench/tcp-count.py "$relay_port" "${AWS_ENDPOINT_URL##*:}" "$work/connections" &
pids+=($!)
wait_port "$relay_port"
# Credentials only from a profile's credential_process, which counts its calls.
cat >"$work/creds.sh" <<CREDS
#!/bin/sh
echo x >> "$work/resolutions"
echo '{"Version": 1, "AccessKeyId": "testing", "SecretAccessKey": "testing"}'
CREDS
chmod +x "$work/creds.sh"
printf '[default]\nregion = us-west-2\ncredential_process = %s\n' "$work/creds.sh" >"$work/aws-config"
unset AWS_ACCESS_KEY_ID AWS_SECRET_ACCESS_KEY AWS_ENDPOINT_URL
export AWS_CONFIG_FILE=$work/aws-config AWS_SHARED_CREDENTIALS_FILE=/nonexistent APP_TOKEN=bench-token

run_step() { # binary step n
  local dir=$work/job-$3
  env GITHUB_ACTIONS=true GITHUB_RUN_ID="77$3" GITHUB_RUN_ATTEMPT=1 GITHUB_REPOSITORY=acme/app \
    GITHUB_EVENT_NAME="${EVENT:-push}" GITHUB_EVENT_PATH="$dir/event.json" GITHUB_SHA=0123456789abcdef0123456789abcdef01234567 \
    GITHUB_OUTPUT="$dir/output" GITHUB_STATE="$dir/state" GITHUB_STEP_SUMMARY="$dir/summary" \
    INPUT_MODE="${MODE:-up}" "INPUT_WORKING-DIRECTORY=$dir/hello" INPUT_KEEP="${KEEP:-false}" "INPUT_SSH-CIDR=127.0.0.1/32" \
    "INPUT_ENDPOINT-URL=http://127.0.0.1:$relay_port" INPUT_REGIONS=us-west-2 \
    "${@:4}" "$1" action "$2" >"$dir/$2${LOG:-}.log" 2>&1 || { echo "$2 failed:"; tail -20 "$dir/$2${LOG:-}.log"; exit 1; }
}
count() { cat "$work/connections" 2>/dev/null || echo 0; }
n=0
printf '%-40s %8s %12s %12s\n' binary step connections credentials
for bin in "${binaries[@]}"; do
  n=$((n + 1))
  mkdir -p "$work/job-$n"
  cp -r examples/hello "$work/job-$n/hello"
  echo '{}' >"$work/job-$n/event.json"
  rm -f "$work/resolutions"
  before=$(count)
  run_step "$bin" main "$n"
  printf '%-40s %8s %12s %12s\n' "$bin" main "$(($(count) - before))" "$(wc -l <"$work/resolutions")"
  rm -f "$work/resolutions"
  before=$(count)
  mapfile -t state < <(file_commands "$work/job-$n/state" STATE_)
  run_step "$bin" post "$n" "${state[@]}"
  printf '%-40s %8s %12s %12s\n' "$bin" post "$(($(count) - before))" "$(wc -l <"$work/resolutions")"
done
# The pull request environment: two pushes into one kept deployment, then its removal.
row() { printf '%-40s %8s %12s %12s\n' "$1" "$2" "$(($(count) - before))" "$(wc -l <"$work/resolutions")"; }
for bin in "${binaries[@]}"; do
  n=$((n + 1))
  mkdir -p "$work/job-$n"
  cp -r examples/hello "$work/job-$n/hello"
  echo '{"pull_request": {"number": 7'"$n"', "head": {"sha": "0123456789abcdef0123456789abcdef01234567"}}}' >"$work/job-$n/event.json"
  for push in 1 2; do
    rm -f "$work/resolutions"; before=$(count)
    EVENT=pull_request KEEP=true LOG=-$push run_step "$bin" main "$n"
    row "$bin" "pr push $push"
  done
  grep -q 'redeployed into the running' "$work/job-$n/main-2.log" || { echo "push 2 did not redeploy"; tail "$work/job-$n/main-2.log"; exit 1; }
  rm -f "$work/resolutions"; before=$(count)
  EVENT=pull_request MODE=down LOG=-down run_step "$bin" main "$n"
  row "$bin" "pr down"
done
