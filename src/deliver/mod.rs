//! Pure: what has to happen on each instance, as a list of shell steps.
//!
//! [`steps`] turns the validated manifest and the packed bundle into the ordered steps
//! [`run`] executes over one SSH connection per instance: wait for boot, unpack the bundle
//! (refusing entries that escape), apply owners, unpack the build, run the scripts in
//! order, install and start the services in dependency order, run their health checks,
//! and write the completion marker. Each step is a `sh` script run as root (through
//! `sudo -n` when the login user is not root), with its own time limit. Secrets are not
//! steps here: their values are read from the runner's environment and streamed over
//! the connection by [`run`], never placed in a command line.

pub mod run;

use std::time::Duration;

use crate::cloud_init::ENV_FILE;
use crate::manifest::types::{Deployment, Probe, ScriptRun, TarballSource};
use crate::shell::quote as shell_quote;

/// Where bundles are kept on the instance, by sha256 (a redeploy of the same bundle
/// skips the upload).
pub const BUNDLES_DIR: &str = "/var/lib/spot/bundles";
/// Written last, when the deployment is verified on the instance.
pub const READY_MARKER: &str = "/var/lib/spot/ready.json";
/// The exit status a step uses for "refused" (bad bundle entry, unknown owner).
pub const EXIT_REFUSED: u32 = 65;

/// One shell step.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Step {
    /// As shown in the log and in errors: `script setup`, `service hello`, ...
    pub name: String,
    /// A POSIX `sh` script, run as root.
    pub script: String,
    pub timeout: Duration,
    /// The systemd unit whose journal explains a failure of this step.
    pub unit: Option<String>,
    /// What decides whether the step passed.
    pub check: Check,
}

/// How a step's result is judged.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Check {
    /// Exit status 0 passes.
    ExitStatus,
    /// The output is cloud-init's report ([`crate::cloud_init::status`]), judged here.
    CloudInit,
}

/// A secret to write: its value comes from the runner's environment variable `env`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SecretFile {
    pub name: String,
    pub env: String,
    pub dest: String,
}

/// Time limits that are not in the manifest.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Waiting for cloud-init to finish (packages can be slow).
    pub boot: Duration,
    /// Unpacking the bundle and applying owners.
    pub unpack: Duration,
    /// Enabling and starting one service.
    pub service: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            boot: Duration::from_secs(900),
            unpack: Duration::from_secs(600),
            service: Duration::from_secs(120),
        }
    }
}

/// Everything delivery does on an instance, in order.
#[derive(Debug, Clone)]
pub struct Delivery {
    /// Path of the bundle on the instance.
    pub bundle_path: String,
    pub bundle_sha256: String,
    pub secrets: Vec<SecretFile>,
    /// Steps before the secrets are written (boot, unpack).
    pub before_secrets: Vec<Step>,
    /// Steps after (scripts, services, health, finish).
    pub after_secrets: Vec<Step>,
}

/// Loads the non-secret environment cloud-init wrote.
fn with_env(body: &str) -> String {
    format!("set -a; [ -r {ENV_FILE} ] && . {ENV_FILE}; set +a\n{body}")
}

/// The boot step: waits for cloud-init to end and reports how it ended; the verdict is
/// [`crate::cloud_init::status::judge`]'s.
fn boot_step(limits: &Limits) -> Step {
    Step {
        name: "wait for boot (cloud-init)".into(),
        script: crate::cloud_init::status::report_script(),
        timeout: limits.boot,
        unit: None,
        check: Check::CloudInit,
    }
}

/// Refuses any entry of the archive `path` whose name is absolute or has a `..`
/// component, then extracts it under `dir`. The entry names stay in `$list`.
fn safe_extract(path: &str, dir: &str) -> String {
    let (path, dir) = (shell_quote(path), shell_quote(dir));
    format!(
        "list=$(mktemp)\n\
         tar -tzf {path} > \"$list\"\n\
         bad=$(awk '/^\\// || /(^|\\/)\\.\\.(\\/|$)/ {{print; exit}}' \"$list\")\n\
         if [ -n \"$bad\" ]; then echo \"refusing {path}: entry '$bad' would be written outside {dir}\" >&2; exit {EXIT_REFUSED}; fi\n\
         mkdir -p {dir}\n\
         tar -xzf {path} -C {dir} --no-same-owner\n"
    )
}

/// Gives the bundle entries of one upload (those named in `$list` under its destination)
/// to `owner`.
fn chown_upload(dest: &str, is_dir: bool, owner: &str) -> String {
    let name = dest.trim_start_matches('/').trim_end_matches('/');
    // A folder's entries and the folders between them and the destination.
    let select = if is_dir {
        "index($0, p \"/\") == 1 { print; n = $0; \
         while ((i = match(n, /\\/[^\\/]*$/)) > length(p) + 1) { n = substr(n, 1, i - 1); if (!(n in seen)) { seen[n] = 1; print n } } }"
    } else {
        "$0 == p"
    };
    let (q_owner, q_dest) = (shell_quote(owner), shell_quote(&format!("/{name}")));
    format!(
        "if ! awk -v p={p} '{select}' \"$list\" | (cd / && xargs -r -d '\\n' chown -h -- {q_owner}) \\\n\
         \x20  || ! chown {q_owner} {q_dest}; then\n\
         \x20 echo \"cannot give {q_dest} to {q_owner}: does that user exist (created by a package or script)?\" >&2; exit {EXIT_REFUSED}\n\
         fi\n",
        p = shell_quote(name),
    )
}

/// Builds the steps for `deployment` with its packed bundle.
/// Uploads without an `owner` go to the login user.
pub fn steps(deployment: &Deployment, bundle_sha256: &str, limits: &Limits) -> Delivery {
    let manifest = &deployment.manifest;
    let bundle_path = format!("{BUNDLES_DIR}/{bundle_sha256}.tar.gz");

    // The marker of an earlier delivery goes before anything changes: a redeploy that
    // stops halfway must never look finished to the next one.
    let mut unpack = format!("set -eu\nrm -f {READY_MARKER}\n");
    unpack.push_str(&safe_extract(&bundle_path, "/"));
    let login_user = format!("{}:", deployment.config.username);
    for upload in &manifest.uploads {
        let owner = upload.owner.as_deref().unwrap_or(&login_user);
        unpack.push_str(&chown_upload(&upload.dest, upload.is_dir, owner));
    }
    unpack.push_str("rm -f \"$list\"\n");
    if let Some(tarball) = &manifest.tarball {
        match &tarball.source {
            TarballSource::Dir { .. } => {}
            TarballSource::Archive { path, .. } => {
                let name = path.rsplit('/').next().unwrap_or(path);
                let archive = format!("{}/{name}", tarball.dest);
                unpack.push_str(&safe_extract(&archive, &tarball.dest));
                unpack.push_str(&format!("rm -f {} \"$list\"\n", shell_quote(&archive)));
            }
            TarballSource::Url { url } => {
                let archive = format!("{BUNDLES_DIR}/build-download.tar.gz");
                unpack.push_str(&format!(
                    "curl -fsSL --retry 3 -o {a} {u} || wget -q -O {a} {u}\n",
                    a = shell_quote(&archive),
                    u = shell_quote(url)
                ));
                unpack.push_str(&safe_extract(&archive, &tarball.dest));
                unpack.push_str(&format!("rm -f {} \"$list\"\n", shell_quote(&archive)));
            }
        }
    }
    let before_secrets = vec![
        boot_step(limits),
        Step {
            name: "unpack bundle".into(),
            script: unpack,
            timeout: limits.unpack,
            unit: None,
            check: Check::ExitStatus,
        },
    ];

    let mut after = Vec::new();
    for script in &manifest.scripts {
        let body = match &script.run {
            ScriptRun::File { .. } => {
                let path = shell_quote(&format!("{}/{}", crate::bundle::SCRIPTS_DIR, script.name));
                format!(
                    "cd /var/lib/spot\nif [ \"$(head -c 2 {path})\" = '#!' ]; then exec {path}; else exec bash {path}; fi"
                )
            }
            ScriptRun::Command { command } => format!("cd /var/lib/spot\n{command}"),
        };
        after.push(Step {
            name: format!("script {}", script.name),
            script: with_env(&body),
            timeout: Duration::from_secs(script.timeout_secs),
            unit: None,
            check: Check::ExitStatus,
        });
    }
    if !manifest.services.is_empty() {
        let mut first = true;
        for service in &manifest.services {
            let unit = format!("{}.service", service.name);
            let q = shell_quote(&unit);
            let mut script = String::from("set -e\n");
            if first {
                script.push_str("systemctl daemon-reload\n");
                first = false;
            }
            if service.enabled {
                script.push_str(&format!("systemctl enable {q}\n"));
            }
            if service.start {
                script.push_str(&format!("systemctl restart {q}\nsystemctl is-active {q}\n"));
            }
            after.push(Step {
                name: format!("service {}", service.name),
                script,
                timeout: limits.service,
                unit: Some(unit),
                check: Check::ExitStatus,
            });
        }
        for service in manifest.services.iter().filter(|s| s.start) {
            let unit = format!("{}.service", service.name);
            after.push(health_step(&unit, service.health_check.as_ref()));
        }
    }
    after.push(Step {
        name: "completion marker".into(),
        script: with_env(&format!(
            "set -e\nprintf '{{\"deployment_id\":\"%s\",\"bundle_sha256\":\"%s\",\"ready_at\":\"%s\"}}\\n' \"${{SPOT_DEPLOYMENT_ID:-}}\" {sha} \"$(date -u +%Y-%m-%dT%H:%M:%SZ)\" > {READY_MARKER}.part\nmv -f {READY_MARKER}.part {READY_MARKER}",
            sha = shell_quote(bundle_sha256),
        )),
        timeout: Duration::from_secs(30),
        unit: None,
        check: Check::ExitStatus,
    });

    Delivery {
        bundle_path,
        bundle_sha256: bundle_sha256.to_string(),
        secrets: manifest
            .secrets
            .iter()
            .map(|s| SecretFile { name: s.name.clone(), env: s.env.clone(), dest: s.dest.clone() })
            .collect(),
        before_secrets,
        after_secrets: after,
    }
}

/// Whether an instance of a kept deployment can take a new build in place: its last
/// delivery finished (the completion marker) and every started service is still active.
pub fn still_ready(deployment: &Deployment) -> Step {
    let mut script = format!(
        "[ -f {READY_MARKER} ] || {{ echo 'no completion marker: its last delivery did not finish'; exit 1; }}\n"
    );
    for service in deployment.manifest.services.iter().filter(|s| s.start) {
        let unit = shell_quote(&format!("{}.service", service.name));
        script.push_str(&format!(
            "systemctl is-active --quiet {unit} || {{ echo {unit} is not active; exit 1; }}\n"
        ));
    }
    Step {
        name: "check the running deployment".into(),
        script,
        timeout: Duration::from_secs(30),
        unit: None,
        check: Check::ExitStatus,
    }
}

/// Pure: `text` on one line for the log (a line break shown as `⏎`), so a multi-line
/// command cannot start a line of its own there. Every break a reader may honour counts:
/// `\n`, a lone `\r` (the runner ends a line there), NEL, LS and PS.
fn one_line(text: &str) -> String {
    text.split(['\n', '\r', '\u{85}', '\u{2028}', '\u{2029}'])
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join(" ⏎ ")
}

/// A service's health: its probe until it passes (or the time runs out), failing at once
/// when the unit stops. Without a probe, the unit must still be active.
fn health_step(unit: &str, check: Option<&crate::manifest::types::HealthCheck>) -> Step {
    let q = shell_quote(unit);
    let Some(check) = check else {
        return Step {
            name: format!("health {unit} (active)"),
            script: format!("sleep 1\nsystemctl is-active {q}"),
            timeout: Duration::from_secs(30),
            unit: Some(unit.to_string()),
            check: Check::ExitStatus,
        };
    };
    let (probe, what) = match &check.probe {
        Probe::Command(c) => (with_env(c), format!("command `{}`", one_line(c))),
        Probe::Tcp(port) => {
            (format!("timeout 5 bash -c 'exec 3<>/dev/tcp/127.0.0.1/{port}'"), format!("TCP port {port}"))
        }
        Probe::Http(url) => (
            format!(
                "if command -v curl >/dev/null 2>&1; then curl -fsS -o /dev/null --max-time 5 {u}; else wget -q -O /dev/null -T 5 {u}; fi",
                u = shell_quote(url)
            ),
            format!("HTTP {}", one_line(url)),
        ),
    };
    let secs = check.timeout_secs;
    let script = format!(
        "end=$(( $(date +%s) + {secs} ))\n\
         while :; do\n\
         \x20 if out=$( ( {probe}\n ) 2>&1 ); then exit 0; fi\n\
         \x20 if ! systemctl is-active --quiet {q}; then echo \"$out\"; echo \"{unit} stopped while its health check ({what_q}) was failing\"; exit 3; fi\n\
         \x20 if [ \"$(date +%s)\" -ge \"$end\" ]; then echo \"$out\"; echo \"health check ({what_q}) did not pass within {secs}s\"; exit 1; fi\n\
         \x20 sleep {interval}\n\
         done",
        interval = check.interval_secs.max(1),
        what_q = what.replace(['"', '`', '$', '\\'], "'"),
    );
    Step {
        name: format!("health {unit} ({what})"),
        script,
        timeout: Duration::from_secs(secs + 30),
        unit: Some(unit.to_string()),
        check: Check::ExitStatus,
    }
}

/// The script that writes one secret from stdin: root-only, in place atomically.
pub fn secret_script(dest: &str) -> String {
    let d = shell_quote(dest);
    let part = shell_quote(&format!("{dest}.part"));
    format!(
        "set -e; umask 077; mkdir -p \"$(dirname {d})\"; cat > {part}; chown root:root {part}; chmod 600 {part}; mv -f {part} {d}"
    )
}

/// Replaces every secret value (3 characters or more) in `text` with `***`.
pub fn redact(text: &str, secrets: &[crate::keys::Secret]) -> String {
    let mut out = text.to_string();
    for s in secrets {
        let v = s.expose();
        if v.len() >= 3 {
            out = out.replace(v, "***");
            // A value printed line by line still hides each line.
            for line in v.lines().filter(|l| l.trim().len() >= 3) {
                out = out.replace(line, "***");
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::Secret;
    use crate::manifest::example;

    #[test]
    fn a_multi_line_health_command_is_named_on_one_line() {
        let check = crate::manifest::types::HealthCheck {
            probe: Probe::Command("curl -f localhost\n::error::forged\r\n  true\r::warning::x".into()),
            ..example().manifest.services[0].health_check.clone().unwrap()
        };
        let step = health_step("app.service", Some(&check));
        assert_eq!(
            step.name,
            "health app.service (command `curl -f localhost ⏎ ::error::forged ⏎ true ⏎ ::warning::x`)"
        );
        // Where the instance echoes it back into the log, too.
        assert!(step.script.contains(
            "health check (command 'curl -f localhost ⏎ ::error::forged ⏎ true ⏎ ::warning::x') was failing"
        ));
        let http = crate::manifest::types::HealthCheck {
            probe: Probe::Http("http://a/\r::error::x".into()),
            ..check
        };
        assert_eq!(
            health_step("app.service", Some(&http)).name,
            "health app.service (HTTP http://a/ ⏎ ::error::x)"
        );
    }

    #[test]
    fn every_step_is_valid_sh_and_in_order() {
        let delivery = steps(&example(), &"ab".repeat(32), &Limits::default());
        let all: Vec<&Step> = delivery.before_secrets.iter().chain(&delivery.after_secrets).collect();
        let names: Vec<&str> = all.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "wait for boot (cloud-init)",
                "unpack bundle",
                "script setup",
                "script announce",
                "service hello",
                "health hello.service (HTTP http://127.0.0.1:8080/)",
                "completion marker"
            ]
        );
        for step in all {
            let out = std::process::Command::new("sh").args(["-n", "-c", &step.script]).output().unwrap();
            assert!(
                out.status.success(),
                "{}: {}\n{}",
                step.name,
                String::from_utf8_lossy(&out.stderr),
                step.script
            );
        }
        assert_eq!(delivery.secrets[0].dest, "/etc/spot/secrets/APP_TOKEN");
        let unpack = &delivery.before_secrets[1].script;
        assert!(unpack.contains("chown -h -- 'ubuntu:'"), "uploads default to the login user: {unpack}");
    }

    #[test]
    fn redaction_hides_whole_values_and_lines() {
        let secrets = [Secret::new("hunter22"), Secret::new("line-one\nline-two"), Secret::new("ab")];
        let text = "token=hunter22 and line-one then line-two, ab stays";
        assert_eq!(redact(text, &secrets), "token=*** and *** then ***, ab stays");
    }
}
