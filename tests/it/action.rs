//! The action, run exactly as the runner runs it: `INPUT_*` (with action.yml's defaults
//! filled in), temporary `GITHUB_OUTPUT`/`GITHUB_STATE`/`GITHUB_STEP_SUMMARY` files, an
//! event file, then the post step with `STATE_*` taken from the state file; against
//! moto, instances played by real sshd, and a local fake of GitHub's REST API.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::common::{CheckIp, repo};
use crate::deliver::{Player, config, repository};
use crate::emulator::{Emulator, writes};

pub const TOKEN: &str = "ghs_testTOKEN0123456789abcdefXYZ";
const SECRET: &str = "app-secret-value-4711";

/// action.yml's inputs and their defaults, read the simple way (the file is ours).
fn declared() -> (Vec<(String, String)>, Vec<String>) {
    let text = std::fs::read_to_string(repo().join("action.yml")).unwrap();
    let mut inputs = Vec::new();
    let mut outputs = Vec::new();
    let mut section = "";
    for line in text.lines() {
        if !line.starts_with(' ') && line.ends_with(':') {
            section = if line == "inputs:" {
                "in"
            } else if line == "outputs:" {
                "out"
            } else {
                ""
            };
            continue;
        }
        if let Some(name) =
            line.strip_prefix("  ").filter(|l| !l.starts_with(' ')).and_then(|l| l.strip_suffix(':'))
        {
            match section {
                "in" => inputs.push((name.to_string(), String::new())),
                "out" => outputs.push(name.to_string()),
                _ => {}
            }
        } else if let Some(default) = line.trim().strip_prefix("default: ")
            && section == "in"
            && let Some(last) = inputs.last_mut()
        {
            last.1 = default.trim_matches('"').to_string();
        }
    }
    (inputs, outputs)
}

/// Reads `name=value` and `name<<DELIM` entries of a runner file (last one wins).
pub fn file_commands(path: &Path) -> BTreeMap<String, String> {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let mut out = BTreeMap::new();
    let mut lines = text.lines();
    while let Some(line) = lines.next() {
        if let Some((name, delimiter)) = line.split_once("<<") {
            let mut value = Vec::new();
            for l in lines.by_ref() {
                if l == delimiter {
                    break;
                }
                value.push(l);
            }
            out.insert(name.to_string(), value.join("\n"));
        } else if let Some((name, value)) = line.split_once('=') {
            out.insert(name.to_string(), value.to_string());
        }
    }
    out
}

/// One job's runner files and settings.
pub struct Job {
    files: tempfile::TempDir,
    run_id: String,
    event_name: String,
    event: Value,
    pub api_url: Option<String>,
    /// Inputs every step of this job's workflow gives unless the step says otherwise:
    /// the workflow allows the tests' secret (`secrets: APP_TOKEN`).
    pub with: Vec<(&'static str, &'static str)>,
    /// Environment variables besides the runner's.
    pub env: Vec<(String, String)>,
}

impl Job {
    pub fn new(run_id: &str, event_name: &str, event: Value) -> Self {
        Self {
            files: tempfile::tempdir().unwrap(),
            run_id: run_id.into(),
            event_name: event_name.into(),
            event,
            api_url: None,
            with: vec![("secrets", "APP_TOKEN")],
            env: Vec::new(),
        }
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.files.path().join(name)
    }

    fn command(
        &self,
        emu: &Emulator,
        step: &str,
        inputs: &[(&str, &str)],
        ssh_dir: Option<&Path>,
    ) -> Command {
        // Without anything the machine's own environment says about Actions.
        let mut cmd = emu.spot_process();
        std::fs::write(self.path("event.json"), self.event.to_string()).unwrap();
        cmd.env("GITHUB_ACTIONS", "true")
            .env("GITHUB_RUN_ID", &self.run_id)
            .env("GITHUB_RUN_ATTEMPT", "1")
            .env("GITHUB_REPOSITORY", "acme/app")
            .env("GITHUB_SERVER_URL", "https://github.example")
            .env("GITHUB_SHA", "0123456789abcdef0123456789abcdef01234567")
            .env("GITHUB_EVENT_NAME", &self.event_name)
            .env("GITHUB_EVENT_PATH", self.path("event.json"))
            .env("GITHUB_OUTPUT", self.path(&format!("output-{step}")))
            .env("GITHUB_STATE", self.path("state"))
            .env("GITHUB_STEP_SUMMARY", self.path(&format!("summary-{step}")))
            .env("APP_TOKEN", SECRET);
        if let Some(api) = &self.api_url {
            cmd.env("GITHUB_API_URL", api);
        }
        if let Some(dir) = ssh_dir {
            cmd.env("SPOT_EMULATOR_SSH_DIR", dir);
        }
        cmd.envs(self.env.iter().map(|(k, v)| (k, v)));
        let (declared, _) = declared();
        for (name, default) in declared {
            let given = inputs
                .iter()
                .chain(&self.with)
                .find(|(n, _)| *n == name)
                .map_or(default, |(_, v)| (*v).to_string());
            cmd.env(format!("INPUT_{}", name.to_uppercase()), given);
        }
        if step == "post" {
            for (k, v) in file_commands(&self.path("state")) {
                cmd.env(format!("STATE_{k}"), v);
            }
        }
        cmd.args(["action", step]);
        cmd
    }

    pub fn run(&self, emu: &Emulator, step: &str, inputs: &[(&str, &str)], ssh_dir: Option<&Path>) -> Output {
        let out = self.command(emu, step, inputs, ssh_dir).output().unwrap();
        std::fs::write(self.path(&format!("stdout-{step}")), &out.stdout).unwrap();
        std::fs::write(self.path(&format!("stderr-{step}")), &out.stderr).unwrap();
        out
    }
}

pub fn text(out: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
}

fn assert_clean(emu: &Emulator) {
    let left = emu.leftovers(&["us-east-1"]);
    assert_eq!(left, json!({}), "resources left behind: {left:#}");
}

fn project() -> tempfile::TempDir {
    repository(
        &config(1, "root"),
        "version: 1\nscripts:\n  - name: hello\n    command: echo hello from the action\nsecrets:\n  - APP_TOKEN\n",
        &[],
    )
}

/// Every byte the binary wrote, outside `::add-mask::` lines, must be free of `needles`.
fn assert_no_secret(job: &Job, dir: &Path, needles: &[&str]) {
    let mut haystacks: Vec<(String, String)> = Vec::new();
    for entry in std::fs::read_dir(job.files.path()).unwrap().flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        haystacks.push((name, String::from_utf8_lossy(&std::fs::read(entry.path()).unwrap()).into_owned()));
    }
    for entry in walkdir::WalkDir::new(dir.join(".spot-state"))
        .into_iter()
        .flatten()
        .filter(|e| e.file_type().is_file())
    {
        haystacks.push((entry.path().display().to_string(), std::fs::read_to_string(entry.path()).unwrap()));
    }
    for (name, text) in haystacks {
        for line in text.lines().filter(|l| !l.starts_with("::add-mask::")) {
            for needle in needles {
                assert!(!line.contains(needle), "a secret leaked into {name}: {line}");
            }
        }
    }
}

#[test]
fn up_then_post_reports_everything_and_leaves_nothing() {
    let emu = Emulator::start();
    let player = Player::start(&emu, &["us-east-1"], &[]);
    let dir = project();
    let job = Job::new("9001", "push", json!({"ref": "refs/heads/main"}));
    let inputs = [
        ("working-directory", dir.path().to_str().unwrap()),
        ("ssh-cidr", "127.0.0.1/32"),
        ("github-token", TOKEN),
        ("tags", "Team=qa\nCost=ci"),
        ("count", "2"),
    ];
    let main = job.run(&emu, "main", &inputs, Some(&player.ssh_dir));
    assert!(main.status.success(), "{}\nplayer: {}", text(&main), player.log());
    let stdout = String::from_utf8_lossy(&main.stdout);
    // Masks come before anything else, line by line for the keys.
    let first = stdout.lines().next().unwrap_or_default();
    assert_eq!(first, format!("::add-mask::{TOKEN}"));
    assert!(
        stdout.lines().filter(|l| l.starts_with("::add-mask::")).count() > 4,
        "keys not masked line by line"
    );
    let outputs = file_commands(&job.path("output-main"));
    // New for each step (a matrix leg or another step of run 9001 gets another).
    let id = outputs["deployment-id"].clone();
    assert!(
        id.len() == "gh-9001-1-".len() + 4
            && id.starts_with("gh-9001-1-")
            && stdout.contains(&format!("::group::Create {id}")),
        "{id}"
    );
    let (_, declared_outputs) = declared();
    for name in &declared_outputs {
        assert!(outputs.contains_key(name), "output {name} missing: {outputs:?}");
    }
    assert_eq!(outputs["market"], "spot");
    assert_eq!(outputs["instance-ids"].split(',').count(), 2);
    assert_eq!(outputs["regions"], "us-east-1");
    let doc: Value = serde_json::from_str(&outputs["json"]).unwrap();
    assert_eq!(doc["instances"].as_array().unwrap().len(), 2);
    assert!(doc["instances"].as_array().unwrap().iter().all(|i| i["ready"] == true));

    let summary = std::fs::read_to_string(job.path("summary-main")).unwrap();
    for id in outputs["instance-ids"].split(',') {
        assert_eq!(summary.lines().filter(|l| l.contains(id)).count(), 1, "one row per instance: {summary}");
    }
    assert!(summary.contains("Estimated cost") && summary.contains("Teardown"), "{summary}");
    assert!(summary.len() < 64 * 1024);

    let state = file_commands(&job.path("state"));
    assert_eq!(state["deployment-id"], id);
    assert!(
        state["run-id"].starts_with("9001-1-") && state["run-id"].len() == "9001-1-".len() + 8,
        "{state:?}"
    );
    assert_eq!(state["regions"], "us-east-1");
    assert!(state.keys().any(|k| k.starts_with("resource_")), "{state:?}");
    let details = emu.details("us-east-1").to_string();
    assert!(details.contains("\"Team\"") && details.contains("qa"), "input tags not applied");

    let post = job.run(&emu, "post", &[("working-directory", dir.path().to_str().unwrap())], None);
    assert!(post.status.success(), "{}", text(&post));
    let post_summary = std::fs::read_to_string(job.path("summary-post")).unwrap();
    assert!(post_summary.contains("removed 2 instance"), "{post_summary}");
    // Every resource main recorded was met by post's look by tags: no leak warning.
    assert!(text(&post).contains("main recorded"), "{}", text(&post));
    assert!(!text(&post).contains("not found by their tags"), "{}", text(&post));
    assert_clean(&emu);
    assert_no_secret(&job, dir.path(), &[TOKEN, SECRET, "PRIVATE KEY"]);
}

#[test]
fn a_main_step_killed_midway_is_cleaned_up_by_its_post_step_kept_or_not() {
    let emu = Emulator::start();
    let dir = project();
    let wd = dir.path().to_str().unwrap();
    // `keep: true` keeps a deployment only once it is ready: one killed mid-create is
    // removed by post all the same.
    for (run, keep) in [("9002", "false"), ("9003", "true")] {
        emu.faults(&json!([{"action": "CreateFleet", "fault": "delay", "delay_ms": 4000}]));
        let before = emu.calls().get("CreateFleet").copied().unwrap_or(0);
        let job = Job::new(run, "push", json!({}));
        let inputs = [("working-directory", wd), ("ssh-cidr", "127.0.0.1/32"), ("keep", keep)];
        let mut child: Child = job
            .command(&emu, "main", &inputs, None)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(30);
        while emu.calls().get("CreateFleet").copied().unwrap_or(0) == before {
            assert!(Instant::now() < deadline, "main never reached CreateFleet");
            std::thread::sleep(Duration::from_millis(50));
        }
        std::thread::sleep(Duration::from_millis(500));
        child.kill().unwrap(); // SIGKILL: no handler runs, like a lost runner step
        child.wait().unwrap();
        // The fleet call still completes in the emulator: instances exist now.
        std::thread::sleep(Duration::from_secs(4));
        emu.faults(&json!([]));
        let state = file_commands(&job.path("state"));
        assert!(
            state["deployment-id"].starts_with(&format!("gh-{run}-1-")),
            "the id is saved before the first resource: {state:?}"
        );
        assert_eq!(state["keep"], keep);
        assert!(!state.contains_key("ready"), "{state:?}");
        assert!(emu.leftovers(&["us-east-1"]).to_string().contains("instances"), "nothing was made");
        let post = job.run(&emu, "post", &[("working-directory", wd), ("keep", keep)], None);
        assert!(post.status.success(), "{}", text(&post));
        if keep == "true" {
            assert!(text(&post).contains("never got ready in this run"), "{}", text(&post));
        }
        assert_clean(&emu);
    }
}

#[test]
fn main_saves_what_post_needs_before_anything_can_fail() {
    let emu = Emulator::start();
    let dir = project();
    let wd = dir.path().to_str().unwrap();
    let out = emu
        .spot()
        .args(["create", "--no-deliver", "--repository", "acme/app", "--deployment-id", "staging"])
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let standing = emu.leftovers(&["us-east-1"]);
    let calls = writes(&emu.calls());

    // Main fails at the role assumption (no OIDC token) with `keep: true` and an explicit
    // id: post knows both, and removes nothing (this run made nothing).
    let job = Job::new("9401", "push", json!({}));
    let inputs = [
        ("working-directory", wd),
        ("deployment-id", "staging"),
        ("keep", "true"),
        ("role-to-assume", "arn:aws:iam::123456789012:role/spot"),
    ];
    let out = job.run(&emu, "main", &inputs, None);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(text(&out).contains("id-token: write"), "{}", text(&out));
    let state = file_commands(&job.path("state"));
    assert_eq!(
        (state["mode"].as_str(), state["deployment-id"].as_str(), state["keep"].as_str()),
        ("up", "staging", "true"),
        "{state:?}"
    );
    let post = job.run(&emu, "post", &[("working-directory", wd), ("keep", "false")], None);
    assert!(post.status.success(), "{}", text(&post));
    assert_eq!(writes(&emu.calls()), calls, "post changed EC2\n{}", text(&post));
    assert_eq!(emu.leftovers(&["us-east-1"]), standing);

    // An unreadable `keep`: an input error in main (nothing made), "keep" in post.
    let job = Job::new("9402", "push", json!({}));
    let out = job.run(
        &emu,
        "main",
        &[("working-directory", wd), ("keep", "yes"), ("ssh-cidr", "127.0.0.1/32")],
        None,
    );
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(text(&out).contains("input `keep` is `yes`"), "{}", text(&out));
    assert_eq!(file_commands(&job.path("state"))["keep"], "true");
    // Post with no state at all falls back to the inputs: `keep` unreadable keeps.
    let empty = Job::new("9403", "push", json!({}));
    let post = empty.run(&emu, "post", &[("working-directory", wd), ("keep", "yes")], None);
    assert!(post.status.success(), "{}", text(&post));
    assert_eq!(writes(&emu.calls()), calls, "an unreadable keep changed EC2");

    // After `down`, `reap` and `validate`, post does nothing (here with `staging` named).
    for mode in ["validate", "reap", "down"] {
        let job = Job::new("9404", "schedule", json!({}));
        let inputs =
            [("working-directory", wd), ("mode", mode), ("deployment-id", "staging"), ("dry-run", "true")];
        let out = job.run(&emu, "main", &inputs, None);
        assert!(out.status.success(), "{mode}: {}", text(&out));
        assert_eq!(file_commands(&job.path("state"))["mode"], mode);
        let post = job.run(&emu, "post", &inputs, None);
        assert!(post.status.success(), "{}", text(&post));
        assert!(text(&post).contains(&format!("nothing to do after mode `{mode}`")), "{}", text(&post));
    }
    assert_clean(&emu);
}

/// `cmd` as PID 1 of a new PID namespace, as in the action's container: the kernel
/// ignores any signal PID 1 has no handler for.
fn as_pid_1(cmd: &Command) -> Command {
    let mut wrapped = Command::new("unshare");
    wrapped.args(["--pid", "--fork", "--kill-child"]).arg(cmd.get_program()).args(cmd.get_args());
    for (key, value) in cmd.get_envs() {
        match value {
            Some(v) => wrapped.env(key, v),
            None => wrapped.env_remove(key),
        };
    }
    wrapped.stdout(Stdio::piped()).stderr(Stdio::piped());
    wrapped
}

/// Sends SIGINT (the runner's cancel) to the namespace's PID 1 once `ready` holds, and
/// waits for the step to end.
fn cancel_pid_1(mut unshare: Child, ready: impl Fn() -> bool) -> Output {
    let deadline = Instant::now() + Duration::from_secs(30);
    let children = format!("/proc/{0}/task/{0}/children", unshare.id());
    let init = loop {
        let text = std::fs::read_to_string(&children).unwrap_or_default();
        if let Some(pid) = text.split_whitespace().next() {
            break pid.to_string();
        }
        assert!(Instant::now() < deadline, "unshare started no child");
        std::thread::sleep(Duration::from_millis(20));
    };
    while !ready() {
        assert!(Instant::now() < deadline, "the step never got there");
        std::thread::sleep(Duration::from_millis(50));
    }
    std::thread::sleep(Duration::from_millis(300));
    assert!(Command::new("kill").args(["-INT", &init]).status().unwrap().success());
    // A step that ignored the signal finishes its held-up call (20 s) and exits 0.
    let waited = Instant::now();
    while unshare.try_wait().unwrap().is_none() && waited.elapsed() < Duration::from_secs(60) {
        std::thread::sleep(Duration::from_millis(50));
    }
    if unshare.try_wait().unwrap().is_none() {
        let _ = unshare.kill();
    }
    unshare.wait_with_output().unwrap()
}

#[test]
fn as_pid_1_the_runners_cancel_stops_the_step_and_create_rolls_back() {
    let emu = Emulator::start();
    let dir = project();
    let wd = dir.path().to_str().unwrap();
    let calls = |action: &str| emu.calls().get(action).copied().unwrap_or(0);

    // Outside create (here reap, its first EC2 call held up): stop at once.
    emu.faults(&json!([{"action": "DescribeInstances", "fault": "delay", "delay_ms": 20000}]));
    let job = Job::new("9301", "schedule", json!({}));
    let reap = job.command(&emu, "main", &[("working-directory", wd), ("mode", "reap")], None);
    let out = cancel_pid_1(as_pid_1(&reap).spawn().unwrap(), || calls("DescribeInstances") > 0);
    assert_eq!(out.status.code(), Some(130), "{}", text(&out));
    assert!(text(&out).contains("stopped by a signal"), "{}", text(&out));

    // During create (CreateFleet held up): stop, roll back what exists, exit 130.
    emu.faults(&json!([{"action": "CreateFleet", "fault": "delay", "delay_ms": 4000}]));
    let job = Job::new("9302", "push", json!({}));
    let up = job.command(&emu, "main", &[("working-directory", wd), ("ssh-cidr", "127.0.0.1/32")], None);
    let out = cancel_pid_1(as_pid_1(&up).spawn().unwrap(), || calls("CreateFleet") > 0);
    assert_eq!(out.status.code(), Some(130), "{}", text(&out));
    assert!(text(&out).contains("rolled back"), "{}", text(&out));
    emu.faults(&json!([]));
    assert_clean(&emu);
}

/// The fake GitHub API for one test, stopped by PID.
pub struct FakeGitHub {
    child: Child,
    port: u16,
}

impl FakeGitHub {
    pub fn start(pulls: &[&str]) -> Self {
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let mut cmd = Command::new("python3");
        cmd.arg(repo().join("tests/support/fake_github.py")).args(["--port", &port.to_string()]);
        for p in pulls {
            cmd.args(["--pull", p]);
        }
        let child = cmd.stdout(Stdio::null()).stderr(Stdio::null()).spawn().unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "fake GitHub did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
        Self { child, port }
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    fn requests(&self) -> Vec<Value> {
        let out =
            Command::new("curl").args(["-fsS", &format!("{}/__requests", self.url())]).output().unwrap();
        serde_json::from_slice(&out.stdout).unwrap()
    }
}

impl Drop for FakeGitHub {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A pull request's description: its script stamps `version` on the instance.
pub fn stamped(version: &str) -> String {
    format!(
        "version: 1\nscripts:\n  - name: stamp\n    command: echo {version} > /var/lib/spot/version\nsecrets:\n  - APP_TOKEN\n"
    )
}

#[test]
fn a_pull_request_environment_takes_pushes_in_place_is_replaced_when_it_must_be_and_keeps_one_comment() {
    let emu = Emulator::start();
    let player = Player::start(&emu, &["us-east-1"], &[]);
    let github = FakeGitHub::start(&["7=open"]);
    let dir = repository(&config(1, "root"), &stamped("v1"), &[]);
    let wd = dir.path().to_str().unwrap();
    let manifest = dir.path().join(".spot/deployment.yaml");
    let up =
        [("working-directory", wd), ("ssh-cidr", "127.0.0.1/32"), ("keep", "true"), ("github-token", TOKEN)];
    let event = |action: &str, sha: &str| json!({"action": action, "pull_request": {"number": 7, "head": {"sha": sha}}});
    let push = |run: &str, sha: &str, inputs: &[(&str, &str)]| {
        let mut job = Job::new(run, "pull_request", event("synchronize", sha));
        job.api_url = Some(github.url());
        let out = job.run(&emu, "main", inputs, Some(&player.ssh_dir));
        assert!(out.status.success(), "{}\nplayer: {}", text(&out), player.log());
        let id = file_commands(&job.path("output-main"))["instance-ids"].clone();
        (job, text(&out), id)
    };
    let version =
        |instance: &str| player.on_instance(instance, "cat /var/lib/spot/version").trim().to_string();

    let mut first = Job::new("9101", "pull_request", event("opened", "aaaaaaaaaaaaaaaa"));
    first.api_url = Some(github.url());
    let out = first.run(&emu, "main", &up, Some(&player.ssh_dir));
    assert!(out.status.success(), "{}\nplayer: {}", text(&out), player.log());
    let outputs = file_commands(&first.path("output-main"));
    assert_eq!(outputs["deployment-id"], "pr-7");
    let original = outputs["instance-ids"].clone();
    assert_eq!(version(&original), "v1");
    let post = first.run(&emu, "post", &[], None);
    assert!(post.status.success() && text(&post).contains("keeping pr-7"), "{}", text(&post));

    // A push to a healthy environment goes into the same instance, entered with a key
    // pushed through EC2 Instance Connect; SSH now opens to this run's address only.
    std::fs::write(&manifest, stamped("v2")).unwrap();
    let moved =
        [("ssh-cidr", "127.0.0.0/8"), ("working-directory", wd), ("keep", "true"), ("github-token", TOKEN)];
    let (second, log, ids) = push("9102", "bbbbbbbbbbbbbbbb", &moved);
    assert!(log.contains("redeployed into the running pr-7"), "{log}");
    assert_eq!(ids, original, "the same instance takes the push");
    assert_eq!(version(&original), "v2");
    assert!(emu.calls().get("SendSSHPublicKey").copied().unwrap_or(0) >= 2, "{:?}", emu.calls());
    let groups = emu.details("us-east-1")["security_groups"].clone();
    assert_eq!(groups[0]["ingress"][0]["cidrs"], json!(["127.0.0.0/8"]), "{groups:#}");

    // A push with a broken description fails before touching the running environment.
    std::fs::write(&manifest, "version: 2\n").unwrap();
    let mut broken = Job::new("9104", "pull_request", event("synchronize", "cccccccccccccccc"));
    broken.api_url = Some(github.url());
    let out = broken.run(&emu, "main", &up, Some(&player.ssh_dir));
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("::error file=.spot/deployment.yaml,line=1"),
        "{}",
        text(&out)
    );
    assert_eq!(
        emu.leftovers(&["us-east-1"])["us-east-1"]["instances"],
        json!([original]),
        "a bad push removed the environment"
    );

    // Its post: main failed before anything was ready, and the environment an earlier
    // run made is not this run's to remove.
    let post = broken.run(&emu, "post", &up, None);
    assert!(post.status.success() && text(&post).contains("never got ready"), "{}", text(&post));
    assert_eq!(emu.leftovers(&["us-east-1"])["us-east-1"]["instances"], json!([original]), "{}", text(&post));

    // A redeploy that fails halfway (its script) keeps the instance, without its
    // completion marker: the next push replaces it instead of patching it.
    std::fs::write(&manifest, stamped("v3; exit 3")).unwrap();
    let mut half = Job::new("9107", "pull_request", event("synchronize", "cccccccccccccccd"));
    half.api_url = Some(github.url());
    let out = half.run(&emu, "main", &up, Some(&player.ssh_dir));
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(text(&out).contains("redeploy into pr-7 failed"), "{}", text(&out));
    let marker =
        player.on_instance(&original, "test -e /var/lib/spot/ready.json && echo marker || echo none");
    assert_eq!(marker.trim(), "none", "a half-applied delivery kept its completion marker");
    let post = half.run(&emu, "post", &up, None);
    assert!(post.status.success(), "{}", text(&post));
    assert_eq!(emu.leftovers(&["us-east-1"])["us-east-1"]["instances"], json!([original]), "{}", text(&post));
    std::fs::write(&manifest, stamped("v3")).unwrap();
    let (third, log, replacement) = push("9105", "dddddddddddddddd", &up);
    assert!(log.contains("replacing pr-7") && log.contains("no completion marker"), "{log}");
    assert_ne!(replacement, original);
    assert_eq!(version(&replacement), "v3");

    // So is one whose launch settings changed (here its time to live).
    let config_path = dir.path().join(".spot/config.yaml");
    let changed = std::fs::read_to_string(&config_path).unwrap().replace("ttl: 1h", "ttl: 2h");
    std::fs::write(&config_path, changed).unwrap();
    let (fourth, log, latest) = push("9106", "eeeeeeeeeeeeeeee", &up);
    assert!(log.contains("replacing pr-7") && log.contains("launched with changed"), "{log}");
    assert_ne!(latest, replacement);
    assert_eq!(
        emu.leftovers(&["us-east-1"])["us-east-1"]["instances"],
        json!([latest]),
        "one environment at a time"
    );

    // The pull request moved its environment's region before closing: `down` still finds
    // the one it has, in any region of the account.
    let moved = std::fs::read_to_string(&config_path).unwrap().replace("us-east-1", "eu-west-1");
    std::fs::write(&config_path, moved).unwrap();
    let mut close = Job::new("9103", "pull_request", event("closed", "eeeeeeeeeeeeeeee"));
    close.api_url = Some(github.url());
    let out = close.run(
        &emu,
        "main",
        &[("working-directory", wd), ("mode", "down"), ("github-token", TOKEN)],
        None,
    );
    assert!(out.status.success(), "{}", text(&out));
    assert_clean(&emu);

    let requests = github.requests();
    let creates: Vec<&Value> = requests
        .iter()
        .filter(|r| r["method"] == "POST" && r["path"] == "/repos/acme/app/issues/7/comments")
        .collect();
    let updates: Vec<&Value> = requests
        .iter()
        .filter(|r| {
            r["method"] != "GET"
                && r["path"].as_str().unwrap().starts_with("/repos/acme/app/issues/comments/")
        })
        .collect();
    assert_eq!(creates.len(), 1, "one comment, not duplicated: {requests:#?}");
    assert_eq!(updates.len(), 6, "updated on each push and on close: {requests:#?}");
    assert!(creates[0]["body"]["body"].as_str().unwrap().contains("<!-- spot:environment -->"));
    let body = |n: usize| updates[n]["body"]["body"].as_str().unwrap().to_string();
    assert!(
        body(0).contains("`bbbbbbbbbbbb`") && body(0).contains("went into the running instances"),
        "{}",
        body(0)
    );
    assert!(body(1).contains("failed") && body(1).contains("what ran before keeps running"), "{}", body(1));
    assert!(body(2).contains("failed") && body(2).contains("what ran before keeps running"), "{}", body(2));
    assert!(body(3).contains("`dddddddddddd`") && body(3).contains("New instances"), "{}", body(3));
    assert!(body(5).contains("removed"));
    assert!(requests.iter().all(|r| r["auth"] == format!("Bearer {TOKEN}")));
    for job in [&first, &second, &broken, &half, &third, &fourth, &close] {
        assert_no_secret(job, dir.path(), &[TOKEN, SECRET]);
    }
}

#[test]
fn a_named_deployment_on_a_push_is_redeployed_with_keep_and_refused_without_it() {
    let emu = Emulator::start();
    let player = Player::start(&emu, &["us-east-1"], &[]);
    let dir = repository(&config(1, "root"), &stamped("v1"), &[]);
    let wd = dir.path().to_str().unwrap();
    let manifest = dir.path().join(".spot/deployment.yaml");
    let push = json!({"ref": "refs/heads/main"});
    let kept = [
        ("working-directory", wd),
        ("ssh-cidr", "127.0.0.1/32, 2001:DB8:0::/64"),
        ("deployment-id", "staging"),
        ("keep", "true"),
    ];
    let first = Job::new("9301", "push", push.clone());
    let out = first.run(&emu, "main", &kept, Some(&player.ssh_dir));
    assert!(out.status.success(), "{}\nplayer: {}", text(&out), player.log());
    let original = file_commands(&first.path("output-main"))["instance-ids"].clone();
    let post = first.run(&emu, "post", &[], None);
    assert!(text(&post).contains("keeping staging"), "{}", text(&post));

    // `keep: true` on a push takes the redeploy-or-replace path pull requests take. Its
    // SSH sources: the IPv6 one written another way is the same rule (EC2 answers in
    // canonical form), two are new, and one of those is added by hand while spot's call
    // is on its way: EC2 refuses the whole call as a duplicate, and the other one is
    // still added.
    std::fs::write(&manifest, stamped("v2")).unwrap();
    let second = Job::new("9302", "push", push.clone());
    // (The one added by hand comes last: moto alone would add the sources before it.)
    let sources = "127.0.0.1/32, 2001:0db8:0:0::/64, 10.3.0.0/16, 10.2.0.0/16";
    let wider = [kept[0], ("ssh-cidr", sources), kept[2], kept[3]];
    emu.faults(
        &json!([{"action": "AuthorizeSecurityGroupIngress", "fault": "delay", "delay_ms": 4000, "times": 1}]),
    );
    let authorized = emu.calls().get("AuthorizeSecurityGroupIngress").copied().unwrap_or(0);
    let out = std::thread::scope(|s| {
        let main = s.spawn(|| second.run(&emu, "main", &wider, Some(&player.ssh_dir)));
        let deadline = Instant::now() + Duration::from_secs(60);
        while emu.calls().get("AuthorizeSecurityGroupIngress").copied().unwrap_or(0) == authorized {
            assert!(Instant::now() < deadline, "the redeploy never opened SSH");
            std::thread::sleep(Duration::from_millis(50));
        }
        add_ssh_source(&emu, "10.2.0.0/16");
        main.join().unwrap()
    });
    emu.faults(&json!([]));
    assert!(out.status.success(), "{}\nplayer: {}", text(&out), player.log());
    let groups = emu.details("us-east-1")["security_groups"].clone();
    let mut open: Vec<String> =
        serde_json::from_value(groups[0]["ingress"][0]["cidrs"].clone()).unwrap_or_default();
    open.sort();
    assert_eq!(open, ["10.2.0.0/16", "10.3.0.0/16", "127.0.0.1/32", "2001:db8::/64"], "{groups:#}");
    assert!(text(&out).contains("redeployed into the running staging"), "{}", text(&out));
    assert_eq!(file_commands(&second.path("output-main"))["instance-ids"], original);
    assert_eq!(player.on_instance(&original, "cat /var/lib/spot/version").trim(), "v2");

    // Without `keep`, the id in use is refused before anything is made, and post (which
    // removes what its main made) leaves the deployment alone.
    let calls = emu.calls();
    let fresh = [("working-directory", wd), ("ssh-cidr", "127.0.0.1/32"), ("deployment-id", "staging")];
    let third = Job::new("9303", "push", push);
    let out = third.run(&emu, "main", &fresh, Some(&player.ssh_dir));
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        text(&out).contains("deployment `staging` already exists") && text(&out).contains("keep: true"),
        "{}",
        text(&out)
    );
    assert!(std::fs::read_to_string(third.path("summary-main")).unwrap().contains("already exists"));
    let post = third.run(&emu, "post", &[("working-directory", wd)], None);
    assert!(post.status.success() && text(&post).contains("main refused staging"), "{}", text(&post));
    let made: Vec<String> = emu
        .calls()
        .iter()
        .filter(|(k, v)| {
            ["Create", "Import", "Delete", "Terminate"].iter().any(|c| k.starts_with(c))
                && calls.get(*k) != Some(v)
        })
        .map(|(k, _)| k.clone())
        .collect();
    assert!(made.is_empty(), "the refused run changed EC2: {made:?}");
    assert_eq!(emu.leftovers(&["us-east-1"])["us-east-1"]["instances"], json!([original]));

    // A run that raced for the id and lost (its look saw nothing yet, its names were
    // taken) made nothing: its post removes what its own run made, which is nothing.
    let raced = Job::new("9305", "push", json!({}));
    std::fs::write(raced.path("state"), format!("mode=up\ndeployment-id=staging\nrun-id=9305-1\nkeep=false\nworking-directory={wd}\nregions=us-east-1\n")).unwrap();
    let post = raced.run(&emu, "post", &[("working-directory", wd)], None);
    assert!(post.status.success(), "{}", text(&post));
    assert_eq!(emu.leftovers(&["us-east-1"])["us-east-1"]["instances"], json!([original]), "{}", text(&post));

    let down = Job::new("9304", "push", json!({}));
    let out = down.run(
        &emu,
        "main",
        &[("working-directory", wd), ("mode", "down"), ("deployment-id", "staging")],
        None,
    );
    assert!(out.status.success(), "{}", text(&out));
    assert_clean(&emu);
}

/// Behind spot's back: opens port 22 of the one security group to `cidr`.
/// Every inbound rule of the region's first security group, as
/// `first-last/protocol cidr [description]`, sorted.
pub fn group_rules(emu: &Emulator) -> Vec<String> {
    let groups = emu.details("us-east-1")["security_groups"].clone();
    let mut out = Vec::new();
    for p in groups[0]["ingress"].as_array().cloned().unwrap_or_default() {
        let cidrs = p["cidrs"].as_array().cloned().unwrap_or_default();
        let descriptions = p["descriptions"].as_array().cloned().unwrap_or_default();
        for (c, d) in cidrs.iter().zip(&descriptions) {
            out.push(format!(
                "{}-{}/{} {} [{}]",
                p["from"],
                p["to"],
                p["protocol"].as_str().unwrap_or_default(),
                c.as_str().unwrap_or_default(),
                d.as_str().unwrap_or_default()
            ));
        }
    }
    out.sort();
    out
}

#[test]
fn exposed_ports_open_to_their_sources_publish_their_urls_and_only_runner_rules_follow_the_runner() {
    let emu = Emulator::start();
    let player = Player::start(&emu, &["us-east-1"], &[]);
    let github = FakeGitHub::start(&["8=open"]);
    let checkip = CheckIp::start("198.51.100.7");
    let config = "aws:\n  total_instances: 2\n  username: root\n  ttl: 1h\nregions:\n  - us-east-1:\n      machine_type: [t3.small]\n\
                  expose:\n  - {port: 8080, http: true}\n  - {port: 8443, http: true, from: [runner, 203.0.113.0/24]}\n\
                  \x20 - {port: 9000-9001, protocol: udp, from: anywhere}\n";
    let dir = repository(config, &stamped("v1"), &[]);
    let wd = dir.path().to_str().unwrap();
    let event = |action: &str, sha: &str| json!({"action": action, "pull_request": {"number": 8, "head": {"sha": sha}}});
    let up = [
        ("working-directory", wd),
        ("keep", "true"),
        ("github-token", TOKEN),
        ("github-deployment", "true"),
        ("allow-anywhere", "true"),
    ];
    let job = |run: &str, action: &str, sha: &str| {
        let mut job = Job::new(run, "pull_request", event(action, sha));
        job.api_url = Some(github.url());
        job.env.push(("SPOT_EMULATOR_CHECKIP".into(), checkip.addr.clone()));
        job
    };

    // A pull request that opens `anywhere` needs the workflow's leave.
    let refused = job("9400", "opened", "aaaaaaaaaaaaaaaa");
    let out = refused.run(&emu, "main", &up[..4], Some(&player.ssh_dir));
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(text(&out).contains("file=.spot/config.yaml,line=11"), "{}", text(&out));
    assert!(text(&out).contains("to the whole internet"), "{}", text(&out));
    assert_clean(&emu);

    let first = job("9401", "opened", "aaaaaaaaaaaaaaaa");
    let out = first.run(&emu, "main", &up, Some(&player.ssh_dir));
    assert!(out.status.success(), "{}\nplayer: {}", text(&out), player.log());
    assert!(checkip.asked.load(std::sync::atomic::Ordering::Relaxed) >= 1);
    let outputs = file_commands(&first.path("output-main"));
    let ips: Vec<String> = outputs["public-ips"].split(',').map(String::from).collect();
    assert_eq!(ips.len(), 2);
    // By instance in instance-ids order, within one in config.yaml's order.
    let urls: Vec<String> =
        ips.iter().flat_map(|ip| [format!("http://{ip}:8080/"), format!("http://{ip}:8443/")]).collect();
    assert_eq!(outputs["urls"], urls.join(","));
    assert_eq!(outputs["url"], urls[0]);
    let json: Value = serde_json::from_str(&outputs["json"]).unwrap();
    assert_eq!(json["instances"][1]["urls"], json!(urls[2..]), "{json:#}");
    assert_eq!(
        group_rules(&emu),
        [
            "22-22/tcp 198.51.100.7/32 [spot ssh (runner)]",
            "8080-8080/tcp 198.51.100.7/32 [spot 8080/tcp http (runner)]",
            "8443-8443/tcp 198.51.100.7/32 [spot 8443/tcp http (runner)]",
            "8443-8443/tcp 203.0.113.0/24 [spot 8443/tcp http]",
            "9000-9001/udp 0.0.0.0/0 [spot 9000-9001/udp (anywhere)]",
            "9000-9001/udp ::/0 [spot 9000-9001/udp (anywhere)]",
        ]
    );
    let summary = std::fs::read_to_string(first.path("summary-main")).unwrap();
    for u in &urls {
        assert!(summary.contains(&format!("[{u}]({u})")), "{summary}");
    }
    assert!(summary.contains("| 8080/tcp | only the runner that deployed it |"), "{summary}");
    assert!(summary.contains("| 8443/tcp | 203.0.113.0/24, the runner that deployed it |"), "{summary}");
    assert!(
        summary.contains("| 9000-9001/udp | **anyone on the internet (0.0.0.0/0 and ::/0)** | - |"),
        "{summary}"
    );
    assert!(summary.contains("To widen it"), "{summary}");
    let requests = github.requests();
    let status = requests
        .iter()
        .find(|r| r["method"] == "POST" && r["path"].as_str().unwrap().ends_with("/statuses"))
        .unwrap_or_else(|| panic!("no deployment status: {requests:#?}"));
    assert_eq!(status["body"]["state"], "success");
    assert_eq!(status["body"]["environment_url"], urls[0].as_str(), "{status:#}");
    // The sticky comment (made by the refused run, updated by this one).
    let comment = requests
        .iter()
        .rfind(|r| r["method"] != "GET" && r["path"].as_str().unwrap().starts_with("/repos/acme/app/issues/"))
        .unwrap_or_else(|| panic!("no comment: {requests:#?}"));
    let body = comment["body"]["body"].as_str().unwrap();
    assert!(body.contains(&format!("[{u}]({u})", u = urls[3])) && body.contains("To widen it"), "{body}");
    let post = first.run(&emu, "post", &[], None);
    assert!(post.status.success() && text(&post).contains("keeping pr-8"), "{}", text(&post));

    // A rule added by hand, then a push from another runner: the runner's rules move,
    // the CIDR, `anywhere` and the hand-made rule stay.
    add_ssh_source(&emu, "10.2.0.0/16");
    checkip.answer("203.0.113.9");
    let second = job("9402", "synchronize", "bbbbbbbbbbbbbbbb");
    let out = second.run(&emu, "main", &up, Some(&player.ssh_dir));
    assert!(out.status.success(), "{}\nplayer: {}", text(&out), player.log());
    assert!(text(&out).contains("redeployed into the running pr-8"), "{}", text(&out));
    assert_eq!(
        group_rules(&emu),
        [
            "22-22/tcp 10.2.0.0/16 []",
            "22-22/tcp 203.0.113.9/32 [spot ssh (runner)]",
            "8080-8080/tcp 203.0.113.9/32 [spot 8080/tcp http (runner)]",
            "8443-8443/tcp 203.0.113.0/24 [spot 8443/tcp http]",
            "8443-8443/tcp 203.0.113.9/32 [spot 8443/tcp http (runner)]",
            "9000-9001/udp 0.0.0.0/0 [spot 9000-9001/udp (anywhere)]",
            "9000-9001/udp ::/0 [spot 9000-9001/udp (anywhere)]",
        ]
    );
    // The same instances, in the order of this run's `instance-ids`.
    let outputs = file_commands(&second.path("output-main"));
    let moved: Vec<String> = outputs["public-ips"]
        .split(',')
        .flat_map(|ip| [format!("http://{ip}:8080/"), format!("http://{ip}:8443/")])
        .collect();
    assert_eq!(outputs["urls"], moved.join(","));
    let (mut had, mut has) = (urls.clone(), moved.clone());
    had.sort();
    has.sort();
    assert_eq!(had, has);

    let close = job("9403", "closed", "bbbbbbbbbbbbbbbb");
    let out = close.run(
        &emu,
        "main",
        &[("working-directory", wd), ("mode", "down"), ("github-token", TOKEN)],
        None,
    );
    assert!(out.status.success(), "{}", text(&out));
    assert_clean(&emu);
    for j in [&first, &second, &close] {
        assert_no_secret(j, dir.path(), &[TOKEN, SECRET]);
    }
}

fn add_ssh_source(emu: &Emulator, cidr: &str) {
    let script = format!(
        "import boto3\nec2 = boto3.client('ec2', region_name='us-east-1', endpoint_url='{url}', aws_access_key_id='t', aws_secret_access_key='t')\n\
         g = [g['GroupId'] for g in ec2.describe_security_groups()['SecurityGroups'] if g['GroupName'] != 'default'][0]\n\
         ec2.authorize_security_group_ingress(GroupId=g, IpPermissions=[{{'IpProtocol': 'tcp', 'FromPort': 22, 'ToPort': 22, 'IpRanges': [{{'CidrIp': '{cidr}'}}]}}])\n",
        url = emu.moto_url()
    );
    let out = Command::new("python3")
        .args(["-c", &script])
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
}

/// Behind spot's back: `expire` tags every resource of a deployment expired; `terminate`
/// terminates its instances; `orphan` dates its security group and key pair long ago
/// and deletes the rest (moto does not retag launch templates).
fn tamper(emu: &Emulator, deployment: &str, action: &str) {
    let script = format!(
        "import boto3\nec2 = boto3.client('ec2', region_name='us-east-1', endpoint_url='{url}', aws_access_key_id='t', aws_secret_access_key='t')\n\
         f = [{{'Name': 'tag:spot:deployment', 'Values': ['{deployment}']}}]\n\
         ids = [i['InstanceId'] for r in ec2.describe_instances(Filters=f)['Reservations'] for i in r['Instances']]\n\
         others = [g['GroupId'] for g in ec2.describe_security_groups(Filters=f)['SecurityGroups']]\n\
         others += [k['KeyPairId'] for k in ec2.describe_key_pairs(Filters=f)['KeyPairs']]\n\
         templates = [t['LaunchTemplateId'] for t in ec2.describe_launch_templates(Filters=f)['LaunchTemplates']]\n\
         fleets = [x['FleetId'] for x in ec2.describe_fleets()['Fleets'] if {{'Key': 'spot:deployment', 'Value': '{deployment}'}} in x.get('Tags', [])]\n\
         if '{action}' == 'expire':\n\
         \x20   ec2.create_tags(Resources=ids + others + templates, Tags=[{{'Key': 'spot:expires-at', 'Value': '2020-01-01T00:00:00Z'}}])\n\
         else:\n\
         \x20   if '{action}' == 'orphan':\n\
         \x20       ec2.create_tags(Resources=others, Tags=[{{'Key': 'spot:created-at', 'Value': '2020-01-01T00:00:00Z'}}])\n\
         \x20       ec2.delete_fleets(FleetIds=fleets, TerminateInstances=True)\n\
         \x20       for t in templates: ec2.delete_launch_template(LaunchTemplateId=t)\n\
         \x20   ec2.terminate_instances(InstanceIds=ids)\n",
        url = emu.moto_url()
    );
    let out = Command::new("python3")
        .args(["-c", &script])
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
}

#[test]
fn reap_removes_this_repositorys_expired_closed_and_orphaned_deployments_and_keeps_the_rest() {
    let emu = Emulator::start();
    let github = FakeGitHub::start(&["7=closed", "8=open"]);
    let dir = repository(&config(1, "root"), "version: 1\n", &[]);
    let create = |id: &str, repository: &str, pr: Option<&str>| {
        let mut cmd = emu.spot();
        cmd.args(["create", "--no-deliver", "--repository", repository, "--deployment-id", id])
            .arg(dir.path());
        if let Some(pr) = pr {
            cmd.args(["--pr", pr]);
        }
        cmd
    };
    for (id, repository, pr) in [
        ("closed-pr", "acme/app", Some("7")),
        ("open-pr", "acme/app", Some("8")),
        ("expired", "acme/app", None),
        ("orphan", "acme/app", None),
        ("young-orphan", "acme/app", None),
        ("theirs", "other/repo", None),
    ] {
        let out = create(id, repository, pr).output().unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    }
    tamper(&emu, "expired", "expire");
    tamper(&emu, "theirs", "expire");
    tamper(&emu, "orphan", "orphan");
    // Its instance gone, but its resources made moments ago: judged by their age.
    tamper(&emu, "young-orphan", "terminate");
    let foreign = emu.foreign("us-east-1");
    let reap = |extra: &[&str]| {
        let mut cmd = emu.spot();
        cmd.args(["reap", "--json"])
            .args(extra)
            .arg(dir.path())
            .env("GITHUB_TOKEN", TOKEN)
            .env("GITHUB_REPOSITORY", "acme/app")
            .env("GITHUB_SERVER_URL", "https://github.example")
            .env("GITHUB_SHA", "0123456789abcdef0123456789abcdef01234567")
            .env("GITHUB_API_URL", github.url());
        let out = cmd.output().unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let doc: Value = serde_json::from_slice(&out.stdout).unwrap();
        doc["deployments"]
            .as_array()
            .unwrap()
            .iter()
            .map(|d| {
                (
                    d["deployment_id"].as_str().unwrap().to_string(),
                    (d["verdict"].as_str().unwrap().to_string(), d["reason"].as_str().unwrap().to_string()),
                )
            })
            .collect::<BTreeMap<String, (String, String)>>()
    };
    let dry = reap(&["--dry-run"]);
    assert_eq!(dry["closed-pr"].0, "remove", "{dry:?}");
    assert!(dry["closed-pr"].1.contains("#7 is closed"));
    assert_eq!(dry["expired"].0, "remove");
    assert!(dry["expired"].1.contains("expired at 2020-01-01"));
    assert_eq!(dry["orphan"].0, "remove", "{dry:?}");
    assert!(dry["orphan"].1.starts_with("orphan"));
    assert_eq!(dry["young-orphan"].0, "keep", "{dry:?}");
    assert!(dry["young-orphan"].1.contains("no instance yet"), "{dry:?}");
    assert_eq!(dry["open-pr"].0, "keep");
    assert!(dry["open-pr"].1.contains("#8 is open"));
    assert!(!dry.contains_key("theirs"), "another repository's deployment was judged: {dry:?}");
    assert!(emu.leftovers(&["us-east-1"]).to_string().contains("closed-pr"), "dry run removed something");
    // The whole account only when asked.
    let all = reap(&["--dry-run", "--whole-account"]);
    assert_eq!(all["theirs"].0, "remove", "{all:?}");

    // A create under way (its launch held up): resources, no instance yet. The reap
    // beside it keeps it at once (no second look after a sleep), and the create finishes.
    emu.faults(&json!([{"action": "CreateFleet", "fault": "delay", "delay_ms": 6000}]));
    let fleets = emu.calls().get("CreateFleet").copied().unwrap_or(0);
    let mut underway = create("underway", "acme/app", None);
    underway.timeout(Duration::from_secs(120));
    let done = std::thread::scope(|s| {
        let creating = s.spawn(move || underway.output().unwrap());
        let deadline = Instant::now() + Duration::from_secs(60);
        while emu.calls().get("CreateFleet").copied().unwrap_or(0) == fleets {
            assert!(Instant::now() < deadline, "the create never reached CreateFleet");
            std::thread::sleep(Duration::from_millis(50));
        }
        let done = reap(&[]);
        let created = creating.join().unwrap();
        assert!(
            created.status.success(),
            "the reap broke a create under way: {}",
            String::from_utf8_lossy(&created.stderr)
        );
        done
    });
    emu.faults(&json!([]));
    assert_eq!(done["underway"].0, "keep", "{done:?}");
    assert!(done["underway"].1.contains("no instance yet"), "{done:?}");
    assert_eq!(done.values().filter(|v| v.0 == "remove").count(), 3, "{done:?}");
    let left = emu.leftovers(&["us-east-1"]).to_string();
    for gone in ["closed-pr", "\"expired\"", "\"orphan\""] {
        assert!(!left.contains(gone), "{gone} still there: {left}");
    }
    for kept in ["open-pr", "young-orphan", "underway", "theirs"] {
        assert!(left.contains(kept), "{kept} was removed: {left}");
    }
    let instance = foreign["instance"].as_str().unwrap();
    assert!(left.contains(instance) && left.contains("not-spot"), "untagged resources were touched: {left}");
}

#[test]
fn down_needs_no_description_and_skips_only_a_region_nothing_was_made_in_that_refuses_the_account() {
    let emu = Emulator::start();
    let dir = repository(&config(1, "root"), "version: 1\n", &[]);
    let wd = dir.path().to_str().unwrap();
    for (id, pr) in [("pr-9", Some("9")), ("by-hand", None)] {
        let mut cmd = emu.spot();
        cmd.args(["create", "--no-deliver", "--repository", "acme/app", "--deployment-id", id])
            .arg(dir.path());
        cmd.args(pr.map(|p| vec!["--pr", p]).unwrap_or_default());
        let out = cmd.output().unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    }
    // Another repository's pull request #9 in the same account (another region: names
    // are per region), made from another checkout.
    let theirs = repository(&config(1, "root"), "version: 1\n", &[]);
    let out = emu
        .spot()
        .args([
            "create",
            "--no-deliver",
            "--repository",
            "other/repo",
            "--deployment-id",
            "pr-9",
            "--pr",
            "9",
        ])
        .args(["--region", "eu-west-1"])
        .arg(theirs.path())
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    // The pull request deleted `.spot/`; one region of the account will not answer it.
    std::fs::remove_dir_all(dir.path().join(".spot")).unwrap();
    emu.faults(&json!([{"action": "*", "region": "ap-south-1", "fault": "error", "status": 403,
        "code": "UnauthorizedOperation", "message": "You are not authorized to perform this operation."}]));
    let close = Job::new("9501", "pull_request", json!({"action": "closed", "pull_request": {"number": 9}}));
    let out = close.run(&emu, "main", &[("working-directory", wd), ("mode", "down")], None);
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        text(&out).contains("skipped ap-south-1, which refuses this account (UnauthorizedOperation)"),
        "{}",
        text(&out)
    );
    assert!(!emu.leftovers(&["us-east-1"]).to_string().contains("pr-9"), "pr-9 is still there");
    let other = emu.leftovers(&["eu-west-1"]);
    assert_eq!(
        other["eu-west-1"]["instances"].as_array().map(Vec::len),
        Some(1),
        "the other repository's pr-9 was touched: {other:#}"
    );

    // Where the deployment is configured (here: given, beside a region that answers),
    // the same answer is an error.
    let given = Job::new("9502", "push", json!({}));
    let inputs = [
        ("working-directory", wd),
        ("mode", "down"),
        ("deployment-id", "by-hand"),
        ("regions", "us-east-1, ap-south-1"),
    ];
    let out = given.run(&emu, "main", &inputs, None);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(text(&out).contains("in ap-south-1 failed: UnauthorizedOperation"), "{}", text(&out));
    assert!(
        emu.leftovers(&["us-east-1"]).to_string().contains("by-hand"),
        "a failed search removed something"
    );

    // Not one region answers (the credentials' policy, not the regions): an error, not
    // "nothing left to remove".
    let refused = |region: Option<&str>| {
        let mut rule = json!({"action": "*", "fault": "error", "status": 403, "code": "UnauthorizedOperation", "message": "not allowed"});
        if let Some(region) = region {
            rule["region"] = json!(region);
        }
        rule
    };
    emu.faults(&json!([refused(None)]));
    let nowhere = Job::new("9503", "push", json!({}));
    let out = nowhere.run(
        &emu,
        "main",
        &[("working-directory", wd), ("mode", "down"), ("deployment-id", "by-hand")],
        None,
    );
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(!text(&out).contains("nothing to do"), "{}", text(&out));

    // `spot destroy` with no description to read looks everywhere too; where its state
    // file records the deployment (us-east-1), a refusal is an error.
    emu.faults(&json!([refused(Some("us-east-1")), refused(Some("ap-south-1"))]));
    let out = emu.spot().args(["destroy", "by-hand", "--dir", wd]).output().unwrap();
    assert_eq!(out.status.code(), Some(2), "{}", String::from_utf8_lossy(&out.stderr));
    emu.faults(&json!([refused(Some("ap-south-1"))]));
    let out = emu.spot().args(["destroy", "by-hand", "--dir", wd]).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stderr).contains("skipped ap-south-1"));
    // Without an id, no folder's destroy takes what it finds in the whole account.
    let out = emu.spot().args(["destroy", "--yes", "--dir", wd]).output().unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(emu.leftovers(&["eu-west-1"]).to_string().contains("pr-9"));
    let out = emu
        .spot()
        .args(["destroy", "pr-9", "--region", "eu-west-1", "--dir"])
        .arg(theirs.path())
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(emu.leftovers(&["eu-west-1"]), json!({}));
    emu.faults(&json!([]));
    assert_clean(&emu);
}

#[test]
fn every_input_and_output_is_documented_and_read() {
    let readme = std::fs::read_to_string(repo().join("README.md")).unwrap();
    let mut files: Vec<_> =
        std::fs::read_dir(repo().join("src/action")).unwrap().map(|e| e.unwrap().path()).collect();
    files.sort();
    // The limit inputs are read by the pure `caps` module, from the action's getter.
    files.push(repo().join("src/caps.rs"));
    let code = files.iter().map(|p| std::fs::read_to_string(p).unwrap()).collect::<Vec<_>>().join("\n");
    // The outputs are named in one place (summary::outputs, whose unit test checks they are
    // exactly OUTPUTS), and main sets each of them.
    let outputs_code = std::fs::read_to_string(repo().join("src/action/summary.rs")).unwrap();
    assert!(code.contains("in summary::outputs(&created)") && code.contains("set_output(name, &value)"));
    let (inputs, outputs) = declared();
    assert!(inputs.len() >= 15 && outputs.len() == 8);
    for (name, _) in &inputs {
        assert!(readme.contains(&format!("| `{name}` |")), "input {name} is not in the README's table");
        assert!(
            code.contains(&format!("input(\"{name}\")")) || code.contains(&format!("input_bool(\"{name}\")")),
            "input {name} is never read"
        );
    }
    for name in &outputs {
        assert!(readme.contains(&format!("| `{name}` |")), "output {name} is not in the README's table");
        assert!(outputs_code.contains(&format!("(\"{name}\", ")), "output {name} is never set");
    }
    let consts: Vec<&str> = spot_deployer::action::INPUTS.to_vec();
    assert_eq!(consts, inputs.iter().map(|(n, _)| n.as_str()).collect::<Vec<_>>());
    assert_eq!(
        spot_deployer::action::OUTPUTS.to_vec(),
        outputs.iter().map(String::as_str).collect::<Vec<_>>()
    );
}

#[test]
fn role_to_assume_mints_credentials_from_the_runners_oidc_token() {
    let emu = Emulator::start();
    let github = FakeGitHub::start(&[]);
    let dir = repository(&config(1, "root"), "version: 1\n", &[]);
    let job = Job::new("9201", "schedule", json!({}));
    let inputs = [
        ("working-directory", dir.path().to_str().unwrap()),
        ("mode", "reap"),
        ("dry-run", "true"),
        ("role-to-assume", "arn:aws:iam::123456789012:role/spot-reaper"),
    ];
    let mut cmd = job.command(&emu, "main", &inputs, None);
    // No credentials but the ones minted from the OIDC token.
    cmd.env_remove("AWS_ACCESS_KEY_ID")
        .env_remove("AWS_SECRET_ACCESS_KEY")
        .env("ACTIONS_ID_TOKEN_REQUEST_URL", format!("{}/oidc/token?api-version=2.0", github.url()))
        .env("ACTIONS_ID_TOKEN_REQUEST_TOKEN", "request-token-123");
    let out = cmd.output().unwrap();
    assert!(out.status.success(), "{}", text(&out));
    let calls = emu.calls();
    assert_eq!(calls.get("AssumeRoleWithWebIdentity").copied(), Some(1), "{calls:?}");
    assert!(
        calls.get("DescribeInstances").copied().unwrap_or(0) > 0,
        "no EC2 call with the minted credentials: {calls:?}"
    );
    let asked = github.requests();
    let oidc = asked.iter().find(|r| r["path"] == "/oidc/token").expect("the OIDC endpoint was not asked");
    assert_eq!(oidc["auth"], "Bearer request-token-123");
    assert!(oidc["query"].as_str().unwrap().contains("audience=sts.amazonaws.com"));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("::add-mask::eyJhbGciOiJSUzI1NiJ9.fake-oidc-for-sts.amazonaws.com"), "{stdout}");
    assert_eq!(stdout.matches("fake-oidc").count(), 1, "the token was printed: {stdout}");

    // Without the job's id-token permission: a clear input error, no call.
    let mut cmd = job.command(&emu, "main", &inputs, None);
    cmd.env_remove("AWS_ACCESS_KEY_ID").env_remove("AWS_SECRET_ACCESS_KEY");
    let out = cmd.output().unwrap();
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(text(&out).contains("id-token: write"), "{}", text(&out));
}

/// What a pull request's script prints to take over the runner: workflow commands in both
/// forms, one after a lone CR, a stop of its own and a forged resume, and the secret.
const HOSTILE: &str = "#!/bin/sh\n\
echo '::set-output name=x::hostile-output'\n\
echo '::add-mask::hostile-mask'\n\
echo '   ::error::hostile-v2'\n\
echo 'text ##[error]hostile-legacy'\n\
printf 'lone\\r::warning::hostile-cr\\n'\n\
echo '::stop-commands::guessed'\n\
echo '::guessed::'\n\
echo '::0123456789abcdef0123456789abcdef::'\n\
echo '::set-env name=NODE_OPTIONS::hostile-env'\n\
echo \"leak: $(cat /etc/spot/secrets/APP_TOKEN)\"\n\
exit 1\n";

#[test]
fn a_hostile_script_printing_workflow_commands_and_its_secret_gets_neither_obeyed() {
    let emu = Emulator::start();
    let player = Player::start(&emu, &["us-east-1"], &[]);
    let dir = repository(
        &config(1, "root"),
        "version: 1\nscripts:\n  - name: hostile\n    path: scripts/hostile.sh\nsecrets:\n  - APP_TOKEN\n",
        &[(".spot/scripts/hostile.sh", HOSTILE)],
    );
    let job = Job::new("9101", "push", json!({"ref": "refs/heads/main"}));
    let inputs = [
        ("working-directory", dir.path().to_str().unwrap()),
        ("ssh-cidr", "127.0.0.1/32"),
        ("ssh-timeout", "60s"),
    ];
    let main = job.run(&emu, "main", &inputs, Some(&player.ssh_dir));
    assert!(!main.status.success(), "{}\nplayer: {}", text(&main), player.log());
    // The failure shows the script's output, fenced; the Action prints on one stream (the
    // runner keeps one fence state for both, read on two threads).
    let log = String::from_utf8_lossy(&main.stdout);
    assert!(
        log.contains("hostile-legacy") && log.contains("::stop-commands::"),
        "{log}\nplayer: {}",
        player.log()
    );
    // The same text without its fences would be obeyed (the legacy form anywhere, and a
    // line after a lone CR): the check below can fail.
    let unfenced: String = log
        .lines()
        .filter(|l| !(l.starts_with("::stop-commands::") || (l.starts_with("::") && l.len() == 36)))
        .map(|l| format!("{l}\n"))
        .collect();
    let obeyed: Vec<String> = crate::runner_log::commands(&unfenced).into_iter().map(|c| c.name).collect();
    assert!(obeyed.contains(&"warning".to_string()) && obeyed.contains(&"error".to_string()), "{obeyed:?}");
    let post = job.run(&emu, "post", &[("working-directory", dir.path().to_str().unwrap())], None);
    assert!(post.status.success(), "{}", text(&post));
    for (what, out) in [("main", &main), ("post", &post)] {
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!spot_deployer::fence::commandlike(&stderr), "{what} wrote to stderr: {stderr}");
        let commands = crate::runner_log::commands(&String::from_utf8_lossy(&out.stdout));
        for c in &commands {
            let spots = match c.name.as_str() {
                "add-mask" => c.data != "hostile-mask",
                "group" | "endgroup" => true,
                "error" | "warning" | "notice" => c.line.starts_with(&format!("::{} title=spot", c.name)),
                _ => false,
            };
            assert!(spots, "{what}: the runner would obey `{}`", c.line);
        }
        // spot's own masks are obeyed: none was caught in a fence.
        if what == "main" {
            assert!(commands.iter().any(|c| c.name == "add-mask" && c.data == SECRET), "{commands:?}");
        }
    }
    assert_clean(&emu);
    assert_no_secret(&job, dir.path(), &[SECRET, "PRIVATE KEY"]);
}

#[test]
fn a_description_beyond_the_workflows_limits_is_refused_at_its_lines_before_any_cloud_call() {
    let emu = Emulator::start();
    let config = "aws:\n  total_instances: 5\n  ttl: 2d\n  ssh_cidr: [203.0.113.7/32, 0.0.0.0/0]\n\
                  regions:\n  - us-east-1:\n      machine_type: [t3.small, m7i.4xlarge]\n  - ap-south-1:\n      machine_type: t3.small\n\
                  expose:\n  - {port: 8080, from: [runner, 0.0.0.0/1]}\n  - {port: 5432}\n";
    let dir = repository(config, "version: 1\nsecrets:\n  - APP_TOKEN\n  - name: DB\n    env: DB_URL\n", &[]);
    let job = Job::new("9201", "pull_request", json!({"number": 7}));
    let wd = dir.path().to_str().unwrap();
    let inputs =
        [("working-directory", wd), ("allowed-regions", "us-* eu-*"), ("allowed-ports", "8000-8999/tcp")];
    let out = job.run(&emu, "main", &inputs, None);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    for (line, col, says) in [
        (2, 20, "total_instances is 5, beyond the workflow's limit of 4"),
        (3, 8, "longer than the workflow's limit of 1d"),
        (4, 30, "opens SSH to the whole internet"),
        (7, 32, "`m7i.4xlarge` is not one the workflow allows"),
        (8, 5, "`ap-south-1` is not one the workflow allows"),
        (11, 33, "opens 8080/tcp to the whole internet"),
        (12, 5, "opens 5432/tcp, which the workflow does not allow (input `allowed-ports`)"),
    ] {
        let at = format!("::error file=.spot/config.yaml,line={line},col={col}");
        assert!(stdout.lines().any(|l| l.starts_with(&at) && l.contains(says)), "{at} {says}:\n{stdout}");
    }
    // `mode: validate` holds the description to the same limits.
    let out = job.run(&emu, "main", &[("working-directory", wd), ("mode", "validate")], None);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("beyond the workflow's limit of 4"),
        "{}",
        text(&out)
    );
    // A public key file outside the repository is the runner's, not the description's.
    let outside = tempfile::tempdir().unwrap();
    let key = outside.path().join("id.pub");
    std::fs::write(&key, "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOutsideTheRepository runner\n").unwrap();
    let host_key = format!(
        "aws:\n  ssh_cidr: 203.0.113.7/32\n  public_ssh_key_path: {}\nregions:\n  - us-east-1: {{machine_type: t3.small}}\n",
        key.display()
    );
    std::fs::write(dir.path().join(".spot/config.yaml"), host_key).unwrap();
    let inputs = [("working-directory", wd), ("secrets", "APP_TOKEN DB_URL")];
    let out = job.run(&emu, "main", &inputs, None);
    assert!(
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .any(|l| l.starts_with("::error file=.spot/config.yaml,line=3,col=24")
                && l.contains("outside the repository")),
        "{}",
        text(&out)
    );
    // Within the limits, the secret the workflow does not list is named with the input.
    let within = "aws:\n  ssh_cidr: 203.0.113.7/32\nregions:\n  - us-east-1: {machine_type: t3.small}\n";
    std::fs::write(dir.path().join(".spot/config.yaml"), within).unwrap();
    let out = job.run(&emu, "main", &[("working-directory", wd)], None);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let said = text(&out);
    assert!(
        said.contains("secret `DB` reads environment variable DB_URL, which input `secrets` does not allow")
            && !said.contains("`APP_TOKEN` reads"),
        "{said}"
    );
    // The workflow's own inputs are held to its limits too, and anywhere is its to allow.
    let inputs = [("working-directory", wd), ("secrets", "APP_TOKEN DB_URL"), ("count", "9")];
    let out = job.run(&emu, "main", &inputs, None);
    assert!(text(&out).contains("input `count` is 9, beyond input `max-instances` (4)"), "{}", text(&out));
    assert_eq!(emu.calls(), BTreeMap::new(), "a refused description called EC2");
}

/// The workflows spot ships: every third-party action pinned to a commit (a moved tag
/// cannot change what runs with `contents: write`), and no `${{ }}` expression inside a
/// `run:` script (a step output or event field would be pasted into the shell; they go
/// through `env:`).
#[test]
fn shipped_workflows_pin_actions_by_commit_and_keep_expressions_out_of_scripts() {
    let script = r#"
import glob, json, re, sys, yaml
found = []
for path in sorted(glob.glob(".github/workflows/*.yml") + glob.glob("examples/workflows/*.yml")):
    doc = yaml.safe_load(open(path))
    for name, job in doc["jobs"].items():
        for step in job.get("steps", []):
            uses = step.get("uses")
            if uses and not uses.startswith("./") and not uses.startswith("your-org/spot@"):
                if not re.fullmatch(r"[\w.-]+/[\w.-]+@[0-9a-f]{40}", uses):
                    found.append(f"{path}: {name}: `{uses}` is not pinned to a commit")
            if "${{" in step.get("run", ""):
                found.append(f"{path}: {name}: an expression inside run: {step['run']!r}")
print(json.dumps(found))
"#;
    let out = Command::new("/usr/bin/python3").arg("-c").arg(script).current_dir(repo()).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let found: Vec<String> = serde_json::from_slice(&out.stdout).unwrap();
    assert!(found.is_empty(), "{found:#?}");
}
