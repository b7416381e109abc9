//! Located errors about a deployment description, and their three renderings.
//!
//! A [`Diagnostic`] names its kind, file, line, column, what is wrong and what to do.
//! [`Report`] collects all of them (never just the first) together with the text of
//! each file, so the human rendering can show the offending line with a caret. This
//! module only formats; it decides nothing about what is valid.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io::{self, Write};

use serde::Serialize;

use super::span::Span;

/// Every kind of problem `validate` can report. The kebab-case code is stable: tests,
/// JSON output and annotations use it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Kind {
    /// No `.spot/` and no `deployment/` folder, or one of their required files missing.
    NoDeployment,
    /// The YAML text itself is malformed (includes duplicate keys).
    Syntax,
    /// A key the schema does not know.
    UnknownKey,
    /// A key the original spot deployer documented that spot does not implement.
    UnsupportedKey,
    /// A value of the wrong YAML type.
    WrongType,
    /// A required field is absent.
    MissingField,
    /// A value of the right type that is not allowed.
    InvalidValue,
    /// A referenced file or folder does not exist.
    MissingFile,
    /// A path that leaves the repository (`..`, absolute, or a symlink pointing out).
    PathEscapes,
    /// An exclude pattern that is not a valid glob.
    BadGlob,
    /// A script that is empty or lacks a `#!` line.
    BadScript,
    /// A systemd unit without the sections and keys a service needs.
    BadUnit,
    /// A service dependency on a service the manifest does not define.
    UnknownDependency,
    /// Services that depend on each other in a circle.
    DependencyCycle,
    /// Two entries with the same name or `order`.
    Duplicate,
    /// Not an AWS region name.
    UnknownRegion,
    /// Not a well-formed EC2 instance type.
    BadInstanceType,
    /// A count outside 1..=1000.
    CountOutOfRange,
    /// A time to live that does not parse or is out of bounds.
    BadTtl,
    /// A tag key or value that AWS would refuse, or that uses a reserved prefix.
    BadTag,
    /// The rendered user-data does not fit EC2's 16 KB limit even gzipped.
    UserDataTooLarge,
}

impl Kind {
    /// Every kind, for tests that check each has a fixture.
    pub const ALL: [Kind; 21] = [
        Kind::NoDeployment,
        Kind::Syntax,
        Kind::UnknownKey,
        Kind::UnsupportedKey,
        Kind::WrongType,
        Kind::MissingField,
        Kind::InvalidValue,
        Kind::MissingFile,
        Kind::PathEscapes,
        Kind::BadGlob,
        Kind::BadScript,
        Kind::BadUnit,
        Kind::UnknownDependency,
        Kind::DependencyCycle,
        Kind::Duplicate,
        Kind::UnknownRegion,
        Kind::BadInstanceType,
        Kind::CountOutOfRange,
        Kind::BadTtl,
        Kind::BadTag,
        Kind::UserDataTooLarge,
    ];

    pub fn code(self) -> &'static str {
        match self {
            Kind::NoDeployment => "no-deployment",
            Kind::Syntax => "syntax",
            Kind::UnknownKey => "unknown-key",
            Kind::UnsupportedKey => "unsupported-key",
            Kind::WrongType => "wrong-type",
            Kind::MissingField => "missing-field",
            Kind::InvalidValue => "invalid-value",
            Kind::MissingFile => "missing-file",
            Kind::PathEscapes => "path-escapes",
            Kind::BadGlob => "bad-glob",
            Kind::BadScript => "bad-script",
            Kind::BadUnit => "bad-unit",
            Kind::UnknownDependency => "unknown-dependency",
            Kind::DependencyCycle => "dependency-cycle",
            Kind::Duplicate => "duplicate",
            Kind::UnknownRegion => "unknown-region",
            Kind::BadInstanceType => "bad-instance-type",
            Kind::CountOutOfRange => "count-out-of-range",
            Kind::BadTtl => "bad-ttl",
            Kind::BadTag => "bad-tag",
            Kind::UserDataTooLarge => "user-data-too-large",
        }
    }
}

/// One problem, located.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Diagnostic {
    pub kind: Kind,
    /// Path relative to the deployment's root directory, with `/` separators.
    pub file: String,
    #[serde(skip)]
    pub span: Span,
    pub message: String,
    pub help: String,
}

impl Diagnostic {
    pub fn new(
        kind: Kind,
        file: impl Into<String>,
        span: Span,
        message: impl Into<String>,
        help: impl Into<String>,
    ) -> Self {
        Self { kind, file: file.into(), span, message: message.into(), help: help.into() }
    }

    /// `file:line:col`, or just `file` when the problem is the file as a whole.
    pub fn location(&self) -> String {
        if self.span.line == 0 {
            self.file.clone()
        } else {
            format!("{}:{}:{}", self.file, self.span.line, self.span.col)
        }
    }
}

/// All problems found in one deployment, with the sources needed to show them.
#[derive(Debug, Default)]
pub struct Report {
    pub diagnostics: Vec<Diagnostic>,
    /// File text by the same relative path the diagnostics use.
    pub sources: BTreeMap<String, String>,
}

/// How `validate` (and every command that validates) prints problems.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// Caret snippets for a terminal.
    Human,
    /// One JSON document: `{"valid": bool, "errors": [...]}`.
    Json,
    /// GitHub Actions `::error file=,line=,col=::` annotations.
    Github,
}

impl Report {
    pub fn is_empty(&self) -> bool {
        self.diagnostics.is_empty()
    }

    pub fn push(&mut self, diagnostic: Diagnostic) {
        self.diagnostics.push(diagnostic);
    }

    /// Sorts by file, then position, and drops exact repeats, so output is stable.
    pub fn finish(&mut self) {
        self.diagnostics.sort_by(|a, b| {
            (&a.file, a.span.line, a.span.col, a.kind).cmp(&(&b.file, b.span.line, b.span.col, b.kind))
        });
        self.diagnostics.dedup();
    }

    pub fn render(&self, format: Format, out: &mut dyn Write) -> io::Result<()> {
        match format {
            Format::Human => out.write_all(self.human().as_bytes()),
            Format::Json => {
                let errors: Vec<_> = self
                    .diagnostics
                    .iter()
                    .map(|d| {
                        serde_json::json!({
                            "kind": d.kind,
                            "file": d.file,
                            "line": d.span.line,
                            "column": d.span.col,
                            "message": d.message,
                            "help": d.help,
                        })
                    })
                    .collect();
                let doc = serde_json::json!({ "valid": errors.is_empty(), "errors": errors });
                writeln!(out, "{doc:#}")
            }
            Format::Github => {
                for d in &self.diagnostics {
                    writeln!(out, "{}", github_annotation(d))?;
                }
                Ok(())
            }
        }
    }

    /// The terminal rendering: a caret under the problem and a help line.
    pub fn human(&self) -> String {
        let mut s = String::new();
        for d in &self.diagnostics {
            let _ = writeln!(s, "error[{}]: {}", d.kind.code(), d.message);
            let _ = writeln!(s, "  --> {}", d.location());
            if let Some(line) =
                self.sources.get(&d.file).and_then(|src| src.lines().nth(d.span.line.wrapping_sub(1)))
            {
                let number = d.span.line.to_string();
                let pad = " ".repeat(number.len());
                let before: String = line
                    .chars()
                    .take(d.span.col.saturating_sub(1))
                    .map(|c| if c == '\t' { '\t' } else { ' ' })
                    .collect();
                let available = line.chars().count().saturating_sub(d.span.col - 1).max(1);
                let carets = "^".repeat(d.span.len.clamp(1, available));
                let _ = writeln!(s, " {pad} |");
                let _ = writeln!(s, " {number} | {line}");
                let _ = writeln!(s, " {pad} | {before}{carets}");
            }
            if !d.help.is_empty() {
                let _ = writeln!(s, "   = help: {}", d.help);
            }
            s.push('\n');
        }
        let n = self.diagnostics.len();
        let _ = writeln!(s, "{n} error{} found; nothing was created.", if n == 1 { "" } else { "s" });
        s
    }
}

/// Escapes a workflow-command message (the toolkit's rules).
pub fn escape_data(s: &str) -> String {
    s.replace('%', "%25").replace('\r', "%0D").replace('\n', "%0A")
}

/// Escapes a workflow-command property value.
pub fn escape_property(s: &str) -> String {
    escape_data(s).replace(':', "%3A").replace(',', "%2C")
}

fn github_annotation(d: &Diagnostic) -> String {
    let mut props = format!("file={}", escape_property(&d.file));
    if d.span.line > 0 {
        let _ = write!(props, ",line={},col={}", d.span.line, d.span.col);
        if d.span.len > 1 {
            let _ = write!(props, ",endColumn={}", d.span.col + d.span.len);
        }
    }
    let _ = write!(props, ",title={}", escape_property(&format!("spot: {}", d.kind.code())));
    let mut message = d.message.clone();
    if !d.help.is_empty() {
        message.push_str("\nhelp: ");
        message.push_str(&d.help);
    }
    format!("::error {props}::{}", escape_data(&message))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_have_distinct_codes() {
        let mut codes: Vec<_> = Kind::ALL.iter().map(|k| k.code()).collect();
        codes.sort_unstable();
        codes.dedup();
        assert_eq!(codes.len(), Kind::ALL.len());
    }

    #[test]
    fn annotation_escapes_properties_and_message() {
        let d =
            Diagnostic::new(Kind::InvalidValue, "a,b:c.yaml", Span::at(2, 5, 3), "50% off\nnext", "fix it");
        assert_eq!(
            github_annotation(&d),
            "::error file=a%2Cb%3Ac.yaml,line=2,col=5,endColumn=8,title=spot%3A invalid-value::50%25 off%0Anext%0Ahelp: fix it"
        );
    }
}
