//! The `deployment/` convention folder: a manifest inferred from which files exist.
//!
//! Same rules as the original tool, so its users' folders keep working: `setup.sh` (or
//! `init.sh`), then `scripts/*.sh` sorted, then `install.sh` and `start.sh`, run in that
//! order; `services/*.service`, `systemd/*.service` and `*.service` at the top become
//! services; `packages.txt` plus packages implied by `requirements.txt`, `package.json`,
//! `Gemfile`, `go.mod`, `Cargo.toml` or a compose file; the folder itself goes to
//! `/opt/deployment`, `configs/` to `/opt/configs`, `files/` to `/opt/files`, and
//! `secrets/` and `.env` with mode 0600. The config is `deployment/config.yaml`, else
//! `config.yaml` at the repository root. The inferred manifest goes through the same
//! validation as `.spot/deployment.yaml`.

use std::fs;
use std::path::Path;

use super::diagnostic::{Diagnostic, Kind, Report};
use super::raw::{RawManifest, RawScript, RawService, RawUpload};
use super::read::{Cx, Spanned};
use super::span::Span;
use super::types::Manifest;
use super::validate::{self, Paths};

const DIR: &str = "deployment";

fn s(text: &str) -> Spanned<String> {
    Spanned::new(text.to_string(), Span::FILE)
}

fn sorted_files(dir: &Path, suffix: &str) -> Vec<String> {
    let mut names: Vec<String> = fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| e.file_type().is_ok_and(|t| t.is_file()))
        .filter_map(|e| e.file_name().into_string().ok())
        .filter(|n| n.ends_with(suffix) && !n.starts_with('.') && !n.ends_with('~'))
        .collect();
    names.sort();
    names
}

/// Where the convention's config lives: `deployment/config.yaml`, else `config.yaml` at
/// the repository root; `None` (with the error reported) when neither exists.
pub(crate) fn config_file(root: &Path, report: &mut Report) -> Option<&'static str> {
    if root.join(DIR).join("config.yaml").is_file() {
        Some("deployment/config.yaml")
    } else if root.join("config.yaml").is_file() {
        Some("config.yaml")
    } else {
        report.push(Diagnostic::new(
            Kind::NoDeployment,
            DIR,
            Span::FILE,
            "the `deployment/` folder has no `config.yaml` beside it",
            "add `deployment/config.yaml` (or `config.yaml` at the root) with `aws:` and `regions:`",
        ));
        None
    }
}

/// The manifest inferred from the `deployment/` folder, validated like `.spot/`'s.
pub(crate) fn manifest(root: &Path, report: &mut Report) -> Option<Manifest> {
    let base = root.join(DIR);
    let first = ["setup.sh", "init.sh"].into_iter().find(|f| base.join(f).is_file());
    let Some(first) = first else {
        report.push(Diagnostic::new(
            Kind::NoDeployment,
            DIR,
            Span::FILE,
            "the `deployment/` folder has no `setup.sh` or `init.sh`",
            "add `deployment/setup.sh`, or describe the deployment in `.spot/` (`spot generate`)",
        ));
        return None;
    };
    let mut script_paths = vec![first.to_string()];
    script_paths
        .extend(sorted_files(&base.join("scripts"), ".sh").into_iter().map(|n| format!("scripts/{n}")));
    script_paths.extend(
        ["install.sh", "start.sh"].into_iter().filter(|f| base.join(f).is_file()).map(str::to_string),
    );

    let mut services = Vec::new();
    for folder in ["services", "systemd", ""] {
        for name in sorted_files(&base.join(folder), ".service") {
            let stem = name.trim_end_matches(".service").to_string();
            if services.iter().any(|(n, _): &(String, String)| *n == stem) {
                continue;
            }
            let file = if folder.is_empty() { name } else { format!("{folder}/{name}") };
            services.push((stem, file));
        }
    }

    // Bounded like spot's YAML files: a package list is a few hundred bytes.
    let listed = super::paths::read_bounded(&base.join("packages.txt"), super::yaml::MAX_BYTES)
        .ok()
        .flatten()
        .map(|bytes| String::from_utf8_lossy(&bytes).into_owned())
        .unwrap_or_default();
    let mut packages: Vec<String> = listed
        .lines()
        .map(|l| l.split('#').next().unwrap_or_default().trim().to_string())
        .filter(|l| !l.is_empty())
        .collect();
    for (marker, implied) in [
        ("requirements.txt", &["python3", "python3-pip"][..]),
        ("package.json", &["nodejs", "npm"]),
        ("Gemfile", &["ruby", "bundler"]),
        ("go.mod", &["golang"]),
        ("Cargo.toml", &["cargo"]),
        ("docker-compose.yml", &["docker.io", "docker-compose-v2"]),
        ("docker-compose.yaml", &["docker.io", "docker-compose-v2"]),
        ("compose.yaml", &["docker.io", "docker-compose-v2"]),
    ] {
        if base.join(marker).is_file() {
            packages.extend(implied.iter().map(|p| (*p).to_string()));
        }
    }
    let mut unique = Vec::new();
    for p in packages {
        if !unique.contains(&p) {
            unique.push(p);
        }
    }

    let upload = |source: &str, dest: &str, mode: Option<&str>, exclude: &[&str]| {
        Spanned::new(
            RawUpload {
                source: Some(s(source)),
                dest: Some(s(dest)),
                permissions: mode.map(s),
                exclude: (!exclude.is_empty())
                    .then(|| Spanned::new(exclude.iter().map(|e| s(e)).collect(), Span::FILE)),
                ..RawUpload::default()
            },
            Span::FILE,
        )
    };
    let mut uploads = vec![upload(
        ".",
        "/opt/deployment",
        None,
        &["configs", "files", "secrets", ".env", "config.yaml", ".git"],
    )];
    for (folder, dest, mode) in [
        ("configs", "/opt/configs", "0644"),
        ("files", "/opt/files", "0644"),
        ("secrets", "/opt/secrets", "0600"),
    ] {
        if base.join(folder).is_dir() {
            uploads.push(upload(folder, dest, Some(mode), &[]));
        }
    }
    if base.join(".env").is_file() {
        uploads.push(upload(".env", "/opt/deployment/.env", Some("0600"), &[]));
    }

    let raw = RawManifest {
        packages: Some(Spanned::new(unique.iter().map(|p| s(p)).collect(), Span::FILE)),
        scripts: Some(Spanned::new(
            script_paths
                .iter()
                .map(|p| Spanned::new(RawScript { path: Some(s(p)), ..RawScript::default() }, Span::FILE))
                .collect(),
            Span::FILE,
        )),
        uploads: Some(Spanned::new(uploads, Span::FILE)),
        services: Some(Spanned::new(
            services
                .iter()
                .map(|(name, file)| {
                    Spanned::new(
                        RawService { name: Some(s(name)), file: Some(s(file)), ..RawService::default() },
                        Span::FILE,
                    )
                })
                .collect(),
            Span::FILE,
        )),
        ..RawManifest::default()
    };
    let mut cx = Cx { file: DIR.into(), diagnostics: &mut report.diagnostics };
    let paths = Paths { root, base: &base };
    Some(validate::manifest(&raw, &paths, &mut cx))
}
