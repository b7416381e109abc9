//! Pure: what spot makes of cloud-init's own account of a boot.
//!
//! The boot step runs [`report_script`] on the instance: it waits until cloud-init has
//! finished every stage (`/run/cloud-init/result.json`, written at the end of the final
//! stage by every cloud-init since 0.7) or until `cloud-init status` says `error` or
//! `disabled`, then prints one JSON line built from `cloud-init status --format json`.
//! [`judge`] turns that line into a verdict. The policy, the same for every version:
//!
//! - any entry in `errors` (a module or stage that raised: a package that does not
//!   install, a `runcmd` that failed) fails the instance with cloud-init's words and the
//!   `E:` lines apt wrote (cloud-init's output log and its own log). cloud-init 22.x reports
//!   `status: error` as soon as one finished stage has errors; 23.4 and later report
//!   `status: error`, `extended_status: error - running|done`, exit code 1.
//! - `recoverable_errors` (cloud-init 23.4+: logged warnings and deprecations; `status:
//!   done`, `extended_status: degraded done`, exit code 2) do not fail the instance: the
//!   boot did all it was asked. They are shown as warnings. 22.x does not track them.
//! - `disabled` (cloud-init never ran: no datasource found, or disabled on purpose)
//!   fails: the user-data was never applied.
//! - `done` without errors is ready, provided spot's own last boot command ran (its
//!   marker): otherwise the user-data was not spot's, or cloud-init skipped `runcmd`.
//! - no `cloud-init` on the image fails at once.
//!
//! An error recorded by an earlier stage fails the instance without waiting for the last
//! stage: nothing after it makes the deployment good again, and rolling back early is
//! what a user waiting on a pull request wants.

use serde::Deserialize;

use super::BOOT_MARKER;

/// Where cloud-init writes its run state; `result.json` appears when the final stage ends.
const RESULT_FILE: &str = "/run/cloud-init/result.json";
/// Where apt's words show up: apt-get's `E:` lines in cloud-init's output log (22.x runs
/// apt-get on an unknown package: "E: Unable to locate package"), and the lines of
/// cloud-init's apt module in its log (25.1 asks apt first and logs "The following
/// packages were not found by APT so APT will not attempt to install them", then says
/// only "Failed to install the following packages" in the error itself).
/// The shell pipeline that picks those lines, at most five, each once.
const APT_LINES: &str = r"grep -hoE '(^|[[:space:]])E: .*|apt\.py\[[A-Z]+\]: .*(not found|[Ff]ailed|[Ee]rror).*' /var/log/cloud-init-output.log /var/log/cloud-init.log 2>/dev/null | sed -e 's/^[[:space:]]*//' -e 's/^apt\.py\[[A-Z]*\]: //' | awk '!seen[$0]++' | tail -n 5";

/// How cloud-init's JSON is cut down on the instance so the report fits the 4 KB of
/// output a step keeps: at most three errors and three recoverable messages of each
/// kind, each shortened, and the last five `E:` lines of apt.
const COMPACT: &str = r#"import json, sys
def cut(s, n):
    s = str(s)
    return s if len(s) <= n else s[:n] + "..."
try:
    d = json.load(sys.stdin)
except ValueError as e:
    d = {"status": "unreadable", "errors": ["cloud-init status --format json: " + str(e)]}
rec = d.get("recoverable_errors") or {}
print(json.dumps({
    "cloud_init": True,
    "status": d.get("status"),
    "extended_status": d.get("extended_status"),
    "boot_status_code": d.get("boot_status_code"),
    "datasource": d.get("datasource"),
    "errors": [cut(e, 700) for e in (d.get("errors") or [])][:3],
    "recoverable_errors": {k: [cut(m, 200) for m in v][:3] for k, v in list(rec.items())[:3]},
    "marker": sys.argv[1] == "yes",
    "apt": [cut(l, 200) for l in sys.argv[2].splitlines() if l.strip()][-5:],
}))
"#;

/// The boot step's script: wait for cloud-init to end, then report on one line.
pub fn report_script() -> String {
    format!(
        "if ! command -v cloud-init >/dev/null 2>&1; then echo '{{\"cloud_init\":false}}'; exit 0; fi\n\
         n=0\n\
         while [ ! -e {RESULT_FILE} ]; do\n\
         \x20 # `cloud-init status` is a Python start: ask it every fifth second only.\n\
         \x20 if [ $((n % 5)) -eq 0 ]; then\n\
         \x20   case \"$(cloud-init status 2>/dev/null | sed -n 's/^status: //p')\" in error|disabled) break ;; esac\n\
         \x20 fi\n\
         \x20 n=$((n + 1)); sleep 1\n\
         done\n\
         marker=no; [ -e {BOOT_MARKER} ] && marker=yes\n\
         apt=$({APT_LINES})\n\
         cloud-init status --format json 2>/dev/null | python3 -c {compact} \"$marker\" \"$apt\"",
        compact = crate::shell::quote(COMPACT),
    )
}

/// The report line, as [`report_script`] prints it.
#[derive(Debug, Default, Deserialize)]
struct Report {
    cloud_init: bool,
    #[serde(default)]
    status: Option<String>,
    #[serde(default)]
    extended_status: Option<String>,
    #[serde(default)]
    boot_status_code: Option<String>,
    #[serde(default)]
    datasource: Option<String>,
    #[serde(default)]
    errors: Vec<String>,
    #[serde(default)]
    recoverable_errors: std::collections::BTreeMap<String, Vec<String>>,
    #[serde(default)]
    marker: bool,
    #[serde(default)]
    apt: Vec<String>,
}

/// What the boot of one instance came to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Every stage ran; `warnings` are cloud-init's recoverable errors, one per line.
    Ready { warnings: Vec<String> },
    /// The instance cannot take the deployment; the message says why in cloud-init's words.
    Failed(String),
}

/// Judges the boot step's output (its last JSON line; anything before it is ignored).
pub fn judge(output: &str) -> Verdict {
    let Some(line) = output.lines().rev().map(str::trim).find(|l| l.starts_with('{')) else {
        return Verdict::Failed(format!(
            "no report from cloud-init on the instance; it printed: {}",
            output.trim()
        ));
    };
    let report: Report = match serde_json::from_str(line) {
        Ok(r) => r,
        Err(e) => return Verdict::Failed(format!("cloud-init's report is unreadable ({e}): {line}")),
    };
    if !report.cloud_init {
        return Verdict::Failed(
            "the image has no cloud-init, so spot's user-data (host key, login user, packages) was never \
             applied: choose an image with cloud-init"
                .into(),
        );
    }
    let status = report.status.as_deref().unwrap_or("unknown");
    let extended = report.extended_status.as_deref().unwrap_or(status);
    if !report.errors.is_empty() || status == "error" {
        let mut message = format!("cloud-init reported {extended}");
        let errors =
            if report.errors.is_empty() { vec!["(no error text)".to_string()] } else { report.errors };
        message.push_str(&format!(": {}", errors.join("; ")));
        if !report.apt.is_empty() {
            message.push_str(&format!("\n  apt said: {}", report.apt.join(" | ")));
        }
        return Verdict::Failed(message);
    }
    if status == "disabled" {
        let code = report.boot_status_code.as_deref().unwrap_or("no reason given");
        return Verdict::Failed(format!(
            "cloud-init is disabled on this instance ({code}), so its user-data was never applied: the image \
             must run cloud-init with the EC2 datasource"
        ));
    }
    if status != "done" {
        return Verdict::Failed(format!(
            "cloud-init stopped in state `{extended}` (datasource {}): expected `done`",
            report.datasource.as_deref().filter(|d| !d.is_empty()).unwrap_or("none")
        ));
    }
    let warnings: Vec<String> = report
        .recoverable_errors
        .iter()
        .flat_map(|(kind, messages)| messages.iter().map(move |m| format!("{kind}: {m}")))
        .collect();
    if !report.marker {
        // Seen for real: the metadata service failed, cloud-init fell back to no
        // datasource and ended `degraded done` without running any of the user-data.
        let mut message = format!(
            "cloud-init finished ({extended}), but spot's last boot command did not run (no {BOOT_MARKER}): \
             the instance did not apply spot's user-data"
        );
        if !warnings.is_empty() {
            message.push_str(&format!("; cloud-init warned: {}", warnings.join("; ")));
        }
        return Verdict::Failed(message);
    }
    Verdict::Ready { warnings }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ready(warnings: &[&str]) -> Verdict {
        Verdict::Ready { warnings: warnings.iter().map(|w| (*w).to_string()).collect() }
    }

    // Lines as report_script prints them from each cloud-init's `status --format json`.
    const DONE_25: &str = r#"{"cloud_init": true, "status": "done", "extended_status": "done", "boot_status_code": "enabled-by-generator", "datasource": "ec2", "errors": [], "recoverable_errors": {}, "marker": true, "apt": []}"#;
    const DONE_22: &str = r#"{"cloud_init": true, "status": "done", "extended_status": null, "boot_status_code": "enabled-by-generator", "datasource": "ec2", "errors": [], "recoverable_errors": {}, "marker": true, "apt": []}"#;

    #[test]
    fn done_is_ready_on_both_generations() {
        assert_eq!(judge(DONE_25), ready(&[]));
        assert_eq!(judge(&format!("some noise\n{DONE_22}\n")), ready(&[]));
    }

    #[test]
    fn degraded_is_ready_with_the_warnings() {
        let line = r#"{"cloud_init": true, "status": "done", "extended_status": "degraded done", "errors": [], "recoverable_errors": {"WARNING": ["Failed to set locale"], "DEPRECATED": ["Key x is deprecated"]}, "marker": true, "apt": []}"#;
        assert_eq!(judge(line), ready(&["DEPRECATED: Key x is deprecated", "WARNING: Failed to set locale"]));
    }

    #[test]
    fn an_error_fails_with_cloud_init_and_apt_words() {
        let line = r#"{"cloud_init": true, "status": "error", "extended_status": "error - done", "errors": ["('package_update_upgrade_install', ProcessExecutionError('Unexpected error while running command.'))"], "recoverable_errors": {}, "marker": true, "apt": ["E: Unable to locate package no-such-pkg"]}"#;
        let Verdict::Failed(message) = judge(line) else { panic!("an error must fail") };
        assert!(
            message.starts_with("cloud-init reported error - done: ('package_update_upgrade_install'"),
            "{message}"
        );
        assert!(message.contains("apt said: E: Unable to locate package no-such-pkg"), "{message}");
    }

    #[test]
    fn an_error_while_running_fails_at_once_and_22_words_do_too() {
        let running = r#"{"cloud_init": true, "status": "error", "extended_status": "error - running", "errors": ["init failed"], "marker": false}"#;
        assert!(matches!(judge(running), Verdict::Failed(m) if m.contains("error - running: init failed")));
        let old = r#"{"cloud_init": true, "status": "error", "extended_status": null, "errors": ["('scripts_user', RuntimeError('Runparts: 1 failures'))"], "marker": true}"#;
        assert!(matches!(judge(old), Verdict::Failed(m) if m.contains("reported error: ('scripts_user'")));
    }

    #[test]
    fn disabled_not_installed_and_no_marker_fail() {
        let disabled = r#"{"cloud_init": true, "status": "disabled", "boot_status_code": "disabled-by-generator", "errors": [], "marker": false}"#;
        assert!(
            matches!(judge(disabled), Verdict::Failed(m) if m.contains("disabled on this instance (disabled-by-generator)"))
        );
        assert!(
            matches!(judge(r#"{"cloud_init":false}"#), Verdict::Failed(m) if m.contains("no cloud-init"))
        );
        // What a boot that fell back to no datasource reported (trixie, cloud-init 25.1).
        let fallback = r#"{"cloud_init": true, "status": "done", "extended_status": "degraded done", "errors": [], "recoverable_errors": {"WARNING": ["Getting data from <class 'cloudinit.sources.DataSourceEc2.DataSourceEc2Local'> failed", "Used fallback datasource"]}, "marker": false}"#;
        let Verdict::Failed(m) = judge(fallback) else { panic!("a boot without spot's user-data must fail") };
        assert!(m.contains("finished (degraded done), but spot's last boot command did not run"), "{m}");
        assert!(
            m.contains("cloud-init warned: WARNING: Getting data from")
                && m.contains("Used fallback datasource"),
            "{m}"
        );
    }

    #[test]
    fn an_unexpected_state_or_garbage_fails_and_says_what_it_saw() {
        let odd = r#"{"cloud_init": true, "status": "not started", "errors": [], "marker": true}"#;
        assert!(
            matches!(judge(odd), Verdict::Failed(m) if m.contains("stopped in state `not started` (datasource none)"))
        );
        assert!(
            matches!(judge("sudo: a password is required"), Verdict::Failed(m) if m.contains("sudo: a password"))
        );
        assert!(matches!(judge("{not json"), Verdict::Failed(m) if m.contains("unreadable")));
    }

    #[test]
    fn the_report_script_is_valid_sh_and_its_python_compiles() {
        let out = std::process::Command::new("sh").args(["-n", "-c", &report_script()]).output().unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let py = std::process::Command::new("python3")
            .args(["-c", &format!("compile({COMPACT:?}, 'compact', 'exec')")])
            .output()
            .expect("python3 (every image with cloud-init has it) runs the report's compaction");
        assert!(py.status.success(), "{}", String::from_utf8_lossy(&py.stderr));
    }

    #[test]
    fn apts_words_are_picked_from_both_generations_logs() {
        let dir = tempfile::tempdir().unwrap();
        let output = dir.path().join("cloud-init-output.log");
        let log = dir.path().join("cloud-init.log");
        // 22.4: apt-get ran and said so; 25.1: cloud-init's apt module asked apt first.
        std::fs::write(
            &output,
            "Reading package lists...\nE: Unable to locate package nope\nFAILURE: not apt\n",
        )
        .unwrap();
        std::fs::write(
            &log,
            "2026-12-02 01:33:38,906 - apt.py[DEBUG]: The following packages were not found by APT so APT will not attempt to install them: ['nope']\n\
             2026-12-02 01:33:38,907 - apt.py[DEBUG]: Running apt-get update\n\
             Stderr: E: Unable to locate package nope\n",
        )
        .unwrap();
        let pipeline = APT_LINES
            .replace("/var/log/cloud-init-output.log", output.to_str().unwrap())
            .replace("/var/log/cloud-init.log", log.to_str().unwrap());
        let out = std::process::Command::new("sh").args(["-c", &pipeline]).output().unwrap();
        assert_eq!(
            String::from_utf8_lossy(&out.stdout),
            "E: Unable to locate package nope\n\
             The following packages were not found by APT so APT will not attempt to install them: ['nope']\n"
        );
    }

    #[test]
    fn cloud_inits_own_json_compacts_into_a_report_judge_reads() {
        // Cut from `cloud-init status --format json` of a trixie VM (cloud-init 25.1.4)
        // whose metadata crawl failed: every stage's copy of the warnings included.
        let json = r#"{"boot_status_code": "enabled-by-generator", "datasource": "none", "detail": "DataSourceNone",
            "errors": [], "extended_status": "degraded done", "init": {"errors": [], "finished": 76.2,
            "recoverable_errors": {"WARNING": ["Used fallback datasource"]}, "start": 60.2},
            "recoverable_errors": {"WARNING": ["Failed fetching meta-data/ from url http://169.254.169.254/2021-03-23/meta-data/",
            "Used fallback datasource", "Running interface command ['systemctl', 'restart', 'systemd-networkd', 'systemd-resolved'] failed",
            "Used fallback datasource"]}, "stage": null, "status": "done"}"#;
        let out = std::process::Command::new("sh")
            .args([
                "-c",
                &format!(
                    "printf '%s' {} | python3 -c {} no ''",
                    crate::shell::quote(json),
                    crate::shell::quote(COMPACT)
                ),
            ])
            .output()
            .unwrap();
        let report = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success() && report.len() < 4096, "{report}");
        let Verdict::Failed(m) = judge(&report) else { panic!("{report}") };
        assert!(m.contains("(degraded done)") && m.contains("WARNING: Failed fetching meta-data/"), "{m}");
        // At most three messages of a kind.
        assert!(!m.contains("Used fallback datasource; WARNING: Used fallback datasource"), "{m}");
    }
}
