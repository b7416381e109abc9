//! Reap (`spot reap` and the Action's `mode: reap`): scheduled teardown of what others left.
//!
//! Across the regions, every deployment tagged `spot:managed-by=spot` and made from this
//! repository (`spot:repository`; every repository's only when asked for the whole
//! account) is judged by the pure [`judge`]: removed when its `spot:expires-at` has
//! passed, when its pull request is closed (asked through the GitHub API when a token is
//! given), or when it is an orphan: security group, key pair, launch template or fleet
//! with no instance left, whose newest resource (`spot:created-at`) is older than the
//! grace period, so a `create` between its first resource and its launch is not mistaken
//! for one. Untagged resources are never looked at.

use std::time::{Duration, Instant};

use serde::Serialize;

use super::Session;
use crate::error::Error;
use crate::lifecycle::inventory::{self, Deployed};
use crate::lifecycle::progress::Progress;
use crate::lifecycle::teardown;
use crate::plan::tag;
use crate::provider::Tags;

/// What to do with one deployment, and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "verdict", content = "reason", rename_all = "snake_case")]
pub enum Verdict {
    Remove(String),
    Keep(String),
}

/// Pure: decides about one deployment at `now`. `pr_closed` is what GitHub said about
/// its pull request (`None`: not asked or no answer, with the reason in `pr_note`). A
/// deployment without instances is an orphan once its newest resource is older than
/// `grace` (one with no `spot:created-at` at all counts as old).
pub fn judge(
    found: &Deployed,
    now: jiff::Timestamp,
    (pr_closed, pr_note): (Option<bool>, &str),
    grace: Duration,
) -> Verdict {
    // One id, two repositories' deployments: the expiry, pull request and instances seen
    // could be either's, so neither is judged from the other's tags.
    if found.repositories.len() > 1 {
        let names: Vec<&str> = found.repositories.iter().map(String::as_str).collect();
        return Verdict::Keep(format!(
            "its id is used by {} repositories ({}): each repository's own reap judges its deployment",
            names.len(),
            names.join(", ")
        ));
    }
    if let Some(expires) = &found.expires_at {
        match expires.parse::<jiff::Timestamp>() {
            Ok(t) if t <= now => return Verdict::Remove(format!("expired at {expires}")),
            Ok(_) => {}
            Err(_) => return Verdict::Remove(format!("its spot:expires-at `{expires}` is not a time")),
        }
    }
    if pr_closed == Some(true) {
        return Verdict::Remove(format!("pull request #{} is closed", found.pr.as_deref().unwrap_or("?")));
    }
    if found.instances.is_empty() {
        let newest = found
            .resources
            .iter()
            .filter_map(|r| r.tags.get(tag::CREATED_AT)?.parse::<jiff::Timestamp>().ok())
            .max();
        let age = newest.map(|t| now.as_second().saturating_sub(t.as_second()));
        let grace_secs = i64::try_from(grace.as_secs()).unwrap_or(i64::MAX);
        return match age {
            Some(age) if age < grace_secs => Verdict::Keep(format!(
                "no instance yet, its newest resource made {age}s ago (a create may be under way; an orphan once older than {}s)",
                grace.as_secs()
            )),
            _ => {
                Verdict::Remove(format!("orphan: {} and no instance", teardown::summarize(&found.resources)))
            }
        };
    }
    let mut why = format!("expires at {}", found.expires_at.as_deref().unwrap_or("(no expiry tag)"));
    if let Some(pr) = &found.pr {
        match pr_closed {
            Some(false) => why.push_str(&format!(", pull request #{pr} is open")),
            _ => why.push_str(&format!(", pull request #{pr}: {pr_note}")),
        }
    }
    Verdict::Keep(why)
}

/// One deployment's verdict and what removing it did.
#[derive(Debug, Clone, Serialize)]
pub struct Decision {
    pub deployment_id: String,
    #[serde(flatten)]
    pub verdict: Verdict,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub removed: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// The inputs of one reap.
#[derive(Debug)]
pub struct Reap<'a> {
    pub regions: &'a [String],
    pub dry_run: bool,
    /// Token and API URL to ask about pull requests with.
    pub github: Option<(crate::keys::Secret, String)>,
    /// `owner/name` of this repository (or the name `create` tagged it with): only its
    /// deployments are judged, and only its pull requests asked about.
    pub repository: &'a str,
    /// Every repository's deployments in the account, not only this one's.
    pub whole_account: bool,
    pub orphan_grace: Duration,
}

/// Judges every deployment and removes the condemned ones (unless `dry_run`).
pub async fn reap(session: &Session, r: &Reap<'_>, progress: &Progress) -> Result<Vec<Decision>, Error> {
    let cloud = &session.cloud;
    {
        // Pull requests are asked about only for a GitHub repository (`owner/name`).
        let github = match &r.github {
            Some((token, api)) if r.repository.contains('/') => Some(
                crate::github::GitHub::new(token, api, r.repository)
                    .map_err(|message| Error::Usage { message, help: String::new() })?,
            ),
            _ => None,
        };
        let mut filter = Tags::new();
        if !r.whole_account {
            filter.insert(tag::REPOSITORY.to_string(), r.repository.to_string());
        }
        let found =
            inventory::discover(cloud, r.regions, &filter).await.map_err(|e| super::cloud_error(&e))?;
        let mut decisions = Vec::new();
        let now = jiff::Timestamp::now();
        for f in found.values() {
            let (closed, note) = pr_state(github.as_ref(), r.repository, f).await;
            decisions.push(Decision {
                deployment_id: f.deployment_id.clone(),
                verdict: judge(f, now, (closed, &note), r.orphan_grace),
                removed: None,
                error: None,
            });
        }
        if r.dry_run {
            return Ok(decisions);
        }
        let deadline = Instant::now() + Duration::from_secs(240);
        let condemned: Vec<(usize, &Deployed)> = decisions
            .iter()
            .enumerate()
            .filter(|(_, d)| matches!(d.verdict, Verdict::Remove(_)))
            .filter_map(|(i, d)| found.get(&d.deployment_id).map(|f| (i, f)))
            .collect();
        let sweeps = condemned.iter().map(|(i, f)| async move {
            let removal = teardown::found(cloud, f, deadline, progress).await;
            (*i, removal)
        });
        for (i, removal) in futures::future::join_all(sweeps).await {
            decisions[i].removed = Some(removal.summary());
            if !removal.failed.is_empty() {
                decisions[i].error = Some(format!("{} resource(s) not removed", removal.failed.len()));
            }
        }
        Ok(decisions)
    }
}

async fn pr_state(
    github: Option<&crate::github::GitHub>,
    repository: &str,
    f: &Deployed,
) -> (Option<bool>, String) {
    let Some(pr) = f.pr.as_deref() else {
        return (None, String::new());
    };
    let Some(github) = github else {
        return (None, "not asked (no GitHub token)".into());
    };
    if f.repository.as_deref() != Some(repository) {
        return (None, format!("not asked (repository {})", f.repository.as_deref().unwrap_or("unknown")));
    }
    let Ok(number) = pr.parse::<u64>() else {
        return (None, "not a number".into());
    };
    match github.pr_closed(number).await {
        Ok(closed) => (Some(closed), String::new()),
        Err(e) => (None, format!("could not ask GitHub: {e}")),
    }
}

/// Prints the decisions (text or JSON); an error when a removal was incomplete.
pub fn report(decisions: &[Decision], dry_run: bool, json: bool) -> Result<(), Error> {
    use std::io::Write as _;
    if json {
        let doc = serde_json::json!({ "dry_run": dry_run, "deployments": decisions });
        let _ = writeln!(std::io::stdout(), "{}", crate::fence::json(&format!("{doc:#}")));
    } else {
        let mut out = crate::fence::Guarded::stdout();
        if decisions.is_empty() {
            let _ = writeln!(out, "nothing found");
        }
        for line in lines(decisions, dry_run) {
            let _ = writeln!(out, "{line}");
        }
    }
    let failed: Vec<&Decision> = decisions.iter().filter(|d| d.error.is_some()).collect();
    if failed.is_empty() {
        Ok(())
    } else {
        Err(Error::Runtime {
            message: format!("{} deployment(s) not fully removed", failed.len()),
            help: "run reap again; what remains is still tagged".into(),
        })
    }
}

/// The decisions as text lines.
pub fn lines(decisions: &[Decision], dry_run: bool) -> Vec<String> {
    decisions
        .iter()
        .map(|d| match (&d.verdict, &d.removed) {
            (Verdict::Remove(why), Some(removed)) => format!(
                "removed {}: {why} ({removed}){}",
                d.deployment_id,
                d.error.as_deref().map(|e| format!("; {e}")).unwrap_or_default()
            ),
            (Verdict::Remove(why), None) => {
                format!("{} {}: {why}", if dry_run { "would remove" } else { "remove" }, d.deployment_id)
            }
            (Verdict::Keep(why), _) => format!("kept {}: {why}", d.deployment_id),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::provider::Instance;

    fn found(expires: &str, pr: Option<&str>, instances: usize) -> Deployed {
        Deployed {
            deployment_id: "d".into(),
            expires_at: Some(expires.into()),
            pr: pr.map(String::from),
            instances: (0..instances).map(|n| Instance::running(&format!("i-{n}"), Tags::new())).collect(),
            ..Deployed::default()
        }
    }

    /// A deployment with no instance whose resources were made at `times`.
    fn made_at(times: &[&str]) -> Deployed {
        let resources = times
            .iter()
            .enumerate()
            .map(|(n, t)| crate::provider::Resource {
                kind: crate::provider::Kind::SecurityGroup,
                region: "us-east-1".into(),
                id: format!("sg-{n}"),
                name: None,
                tags: [(tag::CREATED_AT.to_string(), (*t).to_string())].into(),
            })
            .collect();
        Deployed { resources, ..found("2026-11-26T13:00:00Z", None, 0) }
    }

    #[test]
    fn verdicts() {
        let now: jiff::Timestamp = "2026-11-26T12:00:00Z".parse().unwrap();
        let later = "2026-11-26T13:00:00Z";
        let grace = Duration::from_secs(600);
        let judge = |f: &Deployed, closed| judge(f, now, (closed, ""), grace);
        assert!(
            matches!(judge(&found("2026-11-26T11:59:59Z", None, 1), None), Verdict::Remove(w) if w.starts_with("expired"))
        );
        assert!(
            matches!(judge(&found(later, Some("7"), 1), Some(true)), Verdict::Remove(w) if w.contains("#7 is closed"))
        );
        assert!(
            matches!(judge(&found(later, Some("7"), 1), Some(false)), Verdict::Keep(w) if w.contains("#7 is open"))
        );
        assert!(matches!(judge(&found(later, None, 2), None), Verdict::Keep(_)));
        // Without instances, by the age of the newest resource.
        assert!(matches!(judge(&found(later, None, 0), None), Verdict::Remove(w) if w.starts_with("orphan")));
        let old = made_at(&["2026-11-26T11:00:00Z", "2026-11-26T11:49:59Z"]);
        assert!(matches!(judge(&old, None), Verdict::Remove(w) if w.starts_with("orphan")));
        let fresh = made_at(&["2026-11-26T11:00:00Z", "2026-11-26T11:58:00Z"]);
        assert!(
            matches!(judge(&fresh, None), Verdict::Keep(w) if w.contains("made 120s ago")),
            "{:?}",
            judge(&fresh, None)
        );
        // An expired one goes whatever its age.
        let expired = Deployed { expires_at: Some("2026-11-26T11:59:00Z".into()), ..fresh };
        assert!(matches!(judge(&expired, None), Verdict::Remove(w) if w.starts_with("expired")));
        // Unless two repositories' deployments share its id.
        let shared = Deployed { repositories: ["acme/a".into(), "acme/b".into()].into(), ..expired };
        assert!(
            matches!(judge(&shared, None), Verdict::Keep(w) if w.contains("2 repositories (acme/a, acme/b)"))
        );
    }
}
