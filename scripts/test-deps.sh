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
# qemu-utils goes in pinned to the system emulator's version, even when a qemu-img is
# there: a newer one (a backport the machine came with) "Breaks" the emulator's common
# package, and apt does not downgrade it alone. The version is read after `apt-get update`.
command -v qemu-system-x86_64 >/dev/null 2>&1 || missing_apt+=(qemu-system-x86=VERSION qemu-utils=VERSION)
command -v qemu-img >/dev/null 2>&1 || missing_apt+=(qemu-utils)
command -v mmdebstrap >/dev/null 2>&1 || missing_apt+=(mmdebstrap)
command -v socat >/dev/null 2>&1 || missing_apt+=(socat)
if ((${#missing_apt[@]})); then
  as_root apt-get update -qq
  qemu_version=$(apt-cache policy qemu-system-x86 | awk '/Candidate:/ {print $2}')
  missing_apt=("${missing_apt[@]/%=VERSION/=$qemu_version}")
  DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq --allow-downgrades --no-install-recommends "${missing_apt[@]}" >/dev/null
fi
# Every tool, checked after the install (an install can remove another package).
for tool in cloud-init /usr/sbin/sshd sudo curl systemd-analyze unshare qemu-system-x86_64 qemu-img mmdebstrap socat; do
  command -v "$tool" >/dev/null 2>&1 || { echo "test-deps: $tool is missing after the install" >&2; exit 1; }
done
# sshd's privilege-separation directory (the SSH tests run a private sshd on 127.0.0.1).
as_root mkdir -p /run/sshd
# The Python tools at the pinned versions (scripts/test-requirements.txt); pip runs only
# when one is missing or at another version.
requirements="$(dirname "$0")/test-requirements.txt"
if ! python3 - "$requirements" <<'PY'
import sys
from importlib.metadata import version, PackageNotFoundError
for line in open(sys.argv[1]):
    line = line.split("#")[0].strip()
    if not line:
        continue
    name, want = line.split("==")
    try:
        if version(name.split("[")[0]) != want:
            sys.exit(1)
    except PackageNotFoundError:
        sys.exit(1)
PY
then
  python3 -m pip install --quiet --disable-pip-version-check -r "$requirements"
fi
# cargo-nextest, pinned likewise.
nextest_version=0.9.143
if [[ "$(cargo nextest --version 2>/dev/null | head -1)" != "cargo-nextest $nextest_version"* ]]; then
  cargo install --locked --quiet cargo-nextest --version "$nextest_version"
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
