//! What main keeps in `GITHUB_STATE` for post (the keys below, and nothing else), and
//! the masks: the Action's hooks into an `up` run.

use crate::actions;
use crate::lifecycle::state::{Recorder, Status};
use crate::ops::up::Hooks;
use crate::provider::{Instance, Resource};

/// The mode main ran; post tears down only after `up`.
pub const MODE: &str = "mode";
pub const DEPLOYMENT_ID: &str = "deployment-id";
/// `true`: post keeps the deployment.
pub const KEEP: &str = "keep";
pub const WORKING_DIRECTORY: &str = "working-directory";
/// The run id main created under (its `spot:run-id` tag): post removes only that run's.
pub const RUN_ID: &str = "run-id";
/// The deployment id main refused (another run's deployment uses it): post leaves it be.
pub const REFUSED: &str = "refused";
/// The deployment id, once main has it ready: with `keep: true`, post keeps only then.
pub const READY: &str = "ready";
/// The regions the plan used, comma-separated: where post looks.
pub const REGIONS: &str = "regions";

/// The entry of the `n`-th resource main made (`kind region id`).
pub fn created_key(n: usize) -> String {
    format!("resource_{n}")
}

/// The entry of the `n`-th resource main removed again itself (a rollback, an instance
/// that was not ready).
pub fn removed_key(n: usize) -> String {
    format!("removed_{n}")
}

/// How a resource is written in those entries.
pub fn line(r: &Resource) -> String {
    format!("{} {} {}", r.kind, r.region, r.id)
}

/// Saves each resource to `GITHUB_STATE` the moment EC2 names it, and each removal.
#[derive(Debug, Default)]
struct StateRecorder {
    created: std::sync::atomic::AtomicUsize,
    removed: std::sync::atomic::AtomicUsize,
}

impl Recorder for StateRecorder {
    fn created(&self, r: &Resource) {
        let n = self.created.fetch_add(1, std::sync::atomic::Ordering::SeqCst) + 1;
        let _ = actions::save_state(&created_key(n), &line(r));
    }
    fn removed(&self, r: &Resource) {
        let n = self.removed.fetch_add(1, std::sync::atomic::Ordering::SeqCst) + 1;
        let _ = actions::save_state(&removed_key(n), &line(r));
    }
    fn status(&self, _: Status) {}
    fn instances(&self, _: &[Instance]) {}
}

/// What the Action adds to a run: masks, and `GITHUB_STATE` kept in step.
#[derive(Debug, Default)]
pub(super) struct ActionHooks {
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
        let _ = actions::save_state(REGIONS, &regions.join(","));
    }
    fn recorder(&self) -> Option<&dyn Recorder> {
        Some(&self.recorder)
    }
}
