//! Every invalid fixture reports exactly its expected errors (kind, file, line, column,
//! help), every validation rule has one, and every valid fixture loads.

use std::collections::BTreeSet;

use spot_deployer::bundle;
use spot_deployer::manifest::{self, Kind};

use crate::common::{Expect, Txtar, txtars, valid_dirs};

/// Everything validation reports for a folder: load errors, else bundle-walk errors,
/// else the user-data size check.
fn diagnostics(dir: &std::path::Path) -> Vec<manifest::Diagnostic> {
    let deployment = match manifest::load(dir) {
        Err(report) => return report.diagnostics,
        Ok(d) => d,
    };
    if let Err(errors) = bundle::list(&deployment, true) {
        return errors;
    }
    let identity = spot_deployer::cloud_init::Identity {
        deployment_id: "t".into(),
        expires_at: "2026-01-01T00:00:00Z".into(),
    };
    let keys = spot_deployer::keys::DeploymentKeys::generate("t").unwrap();
    let keys =
        spot_deployer::cloud_init::UserDataKeys::from_keys(&keys, &deployment.config.extra_authorized_keys);
    match spot_deployer::cloud_init::render(&deployment, &identity, &keys) {
        Err(d) => vec![*d],
        Ok(_) => Vec::new(),
    }
}

#[test]
fn invalid_fixtures_report_exactly_their_errors() {
    let mut failures = Vec::new();
    for path in txtars("invalid") {
        let fixture = Txtar::read(&path);
        assert!(!fixture.expects.is_empty(), "{} has no `expect` line", fixture.name);
        let dir = fixture.materialize();
        let found = diagnostics(dir.path());
        let got: BTreeSet<(String, String)> =
            found.iter().map(|d| (d.kind.code().to_string(), d.location())).collect();
        let want: BTreeSet<(String, String)> =
            fixture.expects.iter().map(|e| (e.kind.clone(), e.location.clone())).collect();
        if got != want {
            failures.push(format!(
                "{}:\n  expected {want:?}\n  got      {got:?}\n  messages {:#?}",
                fixture.name,
                found
                    .iter()
                    .map(|d| format!("{} {}: {} / {}", d.kind.code(), d.location(), d.message, d.help))
                    .collect::<Vec<_>>()
            ));
            continue;
        }
        for Expect { kind, location, help } in &fixture.expects {
            let Some(help) = help else { continue };
            let d = found.iter().find(|d| d.kind.code() == kind && &d.location() == location).unwrap();
            if !d.help.contains(help.as_str()) && !d.message.contains(help.as_str()) {
                failures.push(format!(
                    "{}: {kind} {location}: `{help}` is in neither message `{}` nor help `{}`",
                    fixture.name, d.message, d.help
                ));
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn every_rule_has_an_invalid_fixture() {
    let covered: BTreeSet<String> =
        txtars("invalid").iter().flat_map(|p| Txtar::read(p).expects).map(|e| e.kind).collect();
    let missing: Vec<&str> = Kind::ALL.iter().map(|k| k.code()).filter(|c| !covered.contains(*c)).collect();
    assert!(missing.is_empty(), "kinds without a fixture: {missing:?}");
}

#[test]
fn valid_fixtures_and_examples_load_with_no_errors() {
    let dirs = valid_dirs();
    assert!(dirs.len() >= 8, "expected the valid fixtures and examples, found {dirs:?}");
    for dir in dirs {
        let found = diagnostics(&dir);
        assert!(found.is_empty(), "{}: {found:#?}", dir.display());
    }
}

#[test]
fn the_original_nested_form_equals_the_flat_form() {
    let nested = Txtar::read(&crate::common::fixtures().join("forms/nested.txt")).materialize();
    let flat = Txtar::read(&crate::common::fixtures().join("forms/flat.txt")).materialize();
    let a = manifest::load(nested.path()).unwrap();
    let b = manifest::load(flat.path()).unwrap();
    assert_eq!(serde_json::to_value(&a.manifest).unwrap(), serde_json::to_value(&b.manifest).unwrap());
    assert_eq!(a.manifest.uploads[0].dest, "/opt/app/config.yaml");
    assert_eq!(a.manifest.services[0].file, ".spot/services/app.service");
    assert_eq!(a.manifest.tarball.as_ref().unwrap().dest, "/srv/app");
}

#[test]
fn convention_folder_follows_the_original_rules() {
    let d = manifest::load(&crate::common::fixtures().join("valid/convention")).unwrap();
    let scripts: Vec<&str> = d.manifest.scripts.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(scripts, ["setup", "10-one", "20-two", "start"]);
    assert_eq!(d.manifest.packages, ["jq", "htop", "python3", "python3-pip"]);
    let services: Vec<&str> = d.manifest.services.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(services, ["web", "worker"], "worker is After=web.service");
    let secret_upload = d.manifest.uploads.iter().find(|u| u.dest == "/opt/secrets").unwrap();
    assert_eq!(secret_upload.permissions, Some(0o600));
    let env_upload = d.manifest.uploads.iter().find(|u| u.dest == "/opt/deployment/.env").unwrap();
    assert_eq!(env_upload.permissions, Some(0o600));
    let listing = bundle::list(&d, true).unwrap();
    assert!(
        !listing.entries.iter().any(|e| e.dest.starts_with("/opt/deployment/secrets")
            || e.dest.starts_with("/opt/deployment/configs")),
        "secrets and configs go to their own destinations only"
    );
}

#[test]
fn excludes_keep_dot_github_and_honour_gitignore_when_asked() {
    let d = manifest::load(&crate::common::fixtures().join("valid/everything")).unwrap();
    let listing = bundle::list(&d, true).unwrap();
    let dests: Vec<&str> = listing.entries.iter().map(|e| e.dest.as_str()).collect();
    assert!(dests.contains(&"/srv/site/.github/ci.yml"), "{dests:?}");
    assert!(!dests.iter().any(|d| d.ends_with("debug.log")), "*.log is excluded");
    assert!(!dests.iter().any(|d| d.ends_with("ignored.txt")), ".gitignore is honoured");
    assert!(dests.contains(&"/usr/local/bin/prepare.sh"), "a file into a dest ending in / keeps its name");
    let link = listing.entries.iter().find(|e| e.dest.ends_with("VERSION.link")).unwrap();
    assert_eq!(link.link.as_deref(), Some("VERSION"), "in-repo symlinks ship as symlinks");
    let order: Vec<&str> = d.manifest.services.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(order, ["db", "api", "worker"]);
}
