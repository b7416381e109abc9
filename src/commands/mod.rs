//! One module per subcommand: gather inputs, call the pure core, print the result.

pub mod action;
pub mod bundle;
pub mod create;
pub mod destroy;
pub mod generate;
pub mod list;
pub mod plan;
pub mod reap;
pub mod redeploy;
pub mod schema;
pub mod validate;

use std::io::{self, Write as _};
use std::path::Path;

use crate::Error;
use crate::bundle::Listing;
use crate::manifest::{self, Deployment, Format, Report};

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

/// Loads, validates and lists the bundle: everything `validate` checks. `measure`
/// also reads each file's size and mode.
pub(crate) fn load_checked(
    dir: &Path,
    format: Format,
    measure: bool,
) -> Result<(Deployment, Listing), Error> {
    let deployment = manifest::load(dir).map_err(|report| Error::Invalid { report, format })?;
    match crate::bundle::list(&deployment, measure) {
        Ok(listing) => Ok((deployment, listing)),
        Err(diagnostics) => {
            let mut report = Report { diagnostics, ..Report::default() };
            for file in [".spot/deployment.yaml", ".spot/config.yaml"] {
                if let Ok(text) = std::fs::read_to_string(deployment.root.join(file)) {
                    report.sources.insert(file.to_string(), text);
                }
            }
            report.finish();
            Err(Error::Invalid { report, format })
        }
    }
}

/// Lists the bundle again after overrides changed the build.
pub(crate) fn relist(deployment: &Deployment, format: Format) -> Result<Listing, Error> {
    crate::bundle::list(deployment, true).map_err(|diagnostics| {
        let mut report = Report { diagnostics, ..Report::default() };
        report.finish();
        Error::Invalid { report, format }
    })
}

/// The async runtime for commands that talk to the cloud.
pub(crate) fn runtime() -> Result<tokio::runtime::Runtime, Error> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| Error::io("tokio runtime", "start", e))
}

/// A duration flag such as `5m`.
pub(crate) fn duration_flag(flag: &str, text: &str) -> Result<std::time::Duration, Error> {
    crate::manifest::types::parse_duration(text).map(std::time::Duration::from_secs).map_err(|message| {
        Error::Usage {
            message: format!("{flag}: {message}"),
            help: "write a duration such as 30s, 5m or 1h".into(),
        }
    })
}

/// Regions to search: the flags, else the config in `dir`.
pub(crate) fn regions_for(dir: &Path, flags: &[String]) -> Result<Vec<String>, Error> {
    if !flags.is_empty() {
        for r in flags {
            if !crate::manifest::types::AWS_REGIONS.contains(&r.as_str()) {
                return Err(Error::Usage {
                    message: format!("`{r}` is not an AWS region"),
                    help: "pass a region such as us-east-1".into(),
                });
            }
        }
        return Ok(flags.to_vec());
    }
    match manifest::load_regions(dir) {
        Ok(regions) if !regions.is_empty() => Ok(regions),
        Ok(_) | Err(_) => Err(Error::Usage {
            message: format!("no regions to search: `{}` has no valid config with regions", dir.display()),
            help: "pass --region (repeatable), or run from the repository that holds .spot/".into(),
        }),
    }
}

/// Maps a cloud error to the command error, with a hint for credential problems.
pub(crate) fn cloud_error(e: &crate::provider::Error) -> Error {
    let help = match e.kind {
        crate::provider::ErrorKind::Auth => {
            "check the AWS credentials (AWS_PROFILE, AWS_ACCESS_KEY_ID, or the action's role-to-assume)"
        }
        _ => "",
    };
    Error::Runtime { message: e.to_string(), help: help.into() }
}
