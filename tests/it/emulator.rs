//! A private EC2 for one test: moto's server on a free 127.0.0.1 port, the
//! fault-injecting proxy in front of it, and an independent leak detector (boto3).
//! Both processes are stopped by PID when the value drops, on success and on failure.

use std::io::{Read as _, Write as _};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::common::{fixtures, repo, spot};

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

fn wait_listening(port: u16, what: &str, child: &mut Child) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        if TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return;
        }
        if let Ok(Some(status)) = child.try_wait() {
            panic!("{what} exited with {status} before listening (is it installed? .ci/run installs it)");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("{what} did not listen on {port} within 30s");
}

/// Minimal HTTP/1.0 exchange with the proxy's control endpoint.
fn http(port: u16, method: &str, path: &str, body: &str) -> String {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    write!(s, "{method} {path} HTTP/1.0\r\nHost: 127.0.0.1\r\nContent-Length: {}\r\n\r\n{body}", body.len())
        .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    out.split("\r\n\r\n").nth(1).unwrap_or_default().to_string()
}

/// What every emulator plays unless a test says otherwise: EC2's pages (2 items, so
/// every describe spot makes has to follow `NextToken`), instant fleets listed only by
/// id (found through their instances' `aws:ec2:fleet-id` tag), client tokens honoured,
/// IPv6 sources kept in EC2's canonical form, a security group rule call refused whole
/// when one of its sources exists. Eventual consistency is switched on per test
/// ([`Emulator::behaviours`]).
pub fn ec2_like() -> Value {
    serde_json::json!({
        "pages": 2,
        "instant_fleets": true,
        "client_tokens": true,
        "canonical_cidrs": true,
        "all_or_nothing_rules": true
    })
}

/// [`ec2_like`] with CreateFleet's instances unseen by the next `instances` describes
/// and new resources' tags by the next `tags` tag-filtered ones.
pub fn lagging(instances: u32, tags: u32) -> Value {
    let mut b = ec2_like();
    b["consistency"] = serde_json::json!({"instances": instances, "tags": tags});
    b
}

/// [`ec2_like`] with spot reclaiming the first `count` spot instances once each was shown
/// running `after` times, still shown running by the `stale` answers after; then no spot
/// capacity in their pools (`capacity: "pool"`), anywhere (`"none"`), or capacity
/// everywhere (`"any"`).
pub fn reclaiming(count: u32, after: u32, stale: u32, capacity: &str) -> Value {
    let mut b = ec2_like();
    b["reclaim"] = serde_json::json!({"count": count, "after": after, "stale": stale, "capacity": capacity});
    b
}

#[derive(Debug)]
pub struct Emulator {
    moto: Child,
    proxy: Child,
    /// Where the proxy writes the keys EC2 Instance Connect was asked to push.
    pub instance_connect: tempfile::TempDir,
    pub moto_port: u16,
    pub proxy_port: u16,
}

impl Emulator {
    /// Starts moto (with Ubuntu images from tests/fixtures/ec2/amis.json) and the proxy.
    pub fn start() -> Self {
        Self::start_with_delay(0)
    }

    pub fn start_with_delay(delay_ms: u64) -> Self {
        let moto_port = free_port();
        let mut moto = Command::new("python3")
            .args(["-m", "moto.server", "-H", "127.0.0.1", "-p", &moto_port.to_string()])
            .env("MOTO_AMIS_PATH", fixtures().join("ec2/amis.json"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        wait_listening(
            moto_port,
            "moto's server (pip install 'moto[server]'; .ci/run installs it)",
            &mut moto,
        );
        let proxy_port = free_port();
        let instance_connect = tempfile::tempdir().unwrap();
        let mut proxy = Command::new("python3")
            .arg(repo().join("tests/support/faultproxy.py"))
            .args(["--port", &proxy_port.to_string(), "--upstream", &format!("http://127.0.0.1:{moto_port}")])
            .args(["--delay-ms", &delay_ms.to_string()])
            .args(["--behaviours", &ec2_like().to_string()])
            .arg("--instance-connect-dir")
            .arg(instance_connect.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        wait_listening(proxy_port, "faultproxy.py", &mut proxy);
        Self { moto, proxy, instance_connect, moto_port, proxy_port }
    }

    pub fn proxy_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.proxy_port)
    }

    pub fn moto_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.moto_port)
    }

    /// Replaces the proxy's fault rules.
    pub fn faults(&self, rules: &Value) {
        http(self.proxy_port, "POST", "/__rules", &rules.to_string());
    }

    /// Replaces the proxy's behaviours (see faultproxy.py; [`ec2_like`] at start).
    pub fn behaviours(&self, behaviours: &Value) {
        http(self.proxy_port, "POST", "/__behaviours", &behaviours.to_string());
    }

    /// One EC2 Query call (form-encoded `body`) through the proxy, unsigned: the answer.
    pub fn post(&self, body: &str) -> String {
        http(self.proxy_port, "POST", "/", body)
    }

    /// Calls seen by the proxy, by EC2 action.
    pub fn calls(&self) -> std::collections::BTreeMap<String, u64> {
        serde_json::from_str(&http(self.proxy_port, "GET", "/__stats", "")).unwrap()
    }

    fn inventory(&self, mode: Option<&str>, regions: &[&str]) -> Value {
        let mut cmd = Command::new("python3");
        cmd.arg(repo().join("tests/support/ec2_inventory.py"));
        if let Some(m) = mode {
            cmd.arg(m);
        }
        let out =
            cmd.arg(self.moto_url()).args(regions).env("AWS_EC2_METADATA_DISABLED", "true").output().unwrap();
        assert!(out.status.success(), "inventory: {}", String::from_utf8_lossy(&out.stderr));
        serde_json::from_slice(&out.stdout).unwrap()
    }

    /// Everything non-default left in moto, asked directly (not through spot).
    pub fn leftovers(&self, regions: &[&str]) -> Value {
        self.inventory(None, regions)
    }

    /// Tags, launch template data, rules and user-data of one region.
    pub fn details(&self, region: &str) -> Value {
        self.inventory(Some("--details"), &[region])[region].clone()
    }

    /// Creates resources spot did not make (no spot tags).
    pub fn foreign(&self, region: &str) -> Value {
        self.inventory(Some("--foreign"), &[region])
    }

    /// `spot` pointed at the proxy through the SDK's own AWS_ENDPOINT_URL, with test
    /// credentials and no instance metadata lookups.
    pub fn spot(&self) -> assert_cmd::Command {
        let mut cmd = spot();
        cmd.env("AWS_ENDPOINT_URL", self.proxy_url())
            .env("AWS_ACCESS_KEY_ID", "testing")
            .env("AWS_SECRET_ACCESS_KEY", "testing")
            .env_remove("AWS_SESSION_TOKEN")
            .env_remove("AWS_PROFILE")
            .env("AWS_EC2_METADATA_DISABLED", "true")
            .env("AWS_CONFIG_FILE", "/nonexistent/spot-test-config")
            .env("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent/spot-test-credentials")
            .env("AWS_REGION", "us-east-1");
        cmd
    }
}

impl Emulator {
    /// [`Emulator::spot`] as a plain `std::process::Command`, for tests that spawn the
    /// process (to signal it, kill it or watch its memory) instead of waiting for it.
    pub fn spot_process(&self) -> Command {
        let mut cmd = Command::new(assert_cmd::cargo::cargo_bin("spot"));
        for (k, v) in self.spot().get_envs() {
            match v {
                Some(v) => cmd.env(k, v),
                None => cmd.env_remove(k),
            };
        }
        cmd
    }
}

impl Drop for Emulator {
    fn drop(&mut self) {
        for child in [&mut self.proxy, &mut self.moto] {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// A repository with `.spot/` for EC2 tests: `aws` and `regions` YAML as given.
pub fn project(config: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let spot = dir.path().join(".spot");
    std::fs::create_dir_all(&spot).unwrap();
    std::fs::write(spot.join("config.yaml"), config).unwrap();
    std::fs::write(spot.join("deployment.yaml"), "version: 1\npackages: [curl]\nenv:\n  APP: test\n")
        .unwrap();
    dir
}

pub fn state_dir(dir: &Path) -> PathBuf {
    dir.join(".spot-state")
}

/// Calls that change something in EC2, by name, out of a `calls()` count.
pub fn writes(calls: &std::collections::BTreeMap<String, u64>) -> std::collections::BTreeMap<String, u64> {
    let changes =
        ["Create", "Import", "Delete", "Terminate", "Modify", "Authorize", "Revoke", "Attach", "Associate"];
    calls
        .iter()
        .filter(|(k, _)| changes.iter().any(|c| k.starts_with(c)))
        .map(|(k, v)| (k.clone(), *v))
        .collect()
}
