//! `spot validate`: every check `create` makes before touching the cloud.

use std::io::Write as _;

use crate::Error;
use crate::cli::ValidateArgs;
use crate::manifest::{Format, Report};

pub fn run(args: &ValidateArgs) -> Result<(), Error> {
    let format = super::default_format(args.format);
    let (deployment, listing) = crate::ops::load_checked(&args.dir, format, false)?;
    // The user-data must fit too; render it with placeholder keys of the real size.
    let inputs = crate::ops::inputs(&args.dir, None, crate::actions::repository(), None, None)?;
    let identity = crate::plan::identity(&deployment, &inputs);
    let keys = super::plan::sized_placeholder_keys(&deployment);
    if let Err(diagnostic) = crate::cloud_init::render(&deployment, &identity, &keys) {
        let report = Report { diagnostics: vec![*diagnostic], ..Report::default() };
        return Err(Error::Invalid { report, format });
    }
    match format {
        Format::Json => {
            super::render_report(&Report::default(), format).map_err(|e| Error::io("stdout", "write to", e))
        }
        Format::Human | Format::Github => {
            let regions = deployment.config.regions.len();
            let _ = writeln!(
                std::io::stdout(),
                "valid: {} instance(s) in {regions} region(s), {} script(s), {} service(s), {} file(s) to ship",
                deployment.config.total_instances,
                deployment.manifest.scripts.len(),
                deployment.manifest.services.len(),
                listing.entries.len()
            );
            Ok(())
        }
    }
}
