//! One module per subcommand, each thin: gather the flags, call the core (or an
//! operation in `ops`), print the result.

pub mod action;
pub mod bundle;
pub mod create;
pub mod destroy;
pub mod generate;
pub mod list;
pub mod plan;
pub mod reap;
pub mod schema;
pub mod validate;

use std::io::{self, Write as _};

use crate::error::Error;
use crate::manifest::{Format, Report};

/// The format problems are printed in when none was asked for.
pub fn default_format(asked: Option<Format>) -> Format {
    asked.unwrap_or(if crate::actions::in_actions() { Format::Github } else { Format::Human })
}

/// Prints a report: human text to stderr; JSON and annotations to stdout, where
/// machines (and the Actions runner) read them.
pub fn render_report(report: &Report, format: Format) -> io::Result<()> {
    match format {
        // The human form quotes the description's lines: fenced for the runner.
        Format::Human => report.render(format, &mut crate::fence::Guarded::stderr()),
        // Annotations are one escaped command each; JSON is neutralized.
        Format::Github => {
            let mut out = io::stdout().lock();
            report.render(format, &mut out)?;
            out.flush()
        }
        Format::Json => {
            let mut text = Vec::new();
            report.render(format, &mut text)?;
            let mut out = io::stdout().lock();
            out.write_all(crate::fence::json(&String::from_utf8_lossy(&text)).as_bytes())?;
            out.flush()
        }
    }
}

/// Runs `future` to its end on the process's one runtime ([`runtime`], entered by
/// `crate::run`): a command that talks to the cloud runs its whole operation in one call.
pub(crate) fn block_on<F: std::future::Future>(future: F) -> F::Output {
    tokio::runtime::Handle::current().block_on(future)
}

/// The process's one async runtime, built by `crate::run` before any command runs (the
/// signal watcher lives on it too).
pub(crate) fn runtime() -> Result<tokio::runtime::Runtime, Error> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| Error::io("tokio runtime", "start", e))
}
