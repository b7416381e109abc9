//! A kept environment (`keep: true`, a pull request's or any other event's): each run
//! delivers into the running instances when they still fit (EC2 Instance Connect gets this run back
//! in, `ops::redeploy`); otherwise the old environment is removed and a new one made.

use super::POST_BUDGET;
use super::state::ActionHooks;
use crate::actions;
use crate::error::Error;
use crate::lifecycle::progress::Progress;
use crate::ops::redeploy::Reuse;
use crate::ops::up::{Created, Job, Prepared};
use crate::ops::{self, Session};

/// Takes the push: redeployed, or replaced, or made new. The error says whether what ran
/// before is still there (`true`: a failed redeploy keeps the instances).
pub(super) async fn push(
    session: &Session,
    job: &Job,
    prepared: &Prepared,
    hooks: &ActionHooks,
) -> Result<Created, (Error, bool)> {
    let id = &prepared.inputs.deployment_id;
    actions::group(&format!("Redeploy into {id}"));
    let attempt = ops::redeploy::attempt(session, job, prepared, hooks).await;
    actions::end_group();
    match attempt.map_err(|e| (e, true))? {
        Reuse::Redeployed(created) => {
            println!("redeployed into the running {id}: same instances, new build");
            return Ok(*created);
        }
        Reuse::Absent => {}
        Reuse::Replace { why, regions } => {
            println!("{}", crate::fence::guard(&format!("replacing {id}: {why}")));
            actions::group(&format!("Replace the previous {id}"));
            let progress = Progress::new();
            let removed = ops::remove::remove(
                session,
                &job.dir,
                &ops::remove::Search::only(&regions),
                ops::remove::Target {
                    deployment: Some(id),
                    run: None,
                    repository: Some(&prepared.inputs.repository),
                },
                false,
                POST_BUDGET,
                &progress,
            )
            .await;
            actions::end_group();
            // What ran before is partly gone now; this run made nothing yet.
            if let Some(r) = removed.map_err(|e| (e, false))? {
                println!("replaced the previous environment: removed {}", r.summary());
                // A new set beside what is left of the old one would be two under one id.
                if !r.failed.is_empty() {
                    let message = format!(
                        "the previous {id} is not wholly removed, so no new one is made: {}",
                        r.failures().join("; ")
                    );
                    let help = "run the job again, or remove it with `mode: down` (what is left is tagged and found)";
                    return Err((Error::Runtime { message, help: help.into() }, false));
                }
            }
        }
    }
    actions::group(&format!("Create {id}"));
    let created = ops::up::create(session, job, prepared, hooks).await;
    actions::end_group();
    created.map_err(|e| (e, false))
}
