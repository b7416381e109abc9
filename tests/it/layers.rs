//! The crate's structure, held against the layer order the README writes down: every
//! import (`use crate::` lines, inline `crate::`/`super::`/`self::` paths, a parent's use
//! of its child modules, `spot_deployer::` in the binary) is read from `src/`, resolved to
//! the file it names (following `pub use` re-exports), and checked: no file imports one
//! that (through any chain) imports it back, and no module imports one on its own or a
//! higher floor.

use std::collections::{BTreeMap, BTreeSet};

use crate::common::repo;

/// A module path (`["manifest", "yaml"]`) of each source file, keyed by its path.
type Tree = BTreeMap<String, Vec<String>>;

fn module_path(file: &str) -> Vec<String> {
    let rel = file.strip_prefix("src/").unwrap_or(file).trim_end_matches(".rs");
    let mut parts: Vec<String> = rel.split('/').map(String::from).collect();
    if parts.last().is_some_and(|p| p == "mod") {
        parts.pop();
    }
    match parts.as_slice() {
        [only] if only == "lib" => Vec::new(),
        [only] if only == "main" => vec!["<bin>".into()],
        _ => parts,
    }
}

/// The text with comments, strings and `#[cfg(test)] mod tests { .. }` removed: what
/// is left can only name modules in code that ships.
fn code_of(text: &str) -> String {
    let code = without_literals(text);
    let Some(at) = code.find("#[cfg(test)]\nmod tests {") else {
        return code;
    };
    let open = at + code[at..].find('{').unwrap_or(0);
    let mut depth = 0;
    for (k, c) in code[open..].char_indices() {
        match c {
            '{' => depth += 1,
            '}' => depth -= 1,
            _ => {}
        }
        if depth == 0 {
            return format!("{}{}", &code[..at], &code[open + k + 1..]);
        }
    }
    code[..at].to_string()
}

fn without_literals(text: &str) -> String {
    let chars: Vec<char> = text.chars().collect();
    let mut out = String::with_capacity(text.len());
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        let next = chars.get(i + 1).copied();
        if c == '/' && next == Some('/') {
            while i < chars.len() && chars[i] != '\n' {
                i += 1;
            }
        } else if c == '/' && next == Some('*') {
            i += 2;
            while i + 1 < chars.len() && !(chars[i] == '*' && chars[i + 1] == '/') {
                i += 1;
            }
            i += 2;
        } else if c == 'r' && (next == Some('#') || next == Some('"')) && !ident(chars.get(i.wrapping_sub(1)))
        {
            let hashes = chars[i + 1..].iter().take_while(|&&h| h == '#').count();
            if chars.get(i + 1 + hashes) == Some(&'"') {
                i += 2 + hashes;
                let close: Vec<char> = std::iter::once('"').chain(std::iter::repeat_n('#', hashes)).collect();
                while i < chars.len() && chars[i..].iter().take(close.len()).ne(close.iter()) {
                    i += 1;
                }
                i += close.len();
                out.push_str("\"\"");
            } else {
                out.push(c);
                i += 1;
            }
        } else if c == '"' {
            i += 1;
            while i < chars.len() && chars[i] != '"' {
                i += if chars[i] == '\\' { 2 } else { 1 };
            }
            i += 1;
            out.push_str("\"\"");
        } else if c == '\'' && (next == Some('\\') || chars.get(i + 2) == Some(&'\'')) {
            // A char literal ('"', '\n'), not a lifetime.
            i += 1;
            while i < chars.len() && chars[i] != '\'' {
                i += if chars[i] == '\\' { 2 } else { 1 };
            }
            i += 1;
            out.push_str("' '");
        } else {
            out.push(c);
            i += 1;
        }
    }
    out
}

fn ident(c: Option<&char>) -> bool {
    c.is_some_and(|c| c.is_alphanumeric() || *c == '_')
}

/// Every path the code names, as segments (`crate`, `super`, `self`, or a child's name
/// first), `use` groups expanded.
fn paths(code: &str) -> Vec<Vec<String>> {
    let mut found = use_items(code);
    // Inline paths: a word followed by `::`.
    let chars: Vec<char> = code.chars().collect();
    let mut i = 0;
    while i < chars.len() {
        let starts = (chars[i].is_alphabetic() || chars[i] == '_' || chars[i] == '$')
            && !ident(i.checked_sub(1).and_then(|j| chars.get(j)))
            && !(i >= 2 && chars[i - 1] == ':' && chars[i - 2] == ':');
        if !starts {
            i += 1;
            continue;
        }
        let mut segments = Vec::new();
        let mut j = i;
        loop {
            let start = j;
            while j < chars.len() && (ident(chars.get(j)) || (j == start && chars[j] == '$')) {
                j += 1;
            }
            segments.push(chars[start..j].iter().collect::<String>());
            if chars.get(j) == Some(&':') && chars.get(j + 1) == Some(&':') && ident(chars.get(j + 2)) {
                j += 2;
            } else {
                break;
            }
        }
        if segments.len() > 1 {
            found.push(segments);
        }
        i = j.max(i + 1);
    }
    found
}

/// The paths of every `use` item (any visibility, anywhere in the code), groups expanded.
fn use_items(code: &str) -> Vec<Vec<String>> {
    let mut found = Vec::new();
    let mut rest = code;
    while let Some(at) = rest.find("use ") {
        let before = rest[..at].chars().last();
        rest = &rest[at + 4..];
        if ident(before.as_ref()) {
            continue;
        }
        let end = rest.find(';').unwrap_or(rest.len());
        expand(&[], &rest[..end], &mut found);
        rest = &rest[end..];
    }
    found
}

/// The name a `use` path brings into scope, and the path it stands for.
fn brought(item: &[String]) -> Option<(&str, &[String])> {
    match item {
        [.., last] if last.starts_with("as:") => Some((&last[3..], &item[..item.len() - 1])),
        [.., name, last] if last == "self" => Some((name.as_str(), &item[..item.len() - 1])),
        [.., last] if last != "*" => Some((last.as_str(), item)),
        _ => None,
    }
}

/// `a::{b, c::{d, e}}` into `a::b`, `a::c::d`, `a::c::e`.
fn expand(prefix: &[String], text: &str, out: &mut Vec<Vec<String>>) {
    let text = text.trim();
    let (head, group) = match text.find('{') {
        Some(open) => (&text[..open], Some(&text[open + 1..text.rfind('}').unwrap_or(text.len())])),
        None => (text, None),
    };
    let mut base = prefix.to_vec();
    for segment in head.split("::") {
        // `x as y` stays `x`, followed by a marker of the name it is brought in as.
        let mut parts = segment.split(" as ");
        let name = parts.next().unwrap_or("").trim();
        if !name.is_empty() {
            base.push(name.to_string());
        }
        if let Some(alias) = parts.next() {
            base.push(format!("as:{}", alias.trim()));
        }
    }
    let Some(group) = group else {
        out.push(base);
        return;
    };
    let mut depth = 0;
    let mut start = 0;
    for (k, c) in group.char_indices() {
        match c {
            '{' => depth += 1,
            '}' => depth -= 1,
            ',' if depth == 0 => {
                expand(&base, &group[start..k], out);
                start = k + 1;
            }
            _ => {}
        }
    }
    if !group[start..].trim().is_empty() {
        expand(&base, &group[start..], out);
    }
}

/// The crate as read from `files` (path -> text).
struct Crate {
    tree: Tree,
    code: BTreeMap<String, String>,
}

impl Crate {
    fn new(files: &BTreeMap<String, String>) -> Self {
        let tree = files.keys().map(|f| (f.clone(), module_path(f))).collect();
        let code = files.iter().map(|(f, t)| (f.clone(), code_of(t))).collect();
        Self { tree, code }
    }

    fn file_of(&self, module: &[String]) -> Option<&String> {
        self.tree.iter().find(|(_, m)| m.as_slice() == module).map(|(f, _)| f)
    }

    /// The module `file` is, and the one its `super` names.
    fn here(&self, file: &str) -> Vec<String> {
        let m = self.tree[file].clone();
        if m.first().is_some_and(|s| s == "<bin>") { Vec::new() } else { m }
    }

    /// The file a path names, from `file`; re-exports (`pub use`) followed.
    fn resolve(&self, file: &str, path: &[String], depth: usize) -> Option<String> {
        let here = self.here(file);
        let is_bin = self.tree[file].first().is_some_and(|s| s == "<bin>");
        let mut absolute: Vec<String> = match path.first().map(String::as_str) {
            Some("crate" | "$crate") => Vec::new(),
            Some("spot_deployer") if is_bin => Vec::new(),
            Some("self") => here.clone(),
            Some("super") => here[..here.len().saturating_sub(1)].to_vec(),
            Some(first) => {
                // A child module of this one, named bare.
                let mut child = here.clone();
                child.push(first.to_string());
                if self.file_of(&child).is_some() {
                    let mut abs = here.clone();
                    abs.extend(path.iter().cloned());
                    return self.longest(&abs, depth);
                }
                // A name a `use` brought in (`use crate::ops::{self}`, then `ops::up::..`).
                if depth > 6 || path.len() < 2 {
                    return None;
                }
                let item = use_items(&self.code[file])
                    .into_iter()
                    .find(|item| item.len() > 1 && brought(item).is_some_and(|(name, _)| name == first))?;
                let (_, stands_for) = brought(&item)?;
                let mut whole = stands_for.to_vec();
                whole.extend(path[1..].iter().cloned());
                return self.resolve(file, &whole, depth + 1);
            }
            None => return None,
        };
        let mut rest = &path[1..];
        while rest.first().is_some_and(|s| s == "super") {
            absolute.pop();
            rest = &rest[1..];
        }
        absolute.extend(rest.iter().cloned());
        self.longest(&absolute, depth)
    }

    fn longest(&self, absolute: &[String], depth: usize) -> Option<String> {
        for n in (0..=absolute.len()).rev() {
            let Some(file) = self.file_of(&absolute[..n]) else {
                continue;
            };
            // A name that file hands on from elsewhere: the import is of where it lives.
            if let Some(name) = absolute.get(n)
                && depth < 4
                && let Some(target) = self.reexport(file, name, depth)
            {
                return Some(target);
            }
            return Some(file.clone());
        }
        None
    }

    /// Where a name that `file` brings in by a `use` (`pub use`, `pub(crate) use`) lives.
    fn reexport(&self, file: &str, name: &str, depth: usize) -> Option<String> {
        let item = use_items(&self.code[file])
            .into_iter()
            .find(|item| item.len() > 1 && brought(item).is_some_and(|(n, _)| n == name))?;
        let (_, stands_for) = brought(&item)?;
        self.resolve(file, stands_for, depth + 1)
    }

    /// file -> the files it imports.
    fn imports(&self) -> BTreeMap<String, BTreeSet<String>> {
        let mut graph = BTreeMap::new();
        for (file, code) in &self.code {
            let targets: BTreeSet<String> =
                paths(code).iter().filter_map(|p| self.resolve(file, p, 0)).filter(|t| t != file).collect();
            graph.insert(file.clone(), targets);
        }
        graph
    }
}

/// The circles of a graph: each as the files of one strongly connected part.
fn circles(graph: &BTreeMap<String, BTreeSet<String>>) -> Vec<Vec<String>> {
    // Two files are in one circle when each reaches the other.
    let reach = |from: &String| -> BTreeSet<String> {
        let mut seen = BTreeSet::new();
        let mut todo = vec![from.clone()];
        while let Some(f) = todo.pop() {
            for t in graph.get(&f).into_iter().flatten() {
                if seen.insert(t.clone()) {
                    todo.push(t.clone());
                }
            }
        }
        seen
    };
    let reaches: BTreeMap<&String, BTreeSet<String>> = graph.keys().map(|f| (f, reach(f))).collect();
    let mut done = BTreeSet::new();
    let mut out = Vec::new();
    for f in graph.keys() {
        if done.contains(f) || !reaches[f].contains(f) {
            continue;
        }
        let circle: Vec<String> =
            graph.keys().filter(|g| reaches[f].contains(*g) && reaches[*g].contains(f)).cloned().collect();
        done.extend(circle.iter().cloned());
        out.push(circle);
    }
    out
}

/// The floors the README writes (between `<!-- layers -->` markers): module -> floor.
fn floors(readme: &str) -> BTreeMap<String, usize> {
    let start = readme.find("<!-- layers -->").expect("README has no <!-- layers --> list");
    let end = readme[start..].find("<!-- /layers -->").expect("the layers list is not closed") + start;
    let mut floors = BTreeMap::new();
    for line in readme[start..end].lines() {
        let Some((number, rest)) = line.trim().split_once(". ") else { continue };
        let Ok(floor) = number.parse::<usize>() else { continue };
        for name in rest.split('`').skip(1).step_by(2) {
            floors.insert(name.to_string(), floor);
        }
    }
    floors
}

fn top(module: &[String]) -> String {
    module.first().map_or_else(|| "lib".to_string(), |m| if m == "<bin>" { "main".into() } else { m.clone() })
}

/// Everything wrong with the crate's structure, in words.
fn problems(files: &BTreeMap<String, String>, floors: &BTreeMap<String, usize>) -> Vec<String> {
    let krate = Crate::new(files);
    let graph = krate.imports();
    let mut out: Vec<String> =
        circles(&graph).into_iter().map(|c| format!("circle: {}", c.join(" <-> "))).collect();
    for (from, targets) in &graph {
        let a = top(&krate.tree[from]);
        let Some(&floor_a) = floors.get(&a) else {
            out.push(format!("{from}: module `{a}` has no floor in the README's layers"));
            continue;
        };
        for to in targets {
            let b = top(&krate.tree[to]);
            if a == b {
                continue;
            }
            match floors.get(&b) {
                Some(&floor_b) if floor_b < floor_a => {}
                Some(&floor_b) => {
                    out.push(format!(
                        "{from} (`{a}`, floor {floor_a}) imports {to} (`{b}`, floor {floor_b})"
                    ));
                }
                None => out.push(format!("{to}: module `{b}` has no floor in the README's layers")),
            }
        }
    }
    out
}

fn source_files() -> BTreeMap<String, String> {
    let root = repo();
    let mut files = BTreeMap::new();
    let mut todo = vec![root.join("src")];
    while let Some(dir) = todo.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                todo.push(path);
            } else if path.extension().is_some_and(|e| e == "rs") {
                let rel = path.strip_prefix(&root).unwrap().to_string_lossy().into_owned();
                files.insert(rel, std::fs::read_to_string(&path).unwrap());
            }
        }
    }
    files
}

#[test]
fn imports_run_one_way_down_the_layers_the_readme_writes() {
    let readme = std::fs::read_to_string(repo().join("README.md")).unwrap();
    let files = source_files();
    let krate = Crate::new(&files);
    let graph = krate.imports();
    // The reader sees the arrows that matter: the proof it is not reading nothing.
    for (from, to) in [
        ("src/bundle.rs", "src/manifest/paths.rs"),
        ("src/manifest/diagnostic.rs", "src/manifest/span.rs"),
        ("src/commands/create.rs", "src/ops/up.rs"),
        ("src/main.rs", "src/error.rs"),
        ("src/cloud_init.rs", "src/cloud_init/expiry.rs"),
    ] {
        assert!(graph[from].contains(to), "{from} -> {to} not read: {:?}", graph[from]);
    }
    let problems = problems(&files, &floors(&readme));
    assert!(problems.is_empty(), "the structure breaks the layers:\n{}", problems.join("\n"));
}

#[test]
fn the_layer_check_finds_a_circle_and_an_import_that_runs_up() {
    let files: BTreeMap<String, String> = [
        ("src/lib.rs", "pub mod low;\npub mod mid;\npub mod high;\n"),
        // A circle inside `low` (through a bare child path and `super::`), and an arrow up.
        ("src/low/mod.rs", "mod a;\npub fn f() { a::g(); }\n"),
        (
            "src/low/a.rs",
            "use super::f;\n// crate::high::h in a comment is no import\npub fn g() { crate::high::h(); }\n",
        ),
        ("src/mid.rs", "use crate::low::{self, a::{g}};\npub fn m() { g(); }\n"),
        ("src/other.rs", "use crate::low as below;\npub(crate) use crate::low::a::g as again;\npub fn o() { below::a::g(); }\n"),
        ("src/high.rs", "pub fn h() { let _ = \"crate::mid::nothing\"; }\n"),
    ]
    .into_iter()
    .map(|(f, t)| (f.to_string(), t.to_string()))
    .collect();
    let floors: BTreeMap<String, usize> = [("lib", 4), ("high", 3), ("mid", 2), ("other", 2), ("low", 1)]
        .into_iter()
        .map(|(m, f)| (m.to_string(), f))
        .collect();
    // A path through a module a `use` renamed reaches the file it names.
    let graph = Crate::new(&files).imports();
    assert!(graph["src/other.rs"].contains("src/low/a.rs"), "{graph:?}");
    let found = problems(&files, &floors);
    assert!(found.iter().any(|p| p == "circle: src/low/a.rs <-> src/low/mod.rs"), "{found:?}");
    assert!(
        found.iter().any(|p| p.starts_with("src/low/a.rs (`low`, floor 1) imports src/high.rs")),
        "{found:?}"
    );
    assert_eq!(found.len(), 2, "the comment, the string or the downward imports counted: {found:?}");
}

#[test]
fn the_process_builds_one_runtime_in_one_place() {
    let files = source_files();
    let builders: Vec<&String> =
        files.iter().filter(|(_, text)| code_of(text).contains("runtime::Builder")).map(|(f, _)| f).collect();
    assert_eq!(builders, ["src/commands/mod.rs"], "tokio runtimes are built in: {builders:?}");
    let callers: Vec<&String> =
        files.iter().filter(|(_, text)| code_of(text).contains("runtime()")).map(|(f, _)| f).collect();
    assert_eq!(callers, ["src/commands/mod.rs", "src/lib.rs"], "the runtime is built from: {callers:?}");
    let lib = code_of(&files["src/lib.rs"]);
    assert_eq!(lib.matches("runtime()").count(), 1, "lib.rs builds the runtime more than once");
    // A second runtime in disguise: a current-thread one, or #[tokio::main].
    assert!(
        files
            .values()
            .all(|t| !code_of(t).contains("new_current_thread") && !code_of(t).contains("tokio::main"))
    );
}
