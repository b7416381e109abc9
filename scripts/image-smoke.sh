#!/usr/bin/env bash
# The action's image without a Docker engine (this machine has none): builds what the
# Dockerfile's stages build (the static musl `spot`, release, `--locked`), lays out the
# final stage's file system (`/spot`, the `/spot-action` and `/spot-action-post` links,
# `/tmp`, the CA bundle; nothing else) in target/image/rootfs, and runs it the way the
# runner runs a container action: the entry point is PID 1 of its own PID namespace,
# chrooted into that file system, with the workspace at /github/workspace, the runner
# files under /github/file_commands, and the inputs as INPUT_* (the post step with
# STATE_* from the state file). Against moto and a played instance on 127.0.0.1:
#   1. cold start: `mode: validate` on examples/hello, start to exit, best and median of 20;
#   2. `mode: up`: outputs parse, the example's page is served by the instance;
#   3. SIGINT to PID 1 during `mode: reap` ends it (130);
#   4. the post step removes everything (checked by an independent boto3 inventory).
# Prints the image's size (files, and gzip-compressed as a registry layer would be).
# Needs root. Takes ~12 minutes the first time (the release build).
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$PWD
as_root() { if [[ $(id -u) -eq 0 ]]; then "$@"; else sudo "$@"; fi; }
scripts/test-deps.sh >/dev/null
command -v musl-gcc >/dev/null 2>&1 ||
  DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq --no-install-recommends musl-tools >/dev/null
target=$(uname -m)-unknown-linux-musl
rustup target list --installed | grep -qx "$target" || rustup target add "$target"
cargo build --quiet --release --locked --bin spot --target "$target"

image=$repo/target/image
rm -rf "$image"
mkdir -p "$image/rootfs/etc/ssl/certs"
cp "target/$target/release/spot" "$image/rootfs/spot"
ln -s spot "$image/rootfs/spot-action"
ln -s spot "$image/rootfs/spot-action-post"
mkdir -m 1777 "$image/rootfs/tmp"
cp /etc/ssl/certs/ca-certificates.crt "$image/rootfs/etc/ssl/certs/"
files=$(du -sb --apparent-size "$image/rootfs" | cut -f1)
layer=$(tar -C "$image/rootfs" -czf - . | wc -c)
linking=$(file -b "$image/rootfs/spot" | tr ',' '\n' | grep linked | xargs)
echo "image: $((files / 1024)) KiB of files, $((layer / 1024)) KiB as a gzip layer; spot is $linking"
if [[ $linking != static* ]]; then
  echo "the binary is not statically linked: a scratch image could not run it" >&2
  exit 1
fi

source scripts/emulator.sh
start_moto
export AWS_REGION=us-west-2
start_player us-west-2
cp -r examples/hello "$work/workspace"
mkdir -p "$work/file_commands" "$work/home" "$SPOT_EMULATOR_SSH_DIR"

# One container run: $1 = entry point, then NAME=VALUE pairs for its environment.
# Mounts as Docker does for an action (workspace, file commands, home, /proc, /dev,
# /etc/hosts); the SSH address folder of the played instances at its own path.
container() {
  local entry=$1
  shift
  local run=$work/run
  if [[ ! -d $run ]]; then # the container's file system: the image plus the mount points
    cp -a "$image/rootfs" "$run"
    mkdir -p "$run/github/workspace" "$run/github/file_commands" "$run/github/home" "$run/proc" "$run/dev" \
      "$run$SPOT_EMULATOR_SSH_DIR"
    printf '127.0.0.1 localhost\n' >"$run/etc/hosts"
  fi
  # The variables go through `env` right before the chroot: a shell would drop the
  # input names with hyphens (INPUT_SSH-CIDR), which the runner does pass.
  env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin WORK="$work" SPOT_EMULATOR_SSH_DIR="$SPOT_EMULATOR_SSH_DIR" \
    unshare --mount --propagation private sh -c '
      run=$1 entry=$2
      shift 2
      mount --bind "$WORK/workspace" "$run/github/workspace"
      mount --bind "$WORK/file_commands" "$run/github/file_commands"
      mount --bind "$WORK/home" "$run/github/home"
      mount --bind "$SPOT_EMULATOR_SSH_DIR" "$run$SPOT_EMULATOR_SSH_DIR"
      mount --rbind /dev "$run/dev"
      exec env -i "$@" unshare --pid --fork --kill-child --mount-proc=/proc --root="$run" \
        --wd=/github/workspace "$entry"
    ' sh "$run" "$entry" \
    PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin HOME=/github/home \
    GITHUB_WORKSPACE=/github/workspace GITHUB_ACTIONS=true GITHUB_REPOSITORY=acme/app \
    GITHUB_RUN_ID=4242 GITHUB_RUN_ATTEMPT=1 GITHUB_SHA=0123456789abcdef0123456789abcdef01234567 \
    GITHUB_EVENT_NAME=push GITHUB_OUTPUT=/github/file_commands/output \
    GITHUB_STATE=/github/file_commands/state GITHUB_STEP_SUMMARY=/github/file_commands/summary \
    AWS_ENDPOINT_URL="$AWS_ENDPOINT_URL" AWS_ACCESS_KEY_ID=testing AWS_SECRET_ACCESS_KEY=testing \
    AWS_REGION=us-west-2 AWS_EC2_METADATA_DISABLED=true SPOT_EMULATOR_SSH_DIR="$SPOT_EMULATOR_SSH_DIR" "$@"
}

# Inputs as the runner passes them: every input of action.yml, upper-cased, hyphens kept.
inputs=("INPUT_WORKING-DIRECTORY=." "INPUT_SSH-CIDR=127.0.0.1/32" "INPUT_KEEP=false" "INPUT_SSH-TIMEOUT=60s")

echo "--- 1. cold start: mode: validate, 20 runs"
container /spot-action INPUT_MODE=validate >/dev/null # lays out the file system once
times=()
for _ in $(seq 1 20); do
  start=$(date +%s%N)
  container /spot-action "${inputs[@]}" INPUT_MODE=validate >/dev/null
  times+=($((($(date +%s%N) - start) / 1000)))
done
sorted=($(printf '%s\n' "${times[@]}" | sort -n))
start=$(date +%s%N)
for _ in $(seq 1 20); do unshare --pid --fork --kill-child --mount-proc true; done
wrapper=$((($(date +%s%N) - start) / 20000))
echo "start to exit: best $((sorted[0] / 1000)).$(((sorted[0] % 1000) / 100)) ms, median $((sorted[10] / 1000)).$(((sorted[10] % 1000) / 100)) ms" \
  "(each including ~$((wrapper / 1000)).$(((wrapper % 1000) / 100)) ms of namespace set-up, measured with \`true\`)"

echo "--- 2. mode: up in the image"
: >"$work/file_commands/state"
APP_TOKEN=image-smoke-token
container /spot-action "${inputs[@]}" INPUT_MODE=up APP_TOKEN=$APP_TOKEN >"$work/up.log" 2>&1 || {
  cat "$work/up.log"
  exit 1
}
file_commands "$work/file_commands/output" "" | grep -E '^(deployment-id|instance-ids|market)='
curl -fsS http://127.0.0.1:8080/ | head -n 3
if cat "$work/up.log" "$work/file_commands"/* | grep -v '^::add-mask::' | grep -q "$APP_TOKEN"; then
  echo "the secret leaked" >&2
  exit 1
fi

echo "--- 3. SIGINT to PID 1 while mode: reap waits on EC2"
# An endpoint that accepts connections and never answers: the step waits on its first call.
silent=$(port)
python3 -c "import socket, time; s = socket.socket(); s.bind(('127.0.0.1', $silent)); s.listen(64); time.sleep(600)" &
pids+=($!)
wait_port "$silent"
container /spot-action "${inputs[@]}" INPUT_MODE=reap "INPUT_DRY-RUN=true" \
  AWS_ENDPOINT_URL=http://127.0.0.1:$silent >"$work/reap.log" 2>&1 &
outer=$!
init=
for _ in $(seq 1 100); do
  inner=$(pgrep -f -n -- "--root=$work/run" || true)
  [[ -n $inner ]] && init=$(awk '{print $1}' "/proc/$inner/task/$inner/children" 2>/dev/null || true)
  [[ -n $init ]] && break
  sleep 0.05
done
sleep 1
kill -INT "$init"
status=0
wait "$outer" || status=$?
echo "reap: exit $status after SIGINT to PID 1 ($(tail -n 1 "$work/reap.log"))"
[[ $status == 130 ]]

echo "--- 4. the post step"
state=()
while IFS= read -r line; do state+=("$line"); done < <(file_commands "$work/file_commands/state" STATE_)
container /spot-action-post "${inputs[@]}" "${state[@]}" | tail -n 3
left=$(python3 tests/support/ec2_inventory.py "$AWS_ENDPOINT_URL" us-west-2)
echo "left in the emulator: $left"
[[ $left == '{}' ]]
echo "image smoke test passed"
