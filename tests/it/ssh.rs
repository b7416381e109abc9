//! SSH against a real OpenSSH `sshd` on 127.0.0.1 that holds the host key spot generated
//! and authorizes the deployment's key, as the user-data tells an instance to.

use std::net::{TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use spot_deployer::keys::DeploymentKeys;
use spot_deployer::remote::{self, Error, Target};

/// A private sshd, stopped by PID when dropped.
struct Sshd {
    child: Child,
    port: u16,
    _dir: tempfile::TempDir,
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

impl Sshd {
    fn start(keys: &DeploymentKeys, port: u16) -> Self {
        std::fs::create_dir_all("/run/sshd").expect("sshd needs /run/sshd (run the tests as root)");
        let dir = tempfile::tempdir().unwrap();
        let host_key = dir.path().join("host_ed25519");
        std::fs::write(&host_key, keys.host.private.expose()).unwrap();
        std::fs::set_permissions(&host_key, std::os::unix::fs::PermissionsExt::from_mode(0o600)).unwrap();
        std::fs::write(dir.path().join("authorized_keys"), format!("{}\n", keys.client.public)).unwrap();
        let config = dir.path().join("sshd_config");
        std::fs::write(
            &config,
            format!(
                "Port {port}\nListenAddress 127.0.0.1\nHostKey {hk}\nAuthorizedKeysFile {ak}\nPidFile {pid}\n\
                 StrictModes no\nPasswordAuthentication no\nKbdInteractiveAuthentication no\nPubkeyAuthentication yes\n\
                 PermitRootLogin prohibit-password\nUsePAM no\nLogLevel ERROR\n",
                hk = host_key.display(),
                ak = dir.path().join("authorized_keys").display(),
                pid = dir.path().join("sshd.pid").display(),
            ),
        )
        .unwrap();
        let mut child = Command::new("/usr/sbin/sshd")
            .args(["-D", "-e", "-f"])
            .arg(&config)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("OpenSSH sshd must be installed (Debian openssh-server); .ci/run installs it");
        let deadline = Instant::now() + Duration::from_secs(10);
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            if let Ok(Some(status)) = child.try_wait() {
                panic!("sshd exited with {status}");
            }
            assert!(Instant::now() < deadline, "sshd did not listen");
            std::thread::sleep(Duration::from_millis(20));
        }
        Self { child, port, _dir: dir }
    }
}

impl Drop for Sshd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn user() -> String {
    String::from_utf8(Command::new("id").arg("-un").output().unwrap().stdout).unwrap().trim().to_string()
}

fn target(port: u16) -> Target {
    Target { host: "127.0.0.1".into(), port, user: user() }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commands_report_their_status_and_output_tail() {
    let keys = DeploymentKeys::generate("ssh-1").unwrap();
    let sshd = Sshd::start(&keys, free_port());
    let session =
        remote::connect(&target(sshd.port), &keys.host.public, &keys.client.private, Duration::from_secs(5))
            .await
            .unwrap();
    let ok = session.run("echo hello; echo oops >&2; exit 0", Duration::from_secs(10)).await.unwrap();
    assert_eq!(ok.status, 0);
    assert!(ok.tail.contains("hello") && ok.tail.contains("oops"), "{ok:?}");
    let failed = session.run("seq 1 5000; exit 3", Duration::from_secs(10)).await.unwrap();
    assert_eq!(failed.status, 3);
    assert!(failed.tail.ends_with("4999\n5000\n"), "the tail keeps the end");
    assert!(failed.tail.len() <= remote::OUTPUT_TAIL);
    let slow = session.run("sleep 5", Duration::from_millis(300)).await;
    assert!(matches!(slow, Err(Error::Timeout(_))), "{slow:?}");
    session.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_with_another_host_key_is_refused_at_once() {
    let ours = DeploymentKeys::generate("ssh-2").unwrap();
    let impostor = DeploymentKeys::generate("impostor").unwrap();
    // The impostor authorizes our client key but presents its own host key.
    let mut mixed = impostor.clone();
    mixed.client = ours.client.clone();
    let sshd = Sshd::start(&mixed, free_port());
    let started = Instant::now();
    let err = remote::connect_with_budget(
        &target(sshd.port),
        &ours.host.public,
        &ours.client.private,
        Duration::from_secs(30),
    )
    .await
    .unwrap_err();
    match &err {
        Error::HostKeyMismatch { expected, presented } => {
            assert!(
                expected.starts_with("SHA256:") && presented.starts_with("SHA256:") && expected != presented
            );
        }
        other => panic!("expected a host key mismatch, got {other:?}"),
    }
    assert!(started.elapsed() < Duration::from_secs(25), "a mismatch is not retried until the budget ends");
    assert!(err.to_string().contains("refusing"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_the_server_does_not_authorize_is_rejected() {
    let keys = DeploymentKeys::generate("ssh-3").unwrap();
    let other = DeploymentKeys::generate("other").unwrap();
    let sshd = Sshd::start(&keys, free_port());
    let err =
        remote::connect(&target(sshd.port), &keys.host.public, &other.client.private, Duration::from_secs(5))
            .await
            .unwrap_err();
    assert!(matches!(err, Error::AuthRejected(_)), "{err:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn uploads_stream_and_are_verified_by_sha256_on_the_instance() {
    let keys = DeploymentKeys::generate("ssh-4").unwrap();
    let sshd = Sshd::start(&keys, free_port());
    let session =
        remote::connect(&target(sshd.port), &keys.host.public, &keys.client.private, Duration::from_secs(5))
            .await
            .unwrap();
    let data: Vec<u8> =
        (0..8 * 1024 * 1024u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8).collect();
    let digest = sha2::Digest::finalize(<sha2::Sha256 as sha2::Digest>::new_with_prefix(&data));
    let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
    let dir = tempfile::tempdir().unwrap();
    let dest = dir.path().join("sub dir/bundle.tar.gz");
    session.upload(&data[..], dest.to_str().unwrap(), 0o600, &hex, Duration::from_secs(60)).await.unwrap();
    assert_eq!(std::fs::read(&dest).unwrap(), data);
    let mode =
        std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(&dest).unwrap().permissions()) & 0o777;
    assert_eq!(mode, 0o600);
    // A corrupted transfer (here: the wrong expected digest) leaves nothing behind.
    let bad = dir.path().join("bad.bin");
    let err = session
        .upload(&data[..1000], bad.to_str().unwrap(), 0o600, &hex, Duration::from_secs(10))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("sha256 mismatch"), "{err}");
    assert!(!bad.exists() && !dir.path().join("bad.bin.part").exists());
    session.close().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connecting_waits_for_an_instance_that_is_still_booting() {
    let keys = DeploymentKeys::generate("ssh-5").unwrap();
    let port = free_port();
    let late = keys.clone();
    let server = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(1500));
        Sshd::start(&late, port)
    });
    let session = remote::connect_with_budget(
        &target(port),
        &keys.host.public,
        &keys.client.private,
        Duration::from_secs(30),
    )
    .await;
    let sshd = server.join().unwrap();
    let session = session.unwrap();
    assert_eq!(session.run("true", Duration::from_secs(5)).await.unwrap().status, 0);
    drop(sshd);
    let gone = remote::connect_with_budget(
        &target(port),
        &keys.host.public,
        &keys.client.private,
        Duration::from_secs(2),
    )
    .await;
    assert!(matches!(gone, Err(Error::Unreachable(ref why)) if why.contains("gave up")), "{gone:?}");
}
