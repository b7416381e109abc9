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

work=$(mktemp -d /tmp/spot-try.XXXXXX)
pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
  if [[ -n ${SPOT_TRY_KEEP:-} ]]; then echo "kept $work"; else rm -rf "$work"; fi
}
trap cleanup EXIT
port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_port() { for _ in $(seq 1 300); do (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0; sleep 0.1; done; echo "nothing listens on $1" >&2; exit 1; }

moto_port=$(port)
MOTO_AMIS_PATH=$repo/tests/fixtures/ec2/amis.json python3 -m moto.server -H 127.0.0.1 -p "$moto_port" \
  >"$work/moto.log" 2>&1 &
pids+=($!)
wait_port "$moto_port"
echo "EC2 emulator (moto) on 127.0.0.1:$moto_port"

cp -r examples/hello "$work/hello"
export AWS_ENDPOINT_URL=http://127.0.0.1:$moto_port AWS_ACCESS_KEY_ID=testing AWS_SECRET_ACCESS_KEY=testing
export AWS_EC2_METADATA_DISABLED=true AWS_REGION=us-west-2
export SPOT_EMULATOR_SSH_DIR=$work/ssh
# The example's secret; a real run takes it from the CI's secret store.
export APP_TOKEN=try-local-demo-token
python3 tests/support/instance_player.py --endpoint "$AWS_ENDPOINT_URL" --regions us-west-2 \
  --ssh-dir "$SPOT_EMULATOR_SSH_DIR" --work "$work/instances" 2>"$work/player.log" &
pids+=($!)

echo "--- spot create"
"$spot" create --deployment-id try-local --ssh-cidr 127.0.0.1/32 "$work/hello"
echo "--- the example's page, served by its systemd unit on the instance"
curl -fsS http://127.0.0.1:8080/ | head -n 5
echo "--- spot list"
"$spot" list "$work/hello"
echo "--- spot destroy"
"$spot" destroy --dir "$work/hello" try-local
