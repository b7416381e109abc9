#!/usr/bin/env python3
"""Plays the EC2 instances of an emulator (moto) with real virtual machines.

For every running instance tagged by spot, this boots a small Debian VM (the image of
scripts/vm-image.sh) under qemu from exactly the user-data `spot` handed to EC2, read back
from the emulator byte for byte (gzipped or not). cloud-init, systemd, sshd, sudo, apt and
the units are the real ones; nothing of the user-data is skipped or rewritten.

- The guest learns everything from an instance metadata service this process serves for
  it at 169.254.169.254, as on EC2 (see Imds): IMDSv2 only, so a request without a session
  token gets 401, as spot's launch template (HttpTokens required) makes EC2 answer. SMBIOS
  says "Amazon EC2" with an `ec2...` UUID, so cloud-init's ds-identify picks its EC2
  datasource. The user-data is served byte for byte (gzipped or not). There is no seed
  disk. Keys pushed with EC2 Instance Connect (the fault proxy's --instance-connect-dir
  files) are served for 60 s at meta-data/managed-ssh-keys/active-keys/<user>/, which the
  image's AuthorizedKeysCommand reads as Ubuntu's ec2-instance-connect package does.
  `<work>/<id>/imds.json` counts the requests: `tokenless` must stay 0.
- Network: qemu user networking with restrict=on over 169.254.0.0/16 (libslirp forwards a
  guest address only inside its own network), so the guest reaches nothing but what is
  forwarded here: the metadata service, and apt's proxy at 169.254.0.100:3142, which
  passes only to the Debian mirror the image was built from (this machine's) and caches
  what cannot change (pool files and by-hash indexes) under the image cache.
- Ports follow the instance's security group, live: a TCP port is forwarded from
  127.0.0.1 only while an ingress rule of one of the instance's groups (read from the
  emulator every second) opens it, added and removed through qemu's monitor
  (hostfwd_add/hostfwd_remove). The ports that can be forwarded are 22, each --forward
  PORT, and every port of a rule that opens at most 16; each has a fixed free 127.0.0.1
  port. Every forwarded connection comes from 127.0.0.1, so a rule counts only when one
  of its IPv4 ranges contains 127.0.0.1 (a rule for any other source opens nothing here,
  as on EC2); other sources cannot be told apart. Port 22's forward is written
  to `<ssh-dir>/<id>` as `127.0.0.1:<port>` (what `spot` reads with
  SPOT_EMULATOR_SSH_DIR); the image's harness door (a second sshd on 2222, never used by
  spot) is always forwarded. `<work>/<id>/vm.json` records them, with `open`: the guest
  ports forwarded now.
- Lifecycle, both ways: a guest that powers off (qemu exits) has its instance stopped or
  terminated in the emulator as its shutdown behaviour says; an instance that stops
  running in the emulator has its VM stopped. A reboot in the guest is a reboot.
- Acceleration: KVM when a probe boot of the image's kernel under KVM runs to its end,
  else TCG.
- On SIGTERM/SIGINT every qemu started here is stopped by PID.

Usage: vm_player.py --endpoint URL --regions r1,r2 --ssh-dir DIR --work DIR --image DIR
       [--deployment ID] [--forward PORT]... [--rtc-offset SECONDS] [--memory MIB]
       [--instance-connect-dir DIR]
"""
import base64
import hashlib
import http.client
import http.server
import ipaddress
import json
import os
import secrets
import shutil
import socket
import subprocess
import sys
import threading
import time
import urllib.parse

import emulated

# The guest's network (qemu user networking) and its view of the harness: the metadata
# service, and apt's proxy (baked into the image by vm-image.sh).
GUEST_NET = "169.254.0.0/16"
IMDS_GUEST = ("169.254.169.254", 80)
APT_PROXY_GUEST = ("169.254.0.100", 3142)
# A rule opening more ports than this is forwarded only for the ports asked with --forward.
RANGE_FORWARDED = 16
# What EC2 answers for: the metadata versions cloud-init asks for, and "latest".
IMDS_VERSIONS = ["1.0", "2009-04-04", "2016-09-02", "2018-09-24", "2021-03-23", "latest"]
IMDS_TOKEN_MAX_TTL = 21600
INSTANCE_CONNECT_SECS = 60
# Host ports handed out to forwards: a port stays unbound while its rule is absent, so
# it is kept here and never handed out twice.
HOST_PORTS = set()


def host_port():
    while True:
        port = emulated.free_port()
        if port not in HOST_PORTS:
            HOST_PORTS.add(port)
            return port


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


class Imds(http.server.ThreadingHTTPServer):
    """One instance's metadata service (IMDSv2 only), on a free 127.0.0.1 port that the
    guest reaches at 169.254.169.254:80 through a qemu guestfwd.

    - `PUT /latest/api/token` with `X-aws-ec2-metadata-token-ttl-seconds` (1..21600) gives
      a session token; without the header, 400; with `X-Forwarded-For` (a request that
      came through a proxy), 403, as on EC2.
    - Every GET needs a live token in `X-aws-ec2-metadata-token`: without one, 401 (counted
      as `tokenless`), with an unknown or expired one, 401.
    - `/<version>/meta-data/...` is a tree (a folder answers its listing, children with
      a trailing `/`), `/<version>/user-data` the exact bytes (404 when there are none),
      `/<version>/dynamic/instance-identity/document` the identity document."""

    daemon_threads = True

    def __init__(self, vm_dir, tree, user_data, instance_connect):
        self.vm_dir = vm_dir
        self.tree = tree
        self.user_data = user_data
        self.instance_connect = instance_connect
        self.tokens = {}
        # What was served, for tests (it holds the host private key, like EC2's copy).
        with open(os.path.join(vm_dir, "user-data"), "wb") as f:
            f.write(user_data)
        self.counts = {"requests": 0, "tokens": 0, "tokenless": 0, "refused": 0, "instance_connect_keys": 0}
        self.lock = threading.Lock()
        super().__init__(("127.0.0.1", 0), ImdsHandler)
        self.note()

    def note(self):
        emulated.write_atomic(os.path.join(self.vm_dir, "imds.json"), json.dumps(self.counts))

    def count(self, what):
        with self.lock:
            if what != "instance_connect_keys":
                self.counts["requests"] += 1
            if what:
                self.counts[what] += 1
            self.note()

    def pushed_keys(self, user):
        """The key EC2 Instance Connect pushed for `user` in the last 60 s (the fault
        proxy's file: user, expiry epoch, key)."""
        if not self.instance_connect:
            return []
        try:
            with open(os.path.join(self.instance_connect, self.tree["instance-id"])) as f:
                pushed_user, until, key = f.read().splitlines()[:3]
            until = int(until)
        except (OSError, ValueError):
            return []
        return [key] if pushed_user == user and time.time() < until else []


class ImdsHandler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, fmt, *args):
        pass

    def answer(self, code, body=b"", content_type="text/plain"):
        if isinstance(body, str):
            body = body.encode()
        self.send_response(code)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def do_PUT(self):
        server = self.server
        self.rfile.read(int(self.headers.get("Content-Length", "0") or 0))
        if self.path.split("?")[0] != "/latest/api/token":
            server.count("refused")
            return self.answer(404, "Not Found")
        if self.headers.get("X-Forwarded-For"):
            server.count("refused")
            return self.answer(403, "Forbidden")
        ttl = self.headers.get("X-aws-ec2-metadata-token-ttl-seconds", "")
        if not ttl.isdigit() or not 1 <= int(ttl) <= IMDS_TOKEN_MAX_TTL:
            server.count("refused")
            return self.answer(400, "Bad Request")
        token = secrets.token_urlsafe(40)
        with server.lock:
            server.tokens[token] = time.time() + int(ttl)
        server.count("tokens")
        self.answer(200, token)

    def do_GET(self):
        server = self.server
        token = self.headers.get("X-aws-ec2-metadata-token")
        if not token:
            log(f"{server.tree['instance-id']}: IMDSv1 (token-less) request refused: GET {self.path}")
            server.count("tokenless")
            return self.answer(401, "Unauthorized")
        with server.lock:
            valid = server.tokens.get(token, 0) > time.time()
        if not valid:
            server.count("refused")
            return self.answer(401, "Unauthorized")
        server.count(None)
        parts = [p for p in self.path.split("?")[0].split("/") if p]
        if not parts:
            return self.answer(200, "\n".join(IMDS_VERSIONS))
        if parts[0] not in IMDS_VERSIONS:
            return self.answer(404, "Not Found")
        rest = parts[1:]
        if not rest:
            return self.answer(200, "dynamic\nmeta-data\nuser-data" if server.user_data else "dynamic\nmeta-data")
        if rest == ["user-data"]:
            if not server.user_data:
                return self.answer(404, "Not Found")
            return self.answer(200, server.user_data, "application/octet-stream")
        if rest[:3] == ["meta-data", "managed-ssh-keys", "active-keys"] and len(rest) == 4:
            keys = server.pushed_keys(rest[3])
            if not keys:
                return self.answer(404, "Not Found")
            server.count("instance_connect_keys")
            return self.answer(200, "".join(k + "\n" for k in keys))
        node = {"meta-data": server.tree, "dynamic": server.tree["__dynamic"]}
        for name in rest:
            if not isinstance(node, dict) or name not in node or name.startswith("__"):
                return self.answer(404, "Not Found")
            node = node[name]
        if isinstance(node, dict) and "__listing" in node:
            return self.answer(200, node["__listing"])
        if isinstance(node, dict):
            listing = [k + "/" if isinstance(v, dict) else k for k, v in node.items() if not k.startswith("__")]
            return self.answer(200, "\n".join(listing))
        self.answer(200, node)


def metadata_tree(inst, mac, key_material):
    """The meta-data tree of one instance, from what the emulator says of it."""
    iid = inst["InstanceId"]
    az = inst.get("Placement", {}).get("AvailabilityZone", "us-east-1a")
    region = az[:-1]
    private_ip = inst.get("PrivateIpAddress", "10.0.0.10")
    local_host = inst.get("PrivateDnsName") or f"ip-{private_ip.replace('.', '-')}.ec2.internal"
    groups = inst.get("SecurityGroups", [])
    eni = (inst.get("NetworkInterfaces") or [{}])[0]
    macs = {mac: {
        "device-number": "0",
        "interface-id": eni.get("NetworkInterfaceId", "eni-" + hashlib.sha1(iid.encode()).hexdigest()[:17]),
        "local-hostname": local_host,
        "local-ipv4s": private_ip,
        "mac": mac,
        "owner-id": "123456789012",
        "security-group-ids": "\n".join(g["GroupId"] for g in groups),
        "security-groups": "\n".join(g["GroupName"] for g in groups),
        "subnet-id": inst.get("SubnetId", ""),
        "vpc-id": inst.get("VpcId", ""),
    }}
    tree = {
        "ami-id": inst.get("ImageId", ""),
        "ami-launch-index": str(inst.get("AmiLaunchIndex", 0)),
        "hostname": local_host,
        "instance-action": "none",
        "instance-id": iid,
        "instance-life-cycle": inst.get("InstanceLifecycle", "on-demand"),
        "instance-type": inst.get("InstanceType", ""),
        "local-hostname": local_host,
        "local-ipv4": private_ip,
        "mac": mac,
        "network": {"interfaces": {"macs": macs}},
        "placement": {"availability-zone": az, "region": region},
        "security-groups": "\n".join(g["GroupName"] for g in groups),
        "services": {"domain": "amazonaws.com", "partition": "aws"},
    }
    if inst.get("PublicIpAddress"):
        tree["public-ipv4"] = inst["PublicIpAddress"]
    if key_material:
        # Listed as `0=<name>`, read at public-keys/0/openssh-key.
        tree["public-keys"] = {"__listing": f"0={inst['KeyName']}", "0": {"openssh-key": key_material}}
    tree["__dynamic"] = {"instance-identity": {"document": json.dumps({
        "accountId": "123456789012", "architecture": "x86_64", "availabilityZone": az,
        "imageId": inst.get("ImageId", ""), "instanceId": iid, "instanceType": inst.get("InstanceType", ""),
        "privateIp": private_ip, "region": region, "version": "2017-09-30",
        "pendingTime": str(inst.get("LaunchTime", "")),
    }, indent=2)}}
    return tree


class Monitor:
    """qemu's human monitor on a unix socket: one command, its answer."""

    def __init__(self, path):
        self.path = path

    def run(self, command):
        deadline = time.time() + 3
        while True:
            try:
                sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                sock.connect(self.path)
                break
            except OSError:
                sock.close()
                if time.time() > deadline:
                    raise
                time.sleep(0.1)
        with sock:
            sock.settimeout(10)
            self.read_prompt(sock)
            sock.sendall(command.encode() + b"\n")
            answer = self.read_prompt(sock)
        # The monitor echoes the command (with terminal escapes) before its answer.
        lines = [ln for ln in answer.replace("\r", "\n").split("\n") if ln.strip() and command not in ln and "\x1b" not in ln]
        return "\n".join(lines).strip()

    @staticmethod
    def read_prompt(sock):
        data = b""
        while not data.endswith(b"(qemu) "):
            chunk = sock.recv(4096)
            if not chunk:
                break
            data += chunk
        text = data.decode(errors="replace")
        return text[: -len("(qemu) ")] if text.endswith("(qemu) ") else text


def opened_ports(groups, candidates):
    """The TCP ports among `candidates` (and every port of a small rule) that an ingress
    rule of `groups` opens to 127.0.0.1, where every forwarded connection comes from: a
    rule for other sources (other CIDRs, other groups, prefix lists, IPv6 only) opens
    nothing here, as it would let nothing from this address in on EC2."""
    harness = ipaddress.ip_address("127.0.0.1")
    opened = set()
    for group in groups:
        for rule in group.get("IpPermissions", []):
            proto = str(rule.get("IpProtocol", ""))
            if proto not in ("tcp", "6", "-1"):
                continue
            ranges = [r.get("CidrIp", "") for r in rule.get("IpRanges", [])]
            if not any(harness in ipaddress.ip_network(c, strict=False) for c in ranges if c):
                continue
            low, high = (0, 65535) if proto == "-1" else (rule.get("FromPort", 0), rule.get("ToPort", 65535))
            if high - low < RANGE_FORWARDED:
                opened.update(range(low, high + 1))
            opened.update(p for p in candidates if low <= p <= high)
    return opened

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
    def __init__(self, inst, region, raw_user_data, args, accel, apt_port, key_material):
        iid = inst["InstanceId"]
        self.id = iid
        self.region = region
        self.dir = os.path.join(args.work, iid)
        os.makedirs(self.dir, exist_ok=True)
        image = args.image
        disk = os.path.join(self.dir, "disk.qcow2")
        subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", "-b", os.path.join(image, "root.raw"),
                        "-F", "raw", disk, "8G"], check=True)
        digest = hashlib.sha256(iid.encode()).hexdigest()
        # A locally administered MAC of its own, which the metadata's network/ names.
        mac = "06:" + ":".join(digest[i:i + 2] for i in range(0, 10, 2))
        self.imds = Imds(self.dir, metadata_tree(inst, mac, key_material), raw_user_data, args.instance_connect_dir)
        threading.Thread(target=self.imds.serve_forever, daemon=True).start()
        self.monitor = Monitor(os.path.join(self.dir, "monitor.sock"))
        self.ports = {"ssh": host_port(), "door": host_port(), "forwards": {}}
        self.ports["forwards"]["22"] = self.ports["ssh"]
        for guest in args.forward:
            self.ports["forwards"][str(guest)] = host_port()
        self.open = set()
        gip, gport = APT_PROXY_GUEST
        mip, mport = IMDS_GUEST
        net = [f"net={GUEST_NET}", "host=169.254.0.2", "dns=169.254.0.3", "dhcpstart=169.254.0.15",
               f"hostfwd=tcp:127.0.0.1:{self.ports['door']}-:2222",
               f"guestfwd=tcp:{gip}:{gport}-cmd:socat - TCP:127.0.0.1:{apt_port}",
               f"guestfwd=tcp:{mip}:{mport}-cmd:socat - TCP:127.0.0.1:{self.imds.server_address[1]}"]
        # SMBIOS as on a Nitro instance: cloud-init's ds-identify and its EC2 datasource
        # take a product UUID starting "ec2" for AWS.
        uuid = f"ec2{digest[:5]}-{digest[5:9]}-{digest[9:13]}-{digest[13:17]}-{digest[17:29]}"
        smbios = f"type=1,manufacturer=Amazon EC2,product={inst.get('InstanceType', 't3.micro')},uuid={uuid},serial={uuid}"
        # One vCPU: under multi-threaded TCG with two, the kernel's live code patching
        # (int3 breakpoints while another vCPU runs the code) sometimes panics the guest at
        # boot (seen with qemu 7.2 and Debian's 6.12 kernel). It also leaves a core free.
        cmd = ["qemu-system-x86_64", "-name", iid, "-m", str(args.memory), "-smp", "1",
               "-nodefaults", "-no-user-config", "-display", "none",
               "-monitor", f"unix:{self.monitor.path},server=on,wait=off",
               "-smbios", smbios, "-uuid", uuid,
               "-kernel", os.path.join(image, "vmlinuz"), "-initrd", os.path.join(image, "initrd.img"),
               "-append", "root=/dev/vda rw console=ttyS0",
               "-drive", f"file={disk},if=virtio,format=qcow2",
               "-netdev", "user,id=n0,restrict=on," + ",".join(net),
               "-device", f"virtio-net-pci,netdev=n0,mac={mac}",
               "-serial", f"file:{os.path.join(self.dir, 'console.log')}"]
        cmd += ["-accel", "kvm", "-cpu", "host"] if accel == "kvm" else ["-accel", "tcg", "-cpu", "max"]
        self.cmd = DIE_WITH_PARENT + cmd
        self.rtc_offset = args.rtc_offset
        self.panic_told = False
        self.console_seen = 0
        self.facts = {"accel": accel, "console": os.path.join(self.dir, "console.log"),
                      "door_key": os.path.join(image, "harness_key"), "imds": os.path.join(self.dir, "imds.json"),
                      **self.ports}
        self.boot()

    def follow(self, groups):
        """Forwards exactly the candidate ports the security groups open now. A monitor
        that does not answer (qemu ending) is tried again on the next pass."""
        if self.proc.poll() is not None:
            return
        want = opened_ports(groups, [int(p) for p in self.ports["forwards"]])
        try:
            for port in sorted(want - self.open):
                if str(port) not in self.ports["forwards"]:
                    self.ports["forwards"][str(port)] = host_port()
                host = self.ports["forwards"][str(port)]
                said = self.monitor.run(f"hostfwd_add n0 tcp:127.0.0.1:{host}-:{port}")
                if said:
                    log(f"{self.region}: {self.id}: hostfwd_add {port} failed: {said}")
                    continue
                self.open.add(port)
                log(f"{self.region}: {self.id}: port {port} opened to 127.0.0.1 by its security group: 127.0.0.1:{host}")
            for port in sorted(self.open - want):
                host = self.ports["forwards"][str(port)]
                said = self.monitor.run(f"hostfwd_remove n0 tcp:127.0.0.1:{host}")
                # "removed" or "not found": either way nothing listens there now.
                if said and "removed" not in said and "not found" not in said:
                    log(f"{self.region}: {self.id}: hostfwd_remove {port} failed: {said}")
                    continue
                self.open.discard(port)
                log(f"{self.region}: {self.id}: port {port} closed by its security group")
        except OSError as e:
            log(f"{self.region}: {self.id}: qemu's monitor did not answer ({e}); trying again")
        self.note()

    def note(self):
        facts = {"pid": self.proc.pid, **self.facts, **self.ports, "open": sorted(self.open)}
        emulated.write_atomic(os.path.join(self.dir, "vm.json"), json.dumps(facts))

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
        # A new qemu forwards nothing yet: the next look at the security groups opens.
        self.open = set()
        self.note()
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
        self.open = set()
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


def template_data(client, tags, iid):
    """The LaunchTemplateData the instance was launched with, or None without a template."""
    template = launch_template(client, tags, iid)
    if not template:
        return None
    versions = client.describe_launch_template_versions(LaunchTemplateId=template[0], Versions=[template[1]])
    return versions["LaunchTemplateVersions"][0]["LaunchTemplateData"]


def shutdown_behaviour(client, tags, iid):
    """What EC2 does when this guest powers itself off. moto keeps "stop" on instances a
    fleet launched from a template that says "terminate", so the template decides, as on
    EC2; the instance's own attribute only for an instance launched without one."""
    data = template_data(client, tags, iid)
    if data is not None:
        return data.get("InstanceInitiatedShutdownBehavior", "stop")
    attr = client.describe_instance_attribute(InstanceId=iid, Attribute="instanceInitiatedShutdownBehavior")
    return attr["InstanceInitiatedShutdownBehavior"]["Value"]


def group_ids(inst, data):
    """The instance's security groups: those of the launch template it came from (`data`),
    as EC2 applies them (moto puts fleet instances in the VPC's default group instead),
    else the ones the emulator lists on the instance."""
    if data is not None:
        ids = list(data.get("SecurityGroupIds", []))
        ids += [g for eni in data.get("NetworkInterfaces", []) for g in eni.get("Groups", [])]
        if ids:
            return sorted(set(ids))
    ids = [g["GroupId"] for g in inst.get("SecurityGroups", [])]
    ids += [g["GroupId"] for eni in inst.get("NetworkInterfaces", []) for g in eni.get("Groups", [])]
    return sorted(set(ids))


def imds_refusal(inst, data):
    """Why this harness cannot play the instance's metadata options (it serves IMDSv2
    with tokens required, nothing else), or None. The launch template's options (`data`),
    as EC2 applies them; else the instance's own (EC2's default without either: optional)."""
    options = (data or {}).get("MetadataOptions") or inst.get("MetadataOptions") or {}
    tokens, endpoint = options.get("HttpTokens", "optional"), options.get("HttpEndpoint", "enabled")
    if tokens != "required" or endpoint != "enabled":
        return (f"metadata options HttpTokens={tokens} HttpEndpoint={endpoint}: the harness serves only "
                "IMDSv2 with tokens required")
    return None


def key_material(client, inst):
    """The public key of the instance's key pair, as EC2 serves it at public-keys/0."""
    if not inst.get("KeyName"):
        return None
    try:
        found = client.describe_key_pairs(KeyNames=[inst["KeyName"]], IncludePublicKey=True)["KeyPairs"]
    except Exception:  # a key pair deleted after launch: EC2 still serves it; moto cannot
        return None
    return found[0].get("PublicKey", "").strip() or None


def main():
    ap = emulated.arguments(__doc__)
    ap.add_argument("--image", required=True)
    ap.add_argument("--forward", type=int, action="append", default=[])
    ap.add_argument("--rtc-offset", type=int, default=0, help="the guests' clock, seconds ahead of this machine's")
    ap.add_argument("--memory", type=int, default=1024)
    ap.add_argument("--instance-connect-dir", help="where the fault proxy writes keys pushed with SendSSHPublicKey")
    args = ap.parse_args()
    for tool in ["qemu-system-x86_64", "qemu-img", "socat", "setpriv"]:
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
            # Ports follow the security groups' rules as they are now.
            wanted = sorted({g for vm in playing.values() if vm.region == region and vm.id in running
                             for g in vm.group_ids})
            rules = {}
            for group in wanted:
                try:
                    rules[group] = client.describe_security_groups(GroupIds=[group])["SecurityGroups"][0]
                except Exception as e:  # deleted: it opens nothing (or moto is busy: next pass)
                    log(f"{region}: security group {group}: {e}")
            for vm in playing.values():
                if vm.region == region and vm.id in running:
                    vm.follow([rules[g] for g in vm.group_ids if g in rules])
            for inst in instances:
                iid = inst["InstanceId"]
                if iid in playing:
                    continue
                attr = client.describe_instance_attribute(InstanceId=iid, Attribute="userData")
                raw = base64.b64decode(attr["UserData"].get("Value", ""))
                if not raw:
                    log(f"{region}: {iid} has no user-data; it boots without, as on EC2")
                tags = {t["Key"]: t["Value"] for t in inst.get("Tags", [])}
                data = template_data(client, tags, iid)
                refused = imds_refusal(inst, data)
                if refused:
                    log(f"{region}: {iid}: refused: {refused}")
                    return 3
                groups = group_ids(inst, data)
                if groups:
                    described = client.describe_security_groups(GroupIds=groups)["SecurityGroups"]
                    inst["SecurityGroups"] = [{"GroupId": g["GroupId"], "GroupName": g["GroupName"]} for g in described]
                vm = Vm(inst, region, raw, args, accel, proxy.server_address[1], key_material(client, inst))
                vm.tags = tags
                vm.group_ids = groups
                playing[iid] = vm
                emulated.write_atomic(os.path.join(args.ssh_dir, iid), f"127.0.0.1:{vm.ports['ssh']}\n")
                gzipped = ", gzipped" if raw[:2] == b"\x1f\x8b" else ""
                log(f"{region}: {iid} boots ({len(raw)} bytes of user-data{gzipped}, groups {vm.group_ids}); "
                    f"ssh on 127.0.0.1:{vm.ports['ssh']} while its group opens 22")
    finally:
        for vm in playing.values():
            vm.stop()
        proxy.shutdown()
        log(f"stopped {len(playing)} VM(s)")


if __name__ == "__main__":
    sys.exit(main())
