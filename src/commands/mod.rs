//! One module per subcommand: gather inputs, call the pure core, print the result.

pub mod generate;
pub mod plan;
pub mod schema;
pub mod validate;

use std::io::{self, Write as _};
use std::path::Path;

use crate::Error;
use crate::bundle::{self, Listing};
use crate::manifest::{self, Deployment, Format, Report};

/// The format problems are printed in when none was asked for.
pub fn default_format(asked: Option<Format>) -> Format {
    asked.unwrap_or(if crate::actions::in_actions() {
        Format::Github
    } else {
        Format::Human
    })
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
    match bundle::list(&deployment, measure) {
        Ok(listing) => Ok((deployment, listing)),
        Err(diagnostics) => {
            let mut report = Report {
                diagnostics,
                ..Report::default()
            };
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
