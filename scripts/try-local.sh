#!/usr/bin/env bash
# Try spot without AWS: starts a local EC2 emulator (moto) and a local SSH "instance"
# (tests/support/instance_player.py: a real sshd with the keys from spot's user-data),
# then runs `spot create`, `spot list` and `spot destroy` on the bundled example.
# With --vm the instance is a real Debian VM instead (tests/support/vm_player.py: qemu,
# real cloud-init, systemd and sshd; a few minutes under TCG).
# Everything runs on 127.0.0.1 and is stopped at the end. Needs root (sshd, namespaces).
set -euo pipefail
vm=
case ${1:-} in
  --vm) vm=1 ;;
  "") ;;
  *) echo "usage: scripts/try-local.sh [--vm]" >&2; exit 2 ;;
esac
cd "$(dirname "$0")/.."
repo=$PWD
scripts/test-deps.sh --no-images >/dev/null
cargo build --quiet
spot=$repo/target/debug/spot

source scripts/emulator.sh
start_moto
export AWS_REGION=us-west-2
cp -r examples/hello "$work/hello"
# The example's secret; a real run takes it from the CI's secret store.
export APP_TOKEN=try-local-demo-token
if [[ -n $vm ]]; then start_vm_player us-west-2; else start_player us-west-2; fi

echo "--- spot create"
"$spot" create --deployment-id try-local --ssh-cidr 127.0.0.1/32 --ssh-timeout 10m "$work/hello"
echo "--- the example's page, served by its systemd unit on the instance"
page_port=8080
if [[ -n $vm ]]; then
  # The VM forwards only what its security group opens, and spot's group opens SSH only
  # (until `expose:` lands): open 8080 to this machine, as a user would in the console.
  open_port try-local us-west-2 8080 127.0.0.1/32
  id=$(ls "$SPOT_EMULATOR_SSH_DIR")
  wait_vm_port_open "$id" 8080
  page_port=$(vm_port "$id" 8080)
fi
curl -fsS "http://127.0.0.1:$page_port/" | head -n 5
echo "--- spot list"
"$spot" list "$work/hello"
echo "--- spot destroy"
"$spot" destroy --dir "$work/hello" try-local
