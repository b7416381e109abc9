//! Up: validate, plan, launch, deliver and verify; roll back on any failure.
//!
//! Input errors (the description, an override, a missing secret, `min-ready`) are found
//! in [`prepare`], and the user-data's size when [`create`] renders it: all before the
//! first cloud call. The launch itself is
//! `lifecycle::create`; the delivery it pipelines with is [`super::ship`].

use std::time::Duration;

use futures::FutureExt as _;

use super::Session;
use super::ship::{SshDeliver, pack_bundle};
use crate::bundle::Listing;
use crate::caps::{Beyond, Caps};
use crate::cloud_init::{self, UserDataKeys};
use crate::deliver::Limits;
use crate::error::Error;
use crate::keys::{DeploymentKeys, Secret};
use crate::lifecycle::create::{self, LaunchOnly, Outcome, Request};
use crate::lifecycle::progress::{Cancel, Progress};
use crate::lifecycle::state::{Recorder, State, StateFile, Status};
use crate::lifecycle::teardown;
use crate::manifest::Format;
use crate::manifest::types::Deployment;
use crate::overrides::{Overrides, Source};
use crate::plan;
use crate::provider::Instance;

/// One `create`, however it was asked for (flags or action inputs).
#[derive(Debug)]
pub struct Job {
    pub dir: std::path::PathBuf,
    pub deployment_id: Option<String>,
    pub repository: Option<String>,
    pub pr: Option<u64>,
    pub run_id: String,
    pub overrides: Overrides,
    pub source: Source,
    pub wait: Duration,
    pub ssh_budget: Duration,
    pub boot: Duration,
    pub min_ready: Option<u32>,
    pub deliver: bool,
    pub format: Format,
    /// The workflow's limits on what the description raises (the Action's); `None`: the
    /// CLI, whose user wrote the description they run.
    pub caps: Option<Caps>,
}

/// What the caller (the CLI, the action) adds to a run.
pub trait Hooks {
    /// Every secret value of the run, before anything else is printed (the action masks
    /// them, line by line).
    fn secrets(&self, _values: &[&str]) {}
    /// The deployment is about to be created: nothing exists yet.
    fn starting(&self, _plan: &plan::Plan) {}
    /// Receives each resource as it is created, besides the state file.
    fn recorder(&self) -> Option<&dyn Recorder> {
        None
    }
}

/// The CLI adds nothing.
#[derive(Debug)]
pub struct NoHooks;
impl Hooks for NoHooks {}

/// A finished `create`.
#[derive(Debug)]
pub struct Created {
    pub plan: plan::Plan,
    pub outcomes: Vec<Outcome>,
    pub state_path: std::path::PathBuf,
    pub seconds: f64,
    /// The build went into instances an earlier run made (a kept deployment).
    pub reused: bool,
}

/// A job's input, loaded and checked: all that is decided before the first cloud call.
#[derive(Debug)]
pub struct Prepared {
    pub inputs: plan::Inputs,
    pub deployment: Deployment,
    pub listing: Listing,
    pub limits: Limits,
    pub min_ready: u32,
    pub secret_values: Vec<Secret>,
}

/// Loads and checks the description, applies the job's overrides and reads the secrets;
/// every input error surfaces here.
pub fn prepare(job: &Job) -> Result<Prepared, Error> {
    let format = job.format;
    let mut inputs =
        super::inputs(&job.dir, job.deployment_id.clone(), job.repository.clone(), job.pr, None)?;
    inputs.run_id = Some(job.run_id.clone());
    let (mut deployment, mut listing) = super::load_checked(&job.dir, format, true)?;
    if job.overrides.apply(&mut deployment, job.source).map_err(|errors| Error::Usage {
        message: errors.join("\n"),
        help: "fix the value, or leave it out to use .spot/config.yaml".into(),
    })? {
        listing = super::relist(&deployment, format)?;
    }
    if let Some(caps) = &job.caps {
        within(caps, &deployment, format)?;
    }
    let limits = Limits { boot: job.boot, ..Limits::default() };
    let total = deployment.config.total_instances;
    let min_ready = match job.min_ready {
        None => total,
        Some(n) if (1..=total).contains(&n) => n,
        Some(n) => {
            return Err(Error::Usage {
                message: format!(
                    "min-ready {n} is not between 1 and the {total} instance(s) of the deployment"
                ),
                help: "leave it out to require every instance".into(),
            });
        }
    };
    let secret_values = if job.deliver { read_secrets(&deployment)? } else { Vec::new() };
    Ok(Prepared { inputs, deployment, listing, limits, min_ready, secret_values })
}

/// Holds `deployment` to the workflow's `caps`: what is beyond them as one located report
/// (the workflow's own inputs in it too); only inputs, a usage error naming them. Besides
/// the pure check: a public key file read from outside the repository (the runner's
/// files are not a pull request's to read).
pub fn within(caps: &Caps, deployment: &Deployment, format: Format) -> Result<(), Error> {
    let mut beyond = caps.check(deployment);
    if let Some((origin, path)) = &deployment.config.written.public_key {
        let root = std::fs::canonicalize(&deployment.root).unwrap_or_else(|_| deployment.root.clone());
        if crate::manifest::paths::real_inside(&root, path).is_err() {
            beyond.push(Beyond::Written(crate::manifest::Diagnostic::new(
                crate::manifest::Kind::PathEscapes,
                origin.file.clone(),
                origin.span,
                "public_ssh_key_path reads a file outside the repository, which a description run by the Action may not",
                "commit the public key into the repository and point at it there",
            )));
        }
    }
    beyond_caps(beyond, format)
}

fn beyond_caps(beyond: Vec<Beyond>, format: Format) -> Result<(), Error> {
    let mut report = crate::manifest::Report::default();
    let mut inputs = Vec::new();
    for b in beyond {
        match b {
            Beyond::Written(d) => report.push(d),
            Beyond::Inputs(message) => inputs.push(message),
        }
    }
    if !report.is_empty() {
        // One report for both: the workflow's inputs have no line to point at.
        for message in inputs {
            let help = "change the input or the limit in the workflow";
            report.push(crate::manifest::Diagnostic::new(
                crate::manifest::Kind::InvalidValue,
                "workflow inputs",
                crate::manifest::span::Span::default(),
                message,
                help,
            ));
        }
        report.finish();
        return Err(Error::Invalid { report, format });
    }
    if inputs.is_empty() {
        return Ok(());
    }
    Err(Error::Usage {
        message: inputs.join("\n"),
        help: "the workflow's limit inputs (max-instances, max-ttl, allowed-instance-types, allowed-regions, secrets) cap its other inputs too: change one or the other".into(),
    })
}

/// Refuses a deployment id that is already in use: a second `create` under one id would
/// make a second set of instances beside the first (and fight over its names). Looks in
/// the description's regions, by tags; nothing is created or written. `help` says what the
/// caller's surface offers instead (the CLI: destroy first; the action: `keep: true`).
pub async fn refuse_existing(session: &Session, prepared: &Prepared, help: &str) -> Result<(), Error> {
    let id = &prepared.inputs.deployment_id;
    let regions: Vec<String> = prepared.deployment.config.regions.iter().map(|r| r.name.clone()).collect();
    // Any repository's: a deployment of the id anywhere is in the way of this one's names.
    match super::look_for(session, &regions, id, None).await? {
        None => Ok(()),
        Some(existing) => Err(Error::Usage { message: exists_message(&existing), help: help.to_string() }),
    }
}

/// Pure: what of `existing` is there, for the refusal.
fn exists_message(existing: &crate::lifecycle::inventory::Deployed) -> String {
    let regions: Vec<&str> = existing.regions.iter().map(String::as_str).collect();
    let mut message = format!(
        "deployment `{}` already exists in {}: {} instance(s) and {} other resource(s)",
        existing.deployment_id,
        regions.join(", "),
        existing.instances.len(),
        existing.resources.len()
    );
    if let Some(run) = &existing.run_id {
        message.push_str(&format!(", made by run {run}"));
    }
    if let Some(expires) = &existing.expires_at {
        message.push_str(&format!(", expiring {expires}"));
    }
    message.push_str("; nothing was created or changed");
    message
}

/// Plans and creates `job`, already [`prepare`]d: the whole of `create` but the printing.
pub async fn create(
    session: &Session,
    job: &Job,
    prepared: &Prepared,
    hooks: &dyn Hooks,
) -> Result<Created, Error> {
    let format = job.format;
    let Prepared { inputs, deployment, listing, limits, min_ready, secret_values } = prepared;
    let min_ready = *min_ready;
    let keys = DeploymentKeys::generate(&inputs.deployment_id)
        .map_err(|e| Error::Runtime { message: format!("cannot generate keys: {e}"), help: String::new() })?;
    let masked: Vec<&str> =
        secret_values.iter().chain([&keys.client.private, &keys.host.private]).map(Secret::expose).collect();
    hooks.secrets(&masked);
    let rules = rules(&deployment.config, session)?;
    let identity = plan::identity(deployment, inputs);
    let user_data = cloud_init::render(
        deployment,
        &identity,
        &UserDataKeys::from_keys(&keys, &deployment.config.extra_authorized_keys),
    )
    .map_err(|d| super::invalid(*d, format))?;
    let plan = plan::build(deployment, inputs, listing.clone(), &user_data);
    let request = Request {
        deployment,
        plan: &plan,
        user_data: &user_data.bytes,
        public_key: &keys.client.public,
        rules,
        tags: launch_tags(&plan, deployment, &keys.host.public),
        run_id: job.run_id.clone(),
        wait_timeout: job.wait,
        poll: Duration::from_millis(1000),
        min_ready,
    };
    let state = StateFile::create(
        &deployment.root,
        State {
            deployment_id: plan.deployment_id.clone(),
            run_id: job.run_id.clone(),
            repository: plan.repository.clone(),
            created_at: plan.created_at.clone(),
            expires_at: plan.expires_at.clone(),
            status: Status::Creating,
            resources: Vec::new(),
            instances: Vec::new(),
        },
    )
    .map_err(|e| Error::io(deployment.root.join(crate::lifecycle::state::STATE_DIR), "write", e))?
    .map_err(|other| Error::Usage {
        message: format!(
            "the state file of `{}` belongs to run {}, which is {} (expires {}); nothing was created",
            other.deployment_id,
            other.run_id,
            format!("{:?}", other.status).to_lowercase(),
            other.expires_at
        ),
        help: format!(
            "`spot destroy {}` removes that deployment (and marks the file destroyed), or choose another --deployment-id",
            other.deployment_id
        ),
    })?;
    hooks.starting(&plan);
    let tee = Tee { first: &state, second: hooks.recorder() };

    let progress = Progress::new();
    let regions: Vec<&str> =
        plan.regions.iter().filter(|r| r.instances > 0).map(|r| r.region.as_str()).collect();
    progress.event(format!(
        "creating {}: {} instance(s) in {} (expires {})",
        plan.deployment_id,
        plan.total_instances,
        regions.join(", "),
        plan.expires_at
    ));
    let outcome = async {
        let cloud = &session.cloud;
        let cancel = Cancel::on_signals();
        if !job.deliver {
            return create::create(cloud, &LaunchOnly, &request, &tee, &progress, &cancel).await;
        }
        // The bundle is packed while the instances launch and boot.
        let (deploy, listing, limits) = (deployment.clone(), listing.clone(), *limits);
        let packing = tokio::task::spawn_blocking(move || pack_bundle(&deploy, &listing, &limits))
            .map(|joined| joined.map_err(|e| format!("packing the bundle stopped: {e}")).and_then(|r| r))
            .boxed()
            .shared();
        let deliver = SshDeliver {
            bundle: packing,
            host_public: &keys.host.public,
            client_private: &keys.client.private,
            secret_values,
            user: &deployment.config.username,
            ssh_budget: job.ssh_budget,
            progress: &progress,
            emulator: session.emulator.as_deref(),
        };
        create::create(cloud, &deliver, &request, &tee, &progress, &cancel).await
    }
    .await;
    match outcome {
        Ok(outcomes) => Ok(Created {
            outcomes,
            state_path: state.path().to_path_buf(),
            seconds: progress.elapsed().as_secs_f64(),
            plan,
            reused: false,
        }),
        Err(failure) => {
            let removed = teardown::summarize(&failure.removal.removed);
            let mut message = format!("create failed: {}\nrolled back: removed {removed}", failure.message);
            if !failure.removal.failed.is_empty() {
                message.push_str(&format!(
                    "\nnot removed yet ({}), recorded in {}: run `spot destroy {}`",
                    failure.removal.failures().join("; "),
                    state.path().display(),
                    plan.deployment_id
                ));
            }
            if failure.cancelled {
                Err(Error::Interrupted { message })
            } else {
                Err(Error::Runtime { message, help: String::new() })
            }
        }
    }
}

/// The state file and the caller's recorder, both told everything.
struct Tee<'a> {
    first: &'a StateFile,
    second: Option<&'a dyn Recorder>,
}

impl Recorder for Tee<'_> {
    fn created(&self, resource: &crate::provider::Resource) {
        self.first.created(resource);
        if let Some(s) = self.second {
            s.created(resource);
        }
    }
    fn removed(&self, resource: &crate::provider::Resource) {
        self.first.removed(resource);
        if let Some(s) = self.second {
            s.removed(resource);
        }
    }
    fn status(&self, status: Status) {
        self.first.status(status);
        if let Some(s) = self.second {
            s.status(status);
        }
    }
    fn instances(&self, instances: &[Instance]) {
        self.first.instances(instances);
        if let Some(s) = self.second {
            s.instances(instances);
        }
    }
}

/// The plan's tags, plus what a later run needs to deliver into these instances again:
/// the host public key (to pin it) and the launch digest (to know they still fit).
fn launch_tags(plan: &plan::Plan, deployment: &Deployment, host_public: &str) -> crate::provider::Tags {
    let mut tags = plan.tags.clone();
    let key: Vec<&str> = host_public.split_whitespace().take(2).collect();
    tags.insert(plan::tag::HOST_KEY.into(), key.join(" "));
    tags.insert(plan::tag::LAUNCH.into(), plan::launch_digest(deployment, plan));
    let http: Vec<String> =
        crate::ingress::http_ports(&deployment.config.expose).iter().map(u16::to_string).collect();
    if !http.is_empty() {
        tags.insert(plan::tag::HTTP_PORTS.into(), http.join(" "));
    }
    tags
}

/// The shortest secret value spot takes: the runner masks every occurrence of a value in
/// the log, and a short one (a `1`, a `yes`) would blank ordinary text everywhere. Each
/// line of a value is masked on its own (trimmed), so each line must be this long.
pub const MIN_SECRET_CHARS: usize = 8;

/// Pure: is `value` long enough to mask, every one of its lines?
fn maskable(value: &str) -> bool {
    value.lines().map(str::trim).filter(|l| !l.is_empty()).all(|l| l.chars().count() >= MIN_SECRET_CHARS)
}

/// Reads every secret's value from this process's environment; a missing, empty or too
/// short one is an input error, found before anything is created.
fn read_secrets(deployment: &Deployment) -> Result<Vec<Secret>, Error> {
    let mut values = Vec::new();
    let mut missing = Vec::new();
    let mut short = Vec::new();
    for s in &deployment.manifest.secrets {
        match std::env::var(&s.env) {
            Ok(v) if !v.trim().is_empty() && maskable(&v) => values.push(Secret::new(v)),
            Ok(v) if !v.is_empty() => short.push(format!("`{}` (environment variable {})", s.name, s.env)),
            _ => missing.push(format!("`{}` (environment variable {})", s.name, s.env)),
        }
    }
    if missing.is_empty() && short.is_empty() {
        return Ok(values);
    }
    if missing.is_empty() {
        return Err(Error::Usage {
            message: format!(
                "secret {} is shorter than {MIN_SECRET_CHARS} characters, or has a line that is (its value is not shown)",
                short.join(", ")
            ),
            help: format!(
                "a secret's value is masked everywhere in the job's log, so a short one would blank ordinary text: use a value of at least {MIN_SECRET_CHARS} characters, or pass it as a plain `env` value if it is not secret"
            ),
        });
    }
    Err(Error::Usage {
        message: format!(
            "secret {} from `secrets` in the deployment is not set (or empty) in this environment",
            missing.join(", ")
        ),
        help: "export it before `spot create`; in GitHub Actions map it in the step: `env: NAME: ${{ secrets.NAME }}`"
            .into(),
    })
}

/// The security group's rules, with the runner's address found when a rule needs it.
pub(crate) fn rules(
    config: &crate::manifest::types::Config,
    session: &Session,
) -> Result<Vec<crate::provider::Rule>, Error> {
    let runner = if crate::ingress::needs_runner(config) {
        Some(public_address(session.checkip.as_deref())?)
    } else {
        None
    };
    Ok(crate::ingress::rules(config, runner.as_deref()))
}

/// Where spot asks for its own public address: the `host:port` of an HTTP service that
/// answers with the address it sees (as checkip.amazonaws.com does).
pub const CHECKIP: &str = "checkip.amazonaws.com:80";

const NO_ADDRESS_HELP: &str =
    "set `aws.ssh_cidr` in config.yaml or pass --ssh-cidr, and give `expose` entries explicit `from` CIDRs";

/// This machine's public address, as AWS sees it (checkip.amazonaws.com, or the
/// emulator's stand-in at `checkip`).
fn public_address(checkip: Option<&str>) -> Result<String, Error> {
    use std::io::{Read as _, Write as _};
    use std::net::ToSocketAddrs as _;
    let service = checkip.unwrap_or(CHECKIP);
    let host = service.rsplit_once(':').map_or(service, |(h, _)| h);
    let fail = |why: String| Error::Runtime {
        message: format!(
            "cannot find this machine's public address (asked {service}) for the runner's rules: {why}"
        ),
        help: NO_ADDRESS_HELP.into(),
    };
    let addr = service
        .to_socket_addrs()
        .map_err(|e| fail(e.to_string()))?
        .next()
        .ok_or_else(|| fail(format!("no address for {host}")))?;
    let mut stream = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(5))
        .map_err(|e| fail(e.to_string()))?;
    stream.set_read_timeout(Some(Duration::from_secs(5))).map_err(|e| fail(e.to_string()))?;
    stream
        .write_all(format!("GET / HTTP/1.0\r\nHost: {host}\r\nUser-Agent: spot\r\n\r\n").as_bytes())
        .map_err(|e| fail(e.to_string()))?;
    let mut response = String::new();
    stream.take(4096).read_to_string(&mut response).map_err(|e| fail(e.to_string()))?;
    let body = response.split("\r\n\r\n").nth(1).unwrap_or_default().trim();
    body.parse::<std::net::IpAddr>()
        .map(|ip| ip.to_string())
        .map_err(|_| fail(format!("unexpected answer `{}`", body.chars().take(60).collect::<String>())))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_secret_is_maskable_only_when_each_masked_line_is_long_enough() {
        assert!(maskable("correct-horse"));
        assert!(maskable("-----BEGIN KEY-----\nAAAAAAAAAAAA\n-----END KEY-----\n"));
        // The runner masks each trimmed line on its own.
        assert!(!maskable("       1"));
        assert!(!maskable("abcdefgh\nyes"));
        assert!(!maskable("x7q"));
    }
}
