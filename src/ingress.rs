//! Pure: who may reach a deployment. The inbound rules of its security group (SSH and the
//! `expose` entries) from the description and the runner's address, what to add and revoke
//! so a group holds exactly those, and the URLs of its HTTP ports.
//!
//! A rule is one protocol, one port range and one CIDR; EC2 tells rules apart by those
//! alone. Its description says it is spot's (`spot ...`) and, when its source is the
//! runner's address, `(runner)`: a redeploy from another runner moves those and no other.
//! Rules without a `spot` description (added by hand) are never revoked.

use crate::manifest::types::{Config, Expose, Protocol, Reach, SshAccess};

/// One inbound rule of a deployment's security group.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    pub protocol: Protocol,
    pub from_port: u16,
    pub to_port: u16,
    /// Canonical form ([`canonical_cidr`]).
    pub cidr: String,
    pub description: String,
}

impl Rule {
    /// What EC2 compares: protocol, ports and source. Descriptions are not part of it.
    fn same(&self, other: &Rule) -> bool {
        self.protocol == other.protocol
            && self.from_port == other.from_port
            && self.to_port == other.to_port
            && self.cidr == other.cidr
    }

    pub fn is_v6(&self) -> bool {
        self.cidr.contains(':')
    }

    /// Is its source the runner's address (it moves with the runner)?
    pub fn is_runner(&self) -> bool {
        self.description.ends_with(RUNNER_MARK)
    }
}

const RUNNER_MARK: &str = " (runner)";

/// Did spot make a rule with this description (the only ones it revokes)? Older spots'
/// `spot ssh` included.
pub fn is_ours(description: &str) -> bool {
    description.starts_with("spot ")
}

/// A CIDR in the one form EC2 stores and answers with: host bits cleared
/// (`203.0.113.5/24` is `203.0.113.0/24`), IPv6 in lower case with zeros compressed
/// (RFC 5952), so that sources compare equal however they were written. Text that is not
/// a CIDR is left as it is.
pub fn canonical_cidr(cidr: &str) -> String {
    match crate::manifest::validate::network_of(cidr) {
        Some((network, prefix)) => format!("{network}/{prefix}"),
        None => cidr.to_string(),
    }
}

/// Does any rule's source depend on the address spot runs from?
pub fn needs_runner(config: &Config) -> bool {
    matches!(config.ssh_access, SshAccess::Runner)
        || config.expose.iter().any(|e| e.from.contains(&Reach::Runner))
}

/// The runner's address as a one-address CIDR.
pub fn runner_cidr(address: &str) -> String {
    if address.contains(':') { format!("{address}/128") } else { format!("{address}/32") }
}

/// Every rule the deployment's group holds: SSH first, then each `expose` entry in order.
/// `runner` is the address spot runs from; with `None` the runner's rules are left out
/// (the caller finds it whenever [`needs_runner`]). A rule asked twice is made once.
pub fn rules(config: &Config, runner: Option<&str>) -> Vec<Rule> {
    let mut out: Vec<Rule> = Vec::new();
    let mut add = |protocol, (from_port, to_port): (u16, u16), cidr: &str, description: String| {
        let rule = Rule { protocol, from_port, to_port, cidr: canonical_cidr(cidr), description };
        if !out.iter().any(|r| r.same(&rule)) {
            out.push(rule);
        }
    };
    let runner = runner.map(runner_cidr);
    match &config.ssh_access {
        SshAccess::Runner => {
            if let Some(r) = &runner {
                add(Protocol::Tcp, (22, 22), r, format!("spot ssh{RUNNER_MARK}"));
            }
        }
        SshAccess::Cidrs(cidrs) => {
            for c in cidrs {
                add(Protocol::Tcp, (22, 22), c, "spot ssh".into());
            }
        }
    }
    for e in &config.expose {
        let label = format!("spot {}{}", e.label(), if e.http { " http" } else { "" });
        for reach in &e.from {
            match reach {
                Reach::Runner => {
                    if let Some(r) = &runner {
                        add(e.protocol, e.ports, r, format!("{label}{RUNNER_MARK}"));
                    }
                }
                Reach::Anywhere => {
                    add(e.protocol, e.ports, "0.0.0.0/0", format!("{label} (anywhere)"));
                    add(e.protocol, e.ports, "::/0", format!("{label} (anywhere)"));
                }
                Reach::Cidr(c) => add(e.protocol, e.ports, c, label.clone()),
            }
        }
    }
    out
}

/// What to change so a group holding `have` holds `wanted`: the rules to add, and those
/// of spot's own to revoke. A rule `have` holds under another description is kept as it is.
pub fn delta(have: &[Rule], wanted: &[Rule]) -> (Vec<Rule>, Vec<Rule>) {
    let add = wanted.iter().filter(|w| !have.iter().any(|h| h.same(w))).cloned().collect();
    let revoke = have
        .iter()
        .filter(|h| is_ours(&h.description) && !wanted.iter().any(|w| w.same(h)))
        .cloned()
        .collect();
    (add, revoke)
}

/// `http://<address>:<port>/`, an IPv6 address in brackets.
pub fn url(address: &str, port: u16) -> String {
    if address.contains(':') {
        format!("http://[{address}]:{port}/")
    } else {
        format!("http://{address}:{port}/")
    }
}

/// The HTTP ports of `expose`, in the order written.
pub fn http_ports(expose: &[Expose]) -> Vec<u16> {
    expose.iter().filter(|e| e.http).map(|e| e.ports.0).collect()
}

/// `8080/tcp (http) to only the runner that deployed it`: one line of `plan` and `create`.
pub fn opened(e: &Expose, runner: &str) -> String {
    let http = if e.http { " (http)" } else { "" };
    format!("{}{http} to {}", e.label(), audience(e, runner))
}

/// How the summary and the comment name the runner's address.
pub const DEPLOYED_FROM: &str = "the runner that deployed it";
/// How `plan` names it, before anything is deployed.
pub const RUNS_FROM: &str = "the address spot runs from";

/// Who may connect to `e`, in words, `runner` naming the runner's address: `only the
/// runner that deployed it`, `anyone on the internet (...)`, `203.0.113.0/24, the runner
/// that deployed it`.
pub fn audience(e: &Expose, runner: &str) -> String {
    if e.from.contains(&Reach::Anywhere) {
        return "anyone on the internet (0.0.0.0/0 and ::/0)".into();
    }
    let open: Vec<String> = e
        .from
        .iter()
        .filter_map(|r| match r {
            Reach::Cidr(c) if r.is_open() => Some(canonical_cidr(c)),
            _ => None,
        })
        .collect();
    if !open.is_empty() {
        return format!("anyone on the internet ({})", open.join(", "));
    }
    let mut parts: Vec<String> = e
        .from
        .iter()
        .filter_map(|r| match r {
            Reach::Cidr(c) => Some(canonical_cidr(c)),
            _ => None,
        })
        .collect();
    match (parts.is_empty(), e.from.contains(&Reach::Runner)) {
        (true, _) => format!("only {runner}"),
        (false, true) => {
            parts.push(runner.to_string());
            parts.join(", ")
        }
        (false, false) => parts.join(", "),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::manifest::types::Origin;

    fn expose(ports: (u16, u16), protocol: Protocol, from: Vec<Reach>, http: bool) -> Expose {
        Expose { ports, protocol, from, http, from_origins: Vec::new(), origin: Origin::default() }
    }

    fn config(ssh: SshAccess, expose: Vec<Expose>) -> Config {
        Config {
            total_instances: 1,
            username: "ubuntu".into(),
            storage_gb: 8,
            tags: Default::default(),
            regions: Vec::new(),
            max_price: None,
            fallback: crate::manifest::types::Fallback::None,
            ttl_secs: 3600,
            ssh_access: ssh,
            dedicated_vpc: false,
            public_ip: true,
            extra_authorized_keys: Vec::new(),
            expose,
            written: Default::default(),
        }
    }

    fn shown(rules: &[Rule]) -> Vec<String> {
        rules
            .iter()
            .map(|r| format!("{} {}-{} {} [{}]", r.protocol, r.from_port, r.to_port, r.cidr, r.description))
            .collect()
    }

    #[test]
    fn sources_compare_in_canonical_form() {
        assert_eq!(canonical_cidr("2001:DB8:0:0::/64"), "2001:db8::/64");
        assert_eq!(canonical_cidr(" 10.0.0.0/8"), "10.0.0.0/8");
        assert_eq!(canonical_cidr("not a cidr"), "not a cidr");
        // EC2 stores a source with its host bits cleared.
        assert_eq!(canonical_cidr("203.0.113.5/24"), "203.0.113.0/24");
        assert_eq!(canonical_cidr("2001:db8::7/64"), "2001:db8::/64");
        assert_eq!(canonical_cidr("198.51.100.7/32"), "198.51.100.7/32");
        assert_eq!(canonical_cidr("10.1.2.3/0"), "0.0.0.0/0");
        assert_eq!(canonical_cidr("2001:db8::1/0"), "::/0");
    }

    #[test]
    fn each_entry_becomes_a_rule_per_source_and_the_runner_is_marked() {
        let c = config(
            SshAccess::Runner,
            vec![
                expose((8080, 8080), Protocol::Tcp, vec![Reach::Runner, Reach::Anywhere], true),
                expose((9000, 9010), Protocol::Udp, vec![Reach::Cidr("2001:DB8::/64".into())], false),
            ],
        );
        assert!(needs_runner(&c));
        assert_eq!(
            shown(&rules(&c, Some("198.51.100.7"))),
            [
                "tcp 22-22 198.51.100.7/32 [spot ssh (runner)]",
                "tcp 8080-8080 198.51.100.7/32 [spot 8080/tcp http (runner)]",
                "tcp 8080-8080 0.0.0.0/0 [spot 8080/tcp http (anywhere)]",
                "tcp 8080-8080 ::/0 [spot 8080/tcp http (anywhere)]",
                "udp 9000-9010 2001:db8::/64 [spot 9000-9010/udp]",
            ]
        );
        let ssh_only = config(SshAccess::Cidrs(vec!["198.51.100.7/32".into()]), Vec::new());
        assert!(!needs_runner(&ssh_only));
        assert_eq!(shown(&rules(&ssh_only, None)), ["tcp 22-22 198.51.100.7/32 [spot ssh]"]);
        // An IPv6 runner is one /128; the same source asked twice is one rule.
        let twice = config(
            SshAccess::Cidrs(vec!["2001:db8::7/128".into()]),
            vec![expose(
                (80, 80),
                Protocol::Tcp,
                vec![Reach::Runner, Reach::Cidr("2001:db8::7/128".into())],
                true,
            )],
        );
        assert_eq!(
            shown(&rules(&twice, Some("2001:db8::7"))),
            ["tcp 22-22 2001:db8::7/128 [spot ssh]", "tcp 80-80 2001:db8::7/128 [spot 80/tcp http (runner)]"]
        );
    }

    #[test]
    fn a_new_runner_moves_only_the_runner_rules_and_leaves_hand_made_ones() {
        let c = config(
            SshAccess::Runner,
            vec![expose((8080, 8080), Protocol::Tcp, vec![Reach::Runner, Reach::Anywhere], true)],
        );
        let mut have = rules(&c, Some("198.51.100.7"));
        have.push(Rule {
            protocol: Protocol::Tcp,
            from_port: 443,
            to_port: 443,
            cidr: "192.0.2.0/24".into(),
            description: "added by hand".into(),
        });
        let (add, revoke) = delta(&have, &rules(&c, Some("203.0.113.9")));
        assert_eq!(
            shown(&add),
            [
                "tcp 22-22 203.0.113.9/32 [spot ssh (runner)]",
                "tcp 8080-8080 203.0.113.9/32 [spot 8080/tcp http (runner)]"
            ]
        );
        assert_eq!(
            shown(&revoke),
            [
                "tcp 22-22 198.51.100.7/32 [spot ssh (runner)]",
                "tcp 8080-8080 198.51.100.7/32 [spot 8080/tcp http (runner)]"
            ]
        );
        assert!(revoke.iter().all(Rule::is_runner));
        // The same runner again: nothing to do.
        assert_eq!(delta(&have, &rules(&c, Some("198.51.100.7"))), (Vec::new(), Vec::new()));
    }

    #[test]
    fn urls_bracket_ipv6_and_audiences_say_who() {
        assert_eq!(url("198.51.100.7", 8080), "http://198.51.100.7:8080/");
        assert_eq!(url("2001:db8::7", 80), "http://[2001:db8::7]:80/");
        let e = |from| expose((80, 80), Protocol::Tcp, from, true);
        assert_eq!(audience(&e(vec![Reach::Runner]), DEPLOYED_FROM), "only the runner that deployed it");
        assert_eq!(
            audience(&e(vec![Reach::Runner, Reach::Anywhere]), RUNS_FROM),
            "anyone on the internet (0.0.0.0/0 and ::/0)"
        );
        assert_eq!(
            audience(&e(vec![Reach::Runner, Reach::Cidr("0.0.0.0/1".into())]), DEPLOYED_FROM),
            "anyone on the internet (0.0.0.0/1)"
        );
        assert_eq!(
            audience(&e(vec![Reach::Cidr("203.0.113.0/24".into()), Reach::Runner]), DEPLOYED_FROM),
            "203.0.113.0/24, the runner that deployed it"
        );
    }
}
