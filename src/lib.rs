//! `spot`: disposable EC2 spot environments from a repository's `.spot/` description.
//!
//! The pipeline reads left to right: [`manifest`] (find, parse, validate) -> [`plan`]
//! (pure decisions) -> [`cloud_init`] and [`bundle`] (what the instance receives) ->
//! the edges that act. [`commands`] wire one subcommand each.

pub mod action;
pub mod actions;
pub mod bundle;
pub mod caps;
pub mod cli;
pub mod cloud_init;
pub mod commands;
pub mod deliver;
pub mod error;
pub mod fence;
pub mod github;
pub mod ingress;
pub mod keys;
pub mod lifecycle;
pub mod manifest;
pub mod ops;
pub mod overrides;
pub mod plan;
pub mod provider;
pub mod remote;
pub mod schema;
pub mod shell;
pub mod yaml_out;

pub use error::Error;

/// Runs one parsed command line.
pub fn run(cli: cli::Cli) -> Result<(), Error> {
    // The process's one runtime: the signal watcher and every cloud operation run on it.
    let runtime = commands::runtime()?;
    let _inside = runtime.enter();
    lifecycle::progress::exit_on_signals();
    if actions::in_actions() {
        fence::enable();
        // A panic's message can quote anything: through the fence like the rest.
        std::panic::set_hook(Box::new(|info| fence::eprint(&fence::guard(&format!("spot: {info}")))));
    }
    match cli.command {
        cli::Command::Generate(args) => commands::generate::run(&args),
        cli::Command::Validate(args) => commands::validate::run(&args),
        cli::Command::Plan(args) => commands::plan::run(&args),
        cli::Command::Schema(args) => commands::schema::run(&args),
        cli::Command::Bundle(args) => commands::bundle::run(&args),
        cli::Command::Create(args) => commands::create::run(&args),
        cli::Command::Reap(args) => commands::reap::run(&args),
        cli::Command::Action(args) => match args.step {
            cli::ActionStep::Main => commands::action::main(),
            cli::ActionStep::Post => commands::action::post(),
        },
        cli::Command::List(args) => commands::list::run(&args),
        cli::Command::Destroy(args) => commands::destroy::run(&args),
    }
}
