//! Pure: what a workflow lets a pull request's description raise. The Action's limit
//! inputs (`max-instances`, `max-ttl`, `allowed-instance-types`, `allowed-regions`,
//! `allowed-ports`, `allow-anywhere`, `secrets`) become [`Caps`]; [`Caps::check`] holds the description,
//! after the workflow's own overrides, against them before any cloud call. A value the
//! description wrote is refused at its line and column; one the workflow gave itself (an
//! input beyond another input) is refused naming both inputs.

use crate::manifest::types::{
    Deployment, Origin, Protocol, SshAccess, format_duration, is_open, parse_duration,
};
use crate::manifest::{Diagnostic, Kind};

/// The defaults, as action.yml declares them: a few small instances for a day at most,
/// enough for an ordinary test environment. (Not capped: disk size, `spot.fallback`,
/// `max_price` and the image; see the README's security model.)
pub const DEFAULT_MAX_INSTANCES: u32 = 4;
pub const DEFAULT_MAX_TTL: &str = "24h";
pub const DEFAULT_INSTANCE_TYPES: &str = "*.nano *.micro *.small *.medium *.large *.xlarge";
pub const DEFAULT_REGIONS: &str = "*";
pub const DEFAULT_PORTS: &str = "*";

/// The limits of one run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Caps {
    pub max_instances: u32,
    pub max_ttl_secs: u64,
    /// Each an instance type (`m7i.large`), a family (`t3`: any size of it), or a pattern
    /// with `*` (`*.large`, `m7*.*`).
    pub instance_types: Vec<String>,
    /// Region names or patterns (`eu-*`, `*`).
    pub regions: Vec<String>,
    /// The ports `expose` may open: each `(protocol, first, last)`, `None` for both protocols.
    pub ports: Vec<(Option<Protocol>, u16, u16)>,
    /// Whether the description may open SSH or an exposed port to the whole internet.
    pub allow_anywhere: bool,
    /// The environment variables a manifest secret may be read from.
    pub secrets: Vec<String>,
}

/// One thing beyond the caps.
#[derive(Debug, Clone, PartialEq)]
pub enum Beyond {
    /// Written in the description: refused at its place.
    Written(Diagnostic),
    /// From the workflow's own inputs (an override beyond a cap, a secret not allowed).
    Inputs(String),
}

fn words(v: &str) -> Vec<String> {
    v.split([',', ' ', '\n', '\t', '\r']).filter(|w| !w.is_empty()).map(String::from).collect()
}

impl Caps {
    /// From the inputs (`None`: not given, the default). Every problem at once.
    pub fn from_inputs(input: impl Fn(&str) -> Option<String>) -> Result<Caps, Vec<String>> {
        let mut errors = Vec::new();
        let max_instances = match input("max-instances") {
            None => DEFAULT_MAX_INSTANCES,
            Some(v) => v.trim().parse::<u32>().ok().filter(|n| (1..=1000).contains(n)).unwrap_or_else(|| {
                errors.push(format!("input `max-instances` is `{v}`: write a whole number from 1 to 1000"));
                DEFAULT_MAX_INSTANCES
            }),
        };
        let ttl = input("max-ttl").unwrap_or_else(|| DEFAULT_MAX_TTL.into());
        let max_ttl_secs = parse_duration(ttl.trim()).unwrap_or_else(|e| {
            errors.push(format!("input `max-ttl` is `{ttl}`: {e}"));
            0
        });
        let allow_anywhere = match input("allow-anywhere").as_deref().map(str::trim) {
            None | Some("false") => false,
            Some("true") => true,
            Some(other) => {
                errors.push(format!("input `allow-anywhere` is `{other}`: write true or false"));
                false
            }
        };
        let port_words = words(&input("allowed-ports").unwrap_or_else(|| DEFAULT_PORTS.into()));
        if port_words.is_empty() {
            errors.push("input `allowed-ports` is empty: write `*` for any port, or leave it out".into());
        }
        let mut ports = Vec::new();
        for w in port_words {
            match port_pattern(&w) {
                Some(p) => ports.push(p),
                None => errors.push(format!(
                    "input `allowed-ports` has `{w}`: write ports or ranges, each maybe with /tcp or /udp (`8080 9000-9010/udp`), or `*`"
                )),
            }
        }
        let caps = Caps {
            ports,
            max_instances,
            max_ttl_secs,
            instance_types: words(
                &input("allowed-instance-types").unwrap_or_else(|| DEFAULT_INSTANCE_TYPES.into()),
            ),
            regions: words(&input("allowed-regions").unwrap_or_else(|| DEFAULT_REGIONS.into())),
            allow_anywhere,
            secrets: words(&input("secrets").unwrap_or_default()),
        };
        for (name, list) in
            [("allowed-instance-types", &caps.instance_types), ("allowed-regions", &caps.regions)]
        {
            if list.is_empty() {
                errors.push(format!("input `{name}` is empty: it would allow nothing (`*` allows all)"));
            }
        }
        if errors.is_empty() { Ok(caps) } else { Err(errors) }
    }

    /// Everything of `deployment` beyond the caps.
    pub fn check(&self, deployment: &Deployment) -> Vec<Beyond> {
        let config = &deployment.config;
        let mut beyond = Vec::new();
        let mut at = |origin: &Origin, kind: Kind, message: String, help: String, input: String| {
            beyond.push(if origin.file.is_empty() {
                Beyond::Inputs(input)
            } else {
                Beyond::Written(Diagnostic::new(kind, origin.file.clone(), origin.span, message, help))
            });
        };
        if config.total_instances > self.max_instances {
            at(
                &config.written.total_instances,
                Kind::CountOutOfRange,
                format!(
                    "total_instances is {}, beyond the workflow's limit of {} (input `max-instances`)",
                    config.total_instances, self.max_instances
                ),
                format!(
                    "ask for at most {} instance(s), or raise `max-instances` in the workflow",
                    self.max_instances
                ),
                format!(
                    "input `count` is {}, beyond input `max-instances` ({})",
                    config.total_instances, self.max_instances
                ),
            );
        }
        if config.ttl_secs > self.max_ttl_secs {
            let (ttl, max) = (format_duration(config.ttl_secs), format_duration(self.max_ttl_secs));
            at(
                &config.written.ttl,
                Kind::BadTtl,
                format!("ttl `{ttl}` is longer than the workflow's limit of {max} (input `max-ttl`)"),
                format!("choose a time to live of at most {max}, or raise `max-ttl` in the workflow"),
                format!(
                    "the time to live {ttl} (input `ttl`, else the default) is longer than input `max-ttl` ({max}): set a shorter `ttl`"
                ),
            );
        }
        for region in &config.regions {
            if !self.regions.iter().any(|p| glob(p, &region.name)) {
                at(
                    &region.origin,
                    Kind::UnknownRegion,
                    format!(
                        "region `{}` is not one the workflow allows (input `allowed-regions`)",
                        region.name
                    ),
                    format!("use one of: {}", self.regions.join(", ")),
                    format!(
                        "input `regions` names `{}`, which input `allowed-regions` does not allow",
                        region.name
                    ),
                );
            }
            for (k, t) in region.instance_types.iter().enumerate() {
                if !self.instance_types.iter().any(|p| type_allowed(p, t.as_str())) {
                    let origin = region.type_origins.get(k).cloned().unwrap_or_default();
                    at(
                        &origin,
                        Kind::BadInstanceType,
                        format!(
                            "instance type `{t}` is not one the workflow allows (input `allowed-instance-types`)",
                            t = t.as_str()
                        ),
                        format!("use one of: {}", self.instance_types.join(", ")),
                        format!(
                            "input `instance-types` names `{}`, which input `allowed-instance-types` does not allow",
                            t.as_str()
                        ),
                    );
                }
            }
        }
        if let SshAccess::Cidrs(cidrs) = &config.ssh_access
            && !self.allow_anywhere
        {
            for (k, cidr) in cidrs.iter().enumerate() {
                let origin = config.written.ssh_cidrs.get(k).cloned().unwrap_or_default();
                // The workflow's own `ssh-cidr` is its choice.
                if is_open(cidr) && !origin.file.is_empty() {
                    at(
                        &origin,
                        Kind::InvalidValue,
                        format!("ssh_cidr `{cidr}` opens SSH to the whole internet, which the workflow does not allow"),
                        "leave `ssh_cidr` out (SSH is then open to the runner only), or set `allow-anywhere: true` in the workflow".into(),
                        String::new(),
                    );
                }
            }
        }
        for e in &config.expose {
            let allowed = self.ports.iter().any(|(protocol, first, last)| {
                protocol.is_none_or(|p| p == e.protocol) && *first <= e.ports.0 && e.ports.1 <= *last
            });
            if !allowed {
                at(
                    &e.origin,
                    Kind::InvalidValue,
                    format!(
                        "`expose` opens {}, which the workflow does not allow (input `allowed-ports`)",
                        e.label()
                    ),
                    "expose only ports the workflow allows, or widen `allowed-ports` in the workflow".into(),
                    String::new(),
                );
            }
            if self.allow_anywhere {
                continue;
            }
            for (reach, origin) in e.from.iter().zip(&e.from_origins) {
                if reach.is_open() {
                    at(
                        origin,
                        Kind::InvalidValue,
                        format!("`expose` opens {} to the whole internet, which the workflow does not allow", e.label()),
                        "leave `from` out (the port is then open to the runner only), name narrower CIDR blocks, or set `allow-anywhere: true` in the workflow".into(),
                        String::new(),
                    );
                }
            }
        }
        for s in &deployment.manifest.secrets {
            if !self.secrets.iter().any(|a| a == &s.env) {
                beyond.push(Beyond::Inputs(format!(
                    "secret `{}` reads environment variable {}, which input `secrets` does not allow",
                    s.name, s.env
                )));
            }
        }
        beyond
    }
}

/// Pure: `*`, `8080`, `8000-8010`, each maybe with `/tcp` or `/udp`.
fn port_pattern(w: &str) -> Option<(Option<Protocol>, u16, u16)> {
    let (ports, protocol) = match w.rsplit_once('/') {
        Some((p, "tcp")) => (p, Some(Protocol::Tcp)),
        Some((p, "udp")) => (p, Some(Protocol::Udp)),
        Some(_) => return None,
        None => (w, None),
    };
    if ports == "*" {
        return Some((protocol, 1, u16::MAX));
    }
    let one = |t: &str| t.parse::<u16>().ok().filter(|p| *p > 0);
    let (first, last) = match ports.split_once('-') {
        Some((a, b)) => (one(a)?, one(b)?),
        None => (one(ports)?, one(ports)?),
    };
    (first <= last).then_some((protocol, first, last))
}

/// Pure: does `pattern` (with `*` for any run of characters) match all of `value`?
pub fn glob(pattern: &str, value: &str) -> bool {
    let (p, v): (Vec<char>, Vec<char>) = (pattern.chars().collect(), value.chars().collect());
    // Classic two-pointer match with backtracking to the last `*`.
    let (mut i, mut j, mut star, mut mark) = (0, 0, None, 0);
    while j < v.len() {
        if i < p.len() && p[i] == '*' {
            star = Some(i);
            mark = j;
            i += 1;
        } else if i < p.len() && p[i] == v[j] {
            i += 1;
            j += 1;
        } else if let Some(s) = star {
            i = s + 1;
            mark += 1;
            j = mark;
        } else {
            return false;
        }
    }
    p[i..].iter().all(|&c| c == '*')
}

/// A pattern without `.` names families (`t3`, `m7*`, `*`: every size of them); one with
/// a `.` matches the whole type.
fn type_allowed(pattern: &str, t: &str) -> bool {
    if pattern.contains('.') {
        glob(pattern, t)
    } else {
        glob(pattern, t.split('.').next().unwrap_or_default())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patterns_match_types_families_and_regions() {
        assert!(type_allowed("*.large", "m7i.large"));
        assert!(!type_allowed("*.large", "m7i.xlarge"));
        assert!(type_allowed("t3", "t3.2xlarge"));
        assert!(!type_allowed("t3", "t3a.nano"));
        assert!(type_allowed("m7*.*", "m7g.medium"));
        assert!(
            type_allowed("*", "p5.48xlarge")
                && type_allowed("m7*", "m7g.large")
                && !type_allowed("m7*", "m6i.large")
        );
        assert!(glob("eu-*", "eu-west-1") && !glob("eu-*", "us-east-1") && glob("*", "ap-south-2"));
        assert!(glob("a*b*c", "aXbYbc") && !glob("a*b", "ab-"));
    }

    #[test]
    fn port_patterns_name_ports_ranges_and_protocols() {
        assert_eq!(port_pattern("*"), Some((None, 1, 65535)));
        assert_eq!(port_pattern("8080"), Some((None, 8080, 8080)));
        assert_eq!(port_pattern("9000-9010/udp"), Some((Some(Protocol::Udp), 9000, 9010)));
        assert_eq!(port_pattern("*/tcp"), Some((Some(Protocol::Tcp), 1, 65535)));
        for bad in ["0", "9010-9000", "80/sctp", "http", "1-", "65536"] {
            assert_eq!(port_pattern(bad), None, "{bad}");
        }
    }

    #[test]
    fn only_near_whole_internet_sources_are_open() {
        for open in ["0.0.0.0/0", "128.0.0.0/1", "::/0", "8000::/1"] {
            assert!(is_open(open), "{open}");
        }
        for closed in ["10.0.0.0/8", "203.0.113.7/32", "2001:db8::/32", "::1/128"] {
            assert!(!is_open(closed), "{closed}");
        }
    }

    #[test]
    fn inputs_parse_with_defaults_and_every_error_at_once() {
        let caps = Caps::from_inputs(|_| None).unwrap();
        assert_eq!((caps.max_instances, caps.max_ttl_secs, caps.allow_anywhere), (4, 86_400, false));
        assert!(caps.secrets.is_empty());
        let errors = Caps::from_inputs(|n| match n {
            "max-instances" => Some("0".into()),
            "max-ttl" => Some("forever".into()),
            "allowed-regions" => Some(" ".into()),
            _ => None,
        })
        .unwrap_err();
        assert_eq!(errors.len(), 3, "{errors:?}");
    }
}
