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
            .env("APP_TEST_API_KEY", secret_b)
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

/// Runs spot's time-to-live `bootcmd` entry as cloud-init would (`sh -c SCRIPT ARGS`), in
/// a private mount namespace with empty `/etc/systemd/system` and `/var/lib/systemd`, and
/// a `systemctl` on PATH that records its arguments and fails `start` when asked to.
/// Returns (what systemctl was asked, the script's output, the namespace's files).
fn run_expiry(expires_at: &str, start_fails: bool) -> (String, String, String) {
    let identity = Identity { deployment_id: "ttl-1".into(), expires_at: expires_at.into() };
    let argv = cloud_init::expiry::arm(&identity.deployment_id, &identity.expires_at);
    let dir = tempfile::tempdir().unwrap();
    let calls = dir.path().join("calls");
    let bin = dir.path().join("bin");
    std::fs::create_dir(&bin).unwrap();
    let fake = format!(
        "#!/bin/sh\necho \"$*\" >> {}\n[ \"$2\" = start ] && [ {} = 1 ] && exit 1\nexit 0\n",
        calls.display(),
        u8::from(start_fails)
    );
    std::fs::write(bin.join("systemctl"), fake).unwrap();
    Command::new("chmod").arg("+x").arg(bin.join("systemctl")).status().unwrap();
    let setup = "mount -t tmpfs t /etc/systemd/system && mount -t tmpfs t /var/lib/systemd && \
                 out=$(\"$@\" 2>&1); echo \"$out\"; echo ---; \
                 find /etc/systemd/system /var/lib/systemd -printf '%p %l\\n' | sort; \
                 cat /etc/systemd/system/spot-expiry.timer 2>/dev/null; \
                 stat -c '%Y' /var/lib/systemd/timers/stamp-spot-expiry.timer 2>/dev/null; date +%s";
    let out = Command::new("unshare")
        .args(["--mount", "--propagation", "private", "sh", "-c", setup, "setup"])
        .args(&argv)
        .env("PATH", format!("{}:/usr/bin:/bin", bin.display()))
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8(out.stdout).unwrap();
    let (said, files) = text.split_once("---\n").unwrap();
    (std::fs::read_to_string(&calls).unwrap_or_default(), said.to_string(), files.to_string())
}

#[test]
fn the_expiry_entry_arms_a_persistent_timer_without_waiting_on_systemd() {
    let later = jiff::Timestamp::now().checked_add(jiff::SignedDuration::from_hours(1)).unwrap();
    let at = later.strftime("%Y-%m-%dT%H:%M:%SZ").to_string();
    let (calls, said, files) = run_expiry(&at, false);
    assert_eq!(calls, "--no-block start spot-expiry.timer\n", "{said}");
    assert!(said.contains("spot-expiry: armed; this instance powers off in"), "{said}");
    assert!(files.contains("/etc/systemd/system/spot-expiry.service \n"), "{files}");
    assert!(
        files.contains("/etc/systemd/system/timers.target.wants/spot-expiry.timer ../spot-expiry.timer\n"),
        "not enabled: {files}"
    );
    assert!(files.contains(&format!("OnCalendar={}\n", later.strftime("%Y-%m-%d %H:%M:%S UTC"))), "{files}");
    assert!(files.contains("Persistent=true\n"), "{files}");
    assert!(!files.contains(".new"), "a unit was left half-written: {files}");
    // The stamp says "last fired when armed", so a start after the expiry fires at once.
    let mut tail = files.lines().rev();
    let (now, stamp): (i64, i64) =
        (tail.next().unwrap().parse().unwrap(), tail.next().unwrap().parse().unwrap());
    assert!((0..=5).contains(&(now - stamp)), "stamp {stamp}, now {now}");
}

#[test]
fn the_expiry_entry_powers_off_when_the_time_is_over_or_cannot_be_armed() {
    let (calls, said, files) = run_expiry("2020-01-01T00:00:00Z", false);
    assert_eq!(calls, "--no-block poweroff\n", "{said}");
    assert!(said.contains("the time to live ended"), "{said}");
    assert!(!files.contains("spot-expiry.timer"), "armed although over: {files}");

    let later = jiff::Timestamp::now().checked_add(jiff::SignedDuration::from_hours(1)).unwrap();
    let (calls, said, _) = run_expiry(&later.strftime("%Y-%m-%dT%H:%M:%SZ").to_string(), true);
    assert_eq!(calls, "--no-block start spot-expiry.timer\n--no-block poweroff\n", "{said}");
    assert!(said.contains("the time to live could not be armed; powering off"), "{said}");
}

/// PyYAML (cloud-init's own reader, from the Debian package) reads `path` as JSON.
fn pyyaml(path: &std::path::Path) -> serde_json::Value {
    let out = Command::new("/usr/bin/python3")
        .args([
            "-c",
            "import json, sys, yaml\nprint(json.dumps(yaml.safe_load(open(sys.argv[1], encoding='utf-8').read())))",
        ])
        .arg(path)
        .output()
        .expect("/usr/bin/python3 with PyYAML (it comes with cloud-init)");
    assert!(out.status.success(), "PyYAML refused it: {}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).unwrap()
}

/// A random string weighted to what YAML 1.1 readers trip on: its line breaks (NEL, LS,
/// PS), C0 and C1 controls, U+FFFE, quotes, indicators, leading and trailing blanks, and
/// any other code point.
fn tricky(rng: &mut fastrand::Rng) -> String {
    const HARD: &[char] = &[
        '\u{85}',
        '\u{2028}',
        '\u{2029}',
        '\u{0}',
        '\u{7}',
        '\u{1b}',
        '\u{7f}',
        '\u{80}',
        '\u{9f}',
        '\u{a0}',
        '\u{feff}',
        '\u{fffe}',
        '\u{ffff}',
        '\u{1f600}',
        '\r',
        '\n',
        '\t',
        ' ',
        '"',
        '\'',
        '\\',
        ':',
        '#',
        '-',
        '?',
        '&',
        '*',
        '!',
        '|',
        '>',
        '%',
        '@',
        '`',
        '{',
        '}',
        '[',
        ']',
        ',',
        '$',
        'y',
        '0',
    ];
    let len = rng.usize(0..12);
    (0..len)
        .map(|_| match rng.u8(0..4) {
            0 | 1 => HARD[rng.usize(0..HARD.len())],
            2 => rng.alphanumeric(),
            _ => loop {
                if let Some(c) = char::from_u32(rng.u32(0..0x11_0000)) {
                    break c;
                }
            },
        })
        .collect()
}

#[test]
fn every_string_the_yaml_writer_is_given_reads_back_unchanged_through_pyyaml() {
    // 3000 strings as values and as keys, one document, one PyYAML run (seeded: a failure
    // names its seed and is reproduced).
    let seed = fastrand::u64(..);
    let mut rng = fastrand::Rng::with_seed(seed);
    let mut doc = serde_json::Map::new();
    for n in 0..3000 {
        let value = tricky(&mut rng);
        doc.insert(format!("{n}:{}", tricky(&mut rng)), serde_json::Value::String(value));
    }
    let doc = serde_json::Value::Object(doc);
    let tmp = tempfile::tempdir().unwrap();
    let path = tmp.path().join("doc.yaml");
    std::fs::write(&path, spot_deployer::yaml_out::to_yaml(&doc)).unwrap();
    let read = pyyaml(&path);
    for (key, want) in doc.as_object().unwrap() {
        assert_eq!(read.get(key), Some(want), "seed {seed}: key {key:?} read back as {:?}", read.get(key));
    }

    // And through spot's own user-data: env values with YAML 1.1 line breaks and controls
    // land in the env file as written.
    let dir = crate::common::described(
        "version: 1\nenv:\n  LS: \"a\\u2028b\"\n  NEL: \"a\\x85b\"\n  PS: \"two\\nlines\\u2029\"\n  DEL: \"\\x7f\\x9f\"\n",
    );
    let deployment = manifest::load(dir.path()).unwrap();
    let identity = Identity { deployment_id: "env-1".into(), expires_at: "2026-01-01T04:00:00Z".into() };
    let user_data = cloud_init::render(&deployment, &identity, &UserDataKeys::placeholders()).unwrap();
    std::fs::write(&path, &user_data.text).unwrap();
    let by_pyyaml = pyyaml(&path);
    let env_file = by_pyyaml["write_files"][0]["content"].as_str().unwrap();
    // What spot meant: the same text read by its own (YAML 1.2) reader.
    let ours = manifest::yaml::parse(user_data.text.trim_start_matches("#cloud-config\n")).unwrap().unwrap();
    let meant = ours.get("write_files").and_then(|w| match &w.value {
        manifest::yaml::Value::Seq(items) => items[0].get("content").and_then(|c| c.as_scalar()),
        _ => None,
    });
    assert_eq!(Some(env_file), meant, "PyYAML read the env file otherwise");
    for key in ["LS", "NEL", "PS", "DEL"] {
        assert!(env_file.contains(&format!("{key}=")), "{env_file:?}");
    }
    assert!(env_file.contains('\u{2028}') && env_file.contains('\u{85}'), "{env_file:?}");
}
