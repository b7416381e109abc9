//! Pure: what the Action writes for people and for later steps, from what the operations
//! returned: the job summary, the outputs, the pull request's sticky comment. No file,
//! no environment, no clock.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use crate::lifecycle::create::Outcome;
use crate::lifecycle::teardown::Removal;
use crate::ops::reap::{Decision, Verdict};
use crate::ops::up::Created;
use crate::provider::{Instance, Market};

fn address(i: &Instance) -> String {
    i.address().unwrap_or_default().to_string()
}

/// The main step's outputs, by name (every name in [`super::OUTPUTS`]).
pub fn outputs(created: &Created) -> Vec<(&'static str, String)> {
    let ready: Vec<&Outcome> = created.outcomes.iter().filter(|o| o.ready).collect();
    let ids: Vec<&str> = ready.iter().map(|o| o.instance.id.as_str()).collect();
    let ips: Vec<String> = ready.iter().map(|o| address(&o.instance)).collect();
    let mut regions: Vec<&str> = ready.iter().map(|o| o.instance.region.as_str()).collect();
    regions.dedup();
    let markets: std::collections::BTreeSet<String> =
        ready.iter().map(|o| o.instance.market.to_string()).collect();
    let market = match markets.len() {
        1 => markets.iter().next().cloned().unwrap_or_default(),
        _ => "mixed".into(),
    };
    let json = serde_json::json!({
        "deployment_id": created.plan.deployment_id,
        "expires_at": created.plan.expires_at,
        "instances": created.outcomes,
    });
    let urls = urls(created);
    vec![
        ("deployment-id", created.plan.deployment_id.clone()),
        ("instance-ids", ids.join(",")),
        ("public-ips", ips.join(",")),
        ("regions", regions.join(",")),
        ("market", market),
        ("urls", urls.join(",")),
        ("url", urls.first().cloned().unwrap_or_default()),
        ("json", json.to_string()),
    ]
}

/// Every ready instance's URLs: by instance in `instance-ids` order, and within one in
/// the order config.yaml wrote its HTTP ports.
fn urls(created: &Created) -> Vec<String> {
    created.outcomes.iter().filter(|o| o.ready).flat_map(|o| o.instance.urls.iter().cloned()).collect()
}

/// The URL a GitHub deployment points at (output `url`): the first ready instance's
/// first HTTP port; none without one.
pub fn environment_url(created: &Created) -> Option<String> {
    urls(created).into_iter().next()
}

/// Pure: who can reach what of the deployment, and the ready instances' links: for the
/// job summary and the pull request's comment.
fn reach(created: &Created) -> String {
    use crate::manifest::types::Reach;
    let expose = &created.plan.expose;
    let mut md = String::new();
    if expose.is_empty() {
        let _ = writeln!(
            md,
            "Open ports: SSH only. List the app's ports under `expose:` in `.spot/config.yaml` to reach it.\n"
        );
        return md;
    }
    let _ = writeln!(md, "| port | who can connect | links |\n|---|---|---|");
    for e in expose {
        let links: Vec<String> = if e.http {
            created
                .outcomes
                .iter()
                .filter(|o| o.ready)
                .filter_map(|o| o.instance.address())
                .map(|a| crate::ingress::url(a, e.ports.0))
                .map(|u| format!("[{u}]({u})"))
                .collect()
        } else {
            Vec::new()
        };
        let audience = cell(&crate::ingress::audience(e, crate::ingress::DEPLOYED_FROM));
        let audience = if e.from.iter().any(Reach::is_open) { format!("**{audience}**") } else { audience };
        let links = if links.is_empty() { "-".to_string() } else { links.join("<br>") };
        let _ = writeln!(md, "| {} | {audience} | {links} |", e.label());
    }
    if expose.iter().any(|e| e.http && e.from == [Reach::Runner]) {
        let _ = writeln!(
            md,
            "\nA port open to the runner only cannot be opened from a browser elsewhere. To widen it, list who may connect in the entry's `from` (CIDR blocks, or `anywhere`, which the workflow must allow with `allow-anywhere: true`)."
        );
    }
    md.push('\n');
    md
}

/// The job summary of a ready deployment.
pub fn ready(created: &Created, prices: &BTreeMap<(String, String), f64>, keep: bool) -> String {
    let plan = &created.plan;
    let mut md = String::new();
    let ready = created.outcomes.iter().filter(|o| o.ready).count();
    let _ = writeln!(md, "## spot: `{}` ready\n", plan.deployment_id);
    if created.reused {
        let _ = writeln!(md, "The new build went into the running instances of an earlier run.\n");
    }
    let _ = writeln!(
        md,
        "| region | AZ | instance | type | market | price $/h | address | state | ready after |"
    );
    let _ = writeln!(md, "|---|---|---|---|---|---|---|---|---|");
    let mut hourly = 0.0;
    let mut priced = 0;
    for o in &created.outcomes {
        let i = &o.instance;
        let price = match i.market {
            Market::Spot => prices.get(&(i.instance_type.clone(), i.az.clone())).copied(),
            Market::OnDemand => None,
        };
        if let (Some(p), true) = (price, o.ready) {
            hourly += p;
            priced += 1;
        }
        let _ = writeln!(
            md,
            "| {} | {} | `{}` | {} | {} | {} | {} | {} | {} |",
            i.region,
            i.az,
            i.id,
            i.instance_type,
            i.market,
            price.map_or_else(|| "n/a".into(), |p| format!("{p:.4}")),
            address(i),
            if o.ready { "ready" } else { "failed, terminated" },
            o.seconds_to_ready.map_or_else(|| "-".into(), |s| format!("{s:.1}s")),
        );
    }
    let _ = writeln!(
        md,
        "\n**{ready} of {} ready** in {:.1}s. Estimated cost: **${hourly:.4}/hour** ({priced} instance(s) priced from EC2's current spot prices; on-demand not included).\n",
        created.outcomes.len(),
        created.seconds
    );
    let teardown = if keep {
        format!(
            "kept (`keep: true`): removed by `mode: down` (e.g. when the pull request closes), by `mode: reap`, or powered off at `{}`",
            plan.expires_at
        )
    } else {
        format!(
            "by this action's post step at the end of the job (at the latest, powered off at `{}`)",
            plan.expires_at
        )
    };
    md.push_str(&reach(created));
    let _ = writeln!(md, "Teardown: {teardown}.");
    md
}

/// The sticky comment's text for a ready environment.
pub fn environment_comment(created: &Created, head_sha: Option<&str>) -> String {
    let mut md = format!(
        "### spot environment `{}`: ready\n\n| instance | region | type | market | address |\n|---|---|---|---|---|\n",
        created.plan.deployment_id
    );
    for o in created.outcomes.iter().filter(|o| o.ready) {
        let i = &o.instance;
        let _ =
            writeln!(md, "| `{}` | {} | {} | {} | {} |", i.id, i.az, i.instance_type, i.market, address(i));
    }
    md.push('\n');
    md.push_str(&reach(created));
    let _ = writeln!(
        md,
        "{} Expires at `{}`; removed when this pull request closes. Updated for {}.",
        if created.reused { "The new build went into the running instances." } else { "New instances." },
        created.plan.expires_at,
        head_sha.map_or_else(|| "the latest push".into(), |s| format!("`{}`", &s[..s.len().min(12)]))
    );
    md
}

/// The job summary of a failed `up`.
pub fn failed(id: &str, error: &str) -> String {
    format!("## spot: {id} failed\n\n{}", code_block(&error.chars().take(20_000).collect::<String>()))
}

/// Pure: the longest run of backticks in `text`: code around it needs one more.
fn longest_backtick_run(text: &str) -> usize {
    let (mut longest, mut run) = (0, 0);
    for c in text.chars() {
        run = if c == '`' { run + 1 } else { 0 };
        longest = longest.max(run);
    }
    longest
}

/// Pure: `text` as inline code in a table cell: on one line, its pipes escaped (GFM
/// splits cells on them even inside code), between backtick runs longer than any in it.
pub fn code_span(text: &str) -> String {
    let flat: String = text.chars().map(|c| if c.is_control() { ' ' } else { c }).collect();
    let ticks = "`".repeat(longest_backtick_run(&flat) + 1);
    format!("{ticks} {} {ticks}", flat.replace('|', "\\|"))
}

/// Pure: plain text in a table cell: one line, no pipe, no Markdown or HTML of its own.
fn cell(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        if c.is_control() {
            out.push(' ');
            continue;
        }
        if matches!(c, '\\' | '`' | '*' | '_' | '[' | ']' | '<' | '>' | '|' | '~' | '!' | '&') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// Pure: `text` as a fenced code block no line of it can close: the fence is longer than
/// any run of backticks in it. Inside, Markdown, HTML, links and @-mentions are inert.
pub fn code_block(text: &str) -> String {
    let fence = "`".repeat(longest_backtick_run(text).max(2) + 1);
    format!("{fence}text\n{}\n{fence}\n", text.trim_end_matches('\n'))
}

/// The sticky comment of a failed push; `kept`: what ran before is still there.
pub fn failed_comment(id: &str, error: &str, kept: bool) -> String {
    // The error can quote the pull request's description or an instance's output: shown
    // as code, so it cannot format, link, embed or mention anything in the comment.
    let first: String = error.lines().next().unwrap_or_default().chars().take(500).collect();
    let first = code_block(&first);
    let left = if kept {
        "what ran before keeps running, and the next push tries again"
    } else {
        "nothing of this run was kept"
    };
    format!("### spot environment `{id}`: failed\n\n{first}\nSee the job log; {left}.\n")
}

/// The job summary of a teardown of `id` in `regions` that took `seconds`.
pub fn teardown(id: &str, regions: &str, removal: Result<&Option<Removal>, &str>, seconds: f64) -> String {
    match removal {
        Ok(Some(r)) if r.failed.is_empty() => {
            format!("## spot: teardown of `{id}`\n\nremoved {} in {seconds:.1}s\n", r.summary())
        }
        Ok(Some(r)) => format!(
            "## spot: teardown of `{id}` incomplete\n\nremoved {}; {} left (tagged; `mode: reap` or `spot destroy {id}` removes them)\n",
            r.summary(),
            r.failed.len()
        ),
        Ok(None) => {
            format!("## spot: teardown of `{id}`\n\nnothing left to remove in {regions}\n")
        }
        Err(e) => format!("## spot: teardown of `{id}` failed\n\n{}", code_block(e)),
    }
}

/// The decisions of a reap as a job summary.
pub fn reap(decisions: &[Decision], dry_run: bool) -> String {
    let mut md = format!("## spot: reap{}\n\n", if dry_run { " (dry run)" } else { "" });
    if decisions.is_empty() {
        md.push_str("No deployments found.\n");
        return md;
    }
    md.push_str("| deployment | decision | why | removed |\n|---|---|---|---|\n");
    for d in decisions {
        let (what, why) = match &d.verdict {
            Verdict::Remove(why) => (if dry_run { "would remove" } else { "removed" }, why),
            Verdict::Keep(why) => ("kept", why),
        };
        // Ids and reasons quote tags, which anyone with EC2 access can write.
        let _ = writeln!(
            md,
            "| {} | {what} | {} | {} |",
            code_span(&d.deployment_id),
            cell(why),
            cell(d.removed.as_deref().unwrap_or("-"))
        );
    }
    md
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cloud_init::{self, UserDataKeys};
    use crate::provider::Tags;

    fn created(ready: &[bool]) -> Created {
        let deployment = crate::manifest::example();
        let inputs = crate::plan::Inputs {
            deployment_id: "gh-1-1".into(),
            now: "2026-12-01T10:00:00Z".parse().unwrap(),
            repository: "acme/app".into(),
            pr: None,
            run_id: None,
        };
        let identity = crate::plan::identity(&deployment, &inputs);
        let user_data = cloud_init::render(&deployment, &identity, &UserDataKeys::placeholders()).unwrap();
        let plan = crate::plan::build(&deployment, &inputs, crate::bundle::Listing::default(), &user_data);
        let outcomes = ready
            .iter()
            .enumerate()
            .map(|(n, &ready)| {
                let mut instance = Instance::running(&format!("i-{n}"), Tags::new());
                instance.public_ip = Some(format!("198.51.100.{n}"));
                Outcome {
                    instance,
                    ready,
                    seconds_to_ready: ready.then_some(41.5),
                    error: (!ready).then(|| "boot failed".into()),
                }
            })
            .collect();
        Created { plan, outcomes, state_path: "/tmp/s.json".into(), seconds: 42.0, reused: false }
    }

    #[test]
    fn outputs_name_every_declared_output_and_only_ready_instances() {
        let outputs = outputs(&created(&[true, false, true]));
        let names: Vec<&str> = outputs.iter().map(|(n, _)| *n).collect();
        assert_eq!(names, super::super::OUTPUTS);
        let value = |name: &str| outputs.iter().find(|(n, _)| *n == name).map(|(_, v)| v.as_str()).unwrap();
        assert_eq!(value("instance-ids"), "i-0,i-2");
        assert_eq!(value("public-ips"), "198.51.100.0,198.51.100.2");
        assert_eq!(value("regions"), "us-east-1");
        assert_eq!(value("market"), "spot");
        assert_eq!(value("deployment-id"), "gh-1-1");
    }

    #[test]
    fn the_ready_summary_has_a_row_per_instance_a_price_and_the_teardown() {
        let prices: BTreeMap<(String, String), f64> =
            [(("t3.micro".into(), "us-east-1a".into()), 0.0035)].into();
        let md = ready(&created(&[true, false]), &prices, false);
        assert!(
            md.contains(
                "| us-east-1 | us-east-1a | `i-0` | t3.micro | spot | 0.0035 | 198.51.100.0 | ready | 41.5s |"
            ),
            "{md}"
        );
        assert!(md.contains("`i-1`") && md.contains("failed, terminated"), "{md}");
        assert!(md.contains("**1 of 2 ready**") && md.contains("$0.0035/hour"), "{md}");
        assert!(md.contains("post step"), "{md}");
        assert!(ready(&created(&[true]), &BTreeMap::new(), true).contains("kept (`keep: true`)"));
    }

    #[test]
    fn tag_values_in_the_reap_table_stay_in_their_cells() {
        assert_eq!(code_span("pr-7"), "` pr-7 `");
        assert_eq!(code_span("a`b|c\nd"), "`` a`b\\|c d ``");
        assert_eq!(cell("x|<img src=y>\n*z*"), "x\\|\\<img src=y\\> \\*z\\*");
    }

    #[test]
    fn text_from_outside_is_inert_in_markdown() {
        let hostile = "step `x` failed: ```\n</details><img src=https://evil.example/p> @octocat ````";
        let block = code_block(hostile);
        let fence = block.lines().next().unwrap().trim_end_matches("text");
        assert_eq!(fence, "`````", "{block}");
        // No line inside can close it: every other line is shorter in backticks than the fence.
        let inner: Vec<&str> = block.lines().skip(1).collect();
        assert_eq!(inner.last(), Some(&fence));
        assert!(inner[..inner.len() - 1].iter().all(|l| !l.trim_start().starts_with(fence)), "{block}");
        let comment = failed_comment("pr-7", hostile, false);
        // The comment shows the first line only, fenced by its own longest run.
        assert!(comment.contains("````text\nstep `x` failed: ```\n````\n"), "{comment}");
        assert!(failed("pr-7", hostile).contains("@octocat ````\n`````\n"));
    }

    #[test]
    fn comments_and_teardown_summaries_say_what_happened() {
        let comment = environment_comment(&created(&[true, false]), Some("0123456789abcdef"));
        assert!(comment.contains("`i-0`") && !comment.contains("`i-1`"), "{comment}");
        assert!(comment.contains("`0123456789ab`"), "{comment}");
        assert!(failed_comment("pr-7", "create failed: no capacity\nmore", true).contains(
            "```text\ncreate failed: no capacity\n```\n\nSee the job log; what ran before keeps running"
        ));
        assert!(failed_comment("pr-7", "x", false).contains("nothing of this run was kept"));
        let regions = "us-east-1";
        assert!(teardown("d", regions, Ok(&None), 1.0).contains("nothing left to remove in us-east-1"));
        assert!(teardown("d", regions, Err("denied"), 1.0).contains("failed\n\n```text\ndenied\n```\n"));
        let partial = Removal {
            removed: Vec::new(),
            failed: vec![(
                crate::provider::Resource {
                    kind: crate::provider::Kind::SecurityGroup,
                    region: "us-east-1".into(),
                    id: "sg-1".into(),
                    name: None,
                    tags: Tags::new(),
                },
                "in use".into(),
            )],
        };
        assert!(teardown("d", regions, Ok(&Some(partial)), 1.0).contains("incomplete"));
    }

    #[test]
    fn the_reap_summary_tells_removed_from_kept() {
        let decisions = [
            Decision {
                deployment_id: "old".into(),
                verdict: Verdict::Remove("expired".into()),
                removed: Some("1 instance".into()),
                error: None,
            },
            Decision {
                deployment_id: "new".into(),
                verdict: Verdict::Keep("expires later".into()),
                removed: None,
                error: None,
            },
        ];
        let md = reap(&decisions, false);
        assert!(md.contains("| ` old ` | removed | expired | 1 instance |"), "{md}");
        assert!(md.contains("| ` new ` | kept | expires later | - |"), "{md}");
        assert!(reap(&decisions, true).contains("would remove"));
        assert!(reap(&[], false).contains("No deployments found."));
    }
}
