//! The cloud, in spot's own words: one trait every cloud call goes through.
//!
//! [`Cloud`] names the few things spot asks of a cloud (find an image, the network,
//! create the per-deployment resources, launch a fleet, describe and delete by tags).
//! [`ec2`] is its only implementation and the only module that imports `aws_sdk_ec2`.
//! Errors are split into the kinds any implementation can hit ([`ErrorKind`]) and an
//! opaque message; callers decide on kinds, never on SDK types.

pub mod ec2;
pub mod retry;

use std::collections::BTreeMap;
use std::fmt;
use std::future::Future;

use serde::{Deserialize, Serialize};

pub use crate::ingress::Rule;
use crate::manifest::types::Arch;

/// Tags as key -> value.
pub type Tags = BTreeMap<String, String>;

/// What kind of resource spot made.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Kind {
    Instance,
    Fleet,
    SecurityGroup,
    KeyPair,
    LaunchTemplate,
    Vpc,
    Subnet,
    InternetGateway,
    RouteTable,
}

impl Kind {
    /// The order teardown deletes in: what depends on others goes first.
    pub const TEARDOWN: [Kind; 9] = [
        Kind::Instance,
        Kind::Fleet,
        Kind::LaunchTemplate,
        Kind::KeyPair,
        Kind::SecurityGroup,
        Kind::RouteTable,
        Kind::InternetGateway,
        Kind::Subnet,
        Kind::Vpc,
    ];
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Kind::Instance => "instance",
            Kind::Fleet => "fleet",
            Kind::SecurityGroup => "security group",
            Kind::KeyPair => "key pair",
            Kind::LaunchTemplate => "launch template",
            Kind::Vpc => "vpc",
            Kind::Subnet => "subnet",
            Kind::InternetGateway => "internet gateway",
            Kind::RouteTable => "route table",
        })
    }
}

/// One resource spot created (or found by its tags).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Resource {
    pub kind: Kind,
    pub region: String,
    pub id: String,
    /// For key pairs and launch templates, deletion is by name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub tags: Tags,
}

/// Market an instance runs in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Market {
    Spot,
    OnDemand,
}

impl fmt::Display for Market {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Market::Spot => "spot",
            Market::OnDemand => "on-demand",
        })
    }
}

/// A machine image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Image {
    pub id: String,
    pub arch: Arch,
    /// Where the root volume attaches (`/dev/sda1` on Ubuntu).
    pub root_device: String,
}

/// A subnet instances can launch into.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Subnet {
    pub id: String,
    pub az: String,
}

/// Where a region's instances go, and what was created to get there.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Network {
    pub vpc_id: String,
    pub subnets: Vec<Subnet>,
}

/// Inputs for the per-deployment launch template. The user-data holds the host private
/// key, so `Debug` omits it.
#[derive(Clone)]
pub struct TemplateSpec {
    pub name: String,
    /// Image used unless an override names another (mixed architectures).
    pub image_id: String,
    pub root_device: String,
    pub security_group_id: String,
    pub key_name: String,
    pub user_data: Vec<u8>,
    pub storage_gb: u32,
    pub public_ip: bool,
    pub tags: Tags,
}

impl fmt::Debug for TemplateSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TemplateSpec")
            .field("name", &self.name)
            .field("image_id", &self.image_id)
            .field("security_group_id", &self.security_group_id)
            .field("user_data_bytes", &self.user_data.len())
            .finish_non_exhaustive()
    }
}

/// One capacity pool to try: an instance type in a subnet, with its image.
#[derive(Debug, Clone, PartialEq)]
pub struct Pool {
    pub instance_type: String,
    pub subnet_id: String,
    pub az: String,
    pub image_id: String,
}

/// An instant fleet request.
#[derive(Debug, Clone)]
pub struct FleetRequest {
    pub template_id: String,
    pub pools: Vec<Pool>,
    pub count: u32,
    pub market: Market,
    pub max_price: Option<f64>,
    pub tags: Tags,
    /// Makes a retried request idempotent on EC2.
    pub client_token: String,
}

/// An instance a fleet launched.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Launched {
    pub id: String,
    pub instance_type: String,
    pub az: String,
    pub market: Market,
}

/// Why a pool gave nothing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PoolError {
    pub instance_type: String,
    pub az: String,
    pub code: String,
    pub message: String,
}

impl PoolError {
    /// No capacity (or no quota) rather than a mistake in the request.
    pub fn is_capacity(&self) -> bool {
        is_capacity_code(&self.code)
    }
}

/// Error codes that mean "no room here now" rather than "wrong request".
pub fn is_capacity_code(code: &str) -> bool {
    matches!(
        code,
        "InsufficientInstanceCapacity"
            | "UnfulfillableCapacity"
            | "MaxSpotInstanceCountExceeded"
            | "InsufficientCapacity"
            | "SpotMaxPriceTooLow"
            | "InstanceLimitExceeded"
            | "VcpuLimitExceeded"
            | "capacity-not-available"
            | "price-too-low"
    )
}

/// What a fleet call produced.
#[derive(Debug, Clone, Default)]
pub struct FleetOutcome {
    pub fleet_id: Option<String>,
    pub launched: Vec<Launched>,
    pub errors: Vec<PoolError>,
}

/// An instance as described now.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Instance {
    pub id: String,
    pub region: String,
    pub az: String,
    pub instance_type: String,
    pub market: Market,
    /// pending, running, shutting-down, terminated, stopping, stopped.
    pub state: String,
    pub public_ip: Option<String>,
    pub private_ip: Option<String>,
    pub tags: Tags,
    /// EC2's reason for the last state change (`Server.SpotInstanceTermination: ...`),
    /// when it gives one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub state_reason: Option<String>,
    /// `http://<address>:<port>/` for each of its HTTP ports (its `spot:http-ports` tag),
    /// in the order written; empty without an address.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub urls: Vec<String>,
}

impl Instance {
    /// A running spot instance in us-east-1a, for tests.
    #[cfg(test)]
    pub fn running(id: &str, tags: Tags) -> Self {
        Self {
            id: id.to_string(),
            region: "us-east-1".into(),
            az: "us-east-1a".into(),
            instance_type: "t3.micro".into(),
            market: Market::Spot,
            state: "running".into(),
            public_ip: None,
            private_ip: None,
            tags,
            state_reason: None,
            urls: Vec::new(),
        }
    }

    /// Pure: the URLs of an instance at `address` with these `tags`.
    pub fn urls_of(address: Option<&str>, tags: &Tags) -> Vec<String> {
        let (Some(address), Some(ports)) = (address, tags.get(crate::plan::tag::HTTP_PORTS)) else {
            return Vec::new();
        };
        ports
            .split_whitespace()
            .filter_map(|p| p.parse::<u16>().ok())
            .map(|p| crate::ingress::url(address, p))
            .collect()
    }

    /// Where to reach it: the public address, else the private one.
    pub fn address(&self) -> Option<&str> {
        self.public_ip.as_deref().or(self.private_ip.as_deref())
    }
}

/// The kinds of failure any cloud can have; decisions are made on these.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    NotFound,
    /// The resource exists already (a retried create, or a redeploy).
    Duplicate,
    /// Still in use by something else (a security group with instances shutting down).
    InUse,
    Capacity,
    /// Throttling or a 5xx, a reset or a timeout: worth retrying.
    Transient,
    /// Credentials missing, expired or not allowed.
    Auth,
    Other,
}

/// A failed cloud call: its kind, the provider's code and message, and where.
#[derive(Debug, Clone)]
pub struct Error {
    pub kind: ErrorKind,
    pub code: String,
    pub message: String,
    pub operation: &'static str,
    pub region: String,
}

impl Error {
    /// EC2 refused the call before doing anything (throttling): sending it again cannot
    /// make a second of anything.
    pub fn unprocessed(&self) -> bool {
        matches!(self.code.as_str(), "RequestLimitExceeded" | "Throttling" | "ThrottlingException")
    }

    /// The region will not answer this account at all: not enabled for it (`OptInRequired`),
    /// or closed to these credentials (`UnauthorizedOperation`, an SCP or a policy that
    /// limits regions).
    pub fn region_refused(&self) -> bool {
        matches!(self.code.as_str(), "OptInRequired" | "UnauthorizedOperation")
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} in {} failed: {}", self.operation, self.region, self.code)?;
        if !self.message.is_empty() {
            write!(f, ": {}", self.message)?;
        }
        Ok(())
    }
}

impl std::error::Error for Error {}

pub type Result<T> = std::result::Result<T, Error>;

/// Everything spot asks of a cloud. Every method is about one region.
pub trait Cloud: Send + Sync {
    /// The newest Canonical Ubuntu 24.04 LTS image for `arch`.
    fn latest_ubuntu(&self, region: &str, arch: Arch) -> impl Future<Output = Result<Image>> + Send;
    /// An explicit image, if it exists.
    fn image(&self, region: &str, image_id: &str) -> impl Future<Output = Result<Option<Image>>> + Send;
    /// The default VPC and its default subnets, one per AZ.
    fn default_network(&self, region: &str) -> impl Future<Output = Result<Network>> + Send;
    /// A tagged VPC with a public subnet per AZ; calls `made` for each part as it exists.
    fn create_network(
        &self,
        region: &str,
        tags: &Tags,
        made: &(dyn Fn(Resource) + Sync),
    ) -> impl Future<Output = Result<Network>> + Send;
    /// A tagged security group holding the inbound `rules` (adopted if it exists).
    fn create_security_group(
        &self,
        region: &str,
        name: &str,
        vpc_id: &str,
        rules: &[Rule],
        tags: &Tags,
    ) -> impl Future<Output = Result<Resource>> + Send;
    /// Imports the deployment's public key (replacing a stale one of the same name).
    fn import_key(
        &self,
        region: &str,
        name: &str,
        public_key: &str,
        tags: &Tags,
    ) -> impl Future<Output = Result<Resource>> + Send;
    /// The launch template (replacing a stale one of the same name).
    fn create_template(
        &self,
        region: &str,
        spec: &TemplateSpec,
    ) -> impl Future<Output = Result<Resource>> + Send;
    /// One instant fleet.
    fn launch(
        &self,
        region: &str,
        request: &FleetRequest,
    ) -> impl Future<Output = Result<FleetOutcome>> + Send;
    /// Instances carrying all of `tags`, any state but terminated.
    fn instances(&self, region: &str, tags: &Tags) -> impl Future<Output = Result<Vec<Instance>>> + Send;
    /// Instances carrying all of `tags` in every state, terminated included, each with
    /// EC2's reason for its last state change: how a run sees one EC2 took back.
    fn watched(&self, region: &str, tags: &Tags) -> impl Future<Output = Result<Vec<Instance>>> + Send;
    /// Everything carrying all of `tags`: the instances not terminated, and every other
    /// resource; instant fleets (which EC2 lists only by id) through the fleet-id tag of
    /// their instances, terminated ones included.
    fn tagged(
        &self,
        region: &str,
        tags: &Tags,
    ) -> impl Future<Output = Result<(Vec<Instance>, Vec<Resource>)>> + Send;
    /// Terminates instances; answers the ids EC2 does not know: gone long ago, or
    /// launched so recently that EC2's reads have not caught up (eventual consistency).
    fn terminate(&self, region: &str, ids: &[String]) -> impl Future<Output = Result<Vec<String>>> + Send;
    /// Deletes one non-instance resource (already-gone is fine).
    fn delete(&self, resource: &Resource) -> impl Future<Output = Result<()>> + Send;
    /// Makes one of our security groups hold exactly `rules` of spot's own: missing ones
    /// are added, spot's others revoked ([`crate::ingress::delta`]); rules made by hand stay.
    fn set_ingress(
        &self,
        region: &str,
        group_id: &str,
        rules: &[Rule],
    ) -> impl Future<Output = Result<()>> + Send;
    /// Lets `public_key` log in to `instance` as `user` for the next 60 seconds (EC2
    /// Instance Connect): how a later run gets back into a kept deployment.
    fn push_ssh_key(
        &self,
        instance: &Instance,
        user: &str,
        public_key: &str,
    ) -> impl Future<Output = Result<()>> + Send;
    /// Every region enabled for the account (asked in `region`).
    fn regions(&self, region: &str) -> impl Future<Output = Result<Vec<String>>> + Send;
    /// Current spot prices (USD/hour) by (instance type, AZ).
    fn spot_prices(
        &self,
        region: &str,
        types: &[String],
    ) -> impl Future<Output = Result<BTreeMap<(String, String), f64>>> + Send;
}
