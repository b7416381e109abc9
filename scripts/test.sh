#!/usr/bin/env bash
# The test command: installs missing test tools, then runs every test once.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/test-deps.sh
cargo nextest run --no-fail-fast "$@"
