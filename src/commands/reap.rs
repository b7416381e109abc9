//! `spot reap`: scheduled teardown of expired, closed and orphaned deployments.

use crate::error::Error;
use crate::lifecycle::progress::Progress;
use crate::ops::reap::{self, Reap};
use crate::ops::{self, Session};

pub fn run(args: &crate::cli::ReapArgs) -> Result<(), Error> {
    let regions = ops::regions_for(&args.dir, &args.regions)?;
    let grace = ops::duration("--orphan-grace", &args.orphan_grace)?;
    // As `create` names the repository in its tags.
    let repository = ops::inputs(
        &args.dir,
        None,
        args.repository.clone().or_else(crate::actions::repository),
        None,
        None,
    )?
    .repository;
    let github = crate::actions::token_from_env().map(|t| (t, crate::actions::api_url()));
    let progress = Progress::new();
    let decisions = super::block_on(async {
        let session = Session::open(args.cloud.endpoint_url.as_deref()).await;
        let reap = Reap {
            regions: &regions,
            dry_run: args.dry_run,
            github,
            repository: &repository,
            whole_account: args.whole_account,
            orphan_grace: grace,
        };
        reap::reap(&session, &reap, &progress).await
    })?;
    reap::report(&decisions, args.dry_run, args.json)
}
