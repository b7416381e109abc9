//! What goes onto the instance: every file of scripts, services, uploads and the build.
//!
//! This module owns the exclude rules and the walk that lists the bundle's files with
//! their destinations, sizes and modes, in a stable order. It reads directory entries and
//! metadata only, never file contents, so listing a large tree costs about what `find`
//! does. It refuses symlinks that lead out of the repository.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use globset::{GlobBuilder, GlobSet, GlobSetBuilder};
use serde::Serialize;

use crate::manifest::types::{Deployment, Origin, ScriptRun, TarballSource};
use crate::manifest::{Diagnostic, Kind};

/// Where script files are placed on the instance.
pub const SCRIPTS_DIR: &str = "/var/lib/spot/scripts";
/// Where unit files are placed on the instance.
pub const UNITS_DIR: &str = "/etc/systemd/system";

/// Exclude patterns with gitignore-like rules (see the README's "Exclude rules").
#[derive(Debug, Clone)]
pub struct Excludes {
    set: GlobSet,
}

impl Excludes {
    /// Compiles `patterns`. A pattern without `/` matches a name at any depth; with a
    /// `/` it is anchored to the source folder; a match on a folder drops all below it.
    pub fn new(patterns: &[String]) -> Result<Self, ExcludeError> {
        let mut builder = GlobSetBuilder::new();
        for pattern in patterns {
            let trimmed = pattern.trim_end_matches('/');
            let (anchored, body) = match trimmed.strip_prefix('/') {
                Some(rest) => (true, rest),
                None => (trimmed.contains('/'), trimmed),
            };
            if body.is_empty() {
                return Err(ExcludeError::Empty);
            }
            let prefix = if anchored { String::new() } else { "**/".to_string() };
            for glob in [format!("{prefix}{body}"), format!("{prefix}{body}/**")] {
                builder.add(GlobBuilder::new(&glob).literal_separator(true).build()?);
            }
        }
        Ok(Self { set: builder.build()? })
    }

    /// Whether `rel` (relative to the source folder, `/`-separated) is excluded.
    pub fn matches(&self, rel: &str) -> bool {
        !rel.is_empty() && self.set.is_match(rel)
    }
}

/// Why an exclude pattern was refused.
#[derive(Debug)]
pub enum ExcludeError {
    /// The pattern is empty (or only `/`).
    Empty,
    Glob(globset::Error),
}

impl From<globset::Error> for ExcludeError {
    fn from(e: globset::Error) -> Self {
        Self::Glob(e)
    }
}

impl std::fmt::Display for ExcludeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Empty => f.write_str("the pattern is empty"),
            Self::Glob(e) => match e.kind() {
                globset::ErrorKind::UnclosedClass => f.write_str("unclosed character class `[`"),
                globset::ErrorKind::UnclosedAlternates => f.write_str("unclosed alternates `{`"),
                kind => write!(f, "{kind}"),
            },
        }
    }
}

/// What part of the manifest an entry comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Part {
    Script,
    Service,
    Upload,
    Tarball,
}

/// One file (or symlink) the instance receives.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Entry {
    pub part: Part,
    /// Absolute path on the instance.
    pub dest: String,
    /// Source relative to the repository root.
    pub source: String,
    #[serde(skip)]
    pub local: PathBuf,
    pub size: u64,
    pub mode: u32,
    /// Target of a symlink shipped as a symlink.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub link: Option<String>,
}

/// The whole bundle's file list.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Listing {
    pub entries: Vec<Entry>,
    pub total_bytes: u64,
}

/// Lists every file the deployment ships. Errors (symlinks out of the repository,
/// unreadable folders) carry the position of the manifest field that named the source.
pub fn list(deployment: &Deployment) -> Result<Listing, Vec<Diagnostic>> {
    let root = &deployment.root;
    let manifest = &deployment.manifest;
    let mut listing = Listing::default();
    let mut errors = Vec::new();

    for script in &manifest.scripts {
        if let ScriptRun::File { path, local } = &script.run {
            push_file(&mut listing, Part::Script, format!("{SCRIPTS_DIR}/{}", script.name), path, local, Some(0o755));
        }
    }
    for service in &manifest.services {
        push_file(&mut listing, Part::Service, format!("{UNITS_DIR}/{}.service", service.name), &service.file, &service.local, Some(0o644));
    }
    for upload in &manifest.uploads {
        if upload.is_dir {
            let excludes = Excludes::new(&upload.exclude).unwrap_or_else(|_| empty_excludes());
            walk(root, &upload.local, &upload.dest, Part::Upload, &excludes, upload.gitignore, upload.permissions, &upload.origin, &mut listing, &mut errors);
        } else {
            push_file(&mut listing, Part::Upload, upload.dest.clone(), &upload.source, &upload.local, upload.permissions);
        }
    }
    if let Some(tarball) = &manifest.tarball {
        match &tarball.source {
            TarballSource::Dir { local, .. } => {
                walk(root, local, &tarball.dest, Part::Tarball, &empty_excludes(), false, None, &tarball.origin, &mut listing, &mut errors);
            }
            TarballSource::Archive { path, local } => {
                let name = path.rsplit('/').next().unwrap_or(path);
                push_file(&mut listing, Part::Tarball, format!("{}/{name}", tarball.dest), path, local, Some(0o644));
            }
            TarballSource::Url { .. } => {}
        }
    }
    if errors.is_empty() { Ok(listing) } else { Err(errors) }
}

fn empty_excludes() -> Excludes {
    Excludes { set: GlobSet::empty() }
}

fn push_file(listing: &mut Listing, part: Part, dest: String, source: &str, local: &Path, mode: Option<u32>) {
    let meta = std::fs::metadata(local).ok();
    let size = meta.as_ref().map_or(0, std::fs::Metadata::len);
    listing.total_bytes += size;
    listing.entries.push(Entry {
        part,
        dest,
        source: source.to_string(),
        local: local.to_path_buf(),
        size,
        mode: mode.unwrap_or_else(|| meta.map_or(0o644, |m| m.permissions().mode() & 0o7777)),
        link: None,
    });
}

#[allow(clippy::too_many_arguments)]
fn walk(
    root: &Path,
    dir: &Path,
    dest: &str,
    part: Part,
    excludes: &Excludes,
    gitignore: bool,
    mode: Option<u32>,
    origin: &Origin,
    listing: &mut Listing,
    errors: &mut Vec<Diagnostic>,
) {
    let filter = excludes.clone();
    let base = dir.to_path_buf();
    let walker = ignore::WalkBuilder::new(dir)
        .standard_filters(false)
        .hidden(false)
        .git_ignore(gitignore)
        .require_git(false)
        .follow_links(false)
        .sort_by_file_name(std::ffi::OsStr::cmp)
        .filter_entry(move |e| {
            let rel = e.path().strip_prefix(&base).map(relative_text).unwrap_or_default();
            !filter.matches(&rel)
        })
        .build();
    let dest = dest.trim_end_matches('/');
    for item in walker {
        let entry = match item {
            Ok(entry) => entry,
            Err(e) => {
                errors.push(Diagnostic::new(Kind::MissingFile, origin.file.clone(), origin.span, format!("cannot read part of the upload: {e}"), "check the folder's permissions"));
                continue;
            }
        };
        let Some(kind) = entry.file_type() else { continue };
        if kind.is_dir() {
            continue;
        }
        let rel = relative_text(entry.path().strip_prefix(dir).unwrap_or(entry.path()));
        let source = crate::manifest::validate::rel_to(root, entry.path());
        let target_dest = if rel.is_empty() { dest.to_string() } else { format!("{dest}/{rel}") };
        if kind.is_symlink() {
            match std::fs::canonicalize(entry.path()) {
                Ok(real) if real.starts_with(root) => {
                    let link = std::fs::read_link(entry.path()).map(|l| l.to_string_lossy().into_owned()).unwrap_or_default();
                    listing.entries.push(Entry { part, dest: target_dest, source, local: entry.path().to_path_buf(), size: 0, mode: 0o777, link: Some(link) });
                }
                Ok(real) => errors.push(Diagnostic::new(
                    Kind::PathEscapes,
                    origin.file.clone(),
                    origin.span,
                    format!("`{source}` is a symlink to `{}`, outside the repository", real.display()),
                    "copy the file into the repository, or exclude the link",
                )),
                Err(_) => errors.push(Diagnostic::new(
                    Kind::MissingFile,
                    origin.file.clone(),
                    origin.span,
                    format!("`{source}` is a symlink to nothing"),
                    "fix or remove the broken symlink, or exclude it",
                )),
            }
            continue;
        }
        push_file(listing, part, target_dest, &source, entry.path(), mode);
    }
}

fn relative_text(path: &Path) -> String {
    path.components().map(|c| c.as_os_str().to_string_lossy()).collect::<Vec<_>>().join("/")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ex(patterns: &[&str]) -> Excludes {
        Excludes::new(&patterns.iter().map(|p| (*p).to_string()).collect::<Vec<_>>()).unwrap()
    }

    #[test]
    fn bare_names_match_at_any_depth_but_not_prefixes() {
        let e = ex(&[".git"]);
        assert!(e.matches(".git"));
        assert!(e.matches(".git/config"));
        assert!(e.matches("sub/.git/HEAD"));
        assert!(!e.matches(".github/workflows/ci.yml"));
        assert!(!e.matches(".gitignore"));
    }

    #[test]
    fn globs_stay_within_a_segment_and_slashes_anchor() {
        let e = ex(&["*.log", "build/tmp"]);
        assert!(e.matches("a.log"));
        assert!(e.matches("deep/dir/b.log"));
        assert!(!e.matches("a.log.txt"));
        assert!(e.matches("build/tmp/x"));
        assert!(!e.matches("src/build/tmp/x"));
        let e = ex(&["docs/**/*.md"]);
        assert!(e.matches("docs/a/b/c.md"));
        assert!(!e.matches("x/docs/a.md"));
    }

    #[test]
    fn bad_globs_and_empty_patterns_are_errors() {
        assert!(Excludes::new(&["[".to_string()]).is_err());
        assert!(Excludes::new(&["/".to_string()]).is_err());
    }
}
