//! What main keeps in `GITHUB_STATE` for post, and the masks: the Action's hooks into an
//! `up` run. Post reads the same keys.

use crate::actions;
use crate::lifecycle::state::{Recorder, Status};
use crate::ops::up::Hooks;
use crate::provider::{Instance, Resource};

/// The `GITHUB_STATE` entry of the `n`-th resource main made (`kind region id`); post
/// holds what it removed against these.
pub fn resource_key(n: usize) -> String {
    format!("resource_{n}")
}

/// Saves each resource to `GITHUB_STATE` the moment it exists.
#[derive(Debug, Default)]
struct StateRecorder {
    count: std::sync::atomic::AtomicUsize,
}

impl Recorder for StateRecorder {
    fn created(&self, r: &Resource) {
        let n = self.count.fetch_add(1, std::sync::atomic::Ordering::SeqCst) + 1;
        let _ = actions::save_state(&resource_key(n), &format!("{} {} {}", r.kind, r.region, r.id));
    }
    fn removed(&self, _: &Resource) {}
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
        let _ = actions::save_state("regions", &regions.join(","));
        let _ = actions::save_state("expires-at", &plan.expires_at);
    }
    fn recorder(&self) -> Option<&dyn Recorder> {
        Some(&self.recorder)
    }
}
