//! Acting on the cloud: create, find, and tear down deployments.
//!
//! Generic over [`crate::provider::Cloud`]; decisions come from the plan, every
//! resource is recorded as it is made, and teardown is shared by `destroy`, rollback
//! and (later) the action's post step and `reap`.

pub mod create;
pub mod inventory;
pub mod progress;
pub mod state;
pub mod teardown;
