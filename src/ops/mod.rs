//! What spot does to a deployment, each operation written once for the CLI and the
//! Action alike: [`up`] (create and deliver), [`redeploy`] (a new build into kept
//! instances), [`remove`] (destroy by tags), [`reap`] (scheduled teardown).
//!
//! An operation runs inside the process's one tokio runtime and on one [`Session`]: one
//! [`Ec2`] for the whole run, so credentials are resolved once and each region's client
//! (and its connection pool) is built once. This layer wires the pure core (manifest,
//! plan, user-data, the delivery steps) to the edges (EC2, SSH). Of the environment it
//! reads only the manifest's secrets (by the names the manifest gives) and
//! [`EMULATOR_SSH_DIR`]; the runner's variables are `actions/`'s, and job summaries are
//! `action/`'s.

pub mod reap;
pub mod redeploy;
pub mod remove;
pub mod ship;
pub mod up;

use std::path::{Path, PathBuf};

use crate::bundle::Listing;
use crate::error::Error;
use crate::manifest::{self, Deployment, Format, Report};
use crate::provider::ec2::Ec2;

/// Emulator-only: a folder where the harness that plays the instances writes, per
/// instance id, the `host:port` its SSH server listens on (EC2 emulators hand out
/// addresses nothing answers on). Read here and nowhere else, and only while the EC2
/// endpoint is overridden; against real AWS it is ignored with a warning.
pub const EMULATOR_SSH_DIR: &str = "SPOT_EMULATOR_SSH_DIR";

/// Emulator-only: the `host:port` of a stand-in for checkip.amazonaws.com (an HTTP
/// service answering with the address it sees), which tells spot its "public" address
/// for the runner's rules. Honoured, like [`EMULATOR_SSH_DIR`], only while the EC2
/// endpoint is overridden.
pub const EMULATOR_CHECKIP: &str = "SPOT_EMULATOR_CHECKIP";

/// One run's way to the cloud.
#[derive(Debug)]
pub struct Session {
    pub cloud: Ec2,
    /// [`EMULATOR_SSH_DIR`], when it is in effect.
    pub emulator: Option<PathBuf>,
    /// [`EMULATOR_CHECKIP`], when it is in effect.
    pub checkip: Option<String>,
}

impl Session {
    /// Resolves the SDK's settings once; `endpoint_url` overrides the endpoint (so do
    /// `AWS_ENDPOINT_URL` and a profile's `endpoint_url`, as the SDK resolves them).
    pub async fn open(endpoint_url: Option<&str>) -> Self {
        let cloud = Ec2::new(endpoint_url).await;
        let overridden = cloud.endpoint_overridden();
        let (emulator, warning) = emulator_only(
            EMULATOR_SSH_DIR,
            std::env::var_os(EMULATOR_SSH_DIR).map(PathBuf::from),
            overridden,
        );
        let (checkip, checkip_warning) =
            emulator_only(EMULATOR_CHECKIP, std::env::var(EMULATOR_CHECKIP).ok(), overridden);
        for warning in warning.into_iter().chain(checkip_warning) {
            crate::fence::eprint(&crate::fence::guard(&format!("warning: {warning}")));
        }
        Self { cloud, emulator, checkip }
    }
}

/// Pure: an emulator-only setting (`name`) when the endpoint is `overridden`; otherwise
/// nothing, and a warning when it was set.
fn emulator_only<T: AsRef<std::ffi::OsStr>>(
    name: &str,
    set: Option<T>,
    overridden: bool,
) -> (Option<T>, Option<String>) {
    match set {
        Some(value) if !overridden => {
            let warning = format!(
                "{name}={} ignored: it is for EC2 emulators, and no endpoint override is in effect",
                value.as_ref().to_string_lossy()
            );
            (None, Some(warning))
        }
        value => (value, None),
    }
}

/// Deployment `id` as its tags show it in `regions` (of `repository` only, when given),
/// if anything of it is there.
pub async fn look_for(
    session: &Session,
    regions: &[String],
    id: &str,
    repository: Option<&str>,
) -> Result<Option<crate::lifecycle::inventory::Deployed>, Error> {
    let mut filter: crate::provider::Tags =
        [(crate::plan::tag::DEPLOYMENT.to_string(), id.to_string())].into();
    filter.extend(repository.map(|r| (crate::plan::tag::REPOSITORY.to_string(), r.to_string())));
    let mut found = crate::lifecycle::inventory::discover(&session.cloud, regions, &filter)
        .await
        .map_err(|e| Error::Runtime { message: format!("cannot look for {id}: {e}"), help: String::new() })?;
    Ok(found.remove(id))
}

/// Loads, validates and lists the bundle: everything `validate` checks. `measure`
/// also reads each file's size and mode.
pub fn load_checked(dir: &Path, format: Format, measure: bool) -> Result<(Deployment, Listing), Error> {
    let deployment = manifest::load(dir).map_err(|report| Error::Invalid { report, format })?;
    match crate::bundle::list(&deployment, measure) {
        Ok(listing) => Ok((deployment, listing)),
        Err(diagnostics) => {
            let mut report = Report { diagnostics, ..Report::default() };
            for file in [".spot/deployment.yaml", ".spot/config.yaml"] {
                if let Ok(text) = std::fs::read_to_string(deployment.root.join(file)) {
                    report.sources.insert(file.to_string(), text);
                }
            }
            report.finish();
            Err(Error::Invalid { report, format })
        }
    }
}

/// The run's inputs: those given, else defaults (now, a new id, the folder's name).
pub fn inputs(
    dir: &Path,
    deployment_id: Option<String>,
    repository: Option<String>,
    pr: Option<u64>,
    now: Option<&str>,
) -> Result<crate::plan::Inputs, Error> {
    let now = match now {
        Some(text) => text.parse::<jiff::Timestamp>().map_err(|e| Error::Usage {
            message: format!("`--now {text}` is not an RFC 3339 time: {e}"),
            help: "write a time such as 2026-01-31T12:00:00Z".into(),
        })?,
        None => jiff::Timestamp::now(),
    };
    let now = jiff::Timestamp::from_second(now.as_second()).unwrap_or(now);
    let deployment_id = match deployment_id {
        Some(id) => {
            crate::plan::check_deployment_id(&id)
                .map_err(|message| Error::Usage { message, help: "choose another --deployment-id".into() })?;
            id
        }
        None => crate::plan::new_deployment_id(now, random_u16()),
    };
    let repository = repository.unwrap_or_else(|| {
        std::fs::canonicalize(dir)
            .ok()
            .and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
            .unwrap_or_else(|| "local".into())
    });
    Ok(crate::plan::Inputs { deployment_id, now, repository, pr, run_id: None })
}

fn random_u16() -> u16 {
    let mut bytes = [0u8; 2];
    ssh_key::rand_core::RngCore::fill_bytes(&mut ssh_key::rand_core::OsRng, &mut bytes);
    u16::from_le_bytes(bytes)
}

/// Every check `create` makes before touching the cloud: the description, the bundle's
/// files, and that the user-data fits (rendered with placeholder keys of the real size).
pub fn validate(
    dir: &Path,
    format: Format,
    repository: Option<String>,
) -> Result<(Deployment, Listing), Error> {
    let (deployment, listing) = load_checked(dir, format, false)?;
    let inputs = inputs(dir, None, repository, None, None)?;
    let identity = crate::plan::identity(&deployment, &inputs);
    let keys = crate::cloud_init::UserDataKeys::sized_placeholders(&deployment.config.extra_authorized_keys);
    crate::cloud_init::render(&deployment, &identity, &keys).map_err(|d| invalid(*d, format))?;
    Ok((deployment, listing))
}

/// One problem found after validation (the user-data's size, say) as an input error.
pub fn invalid(diagnostic: manifest::Diagnostic, format: Format) -> Error {
    Error::Invalid { report: Report { diagnostics: vec![diagnostic], ..Report::default() }, format }
}

/// What a valid description holds, in one line.
pub fn valid_line(deployment: &Deployment, listing: &Listing) -> String {
    format!(
        "valid: {} instance(s) in {} region(s), {} script(s), {} service(s), {} file(s) to ship",
        deployment.config.total_instances,
        deployment.config.regions.len(),
        deployment.manifest.scripts.len(),
        deployment.manifest.services.len(),
        listing.entries.len()
    )
}

/// Lists the bundle again after overrides changed the build.
pub(crate) fn relist(deployment: &Deployment, format: Format) -> Result<Listing, Error> {
    crate::bundle::list(deployment, true).map_err(|diagnostics| {
        let mut report = Report { diagnostics, ..Report::default() };
        report.finish();
        Error::Invalid { report, format }
    })
}

/// A duration given as `what` (a flag or an input), such as `5m`.
pub fn duration(what: &str, text: &str) -> Result<std::time::Duration, Error> {
    manifest::types::parse_duration(text).map(std::time::Duration::from_secs).map_err(|message| {
        Error::Usage {
            message: format!("{what}: {message}"),
            help: "write a duration such as 30s, 5m or 1h".into(),
        }
    })
}

/// Regions to search: those `given`, else the config's in `dir`.
pub fn regions_for(dir: &Path, given: &[String]) -> Result<Vec<String>, Error> {
    let regions = known_regions(dir, given)?;
    if regions.is_empty() {
        return Err(Error::Usage {
            message: format!("no regions to search: `{}` has no valid config with regions", dir.display()),
            help: "pass --region (repeatable), or run from the repository that holds .spot/".into(),
        });
    }
    Ok(regions)
}

/// The regions `given` (each checked), else the config's in `dir`, else none: for
/// removing, which must work when `.spot/` is gone or broken.
pub fn known_regions(dir: &Path, given: &[String]) -> Result<Vec<String>, Error> {
    for r in given {
        if !manifest::types::AWS_REGIONS.contains(&r.as_str()) {
            return Err(Error::Usage {
                message: format!("`{r}` is not an AWS region"),
                help: "pass a region such as us-east-1".into(),
            });
        }
    }
    if !given.is_empty() {
        return Ok(given.to_vec());
    }
    Ok(manifest::load_regions(dir).unwrap_or_default())
}

/// Maps a cloud error to the command error, with a hint for credential problems.
pub fn cloud_error(e: &crate::provider::Error) -> Error {
    let help = match e.kind {
        crate::provider::ErrorKind::Auth => {
            "check the AWS credentials (AWS_PROFILE, AWS_ACCESS_KEY_ID, or the action's role-to-assume)"
        }
        _ => "",
    };
    Error::Runtime { message: e.to_string(), help: help.into() }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_emulator_folder_counts_only_while_the_endpoint_is_overridden() {
        let dir = PathBuf::from("/tmp/ssh");
        assert_eq!(emulator_only(EMULATOR_SSH_DIR, Some(dir.clone()), true), (Some(dir.clone()), None));
        let (used, warning) = emulator_only(EMULATOR_SSH_DIR, Some(dir), false);
        assert_eq!(used, None);
        assert!(warning.is_some_and(|w| w.contains("SPOT_EMULATOR_SSH_DIR=/tmp/ssh ignored")));
        assert_eq!(emulator_only::<PathBuf>(EMULATOR_SSH_DIR, None, false), (None, None));
        assert_eq!(emulator_only::<PathBuf>(EMULATOR_SSH_DIR, None, true), (None, None));
    }
}
