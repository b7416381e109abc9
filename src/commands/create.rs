//! `spot create`: validate, plan, then launch and wait; roll back on any failure.

use std::io::Write as _;
use std::time::Duration;

use crate::Error;
use crate::cli::CreateArgs;
use crate::cloud_init::{self, UserDataKeys};
use crate::keys::DeploymentKeys;
use crate::lifecycle::create::{self, Request};
use crate::lifecycle::progress::{Cancel, Progress};
use crate::lifecycle::state::{State, StateFile, Status};
use crate::lifecycle::teardown;
use crate::manifest::Report;
use crate::manifest::types::SshAccess;
use crate::plan;
use crate::provider::ec2::Ec2;

pub fn run(args: &CreateArgs) -> Result<(), Error> {
    let format = super::default_format(args.format);
    let mut inputs = super::plan::inputs_for(
        &args.dir,
        args.identity.deployment_id.clone(),
        args.identity.repository.clone(),
        args.identity.pr,
        None,
    )?;
    inputs.run_id = Some(format!("local-{:08x}", fastrand::u32(..)));
    let (deployment, listing) = super::load_checked(&args.dir, format, true)?;
    let wait = super::duration_flag("--wait", &args.wait)?;
    let ssh_cidrs = ssh_cidrs(args, &deployment.config.ssh_access)?;
    let keys = DeploymentKeys::generate(&inputs.deployment_id)
        .map_err(|e| Error::Runtime { message: format!("cannot generate keys: {e}"), help: String::new() })?;
    let identity = plan::identity(&deployment, &inputs);
    let user_data = cloud_init::render(
        &deployment,
        &identity,
        &UserDataKeys::from_keys(&keys, &deployment.config.extra_authorized_keys),
    )
    .map_err(|d| Error::Invalid { report: Report { diagnostics: vec![*d], ..Report::default() }, format })?;
    let plan = plan::build(&deployment, &inputs, listing, &user_data);
    let run_id = inputs.run_id.clone().unwrap_or_default();
    let request = Request {
        deployment: &deployment,
        plan: &plan,
        user_data: &user_data.bytes,
        public_key: &keys.client.public,
        ssh_cidrs,
        tags: plan.tags.clone(),
        run_id: run_id.clone(),
        wait_timeout: wait,
        poll: Duration::from_millis(1000),
    };
    let state = StateFile::create(
        &deployment.root,
        State {
            deployment_id: plan.deployment_id.clone(),
            run_id,
            repository: plan.repository.clone(),
            created_at: plan.created_at.clone(),
            expires_at: plan.expires_at.clone(),
            status: Status::Creating,
            resources: Vec::new(),
            instances: Vec::new(),
        },
    )
    .map_err(|e| Error::io(deployment.root.join(crate::lifecycle::state::STATE_DIR), "write", e))?;

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
        let cloud = Ec2::new(args.cloud.endpoint_url.as_deref()).await;
        let cancel = Cancel::on_signals();
        create::create(&cloud, &request, &state, &progress, &cancel).await
    });
    match outcome {
        Ok(instances) => {
            let took = progress.elapsed().as_secs_f64();
            let mut out = std::io::stdout().lock();
            if args.json {
                let doc = serde_json::json!({
                    "deployment_id": plan.deployment_id,
                    "expires_at": plan.expires_at,
                    "state_file": state.path(),
                    "instances": instances,
                });
                let _ = writeln!(out, "{doc:#}");
            } else {
                let _ = writeln!(
                    out,
                    "deployment {} ready: {} instance(s) in {took:.1}s",
                    plan.deployment_id,
                    instances.len()
                );
                let _ = writeln!(
                    out,
                    "{:<15} {:<16} {:<21} {:<14} {:<10} address",
                    "region", "az", "instance", "type", "market"
                );
                for i in &instances {
                    let address = i
                        .public_ip
                        .clone()
                        .or_else(|| i.private_ip.clone().map(|p| format!("{p} (private)")))
                        .unwrap_or_default();
                    let _ = writeln!(
                        out,
                        "{:<15} {:<16} {:<21} {:<14} {:<10} {address}",
                        i.region,
                        i.az,
                        i.id,
                        i.instance_type,
                        i.market.to_string()
                    );
                }
                let _ = writeln!(out, "state: {}", state.path().display());
                let _ = writeln!(out, "remove it with: spot destroy {}", plan.deployment_id);
            }
            Ok(())
        }
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

fn ssh_cidrs(args: &CreateArgs, access: &SshAccess) -> Result<Vec<String>, Error> {
    if !args.ssh_cidrs.is_empty() {
        for c in &args.ssh_cidrs {
            if !crate::manifest::validate::is_cidr(c) {
                return Err(Error::Usage {
                    message: format!("--ssh-cidr `{c}` is not a CIDR block"),
                    help: "write e.g. 203.0.113.7/32".into(),
                });
            }
        }
        return Ok(args.ssh_cidrs.clone());
    }
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
