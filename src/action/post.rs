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
    // What main saved; the inputs when it saved nothing (it stopped at once).
    let mode = actions::state(state::MODE).or_else(|| actions::input("mode")).unwrap_or_else(|| "up".into());
    if mode != "up" {
        println!("post: nothing to do after mode `{mode}`");
        return Ok(());
    }
    // Main saves the id before it creates anything; none saved means it made nothing (and
    // an id derived here could name a deployment of another run).
    let Some(id) = actions::state(state::DEPLOYMENT_ID) else {
        println!("post: main saved no deployment id (it stopped before creating anything); nothing to do");
        return Ok(());
    };
    // Only what this run's main made: another run's set under the same id (one that raced
    // it, or the environment a kept redeploy went into) is not post's to remove.
    let Some(run) = actions::state(state::RUN_ID) else {
        println!("post: main saved no run id for {id} (it stopped before creating anything); nothing to do");
        return Ok(());
    };
    match kept(actions::state(state::KEEP).as_deref(), actions::input("keep").as_deref()) {
        true if actions::state(state::READY).as_deref() == Some(id.as_str()) => {
            println!(
                "post: keeping {id} (keep: true); remove it with mode: down, mode: reap, or `spot destroy`"
            );
            return Ok(());
        }
        true => println!(
            "post: {id} never got ready in this run (main failed or was cancelled), so keep: true does not hold it: removing what this run made (an environment an earlier run made stays)"
        ),
        false => {}
    }
    let dir = actions::state(state::WORKING_DIRECTORY)
        .map_or_else(super::working_directory, std::path::PathBuf::from);
    // Where main made it: each must answer. Main saves them before the first resource.
    let Some(regions) = actions::state(state::REGIONS) else {
        println!("post: main made no plan for {id} (it stopped before creating anything); nothing to do");
        return Ok(());
    };
    let regions = ops::remove::Search::only(&list(&regions));
    let recorded = recorded();
    println!(
        "post: main recorded {} resource(s); removing what is tagged spot:deployment={id} and spot:run-id={run}",
        recorded.len()
    );
    let session = super::session().await?;
    let progress = Progress::new();
    let removal =
        super::down::remove_with_summary(&session, &dir, &id, Some(&run), &regions, &progress).await;
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

/// Pure: does post keep the deployment? `keep` as main saved it, else the input; a value
/// that is not `false` keeps (main refused it, and a kept deployment must not be lost).
fn kept(saved: Option<&str>, input: Option<&str>) -> bool {
    !saved.or(input).is_none_or(|v| v.eq_ignore_ascii_case("false"))
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
    fn keep_is_what_main_saved_else_the_input_and_anything_unreadable_keeps() {
        assert!(kept(Some("true"), Some("false")));
        assert!(!kept(Some("false"), Some("true")));
        assert!(kept(None, Some("true")));
        assert!(kept(None, Some("yes please")));
        assert!(!kept(None, Some("FALSE")));
        assert!(!kept(None, None));
    }

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
