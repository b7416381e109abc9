//! `spot generate`: write a `.spot/` folder that validates as generated.
//!
//! Never overwrites without `--force`. On a terminal it may ask; without one (CI, pipes)
//! it never prompts and fails with the list of files in the way.

use std::io::{BufRead as _, IsTerminal as _, Write as _};
use std::path::{Path, PathBuf};

use crate::cli::GenerateArgs;
use crate::error::Error;
use crate::manifest::types::Template;

/// `(path under .spot/, contents, executable)` for a template.
fn files(template: Template) -> Vec<(&'static str, &'static str, bool)> {
    let (deployment, service) = match template {
        Template::Minimal => (
            include_str!("../scaffold/deployment-minimal.yaml"),
            include_str!("../scaffold/hello-minimal.service"),
        ),
        Template::Docker => (
            include_str!("../scaffold/deployment-docker.yaml"),
            include_str!("../scaffold/hello-docker.service"),
        ),
    };
    vec![
        ("config.yaml", include_str!("../scaffold/config.yaml"), false),
        ("deployment.yaml", deployment, false),
        ("scripts/setup.sh", include_str!("../scaffold/setup.sh"), true),
        ("services/hello.service", service, false),
        ("files/index.html", include_str!("../scaffold/index.html"), false),
        ("configs/.gitkeep", "", false),
        ("README.md", include_str!("../scaffold/README.md"), false),
    ]
}

pub fn run(args: &GenerateArgs) -> Result<(), Error> {
    let spot = args.dir.join(".spot");
    let files = files(args.template);
    let existing: Vec<PathBuf> = files.iter().map(|(p, _, _)| spot.join(p)).filter(|p| p.exists()).collect();
    if !existing.is_empty() && !args.force && !confirm(&existing)? {
        let list: Vec<String> = existing.iter().map(|p| p.display().to_string()).collect();
        return Err(Error::Usage {
            message: format!("{} file(s) already exist: {}", existing.len(), list.join(", ")),
            help: "pass --force to overwrite them".into(),
        });
    }
    for (rel, contents, executable) in &files {
        write(&spot.join(rel), contents, *executable)?;
    }
    let gitignore = args.dir.join(".gitignore");
    let current = match std::fs::read_to_string(&gitignore) {
        Ok(text) => Some(text),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => return Err(Error::io(&gitignore, "read", e)),
    };
    let ignored = with_state_ignored(current.as_deref());
    if let Some(text) = &ignored {
        std::fs::write(&gitignore, text).map_err(|e| Error::io(&gitignore, "write", e))?;
    }
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "wrote {} files under {}", files.len(), spot.display());
    if ignored.is_some() {
        let _ = writeln!(out, "added {STATE_IGNORE} to {}", gitignore.display());
    }
    let _ = writeln!(out, "next: edit .spot/config.yaml, then `spot validate` and `spot plan`");
    Ok(())
}

/// The `.gitignore` line that keeps `create`'s state files out of the repository.
const STATE_IGNORE: &str = ".spot-state/";

/// Pure: the `.gitignore` text with [`STATE_IGNORE`] appended, or `None` when it already
/// ignores the state folder (in any of the usual spellings).
fn with_state_ignored(current: Option<&str>) -> Option<String> {
    let current = current.unwrap_or_default();
    let spellings = [".spot-state", "/.spot-state"];
    let ignores = |line: &str| {
        let l = line.trim().trim_end_matches("/**").trim_end_matches("/*").trim_end_matches('/');
        spellings.contains(&l)
    };
    if current.lines().any(ignores) {
        return None;
    }
    let separator = if current.is_empty() || current.ends_with('\n') { "" } else { "\n" };
    Some(format!("{current}{separator}{STATE_IGNORE}\n"))
}

fn confirm(existing: &[PathBuf]) -> Result<bool, Error> {
    let stdin = std::io::stdin();
    if !stdin.is_terminal() {
        return Ok(false);
    }
    eprint!("{} file(s) under .spot/ already exist; overwrite them? [y/N] ", existing.len());
    let mut answer = String::new();
    stdin.lock().read_line(&mut answer).map_err(|e| Error::io("stdin", "read", e))?;
    Ok(matches!(answer.trim(), "y" | "Y" | "yes"))
}

fn write(path: &Path, contents: &str, executable: bool) -> Result<(), Error> {
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).map_err(|e| Error::io(parent, "create", e))?;
    }
    std::fs::write(path, contents).map_err(|e| Error::io(path, "write", e))?;
    if executable {
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755))
            .map_err(|e| Error::io(path, "chmod", e))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_state_folder_is_ignored_once() {
        assert_eq!(with_state_ignored(None).as_deref(), Some(".spot-state/\n"));
        assert_eq!(with_state_ignored(Some("target")).as_deref(), Some("target\n.spot-state/\n"));
        assert_eq!(with_state_ignored(Some("target\n")).as_deref(), Some("target\n.spot-state/\n"));
        assert_eq!(with_state_ignored(Some("target\n/.spot-state\n")), None);
        assert_eq!(with_state_ignored(Some("  .spot-state/  \n")), None);
        assert_eq!(with_state_ignored(Some(".spot-state/*\n")), None);
        assert!(with_state_ignored(Some(".spot-state-old/\n")).is_some());
    }
}
