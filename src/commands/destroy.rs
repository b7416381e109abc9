//! `spot destroy`: remove a deployment found by its tags, idempotently.

use crate::cli::DestroyArgs;
use crate::error::Error;
use crate::lifecycle::progress::Progress;
use crate::ops::{self, Session};

pub fn run(args: &DestroyArgs) -> Result<(), Error> {
    let configured = ops::known_regions(&args.dir, &args.regions)?;
    // Every region of the account is searched only for a deployment named: without an id,
    // destroy takes what it finds, and the whole account is not a folder's to take.
    if args.deployment.is_none() && (configured.is_empty() || args.all_regions) {
        return Err(Error::Usage {
            message: if args.all_regions {
                "--all-regions needs a deployment id".into()
            } else {
                format!("no regions to search: `{}` has no valid config with regions", args.dir.display())
            },
            help: "name the deployment (`spot destroy <id>`, which searches every region), or pass --region"
                .into(),
        });
    }
    let timeout = ops::duration("--timeout", &args.timeout)?;
    if let Some(id) = &args.deployment {
        crate::plan::check_deployment_id(id)
            .map_err(|message| Error::Usage { message, help: "pass the id shown by `spot list`".into() })?;
    }
    let progress = Progress::new();
    let removal = super::block_on(async {
        let session = Session::open(args.cloud.endpoint_url.as_deref()).await;
        let regions = if args.all_regions || configured.is_empty() {
            ops::remove::everywhere(&session, &configured, &progress).await?
        } else {
            ops::remove::Search::only(&configured)
        };
        let id = args.deployment.as_deref();
        let removal = ops::remove::remove(
            &session,
            &args.dir,
            &regions,
            ops::remove::Target { deployment: id, run: None, repository: None },
            args.yes,
            timeout,
            &progress,
        )
        .await;
        Ok::<_, Error>((removal, regions))
    })?;
    let (removal, regions) = removal;
    ops::remove::report(removal, args.deployment.as_deref(), &regions, &progress)
}
