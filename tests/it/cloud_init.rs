//! User-data of every valid fixture: accepted by the real `cloud-init schema`, within
//! EC2's 16 KB as sent, gzipped only when needed, and free of secret values.

use std::io::Read as _;
use std::process::Command;

use spot_deployer::cloud_init::{self, Identity, USER_DATA_LIMIT, UserDataKeys};
use spot_deployer::keys::DeploymentKeys;
use spot_deployer::manifest;

use crate::common::{spot, valid_dirs};

fn cloud_init_schema(path: &std::path::Path) -> (bool, String) {
    let out = Command::new("cloud-init")
        .args(["schema", "--config-file"])
        .arg(path)
        .output()
        .expect("`cloud-init` must be installed (Debian package cloud-init); .ci/run installs it");
    (
        out.status.success(),
        format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)),
    )
}

#[test]
fn user_data_of_every_valid_fixture_passes_cloud_init_schema() {
    let tmp = tempfile::tempdir().unwrap();
    for (i, dir) in valid_dirs().iter().enumerate() {
        let deployment = manifest::load(dir).unwrap();
        let keys = DeploymentKeys::generate("fixture").unwrap();
        let identity =
            Identity { deployment_id: "fixture-1".into(), expires_at: "2026-01-01T04:00:00Z".into() };
        let user_data =
            cloud_init::render(&deployment, &identity, &UserDataKeys::from_keys(&keys, &[])).unwrap();
        assert!(
            user_data.bytes.len() <= USER_DATA_LIMIT,
            "{}: {} bytes as sent",
            dir.display(),
            user_data.bytes.len()
        );
        assert_eq!(
            user_data.gzipped,
            user_data.text.len() > USER_DATA_LIMIT,
            "{}: gzip only when needed",
            dir.display()
        );
        if user_data.gzipped {
            let mut text = String::new();
            flate2::read::GzDecoder::new(&user_data.bytes[..]).read_to_string(&mut text).unwrap();
            assert_eq!(text, user_data.text);
        }
        assert!(user_data.text.contains(&keys.host.public), "the host key is pinned through user-data");
        assert!(user_data.text.contains(&keys.client.public), "the deployment key is authorized");
        assert!(
            !user_data.text.contains(keys.client.private.expose()),
            "the client private key never leaves spot"
        );
        let path = tmp.path().join(format!("{i}.yaml"));
        std::fs::write(&path, &user_data.text).unwrap();
        let (ok, output) = cloud_init_schema(&path);
        assert!(
            ok,
            "{}: cloud-init schema refused the user-data:\n{output}\n{}",
            dir.display(),
            user_data.text
        );
    }
}

#[test]
fn cloud_init_schema_really_rejects_bad_documents() {
    // Guards the test above against a `cloud-init schema` that accepts anything.
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("bad.yaml");
    std::fs::write(&path, "#cloud-config\npackage_update: \"sometimes\"\nusers: 7\n").unwrap();
    assert!(!cloud_init_schema(&path).0);
}

#[test]
fn the_gzip_fixture_is_sent_gzipped() {
    let deployment = manifest::load(&crate::common::fixtures().join("valid/gzip")).unwrap();
    let identity = Identity { deployment_id: "g".into(), expires_at: "2026-01-01T04:00:00Z".into() };
    let user_data = cloud_init::render(&deployment, &identity, &UserDataKeys::placeholders()).unwrap();
    assert!(user_data.gzipped && user_data.text.len() > USER_DATA_LIMIT);
    assert_eq!(&user_data.bytes[..2], &[0x1f, 0x8b]);
}

#[test]
fn secret_values_never_reach_user_data_or_plan() {
    let dir = crate::common::fixtures().join("valid/everything");
    let secret_a = "s3cr3t-database-url-value-9f8e7d";
    let secret_b = "s3cr3t-api-key-value-1a2b3c";
    for args in [&["plan", "--user-data"][..], &["plan", "--json"], &["plan"], &["validate"]] {
        let out = spot()
            .args(args)
            .arg(&dir)
            .env("DATABASE_URL", secret_a)
            .env("SPOT_TEST_API_KEY", secret_b)
            .output()
            .unwrap();
        assert!(out.status.success(), "{args:?}: {}", String::from_utf8_lossy(&out.stderr));
        for stream in [&out.stdout, &out.stderr] {
            let text = String::from_utf8_lossy(stream);
            assert!(!text.contains(secret_a) && !text.contains(secret_b), "{args:?} printed a secret value");
        }
    }
}

#[test]
fn user_data_carries_the_expiry_timer_packages_and_boot_marker() {
    let dir = crate::common::fixtures().join("valid/everything");
    let out = spot()
        .args(["plan", "--user-data", "--now", "2026-03-01T10:00:00Z", "--deployment-id", "pr-7"])
        .arg(&dir)
        .output()
        .unwrap();
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(text.starts_with("#cloud-config\n"));
    assert!(text.contains("OnCalendar=2026-03-01 11:30:00 UTC"), "ttl 1h30m from --now:\n{text}");
    assert!(
        text.contains("- spot-expiry\n    - \"1772364600\"\n"),
        "the expiry in seconds, as an argument:\n{text}"
    );
    assert!(text.contains("package_update: true"));
    for p in ["docker.io", "jq", "nginx=1.24.0-2ubuntu7", "postgresql-client"] {
        assert!(
            text.contains(&format!("- {p}")) || text.contains(&format!("- \"{p}\"")),
            "package {p} kept:\n{text}"
        );
    }
    assert!(text.contains("/var/lib/spot/boot-finished"));
    assert!(text.contains("groups: \"sudo, docker\""));
    assert!(text.contains("name: deploy"));
}

#[test]
fn debug_output_of_user_data_and_keys_never_shows_the_host_key() {
    let deployment = manifest::load(&crate::common::fixtures().join("valid/everything")).unwrap();
    let keys = DeploymentKeys::generate("dbg").unwrap();
    let identity = Identity { deployment_id: "dbg".into(), expires_at: "2026-01-01T04:00:00Z".into() };
    let data_keys = UserDataKeys::from_keys(&keys, &[]);
    let user_data = cloud_init::render(&deployment, &identity, &data_keys).unwrap();
    assert!(user_data.text.contains("BEGIN OPENSSH PRIVATE KEY"), "the host key is in the user-data itself");
    for shown in [format!("{user_data:?}"), format!("{data_keys:?}"), format!("{keys:?}")] {
        assert!(!shown.contains("PRIVATE KEY") && !shown.contains(keys.host.private.expose()), "{shown}");
    }
}
