//! Turning a plan into running instances, or into nothing at all.
//!
//! Regions that get instances are prepared in parallel (image, network, security group,
//! key pair, launch template), then each launches one instant fleet over every subnet x
//! allowed type. A shortfall is topped up from the other regions in config order, then
//! (with `spot.fallback: on-demand`) on-demand; otherwise the run fails naming each
//! region, AZ and type tried and why. Every resource is recorded as soon as EC2's answer
//! names it. A resource whose answer was lost (or a run cancelled while a call was in
//! flight) is not in the record, so the rollback, which removes what is recorded, misses
//! it; it carries the deployment's tags from its creation, and `spot destroy`, the
//! Action's post step and `spot reap` find it by them. Then one batched describe per
//! region per poll waits for `running`. Any failure (or SIGINT/SIGTERM) after the first
//! resource exists rolls back everything this run recorded.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use futures::StreamExt as _;
use serde::Serialize;

use super::progress::{Cancel, Progress};
use super::state::{Recorder, Status};
use super::teardown::{self, Removal, VISIBILITY_GRACE};
use crate::manifest::types::{Arch, Deployment, Fallback};
use crate::plan::{ImageChoice, Plan, RegionPlan, tag};
use crate::provider::{
    self, Cloud, FleetOutcome, FleetRequest, Image, Instance, Kind, Launched, Market, Pool, PoolError,
    Resource, Tags, TemplateSpec,
};

/// Regions prepared or launched at the same time, at most.
const REGION_CONCURRENCY: usize = 8;
/// Instances being delivered to at the same time, at most.
pub const DELIVERY_CONCURRENCY: usize = 16;

/// Makes one running instance ready (uploads, scripts, services, health), or says why not.
pub trait Deliver: Sync {
    fn deliver(&self, instance: &Instance) -> impl std::future::Future<Output = Result<(), String>> + Send;
}

/// Launch only: an instance is ready once it runs.
#[derive(Debug, Clone, Copy)]
pub struct LaunchOnly;

impl Deliver for LaunchOnly {
    async fn deliver(&self, _instance: &Instance) -> Result<(), String> {
        Ok(())
    }
}

/// One instance's end: ready after so many seconds from the start of the run, or failed.
#[derive(Debug, Clone, Serialize)]
pub struct Outcome {
    #[serde(flatten)]
    pub instance: Instance,
    pub ready: bool,
    /// Seconds from the start of `create` to ready.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub seconds_to_ready: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// Everything a run needs besides the cloud. The user-data holds the host private key,
/// so `Debug` omits it.
pub struct Request<'a> {
    pub deployment: &'a Deployment,
    pub plan: &'a Plan,
    /// User-data exactly as sent (maybe gzipped).
    pub user_data: &'a [u8],
    /// The deployment's client public key (OpenSSH one-line form).
    pub public_key: &'a str,
    pub ssh_cidrs: Vec<String>,
    /// The plan's tags plus `spot:run-id`.
    pub tags: Tags,
    pub run_id: String,
    pub wait_timeout: Duration,
    /// Pause between describes while waiting for `running`.
    pub poll: Duration,
    /// Fewest ready instances that count as success (the rest are terminated).
    pub min_ready: u32,
}

impl std::fmt::Debug for Request<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Request")
            .field("deployment_id", &self.plan.deployment_id)
            .field("user_data_bytes", &self.user_data.len())
            .field("ssh_cidrs", &self.ssh_cidrs)
            .field("run_id", &self.run_id)
            .finish_non_exhaustive()
    }
}

/// Why a run failed, and what its rollback removed.
#[derive(Debug)]
pub struct Failure {
    pub message: String,
    pub cancelled: bool,
    pub removal: Removal,
}

/// One region, ready to launch into.
#[derive(Debug, Clone)]
struct Ready {
    region: String,
    template_id: String,
    pools: Vec<Pool>,
}

/// A fleet call's outcome with where and how it was asked.
#[derive(Debug)]
struct Attempt {
    region: String,
    market: Market,
    asked: u32,
    outcome: FleetOutcome,
}

struct Run<'a, C: Cloud, D: Deliver> {
    cloud: &'a C,
    deliver: &'a D,
    req: &'a Request<'a>,
    recorder: &'a dyn Recorder,
    progress: &'a Progress,
    cancel: &'a Cancel,
    made: Mutex<Vec<Resource>>,
}

/// Creates the deployment. On success at least `min_ready` instances are ready (each
/// delivered to as soon as it runs); the outcomes list every instance launched.
pub async fn create<C: Cloud, D: Deliver>(
    cloud: &C,
    deliver: &D,
    req: &Request<'_>,
    recorder: &dyn Recorder,
    progress: &Progress,
    cancel: &Cancel,
) -> Result<Vec<Outcome>, Failure> {
    let run = Run { cloud, deliver, req, recorder, progress, cancel, made: Mutex::new(Vec::new()) };
    // A signal stops the run between steps; a call in flight gets a short grace period,
    // then is abandoned (whatever it made is tagged, and `destroy` finds it).
    let outcome = tokio::select! {
        result = run.go() => result.and_then(|instances| run.check_cancel().map(|()| instances)),
        () = async {
            cancel.cancelled().await;
            tokio::time::sleep(Duration::from_secs(2)).await;
        } => Err("cancelled by signal".to_string()),
    };
    match outcome {
        Ok(outcomes) => {
            let ready: Vec<Instance> =
                outcomes.iter().filter(|o| o.ready).map(|o| o.instance.clone()).collect();
            recorder.instances(&ready);
            recorder.status(Status::Ready);
            Ok(outcomes)
        }
        Err(message) => Err(run.roll_back(message).await),
    }
}

impl<C: Cloud, D: Deliver> Run<'_, C, D> {
    fn record(&self, mut resource: Resource) {
        if resource.tags.is_empty() {
            resource.tags = self.req.tags.clone();
        }
        self.recorder.created(&resource);
        self.made.lock().unwrap_or_else(std::sync::PoisonError::into_inner).push(resource);
    }

    fn check_cancel(&self) -> Result<(), String> {
        if self.cancel.is_cancelled() { Err("cancelled by signal".into()) } else { Ok(()) }
    }

    fn region_plan(&self, region: &str) -> Option<&RegionPlan> {
        self.req.plan.regions.iter().find(|r| r.region == region)
    }

    fn region_tags(&self, plan: &RegionPlan) -> Tags {
        let mut tags = self.req.tags.clone();
        tags.extend(plan.tags.clone());
        tags
    }

    async fn go(&self) -> Result<Vec<Outcome>, String> {
        let total = self.req.plan.total_instances;
        let first: Vec<&RegionPlan> = self.req.plan.regions.iter().filter(|r| r.instances > 0).collect();
        let mut ready: BTreeMap<String, Ready> = BTreeMap::new();
        let mut attempts: Vec<Attempt> = Vec::new();

        // Round one: every region with a share, prepared and launched in parallel.
        let results: Vec<Result<(Ready, Attempt), String>> = futures::stream::iter(first)
            .map(|plan| async move {
                let prepared = self.prepare(plan).await?;
                self.check_cancel()?;
                let attempt = self.launch(&prepared, plan.instances, Market::Spot, 1).await?;
                Ok((prepared, attempt))
            })
            .buffer_unordered(REGION_CONCURRENCY)
            .collect()
            .await;
        for result in results {
            let (prepared, attempt) = result?;
            ready.insert(prepared.region.clone(), prepared);
            attempts.push(attempt);
        }
        let mut launched: u32 = attempts.iter().map(|a| count(&a.outcome)).sum();

        // Top up: spot in the other regions (and ones with spare pools), in config order.
        let markets: &[Market] = match self.req.deployment.config.fallback {
            Fallback::None => &[Market::Spot],
            Fallback::OnDemand => &[Market::Spot, Market::OnDemand],
        };
        let mut round = 2;
        for market in markets {
            for plan in &self.req.plan.regions {
                if launched >= total {
                    break;
                }
                self.check_cancel()?;
                let exhausted = attempts
                    .iter()
                    .any(|a| a.region == plan.region && a.market == *market && count(&a.outcome) < a.asked);
                if exhausted {
                    continue;
                }
                let prepared = match ready.get(&plan.region) {
                    Some(r) => r.clone(),
                    None => {
                        let r = self.prepare(plan).await?;
                        ready.insert(plan.region.clone(), r.clone());
                        r
                    }
                };
                let attempt = self.launch(&prepared, total - launched, *market, round).await?;
                round += 1;
                launched += count(&attempt.outcome);
                attempts.push(attempt);
            }
        }
        if launched < total {
            return Err(capacity_report(total, launched, &attempts, self.req.deployment.config.fallback));
        }
        for a in &attempts {
            for e in &a.outcome.errors {
                self.progress.event(format!(
                    "{}: {} {} in {} unavailable ({}), filled elsewhere",
                    a.region, a.market, e.instance_type, e.az, e.code
                ));
            }
        }
        let expected: Vec<Launched> = attempts.iter().flat_map(|a| a.outcome.launched.clone()).collect();
        self.wait_and_deliver(&expected).await
    }

    /// Pipelined: each instance is delivered to the moment it runs, while the others
    /// still start. Fails as soon as too many instances failed to leave `min_ready`.
    async fn wait_and_deliver(&self, expected: &[Launched]) -> Result<Vec<Outcome>, String> {
        let total = expected.len();
        let min_ready = usize::try_from(self.req.min_ready).unwrap_or(usize::MAX).min(total);
        let (tx, rx) = futures::channel::mpsc::unbounded::<Instance>();
        let waiting = async move {
            let result = self
                .wait_running(expected, &|instance| {
                    let _ = tx.unbounded_send(instance);
                })
                .await;
            drop(tx);
            result.map(|_| ())
        };
        let delivering = async {
            let mut stream = rx
                .map(|instance| async move {
                    let result = self.deliver.deliver(&instance).await;
                    (instance, result)
                })
                .buffer_unordered(DELIVERY_CONCURRENCY);
            let mut outcomes: Vec<Outcome> = Vec::new();
            while let Some((instance, result)) = stream.next().await {
                let secs = self.progress.elapsed().as_secs_f64();
                match result {
                    Ok(()) => {
                        self.progress
                            .event(format!("{}: {} ready ({secs:.1}s)", instance.region, instance.id));
                        outcomes.push(Outcome {
                            instance,
                            ready: true,
                            seconds_to_ready: Some(secs),
                            error: None,
                        });
                    }
                    Err(e) => {
                        self.progress.event(format!("{}: {} failed: {e}", instance.region, instance.id));
                        outcomes.push(Outcome {
                            instance,
                            ready: false,
                            seconds_to_ready: None,
                            error: Some(e),
                        });
                    }
                }
                let failed = outcomes.iter().filter(|o| !o.ready).count();
                if total - failed < min_ready {
                    return Err(not_ready_report(&outcomes, total, min_ready));
                }
                self.progress.status(format!(
                    "{}/{total} ready, {failed} failed",
                    outcomes.iter().filter(|o| o.ready).count()
                ));
            }
            Ok(outcomes)
        };
        let ((), mut outcomes) = futures::future::try_join(waiting, delivering).await?;
        let broken: Vec<&Outcome> = outcomes.iter().filter(|o| !o.ready).collect();
        for o in &broken {
            may_terminate(&o.instance)?;
            self.progress.event(format!(
                "{}: terminating {} (not ready; {} of {total} ready is enough)",
                o.instance.region,
                o.instance.id,
                total - broken.len()
            ));
            // It ran, so EC2 knows it: an id it no longer knows is gone.
            self.cloud
                .terminate(&o.instance.region, std::slice::from_ref(&o.instance.id))
                .await
                .map_err(|e| e.to_string())?;
            self.recorder.removed(&Resource {
                kind: Kind::Instance,
                region: o.instance.region.clone(),
                id: o.instance.id.clone(),
                name: None,
                tags: o.instance.tags.clone(),
            });
        }
        outcomes
            .sort_by(|a, b| (&a.instance.region, &a.instance.id).cmp(&(&b.instance.region, &b.instance.id)));
        Ok(outcomes)
    }

    /// Image, network, security group, key pair and launch template for one region.
    async fn prepare(&self, plan: &RegionPlan) -> Result<Ready, String> {
        let cloud = self.cloud;
        let region = plan.region.as_str();
        let tags = self.region_tags(plan);
        let name = format!("spot-{}", self.req.plan.deployment_id);
        self.progress.event(format!("{region}: preparing ({})", plan.instance_types.join(", ")));
        // Images, network and key pair do not depend on each other: ask at once.
        let images = async {
            let found = futures::future::join_all(plan.images.iter().map(|c| self.image(region, c))).await;
            plan.images.iter().map(|c| c.arch).zip(found).map(|(arch, image)| Ok((arch, image?))).collect()
        };
        let network = async {
            if self.req.deployment.config.dedicated_vpc {
                let made = |r: Resource| self.record(r);
                cloud.create_network(region, &tags, &made).await.map_err(|e| e.to_string())
            } else {
                cloud.default_network(region).await.map_err(|e| e.to_string())
            }
        };
        let key = async {
            let key = cloud
                .import_key(region, &name, self.req.public_key, &tags)
                .await
                .map_err(|e| e.to_string())?;
            self.record(key);
            Ok::<(), String>(())
        };
        let (images, network, key): (Result<BTreeMap<Arch, Image>, String>, _, _) =
            futures::join!(images, network, key);
        let (images, network) = (images?, network?);
        key?;
        if network.subnets.is_empty() {
            return Err(format!("{region}: the VPC {} has no subnets to launch into", network.vpc_id));
        }
        let sg = cloud
            .create_security_group(region, &name, &network.vpc_id, &self.req.ssh_cidrs, &tags)
            .await
            .map_err(|e| e.to_string())?;
        let sg_id = sg.id.clone();
        self.record(sg);
        let primary = images.values().next().cloned().ok_or_else(|| format!("{region}: no image chosen"))?;
        let template = cloud
            .create_template(
                region,
                &TemplateSpec {
                    name: name.clone(),
                    image_id: primary.id.clone(),
                    root_device: primary.root_device.clone(),
                    security_group_id: sg_id,
                    key_name: name.clone(),
                    user_data: self.req.user_data.to_vec(),
                    storage_gb: plan.storage_gb,
                    public_ip: self.req.deployment.config.public_ip,
                    tags: tags.clone(),
                },
            )
            .await
            .map_err(|e| e.to_string())?;
        let template_id = template.id.clone();
        self.record(template);
        let mut pools = Vec::new();
        for instance_type in &plan.instance_types {
            let arch = crate::manifest::types::InstanceType::parse(instance_type)
                .map(|t| t.arch())
                .unwrap_or(Arch::X86_64);
            let Some(image) = images.get(&arch) else {
                continue;
            };
            for subnet in &network.subnets {
                pools.push(Pool {
                    instance_type: instance_type.clone(),
                    subnet_id: subnet.id.clone(),
                    az: subnet.az.clone(),
                    image_id: image.id.clone(),
                });
            }
        }
        Ok(Ready { region: region.to_string(), template_id, pools })
    }

    async fn image(&self, region: &str, choice: &ImageChoice) -> Result<Image, String> {
        if choice.image == "auto" {
            return self.cloud.latest_ubuntu(region, choice.arch).await.map_err(|e| e.to_string());
        }
        match self.cloud.image(region, &choice.image).await.map_err(|e| e.to_string())? {
            Some(image) if image.arch == choice.arch => Ok(image),
            Some(image) => Err(format!(
                "{region}: image {} is {}, but the machine types need {}",
                choice.image, image.arch, choice.arch
            )),
            None => Err(format!(
                "{region}: image {} does not exist (or is not visible to this account)",
                choice.image
            )),
        }
    }

    async fn launch(&self, ready: &Ready, asked: u32, market: Market, round: u32) -> Result<Attempt, String> {
        let plan = self.region_plan(&ready.region).ok_or("region left the plan")?;
        let tags = self.region_tags(plan);
        // One token per request: a retried call after a lost answer is not a second fleet.
        let token = format!("{}-{}-{round}", self.req.run_id, ready.region);
        let request = FleetRequest {
            template_id: ready.template_id.clone(),
            pools: ready.pools.clone(),
            count: asked,
            market,
            max_price: plan.max_price,
            tags: tags.clone(),
            client_token: token.chars().take(64).collect(),
        };
        self.progress.event(format!(
            "{}: launching {asked} {market} instance(s) over {} pool(s)",
            ready.region,
            ready.pools.len()
        ));
        let outcome = self.cloud.launch(&ready.region, &request).await.map_err(|e| e.to_string())?;
        if let Some(fleet) = &outcome.fleet_id {
            self.record(Resource {
                kind: Kind::Fleet,
                region: ready.region.clone(),
                id: fleet.clone(),
                name: None,
                tags: tags.clone(),
            });
        }
        for l in &outcome.launched {
            self.record(Resource {
                kind: Kind::Instance,
                region: ready.region.clone(),
                id: l.id.clone(),
                name: None,
                tags: tags.clone(),
            });
            self.progress.event(format!(
                "{}: {} launched ({} {}, {})",
                ready.region, l.id, l.market, l.instance_type, l.az
            ));
        }
        // Errors that are not about capacity are mistakes in the request: stop.
        if outcome.launched.is_empty()
            && let Some(e) = outcome.errors.iter().find(|e| !e.is_capacity())
        {
            return Err(format!(
                "{}: CreateFleet refused {} in {}: {}: {}",
                ready.region, e.instance_type, e.az, e.code, e.message
            ));
        }
        Ok(Attempt { region: ready.region.clone(), market, asked, outcome })
    }

    /// Waits until every launched instance runs. One describe per region per poll. An
    /// instance EC2's reads do not show yet is pending for [`VISIBILITY_GRACE`] (EC2 is
    /// eventually consistent: CreateFleet's answer comes before the describe that shows
    /// it). A retried launch makes no second set: each CreateFleet carries a client
    /// token, and EC2 answers a repeated token with the first answer.
    async fn wait_running(
        &self,
        expected: &[Launched],
        on_running: &(dyn Fn(Instance) + Sync),
    ) -> Result<Vec<Instance>, String> {
        let started = Instant::now();
        let deadline = started + self.req.wait_timeout;
        let mut regions: Vec<String> = self.req.plan.regions.iter().map(|r| r.region.clone()).collect();
        regions.retain(|r| {
            self.made
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .iter()
                .any(|m| &m.region == r && m.kind == Kind::Instance)
        });
        let filter: Tags = [
            (tag::DEPLOYMENT.to_string(), self.req.plan.deployment_id.clone()),
            (tag::RUN_ID.to_string(), self.req.run_id.clone()),
        ]
        .into();
        let mut last: BTreeMap<String, String> = BTreeMap::new();
        loop {
            let found: Vec<Result<Vec<Instance>, provider::Error>> = futures::stream::iter(&regions)
                .map(|region| self.cloud.instances(region, &filter))
                .buffer_unordered(REGION_CONCURRENCY)
                .collect()
                .await;
            let mut now: Vec<Instance> = Vec::new();
            for f in found {
                now.extend(f.map_err(|e| e.to_string())?);
            }
            let mut running = Vec::new();
            for e in expected {
                let state = now.iter().find(|i| i.id == e.id);
                let label = state.map_or("gone", |i| i.state.as_str()).to_string();
                if last.get(&e.id) != Some(&label) {
                    if let Some(i) = state.filter(|i| i.state == "running") {
                        let address = i.address().unwrap_or("no address");
                        self.progress.event(format!(
                            "{}: {} running at {address} ({:.1}s)",
                            i.region,
                            i.id,
                            self.progress.elapsed().as_secs_f64()
                        ));
                        on_running(i.clone());
                    }
                    last.insert(e.id.clone(), label.clone());
                }
                match state {
                    Some(i) if i.state == "running" => running.push(i.clone()),
                    Some(i) if i.state == "pending" => {}
                    Some(i) => {
                        return Err(format!(
                            "{} in {} went to `{}` while starting (spot capacity reclaimed?)",
                            i.id, i.region, i.state
                        ));
                    }
                    None if started.elapsed() < VISIBILITY_GRACE => {}
                    None => {
                        return Err(format!(
                            "{} ({} {}) is not in EC2's answers {}s after launch: it stopped before it ran (spot capacity reclaimed?), or EC2's reads still lag",
                            e.id,
                            e.instance_type,
                            e.az,
                            VISIBILITY_GRACE.as_secs()
                        ));
                    }
                }
            }
            self.progress.status(format!("{}/{} running", running.len(), expected.len()));
            if running.len() == expected.len() {
                return Ok(running);
            }
            if Instant::now() >= deadline {
                return Err(format!(
                    "{} of {} instance(s) not running after {}s",
                    expected.len() - running.len(),
                    expected.len(),
                    self.req.wait_timeout.as_secs()
                ));
            }
            if self.cancel.sleep(self.req.poll).await {
                return Err("cancelled by signal".into());
            }
        }
    }

    /// Removes what this run made. After a cancel, it keeps within a few seconds and
    /// leaves the rest (recorded, tagged) to `destroy`.
    async fn roll_back(&self, message: String) -> Failure {
        let cancelled = self.cancel.is_cancelled();
        let made = self.made.lock().unwrap_or_else(std::sync::PoisonError::into_inner).clone();
        if made.is_empty() {
            return Failure { message, cancelled, removal: Removal::default() };
        }
        self.progress.event(format!("failed: {message}; rolling back {}", teardown::summarize(&made)));
        let budget = if cancelled { Duration::from_secs(7) } else { Duration::from_secs(300) };
        let removal = teardown::teardown(
            self.cloud,
            &self.req.plan.deployment_id,
            made,
            (Instant::now() + budget, teardown::Age::Fresh),
            self.progress,
            Some(self.recorder),
        )
        .await;
        self.recorder.status(if removal.failed.is_empty() { Status::RolledBack } else { Status::Incomplete });
        Failure { message, cancelled, removal }
    }
}

/// The ownership rule before `create` terminates an instance it launched: without spot's
/// marker the run fails rather than touch it.
fn may_terminate(instance: &Instance) -> Result<(), String> {
    if tag::is_ours(&instance.tags) {
        Ok(())
    } else {
        Err(format!("{} is not tagged {}; spot will not terminate it", instance.id, tag::MANAGED_BY))
    }
}

fn count(outcome: &FleetOutcome) -> u32 {
    u32::try_from(outcome.launched.len()).unwrap_or(u32::MAX)
}

/// Names every instance that did not become ready and why.
fn not_ready_report(outcomes: &[Outcome], total: usize, min_ready: usize) -> String {
    let failed: Vec<&Outcome> = outcomes.iter().filter(|o| !o.ready).collect();
    let mut lines =
        vec![format!("{} of {total} instance(s) failed; at least {min_ready} must be ready:", failed.len())];
    for o in failed {
        lines.push(format!(
            "{} ({} {}): {}",
            o.instance.id,
            o.instance.region,
            o.instance.az,
            o.error.as_deref().unwrap_or_default()
        ));
    }
    lines.join("\n")
}

/// Names every region, market, AZ and type tried and why it gave nothing.
fn capacity_report(total: u32, launched: u32, attempts: &[Attempt], fallback: Fallback) -> String {
    let mut lines = vec![format!("only {launched} of {total} instance(s) could be launched:")];
    for a in attempts {
        let got = count(&a.outcome);
        lines.push(format!("  {} {}: asked {}, got {got}", a.region, a.market, a.asked));
        let mut errors: Vec<&PoolError> = a.outcome.errors.iter().collect();
        errors.sort_by(|x, y| (&x.az, &x.instance_type).cmp(&(&y.az, &y.instance_type)));
        errors.dedup_by(|x, y| x.az == y.az && x.instance_type == y.instance_type && x.code == y.code);
        for e in errors {
            lines.push(format!("    {} {}: {} {}", e.az, e.instance_type, e.code, e.message));
        }
    }
    if fallback == Fallback::None {
        lines.push(
            "set `spot.fallback: on-demand` to fill the rest on-demand, or add regions or machine types"
                .into(),
        );
    }
    lines.join("\n")
}
