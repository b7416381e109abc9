//! Shared harness: the `spot` binary with a clean environment, and txtar-style fixtures.

use std::path::{Path, PathBuf};

use assert_cmd::Command;
use tempfile::TempDir;

/// The repository root.
pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

pub fn fixtures() -> PathBuf {
    repo().join("tests/fixtures")
}

/// `spot` with every GitHub Actions variable removed, so tests behave the same in CI
/// and on a laptop.
pub fn spot() -> Command {
    let mut cmd = Command::cargo_bin("spot").expect("spot binary is built");
    for (key, _) in std::env::vars() {
        if key.starts_with("GITHUB_")
            || key.starts_with("RUNNER_")
            || key.starts_with("ACTIONS_")
            || key.starts_with("INPUT_")
            || key.starts_with("STATE_")
        {
            cmd.env_remove(key);
        }
    }
    cmd.env("NO_COLOR", "1");
    cmd
}

/// A repository folder with a one-region `.spot/config.yaml` and `deployment` as its
/// `.spot/deployment.yaml`.
pub fn described(deployment: &str) -> TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join(".spot")).unwrap();
    std::fs::write(
        dir.path().join(".spot/config.yaml"),
        "regions:\n  - us-east-1:\n      machine_type: t3.micro\n",
    )
    .unwrap();
    std::fs::write(dir.path().join(".spot/deployment.yaml"), deployment).unwrap();
    dir
}

/// One expected diagnostic: kind code, `file[:line:col]`, and a piece of the help text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Expect {
    pub kind: String,
    pub location: String,
    pub help: Option<String>,
}

/// A fixture file: header lines (`expect ...`, `no-defaults`) then `-- path --` sections.
#[derive(Debug)]
pub struct Txtar {
    pub name: String,
    pub expects: Vec<Expect>,
    pub defaults: bool,
    pub files: Vec<(String, String)>,
    pub links: Vec<(String, String)>,
}

impl Txtar {
    pub fn read(path: &Path) -> Self {
        let text = std::fs::read_to_string(path).expect("fixture is readable");
        let mut fixture = Txtar {
            name: path.file_stem().unwrap().to_string_lossy().into_owned(),
            expects: Vec::new(),
            defaults: true,
            files: Vec::new(),
            links: Vec::new(),
        };
        let mut current: Option<(String, String)> = None;
        for line in text.split_inclusive('\n') {
            let trimmed = line.trim_end_matches('\n');
            if let Some(header) = trimmed.strip_prefix("-- ").and_then(|l| l.strip_suffix(" --")) {
                if let Some(done) = current.take() {
                    fixture.files.push(done);
                }
                if let Some(link) = header.strip_prefix("symlink ") {
                    let (from, to) = link.split_once(" -> ").expect("symlink a -> b");
                    fixture.links.push((from.to_string(), to.to_string()));
                } else {
                    current = Some((header.to_string(), String::new()));
                }
                continue;
            }
            match &mut current {
                Some((_, body)) => body.push_str(line),
                None if trimmed == "no-defaults" => fixture.defaults = false,
                None if trimmed.starts_with("expect ") => {
                    let rest = &trimmed["expect ".len()..];
                    let (spec, help) = match rest.split_once(" | ") {
                        Some((s, h)) => (s, Some(h.to_string())),
                        None => (rest, None),
                    };
                    let (kind, location) = spec.split_once(' ').expect("expect KIND LOCATION");
                    fixture.expects.push(Expect { kind: kind.into(), location: location.into(), help });
                }
                None => {}
            }
        }
        if let Some(done) = current.take() {
            fixture.files.push(done);
        }
        fixture
    }

    /// Writes the fixture into a fresh folder. With defaults, a missing config or
    /// manifest gets a minimal valid one, so each fixture shows only its problem.
    pub fn materialize(&self) -> TempDir {
        let dir = tempfile::tempdir().expect("temp dir");
        for (rel, body) in &self.files {
            let path = dir.path().join(rel);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(&path, body).unwrap();
        }
        for (from, to) in &self.links {
            let path = dir.path().join(from);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::os::unix::fs::symlink(to, &path).unwrap();
        }
        if self.defaults && !dir.path().join("deployment").exists() {
            let config = dir.path().join(".spot/config.yaml");
            if !config.exists() {
                std::fs::create_dir_all(config.parent().unwrap()).unwrap();
                std::fs::write(&config, "regions:\n  - us-west-2:\n      machine_type: t3.micro\n").unwrap();
            }
            let manifest = dir.path().join(".spot/deployment.yaml");
            if !manifest.exists() {
                std::fs::write(&manifest, "version: 1\n").unwrap();
            }
        }
        dir
    }
}

/// All `*.txt` fixtures in a folder, sorted.
pub fn txtars(folder: &str) -> Vec<PathBuf> {
    let mut paths: Vec<PathBuf> = std::fs::read_dir(fixtures().join(folder))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "txt"))
        .collect();
    paths.sort();
    paths
}

/// Every valid fixture folder, plus the bundled examples.
pub fn valid_dirs() -> Vec<PathBuf> {
    let mut dirs: Vec<PathBuf> = std::fs::read_dir(fixtures().join("valid"))
        .unwrap()
        .chain(std::fs::read_dir(repo().join("examples")).unwrap())
        .map(|e| e.unwrap().path())
        .filter(|p| p.is_dir() && (p.join(".spot").is_dir() || p.join("deployment").is_dir()))
        .collect();
    dirs.sort();
    dirs
}

/// A stand-in for checkip.amazonaws.com on 127.0.0.1: answers every `GET /` with the
/// address it is told to (the "public address" spot sees, for the runner's rules), as
/// checkip does, over HTTP/1.0. Given to spot as `SPOT_EMULATOR_CHECKIP`.
pub struct CheckIp {
    pub addr: String,
    answer: std::sync::Arc<std::sync::Mutex<String>>,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
    pub asked: std::sync::Arc<std::sync::atomic::AtomicUsize>,
}

impl CheckIp {
    pub fn start(answer: &str) -> Self {
        use std::io::{Read as _, Write as _};
        use std::sync::atomic::Ordering;
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        let answer = std::sync::Arc::new(std::sync::Mutex::new(answer.to_string()));
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let asked = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let (a, s, n) = (answer.clone(), stop.clone(), asked.clone());
        let thread = std::thread::spawn(move || {
            while !s.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((mut conn, _)) => {
                        conn.set_nonblocking(false).unwrap();
                        conn.set_read_timeout(Some(std::time::Duration::from_secs(5))).unwrap();
                        let mut request = Vec::new();
                        let mut buf = [0u8; 1024];
                        while !request.ends_with(b"\r\n\r\n") {
                            match conn.read(&mut buf) {
                                Ok(0) | Err(_) => break,
                                Ok(k) => request.extend_from_slice(&buf[..k]),
                            }
                        }
                        n.fetch_add(1, Ordering::Relaxed);
                        let body = format!("{}\n", a.lock().unwrap());
                        let _ = conn.write_all(
                            format!("HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\n\r\n{body}").as_bytes(),
                        );
                    }
                    Err(_) => std::thread::sleep(std::time::Duration::from_millis(10)),
                }
            }
        });
        Self { addr, answer, stop, thread: Some(thread), asked }
    }

    /// From now on, answer `address`: the runner moved.
    pub fn answer(&self, address: &str) {
        *self.answer.lock().unwrap() = address.to_string();
    }
}

impl Drop for CheckIp {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
