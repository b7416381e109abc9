//! `spot action main|post`: the GitHub Action's two steps (the image's entrypoints).
//!
//! Main reads the inputs, masks every secret before printing anything, saves the
//! deployment id and regions to `GITHUB_STATE` before the first resource exists (and each
//! resource as it is made), then runs the mode: `up` (create and deliver; outputs and a
//! job summary), `down` (destroy), `reap` (scheduled teardown), `validate`. Post destroys
//! what main made, found by tags, unless `keep: true`.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use crate::Error;
use crate::actions;
use crate::lifecycle::create::Outcome;
use crate::lifecycle::progress::Progress;
use crate::lifecycle::state::{Recorder, Status};
use crate::manifest::Format;
use crate::overrides::{Overrides, Source, list};
use crate::provider::{Cloud as _, Instance, Market, Resource};

use super::create::{Created, Hooks, Job};
use super::redeploy::Reuse;

/// Every input the action reads (action.yml declares exactly these).
pub const INPUTS: &[&str] = &[
    "mode",
    "working-directory",
    "regions",
    "instance-types",
    "count",
    "ttl",
    "tarball",
    "keep",
    "spot-fallback",
    "max-price",
    "ssh-cidr",
    "tags",
    "deployment-id",
    "min-ready",
    "ssh-timeout",
    "github-token",
    "github-deployment",
    "role-to-assume",
    "endpoint-url",
    "dry-run",
];

/// Every output the main step sets.
pub const OUTPUTS: &[&str] = &["deployment-id", "instance-ids", "public-ips", "regions", "market", "json"];

/// Teardown in the post step must end well inside the runner's 5-minute ceiling.
const POST_BUDGET: Duration = Duration::from_secs(180);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    Up,
    Down,
    Reap,
    Validate,
}

fn mode() -> Result<Mode, Error> {
    match actions::input("mode").as_deref().unwrap_or("up") {
        "up" => Ok(Mode::Up),
        "down" => Ok(Mode::Down),
        "reap" => Ok(Mode::Reap),
        "validate" => Ok(Mode::Validate),
        other => Err(Error::Usage {
            message: format!("input `mode` is `{other}`"),
            help: "use up, down, reap or validate".into(),
        }),
    }
}

fn usage(message: String) -> Error {
    Error::Usage { message, help: "see the action's inputs in the README".into() }
}

fn io(what: &'static str, e: std::io::Error) -> Error {
    Error::io(PathBuf::from(what), "write", e)
}

fn working_directory() -> PathBuf {
    PathBuf::from(actions::input("working-directory").unwrap_or_else(|| ".".into()))
}

fn overrides() -> Overrides {
    Overrides {
        regions: actions::input("regions").map(|v| list(&v)).unwrap_or_default(),
        instance_types: actions::input("instance-types").map(|v| list(&v)).unwrap_or_default(),
        count: actions::input("count"),
        ttl: actions::input("ttl"),
        tarball: actions::input("tarball"),
        fallback: actions::input("spot-fallback"),
        max_price: actions::input("max-price"),
        ssh_cidrs: actions::input("ssh-cidr").map(|v| list(&v)).unwrap_or_default(),
        tags: actions::input("tags")
            .map(|v| v.lines().map(str::trim).filter(|l| !l.is_empty()).map(String::from).collect())
            .unwrap_or_default(),
    }
}

/// The deployment id: the input; else `pr-<number>` for a pull request environment
/// (`keep: true`, or `down`); else `gh-<run id>-<attempt>`, which the post step can
/// derive again even when main saved nothing.
fn deployment_id(mode: Mode, keep: bool) -> Option<String> {
    if let Some(id) = actions::input("deployment-id") {
        return Some(id);
    }
    if let Some(pr) = actions::pull_request()
        && (keep || mode == Mode::Down)
    {
        return Some(format!("pr-{}", pr.number));
    }
    actions::run().map(|(id, attempt)| format!("gh-{id}-{attempt}"))
}

/// Saves each resource to `GITHUB_STATE` the moment it exists.
#[derive(Debug, Default)]
struct StateRecorder {
    count: AtomicUsize,
}

impl Recorder for StateRecorder {
    fn created(&self, r: &Resource) {
        let n = self.count.fetch_add(1, Ordering::SeqCst) + 1;
        let _ = actions::save_state(&format!("resource_{n}"), &format!("{} {} {}", r.kind, r.region, r.id));
    }
    fn removed(&self, _: &Resource) {}
    fn status(&self, _: Status) {}
    fn instances(&self, _: &[Instance]) {}
}

struct ActionHooks {
    recorder: StateRecorder,
}

impl Hooks for ActionHooks {
    fn secrets(&self, values: &[&str]) {
        for v in values {
            actions::mask(v);
        }
    }
    fn starting(&self, plan: &crate::plan::Plan) {
        let regions: Vec<&str> = plan.regions.iter().map(|r| r.region.as_str()).collect();
        let _ = actions::save_state("regions", &regions.join(","));
        let _ = actions::save_state("expires-at", &plan.expires_at);
    }
    fn recorder(&self) -> Option<&dyn Recorder> {
        Some(&self.recorder)
    }
}

/// The main step.
pub fn main() -> Result<(), Error> {
    // Masks first: nothing may be printed before them.
    if let Some(token) = actions::input("github-token") {
        actions::mask(&token);
    }
    let mode = mode()?;
    let keep = actions::input_bool("keep").map_err(usage)?;
    let dir = working_directory();
    if mode != Mode::Validate {
        assume_role()?;
    }
    match mode {
        Mode::Validate => {
            super::validate::run(&crate::cli::ValidateArgs { dir, format: Some(Format::Github) })
        }
        Mode::Up => up(&dir, keep),
        Mode::Down => down(&dir, keep),
        Mode::Reap => super::reap::run_action(&dir),
    }
}

fn up(dir: &std::path::Path, keep: bool) -> Result<(), Error> {
    let id = deployment_id(Mode::Up, keep).ok_or_else(|| {
        usage("no deployment id: set input `deployment-id` (GITHUB_RUN_ID is not set)".into())
    })?;
    actions::save_state("mode", "up").map_err(|e| io("GITHUB_STATE", e))?;
    actions::save_state("deployment-id", &id).map_err(|e| io("GITHUB_STATE", e))?;
    actions::save_state("keep", if keep { "true" } else { "false" }).map_err(|e| io("GITHUB_STATE", e))?;
    actions::save_state("working-directory", &dir.to_string_lossy()).map_err(|e| io("GITHUB_STATE", e))?;
    let endpoint_url = actions::input("endpoint-url");
    let min_ready = actions::input("min-ready")
        .map(|v| v.parse::<u32>().map_err(|_| usage(format!("input `min-ready` is `{v}`: write a number"))))
        .transpose()?;
    let ssh_budget =
        super::duration_flag("input `ssh-timeout`", &actions::input("ssh-timeout").unwrap_or("5m".into()))?;
    let run_id = actions::run()
        .map_or_else(|| format!("local-{:08x}", fastrand::u32(..)), |(id, a)| format!("{id}-{a}"));
    let pr = actions::pull_request().map(|p| p.number);

    let job = Job {
        dir: dir.to_path_buf(),
        deployment_id: Some(id.clone()),
        repository: None,
        pr,
        run_id,
        overrides: overrides(),
        source: Source::Inputs,
        wait: Duration::from_secs(300),
        ssh_budget,
        boot: Duration::from_secs(900),
        min_ready,
        deliver: true,
        endpoint_url: endpoint_url.clone(),
        format: Format::Github,
    };
    let hooks = ActionHooks { recorder: StateRecorder::default() };

    // A pull request environment takes each push in place when it still fits and runs
    // (EC2 Instance Connect gets this run back in); otherwise it is replaced. A push with
    // a broken description fails here and leaves the environment alone.
    let mut result = None;
    if keep && pr.is_some() {
        actions::group(&format!("Redeploy into {id}"));
        let attempt = super::redeploy::attempt(&job, &hooks);
        actions::end_group();
        match attempt {
            Ok(Reuse::Redeployed(created)) => {
                println!("redeployed into the running {id}: same instances, new build");
                result = Some(Ok(*created));
            }
            Ok(Reuse::Absent) => {}
            Ok(Reuse::Replace { why, regions }) => {
                println!("replacing {id}: {why}");
                actions::group(&format!("Replace the previous {id}"));
                let progress = Progress::new();
                let removed = super::destroy::remove(
                    dir,
                    &regions,
                    Some(&id),
                    false,
                    POST_BUDGET,
                    endpoint_url.as_deref(),
                    &progress,
                );
                actions::end_group();
                if let Some(r) = removed? {
                    println!("replaced the previous environment: removed {}", r.summary());
                }
            }
            Err(e) => result = Some(Err((e, true))),
        }
    }
    let result = result.unwrap_or_else(|| {
        actions::group(&format!("Create {id}"));
        let created = super::create::execute(&job, &hooks);
        actions::end_group();
        created.map_err(|e| (e, false))
    });
    let created = match result {
        Ok(created) => created,
        Err((e, kept)) => {
            if !matches!(e, Error::Invalid { .. }) {
                actions::error("spot: create failed", &e.to_string());
            }
            let _ = actions::summary(&format!(
                "## spot: {id} failed\n\n```\n{}\n```\n",
                e.to_string().chars().take(20_000).collect::<String>()
            ));
            if let Some(number) = pr.filter(|_| keep) {
                let first = e.to_string().lines().next().unwrap_or_default().to_string();
                let left = if kept {
                    "what ran before keeps running, and the next push tries again"
                } else {
                    "nothing of this run was kept"
                };
                comment(
                    number,
                    &format!("### spot environment `{id}`: failed\n\n{first}\n\nSee the job log; {left}.\n"),
                );
            }
            return Err(e);
        }
    };
    let prices = spot_prices(&created, endpoint_url.as_deref());
    outputs(&created).map_err(|e| io("GITHUB_OUTPUT", e))?;
    if let Some(number) = pr.filter(|_| keep) {
        comment(number, &environment_comment(&created));
    }
    if actions::input_bool("github-deployment").map_err(usage)? {
        let head = actions::pull_request().and_then(|p| p.head_sha).or_else(actions::sha);
        let url =
            created.outcomes.iter().find(|o| o.ready).map(|o| format!("http://{}", address(&o.instance)));
        let environment = created.plan.deployment_id.clone();
        github(|gh| async move {
            let git_ref = head.ok_or("no commit to deploy (GITHUB_SHA is not set)")?;
            let run_url = actions::run_url();
            gh.deployment_ready(&environment, &git_ref, url.as_deref(), run_url.as_deref())
                .await
                .map(|id| format!("GitHub deployment {id} of `{environment}`: success"))
        });
    }
    actions::summary(&summary_markdown(&created, &prices, keep)).map_err(|e| io("GITHUB_STEP_SUMMARY", e))?;
    println!(
        "deployment {} ready: {} instance(s) in {:.1}s",
        created.plan.deployment_id,
        created.outcomes.iter().filter(|o| o.ready).count(),
        created.seconds
    );
    Ok(())
}

fn address(i: &Instance) -> String {
    i.address().unwrap_or_default().to_string()
}

fn outputs(created: &Created) -> std::io::Result<()> {
    let ready: Vec<&Outcome> = created.outcomes.iter().filter(|o| o.ready).collect();
    let ids: Vec<&str> = ready.iter().map(|o| o.instance.id.as_str()).collect();
    let ips: Vec<String> = ready.iter().map(|o| address(&o.instance)).collect();
    let mut regions: Vec<&str> = ready.iter().map(|o| o.instance.region.as_str()).collect();
    regions.dedup();
    let markets: std::collections::BTreeSet<String> =
        ready.iter().map(|o| o.instance.market.to_string()).collect();
    let market = match markets.len() {
        1 => markets.iter().next().cloned().unwrap_or_default(),
        _ => "mixed".into(),
    };
    let json = serde_json::json!({
        "deployment_id": created.plan.deployment_id,
        "expires_at": created.plan.expires_at,
        "instances": created.outcomes,
    });
    actions::set_output("deployment-id", &created.plan.deployment_id)?;
    actions::set_output("instance-ids", &ids.join(","))?;
    actions::set_output("public-ips", &ips.join(","))?;
    actions::set_output("regions", &regions.join(","))?;
    actions::set_output("market", &market)?;
    actions::set_output("json", &json.to_string())
}

/// Spot prices for the launched (type, AZ) pairs; empty when EC2 does not say.
fn spot_prices(created: &Created, endpoint_url: Option<&str>) -> BTreeMap<(String, String), f64> {
    let Ok(rt) = super::runtime() else {
        return BTreeMap::new();
    };
    rt.block_on(async {
        let cloud = crate::provider::ec2::Ec2::new(endpoint_url).await;
        let mut by_region: BTreeMap<&str, Vec<String>> = BTreeMap::new();
        for o in &created.outcomes {
            by_region.entry(o.instance.region.as_str()).or_default().push(o.instance.instance_type.clone());
        }
        let mut prices = BTreeMap::new();
        for (region, types) in by_region {
            if let Ok(p) = cloud.spot_prices(region, &types).await {
                prices.extend(p);
            }
        }
        prices
    })
}

fn summary_markdown(created: &Created, prices: &BTreeMap<(String, String), f64>, keep: bool) -> String {
    let plan = &created.plan;
    let mut md = String::new();
    let ready = created.outcomes.iter().filter(|o| o.ready).count();
    let _ = writeln!(md, "## spot: `{}` ready\n", plan.deployment_id);
    if created.reused {
        let _ = writeln!(md, "The new build went into the running instances of an earlier run.\n");
    }
    let _ = writeln!(
        md,
        "| region | AZ | instance | type | market | price $/h | address | state | ready after |"
    );
    let _ = writeln!(md, "|---|---|---|---|---|---|---|---|---|");
    let mut hourly = 0.0;
    let mut priced = 0;
    for o in &created.outcomes {
        let i = &o.instance;
        let price = match i.market {
            Market::Spot => prices.get(&(i.instance_type.clone(), i.az.clone())).copied(),
            Market::OnDemand => None,
        };
        if let (Some(p), true) = (price, o.ready) {
            hourly += p;
            priced += 1;
        }
        let _ = writeln!(
            md,
            "| {} | {} | `{}` | {} | {} | {} | {} | {} | {} |",
            i.region,
            i.az,
            i.id,
            i.instance_type,
            i.market,
            price.map_or_else(|| "n/a".into(), |p| format!("{p:.4}")),
            address(i),
            if o.ready { "ready" } else { "failed, terminated" },
            o.seconds_to_ready.map_or_else(|| "-".into(), |s| format!("{s:.1}s")),
        );
    }
    let _ = writeln!(
        md,
        "\n**{ready} of {} ready** in {:.1}s. Estimated cost: **${hourly:.4}/hour** ({priced} instance(s) priced from EC2's current spot prices; on-demand not included).\n",
        created.outcomes.len(),
        created.seconds
    );
    let teardown = if keep {
        format!(
            "kept (`keep: true`): removed by `mode: down` (e.g. when the pull request closes), by `mode: reap`, or powered off at `{}`",
            plan.expires_at
        )
    } else {
        format!(
            "by this action's post step at the end of the job (at the latest, powered off at `{}`)",
            plan.expires_at
        )
    };
    let _ = writeln!(md, "Teardown: {teardown}.");
    md
}

/// The sticky comment's text for a ready environment.
fn environment_comment(created: &Created) -> String {
    let mut md = format!(
        "### spot environment `{}`: ready\n\n| instance | region | type | market | address |\n|---|---|---|---|---|\n",
        created.plan.deployment_id
    );
    for o in created.outcomes.iter().filter(|o| o.ready) {
        let i = &o.instance;
        let _ =
            writeln!(md, "| `{}` | {} | {} | {} | {} |", i.id, i.az, i.instance_type, i.market, address(i));
    }
    let _ = writeln!(
        md,
        "\n{} Expires at `{}`; removed when this pull request closes. Updated for {}.",
        if created.reused { "The new build went into the running instances." } else { "New instances." },
        created.plan.expires_at,
        actions::pull_request()
            .and_then(|p| p.head_sha)
            .map_or_else(|| "the latest push".into(), |s| format!("`{}`", &s[..s.len().min(12)]))
    );
    md
}

/// Runs `call` against the GitHub API when a token is given, printing what it did. A
/// failure (a fork's read-only token, say) is a warning, not a failed deployment.
fn github<F, Fut>(call: F)
where
    F: FnOnce(crate::github::GitHub) -> Fut,
    Fut: std::future::Future<Output = Result<String, String>>,
{
    let (Some(token), Some(repository)) = (actions::input("github-token"), actions::repository()) else {
        return;
    };
    let done = super::runtime().map_err(|e| e.to_string()).and_then(|rt| {
        rt.block_on(async {
            let gh = crate::github::GitHub::new(
                &crate::keys::Secret::new(token),
                &actions::api_url(),
                &repository,
            )?;
            call(gh).await
        })
    });
    match done {
        Ok(said) => println!("{said}"),
        Err(e) => println!("::warning title=spot: GitHub::{}", actions::escape_data(&e)),
    }
}

/// Creates or updates the pull request's sticky comment.
fn comment(number: u64, body: &str) {
    github(|gh| async move {
        match gh.upsert_comment(number, body).await? {
            crate::github::Upsert::Created(id) => Ok(format!("pull request #{number}: comment {id} created")),
            crate::github::Upsert::Updated(id) => Ok(format!("pull request #{number}: comment {id} updated")),
        }
    });
}

fn down(dir: &std::path::Path, keep: bool) -> Result<(), Error> {
    let id = deployment_id(Mode::Down, keep)
        .ok_or_else(|| usage("no deployment to remove: set input `deployment-id`".into()))?;
    let progress = Progress::new();
    // Every region: the description may have moved since the deployment was made.
    let regions =
        super::destroy::everywhere(&regions(dir)?, actions::input("endpoint-url").as_deref(), &progress);
    let removal = remove_with_summary(dir, &id, &regions, &progress);
    if let Some(pr) = actions::pull_request().filter(|p| id == format!("pr-{}", p.number)) {
        let state = match &removal {
            Ok(_) => "removed",
            Err(_) => "removal failed (see the job log; `mode: reap` retries)",
        };
        comment(pr.number, &format!("### spot environment `{id}`: {state}\n"));
    }
    if actions::input_bool("github-deployment").map_err(usage)? && removal.is_ok() {
        let environment = id.clone();
        github(|gh| async move {
            let n = gh.deployments_inactive(&environment).await?;
            Ok(format!("{n} GitHub deployment(s) of `{environment}` marked inactive"))
        });
    }
    super::destroy::report(removal, Some(&id), &regions, &progress)
}

/// Regions to search: input `regions`, else the config's in `dir`.
pub(super) fn regions(dir: &std::path::Path) -> Result<Vec<String>, Error> {
    let given = actions::input("regions").map(|v| list(&v)).unwrap_or_default();
    super::regions_for(dir, &given)
}

/// With `role-to-assume`: fresh credentials from the runner's OIDC token, so a long job's
/// teardown never meets an expired one-hour session.
fn assume_role() -> Result<(), Error> {
    let Some(role) = actions::input("role-to-assume") else {
        return Ok(());
    };
    let Some((url, request_token)) = actions::oidc_request() else {
        return Err(usage(
            "input `role-to-assume` needs the runner's OIDC token: add `permissions: id-token: write` to the job".into(),
        ));
    };
    let session =
        actions::run().map_or_else(|| "spot".into(), |(id, attempt)| format!("spot-{id}-{attempt}"));
    let endpoint_url = actions::input("endpoint-url");
    let expires = super::runtime()?.block_on(async {
        let token = crate::github::oidc_token(&url, &request_token, "sts.amazonaws.com").await.map_err(
            |message| Error::Runtime { message, help: "check the job's `id-token: write` permission".into() },
        )?;
        actions::mask(token.expose());
        crate::provider::ec2::assume_role_with_web_identity(endpoint_url.as_deref(), &role, &session, &token)
            .await
            .map_err(|e| super::cloud_error(&e))
    })?;
    println!("assumed {role} with the runner's OIDC token (credentials valid until {expires})");
    Ok(())
}

/// Removes deployment `id` by its tags within the post budget and says in the job
/// summary what was removed or left.
fn remove_with_summary(
    dir: &std::path::Path,
    id: &str,
    regions: &[String],
    progress: &Progress,
) -> Result<Option<crate::lifecycle::teardown::Removal>, Error> {
    let endpoint_url = actions::input("endpoint-url");
    let removal =
        super::destroy::remove(dir, regions, Some(id), false, POST_BUDGET, endpoint_url.as_deref(), progress);
    let text = match &removal {
        Ok(Some(r)) if r.failed.is_empty() => format!(
            "## spot: teardown of `{id}`\n\nremoved {} in {:.1}s\n",
            r.summary(),
            progress.elapsed().as_secs_f64()
        ),
        Ok(Some(r)) => format!(
            "## spot: teardown of `{id}` incomplete\n\nremoved {}; {} left (tagged; `mode: reap` or `spot destroy {id}` removes them)\n",
            r.summary(),
            r.failed.len()
        ),
        Ok(None) => {
            format!("## spot: teardown of `{id}`\n\nnothing left to remove in {}\n", regions.join(", "))
        }
        Err(e) => format!("## spot: teardown of `{id}` failed\n\n```\n{e}\n```\n"),
    };
    let _ = actions::summary(&text);
    removal
}

/// The post step: destroys what main made, unless `keep`.
pub fn post() -> Result<(), Error> {
    if actions::state("mode").is_some_and(|m| m != "up") {
        println!("post: nothing to do after mode `{}`", actions::state("mode").unwrap_or_default());
        return Ok(());
    }
    if actions::state("keep").as_deref() == Some("true") {
        println!(
            "post: keeping {} (keep: true); remove it with mode: down, mode: reap, or `spot destroy`",
            actions::state("deployment-id").unwrap_or_default()
        );
        return Ok(());
    }
    assume_role()?;
    let Some(id) = actions::state("deployment-id").or_else(|| deployment_id(Mode::Up, false)) else {
        println!("post: no deployment id saved or derivable; nothing to do");
        return Ok(());
    };
    let dir = actions::state("working-directory").map_or_else(working_directory, PathBuf::from);
    let regions = match actions::state("regions") {
        Some(r) => list(&r),
        None => regions(&dir)?,
    };
    let recorded = (1..).take_while(|n| actions::state(&format!("resource_{n}")).is_some()).count();
    println!("post: main recorded {recorded} resource(s); removing everything tagged spot:deployment={id}");
    let progress = Progress::new();
    let removal = remove_with_summary(&dir, &id, &regions, &progress);
    let result = super::destroy::report(removal, Some(&id), &regions, &progress);
    if let Err(e) = &result {
        actions::error("spot: teardown failed", &e.to_string());
    }
    result
}
