//! The runner's reading of a step's output, for tests: which lines it would obey as
//! workflow commands. It follows actions/runner's own code, not a summary of it:
//!
//! - Lines: the runner reads each stream with .NET's `StreamReader.ReadLine`, so a line
//!   ends at LF, CR or CRLF (a lone CR ends a line).
//! - `ActionCommand.TryParseV2` (src/Runner.Common/ActionCommand.cs): the line, leading
//!   whitespace trimmed, starts with `::`; the next `::` ends the command info; the name
//!   is the info up to its first space; properties `k=v` split on `,`; the rest is data.
//! - `ActionCommand.TryParse`, tried when V2 fails: the first `##[` anywhere in the line,
//!   the first `]` after it ends the info; properties split on `;`; the rest is data.
//! - Only registered names count, compared ignoring case (`_registeredCommands` in
//!   src/Runner.Worker/ActionCommandManager.cs): the command extensions and
//!   `stop-commands`, plus the stop token while commands are stopped.
//! - `TryProcessCommand`: after `stop-commands` (its data is the token) nothing is
//!   obeyed until a command, in either form, whose name is the token (ignoring case).
//!
//! The runner reads a step's stdout and stderr on two threads into one fence state, so
//! lines of the two can interleave in any order: spot's Action writes everything to
//! stdout, and the tests read that one stream (and hold stderr free of anything
//! command-like).

/// Names the runner registers (its command extensions) besides `stop-commands`.
const REGISTERED: &[&str] = &[
    "add-mask",
    "add-matcher",
    "add-path",
    "debug",
    "echo",
    "endgroup",
    "error",
    "group",
    "notice",
    "remove-matcher",
    "save-state",
    "set-env",
    "set-output",
    "warning",
];

/// One command the runner would obey.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Command {
    pub name: String,
    pub data: String,
    pub line: String,
}

fn registered(name: &str, token: Option<&str>) -> bool {
    name.eq_ignore_ascii_case("stop-commands")
        || REGISTERED.iter().any(|r| r.eq_ignore_ascii_case(name))
        || token.is_some_and(|t| t.eq_ignore_ascii_case(name))
}

fn parse(line: &str, token: Option<&str>) -> Option<(String, String)> {
    // V2 first.
    let trimmed = line.trim_start();
    if let Some(rest) = trimmed.strip_prefix("::")
        && let Some(end) = rest.find("::")
    {
        let info = &rest[..end];
        let name = info.split(' ').next().unwrap_or_default();
        if registered(name, token) {
            return Some((name.to_string(), rest[end + 2..].to_string()));
        }
    }
    let at = line.find("##[")?;
    let rest = &line[at + 3..];
    let end = rest.find(']')?;
    let name = rest[..end].split(' ').next().unwrap_or_default();
    registered(name, token).then(|| (name.to_string(), rest[end + 1..].to_string()))
}

/// The commands the runner would obey in one stream's text.
pub fn commands(stream: &str) -> Vec<Command> {
    let mut obeyed = Vec::new();
    let mut stopped: Option<String> = None;
    let lines = stream.split("\r\n").flat_map(|l| l.split(['\r', '\n']));
    for line in lines {
        let Some((name, data)) = parse(line, stopped.as_deref()) else {
            continue;
        };
        match &stopped {
            Some(token) => {
                // An empty token never resumes (the runner checks `IsNullOrEmpty`).
                if !token.is_empty() && name.eq_ignore_ascii_case(token) {
                    stopped = None;
                }
            }
            None if name.eq_ignore_ascii_case("stop-commands") => stopped = Some(data),
            None => obeyed.push(Command { name: name.to_lowercase(), data, line: line.to_string() }),
        }
    }
    obeyed
}

#[test]
fn the_reader_takes_both_forms_and_honours_a_fence() {
    let log = "  ::set-output name=x::y\nplain ##[error]legacy\r::warning::after a lone CR\n\
               ::stop-commands::t0k3n\n::error::inside\n##[add-mask]inside\n::other::\n##[T0K3N]\n\
               ::ERROR::after\n::unknown::z\n";
    let got: Vec<(String, String)> = commands(log).into_iter().map(|c| (c.name, c.data)).collect();
    assert_eq!(
        got,
        [
            ("set-output".to_string(), "y".to_string()),
            ("error".into(), "legacy".into()),
            ("warning".into(), "after a lone CR".into()),
            ("error".into(), "after".into()),
        ]
    );
}
