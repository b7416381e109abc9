//! The `spot` binary: parse arguments, run, map the outcome to a documented exit code.

use std::process::ExitCode;

use clap::Parser as _;
use spot_deployer::error::{Error, exit};

fn main() -> ExitCode {
    // The action's image calls the binary as `spot-action` and `spot-action-post`.
    let mut args: Vec<std::ffi::OsString> = std::env::args_os().collect();
    let called = args
        .first()
        .and_then(|a| std::path::Path::new(a).file_name())
        .map(|n| n.to_string_lossy().into_owned());
    match called.as_deref() {
        Some("spot-action") => args.splice(1..1, ["action".into(), "main".into()]).for_each(drop),
        Some("spot-action-post") => args.splice(1..1, ["action".into(), "post".into()]).for_each(drop),
        _ => {}
    }
    let cli = match spot_deployer::cli::Cli::try_parse_from(args) {
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
            // An error can quote an instance's output (a failed step's tail, a journal).
            let mut text = format!("error: {other}");
            if let Some(help) = other.help() {
                text.push_str(&format!("\n  = help: {help}"));
            }
            spot_deployer::fence::eprint(&spot_deployer::fence::guard(&text));
        }
    }
}
