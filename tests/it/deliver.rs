//! Delivery end to end: `spot create` against moto, with each instance played by a real
//! OpenSSH `sshd` that `tests/support/instance_player.py` starts from the user-data spot
//! handed to the emulator (host key, login user, authorized key). If the user-data or the
//! host-key pinning is wrong, SSH fails and so does the test.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::common::repo;
use crate::emulator::{Emulator, reclaiming, state_dir};

/// The instance player for one test, stopped with SIGTERM (it then stops every sshd and
/// service it started) when dropped.
pub struct Player {
    child: Child,
    pub ssh_dir: PathBuf,
    work: tempfile::TempDir,
}

impl Player {
    pub fn start(emu: &Emulator, regions: &[&str], extra: &[&str]) -> Self {
        let work = tempfile::tempdir().unwrap();
        let ssh_dir = work.path().join("ssh");
        let log = std::fs::File::create(work.path().join("player.log")).unwrap();
        let child = Command::new("python3")
            .arg(repo().join("tests/support/instance_player.py"))
            .args(["--endpoint", &emu.moto_url(), "--regions", &regions.join(",")])
            .arg("--ssh-dir")
            .arg(&ssh_dir)
            .arg("--work")
            .arg(work.path().join("instances"))
            .arg("--instance-connect-dir")
            .arg(emu.instance_connect.path())
            .args(extra)
            .env("AWS_EC2_METADATA_DISABLED", "true")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        Self { child, ssh_dir, work }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.work.path().join("player.log")).unwrap_or_default()
    }

    /// Runs `script` inside the mount namespace of the sshd playing `instance`.
    pub fn on_instance(&self, instance: &str, script: &str) -> String {
        let pid =
            std::fs::read_to_string(self.work.path().join("instances").join(instance).join("pid")).unwrap();
        let out = Command::new("nsenter")
            .arg(format!("--mount=/proc/{}/ns/mnt", pid.trim()))
            .args(["sh", "-c", script])
            .output()
            .unwrap();
        assert!(out.status.success(), "{script}: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8(out.stdout).unwrap()
    }
}

impl Drop for Player {
    fn drop(&mut self) {
        let _ = Command::new("kill").args(["-TERM", &self.child.id().to_string()]).status();
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A repository with `.spot/config.yaml`, `.spot/deployment.yaml` and more files.
pub fn repository(config: &str, deployment: &str, files: &[(&str, &str)]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let spot = dir.path().join(".spot");
    std::fs::create_dir_all(&spot).unwrap();
    std::fs::write(spot.join("config.yaml"), config).unwrap();
    std::fs::write(spot.join("deployment.yaml"), deployment).unwrap();
    for (path, text) in files {
        let path = dir.path().join(path);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, text).unwrap();
    }
    dir
}

pub fn config(instances: u32, user: &str) -> String {
    format!(
        "aws:\n  total_instances: {instances}\n  username: {user}\n  ssh_cidr: 127.0.0.1/32\n  ttl: 1h\n\
         regions:\n  - us-east-1:\n      machine_type: [t3.small]\n"
    )
}

fn create(emu: &Emulator, player: &Player, dir: &Path, id: &str, extra: &[&str]) -> std::process::Output {
    emu.spot()
        .args(["create", "--json", "--ssh-timeout", "60s", "--deployment-id", id])
        .args(extra)
        .arg(dir)
        .env("SPOT_EMULATOR_SSH_DIR", &player.ssh_dir)
        .timeout(Duration::from_secs(240))
        .output()
        .unwrap()
}

/// `spot destroy id`, which must succeed and leave nothing behind.
fn destroy_leaving_nothing(emu: &Emulator, dir: &Path, id: &str) {
    let destroyed = emu.spot().args(["destroy", id, "--dir"]).arg(dir).output().unwrap();
    assert!(destroyed.status.success(), "{}", stderr(&destroyed));
    assert_clean(emu);
}

fn assert_clean(emu: &Emulator) {
    let left = emu.leftovers(&["us-east-1"]);
    assert_eq!(left, json!({}), "resources left behind: {left:#}");
}

pub fn stderr(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Every file below `dir`, as text (lossy).
pub fn all_files(dir: &Path) -> String {
    let mut text = String::new();
    for entry in walkdir::WalkDir::new(dir).into_iter().flatten().filter(|e| e.file_type().is_file()) {
        text.push_str(&String::from_utf8_lossy(&std::fs::read(entry.path()).unwrap()));
    }
    text
}

#[test]
fn the_example_is_delivered_verified_and_its_secret_stays_secret() {
    const SECRET: &str = "s3cret-Value-7f2a9c";
    let emu = Emulator::start();
    let player = Player::start(&emu, &["us-east-1"], &[]);
    let dir = tempfile::tempdir().unwrap();
    let copy = Command::new("cp").arg("-r").arg(repo().join("examples/hello/.")).arg(dir.path()).status();
    assert!(copy.unwrap().success());
    std::fs::write(dir.path().join(".spot/files/notes.tmp"), "excluded by the manifest").unwrap();
    // The example's config, pointed at the emulator's region with SSH from 127.0.0.1.
    std::fs::write(
        dir.path().join(".spot/config.yaml"),
        "aws:\n  total_instances: 1\n  username: ubuntu\n  ssh_cidr: 127.0.0.1/32\n\
         regions:\n  - us-east-1:\n      machine_type: [t3.small]\n",
    )
    .unwrap();

    let out = emu
        .spot()
        .args(["create", "--json", "--ssh-timeout", "60s", "--deployment-id", "hello-1"])
        .arg(dir.path())
        .env("SPOT_EMULATOR_SSH_DIR", &player.ssh_dir)
        .env("APP_TOKEN", SECRET)
        .timeout(Duration::from_secs(240))
        .output()
        .unwrap();
    assert!(out.status.success(), "create failed: {}\nplayer: {}", stderr(&out), player.log());
    let doc: Value = serde_json::from_slice(&out.stdout).unwrap();
    let instance = &doc["instances"][0];
    assert_eq!(instance["ready"], true);
    assert!(instance["seconds_to_ready"].as_f64().unwrap() > 0.0);
    let id = instance["id"].as_str().unwrap();
    let log = stderr(&out);
    for step in
        ["host key verified", "sha256 verified", "script setup ok", "script announce ok", "service hello ok"]
    {
        assert!(log.contains(step), "no `{step}` in the log:\n{log}");
    }

    // What the instance holds now: files, owners, the secret, the marker; the service runs.
    let page = Command::new("curl").args(["-fsS", "http://127.0.0.1:8080/"]).output().unwrap();
    assert!(String::from_utf8_lossy(&page.stdout).contains("Hello from a spot instance"));
    let facts = player.on_instance(
        id,
        "stat -c '%a %U' /etc/spot/secrets/APP_TOKEN; cat /etc/spot/secrets/APP_TOKEN; echo; \
         stat -c '%U' /opt/app/index.html; cat /opt/app/deployed.txt; ls /opt/app /opt/app/dist 2>/dev/null | sort; cat /var/lib/spot/ready.json",
    );
    assert!(facts.starts_with(&format!("600 root\n{SECRET}\n")), "{facts}");
    assert!(facts.contains("\nubuntu\ndeployed hello-1"), "uploads belong to the login user: {facts}");
    assert!(facts.contains("index.html"), "{facts}");
    assert!(!facts.contains("notes.tmp"), "excluded file shipped: {facts}");
    assert!(facts.contains("\"deployment_id\":\"hello-1\""), "{facts}");
    let enabled = player.on_instance(id, "systemctl is-enabled hello.service");
    assert_eq!(enabled.trim(), "enabled");

    // The secret is nowhere spot wrote: stdout, stderr, state, the user-data EC2 holds.
    let user_data = emu.details("us-east-1").to_string();
    for (what, text) in [
        ("stdout", String::from_utf8_lossy(&out.stdout).into_owned()),
        ("stderr", log.clone()),
        ("state", all_files(&state_dir(dir.path()))),
        ("user-data", user_data),
    ] {
        assert!(!text.contains(SECRET), "the secret leaked into {what}");
    }

    destroy_leaving_nothing(&emu, dir.path(), "hello-1");
}

#[test]
fn a_wrong_host_key_is_refused_and_everything_rolled_back() {
    let emu = Emulator::start();
    let player = Player::start(&emu, &["us-east-1"], &["--wrong-host-key"]);
    let dir = repository(
        &config(1, "root"),
        "version: 1\nscripts:\n  - name: never\n    command: touch /opt/ran\n",
        &[],
    );
    let out = create(&emu, &player, dir.path(), "hostkey-1", &[]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(err.contains("host key mismatch"), "{err}");
    assert!(err.contains("refusing to connect"), "{err}");
    assert!(!err.contains("script never ok"), "{err}");
    assert!(err.contains("rolled back"), "{err}");
    assert_clean(&emu);
}

#[test]
fn a_failing_script_reports_its_status_and_output_tail_then_rolls_back() {
    let emu = Emulator::start();
    let player = Player::start(&emu, &["us-east-1"], &[]);
    let deployment = "version: 1\nscripts:\n  - name: first\n    command: echo first ran\n    order: 1\n  \
                      - name: breaks\n    command: 'echo early line; echo \"disk says no: $APP\" >&2; exit 7'\n    order: 2\n\
                      env:\n  APP: widget\n";
    let dir = repository(&config(1, "root"), deployment, &[]);
    let out = create(&emu, &player, dir.path(), "script-1", &[]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(err.contains("script first ok"), "{err}");
    assert!(err.contains("step `script breaks` failed: exit status 7"), "{err}");
    assert!(
        err.contains("| disk says no: widget"),
        "the output tail (with the env loaded) is missing: {err}"
    );
    assert!(err.contains("rolled back: removed 1 instance"), "{err}");
    assert_clean(&emu);
}

#[test]
fn a_health_check_that_never_passes_times_out_with_the_units_journal() {
    let emu = Emulator::start();
    let player = Player::start(&emu, &["us-east-1"], &[]);
    let unit = "[Unit]\nDescription=never listens\n[Service]\nExecStart=/bin/sh -c 'echo worker started; exec sleep 300'\n\
                [Install]\nWantedBy=multi-user.target\n";
    let deployment = "version: 1\nservices:\n  - name: worker\n    file: services/worker.service\n    \
                      health_check:\n      tcp: 1\n      timeout: 3s\n      interval: 1s\n";
    let dir = repository(&config(1, "root"), deployment, &[(".spot/services/worker.service", unit)]);
    let verify = Command::new("systemd-analyze")
        .args(["verify", "--man=no"])
        .arg(dir.path().join(".spot/services/worker.service"))
        .output()
        .unwrap();
    assert!(verify.status.success(), "systemd-analyze verify: {}", String::from_utf8_lossy(&verify.stderr));
    let started = Instant::now();
    let out = create(&emu, &player, dir.path(), "health-1", &[]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(err.contains("service worker ok"), "{err}");
    assert!(err.contains("health worker.service (TCP port 1)"), "{err}");
    assert!(err.contains("did not pass within 3s"), "{err}");
    assert!(
        err.contains("journal:") && err.contains("worker started"),
        "the unit's journal is missing: {err}"
    );
    assert!(started.elapsed() < Duration::from_secs(120));
    assert_clean(&emu);
}

#[test]
fn min_ready_keeps_the_ready_instances_and_terminates_the_failed_one() {
    let emu = Emulator::start();
    let player = Player::start(&emu, &["us-east-1"], &[]);
    // Exactly one of the three instances wins the race for a folder in the shared /tmp,
    // and that one fails its script.
    let claim = tempfile::tempdir().unwrap();
    let flag = claim.path().join("loser");
    let deployment = format!(
        "version: 1\nscripts:\n  - name: race\n    command: 'if mkdir {} 2>/dev/null; then echo unlucky; exit 3; fi'\n",
        flag.display()
    );
    let dir = repository(&config(3, "root"), &deployment, &[]);
    let out = create(&emu, &player, dir.path(), "minready-1", &["--min-ready", "2"]);
    assert!(out.status.success(), "{}\nplayer: {}", stderr(&out), player.log());
    let doc: Value = serde_json::from_slice(&out.stdout).unwrap();
    let outcomes = doc["instances"].as_array().unwrap();
    assert_eq!(outcomes.len(), 3);
    let failed: Vec<&Value> = outcomes.iter().filter(|o| o["ready"] == false).collect();
    assert_eq!(failed.len(), 1, "{doc:#}");
    assert!(failed[0]["error"].as_str().unwrap().contains("unlucky"), "{doc:#}");
    // The failed instance is gone; the two ready ones run and are in the state file.
    let state: Value =
        serde_json::from_slice(&std::fs::read(state_dir(dir.path()).join("minready-1.json")).unwrap())
            .unwrap();
    assert_eq!(state["instances"].as_array().unwrap().len(), 2);
    let listed = emu.spot().args(["list", "--json"]).arg(dir.path()).output().unwrap();
    let listed = String::from_utf8_lossy(&listed.stdout).into_owned();
    assert!(!listed.contains(failed[0]["id"].as_str().unwrap()) || listed.contains("terminated"), "{listed}");
    destroy_leaving_nothing(&emu, dir.path(), "minready-1");
}

#[test]
fn bad_input_creates_nothing_in_the_cloud() {
    let emu = Emulator::start();
    // A missing secret, and (separately) a build archive whose entry climbs out.
    let dir = repository(&config(1, "root"), "version: 1\nsecrets:\n  - DB_PASSWORD\n", &[]);
    let out = emu
        .spot()
        .args(["create", "--deployment-id", "nosecret"])
        .arg(dir.path())
        .env_remove("DB_PASSWORD")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(stderr(&out).contains("`DB_PASSWORD` (environment variable DB_PASSWORD)"), "{}", stderr(&out));

    let evil = tempfile::tempdir().unwrap();
    std::fs::write(evil.path().join("payload"), "x").unwrap();
    let dir = repository(&config(1, "root"), "version: 1\ntarball: build.tar.gz\n", &[]);
    let made = Command::new("tar")
        .arg("-czf")
        .arg(dir.path().join("build.tar.gz"))
        .arg("-C")
        .arg(evil.path())
        .args(["--transform", "s,^,../../,", "-P", "payload"])
        .status()
        .unwrap();
    assert!(made.success());
    let out = emu.spot().args(["create", "--deployment-id", "traversal"]).arg(dir.path()).output().unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(err.contains("deployment.yaml:2:"), "no position: {err}");
    assert!(err.contains("outside the destination"), "{err}");
    assert_eq!(emu.calls(), Default::default(), "EC2 was called for bad input");
}

/// The process's peak resident set so far (VmHWM), in KiB.
fn peak_rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

#[test]
fn a_one_gigabyte_bundle_is_shipped_in_bounded_memory() {
    let emu = Emulator::start();
    let player = Player::start(&emu, &["us-east-1"], &[]);
    let dir =
        repository(&config(1, "root"), "version: 1\ntarball:\n  source: build\n  dest: /opt/big\n", &[]);
    // Incompressible, so the bundle itself is about 1 GB.
    std::fs::create_dir_all(dir.path().join("build")).unwrap();
    let made = Command::new("head")
        .args(["-c", "1G", "/dev/urandom"])
        .stdout(std::fs::File::create(dir.path().join("build/blob.bin")).unwrap())
        .status()
        .unwrap();
    assert!(made.success());

    let log = tempfile::NamedTempFile::new().unwrap();
    let mut child = emu
        .spot_process()
        .args(["create", "--json", "--ssh-timeout", "60s", "--deployment-id", "big-1"])
        .arg(dir.path())
        .env("SPOT_EMULATOR_SSH_DIR", &player.ssh_dir)
        .stdout(Stdio::null())
        .stderr(log.reopen().unwrap())
        .spawn()
        .unwrap();
    let pid = child.id();
    let mut peak = 0;
    let status = loop {
        if let Some(kib) = peak_rss_kib(pid) {
            peak = peak.max(kib);
        }
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let err = std::fs::read_to_string(log.path()).unwrap();
    assert!(status.success(), "create failed: {err}\nplayer: {}", player.log());
    let line = err.lines().find(|l| l.contains("bundle uploaded")).unwrap_or_default();
    assert!(line.contains("MB in"), "{err}");
    let mb: f64 = line.split('(').nth(1).unwrap().split(' ').next().unwrap().parse().unwrap();
    assert!(mb > 1000.0, "the bundle was only {mb} MB: {line}");
    assert!(peak > 0 && peak < 100 * 1024, "peak resident set {peak} KiB, over 100 MiB");
    eprintln!("1 GB bundle: peak RSS {} MiB", peak / 1024);
    let size = player.on_instance(
        &std::fs::read_dir(&player.ssh_dir).unwrap().next().unwrap().unwrap().file_name().to_string_lossy(),
        "stat -c %s /opt/big/blob.bin",
    );
    assert_eq!(size.trim(), "1073741824");
    destroy_leaving_nothing(&emu, dir.path(), "big-1");
}

#[test]
fn the_player_refuses_a_package_it_cannot_install_instead_of_skipping_it() {
    let emu = Emulator::start();
    let mut player = Player::start(&emu, &["us-east-1"], &[]);
    let dir = repository(&config(1, "root"), "version: 1\npackages: [spot-no-such-package]\n", &[]);
    let out = emu
        .spot()
        .args(["create", "--ssh-timeout", "5s", "--deployment-id", "refused-1"])
        .arg(dir.path())
        .env("SPOT_EMULATOR_SSH_DIR", &player.ssh_dir)
        .timeout(Duration::from_secs(120))
        .output()
        .unwrap();
    assert!(!out.status.success(), "create passed on an instance the player did not play");
    let status = player.child.wait().unwrap();
    assert_eq!(status.code(), Some(3), "{}", player.log());
    let log = player.log();
    assert!(
        log.contains(
            "package `spot-no-such-package` is not installed on this machine and the player installs nothing"
        ),
        "{log}"
    );
    assert!(stderr(&out).contains("rolled back"), "{}", stderr(&out));
    assert_clean(&emu);
}

#[test]
fn the_player_refuses_a_user_data_key_it_does_not_know() {
    let emu = Emulator::start();
    let mut player = Player::start(&emu, &["us-east-1"], &[]);
    // A tagged instance whose user-data has a key the player does not play (`snap`).
    let script = "import boto3,sys; e=boto3.client('ec2',region_name='us-east-1',endpoint_url=sys.argv[1],aws_access_key_id='t',aws_secret_access_key='t'); \
                  i=e.describe_images(Owners=['099720109477'])['Images'][0]['ImageId']; \
                  e.run_instances(ImageId=i,MinCount=1,MaxCount=1,InstanceType='t3.small',UserData='#cloud-config\\nusers: [{name: root}]\\nsnap:\\n  commands: [\"true\"]\\n',\
                  TagSpecifications=[{'ResourceType':'instance','Tags':[{'Key':'spot:managed-by','Value':'spot'}]}])";
    let run = Command::new("python3").args(["-c", script, &emu.moto_url()]).output().unwrap();
    assert!(run.status.success(), "{}", stderr(&run));
    let status = player.child.wait().unwrap();
    assert_eq!(status.code(), Some(3), "{}", player.log());
    assert!(player.log().contains("user-data key `snap` is unknown to the player"), "{}", player.log());
}

/// cloud-init's outcomes as spot judges them (cloud_init::status), on the player, whose
/// instances keep cloud-init's real status files and answer with this machine's real
/// `cloud-init status`.
#[test]
fn a_boot_cloud_init_reports_as_failed_fails_the_instance_in_its_words() {
    let emu = Emulator::start();
    // A module that failed (how a package that does not install ends).
    let error = "('package_update_upgrade_install', ProcessExecutionError('Unexpected error while running command.'))";
    let player = Player::start(&emu, &["us-east-1"], &["--cloud-init-error", error]);
    let dir = repository(
        &config(1, "root"),
        "version: 1\nscripts:\n  - name: never\n    command: echo never\n",
        &[],
    );
    let out = create(&emu, &player, dir.path(), "ci-error-1", &[]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    let err = stderr(&out);
    // `error` from cloud-init 22.x, `error - done` from 23.4 on: both name the error.
    assert!(err.contains("step `wait for boot (cloud-init)` failed: cloud-init reported error"), "{err}");
    assert!(err.contains(error), "{err}");
    assert!(!err.contains("script never ok") && err.contains("rolled back"), "{err}");
    assert_clean(&emu);
}

#[test]
fn an_error_in_an_early_stage_fails_the_instance_without_waiting_for_the_last() {
    let emu = Emulator::start();
    // The init stage failed and the final stage never ends (no result.json): without the
    // early verdict, the step would wait for the whole boot timeout.
    let error = "('users_groups', KeyError('no such group'))";
    let player = Player::start(
        &emu,
        &["us-east-1"],
        &["--cloud-init-error", error, "--cloud-init-error-stage", "init"],
    );
    let dir = repository(
        &config(1, "root"),
        "version: 1\nscripts:\n  - name: never\n    command: echo never\n",
        &[],
    );
    let out = create(&emu, &player, dir.path(), "ci-early-1", &["--boot-timeout", "3m"]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(err.contains("cloud-init reported error") && err.contains(error), "{err}");
    assert!(!err.contains("did not finish within"), "it waited for the timeout: {err}");
    assert_clean(&emu);
}

#[test]
fn a_clean_boot_is_judged_done_from_cloud_inits_own_status() {
    let emu = Emulator::start();
    let player = Player::start(&emu, &["us-east-1"], &[]);
    let dir =
        repository(&config(1, "root"), "version: 1\nscripts:\n  - name: hi\n    command: echo hi\n", &[]);
    let out = create(&emu, &player, dir.path(), "ci-done-1", &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(err.contains("wait for boot (cloud-init) ok ("), "{err}");
    let id = emu.leftovers(&["us-east-1"])["us-east-1"]["instances"][0].as_str().unwrap().to_string();
    // What spot read: the real command's view of the played boot.
    let status = player.on_instance(&id, "cloud-init status --long");
    assert!(status.starts_with("status: done"), "{status}");
    destroy_leaving_nothing(&emu, dir.path(), "ci-done-1");
}

/// A deployment whose delivery takes `secs` seconds on each instance.
fn slow(secs: u32) -> String {
    format!("version: 1\nscripts:\n  - name: slow\n    command: sleep {secs}\n")
}

#[test]
fn a_spot_instance_reclaimed_while_spot_delivers_is_replaced_from_another_pool() {
    let emu = Emulator::start();
    // Reclaimed the moment it is first seen running: spot starts delivering to it while
    // EC2 takes it away (its sshd goes), and sees that at its next look. Capacity stays
    // everywhere, and moto fills from the first pool asked: only spot leaving the
    // reclaimed pool out puts the replacement in another AZ.
    emu.behaviours(&reclaiming(1, 1, 0, "any"));
    let player = Player::start(&emu, &["us-east-1"], &[]);
    let dir = repository(&config(1, "root"), &slow(1), &[]);
    let out = create(&emu, &player, dir.path(), "reclaim-1", &[]);
    assert!(out.status.success(), "{}\nplayer: {}", stderr(&out), player.log());
    let doc: Value = serde_json::from_slice(&out.stdout).unwrap();
    let outcomes = doc["instances"].as_array().unwrap();
    assert_eq!(outcomes.len(), 2, "the reclaimed instance and its replacement: {doc:#}");
    let lost = outcomes.iter().find(|o| o["ready"] == false).expect("the reclaimed one");
    let replacement = outcomes.iter().find(|o| o["ready"] == true).expect("a ready replacement");
    let error = lost["error"].as_str().unwrap();
    assert!(
        error.contains("Server.SpotInstanceTermination") && error.contains("while spot delivered to it"),
        "{error}"
    );
    assert!(!error.to_lowercase().contains("ssh"), "a reclaim, not an SSH error: {error}");
    assert_ne!(lost["az"], replacement["az"], "the replacement comes from another pool: {doc:#}");
    assert_eq!(emu.calls()["CreateFleet"], 2, "{:?}", emu.calls());
    assert!(stderr(&out).contains("launching 1 replacement(s)"), "{}", stderr(&out));
    destroy_leaving_nothing(&emu, dir.path(), "reclaim-1");
}

#[test]
fn a_reclaim_that_min_ready_absorbs_launches_nothing_and_one_no_pool_can_replace_fails_naming_it() {
    let emu = Emulator::start();
    // Reclaimed at the second look, mid-script: its SSH session drops while EC2's next
    // answer still shows it running (reads lag); the failed delivery waits for the look
    // that shows the reclaim.
    emu.behaviours(&reclaiming(1, 2, 1, "none"));
    let player = Player::start(&emu, &["us-east-1"], &[]);
    let dir = repository(&config(2, "root"), &slow(12), &[]);
    let out = create(&emu, &player, dir.path(), "reclaim-2", &["--min-ready", "1"]);
    assert!(out.status.success(), "{}\nplayer: {}", stderr(&out), player.log());
    let doc: Value = serde_json::from_slice(&out.stdout).unwrap();
    let outcomes = doc["instances"].as_array().unwrap();
    assert_eq!(outcomes.iter().filter(|o| o["ready"] == true).count(), 1, "{doc:#}");
    let lost = outcomes.iter().find(|o| o["ready"] == false).expect("the reclaimed one");
    let error = lost["error"].as_str().unwrap();
    assert!(
        error.contains("spot capacity reclaimed by EC2") && error.contains("while spot delivered"),
        "{doc:#}"
    );
    assert_eq!(emu.calls()["CreateFleet"], 1, "one ready was enough: no replacement");
    destroy_leaving_nothing(&emu, dir.path(), "reclaim-2");

    // EC2 stops the reclaimed one instead (Server.SpotInstanceShutdown): it is still
    // there, so spot terminates it with what was not ready, rather than leaving a
    // stopped instance (and its volume) behind a deployment that says it has one.
    let emu = Emulator::start();
    let mut stopping = reclaiming(1, 2, 1, "none");
    stopping["reclaim"]["interruption"] = json!("stop");
    emu.behaviours(&stopping);
    let player = Player::start(&emu, &["us-east-1"], &[]);
    let dir = repository(&config(2, "root"), &slow(12), &[]);
    let out = create(&emu, &player, dir.path(), "reclaim-stop", &["--min-ready", "1"]);
    assert!(out.status.success(), "{}\nplayer: {}", stderr(&out), player.log());
    let doc: Value = serde_json::from_slice(&out.stdout).unwrap();
    let ready: Vec<&Value> =
        doc["instances"].as_array().unwrap().iter().filter(|o| o["ready"] == true).collect();
    assert_eq!(ready.len(), 1, "{doc:#}");
    let lost =
        doc["instances"].as_array().unwrap().iter().find(|o| o["ready"] == false).expect("the stopped one");
    assert!(lost["error"].as_str().unwrap().contains("Server.SpotInstanceShutdown"), "{doc:#}");
    assert_eq!(
        emu.leftovers(&["us-east-1"])["us-east-1"]["instances"],
        json!([ready[0]["id"]]),
        "the stopped instance was left behind: {}",
        stderr(&out)
    );
    destroy_leaving_nothing(&emu, dir.path(), "reclaim-stop");

    // Every instance needed, and no spot capacity left after the reclaim: the run fails
    // naming the reclaim and what the replacement tried, and rolls back.
    let emu = Emulator::start();
    emu.behaviours(&reclaiming(1, 1, 0, "none"));
    let player = Player::start(&emu, &["us-east-1"], &[]);
    let dir = repository(&config(1, "root"), &slow(1), &[]);
    let out = create(&emu, &player, dir.path(), "reclaim-3", &[]);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(2), "{err}\nplayer: {}", player.log());
    assert!(err.contains("Server.SpotInstanceTermination") && err.contains("no replacement"), "{err}");
    assert!(err.contains("InsufficientInstanceCapacity") && err.contains("rolled back"), "{err}");
    assert_clean(&emu);
}

#[test]
fn owners_come_from_spots_own_list_and_a_folder_already_there_keeps_its_owner() {
    let emu = Emulator::start();
    let player = Player::start(&emu, &["us-east-1"], &[]);
    // Names GNU tar's listing escapes (a backslash, a newline, non-ASCII), into /opt (there
    // already, root's) and a new folder below it; a destination with `$(...)` in its name.
    let dir = repository(
        &config(1, "root"),
        "version: 1\nuploads:\n  - source: files/\n    dest: /opt/\n    owner: nobody\n  \
         - source: one.txt\n    dest: \"/srv/$(touch /srv/ran)/one.txt\"\n    owner: nobody\n",
        &[
            (".spot/files/plain.txt", "a"),
            (".spot/files/back\\slash.txt", "b"),
            (".spot/files/new\nline.txt", "c"),
            (".spot/files/caf\u{e9}/deep/f.txt", "d"),
            (".spot/one.txt", "e"),
        ],
    );
    let out = create(&emu, &player, dir.path(), "owners-1", &[]);
    assert!(out.status.success(), "create failed: {}\nplayer: {}", stderr(&out), player.log());
    let doc: Value = serde_json::from_slice(&out.stdout).unwrap();
    let id = doc["instances"][0]["id"].as_str().unwrap();
    let facts = player.on_instance(
        id,
        "cd /opt && for f in . plain.txt 'back\\slash.txt' \"$(printf 'new\\nline.txt')\" caf\u{e9} caf\u{e9}/deep caf\u{e9}/deep/f.txt; \
         do stat -c %U \"$f\"; done; stat -c %U /srv/'$(touch /srv/ran)'/one.txt; ls /srv",
    );
    let lines: Vec<&str> = facts.lines().collect();
    assert_eq!(
        lines[..8],
        ["root", "nobody", "nobody", "nobody", "nobody", "nobody", "nobody", "nobody"],
        "{facts}"
    );
    assert!(!facts.lines().any(|l| l == "ran"), "a destination's name ran as a command: {facts}");
    // The error path quotes it too: an owner that does not exist.
    let deployment = std::fs::read_to_string(dir.path().join(".spot/deployment.yaml")).unwrap();
    let unknown = deployment.replace("one.txt\"\n    owner: nobody", "one.txt\"\n    owner: nosuchuser");
    std::fs::write(dir.path().join(".spot/deployment.yaml"), unknown).unwrap();
    let out = create(&emu, &player, dir.path(), "owners-2", &[]);
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("cannot give /srv/$(touch /srv/ran)/one.txt to nosuchuser"),
        "{}",
        stderr(&out)
    );
}

/// A local file server for a build given by URL (python's http.server), stopped on drop.
struct FileServer {
    child: Child,
    port: u16,
}

impl FileServer {
    fn start(dir: &Path) -> Self {
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let child = Command::new("python3")
            .args(["-m", "http.server", "--bind", "127.0.0.1", &port.to_string(), "--directory"])
            .arg(dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "the file server did not start");
            std::thread::sleep(Duration::from_millis(50));
        }
        Self { child, port }
    }
}

impl Drop for FileServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn a_build_by_url_is_checked_against_its_sha256_on_the_instance_before_unpacking() {
    let emu = Emulator::start();
    let player = Player::start(&emu, &["us-east-1"], &[]);
    let served = tempfile::tempdir().unwrap();
    let made = Command::new("tar")
        .args(["-czf", "build.tar.gz", "--owner=0", "--group=0", "-C"])
        .arg(repo().join("examples/hello/dist"))
        .arg(".")
        .current_dir(served.path())
        .status()
        .unwrap();
    assert!(made.success());
    let bytes = std::fs::read(served.path().join("build.tar.gz")).unwrap();
    let sha: String = sha2::Digest::finalize(<sha2::Sha256 as sha2::Digest>::new_with_prefix(&bytes))
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    let server = FileServer::start(served.path());
    let deployment = |sha: &str| {
        format!(
            "version: 1\ntarball:\n  source: http://127.0.0.1:{}/build.tar.gz\n  allow_http: true\n  sha256: \"{sha}\"\n  dest: /opt/app\n",
            server.port
        )
    };
    let wrong = "0".repeat(64);
    let dir = repository(&config(1, "root"), &deployment(&wrong), &[]);
    let out = create(&emu, &player, dir.path(), "url-1", &[]);
    assert!(!out.status.success(), "a build that is not its sha256 was taken");
    assert!(stderr(&out).contains(&format!("is not sha256 {wrong}: refusing it")), "{}", stderr(&out));
    std::fs::write(dir.path().join(".spot/deployment.yaml"), deployment(&sha)).unwrap();
    let out = create(&emu, &player, dir.path(), "url-2", &[]);
    assert!(out.status.success(), "create failed: {}\nplayer: {}", stderr(&out), player.log());
    let doc: Value = serde_json::from_slice(&out.stdout).unwrap();
    let id = doc["instances"][0]["id"].as_str().unwrap();
    assert_eq!(player.on_instance(id, "cat /opt/app/package.json | head -c 1"), "{");
}
