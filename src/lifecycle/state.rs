//! The local record of one deployment: every resource id, written as soon as EC2 names it.
//!
//! Tags in the cloud are the source of truth; this file is the fast path and the
//! evidence of what a run made, so a crash or cancel leaves a trail. It is rewritten
//! atomically (temporary file, then rename) after each change and never holds a secret:
//! no keys, no secret values, only ids, names, tags and addresses.

use std::path::{Path, PathBuf};
use std::sync::Mutex;

use serde::{Deserialize, Serialize};

use crate::provider::{Instance, Resource};

/// Where state files live, relative to the repository root.
pub const STATE_DIR: &str = ".spot-state";

/// What a run is doing or did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Status {
    Creating,
    Ready,
    RolledBack,
    /// Rollback or teardown could not remove everything; `destroy` will.
    Incomplete,
    Destroyed,
}

/// The file's contents.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct State {
    pub deployment_id: String,
    pub run_id: String,
    pub repository: String,
    pub created_at: String,
    pub expires_at: String,
    pub status: Status,
    pub resources: Vec<Resource>,
    #[serde(default)]
    pub instances: Vec<Instance>,
}

/// Receives each resource the moment it exists. The state file is one; the GitHub
/// Actions state is another.
pub trait Recorder: Sync {
    fn created(&self, resource: &Resource);
    fn removed(&self, resource: &Resource);
    fn status(&self, status: Status);
    fn instances(&self, instances: &[Instance]);
}

/// A state file kept in step with a run.
#[derive(Debug)]
pub struct StateFile {
    path: PathBuf,
    state: Mutex<State>,
}

impl StateFile {
    /// Starts the file for a new run, replacing an older run's file of the same id once
    /// that run is over (rolled back, destroyed, or past its time to live). `Ok(Err(other))`:
    /// another run's file is still live (creating, ready, incomplete), and is left as it is.
    pub fn create(root: &Path, state: State) -> std::io::Result<Result<Self, Box<State>>> {
        let _claim = claim(root, &state.deployment_id)?;
        if let Some(other) = read(root, &state.deployment_id)
            && other.run_id != state.run_id
            && other.is_live(jiff::Timestamp::now())
        {
            return Ok(Err(Box::new(other)));
        }
        let file = Self { path: path_of(root, &state.deployment_id), state: Mutex::new(state) };
        file.write()?;
        Ok(Ok(file))
    }

    /// Starts the file for a run that takes the deployment over (a redeploy into it),
    /// replacing whatever file of the id is there.
    pub fn take_over(root: &Path, state: State) -> std::io::Result<Self> {
        let _claim = claim(root, &state.deployment_id)?;
        let file = Self { path: path_of(root, &state.deployment_id), state: Mutex::new(state) };
        file.write()?;
        Ok(file)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn write(&self) -> std::io::Result<()> {
        write_atomically(&self.path, &self.lock())
    }

    fn update(&self, change: impl FnOnce(&mut State)) {
        change(&mut self.lock());
        if let Err(e) = self.write() {
            crate::fence::eprint(&crate::fence::guard(&format!(
                "warning: cannot write {}: {e}",
                self.path.display()
            )));
        }
    }
}

impl Recorder for StateFile {
    fn created(&self, resource: &Resource) {
        self.update(|s| {
            if !s.resources.contains(resource) {
                s.resources.push(resource.clone());
            }
        });
    }

    fn removed(&self, resource: &Resource) {
        self.update(|s| {
            s.resources
                .retain(|r| !(r.kind == resource.kind && r.id == resource.id && r.region == resource.region));
        });
    }

    fn status(&self, status: Status) {
        self.update(|s| s.status = status);
    }

    fn instances(&self, instances: &[Instance]) {
        self.update(|s| s.instances = instances.to_vec());
    }
}

impl State {
    /// Is the run still answerable for what it made at `now`? Creating or ready before its
    /// expiry (after it, the instances have shut themselves down), or incomplete (what is
    /// left stays until a teardown removes it).
    pub fn is_live(&self, now: jiff::Timestamp) -> bool {
        let expired = self.expires_at.parse::<jiff::Timestamp>().is_ok_and(|t| t <= now);
        match self.status {
            Status::Creating | Status::Ready => !expired,
            Status::Incomplete => true,
            Status::RolledBack | Status::Destroyed => false,
        }
    }
}

/// Holds the lock beside the file of `deployment_id` (dropped: released), so that two
/// runs in one checkout read and replace it one after the other.
fn claim(root: &Path, deployment_id: &str) -> std::io::Result<std::fs::File> {
    let dir = root.join(STATE_DIR);
    std::fs::create_dir_all(&dir)?;
    let lock = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(dir.join(format!("{deployment_id}.lock")))?;
    lock.lock()?;
    Ok(lock)
}

/// The file of `deployment_id` under `root`.
fn path_of(root: &Path, deployment_id: &str) -> PathBuf {
    root.join(STATE_DIR).join(format!("{deployment_id}.json"))
}

/// Writes `state` to `path` through a temporary file and a rename, so a reader (or a
/// crash) never sees half a file.
fn write_atomically(path: &Path, state: &State) -> std::io::Result<()> {
    let text = serde_json::to_string_pretty(state).map_err(std::io::Error::other)?;
    let tmp = path.with_extension(format!("json.{}.tmp", std::process::id()));
    std::fs::write(&tmp, text + "\n")?;
    std::fs::rename(&tmp, path)
}

/// Records a teardown in the state file of `deployment_id` under `root`, if there is one:
/// `destroyed` when nothing is `left`, else `incomplete` with what is left.
pub fn mark_removed(root: &Path, deployment_id: &str, left: &[Resource]) -> std::io::Result<()> {
    let _claim = claim(root, deployment_id)?;
    let Some(mut state) = read(root, deployment_id) else {
        return Ok(());
    };
    let stays = |kind, region: &str, id: &str| {
        left.iter().any(|l| l.kind == kind && l.region == region && l.id == id)
    };
    state.status = if left.is_empty() { Status::Destroyed } else { Status::Incomplete };
    state.resources.retain(|r| stays(r.kind, &r.region, &r.id));
    state.instances.retain(|i| stays(crate::provider::Kind::Instance, &i.region, &i.id));
    write_atomically(&path_of(root, deployment_id), &state)
}

/// Reads a state file, if there is one for `deployment_id`.
pub fn read(root: &Path, deployment_id: &str) -> Option<State> {
    let text = std::fs::read_to_string(path_of(root, deployment_id)).ok()?;
    serde_json::from_str(&text).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state(run: &str, expires_at: &str) -> State {
        State {
            deployment_id: "d-1".into(),
            run_id: run.into(),
            repository: "acme/app".into(),
            created_at: "2026-12-01T00:00:00Z".into(),
            expires_at: expires_at.into(),
            status: Status::Creating,
            resources: Vec::new(),
            instances: Vec::new(),
        }
    }

    #[test]
    fn another_runs_file_holds_the_id_while_it_is_live_and_not_after() {
        let dir = tempfile::tempdir().unwrap();
        let later = "2999-01-01T00:00:00Z";
        let first = StateFile::create(dir.path(), state("run-a", later)).unwrap().unwrap();
        let refused = StateFile::create(dir.path(), state("run-b", later)).unwrap().unwrap_err();
        assert_eq!(refused.run_id, "run-a");
        // The same run may start it again (a retried create).
        assert!(StateFile::create(dir.path(), state("run-a", later)).unwrap().is_ok());
        for live in [Status::Ready, Status::Incomplete] {
            first.status(live);
            assert!(StateFile::create(dir.path(), state("run-b", later)).unwrap().is_err(), "{live:?}");
        }
        first.status(Status::RolledBack);
        assert!(StateFile::create(dir.path(), state("run-b", later)).unwrap().is_ok());
        assert_eq!(read(dir.path(), "d-1").unwrap().run_id, "run-b");

        // A ready file past its expiry no longer holds the id; an incomplete one does.
        let dir = tempfile::tempdir().unwrap();
        let expired = StateFile::create(dir.path(), state("run-a", "2020-01-01T00:00:00Z")).unwrap().unwrap();
        expired.status(Status::Incomplete);
        assert!(StateFile::create(dir.path(), state("run-b", later)).unwrap().is_err());
        expired.status(Status::Ready);
        assert!(StateFile::create(dir.path(), state("run-b", later)).unwrap().is_ok());
    }

    #[test]
    fn a_teardown_marks_the_file_destroyed_or_incomplete_with_what_is_left() {
        let dir = tempfile::tempdir().unwrap();
        let file = StateFile::create(dir.path(), state("run-a", "2999-01-01T00:00:00Z")).unwrap().unwrap();
        let resource = |id: &str| Resource {
            kind: crate::provider::Kind::KeyPair,
            region: "us-east-1".into(),
            id: id.into(),
            name: None,
            tags: crate::provider::Tags::new(),
        };
        file.created(&resource("key-1"));
        file.created(&resource("key-2"));
        mark_removed(dir.path(), "d-1", &[resource("key-2")]).unwrap();
        let after = read(dir.path(), "d-1").unwrap();
        assert_eq!((after.status, after.resources), (Status::Incomplete, vec![resource("key-2")]));
        mark_removed(dir.path(), "d-1", &[]).unwrap();
        assert_eq!(read(dir.path(), "d-1").unwrap().status, Status::Destroyed);
    }
}
