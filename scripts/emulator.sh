# Sourced by scripts that run spot against the local emulator: a work folder removed at
# exit (kept with SPOT_TRY_KEEP=1), the processes started here stopped at exit by PID,
# moto's EC2 server and the instance player (a real sshd per instance) on 127.0.0.1.
# Expects $repo; sets $work, and $moto_port once start_moto ran.
work=$(mktemp -d /tmp/spot-try.XXXXXX)
pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
  if [[ -n ${SPOT_TRY_KEEP:-} ]]; then
    # A VM's folder holds its user-data, and with it the instance's SSH host private key.
    echo "kept $work (it holds test keys: remove it when done)"
  else
    rm -rf "$work"
  fi
}
trap cleanup EXIT
port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_port() { for _ in $(seq 1 300); do (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0; sleep 0.1; done; echo "nothing listens on $1" >&2; exit 1; }

# moto with the Ubuntu images of tests/fixtures; exports the SDK's endpoint and test
# credentials for everything started afterwards.
start_moto() {
  moto_port=$(port)
  MOTO_AMIS_PATH=$repo/tests/fixtures/ec2/amis.json python3 -m moto.server -H 127.0.0.1 -p "$moto_port" \
    >"$work/moto.log" 2>&1 &
  pids+=($!)
  wait_port "$moto_port"
  echo "EC2 emulator (moto) on 127.0.0.1:$moto_port"
  export AWS_ENDPOINT_URL=http://127.0.0.1:$moto_port AWS_ACCESS_KEY_ID=testing AWS_SECRET_ACCESS_KEY=testing
  export AWS_EC2_METADATA_DISABLED=true
}

# The fault proxy in front of moto, adding $1 ms to every call and playing EC2 Instance
# Connect's key push (run after start_moto, before start_player); spot then talks to it.
start_proxy() {
  local proxy_port
  proxy_port=$(port)
  mkdir -p "$work/instance-connect"
  python3 "$repo/tests/support/faultproxy.py" --port "$proxy_port" --upstream "http://127.0.0.1:$moto_port" \
    --delay-ms "${1:-0}" --instance-connect-dir "$work/instance-connect" >/dev/null 2>&1 &
  pids+=($!)
  wait_port "$proxy_port"
  export AWS_ENDPOINT_URL=http://127.0.0.1:$proxy_port
}

# Plays the instances of region $1 with real sshd; spot finds them through
# SPOT_EMULATOR_SSH_DIR.
start_player() {
  export SPOT_EMULATOR_SSH_DIR=$work/ssh
  local connect=()
  [[ -d $work/instance-connect ]] && connect=(--instance-connect-dir "$work/instance-connect")
  python3 "$repo/tests/support/instance_player.py" --endpoint "http://127.0.0.1:$moto_port" --regions "$1" \
    --ssh-dir "$SPOT_EMULATOR_SSH_DIR" --work "$work/instances" "${connect[@]}" 2>"$work/player.log" &
  pids+=($!)
}

# Plays the instances of region $1 with real VMs (tests/support/vm_player.py) booted from
# the Debian image of scripts/vm-image.sh (suite $2, default trixie); guest port 8080 can
# be forwarded too, while the security group opens it (open_port). spot finds their SSH
# through SPOT_EMULATOR_SSH_DIR.
start_vm_player() {
  export SPOT_EMULATOR_SSH_DIR=$work/ssh
  local image connect=()
  [[ -d $work/instance-connect ]] && connect=(--instance-connect-dir "$work/instance-connect")
  image=$("$repo/scripts/vm-image.sh" "${2:-trixie}")
  python3 "$repo/tests/support/vm_player.py" --endpoint "http://127.0.0.1:$moto_port" --regions "$1" \
    --ssh-dir "$SPOT_EMULATOR_SSH_DIR" --work "$work/instances" --image "$image" --forward 8080 \
    "${connect[@]}" 2>"$work/vm.log" &
  pids+=($!)
}

# Authorizes TCP port $3 from $4 on the security group of deployment $1 in region $2.
open_port() {
  python3 -c 'import boto3,sys; e=boto3.client("ec2",region_name=sys.argv[2],endpoint_url=sys.argv[1]); g=e.describe_security_groups(Filters=[{"Name":"tag:spot:deployment","Values":[sys.argv[3]]}])["SecurityGroups"][0]["GroupId"]; e.authorize_security_group_ingress(GroupId=g,IpPermissions=[{"IpProtocol":"tcp","FromPort":int(sys.argv[4]),"ToPort":int(sys.argv[4]),"IpRanges":[{"CidrIp":sys.argv[5]}]}])' \
    "http://127.0.0.1:$moto_port" "$2" "$1" "$3" "$4"
}

# Waits until the VM playing instance $1 forwards guest port $2 (its group opened it).
wait_vm_port_open() {
  for _ in $(seq 1 100); do
    python3 -c 'import json,sys; sys.exit(int(sys.argv[2]) not in json.load(open(sys.argv[1]))["open"])' \
      "$work/instances/$1/vm.json" "$2" && return 0
    sleep 0.2
  done
  echo "port $2 of $1 is not forwarded" >&2
  exit 1
}

# The 127.0.0.1 port where the VM playing instance $1 forwards guest port $2.
vm_port() {
  python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["forwards"][sys.argv[2]])' \
    "$work/instances/$1/vm.json" "$2"
}

# NAME=VALUE for each entry of a runner file (`name<<delimiter` blocks), with prefix $2.
file_commands() {
  python3 - "$1" "$2" <<'PY'
import sys
lines = open(sys.argv[1]).read().split("\n")
i = 0
while i < len(lines):
    if "<<" in lines[i]:
        name, delim = lines[i].split("<<", 1)
        j = lines.index(delim, i + 1)
        print(sys.argv[2] + name + "=" + "\n".join(lines[i + 1:j]))
        i = j + 1
    else:
        i += 1
PY
}
