//! The GitHub Actions runtime: the only module that reads `GITHUB_*`, `INPUT_*`,
//! `STATE_*` and `ACTIONS_*`, and the only one that writes the runner's files.
//!
//! Inputs arrive as `INPUT_<NAME>` (upper-cased, spaces to `_`, hyphens kept). Outputs,
//! state and the job summary are appended to the files the runner names, multi-line
//! values with a random heredoc delimiter per write. Workflow commands (`::add-mask::`,
//! `::error::`, `::group::`) go to stdout with the toolkit's escaping.

use std::io::Write as _;
use std::path::PathBuf;

/// Whether `spot` runs inside a GitHub Actions step.
pub fn in_actions() -> bool {
    std::env::var("GITHUB_ACTIONS").is_ok_and(|v| v == "true")
}

/// `owner/name` of the repository the workflow runs for.
pub fn repository() -> Option<String> {
    std::env::var("GITHUB_REPOSITORY").ok().filter(|r| !r.is_empty())
}

/// An input's environment variable name.
pub fn input_var(name: &str) -> String {
    format!("INPUT_{}", name.to_uppercase().replace(' ', "_"))
}

/// An input, trimmed; `None` when unset or empty (the runner passes defaults as values).
pub fn input(name: &str) -> Option<String> {
    std::env::var(input_var(name)).ok().map(|v| v.trim().to_string()).filter(|v| !v.is_empty())
}

/// A boolean input: `true`/`false` (YAML 1.2 words, any case); anything else is an error.
pub fn input_bool(name: &str) -> Result<bool, String> {
    match input(name).map(|v| v.to_lowercase()) {
        None => Ok(false),
        Some(v) if v == "true" => Ok(true),
        Some(v) if v == "false" => Ok(false),
        Some(v) => Err(format!("input `{name}` is `{v}`: write true or false")),
    }
}

/// A value the main step saved for the post step (`STATE_<name>`).
pub fn state(name: &str) -> Option<String> {
    std::env::var(format!("STATE_{name}")).ok().filter(|v| !v.is_empty())
}

/// The run's identity: `GITHUB_RUN_ID` and `GITHUB_RUN_ATTEMPT`.
pub fn run() -> Option<(String, String)> {
    let id = std::env::var("GITHUB_RUN_ID").ok().filter(|v| !v.is_empty())?;
    let attempt =
        std::env::var("GITHUB_RUN_ATTEMPT").ok().filter(|v| !v.is_empty()).unwrap_or_else(|| "1".into());
    Some((id, attempt))
}

/// What the event file says about a pull request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PullRequest {
    pub number: u64,
    /// `opened`, `synchronize`, `reopened`, `closed`, ...
    pub action: String,
    pub head_sha: Option<String>,
}

/// The pull request of a `pull_request`/`pull_request_target` event, from the event file.
pub fn pull_request() -> Option<PullRequest> {
    let path = std::env::var_os("GITHUB_EVENT_PATH")?;
    let doc: serde_json::Value = serde_json::from_slice(&std::fs::read(path).ok()?).ok()?;
    let pr = doc.get("pull_request")?;
    Some(PullRequest {
        number: pr.get("number").and_then(serde_json::Value::as_u64)?,
        action: doc.get("action").and_then(serde_json::Value::as_str).unwrap_or_default().to_string(),
        head_sha: pr.pointer("/head/sha").and_then(serde_json::Value::as_str).map(String::from),
    })
}

/// The commit the workflow runs for (`GITHUB_SHA`).
pub fn sha() -> Option<String> {
    std::env::var("GITHUB_SHA").ok().filter(|v| !v.is_empty())
}

/// The link to this run's log, from `GITHUB_SERVER_URL`, `GITHUB_REPOSITORY`, `GITHUB_RUN_ID`.
pub fn run_url() -> Option<String> {
    let server = std::env::var("GITHUB_SERVER_URL").ok().filter(|v| !v.is_empty())?;
    Some(format!("{server}/{}/actions/runs/{}", repository()?, run()?.0))
}

/// `GITHUB_API_URL`, for GitHub Enterprise and for tests.
pub fn api_url() -> String {
    std::env::var("GITHUB_API_URL")
        .ok()
        .filter(|v| !v.is_empty())
        .unwrap_or_else(|| "https://api.github.com".into())
}

/// `GITHUB_TOKEN` from the environment (the CLI's `reap` uses it to ask about PRs).
pub fn token_from_env() -> Option<crate::keys::Secret> {
    std::env::var("GITHUB_TOKEN").ok().filter(|v| !v.is_empty()).map(crate::keys::Secret::new)
}

/// The OIDC token endpoint and its bearer token, when the job has `id-token: write`.
pub fn oidc_request() -> Option<(String, crate::keys::Secret)> {
    let url = std::env::var("ACTIONS_ID_TOKEN_REQUEST_URL").ok().filter(|v| !v.is_empty())?;
    let token = std::env::var("ACTIONS_ID_TOKEN_REQUEST_TOKEN").ok().filter(|v| !v.is_empty())?;
    Some((url, crate::keys::Secret::new(token)))
}

/// Escapes a workflow command's message.
pub fn escape_data(s: &str) -> String {
    s.replace('%', "%25").replace('\r', "%0D").replace('\n', "%0A")
}

/// Escapes a workflow command's property value.
pub fn escape_property(s: &str) -> String {
    escape_data(s).replace(':', "%3A").replace(',', "%2C")
}

fn command(line: &str) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}

/// Masks `value` in all later log output, line by line (the runner's masks are per line).
pub fn mask(value: &str) {
    for line in value.lines().map(str::trim).filter(|l| !l.is_empty()) {
        command(&format!("::add-mask::{}", escape_data(line)));
    }
}

/// An error annotation.
pub fn error(title: &str, message: &str) {
    command(&format!("::error title={}::{}", escape_property(title), escape_data(message)));
}

/// A warning annotation.
pub fn warning(title: &str, message: &str) {
    command(&format!("::warning title={}::{}", escape_property(title), escape_data(message)));
}

/// Opens a collapsible log group (groups do not nest).
pub fn group(title: &str) {
    command(&format!("::group::{}", escape_data(title)));
}

pub fn end_group() {
    command("::endgroup::");
}

/// One of the runner's environment files.
#[derive(Debug, Clone, Copy)]
pub enum File {
    Output,
    State,
    Summary,
}

impl File {
    fn var(self) -> &'static str {
        match self {
            File::Output => "GITHUB_OUTPUT",
            File::State => "GITHUB_STATE",
            File::Summary => "GITHUB_STEP_SUMMARY",
        }
    }

    fn path(self) -> Option<PathBuf> {
        std::env::var_os(self.var()).filter(|v| !v.is_empty()).map(PathBuf::from)
    }
}

fn append(file: File, text: &str) -> std::io::Result<()> {
    let Some(path) = file.path() else {
        return Ok(());
    };
    let mut f = std::fs::OpenOptions::new().create(true).append(true).open(path)?;
    f.write_all(text.as_bytes())?;
    f.flush()
}

/// `name<<DELIM` / value / `DELIM`, with a delimiter that is not in the value.
fn heredoc(name: &str, value: &str) -> String {
    loop {
        let delimiter = format!("ghadelimiter_{:016x}{:016x}", fastrand::u64(..), fastrand::u64(..));
        if !value.contains(&delimiter) {
            return format!("{name}<<{delimiter}\n{value}\n{delimiter}\n");
        }
    }
}

/// Sets a step output.
pub fn set_output(name: &str, value: &str) -> std::io::Result<()> {
    append(File::Output, &heredoc(name, value))
}

/// Saves a value for the post step (`STATE_<name>` there). Written at once, so it
/// survives a main step that is cancelled or killed right after.
pub fn save_state(name: &str, value: &str) -> std::io::Result<()> {
    append(File::State, &heredoc(name, value))
}

/// Appends Markdown to this step's job summary.
pub fn summary(markdown: &str) -> std::io::Result<()> {
    append(File::Summary, markdown)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escaping_follows_the_toolkit() {
        assert_eq!(escape_data("50% done\r\nnext"), "50%25 done%0D%0Anext");
        assert_eq!(escape_property("a:b,c"), "a%3Ab%2Cc");
        assert_eq!(input_var("ssh-cidr"), "INPUT_SSH-CIDR");
        assert_eq!(input_var("working directory"), "INPUT_WORKING_DIRECTORY");
    }

    #[test]
    fn heredocs_never_contain_their_delimiter() {
        let doc = heredoc("json", "{\"a\": 1}\nsecond line");
        let mut lines = doc.lines();
        let first = lines.next().unwrap();
        let delimiter = first.strip_prefix("json<<").unwrap();
        assert!(delimiter.starts_with("ghadelimiter_") && delimiter.len() > 30);
        assert_eq!(lines.collect::<Vec<_>>(), ["{\"a\": 1}", "second line", delimiter]);
    }
}
