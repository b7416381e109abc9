//! Raw files -> validated model, collecting every problem with its position.
//!
//! Each check records a [`Diagnostic`](super::diagnostic::Diagnostic) and moves on with a
//! default, so one run reports everything wrong. The caller throws the half-built model
//! away when any diagnostic was recorded. Files referenced by the manifest are looked at
//! here (existence, shebang, unit sections, symlinks); nothing is read over the network.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fs;
use std::path::{Component, Path, PathBuf};

use super::diagnostic::Kind;
use super::paths::{Excludes, rel_to};
use super::raw::{
    RawConfig, RawExpose, RawExposeEntry, RawHealthCheck, RawManifest, RawRegionEntry, RawSecret, RawService,
    RawTarball, RawUpload,
};
use super::read::{Cx, Spanned, suggest};
use super::span::Span;
use super::types::{
    AWS_REGIONS, Config, Expose, Fallback, HealthCheck, Image, InstanceType, Manifest, Origin, Probe,
    Protocol, Reach, RegionSpec, Script, ScriptRun, SecretRef, Service, SshAccess, Tarball, TarballSource,
    Template, Upload, Written, parse_duration,
};

/// Resource tags `spot` itself puts on a resource, at most: `Name` and six `spot:` keys on
/// everything, and on an instance its host key, launch digest and HTTP ports besides.
pub const RESERVED_TAG_COUNT: usize = 10;
/// AWS allows at most 50 tags per resource.
pub const MAX_TAGS: usize = 50;
pub const MIN_TTL_SECS: u64 = 600;
pub const MAX_TTL_SECS: u64 = 7 * 86_400;
pub const DEFAULT_TTL_SECS: u64 = 4 * 3600;
pub const DEFAULT_DEST: &str = "/opt/deployment";

/// Where the deployment's files are.
#[derive(Debug)]
pub struct Paths<'a> {
    /// Repository root (canonical).
    pub root: &'a Path,
    /// Folder manifest paths are relative to (`.spot/` or `deployment/`).
    pub base: &'a Path,
}

fn get<T: Clone>(field: Option<&Spanned<T>>) -> Option<T> {
    field.map(|f| f.value.clone())
}

// ---------------------------------------------------------------- config.yaml

pub fn config(raw: &RawConfig, cx: &mut Cx) -> Config {
    let aws = raw.aws.as_ref().map(|a| &a.value);
    let spot = raw.spot.as_ref().map(|s| &s.value);

    let total_instances = match aws.and_then(|a| a.total_instances.as_ref()) {
        Some(n) if !(1..=1000).contains(&n.value) => {
            cx.error(
                Kind::CountOutOfRange,
                n.span,
                format!("total_instances is {}, outside 1..=1000", n.value),
                "set a count from 1 to 1000",
            );
            1
        }
        Some(n) => n.value,
        None => 1,
    };

    let username = match aws.and_then(|a| a.username.as_ref()) {
        Some(u) if !is_user_name(&u.value) => {
            cx.error(
                Kind::InvalidValue,
                u.span,
                format!("`{}` is not a valid Linux user name", u.value),
                "use lower-case letters, digits, `_` and `-`, starting with a letter (default `ubuntu`)",
            );
            "ubuntu".to_string()
        }
        Some(u) => u.value.clone(),
        None => "ubuntu".to_string(),
    };

    let storage_gb = aws.and_then(|a| a.instance_storage_gb.as_ref()).map_or(50, |s| storage(s, cx));

    let tags = aws.and_then(|a| a.tags.as_ref()).map(|t| tags(t, cx)).unwrap_or_default();

    let max_price =
        match (aws.and_then(|a| a.spot_price_limit.as_ref()), spot.and_then(|s| s.max_price.as_ref())) {
            (Some(a), Some(b)) => {
                cx.error(
                    Kind::Duplicate,
                    b.span,
                    format!("spot.max_price repeats aws.spot_price_limit given on line {}", a.span.line),
                    "keep one of `aws.spot_price_limit` or `spot.max_price`",
                );
                price(b, cx)
            }
            (Some(p), None) | (None, Some(p)) => price(p, cx),
            (None, None) => None,
        };

    let fallback = match spot.and_then(|s| s.fallback.as_ref()) {
        None => Fallback::None,
        Some(f) => match f.value.as_str() {
            "none" => Fallback::None,
            "on-demand" => Fallback::OnDemand,
            other => {
                let help = suggest(other, &["none", "on-demand"], || "write `none` or `on-demand`".into());
                cx.error(Kind::InvalidValue, f.span, format!("unknown fallback `{other}`"), help);
                Fallback::None
            }
        },
    };

    let ttl_secs = match aws.and_then(|a| a.ttl.as_ref()) {
        None => DEFAULT_TTL_SECS,
        Some(t) => match parse_duration(&t.value) {
            Ok(secs) if (MIN_TTL_SECS..=MAX_TTL_SECS).contains(&secs) => secs,
            Ok(_) => {
                cx.error(
                    Kind::BadTtl,
                    t.span,
                    format!("ttl `{}` is outside 10m..=7d", t.value),
                    "choose a time to live from `10m` to `7d`",
                );
                DEFAULT_TTL_SECS
            }
            Err(e) => {
                cx.error(Kind::BadTtl, t.span, e, "write a time to live such as `90m`, `2h` or `1d`");
                DEFAULT_TTL_SECS
            }
        },
    };

    let origin = |span: Span| Origin { file: cx.file.clone(), span };
    let mut written = Written {
        total_instances: aws
            .and_then(|a| a.total_instances.as_ref())
            .map(|n| origin(n.span))
            .unwrap_or_default(),
        ttl: aws.and_then(|a| a.ttl.as_ref()).map(|t| origin(t.span)).unwrap_or_default(),
        ssh_cidrs: Vec::new(),
        public_key: aws
            .and_then(|a| a.public_ssh_key_path.as_ref())
            .map(|p| (origin(p.span), expand_home(&p.value))),
    };
    if let Some(list) = aws.and_then(|a| a.ssh_cidr.as_ref()) {
        written.ssh_cidrs =
            list.value.0.iter().filter(|c| is_cidr(&c.value)).map(|c| origin(c.span)).collect();
    }
    let ssh_access = match aws.and_then(|a| a.ssh_cidr.as_ref()) {
        None => SshAccess::Runner,
        Some(list) => SshAccess::Cidrs(
            list.value
                .0
                .iter()
                .filter(|c| {
                    let ok = is_cidr(&c.value);
                    if !ok {
                        cx.error(
                            Kind::InvalidValue,
                            c.span,
                            format!("`{}` is not a CIDR block", c.value),
                            "write an address with a prefix length, such as `203.0.113.7/32` or `2001:db8::/64`",
                        );
                    }
                    ok && network_only(c, cx)
                })
                .map(|c| c.value.clone())
                .collect(),
        ),
    };

    let extra_authorized_keys = aws
        .and_then(|a| a.public_ssh_key_path.as_ref())
        .and_then(|p| public_key(p, cx))
        .into_iter()
        .collect();

    let regions = match &raw.regions {
        None => {
            cx.error(
                Kind::MissingField,
                raw.at,
                "config.yaml has no `regions`",
                "add `regions:` with at least one `- us-west-2: {machine_type: t3.medium}`",
            );
            Vec::new()
        }
        Some(list) if list.value.is_empty() => {
            cx.error(
                Kind::MissingField,
                list.span,
                "`regions` is empty",
                "add at least one `- us-west-2: {machine_type: t3.medium}`",
            );
            Vec::new()
        }
        Some(list) => regions(&list.value, storage_gb, &tags, max_price, cx),
    };

    let expose = raw.expose.as_ref().map(|list| expose(&list.value, cx)).unwrap_or_default();
    if let Some(list) = &raw.expose {
        rule_quota(&ssh_access, &expose, list.span, cx);
    }

    let user_tags =
        tags.len() + regions.iter().map(|r| r.tags.len().saturating_sub(tags.len())).max().unwrap_or(0);
    if user_tags + RESERVED_TAG_COUNT > MAX_TAGS {
        let span = aws.and_then(|a| a.tags.as_ref()).map_or(raw.at, |t| t.span);
        cx.error(
            Kind::BadTag,
            span,
            format!("{user_tags} tags plus spot's {RESERVED_TAG_COUNT} exceed AWS's limit of {MAX_TAGS} per resource"),
            format!("keep at most {} tags of your own", MAX_TAGS - RESERVED_TAG_COUNT),
        );
    }

    Config {
        total_instances,
        username,
        storage_gb,
        tags,
        regions,
        max_price,
        fallback,
        ttl_secs,
        ssh_access,
        dedicated_vpc: aws.and_then(|a| get(a.use_dedicated_vpc.as_ref())).unwrap_or(false),
        public_ip: aws.and_then(|a| get(a.associate_public_ip.as_ref())).unwrap_or(true),
        extra_authorized_keys,
        expose,
        written,
    }
}

/// EC2's default quota of inbound rules per security group, for IPv4 and IPv6 each.
pub const RULES_PER_GROUP: usize = 60;

/// The `expose` entries, each checked, then checked against each other: no port twice.
fn expose(list: &[Spanned<RawExposeEntry>], cx: &mut Cx) -> Vec<Expose> {
    let mut out: Vec<Expose> = Vec::new();
    for entry in list {
        let Some(e) = expose_entry(entry, cx) else { continue };
        let clash =
            out.iter().find(|o| o.protocol == e.protocol && o.ports.0 <= e.ports.1 && e.ports.0 <= o.ports.1);
        if let Some(o) = clash {
            cx.error(
                Kind::Duplicate,
                e.origin.span,
                format!("{} overlaps {} exposed on line {}", e.label(), o.label(), o.origin.span.line),
                "expose each port once: list every source of a port in its one entry's `from`",
            );
            continue;
        }
        out.push(e);
    }
    out
}

fn expose_entry(entry: &Spanned<RawExposeEntry>, cx: &mut Cx) -> Option<Expose> {
    let origin = |span: Span, cx: &Cx| Origin { file: cx.file.clone(), span };
    let default = RawExpose::default();
    let (port, full) = match &entry.value {
        RawExposeEntry::Port(p) => (Some(p), &default),
        RawExposeEntry::Full(f) => (f.port.as_ref(), f),
    };
    let Some(port) = port else {
        cx.error(
            Kind::MissingField,
            entry.span,
            "an `expose` entry has no `port`",
            "add `port: 8080` (or a range such as `port: 8000-8010`)",
        );
        return None;
    };
    let ports = port_range(&port.value.0, port.span, cx)?;
    let protocol = match full.protocol.as_ref() {
        None => Protocol::Tcp,
        Some(p) => match p.value.as_str() {
            "tcp" => Protocol::Tcp,
            "udp" => Protocol::Udp,
            other => {
                let help = suggest(other, &["tcp", "udp"], || "write `tcp` or `udp`".into());
                cx.error(Kind::InvalidValue, p.span, format!("unknown protocol `{other}`"), help);
                return None;
            }
        },
    };
    let mut from = Vec::new();
    let mut from_origins = Vec::new();
    match full.from.as_ref() {
        None => {
            from.push(Reach::Runner);
            from_origins.push(Origin::default());
        }
        Some(list) if list.value.0.is_empty() => {
            cx.error(
                Kind::MissingField,
                list.span,
                "`from` is empty: nobody could reach this port",
                "leave `from` out for the runner alone, or list `runner`, `anywhere` or CIDR blocks",
            );
            return None;
        }
        Some(list) => {
            let mut bad = false;
            for source in &list.value.0 {
                let reach = match source.value.as_str() {
                    "runner" => Reach::Runner,
                    "anywhere" => Reach::Anywhere,
                    c if is_cidr(c) => {
                        if !network_only(source, cx) {
                            bad = true;
                            continue;
                        }
                        Reach::Cidr(c.to_string())
                    }
                    other => {
                        cx.error(
                            Kind::InvalidValue,
                            source.span,
                            format!("`{other}` is not `runner`, `anywhere` or a CIDR block"),
                            "write `runner` (the address spot runs from), `anywhere`, or a CIDR such as `203.0.113.0/24` or `2001:db8::/64`",
                        );
                        bad = true;
                        continue;
                    }
                };
                if from.contains(&reach) {
                    cx.error(
                        Kind::Duplicate,
                        source.span,
                        format!("`{}` is listed twice in this `from`", source.value),
                        "list each source once",
                    );
                    bad = true;
                    continue;
                }
                from.push(reach);
                from_origins.push(origin(source.span, cx));
            }
            if bad {
                return None;
            }
        }
    }
    let http = full.http.as_ref().is_some_and(|h| h.value);
    if http && (protocol != Protocol::Tcp || ports.0 != ports.1) {
        let span = full.http.as_ref().map_or(entry.span, |h| h.span);
        cx.error(
            Kind::InvalidValue,
            span,
            "`http: true` needs one TCP port",
            "give the HTTP server's port as its own entry, e.g. `- {port: 8080, http: true}`",
        );
        return None;
    }
    Some(Expose { ports, protocol, from, http, from_origins, origin: origin(entry.span, cx) })
}

/// `8080` or `8000-8010`: ports 1 to 65535, not 22 (SSH's).
fn port_range(text: &str, span: Span, cx: &mut Cx) -> Option<(u16, u16)> {
    let port = |t: &str| t.trim().parse::<u16>().ok().filter(|p| *p > 0);
    let range = match text.split_once('-') {
        None => port(text).map(|p| (p, p)),
        Some((a, b)) => port(a).zip(port(b)),
    };
    let Some((first, last)) = range else {
        cx.error(
            Kind::InvalidValue,
            span,
            format!("`{text}` is not a port from 1 to 65535 or a range of them"),
            "write a port such as `8080` or a range such as `8000-8010`",
        );
        return None;
    };
    if first > last {
        cx.error(
            Kind::InvalidValue,
            span,
            format!("the range `{text}` runs backwards"),
            format!("write the lower port first: `{last}-{first}`"),
        );
        return None;
    }
    if (first..=last).contains(&22) {
        cx.error(
            Kind::InvalidValue,
            span,
            if first == last {
                "port 22 is SSH's: spot opens it itself, to `aws.ssh_cidr`".to_string()
            } else {
                format!("`{text}` includes port 22, which is SSH's: spot opens it itself, to `aws.ssh_cidr`")
            },
            "leave 22 out of `expose` (split a range around it); choose who reaches SSH with `aws.ssh_cidr`",
        );
        return None;
    }
    Some((first, last))
}

/// Refuses more inbound rules than EC2 lets one security group have (per address family).
fn rule_quota(ssh: &SshAccess, expose: &[Expose], span: Span, cx: &mut Cx) {
    let family = |c: &str| usize::from(c.contains(':'));
    let mut count = [0usize; 2];
    let ssh = match ssh {
        SshAccess::Runner => vec![Reach::Runner],
        SshAccess::Cidrs(cidrs) => cidrs.iter().map(|c| Reach::Cidr(c.clone())).collect(),
    };
    for reach in ssh.iter().chain(expose.iter().flat_map(|e| &e.from)) {
        match reach {
            // The runner's address is of one family or the other: counted against both.
            Reach::Runner | Reach::Anywhere => {
                count[0] += 1;
                count[1] += 1;
            }
            Reach::Cidr(c) => count[family(c)] += 1,
        }
    }
    for (n, name) in count.iter().zip(["IPv4", "IPv6"]) {
        if *n > RULES_PER_GROUP {
            cx.error(
                Kind::InvalidValue,
                span,
                format!("SSH and `expose` need {n} {name} inbound rules; EC2 allows {RULES_PER_GROUP} per security group"),
                "expose fewer entries or sources, or use wider CIDR blocks",
            );
        }
    }
}

fn storage(s: &Spanned<u32>, cx: &mut Cx) -> u32 {
    if (8..=16_384).contains(&s.value) {
        s.value
    } else {
        cx.error(
            Kind::InvalidValue,
            s.span,
            format!("instance_storage_gb is {}, outside 8..=16384", s.value),
            "gp3 root volumes are 8 to 16384 GiB; Ubuntu needs at least 8",
        );
        50
    }
}

fn price(p: &Spanned<f64>, cx: &mut Cx) -> Option<f64> {
    if p.value > 0.0 && p.value <= 1000.0 {
        Some(p.value)
    } else {
        cx.error(
            Kind::InvalidValue,
            p.span,
            format!("price {} is not a positive USD-per-hour amount", p.value),
            "write a price such as `0.05` (USD per instance-hour), or leave it out to cap at on-demand",
        );
        None
    }
}

fn tags(
    raw: &Spanned<super::read::KeyedMap<Spanned<super::read::ScalarText>>>,
    cx: &mut Cx,
) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    for (key, value) in &raw.value.0 {
        let k = key.value.as_str();
        let lower = k.to_ascii_lowercase();
        if lower.starts_with("spot:") || lower.starts_with("aws:") {
            cx.error(
                Kind::BadTag,
                key.span,
                format!("tag key `{k}` uses a reserved prefix"),
                "`spot:` tags are set by spot itself and `aws:` by AWS; choose another key",
            );
        } else if k.is_empty() || k.chars().count() > 128 || !k.chars().all(is_tag_char) {
            cx.error(
                Kind::BadTag,
                key.span,
                format!("tag key `{k}` is not accepted by AWS"),
                "tag keys are 1-128 characters: letters, digits, spaces and `+ - = . _ : / @`",
            );
        } else if k == "Name" {
            cx.error(
                Kind::BadTag,
                key.span,
                "the `Name` tag is set by spot to the deployment id",
                "remove it; use another key for your own label",
            );
        } else if value.value.0.chars().count() > 256 || !value.value.0.chars().all(is_tag_char) {
            cx.error(
                Kind::BadTag,
                value.span,
                format!("tag value for `{k}` is not accepted by AWS"),
                "tag values are at most 256 characters: letters, digits, spaces and `+ - = . _ : / @`",
            );
        } else {
            out.insert(k.to_string(), value.value.0.clone());
        }
    }
    out
}

fn is_tag_char(c: char) -> bool {
    c.is_alphanumeric() || " +-=._:/@".contains(c)
}

fn is_user_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 32
        && s.starts_with(|c: char| c.is_ascii_lowercase() || c == '_')
        && s.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '-')
}

/// A CIDR's network address (host bits cleared, as EC2 stores a source) and prefix.
pub fn network_of(cidr: &str) -> Option<(std::net::IpAddr, u32)> {
    use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
    let (addr, prefix) = cidr.trim().split_once('/')?;
    match (addr.parse::<IpAddr>().ok()?, prefix.parse::<u32>().ok()?) {
        (IpAddr::V4(a), p) if p <= 32 => {
            let mask = u32::MAX.checked_shl(32 - p).unwrap_or(0);
            Some((IpAddr::V4(Ipv4Addr::from(u32::from(a) & mask)), p))
        }
        (IpAddr::V6(a), p) if p <= 128 => {
            let mask = u128::MAX.checked_shl(128 - p).unwrap_or(0);
            Some((IpAddr::V6(Ipv6Addr::from(u128::from(a) & mask)), p))
        }
        _ => None,
    }
}

/// Reports a CIDR with host bits set (`203.0.113.5/24`): EC2 would open its whole network
/// and answer with that, which is rarely what was meant. True when it is fine.
fn network_only(c: &Spanned<String>, cx: &mut Cx) -> bool {
    let Some((network, prefix)) = network_of(&c.value) else { return true };
    let written = c.value.trim().split_once('/').and_then(|(a, _)| a.parse::<std::net::IpAddr>().ok());
    if written == Some(network) {
        return true;
    }
    let one = if network.is_ipv4() { 32 } else { 128 };
    cx.error(
        Kind::InvalidValue,
        c.span,
        format!("`{}` has host bits set: EC2 would open all of {network}/{prefix}", c.value),
        format!(
            "write the network `{network}/{prefix}`, or `{}/{one}` for that one address",
            c.value.trim().split_once('/').map_or("", |(a, _)| a)
        ),
    );
    false
}

pub fn is_cidr(s: &str) -> bool {
    let Some((addr, prefix)) = s.split_once('/') else {
        return false;
    };
    match (addr.parse::<std::net::IpAddr>(), prefix.parse::<u8>()) {
        (Ok(std::net::IpAddr::V4(_)), Ok(p)) => p <= 32,
        (Ok(std::net::IpAddr::V6(_)), Ok(p)) => p <= 128,
        _ => false,
    }
}

/// `~/` as the home folder.
fn expand_home(path: &str) -> PathBuf {
    match path.strip_prefix("~/") {
        Some(rest) => std::env::home_dir().map_or_else(|| PathBuf::from(path), |h| h.join(rest)),
        None => PathBuf::from(path),
    }
}

fn public_key(path: &Spanned<String>, cx: &mut Cx) -> Option<String> {
    let expanded = expand_home(&path.value);
    // A public key is one line: 64 KiB is plenty, and a huge (or endless) file is not read.
    let Some(text) = super::paths::read_bounded(&expanded, 64 * 1024)
        .ok()
        .flatten()
        .and_then(|bytes| String::from_utf8(bytes).ok())
    else {
        cx.error(
            Kind::MissingFile,
            path.span,
            format!("cannot read public key `{}`", path.value),
            "point public_ssh_key_path at an existing `.pub` file, or remove it",
        );
        return None;
    };
    let line = text.lines().find(|l| !l.trim().is_empty()).unwrap_or_default().trim().to_string();
    let looks_public = line.split_whitespace().count() >= 2
        && (line.starts_with("ssh-") || line.starts_with("ecdsa-") || line.starts_with("sk-"));
    if looks_public {
        Some(line)
    } else {
        cx.error(
            Kind::InvalidValue,
            path.span,
            format!("`{}` is not an OpenSSH public key", path.value),
            "give the `.pub` file (one line starting `ssh-ed25519` or `ssh-rsa`), never the private key",
        );
        None
    }
}

fn regions(
    entries: &[RawRegionEntry],
    storage_gb: u32,
    tags_all: &BTreeMap<String, String>,
    max_price: Option<f64>,
    cx: &mut Cx,
) -> Vec<RegionSpec> {
    let mut seen: HashMap<String, usize> = HashMap::new();
    let mut out = Vec::new();
    for entry in entries {
        let name = &entry.name;
        if !AWS_REGIONS.contains(&name.value.as_str()) {
            let help = suggest(&name.value, AWS_REGIONS, || {
                "use an AWS region name such as `us-east-1` or `eu-west-1`".into()
            });
            cx.error(Kind::UnknownRegion, name.span, format!("`{}` is not an AWS region", name.value), help);
            continue;
        }
        if let Some(line) = seen.insert(name.value.clone(), name.span.line) {
            cx.error(
                Kind::Duplicate,
                name.span,
                format!("region `{}` is listed twice (first on line {line})", name.value),
                "list each region once; give it several machine types to diversify",
            );
            continue;
        }
        let settings = &entry.settings.value;
        let mut types: Vec<InstanceType> = Vec::new();
        let mut type_origins = Vec::new();
        match &settings.machine_type {
            None => cx.error(
                Kind::MissingField,
                name.span,
                format!("region `{}` has no `machine_type`", name.value),
                "add `machine_type: t3.medium` (or a list of types)",
            ),
            Some(list) => {
                for t in &list.value.0 {
                    match InstanceType::parse(&t.value) {
                        Ok(it) if types.contains(&it) => cx.error(
                            Kind::Duplicate,
                            t.span,
                            format!("instance type `{}` is listed twice", t.value),
                            "list each type once",
                        ),
                        Ok(it) => {
                            types.push(it);
                            type_origins.push(Origin { file: cx.file.clone(), span: t.span });
                        }
                        Err(e) => cx.error(
                            Kind::BadInstanceType,
                            t.span,
                            format!("`{}` is not an EC2 instance type", t.value),
                            e,
                        ),
                    }
                }
            }
        }
        let image = match &settings.image {
            None => Image::Auto,
            Some(i) if matches!(i.value.as_str(), "auto" | "latest") => Image::Auto,
            Some(i) if is_ami_id(&i.value) => {
                let archs: BTreeSet<_> = types.iter().map(InstanceType::arch).collect();
                if archs.len() > 1 {
                    cx.error(
                        Kind::InvalidValue,
                        i.span,
                        format!("one image `{}` cannot boot both x86_64 and arm64 instance types", i.value),
                        "use `image: auto`, or list machine types of one architecture",
                    );
                }
                Image::Ami(i.value.clone())
            }
            Some(i) => {
                cx.error(
                    Kind::InvalidValue,
                    i.span,
                    format!("image `{}` is neither `auto` nor an AMI id", i.value),
                    "write `auto` or an id such as `ami-0123456789abcdef0`",
                );
                Image::Auto
            }
        };
        let mut region_tags = tags_all.clone();
        if let Some(t) = &settings.tags {
            region_tags.extend(tags(t, cx));
        }
        out.push(RegionSpec {
            name: name.value.clone(),
            instance_types: types,
            image,
            max_price: settings.spot_price_limit.as_ref().map_or(max_price, |p| price(p, cx)),
            storage_gb: settings.instance_storage_gb.as_ref().map_or(storage_gb, |s| storage(s, cx)),
            tags: region_tags,
            origin: Origin { file: cx.file.clone(), span: name.span },
            type_origins,
        });
    }
    out
}

fn is_ami_id(s: &str) -> bool {
    s.strip_prefix("ami-").is_some_and(|hex| {
        (8..=17).contains(&hex.len()) && hex.chars().all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase())
    })
}

// ---------------------------------------------------------------- deployment.yaml

pub fn manifest(raw: &RawManifest, paths: &Paths, cx: &mut Cx) -> Manifest {
    if let Some(v) = raw.version.as_ref().filter(|v| v.value != 1) {
        cx.error(
            Kind::InvalidValue,
            v.span,
            format!("manifest version {} is not supported", v.value),
            "write `version: 1`",
        );
    }
    let template = match &raw.template {
        None => Template::Minimal,
        Some(t) => match t.value.as_str() {
            "minimal" => Template::Minimal,
            "docker" => Template::Docker,
            other => {
                let help = if other.contains('/') || other.ends_with(".yaml") || other.ends_with(".yml") {
                    "custom cloud-init templates are not supported: use `minimal` or `docker` with packages, scripts and services".to_string()
                } else {
                    suggest(other, &["minimal", "docker"], || "write `minimal` or `docker`".into())
                };
                cx.error(Kind::InvalidValue, t.span, format!("unknown template `{other}`"), help);
                Template::Minimal
            }
        },
    };

    let mut packages = Vec::new();
    for p in raw.packages.iter().flat_map(|l| &l.value) {
        if !is_package_name(&p.value) {
            cx.error(
                Kind::InvalidValue,
                p.span,
                format!("`{}` is not a Debian package name", p.value),
                "package names are lower-case letters, digits and `+ - .`, optionally `=version`",
            );
        } else if packages.contains(&p.value) {
            cx.error(
                Kind::Duplicate,
                p.span,
                format!("package `{}` is listed twice", p.value),
                "list each package once",
            );
        } else {
            packages.push(p.value.clone());
        }
    }

    let scripts = scripts(raw, paths, cx);
    let uploads = raw
        .uploads
        .iter()
        .flat_map(|l| &l.value)
        .filter_map(|u| upload(&u.value, u.span, paths, cx))
        .collect();
    let services = services(raw.services.iter().flat_map(|l| &l.value).collect(), paths, cx);
    let tarball = tarball(raw, paths, cx);

    let mut env = BTreeMap::new();
    for (k, v) in raw.env.iter().flat_map(|e| &e.value.0) {
        if is_env_name(&k.value) {
            env.insert(k.value.clone(), v.value.0.clone());
        } else {
            cx.error(
                Kind::InvalidValue,
                k.span,
                format!("`{}` is not an environment variable name", k.value),
                "use letters, digits and `_`, not starting with a digit",
            );
        }
    }
    let secrets = secrets(raw, &env, cx);

    Manifest { template, packages, scripts, uploads, services, tarball, env, secrets }
}

fn is_package_name(s: &str) -> bool {
    let name = s.split_once('=').map_or(s, |(n, _)| n);
    name.len() >= 2
        && name.starts_with(|c: char| c.is_ascii_lowercase() || c.is_ascii_digit())
        && name.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "+-.".contains(c))
}

fn is_env_name(s: &str) -> bool {
    !s.is_empty()
        && !s.starts_with(|c: char| c.is_ascii_digit())
        && s.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
}

fn is_script_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && !s.starts_with('.')
        && !s.contains("..")
        && s.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
}

fn is_unit_name(s: &str) -> bool {
    !s.is_empty() && s.len() <= 200 && s.chars().all(|c| c.is_ascii_alphanumeric() || ":_.-@".contains(c))
}

/// A path written in the manifest, resolved inside the repository.
struct Resolved {
    /// Relative to the repository root, `/`-separated.
    rel: String,
    local: PathBuf,
    is_dir: bool,
}

/// Resolves `written` against `base`; refuses empty, absolute, `..`, missing paths and
/// symlinks leading out of `root`.
fn resolve(written: &Spanned<String>, base: &Path, root: &Path, cx: &mut Cx) -> Option<Resolved> {
    let text = written.value.as_str();
    let path = Path::new(text);
    if text.is_empty() {
        cx.error(
            Kind::InvalidValue,
            written.span,
            "the path is empty",
            "write a path relative to the folder of this file",
        );
        return None;
    }
    if path.is_absolute()
        || path.components().any(|c| matches!(c, Component::ParentDir | Component::Prefix(_)))
    {
        cx.error(
            Kind::PathEscapes,
            written.span,
            format!("`{text}` leaves the repository"),
            "paths must be relative and stay inside the repository: no leading `/` and no `..`",
        );
        return None;
    }
    let local = base.join(path);
    if fs::symlink_metadata(&local).is_err() {
        cx.error(
            Kind::MissingFile,
            written.span,
            format!("`{text}` does not exist"),
            format!(
                "create `{}` or fix the path (it is relative to `{}`)",
                rel_to(root, &local),
                rel_to(root, base).trim_end_matches('/')
            ),
        );
        return None;
    }
    match super::paths::real_inside(root, &local) {
        Ok(real) if super::paths::in_git_dir(real.strip_prefix(root).unwrap_or(&real)) => {
            cx.error(
                Kind::PathEscapes,
                written.span,
                format!("`{text}` is the checkout's `.git` (or inside it), which is never shipped"),
                "name the build's own folder; `.git` holds the workflow's credentials",
            );
            None
        }
        Ok(real) => Some(Resolved { rel: rel_to(root, &local), is_dir: real.is_dir(), local }),
        Err(Some(real)) => {
            cx.error(
                Kind::PathEscapes,
                written.span,
                format!("`{text}` is a symlink to `{}`, outside the repository", real.display()),
                "copy the file into the repository instead of linking to it",
            );
            None
        }
        Err(None) => {
            cx.error(
                Kind::MissingFile,
                written.span,
                format!("`{text}` is a symlink to nothing"),
                "fix or remove the broken symlink",
            );
            None
        }
    }
}

fn absolute_dest(dest: &Spanned<String>, cx: &mut Cx) -> Option<String> {
    let d = dest.value.as_str();
    if !d.starts_with('/')
        || Path::new(d).components().any(|c| matches!(c, Component::ParentDir))
        || d.contains('\0')
    {
        cx.error(
            Kind::InvalidValue,
            dest.span,
            format!("destination `{d}` is not an absolute path"),
            "write an absolute path on the instance without `..`, such as `/opt/app/`",
        );
        return None;
    }
    Some(d.to_string())
}

fn duration_field(field: Option<&Spanned<String>>, default: u64, max: u64, what: &str, cx: &mut Cx) -> u64 {
    let Some(f) = field else { return default };
    match parse_duration(&f.value) {
        Ok(secs) if secs >= 1 && secs <= max => secs,
        Ok(_) => {
            cx.error(
                Kind::InvalidValue,
                f.span,
                format!("{what} `{}` is out of range", f.value),
                format!("choose from `1s` to `{}`", super::types::format_duration(max)),
            );
            default
        }
        Err(e) => {
            cx.error(Kind::InvalidValue, f.span, e, format!("write the {what} such as `30s` or `5m`"));
            default
        }
    }
}

fn scripts(raw: &RawManifest, paths: &Paths, cx: &mut Cx) -> Vec<Script> {
    let list: Vec<&Spanned<super::raw::RawScript>> = raw.scripts.iter().flat_map(|l| &l.value).collect();
    let with_order = list.iter().filter(|s| s.value.order.is_some()).count();
    let mut orders: HashMap<u32, usize> = HashMap::new();
    let mut names: HashMap<String, usize> = HashMap::new();
    let mut out: Vec<(u32, Script)> = Vec::new();
    for (index, item) in list.iter().enumerate() {
        let s = &item.value;
        let run = match (&s.path, &s.command) {
            (Some(_), Some(c)) => {
                cx.error(
                    Kind::InvalidValue,
                    c.span,
                    "a script has both `path` and `command`",
                    "keep one of them",
                );
                None
            }
            (None, None) => {
                cx.error(
                    Kind::MissingField,
                    item.span,
                    "a script needs `path` or `command`",
                    "add `path: scripts/setup.sh`",
                );
                None
            }
            (None, Some(c)) if c.value.trim().is_empty() => {
                cx.error(Kind::InvalidValue, c.span, "the command is empty", "write a shell command line");
                None
            }
            (None, Some(c)) => Some(ScriptRun::Command { command: c.value.clone() }),
            (Some(p), None) => resolve(p, paths.base, paths.root, cx).and_then(|r| {
                let ok = check_script_file(&r, p, cx);
                ok.then_some(ScriptRun::File { path: r.rel, local: r.local })
            }),
        };
        let name = match (&s.name, &run) {
            (Some(n), _) => n.value.clone(),
            (None, Some(ScriptRun::File { path, .. })) => {
                path.rsplit('/').next().unwrap_or(path).trim_end_matches(".sh").to_string()
            }
            _ => format!("script-{}", index + 1),
        };
        // The name becomes a file name on the instance (and a line of the log): letters,
        // digits, `-`, `_` and `.` only, as a unit name.
        if !is_script_name(&name) {
            let (span, help) = match (&s.name, &s.path) {
                (Some(n), _) => {
                    (n.span, "use letters, digits, `-`, `_` and `.` (no `/`, `..` or line break), at most 64")
                }
                (None, Some(p)) => (
                    p.span,
                    "rename the file, or give the script a `name:` of letters, digits, `-`, `_` and `.`",
                ),
                (None, None) => (item.span, "give the script a `name:`"),
            };
            cx.error(
                Kind::InvalidValue,
                span,
                format!("`{}` is not a valid script name", name.escape_debug()),
                help,
            );
        }
        if let Some(n) = &s.name
            && let Some(line) = names.insert(n.value.clone(), n.span.line)
        {
            cx.error(
                Kind::Duplicate,
                n.span,
                format!("script name `{}` is used twice (first on line {line})", n.value),
                "give each script its own name",
            );
        }
        let order = match &s.order {
            Some(o) => {
                if let Some(line) = orders.insert(o.value, o.span.line) {
                    cx.error(
                        Kind::Duplicate,
                        o.span,
                        format!("order {} is used twice (first on line {line})", o.value),
                        "give each script its own `order`",
                    );
                }
                o.value
            }
            None => {
                if with_order > 0 {
                    cx.error(
                        Kind::MissingField,
                        item.span,
                        format!("script `{name}` has no `order` while others do"),
                        "give every script an `order`, or none (then they run in file order)",
                    );
                }
                u32::try_from(index).unwrap_or(u32::MAX)
            }
        };
        let timeout_secs = duration_field(s.timeout.as_ref(), 600, 86_400, "timeout", cx);
        if let Some(run) = run {
            out.push((order, Script { name, run, timeout_secs }));
        }
    }
    out.sort_by_key(|(order, _)| *order);
    out.into_iter().map(|(_, s)| s).collect()
}

fn check_script_file(r: &Resolved, written: &Spanned<String>, cx: &mut Cx) -> bool {
    if r.is_dir {
        cx.error(
            Kind::BadScript,
            written.span,
            format!("`{}` is a folder, not a script", r.rel),
            "point `path` at a script file",
        );
        return false;
    }
    let head = fs::read(&r.local).unwrap_or_default();
    if head.iter().all(u8::is_ascii_whitespace) {
        cx.error_in_file(
            Kind::BadScript,
            written.span,
            &r.rel,
            Span::FILE,
            format!("script `{}` is empty", r.rel),
            "write the script, starting with a line such as `#!/bin/bash`",
        );
        false
    } else if !head.starts_with(b"#!") {
        cx.error_in_file(
            Kind::BadScript,
            written.span,
            &r.rel,
            Span::START,
            format!("script `{}` does not start with `#!`", r.rel),
            "make the first line an interpreter line such as `#!/usr/bin/env bash`",
        );
        false
    } else {
        true
    }
}

fn upload(u: &RawUpload, span: Span, paths: &Paths, cx: &mut Cx) -> Option<Upload> {
    let Some(source) = &u.source else {
        cx.error(
            Kind::MissingField,
            span,
            "an upload needs `source`",
            "add `source: files/` (relative to the manifest's folder)",
        );
        return None;
    };
    let resolved = resolve(source, paths.base, paths.root, cx);
    let dest = match &u.dest {
        None => Some(DEFAULT_DEST.to_string() + "/"),
        Some(d) => absolute_dest(d, cx),
    };
    let permissions = u.permissions.as_ref().and_then(|p| {
        let ok = (3..=4).contains(&p.value.len()) && p.value.chars().all(|c| ('0'..='7').contains(&c));
        let mode = if ok { u32::from_str_radix(&p.value, 8).ok() } else { None };
        if let Some(m) = mode.filter(|m| m & 0o6000 != 0) {
            cx.error(
                Kind::InvalidValue,
                p.span,
                format!("permissions `{}` set setuid or setgid ({:o}): spot never ships those bits", p.value, m & 0o6000),
                "drop the leading digit's 4 and 2 (such as \"0755\"); a script can set the bit on the instance if it must",
            );
            None
        } else if ok {
            mode
        } else {
            cx.error(
                Kind::InvalidValue,
                p.span,
                format!("permissions `{}` is not an octal mode", p.value),
                "write three or four octal digits in quotes, such as \"0644\" or \"755\"",
            );
            None
        }
    });
    let owner = u.owner.as_ref().and_then(|o| {
        let ok = o.value.split(':').count() <= 2 && o.value.split(':').all(is_user_name);
        if ok {
            Some(o.value.clone())
        } else {
            cx.error(
                Kind::InvalidValue,
                o.span,
                format!("owner `{}` is not `user` or `user:group`", o.value),
                "write a user name, optionally `:group`",
            );
            None
        }
    });
    let mut exclude = Vec::new();
    for pattern in u.exclude.iter().flat_map(|e| &e.value) {
        match Excludes::new(std::slice::from_ref(&pattern.value)) {
            Ok(_) => exclude.push(pattern.value.clone()),
            Err(e) => cx.error(
                Kind::BadGlob,
                pattern.span,
                format!("exclude `{}` is not a valid glob: {e}", pattern.value),
                "see the exclude rules in the README: `*`, `**`, `?`, `[abc]`",
            ),
        }
    }
    let resolved = resolved?;
    let mut dest = dest?;
    if resolved.is_dir {
        dest = dest.trim_end_matches('/').to_string();
        if dest.is_empty() {
            dest.push('/');
        }
    } else if dest.ends_with('/') {
        let name = resolved.rel.rsplit('/').next().unwrap_or(&resolved.rel);
        dest.push_str(name);
    }
    Some(Upload {
        source: resolved.rel,
        local: resolved.local,
        is_dir: resolved.is_dir,
        dest,
        permissions,
        owner,
        // Each pattern compiled alone above, so the set compiles too.
        exclude: Excludes::new(&exclude).unwrap_or_default(),
        gitignore: get(u.gitignore.as_ref()).unwrap_or(false),
        origin: Origin { file: cx.file.clone(), span: source.span },
    })
}

/// The parts of a unit file `spot` checks.
#[derive(Debug, Default)]
struct Unit {
    sections: BTreeSet<String>,
    exec_start: bool,
    /// Units named in `After=`, `Requires=`, `Wants=`, `BindsTo=`.
    ordering: Vec<String>,
}

fn parse_unit(text: &str) -> Unit {
    let mut unit = Unit::default();
    let mut section = String::new();
    for line in text.lines().map(str::trim) {
        if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
            continue;
        }
        if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            section = name.to_string();
            unit.sections.insert(section.clone());
            continue;
        }
        let Some((key, value)) = line.split_once('=') else {
            continue;
        };
        match (section.as_str(), key.trim()) {
            ("Service", "ExecStart") if !value.trim().is_empty() => unit.exec_start = true,
            ("Unit", "After" | "Requires" | "Wants" | "BindsTo") => {
                unit.ordering.extend(value.split_whitespace().map(str::to_string));
            }
            _ => {}
        }
    }
    unit
}

fn services(list: Vec<&Spanned<RawService>>, paths: &Paths, cx: &mut Cx) -> Vec<Service> {
    let mut out: Vec<(Service, Span)> = Vec::new();
    let mut names: HashMap<String, usize> = HashMap::new();
    let mut declared: Vec<Vec<Spanned<String>>> = Vec::new();
    for item in list {
        let s = &item.value;
        let name = match &s.name {
            None => {
                cx.error(
                    Kind::MissingField,
                    item.span,
                    "a service needs `name`",
                    "add `name: app` (the unit name without `.service`)",
                );
                continue;
            }
            Some(n) => {
                let plain = n.value.strip_suffix(".service").unwrap_or(&n.value).to_string();
                if !is_unit_name(&plain) {
                    cx.error(
                        Kind::InvalidValue,
                        n.span,
                        format!("`{}` is not a systemd unit name", n.value),
                        "use letters, digits and `: _ . - @`",
                    );
                    continue;
                }
                if let Some(line) = names.insert(plain.clone(), n.span.line) {
                    cx.error(
                        Kind::Duplicate,
                        n.span,
                        format!("service `{plain}` is defined twice (first on line {line})"),
                        "give each service its own name",
                    );
                    continue;
                }
                Spanned::new(plain, n.span)
            }
        };
        let Some(file) = &s.file else {
            cx.error(
                Kind::MissingField,
                item.span,
                format!("service `{}` needs `file`", name.value),
                "add `file: services/<name>.service`",
            );
            continue;
        };
        let Some(resolved) = resolve(file, paths.base, paths.root, cx) else {
            continue;
        };
        let text = fs::read_to_string(&resolved.local).unwrap_or_default();
        let unit = parse_unit(&text);
        let mut missing: Vec<&str> =
            ["Unit", "Service", "Install"].into_iter().filter(|sec| !unit.sections.contains(*sec)).collect();
        if unit.sections.contains("Service") && !unit.exec_start {
            missing.push("ExecStart= in [Service]");
        }
        if !missing.is_empty() {
            cx.error_in_file(
                Kind::BadUnit,
                file.span,
                &resolved.rel,
                Span::FILE,
                format!("unit `{}` lacks {}", resolved.rel, missing.iter().map(|m| format!("`{m}`")).collect::<Vec<_>>().join(", ")),
                "a service unit needs [Unit], [Service] with ExecStart=, and [Install] (for `WantedBy=multi-user.target`)",
            );
        }
        let health_check = s.health_check.as_ref().and_then(|h| health_check(&h.value, h.span, cx));
        let mut deps: Vec<Spanned<String>> = s.depends_on.iter().flat_map(|l| l.value.clone()).collect();
        for d in &mut deps {
            if let Some(stripped) = d.value.strip_suffix(".service") {
                d.value = stripped.to_string();
            }
        }
        // Unit-file ordering on other manifest services counts too; others are systemd's business.
        let from_unit: Vec<String> =
            unit.ordering.iter().filter_map(|u| u.strip_suffix(".service").map(str::to_string)).collect();
        declared.push(deps);
        out.push((
            Service {
                name: name.value,
                file: resolved.rel,
                local: resolved.local,
                enabled: get(s.enabled.as_ref()).unwrap_or(true),
                start: get(s.start.as_ref()).unwrap_or(true),
                depends_on: from_unit,
                health_check,
            },
            name.span,
        ));
    }
    let known: Vec<String> = out.iter().map(|(s, _)| s.name.clone()).collect();
    for ((service, _), deps) in out.iter_mut().zip(declared) {
        // Each dependency once, however many of After=/Requires=/Wants=/BindsTo= name it.
        let mut seen = BTreeSet::new();
        service.depends_on.retain(|d| known.contains(d) && *d != service.name && seen.insert(d.clone()));
        for d in deps {
            if !known.contains(&d.value) {
                let refs: Vec<&str> = known.iter().map(String::as_str).collect();
                let help = suggest(&d.value, &refs, || {
                    format!(
                        "services defined here: {}",
                        if refs.is_empty() { "none".into() } else { refs.join(", ") }
                    )
                });
                cx.error(
                    Kind::UnknownDependency,
                    d.span,
                    format!(
                        "service `{}` depends on `{}`, which is not a service here",
                        service.name, d.value
                    ),
                    help,
                );
            } else if !service.depends_on.contains(&d.value) {
                service.depends_on.push(d.value);
            }
        }
    }
    start_order(out, cx)
}

/// Orders services dependencies-first (stable in manifest order); reports cycles.
fn start_order(services: Vec<(Service, Span)>, cx: &mut Cx) -> Vec<Service> {
    let index: HashMap<String, usize> =
        services.iter().enumerate().map(|(i, (s, _))| (s.name.clone(), i)).collect();
    let mut state = vec![0u8; services.len()]; // 0 new, 1 visiting, 2 done
    let mut order = Vec::new();
    let mut reported = false;
    fn visit(
        i: usize,
        services: &[(Service, Span)],
        index: &HashMap<String, usize>,
        state: &mut [u8],
        path: &mut Vec<usize>,
        order: &mut Vec<usize>,
    ) -> Option<Vec<usize>> {
        match state[i] {
            2 => return None,
            1 => {
                let start = path.iter().position(|&p| p == i).unwrap_or(0);
                let mut cycle = path[start..].to_vec();
                cycle.push(i);
                return Some(cycle);
            }
            _ => {}
        }
        state[i] = 1;
        path.push(i);
        for dep in &services[i].0.depends_on {
            if let Some(&j) = index.get(dep)
                && let Some(cycle) = visit(j, services, index, state, path, order)
            {
                return Some(cycle);
            }
        }
        path.pop();
        state[i] = 2;
        order.push(i);
        None
    }
    for i in 0..services.len() {
        let mut path = Vec::new();
        if let Some(cycle) = visit(i, &services, &index, &mut state, &mut path, &mut order) {
            if !reported {
                let names: Vec<&str> = cycle.iter().map(|&c| services[c].0.name.as_str()).collect();
                cx.error(
                    Kind::DependencyCycle,
                    services[cycle[0]].1,
                    format!("services depend on each other in a circle: {}", names.join(" -> ")),
                    "remove one of these dependencies (in `depends_on` or the unit's After=/Requires=/Wants=)",
                );
                reported = true;
            }
            for s in &mut state {
                if *s == 1 {
                    *s = 2;
                }
            }
        }
    }
    let mut slots: Vec<Option<Service>> = services.into_iter().map(|(s, _)| Some(s)).collect();
    order.into_iter().filter_map(|i| slots[i].take()).collect()
}

fn health_check(h: &RawHealthCheck, span: Span, cx: &mut Cx) -> Option<HealthCheck> {
    let given =
        usize::from(h.command.is_some()) + usize::from(h.tcp.is_some()) + usize::from(h.http.is_some());
    if given != 1 {
        cx.error(
            if given == 0 { Kind::MissingField } else { Kind::InvalidValue },
            span,
            format!("a health check needs exactly one of `command`, `tcp`, `http`; {given} given"),
            "for example `health_check: {http: http://127.0.0.1:8080/health}`",
        );
        return None;
    }
    let probe = if let Some(c) = &h.command {
        Probe::Command(c.value.clone())
    } else if let Some(p) = &h.tcp {
        match u16::try_from(p.value) {
            Ok(port) if port > 0 => Probe::Tcp(port),
            _ => {
                cx.error(
                    Kind::InvalidValue,
                    p.span,
                    format!("port {} is outside 1..=65535", p.value),
                    "write a TCP port number",
                );
                return None;
            }
        }
    } else {
        let url = h.http.as_ref()?;
        if !(url.value.starts_with("http://") || url.value.starts_with("https://")) {
            cx.error(
                Kind::InvalidValue,
                url.span,
                format!("`{}` is not an http:// or https:// URL", url.value),
                "write a URL such as `http://127.0.0.1:8080/health`",
            );
            return None;
        }
        Probe::Http(url.value.clone())
    };
    Some(HealthCheck {
        probe,
        timeout_secs: duration_field(h.timeout.as_ref(), 60, 3600, "timeout", cx),
        interval_secs: duration_field(h.interval.as_ref(), 2, 300, "interval", cx),
    })
}

fn tarball(raw: &RawManifest, paths: &Paths, cx: &mut Cx) -> Option<Tarball> {
    let mut given: Vec<(Spanned<String>, Option<Spanned<String>>, Span)> = Vec::new();
    let mut spec_of = None;
    if let Some(t) = &raw.tarball {
        match &t.value {
            RawTarball::Short(s) => given.push((s.clone(), None, t.span)),
            RawTarball::Full(spec) => match &spec.source {
                Some(s) => {
                    given.push((s.clone(), spec.dest.clone(), t.span));
                    spec_of = Some(spec);
                }
                None => cx.error(
                    Kind::MissingField,
                    t.span,
                    "`tarball` needs `source`",
                    "add `source: dist/` or a URL",
                ),
            },
        }
    }
    if let Some(s) = &raw.tarball_source {
        given.push((s.clone(), None, s.span));
    }
    if let Some(s) = &raw.tarball_url {
        given.push((s.clone(), None, s.span));
    }
    if given.len() > 1 {
        cx.error(
            Kind::Duplicate,
            given[1].2,
            "more than one of `tarball`, `tarball_source`, `tarball_url` is given",
            "keep one: `tarball` takes a path or a URL",
        );
    }
    let (source, dest, _) = given.into_iter().next()?;
    let dest = match &dest {
        Some(d) => absolute_dest(d, cx)?.trim_end_matches('/').to_string(),
        None => DEFAULT_DEST.to_string(),
    };
    let origin = Origin { file: cx.file.clone(), span: source.span };
    let text = source.value.as_str();
    let sha256 = spec_of.and_then(|s| s.sha256.as_ref());
    let allow_http = spec_of.and_then(|s| s.allow_http.as_ref());
    let is_url = text.starts_with("https://") || text.starts_with("http://");
    if let Some(sha) = sha256.filter(|_| !is_url) {
        cx.error(
            Kind::InvalidValue,
            sha.span,
            "`sha256` is for a build given by URL",
            "remove it: spot checks the sha256 of everything it ships from the repository itself",
        );
    }
    if is_url {
        if text.starts_with("http://") && !allow_http.is_some_and(|a| a.value) {
            cx.error(
                Kind::InvalidValue,
                source.span,
                format!("`{text}` is plain http: anyone between the instance and the server can swap the build"),
                "use an https:// URL, or add `allow_http: true` (and `sha256:`) to `tarball` if the server has no TLS",
            );
            return None;
        }
        let sha256 = match sha256 {
            None => None,
            Some(s) if s.value.len() == 64 && s.value.chars().all(|c| c.is_ascii_hexdigit()) => {
                Some(s.value.to_ascii_lowercase())
            }
            Some(s) => {
                cx.error(
                    Kind::InvalidValue,
                    s.span,
                    format!("`{}` is not a sha256 (64 hex digits)", s.value),
                    "write the output of `sha256sum build.tar.gz`, without the file name",
                );
                return None;
            }
        };
        return Some(Tarball { source: TarballSource::Url { url: text.to_string(), sha256 }, dest, origin });
    }
    if text.contains("://") {
        cx.error(
            Kind::InvalidValue,
            source.span,
            format!("`{text}` is not an http(s) URL or a repository path"),
            "the instance downloads tarball URLs with curl: use an https:// URL (a presigned one for S3)",
        );
        return None;
    }
    let resolved = resolve(&source, paths.root, paths.root, cx)?;
    let source = if resolved.is_dir {
        TarballSource::Dir { path: resolved.rel, local: resolved.local }
    } else if resolved.rel.ends_with(".tar.gz") || resolved.rel.ends_with(".tgz") {
        TarballSource::Archive { path: resolved.rel, local: resolved.local }
    } else {
        cx.error(
            Kind::InvalidValue,
            source.span,
            format!("`{}` is neither a folder nor a .tar.gz file", resolved.rel),
            "point `tarball` at your build folder or a .tar.gz",
        );
        return None;
    };
    Some(Tarball { source, dest, origin })
}

/// Variables of the runner (and of spot) a manifest secret may never be read from.
pub const RESERVED_ENV_PREFIXES: &[&str] =
    &["AWS_", "ACTIONS_", "GITHUB_", "GH_", "INPUT_", "RUNNER_", "STATE_", "SPOT_"];

fn secrets(raw: &RawManifest, env: &BTreeMap<String, String>, cx: &mut Cx) -> Vec<SecretRef> {
    let mut out: Vec<SecretRef> = Vec::new();
    for item in raw.secrets.iter().flat_map(|l| &l.value) {
        let (name, from, dest) = match &item.value {
            RawSecret::Short(n) => (n.clone(), None, None),
            RawSecret::Full(spec) => match &spec.name {
                Some(n) => (n.clone(), spec.env.clone(), spec.dest.clone()),
                None => {
                    cx.error(Kind::MissingField, item.span, "a secret needs `name`", "add `name: API_TOKEN`");
                    continue;
                }
            },
        };
        if !is_env_name(&name.value) || from.as_ref().is_some_and(|f| !is_env_name(&f.value)) {
            cx.error(
                Kind::InvalidValue,
                name.span,
                format!("`{}` is not an environment variable name", name.value),
                "use letters, digits and `_`, not starting with a digit",
            );
            continue;
        }
        // The runner's own variables (its credentials and tokens among them) are never a
        // pull request's to read.
        let read = from.as_ref().unwrap_or(&name);
        if let Some(prefix) = RESERVED_ENV_PREFIXES.iter().find(|p| read.value.starts_with(*p)) {
            cx.error(
                Kind::InvalidValue,
                read.span,
                format!("`{}` is the runner's own variable (`{prefix}...`): a secret cannot be read from it", read.value),
                "give the secret its own variable in the workflow (`env: { APP_TOKEN: ${{ secrets.APP_TOKEN }} }`) and name that one",
            );
            continue;
        }
        if env.contains_key(&name.value) || out.iter().any(|s| s.name == name.value) {
            cx.error(
                Kind::Duplicate,
                name.span,
                format!("`{}` is defined twice (in `env` or `secrets`)", name.value),
                "a name is either a plain `env` value or a secret, once",
            );
            continue;
        }
        let dest = match &dest {
            Some(d) => match absolute_dest(d, cx) {
                Some(d) => d,
                None => continue,
            },
            None => format!("/etc/spot/secrets/{}", name.value),
        };
        out.push(SecretRef {
            env: from.map_or_else(|| name.value.clone(), |f| f.value),
            name: name.value,
            dest,
        });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cidrs() {
        assert!(is_cidr("10.0.0.0/8"));
        assert!(is_cidr("2001:db8::/64"));
        assert!(!is_cidr("10.0.0.0/33"));
        assert!(!is_cidr("10.0.0.0"));
    }

    #[test]
    fn unit_parsing_finds_sections_and_ordering() {
        let u = parse_unit(
            "[Unit]\nAfter=network.target db.service\n[Service]\nExecStart=/bin/true\n[Install]\nWantedBy=multi-user.target\n",
        );
        assert!(u.exec_start);
        assert_eq!(u.sections.len(), 3);
        assert_eq!(u.ordering, vec!["network.target", "db.service"]);
    }
}
