//! [`Cloud`] on AWS EC2: the only module that imports `aws_sdk_ec2` (and EC2 Instance
//! Connect's `aws_sdk_ec2instanceconnect`).
//!
//! One SDK client per region, built from the standard credential chain and region
//! handling; `endpoint_url` (or the SDK's own `AWS_ENDPOINT_URL`) points every call at
//! LocalStack, moto or a test proxy. The SDK's own retries are off: [`super::retry`]
//! retries transient failures with jittered backoff inside a budget, so there is one
//! retry policy to reason about. Every create call tags the resource in the same call.

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;
use std::time::Duration;

use aws_config::BehaviorVersion;
use aws_config::retry::RetryConfig;
use aws_config::timeout::TimeoutConfig;
use aws_sdk_ec2::Client;
use aws_sdk_ec2::config::Region;
use aws_sdk_ec2::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_ec2::primitives::Blob;
use aws_sdk_ec2::types::{
    AttributeBooleanValue, DefaultTargetCapacityType, Filter, FleetLaunchTemplateConfigRequest,
    FleetLaunchTemplateOverridesRequest, FleetLaunchTemplateSpecificationRequest,
    FleetOnDemandAllocationStrategy, FleetType, InstanceLifecycle, InstanceType, IpPermission, IpRange,
    Ipv6Range, LaunchTemplateBlockDeviceMappingRequest, LaunchTemplateEbsBlockDeviceRequest,
    LaunchTemplateHttpTokensState, LaunchTemplateInstanceMetadataOptionsRequest,
    LaunchTemplateInstanceNetworkInterfaceSpecificationRequest, LaunchTemplateTagSpecificationRequest,
    OnDemandOptionsRequest, RequestLaunchTemplateData, ResourceType, ShutdownBehavior,
    SpotAllocationStrategy, SpotOptionsRequest, Tag, TagSpecification, TargetCapacitySpecificationRequest,
    VolumeType,
};
use aws_smithy_runtime_api::http::Response as HttpResponse;
use base64::Engine as _;

use super::retry::{self, Policy};
use super::{
    Cloud, Error, ErrorKind, FleetOutcome, FleetRequest, Image, Instance, Kind, Launched, Market, Network,
    PoolError, Resource, Result, Rule, Subnet, Tags, TemplateSpec, is_capacity_code,
};
use crate::ingress::{self, canonical_cidr};
use crate::manifest::types::{Arch, Protocol};
use crate::plan::tag;

/// Canonical's AWS account, owner of the official Ubuntu images.
const CANONICAL: &str = "099720109477";
/// Instance states that are not gone.
const LIVE: [&str; 5] = ["pending", "running", "stopping", "stopped", "shutting-down"];
/// Address space of a dedicated VPC.
const VPC_CIDR: &str = "10.77.0.0/16";

/// EC2 through the AWS SDK.
#[derive(Debug)]
pub struct Ec2 {
    base: aws_config::SdkConfig,
    clients: Mutex<HashMap<String, Client>>,
    /// EC2 Instance Connect, one client per region like EC2's.
    connect: Mutex<HashMap<String, aws_sdk_ec2instanceconnect::Client>>,
    policy: Policy,
}

impl Ec2 {
    /// Loads credentials and settings the standard way; `endpoint_url` overrides the
    /// endpoint for every call.
    pub async fn new(endpoint_url: Option<&str>) -> Self {
        let mut loader = aws_config::defaults(BehaviorVersion::latest())
            .retry_config(RetryConfig::disabled())
            .timeout_config(
                TimeoutConfig::builder()
                    .connect_timeout(Duration::from_secs(5))
                    .operation_attempt_timeout(Duration::from_secs(30))
                    .build(),
            );
        if let Some(url) = endpoint_url {
            loader = loader.endpoint_url(url);
        }
        if let Some(credentials) = MINTED.get() {
            loader = loader.credentials_provider(credentials.clone());
        }
        Self {
            base: loader.load().await,
            clients: Mutex::new(HashMap::new()),
            connect: Mutex::new(HashMap::new()),
            policy: Policy::default(),
        }
    }

    /// Whether EC2 calls go to an overridden endpoint (an emulator, a proxy): the
    /// `--endpoint-url` flag, `AWS_ENDPOINT_URL`, `AWS_ENDPOINT_URL_EC2`, or a profile's
    /// `endpoint_url`, as the SDK resolves them for EC2.
    pub fn endpoint_overridden(&self) -> bool {
        let key = aws_types::service_config::ServiceConfigKey::builder()
            .service_id("EC2")
            .env("AWS_ENDPOINT_URL")
            .profile("endpoint_url")
            .build();
        self.base.endpoint_url().is_some()
            || key
                .is_ok_and(|key| self.base.service_config().and_then(|conf| conf.load_config(key)).is_some())
    }

    fn connect_client(&self, region: &str) -> aws_sdk_ec2instanceconnect::Client {
        let mut clients = self.connect.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        clients
            .entry(region.to_string())
            .or_insert_with(|| {
                let config = aws_sdk_ec2instanceconnect::config::Builder::from(&self.base)
                    .region(Region::new(region.to_string()))
                    .build();
                aws_sdk_ec2instanceconnect::Client::from_conf(config)
            })
            .clone()
    }

    fn client(&self, region: &str) -> Client {
        let mut clients = self.clients.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        clients
            .entry(region.to_string())
            .or_insert_with(|| {
                let config = aws_sdk_ec2::config::Builder::from(&self.base)
                    .region(Region::new(region.to_string()))
                    .build();
                Client::from_conf(config)
            })
            .clone()
    }
}

/// Credentials minted from the runner's OIDC token; every later client uses them.
static MINTED: std::sync::OnceLock<aws_credential_types::Credentials> = std::sync::OnceLock::new();

/// Exchanges a web identity token (the runner's OIDC token) for credentials of `role_arn`
/// (`AssumeRoleWithWebIdentity`, an unsigned call) and makes every EC2 client created
/// afterwards in this process use them. Returns their expiry (RFC 3339).
pub async fn assume_role_with_web_identity(
    endpoint_url: Option<&str>,
    role_arn: &str,
    session_name: &str,
    token: &crate::keys::Secret,
) -> Result<String> {
    let mut loader = aws_config::defaults(BehaviorVersion::latest())
        .no_credentials()
        .timeout_config(TimeoutConfig::builder().operation_attempt_timeout(Duration::from_secs(30)).build());
    if let Some(url) = endpoint_url {
        loader = loader.endpoint_url(url);
    }
    let config = loader.load().await;
    let mut sts = aws_sdk_sts::config::Builder::from(&config);
    if config.region().is_none() {
        sts = sts.region(Region::new("us-east-1"));
    }
    let answer = aws_sdk_sts::Client::from_conf(sts.build())
        .assume_role_with_web_identity()
        .role_arn(role_arn)
        .role_session_name(session_name)
        .web_identity_token(token.expose())
        .duration_seconds(3600)
        .send()
        .await
        .map_err(|e| Error {
            kind: ErrorKind::Auth,
            code: e.code().unwrap_or("AssumeRoleWithWebIdentity").to_string(),
            message: format!(
                "cannot assume {role_arn} with the runner's OIDC token: {}",
                e.message().unwrap_or(&e.to_string())
            ),
            operation: "AssumeRoleWithWebIdentity",
            region: String::new(),
        })?;
    let c = answer.credentials().ok_or_else(|| Error {
        kind: ErrorKind::Auth,
        code: "NoCredentials".into(),
        message: "AssumeRoleWithWebIdentity answered without credentials".into(),
        operation: "AssumeRoleWithWebIdentity",
        region: String::new(),
    })?;
    let expires = std::time::SystemTime::try_from(*c.expiration()).ok();
    let credentials = aws_credential_types::Credentials::new(
        c.access_key_id(),
        c.secret_access_key(),
        Some(c.session_token().to_string()),
        expires,
        "github-oidc",
    );
    let _ = MINTED.set(credentials);
    Ok(c.expiration().to_string())
}

/// `rules` as EC2's permissions: one per protocol and port range, each source with its
/// rule's description.
fn permissions(rules: &[Rule]) -> Vec<IpPermission> {
    let mut keys: Vec<(Protocol, u16, u16)> = Vec::new();
    for r in rules {
        if !keys.contains(&(r.protocol, r.from_port, r.to_port)) {
            keys.push((r.protocol, r.from_port, r.to_port));
        }
    }
    keys.into_iter()
        .map(|(protocol, from, to)| {
            let of =
                || rules.iter().filter(move |r| (r.protocol, r.from_port, r.to_port) == (protocol, from, to));
            let v4: Vec<IpRange> = of()
                .filter(|r| !r.is_v6())
                .map(|r| IpRange::builder().cidr_ip(&r.cidr).description(&r.description).build())
                .collect();
            let v6: Vec<Ipv6Range> = of()
                .filter(|r| r.is_v6())
                .map(|r| Ipv6Range::builder().cidr_ipv6(&r.cidr).description(&r.description).build())
                .collect();
            IpPermission::builder()
                .ip_protocol(protocol.as_str())
                .from_port(i32::from(from))
                .to_port(i32::from(to))
                .set_ip_ranges((!v4.is_empty()).then_some(v4))
                .set_ipv6_ranges((!v6.is_empty()).then_some(v6))
                .build()
        })
        .collect()
}

/// The CIDR rules of an EC2 permission that spot could have made (TCP or UDP, a port
/// range); others (all traffic, ICMP, other groups, prefix lists) are not spot's.
fn rules_of(p: &IpPermission) -> Vec<Rule> {
    let protocol = match p.ip_protocol() {
        Some("tcp" | "6") => Protocol::Tcp,
        Some("udp" | "17") => Protocol::Udp,
        _ => return Vec::new(),
    };
    let port = |n: Option<i32>| n.and_then(|n| u16::try_from(n).ok());
    let (Some(from_port), Some(to_port)) = (port(p.from_port()), port(p.to_port())) else {
        return Vec::new();
    };
    let rule = |cidr: &str, description: Option<&str>| Rule {
        protocol,
        from_port,
        to_port,
        cidr: canonical_cidr(cidr),
        description: description.unwrap_or_default().to_string(),
    };
    let v4 = p.ip_ranges().iter().filter_map(|r| Some(rule(r.cidr_ip()?, r.description())));
    let v6 = p.ipv6_ranges().iter().filter_map(|r| Some(rule(r.cidr_ipv6()?, r.description())));
    v4.chain(v6).collect()
}

/// Maps an SDK failure to spot's error kinds.
fn classify<E: ProvideErrorMetadata + std::error::Error + 'static>(
    operation: &'static str,
    region: &str,
    err: &SdkError<E, HttpResponse>,
) -> Error {
    let (kind, code, message) = match err {
        SdkError::ServiceError(ctx) => {
            let code = ctx.err().code().unwrap_or("Unknown").to_string();
            let message = ctx.err().message().unwrap_or_default().to_string();
            (kind_for(&code), code, message)
        }
        SdkError::TimeoutError(_) => {
            (ErrorKind::Transient, "Timeout".to_string(), "no answer in time".to_string())
        }
        SdkError::DispatchFailure(_) | SdkError::ResponseError(_) => {
            let text = concise(&aws_sdk_ec2::error::DisplayErrorContext(err).to_string());
            if text.contains("credential") {
                (ErrorKind::Auth, "NoCredentials".to_string(), text)
            } else {
                (ErrorKind::Transient, "NetworkError".to_string(), text)
            }
        }
        _ => (
            ErrorKind::Other,
            "RequestError".to_string(),
            concise(&aws_sdk_ec2::error::DisplayErrorContext(err).to_string()),
        ),
    };
    // A 5xx without a recognised code is still the server's problem: retry it.
    let kind = match (err, kind) {
        (SdkError::ServiceError(ctx), ErrorKind::Other) if ctx.raw().status().as_u16() >= 500 => {
            ErrorKind::Transient
        }
        (_, kind) => kind,
    };
    Error { kind, code, message, operation, region: region.to_string() }
}

/// The human part of an SDK error chain, without the debug dump that follows it.
fn concise(text: &str) -> String {
    let cut = ["(DispatchFailure", "(ResponseError", "(TimeoutError", "(ConstructionFailure"]
        .iter()
        .filter_map(|marker| text.find(marker))
        .min()
        .unwrap_or(text.len());
    text[..cut].trim().chars().take(400).collect()
}

fn kind_for(code: &str) -> ErrorKind {
    match code {
        "RequestLimitExceeded"
        | "Throttling"
        | "ThrottlingException"
        | "InternalError"
        | "InternalFailure"
        | "ServiceUnavailable"
        | "Unavailable"
        | "RequestTimeout"
        | "RequestTimeoutException"
        | "ServiceException"
        | "EC2InstanceUnavailableException" => ErrorKind::Transient,
        "DependencyViolation" | "InvalidGroup.InUse" => ErrorKind::InUse,
        "AuthFailure"
        | "UnauthorizedOperation"
        | "ExpiredToken"
        | "InvalidClientTokenId"
        | "OptInRequired"
        | "RequestExpired"
        | "SignatureDoesNotMatch"
        | "AccessDeniedException" => ErrorKind::Auth,
        c if c.contains("NotFound") || c.ends_with(".Malformed") && c.starts_with("InvalidInstanceID") => {
            ErrorKind::NotFound
        }
        c if c.ends_with(".Duplicate") || c.contains("AlreadyExists") => ErrorKind::Duplicate,
        c if is_capacity_code(c) => ErrorKind::Capacity,
        _ => ErrorKind::Other,
    }
}

fn tag_list(tags: &Tags) -> Vec<Tag> {
    tags.iter().map(|(k, v)| Tag::builder().key(k).value(v).build()).collect()
}

fn tags_of(tags: &[Tag]) -> Tags {
    tags.iter()
        .filter_map(|t| Some((t.key()?.to_string(), t.value().unwrap_or_default().to_string())))
        .collect()
}

fn spec(resource: &str, tags: &Tags) -> TagSpecification {
    TagSpecification::builder()
        .resource_type(ResourceType::from(resource))
        .set_tags(Some(tag_list(tags)))
        .build()
}

fn tag_filters(tags: &Tags) -> Vec<Filter> {
    tags.iter().map(|(k, v)| Filter::builder().name(format!("tag:{k}")).values(v).build()).collect()
}

/// A link between two of this run's new parts (a gateway to its VPC, a route, a table to
/// a subnet) that EC2 says exists already: a retry whose first answer was lost made it.
fn made_already<T>(result: Result<T>) -> Result<()> {
    match result {
        Ok(_) => Ok(()),
        Err(e) if matches!(e.code.as_str(), "Resource.AlreadyAssociated" | "RouteAlreadyExists") => Ok(()),
        Err(e) => Err(e),
    }
}

/// Filters for what this run of this deployment made (its `spot:deployment` and
/// `spot:run-id` among `tags`).
fn run_filters(tags: &Tags) -> Vec<Filter> {
    let mine: Tags = tags
        .iter()
        .filter(|(k, _)| [tag::DEPLOYMENT, tag::RUN_ID].contains(&k.as_str()))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    tag_filters(&mine)
}

fn filter(name: &str, values: &[&str]) -> Filter {
    Filter::builder().name(name).set_values(Some(values.iter().map(|v| (*v).to_string()).collect())).build()
}

fn arch_of(value: Option<&aws_sdk_ec2::types::ArchitectureValues>) -> Option<Arch> {
    match value.map(aws_sdk_ec2::types::ArchitectureValues::as_str) {
        Some("x86_64") => Some(Arch::X86_64),
        Some("arm64") => Some(Arch::Arm64),
        _ => None,
    }
}

fn resource(kind: Kind, region: &str, id: &str, name: Option<&str>, tags: Tags) -> Resource {
    Resource { kind, region: region.to_string(), id: id.to_string(), name: name.map(str::to_string), tags }
}

/// `retry::run` over an SDK call: classify, then retry transient kinds.
macro_rules! call {
    ($self:ident, $region:expr, $op:literal, $build:expr) => {
        retry::run(&$self.policy, || async { $build.send().await.map_err(|e| classify($op, $region, &e)) })
            .await
    };
}

/// A create EC2 takes no client token for: `$build` is sent again after a failure that may
/// have made it (a timeout, a reset) only when `$find` (this run's tags) does not find
/// it. Answers `$id` of the output, or what `$find` found.
macro_rules! create_checked {
    ($self:ident, $region:expr, $op:literal, $build:expr, $id:expr, $find:expr) => {
        retry::run_checked(
            &$self.policy,
            || async { $build.send().await.map_err(|e| classify($op, $region, &e)).map($id) },
            || $find,
        )
        .await
    };
}

/// Every page of a describe that pages on EC2: one `call!` per page, following
/// `NextToken` until EC2 gives none. A token answered twice in a row is an error, not a loop.
macro_rules! pages {
    ($self:ident, $region:expr, $op:literal, $build:expr) => {
        async {
            let mut pages = Vec::new();
            let mut token: Option<String> = None;
            loop {
                let out = call!($self, $region, $op, $build.set_next_token(token.clone()))?;
                let next = out.next_token().filter(|t| !t.is_empty()).map(str::to_string);
                pages.push(out);
                match next {
                    None => break Ok::<_, Error>(pages),
                    Some(t) if token.as_ref() == Some(&t) => break Err(repeated_token($op, $region)),
                    Some(t) => token = Some(t),
                }
            }
        }
        .await
    };
}

fn repeated_token(operation: &'static str, region: &str) -> Error {
    Error {
        kind: ErrorKind::Other,
        code: "RepeatedNextToken".into(),
        message: "EC2 answered the same NextToken twice; stopped paging".into(),
        operation,
        region: region.to_string(),
    }
}

/// A fleet EC2 kept (its answer's `UnsuccessfulFleetDeletions`) as an error: gone
/// already is not one, an unexpected error is worth retrying.
fn unsuccessful_deletion(region: &str, fleet_id: &str, code: &str, message: &str) -> Option<Error> {
    let kind = match code {
        "fleetIdDoesNotExist" => return None,
        "unexpectedError" => ErrorKind::Transient,
        _ => ErrorKind::Other,
    };
    Some(Error {
        kind,
        code: code.to_string(),
        message: format!("EC2 did not delete fleet {fleet_id}: {message}"),
        operation: "DeleteFleets",
        region: region.to_string(),
    })
}

/// Spot's view of one described instance.
fn instance_of(region: &str, i: &aws_sdk_ec2::types::Instance) -> Instance {
    let mut instance = Instance {
        id: i.instance_id().unwrap_or_default().to_string(),
        region: region.to_string(),
        az: i.placement().and_then(|p| p.availability_zone()).unwrap_or_default().to_string(),
        instance_type: i.instance_type().map(|t| t.as_str().to_string()).unwrap_or_default(),
        market: if i.instance_lifecycle().is_some_and(|l| l.as_str() == "spot") {
            Market::Spot
        } else {
            Market::OnDemand
        },
        state: i.state().and_then(|s| s.name()).map(|n| n.as_str().to_string()).unwrap_or_default(),
        public_ip: i.public_ip_address().map(str::to_string),
        private_ip: i.private_ip_address().map(str::to_string),
        tags: tags_of(i.tags()),
        state_reason: i
            .state_reason()
            .and_then(|r| r.message().filter(|m| !m.is_empty()).or(r.code()))
            .filter(|m| !m.is_empty())
            .map(str::to_string),
        urls: Vec::new(),
    };
    instance.urls = Instance::urls_of(instance.address(), &instance.tags);
    instance
}

impl Ec2 {
    /// Instances carrying all of `tags` in `states` (every state if empty), every page.
    async fn described(
        &self,
        region: &str,
        tags: &Tags,
        states: &[&str],
    ) -> Result<Vec<aws_sdk_ec2::types::Instance>> {
        let client = self.client(region);
        let mut filters = tag_filters(tags);
        if !states.is_empty() {
            filters.push(filter("instance-state-name", states));
        }
        let pages = pages!(
            self,
            region,
            "DescribeInstances",
            client.describe_instances().set_filters(Some(filters.clone()))
        )?;
        Ok(pages
            .iter()
            .flat_map(aws_sdk_ec2::operation::describe_instances::DescribeInstancesOutput::reservations)
            .flat_map(aws_sdk_ec2::types::Reservation::instances)
            .filter(|i| i.instance_id().is_some())
            .cloned()
            .collect())
    }

    /// Fleets by id (an instant fleet is listed only so), 100 ids a call; ids EC2 no
    /// longer knows are left out.
    async fn fleets(&self, region: &str, ids: &[String]) -> Result<Vec<aws_sdk_ec2::types::FleetData>> {
        let client = self.client(region);
        let mut out = Vec::new();
        for chunk in ids.chunks(100) {
            let asked = pages!(
                self,
                region,
                "DescribeFleets",
                client.describe_fleets().set_fleet_ids(Some(chunk.to_vec()))
            );
            match asked {
                Ok(pages) => out.extend(
                    pages
                        .iter()
                        .flat_map(aws_sdk_ec2::operation::describe_fleets::DescribeFleetsOutput::fleets)
                        .cloned(),
                ),
                // One unknown id fails the call: ask for each alone.
                Err(e) if e.kind == ErrorKind::NotFound => {
                    for id in chunk {
                        match pages!(self, region, "DescribeFleets", client.describe_fleets().fleet_ids(id)) {
                            Ok(pages) => out.extend(
                                pages
                                    .iter()
                                    .flat_map(
                                        aws_sdk_ec2::operation::describe_fleets::DescribeFleetsOutput::fleets,
                                    )
                                    .cloned(),
                            ),
                            Err(e) if e.kind == ErrorKind::NotFound => {}
                            Err(e) => return Err(e),
                        }
                    }
                }
                Err(e) => return Err(e),
            }
        }
        Ok(out)
    }

    /// May this run take over `what` (found under the name it wants, with tags `found`)?
    /// Only when it made it itself; another run's belongs to a deployment id in use.
    fn claim(
        &self,
        operation: &'static str,
        region: &str,
        what: &str,
        found: Option<&Tags>,
        ours: &Tags,
    ) -> Result<()> {
        match found {
            Some(found) if tag::same_run(found, ours) => Ok(()),
            Some(found) if tag::is_ours(found) => Err(Error {
                kind: ErrorKind::Other,
                code: "DeploymentInUse".into(),
                message: format!(
                    "{what} belongs to run {} of deployment {}: that deployment exists; spot will not replace it",
                    found.get(tag::RUN_ID).map_or("(unknown)", String::as_str),
                    found.get(tag::DEPLOYMENT).map_or("(unknown)", String::as_str),
                ),
                operation,
                region: region.to_string(),
            }),
            _ => Err(self.not_ours(operation, region, what)),
        }
    }

    fn not_ours(&self, operation: &'static str, region: &str, what: &str) -> Error {
        Error {
            kind: ErrorKind::Other,
            code: "NotManagedBySpot".into(),
            message: format!("{what} exists and is not tagged spot:managed-by=spot; spot will not touch it"),
            operation,
            region: region.to_string(),
        }
    }

    /// Adds `rules` to `group_id`; a rule that is already there is fine. One call adds
    /// all or nothing: when one is there already (an earlier attempt, a rule added by
    /// hand) EC2 refuses the whole call as a duplicate, and only the missing ones are
    /// asked for again.
    async fn allow(&self, region: &str, group_id: &str, rules: &[Rule]) -> Result<()> {
        let client = self.client(region);
        let mut missing = rules.to_vec();
        for _ in 0..3 {
            if missing.is_empty() {
                return Ok(());
            }
            match call!(
                self,
                region,
                "AuthorizeSecurityGroupIngress",
                client
                    .authorize_security_group_ingress()
                    .group_id(group_id)
                    .set_ip_permissions(Some(permissions(&missing)))
            ) {
                Ok(_) => return Ok(()),
                Err(e) if e.kind == ErrorKind::Duplicate => {
                    missing = ingress::delta(&self.ingress(region, group_id).await?, &missing).0;
                }
                Err(e) => return Err(e),
            }
        }
        if missing.is_empty() {
            return Ok(());
        }
        let shown: Vec<String> = missing
            .iter()
            .map(|r| format!("{}-{}/{} from {}", r.from_port, r.to_port, r.protocol, r.cidr))
            .collect();
        Err(Error {
            kind: ErrorKind::Other,
            code: "RulesNotAdded".into(),
            message: format!("EC2 kept refusing {} as duplicates it does not list", shown.join(", ")),
            operation: "AuthorizeSecurityGroupIngress",
            region: region.to_string(),
        })
    }

    /// The group's inbound CIDR rules, sources in canonical form.
    async fn ingress(&self, region: &str, group_id: &str) -> Result<Vec<Rule>> {
        let client = self.client(region);
        let pages = pages!(
            self,
            region,
            "DescribeSecurityGroups",
            client.describe_security_groups().group_ids(group_id)
        )?;
        Ok(pages
            .iter()
            .flat_map(aws_sdk_ec2::operation::describe_security_groups::DescribeSecurityGroupsOutput::security_groups)
            .flat_map(|g| g.ip_permissions().iter().flat_map(rules_of))
            .collect())
    }

    async fn find_security_group(
        &self,
        region: &str,
        name: &str,
        vpc_id: &str,
    ) -> Result<Option<(String, Tags)>> {
        let client = self.client(region);
        let pages = pages!(
            self,
            region,
            "DescribeSecurityGroups",
            client
                .describe_security_groups()
                .filters(filter("group-name", &[name]))
                .filters(filter("vpc-id", &[vpc_id]))
        )?;
        Ok(pages
            .iter()
            .flat_map(aws_sdk_ec2::operation::describe_security_groups::DescribeSecurityGroupsOutput::security_groups)
            .find_map(|g| Some((g.group_id()?.to_string(), tags_of(g.tags())))))
    }
}

impl Cloud for Ec2 {
    async fn latest_ubuntu(&self, region: &str, arch: Arch) -> Result<Image> {
        let client = self.client(region);
        let (name_arch, arch_value) = match arch {
            Arch::X86_64 => ("amd64", "x86_64"),
            Arch::Arm64 => ("arm64", "arm64"),
        };
        let pattern = format!("ubuntu/images/hvm-ssd-gp3/ubuntu-noble-24.04-{name_arch}-server-*");
        let pages = pages!(
            self,
            region,
            "DescribeImages",
            client
                .describe_images()
                .owners(CANONICAL)
                .filters(filter("name", &[&pattern]))
                .filters(filter("architecture", &[arch_value]))
                .filters(filter("state", &["available"]))
        )?;
        // Newest by creation date, then by name (Canonical names end in the build date).
        let newest = pages
            .iter()
            .flat_map(aws_sdk_ec2::operation::describe_images::DescribeImagesOutput::images)
            .filter(|i| i.image_id().is_some())
            .max_by(|a, b| (a.creation_date(), a.name()).cmp(&(b.creation_date(), b.name())));
        match newest {
            Some(image) => Ok(Image {
                id: image.image_id().unwrap_or_default().to_string(),
                arch,
                root_device: image.root_device_name().unwrap_or("/dev/sda1").to_string(),
            }),
            None => Err(Error {
                kind: ErrorKind::NotFound,
                code: "NoUbuntuImage".into(),
                message: format!("no Canonical Ubuntu 24.04 LTS image for {arch} (name {pattern})"),
                operation: "DescribeImages",
                region: region.to_string(),
            }),
        }
    }

    async fn image(&self, region: &str, image_id: &str) -> Result<Option<Image>> {
        let client = self.client(region);
        let out = match call!(self, region, "DescribeImages", client.describe_images().image_ids(image_id)) {
            Ok(out) => out,
            Err(e) if e.kind == ErrorKind::NotFound || e.code.starts_with("InvalidAMIID") => {
                return Ok(None);
            }
            Err(e) => return Err(e),
        };
        Ok(out.images().first().and_then(|i| {
            Some(Image {
                id: i.image_id()?.to_string(),
                arch: arch_of(i.architecture())?,
                root_device: i.root_device_name().unwrap_or("/dev/sda1").to_string(),
            })
        }))
    }

    async fn default_network(&self, region: &str) -> Result<Network> {
        let client = self.client(region);
        let vpcs = pages!(
            self,
            region,
            "DescribeVpcs",
            client.describe_vpcs().filters(filter("isDefault", &["true"]))
        )?;
        let Some(vpc_id) = vpcs
            .iter()
            .flat_map(aws_sdk_ec2::operation::describe_vpcs::DescribeVpcsOutput::vpcs)
            .find_map(|v| v.vpc_id())
            .map(str::to_string)
        else {
            return Err(Error {
                kind: ErrorKind::NotFound,
                code: "NoDefaultVpc".into(),
                message: "the region has no default VPC; set `aws.use_dedicated_vpc: true`".into(),
                operation: "DescribeVpcs",
                region: region.to_string(),
            });
        };
        let pages = pages!(
            self,
            region,
            "DescribeSubnets",
            client
                .describe_subnets()
                .filters(filter("vpc-id", &[&vpc_id]))
                .filters(filter("default-for-az", &["true"]))
        )?;
        let mut subnets: Vec<Subnet> = pages
            .iter()
            .flat_map(aws_sdk_ec2::operation::describe_subnets::DescribeSubnetsOutput::subnets)
            .filter_map(|s| {
                Some(Subnet { id: s.subnet_id()?.to_string(), az: s.availability_zone()?.to_string() })
            })
            .collect();
        subnets.sort_by(|a, b| a.az.cmp(&b.az));
        Ok(Network { vpc_id, subnets })
    }

    async fn create_network(
        &self,
        region: &str,
        tags: &Tags,
        made: &(dyn Fn(Resource) + Sync),
    ) -> Result<Network> {
        let client = self.client(region);
        // Only this run's: what an attempt whose answer was lost made.
        let mine = run_filters(tags);
        let vpc_id = create_checked!(
            self,
            region,
            "CreateVpc",
            client.create_vpc().cidr_block(VPC_CIDR).tag_specifications(spec("vpc", tags)),
            |out| out.vpc().and_then(|v| v.vpc_id()).unwrap_or_default().to_string(),
            async {
                let found = call!(
                    self,
                    region,
                    "DescribeVpcs",
                    client
                        .describe_vpcs()
                        .set_filters(Some(mine.clone()))
                        .filters(filter("cidr", &[VPC_CIDR]))
                )?;
                Ok(found.vpcs().first().and_then(|v| v.vpc_id()).map(str::to_string))
            }
        )?;
        made(resource(Kind::Vpc, region, &vpc_id, None, tags.clone()));
        call!(
            self,
            region,
            "ModifyVpcAttribute",
            client
                .modify_vpc_attribute()
                .vpc_id(&vpc_id)
                .enable_dns_hostnames(AttributeBooleanValue::builder().value(true).build())
        )?;
        let igw_id = create_checked!(
            self,
            region,
            "CreateInternetGateway",
            client.create_internet_gateway().tag_specifications(spec("internet-gateway", tags)),
            |out| out
                .internet_gateway()
                .and_then(|g| g.internet_gateway_id())
                .unwrap_or_default()
                .to_string(),
            async {
                let found = call!(
                    self,
                    region,
                    "DescribeInternetGateways",
                    client.describe_internet_gateways().set_filters(Some(mine.clone()))
                )?;
                Ok(found
                    .internet_gateways()
                    .first()
                    .and_then(|g| g.internet_gateway_id())
                    .map(str::to_string))
            }
        )?;
        made(resource(Kind::InternetGateway, region, &igw_id, None, tags.clone()));
        made_already(call!(
            self,
            region,
            "AttachInternetGateway",
            client.attach_internet_gateway().internet_gateway_id(&igw_id).vpc_id(&vpc_id)
        ))?;
        // Its client token makes a retried create the same one (one VPC, one table).
        let table = call!(
            self,
            region,
            "CreateRouteTable",
            client
                .create_route_table()
                .vpc_id(&vpc_id)
                .client_token(format!("spot-{vpc_id}-routes"))
                .tag_specifications(spec("route-table", tags))
        )?;
        let table_id = table.route_table().and_then(|t| t.route_table_id()).unwrap_or_default().to_string();
        made(resource(Kind::RouteTable, region, &table_id, None, tags.clone()));
        made_already(call!(
            self,
            region,
            "CreateRoute",
            client
                .create_route()
                .route_table_id(&table_id)
                .destination_cidr_block("0.0.0.0/0")
                .gateway_id(&igw_id)
        ))?;
        let zones = call!(
            self,
            region,
            "DescribeAvailabilityZones",
            client
                .describe_availability_zones()
                .filters(filter("state", &["available"]))
                .filters(filter("zone-type", &["availability-zone"]))
        )?;
        let mut azs: Vec<String> =
            zones.availability_zones().iter().filter_map(|z| z.zone_name().map(str::to_string)).collect();
        azs.sort();
        azs.truncate(6);
        let mut subnets = Vec::new();
        for (i, az) in azs.iter().enumerate() {
            let cidr = format!("10.77.{}.0/20", i * 16);
            // In this run's VPC, a subnet of this block is the one a lost answer made.
            let subnet_id = create_checked!(
                self,
                region,
                "CreateSubnet",
                client
                    .create_subnet()
                    .vpc_id(&vpc_id)
                    .cidr_block(&cidr)
                    .availability_zone(az)
                    .tag_specifications(spec("subnet", tags)),
                |out| out.subnet().and_then(|s| s.subnet_id()).unwrap_or_default().to_string(),
                async {
                    let found = call!(
                        self,
                        region,
                        "DescribeSubnets",
                        client
                            .describe_subnets()
                            .filters(filter("vpc-id", &[vpc_id.as_str()]))
                            .filters(filter("cidr-block", &[cidr.as_str()]))
                    )?;
                    Ok(found.subnets().first().and_then(|s| s.subnet_id()).map(str::to_string))
                }
            )?;
            made(resource(Kind::Subnet, region, &subnet_id, None, tags.clone()));
            call!(
                self,
                region,
                "ModifySubnetAttribute",
                client
                    .modify_subnet_attribute()
                    .subnet_id(&subnet_id)
                    .map_public_ip_on_launch(AttributeBooleanValue::builder().value(true).build())
            )?;
            made_already(call!(
                self,
                region,
                "AssociateRouteTable",
                client.associate_route_table().route_table_id(&table_id).subnet_id(&subnet_id)
            ))?;
            subnets.push(Subnet { id: subnet_id, az: az.clone() });
        }
        Ok(Network { vpc_id, subnets })
    }

    async fn create_security_group(
        &self,
        region: &str,
        name: &str,
        vpc_id: &str,
        rules: &[Rule],
        tags: &Tags,
    ) -> Result<Resource> {
        let client = self.client(region);
        let created = call!(
            self,
            region,
            "CreateSecurityGroup",
            client
                .create_security_group()
                .group_name(name)
                .description("spot: SSH and exposed ports of one deployment")
                .vpc_id(vpc_id)
                .tag_specifications(spec("security-group", tags))
        );
        let group_id = match created {
            Ok(out) => out.group_id().unwrap_or_default().to_string(),
            // A retried create whose first answer was lost: adopt it.
            Err(e) if e.kind == ErrorKind::Duplicate => {
                let found = self.find_security_group(region, name, vpc_id).await?;
                let what = format!("security group `{name}`");
                self.claim("CreateSecurityGroup", region, &what, found.as_ref().map(|(_, t)| t), tags)?;
                found.map(|(id, _)| id).unwrap_or_default()
            }
            Err(e) => return Err(e),
        };
        self.allow(region, &group_id, rules).await?;
        Ok(resource(Kind::SecurityGroup, region, &group_id, Some(name), tags.clone()))
    }

    async fn import_key(&self, region: &str, name: &str, public_key: &str, tags: &Tags) -> Result<Resource> {
        let client = self.client(region);
        for attempt in 0..2 {
            let imported = call!(
                self,
                region,
                "ImportKeyPair",
                client
                    .import_key_pair()
                    .key_name(name)
                    .public_key_material(Blob::new(public_key.as_bytes()))
                    .tag_specifications(spec("key-pair", tags))
            );
            match imported {
                Ok(out) => {
                    let id = out.key_pair_id().unwrap_or(name).to_string();
                    return Ok(resource(Kind::KeyPair, region, &id, Some(name), tags.clone()));
                }
                // This run's own key, from an attempt whose answer was lost: replace it.
                Err(e) if e.kind == ErrorKind::Duplicate && attempt == 0 => {
                    let found =
                        call!(self, region, "DescribeKeyPairs", client.describe_key_pairs().key_names(name))?;
                    let found = found.key_pairs().first().map(|k| tags_of(k.tags()));
                    self.claim("ImportKeyPair", region, &format!("key pair `{name}`"), found.as_ref(), tags)?;
                    call!(self, region, "DeleteKeyPair", client.delete_key_pair().key_name(name))?;
                }
                Err(e) => return Err(e),
            }
        }
        Err(self.not_ours("ImportKeyPair", region, &format!("key pair `{name}`")))
    }

    async fn create_template(&self, region: &str, spec_in: &TemplateSpec) -> Result<Resource> {
        let client = self.client(region);
        let instance_tags = |kind: &str| {
            LaunchTemplateTagSpecificationRequest::builder()
                .resource_type(ResourceType::from(kind))
                .set_tags(Some(tag_list(&spec_in.tags)))
                .build()
        };
        let data = RequestLaunchTemplateData::builder()
            .image_id(&spec_in.image_id)
            .key_name(&spec_in.key_name)
            .user_data(base64::engine::general_purpose::STANDARD.encode(&spec_in.user_data))
            .instance_initiated_shutdown_behavior(ShutdownBehavior::Terminate)
            .metadata_options(
                LaunchTemplateInstanceMetadataOptionsRequest::builder()
                    .http_tokens(LaunchTemplateHttpTokensState::Required)
                    .http_put_response_hop_limit(2)
                    .build(),
            )
            .block_device_mappings(
                LaunchTemplateBlockDeviceMappingRequest::builder()
                    .device_name(&spec_in.root_device)
                    .ebs(
                        LaunchTemplateEbsBlockDeviceRequest::builder()
                            .volume_size(i32::try_from(spec_in.storage_gb).unwrap_or(i32::MAX))
                            .volume_type(VolumeType::Gp3)
                            .encrypted(true)
                            .delete_on_termination(true)
                            .build(),
                    )
                    .build(),
            )
            .network_interfaces(
                LaunchTemplateInstanceNetworkInterfaceSpecificationRequest::builder()
                    .device_index(0)
                    .associate_public_ip_address(spec_in.public_ip)
                    .groups(&spec_in.security_group_id)
                    .delete_on_termination(true)
                    .build(),
            )
            .tag_specifications(instance_tags("instance"))
            .tag_specifications(instance_tags("volume"))
            .tag_specifications(instance_tags("network-interface"))
            .build();
        for attempt in 0..2 {
            let created = call!(
                self,
                region,
                "CreateLaunchTemplate",
                client
                    .create_launch_template()
                    .launch_template_name(&spec_in.name)
                    .launch_template_data(data.clone())
                    .tag_specifications(spec("launch-template", &spec_in.tags))
            );
            match created {
                Ok(out) => {
                    let id = out.launch_template().and_then(|t| t.launch_template_id()).unwrap_or_default();
                    return Ok(resource(
                        Kind::LaunchTemplate,
                        region,
                        id,
                        Some(&spec_in.name),
                        spec_in.tags.clone(),
                    ));
                }
                Err(e) if e.kind == ErrorKind::Duplicate && attempt == 0 => {
                    let found = pages!(
                        self,
                        region,
                        "DescribeLaunchTemplates",
                        client.describe_launch_templates().launch_template_names(&spec_in.name)
                    )?;
                    let found = found
                        .iter()
                        .flat_map(aws_sdk_ec2::operation::describe_launch_templates::DescribeLaunchTemplatesOutput::launch_templates)
                        .next()
                        .map(|t| tags_of(t.tags()));
                    let what = format!("launch template `{}`", spec_in.name);
                    self.claim("CreateLaunchTemplate", region, &what, found.as_ref(), &spec_in.tags)?;
                    call!(
                        self,
                        region,
                        "DeleteLaunchTemplate",
                        client.delete_launch_template().launch_template_name(&spec_in.name)
                    )?;
                }
                Err(e) => return Err(e),
            }
        }
        Err(self.not_ours("CreateLaunchTemplate", region, &format!("launch template `{}`", spec_in.name)))
    }

    async fn launch(&self, region: &str, request: &FleetRequest) -> Result<FleetOutcome> {
        let client = self.client(region);
        let overrides: Vec<FleetLaunchTemplateOverridesRequest> = request
            .pools
            .iter()
            .map(|p| {
                let mut o = FleetLaunchTemplateOverridesRequest::builder()
                    .instance_type(InstanceType::from(p.instance_type.as_str()))
                    .subnet_id(&p.subnet_id)
                    .image_id(&p.image_id);
                if let (Market::Spot, Some(price)) = (request.market, request.max_price) {
                    o = o.max_price(format!("{price}"));
                }
                o.build()
            })
            .collect();
        let config = FleetLaunchTemplateConfigRequest::builder()
            .launch_template_specification(
                FleetLaunchTemplateSpecificationRequest::builder()
                    .launch_template_id(&request.template_id)
                    .version("$Latest")
                    .build(),
            )
            .set_overrides(Some(overrides))
            .build();
        let capacity_type = match request.market {
            Market::Spot => DefaultTargetCapacityType::Spot,
            Market::OnDemand => DefaultTargetCapacityType::OnDemand,
        };
        let count = i32::try_from(request.count).unwrap_or(i32::MAX);
        let out = call!(
            self,
            region,
            "CreateFleet",
            client
                .create_fleet()
                .r#type(FleetType::Instant)
                .client_token(&request.client_token)
                .target_capacity_specification(
                    TargetCapacitySpecificationRequest::builder()
                        .total_target_capacity(count)
                        .default_target_capacity_type(capacity_type.clone())
                        .build(),
                )
                .spot_options(
                    SpotOptionsRequest::builder()
                        .allocation_strategy(SpotAllocationStrategy::PriceCapacityOptimized)
                        .build()
                )
                .on_demand_options(
                    OnDemandOptionsRequest::builder()
                        .allocation_strategy(FleetOnDemandAllocationStrategy::LowestPrice)
                        .build()
                )
                .launch_template_configs(config.clone())
                .tag_specifications(spec("fleet", &request.tags))
                .tag_specifications(spec("instance", &request.tags))
        )?;
        let az_of = |subnet: Option<&str>| -> String {
            request
                .pools
                .iter()
                .find(|p| Some(p.subnet_id.as_str()) == subnet)
                .map(|p| p.az.clone())
                .unwrap_or_default()
        };
        let mut outcome =
            FleetOutcome { fleet_id: out.fleet_id().map(str::to_string), ..FleetOutcome::default() };
        for group in out.instances() {
            let subnet =
                group.launch_template_and_overrides().and_then(|l| l.overrides()).and_then(|o| o.subnet_id());
            let market = match group.lifecycle() {
                Some(InstanceLifecycle::Spot) => Market::Spot,
                Some(_) => Market::OnDemand,
                None => request.market,
            };
            for id in group.instance_ids() {
                outcome.launched.push(Launched {
                    id: id.clone(),
                    instance_type: group.instance_type().map(|t| t.as_str().to_string()).unwrap_or_default(),
                    az: az_of(subnet),
                    market,
                });
            }
        }
        for error in out.errors() {
            let overrides = error.launch_template_and_overrides().and_then(|l| l.overrides());
            outcome.errors.push(PoolError {
                instance_type: overrides
                    .and_then(|o| o.instance_type())
                    .map(|t| t.as_str().to_string())
                    .unwrap_or_default(),
                az: az_of(overrides.and_then(|o| o.subnet_id())),
                code: error.error_code().unwrap_or("Unknown").to_string(),
                message: error.error_message().unwrap_or_default().to_string(),
            });
        }
        Ok(outcome)
    }

    async fn instances(&self, region: &str, tags: &Tags) -> Result<Vec<Instance>> {
        let mut found: Vec<Instance> =
            self.described(region, tags, &LIVE).await?.iter().map(|i| instance_of(region, i)).collect();
        found.sort_by(|a, b| a.id.cmp(&b.id));
        Ok(found)
    }

    async fn watched(&self, region: &str, tags: &Tags) -> Result<Vec<Instance>> {
        Ok(self.described(region, tags, &[]).await?.iter().map(|i| instance_of(region, i)).collect())
    }

    async fn tagged(&self, region: &str, tags: &Tags) -> Result<(Vec<Instance>, Vec<Resource>)> {
        let client = self.client(region);
        let filters = tag_filters(tags);
        let f = || Some(filters.clone());
        // Independent describes: one round trip of latency, not six. An instant fleet is
        // listed only when asked by id, so fleets are found through the
        // `aws:ec2:fleet-id` tag EC2 puts on their instances, in any state (terminated
        // ones stay visible for about an hour).
        let (groups, keys, templates, launched, vpcs) = futures::join!(
            async {
                pages!(
                    self,
                    region,
                    "DescribeSecurityGroups",
                    client.describe_security_groups().set_filters(f())
                )
            },
            // DescribeKeyPairs answers in one page (it has no NextToken).
            async { call!(self, region, "DescribeKeyPairs", client.describe_key_pairs().set_filters(f())) },
            async {
                pages!(
                    self,
                    region,
                    "DescribeLaunchTemplates",
                    client.describe_launch_templates().set_filters(f())
                )
            },
            self.described(region, tags, &[]),
            async { pages!(self, region, "DescribeVpcs", client.describe_vpcs().set_filters(f())) },
        );
        let mut out = Vec::new();
        for g in groups?.iter().flat_map(
            aws_sdk_ec2::operation::describe_security_groups::DescribeSecurityGroupsOutput::security_groups,
        ) {
            out.push(resource(
                Kind::SecurityGroup,
                region,
                g.group_id().unwrap_or_default(),
                g.group_name(),
                tags_of(g.tags()),
            ));
        }
        for k in keys?.key_pairs() {
            let name = k.key_name().unwrap_or_default();
            out.push(resource(
                Kind::KeyPair,
                region,
                k.key_pair_id().unwrap_or(name),
                Some(name),
                tags_of(k.tags()),
            ));
        }
        for t in templates?.iter().flat_map(aws_sdk_ec2::operation::describe_launch_templates::DescribeLaunchTemplatesOutput::launch_templates) {
            let id = t.launch_template_id().unwrap_or_default();
            out.push(resource(Kind::LaunchTemplate, region, id, t.launch_template_name(), tags_of(t.tags())));
        }
        let launched = launched?;
        let mut fleet_ids: Vec<String> =
            launched.iter().filter_map(|i| tags_of(i.tags()).remove(tag::FLEET_ID)).collect();
        fleet_ids.sort();
        fleet_ids.dedup();
        let vpcs = vpcs?;
        let dedicated = vpcs.iter().any(|p| !p.vpcs().is_empty());
        for v in vpcs.iter().flat_map(aws_sdk_ec2::operation::describe_vpcs::DescribeVpcsOutput::vpcs) {
            out.push(resource(Kind::Vpc, region, v.vpc_id().unwrap_or_default(), None, tags_of(v.tags())));
        }
        // Fleets by id; subnets, gateways and route tables exist only inside a dedicated VPC.
        let vpc_parts = async {
            if !dedicated {
                return Ok((Vec::new(), Vec::new(), Vec::new()));
            }
            let (subnets, gateways, tables) = futures::join!(
                async { pages!(self, region, "DescribeSubnets", client.describe_subnets().set_filters(f())) },
                async {
                    pages!(
                        self,
                        region,
                        "DescribeInternetGateways",
                        client.describe_internet_gateways().set_filters(f())
                    )
                },
                async {
                    pages!(
                        self,
                        region,
                        "DescribeRouteTables",
                        client.describe_route_tables().set_filters(f())
                    )
                },
            );
            Ok::<_, Error>((subnets?, gateways?, tables?))
        };
        let (fleets, vpc_parts) = futures::join!(self.fleets(region, &fleet_ids), vpc_parts);
        let (subnets, gateways, tables) = vpc_parts?;
        for fleet in fleets? {
            let fleet_tags = tags_of(fleet.tags());
            let state =
                fleet.fleet_state().map(aws_sdk_ec2::types::FleetStateCode::as_str).unwrap_or_default();
            if tags.iter().all(|(k, v)| fleet_tags.get(k) == Some(v)) && !state.starts_with("deleted") {
                out.push(resource(
                    Kind::Fleet,
                    region,
                    fleet.fleet_id().unwrap_or_default(),
                    None,
                    fleet_tags,
                ));
            }
        }
        for s in
            subnets.iter().flat_map(aws_sdk_ec2::operation::describe_subnets::DescribeSubnetsOutput::subnets)
        {
            out.push(resource(
                Kind::Subnet,
                region,
                s.subnet_id().unwrap_or_default(),
                None,
                tags_of(s.tags()),
            ));
        }
        for g in gateways.iter().flat_map(aws_sdk_ec2::operation::describe_internet_gateways::DescribeInternetGatewaysOutput::internet_gateways) {
            let id = g.internet_gateway_id().unwrap_or_default();
            out.push(resource(Kind::InternetGateway, region, id, None, tags_of(g.tags())));
        }
        for t in tables
            .iter()
            .flat_map(aws_sdk_ec2::operation::describe_route_tables::DescribeRouteTablesOutput::route_tables)
        {
            out.push(resource(
                Kind::RouteTable,
                region,
                t.route_table_id().unwrap_or_default(),
                None,
                tags_of(t.tags()),
            ));
        }
        let live: Vec<Instance> = launched
            .iter()
            .filter(|i| i.state().and_then(|s| s.name()).is_some_and(|n| LIVE.contains(&n.as_str())))
            .map(|i| instance_of(region, i))
            .collect();
        Ok((live, out))
    }

    async fn terminate(&self, region: &str, ids: &[String]) -> Result<Vec<String>> {
        let client = self.client(region);
        let mut unknown = Vec::new();
        for chunk in ids.chunks(500) {
            match call!(
                self,
                region,
                "TerminateInstances",
                client.terminate_instances().set_instance_ids(Some(chunk.to_vec()))
            ) {
                Ok(_) => {}
                Err(e) if e.kind == ErrorKind::NotFound => {
                    // One unknown id fails the call: terminate the rest one by one.
                    for id in chunk {
                        match call!(
                            self,
                            region,
                            "TerminateInstances",
                            client.terminate_instances().instance_ids(id)
                        ) {
                            Ok(_) => {}
                            Err(e) if e.kind == ErrorKind::NotFound => unknown.push(id.clone()),
                            Err(e) => return Err(e),
                        }
                    }
                }
                Err(e) => return Err(e),
            }
        }
        Ok(unknown)
    }

    async fn delete(&self, r: &Resource) -> Result<()> {
        let client = self.client(&r.region);
        let region = r.region.as_str();
        let result = match r.kind {
            Kind::Instance => return self.terminate(region, std::slice::from_ref(&r.id)).await.map(drop),
            Kind::Fleet => {
                let deleted = retry::run(&self.policy, || async {
                    let out = client
                        .delete_fleets()
                        .fleet_ids(&r.id)
                        .terminate_instances(true)
                        .send()
                        .await
                        .map_err(|e| classify("DeleteFleets", region, &e))?;
                    // A 200 can still hold the fleet among the ones EC2 did not delete.
                    out.unsuccessful_fleet_deletions()
                        .iter()
                        .find_map(|u| {
                            let error = u.error();
                            let code = error.and_then(|e| e.code()).map_or("Unknown", |c| c.as_str());
                            unsuccessful_deletion(
                                region,
                                &r.id,
                                code,
                                error.and_then(|e| e.message()).unwrap_or(""),
                            )
                        })
                        .map_or(Ok(()), Err)
                })
                .await;
                match deleted {
                    Ok(()) => Ok(()),
                    // A fleet already being deleted (`fleetNotInDeletableState`), or an emulator
                    // that answers an error for a fleet whose instances are gone while
                    // deleting it anyway: believe the fleet's state, not the answer.
                    Err(e) if e.code != "unexpectedError" => {
                        let fleets = self.fleets(region, std::slice::from_ref(&r.id)).await;
                        let gone = fleets.as_ref().is_ok_and(|found| {
                            found
                                .iter()
                                .all(|f| f.fleet_state().is_some_and(|s| s.as_str().starts_with("deleted")))
                        });
                        if gone { Ok(()) } else { Err(e) }
                    }
                    Err(e) => Err(e),
                }
            }
            Kind::LaunchTemplate => call!(
                self,
                region,
                "DeleteLaunchTemplate",
                client.delete_launch_template().launch_template_id(&r.id)
            )
            .map(drop),
            Kind::KeyPair => match &r.name {
                Some(name) => {
                    call!(self, region, "DeleteKeyPair", client.delete_key_pair().key_name(name)).map(drop)
                }
                None => call!(self, region, "DeleteKeyPair", client.delete_key_pair().key_pair_id(&r.id))
                    .map(drop),
            },
            Kind::SecurityGroup => {
                call!(self, region, "DeleteSecurityGroup", client.delete_security_group().group_id(&r.id))
                    .map(drop)
            }
            Kind::RouteTable => {
                let tables = call!(
                    self,
                    region,
                    "DescribeRouteTables",
                    client.describe_route_tables().route_table_ids(&r.id)
                );
                if let Ok(tables) = &tables {
                    for association in
                        tables.route_tables().iter().flat_map(aws_sdk_ec2::types::RouteTable::associations)
                    {
                        if let (Some(id), false) =
                            (association.route_table_association_id(), association.main().unwrap_or(false))
                        {
                            match call!(
                                self,
                                region,
                                "DisassociateRouteTable",
                                client.disassociate_route_table().association_id(id)
                            ) {
                                Ok(_) => {}
                                Err(e) if e.kind == ErrorKind::NotFound => {}
                                Err(e) => return Err(e),
                            }
                        }
                    }
                }
                call!(self, region, "DeleteRouteTable", client.delete_route_table().route_table_id(&r.id))
                    .map(drop)
            }
            Kind::InternetGateway => {
                if let Ok(gateways) = call!(
                    self,
                    region,
                    "DescribeInternetGateways",
                    client.describe_internet_gateways().internet_gateway_ids(&r.id)
                ) {
                    for vpc in gateways
                        .internet_gateways()
                        .iter()
                        .flat_map(aws_sdk_ec2::types::InternetGateway::attachments)
                        .filter_map(|a| a.vpc_id())
                    {
                        match call!(
                            self,
                            region,
                            "DetachInternetGateway",
                            client.detach_internet_gateway().internet_gateway_id(&r.id).vpc_id(vpc)
                        ) {
                            Ok(_) => {}
                            Err(e) if e.kind == ErrorKind::NotFound => {}
                            Err(e) => return Err(e),
                        }
                    }
                }
                call!(
                    self,
                    region,
                    "DeleteInternetGateway",
                    client.delete_internet_gateway().internet_gateway_id(&r.id)
                )
                .map(drop)
            }
            Kind::Subnet => {
                call!(self, region, "DeleteSubnet", client.delete_subnet().subnet_id(&r.id)).map(drop)
            }
            Kind::Vpc => call!(self, region, "DeleteVpc", client.delete_vpc().vpc_id(&r.id)).map(drop),
        };
        match result {
            Err(e) if e.kind == ErrorKind::NotFound => Ok(()),
            other => other,
        }
    }

    async fn set_ingress(&self, region: &str, group_id: &str, rules: &[Rule]) -> Result<()> {
        let client = self.client(region);
        let (add, revoke) = ingress::delta(&self.ingress(region, group_id).await?, rules);
        // Revoked first: a move of the runner's rules never holds both addresses at once,
        // which could pass the group's rule quota. In a VPC of spot's own one call revokes
        // all or nothing (`InvalidPermission.NotFound` when one is gone already, say by
        // another run's redeploy): the rest are then revoked one by one. In a default VPC
        // EC2 revokes what it knows and lists the rest as unknown: gone too.
        let mut batches = vec![revoke];
        while let Some(batch) = batches.pop() {
            if batch.is_empty() {
                continue;
            }
            match call!(
                self,
                region,
                "RevokeSecurityGroupIngress",
                client
                    .revoke_security_group_ingress()
                    .group_id(group_id)
                    .set_ip_permissions(Some(permissions(&batch)))
            ) {
                Ok(_) => {}
                Err(e) if e.kind == ErrorKind::NotFound && batch.len() > 1 => {
                    batches.extend(batch.into_iter().map(|r| vec![r]));
                }
                Err(e) if e.kind == ErrorKind::NotFound => {}
                Err(e) => return Err(e),
            }
        }
        self.allow(region, group_id, &add).await
    }

    async fn push_ssh_key(&self, instance: &Instance, user: &str, public_key: &str) -> Result<()> {
        let region = instance.region.as_str();
        let client = self.connect_client(region);
        let out = call!(
            self,
            region,
            "SendSSHPublicKey",
            client
                .send_ssh_public_key()
                .instance_id(&instance.id)
                .availability_zone(&instance.az)
                .instance_os_user(user)
                .ssh_public_key(public_key)
        )?;
        if out.success() {
            Ok(())
        } else {
            Err(Error {
                kind: ErrorKind::Other,
                code: "SendSSHPublicKey".into(),
                message: format!("EC2 Instance Connect did not accept a key for {}", instance.id),
                operation: "SendSSHPublicKey",
                region: region.to_string(),
            })
        }
    }

    async fn regions(&self, region: &str) -> Result<Vec<String>> {
        let client = self.client(region);
        let out = call!(self, region, "DescribeRegions", client.describe_regions())?;
        Ok(out.regions().iter().filter_map(|r| r.region_name()).map(str::to_string).collect())
    }

    async fn spot_prices(&self, region: &str, types: &[String]) -> Result<BTreeMap<(String, String), f64>> {
        let client = self.client(region);
        let pages = pages!(
            self,
            region,
            "DescribeSpotPriceHistory",
            client
                .describe_spot_price_history()
                .set_instance_types(Some(types.iter().map(|t| InstanceType::from(t.as_str())).collect()))
                .product_descriptions("Linux/UNIX")
                .start_time(aws_sdk_ec2::primitives::DateTime::from(std::time::SystemTime::now()))
        )?;
        let mut prices: BTreeMap<(String, String), (aws_sdk_ec2::primitives::DateTime, f64)> =
            BTreeMap::new();
        for p in pages.iter().flat_map(aws_sdk_ec2::operation::describe_spot_price_history::DescribeSpotPriceHistoryOutput::spot_price_history) {
            let (Some(t), Some(az), Some(price), Some(at)) =
                (p.instance_type(), p.availability_zone(), p.spot_price(), p.timestamp())
            else {
                continue;
            };
            let Ok(price) = price.parse::<f64>() else {
                continue;
            };
            let key = (t.as_str().to_string(), az.to_string());
            if prices.get(&key).is_none_or(|(seen, _)| seen.secs() < at.secs()) {
                prices.insert(key, (*at, price));
            }
        }
        Ok(prices.into_iter().map(|(k, (_, p))| (k, p)).collect())
    }
}
