//! The error every command returns, and the exit code each kind maps to.

use std::fmt;
use std::path::PathBuf;

use crate::manifest::{Format, Report};

/// Documented exit codes.
pub mod exit {
    pub const OK: u8 = 0;
    /// The description or the arguments are wrong; nothing was created.
    pub const INVALID_INPUT: u8 = 1;
    /// Something failed while acting (files, network, cloud).
    pub const RUNTIME: u8 = 2;
    /// Stopped by SIGINT or SIGTERM.
    pub const INTERRUPTED: u8 = 130;
}

#[derive(Debug)]
pub enum Error {
    /// The deployment description has problems; rendered in `format`.
    Invalid { report: Report, format: Format },
    /// An argument or request that cannot be carried out as given.
    Usage { message: String, help: String },
    /// A file operation failed.
    Io { path: PathBuf, action: &'static str, source: std::io::Error },
    /// Acting on the cloud failed; `message` says what failed and what was cleaned up.
    Runtime { message: String, help: String },
    /// Stopped by a signal after cleaning up what it could.
    Interrupted { message: String },
}

impl Error {
    pub fn exit_code(&self) -> u8 {
        match self {
            Error::Invalid { .. } | Error::Usage { .. } => exit::INVALID_INPUT,
            Error::Io { .. } | Error::Runtime { .. } => exit::RUNTIME,
            Error::Interrupted { .. } => exit::INTERRUPTED,
        }
    }

    /// What the user can do about it.
    pub fn help(&self) -> Option<&str> {
        match self {
            Error::Usage { help, .. } | Error::Runtime { help, .. } => {
                Some(help.as_str()).filter(|h| !h.is_empty())
            }
            Error::Io { .. } => Some("check the path and its permissions"),
            Error::Invalid { .. } | Error::Interrupted { .. } => None,
        }
    }

    pub fn io(path: impl Into<PathBuf>, action: &'static str, source: std::io::Error) -> Self {
        Error::Io { path: path.into(), action, source }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Invalid { report, .. } => {
                write!(f, "{} problem(s) in the deployment description", report.diagnostics.len())
            }
            Error::Usage { message, .. }
            | Error::Runtime { message, .. }
            | Error::Interrupted { message } => f.write_str(message),
            Error::Io { path, action, source } => write!(f, "cannot {action} `{}`: {source}", path.display()),
        }
    }
}

impl std::error::Error for Error {}
