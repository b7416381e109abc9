//! The deployment description: finding it, reading it, validating it.
//!
//! [`load`] is the one entry point: a repository folder in, a validated [`Deployment`]
//! or a [`Report`] of every problem out. It reads local files only and never touches the
//! network, so `validate` and `plan` are safe anywhere.

pub mod convention;
pub mod diagnostic;
pub mod paths;
pub mod raw;
pub mod read;
pub mod span;
pub mod types;
pub mod validate;
pub mod yaml;

use std::fs;
use std::path::Path;

pub use diagnostic::{Diagnostic, Format, Kind, Report};
use span::Span;
pub use types::Deployment;
use types::Layout;

/// Reads and validates the deployment in `dir` (`.spot/`, else `deployment/`).
pub fn load(dir: &Path) -> Result<Deployment, Report> {
    let mut report = Report::default();
    let root = match fs::canonicalize(dir) {
        Ok(root) if root.is_dir() => root,
        _ => {
            report.push(Diagnostic::new(
                Kind::NoDeployment,
                dir.display().to_string(),
                Span::FILE,
                format!("`{}` is not a folder", dir.display()),
                "pass the repository folder that holds `.spot/`",
            ));
            return Err(report);
        }
    };
    let deployment = if root.join(".spot").is_dir() {
        load_spot(&root, &mut report)
    } else if root.join("deployment").is_dir() {
        load_convention(&root, &mut report)
    } else {
        report.push(Diagnostic::new(
            Kind::NoDeployment,
            ".",
            Span::FILE,
            format!("no `.spot/` or `deployment/` folder in `{}`", dir.display()),
            "run `spot generate` to create `.spot/`, or pass the repository folder",
        ));
        None
    };
    report.finish();
    match deployment {
        Some(d) if report.is_empty() => Ok(d),
        _ => Err(report),
    }
}

/// Reads one YAML file into a node, recording its text for error snippets.
pub(crate) fn read_yaml(root: &Path, rel: &str, report: &mut Report) -> Option<yaml::Node> {
    // Like every path of the description: a symlink out of the repository is refused.
    if let Err(Some(real)) = paths::real_inside(root, &root.join(rel)) {
        report.push(Diagnostic::new(
            Kind::PathEscapes,
            rel,
            Span::FILE,
            format!("`{rel}` is a symlink to `{}`, outside the repository", real.display()),
            "keep spot's files in the repository",
        ));
        return None;
    }
    let read = paths::read_bounded(&root.join(rel), yaml::MAX_BYTES);
    if let Ok(None) = &read {
        report.push(Diagnostic::new(
            Kind::Syntax,
            rel,
            Span::FILE,
            format!("`{rel}` is larger than {} KiB", yaml::MAX_BYTES / 1024),
            "spot's files are a few kilobytes: move data into files the manifest ships",
        ));
        return None;
    }
    let text = match read.map(Option::unwrap_or_default) {
        Err(e) => {
            report.push(Diagnostic::new(
                Kind::NoDeployment,
                rel,
                Span::FILE,
                format!("cannot read `{rel}`: {e}"),
                "create it (`spot generate` writes a starting point)",
            ));
            return None;
        }
        Ok(bytes) => match String::from_utf8(bytes) {
            Ok(text) => text,
            Err(_) => {
                report.push(Diagnostic::new(
                    Kind::Syntax,
                    rel,
                    Span::FILE,
                    format!("`{rel}` is not UTF-8 text"),
                    "save it as UTF-8",
                ));
                return None;
            }
        },
    };
    let parsed = yaml::parse(&text);
    report.sources.insert(rel.to_string(), text);
    match parsed {
        Ok(Some(node)) => Some(node),
        Ok(None) => Some(yaml::Node { value: yaml::Value::Map(Vec::new()), span: Span::START }),
        Err(e) => {
            report.push(Diagnostic::new(
                Kind::Syntax,
                rel,
                e.span,
                format!("invalid YAML: {}", e.message),
                e.help,
            ));
            None
        }
    }
}

/// Reads the config file at `rel` into the validated config.
pub(crate) fn load_config(root: &Path, rel: &str, report: &mut Report) -> Option<types::Config> {
    let node = read_yaml(root, rel, report)?;
    let mut cx = read::Cx { file: rel.to_string(), diagnostics: &mut report.diagnostics };
    let raw = <raw::RawConfig as read::FromNode>::from_node(&node, &mut cx)?;
    Some(validate::config(&raw, &mut cx))
}

/// Just the region names of the config in `dir` (for `list` and `destroy`, which must
/// work even when the rest of the description does not validate).
pub fn load_regions(dir: &Path) -> Result<Vec<String>, Report> {
    let mut report = Report::default();
    let root = fs::canonicalize(dir).unwrap_or_else(|_| dir.to_path_buf());
    let rel = [".spot/config.yaml", "deployment/config.yaml", "config.yaml"]
        .into_iter()
        .find(|rel| root.join(rel).is_file())
        .unwrap_or(".spot/config.yaml");
    match load_config(&root, rel, &mut report) {
        Some(config) => Ok(config.regions.into_iter().map(|r| r.name).collect()),
        None => Err(report),
    }
}

fn load_convention(root: &Path, report: &mut Report) -> Option<Deployment> {
    let config_rel = convention::config_file(root, report)?;
    let config = load_config(root, config_rel, report);
    let manifest = convention::manifest(root, report);
    Some(Deployment {
        root: root.to_path_buf(),
        layout: Layout::Convention,
        config: config?,
        manifest: manifest?,
    })
}

fn load_spot(root: &Path, report: &mut Report) -> Option<Deployment> {
    let config = load_config(root, ".spot/config.yaml", report);
    let manifest_node = read_yaml(root, ".spot/deployment.yaml", report);
    let manifest = manifest_node.and_then(|node| {
        let mut cx = read::Cx { file: ".spot/deployment.yaml".into(), diagnostics: &mut report.diagnostics };
        let raw = raw::read_manifest(&node, &mut cx)?;
        let base = root.join(".spot");
        let paths = validate::Paths { root, base: &base };
        Some(validate::manifest(&raw, &paths, &mut cx))
    });
    Some(Deployment { root: root.to_path_buf(), layout: Layout::Spot, config: config?, manifest: manifest? })
}

/// The bundled example (`examples/hello`), loaded; for unit tests.
#[cfg(test)]
pub fn example() -> Deployment {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/hello");
    load(&root).unwrap_or_else(|r| panic!("the example must load: {r:?}"))
}
