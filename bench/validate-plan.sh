#!/usr/bin/env bash
# Benchmark: `spot validate` + `spot plan --json` of a deployment that uploads 10,000
# files (1 GB), against `find DIR -type f | wc -l` on the same tree, side by side.
# Prints both medians and the ratio (target: within 3x of find). No asserts.
#
#   bench/validate-plan.sh            # uses target/release/spot (builds it if missing)
#   SPOT_BIN=target/debug/spot bench/validate-plan.sh
#   FILES=1000 FILE_KB=100 RUNS=5 bench/validate-plan.sh
set -euo pipefail
cd "$(dirname "$0")/.."
FILES=${FILES:-10000}
FILE_KB=${FILE_KB:-100}
RUNS=${RUNS:-7}
SPOT_BIN=${SPOT_BIN:-target/release/spot}
if [[ ! -x $SPOT_BIN ]]; then
  cargo build --release --quiet
fi

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
tree=$work/repo
mkdir -p "$tree/.spot/data"
python3 - "$tree/.spot/data" "$FILES" "$FILE_KB" <<'PY'
import os, sys
root, files, kb = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
chunk = os.urandom(kb * 1024)
for i in range(files):
    d = os.path.join(root, f"d{i // 100:03d}", f"e{(i // 10) % 10}")
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, f"f{i:05d}.bin"), "wb") as f:
        f.write(chunk)
PY
cat > "$tree/.spot/config.yaml" <<'YAML'
regions:
  - us-east-1: {machine_type: t3.micro}
YAML
cat > "$tree/.spot/deployment.yaml" <<'YAML'
version: 1
uploads:
  - source: data
    dest: /opt/data
    exclude: ["*.tmp", .git]
YAML
sync

median() { sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
time_runs() { # command...
  local i start end
  "$@" >/dev/null 2>&1 # warm the cache
  for ((i = 0; i < RUNS; i++)); do
    start=$(date +%s%N)
    "$@" >/dev/null 2>&1
    end=$(date +%s%N)
    echo $(((end - start) / 1000))
  done | median
}
find_count() { find "$tree/.spot/data" -type f | wc -l; }
spot_both() { "$SPOT_BIN" validate "$tree" && "$SPOT_BIN" plan --json "$tree"; }

count=$(find_count)
bytes=$(du -sb "$tree/.spot/data" | cut -f1)
baseline=$(time_runs find_count)
ours=$(time_runs spot_both)
planned=$("$SPOT_BIN" plan --json "$tree" | python3 -c 'import json,sys; p=json.load(sys.stdin)["bundle"]; print(p["files"], p["total_bytes"])')
echo "tree: $count files, $bytes bytes; spot plans: $planned (files, bytes)"
echo "baseline  find -type f | wc -l      median ${baseline} us over $RUNS runs"
echo "spot      validate + plan --json    median ${ours} us over $RUNS runs ($SPOT_BIN)"
awk -v a="$ours" -v b="$baseline" 'BEGIN { printf "ratio     spot / find = %.2fx (target <= 3x)\n", a / b }'
