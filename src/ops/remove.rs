//! Remove: a deployment found by its tags, removed idempotently (`spot destroy`, the
//! Action's `mode: down` and post step, and the replacement of a kept environment).

use std::io::Write as _;
use std::time::Instant;

use super::Session;
use crate::error::Error;
use crate::lifecycle::inventory::{self, Deployed};
use crate::lifecycle::progress::Progress;
use crate::lifecycle::state;
use crate::lifecycle::teardown::{self, Removal};
use crate::plan::tag;
use crate::provider::{Cloud as _, Tags};

/// `configured` and then every other region enabled for the account: where a deployment
/// may be when its description has moved since it was made (a pull request that changed
/// its regions). Without an answer from EC2, the configured ones, with a warning.
pub async fn everywhere(session: &Session, configured: &[String], progress: &Progress) -> Vec<String> {
    let mut regions = configured.to_vec();
    let near = configured.first().map_or("us-east-1", String::as_str);
    match session.cloud.regions(near).await {
        Ok(all) => {
            for r in all {
                if !regions.contains(&r) {
                    regions.push(r);
                }
            }
        }
        Err(e) => progress.event(format!(
            "warning: cannot list the account's regions ({e}); looking in {} only",
            configured.join(", ")
        )),
    }
    regions
}

/// What to remove: one deployment (or any), and of it only what one run made (the
/// Action's post step removes what its main made, never another run's set of that id).
#[derive(Debug, Clone, Copy, Default)]
pub struct Target<'a> {
    pub deployment: Option<&'a str>,
    pub run: Option<&'a str>,
}

/// Finds the `target` (or every deployment, with `all`) by tags in `regions`, plus what
/// its state file under `dir` records while any of it shows, and removes it; `None` when
/// there was nothing to remove.
pub async fn remove(
    session: &Session,
    dir: &std::path::Path,
    regions: &[String],
    target: Target<'_>,
    all: bool,
    timeout: std::time::Duration,
    progress: &Progress,
) -> Result<Option<Removal>, Error> {
    let deployment = target.deployment;
    let mut filter: Tags =
        deployment.iter().map(|id| (tag::DEPLOYMENT.to_string(), (*id).to_string())).collect();
    filter.extend(target.run.map(|run| (tag::RUN_ID.to_string(), run.to_string())));
    let cloud = &session.cloud;
    let root = std::fs::canonicalize(dir).unwrap_or_else(|_| dir.to_path_buf());
    {
        let mut found =
            inventory::discover(cloud, regions, &filter).await.map_err(|e| super::cloud_error(&e))?;
        // While any of it still shows by its tags, what the state file records is removed
        // too (tags on new resources show late); nothing showing means removed already.
        if let Some(id) = deployment
            && let Some(seen) = found.get_mut(id)
            && let Some(recorded) = state::read(&root, id)
            && target.run.is_none_or(|run| recorded.run_id == run)
        {
            seen.add_recorded(&recorded.resources);
        }
        let chosen: Vec<&Deployed> = found.values().collect();
        if chosen.is_empty() {
            return Ok(None);
        }
        if deployment.is_none() && chosen.len() > 1 && !all {
            let ids: Vec<&str> = chosen.iter().map(|f| f.deployment_id.as_str()).collect();
            return Err(Error::Usage {
                message: format!("{} deployments found: {}", ids.len(), ids.join(", ")),
                help: "name one (`spot destroy <id>`), or pass --yes to destroy all of them".into(),
            });
        }
        let deadline = Instant::now() + timeout;
        let mut total = Removal::default();
        let sweeps = chosen.iter().map(|f| {
            progress.event(format!(
                "destroying {}: {} instance(s) and {}",
                f.deployment_id,
                f.instances.len(),
                teardown::summarize(&f.resources)
            ));
            teardown::found(cloud, f, deadline, progress)
        });
        for r in futures::future::join_all(sweeps).await {
            total.merge(r);
        }
        for f in &chosen {
            let mine = f.all_resources();
            let left: Vec<_> = total
                .failed
                .iter()
                .map(|(r, _)| r.clone())
                .filter(|r| mine.iter().any(|m| m.kind == r.kind && m.id == r.id && m.region == r.region))
                .collect();
            if let Err(e) = state::mark_removed(&root, &f.deployment_id, &left) {
                progress.event(format!("warning: cannot update the state file of {}: {e}", f.deployment_id));
            }
        }
        Ok(Some(total))
    }
}

/// Prints what `remove` did; an error when something is left.
pub fn report(
    removal: Result<Option<Removal>, Error>,
    deployment: Option<&str>,
    regions: &[String],
    progress: &Progress,
) -> Result<(), Error> {
    let mut out = std::io::stdout().lock();
    match removal? {
        None => {
            let what = deployment
                .map_or_else(|| "no deployments".to_string(), |id| format!("no resources of `{id}`"));
            let _ = writeln!(out, "nothing to do: {what} in {}", regions.join(", "));
            Ok(())
        }
        Some(r) if r.failed.is_empty() => {
            let _ = writeln!(out, "removed {} in {:.1}s", r.summary(), progress.elapsed().as_secs_f64());
            Ok(())
        }
        Some(r) => {
            let _ = writeln!(out, "removed {}", r.summary());
            let failed = r.failures();
            Err(Error::Runtime {
                message: format!("{} resource(s) not removed:\n  {}", failed.len(), failed.join("\n  ")),
                help: "run `spot destroy` again; what remains is still tagged and will be found".into(),
            })
        }
    }
}
