#!/usr/bin/env bash
# Benchmark: `spot bundle` of a 1 GB mixed tree against `tar -czf` (same gzip level, 6)
# and `tar -I pigz` (all cores) on the same tree, side by side. Prints times and ratios.
# No asserts. Needs pigz (apt-get install pigz) for the third column.
#
#   bench/bundle.sh                      # 1 GB: 60% compressible text, 40% random data
#   SIZE_MB=200 RUNS=3 bench/bundle.sh
set -euo pipefail
cd "$(dirname "$0")/.."
SPOT_BIN=${SPOT_BIN:-target/release/spot}
SIZE_MB=${SIZE_MB:-1024}
RUNS=${RUNS:-3}
[[ -x $SPOT_BIN ]] || cargo build --release --quiet

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
mkdir -p "$work/repo/.spot/tree"
python3 - "$work/repo/.spot/tree" "$SIZE_MB" <<'PY'
import os, random, sys
root, size_mb = sys.argv[1], int(sys.argv[2])
random.seed(1)
words = [("".join(random.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(random.randint(2, 9)))) for _ in range(5000)]
total, i = 0, 0
target = size_mb * 1024 * 1024
while total < target:
    d = os.path.join(root, f"d{i % 97:02d}", f"s{i % 13}")
    os.makedirs(d, exist_ok=True)
    if i % 5 < 3:  # text-like, compressible
        n = random.randint(2_000, 400_000)
        data = (" ".join(random.choices(words, k=n // 6)) + "\n").encode()[:n]
        name = f"f{i:06d}.txt"
    else:  # binary, incompressible
        n = random.randint(50_000, 4_000_000)
        data = os.urandom(n)
        name = f"f{i:06d}.bin"
    with open(os.path.join(d, name), "wb") as f:
        f.write(data)
    total += len(data)
    i += 1
print(f"{i} files, {total} bytes", file=sys.stderr)
PY
printf 'regions:\n  - us-east-1: {machine_type: t3.micro}\n' >"$work/repo/.spot/config.yaml"
printf 'version: 1\nuploads:\n  - source: tree\n    dest: /opt/tree\n' >"$work/repo/.spot/deployment.yaml"
sync

best() { # command... -> best wall ms over RUNS
  local best=0 t0 t1 i
  for ((i = 0; i < RUNS; i++)); do
    t0=$(date +%s%N); "$@" >/dev/null 2>&1; t1=$(date +%s%N)
    local ms=$(((t1 - t0) / 1000000))
    ((best == 0 || ms < best)) && best=$ms
  done
  echo "$best"
}
spot_pack() { "$SPOT_BIN" bundle -o "$work/spot.tgz" --level 6 "$work/repo"; }
tar_gz() { GZIP=-6 tar -czf "$work/tar.tgz" -C "$work/repo/.spot" tree; }
tar_pigz() { tar -I pigz -cf "$work/pigz.tgz" -C "$work/repo/.spot" tree; }

cat "$work/repo/.spot/tree" >/dev/null 2>&1 || true
find "$work/repo" -type f -exec cat {} + >/dev/null # warm the page cache
s=$(best spot_pack); t=$(best tar_gz)
rss=$(/usr/bin/time -f '%M' -o "$work/rss" "$SPOT_BIN" bundle -o "$work/spot.tgz" --level 6 "$work/repo" >/dev/null 2>&1; cat "$work/rss")
echo "spot bundle peak resident memory: ${rss} KiB"
echo "tree: $(du -sb "$work/repo/.spot/tree" | cut -f1) bytes; best of $RUNS warm runs"
echo "spot bundle (zlib-rs, level 6)   ${s} ms  -> $(stat -c %s "$work/spot.tgz") bytes"
echo "tar -czf (gzip, level 6)         ${t} ms  -> $(stat -c %s "$work/tar.tgz") bytes"
awk -v a="$s" -v b="$t" 'BEGIN { printf "ratio spot / tar -czf = %.2fx (target <= 1.0x)\n", a / b }'
if command -v pigz >/dev/null; then
  p=$(best tar_pigz)
  echo "tar -I pigz ($(nproc) cores)       ${p} ms  -> $(stat -c %s "$work/pigz.tgz") bytes"
  awk -v a="$s" -v b="$p" 'BEGIN { printf "ratio spot / pigz = %.2fx\n", a / b }'
else
  echo "pigz not installed: apt-get install pigz for the third column"
fi
