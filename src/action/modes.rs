//! The main step: the mode the inputs ask for (`up`, `down`, `reap`, `validate`), on one session.

use std::collections::BTreeMap;
use std::time::Duration;

use super::state::{self, ActionHooks};
use super::{Mode, io, summary, usage};
use crate::actions;
use crate::caps::Caps;
use crate::error::Error;
use crate::lifecycle::progress::Progress;
use crate::manifest::Format;
use crate::ops::reap::Reap;
use crate::ops::up::{Created, Job};
use crate::ops::{self, Session};
use crate::overrides::Source;
use crate::provider::Cloud as _;

/// How old the newest resource of a deployment with no instance must be before `mode:
/// reap` takes it for an orphan (as `spot reap --orphan-grace`'s default).
const ORPHAN_GRACE: Duration = Duration::from_secs(600);

/// The main step.
pub async fn run() -> Result<(), Error> {
    // Masks first: nothing may be printed before them.
    if let Some(token) = actions::input("github-token") {
        actions::mask(&token);
    }
    let mode = super::mode()?;
    let dir = super::working_directory();
    // What post needs, saved before anything that can fail (the `keep` parse, credentials,
    // the description): an unreadable `keep` is kept by post, and fails here.
    let keep = actions::input_bool("keep");
    save_state(mode, &dir, *keep.as_ref().unwrap_or(&true))?;
    let keep = keep.map_err(usage)?;
    match mode {
        Mode::Validate => {
            let (deployment, listing) = ops::validate(&dir, Format::Github, actions::repository())?;
            // Held to the workflow's limits as `up` would hold it.
            let caps = Caps::from_inputs(actions::input).map_err(|e| usage(e.join("\n")))?;
            ops::up::within(&caps, &deployment, Format::Github)?;
            println!("{}", crate::fence::guard(&ops::valid_line(&deployment, &listing)));
            Ok(())
        }
        Mode::Up => up(&dir, keep).await,
        Mode::Down => super::down::run(&dir, keep).await,
        Mode::Reap => reap(&dir).await,
    }
}

/// The job `mode: up` runs, from the inputs.
fn job(dir: &std::path::Path, id: &str) -> Result<Job, Error> {
    let min_ready = actions::input("min-ready")
        .map(|v| v.parse::<u32>().map_err(|_| usage(format!("input `min-ready` is `{v}`: write a number"))))
        .transpose()?;
    let ssh_budget =
        ops::duration("input `ssh-timeout`", &actions::input("ssh-timeout").unwrap_or("5m".into()))?;
    // Unique to this step: matrix legs and steps of one run share its id and attempt, and
    // post removes what is tagged with this run id (it reads it back from the state).
    let random = fastrand::u32(..);
    let run_id = actions::run()
        .map_or_else(|| format!("local-{random:08x}"), |(id, a)| format!("{id}-{a}-{random:08x}"));
    Ok(Job {
        dir: dir.to_path_buf(),
        deployment_id: Some(id.to_string()),
        repository: actions::repository(),
        pr: actions::pull_request().map(|p| p.number),
        run_id,
        overrides: super::overrides(),
        source: Source::Inputs,
        wait: Duration::from_secs(300),
        ssh_budget,
        boot: Duration::from_secs(900),
        min_ready,
        deliver: true,
        format: Format::Github,
        caps: Some(Caps::from_inputs(actions::input).map_err(|e| usage(e.join("\n")))?),
    })
}

async fn up(dir: &std::path::Path, keep: bool) -> Result<(), Error> {
    let id = super::deployment_id(Mode::Up, keep).ok_or_else(|| {
        usage("no deployment id: set input `deployment-id` (GITHUB_RUN_ID is not set)".into())
    })?;
    let job = job(dir, &id)?;
    actions::save_state(state::DEPLOYMENT_ID, &id).map_err(|e| io("GITHUB_STATE", e))?;
    actions::save_state(state::RUN_ID, &job.run_id).map_err(|e| io("GITHUB_STATE", e))?;
    // A pull request's comment is about its kept environment.
    let pr = job.pr.filter(|_| keep);
    let prepared = match ops::up::prepare(&job) {
        Ok(prepared) => prepared,
        // A push with a broken description fails here, before any cloud call (the role is
        // not even assumed), and leaves any environment alone.
        Err(e) => return Err(failed(&id, e, keep, pr).await),
    };
    let session = super::session().await?;
    let hooks = ActionHooks::default();
    // `keep: false` makes a new deployment; an id given that is in use is refused before
    // post is told of it, so post never removes another run's deployment.
    if !keep && actions::input("deployment-id").is_some() {
        let help = "set `keep: true` to deliver into it (or replace it when it no longer fits), remove it with `mode: down`, or leave `deployment-id` out for a new one";
        if let Err(e) = ops::up::refuse_existing(&session, &prepared, help).await {
            if matches!(e, Error::Usage { .. }) {
                actions::save_state(state::REFUSED, &id).map_err(|e| io("GITHUB_STATE", e))?;
            }
            actions::error("spot: create refused", &e.to_string());
            let _ = actions::summary(&summary::failed(&id, &e.to_string()));
            return Err(e);
        }
    }
    let outcome = if keep {
        // Kept (a pull request's environment, or any `keep: true` run): the build goes into
        // what runs under the id when it fits, else replaces it.
        super::kept::push(&session, &job, &prepared, &hooks).await
    } else {
        actions::group(&format!("Create {id}"));
        let created = ops::up::create(&session, &job, &prepared, &hooks).await;
        actions::end_group();
        created.map_err(|e| (e, false))
    };
    let created = match outcome {
        Ok(done) => done,
        Err((e, kept)) => return Err(failed(&id, e, kept, pr).await),
    };
    // Post keeps a kept deployment only once it is ready.
    actions::save_state(state::READY, &id).map_err(|e| io("GITHUB_STATE", e))?;
    let prices = spot_prices(&session, &created).await;
    for (name, value) in summary::outputs(&created) {
        actions::set_output(name, &value).map_err(|e| io("GITHUB_OUTPUT", e))?;
    }
    if let Some(number) = pr {
        let head = actions::pull_request().and_then(|p| p.head_sha);
        super::comment(number, &summary::environment_comment(&created, head.as_deref())).await;
    }
    if actions::input_bool("github-deployment").map_err(usage)? {
        let head = actions::pull_request().and_then(|p| p.head_sha).or_else(actions::sha);
        let url = summary::environment_url(&created);
        let environment = created.plan.deployment_id.clone();
        super::github(|gh| async move {
            let git_ref = head.ok_or("no commit to deploy (GITHUB_SHA is not set)")?;
            let run_url = actions::run_url();
            gh.deployment_ready(&environment, &git_ref, url.as_deref(), run_url.as_deref())
                .await
                .map(|id| format!("GitHub deployment {id} of `{environment}`: success"))
        })
        .await;
    }
    actions::summary(&summary::ready(&created, &prices, keep)).map_err(|e| io("GITHUB_STEP_SUMMARY", e))?;
    println!(
        "deployment {} ready: {} instance(s) in {:.1}s",
        created.plan.deployment_id,
        created.outcomes.iter().filter(|o| o.ready).count(),
        created.seconds
    );
    Ok(())
}

/// Reports a failed `up` (an annotation unless the report has its own, the job summary,
/// the pull request's comment; `kept`: what ran before is still there) and hands the error
/// back.
async fn failed(id: &str, e: Error, kept: bool, pr: Option<u64>) -> Error {
    if !matches!(e, Error::Invalid { .. }) {
        actions::error("spot: create failed", &e.to_string());
    }
    let _ = actions::summary(&summary::failed(id, &e.to_string()));
    if let Some(number) = pr {
        super::comment(number, &summary::failed_comment(id, &e.to_string(), kept)).await;
    }
    e
}

/// What post needs to know whatever main does next: the mode (post tears down only after
/// `up`), `keep`, and the folder. `up` adds the deployment and run ids once it has them.
fn save_state(mode: Mode, dir: &std::path::Path, keep: bool) -> Result<(), Error> {
    let saved = [
        (state::MODE, mode.name().to_string()),
        (state::KEEP, keep.to_string()),
        (state::WORKING_DIRECTORY, dir.to_string_lossy().into_owned()),
    ];
    for (key, value) in &saved {
        actions::save_state(key, value).map_err(|e| io("GITHUB_STATE", e))?;
    }
    Ok(())
}

/// Spot prices for the launched (type, AZ) pairs; empty when EC2 does not say.
async fn spot_prices(session: &Session, created: &Created) -> BTreeMap<(String, String), f64> {
    let mut by_region: BTreeMap<&str, Vec<String>> = BTreeMap::new();
    for o in &created.outcomes {
        by_region.entry(o.instance.region.as_str()).or_default().push(o.instance.instance_type.clone());
    }
    let mut prices = BTreeMap::new();
    for (region, types) in by_region {
        if let Ok(p) = session.cloud.spot_prices(region, &types).await {
            prices.extend(p);
        }
    }
    prices
}

/// `mode: reap`.
async fn reap(dir: &std::path::Path) -> Result<(), Error> {
    let regions = super::regions(dir)?;
    let dry_run = actions::input_bool("dry-run").map_err(usage)?;
    let whole_account = actions::input_bool("whole-account").map_err(usage)?;
    let repository = actions::repository()
        .ok_or_else(|| usage("mode `reap` needs GITHUB_REPOSITORY (set by the runner)".into()))?;
    let github = actions::input("github-token").map(|t| (crate::keys::Secret::new(t), actions::api_url()));
    let session = super::session().await?;
    let progress = Progress::new();
    let reap = Reap {
        regions: &regions,
        dry_run,
        github,
        repository: &repository,
        whole_account,
        orphan_grace: ORPHAN_GRACE,
    };
    let decisions = ops::reap::reap(&session, &reap, &progress).await?;
    let _ = actions::summary(&summary::reap(&decisions, dry_run));
    ops::reap::report(&decisions, dry_run, false)
}
