#!/usr/bin/env bash
# Benchmark: boot to ready on a real boot. `spot create` of examples/hello (plus `jq`, a
# package the image lacks) against moto, the instance a Debian VM (tests/support/vm_player.py:
# real cloud-init over IMDSv2, systemd, apt through the harness's mirror proxy), timed from the command's start to its "ready"
# (launch, boot, packages, upload, scripts, service, health check), against the named
# baseline: the same image booting an empty user-data, timed from the launch to cloud-init
# reporting `done` (what any tool waits for before it can even start delivering). Side by
# side, ROUNDS rounds; prints every figure, the medians and the ratio. CPU-bound under
# TCG: run it on an otherwise idle machine. As root.
#
#   bench/vm-boot.sh                         # trixie, 3 rounds, target/debug/spot
#   SUITE=bookworm ROUNDS=5 SPOT_BIN=target/release/spot bench/vm-boot.sh
set -euo pipefail
shopt -s inherit_errexit # a failure inside $(...) ends the run too
cd "$(dirname "$0")/.."
repo=$PWD
SPOT_BIN=$repo/${SPOT_BIN:-target/debug/spot}
ROUNDS=${ROUNDS:-3}
SUITE=${SUITE:-trixie}
[[ -x $SPOT_BIN ]] || cargo build --quiet --bin spot

source scripts/emulator.sh
start_moto >/dev/null
export AWS_REGION=us-east-1 AWS_CONFIG_FILE=/nonexistent AWS_SHARED_CREDENTIALS_FILE=/nonexistent
start_vm_player us-east-1 "$SUITE"
image=$(scripts/vm-image.sh "$SUITE")
app=$work/app
cp -r examples/hello "$app"
# A package the image lacks, so the figure includes a real install from the mirror.
sed -i 's/^  - curl$/  - curl\n  - jq/' "$app/.spot/deployment.yaml"
grep -qx '  - jq' "$app/.spot/deployment.yaml" || { echo "bench: could not add jq to the example" >&2; exit 1; }
printf 'aws:\n  total_instances: 1\n  username: ubuntu\n  ssh_cidr: 127.0.0.1/32\n  ttl: 2h\nregions:\n  - us-east-1:\n      machine_type: [t3.small]\n' \
  >"$app/.spot/config.yaml"
export APP_TOKEN=bench-token

now() { date +%s.%N; }
# A bare instance with an empty cloud-config, tagged so the harness boots it; seconds from
# the launch until cloud-init says done (asked through the harness door every second).
bare() {
  local start id port
  start=$(now)
  id=$(python3 -c 'import boto3,sys; e=boto3.client("ec2",region_name="us-east-1",endpoint_url=sys.argv[1]); i=e.describe_images(Owners=["099720109477"])["Images"][0]["ImageId"]; print(e.run_instances(ImageId=i,MinCount=1,MaxCount=1,InstanceType="t3.small",MetadataOptions={"HttpTokens":"required","HttpEndpoint":"enabled"},UserData="#cloud-config\n{}\n",TagSpecifications=[{"ResourceType":"instance","Tags":[{"Key":"spot:managed-by","Value":"spot"}]}])["Instances"][0]["InstanceId"])' "$AWS_ENDPOINT_URL")
  [[ -n $id ]] || { echo "bench: RunInstances failed" >&2; exit 1; }
  for _ in $(seq 1 300); do [[ -f $work/instances/$id/vm.json ]] && break; sleep 0.2; done
  [[ -f $work/instances/$id/vm.json ]] || { echo "bench: no VM for $id" >&2; exit 1; }
  port=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["door"])' "$work/instances/$id/vm.json")
  until ssh -q -i "$image/harness_key" -p "$port" -o BatchMode=yes -o ConnectTimeout=5 \
    -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null root@127.0.0.1 \
    'cloud-init status | grep -q "status: done"' 2>/dev/null; do
    sleep 1
  done
  echo "$(now) - $start" | bc
  python3 -c 'import boto3,sys; boto3.client("ec2",region_name="us-east-1",endpoint_url=sys.argv[1]).terminate_instances(InstanceIds=[sys.argv[2]])' \
    "$AWS_ENDPOINT_URL" "$id"
}
deploy() {
  local start took
  start=$(now)
  "$SPOT_BIN" create --deployment-id "bench-$1" --ssh-timeout 10m "$app" >"$work/create-$1.log" 2>&1 ||
    { cat "$work/create-$1.log" >&2; exit 1; }
  took=$(echo "$(now) - $start" | bc)
  "$SPOT_BIN" destroy --dir "$app" "bench-$1" >/dev/null 2>&1
  echo "$took"
}

echo "image: $SUITE, $(grep built= "$image/image.info")"
printf '%-6s %-28s %-28s %s\n' round "baseline: bare boot (s)" "spot create ready (s)" ratio
a=() b=()
for r in $(seq 1 "$ROUNDS"); do
  base=$(bare)
  ours=$(deploy "$r")
  a+=("$ours") b+=("$base")
  printf '%-6s %-28.1f %-28.1f %.2f\n' "$r" "$base" "$ours" "$(echo "$ours / $base" | bc -l)"
done
median() { printf '%s\n' "$@" | sort -g | awk '{v[NR]=$1} END {print (NR%2) ? v[(NR+1)/2] : (v[NR/2]+v[NR/2+1])/2}'; }
mb=$(median "${b[@]}") ma=$(median "${a[@]}")
printf '%-6s %-28.1f %-28.1f %.2f\n' median "$mb" "$ma" "$(echo "$ma / $mb" | bc -l)"
