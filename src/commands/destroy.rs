//! `spot destroy`: remove a deployment found by its tags, idempotently.

use std::io::Write as _;
use std::time::Instant;

use crate::Error;
use crate::cli::DestroyArgs;
use crate::lifecycle::inventory::{self, Found};
use crate::lifecycle::progress::Progress;
use crate::lifecycle::state::{self, Status};
use crate::lifecycle::teardown::{self, Removal};
use crate::plan::tag;
use crate::provider::ec2::Ec2;
use crate::provider::{Cloud as _, Tags};

pub fn run(args: &DestroyArgs) -> Result<(), Error> {
    let regions = super::regions_for(&args.dir, &args.regions)?;
    let timeout = super::duration_flag("--timeout", &args.timeout)?;
    if let Some(id) = &args.deployment {
        crate::plan::check_deployment_id(id)
            .map_err(|message| Error::Usage { message, help: "pass the id shown by `spot list`".into() })?;
    }
    let progress = Progress::new();
    let removal = remove(
        &args.dir,
        &regions,
        args.deployment.as_deref(),
        args.yes,
        timeout,
        args.cloud.endpoint_url.as_deref(),
        &progress,
    );
    report(removal, args.deployment.as_deref(), &regions, &progress)
}

/// `configured` and then every other region enabled for the account: where a deployment
/// may be when its description has moved since it was made (a pull request that changed
/// its regions). Without an answer from EC2, the configured ones, with a warning.
pub fn everywhere(configured: &[String], endpoint_url: Option<&str>, progress: &Progress) -> Vec<String> {
    let mut regions = configured.to_vec();
    let near = configured.first().map_or("us-east-1", String::as_str).to_string();
    let all = super::runtime().map_err(|e| e.to_string()).and_then(|rt| {
        rt.block_on(async { Ec2::new(endpoint_url).await.regions(&near).await.map_err(|e| e.to_string()) })
    });
    match all {
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

/// Finds `deployment` (or every deployment, with `all`) by tags in `regions` and removes
/// it; `None` when there was nothing to remove.
pub fn remove(
    dir: &std::path::Path,
    regions: &[String],
    deployment: Option<&str>,
    all: bool,
    timeout: std::time::Duration,
    endpoint_url: Option<&str>,
    progress: &Progress,
) -> Result<Option<Removal>, Error> {
    let filter: Tags = deployment.iter().map(|id| (tag::DEPLOYMENT.to_string(), (*id).to_string())).collect();
    super::runtime()?.block_on(async {
        let cloud = Ec2::new(endpoint_url).await;
        let found =
            inventory::discover(&cloud, regions, &filter).await.map_err(|e| super::cloud_error(&e))?;
        let chosen: Vec<&Found> = found.values().collect();
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
            teardown::teardown(&cloud, &f.deployment_id, f.all_resources(), deadline, progress, None)
        });
        for r in futures::future::join_all(sweeps).await {
            total.merge(r);
        }
        for f in &chosen {
            mark_destroyed(dir, &f.deployment_id);
        }
        Ok(Some(total))
    })
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
            let failed: Vec<String> = r
                .failed
                .iter()
                .map(|(res, e)| format!("{} {} in {}: {e}", res.kind, res.id, res.region))
                .collect();
            Err(Error::Runtime {
                message: format!("{} resource(s) not removed:\n  {}", failed.len(), failed.join("\n  ")),
                help: "run `spot destroy` again; what remains is still tagged and will be found".into(),
            })
        }
    }
}

/// Updates the local state file, if this folder has one for the deployment.
fn mark_destroyed(dir: &std::path::Path, deployment_id: &str) {
    let root = std::fs::canonicalize(dir).unwrap_or_else(|_| dir.to_path_buf());
    if let Some(mut s) = state::read(&root, deployment_id) {
        s.status = Status::Destroyed;
        s.resources.clear();
        s.instances.clear();
        let path = root.join(state::STATE_DIR).join(format!("{deployment_id}.json"));
        let _ = std::fs::write(path, serde_json::to_string_pretty(&s).unwrap_or_default() + "\n");
    }
}
