//! `spot create`: launch, deliver the build and verify it runs; roll back on any failure.

use std::io::Write as _;

use crate::cli::CreateArgs;
use crate::error::Error;
use crate::ops::up::{Created, Job, NoHooks};
use crate::ops::{self, Session};
use crate::overrides::Source;

pub fn run(args: &CreateArgs) -> Result<(), Error> {
    let mut overrides = args.overrides.to_overrides();
    overrides.ssh_cidrs.clone_from(&args.ssh_cidrs);
    let job = Job {
        dir: args.dir.clone(),
        deployment_id: args.identity.deployment_id.clone(),
        repository: args.identity.repository.clone().or_else(crate::actions::repository),
        pr: args.identity.pr,
        run_id: format!("local-{:08x}", fastrand::u32(..)),
        overrides,
        source: Source::Flags,
        wait: ops::duration("--wait", &args.wait)?,
        ssh_budget: ops::duration("--ssh-timeout", &args.ssh_timeout)?,
        boot: ops::duration("--boot-timeout", &args.boot_timeout)?,
        min_ready: args.min_ready,
        deliver: !args.no_deliver,
        format: super::default_format(args.format),
        caps: None,
    };
    // Errors in the description, the flags and the secrets surface here, before
    // credentials are looked at; the user-data's size is checked when `create` renders it,
    // still before the first cloud call.
    let prepared = ops::up::prepare(&job)?;
    let created = super::block_on(async {
        let session = Session::open(args.cloud.endpoint_url.as_deref()).await;
        // A generated id is new; one given may name a deployment that runs already.
        if let Some(id) = &job.deployment_id {
            let help = format!(
                "to replace it, run `spot destroy {id}` first; for another deployment beside it, choose another --deployment-id or leave it out"
            );
            ops::up::refuse_existing(&session, &prepared, &help).await?;
        }
        ops::up::create(&session, &job, &prepared, &NoHooks).await
    })?;
    print_ready(args.json, &created);
    Ok(())
}

fn print_ready(json: bool, created: &Created) {
    let (plan, outcomes, took) = (&created.plan, &created.outcomes, created.seconds);
    if json {
        let doc = serde_json::json!({
            "deployment_id": plan.deployment_id,
            "expires_at": plan.expires_at,
            "state_file": created.state_path,
            "instances": outcomes,
        });
        let _ = writeln!(std::io::stdout(), "{}", crate::fence::json(&format!("{doc:#}")));
        return;
    }
    let mut out = crate::fence::Guarded::stdout();
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
        if o.ready {
            for url in &i.urls {
                let _ = writeln!(out, "  {url}");
            }
        }
    }
    for e in &plan.expose {
        let _ = writeln!(out, "open: {}", crate::ingress::opened(e, crate::ingress::DEPLOYED_FROM));
    }
    let _ = writeln!(out, "state: {}", created.state_path.display());
    let _ = writeln!(out, "remove it with: spot destroy {}", plan.deployment_id);
}
