//! Command-line arguments (clap derive). Parsing only: no behaviour lives here.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::manifest::Format;
use crate::manifest::types::Template;

/// Disposable EC2 spot environments from a repository's `.spot/` description.
///
/// Exit codes: 0 success; 1 invalid input (the description or the arguments), nothing
/// created; 2 runtime failure.
#[derive(Debug, Parser)]
#[command(name = "spot", version, about, max_term_width = 100)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Write a starting `.spot/` folder that validates as generated.
    Generate(GenerateArgs),
    /// Check the deployment description; exit 0 when valid, 1 when not.
    Validate(ValidateArgs),
    /// Print exactly what `create` would do, without any network call.
    Plan(PlanArgs),
    /// Print the JSON Schemas of `config.yaml` and `deployment.yaml`.
    Schema(SchemaArgs),
    /// Build the bundle `create` ships (deterministic tar+gzip) into a file, and print its sha256.
    Bundle(BundleArgs),
    /// Launch the deployment's spot instances, deliver the build over SSH and verify that
    /// its services run; roll everything back if that fails.
    Create(Box<CreateArgs>),
    /// List deployments found by their tags in the configured regions.
    List(ListArgs),
    /// Scheduled teardown: remove expired, closed-PR and orphaned deployments (by tags).
    Reap(ReapArgs),
    /// The GitHub Action's steps: `main` and `post` (the container's entrypoints).
    Action(ActionArgs),
    /// Remove a deployment's instances and every resource spot made for it.
    Destroy(DestroyArgs),
}

#[derive(Debug, Args)]
pub struct BundleArgs {
    /// Repository folder holding `.spot/` (or `deployment/`).
    #[arg(default_value = ".")]
    pub dir: PathBuf,
    /// Where to write the bundle (`-` for stdout).
    #[arg(short, long, value_name = "FILE")]
    pub output: PathBuf,
    /// gzip level, 0 (store) to 9 (smallest).
    #[arg(long, default_value_t = 6, value_parser = clap::value_parser!(u32).range(0..=9))]
    pub level: u32,
    /// How to print problems with the description.
    #[arg(long, value_enum)]
    pub format: Option<Format>,
}

/// Who a deployment is: its id and the provenance its tags carry.
#[derive(Debug, Args)]
pub struct IdentityArgs {
    /// Deployment id [default: spot-<date>-<time>-<random>].
    #[arg(long)]
    pub deployment_id: Option<String>,
    /// Repository name for the `spot:repository` tag [default: $GITHUB_REPOSITORY, else the folder name].
    #[arg(long)]
    pub repository: Option<String>,
    /// Pull request number for the `spot:pr` tag.
    #[arg(long)]
    pub pr: Option<u64>,
}

/// Values that replace parts of `.spot/config.yaml` for one run.
#[derive(Debug, Args, Default)]
pub struct OverrideArgs {
    /// Region to use instead of the config's (repeatable, or comma-separated).
    #[arg(long = "region", value_name = "REGION")]
    pub regions: Vec<String>,
    /// Instance type for every region instead of the config's (repeatable, or comma-separated).
    #[arg(long = "instance-type", value_name = "TYPE")]
    pub instance_types: Vec<String>,
    /// Number of instances (`aws.total_instances`).
    #[arg(long, value_name = "N")]
    pub count: Option<String>,
    /// Time to live (`aws.ttl`), such as 2h.
    #[arg(long)]
    pub ttl: Option<String>,
    /// The build: a folder or .tar.gz in the repository, or an https:// URL.
    #[arg(long, value_name = "PATH")]
    pub tarball: Option<String>,
    /// `none` or `on-demand` when spot capacity runs out (`spot.fallback`).
    #[arg(long = "spot-fallback", value_name = "none|on-demand")]
    pub fallback: Option<String>,
    /// Highest spot price in USD per instance-hour.
    #[arg(long, value_name = "USD")]
    pub max_price: Option<String>,
    /// Extra tag on every resource (repeatable).
    #[arg(long = "tag", value_name = "KEY=VALUE")]
    pub tags: Vec<String>,
}

impl OverrideArgs {
    pub fn to_overrides(&self) -> crate::overrides::Overrides {
        let split = |v: &[String]| v.iter().flat_map(|s| crate::overrides::list(s)).collect();
        crate::overrides::Overrides {
            regions: split(&self.regions),
            instance_types: split(&self.instance_types),
            count: self.count.clone(),
            ttl: self.ttl.clone(),
            tarball: self.tarball.clone(),
            fallback: self.fallback.clone(),
            max_price: self.max_price.clone(),
            ssh_cidrs: Vec::new(),
            tags: self.tags.clone(),
        }
    }
}

/// Where the cloud is.
#[derive(Debug, Args)]
pub struct CloudArgs {
    /// EC2 endpoint for every call (LocalStack, moto, a proxy). The SDK's own
    /// AWS_ENDPOINT_URL works too.
    #[arg(long, value_name = "URL")]
    pub endpoint_url: Option<String>,
}

#[derive(Debug, Args)]
pub struct CreateArgs {
    /// Repository folder holding `.spot/` (or `deployment/`).
    #[arg(default_value = ".")]
    pub dir: PathBuf,
    #[command(flatten)]
    pub identity: IdentityArgs,
    /// CIDR allowed to reach SSH, overriding `aws.ssh_cidr` (repeatable).
    #[arg(long = "ssh-cidr", value_name = "CIDR")]
    pub ssh_cidrs: Vec<String>,
    #[command(flatten)]
    pub overrides: OverrideArgs,
    /// How long to wait for instances to run (e.g. 5m).
    #[arg(long, default_value = "5m")]
    pub wait: String,
    /// How long to keep trying to reach each instance over SSH once it runs.
    #[arg(long, default_value = "5m")]
    pub ssh_timeout: String,
    /// How long each instance may take to finish cloud-init (packages) after SSH is up.
    #[arg(long, default_value = "15m")]
    pub boot_timeout: String,
    /// Fewest ready instances that count as success; the others are terminated
    /// (default: every instance must be ready).
    #[arg(long, value_name = "N")]
    pub min_ready: Option<u32>,
    /// Only launch and wait for `running`: no SSH, no bundle, no scripts or services.
    #[arg(long)]
    pub no_deliver: bool,
    /// Print the result as JSON on stdout.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub cloud: CloudArgs,
    /// How to print problems with the description.
    #[arg(long, value_enum)]
    pub format: Option<Format>,
}

#[derive(Debug, Args)]
pub struct ReapArgs {
    /// Repository folder whose config names the regions to search.
    #[arg(default_value = ".")]
    pub dir: PathBuf,
    /// Region to search instead of the config's (repeatable).
    #[arg(long = "region", value_name = "REGION")]
    pub regions: Vec<String>,
    /// Print what would be removed and why, remove nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// How old the newest resource of a deployment with no instance must be before it
    /// counts as an orphan (a younger one may be a create between its first resource and
    /// its launch).
    #[arg(long, default_value = "10m")]
    pub orphan_grace: String,
    /// This repository, whose deployments (tag `spot:repository`) are judged
    /// [default: $GITHUB_REPOSITORY, else the folder's name, as `create` tags them].
    #[arg(long)]
    pub repository: Option<String>,
    /// Judge every repository's deployments in the account, not only this one's.
    #[arg(long, conflicts_with = "repository")]
    pub whole_account: bool,
    /// Print the decisions as JSON on stdout.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub cloud: CloudArgs,
}

/// Which step of the action.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ActionStep {
    Main,
    Post,
}

#[derive(Debug, Args)]
pub struct ActionArgs {
    #[arg(value_enum)]
    pub step: ActionStep,
}

#[derive(Debug, Args)]
pub struct ListArgs {
    /// Repository folder whose config names the regions to search.
    #[arg(default_value = ".")]
    pub dir: PathBuf,
    /// Region to search instead of the config's (repeatable).
    #[arg(long = "region", value_name = "REGION")]
    pub regions: Vec<String>,
    /// Print JSON on stdout.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub cloud: CloudArgs,
}

#[derive(Debug, Args)]
pub struct DestroyArgs {
    /// Deployment id to destroy; without it, the only deployment found (or all with --yes).
    pub deployment: Option<String>,
    /// Repository folder whose config names the regions to search.
    #[arg(long, default_value = ".")]
    pub dir: PathBuf,
    /// Region to search instead of the config's (repeatable).
    #[arg(long = "region", value_name = "REGION")]
    pub regions: Vec<String>,
    /// Also search every other region enabled for the account (the default for a named
    /// deployment when neither --region nor a readable config names any); one that
    /// refuses the account is skipped. Needs a deployment id.
    #[arg(long)]
    pub all_regions: bool,
    /// Destroy every deployment found when no id is given and more than one exists.
    #[arg(long)]
    pub yes: bool,
    /// Longest wait for instances to terminate (e.g. 5m).
    #[arg(long, default_value = "5m")]
    pub timeout: String,
    #[command(flatten)]
    pub cloud: CloudArgs,
}

#[derive(Debug, Args)]
pub struct GenerateArgs {
    /// Repository folder to create `.spot/` in.
    #[arg(default_value = ".")]
    pub dir: PathBuf,
    /// Base setup of the instances.
    #[arg(long, value_enum, default_value_t = Template::Minimal)]
    pub template: Template,
    /// Overwrite files that already exist.
    #[arg(long)]
    pub force: bool,
}

#[derive(Debug, Args)]
pub struct ValidateArgs {
    /// Repository folder holding `.spot/` (or `deployment/`).
    #[arg(default_value = ".")]
    pub dir: PathBuf,
    /// How to print problems [default: github inside GitHub Actions, else human].
    #[arg(long, value_enum)]
    pub format: Option<Format>,
}

#[derive(Debug, Args)]
pub struct PlanArgs {
    /// Repository folder holding `.spot/` (or `deployment/`).
    #[arg(default_value = ".")]
    pub dir: PathBuf,
    /// Print the plan as JSON.
    #[arg(long, conflicts_with = "user_data")]
    pub json: bool,
    /// Print only the user-data `create` would send (key material shown as placeholders).
    #[arg(long)]
    pub user_data: bool,
    #[command(flatten)]
    pub identity: IdentityArgs,
    /// Plan as if it were this time (RFC 3339); for reproducible plans.
    #[arg(long, hide = true)]
    pub now: Option<String>,
    /// How to print problems [default: github inside GitHub Actions, else human].
    #[arg(long, value_enum)]
    pub format: Option<Format>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum SchemaFile {
    Config,
    Deployment,
}

#[derive(Debug, Args)]
pub struct SchemaArgs {
    /// Which schema; both (as one JSON object keyed by file name) when omitted.
    #[arg(value_enum)]
    pub which: Option<SchemaFile>,
    /// Write `config.schema.json` and `deployment.schema.json` into this folder instead.
    #[arg(long, value_name = "DIR", conflicts_with = "which")]
    pub out: Option<PathBuf>,
}
