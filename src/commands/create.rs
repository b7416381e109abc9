//! `spot create`: validate, plan, then launch and wait; roll back on any failure.

use std::io::Write as _;
use std::sync::Arc;
use std::time::Duration;

use futures::FutureExt as _;

use crate::Error;
use crate::bundle::Listing;
use crate::cli::CreateArgs;
use crate::cloud_init::{self, UserDataKeys};
use crate::deliver::Delivery;
use crate::deliver::Limits;
use crate::deliver::run::Shipment;
use crate::keys::DeploymentKeys;
use crate::keys::Secret;
use crate::lifecycle::create::{self, LaunchOnly, Outcome, Request};
use crate::lifecycle::progress::{Cancel, Progress};
use crate::lifecycle::state::{Recorder, State, StateFile, Status};
use crate::lifecycle::teardown;
use crate::manifest::Format;
use crate::manifest::Report;
use crate::manifest::types::SshAccess;
use crate::overrides::{Overrides, Source};
use crate::plan;
use crate::provider::Instance;
use crate::provider::ec2::Ec2;
use crate::remote::Target;

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
    pub endpoint_url: Option<String>,
    pub format: Format,
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

pub fn run(args: &CreateArgs) -> Result<(), Error> {
    let mut overrides = args.overrides.to_overrides();
    overrides.ssh_cidrs.clone_from(&args.ssh_cidrs);
    let job = Job {
        dir: args.dir.clone(),
        deployment_id: args.identity.deployment_id.clone(),
        repository: args.identity.repository.clone(),
        pr: args.identity.pr,
        run_id: format!("local-{:08x}", fastrand::u32(..)),
        overrides,
        source: Source::Flags,
        wait: super::duration_flag("--wait", &args.wait)?,
        ssh_budget: super::duration_flag("--ssh-timeout", &args.ssh_timeout)?,
        boot: super::duration_flag("--boot-timeout", &args.boot_timeout)?,
        min_ready: args.min_ready,
        deliver: !args.no_deliver,
        endpoint_url: args.cloud.endpoint_url.clone(),
        format: super::default_format(args.format),
    };
    let created = execute(&job, &NoHooks)?;
    print_ready(args.json, &created);
    Ok(())
}

/// A job's input, loaded and checked: all that is decided before the first cloud call.
pub(super) struct Prepared {
    pub inputs: plan::Inputs,
    pub deployment: crate::manifest::types::Deployment,
    pub listing: Listing,
    pub limits: Limits,
    pub min_ready: u32,
    pub secret_values: Vec<Secret>,
}

/// Loads and checks the description, applies the job's overrides and reads the secrets;
/// every input error surfaces here.
pub(super) fn prepare(job: &Job) -> Result<Prepared, Error> {
    let format = job.format;
    let mut inputs =
        super::plan::inputs_for(&job.dir, job.deployment_id.clone(), job.repository.clone(), job.pr, None)?;
    inputs.run_id = Some(job.run_id.clone());
    let (mut deployment, mut listing) = super::load_checked(&job.dir, format, true)?;
    if job.overrides.apply(&mut deployment, job.source).map_err(|errors| Error::Usage {
        message: errors.join("\n"),
        help: "fix the value, or leave it out to use .spot/config.yaml".into(),
    })? {
        listing = super::relist(&deployment, format)?;
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

/// Loads, checks, plans and creates: the whole of `create` but the printing.
pub fn execute(job: &Job, hooks: &dyn Hooks) -> Result<Created, Error> {
    let format = job.format;
    // Everything that can be wrong with the input is checked before the first cloud call.
    let Prepared { inputs, deployment, listing, limits, min_ready, secret_values } = prepare(job)?;
    let keys = DeploymentKeys::generate(&inputs.deployment_id)
        .map_err(|e| Error::Runtime { message: format!("cannot generate keys: {e}"), help: String::new() })?;
    let masked: Vec<&str> =
        secret_values.iter().chain([&keys.client.private, &keys.host.private]).map(Secret::expose).collect();
    hooks.secrets(&masked);
    let ssh_cidrs = ssh_cidrs(&deployment.config.ssh_access)?;
    let identity = plan::identity(&deployment, &inputs);
    let user_data = cloud_init::render(
        &deployment,
        &identity,
        &UserDataKeys::from_keys(&keys, &deployment.config.extra_authorized_keys),
    )
    .map_err(|d| Error::Invalid { report: Report { diagnostics: vec![*d], ..Report::default() }, format })?;
    let plan = plan::build(&deployment, &inputs, listing.clone(), &user_data);
    let request = Request {
        deployment: &deployment,
        plan: &plan,
        user_data: &user_data.bytes,
        public_key: &keys.client.public,
        ssh_cidrs,
        tags: launch_tags(&plan, &deployment, &keys.host.public),
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
    .map_err(|e| Error::io(deployment.root.join(crate::lifecycle::state::STATE_DIR), "write", e))?;
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
    let outcome = super::runtime()?.block_on(async {
        let cloud = Ec2::new(job.endpoint_url.as_deref()).await;
        let cancel = Cancel::on_signals();
        if !job.deliver {
            return create::create(&cloud, &LaunchOnly, &request, &tee, &progress, &cancel).await;
        }
        // The bundle is packed while the instances launch and boot.
        let deploy = deployment.clone();
        let packing = tokio::task::spawn_blocking(move || pack_bundle(&deploy, &listing, &limits))
            .map(|joined| joined.map_err(|e| format!("packing the bundle stopped: {e}")).and_then(|r| r))
            .boxed()
            .shared();
        let deliver = SshDeliver {
            bundle: packing,
            host_public: &keys.host.public,
            client_private: &keys.client.private,
            secret_values: &secret_values,
            user: &deployment.config.username,
            ssh_budget: job.ssh_budget,
            progress: &progress,
        };
        create::create(&cloud, &deliver, &request, &tee, &progress, &cancel).await
    });
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
                    failure
                        .removal
                        .failed
                        .iter()
                        .map(|(r, e)| format!("{} {} in {}: {e}", r.kind, r.id, r.region))
                        .collect::<Vec<_>>()
                        .join("; "),
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
fn launch_tags(
    plan: &plan::Plan,
    deployment: &crate::manifest::types::Deployment,
    host_public: &str,
) -> crate::provider::Tags {
    let mut tags = plan.tags.clone();
    let key: Vec<&str> = host_public.split_whitespace().take(2).collect();
    tags.insert(plan::tag::HOST_KEY.into(), key.join(" "));
    tags.insert(plan::tag::LAUNCH.into(), plan::launch_digest(deployment, plan));
    tags
}

/// Emulator-only: a folder where the harness that plays the instances writes, per
/// instance id, the `host:port` its SSH server listens on (EC2 emulators hand out
/// addresses nothing answers on). Never set against real AWS.
pub const EMULATOR_SSH_DIR: &str = "SPOT_EMULATOR_SSH_DIR";

fn print_ready(json: bool, created: &Created) {
    let (plan, outcomes, took) = (&created.plan, &created.outcomes, created.seconds);
    let mut out = std::io::stdout().lock();
    if json {
        let doc = serde_json::json!({
            "deployment_id": plan.deployment_id,
            "expires_at": plan.expires_at,
            "state_file": created.state_path,
            "instances": outcomes,
        });
        let _ = writeln!(out, "{doc:#}");
        return;
    }
    let ready = outcomes.iter().filter(|o| o.ready).count();
    let _ = writeln!(
        out,
        "deployment {} ready: {ready} of {} instance(s) in {took:.1}s",
        plan.deployment_id,
        outcomes.len()
    );
    let _ = writeln!(
        out,
        "{:<15} {:<16} {:<21} {:<14} {:<10} {:<22} ready",
        "region", "az", "instance", "type", "market", "address"
    );
    for o in outcomes {
        let i = &o.instance;
        let address = i
            .public_ip
            .clone()
            .or_else(|| i.private_ip.clone().map(|p| format!("{p} (private)")))
            .unwrap_or_default();
        let ready = match o.seconds_to_ready {
            Some(secs) => format!("{secs:.1}s"),
            None => "failed (terminated)".into(),
        };
        let _ = writeln!(
            out,
            "{:<15} {:<16} {:<21} {:<14} {:<10} {address:<22} {ready}",
            i.region,
            i.az,
            i.id,
            i.instance_type,
            i.market.to_string()
        );
    }
    let _ = writeln!(out, "state: {}", created.state_path.display());
    let _ = writeln!(out, "remove it with: spot destroy {}", plan.deployment_id);
}

/// Reads every secret's value from this process's environment; a missing or empty one
/// is an input error, found before anything is created.
fn read_secrets(deployment: &crate::manifest::types::Deployment) -> Result<Vec<Secret>, Error> {
    let mut values = Vec::new();
    let mut missing = Vec::new();
    for s in &deployment.manifest.secrets {
        match std::env::var(&s.env) {
            Ok(v) if !v.is_empty() => values.push(Secret::new(v)),
            _ => missing.push(format!("`{}` (environment variable {})", s.name, s.env)),
        }
    }
    if missing.is_empty() {
        return Ok(values);
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

/// The bundle packed into a temporary file, and the steps that ship it.
pub(super) struct Packed {
    pub file: tempfile::NamedTempFile,
    pub delivery: Delivery,
}

pub(super) type PackResult = Result<Arc<Packed>, String>;

pub(super) fn pack_bundle(
    deployment: &crate::manifest::types::Deployment,
    listing: &Listing,
    limits: &Limits,
) -> PackResult {
    let file = tempfile::Builder::new()
        .prefix("spot-bundle-")
        .suffix(".tar.gz")
        .tempfile()
        .map_err(|e| format!("cannot create a temporary file for the bundle: {e}"))?;
    let writer = std::io::BufWriter::with_capacity(256 * 1024, file.as_file());
    let packed =
        crate::bundle::pack(listing, 6, writer).map_err(|e| format!("packing the bundle failed: {e}"))?;
    let delivery = crate::deliver::steps(deployment, &packed.sha256, limits);
    Ok(Arc::new(Packed { file, delivery }))
}

/// Delivers over SSH once the bundle is packed.
struct SshDeliver<'a, F> {
    bundle: F,
    host_public: &'a str,
    client_private: &'a Secret,
    secret_values: &'a [Secret],
    user: &'a str,
    ssh_budget: Duration,
    progress: &'a Progress,
}

/// Where to reach `instance` over SSH as `user`: its address, or (emulator only) what the
/// harness wrote for it in [`EMULATOR_SSH_DIR`], waited for within `budget`.
pub(super) async fn ssh_target(instance: &Instance, user: &str, budget: Duration) -> Result<Target, String> {
    if let Some(dir) = std::env::var_os(EMULATOR_SSH_DIR).map(std::path::PathBuf::from) {
        let file = dir.join(&instance.id);
        let deadline = std::time::Instant::now() + budget;
        loop {
            if let Ok(text) = tokio::fs::read_to_string(&file).await
                && let Some((host, port)) = text.trim().rsplit_once(':')
                && let Ok(port) = port.parse()
            {
                return Ok(Target { host: host.to_string(), port, user: user.to_string() });
            }
            if std::time::Instant::now() >= deadline {
                return Err(format!("no SSH address for {} in {}", instance.id, dir.display()));
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    let host = instance.address().ok_or_else(|| format!("{} has no address to connect to", instance.id))?;
    Ok(Target { host: host.to_string(), port: 22, user: user.to_string() })
}

impl<F> create::Deliver for SshDeliver<'_, F>
where
    F: std::future::Future<Output = PackResult> + Clone + Send + Sync,
{
    async fn deliver(&self, instance: &Instance) -> Result<(), String> {
        let packed = self.bundle.clone().await?;
        let target = ssh_target(instance, self.user, self.ssh_budget).await?;
        let shipment = Shipment {
            delivery: &packed.delivery,
            bundle: packed.file.path(),
            host_public: self.host_public,
            client_private: self.client_private,
            secret_values: self.secret_values,
            ssh_budget: self.ssh_budget,
        };
        let label = format!("{}: {}", instance.region, instance.id);
        shipment.deliver(&target, &label, self.progress).await.map_err(|f| f.to_string())
    }
}

pub(super) fn ssh_cidrs(access: &SshAccess) -> Result<Vec<String>, Error> {
    match access {
        SshAccess::Cidrs(c) => Ok(c.clone()),
        SshAccess::Runner => public_address()
            .map(|ip| vec![if ip.contains(':') { format!("{ip}/128") } else { format!("{ip}/32") }]),
    }
}

/// This machine's public address, as AWS sees it (checkip.amazonaws.com).
fn public_address() -> Result<String, Error> {
    use std::io::Read as _;
    use std::net::ToSocketAddrs as _;
    let fail = |why: String| Error::Runtime {
        message: format!("cannot find this machine's public address for the SSH rule: {why}"),
        help: "set `aws.ssh_cidr` in config.yaml or pass --ssh-cidr".into(),
    };
    let addr = ("checkip.amazonaws.com", 80)
        .to_socket_addrs()
        .map_err(|e| fail(e.to_string()))?
        .next()
        .ok_or_else(|| fail("no address for checkip.amazonaws.com".into()))?;
    let mut stream = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(5))
        .map_err(|e| fail(e.to_string()))?;
    stream.set_read_timeout(Some(Duration::from_secs(5))).map_err(|e| fail(e.to_string()))?;
    stream
        .write_all(b"GET / HTTP/1.0\r\nHost: checkip.amazonaws.com\r\nUser-Agent: spot\r\n\r\n")
        .map_err(|e| fail(e.to_string()))?;
    let mut response = String::new();
    stream.read_to_string(&mut response).map_err(|e| fail(e.to_string()))?;
    let body = response.split("\r\n\r\n").nth(1).unwrap_or_default().trim();
    body.parse::<std::net::IpAddr>()
        .map(|ip| ip.to_string())
        .map_err(|_| fail(format!("unexpected answer `{body}`")))
}
