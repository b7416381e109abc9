//! The GitHub Action's orchestration: its two steps, above the operations in `ops`.
//!
//! [`modes`] (the main step) reads the inputs, masks every secret before printing
//! anything, saves what post needs to `GITHUB_STATE` ([`state`]) before anything can fail,
//! takes its credentials (`role-to-assume`), then runs the mode: `up`
//! (create and deliver, or with `keep: true` [`kept`]: redeploy or replace; an id in use
//! without `keep` is refused), `down` ([`down`]), `reap`, `validate`. [`post`] destroys what main made,
//! found by tags (this run's and this repository's only), unless `keep: true` and main got
//! it ready. [`summary`] renders the job summary, outputs and
//! comments (pure). Everything the runner hands over is read through `actions/` (the only
//! reader of `GITHUB_*`, `INPUT_*`, `STATE_*`); one runtime and one [`Session`] serve the
//! whole step.

pub mod down;
pub mod kept;
pub mod modes;
pub mod post;
pub mod state;
pub mod summary;

use std::path::PathBuf;
use std::time::Duration;

use crate::actions;
use crate::error::Error;
use crate::ops::Session;
use crate::overrides::{Overrides, list};

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
    "whole-account",
    "secrets",
    "max-instances",
    "max-ttl",
    "allowed-instance-types",
    "allowed-regions",
    "allowed-ports",
    "allow-anywhere",
];

/// Every output the main step sets.
pub const OUTPUTS: &[&str] =
    &["deployment-id", "instance-ids", "public-ips", "regions", "market", "urls", "url", "json"];

/// Teardown in the post step must end well inside the runner's 5-minute ceiling.
const POST_BUDGET: Duration = Duration::from_secs(180);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    Up,
    Down,
    Reap,
    Validate,
}

impl Mode {
    const ALL: [Mode; 4] = [Mode::Up, Mode::Down, Mode::Reap, Mode::Validate];

    fn name(self) -> &'static str {
        match self {
            Mode::Up => "up",
            Mode::Down => "down",
            Mode::Reap => "reap",
            Mode::Validate => "validate",
        }
    }
}

fn mode() -> Result<Mode, Error> {
    let given = actions::input("mode").unwrap_or_else(|| "up".into());
    Mode::ALL.into_iter().find(|m| m.name() == given).ok_or_else(|| Error::Usage {
        message: format!("input `mode` is `{given}`"),
        help: "use up, down, reap or validate".into(),
    })
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
/// (`keep: true`, or `down`); else `gh-<run id>-<attempt>-<4 hex>`: new for each step
/// (matrix legs and steps of one run share the run id and attempt), so post knows it only
/// from what main saved.
fn deployment_id(mode: Mode, keep: bool) -> Option<String> {
    if let Some(id) = actions::input("deployment-id") {
        return Some(id);
    }
    if let Some(pr) = actions::pull_request()
        && (keep || mode == Mode::Down)
    {
        return Some(format!("pr-{}", pr.number));
    }
    actions::run().map(|(id, attempt)| format!("gh-{id}-{attempt}-{:04x}", fastrand::u16(..)))
}

/// Regions to search: input `regions`, else the config's in `dir`.
fn regions(dir: &std::path::Path) -> Result<Vec<String>, Error> {
    let given = actions::input("regions").map(|v| list(&v)).unwrap_or_default();
    crate::ops::regions_for(dir, &given)
}

/// The step's one session: after `role-to-assume` (when given) minted its credentials,
/// so every call of the step uses them.
async fn session() -> Result<Session, Error> {
    assume_role().await?;
    Ok(Session::open(actions::input("endpoint-url").as_deref()).await)
}

/// With `role-to-assume`: fresh credentials from the runner's OIDC token, so a long job's
/// teardown never meets an expired one-hour session.
async fn assume_role() -> Result<(), Error> {
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
    let token =
        crate::github::oidc_token(&url, &request_token, "sts.amazonaws.com").await.map_err(|message| {
            Error::Runtime { message, help: "check the job's `id-token: write` permission".into() }
        })?;
    actions::mask(token.expose());
    let expires =
        crate::provider::ec2::assume_role_with_web_identity(endpoint_url.as_deref(), &role, &session, &token)
            .await
            .map_err(|e| crate::ops::cloud_error(&e))?;
    println!("assumed {role} with the runner's OIDC token (credentials valid until {expires})");
    Ok(())
}

/// Runs `call` against the GitHub API when a token is given, printing what it did. A
/// failure (a fork's read-only token, say) is a warning, not a failed deployment.
async fn github<F, Fut>(call: F)
where
    F: FnOnce(crate::github::GitHub) -> Fut,
    Fut: std::future::Future<Output = Result<String, String>>,
{
    let (Some(token), Some(repository)) = (actions::input("github-token"), actions::repository()) else {
        return;
    };
    let done = match crate::github::GitHub::new(
        &crate::keys::Secret::new(token),
        &actions::api_url(),
        &repository,
    ) {
        Ok(gh) => call(gh).await,
        Err(e) => Err(e),
    };
    match done {
        Ok(said) => println!("{}", crate::fence::guard(&said)),
        Err(e) => actions::warning("spot: GitHub", &e),
    }
}

/// Creates or updates the pull request's sticky comment.
async fn comment(number: u64, body: &str) {
    github(|gh| async move {
        match gh.upsert_comment(number, body).await? {
            crate::github::Upsert::Created(id) => Ok(format!("pull request #{number}: comment {id} created")),
            crate::github::Upsert::Updated(id) => Ok(format!("pull request #{number}: comment {id} updated")),
        }
    })
    .await;
}
