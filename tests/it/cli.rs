//! The binary as users run it: exit codes, formats, snapshots of what people read.

use crate::common::{Txtar, described, fixtures, spot};

fn stdout(cmd: &mut assert_cmd::Command) -> String {
    String::from_utf8(cmd.output().unwrap().stdout).unwrap()
}

#[test]
fn generated_scaffolds_validate_and_plan_cleanly() {
    for template in ["minimal", "docker"] {
        let dir = tempfile::tempdir().unwrap();
        spot().args(["generate", "--template", template]).arg(dir.path()).write_stdin("").assert().success();
        for f in [
            "config.yaml",
            "deployment.yaml",
            "scripts/setup.sh",
            "services/hello.service",
            "files/index.html",
            "README.md",
        ] {
            assert!(dir.path().join(".spot").join(f).is_file(), "{template}: {f}");
        }
        spot().arg("validate").arg(dir.path()).assert().success();
        spot().arg("plan").arg(dir.path()).assert().success();
    }
}

#[test]
fn generate_never_overwrites_without_force_and_never_prompts_without_a_tty() {
    let dir = tempfile::tempdir().unwrap();
    spot().arg("generate").arg(dir.path()).write_stdin("").assert().success();
    let config = dir.path().join(".spot/config.yaml");
    std::fs::write(&config, "# mine\n").unwrap();
    let out = spot().arg("generate").arg(dir.path()).write_stdin("").output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("already exist") && err.contains("--force"), "{err}");
    assert_eq!(std::fs::read_to_string(&config).unwrap(), "# mine\n", "nothing was overwritten");
    spot().args(["generate", "--force"]).arg(dir.path()).write_stdin("").assert().success();
    assert_ne!(std::fs::read_to_string(&config).unwrap(), "# mine\n");
}

#[test]
fn validate_exit_codes() {
    spot().arg("validate").arg(fixtures().join("valid/everything")).assert().code(0);
    let bad = Txtar::read(&fixtures().join("invalid/unknown-key.txt")).materialize();
    spot().arg("validate").arg(bad.path()).assert().code(1);
    let empty = tempfile::tempdir().unwrap();
    spot().arg("validate").arg(empty.path()).assert().code(1);
    spot().args(["validate", "--format", "nope"]).assert().code(1);
}

#[test]
fn human_errors_show_a_caret_and_help() {
    let bad = Txtar::read(&fixtures().join("invalid/unknown-key.txt")).materialize();
    let out = spot().args(["validate", "--format", "human"]).arg(bad.path()).output().unwrap();
    insta::assert_snapshot!("validate_human", String::from_utf8(out.stderr).unwrap());
}

#[test]
fn json_errors_are_machine_readable() {
    let bad = Txtar::read(&fixtures().join("invalid/duplicate.txt")).materialize();
    let text = stdout(spot().args(["validate", "--format", "json"]).arg(bad.path()));
    let doc: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(doc["valid"], false);
    insta::assert_json_snapshot!("validate_json", doc);
    let good = stdout(spot().args(["validate", "--format", "json"]).arg(fixtures().join("valid/everything")));
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(&good).unwrap(),
        serde_json::json!({"valid": true, "errors": []})
    );
}

#[test]
fn inside_github_actions_errors_are_annotations() {
    let bad = Txtar::read(&fixtures().join("invalid/bad-tag.txt")).materialize();
    let out = spot().arg("validate").arg(bad.path()).env("GITHUB_ACTIONS", "true").output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    insta::assert_snapshot!("validate_github", String::from_utf8(out.stdout).unwrap());
}

fn plan_json(dir: &std::path::Path) -> String {
    stdout(
        spot()
            .args([
                "plan",
                "--json",
                "--now",
                "2026-03-01T10:00:00Z",
                "--deployment-id",
                "pr-7",
                "--repository",
                "acme/shop",
                "--pr",
                "7",
            ])
            .arg(dir),
    )
}

#[test]
fn plan_json_snapshot_and_determinism() {
    let dir = fixtures().join("valid/everything");
    let first = plan_json(&dir);
    assert_eq!(first, plan_json(&dir), "same input, same bytes");
    let doc: serde_json::Value = serde_json::from_str(&first).unwrap();
    insta::assert_json_snapshot!("plan_everything", doc);
}

#[test]
fn plan_human_snapshot() {
    let out = stdout(
        spot()
            .args([
                "plan",
                "--now",
                "2026-03-01T10:00:00Z",
                "--deployment-id",
                "demo",
                "--repository",
                "acme/shop",
            ])
            .arg(fixtures().join("valid/original-python-api")),
    );
    insta::assert_snapshot!("plan_original_python_api", out);
}

#[test]
fn plan_refuses_bad_ids_and_times() {
    let dir = fixtures().join("valid/everything");
    let out = spot().args(["plan", "--deployment-id", "Bad_Id"]).arg(&dir).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("deployment id `Bad_Id`"));
    spot().args(["plan", "--now", "yesterday"]).arg(&dir).assert().code(1);
}

#[test]
fn version_and_help() {
    let version = stdout(spot().arg("--version"));
    assert_eq!(version.trim(), format!("spot {}", env!("CARGO_PKG_VERSION")));
    for cmd in ["generate", "validate", "plan", "schema"] {
        let help = stdout(spot().args([cmd, "--help"]));
        assert!(help.contains("Usage: spot"), "{cmd}: {help}");
    }
    let help = stdout(spot().arg("--help"));
    assert!(help.contains("Exit codes"));
}

#[test]
fn schema_prints_both_or_one() {
    let both: serde_json::Value = serde_json::from_str(&stdout(spot().arg("schema"))).unwrap();
    assert!(both["config.yaml"]["properties"]["regions"].is_object());
    assert!(both["deployment.yaml"]["anyOf"].is_array());
    let one: serde_json::Value = serde_json::from_str(&stdout(spot().args(["schema", "config"]))).unwrap();
    assert_eq!(one, both["config.yaml"]);
}

#[test]
fn plan_names_a_dependency_once_when_a_unit_orders_and_requires_it() {
    let dir = tempfile::tempdir().unwrap();
    let spot_dir = dir.path().join(".spot");
    std::fs::create_dir_all(spot_dir.join("services")).unwrap();
    std::fs::write(
        spot_dir.join("config.yaml"),
        "aws: {total_instances: 1, ssh_cidr: 127.0.0.1/32}\nregions:\n  - us-east-1: {machine_type: t3.micro}\n",
    )
    .unwrap();
    let unit = |extra: &str| {
        format!(
            "[Unit]\n{extra}\n[Service]\nExecStart=/usr/bin/env sleep infinity\n[Install]\nWantedBy=multi-user.target\n"
        )
    };
    std::fs::write(spot_dir.join("services/db.service"), unit("Description=db")).unwrap();
    std::fs::write(
        spot_dir.join("services/api.service"),
        unit("After=db.service network.target\nRequires=db.service\nWants=db.service"),
    )
    .unwrap();
    std::fs::write(
        spot_dir.join("deployment.yaml"),
        "version: 1\nservices:\n  - {name: db, file: services/db.service}\n  - {name: api, file: services/api.service, depends_on: [db]}\n",
    )
    .unwrap();
    let out = spot().arg("plan").arg(dir.path()).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let api = text.lines().find(|l| l.contains("service    api")).unwrap_or_else(|| panic!("{text}"));
    assert!(api.ends_with("after db)"), "{api}");
}

#[test]
fn generate_ignores_the_state_folder_in_git_once() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join(".gitignore"), "target").unwrap();
    spot().arg("generate").arg(dir.path()).write_stdin("").assert().success();
    spot().args(["generate", "--force"]).arg(dir.path()).write_stdin("").assert().success();
    assert_eq!(std::fs::read_to_string(dir.path().join(".gitignore")).unwrap(), "target\n.spot-state/\n");
    let fresh = tempfile::tempdir().unwrap();
    spot().arg("generate").arg(fresh.path()).write_stdin("").assert().success();
    assert_eq!(std::fs::read_to_string(fresh.path().join(".gitignore")).unwrap(), ".spot-state/\n");
}

/// Runs `spot validate DIR` under Python, answering its exit code, stdout and stderr,
/// and the most memory it held (kB, the kernel's `ru_maxrss` for the finished child).
fn validate_measured(dir: &std::path::Path) -> (i32, String, u64) {
    let script = "import resource, subprocess, sys\n\
                  p = subprocess.run(sys.argv[1:], capture_output=True, timeout=60)\n\
                  sys.stdout.buffer.write(p.stdout + p.stderr)\n\
                  sys.stderr.write(f'{p.returncode} {resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss}')\n";
    let out = std::process::Command::new("python3")
        .args(["-c", script, env!("CARGO_BIN_EXE_spot"), "validate", "--format", "human"])
        .arg(dir)
        .env("NO_COLOR", "1")
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&out.stderr).to_string();
    let (code, rss) = said.rsplit_once('\n').map_or(said.as_str(), |(_, last)| last).split_once(' ').unwrap();
    (code.parse().unwrap(), String::from_utf8_lossy(&out.stdout).into_owned(), rss.parse().unwrap())
}

#[test]
fn an_alias_bomb_deep_nesting_or_a_huge_file_is_refused_where_it_starts_in_a_few_mb() {
    // Nine levels of ten aliases: 10^9 nodes once expanded (it took 17 GB before).
    let mut bomb = String::from("version: 1\nenv:\n  A: x\nx0: &a0 [x, x, x, x, x, x, x, x, x, x]\n");
    for level in 1..9 {
        let refs = vec![format!("*a{}", level - 1); 10].join(", ");
        bomb.push_str(&format!("x{level}: &a{level} [{refs}]\n"));
    }
    let deep = format!("version: 1\nscripts: {}x{}\n", "[".repeat(100), "]".repeat(100));
    // 8 GiB (sparse): read whole, it would take the runner's memory.
    let huge = "version: 1\n".to_string();
    for (name, manifest, says, line) in [
        ("bomb", bomb, "anchors (`&name`) are not allowed", 4),
        ("deep", deep, "nested more than 32 deep", 2),
        ("huge", huge, "is larger than 1024 KiB", 0),
    ] {
        let dir = described(&manifest);
        if name == "huge" {
            let file = std::fs::OpenOptions::new()
                .write(true)
                .open(dir.path().join(".spot/deployment.yaml"))
                .unwrap();
            file.set_len(8 << 30).unwrap();
        }
        let (code, text, rss_kb) = validate_measured(dir.path());
        assert_eq!(code, 1, "{name}: {text}");
        assert!(text.contains(says), "{name}: {text}");
        if line > 0 {
            assert!(text.contains(&format!(".spot/deployment.yaml:{line}:")), "{name}: not located: {text}");
        }
        assert!(rss_kb < 64 * 1024, "{name}: {rss_kb} kB");
    }
}

#[test]
fn a_tarball_flag_that_is_a_symlink_out_of_the_repository_is_refused_before_any_call() {
    let outside = tempfile::tempdir().unwrap();
    std::fs::write(outside.path().join("id_rsa"), "not yours to ship\n").unwrap();
    let dir = described("version: 1\n");
    std::os::unix::fs::symlink(outside.path(), dir.path().join("dist")).unwrap();
    let out = spot()
        .args(["create", "--tarball", "dist", "--ssh-cidr", "127.0.0.1/32"])
        .arg(dir.path())
        // Nothing answers there: a call would fail differently.
        .env("AWS_ENDPOINT_URL", "http://127.0.0.1:9")
        .env("AWS_ACCESS_KEY_ID", "t")
        .env("AWS_SECRET_ACCESS_KEY", "t")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("--tarball")
            && err.contains("is a symlink to")
            && err.contains("outside the repository"),
        "{err}"
    );
}

#[test]
fn a_checkouts_git_folder_is_never_shipped() {
    // The whole repository as the build: everything but `.git`.
    let dir = described("version: 1\ntarball: .\n");
    std::fs::create_dir_all(dir.path().join(".git")).unwrap();
    std::fs::create_dir_all(dir.path().join("app/.git")).unwrap();
    // As actions/checkout leaves it: the workflow's token in the checkout's config.
    std::fs::write(dir.path().join(".git/config"), "extraheader = AUTHORIZATION: basic ghs_secret\n")
        .unwrap();
    std::fs::write(dir.path().join("app/.git/HEAD"), "ref: refs/heads/main\n").unwrap();
    std::fs::write(dir.path().join("app/index.html"), "<p>hi</p>\n").unwrap();
    let bundle = dir.path().join("bundle.tar.gz");
    let out = spot().args(["bundle", "--output"]).arg(&bundle).arg(dir.path()).output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let listed = std::process::Command::new("tar").arg("-tzf").arg(&bundle).output().unwrap();
    let names = String::from_utf8_lossy(&listed.stdout);
    assert!(names.contains("app/index.html"), "{names}");
    assert!(!names.contains(".git"), "a .git was shipped:\n{names}");
    // Named outright, it is refused.
    for build in [".git", "app/.git"] {
        std::fs::write(dir.path().join(".spot/deployment.yaml"), format!("version: 1\ntarball: {build}\n"))
            .unwrap();
        let out = spot().arg("validate").arg(dir.path()).output().unwrap();
        let text = String::from_utf8_lossy(&out.stderr).to_string() + &String::from_utf8_lossy(&out.stdout);
        assert_eq!(out.status.code(), Some(1), "{build}: {text}");
        assert!(text.contains("never shipped"), "{build}: {text}");
    }
}
