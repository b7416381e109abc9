//! Shipping a build over SSH: the bundle packed once (while the instances boot), then
//! the delivery steps run on each instance through `deliver::run`. The same pieces serve
//! a new deployment ([`super::up`]) and a kept one ([`super::redeploy`]).

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use crate::bundle::Listing;
use crate::deliver::run::Shipment;
use crate::deliver::{Delivery, Limits};
use crate::keys::Secret;
use crate::lifecycle::create;
use crate::lifecycle::progress::Progress;
use crate::manifest::types::Deployment;
use crate::provider::Instance;
use crate::remote::Target;

/// The bundle packed into a temporary file, and the steps that ship it.
pub(crate) struct Packed {
    pub file: tempfile::NamedTempFile,
    pub delivery: Delivery,
}

pub(crate) type PackResult = Result<Arc<Packed>, String>;

pub(crate) fn pack_bundle(deployment: &Deployment, listing: &Listing, limits: &Limits) -> PackResult {
    let file = tempfile::Builder::new()
        .prefix("spot-bundle-")
        .suffix(".tar.gz")
        .tempfile()
        .map_err(|e| format!("cannot create a temporary file for the bundle: {e}"))?;
    let writer = std::io::BufWriter::with_capacity(256 * 1024, file.as_file());
    let packed =
        crate::bundle::pack(listing, 6, writer).map_err(|e| format!("packing the bundle failed: {e}"))?;
    let delivery = crate::deliver::steps(deployment, listing, &packed.sha256, limits);
    Ok(Arc::new(Packed { file, delivery }))
}

/// Delivers over SSH once the bundle is packed.
pub(crate) struct SshDeliver<'a, F> {
    pub bundle: F,
    pub host_public: &'a str,
    pub client_private: &'a Secret,
    pub secret_values: &'a [Secret],
    pub user: &'a str,
    pub ssh_budget: Duration,
    pub progress: &'a Progress,
    /// [`Session::emulator`](super::Session::emulator).
    pub emulator: Option<&'a Path>,
}

/// Where to reach `instance` over SSH as `user`: its address, or (emulator only) what the
/// harness wrote for it in `emulator`, waited for within `budget`.
pub(crate) async fn ssh_target(
    instance: &Instance,
    user: &str,
    budget: Duration,
    emulator: Option<&Path>,
) -> Result<Target, String> {
    if let Some(dir) = emulator {
        let file = dir.join(&instance.id);
        let deadline = std::time::Instant::now() + budget;
        loop {
            if let Ok(text) = tokio::fs::read_to_string(&file).await
                && let Some((host, port)) = text.trim().rsplit_once(':')
                && let Ok(port) = port.parse()
            {
                return Ok(Target { host: host.to_string(), port, user: user.to_string() });
            }
            if std::time::Instant::now() >= deadline {
                return Err(format!("no SSH address for {} in {}", instance.id, dir.display()));
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    let host = instance.address().ok_or_else(|| format!("{} has no address to connect to", instance.id))?;
    Ok(Target { host: host.to_string(), port: 22, user: user.to_string() })
}

impl<F> create::Deliver for SshDeliver<'_, F>
where
    F: std::future::Future<Output = PackResult> + Clone + Send + Sync,
{
    async fn deliver(&self, instance: &Instance) -> Result<(), String> {
        let packed = self.bundle.clone().await?;
        let target = ssh_target(instance, self.user, self.ssh_budget, self.emulator).await?;
        let shipment = Shipment {
            delivery: &packed.delivery,
            bundle: packed.file.path(),
            host_public: self.host_public,
            client_private: self.client_private,
            secret_values: self.secret_values,
            ssh_budget: self.ssh_budget,
        };
        let label = format!("{}: {}", instance.region, instance.id);
        shipment.deliver(&target, &label, self.progress).await.map_err(|f| f.to_string())
    }
}
