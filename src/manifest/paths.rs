//! Path rules of the model: where a file stands relative to the repository (and reading
//! one within a bound), and which files an upload's `exclude` patterns drop. Validation compiles them once; the bundle
//! applies them; neither calls into the other.

use std::path::{Component, Path};

use globset::{GlobBuilder, GlobSet, GlobSetBuilder};

/// `path` relative to `root`, `/`-separated, or `path` itself when outside.
pub fn rel_to(root: &Path, path: &Path) -> String {
    let rel = path.strip_prefix(root).unwrap_or(path);
    let parts: Vec<String> = rel
        .components()
        .filter(|c| !matches!(c, Component::CurDir))
        .map(|c| c.as_os_str().to_string_lossy().into_owned())
        .collect();
    if parts.is_empty() { ".".into() } else { parts.join("/") }
}

/// Where a path inside the repository really is: what `local` (under `root`, which is
/// canonical) resolves to, every symlink followed. `Err(Some(real))`: it leads outside
/// the repository; `Err(None)`: it leads nowhere. The manifest's paths and the `tarball`
/// flag and input all go through this one rule.
pub fn real_inside(root: &Path, local: &Path) -> Result<std::path::PathBuf, Option<std::path::PathBuf>> {
    match std::fs::canonicalize(local) {
        Ok(real) if real.starts_with(root) => Ok(real),
        Ok(real) => Err(Some(real)),
        Err(_) => Err(None),
    }
}

/// Reads at most `limit` bytes of `path` (and one more, to tell): `Ok(None)` when the
/// file is larger. A file from the repository (a pull request's) is never read whole.
pub fn read_bounded(path: &Path, limit: u64) -> std::io::Result<Option<Vec<u8>>> {
    let file = std::fs::File::open(path)?;
    let mut bytes = Vec::new();
    std::io::Read::read_to_end(&mut std::io::Read::take(file, limit + 1), &mut bytes)?;
    Ok((bytes.len() as u64 <= limit).then_some(bytes))
}

/// Pure: is `real` (a resolved path) a checkout's `.git` or inside one? Never shipped: it
/// holds the workflow's credentials.
pub fn in_git_dir(real: &Path) -> bool {
    real.components().any(|c| c.as_os_str() == ".git")
}

/// Exclude patterns with gitignore-like rules (see the README's "Exclude rules").
/// Equal and serialized as the patterns they were compiled from.
#[derive(Debug, Clone, Default)]
pub struct Excludes {
    patterns: Vec<String>,
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
        Ok(Self { patterns: patterns.to_vec(), set: builder.build()? })
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

impl PartialEq for Excludes {
    fn eq(&self, other: &Self) -> bool {
        self.patterns == other.patterns
    }
}

impl serde::Serialize for Excludes {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        self.patterns.serialize(serializer)
    }
}
