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
        Format::Human => report.render(format, &mut io::stderr().lock()),
        Format::Json | Format::Github => {
            let mut out = io::stdout().lock();
            report.render(format, &mut out)?;
            out.flush()
        }
    }
}

/// The process's one async runtime: a command that talks to the cloud builds it once
/// and runs its whole operation on it.
pub(crate) fn runtime() -> Result<tokio::runtime::Runtime, Error> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| Error::io("tokio runtime", "start", e))
}
