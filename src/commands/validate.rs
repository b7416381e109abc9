//! `spot validate`: every check `create` makes before touching the cloud.

use std::io::Write as _;

use crate::cli::ValidateArgs;
use crate::error::Error;
use crate::manifest::{Format, Report};

pub fn run(args: &ValidateArgs) -> Result<(), Error> {
    let format = super::default_format(args.format);
    let (deployment, listing) = crate::ops::validate(&args.dir, format, crate::actions::repository())?;
    match format {
        Format::Json => {
            super::render_report(&Report::default(), format).map_err(|e| Error::io("stdout", "write to", e))
        }
        Format::Human | Format::Github => {
            let _ = writeln!(
                std::io::stdout(),
                "{}",
                crate::fence::guard(&crate::ops::valid_line(&deployment, &listing))
            );
            Ok(())
        }
    }
}
