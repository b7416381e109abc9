//! Removing a deployment from the Action: `mode: down`, and the teardown post runs, both
//! with a job summary of what was removed or left.

use super::{Mode, POST_BUDGET, summary, usage};
use crate::actions;
use crate::error::Error;
use crate::lifecycle::progress::Progress;
use crate::lifecycle::teardown::Removal;
use crate::ops::remove::Search;
use crate::ops::{self, Session};

/// `mode: down`: removes the deployment wherever it is, and says so on its pull request.
pub(super) async fn run(dir: &std::path::Path, keep: bool) -> Result<(), Error> {
    let id = super::deployment_id(Mode::Down, keep)
        .ok_or_else(|| usage("no deployment to remove: set input `deployment-id`".into()))?;
    // The description may be broken or gone (a pull request that removed `.spot/`): it
    // only says where to look first.
    let given = actions::input("regions").map(|v| crate::overrides::list(&v)).unwrap_or_default();
    let configured = ops::known_regions(dir, &given)?;
    let session = super::session().await?;
    let progress = Progress::new();
    // Every region: the description may have moved since the deployment was made.
    let regions = ops::remove::everywhere(&session, &configured, &progress).await?;
    let removal = remove_with_summary(&session, dir, &id, None, &regions, &progress).await;
    if let Some(pr) = actions::pull_request().filter(|p| id == format!("pr-{}", p.number)) {
        let state = match &removal {
            Ok(_) => "removed",
            Err(_) => "removal failed (see the job log; `mode: reap` retries)",
        };
        super::comment(pr.number, &format!("### spot environment `{id}`: {state}\n")).await;
    }
    if actions::input_bool("github-deployment").map_err(usage)? && removal.is_ok() {
        let environment = id.clone();
        super::github(|gh| async move {
            let n = gh.deployments_inactive(&environment).await?;
            Ok(format!("{n} GitHub deployment(s) of `{environment}` marked inactive"))
        })
        .await;
    }
    ops::remove::report(removal, Some(&id), &regions, &progress)
}

/// Removes deployment `id` by its tags within the post budget and says in the job
/// summary what was removed or left.
pub(super) async fn remove_with_summary(
    session: &Session,
    dir: &std::path::Path,
    id: &str,
    run: Option<&str>,
    regions: &Search,
    progress: &Progress,
) -> Result<Option<Removal>, Error> {
    // Never another repository's deployment of the same id.
    let repository = actions::repository();
    let target = ops::remove::Target { deployment: Some(id), run, repository: repository.as_deref() };
    let removal = ops::remove::remove(session, dir, regions, target, false, POST_BUDGET, progress).await;
    let error = removal.as_ref().map_err(ToString::to_string);
    let text = summary::teardown(
        id,
        &regions.describe(),
        error.as_ref().map_err(String::as_str).copied(),
        progress.elapsed().as_secs_f64(),
    );
    let _ = actions::summary(&text);
    removal
}
