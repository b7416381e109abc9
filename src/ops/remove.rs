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

/// Where to look for a deployment.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Search {
    /// Where it was configured or recorded: a region that will not answer is an error
    /// (something of it may be there).
    pub regions: Vec<String>,
    /// Every other region enabled for the account, looked in just in case: one that
    /// refuses this account (not enabled, or closed to it) is skipped with a warning.
    pub beyond: Vec<String>,
}

impl Search {
    /// Only `regions`, each of which must answer.
    pub fn only(regions: &[String]) -> Self {
        Self { regions: regions.to_vec(), beyond: Vec::new() }
    }

    /// Every region looked in.
    pub fn all(&self) -> Vec<String> {
        self.regions.iter().chain(&self.beyond).cloned().collect()
    }

    /// The regions in a few words.
    pub fn describe(&self) -> String {
        match (self.regions.is_empty(), self.beyond.len()) {
            (_, 0) => self.regions.join(", "),
            (true, n) => format!("the account's {n} enabled regions"),
            (false, n) => format!("{} and the account's {n} other enabled regions", self.regions.join(", ")),
        }
    }

    /// Makes `region` one that must answer.
    fn require(&mut self, region: &str) {
        self.beyond.retain(|r| r != region);
        if !self.regions.iter().any(|r| r == region) {
            self.regions.push(region.to_string());
        }
    }
}

/// `configured` (which must answer) and then every other region enabled for the
/// account: where a deployment may be when its description has moved or is gone since it
/// was made (a pull request that changed its regions, or removed `.spot/`). Without an
/// answer from EC2, the configured ones, with a warning.
pub async fn everywhere(
    session: &Session,
    configured: &[String],
    progress: &Progress,
) -> Result<Search, Error> {
    let mut search = Search::only(configured);
    let near = configured.first().map_or("us-east-1", String::as_str);
    match session.cloud.regions(near).await {
        Ok(all) => search.beyond = all.into_iter().filter(|r| !configured.contains(r)).collect(),
        Err(e) if !configured.is_empty() => progress.event(format!(
            "warning: cannot list the account's regions ({e}); looking in {} only",
            configured.join(", ")
        )),
        Err(e) => {
            return Err(Error::Runtime {
                message: format!("no region to look in: none is configured, and {e}"),
                help: "give the regions (input `regions`, or --region)".into(),
            });
        }
    }
    Ok(search)
}

/// What to remove: one deployment (or any), and of it only what one run made (the
/// Action's post step removes what its main made, never another run's set of that id),
/// or only what one repository made (the Action never touches another repository's
/// deployment of the same id).
#[derive(Debug, Clone, Copy, Default)]
pub struct Target<'a> {
    pub deployment: Option<&'a str>,
    pub run: Option<&'a str>,
    pub repository: Option<&'a str>,
}

/// Finds the `target` (or every deployment, with `all`) by tags in `regions`, plus what
/// its state file under `dir` records while any of it shows, and removes it; `None` when
/// there was nothing to remove.
pub async fn remove(
    session: &Session,
    dir: &std::path::Path,
    search: &Search,
    target: Target<'_>,
    all: bool,
    timeout: std::time::Duration,
    progress: &Progress,
) -> Result<Option<Removal>, Error> {
    let deployment = target.deployment;
    let mut filter: Tags =
        deployment.iter().map(|id| (tag::DEPLOYMENT.to_string(), (*id).to_string())).collect();
    filter.extend(target.run.map(|run| (tag::RUN_ID.to_string(), run.to_string())));
    filter.extend(target.repository.map(|r| (tag::REPOSITORY.to_string(), r.to_string())));
    let cloud = &session.cloud;
    let root = std::fs::canonicalize(dir).unwrap_or_else(|_| dir.to_path_buf());
    {
        // The target's state file, read once. Where it records something, the region must
        // answer.
        let recorded = deployment.and_then(|id| owned(&root, id, target));
        let mut search = search.clone();
        for r in recorded.iter().flat_map(|s| &s.resources) {
            search.require(&r.region);
        }
        let (mut found, skipped) =
            inventory::discover_beyond(cloud, &search.regions, &search.beyond, &filter)
                .await
                .map_err(|e| super::cloud_error(&e))?;
        for e in skipped {
            progress.event(format!(
                "warning: skipped {}, which refuses this account ({}); nothing of ours was configured or recorded there",
                e.region, e.code
            ));
        }
        // While any of it still shows by its tags, what the state file records is removed
        // too (tags on new resources show late); nothing showing means removed already.
        if let Some(id) = deployment
            && let Some(recorded) = &recorded
        {
            match found.get_mut(id) {
                Some(seen) => seen.add_recorded(&recorded.resources),
                // Nothing shows by its tags, yet a file made minutes ago holds resources:
                // new ones whose tags do not show yet. They are asked for by id, never
                // dropped from the record unseen. An older file's are gone (removed
                // from elsewhere): tags show within seconds.
                None if !recorded.resources.is_empty() && recent(&recorded.created_at) => {
                    progress.event(format!(
                        "nothing of {id} shows by its tags; asking EC2 by id for the {} resource(s) its state file (from {}) records",
                        recorded.resources.len(),
                        recorded.created_at
                    ));
                    let mut seen = Deployed { deployment_id: id.to_string(), ..Deployed::default() };
                    seen.add_recorded(&recorded.resources);
                    found.insert(id.to_string(), seen);
                }
                None => {}
            }
        }
        let chosen: Vec<&Deployed> = found.values().collect();
        if chosen.is_empty() {
            // Nothing of it shows anywhere it was made: its state file (when this target's)
            // says so, or it would hold a later `create` of the id back.
            if let Some(id) = deployment
                && recorded.is_some()
                && let Err(e) = state::mark_removed(&root, id, &[])
            {
                progress.event(format!("warning: cannot update the state file of {id}: {e}"));
            }
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
        for f in chosen.iter().filter(|f| owned(&root, &f.deployment_id, target).is_some()) {
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

/// How long after a run began its resources' tags may still not show in EC2's reads.
const TAG_LAG: std::time::Duration = std::time::Duration::from_secs(300);

/// Pure over the clock: was `created_at` (RFC 3339) less than [`TAG_LAG`] ago? An
/// unreadable time counts as recent (the safe side: ask by id).
fn recent(created_at: &str) -> bool {
    created_at.parse::<jiff::Timestamp>().map_or(true, |t| {
        jiff::Timestamp::now().as_second() - t.as_second()
            < i64::try_from(TAG_LAG.as_secs()).unwrap_or(i64::MAX)
    })
}

/// The state file of deployment `id` under `root`, when it is the target's: of any run
/// and repository, or of the ones the target names.
fn owned(root: &std::path::Path, id: &str, target: Target<'_>) -> Option<state::State> {
    state::read(root, id).filter(|s| {
        target.run.is_none_or(|run| s.run_id == run) && target.repository.is_none_or(|r| s.repository == r)
    })
}

/// Prints what `remove` did; an error when something is left.
pub fn report(
    removal: Result<Option<Removal>, Error>,
    deployment: Option<&str>,
    search: &Search,
    progress: &Progress,
) -> Result<(), Error> {
    let mut out = crate::fence::Guarded::stdout();
    match removal? {
        None => {
            let what = deployment
                .map_or_else(|| "no deployments".to_string(), |id| format!("no resources of `{id}`"));
            let _ = writeln!(out, "nothing to do: {what} in {}", search.describe());
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
