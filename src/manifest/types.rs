//! The validated deployment model: once a value is here, nothing re-checks it.
//!
//! Every type in this module was produced by `validate` from the raw files (or by the
//! `deployment/` convention scanner) and is known to be well-formed: regions are real,
//! instance types parse, paths stay inside the repository and exist. Planning, cloud-init
//! rendering and bundling read only these types.

use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;

use serde::Serialize;

use super::paths::Excludes;
use super::span::Span;

/// AWS region names `spot` accepts (commercial, GovCloud and China partitions).
pub const AWS_REGIONS: &[&str] = &[
    "af-south-1",
    "ap-east-1",
    "ap-east-2",
    "ap-northeast-1",
    "ap-northeast-2",
    "ap-northeast-3",
    "ap-south-1",
    "ap-south-2",
    "ap-southeast-1",
    "ap-southeast-2",
    "ap-southeast-3",
    "ap-southeast-4",
    "ap-southeast-5",
    "ap-southeast-6",
    "ap-southeast-7",
    "ca-central-1",
    "ca-west-1",
    "cn-north-1",
    "cn-northwest-1",
    "eu-central-1",
    "eu-central-2",
    "eu-north-1",
    "eu-south-1",
    "eu-south-2",
    "eu-west-1",
    "eu-west-2",
    "eu-west-3",
    "il-central-1",
    "me-central-1",
    "me-south-1",
    "mx-central-1",
    "sa-east-1",
    "us-east-1",
    "us-east-2",
    "us-gov-east-1",
    "us-gov-west-1",
    "us-west-1",
    "us-west-2",
];

/// Where a value came from, for errors found after validation (bundle walk, user-data size).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Origin {
    pub file: String,
    pub span: Span,
}

/// CPU architecture, decided from the instance type's family.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Arch {
    X86_64,
    Arm64,
}

impl fmt::Display for Arch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Arch::X86_64 => "x86_64",
            Arch::Arm64 => "arm64",
        })
    }
}

/// A well-formed EC2 instance type such as `t3.medium` or `m7g.large`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize)]
pub struct InstanceType(String);

impl InstanceType {
    /// Checks the shape `<family><generation><attributes>.<size>`.
    pub fn parse(s: &str) -> Result<Self, String> {
        let Some((family, size)) = s.split_once('.') else {
            return Err("an instance type is `<family>.<size>`, such as `t3.medium`".into());
        };
        let family_ok = family.len() >= 2
            && family.starts_with(|c: char| c.is_ascii_lowercase())
            && family.chars().any(|c| c.is_ascii_digit())
            && family.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
        let size_ok = !size.is_empty() && size.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit());
        if family_ok && size_ok {
            Ok(Self(s.to_string()))
        } else {
            Err("an instance type is lower-case `<family><generation>.<size>`, such as `t3.medium` or `m7g.large`".into())
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Graviton families carry a `g` after the generation digit (`m7g`, `c7gn`, `t4g`,
    /// `im4gn`), and `a1` is Graviton 1; everything else is x86_64.
    pub fn arch(&self) -> Arch {
        let family = self.0.split('.').next().unwrap_or_default();
        let family = family.split('-').next().unwrap_or_default();
        if family == "a1" {
            return Arch::Arm64;
        }
        let after_generation = family
            .trim_start_matches(|c: char| c.is_ascii_alphabetic())
            .trim_start_matches(|c: char| c.is_ascii_digit());
        if after_generation.contains('g') { Arch::Arm64 } else { Arch::X86_64 }
    }
}

impl fmt::Display for InstanceType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Parses `30s`, `90m`, `2h`, `1d`, or combinations such as `1h30m`, into seconds.
pub fn parse_duration(s: &str) -> Result<u64, String> {
    let bad =
        || format!("`{s}` is not a duration: write a number and a unit (s, m, h, d), such as `90m` or `2h`");
    let mut total: u64 = 0;
    let mut digits = String::new();
    if s.is_empty() {
        return Err(bad());
    }
    for c in s.chars() {
        if c.is_ascii_digit() {
            digits.push(c);
            continue;
        }
        let unit = match c {
            's' => 1,
            'm' => 60,
            'h' => 3600,
            'd' => 86_400,
            _ => return Err(bad()),
        };
        let n: u64 = digits.parse().map_err(|_| bad())?;
        total = n.checked_mul(unit).and_then(|v| total.checked_add(v)).ok_or_else(bad)?;
        digits.clear();
    }
    if !digits.is_empty() {
        return Err(bad());
    }
    Ok(total)
}

/// Formats seconds the way users write them (`2h`, `1h30m`, `45s`).
pub fn format_duration(secs: u64) -> String {
    let mut out = String::new();
    let mut rest = secs;
    for (unit, name) in [(86_400, 'd'), (3600, 'h'), (60, 'm'), (1, 's')] {
        if rest >= unit {
            out.push_str(&format!("{}{name}", rest / unit));
            rest %= unit;
        }
    }
    if out.is_empty() {
        out.push_str("0s");
    }
    out
}

/// Which image to boot.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Image {
    /// Newest Canonical Ubuntu 24.04 LTS for each architecture, looked up per region.
    Auto,
    Ami(String),
}

/// What to do when spot capacity runs out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Fallback {
    None,
    OnDemand,
}

/// Base instance setup.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum Template {
    Minimal,
    Docker,
}

/// Who may reach SSH.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum SshAccess {
    /// The public address `spot create` runs from, found at create time.
    Runner,
    Cidrs(Vec<String>),
}

/// The transport protocol of an exposed port.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Protocol {
    Tcp,
    Udp,
}

impl Protocol {
    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
        }
    }
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Who may reach an exposed port.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Reach {
    /// The public address `spot` runs from, found at create time (and again on a redeploy).
    Runner,
    /// Every address: `0.0.0.0/0` and `::/0`. Only when written.
    Anywhere,
    Cidr(String),
}

impl Reach {
    /// Does it let (near enough) the whole internet in: `anywhere`, or a CIDR that
    /// [`is_open`]?
    pub fn is_open(&self) -> bool {
        match self {
            Reach::Anywhere => true,
            Reach::Cidr(c) => is_open(c),
            Reach::Runner => false,
        }
    }
}

/// Does `cidr` cover (near enough) the whole internet: an IPv4 prefix shorter than
/// /8, or an IPv6 one shorter than /16 (`0.0.0.0/0`, `::/0`, and their halves)?
pub fn is_open(cidr: &str) -> bool {
    let Some((addr, len)) = cidr.split_once('/') else {
        return false;
    };
    let Ok(len) = len.parse::<u8>() else {
        return false;
    };
    if addr.contains(':') { len < 16 } else { len < 8 }
}

/// One `expose` entry of config.yaml: ports of every instance opened in its security group.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Expose {
    /// First and last port (equal for one port); shown as `8080` or `8000-8010`.
    #[serde(rename = "port", serialize_with = "port_text")]
    pub ports: (u16, u16),
    pub protocol: Protocol,
    pub from: Vec<Reach>,
    /// An HTTP server listens here: its URL is published.
    pub http: bool,
    /// Where each of `from` was written, in order.
    #[serde(skip)]
    pub from_origins: Vec<Origin>,
    /// Where the entry was written.
    #[serde(skip)]
    pub origin: Origin,
}

fn port_text<S: serde::Serializer>(ports: &(u16, u16), s: S) -> Result<S::Ok, S::Error> {
    match ports {
        (a, b) if a == b => s.serialize_u16(*a),
        (a, b) => s.serialize_str(&format!("{a}-{b}")),
    }
}

impl Expose {
    /// `8080/tcp`, `8000-8010/udp`.
    pub fn label(&self) -> String {
        match self.ports {
            (a, b) if a == b => format!("{a}/{}", self.protocol),
            (a, b) => format!("{a}-{b}/{}", self.protocol),
        }
    }
}

/// One region of the config, validated.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RegionSpec {
    pub name: String,
    pub instance_types: Vec<InstanceType>,
    pub image: Image,
    pub max_price: Option<f64>,
    pub storage_gb: u32,
    pub tags: BTreeMap<String, String>,
    /// Where the region's name was written (empty: given by an override).
    #[serde(skip)]
    pub origin: Origin,
    /// Where each of `instance_types` was written, in order (empty: an override's).
    #[serde(skip)]
    pub type_origins: Vec<Origin>,
}

/// Where `config.yaml` wrote the values a workflow can cap; an empty [`Origin`] when
/// the value is the default or an override's (a workflow input, a flag).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Written {
    pub total_instances: Origin,
    pub ttl: Origin,
    /// One per source of `SshAccess::Cidrs`, in order.
    pub ssh_cidrs: Vec<Origin>,
    /// `public_ssh_key_path` and the file it read (`~/` expanded).
    pub public_key: Option<(Origin, PathBuf)>,
}

/// `config.yaml`, validated.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Config {
    pub total_instances: u32,
    pub username: String,
    pub storage_gb: u32,
    pub tags: BTreeMap<String, String>,
    pub regions: Vec<RegionSpec>,
    pub max_price: Option<f64>,
    pub fallback: Fallback,
    pub ttl_secs: u64,
    pub ssh_access: SshAccess,
    pub dedicated_vpc: bool,
    pub public_ip: bool,
    /// Public keys (OpenSSH one-line form) to authorize besides the deployment's own.
    pub extra_authorized_keys: Vec<String>,
    /// Ports opened besides SSH, in the order written.
    pub expose: Vec<Expose>,
    #[serde(skip)]
    pub written: Written,
}

/// A script step.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Script {
    pub name: String,
    #[serde(flatten)]
    pub run: ScriptRun,
    pub timeout_secs: u64,
}

/// What a script step runs.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ScriptRun {
    /// A file; `path` is relative to the repository root.
    File {
        path: String,
        #[serde(skip)]
        local: PathBuf,
    },
    Command {
        command: String,
    },
}

/// Something copied onto the instance.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Upload {
    /// Source relative to the repository root.
    pub source: String,
    #[serde(skip)]
    pub local: PathBuf,
    pub is_dir: bool,
    /// Absolute destination; for a folder source, the folder its contents land in.
    pub dest: String,
    pub permissions: Option<u32>,
    pub owner: Option<String>,
    pub exclude: Excludes,
    pub gitignore: bool,
    #[serde(skip)]
    pub origin: Origin,
}

/// How to tell a service works.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct HealthCheck {
    #[serde(flatten)]
    pub probe: Probe,
    pub timeout_secs: u64,
    pub interval_secs: u64,
}

/// The probe of a health check.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Probe {
    Command(String),
    Tcp(u16),
    Http(String),
}

/// A systemd service; `depends_on` merges the manifest's list with the unit's own
/// `After=`/`Requires=`/`Wants=`/`BindsTo=` that name other manifest services.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Service {
    pub name: String,
    /// Unit file relative to the repository root.
    pub file: String,
    #[serde(skip)]
    pub local: PathBuf,
    pub enabled: bool,
    pub start: bool,
    pub depends_on: Vec<String>,
    pub health_check: Option<HealthCheck>,
}

/// The build to ship.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Tarball {
    #[serde(flatten)]
    pub source: TarballSource,
    pub dest: String,
    #[serde(skip)]
    pub origin: Origin,
}

/// Where the build comes from.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum TarballSource {
    /// A folder, packed into the bundle. Path relative to the repository root.
    Dir {
        path: String,
        #[serde(skip)]
        local: PathBuf,
    },
    /// An existing `.tar.gz`, shipped as is and unpacked on the instance.
    Archive {
        path: String,
        #[serde(skip)]
        local: PathBuf,
    },
    /// Downloaded by the instance, checked against `sha256` when given.
    Url {
        url: String,
        #[serde(skip_serializing_if = "Option::is_none")]
        sha256: Option<String>,
    },
}

/// A secret read from the environment `spot` runs in, at create time only.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SecretRef {
    pub name: String,
    pub env: String,
    pub dest: String,
}

/// `deployment.yaml` (or the convention folder), validated.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Manifest {
    pub template: Template,
    pub packages: Vec<String>,
    /// In run order.
    pub scripts: Vec<Script>,
    pub uploads: Vec<Upload>,
    /// In start order (dependencies first).
    pub services: Vec<Service>,
    pub tarball: Option<Tarball>,
    pub env: BTreeMap<String, String>,
    pub secrets: Vec<SecretRef>,
}

/// Which layout the deployment was read from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Layout {
    /// `.spot/config.yaml` + `.spot/deployment.yaml`.
    Spot,
    /// A `deployment/` folder scanned by convention.
    Convention,
}

/// A whole validated deployment description.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Deployment {
    #[serde(skip)]
    pub root: PathBuf,
    pub layout: Layout,
    pub config: Config,
    pub manifest: Manifest,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn architectures_follow_the_family() {
        for (t, arch) in [
            ("t3.medium", Arch::X86_64),
            ("m7g.large", Arch::Arm64),
            ("c7gn.xlarge", Arch::Arm64),
            ("t4g.nano", Arch::Arm64),
            ("g4dn.xlarge", Arch::X86_64),
            ("g5g.xlarge", Arch::Arm64),
            ("im4gn.large", Arch::Arm64),
            ("a1.medium", Arch::Arm64),
            ("m7i-flex.large", Arch::X86_64),
            ("u-6tb1.metal", Arch::X86_64),
        ] {
            assert_eq!(InstanceType::parse(t).unwrap().arch(), arch, "{t}");
        }
    }

    #[test]
    fn malformed_instance_types_are_refused() {
        for t in ["t3", "T3.medium", "t3.", ".medium", "medium.t", "t3 .x"] {
            assert!(InstanceType::parse(t).is_err(), "{t}");
        }
    }

    #[test]
    fn durations_parse_and_format() {
        assert_eq!(parse_duration("90m"), Ok(5400));
        assert_eq!(parse_duration("1h30m"), Ok(5400));
        assert_eq!(parse_duration("1d"), Ok(86_400));
        assert!(parse_duration("2").is_err());
        assert!(parse_duration("h").is_err());
        assert!(parse_duration("-1h").is_err());
        assert!(parse_duration("99999999999999999999d").is_err());
        assert_eq!(format_duration(5400), "1h30m");
    }
}
