#!/usr/bin/env bash
# Builds the test instance image the VM harness boots (tests/support/vm_player.py): a
# Debian system from Debian's own packages (kernel, systemd, cloud-init, sshd, sudo),
# as a raw ext4 disk plus its kernel and initrd, booted by qemu with -kernel/-initrd.
#
# Usage: scripts/vm-image.sh [trixie|bookworm]   (default trixie)
# Prints the image folder. The image is built once and cached outside the checkout in
# ${SPOT_VM_CACHE:-$HOME/.cache/spot-vm}/<suite>-<hash of this script and what it
# copies in>, so a second run (and CI on the same machine) reuses it; editing either
# makes a new one.
#
# What is in the image that an EC2 instance does not have, and why:
# - apt goes through http://169.254.0.100:3142, the harness's proxy (the guest has no
#   other way out), and, like this machine's apt, does not check Valid-Until (the mirror
#   here serves a dated snapshot).
# - EC2 Instance Connect as Ubuntu's ec2-instance-connect package sets it up (Debian has
#   no such package): sshd's AuthorizedKeysCommand, run as the unprivileged user
#   ec2-instance-connect, asks the metadata service (IMDSv2) for the keys pushed with
#   SendSSHPublicKey in the last 60 seconds. Ubuntu's script also checks the signature
#   EC2 puts beside each key; the harness's metadata service signs nothing, so this one
#   does not.
# - A second sshd on port 2222 ("the harness door") with a key only the harness holds,
#   so tests can look inside (file modes, timers, a reboot) the way they nsenter into
#   the instance player. It has its own host key outside /etc/ssh, because cloud-init's
#   ssh_deletekeys removes /etc/ssh/ssh_host_*; spot never uses this door.
# - Boot without a boot loader or partition table (qemu -kernel): cloud-init's growpart
#   has no partition to grow, so its resizefs grows / directly.
# - The locale is set (en_US.UTF-8) as on a cloud image, so cloud-init's locale module has
#   nothing to generate (17 s under TCG otherwise).
set -euo pipefail
suite=${1:-trixie}
case $suite in trixie | bookworm) ;; *) echo "vm-image.sh: suite must be trixie or bookworm, not $suite" >&2; exit 2 ;; esac
here=$(cd "$(dirname "$0")" && pwd)
hash=$(cat "$here/vm-image.sh" "$here/vm-instance-connect.sh" | sha256sum | cut -c1-12)
cache=${SPOT_VM_CACHE:-$HOME/.cache/spot-vm}
out=$cache/$suite-$hash
mkdir -p "$cache"
# One build of a suite at a time; a second caller waits, then finds it built.
exec 9>"$cache/.lock-$suite"
flock 9
if [[ -f $out/ready ]]; then
  touch "$out/ready" # when it was last used: unused old images are pruned below
  echo "$out"
  exit 0
fi
as_root() { if [[ $(id -u) -eq 0 ]]; then "$@"; else sudo "$@"; fi; }
for tool in mmdebstrap mkfs.ext4 ssh-keygen; do
  command -v "$tool" >/dev/null || { echo "vm-image.sh: $tool is missing (scripts/test-deps.sh installs it)" >&2; exit 1; }
done
# The Debian mirror this machine's apt uses (http: the guests' apt reaches it through the
# harness's plain HTTP proxy), in deb822 or one-line form.
mirror=$(cat /etc/apt/sources.list.d/*.sources 2>/dev/null | awk '/^URIs:/ {for (i = 2; i <= NF; i++) if ($i ~ /^http:.*\/debian\/?$/) {print $i; exit}}' || true)
[[ -n $mirror ]] || mirror=$(cat /etc/apt/sources.list /etc/apt/sources.list.d/*.list 2>/dev/null | awk '$1 == "deb" {for (i = 2; i <= NF; i++) if ($i ~ /^http:.*\/debian\/?$/) {print $i; exit}}' || true)
mirror=${mirror:-http://deb.debian.org/debian}
build=$(mktemp -d "$cache/.build-$suite.XXXXXX")
trap 'as_root rm -rf "$build"' EXIT
root=$build/root
ssh-keygen -q -t ed25519 -N '' -C spot-vm-harness -f "$build/harness_key"
ssh-keygen -q -t ed25519 -N '' -C spot-vm-harness-host -f "$build/harness_host_key"

packages=(
  linux-image-cloud-amd64 initramfs-tools systemd-sysv udev dbus kmod
  cloud-init openssh-server sudo curl python3 systemd-resolved e2fsprogs locales iproute2 netbase ca-certificates
  util-linux-extra
)
echo "building the $suite image from $mirror (about a minute)" >&2
start=$(date +%s)
as_root mmdebstrap --quiet --variant=apt --components=main --include="$(IFS=,; echo "${packages[*]}")" \
  --customize-hook='echo spot-vm > "$1/etc/hostname"' \
  --customize-hook='printf "127.0.0.1 localhost\n::1 localhost\n" > "$1/etc/hosts"' \
  --customize-hook='printf "Acquire::http::Proxy \"http://169.254.0.100:3142/\";\nAcquire::Check-Valid-Until \"false\";\nAcquire::Languages \"none\";\n" > "$1/etc/apt/apt.conf.d/90spot-harness"' \
  --customize-hook='sed -i "s/^# *en_US.UTF-8/en_US.UTF-8/" "$1/etc/locale.gen" && chroot "$1" locale-gen >/dev/null' \
  --customize-hook='echo LANG=en_US.UTF-8 > "$1/etc/default/locale"' \
  --customize-hook='chroot "$1" systemctl enable systemd-networkd >/dev/null 2>&1' \
  --customize-hook='mkdir -p "$1/etc/spot-harness"' \
  --customize-hook="cp '$build/harness_key.pub' \"\$1/etc/spot-harness/authorized_keys\"" \
  --customize-hook="cp '$build/harness_host_key' \"\$1/etc/spot-harness/host_key\"" \
  --customize-hook='chmod 0600 "$1/etc/spot-harness/host_key"' \
  --customize-hook='printf "Port 2222\nHostKey /etc/spot-harness/host_key\nAuthorizedKeysFile /etc/spot-harness/authorized_keys\nPermitRootLogin prohibit-password\nPasswordAuthentication no\nKbdInteractiveAuthentication no\nUsePAM no\nPidFile /run/spot-harness-sshd.pid\n" > "$1/etc/spot-harness/sshd_config"' \
  --customize-hook='printf "[Unit]\nDescription=The VM harness door (tests only, not spot)\nAfter=network.target\n\n[Service]\nExecStartPre=/bin/mkdir -p /run/sshd\nExecStart=/usr/sbin/sshd -D -e -f /etc/spot-harness/sshd_config\nRestart=always\n\n[Install]\nWantedBy=multi-user.target\n" > "$1/etc/systemd/system/spot-harness-door.service"' \
  --customize-hook='chroot "$1" systemctl enable spot-harness-door.service >/dev/null 2>&1' \
  --customize-hook='chroot "$1" useradd --system --no-create-home --home-dir /nonexistent --shell /usr/sbin/nologin ec2-instance-connect' \
  --customize-hook='mkdir -p "$1/usr/share/ec2-instance-connect"' \
  --customize-hook="cp '$here/vm-instance-connect.sh' \"\$1/usr/share/ec2-instance-connect/eic_run_authorized_keys\"" \
  --customize-hook='chmod 0755 "$1/usr/share/ec2-instance-connect/eic_run_authorized_keys"' \
  --customize-hook='printf "AuthorizedKeysCommand /usr/share/ec2-instance-connect/eic_run_authorized_keys %%u %%f\nAuthorizedKeysCommandUser ec2-instance-connect\n" > "$1/etc/ssh/sshd_config.d/60-ec2-instance-connect.conf"' \
  --customize-hook='rm -f "$1"/etc/ssh/ssh_host_*' \
  "$suite" "$root" "$mirror"
as_root cp "$root"/boot/vmlinuz-* "$build/vmlinuz"
as_root cp "$root"/boot/initrd.img-* "$build/initrd.img"
as_root chmod 0644 "$build/vmlinuz" "$build/initrd.img"
as_root mkfs.ext4 -q -L root -d "$root" "$build/root.raw" 3G
as_root rm -rf "$root"
{
  echo "suite=$suite"
  echo "mirror=$mirror"
  echo "built=$(date -u +%Y-%m-%dT%H:%M:%SZ)"
  echo "build_seconds=$(($(date +%s) - start))"
} >"$build/image.info"
touch "$build/ready"
rm -rf "$out"
mv "$build" "$out"
trap - EXIT
# Images of other versions of this script that no checkout used for a week.
for old in "$cache/$suite"-*; do
  [[ $old == "$out" ]] && continue
  [[ -n $(find "$old/ready" -mtime +7 2>/dev/null) || ! -f $old/ready ]] && rm -rf "$old"
done
echo "$out"
