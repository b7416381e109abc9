//! Real boots: `spot` against moto (through the fault proxy), each instance a Debian VM
//! that `tests/support/vm_player.py` boots under qemu from exactly the user-data spot gave
//! the emulator. cloud-init, systemd, sshd, sudo and apt are the real ones, so what the
//! instance player fakes is proven here. The VM tests run one at a time (nextest group
//! `vm`, `.config/nextest.toml`): under TCG each VM keeps a core busy.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::common::repo;
use crate::deliver::{all_files, stderr};
use crate::emulator::{Emulator, state_dir};

/// The image of `scripts/vm-image.sh SUITE`: built once, then taken from its cache.
fn image(suite: &str) -> PathBuf {
    let out = Command::new(repo().join("scripts/vm-image.sh"))
        .arg(suite)
        .stderr(Stdio::inherit())
        .output()
        .unwrap();
    assert!(out.status.success(), "scripts/vm-image.sh {suite} failed");
    PathBuf::from(String::from_utf8(out.stdout).unwrap().lines().last().unwrap().trim())
}

/// The VM harness for one test; SIGTERM when dropped (it stops every qemu by PID).
pub struct VmPlayer {
    child: Child,
    pub ssh_dir: PathBuf,
    work: tempfile::TempDir,
    image: PathBuf,
}

impl VmPlayer {
    pub fn start(emu: &Emulator, suite: &str, forwards: &[u16], extra: &[&str]) -> Self {
        let image = image(suite);
        let work = tempfile::tempdir().unwrap();
        let ssh_dir = work.path().join("ssh");
        let log = std::fs::File::create(work.path().join("vm.log")).unwrap();
        let mut cmd = Command::new("python3");
        cmd.arg(repo().join("tests/support/vm_player.py"))
            .args(["--endpoint", &emu.moto_url(), "--regions", "us-east-1"])
            .arg("--ssh-dir")
            .arg(&ssh_dir)
            .arg("--work")
            .arg(work.path().join("instances"))
            .arg("--image")
            .arg(&image);
        for port in forwards {
            cmd.args(["--forward", &port.to_string()]);
        }
        cmd.arg("--instance-connect-dir").arg(emu.instance_connect.path());
        cmd.args(extra);
        let child =
            cmd.env("AWS_EC2_METADATA_DISABLED", "true").stdout(Stdio::null()).stderr(log).spawn().unwrap();
        Self { child, ssh_dir, work, image }
    }

    /// `spot create --json` of `dir` onto these VMs, which must succeed (a TCG boot takes
    /// minutes, hence the long SSH wait); its output and the parsed JSON.
    pub fn create(
        &self,
        emu: &Emulator,
        dir: &std::path::Path,
        id: &str,
        env: &[(&str, &str)],
    ) -> (std::process::Output, Value) {
        let mut cmd = emu.spot();
        cmd.args(["create", "--json", "--ssh-timeout", "10m", "--deployment-id", id])
            .arg(dir)
            .env("SPOT_EMULATOR_SSH_DIR", &self.ssh_dir)
            .timeout(Duration::from_secs(900));
        for (k, v) in env {
            cmd.env(k, v);
        }
        let out = cmd.output().unwrap();
        assert!(out.status.success(), "create failed: {}\n{}", stderr(&out), self.log());
        let doc = serde_json::from_slice(&out.stdout).unwrap();
        (out, doc)
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.work.path().join("vm.log")).unwrap_or_default()
    }

    /// What the harness recorded of the instance's VM, once it started one (it polls the
    /// emulator every second).
    fn vm(&self, instance: &str) -> Value {
        let path = self.work.path().join("instances").join(instance).join("vm.json");
        let deadline = Instant::now() + Duration::from_secs(60);
        while !path.exists() {
            assert!(Instant::now() < deadline, "no VM for {instance} after 60 s:\n{}", self.log());
            std::thread::sleep(Duration::from_millis(200));
        }
        serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
    }

    /// Every guest's console so far, one after the other.
    pub fn consoles(&self) -> String {
        let mut all = String::new();
        for entry in std::fs::read_dir(self.work.path().join("instances")).into_iter().flatten().flatten() {
            let path = entry.path().join("console.log");
            all.push_str(&String::from_utf8_lossy(&std::fs::read(path).unwrap_or_default()));
        }
        all
    }

    pub fn console(&self, instance: &str) -> String {
        let path = self.work.path().join("instances").join(instance).join("console.log");
        String::from_utf8_lossy(&std::fs::read(path).unwrap_or_default()).into_owned()
    }

    /// Everything the harness and the guests wrote, for a failure message.
    pub fn story(&self, instance: &str) -> String {
        let console = self.console(instance);
        let tail: Vec<&str> = console.lines().rev().take(60).collect();
        format!(
            "harness:\n{}\nconsole (last lines):\n{}",
            self.log(),
            tail.into_iter().rev().collect::<Vec<_>>().join("\n")
        )
    }

    /// The 127.0.0.1 port where the guest's `port` is forwarded.
    pub fn forwarded(&self, instance: &str, port: u16) -> u16 {
        let vm = self.vm(instance);
        u16::try_from(vm["forwards"][port.to_string()].as_u64().unwrap()).unwrap()
    }

    /// What the instance's metadata service counted: requests, tokens, tokenless.
    pub fn imds(&self, instance: &str) -> Value {
        let path = self.work.path().join("instances").join(instance).join("imds.json");
        serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
    }

    /// Whether the guest's `port` is forwarded now (its security group opens it).
    pub fn is_open(&self, instance: &str, port: u16) -> bool {
        self.vm(instance)["open"].as_array().unwrap().iter().any(|p| p.as_u64() == Some(u64::from(port)))
    }

    /// Runs `script` as root in the guest through the harness door (the image's second
    /// sshd, which spot never uses), waiting up to `wait` for the door to open.
    pub fn door(&self, instance: &str, script: &str, wait: Duration) -> std::process::Output {
        let vm = self.vm(instance);
        let port = vm["door"].as_u64().unwrap();
        let known = self.work.path().join(format!("{instance}.known_hosts"));
        let host_key = std::fs::read_to_string(self.image.join("harness_host_key.pub")).unwrap();
        std::fs::write(&known, format!("[127.0.0.1]:{port} {host_key}")).unwrap();
        let deadline = Instant::now() + wait;
        loop {
            let out = Command::new("ssh")
                .args(["-q", "-i", vm["door_key"].as_str().unwrap(), "-p", &port.to_string()])
                .args(["-o", "BatchMode=yes", "-o", "ConnectTimeout=10", "-o", "StrictHostKeyChecking=yes"])
                .arg("-o")
                .arg(format!("UserKnownHostsFile={}", known.display()))
                .args(["root@127.0.0.1", script])
                .stdin(Stdio::null())
                .output()
                .unwrap();
            // 255: ssh itself failed (the door is not open yet); anything else is the script's.
            if out.status.code() != Some(255) || Instant::now() > deadline {
                return out;
            }
            std::thread::sleep(Duration::from_secs(2));
        }
    }

    /// [`VmPlayer::door`] for a script that must succeed; its stdout.
    pub fn run(&self, instance: &str, script: &str) -> String {
        let out = self.door(instance, script, Duration::from_secs(180));
        assert!(
            out.status.success(),
            "`{script}` in the guest: {}\n{}",
            String::from_utf8_lossy(&out.stderr),
            self.story(instance)
        );
        String::from_utf8(out.stdout).unwrap()
    }

    /// Waits until the guest powered itself off: qemu ended with status 0 (what it does on
    /// the guest's ACPI power off, not on a crash), the kernel said "Power down" last, and
    /// the harness mirrored it into the emulator. How long that took.
    pub fn wait_powered_off(&self, instance: &str, within: Duration) -> Duration {
        let exit = self.work.path().join("instances").join(instance).join("exit");
        let started = Instant::now();
        while !exit.exists() {
            assert!(
                started.elapsed() < within,
                "{instance} still runs after {within:?}\n{}",
                self.story(instance)
            );
            std::thread::sleep(Duration::from_millis(500));
        }
        let took = started.elapsed();
        let code = std::fs::read_to_string(&exit).unwrap();
        assert_eq!(
            code.trim(),
            "0",
            "qemu failed rather than the guest powering off\n{}",
            self.story(instance)
        );
        let console = self.console(instance);
        let last = console.lines().rev().find(|l| !l.trim().is_empty()).unwrap_or_default();
        assert!(
            last.contains("reboot: Power down"),
            "the guest did not power off: {last}\n{}",
            self.story(instance)
        );
        took
    }
}

impl Drop for VmPlayer {
    fn drop(&mut self) {
        let _ = Command::new("kill").args(["-TERM", &self.child.id().to_string()]).status();
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The instance's state in the emulator, asked directly.
fn state(emu: &Emulator, instance: &str) -> String {
    let out = Command::new("python3")
        .args(["-c", "import boto3,sys; e=boto3.client('ec2',region_name='us-east-1',endpoint_url=sys.argv[1],aws_access_key_id='t',aws_secret_access_key='t'); print(e.describe_instances(InstanceIds=[sys.argv[2]])['Reservations'][0]['Instances'][0]['State']['Name'])"])
        .args([&emu.moto_url(), instance])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

/// Authorizes or revokes (`what`) TCP `port` from `cidr` on the security group of
/// deployment `id`, as a user would in the console; the group's ingress rules after.
fn group_rule(emu: &Emulator, id: &str, what: &str, port: u16, cidr: &str) -> Value {
    let script = "import boto3,json,sys; e=boto3.client('ec2',region_name='us-east-1',endpoint_url=sys.argv[1],aws_access_key_id='t',aws_secret_access_key='t'); \
                  g=e.describe_security_groups(Filters=[{'Name':'tag:spot:deployment','Values':[sys.argv[2]]}])['SecurityGroups'][0]['GroupId']; \
                  p=[{'IpProtocol':'tcp','FromPort':int(sys.argv[4]),'ToPort':int(sys.argv[4]),'IpRanges':[{'CidrIp':sys.argv[5]}]}]; \
                  getattr(e, sys.argv[3] + '_security_group_ingress')(GroupId=g, IpPermissions=p); \
                  print(json.dumps(e.describe_security_groups(GroupIds=[g])['SecurityGroups'][0]['IpPermissions']))";
    let out = Command::new("python3")
        .args(["-c", script, &emu.moto_url(), id, what, &port.to_string(), cidr])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    serde_json::from_slice(&out.stdout).unwrap()
}

/// Waits until the harness forwards the guest's `port` (`open`) or stops forwarding it.
fn wait_forwarded(vm: &VmPlayer, instance: &str, port: u16, open: bool) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while vm.is_open(instance, port) != open {
        assert!(
            Instant::now() < deadline,
            "port {port} of {instance} is not {}\n{}",
            if open { "open" } else { "closed" },
            vm.log()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// The example's page through the guest's forwarded port 8080, or the connection's error.
fn page(vm: &VmPlayer, instance: &str) -> Result<String, String> {
    let port = vm.forwarded(instance, 8080);
    let out = Command::new("curl")
        .args(["-fsS", "--max-time", "10", &format!("http://127.0.0.1:{port}/")])
        .output()
        .unwrap();
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(stderr(&out))
    }
}

fn wait_state(emu: &Emulator, instance: &str, want: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while state(emu, instance) != want {
        assert!(
            Instant::now() < deadline,
            "{instance} is {} in the emulator, not {want}",
            state(emu, instance)
        );
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// The expiry timer's next firing, as systemd shows it (`Tue 2026-12-01 23:41:52 UTC`);
/// fails when the timer is not active or has nothing left to fire (elapsed).
fn next_firing(vm: &VmPlayer, instance: &str) -> String {
    let shown = vm.run(
        instance,
        "systemctl is-active spot-expiry.timer; systemctl show spot-expiry.timer -p NextElapseUSecRealtime --value",
    );
    let mut lines = shown.lines();
    assert_eq!(lines.next(), Some("active"), "the expiry timer is not armed: {shown}");
    let next = lines.next().unwrap_or_default().trim().to_string();
    assert!(!next.is_empty() && next != "n/a", "the expiry timer has nothing left to fire: {shown}");
    next
}

/// `2026-12-01T23:41:52Z` as systemd prints it, without the weekday.
fn as_systemd(rfc3339: &str) -> String {
    rfc3339.replace('T', " ").replace('Z', " UTC")
}

fn boot_id(vm: &VmPlayer, instance: &str) -> String {
    vm.run(instance, "cat /proc/sys/kernel/random/boot_id").trim().to_string()
}

fn reboot(vm: &VmPlayer, instance: &str, how: &str) {
    let before = boot_id(vm, instance);
    // The door closes under the command; its exit status says nothing.
    let _ = vm.door(instance, how, Duration::from_secs(10));
    let deadline = Instant::now() + Duration::from_secs(300);
    loop {
        let out = vm.door(instance, "cat /proc/sys/kernel/random/boot_id", Duration::from_secs(300));
        let now = String::from_utf8_lossy(&out.stdout).trim().to_string();
        if out.status.success() && !now.is_empty() && now != before {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{instance} did not come back from `{how}`\n{}",
            vm.story(instance)
        );
        std::thread::sleep(Duration::from_secs(2));
    }
}

#[test]
fn vm_the_example_boots_for_real_survives_a_reboot_and_late_boots_power_off() {
    const SECRET: &str = "vm-s3cret-Value-41d8";
    let emu = Emulator::start();
    let vm = VmPlayer::start(&emu, "trixie", &[8080], &[]);
    let dir = tempfile::tempdir().unwrap();
    let copy = Command::new("cp").arg("-r").arg(repo().join("examples/hello/.")).arg(dir.path()).status();
    assert!(copy.unwrap().success());
    // One package the image lacks, so apt really fetches and installs it (through the
    // harness's proxy to the Debian mirror).
    let manifest = dir.path().join(".spot/deployment.yaml");
    let text = std::fs::read_to_string(&manifest).unwrap().replace("  - curl\n", "  - curl\n  - jq\n");
    std::fs::write(&manifest, text).unwrap();
    // Two instances: after the common checks, each ends by another late boot. The
    // example's own config.yaml otherwise: its `expose` entry opens 8080 to the runner,
    // SSH too (no ssh_cidr), the runner's address being 127.0.0.1 (the checkip stand-in),
    // where every forwarded connection comes from.
    let config_path = dir.path().join(".spot/config.yaml");
    let config = std::fs::read_to_string(&config_path).unwrap();
    assert!(config.contains("expose:\n  - port: 8080\n    http: true\n"), "{config}");
    let config = config
        .replace("total_instances: 1", "total_instances: 2")
        .replace("us-west-2", "us-east-1")
        .replace("[t3.small, t3a.small]", "[t3.small]");
    std::fs::write(&config_path, config).unwrap();
    let checkip = crate::common::CheckIp::start("127.0.0.1");

    let (out, doc) = vm.create(
        &emu,
        dir.path(),
        "vm-hello",
        &[("APP_TOKEN", SECRET), ("SPOT_EMULATOR_CHECKIP", &checkip.addr)],
    );
    let ids: Vec<String> =
        doc["instances"].as_array().unwrap().iter().map(|i| i["id"].as_str().unwrap().to_string()).collect();
    assert_eq!(ids.len(), 2, "{doc:#}");
    let (a, b) = (ids[0].as_str(), ids[1].as_str());
    eprintln!(
        "vm-hello ready in {}s and {}s",
        doc["instances"][0]["seconds_to_ready"], doc["instances"][1]["seconds_to_ready"]
    );
    let log = stderr(&out);
    for step in ["host key verified", "script setup ok", "script announce ok", "service hello ok"] {
        assert_eq!(log.matches(step).count(), 2, "not two `{step}` in the log:\n{log}");
    }
    let expires_at = doc["expires_at"].as_str().unwrap();

    // The security group spot made holds SSH and the example's 8080, both from the
    // runner: the harness forwards both, and the page (served by the real systemd unit)
    // answers at each instance's URL's port. Once that rule is revoked it does not.
    assert_eq!(
        crate::action::group_rules(&emu),
        [
            "22-22/tcp 127.0.0.1/32 [spot ssh (runner)]",
            "8080-8080/tcp 127.0.0.1/32 [spot 8080/tcp http (runner)]"
        ]
    );
    for (n, id) in [a, b].into_iter().enumerate() {
        let i = &doc["instances"][n];
        let ip = i["public_ip"].as_str().or(i["private_ip"].as_str()).unwrap();
        assert_eq!(doc["instances"][n]["urls"], json!([format!("http://{ip}:8080/")]), "{doc:#}");
        wait_forwarded(&vm, id, 8080, true);
        let shown = page(&vm, id).unwrap_or_else(|e| panic!("{e}\n{}", vm.story(id)));
        assert!(shown.contains("Hello from a spot instance"), "{shown}");
        // The guest learnt everything from the metadata service, never without a token.
        let imds = vm.imds(id);
        assert_eq!(imds["tokenless"], 0, "token-less metadata requests: {imds}\n{}", vm.log());
        assert!(imds["tokens"].as_u64().unwrap() >= 1 && imds["requests"].as_u64().unwrap() > 10, "{imds}");
        // Inside: cloud-init finished clean, the secret is 0600 root, the login user is the
        // one asked for and has passwordless sudo, the packages are installed.
        let facts = vm.run(
            id,
            "cloud-init status --wait --long; stat -c '%a %U' /etc/spot/secrets/APP_TOKEN; \
             stat -c '%U' /opt/app/index.html; id -un ubuntu; sudo -n -u ubuntu sudo -n true && echo sudo-ok; \
             dpkg -s python3 curl jq | grep -c '^Status: install ok'; jq -n 1+1",
        );
        assert!(facts.contains("status: done") && facts.contains("detail: DataSourceEc2Local"), "{facts}");
        assert!(facts.contains("errors: []") && facts.contains("recoverable_errors: {}"), "{facts}");
        assert!(facts.contains("\n600 root\nubuntu\nubuntu\nsudo-ok\n3\n2\n"), "{facts}");
        let next = next_firing(&vm, id);
        assert!(next.ends_with(&as_systemd(expires_at)), "armed for {next}, not {expires_at}");
    }

    // The secret is nowhere spot wrote, nor on the instances' consoles.
    for (what, text) in [
        ("stdout", String::from_utf8_lossy(&out.stdout).into_owned()),
        ("stderr", log.clone()),
        ("state", all_files(&state_dir(dir.path()))),
        ("user-data", emu.details("us-east-1").to_string()),
        ("a console", vm.console(a) + &vm.console(b)),
    ] {
        assert!(!text.contains(SECRET), "the secret leaked into {what}");
    }
    let listed = emu.spot().args(["list", "--json"]).arg(dir.path()).output().unwrap();
    let listed = String::from_utf8_lossy(&listed.stdout).into_owned();
    assert!(listed.contains(a) && listed.contains(b), "{listed}");

    // A reboot: the enabled service runs again, the timer is armed for the same time.
    let armed = next_firing(&vm, a);
    reboot(&vm, a, "systemctl reboot");
    let again = vm.run(
        a,
        "systemctl is-system-running --wait >/dev/null; cloud-init status --wait; systemctl is-active hello.service",
    );
    assert!(again.contains("status: done") && again.ends_with("\nactive\n"), "{again}\n{}", vm.story(a));
    assert_eq!(next_firing(&vm, a), armed);
    assert!(page(&vm, a).is_ok(), "the page is gone after a reboot\n{}", vm.story(a));
    let rules = group_rule(&emu, "vm-hello", "revoke", 8080, "127.0.0.1/32");
    assert!(rules.as_array().unwrap().iter().all(|r| r["FromPort"] != 8080), "{rules:#}");
    wait_forwarded(&vm, a, 8080, false);
    let refused = page(&vm, a).expect_err("the page is reachable after its rule was revoked");
    assert!(refused.contains("Failed to connect") || refused.contains("Connection refused"), "{refused}");

    // Late boots: the timer stopped (so it cannot fire now), the clock and the RTC set past
    // the expiry, then a reboot. A boots with cloud-init: its first module powers it off.
    // B boots with cloud-init disabled: systemd alone starts the enabled timer, which fires
    // at once (its stamp says it last fired before the expiry). Both end terminated.
    let expiry = expires_at.parse::<jiff::Timestamp>().unwrap().as_second();
    let late = format!(
        "systemctl stop spot-expiry.timer && date -s @{} >/dev/null && hwclock --systohc && systemctl reboot",
        expiry + 60
    );
    let _ = vm.door(a, &late, Duration::from_secs(10));
    let _ = vm.door(b, &format!("touch /etc/cloud/cloud-init.disabled && {late}"), Duration::from_secs(10));
    for id in [a, b] {
        vm.wait_powered_off(id, Duration::from_secs(300));
        wait_state(&emu, id, "terminated");
    }
    let (console_a, console_b) = (vm.console(a), vm.console(b));
    let last_boot = |console: &str| console.rsplit("Linux version").next().unwrap_or_default().to_string();
    assert!(last_boot(&console_a).contains("spot-expiry: the time to live ended"), "{}", vm.story(a));
    assert!(!last_boot(&console_b).contains("spot-expiry: the time to live ended"), "cloud-init ran on B");
    assert!(last_boot(&console_b).contains("the time to live is over"), "{}", vm.story(b));

    let destroyed = emu.spot().args(["destroy", "vm-hello", "--dir"]).arg(dir.path()).output().unwrap();
    assert!(destroyed.status.success(), "{}", stderr(&destroyed));
    let left = emu.leftovers(&["us-east-1"]);
    assert_eq!(left, json!({}), "resources left behind: {left:#}");
}

#[test]
fn vm_the_time_to_live_powers_off_a_gzipped_boot_on_bookworm() {
    // The guest's clock (its RTC) starts LEAD seconds before the expiry of a 10-minute time
    // to live: room for boot and delivery under TCG (two minutes on a quiet day here, over
    // four on a slow one: 270 s of lead was not enough once), then the guest must power
    // itself off on its own clock. Nothing else tells it to stop.
    const TTL: u64 = 600;
    const LEAD: u64 = 420;
    let emu = Emulator::start();
    let offset = (TTL - LEAD).to_string();
    let vm = VmPlayer::start(&emu, "bookworm", &[], &["--rtc-offset", &offset]);
    let started = Instant::now();
    // Enough environment to take the user-data over EC2's 16 KB, so spot gzips it.
    let mut deployment =
        String::from("version: 1\nscripts:\n  - name: hello\n    command: echo hello > /opt/hello\nenv:\n");
    for i in 0..40 {
        deployment.push_str(&format!("  PADDING_{i}: \"{}\"\n", format!("{i:03}-padding ").repeat(50)));
    }
    let dir = crate::deliver::repository(
        "aws:\n  total_instances: 1\n  username: admin\n  ssh_cidr: 127.0.0.1/32\n  ttl: 10m\n\
         regions:\n  - us-east-1:\n      machine_type: [t3.small]\n",
        &deployment,
        &[],
    );
    let (_, doc) = vm.create(&emu, dir.path(), "vm-ttl", &[]);
    let id = doc["instances"][0]["id"].as_str().unwrap().to_string();
    let id = id.as_str();
    eprintln!("vm-ttl ready in {}s", doc["instances"][0]["seconds_to_ready"]);
    let seed = std::fs::read(vm.work.path().join("instances").join(id).join("user-data")).unwrap();
    assert_eq!(seed[..2], [0x1f, 0x8b], "the user-data the guest booted from is not gzipped");
    let facts =
        vm.run(id, "cloud-init status --wait >/dev/null; cloud-init status; cat /opt/hello; grep -c PADDING_ /etc/spot/env");
    assert_eq!(facts, "status: done\nhello\n40\n", "{}", vm.story(id));

    let expires_at = doc["expires_at"].as_str().unwrap();
    assert!(next_firing(&vm, id).ends_with(&as_systemd(expires_at)));
    let left = Duration::from_secs(LEAD).saturating_sub(started.elapsed());
    assert!(left > Duration::from_secs(10), "delivery took the whole lead; raise LEAD");
    vm.wait_powered_off(id, left + Duration::from_secs(60));
    // The guest's VM starts after `started`, so on its own clock it is at least this late.
    let at = started.elapsed();
    assert!(
        at + Duration::from_secs(2) >= Duration::from_secs(LEAD),
        "it powered off {at:?} in, before its time"
    );
    assert!(vm.console(id).contains("the time to live is over"), "not the expiry timer:\n{}", vm.story(id));
    wait_state(&emu, id, "terminated");

    let destroyed = emu.spot().args(["destroy", "vm-ttl", "--dir"]).arg(dir.path()).output().unwrap();
    assert!(destroyed.status.success(), "{}", stderr(&destroyed));
    let left = emu.leftovers(&["us-east-1"]);
    assert_eq!(left, json!({}), "resources left behind: {left:#}");
}

/// A tagged instance spot did not configure (so the harness plays it), with an empty
/// cloud-config, launched with IMDSv2 required or (`imdsv2: false`) with EC2's default.
fn launch_bare(emu: &Emulator, imdsv2: bool) -> String {
    let options =
        if imdsv2 { "MetadataOptions={'HttpTokens':'required','HttpEndpoint':'enabled'}," } else { "" };
    let script = format!(
        "import boto3,sys; e=boto3.client('ec2',region_name='us-east-1',endpoint_url=sys.argv[1],aws_access_key_id='t',aws_secret_access_key='t'); \
         i=e.describe_images(Owners=['099720109477'])['Images'][0]['ImageId']; \
         print(e.run_instances(ImageId=i,MinCount=1,MaxCount=1,InstanceType='t3.small',{options}UserData='#cloud-config\\n{{}}\\n',\
         TagSpecifications=[{{'ResourceType':'instance','Tags':[{{'Key':'spot:managed-by','Value':'spot'}}]}}])['Instances'][0]['InstanceId'])"
    );
    let run = Command::new("python3").args(["-c", &script]).arg(emu.moto_url()).output().unwrap();
    assert!(run.status.success(), "{}", stderr(&run));
    String::from_utf8(run.stdout).unwrap().trim().to_string()
}

fn terminate(emu: &Emulator, instance: &str) {
    let script = "import boto3,sys; boto3.client('ec2',region_name='us-east-1',endpoint_url=sys.argv[1],aws_access_key_id='t',aws_secret_access_key='t').terminate_instances(InstanceIds=[sys.argv[2]])";
    let out = Command::new("python3").args(["-c", script, &emu.moto_url(), instance]).output().unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
}

#[test]
fn vm_a_bare_image_boots_clean_and_a_package_that_does_not_exist_fails_in_apts_words() {
    let emu = Emulator::start();
    let vm = VmPlayer::start(&emu, "trixie", &[], &[]);
    // Alongside, the image alone: an empty user-data must boot clean (no errors, no
    // recoverable errors) through the EC2 datasource, or every verdict below is moot.
    let bare = launch_bare(&emu, true);
    let dir = crate::deliver::repository(
        &crate::deliver::config(1, "admin"),
        "version: 1\npackages:\n  - no-such-package-spot\nscripts:\n  - name: hello\n    command: echo hello\n",
        &[],
    );
    let mut create = emu.spot_process();
    create
        .args(["create", "--ssh-timeout", "10m", "--deployment-id", "vm-nopkg"])
        .arg(dir.path())
        .env("SPOT_EMULATOR_SSH_DIR", &vm.ssh_dir)
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(vm.work.path().join("create.log")).unwrap());
    let mut child = create.spawn().unwrap();
    // When cloud-init's last module (spot's final message) shows on the guest's console.
    let started = Instant::now();
    let mut boot_finished = None;
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if boot_finished.is_none() && vm.consoles().contains("spot: boot of vm-nopkg finished") {
            boot_finished = Some(Instant::now());
        }
        if started.elapsed() > Duration::from_secs(900) {
            let _ = child.kill();
            panic!("create still runs after 15 minutes\n{}", vm.log());
        }
        std::thread::sleep(Duration::from_millis(250));
    };
    let log = std::fs::read_to_string(vm.work.path().join("create.log")).unwrap();
    assert_eq!(status.code(), Some(2), "{log}\n{}", vm.log());
    let finished = boot_finished.unwrap_or_else(|| panic!("the boot never finished\n{log}\n{}", vm.log()));
    let after = finished.elapsed();
    eprintln!("spot failed {after:?} after the boot finished");
    assert!(after < Duration::from_secs(60), "spot took {after:?} after the boot finished to fail");
    // cloud-init's own words and apt's, then the rollback.
    assert!(log.contains("step `wait for boot (cloud-init)` failed: cloud-init reported error"), "{log}");
    assert!(log.contains("Failed to install the following packages: {'no-such-package-spot'}"), "{log}");
    assert!(
        log.contains(
            "apt said: The following packages were not found by APT so APT will not attempt to install them: ['no-such-package-spot']"
        ),
        "{log}"
    );
    let status = vm.run(&bare, "cloud-init status --wait --long");
    assert!(status.contains("status: done") && status.contains("detail: DataSourceEc2Local"), "{status}");
    assert!(status.contains("errors: []") && status.contains("recoverable_errors: {}"), "{status}");
    terminate(&emu, &bare);
    wait_state(&emu, &bare, "terminated");
    assert_eq!(emu.leftovers(&["us-east-1"]), json!({}), "{log}");
}

#[test]
fn vm_a_push_to_a_pull_request_environment_gets_in_through_instance_connect() {
    use crate::action::{FakeGitHub, Job, TOKEN, file_commands, stamped, text};
    let emu = Emulator::start();
    let vm = VmPlayer::start(&emu, "trixie", &[8080], &[]);
    let github = FakeGitHub::start(&["7=open"]);
    let dir = crate::deliver::repository(&crate::deliver::config(1, "ubuntu"), &stamped("v1"), &[]);
    let wd = dir.path().to_str().unwrap();
    let inputs = [
        ("working-directory", wd),
        ("ssh-cidr", "127.0.0.1/32"),
        ("keep", "true"),
        ("github-token", TOKEN),
        ("ssh-timeout", "10m"),
    ];
    let push = |run: &str, action: &str, sha: &str| {
        let event = json!({"action": action, "pull_request": {"number": 7, "head": {"sha": sha}}});
        let mut job = Job::new(run, "pull_request", event);
        job.api_url = Some(github.url());
        let out = job.run(&emu, "main", &inputs, Some(&vm.ssh_dir));
        assert!(out.status.success(), "{}\n{}", text(&out), vm.log());
        let post = job.run(&emu, "post", &[], None);
        assert!(post.status.success() && text(&post).contains("keeping pr-7"), "{}", text(&post));
        (text(&out), file_commands(&job.path("output-main"))["instance-ids"].clone())
    };
    let (_, original) = push("9201", "opened", "aaaaaaaaaaaaaaaa");
    assert_eq!(vm.run(&original, "cat /var/lib/spot/version"), "v1\n");
    // No `expose` entry: the group holds SSH alone, and the harness, which would forward
    // 8080 the moment a rule opened it, forwards nothing but SSH.
    assert_eq!(crate::action::group_rules(&emu), ["22-22/tcp 127.0.0.1/32 [spot ssh]"]);
    std::thread::sleep(Duration::from_secs(3));
    assert!(!vm.is_open(&original, 8080), "8080 forwarded without a rule\n{}", vm.log());
    let before = vm.imds(&original)["instance_connect_keys"].as_u64().unwrap();

    // The next run holds a new key that no authorized_keys file lists: it gets in only
    // through the key it pushed, which sshd's AuthorizedKeysCommand reads from IMDSv2.
    std::fs::write(dir.path().join(".spot/deployment.yaml"), stamped("v2")).unwrap();
    let (log, ids) = push("9202", "synchronize", "bbbbbbbbbbbbbbbb");
    assert!(log.contains("redeployed into the running pr-7"), "{log}");
    assert_eq!(ids, original, "the same instance takes the push");
    assert_eq!(vm.run(&original, "cat /var/lib/spot/version"), "v2\n");
    let imds = vm.imds(&original);
    assert!(imds["instance_connect_keys"].as_u64().unwrap() > before, "no pushed key was served: {imds}");
    assert_eq!(imds["tokenless"], 0, "{imds}");
    let listed = vm.run(&original, "cat /home/ubuntu/.ssh/authorized_keys | wc -l");
    assert_eq!(listed.trim(), "1", "only the first run's key is in authorized_keys");

    let destroyed = emu.spot().args(["destroy", "pr-7", "--dir"]).arg(dir.path()).output().unwrap();
    assert!(destroyed.status.success(), "{}", stderr(&destroyed));
    assert_eq!(emu.leftovers(&["us-east-1"]), json!({}));
}

#[test]
fn vm_the_harness_refuses_an_instance_whose_metadata_allows_imdsv1() {
    let emu = Emulator::start();
    let mut vm = VmPlayer::start(&emu, "trixie", &[], &[]);
    // Launched without metadata options: EC2 would answer token-less requests, which the
    // harness's metadata service never does, so it must not play this instance at all.
    launch_bare(&emu, false);
    let status = vm.child.wait().unwrap();
    assert_eq!(status.code(), Some(3), "{}", vm.log());
    assert!(
        vm.log().contains("HttpTokens=optional HttpEndpoint=enabled: the harness serves only IMDSv2"),
        "{}",
        vm.log()
    );
}
