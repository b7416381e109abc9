//! Pure: a validated deployment plus run inputs -> exactly what `create` will do.
//!
//! The plan fixes the deployment id, expiry, tags, how many instances go to which region
//! with which types and images, the bundle's file list and the user-data. Given the same
//! inputs (including `now`) it is byte-for-byte the same: no clock, randomness or network
//! is read here.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use jiff::{SignedDuration, Timestamp};
use serde::Serialize;

use crate::bundle::{Entry, Listing};
use crate::cloud_init::{Identity, UserData};
use crate::manifest::types::{
    Arch, Deployment, Fallback, Image, Layout, Probe, ScriptRun, SshAccess, TarballSource, format_duration,
};

/// Tag keys `spot` sets on every resource it creates.
pub mod tag {
    pub const MANAGED_BY: &str = "spot:managed-by";
    pub const DEPLOYMENT: &str = "spot:deployment";
    pub const REPOSITORY: &str = "spot:repository";
    pub const PR: &str = "spot:pr";
    pub const RUN_ID: &str = "spot:run-id";
    pub const EXPIRES_AT: &str = "spot:expires-at";
    /// When the resource was made (RFC 3339): security groups, key pairs and VPC parts
    /// have no creation time of their own, and reap judges an orphan by its age.
    pub const CREATED_AT: &str = "spot:created-at";
    /// The instances' SSH host public key (spot generated it): a later run pins it.
    pub const HOST_KEY: &str = "spot:host-key";
    /// [`super::launch_digest`] of what the instances were launched with.
    pub const LAUNCH: &str = "spot:launch";
    /// The instances' `expose` ports with `http: true`, space-separated in the order
    /// written: how `list`, `create` and a later run know their URLs.
    pub const HTTP_PORTS: &str = "spot:http-ports";
    /// Set by EC2 (not spot) on every instance a fleet launches: how an instant fleet,
    /// which EC2 lists only by id, is found again.
    pub const FLEET_ID: &str = "aws:ec2:fleet-id";
    /// The value of [`MANAGED_BY`]; teardown never touches a resource without it.
    pub const MANAGED_BY_VALUE: &str = "spot";

    /// The one ownership rule: spot adopts, replaces or deletes a resource only when it
    /// carries the marker spot put there at creation. The provider (before it adopts or
    /// replaces a resource of the same name) and every teardown path ask this function.
    pub fn is_ours(tags: &std::collections::BTreeMap<String, String>) -> bool {
        tags.get(MANAGED_BY).map(String::as_str) == Some(MANAGED_BY_VALUE)
    }

    /// A resource found under a name the run wants, made by this same run (`ours` are the
    /// run's tags): its own earlier attempt whose answer was lost, which it may adopt or
    /// replace. One of another run (a deployment id in use) it never touches.
    pub fn same_run(
        found: &std::collections::BTreeMap<String, String>,
        ours: &std::collections::BTreeMap<String, String>,
    ) -> bool {
        is_ours(found) && found.get(RUN_ID).is_some() && found.get(RUN_ID) == ours.get(RUN_ID)
    }
}

/// What the run adds to the description: who, when, and under which id.
#[derive(Debug, Clone)]
pub struct Inputs {
    pub deployment_id: String,
    pub now: Timestamp,
    /// `owner/name` on GitHub, or the folder's name.
    pub repository: String,
    pub pr: Option<u64>,
    pub run_id: Option<String>,
}

/// Checks a deployment id: it becomes a tag value and part of resource names.
pub fn check_deployment_id(id: &str) -> Result<(), String> {
    let ok = !id.is_empty()
        && id.len() <= 48
        && id.starts_with(|c: char| c.is_ascii_lowercase() || c.is_ascii_digit())
        && id.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
    if ok {
        Ok(())
    } else {
        Err(format!(
            "deployment id `{id}` must be 1-48 lower-case letters, digits and `-`, starting with a letter or digit"
        ))
    }
}

/// A fresh deployment id: `spot-<utc date>-<time>-<4 hex>`.
pub fn new_deployment_id(now: Timestamp, random: u16) -> String {
    format!("spot-{}-{random:04x}", now.strftime("%Y%m%d-%H%M%S"))
}

#[derive(Debug, Clone, Serialize)]
pub struct ImageChoice {
    pub arch: Arch,
    /// `auto` or an AMI id.
    pub image: String,
    pub description: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct RegionPlan {
    pub region: String,
    /// Instances asked of this region first; regions with 0 only take top-ups.
    pub instances: u32,
    pub instance_types: Vec<String>,
    pub images: Vec<ImageChoice>,
    pub max_price: Option<f64>,
    pub storage_gb: u32,
    pub tags: BTreeMap<String, String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct ScriptStep {
    pub name: String,
    pub run: String,
    pub timeout: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct ServiceStep {
    pub name: String,
    pub enabled: bool,
    pub start: bool,
    pub depends_on: Vec<String>,
    pub health_check: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct BundlePlan {
    pub files: usize,
    pub total_bytes: u64,
    pub tarball_url: Option<String>,
    pub entries: Vec<Entry>,
}

#[derive(Debug, Clone, Serialize)]
pub struct UserDataPlan {
    /// Size of the `#cloud-config` text.
    pub bytes: usize,
    /// Size as sent (after gzip when needed).
    pub sent_bytes: usize,
    pub gzipped: bool,
    pub limit: usize,
}

/// Everything `create` would do, in a form for people and for machines.
#[derive(Debug, Clone, Serialize)]
pub struct Plan {
    pub deployment_id: String,
    pub layout: Layout,
    pub created_at: String,
    pub expires_at: String,
    pub ttl: String,
    pub repository: String,
    pub total_instances: u32,
    pub market: &'static str,
    pub fallback: Fallback,
    pub max_price: Option<f64>,
    pub dedicated_vpc: bool,
    pub public_ip: bool,
    pub ssh_user: String,
    pub ssh_access: SshAccess,
    /// Ports opened besides SSH, in the order written.
    pub expose: Vec<crate::manifest::types::Expose>,
    pub tags: BTreeMap<String, String>,
    pub regions: Vec<RegionPlan>,
    pub template: crate::manifest::types::Template,
    pub packages: Vec<String>,
    pub scripts: Vec<ScriptStep>,
    pub services: Vec<ServiceStep>,
    pub env: Vec<String>,
    pub secrets: Vec<String>,
    pub bundle: BundlePlan,
    pub user_data: UserDataPlan,
}

/// The identity the instance and the tags share.
pub fn identity(deployment: &Deployment, inputs: &Inputs) -> Identity {
    Identity { deployment_id: inputs.deployment_id.clone(), expires_at: expires_at(deployment, inputs.now) }
}

fn expires_at(deployment: &Deployment, now: Timestamp) -> String {
    let secs = i64::try_from(deployment.config.ttl_secs).unwrap_or(i64::MAX);
    let at = now.checked_add(SignedDuration::from_secs(secs)).unwrap_or(now);
    rfc3339(at)
}

fn rfc3339(t: Timestamp) -> String {
    t.strftime("%Y-%m-%dT%H:%M:%SZ").to_string()
}

/// What a deployment's instances are launched with, but for its keys, expiry and SSH
/// sources: regions, types, images, market, storage, network, login user, time to live
/// and the whole user-data (packages, template, env). A kept deployment whose digest
/// equals a new run's can take the new build in place; any difference needs new
/// instances. 16 hex digits of a sha256.
pub fn launch_digest(deployment: &Deployment, plan: &Plan) -> String {
    use sha2::Digest as _;
    let mut keys = crate::cloud_init::UserDataKeys::placeholders();
    keys.authorized.extend(deployment.config.extra_authorized_keys.iter().cloned());
    let identity =
        Identity { deployment_id: plan.deployment_id.clone(), expires_at: "2000-01-01T00:00:00Z".into() };
    let user_data =
        crate::cloud_init::render(deployment, &identity, &keys).map(|u| u.bytes).unwrap_or_default();
    let regions: Vec<_> = plan
        .regions
        .iter()
        .map(|r| (&r.region, r.instances, &r.instance_types, &r.images, r.max_price, r.storage_gb))
        .collect();
    let mut launch = serde_json::json!({
        "regions": regions,
        "market": plan.market,
        "fallback": plan.fallback,
        "max_price": plan.max_price,
        "dedicated_vpc": plan.dedicated_vpc,
        "public_ip": plan.public_ip,
        "ssh_user": plan.ssh_user,
        "ttl": plan.ttl,
    });
    // The HTTP ports are a tag of the instances: a change replaces them. (Only when there
    // are some, so that deployments made before `expose` keep their digest.) The rest of
    // `expose` is the security group's, set again on a redeploy.
    let http = crate::ingress::http_ports(&deployment.config.expose);
    if !http.is_empty() {
        launch["http_ports"] = serde_json::json!(http);
    }
    let mut hash = sha2::Sha256::new();
    hash.update(&user_data);
    hash.update(launch.to_string().as_bytes());
    hash.finalize().iter().take(8).fold(String::new(), |mut hex, b| {
        let _ = write!(hex, "{b:02x}");
        hex
    })
}

/// The tags every resource of this deployment carries (before per-region extras).
pub fn tags(deployment: &Deployment, inputs: &Inputs) -> BTreeMap<String, String> {
    let mut tags = deployment.config.tags.clone();
    tags.insert("Name".into(), inputs.deployment_id.clone());
    tags.insert(tag::MANAGED_BY.into(), tag::MANAGED_BY_VALUE.into());
    tags.insert(tag::DEPLOYMENT.into(), inputs.deployment_id.clone());
    tags.insert(tag::REPOSITORY.into(), inputs.repository.clone());
    if let Some(pr) = inputs.pr {
        tags.insert(tag::PR.into(), pr.to_string());
    }
    if let Some(run) = &inputs.run_id {
        tags.insert(tag::RUN_ID.into(), run.clone());
    }
    tags.insert(tag::EXPIRES_AT.into(), expires_at(deployment, inputs.now));
    tags
}

/// Splits `total` across `n` regions: equal shares, the remainder to the first ones.
pub fn split(total: u32, n: usize) -> Vec<u32> {
    let n32 = u32::try_from(n.max(1)).unwrap_or(u32::MAX);
    (0..n32).map(|i| total / n32 + u32::from(i < total % n32)).collect()
}

/// Builds the plan. `listing` and `user_data` come from [`crate::bundle::list`] and
/// [`crate::cloud_init::render`] for the same deployment and inputs.
pub fn build(deployment: &Deployment, inputs: &Inputs, listing: Listing, user_data: &UserData) -> Plan {
    let config = &deployment.config;
    let manifest = &deployment.manifest;
    let common = tags(deployment, inputs);
    let shares = split(config.total_instances, config.regions.len());
    let regions = config
        .regions
        .iter()
        .zip(shares)
        .map(|(r, instances)| {
            let mut archs: Vec<Arch> =
                r.instance_types.iter().map(crate::manifest::types::InstanceType::arch).collect();
            archs.sort();
            archs.dedup();
            RegionPlan {
                region: r.name.clone(),
                instances,
                instance_types: r.instance_types.iter().map(ToString::to_string).collect(),
                images: archs
                    .into_iter()
                    .map(|arch| match &r.image {
                        Image::Auto => ImageChoice {
                            arch,
                            image: "auto".into(),
                            description: format!(
                                "newest Canonical Ubuntu 24.04 LTS ({arch}), looked up at create"
                            ),
                        },
                        Image::Ami(id) => ImageChoice {
                            arch,
                            image: id.clone(),
                            description: format!("{id} (checked to exist at create)"),
                        },
                    })
                    .collect(),
                max_price: r.max_price,
                storage_gb: r.storage_gb,
                tags: r
                    .tags
                    .iter()
                    .filter(|(k, v)| config.tags.get(*k) != Some(*v))
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect(),
            }
        })
        .collect();
    let tarball_url = manifest.tarball.as_ref().and_then(|t| match &t.source {
        TarballSource::Url { url, .. } => Some(url.clone()),
        _ => None,
    });
    Plan {
        deployment_id: inputs.deployment_id.clone(),
        layout: deployment.layout,
        created_at: rfc3339(inputs.now),
        expires_at: expires_at(deployment, inputs.now),
        ttl: format_duration(config.ttl_secs),
        repository: inputs.repository.clone(),
        total_instances: config.total_instances,
        market: "spot",
        fallback: config.fallback,
        max_price: config.max_price,
        dedicated_vpc: config.dedicated_vpc,
        public_ip: config.public_ip,
        ssh_user: config.username.clone(),
        ssh_access: config.ssh_access.clone(),
        expose: config.expose.clone(),
        tags: common,
        regions,
        template: manifest.template,
        packages: manifest.packages.clone(),
        scripts: manifest
            .scripts
            .iter()
            .map(|s| ScriptStep {
                name: s.name.clone(),
                run: match &s.run {
                    ScriptRun::File { path, .. } => path.clone(),
                    ScriptRun::Command { command } => format!("$ {command}"),
                },
                timeout: format_duration(s.timeout_secs),
            })
            .collect(),
        services: manifest
            .services
            .iter()
            .map(|s| ServiceStep {
                name: s.name.clone(),
                enabled: s.enabled,
                start: s.start,
                depends_on: s.depends_on.clone(),
                health_check: s.health_check.as_ref().map(|h| {
                    let probe = match &h.probe {
                        Probe::Command(c) => format!("command `{c}`"),
                        Probe::Tcp(p) => format!("tcp port {p}"),
                        Probe::Http(u) => format!("http {u}"),
                    };
                    format!("{probe}, within {}", format_duration(h.timeout_secs))
                }),
            })
            .collect(),
        env: manifest.env.keys().cloned().collect(),
        secrets: manifest
            .secrets
            .iter()
            .map(|s| format!("{} (from ${}) -> {}", s.name, s.env, s.dest))
            .collect(),
        bundle: BundlePlan {
            files: listing.entries.len(),
            total_bytes: listing.total_bytes,
            tarball_url,
            entries: listing.entries,
        },
        user_data: UserDataPlan {
            bytes: user_data.text.len(),
            sent_bytes: user_data.bytes.len(),
            gzipped: user_data.gzipped,
            limit: crate::cloud_init::USER_DATA_LIMIT,
        },
    }
}

/// Bytes in a human unit.
pub fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = n as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 { format!("{n} B") } else { format!("{value:.1} {}", UNITS[unit]) }
}

/// How many bundle files the human rendering lists before summarising.
const SHOWN_FILES: usize = 15;

impl Plan {
    /// The plan for people.
    pub fn human(&self) -> String {
        let mut s = String::new();
        let from = match self.layout {
            Layout::Spot => ".spot/",
            Layout::Convention => "deployment/ (by convention)",
        };
        let _ = writeln!(s, "Plan for deployment {} (from {from})", self.deployment_id);
        let _ = writeln!(s, "  expires    {} (ttl {}): instances power off then", self.expires_at, self.ttl);
        let fallback = match self.fallback {
            Fallback::None => "no fallback",
            Fallback::OnDemand => "on-demand fallback",
        };
        let price = self
            .max_price
            .map_or_else(|| "max price: on-demand price".to_string(), |p| format!("max price ${p}/h"));
        let _ = writeln!(s, "  instances  {} spot ({fallback}, {price})", self.total_instances);
        let network = if self.dedicated_vpc {
            "a dedicated tagged VPC per region"
        } else {
            "the default VPC, every AZ"
        };
        let _ = writeln!(
            s,
            "  network    {network}{}",
            if self.public_ip { ", public IPv4" } else { ", no public IPv4" }
        );
        let access = match &self.ssh_access {
            SshAccess::Runner => "the address spot runs from".to_string(),
            SshAccess::Cidrs(c) => c.join(", "),
        };
        let _ = writeln!(s, "  ssh        user {}, from {access}; host key pinned", self.ssh_user);
        if self.expose.is_empty() {
            let _ = writeln!(s, "  expose     nothing but SSH");
        }
        for e in &self.expose {
            let _ = writeln!(s, "  expose     {}", crate::ingress::opened(e, crate::ingress::RUNS_FROM));
        }
        let _ = writeln!(s, "  regions");
        for r in &self.regions {
            let images: Vec<String> = r.images.iter().map(|i| format!("{} {}", i.arch, i.image)).collect();
            let role = if r.instances == 0 { " (top-up only)".to_string() } else { String::new() };
            let _ = writeln!(
                s,
                "    {:<15} {:>4} x {:<28} image {}, {} GiB gp3{role}",
                r.region,
                r.instances,
                r.instance_types.join(","),
                images.join(" + "),
                r.storage_gb
            );
        }
        let tags: Vec<String> = self.tags.iter().map(|(k, v)| format!("{k}={v}")).collect();
        let _ = writeln!(s, "  tags       {}", tags.join(" "));
        let packages =
            if self.packages.is_empty() { "no extra packages".to_string() } else { self.packages.join(" ") };
        let template = match self.template {
            crate::manifest::types::Template::Minimal => "minimal",
            crate::manifest::types::Template::Docker => "docker",
        };
        let _ = writeln!(s, "  setup      template {template}; {packages}");
        for (i, step) in self.scripts.iter().enumerate() {
            let _ =
                writeln!(s, "  script {:<3} {} ({}, timeout {})", i + 1, step.name, step.run, step.timeout);
        }
        for svc in &self.services {
            let deps = if svc.depends_on.is_empty() {
                String::new()
            } else {
                format!(", after {}", svc.depends_on.join(", "))
            };
            let health = svc.health_check.as_deref().unwrap_or("unit active");
            let _ = writeln!(s, "  service    {} (health: {health}{deps})", svc.name);
        }
        if !self.env.is_empty() {
            let _ = writeln!(s, "  env        {}", self.env.join(" "));
        }
        for secret in &self.secrets {
            let _ = writeln!(s, "  secret     {secret}, mode 0600, over SSH only");
        }
        let _ =
            writeln!(s, "  bundle     {} files, {}", self.bundle.files, human_bytes(self.bundle.total_bytes));
        for e in self.bundle.entries.iter().take(SHOWN_FILES) {
            let _ = writeln!(s, "    {:>10}  {:o}  {} <- {}", human_bytes(e.size), e.mode, e.dest, e.source);
        }
        if self.bundle.entries.len() > SHOWN_FILES {
            let _ = writeln!(
                s,
                "    ... and {} more (see `spot plan --json`)",
                self.bundle.entries.len() - SHOWN_FILES
            );
        }
        if let Some(url) = &self.bundle.tarball_url {
            let _ = writeln!(s, "    + {url}, downloaded by each instance");
        }
        let gz = if self.user_data.gzipped {
            format!(", sent gzipped as {} bytes", self.user_data.sent_bytes)
        } else {
            String::new()
        };
        let _ =
            writeln!(s, "  user-data  {} bytes{gz} (limit {})", self.user_data.bytes, self.user_data.limit);
        let _ = writeln!(s, "Nothing was created. `spot create` would do the above.");
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_gives_the_remainder_to_the_first_regions() {
        assert_eq!(split(5, 3), vec![2, 2, 1]);
        assert_eq!(split(1, 3), vec![1, 0, 0]);
        assert_eq!(split(6, 1), vec![6]);
    }

    #[test]
    fn deployment_ids() {
        assert!(check_deployment_id("pr-12").is_ok());
        assert!(check_deployment_id("Spot").is_err());
        assert!(check_deployment_id("-x").is_err());
        let now: Timestamp = "2026-11-26T03:04:05Z".parse().unwrap();
        assert_eq!(new_deployment_id(now, 0xab), "spot-20261126-030405-00ab");
    }

    #[test]
    fn the_launch_digest_follows_what_instances_are_launched_with_and_nothing_else() {
        let at = |d: &Deployment, now: &str| {
            let inputs = Inputs {
                deployment_id: "pr-7".into(),
                now: now.parse().unwrap(),
                repository: "acme/app".into(),
                pr: Some(7),
                run_id: Some(now.into()),
            };
            let user_data = crate::cloud_init::render(
                d,
                &identity(d, &inputs),
                &crate::cloud_init::UserDataKeys::placeholders(),
            )
            .unwrap();
            launch_digest(d, &build(d, &inputs, Listing::default(), &user_data))
        };
        let base = crate::manifest::example();
        let digest = at(&base, "2026-11-26T03:04:05Z");
        assert_eq!(digest.len(), 16);
        assert_eq!(at(&base, "2026-11-27T00:00:00Z"), digest, "a later run, same launch");
        let mut cidr = base.clone();
        cidr.config.ssh_access = SshAccess::Cidrs(vec!["10.0.0.0/8".into()]);
        assert_eq!(at(&cidr, "2026-11-26T03:04:05Z"), digest, "SSH sources change in place");
        let mut packages = base.clone();
        packages.manifest.packages.push("jq".into());
        let mut env = base.clone();
        env.manifest.env.insert("MODE".into(), "other".into());
        let mut count = base.clone();
        count.config.total_instances += 1;
        let mut ttl = base.clone();
        ttl.config.ttl_secs += 60;
        for (what, d) in [("packages", packages), ("env", env), ("count", count), ("ttl", ttl)] {
            assert_ne!(at(&d, "2026-11-26T03:04:05Z"), digest, "{what} changes the launch");
        }
    }
}
