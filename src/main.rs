//! The `spot` binary: parse arguments, run, map the outcome to a documented exit code.

use std::io::Write as _;
use std::process::ExitCode;

use clap::Parser as _;
use spot_deployer::error::{Error, exit};

fn main() -> ExitCode {
    let cli = match spot_deployer::cli::Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            return ExitCode::from(if e.use_stderr() { exit::INVALID_INPUT } else { exit::OK });
        }
    };
    match spot_deployer::run(cli) {
        Ok(()) => ExitCode::from(exit::OK),
        Err(err) => {
            report(&err);
            ExitCode::from(err.exit_code())
        }
    }
}

fn report(err: &Error) {
    match err {
        Error::Invalid { report, format } => {
            let _ = spot_deployer::commands::render_report(report, *format);
        }
        other => {
            let mut stderr = std::io::stderr().lock();
            let _ = writeln!(stderr, "error: {other}");
            if let Some(help) = other.help() {
                let _ = writeln!(stderr, "  = help: {help}");
            }
        }
    }
}
