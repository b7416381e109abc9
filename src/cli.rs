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
    /// Deployment id to plan for [default: spot-<date>-<time>-<random>].
    #[arg(long)]
    pub deployment_id: Option<String>,
    /// Repository name for the `spot:repository` tag [default: $GITHUB_REPOSITORY, else the folder name].
    #[arg(long)]
    pub repository: Option<String>,
    /// Pull request number for the `spot:pr` tag.
    #[arg(long)]
    pub pr: Option<u64>,
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
