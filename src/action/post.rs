//! The post step: destroys what main made, found by its tags, unless `keep: true`; then
//! holds the removal against the resources main saved to `GITHUB_STATE` one by one.

use super::state;
use crate::actions;
use crate::error::Error;
use crate::lifecycle::progress::Progress;
use crate::lifecycle::teardown::Removal;
use crate::ops;
use crate::overrides::list;

/// The post step.
pub async fn run() -> Result<(), Error> {
    if let Some(id) = actions::state(state::REFUSED) {
        println!("post: main refused {id} (a deployment that was there before this run); nothing to remove");
        return Ok(());
    }
    if actions::state(state::MODE).is_some_and(|m| m != "up") {
        println!("post: nothing to do after mode `{}`", actions::state(state::MODE).unwrap_or_default());
        return Ok(());
    }
    if actions::state(state::KEEP).as_deref() == Some("true") {
        println!(
            "post: keeping {} (keep: true); remove it with mode: down, mode: reap, or `spot destroy`",
            actions::state(state::DEPLOYMENT_ID).unwrap_or_default()
        );
        return Ok(());
    }
    // Main saves the id before it creates anything; none saved means it made nothing (and
    // an id derived here could name a deployment of another run).
    let Some(id) = actions::state(state::DEPLOYMENT_ID) else {
        println!("post: main saved no deployment id (it stopped before creating anything); nothing to do");
        return Ok(());
    };
    let dir = actions::state(state::WORKING_DIRECTORY)
        .map_or_else(super::working_directory, std::path::PathBuf::from);
    let regions = match actions::state(state::REGIONS) {
        Some(r) => list(&r),
        None => super::regions(&dir)?,
    };
    let recorded = recorded();
    println!(
        "post: main recorded {} resource(s); removing everything tagged spot:deployment={id}",
        recorded.len()
    );
    let session = super::session().await?;
    let progress = Progress::new();
    // Only what this run's main made: another run's set under the same id (one that
    // raced it) is not post's to remove.
    let run = actions::state(state::RUN_ID);
    let removal =
        super::down::remove_with_summary(&session, &dir, &id, run.as_deref(), &regions, &progress).await;
    if let Ok(found) = &removal {
        let unseen = unseen(&recorded, found.as_ref());
        if !unseen.is_empty() {
            // Tags are the truth; a resource EC2 did not list by them yet is named here so
            // that a leak cannot pass unnoticed.
            actions::warning(
                "spot: teardown",
                &format!(
                    "{} resource(s) main recorded were not found by their tags (gone already, or not listed by EC2 yet; `mode: reap` finds them later): {}",
                    unseen.len(),
                    unseen.join(", ")
                ),
            );
        }
    }
    let result = ops::remove::report(removal, Some(&id), &regions, &progress);
    if let Err(e) = &result {
        actions::error("spot: teardown failed", &e.to_string());
    }
    result
}

/// The resources main made and did not remove again itself, each `kind region id`.
fn recorded() -> Vec<String> {
    let removed: Vec<String> = (1..).map_while(|n| actions::state(&state::removed_key(n))).collect();
    (1..).map_while(|n| actions::state(&state::created_key(n))).filter(|r| !removed.contains(r)).collect()
}

/// Pure: the recorded resources (`kind region id`) that the removal neither removed nor
/// failed on.
fn unseen(recorded: &[String], removal: Option<&Removal>) -> Vec<String> {
    let touched: Vec<String> = removal
        .map(|r| r.removed.iter().chain(r.failed.iter().map(|(res, _)| res)).map(state::line).collect())
        .unwrap_or_default();
    recorded.iter().filter(|r| !touched.contains(r)).cloned().collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::provider::{Kind, Resource, Tags};

    #[test]
    fn a_recorded_resource_the_teardown_never_met_is_named() {
        let res = |kind, id: &str| Resource {
            kind,
            region: "us-east-1".into(),
            id: id.into(),
            name: None,
            tags: Tags::new(),
        };
        let recorded: Vec<String> =
            ["security group us-east-1 sg-1", "key pair us-east-1 key-1", "instance us-east-1 i-1"]
                .map(String::from)
                .to_vec();
        let removal = Removal {
            removed: vec![res(Kind::SecurityGroup, "sg-1")],
            failed: vec![(res(Kind::Instance, "i-1"), "in use".into())],
        };
        assert_eq!(unseen(&recorded, Some(&removal)), ["key pair us-east-1 key-1"]);
        assert_eq!(unseen(&recorded, None).len(), 3);
        assert!(unseen(&[], Some(&removal)).is_empty());
    }
}
