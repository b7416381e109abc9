//! Removing what a deployment made, in dependency order, all regions at once.
//!
//! Per region: delete instant fleets, terminate every instance in one call, delete launch
//! templates and key pairs right away (nothing depends on them); wait (bounded) until the instances
//! are gone, with one describe per region per poll; then delete the security group and
//! any dedicated VPC parts, retrying while EC2 still reports them in use. A resource
//! without `spot:managed-by=spot` is never touched. Failures are recorded and the sweep
//! goes on; the caller decides the exit status.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use futures::StreamExt as _;

use super::inventory::Deployed;
use super::progress::Progress;
use super::state::Recorder;
use crate::plan::tag;
use crate::provider::{Cloud, ErrorKind, Kind, Resource, Tags};

/// What a teardown did.
#[derive(Debug, Default, Clone)]
pub struct Removal {
    pub removed: Vec<Resource>,
    pub failed: Vec<(Resource, String)>,
}

impl Removal {
    pub fn merge(&mut self, other: Removal) {
        self.removed.extend(other.removed);
        self.failed.extend(other.failed);
    }

    /// `3 instances, 1 security group, ...` in teardown order.
    pub fn summary(&self) -> String {
        summarize(&self.removed)
    }

    /// Each resource not removed, as `kind id in region: why`.
    pub fn failures(&self) -> Vec<String> {
        self.failed.iter().map(|(r, e)| format!("{} {} in {}: {e}", r.kind, r.id, r.region)).collect()
    }
}

/// Counts by kind, in teardown order.
pub fn summarize(resources: &[Resource]) -> String {
    let parts: Vec<String> = Kind::TEARDOWN
        .iter()
        .filter_map(|kind| {
            let n = resources.iter().filter(|r| r.kind == *kind).count();
            (n > 0).then(|| format!("{n} {kind}{}", if n == 1 { "" } else { "s" }))
        })
        .collect();
    if parts.is_empty() { "nothing".into() } else { parts.join(", ") }
}

/// How long an instance launched moments ago may stay unknown to EC2's reads (eventual
/// consistency: "InvalidInstanceID.NotFound" for an id CreateFleet just answered).
pub const VISIBILITY_GRACE: Duration = Duration::from_secs(60);

/// Whose instances a teardown removes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Age {
    /// Launched by this very run (a rollback): an id EC2 does not know yet is asked
    /// again for up to [`VISIBILITY_GRACE`], not taken as gone.
    Fresh,
    /// Found by tags or recorded by an earlier run: an unknown id is gone.
    Settled,
}

/// Removes a deployment an earlier run left, as found by its tags (and records), by
/// `deadline`: `destroy`, the Action's teardowns, `reap`.
pub async fn found<C: Cloud>(
    cloud: &C,
    deployed: &Deployed,
    deadline: Instant,
    progress: &Progress,
) -> Removal {
    let resources = deployed.all_resources();
    teardown(cloud, &deployed.deployment_id, resources, (deadline, Age::Settled), progress, None).await
}

/// Removes `resources` (instances included) of `deployment_id` by `deadline`.
pub async fn teardown<C: Cloud>(
    cloud: &C,
    deployment_id: &str,
    resources: Vec<Resource>,
    (deadline, age): (Instant, Age),
    progress: &Progress,
    recorder: Option<&dyn Recorder>,
) -> Removal {
    let mut by_region: BTreeMap<String, Vec<Resource>> = BTreeMap::new();
    for r in resources {
        if tag::is_ours(&r.tags) {
            by_region.entry(r.region.clone()).or_default().push(r);
        } else {
            progress.event(format!(
                "skipped {} {} in {}: not tagged spot:managed-by=spot",
                r.kind, r.id, r.region
            ));
        }
    }
    let removals: Vec<Removal> = futures::stream::iter(by_region)
        .map(|(region, list)| {
            region_teardown(cloud, deployment_id, region, list, (deadline, age), progress, recorder)
        })
        .buffer_unordered(16)
        .collect()
        .await;
    let mut all = Removal::default();
    for r in removals {
        all.merge(r);
    }
    all
}

async fn region_teardown<C: Cloud>(
    cloud: &C,
    deployment_id: &str,
    region: String,
    list: Vec<Resource>,
    (deadline, age): (Instant, Age),
    progress: &Progress,
    recorder: Option<&dyn Recorder>,
) -> Removal {
    let mut out = Removal::default();
    let done = |out: &mut Removal, r: Resource| {
        if let Some(rec) = recorder {
            rec.removed(&r);
        }
        out.removed.push(r);
    };
    let (mut instances, mut others): (Vec<Resource>, Vec<Resource>) =
        list.into_iter().partition(|r| r.kind == Kind::Instance);
    others.sort_by_key(|r| Kind::TEARDOWN.iter().position(|k| *k == r.kind));

    // Instant fleets go first: deleting one terminates its instances (EC2 refuses to keep
    // an instant fleet's instances without it), and nothing else depends on it.
    let (fleets, others): (Vec<Resource>, Vec<Resource>) =
        others.into_iter().partition(|r| r.kind == Kind::Fleet);
    for r in fleets {
        match cloud.delete(&r).await {
            Ok(()) => done(&mut out, r),
            Err(e) => out.failed.push((r, e.to_string())),
        }
    }

    let mut ids: Vec<String> = instances.iter().map(|r| r.id.clone()).collect();
    let mut terminated = ids.is_empty();
    if !ids.is_empty() {
        match terminate(cloud, &region, &ids, (deadline, age)).await {
            Ok(unseen) => {
                progress.event(format!("{region}: terminating {} instance(s)", ids.len()));
                terminated = true;
                let (missed, kept): (Vec<Resource>, Vec<Resource>) =
                    instances.into_iter().partition(|r| unseen.contains(&r.id));
                for r in missed {
                    out.failed.push((
                        r,
                        format!(
                            "EC2 did not know this instance {}s after launch (its reads lag); `spot destroy` finds it by its tags",
                            VISIBILITY_GRACE.as_secs()
                        ),
                    ));
                }
                instances = kept;
                ids.retain(|id| !unseen.contains(id));
            }
            Err(e) => {
                for r in &instances {
                    out.failed.push((r.clone(), e.to_string()));
                }
            }
        }
    }

    // Independent of the instances: deleted while they shut down.
    let (now, after): (Vec<Resource>, Vec<Resource>) =
        others.into_iter().partition(|r| matches!(r.kind, Kind::LaunchTemplate | Kind::KeyPair));
    let deletes = futures::future::join_all(now.into_iter().map(|r| async move {
        let result = cloud.delete(&r).await;
        (r, result)
    }));
    let wait = async {
        if terminated && !ids.is_empty() {
            Some(wait_gone(cloud, &region, deployment_id, &ids, deadline).await)
        } else {
            None
        }
    };
    let (deleted, gone) = futures::join!(deletes, wait);
    for (r, result) in deleted {
        match result {
            Ok(()) => done(&mut out, r),
            Err(e) => out.failed.push((r, e.to_string())),
        }
    }
    match gone {
        Some(Ok(())) => {
            for r in instances {
                done(&mut out, r);
            }
        }
        Some(Err(message)) => {
            for r in instances {
                out.failed.push((r, message.clone()));
            }
        }
        None => {}
    }

    for r in after {
        let mut delay = Duration::from_millis(500);
        loop {
            match cloud.delete(&r).await {
                Ok(()) => {
                    done(&mut out, r);
                    break;
                }
                Err(e) if e.kind == ErrorKind::InUse && Instant::now() + delay < deadline => {
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(Duration::from_secs(10));
                }
                Err(e) => {
                    out.failed.push((r, e.to_string()));
                    break;
                }
            }
        }
    }
    out
}

/// Terminates `ids`; for fresh ones, asks again about those EC2 does not know yet until
/// it does or the grace (or deadline) passes. Answers the ids still unknown that count.
async fn terminate<C: Cloud>(
    cloud: &C,
    region: &str,
    ids: &[String],
    (deadline, age): (Instant, Age),
) -> Result<Vec<String>, crate::provider::Error> {
    let mut unknown = cloud.terminate(region, ids).await?;
    if age == Age::Settled {
        return Ok(Vec::new());
    }
    let until = deadline.min(Instant::now() + VISIBILITY_GRACE);
    let mut delay = Duration::from_millis(500);
    while !unknown.is_empty() && Instant::now() + delay < until {
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(Duration::from_secs(5));
        unknown = cloud.terminate(region, &unknown).await?;
    }
    Ok(unknown)
}

/// Polls (one describe per poll) until none of `ids` is left in a live state.
async fn wait_gone<C: Cloud>(
    cloud: &C,
    region: &str,
    deployment_id: &str,
    ids: &[String],
    deadline: Instant,
) -> Result<(), String> {
    let filter: Tags = [(tag::DEPLOYMENT.to_string(), deployment_id.to_string())].into();
    let mut delay = Duration::from_millis(250);
    loop {
        let live = match cloud.instances(region, &filter).await {
            Ok(found) => found.iter().filter(|i| ids.contains(&i.id) && i.state != "terminated").count(),
            Err(e) => return Err(e.to_string()),
        };
        if live == 0 {
            return Ok(());
        }
        if Instant::now() + delay > deadline {
            return Err(format!(
                "{live} instance(s) still shutting down at the deadline; run `spot destroy` again"
            ));
        }
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(Duration::from_secs(5));
    }
}
