//! Text from outside spot (an instance's output, a pull request's description) in the
//! Actions runner's log, where the runner would otherwise obey any workflow command in it.
//!
//! The runner takes a line for a command when, after leading whitespace, it starts with
//! `::`, or when it holds the legacy `##[` anywhere. While it is between
//! `::stop-commands::<token>` and `::<token>::` it takes none but that resume line.
//! [`guard`] puts every line spot prints that could be read so between those two, with a
//! fresh 128-bit token from the operating system each time: text that cannot know the
//! token cannot end the fence early. Only spot's own commands (masks, annotations,
//! groups) go out unfenced. The runner keeps one fence state for both streams it reads,
//! so the Action's steps print everything on stdout ([`one_stream`]).

use std::sync::atomic::{AtomicBool, Ordering};

static ON: AtomicBool = AtomicBool::new(false);
static ONE_STREAM: AtomicBool = AtomicBool::new(false);

/// From now on the process's output is read by the Actions runner (`GITHUB_ACTIONS`).
pub fn enable() {
    ON.store(true, Ordering::SeqCst);
}

/// From now on everything goes to stdout, spot's own commands too (the Action's steps).
/// The runner reads stdout and stderr on two threads into one fence state, so a line of
/// one stream can land inside the other's fence, in either direction: one stream keeps
/// spot's commands and its fences in the order they were written.
pub fn one_stream() {
    ONE_STREAM.store(true, Ordering::SeqCst);
}

/// Prints `text` and a newline where diagnostics go: stderr, or stdout in one-stream mode,
/// in one locked write. Guard the text first when it can carry text from outside.
pub fn eprint(text: &str) {
    use std::io::Write as _;
    let line = format!("{text}\n");
    if ONE_STREAM.load(Ordering::SeqCst) {
        let mut out = std::io::stdout().lock();
        let _ = out.write_all(line.as_bytes()).and_then(|()| out.flush());
    } else {
        let _ = std::io::stderr().lock().write_all(line.as_bytes());
    }
}

/// Pure: could the runner take any line of `text` for a command? (Conservative: a `::`
/// anywhere counts, as the runner trims more kinds of whitespace than a reader expects.)
pub fn commandlike(text: &str) -> bool {
    text.contains("::") || text.contains("##[")
}

/// Pure: `text` between a stop line and its resume line, with no newline after.
pub fn fenced(text: &str, token: &str) -> String {
    let body = text.strip_suffix('\n').unwrap_or(text);
    format!("::stop-commands::{token}\n{body}\n::{token}::")
}

/// `text` as it may go to the log: fenced with a fresh token when the runner reads the
/// output and some line of it could be a command; else as it is. Print it whole, in one
/// locked write on the stream spot's commands use, so nothing of spot's own is caught
/// inside the fence.
pub fn guard(text: &str) -> String {
    if ON.load(Ordering::SeqCst) && commandlike(text) {
        fenced(text, &crate::keys::random_token())
    } else {
        text.to_string()
    }
}

/// Pure: a JSON document as it may go to the log, meaning the same to any JSON reader:
/// `::` and `##[` can only stand inside its strings, where `\u003a` and `\u0023` read as
/// `:` and `#`. Machine output is never fenced (a reader piping it would get the fence).
pub fn json(text: &str) -> String {
    text.replace("##[", "#\\u0023[").replace("::", ":\\u003a")
}

/// A stream whose text is printed once, through [`guard`], when it is dropped: a whole
/// command's human output in one block.
#[derive(Debug)]
pub struct Guarded {
    stderr: bool,
    text: Vec<u8>,
}

impl Guarded {
    pub fn stdout() -> Self {
        Self { stderr: false, text: Vec::new() }
    }

    pub fn stderr() -> Self {
        Self { stderr: true, text: Vec::new() }
    }
}

impl std::io::Write for Guarded {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.text.extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Drop for Guarded {
    fn drop(&mut self) {
        use std::io::Write as _;
        if self.text.is_empty() {
            return;
        }
        let text = String::from_utf8_lossy(&self.text);
        let mut guarded = guard(&text);
        if text.ends_with('\n') && !guarded.ends_with('\n') {
            guarded.push('\n');
        }
        let _ = if self.stderr && !ONE_STREAM.load(Ordering::SeqCst) {
            std::io::stderr().lock().write_all(guarded.as_bytes())
        } else {
            let mut out = std::io::stdout().lock();
            out.write_all(guarded.as_bytes()).and_then(|()| out.flush())
        };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_text_the_runner_could_obey_is_fenced() {
        assert!(commandlike("  ::error::x"));
        assert!(commandlike("output ##[set-output name=a]b"));
        assert!(!commandlike("instance i-0abc: setup ok (1.2s)"));
        assert_eq!(fenced("a\n##[error]b\n", "t0"), "::stop-commands::t0\na\n##[error]b\n::t0::");
    }

    #[test]
    fn json_is_neutralized_and_reads_the_same() {
        let doc = serde_json::json!({"tail": "::set-output name=x::y ##[error]z", "a": {"b": [1, "::"]}});
        for text in [doc.to_string(), format!("{doc:#}")] {
            let safe = json(&text);
            assert!(!commandlike(&safe), "{safe}");
            assert_eq!(serde_json::from_str::<serde_json::Value>(&safe).unwrap(), doc);
        }
    }

    #[test]
    fn tokens_are_fresh() {
        let (a, b) = (crate::keys::random_token(), crate::keys::random_token());
        assert_ne!(a, b);
        assert_eq!(a.len(), 32);
        assert!(a.chars().all(|c| c.is_ascii_hexdigit()));
    }
}
