#!/usr/bin/env python3
"""Plays the EC2 instances of an emulator (moto) with real virtual machines.

For every running instance tagged by spot, this boots a small Debian VM (the image of
scripts/vm-image.sh) under qemu from exactly the user-data `spot` handed to EC2, read back
from the emulator byte for byte (gzipped or not). cloud-init, systemd, sshd, sudo, apt and
the units are the real ones; nothing of the user-data is skipped or rewritten.

- The user-data reaches the guest through a NoCloud seed (an ISO labelled `cidata`), with
  the instance id as cloud-init's instance id.
- Network: qemu user networking with restrict=on, so the guest reaches nothing but what is
  forwarded here. Port 22 goes to a free 127.0.0.1 port, written to `<ssh-dir>/<id>` as
  `127.0.0.1:<port>` (what `spot` reads with SPOT_EMULATOR_SSH_DIR); each `--forward PORT`
  to another free port; the image's harness door (a second sshd on 2222, never used by
  spot) to a third. `<work>/<id>/vm.json` records them. The guest's apt reaches this
  process's HTTP proxy at 10.0.2.100:3142 (a qemu guestfwd), which passes only to the
  Debian mirror the image was built from (this machine's) and caches what cannot change
  (pool files and by-hash indexes) under the image cache.
- Lifecycle, both ways: a guest that powers off (qemu exits) has its instance stopped or
  terminated in the emulator as its shutdown behaviour says; an instance that stops
  running in the emulator has its VM stopped. A reboot in the guest is a reboot.
- Acceleration: KVM when a probe boot of the image's kernel under KVM runs to its end,
  else TCG.
- On SIGTERM/SIGINT every qemu started here is stopped by PID.

Usage: vm_player.py --endpoint URL --regions r1,r2 --ssh-dir DIR --work DIR --image DIR
       [--deployment ID] [--forward PORT]... [--rtc-offset SECONDS] [--memory MIB]
"""
import base64
import http.client
import http.server
import json
import os
import shutil
import subprocess
import sys
import threading
import time
import urllib.parse

import emulated

# The guest's view of the harness: apt's proxy (baked into the image by vm-image.sh).
APT_PROXY_GUEST = ("10.0.2.100", 3142)


# Every qemu runs under `setpriv --pdeathsig KILL`: the kernel kills it when this harness
# dies, even by SIGKILL, so no VM outlives the test that asked for it. (Not a preexec_fn:
# that is unsafe with the proxy's threads running.)
DIE_WITH_PARENT = ["setpriv", "--pdeathsig", "KILL", "--"]


def log(msg):
    print(f"[vm] {time.strftime('%H:%M:%S')} {msg}", file=sys.stderr, flush=True)


def image_mirror(image):
    """The mirror the image's apt sources name (vm-image.sh records it): the one host the
    proxy passes to."""
    with open(os.path.join(image, "image.info")) as f:
        info = dict(line.rstrip("\n").split("=", 1) for line in f if "=" in line)
    return urllib.parse.urlsplit(info["mirror"]).hostname


class AptProxy(http.server.ThreadingHTTPServer):
    """A forward HTTP proxy for the guests' apt: GET and HEAD to the allowed mirror hosts."""

    daemon_threads = True

    def __init__(self, mirror, cache_dir):
        self.allowed = {mirror}
        self.cache_dir = cache_dir
        super().__init__(("127.0.0.1", 0), AptHandler)


class AptHandler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, fmt, *args):
        pass

    def do_HEAD(self):
        self.forward(head=True)

    def do_GET(self):
        self.forward(head=False)

    def refuse(self, code, why):
        log(f"apt proxy refused {self.command} {self.path}: {why}")
        body = why.encode()
        self.send_response(code)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def do_POST(self):
        self.refuse(405, "only GET and HEAD pass")

    do_PUT = do_DELETE = do_CONNECT = do_POST

    def cache_path(self, url):
        # Files whose name says what they hold never change: pool files and by-hash indexes.
        if "/pool/" not in url.path and "/by-hash/" not in url.path:
            return None
        return os.path.join(self.server.cache_dir, url.hostname, url.path.lstrip("/"))

    def forward(self, head):
        url = urllib.parse.urlsplit(self.path)
        if url.scheme != "http" or url.hostname not in self.server.allowed or (url.port or 80) != 80:
            return self.refuse(403, f"only the Debian mirror ({', '.join(sorted(self.server.allowed))}) is reachable")
        if ".." in url.path.split("/"):
            # The cache is a folder on the host: a guest names no file outside it.
            return self.refuse(403, "no `..` in paths")
        cached = self.cache_path(url)
        plain = "Range" not in self.headers and "If-Modified-Since" not in self.headers
        if cached and plain and os.path.exists(cached):
            with open(cached, "rb") as f:
                body = f.read()
            return self.reply(200, [("Content-Type", "application/octet-stream")], body, head)
        headers = {k: v for k, v in self.headers.items() if k.lower() in ("range", "if-modified-since", "if-range", "accept")}
        try:
            conn = http.client.HTTPConnection(url.hostname, url.port or 80, timeout=60)
            path = url.path + (f"?{url.query}" if url.query else "")
            conn.request("HEAD" if head else "GET", path, headers=headers)
            resp = conn.getresponse()
            body = resp.read()
            kept = [(k, v) for k, v in resp.getheaders()
                    if k.lower() in ("content-type", "last-modified", "etag", "content-range", "accept-ranges", "location")]
            conn.close()
        except OSError as e:
            return self.refuse(502, f"the mirror did not answer: {e}")
        if cached and plain and resp.status == 200 and not head:
            os.makedirs(os.path.dirname(cached), exist_ok=True)
            part = f"{cached}.{os.getpid()}.{threading.get_ident()}.part"
            with open(part, "wb") as f:
                f.write(body)
            os.rename(part, cached)
        self.reply(resp.status, kept, body, head, length=resp.getheader("Content-Length") if head else None)

    def reply(self, status, headers, body, head, length=None):
        self.send_response(status)
        for k, v in headers:
            self.send_header(k, v)
        self.send_header("Content-Length", length or str(len(body)))
        self.end_headers()
        if not head:
            self.wfile.write(body)


def probe_accel(image):
    """KVM only when a guest really runs under it here: a nested KVM guest may die on its
    first instructions ("KVM internal error ... emulation failure"). The probe boots the
    image's kernel without a root disk; reaching the panic about the missing root file
    system is the proof that the kernel ran its whole start under KVM."""
    if not os.access("/dev/kvm", os.R_OK | os.W_OK):
        return "tcg"
    proc = subprocess.Popen(
        DIE_WITH_PARENT + ["qemu-system-x86_64", "-accel", "kvm", "-cpu", "host", "-m", "256", "-nodefaults",
         "-no-user-config", "-display", "none", "-no-reboot", "-serial", "stdio",
         "-kernel", os.path.join(image, "vmlinuz"), "-initrd", os.path.join(image, "initrd.img"),
         "-append", "console=ttyS0 panic=-1 rdinit=/bin/nonexistent"],
        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
    )
    verdict = []
    timer = threading.Timer(20, proc.kill)
    timer.start()
    try:
        for line in proc.stdout:
            if b"KVM internal error" in line:
                verdict.append("tcg")
                break
            if b"Unable to mount root" in line:
                verdict.append("kvm")
                break
    finally:
        timer.cancel()
        proc.kill()
        proc.wait()
    return verdict[0] if verdict else "tcg"


class Vm:
    def __init__(self, iid, region, raw_user_data, args, accel, apt_port):
        self.id = iid
        self.region = region
        self.dir = os.path.join(args.work, iid)
        os.makedirs(self.dir, exist_ok=True)
        image = args.image
        seed = os.path.join(self.dir, "seed")
        os.makedirs(seed, exist_ok=True)
        with open(os.path.join(seed, "user-data"), "wb") as f:
            f.write(raw_user_data)
        with open(os.path.join(seed, "meta-data"), "w") as f:
            f.write(f"instance-id: {iid}\nlocal-hostname: {iid}\n")
        iso = os.path.join(self.dir, "seed.iso")
        subprocess.run(["genisoimage", "-quiet", "-output", iso, "-volid", "cidata", "-joliet", "-rock",
                        os.path.join(seed, "user-data"), os.path.join(seed, "meta-data")], check=True)
        disk = os.path.join(self.dir, "disk.qcow2")
        subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", "-b", os.path.join(image, "root.raw"),
                        "-F", "raw", disk, "8G"], check=True)
        self.ports = {"ssh": emulated.free_port(), "door": emulated.free_port(), "forwards": {}}
        forwards = [f"hostfwd=tcp:127.0.0.1:{self.ports['ssh']}-:22",
                    f"hostfwd=tcp:127.0.0.1:{self.ports['door']}-:2222"]
        for guest in args.forward:
            host = emulated.free_port()
            self.ports["forwards"][str(guest)] = host
            forwards.append(f"hostfwd=tcp:127.0.0.1:{host}-:{guest}")
        gip, gport = APT_PROXY_GUEST
        forwards.append(f"guestfwd=tcp:{gip}:{gport}-cmd:socat - TCP:127.0.0.1:{apt_port}")
        # One vCPU: under multi-threaded TCG with two, the kernel's live code patching
        # (int3 breakpoints while another vCPU runs the code) sometimes panics the guest at
        # boot (seen with qemu 7.2 and Debian's 6.12 kernel). It also leaves a core free.
        cmd = ["qemu-system-x86_64", "-name", iid, "-m", str(args.memory), "-smp", "1",
               "-nodefaults", "-no-user-config", "-display", "none", "-monitor", "none",
               "-kernel", os.path.join(image, "vmlinuz"), "-initrd", os.path.join(image, "initrd.img"),
               "-append", "root=/dev/vda rw console=ttyS0",
               "-drive", f"file={disk},if=virtio,format=qcow2",
               "-drive", f"file={iso},if=virtio,format=raw,readonly=on",
               "-netdev", "user,id=n0,restrict=on," + ",".join(forwards),
               "-device", "virtio-net-pci,netdev=n0",
               "-serial", f"file:{os.path.join(self.dir, 'console.log')}"]
        cmd += ["-accel", "kvm", "-cpu", "host"] if accel == "kvm" else ["-accel", "tcg", "-cpu", "max"]
        self.cmd = DIE_WITH_PARENT + cmd
        self.rtc_offset = args.rtc_offset
        self.panic_told = False
        self.console_seen = 0
        self.facts = {"accel": accel, "console": os.path.join(self.dir, "console.log"),
                      "door_key": os.path.join(image, "harness_key"), **self.ports}
        self.boot()

    def boot(self):
        """Starts qemu (again, after a stop and start in the emulator: same disk)."""
        cmd = list(self.cmd)
        if self.rtc_offset:
            base = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(time.time() + self.rtc_offset))
            cmd += ["-rtc", f"base={base},clock=host"]
        self.qemu_log = open(os.path.join(self.dir, "qemu.log"), "ab")
        self.proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=self.qemu_log, stderr=self.qemu_log)
        self.started = time.time()
        # Set once the harness has matched this VM's end with the emulator's state.
        self.mirrored = False
        emulated.write_atomic(os.path.join(self.dir, "vm.json"), json.dumps({"pid": self.proc.pid, **self.facts}))
        try:
            os.remove(os.path.join(self.dir, "exit"))
        except OSError:
            pass

    def panicked(self):
        """The guest kernel's last words, once: a panicked guest hangs (as on EC2, where
        only the status checks would say so), so the harness says it loudly. Reads only
        what the console got since the last look."""
        if self.panic_told:
            return None
        try:
            with open(os.path.join(self.dir, "console.log"), "rb") as f:
                f.seek(self.console_seen)
                new = f.read()
        except OSError:
            return None
        # Keep a line's worth so a message split across two reads is still found.
        text = new.decode(errors="replace")
        self.console_seen += max(0, len(new) - 200)
        at = text.find("Kernel panic - not syncing")
        if at < 0:
            return None
        self.panic_told = True
        return text[at:].splitlines()[0]

    def stop(self):
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def launch_template(client, tags, iid):
    """(id, version) of the template the instance was launched from: its tags on EC2; moto
    does not tag fleet instances, so also the instant fleet that holds it."""
    if "aws:ec2launchtemplate:id" in tags:
        return tags["aws:ec2launchtemplate:id"], tags.get("aws:ec2launchtemplate:version", "$Default")
    for fleet in client.describe_fleets().get("Fleets", []):
        held = {i for group in fleet.get("Instances", []) for i in group.get("InstanceIds", [])}
        if iid in held:
            spec = fleet["LaunchTemplateConfigs"][0]["LaunchTemplateSpecification"]
            return spec["LaunchTemplateId"], str(spec.get("Version", "$Default"))
    return None


def shutdown_behaviour(client, tags, iid):
    """What EC2 does when this guest powers itself off. moto keeps "stop" on instances a
    fleet launched from a template that says "terminate", so the template decides, as on
    EC2; the instance's own attribute only for an instance launched without one."""
    template = launch_template(client, tags, iid)
    if template:
        versions = client.describe_launch_template_versions(LaunchTemplateId=template[0], Versions=[template[1]])
        data = versions["LaunchTemplateVersions"][0]["LaunchTemplateData"]
        return data.get("InstanceInitiatedShutdownBehavior", "stop")
    attr = client.describe_instance_attribute(InstanceId=iid, Attribute="instanceInitiatedShutdownBehavior")
    return attr["InstanceInitiatedShutdownBehavior"]["Value"]


def main():
    ap = emulated.arguments(__doc__)
    ap.add_argument("--image", required=True)
    ap.add_argument("--forward", type=int, action="append", default=[])
    ap.add_argument("--rtc-offset", type=int, default=0, help="the guests' clock, seconds ahead of this machine's")
    ap.add_argument("--memory", type=int, default=1024)
    args = ap.parse_args()
    for tool in ["qemu-system-x86_64", "qemu-img", "genisoimage", "socat", "setpriv"]:
        if not shutil.which(tool):
            sys.exit(f"vm_player: {tool} is missing (scripts/test-deps.sh installs it)")
    if not os.path.exists(os.path.join(args.image, "ready")):
        sys.exit(f"vm_player: {args.image} is no image; build one with scripts/vm-image.sh")
    os.makedirs(args.ssh_dir, exist_ok=True)
    os.makedirs(args.work, exist_ok=True)
    accel = probe_accel(args.image)
    log(f"acceleration: {accel}")
    proxy = AptProxy(image_mirror(args.image), os.path.join(os.path.dirname(os.path.abspath(args.image)), "apt-cache"))
    threading.Thread(target=proxy.serve_forever, daemon=True).start()
    ec2 = emulated.clients(args.endpoint, args.regions)
    playing = {}
    stopping = emulated.stop_flag()
    try:
        for region, client, instances, running in emulated.running(ec2, stopping, args.deployment, 1, log):
            for iid, vm in list(playing.items()):
                if vm.region != region:
                    continue
                panic = vm.panicked()
                if panic:
                    log(f"{region}: {iid}: THE GUEST KERNEL PANICKED ({panic}); see {vm.dir}/console.log")
                if iid not in running and vm.proc.poll() is None:
                    vm.stop()
                    vm.mirrored = True
                    log(f"{region}: {iid} is no longer running in the emulator; its VM is stopped")
                elif iid in running and vm.proc.poll() is not None and vm.mirrored:
                    # Started again after the power off was mirrored: boot the same disk.
                    vm.boot()
                    log(f"{region}: {iid} runs again in the emulator; its VM boots again")
                elif iid in running and vm.proc.poll() is not None:
                    vm.mirrored = True
                    code = vm.proc.returncode
                    with open(os.path.join(vm.dir, "exit"), "w") as f:
                        f.write(f"{code}\n")
                    if code != 0:
                        # qemu itself failed (not a guest power off): say so, change nothing.
                        log(f"{region}: {iid}: QEMU FAILED with exit {code}; see {vm.dir}/qemu.log")
                        continue
                    # The guest powered itself off: EC2 does what the shutdown behaviour says.
                    behaviour = shutdown_behaviour(client, vm.tags, iid)
                    if behaviour == "terminate":
                        client.terminate_instances(InstanceIds=[iid])
                    else:
                        client.stop_instances(InstanceIds=[iid])
                    log(f"{region}: {iid} powered off after {time.time() - vm.started:.0f}s; "
                        f"shutdown behaviour {behaviour}")
            for inst in instances:
                iid = inst["InstanceId"]
                if iid in playing:
                    continue
                attr = client.describe_instance_attribute(InstanceId=iid, Attribute="userData")
                raw = base64.b64decode(attr["UserData"].get("Value", ""))
                if not raw:
                    log(f"{region}: {iid} has no user-data; it boots without, as on EC2")
                vm = Vm(iid, region, raw, args, accel, proxy.server_address[1])
                vm.tags = {t["Key"]: t["Value"] for t in inst.get("Tags", [])}
                playing[iid] = vm
                emulated.write_atomic(os.path.join(args.ssh_dir, iid), f"127.0.0.1:{vm.ports['ssh']}\n")
                gzipped = ", gzipped" if raw[:2] == b"\x1f\x8b" else ""
                log(f"{region}: {iid} boots ({len(raw)} bytes of user-data{gzipped}); "
                    f"ssh on 127.0.0.1:{vm.ports['ssh']}")
    finally:
        for vm in playing.values():
            vm.stop()
        proxy.shutdown()
        log(f"stopped {len(playing)} VM(s)")


if __name__ == "__main__":
    main()
