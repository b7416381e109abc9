#!/usr/bin/env bash
# Installs what the test suite needs beyond Rust: the real `cloud-init` (its schema
# check) and `check-jsonschema`. Safe to run again; installs only what is missing.
set -euo pipefail
as_root() { if [[ $(id -u) -eq 0 ]]; then "$@"; else sudo "$@"; fi; }

if ! command -v cloud-init >/dev/null 2>&1; then
  as_root apt-get update -qq
  DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq --no-install-recommends cloud-init >/dev/null
fi
if ! command -v check-jsonschema >/dev/null 2>&1; then
  python3 -m pip install --quiet --disable-pip-version-check check-jsonschema
fi
if ! cargo nextest --version >/dev/null 2>&1; then
  cargo install --locked --quiet cargo-nextest
fi
cloud-init --version
check-jsonschema --version
