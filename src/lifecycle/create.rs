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
use futures::future::{AbortHandle, AbortRegistration, Abortable};
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

impl Outcome {
    /// An instance ready `seconds` into the run.
    pub fn ready(instance: Instance, seconds: f64) -> Self {
        Self { instance, ready: true, seconds_to_ready: Some(seconds), error: None }
    }

    /// An instance that did not get ready: it has no URL to give.
    pub fn failed(mut instance: Instance, error: String) -> Self {
        instance.urls.clear();
        Self { instance, ready: false, seconds_to_ready: None, error: Some(error) }
    }
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
    /// The security group's inbound rules (SSH and `expose`).
    pub rules: Vec<crate::provider::Rule>,
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
            .field("rules", &self.rules)
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
    /// The next launch round after the first (each has its own client token).
    round: std::sync::atomic::AtomicU32,
}

/// The regions prepared so far and every fleet call made: what a top-up builds on.
#[derive(Debug, Default)]
struct Fill {
    ready: BTreeMap<String, Ready>,
    attempts: Vec<Attempt>,
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
    let run = Run {
        cloud,
        deliver,
        req,
        recorder,
        progress,
        cancel,
        made: Mutex::new(Vec::new()),
        round: std::sync::atomic::AtomicU32::new(2),
    };
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

    /// The tags of what is made in `plan`'s region now, stamped with the time
    /// (`spot:created-at`); a retried call sends the same ones.
    fn region_tags(&self, plan: &RegionPlan) -> Tags {
        let mut tags = self.req.tags.clone();
        tags.extend(plan.tags.clone());
        let now = jiff::Timestamp::now();
        let now = jiff::Timestamp::from_second(now.as_second()).unwrap_or(now);
        tags.insert(tag::CREATED_AT.to_string(), now.to_string());
        tags
    }

    async fn go(&self) -> Result<Vec<Outcome>, String> {
        let total = self.req.plan.total_instances;
        let first: Vec<&RegionPlan> = self.req.plan.regions.iter().filter(|r| r.instances > 0).collect();
        let mut fill = Fill::default();

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
            fill.ready.insert(prepared.region.clone(), prepared);
            fill.attempts.push(attempt);
        }
        let launched: u32 = fill.attempts.iter().map(|a| count(&a.outcome)).sum();
        let launched = launched + len(&self.top_up(total.saturating_sub(launched), &mut fill, &[]).await?);
        if launched < total {
            return Err(capacity_report(
                total,
                launched,
                &fill.attempts,
                self.req.deployment.config.fallback,
            ));
        }
        for a in &fill.attempts {
            for e in &a.outcome.errors {
                self.progress.event(format!(
                    "{}: {} {} in {} unavailable ({}), filled elsewhere",
                    a.region, a.market, e.instance_type, e.az, e.code
                ));
            }
        }
        let expected: Vec<Launched> = fill.attempts.iter().flat_map(|a| a.outcome.launched.clone()).collect();
        self.wait_and_deliver(expected, &mut fill).await
    }

    /// Launches up to `want` more instances, as a shortfall at launch is filled: spot in
    /// each region in config order (skipping a region whose spot pools already came up
    /// short), then on-demand when `spot.fallback` allows. Pools in `avoid` (type, AZ)
    /// are left out. Answers what it launched.
    async fn top_up(
        &self,
        want: u32,
        fill: &mut Fill,
        avoid: &[(String, String)],
    ) -> Result<Vec<Launched>, String> {
        let markets: &[Market] = match self.req.deployment.config.fallback {
            Fallback::None => &[Market::Spot],
            Fallback::OnDemand => &[Market::Spot, Market::OnDemand],
        };
        let mut got: Vec<Launched> = Vec::new();
        for market in markets {
            for plan in &self.req.plan.regions {
                if len(&got) >= want {
                    return Ok(got);
                }
                self.check_cancel()?;
                let exhausted = fill
                    .attempts
                    .iter()
                    .any(|a| a.region == plan.region && a.market == *market && count(&a.outcome) < a.asked);
                if exhausted {
                    continue;
                }
                let mut prepared = match fill.ready.get(&plan.region) {
                    Some(r) => r.clone(),
                    None => {
                        let r = self.prepare(plan).await?;
                        fill.ready.insert(plan.region.clone(), r.clone());
                        r
                    }
                };
                prepared.pools.retain(|p| !avoid.iter().any(|(t, az)| *t == p.instance_type && *az == p.az));
                if prepared.pools.is_empty() {
                    continue;
                }
                let round = self.round.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let attempt = self.launch(&prepared, want - len(&got), *market, round).await?;
                got.extend(attempt.outcome.launched.iter().cloned());
                fill.attempts.push(attempt);
            }
        }
        Ok(got)
    }

    /// Pipelined: each instance is delivered to the moment it runs (at most
    /// [`DELIVERY_CONCURRENCY`] at once), while the others still start and EC2 is watched
    /// beside the deliveries ([`Self::watch`]). Then the instances that failed are
    /// terminated (those EC2 took back are gone already).
    async fn wait_and_deliver(&self, first: Vec<Launched>, fill: &mut Fill) -> Result<Vec<Outcome>, String> {
        let (to_deliver, delivering) = futures::channel::mpsc::unbounded::<(Instance, AbortRegistration)>();
        let (delivered_tx, delivered) = futures::channel::mpsc::unbounded::<Delivered>();
        let pump = delivering
            .map(|(instance, registration)| async move {
                let result = Abortable::new(self.deliver.deliver(&instance), registration).await;
                (instance, result)
            })
            .buffer_unordered(DELIVERY_CONCURRENCY)
            .for_each(move |done| {
                let _ = delivered_tx.unbounded_send(done);
                futures::future::ready(())
            });
        let watch = tokio::select! {
            biased;
            watch = self.watch(first, fill, to_deliver, delivered) => watch?,
            () = pump => return Err("the deliveries stopped before the watch ended".into()),
        };
        let mut outcomes: Vec<Outcome> = watch.outcomes.into_values().collect();
        // Gone already: shutting down or terminated (a reclaim). One EC2 stopped
        // (`Server.SpotInstanceShutdown`) is still there, and is terminated with the rest.
        let broken: Vec<&Outcome> = outcomes
            .iter()
            .filter(|o| !o.ready && !matches!(o.instance.state.as_str(), "shutting-down" | "terminated"))
            .collect();
        let ready = outcomes.iter().filter(|o| o.ready).count();
        let mut kept: Vec<String> = Vec::new();
        for o in &broken {
            may_terminate(&o.instance)?;
            self.progress.event(format!(
                "{}: terminating {} (not ready; {ready} of {} ready is enough)",
                o.instance.region,
                o.instance.id,
                watch.expected.len()
            ));
            // It ran, so EC2 knows it: an id it no longer knows is gone. One that cannot
            // be terminated now stays recorded (and tagged) for the teardown.
            if let Err(e) =
                self.cloud.terminate(&o.instance.region, std::slice::from_ref(&o.instance.id)).await
            {
                self.progress.event(format!(
                    "warning: {}: cannot terminate {} now ({e}); the teardown removes it",
                    o.instance.region, o.instance.id
                ));
                kept.push(o.instance.id.clone());
            }
        }
        for o in outcomes.iter().filter(|o| !o.ready && !kept.contains(&o.instance.id)) {
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

    /// Watches the run's instances until each has an outcome: one describe per region per
    /// look, every poll while any starts (or a failed delivery waits to be explained),
    /// every five polls while only deliveries run. A running instance is handed to
    /// delivery. One EC2 takes back (a spot reclaim: `shutting-down`/`terminated`, reason
    /// `Server.SpotInstanceTermination`) while it starts, while spot delivers to it (its
    /// delivery is stopped) or after it was ready fails with that reason; when `min_ready`
    /// can then no longer be met it is replaced from the other pools, as a shortfall at
    /// launch is. A delivery that fails is held for a few looks first: EC2's answer may
    /// lag the dropped connection of a reclaimed machine.
    async fn watch(
        &self,
        first: Vec<Launched>,
        fill: &mut Fill,
        to_deliver: futures::channel::mpsc::UnboundedSender<(Instance, AbortRegistration)>,
        mut delivered: futures::channel::mpsc::UnboundedReceiver<Delivered>,
    ) -> Result<Watch, String> {
        let started = Instant::now();
        let min_ready = usize::try_from(self.req.min_ready).unwrap_or(usize::MAX).min(first.len());
        let mut w = Watch {
            expected: first.into_iter().map(|l| (l, started)).collect(),
            min_ready,
            ..Watch::default()
        };
        let filter: Tags = [
            (tag::DEPLOYMENT.to_string(), self.req.plan.deployment_id.clone()),
            (tag::RUN_ID.to_string(), self.req.run_id.clone()),
        ]
        .into();
        let mut stops: BTreeMap<String, AbortHandle> = BTreeMap::new();
        let mut last: BTreeMap<String, String> = BTreeMap::new();
        let mut failed_looks = 0;
        loop {
            match self.look(&filter).await {
                Ok(seen) => {
                    failed_looks = 0;
                    self.judge(&mut w, &seen, &mut last, &mut stops, &to_deliver)?;
                }
                // A look already retries what is worth retrying; a few that still fail
                // for EC2's own trouble in a row (the deliveries go on, starting instances
                // wait) are not worth the deployment, more are. A refusal is at once.
                Err(e) if e.kind == provider::ErrorKind::Transient && failed_looks + 1 < FAILED_LOOKS => {
                    failed_looks += 1;
                    self.progress.event(format!(
                        "could not look at the instances ({e}); trying again ({failed_looks} of {FAILED_LOOKS})"
                    ));
                }
                Err(e) => return Err(e.to_string()),
            }
            self.replace_if_short(&mut w, fill).await?;
            if w.done() {
                return Ok(w);
            }
            let starting = w.starting();
            if starting.iter().any(|(_, at)| at.elapsed() >= self.req.wait_timeout) {
                return Err(format!(
                    "{} of {} instance(s) not running after {}s",
                    starting.len(),
                    w.expected.len(),
                    self.req.wait_timeout.as_secs()
                ));
            }
            self.progress.status(format!(
                "{}/{} running, {} ready",
                w.handed.len(),
                w.expected.len(),
                w.outcomes.values().filter(|o| o.ready).count()
            ));
            // While only deliveries run, EC2 is asked less often: a reclaim gives two
            // minutes' notice, and a delivery it cuts short is looked at at once.
            let pause =
                if starting.is_empty() && w.suspects.is_empty() { self.req.poll * 5 } else { self.req.poll };
            let tick = self.cancel.sleep(pause);
            tokio::pin!(tick);
            loop {
                tokio::select! {
                    Some((instance, result)) = delivered.next() => {
                        stops.remove(&instance.id);
                        // Stopped because EC2 took it back: its outcome is in already.
                        let Ok(result) = result else { continue };
                        if w.outcomes.contains_key(&instance.id) {
                            continue;
                        }
                        match result {
                            Ok(()) => {
                                let secs = self.progress.elapsed().as_secs_f64();
                                self.progress.event(format!("{}: {} ready ({secs:.1}s)", instance.region, instance.id));
                                let outcome = Outcome::ready(instance, secs);
                                w.outcomes.insert(outcome.instance.id.clone(), outcome);
                                if w.done() {
                                    return Ok(w);
                                }
                            }
                            // Was it EC2 taking the machine away? The next looks say.
                            Err(error) => {
                                w.suspects.insert(instance.id.clone(), Suspect { instance, error, looks: SUSPECT_LOOKS });
                                break;
                            }
                        }
                    }
                    cancelled = &mut tick => {
                        if cancelled {
                            return Err("cancelled by signal".into());
                        }
                        break;
                    }
                }
            }
        }
    }

    /// One look's worth of news about the run's instances, into `w`.
    fn judge(
        &self,
        w: &mut Watch,
        seen: &[Instance],
        last: &mut BTreeMap<String, String>,
        stops: &mut BTreeMap<String, AbortHandle>,
        to_deliver: &futures::channel::mpsc::UnboundedSender<(Instance, AbortRegistration)>,
    ) -> Result<(), String> {
        for (e, at) in w.expected.clone() {
            let state = seen.iter().find(|i| i.id == e.id);
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
                }
                last.insert(e.id.clone(), label);
            }
            let left = state.filter(|i| i.state != "running" && i.state != "pending");
            if let Some(outcome) = w.outcomes.get(&e.id) {
                // A ready instance EC2 takes back before the run ends is not ready now.
                if let Some(i) = left.filter(|_| outcome.ready) {
                    self.left(w, i, Phase::Ready);
                }
                continue;
            }
            if let Some(suspect) = w.suspects.get_mut(&e.id) {
                suspect.looks = suspect.looks.saturating_sub(1);
                if let Some(i) = left {
                    w.suspects.remove(&e.id);
                    self.left(w, i, Phase::Delivering);
                } else if suspect.looks == 0
                    && let Some(Suspect { instance, error, .. }) = w.suspects.remove(&e.id)
                {
                    self.progress.event(format!("{}: {} failed: {error}", instance.region, instance.id));
                    w.outcomes.insert(instance.id.clone(), Outcome::failed(instance, error));
                }
                continue;
            }
            match state {
                Some(i) if i.state == "running" => {
                    if w.handed.insert(e.id.clone()) {
                        let (stop, registration) = AbortHandle::new_pair();
                        stops.insert(e.id.clone(), stop);
                        to_deliver
                            .unbounded_send((i.clone(), registration))
                            .map_err(|_| "the deliveries stopped".to_string())?;
                    }
                }
                Some(i) if i.state == "pending" => {}
                Some(i) => {
                    if let Some(stop) = stops.remove(&i.id) {
                        stop.abort();
                    }
                    let phase = if w.handed.contains(&i.id) { Phase::Delivering } else { Phase::Starting };
                    self.left(w, i, phase);
                }
                // Seen running before: an answer that lags, not an instance gone.
                None if w.handed.contains(&e.id) => {}
                None if at.elapsed() < VISIBILITY_GRACE => {}
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
        Ok(())
    }

    /// This run's instances in every region it launched into, any state, with EC2's
    /// reason for each one's last state change.
    async fn look(&self, filter: &Tags) -> Result<Vec<Instance>, provider::Error> {
        let mut regions: Vec<String> = self
            .made
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .iter()
            .filter(|m| m.kind == Kind::Instance)
            .map(|m| m.region.clone())
            .collect();
        regions.sort();
        regions.dedup();
        let found: Vec<Result<Vec<Instance>, provider::Error>> = futures::stream::iter(&regions)
            .map(|region| self.cloud.watched(region, filter))
            .buffer_unordered(REGION_CONCURRENCY)
            .collect()
            .await;
        let mut seen = Vec::new();
        for f in found {
            seen.extend(f?);
        }
        Ok(seen)
    }

    /// Notes an instance that left `running` in `phase`: a spot reclaim is made good
    /// (when `min_ready` needs it) from other pools; anything else is a failure.
    fn left(&self, w: &mut Watch, instance: &Instance, phase: Phase) {
        let why = taken_back_message(instance, phase);
        self.progress.event(format!("{}: {why}", instance.region));
        if is_reclaim(instance) {
            w.taken.insert(instance.id.clone(), (instance.instance_type.clone(), instance.az.clone()));
        }
        w.outcomes.insert(instance.id.clone(), Outcome::failed(instance.clone(), why));
    }

    /// When `min_ready` can no longer be met by the instances still in play and EC2
    /// taking instances back is why, launches replacements from the pools not taken back
    /// from; fails naming every instance that failed (and what the top-up tried) when
    /// that cannot make up the difference.
    async fn replace_if_short(&self, watch: &mut Watch, fill: &mut Fill) -> Result<(), String> {
        let failed = watch.outcomes.values().filter(|o| !o.ready).count();
        let in_play = watch.expected.len() - failed;
        if in_play >= watch.min_ready {
            return Ok(());
        }
        let want = watch.min_ready - in_play;
        let report = || {
            not_ready_report(
                &watch.outcomes.values().cloned().collect::<Vec<_>>(),
                watch.expected.len(),
                watch.min_ready,
            )
        };
        // Only what EC2 took back is made good; a build that fails would fail again.
        if want > watch.taken.len().saturating_sub(watch.replaced) {
            return Err(report());
        }
        let avoid: Vec<(String, String)> = watch.taken.values().cloned().collect();
        self.progress
            .event(format!("launching {want} replacement(s) for what EC2 took back, from other pools"));
        let attempts_before = fill.attempts.len();
        let got = self.top_up(u32::try_from(want).unwrap_or(u32::MAX), fill, &avoid).await?;
        if got.len() < want {
            let tried = capacity_report(
                u32::try_from(want).unwrap_or(u32::MAX),
                len(&got),
                &fill.attempts[attempts_before..],
                self.req.deployment.config.fallback,
            );
            return Err(format!("{}\nno replacement: {tried}", report()));
        }
        watch.replaced += got.len();
        let now = Instant::now();
        watch.expected.extend(got.into_iter().map(|l| (l, now)));
        Ok(())
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
            .create_security_group(region, &name, &network.vpc_id, &self.req.rules, &tags)
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
    len(&outcome.launched)
}

fn len<T>(items: &[T]) -> u32 {
    u32::try_from(items.len()).unwrap_or(u32::MAX)
}

/// Failed looks in a row the watch lives through.
const FAILED_LOOKS: u32 = 3;

/// Looks a failed delivery waits for EC2 to show its instance taken back.
const SUSPECT_LOOKS: u32 = 5;

/// A delivery's end: its instance, and its result unless the watch stopped it.
type Delivered = (Instance, Result<Result<(), String>, futures::future::Aborted>);

/// What the watch over a run's instances knows.
#[derive(Debug, Default)]
struct Watch {
    /// Every instance launched for the run, with when.
    expected: Vec<(Launched, Instant)>,
    min_ready: usize,
    /// Handed to delivery (it ran).
    handed: std::collections::BTreeSet<String>,
    /// The end of each instance that has one, by id.
    outcomes: BTreeMap<String, Outcome>,
    /// Deliveries that failed, held until EC2's answers say whether it took them back.
    suspects: BTreeMap<String, Suspect>,
    /// Reclaimed by EC2 (spot), with the pool (type, AZ) each came from.
    taken: BTreeMap<String, (String, String)>,
    /// Replacements launched.
    replaced: usize,
}

#[derive(Debug)]
struct Suspect {
    instance: Instance,
    error: String,
    looks: u32,
}

impl Watch {
    fn done(&self) -> bool {
        self.suspects.is_empty() && self.expected.iter().all(|(e, _)| self.outcomes.contains_key(&e.id))
    }

    /// Launched and not running yet.
    fn starting(&self) -> Vec<&(Launched, Instant)> {
        self.expected
            .iter()
            .filter(|(e, _)| !self.handed.contains(&e.id) && !self.outcomes.contains_key(&e.id))
            .collect()
    }
}

/// When an instance left `running`.
#[derive(Debug, Clone, Copy)]
enum Phase {
    Starting,
    Delivering,
    Ready,
}

/// Pure: EC2 reclaimed it for spot capacity (state reason `Server.SpotInstanceTermination`,
/// or `Server.SpotInstanceShutdown` for one that stops).
fn is_reclaim(instance: &Instance) -> bool {
    instance.state_reason.as_deref().is_some_and(|r| r.contains("Server.SpotInstance"))
}

/// Pure: why an instance left `running` (or never got there), naming EC2's reason.
fn taken_back_message(instance: &Instance, phase: Phase) -> String {
    let reason = instance.state_reason.as_deref().unwrap_or("EC2 gave no reason");
    let what = if is_reclaim(instance) {
        "spot capacity reclaimed by EC2"
    } else {
        "not a spot reclaim, so not replaced"
    };
    let when = match phase {
        Phase::Starting => "before it ran",
        Phase::Delivering => "while spot delivered to it",
        Phase::Ready => "after it was ready, before the run ended",
    };
    format!(
        "{} ({} in {}) went to `{}` {when}: {what} ({reason})",
        instance.id, instance.instance_type, instance.az, instance.state
    )
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

#[cfg(test)]
mod tests {
    use super::*;

    fn left(state: &str, reason: Option<&str>) -> Instance {
        let mut i = Instance::running("i-1", Tags::new());
        i.state = state.into();
        i.state_reason = reason.map(str::to_string);
        i
    }

    #[test]
    fn only_a_spot_reclaim_counts_as_one_and_each_message_says_when_and_why() {
        let reclaimed =
            left("shutting-down", Some("Server.SpotInstanceTermination: Spot instance termination"));
        assert!(is_reclaim(&reclaimed));
        assert_eq!(
            taken_back_message(&reclaimed, Phase::Delivering),
            "i-1 (t3.micro in us-east-1a) went to `shutting-down` while spot delivered to it: spot capacity reclaimed by EC2 (Server.SpotInstanceTermination: Spot instance termination)"
        );
        // A machine that powered itself off, a failed launch, a user's terminate: not
        // reclaims, so not replaced (they would fail again, or were meant).
        for reason in [
            Some("Client.InstanceInitiatedShutdown: Instance initiated shutdown"),
            Some("Client.InternalError: Client error on launch"),
            Some("Client.UserInitiatedShutdown: User initiated shutdown"),
            None,
        ] {
            let gone = left("terminated", reason);
            assert!(!is_reclaim(&gone), "{reason:?}");
            assert!(taken_back_message(&gone, Phase::Starting).contains("before it ran: not a spot reclaim"));
        }
        assert!(
            taken_back_message(&reclaimed, Phase::Ready).contains("after it was ready, before the run ended")
        );
    }
}
