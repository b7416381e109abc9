//! `spot plan`: what `create` would do, printed for people, machines, or as user-data.

use std::io::Write as _;

use crate::cli::PlanArgs;
use crate::cloud_init::{self, UserDataKeys};
use crate::error::Error;
use crate::plan;

pub fn run(args: &PlanArgs) -> Result<(), Error> {
    let format = super::default_format(args.format);
    let inputs = crate::ops::inputs(
        &args.dir,
        args.identity.deployment_id.clone(),
        args.identity.repository.clone().or_else(crate::actions::repository),
        args.identity.pr,
        args.now.as_deref(),
    )?;
    let (deployment, listing) = crate::ops::load_checked(&args.dir, format, true)?;
    let identity = plan::identity(&deployment, &inputs);
    let sized = UserDataKeys::sized_placeholders(&deployment.config.extra_authorized_keys);
    // Size is checked with keys as long as real ones; the printout shows readable placeholders.
    cloud_init::render(&deployment, &identity, &sized).map_err(|d| crate::ops::invalid(*d, format))?;
    let user_data = cloud_init::render(&deployment, &identity, &UserDataKeys::placeholders())
        .map_err(|d| crate::ops::invalid(*d, format))?;
    // Buffered: a large plan is tens of thousands of lines, and stdout is line-buffered.
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    let written = if args.user_data {
        out.write_all(user_data.text.as_bytes())
    } else {
        let plan = plan::build(&deployment, &inputs, listing, &user_data);
        if args.json {
            serde_json::to_string_pretty(&plan)
                .map_err(std::io::Error::from)
                .and_then(|text| writeln!(out, "{}", crate::fence::json(&text)))
        } else {
            // The description's text (script commands, paths) as a reader sees it.
            out.write_all(crate::fence::guard(&plan.human()).as_bytes())
        }
    };
    written.and_then(|()| out.flush()).map_err(|e| Error::io("stdout", "write to", e))
}
