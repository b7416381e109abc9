#!/usr/bin/env python3
"""Plays the EC2 instances of an emulator (moto) with real OpenSSH servers.

moto boots nothing, so this harness does what a booting Ubuntu instance would, from
exactly the user-data `spot` handed to EC2: for every running instance tagged by spot it
reads the user-data back (DescribeInstanceAttribute), takes the SSH host key, login user
and authorized keys from it, writes cloud-init's `write_files`, runs the `sh` entries of
`runcmd` (which write spot's boot marker), and starts `sshd` with exactly those keys on a
free 127.0.0.1 port. It then writes `<ssh-dir>/<instance-id>` = `127.0.0.1:<port>`, which
`spot` reads when SPOT_EMULATOR_SSH_DIR is set.

Each instance gets its own mount namespace (unshare -m) with empty tmpfs over the folders
a deployment writes (/opt, /srv, /etc/spot, /etc/systemd/system, /var/lib/spot, /home,
/etc/sudoers.d), its own /etc/passwd, /etc/shadow and /etc/group when the login user is
not root, and the systemctl/journalctl stand-in (standin/systemctl) in place of systemd,
so nothing on the real machine is touched. It refuses (logs why and exits 3) user-data it
cannot play: an unknown key, a package this machine lacks (it installs none), groups,
a `bootcmd` other than spot's time to live, a `runcmd` entry that is not shell; what it
does not play is proven on the VM instances (vm_player.py). cloud-init's own account of
the boot is written where cloud-init keeps it (/run/cloud-init/status.json and
result.json, its v1 layout), so `cloud-init status` on the instance is this machine's
real one reading it; --cloud-init-error TEXT plays a module that failed with TEXT (in
the final stage, or in --cloud-init-error-stage STAGE, after which the final stage never
ends). On SIGTERM/SIGINT it stops
every sshd and service it started, by PID.

With --instance-connect-dir DIR (the fault proxy's), each sshd also accepts the key EC2
Instance Connect pushed for its instance and login user within the last 60 seconds, as
the ec2-instance-connect package's AuthorizedKeysCommand does on an Ubuntu AMI.

Usage: instance_player.py --endpoint URL --regions r1,r2 --ssh-dir DIR --work DIR
       [--deployment ID] [--wrong-host-key] [--instance-connect-dir DIR]
       [--cloud-init-error TEXT [--cloud-init-error-stage STAGE]]
"""
import base64
import gzip
import json
import os
import shlex
import signal
import socket
import subprocess
import sys
import time

import emulated
import yaml

HERE = os.path.dirname(os.path.abspath(__file__))
STANDIN = os.path.join(HERE, "standin", "systemctl")
# sshd runs an AuthorizedKeysCommand only from a root-owned path no one else can write,
# so not from /tmp: the player writes it under /run for as long as it runs.
KEYS_COMMAND_DIR = f"/run/spot-player-{os.getpid()}"
KEYS_COMMAND = f"{KEYS_COMMAND_DIR}/instance-connect-keys"
KEYS_SCRIPT = """#!/bin/sh
# $1: the file the fault proxy wrote for this instance, $2: the user logging in.
[ -r "$1" ] || exit 0
{ read -r user; read -r until; read -r key; } < "$1"
[ "$user" = "$2" ] && [ "$(date +%s)" -lt "$until" ] && printf '%s\\n' "$key"
exit 0
"""
TMPFS = ["/run/spot-keys", "/run/cloud-init", "/opt", "/srv", "/etc/spot", "/etc/systemd/system", "/var/lib/spot", "/home", "/etc/sudoers.d"]


def log(msg):
    print(f"[player] {msg}", file=sys.stderr, flush=True)


def user_data(client, instance_id):
    attr = client.describe_instance_attribute(InstanceId=instance_id, Attribute="userData")
    raw = base64.b64decode(attr["UserData"]["Value"])
    if raw[:2] == b"\x1f\x8b":
        raw = gzip.decompress(raw)
    return yaml.safe_load(raw.decode())


# What the player does with each key of spot's user-data; any other key is refused, so a
# new key cannot pass here unplayed. What is not played is proven on the VM instances
# (tests/it/vm.rs: real cloud-init, systemd, apt).
PLAYED = {"users", "ssh_keys", "write_files", "runcmd"}
# Keys whose effect the played instance has only for one value: any other is refused.
SAME_AS_PLAYED = {
    "ssh_pwauth": (False, "the played sshd allows key logins only"),
    "disable_root": (True, "the played sshd admits only the login user"),
    "ssh_deletekeys": (True, "the played sshd has only spot's host key"),
}
# What a user entry may say: name, shell, sudo rule and keys are played; its groups
# (`sudo`, `docker`) and locked password have no effect on a played login.
USER_KEYS = {"name", "groups", "shell", "sudo", "lock_passwd", "ssh_authorized_keys"}
WRITE_FILE_KEYS = {"path", "content", "permissions", "owner"}
# Keys checked below, by what they hold.
CHECKED = {
    "package_update": "no effect: the player installs nothing (apt runs for real on the VM)",
    "packages": "must be installed on this machine already (the player installs nothing)",
    "groups": "must be empty (the player creates no groups)",
    "bootcmd": "only spot's time-to-live entry; armed and fired on the VM",
    "final_message": "console text",
}


def refusals(doc):
    """Why the player cannot play this user-data: empty when it can."""
    why = [f"user-data key `{k}` is unknown to the player" for k in doc
           if k not in PLAYED and k not in SAME_AS_PLAYED and k not in CHECKED]
    for key, (value, what) in SAME_AS_PLAYED.items():
        if key in doc and doc[key] != value:
            why.append(f"`{key}: {doc[key]}` is not played ({what})")
    if not isinstance(doc.get("package_update", False), bool) or not isinstance(doc.get("final_message", ""), str):
        why.append("package_update must be a boolean and final_message a string")
    for p in doc.get("packages", []):
        name = p.split("=")[0]
        status = subprocess.run(["dpkg-query", "-W", "-f=${Status}", name], capture_output=True, text=True).stdout
        if "install ok installed" not in status:
            why.append(f"package `{p}` is not installed on this machine and the player installs nothing")
    if doc.get("groups"):
        why.append(f"groups {doc['groups']} would have to be created")
    for cmd in doc.get("bootcmd", []):
        if not (isinstance(cmd, list) and cmd[:2] == ["sh", "-c"] and cmd[3:4] == ["spot-expiry"]):
            why.append(f"bootcmd entry {str(cmd)[:60]} is not spot's time to live")
    for cmd in doc.get("runcmd", []):
        if not (isinstance(cmd, list) and cmd and cmd[0] == "sh"):
            why.append(f"runcmd entry {str(cmd)[:60]} is not a shell command")
    if len(doc.get("users", [])) != 1:
        why.append("exactly one user is played")
    for i, wf in enumerate(doc.get("write_files", [])):
        extra = sorted(set(wf) - WRITE_FILE_KEYS) if isinstance(wf, dict) else ["(not a mapping)"]
        if extra:
            why.append(f"write_files[{i}] keys {extra} are unknown to the player")
        elif wf.get("owner", "root:root") != "root:root":
            why.append(f"write_files[{i}] owner {wf['owner']} is not played (files are written as root)")
    extra = sorted(set(doc.get("ssh_keys", {})) - {"ed25519_private", "ed25519_public"})
    if extra:
        why.append(f"ssh_keys {extra} are unknown to the player")
    for user in doc.get("users", []):
        extra = sorted(set(user) - USER_KEYS) if isinstance(user, dict) else ["(not a mapping)"]
        if extra:
            why.append(f"user keys {extra} are unknown to the player")
    return why


# What cloud-init records when the runcmd script exits non-zero (its scripts_user module).
RUNCMD_FAILED = "('scripts_user', RuntimeError('Runparts: 1 failures (runcmd) in 1 attempted commands'))"
STAGES = ["init-local", "init", "modules-init", "modules-config", "modules-final"]


def cloud_init_files(final_errors, earlier_errors):
    """cloud-init's status.json and result.json (its `v1` layout) for a boot that is in its
    final stage (final_errors None: no result yet) or has ended with final_errors;
    earlier_errors: the errors of earlier stages, by stage."""
    now = time.time()
    v1 = {"datasource": "DataSourceEc2Local [played by instance_player.py]", "stage": None}
    for stage in STAGES:
        v1[stage] = {"errors": list(earlier_errors.get(stage, [])), "start": now, "finished": now,
                     "recoverable_errors": {}}
    if final_errors is None:
        v1["stage"] = "modules-final"
        v1["modules-final"]["finished"] = None
        return json.dumps({"v1": v1}), None
    v1["modules-final"]["errors"] = final_errors
    return json.dumps({"v1": v1}), json.dumps({"v1": {"datasource": v1["datasource"], "errors": final_errors}})


def free_uid():
    used = set()
    with open("/etc/passwd") as f:
        for line in f:
            parts = line.split(":")
            if len(parts) > 2:
                used.add(int(parts[2]))
    uid = 1000
    while uid in used:
        uid += 1
    return uid


class Instance:
    def __init__(self, instance_id, doc, work, wrong_host_key, instance_connect_dir, cloud_init_error):
        self.id = instance_id
        self.cloud_init_error = cloud_init_error
        self.dir = os.path.join(work, instance_id)
        self.standin_state = os.path.join(self.dir, "standin")
        os.makedirs(self.standin_state, exist_ok=True)
        self.port = emulated.free_port()
        user = doc["users"][0]
        self.user = user["name"]
        host_key = os.path.join(self.dir, "ssh_host_ed25519_key")
        if wrong_host_key:
            subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", host_key], check=True)
        else:
            with open(host_key, "w") as f:
                f.write(doc["ssh_keys"]["ed25519_private"])
        os.chmod(host_key, 0o600)
        with open(os.path.join(self.dir, "authorized_keys"), "w") as f:
            f.write("\n".join(user.get("ssh_authorized_keys", [])) + "\n")
        with open(os.path.join(self.dir, "sshd_config"), "w") as f:
            f.write(
                f"Port {self.port}\nListenAddress 127.0.0.1\nHostKey {host_key}\n"
                "AuthorizedKeysFile /run/spot-keys/authorized_keys\n"
                f"PidFile {self.dir}/sshd.pid\n"
                f"AllowUsers {self.user}\nStrictModes no\nPasswordAuthentication no\n"
                "KbdInteractiveAuthentication no\nPubkeyAuthentication yes\n"
                "PermitRootLogin prohibit-password\nUsePAM no\nLogLevel ERROR\n"
            )
            if instance_connect_dir:
                pushed = os.path.join(instance_connect_dir, instance_id)
                f.write(f"AuthorizedKeysCommand {KEYS_COMMAND} {pushed} %u\nAuthorizedKeysCommandUser root\n")
        self.script = self.setup_script(doc, user)
        out = open(os.path.join(self.dir, "sshd.log"), "ab")
        self.proc = subprocess.Popen(
            ["unshare", "--mount", "--propagation", "private", "/bin/sh", "-c", self.script],
            stdout=out, stderr=out, stdin=subprocess.DEVNULL,
        )
        # The namespace's first process (sshd after the exec): tests look inside through it.
        with open(os.path.join(self.dir, "pid"), "w") as f:
            f.write(str(self.proc.pid))
        deadline = time.time() + 20
        while time.time() < deadline:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                break
            except OSError:
                if self.proc.poll() is not None:
                    raise RuntimeError(f"sshd for {instance_id} exited; see {self.dir}/sshd.log")
                time.sleep(0.05)

    def setup_script(self, doc, user):
        q = shlex.quote
        lines = ["set -e"]
        for d in TMPFS:
            lines.append(f"mkdir -p {d} && mount -t tmpfs -o mode=0755 spot-instance {d}")
        # Read as the login user: it must not sit in a root-only folder.
        lines.append(f"cp {q(os.path.join(self.dir, 'authorized_keys'))} /run/spot-keys/ && chmod 0644 /run/spot-keys/authorized_keys")
        lines.append(f"mkdir -p /run/spot-standin && mount --bind {q(self.standin_state)} /run/spot-standin")
        for tool in ["/usr/bin/systemctl", "/usr/bin/journalctl"]:
            lines.append(f"mount --bind {q(STANDIN)} {tool}")
        if self.user != "root":
            uid = free_uid()
            for name, line in [
                ("passwd", f"{self.user}:x:{uid}:{uid}::/home/{self.user}:{user.get('shell', '/bin/bash')}"),
                ("shadow", f"{self.user}:*:19000:0:99999:7:::"),
                ("group", f"{self.user}:x:{uid}:"),
            ]:
                copy = os.path.join(self.dir, name)
                with open(f"/etc/{name}") as src, open(copy, "w") as dst:
                    dst.write(src.read().rstrip("\n") + "\n" + line + "\n")
                lines.append(f"mount --bind {q(copy)} /etc/{name}")
            lines.append(f"mkdir -p /home/{self.user} && chown {uid}:{uid} /home/{self.user}")
            if user.get("sudo"):
                lines.append(
                    f"printf '%s\\n' {q(self.user + ' ' + user['sudo'])} > /etc/sudoers.d/90-spot-user"
                    " && chmod 0440 /etc/sudoers.d/90-spot-user"
                )
        for i, wf in enumerate(doc.get("write_files", [])):
            staged = os.path.join(self.dir, f"write_file_{i}")
            with open(staged, "w") as f:
                f.write(wf.get("content", ""))
            path = q(wf["path"])
            lines.append(f'mkdir -p "$(dirname {path})" && cp {q(staged)} {path}')
            lines.append(f"chmod {wf.get('permissions', '0644')} {path}")
        # cloud-init's final stage: the runcmd entries (refusals() let only shell ones in),
        # one script run by `sh` as cloud-init's scripts_user runs it, then cloud-init's
        # own account of the boot in /run/cloud-init (the host's real `cloud-init status`
        # reads it there), with --cloud-init-error's text as a failed module's.
        runcmd = os.path.join(self.dir, "runcmd")
        with open(runcmd, "w") as f:
            f.write("".join(" ".join(q(c) for c in cmd) + "\n" for cmd in doc.get("runcmd", [])))
        stage, text = self.cloud_init_error
        for name, errors in [("running", None), ("done", []), ("failed", [RUNCMD_FAILED])]:
            if errors is not None and text and stage == "modules-final":
                errors = [text] + errors
            status, result = cloud_init_files(errors, {stage: [text]} if text and stage != "modules-final" else {})
            for kind, content in [("status", status), ("result", result)]:
                if content is not None:
                    with open(os.path.join(self.dir, f"{kind}-{name}.json"), "w") as f:
                        f.write(content)
        d = q(self.dir)
        # As cloud-init's systemd generator leaves it on an enabled boot.
        lines.append("touch /run/cloud-init/enabled")
        lines.append(f"cp {d}/status-running.json /run/cloud-init/status.json")
        if text and stage != "modules-final":
            # An earlier stage failed and the final one never ends: no result.json.
            lines.append(f"sh {q(runcmd)} || true")
        else:
            lines.append(f"if sh {q(runcmd)}; then end=done; else end=failed; fi")
            lines.append(f'cp {d}/status-$end.json /run/cloud-init/status.json && cp {d}/result-$end.json /run/cloud-init/result.json')
        lines.append(f"exec /usr/sbin/sshd -D -e -f {q(os.path.join(self.dir, 'sshd_config'))}")
        return "\n".join(lines)

    def stop(self):
        """The machine goes away: every process in its mount namespace is killed (its
        sshd, each SSH session sshd forked in a session of its own, its services)."""
        try:
            ns = os.readlink(f"/proc/{self.proc.pid}/ns/mnt") if self.proc.poll() is None else None
        except OSError:
            ns = None
        if ns and ns != os.readlink("/proc/self/ns/mnt"):
            for pid in [p for p in os.listdir("/proc") if p.isdigit()]:
                try:
                    if os.readlink(f"/proc/{pid}/ns/mnt") == ns:
                        os.kill(int(pid), signal.SIGKILL)
                except OSError:
                    pass
        for name in os.listdir(self.standin_state):
            if name.endswith(".pid"):
                try:
                    with open(os.path.join(self.standin_state, name)) as f:
                        pid = int(f.read().strip())
                    os.killpg(pid, signal.SIGKILL)
                except (OSError, ValueError):
                    pass
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


def main():
    ap = emulated.arguments(__doc__)
    ap.add_argument("--wrong-host-key", action="store_true")
    ap.add_argument("--instance-connect-dir")
    ap.add_argument("--cloud-init-error", help="an error cloud-init records, as a failed module's")
    ap.add_argument("--cloud-init-error-stage", default="modules-final", choices=STAGES,
                    help="the stage that records it; before modules-final, the final stage never ends")
    args = ap.parse_args()
    if args.instance_connect_dir:
        os.makedirs(KEYS_COMMAND_DIR, mode=0o755, exist_ok=True)
        with open(KEYS_COMMAND, "w") as f:
            f.write(KEYS_SCRIPT)
        os.chmod(KEYS_COMMAND, 0o755)
    os.makedirs("/run/sshd", exist_ok=True)
    os.makedirs(args.ssh_dir, exist_ok=True)
    os.makedirs(args.work, exist_ok=True)
    ec2 = emulated.clients(args.endpoint, args.regions)
    playing = {}
    stopping = emulated.stop_flag()
    try:
        for region, client, instances, running in emulated.running(ec2, stopping, args.deployment, 0.2, log):
            # An instance that stopped running (terminated) takes its sshd and services with it.
            for iid in [i for i, inst in playing.items() if inst.region == region and i not in running]:
                playing.pop(iid).stop()
                try:
                    os.remove(os.path.join(args.ssh_dir, iid))
                except OSError:
                    pass
                log(f"{region}: {iid} is no longer running; stopped")
            for inst in instances:
                iid = inst["InstanceId"]
                if iid in playing:
                    continue
                doc = user_data(client, iid)
                refused = refusals(doc)
                if refused:
                    for why in refused:
                        log(f"{region}: {iid}: refused: {why}")
                    log("the player cannot play this instance; boot it on a VM (tests/support/vm_player.py)")
                    return 3
                playing[iid] = Instance(iid, doc, args.work, args.wrong_host_key, args.instance_connect_dir,
                                         (args.cloud_init_error_stage, args.cloud_init_error))
                playing[iid].region = region
                emulated.write_atomic(os.path.join(args.ssh_dir, iid), f"127.0.0.1:{playing[iid].port}\n")
                log(f"{region}: {iid} plays on 127.0.0.1:{playing[iid].port} as {playing[iid].user}")
    finally:
        for inst in playing.values():
            inst.stop()
        if args.instance_connect_dir:
            for path in (KEYS_COMMAND, KEYS_COMMAND_DIR):
                try:
                    os.remove(path) if path == KEYS_COMMAND else os.rmdir(path)
                except OSError:
                    pass
        log(f"stopped {len(playing)} instance(s)")


if __name__ == "__main__":
    sys.exit(main())
