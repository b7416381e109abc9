//! A new build into a kept deployment (a pull request's environment) instead of new
//! instances: the deployment is found by its tags, judged from them (pure, [`judge`]),
//! entered again through EC2 Instance Connect with a one-off key (spot never stores a
//! deployment's private key), its host key pinned from the `spot:host-key` tag, checked
//! (last delivery finished, services active), and then given the new bundle by the same
//! delivery steps `create` runs. Anything that does not fit means "replace".

use std::time::Duration;

use futures::StreamExt as _;
use jiff::Timestamp;

use super::Session;
use super::ship::{Packed, pack_bundle, ssh_target};
use super::up::{Created, Hooks, Job, Prepared};
use crate::cloud_init::{self, UserDataKeys};
use crate::deliver::run::Shipment;
use crate::error::Error;
use crate::keys::{KeyPair, Secret};
use crate::lifecycle::create::Outcome;
use crate::lifecycle::inventory::Deployed;
use crate::lifecycle::progress::Progress;
use crate::lifecycle::state::{Recorder as _, State, StateFile, Status};
use crate::plan::{self, tag};
use crate::provider::{Cloud, Instance, Kind};
use crate::remote;

/// How long a pushed Instance Connect key is accepted; every connection starts inside it.
const PUSHED_KEY_LIFE: Duration = Duration::from_secs(45);

/// What became of the attempt.
#[derive(Debug)]
pub enum Reuse {
    /// Nothing of the deployment exists.
    Absent,
    /// It exists (in `regions`) but cannot take the build in place, for `why`.
    Replace { why: String, regions: Vec<String> },
    /// The new build runs on the existing instances.
    Redeployed(Box<Created>),
}

/// Pure: can the deployment `found` take a new build in place? `Err` says why not.
pub fn judge(
    found: &Deployed,
    digest: &str,
    total: u32,
    ttl_secs: u64,
    now: Timestamp,
) -> Result<(), String> {
    if found.instances.is_empty() {
        return Err("it has no instances left".into());
    }
    if let Some(i) = found.instances.iter().find(|i| i.state != "running") {
        return Err(format!("instance {} is {}", i.id, i.state));
    }
    if found.instances.len() != total as usize {
        return Err(format!(
            "it has {} instance(s) running, the description asks for {total}",
            found.instances.len()
        ));
    }
    if let Some(i) = found.instances.iter().find(|i| !i.tags.contains_key(tag::HOST_KEY)) {
        return Err(format!("instance {} has no `{}` tag (made by an older spot)", i.id, tag::HOST_KEY));
    }
    if found.instances.iter().any(|i| i.tags.get(tag::LAUNCH).map(String::as_str) != Some(digest)) {
        return Err(
            "what the instances are launched with changed (config.yaml, packages, env or template)".into()
        );
    }
    let expires = found.expires_at.as_deref().and_then(|e| e.parse::<Timestamp>().ok());
    let Some(expires) = expires else {
        return Err(format!("it has no readable `{}` tag", tag::EXPIRES_AT));
    };
    let left = expires.as_second() - now.as_second();
    if left < i64::try_from(ttl_secs / 2).unwrap_or(i64::MAX) {
        return Err(format!("it expires at {expires} (less than half its time to live left)"));
    }
    Ok(())
}

fn runtime_error(message: String) -> Error {
    Error::Runtime { message, help: String::new() }
}

/// Delivers the job's build into its existing deployment when [`judge`] and a check on
/// every instance allow it. Input errors surface before any cloud call, as in `create`.
pub async fn attempt(
    session: &Session,
    job: &Job,
    prepared: &Prepared,
    hooks: &dyn Hooks,
) -> Result<Reuse, Error> {
    let Prepared { inputs, deployment, listing, limits, secret_values, .. } = prepared;
    let id = inputs.deployment_id.clone();
    let user_data =
        cloud_init::render(deployment, &plan::identity(deployment, inputs), &UserDataKeys::placeholders())
            .map_err(|d| super::invalid(*d, job.format))?;
    let mut plan = plan::build(deployment, inputs, listing.clone(), &user_data);
    let digest = plan::launch_digest(deployment, &plan);
    let regions: Vec<String> = plan.regions.iter().map(|r| r.region.clone()).collect();
    let user = deployment.config.username.clone();
    let progress = Progress::new();

    {
        let cloud = &session.cloud;
        // Only this repository's: another's deployment of the same id is not ours to
        // deliver into or replace.
        let Some(found) = super::look_for(session, &regions, &id, Some(&inputs.repository)).await? else {
            return Ok(Reuse::Absent);
        };
        let ttl = deployment.config.ttl_secs;
        if let Err(why) = judge(&found, &digest, deployment.config.total_instances, ttl, inputs.now) {
            return Ok(Reuse::Replace { why, regions: found.regions.into_iter().collect() });
        }
        let key = KeyPair::generate(&format!("{id} redeploy"))
            .map_err(|e| runtime_error(format!("cannot generate a key: {e}")))?;
        let masked: Vec<&str> = secret_values.iter().chain([&key.private]).map(Secret::expose).collect();
        hooks.secrets(&masked);
        // Rules whose source is the runner move to this one; the others stay as written.
        let rules = super::up::rules(&deployment.config, session)?;
        for group in found.resources.iter().filter(|r| r.kind == Kind::SecurityGroup) {
            cloud
                .set_ingress(&group.region, &group.id, &rules)
                .await
                .map_err(|e| runtime_error(format!("cannot open the security group to this runner: {e}")))?;
        }
        progress
            .event(format!("{id}: {} instance(s) fit the description; checking them", found.instances.len()));
        // The bundle is packed while the instances are checked.
        let (deploy, listing, limits) = (deployment.clone(), listing.clone(), *limits);
        let packing = tokio::task::spawn_blocking(move || pack_bundle(&deploy, &listing, &limits));
        let entry = Entry { cloud, key: &key, user: &user, emulator: session.emulator.as_deref() };
        let check = crate::deliver::still_ready(deployment);
        let checks: Vec<Result<(), String>> = futures::stream::iter(&found.instances)
            .map(|i| entry.check(i, &check))
            .buffer_unordered(16)
            .collect()
            .await;
        if let Some(why) = checks.into_iter().find_map(Result::err) {
            return Ok(Reuse::Replace { why, regions: found.regions.into_iter().collect() });
        }

        let packed = packing
            .await
            .map_err(|e| runtime_error(format!("packing the bundle stopped: {e}")))?
            .map_err(runtime_error)?;
        let outcomes: Vec<Outcome> = futures::stream::iter(&found.instances)
            .map(|i| async {
                let result = entry.deliver(i, &packed, secret_values, &progress).await;
                let seconds = progress.elapsed().as_secs_f64();
                match result {
                    Ok(()) => Outcome::ready(i.clone(), seconds),
                    Err(e) => Outcome::failed(i.clone(), e),
                }
            })
            // In the instances' order, as found: the outputs list them so.
            .buffered(16)
            .collect()
            .await;
        let failed: Vec<String> = outcomes
            .iter()
            .filter_map(|o| o.error.as_ref().map(|e| format!("{}: {e}", o.instance.id)))
            .collect();
        if !failed.is_empty() {
            return Err(runtime_error(format!(
                "redeploy into {id} failed (its instances are kept; the next push tries again):\n{}",
                failed.join("\n")
            )));
        }
        plan.expires_at = found.expires_at.clone().unwrap_or_default();
        let state = record(&deployment.root, &found, &plan, &job.run_id)?;
        Ok(Reuse::Redeployed(Box::new(Created {
            plan,
            outcomes,
            state_path: state.path().to_path_buf(),
            seconds: progress.elapsed().as_secs_f64(),
            reused: true,
        })))
    }
}

/// The local state file of a redeployed deployment: what exists, ready.
fn record(
    root: &std::path::Path,
    found: &Deployed,
    plan: &plan::Plan,
    run_id: &str,
) -> Result<StateFile, Error> {
    let state = StateFile::take_over(
        root,
        State {
            deployment_id: plan.deployment_id.clone(),
            run_id: run_id.to_string(),
            repository: plan.repository.clone(),
            created_at: plan.created_at.clone(),
            expires_at: plan.expires_at.clone(),
            status: Status::Ready,
            resources: found.all_resources(),
            instances: Vec::new(),
        },
    )
    .map_err(|e| Error::io(root.join(crate::lifecycle::state::STATE_DIR), "write", e))?;
    state.instances(&found.instances);
    Ok(state)
}

/// The way back into a kept deployment's instances.
struct Entry<'a> {
    cloud: &'a crate::provider::ec2::Ec2,
    key: &'a KeyPair,
    user: &'a str,
    emulator: Option<&'a std::path::Path>,
}

impl<'a> Entry<'a> {
    /// Pushes the one-off key: the next connection within [`PUSHED_KEY_LIFE`] may log in.
    /// Returns where to connect and the host key to pin (from the instance's tag).
    async fn open(&self, instance: &'a Instance) -> Result<(remote::Target, &'a str), String> {
        let host_key = instance.tags.get(tag::HOST_KEY).map(String::as_str).unwrap_or_default();
        self.cloud
            .push_ssh_key(instance, self.user, &self.key.public)
            .await
            .map_err(|e| format!("cannot push a key: {e}"))?;
        let target = ssh_target(instance, self.user, PUSHED_KEY_LIFE, self.emulator).await?;
        Ok((target, host_key))
    }

    /// Is the instance still running its last delivery?
    async fn check(&self, instance: &'a Instance, step: &crate::deliver::Step) -> Result<(), String> {
        let (target, host_key) =
            self.open(instance).await.map_err(|why| format!("{}: {why}", instance.id))?;
        let mut session = remote::connect_with_budget(&target, host_key, &self.key.private, PUSHED_KEY_LIFE)
            .await
            .map_err(|e| format!("{}: {e}", instance.id))?;
        let result = async {
            session.detect_root(step.timeout).await.map_err(|e| e.to_string())?;
            let out =
                session.run(&session.as_root(&step.script), step.timeout).await.map_err(|e| e.to_string())?;
            if out.status == 0 { Ok(()) } else { Err(out.tail.trim().to_string()) }
        }
        .await
        .map_err(|why| format!("{}: {why}", instance.id));
        session.close().await;
        result
    }

    /// The new bundle through every delivery step.
    async fn deliver(
        &self,
        instance: &'a Instance,
        packed: &Packed,
        secret_values: &[Secret],
        progress: &Progress,
    ) -> Result<(), String> {
        let (target, host_key) = self.open(instance).await?;
        let shipment = Shipment {
            delivery: &packed.delivery,
            bundle: packed.file.path(),
            host_public: host_key,
            client_private: &self.key.private,
            secret_values,
            ssh_budget: PUSHED_KEY_LIFE,
        };
        let label = format!("{}: {}", instance.region, instance.id);
        shipment.deliver(&target, &label, progress).await.map_err(|f| f.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn found(instances: usize, tags: &[(&str, &str)], expires: &str) -> Deployed {
        let tags: crate::provider::Tags =
            tags.iter().map(|(k, v)| ((*k).to_string(), (*v).to_string())).collect();
        Deployed {
            deployment_id: "pr-7".into(),
            expires_at: Some(expires.into()),
            instances: (0..instances).map(|n| Instance::running(&format!("i-{n}"), tags.clone())).collect(),
            ..Deployed::default()
        }
    }

    #[test]
    fn only_a_fitting_running_and_fresh_deployment_is_reused() {
        let now: Timestamp = "2026-11-26T10:00:00Z".parse().unwrap();
        let good = [(tag::HOST_KEY, "ssh-ed25519 AAAA"), (tag::LAUNCH, "abc")];
        let later = "2026-11-26T20:00:00Z";
        assert_eq!(judge(&found(2, &good, later), "abc", 2, 12 * 3600, now), Ok(()));

        let why =
            |f: &Deployed, digest: &str, total: u32| judge(f, digest, total, 12 * 3600, now).unwrap_err();
        assert!(why(&found(0, &good, later), "abc", 2).contains("no instances"));
        assert!(why(&found(1, &good, later), "abc", 2).contains("1 instance(s) running"));
        assert!(why(&found(2, &good, later), "abd", 2).contains("changed"));
        assert!(why(&found(2, &good[1..], later), "abc", 2).contains("spot:host-key"));
        assert!(why(&found(2, &good, "2026-11-26T12:00:00Z"), "abc", 2).contains("time to live"));
        assert!(why(&found(2, &good, "soon"), "abc", 2).contains("readable"));
        let mut stopping = found(2, &good, later);
        stopping.instances[1].state = "stopping".into();
        assert!(why(&stopping, "abc", 2).contains("i-1 is stopping"));
    }
}
