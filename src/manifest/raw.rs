//! The `.spot/` files exactly as written: every field optional, every value spanned.
//!
//! These types mirror the YAML and nothing more; `validate` turns them into the checked
//! model. Their doc comments become the JSON Schema's descriptions (`spot schema`), so
//! they are written for a user editing the file. Keys the original spot deployer
//! documented but spot does not implement are listed here with the reason, so they are
//! rejected with a useful message rather than ignored.

use std::borrow::Cow;

use schemars::{JsonSchema, Schema, SchemaGenerator};

use super::read::{
    Cx, FromNode, KeyedMap, MapReader, OneOrMany, ScalarText, Spanned, Unsupported, raw_struct,
};
use super::types::AWS_REGIONS;
use super::yaml::{Node, Span, Value};

/// `.spot/config.yaml`: where the instances run and how big they are.
#[derive(Debug, Default, JsonSchema)]
#[schemars(title = "spot config.yaml", deny_unknown_fields)]
pub struct RawConfig {
    #[schemars(skip)]
    pub at: Span,
    /// AWS-side settings shared by every region.
    pub aws: Option<Spanned<RawAws>>,
    /// Regions to run in, in order of preference: a list of `- <region>: {machine_type, image}`.
    /// Instances are split evenly, the remainder going to the first regions.
    pub regions: Option<Spanned<Vec<RawRegionEntry>>>,
    /// Spot market behaviour.
    pub spot: Option<Spanned<RawSpot>>,
    /// Ports of every instance to open besides SSH, each a port number or
    /// `{port, protocol, from, http}`. Nothing but SSH is open without it.
    pub expose: Option<Spanned<Vec<Spanned<RawExposeEntry>>>>,
}
raw_struct!(RawConfig, "config.yaml", &[], { aws, regions, spot, expose });

/// `port: 8080` or `port: 8000-8010`.
#[derive(Debug, Clone, PartialEq)]
pub struct RawPort(pub String);

impl FromNode for RawPort {
    fn from_node(node: &Node, cx: &mut Cx) -> Option<Self> {
        match &node.value {
            Value::Scalar { text, .. } => Some(RawPort(text.clone())),
            _ => {
                cx.wrong_type(node, "a port (`8080`) or a range (`8000-8010`)");
                None
            }
        }
    }
}

impl JsonSchema for RawPort {
    fn schema_name() -> Cow<'static, str> {
        "Port".into()
    }
    fn json_schema(_: &mut SchemaGenerator) -> Schema {
        schemars::json_schema!({
            "description": "A port from 1 to 65535 (not 22), or a range `first-last`.",
            "anyOf": [
                { "type": "integer", "minimum": 1, "maximum": 65535, "not": { "const": 22 } },
                { "type": "string", "pattern": "^[0-9]{1,5}(-[0-9]{1,5})?$", "not": { "const": "22" } }
            ]
        })
    }
}

/// One port (or range) to open.
#[derive(Debug, Default, JsonSchema)]
#[schemars(deny_unknown_fields)]
pub struct RawExpose {
    #[schemars(skip)]
    pub at: Span,
    /// The port (`8080`) or range (`8000-8010`). Port 22 is SSH's and cannot be listed,
    /// alone or in a range.
    pub port: Option<Spanned<RawPort>>,
    /// `tcp` (default) or `udp`.
    pub protocol: Option<Spanned<String>>,
    /// Who may connect: `runner` (the address `spot` runs from: the default), `anywhere`
    /// (`0.0.0.0/0` and `::/0`, only when written), or CIDR blocks; one or a list.
    pub from: Option<Spanned<OneOrMany<Spanned<String>>>>,
    /// An HTTP server listens on this one TCP port: `http://<address>:<port>/` is published
    /// per instance (outputs `urls` and `url`, the summary, the pull request's comment, the
    /// GitHub deployment). Default false.
    pub http: Option<Spanned<bool>>,
}
raw_struct!(RawExpose, "an `expose` entry", &[], { port, protocol, from, http });

/// `- 8080` or `- {port: 8080, http: true}`.
#[derive(Debug)]
pub enum RawExposeEntry {
    Port(Spanned<RawPort>),
    Full(RawExpose),
}

impl FromNode for RawExposeEntry {
    fn from_node(node: &Node, cx: &mut Cx) -> Option<Self> {
        match &node.value {
            Value::Map(_) => RawExpose::from_node(node, cx).map(RawExposeEntry::Full),
            _ => Spanned::<RawPort>::from_node(node, cx).map(RawExposeEntry::Port),
        }
    }
}

impl JsonSchema for RawExposeEntry {
    fn schema_name() -> Cow<'static, str> {
        "ExposeEntry".into()
    }
    fn json_schema(generator: &mut SchemaGenerator) -> Schema {
        let port = generator.subschema_for::<RawPort>();
        let full = generator.subschema_for::<RawExpose>();
        schemars::json_schema!({
            "description": "A port (TCP, from the runner), or `{port, protocol, from, http}`.",
            "anyOf": [port, full]
        })
    }
}

const NETWORK_CHOICE: &str = "spot uses the default VPC's subnets (or its own tagged VPC with \
    `use_dedicated_vpc: true`) and its own tagged security group; remove this key";
const CUSTOM_LAYOUT: &str = "list files under `uploads` and scripts under `scripts` in \
    deployment.yaml instead; remove this key";
const CUSTOM_TEMPLATE: &str = "custom cloud-init templates are not supported: use \
    `template: minimal|docker` with packages, scripts and services; remove this key";

/// Keys of the original's `aws:` section that spot refuses, and why.
pub const AWS_UNSUPPORTED: Unsupported = &[
    (
        "private_ssh_key_path",
        "spot makes a fresh ed25519 key for every deployment and never reads your private key; remove this key",
    ),
    ("ssh_key_name", "no existing EC2 key pair is used: spot imports a per-deployment key; remove this key"),
    ("files_directory", CUSTOM_LAYOUT),
    ("scripts_directory", CUSTOM_LAYOUT),
    ("startup_script", CUSTOM_LAYOUT),
    ("additional_commands_script", CUSTOM_LAYOUT),
    ("cloud_init_template", CUSTOM_TEMPLATE),
    ("docker_compose_template", CUSTOM_TEMPLATE),
    ("ensure_default_vpc", NETWORK_CHOICE),
    ("vpc_tag_name", NETWORK_CHOICE),
    ("vpc_id", NETWORK_CHOICE),
    ("subnet_id", NETWORK_CHOICE),
    ("security_groups", NETWORK_CHOICE),
    ("security_group_name", NETWORK_CHOICE),
    (
        "bacalhau_*",
        "Bacalhau-specific settings were removed: ship its configuration as an upload; remove this key",
    ),
];

/// Settings for every region.
#[derive(Debug, Default, JsonSchema)]
#[schemars(deny_unknown_fields)]
pub struct RawAws {
    #[schemars(skip)]
    pub at: Span,
    /// Instances across all regions, 1 to 1000. Default 1.
    pub total_instances: Option<Spanned<u32>>,
    /// Login user created on the instance. Default `ubuntu`.
    pub username: Option<Spanned<String>>,
    /// Encrypted gp3 root volume size in GiB, 8 to 16384. Default 50.
    pub instance_storage_gb: Option<Spanned<u32>>,
    /// Extra tags on every resource. Keys must not start with `spot:` or `aws:`.
    pub tags: Option<Spanned<KeyedMap<Spanned<ScalarText>>>>,
    /// Highest spot price to pay, USD per instance-hour (same as `spot.max_price`).
    pub spot_price_limit: Option<Spanned<f64>>,
    /// Give instances a public IPv4 address. Default true.
    pub associate_public_ip: Option<Spanned<bool>>,
    /// Create a tagged VPC per region instead of using the default VPC. Default false.
    pub use_dedicated_vpc: Option<Spanned<bool>>,
    /// Your own public key to authorize as well (`~` allowed), besides the per-deployment key.
    pub public_ssh_key_path: Option<Spanned<String>>,
    /// Time to live (`90m`, `2h`, `1d`; 10m to 7d): instances power off and terminate then,
    /// and `reap` removes the deployment. Default `4h`.
    pub ttl: Option<Spanned<String>>,
    /// CIDR(s) allowed to reach SSH. Default: the address `spot` runs from. `0.0.0.0/0`
    /// only when written here.
    pub ssh_cidr: Option<Spanned<OneOrMany<Spanned<String>>>>,
}
raw_struct!(RawAws, "`aws`", AWS_UNSUPPORTED, {
    total_instances, username, instance_storage_gb, tags, spot_price_limit,
    associate_public_ip, use_dedicated_vpc, public_ssh_key_path, ttl, ssh_cidr,
});

/// Spot market behaviour.
#[derive(Debug, Default, JsonSchema)]
#[schemars(deny_unknown_fields)]
pub struct RawSpot {
    #[schemars(skip)]
    pub at: Span,
    /// Highest spot price to pay, USD per instance-hour. Default: the on-demand price.
    pub max_price: Option<Spanned<f64>>,
    /// `none` (default: fail when no spot capacity) or `on-demand` (fill the rest on-demand).
    pub fallback: Option<Spanned<String>>,
}
raw_struct!(RawSpot, "`spot`", &[], { max_price, fallback });

/// One region's settings.
#[derive(Debug, Default, JsonSchema)]
#[schemars(deny_unknown_fields)]
pub struct RawRegion {
    #[schemars(skip)]
    pub at: Span,
    /// EC2 instance type, or a list of them to diversify spot capacity (all one architecture
    /// unless `image: auto`).
    pub machine_type: Option<Spanned<OneOrMany<Spanned<String>>>>,
    /// `auto` (newest Canonical Ubuntu 24.04 LTS for the type's architecture; `latest` is
    /// accepted too) or an `ami-...` id. Default `auto`.
    pub image: Option<Spanned<String>>,
    /// This region's spot price cap, overriding `spot.max_price`.
    pub spot_price_limit: Option<Spanned<f64>>,
    /// This region's root volume size, overriding `aws.instance_storage_gb`.
    pub instance_storage_gb: Option<Spanned<u32>>,
    /// Extra tags for this region's resources, merged over `aws.tags`.
    pub tags: Option<Spanned<KeyedMap<Spanned<ScalarText>>>>,
}
raw_struct!(RawRegion, "a region", &[(
    "count",
    "instances are split across regions from `aws.total_instances`; remove this key",
)], { machine_type, image, spot_price_limit, instance_storage_gb, tags });

/// `- us-west-2: {machine_type: t3.medium}`: a single-key mapping.
#[derive(Debug)]
pub struct RawRegionEntry {
    pub name: Spanned<String>,
    pub settings: Spanned<RawRegion>,
}

impl FromNode for RawRegionEntry {
    fn from_node(node: &Node, cx: &mut Cx) -> Option<Self> {
        let Value::Map(entries) = &node.value else {
            cx.wrong_type(node, "a mapping `<region>: {machine_type: ...}`");
            return None;
        };
        if entries.len() != 1 {
            cx.error(
                super::diagnostic::Kind::InvalidValue,
                node.span,
                format!("a region entry must have exactly one key, found {}", entries.len()),
                "write each region as its own list item: `- us-west-2: {machine_type: t3.medium}`",
            );
            return None;
        }
        let (key, value) = &entries[0];
        let name = Spanned::<String>::from_node(key, cx)?;
        let settings = if value.value == Value::Null {
            Spanned::new(RawRegion { at: value.span, ..RawRegion::default() }, value.span)
        } else {
            Spanned::<RawRegion>::from_node(value, cx)?
        };
        Some(Self { name, settings })
    }
}

impl JsonSchema for RawRegionEntry {
    fn schema_name() -> Cow<'static, str> {
        "RegionEntry".into()
    }
    fn json_schema(generator: &mut SchemaGenerator) -> Schema {
        let region = generator.subschema_for::<RawRegion>();
        schemars::json_schema!({
            "description": "`<region name>: {settings}`, one region per list item.",
            "type": "object",
            "minProperties": 1,
            "maxProperties": 1,
            "propertyNames": { "enum": AWS_REGIONS },
            "additionalProperties": region,
        })
    }
}

/// `.spot/deployment.yaml`: what runs on the instance. The original's form, with all of
/// this nested under a `deployment:` key, is accepted too.
#[derive(Debug, Default, JsonSchema)]
#[schemars(title = "spot deployment.yaml", deny_unknown_fields)]
pub struct RawManifest {
    #[schemars(skip)]
    pub at: Span,
    /// Manifest format version; only `1`.
    pub version: Option<Spanned<u32>>,
    /// Base setup: `minimal` (default) or `docker` (adds Docker and puts the user in its group).
    pub template: Option<Spanned<String>>,
    /// Debian/Ubuntu packages to install at boot (after a package index update).
    pub packages: Option<Spanned<Vec<Spanned<String>>>>,
    /// Scripts run over SSH after boot, in `order`; each must exit 0.
    pub scripts: Option<Spanned<Vec<Spanned<RawScript>>>>,
    /// Files and folders to copy onto the instance.
    pub uploads: Option<Spanned<Vec<Spanned<RawUpload>>>>,
    /// systemd services to install, enable, start and health-check, in dependency order.
    pub services: Option<Spanned<Vec<Spanned<RawService>>>>,
    /// The build to ship: a folder or `.tar.gz` in the repository (path relative to the
    /// repository root), an `https://` URL the instance downloads, or `{source, dest}`.
    pub tarball: Option<Spanned<RawTarball>>,
    /// The original's name for a local `tarball`.
    pub tarball_source: Option<Spanned<String>>,
    /// The original's name for a `tarball` URL.
    pub tarball_url: Option<Spanned<String>>,
    /// Environment variables for scripts and services (written to `/etc/spot/env`). Not secret.
    pub env: Option<Spanned<KeyedMap<Spanned<ScalarText>>>>,
    /// Secrets taken from the environment `spot` runs in and sent over SSH only, mode 0600.
    pub secrets: Option<Spanned<Vec<Spanned<RawSecret>>>>,
}
/// Manifest keys the original documented as planned, refused with the reason.
pub const MANIFEST_UNSUPPORTED: Unsupported = &[
    ("cloud_init", CUSTOM_TEMPLATE),
    ("extends", "manifests do not inherit from each other; copy the shared parts; remove this key"),
    ("hooks", "use `scripts` with an `order`; remove this key"),
];

raw_struct!(RawManifest, "deployment.yaml", MANIFEST_UNSUPPORTED, {
    version, template, packages, scripts, uploads, services, tarball, tarball_source,
    tarball_url, env, secrets,
});

/// A script run on the instance.
#[derive(Debug, Default, JsonSchema)]
#[schemars(deny_unknown_fields)]
pub struct RawScript {
    #[schemars(skip)]
    pub at: Span,
    /// A name for logs and errors; unique; letters, digits, `-`, `_` and `.` (at most 64, not
    /// starting with `.`). Default: the file name.
    pub name: Option<Spanned<String>>,
    /// Script file, relative to `.spot/`; must start with `#!`. Give `path` or `command`.
    pub path: Option<Spanned<String>>,
    /// A shell command line instead of a file.
    pub command: Option<Spanned<String>>,
    /// Run position; give every script an `order` or none (then file order). Unique.
    pub order: Option<Spanned<u32>>,
    /// Longest run allowed (`30s`, `10m`). Default `10m`.
    pub timeout: Option<Spanned<String>>,
}
raw_struct!(RawScript, "a script", &[], { name, path, command, order, timeout });

/// A file or folder copied onto the instance.
#[derive(Debug, Default, JsonSchema)]
#[schemars(deny_unknown_fields)]
pub struct RawUpload {
    #[schemars(skip)]
    pub at: Span,
    /// File or folder relative to `.spot/`.
    pub source: Option<Spanned<String>>,
    /// Absolute destination (`destination` accepted). A folder source lands inside it;
    /// a file source lands at it, or inside it when it ends with `/`. Default `/opt/deployment/`.
    pub dest: Option<Spanned<String>>,
    /// Octal mode for the files (`"0644"`, `"600"`). Default: the local file's mode.
    pub permissions: Option<Spanned<String>>,
    /// `user` or `user:group` owning the files. Default: the login user.
    pub owner: Option<Spanned<String>>,
    /// Glob patterns to leave out, matched against paths relative to `source` with
    /// gitignore rules: `name` matches that name at any depth (`.git` never matches
    /// `.github`), `a/b` is anchored to `source`, `*` stays within a path segment, `**`
    /// crosses segments, and a match on a folder drops everything under it.
    pub exclude: Option<Spanned<Vec<Spanned<String>>>>,
    /// Also leave out what the source folder's `.gitignore` files ignore. Default false.
    pub gitignore: Option<Spanned<bool>>,
}
raw_struct!(RawUpload, "an upload", &[], {
    source, dest | "destination", permissions, owner, exclude, gitignore,
});

/// A systemd service.
#[derive(Debug, Default, JsonSchema)]
#[schemars(deny_unknown_fields)]
pub struct RawService {
    #[schemars(skip)]
    pub at: Span,
    /// Unit name without `.service`; unique.
    pub name: Option<Spanned<String>>,
    /// Unit file relative to `.spot/` (`path` accepted); needs `[Unit]`, `[Service]` with
    /// `ExecStart=`, `[Install]`.
    pub file: Option<Spanned<String>>,
    /// `systemctl enable` it. Default true.
    pub enabled: Option<Spanned<bool>>,
    /// Start it (and wait for its health check). Default true.
    pub start: Option<Spanned<bool>>,
    /// Services to start first, besides those named in the unit's `After=`/`Requires=`/`Wants=`.
    pub depends_on: Option<Spanned<Vec<Spanned<String>>>>,
    /// How to know it works. Default: the unit is active.
    pub health_check: Option<Spanned<RawHealthCheck>>,
}
raw_struct!(RawService, "a service", &[], {
    name, file | "path", enabled, start, depends_on, health_check,
});

/// One probe: exactly one of `command`, `tcp`, `http`.
#[derive(Debug, Default, JsonSchema)]
#[schemars(deny_unknown_fields)]
pub struct RawHealthCheck {
    #[schemars(skip)]
    pub at: Span,
    /// A shell command that exits 0 when healthy.
    pub command: Option<Spanned<String>>,
    /// A TCP port on the instance that accepts connections when healthy.
    pub tcp: Option<Spanned<u32>>,
    /// An `http://` URL on the instance that answers 2xx when healthy.
    pub http: Option<Spanned<String>>,
    /// How long to keep trying. Default `60s`.
    pub timeout: Option<Spanned<String>>,
    /// Pause between tries. Default `2s`.
    pub interval: Option<Spanned<String>>,
}
raw_struct!(RawHealthCheck, "a health check", &[], { command, tcp, http, timeout, interval });

/// `tarball: {source, dest}`.
#[derive(Debug, Default, JsonSchema)]
#[schemars(deny_unknown_fields)]
pub struct RawTarballSpec {
    #[schemars(skip)]
    pub at: Span,
    /// Folder or `.tar.gz` relative to the repository root, or an `https://` URL.
    pub source: Option<Spanned<String>>,
    /// Where it is unpacked (`destination`, `extract_to` accepted). Default `/opt/deployment`.
    pub dest: Option<Spanned<String>>,
    /// A URL build's sha256 (64 hex digits): the instance checks the download against it
    /// before unpacking.
    pub sha256: Option<Spanned<String>>,
    /// `true` lets `source` be an `http://` URL (unencrypted: anyone on the way can swap
    /// the build, so give `sha256` too). Default: `https://` only.
    pub allow_http: Option<Spanned<bool>>,
}
raw_struct!(RawTarballSpec, "`tarball`", &[(
    "checksum",
    "spot checks the bundle's sha256 on every instance itself; remove this key",
)], { source, dest | "destination" | "extract_to", sha256, allow_http });

/// `secrets: [{name, env, dest}]`.
#[derive(Debug, Default, JsonSchema)]
#[schemars(deny_unknown_fields)]
pub struct RawSecretSpec {
    #[schemars(skip)]
    pub at: Span,
    /// Variable name on the instance.
    pub name: Option<Spanned<String>>,
    /// Variable to read where `spot` runs. Default: `name`. Never one of the runner's own:
    /// names starting `AWS_`, `ACTIONS_`, `GITHUB_`, `GH_`, `INPUT_`, `RUNNER_`, `STATE_` or
    /// `SPOT_` are refused.
    pub env: Option<Spanned<String>>,
    /// File written with mode 0600. Default `/etc/spot/secrets/<name>`.
    pub dest: Option<Spanned<String>>,
}
raw_struct!(RawSecretSpec, "a secret", &[], { name, env, dest });

/// A plain string or a mapping with more settings.
macro_rules! string_or_spec {
    ($ty:ident, $spec:ident, $doc:literal) => {
        #[doc = $doc]
        #[derive(Debug)]
        pub enum $ty {
            Short(Spanned<String>),
            Full($spec),
        }

        impl FromNode for $ty {
            fn from_node(node: &Node, cx: &mut Cx) -> Option<Self> {
                match &node.value {
                    Value::Map(_) => $spec::from_node(node, cx).map($ty::Full),
                    _ => Spanned::<String>::from_node(node, cx).map($ty::Short),
                }
            }
        }

        impl JsonSchema for $ty {
            fn schema_name() -> Cow<'static, str> {
                stringify!($ty).into()
            }
            fn json_schema(generator: &mut SchemaGenerator) -> Schema {
                let full = generator.subschema_for::<$spec>();
                schemars::json_schema!({ "description": $doc, "anyOf": [{ "type": "string" }, full] })
            }
        }
    };
}
string_or_spec!(RawTarball, RawTarballSpec, "A path or URL, or `{source, dest}`.");
string_or_spec!(RawSecret, RawSecretSpec, "A variable name, or `{name, env, dest}`.");

/// Reads `deployment.yaml`, in either the flat form or the original's `deployment:` form.
pub fn read_manifest(node: &Node, cx: &mut Cx) -> Option<RawManifest> {
    let Some(inner) = node.get("deployment") else {
        return RawManifest::from_node(node, cx);
    };
    let mut top = MapReader::new(node, "deployment.yaml", cx)?;
    let version = top.take::<u32>("version", &[], cx);
    top.take_node("deployment", &[], cx);
    // Anything else at the top would be silently dropped by the original: say where it goes.
    let stray: Vec<&Node> = match &node.value {
        Value::Map(entries) => entries
            .iter()
            .map(|(k, _)| k)
            .filter(|k| !matches!(k.as_scalar(), Some("version" | "deployment")))
            .collect(),
        _ => Vec::new(),
    };
    for key in stray {
        let name = key.as_scalar().unwrap_or_default();
        let known = RawManifest::KEYS.contains(&name);
        cx.error(
            if known { super::diagnostic::Kind::InvalidValue } else { super::diagnostic::Kind::UnknownKey },
            key.span,
            format!("`{name}` is outside the `deployment:` section"),
            if known {
                "with a `deployment:` section, indent this key under it (or drop the `deployment:` wrapper)"
                    .to_string()
            } else {
                format!("unknown key; known keys: version, deployment, {}", RawManifest::KEYS.join(", "))
            },
        );
    }
    let mut manifest = RawManifest::from_node(inner, cx)?;
    if version.is_some() {
        manifest.version = version;
    }
    Some(manifest)
}
