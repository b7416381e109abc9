//! The GitHub Actions runtime: the only module that reads `GITHUB_*` and `INPUT_*`.
//!
//! For now it answers the two questions the CLI asks (are we inside Actions, and which
//! repository is this); the action's inputs, outputs, state and summary arrive with the
//! action itself.

/// Whether `spot` runs inside a GitHub Actions step.
pub fn in_actions() -> bool {
    std::env::var("GITHUB_ACTIONS").is_ok_and(|v| v == "true")
}

/// `owner/name` of the repository the workflow runs for.
pub fn repository() -> Option<String> {
    std::env::var("GITHUB_REPOSITORY").ok().filter(|r| !r.is_empty())
}
