//! What goes onto the instance: every file of scripts, services, uploads and the build.
//!
//! This module owns the walk that lists the bundle's files (applying the uploads'
//! excludes, compiled by validation into the model) with their
//! destinations, sizes and modes in a stable order (directory entries and metadata only,
//! so listing a large tree costs about what `find` does), and [`pack`], which streams
//! that listing as one deterministic tar+gzip: same inputs, same bytes, same sha256,
//! whatever the files' times and owners, in bounded memory. It refuses symlinks that
//! lead out of the repository, and build archives with entries that would escape.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use ignore::gitignore::{Gitignore, GitignoreBuilder};
use serde::Serialize;

use crate::manifest::paths::{Excludes, rel_to};
use crate::manifest::types::{Deployment, Origin, ScriptRun, TarballSource};
use crate::manifest::{Diagnostic, Kind};

/// Where script files are placed on the instance.
pub const SCRIPTS_DIR: &str = "/var/lib/spot/scripts";
/// Where unit files are placed on the instance.
pub const UNITS_DIR: &str = "/etc/systemd/system";

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
///
/// With `measure: false` the walk skips the per-file `stat` (sizes and modes stay 0):
/// `validate` needs only which files exist, `plan` and `create` need their sizes.
pub fn list(deployment: &Deployment, measure: bool) -> Result<Listing, Vec<Diagnostic>> {
    let root = &deployment.root;
    let manifest = &deployment.manifest;
    let mut listing = Listing::default();
    let mut errors = Vec::new();

    for script in &manifest.scripts {
        if let ScriptRun::File { path, local } = &script.run {
            push_file(
                &mut listing,
                Part::Script,
                format!("{SCRIPTS_DIR}/{}", script.name),
                path,
                local,
                Some(0o755),
            );
        }
    }
    for service in &manifest.services {
        push_file(
            &mut listing,
            Part::Service,
            format!("{UNITS_DIR}/{}.service", service.name),
            &service.file,
            &service.local,
            Some(0o644),
        );
    }
    for upload in &manifest.uploads {
        if upload.is_dir {
            let walk = Walk::new(
                root,
                &upload.local,
                &upload.dest,
                Part::Upload,
                &upload.exclude,
                upload.origin.clone(),
                measure,
            )
            .gitignore(upload.gitignore)
            .mode(upload.permissions);
            walk.run(&upload.local, &mut listing, &mut errors);
        } else {
            push_file(
                &mut listing,
                Part::Upload,
                upload.dest.clone(),
                &upload.source,
                &upload.local,
                upload.permissions,
            );
        }
    }
    if let Some(tarball) = &manifest.tarball {
        match &tarball.source {
            TarballSource::Dir { local, .. } => {
                let excludes = Excludes::default();
                Walk::new(
                    root,
                    local,
                    &tarball.dest,
                    Part::Tarball,
                    &excludes,
                    tarball.origin.clone(),
                    measure,
                )
                .run(local, &mut listing, &mut errors);
            }
            TarballSource::Archive { path, local } => {
                if let Err(why) = check_archive(local) {
                    errors.push(Diagnostic::new(
                        Kind::PathEscapes,
                        tarball.origin.file.clone(),
                        tarball.origin.span,
                        format!("`{path}` cannot be shipped: {why}"),
                        "rebuild the archive with paths relative to its top folder (no `..`, no absolute paths)",
                    ));
                }
                let name = path.rsplit('/').next().unwrap_or(path);
                push_file(
                    &mut listing,
                    Part::Tarball,
                    format!("{}/{name}", tarball.dest),
                    path,
                    local,
                    Some(0o644),
                );
            }
            TarballSource::Url { .. } => {}
        }
    }
    if errors.is_empty() { Ok(listing) } else { Err(errors) }
}

/// The bundle as sent: its digest and size.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Packed {
    /// Lower-case hex sha256 of the compressed bytes.
    pub sha256: String,
    pub bytes: u64,
    pub files: usize,
}

/// Counts and hashes what passes through, so the digest needs no second read.
struct Digest<W> {
    inner: W,
    hasher: sha2::Sha256,
    bytes: u64,
}

impl<W: std::io::Write> std::io::Write for Digest<W> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let n = self.inner.write(buf)?;
        sha2::Digest::update(&mut self.hasher, &buf[..n]);
        self.bytes += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.inner.flush()
    }
}

/// Streams `listing` as tar+gzip (at `level`, 0-9) into `out`. Entries keep the
/// listing's order and are named by their destination without the leading `/`; times,
/// owners and names of owners are zeroed, modes come from the listing, symlinks stay
/// symlinks. File contents are copied in chunks, never held whole.
pub fn pack(listing: &Listing, level: u32, out: impl std::io::Write) -> std::io::Result<Packed> {
    let digest = Digest { inner: out, hasher: <sha2::Sha256 as sha2::Digest>::new(), bytes: 0 };
    let gz = flate2::write::GzEncoder::new(digest, flate2::Compression::new(level.min(9)));
    let mut tar = tar::Builder::new(gz);
    tar.mode(tar::HeaderMode::Deterministic);
    tar.follow_symlinks(false);
    for entry in &listing.entries {
        let name = entry.dest.trim_start_matches('/');
        let mut header = tar::Header::new_gnu();
        header.set_mtime(0);
        header.set_uid(0);
        header.set_gid(0);
        // Never a setuid or setgid bit, whatever the checkout's file has.
        header.set_mode(entry.mode & !0o6000);
        if let Some(target) = &entry.link {
            header.set_entry_type(tar::EntryType::Symlink);
            header.set_size(0);
            tar.append_link(&mut header, name, target)?;
        } else {
            let file = std::fs::File::open(&entry.local)?;
            let len = file.metadata()?.len();
            header.set_entry_type(tar::EntryType::Regular);
            header.set_size(len);
            // Never more than the listed size, even if the file grows meanwhile.
            tar.append_data(&mut header, name, std::io::Read::take(file, len))?;
        }
    }
    let gz = tar.into_inner()?;
    let mut digest = gz.finish()?;
    std::io::Write::flush(&mut digest)?;
    let hash = sha2::Digest::finalize(digest.hasher);
    Ok(Packed {
        sha256: hash.iter().map(|b| format!("{b:02x}")).collect(),
        bytes: digest.bytes,
        files: listing.entries.len(),
    })
}

/// Checks a build archive (`.tar.gz`) before it is shipped: every entry must stay inside
/// the folder it is unpacked into. Returns the first offending entry's name.
pub fn check_archive(path: &Path) -> Result<(), String> {
    let file = std::fs::File::open(path).map_err(|e| format!("cannot read it: {e}"))?;
    let mut archive = tar::Archive::new(flate2::read::GzDecoder::new(std::io::BufReader::new(file)));
    let entries = archive.entries().map_err(|e| format!("not a tar.gz: {e}"))?;
    // Every symlink the archive makes, by its path: an entry below one would be written
    // wherever it points (`a -> /etc`, then `a/passwd`).
    let mut links: std::collections::HashSet<String> = std::collections::HashSet::new();
    // A path's named parts (`./a//b` is `a/b`).
    let parts = |path: &str| -> Vec<String> {
        path.split('/').filter(|p| !p.is_empty() && *p != ".").map(String::from).collect()
    };
    let through = |links: &std::collections::HashSet<String>, path: &str| {
        let parts = parts(path);
        (1..parts.len()).map(|n| parts[..n].join("/")).find(|prefix| links.contains(prefix))
    };
    for entry in entries {
        let entry = entry.map_err(|e| format!("not a tar.gz: {e}"))?;
        let raw = entry.path_bytes();
        let name = String::from_utf8_lossy(&raw).into_owned();
        if escapes(&name) {
            return Err(format!("its entry `{name}` would be written outside the destination"));
        }
        // As the instance refuses it (and so that no `..` walks round the check below).
        if name.split('/').any(|part| part == "..") {
            return Err(format!("its entry `{name}` has a `..` in its name"));
        }
        if let Some(link) = through(&links, &name) {
            return Err(format!("its entry `{name}` passes through the symlink `{link}` it makes"));
        }
        let kind = entry.header().entry_type();
        if kind.is_hard_link()
            && let Some(link) =
                entry.link_name_bytes().and_then(|t| through(&links, &String::from_utf8_lossy(&t)))
        {
            return Err(format!("its hard link `{name}` passes through the symlink `{link}` it makes"));
        }
        if kind.is_symlink() {
            links.insert(parts(&name).join("/"));
        }
        if kind.is_symlink() || kind.is_hard_link() {
            let target =
                entry.link_name_bytes().map(|t| String::from_utf8_lossy(&t).into_owned()).unwrap_or_default();
            // A link is resolved from its own folder (hard links from the root).
            let parent = if kind.is_symlink() { name.rsplit_once('/').map_or("", |(p, _)| p) } else { "" };
            let resolved = if parent.is_empty() { target.clone() } else { format!("{parent}/{target}") };
            if target.starts_with('/') || escapes(&resolved) {
                return Err(format!("its link `{name}` -> `{target}` points outside the destination"));
            }
        }
    }
    Ok(())
}

/// Whether a relative path climbs above its starting folder (or is absolute).
fn escapes(path: &str) -> bool {
    if path.starts_with('/') {
        return true;
    }
    let mut depth: i64 = 0;
    for part in path.split('/') {
        match part {
            "" | "." => {}
            ".." => {
                depth -= 1;
                if depth < 0 {
                    return true;
                }
            }
            _ => depth += 1,
        }
    }
    false
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

/// One folder source being listed: where it goes and how it is filtered.
struct Walk<'a> {
    /// Repository root, canonical: symlinks must resolve inside it.
    root: &'a Path,
    /// The source folder relative to the root, `/`-separated.
    source_rel: String,
    dest: &'a str,
    part: Part,
    excludes: &'a Excludes,
    gitignore: bool,
    mode: Option<u32>,
    origin: Origin,
    measure: bool,
}

/// What one subtree contributed; merged in name order.
#[derive(Default)]
struct Subtree {
    entries: Vec<Entry>,
    bytes: u64,
    errors: Vec<Diagnostic>,
}

impl<'a> Walk<'a> {
    fn new(
        root: &'a Path,
        dir: &Path,
        dest: &'a str,
        part: Part,
        excludes: &'a Excludes,
        origin: Origin,
        measure: bool,
    ) -> Self {
        Self {
            root,
            source_rel: rel_to(root, dir),
            dest: dest.trim_end_matches('/'),
            part,
            excludes,
            gitignore: false,
            mode: None,
            origin,
            measure,
        }
    }

    fn gitignore(mut self, on: bool) -> Self {
        self.gitignore = on;
        self
    }

    fn mode(mut self, mode: Option<u32>) -> Self {
        self.mode = mode;
        self
    }

    /// Lists `dir` depth-first in name order. The top level's folders are walked on all
    /// cores (a large build tree is mostly `stat` calls, which scale), then merged back
    /// in order, so the result does not depend on scheduling.
    fn run(&self, dir: &Path, listing: &mut Listing, errors: &mut Vec<Diagnostic>) {
        let mut ignores = Vec::new();
        self.push_gitignore(dir, &mut ignores);
        let Some(entries) = self.read(dir, "", errors) else {
            return;
        };
        let threads = std::thread::available_parallelism().map_or(1, usize::from).min(8);
        let next = std::sync::atomic::AtomicUsize::new(0);
        let mut results: Vec<(usize, Subtree)> = std::thread::scope(|scope| {
            let workers: Vec<_> = (0..threads)
                .map(|_| {
                    let (entries, next, ignores) = (&entries, &next, ignores.clone());
                    scope.spawn(move || {
                        let mut ignores = ignores;
                        let mut done = Vec::new();
                        loop {
                            let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                            let Some(entry) = entries.get(i) else { break };
                            let mut found = Subtree::default();
                            self.entry(entry, "", &mut ignores, &mut found);
                            done.push((i, found));
                        }
                        done
                    })
                })
                .collect();
            workers.into_iter().flat_map(|w| w.join().unwrap_or_default()).collect()
        });
        results.sort_by_key(|(i, _)| *i);
        for (_, found) in results {
            listing.entries.extend(found.entries);
            listing.total_bytes += found.bytes;
            errors.extend(found.errors);
        }
    }

    fn push_gitignore(&self, dir: &Path, ignores: &mut Vec<Gitignore>) -> bool {
        if !self.gitignore || !dir.join(".gitignore").is_file() {
            return false;
        }
        let mut builder = GitignoreBuilder::new(dir);
        builder.add(dir.join(".gitignore"));
        match builder.build() {
            Ok(matcher) => {
                ignores.push(matcher);
                true
            }
            Err(_) => false,
        }
    }

    /// A folder's entries, sorted by name.
    fn read(&self, dir: &Path, rel: &str, errors: &mut Vec<Diagnostic>) -> Option<Vec<std::fs::DirEntry>> {
        match std::fs::read_dir(dir) {
            Ok(read) => {
                let mut entries: Vec<std::fs::DirEntry> = read.filter_map(Result::ok).collect();
                entries.sort_by_key(std::fs::DirEntry::file_name);
                Some(entries)
            }
            Err(e) => {
                errors.push(self.error(
                    Kind::MissingFile,
                    format!("cannot read `{}`: {e}", self.source(rel)),
                    "check the folder's permissions",
                ));
                None
            }
        }
    }

    /// One directory entry at `parent` (relative to the source) and everything below it.
    /// Entry types come from the directory itself; files are stat'ed relative to their
    /// folder, so the cost stays close to `find`'s.
    fn entry(
        &self,
        entry: &std::fs::DirEntry,
        parent: &str,
        ignores: &mut Vec<Gitignore>,
        found: &mut Subtree,
    ) {
        let name = entry.file_name();
        let name = name.to_string_lossy();
        let rel = if parent.is_empty() { name.to_string() } else { format!("{parent}/{name}") };
        let Ok(kind) = entry.file_type() else { return };
        // A checkout's `.git` is never shipped, whatever the excludes say: it holds the
        // workflow's credentials (actions/checkout keeps the token in `.git/config`).
        if name == ".git"
            || self.excludes.matches(&rel)
            || (self.gitignore && is_ignored(ignores, &entry.path(), kind.is_dir()))
        {
            return;
        }
        if kind.is_dir() {
            let path = entry.path();
            let pushed = self.push_gitignore(&path, ignores);
            if let Some(children) = self.read(&path, &rel, &mut found.errors) {
                for child in &children {
                    self.entry(child, &rel, ignores, found);
                }
            }
            if pushed {
                ignores.pop();
            }
        } else if kind.is_symlink() {
            self.symlink(&entry.path(), &rel, found);
        } else {
            let meta = if self.measure { entry.metadata().ok() } else { None };
            let size = meta.as_ref().map_or(0, std::fs::Metadata::len);
            found.bytes += size;
            found.entries.push(Entry {
                part: self.part,
                dest: format!("{}/{rel}", self.dest),
                source: self.source(&rel),
                local: entry.path(),
                size,
                mode: self.mode.unwrap_or_else(|| meta.map_or(0, |m| m.permissions().mode() & 0o7777)),
                link: None,
            });
        }
    }

    fn symlink(&self, path: &Path, rel: &str, found: &mut Subtree) {
        let source = self.source(rel);
        match std::fs::canonicalize(path) {
            Ok(real) if real.starts_with(self.root) => {
                let link =
                    std::fs::read_link(path).map(|l| l.to_string_lossy().into_owned()).unwrap_or_default();
                found.entries.push(Entry {
                    part: self.part,
                    dest: format!("{}/{rel}", self.dest),
                    source,
                    local: path.to_path_buf(),
                    size: 0,
                    mode: 0o777,
                    link: Some(link),
                });
            }
            Ok(real) => found.errors.push(self.error(
                Kind::PathEscapes,
                format!("`{source}` is a symlink to `{}`, outside the repository", real.display()),
                "copy the file into the repository, or exclude the link",
            )),
            Err(_) => found.errors.push(self.error(
                Kind::MissingFile,
                format!("`{source}` is a symlink to nothing"),
                "fix or remove the broken symlink, or exclude it",
            )),
        }
    }

    fn source(&self, rel: &str) -> String {
        match (self.source_rel.as_str(), rel) {
            (base, "") => base.to_string(),
            (".", rel) => rel.to_string(),
            (base, rel) => format!("{base}/{rel}"),
        }
    }

    fn error(&self, kind: Kind, message: String, help: &str) -> Diagnostic {
        Diagnostic::new(kind, self.origin.file.clone(), self.origin.span, message, help)
    }
}

/// gitignore semantics across nested `.gitignore` files: the innermost file that has an
/// opinion (ignore or `!` re-include) decides.
fn is_ignored(ignores: &[Gitignore], path: &Path, is_dir: bool) -> bool {
    for matcher in ignores.iter().rev() {
        match matcher.matched(path, is_dir) {
            ignore::Match::Ignore(_) => return true,
            ignore::Match::Whitelist(_) => return false,
            ignore::Match::None => {}
        }
    }
    false
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
    fn escaping_paths_are_recognised() {
        for bad in ["../x", "a/../../x", "/etc/passwd", "a/./../.."] {
            assert!(escapes(bad), "{bad}");
        }
        for ok in ["a/b", "a/../b", "./a", "a/b/../../c"] {
            assert!(!escapes(ok), "{ok}");
        }
    }

    #[test]
    fn bad_globs_and_empty_patterns_are_errors() {
        assert!(Excludes::new(&["[".to_string()]).is_err());
        assert!(Excludes::new(&["/".to_string()]).is_err());
    }
}
