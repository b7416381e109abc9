#!/usr/bin/env bash
# Try spot without AWS: starts a local EC2 emulator (moto) and a local SSH "instance"
# (tests/support/instance_player.py: a real sshd with the keys from spot's user-data),
# then runs `spot create`, `spot list` and `spot destroy` on the bundled example.
# Everything runs on 127.0.0.1 and is stopped at the end. Needs root (sshd, namespaces).
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$PWD
scripts/test-deps.sh >/dev/null
cargo build --quiet
spot=$repo/target/debug/spot

source scripts/emulator.sh
start_moto
export AWS_REGION=us-west-2
cp -r examples/hello "$work/hello"
# The example's secret; a real run takes it from the CI's secret store.
export APP_TOKEN=try-local-demo-token
start_player us-west-2

echo "--- spot create"
"$spot" create --deployment-id try-local --ssh-cidr 127.0.0.1/32 "$work/hello"
echo "--- the example's page, served by its systemd unit on the instance"
curl -fsS http://127.0.0.1:8080/ | head -n 5
echo "--- spot list"
"$spot" list "$work/hello"
echo "--- spot destroy"
"$spot" destroy --dir "$work/hello" try-local
