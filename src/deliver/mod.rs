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

use crate::bundle::{Listing, Part};
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
    /// Streamed to the script's standard input (empty: none).
    pub input: Vec<u8>,
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
        input: Vec::new(),
    }
}

/// How an archive's modes are taken when it is unpacked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Modes {
    /// spot's own bundle: exactly as packed (spot packs no setuid or setgid bit).
    AsPacked,
    /// A build archive: as a non-root `tar` takes them (umask 022, and never a setuid or
    /// setgid bit).
    Build,
}

/// Refuses any entry of the archive `path` whose name is absolute or has a `..`
/// component, then extracts it under `dir`, never changing a folder that is already
/// there (`--no-overwrite-dir`). GNU tar itself refuses an entry that passes through a
/// symlink the archive made (`a -> /etc`, then `a/passwd`: "Not a directory").
fn safe_extract(path: &str, dir: &str, modes: Modes) -> String {
    let (path, dir) = (shell_quote(path), shell_quote(dir));
    let flags = match modes {
        Modes::AsPacked => "--no-same-owner --no-overwrite-dir",
        Modes::Build => "--no-same-owner --no-overwrite-dir --no-same-permissions",
    };
    format!(
        "list=$(mktemp)\n\
         tar -tzf {path} > \"$list\"\n\
         bad=$(awk '/^\\// || /(^|\\/)\\.\\.(\\/|$)/ {{print; exit}}' \"$list\")\n\
         if [ -n \"$bad\" ]; then printf 'refusing %s: entry %s would be written outside %s\\n' {path} \"$bad\" {dir} >&2; exit {EXIT_REFUSED}; fi\n\
         rm -f \"$list\"\n\
         mkdir -p {dir}\n\
         tar -xzf {path} -C {dir} {flags}\n"
    )
}

/// What the unpack step reads on its standard input, and the script lines that use it:
/// for each upload, the NUL-separated paths (without the leading `/`) spot itself put in
/// the bundle for it, and the folders between them and its destination. An upload's
/// folders are given to its owner only when the unpack made them: a folder that was
/// already there (`/`, `/usr/local/bin`) keeps its owner.
struct Owners {
    input: Vec<u8>,
    read: String,
    before: String,
    after: String,
}

fn owners(deployment: &Deployment, listing: &Listing) -> Owners {
    let login_user = format!("{}:", deployment.config.username);
    let mut o =
        Owners { input: Vec::new(), read: String::new(), before: String::new(), after: String::new() };
    for (k, upload) in deployment.manifest.uploads.iter().enumerate() {
        let owner = upload.owner.as_deref().unwrap_or(&login_user);
        let dest = upload.dest.trim_end_matches('/');
        let mut files: Vec<&str> = Vec::new();
        let mut dirs: std::collections::BTreeSet<String> = std::collections::BTreeSet::new();
        // This upload's own entries: from its source, to its destination (another upload's
        // files can land under the same folder, `/` included).
        let source = upload.source.trim_end_matches('/');
        for entry in listing.entries.iter().filter(|e| e.part == Part::Upload) {
            let inside = if upload.is_dir {
                entry.dest.strip_prefix(dest).is_some_and(|rest| rest.starts_with('/'))
                    && entry.source.strip_prefix(source).is_some_and(|rest| rest.starts_with('/'))
            } else {
                entry.dest == dest && entry.source == source
            };
            if !inside {
                continue;
            }
            files.push(entry.dest.trim_start_matches('/'));
            if upload.is_dir {
                // The folders between the destination and the entry.
                let mut at = entry.dest.as_str();
                while let Some((parent, _)) = at.rsplit_once('/') {
                    if parent.len() <= dest.len() {
                        break;
                    }
                    dirs.insert(parent.trim_start_matches('/').to_string());
                    at = parent;
                }
            }
        }
        if upload.is_dir && !dest.is_empty() {
            dirs.insert(dest.trim_start_matches('/').to_string());
        }
        // Cut from the whole input, saved as a file first: `head -c` on a pipe may read
        // past its count on a tool other than GNU's.
        let mut section = |name: String, paths: &mut dyn Iterator<Item = &str>| {
            let start = o.input.len();
            for p in paths {
                o.input.extend_from_slice(p.as_bytes());
                o.input.push(0);
            }
            let len = o.input.len() - start;
            o.read.push_str(&format!(
                "tail -c +{from} \"$o/in\" | head -c {len} > \"$o/{name}\"\n\
                 [ \"$(wc -c < \"$o/{name}\")\" -eq {len} ] || {{ echo 'the list of owners arrived short' >&2; exit {EXIT_REFUSED}; }}\n",
                from = start + 1
            ));
        };
        section(format!("{k}f"), &mut files.iter().copied());
        section(format!("{k}d"), &mut dirs.iter().map(String::as_str));
        o.before.push_str(&format!(
            "(cd / && xargs -0 -r sh -c 'for d do [ -e \"$d\" ] || [ -L \"$d\" ] || printf \"%s\\000\" \"$d\"; done' sh) < \"$o/{k}d\" > \"$o/{k}n\"\n"
        ));
        let (q_owner, q_dest) = (shell_quote(owner), shell_quote(&upload.dest));
        o.after.push_str(&format!(
            "if ! (cd / && xargs -0 -r chown -h -- {q_owner} < \"$o/{k}f\" && xargs -0 -r chown -h -- {q_owner} < \"$o/{k}n\"); then\n\
             \x20 printf 'cannot give %s to %s: does that user exist (created by a package or script)?\\n' {q_dest} {q_owner} >&2; exit {EXIT_REFUSED}\n\
             fi\n"
        ));
    }
    o
}

/// Builds the steps for `deployment` with its bundle (`listing`, packed to `bundle_sha256`).
/// Uploads without an `owner` go to the login user.
pub fn steps(deployment: &Deployment, listing: &Listing, bundle_sha256: &str, limits: &Limits) -> Delivery {
    let manifest = &deployment.manifest;
    let bundle_path = format!("{BUNDLES_DIR}/{bundle_sha256}.tar.gz");

    // The marker of an earlier delivery goes before anything changes: a redeploy that
    // stops halfway must never look finished to the next one. Folders the unpack makes
    // are 0755 whatever the instance's umask.
    let mut unpack = format!("set -eu\numask 022\nrm -f {READY_MARKER}\n");
    let owners = owners(deployment, listing);
    unpack.push_str("o=$(mktemp -d)\ncat > \"$o/in\"\n");
    unpack.push_str(&owners.read);
    unpack.push_str(&owners.before);
    unpack.push_str(&safe_extract(&bundle_path, "/", Modes::AsPacked));
    unpack.push_str(&owners.after);
    unpack.push_str("rm -rf \"$o\"\n");
    if let Some(tarball) = &manifest.tarball {
        match &tarball.source {
            TarballSource::Dir { .. } => {}
            TarballSource::Archive { path, .. } => {
                let name = path.rsplit('/').next().unwrap_or(path);
                let archive = format!("{}/{name}", tarball.dest);
                unpack.push_str(&safe_extract(&archive, &tarball.dest, Modes::Build));
                unpack.push_str(&format!("rm -f {}\n", shell_quote(&archive)));
            }
            TarballSource::Url { url, sha256 } => {
                let archive = format!("{BUNDLES_DIR}/build-download.tar.gz");
                let (a, u) = (shell_quote(&archive), shell_quote(url));
                // https only unless the description allowed http (curl: no downgrade on a
                // redirect either).
                let (protocols, wget) = if url.starts_with("https://") {
                    ("=https", "--https-only ")
                } else {
                    ("=http,https", "")
                };
                // wget only without curl: it must not retry what curl refused (a redirect to
                // http), and it follows no redirect at all.
                unpack.push_str(&format!(
                    "if command -v curl >/dev/null 2>&1; then curl -fsSL --proto {protocols} --proto-redir {protocols} --retry 3 -o {a} {u}; \
                     else wget -q {wget}--max-redirect=0 -O {a} {u}; fi\n"
                ));
                if let Some(sha) = sha256 {
                    let sha = shell_quote(sha);
                    unpack.push_str(&format!(
                        "if ! printf '%s  %s\\n' {sha} {a} | sha256sum -c --status -; then\n\
                         \x20 printf 'the build from %s is not sha256 %s: refusing it\\n' {u} {sha} >&2; rm -f {a}; exit {EXIT_REFUSED}\n\
                         fi\n"
                    ));
                }
                unpack.push_str(&safe_extract(&archive, &tarball.dest, Modes::Build));
                unpack.push_str(&format!("rm -f {}\n", shell_quote(&archive)));
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
            input: owners.input,
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
            input: Vec::new(),
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
                input: Vec::new(),
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
        input: Vec::new(),
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
        input: Vec::new(),
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
            input: Vec::new(),
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
        input: Vec::new(),
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
    use std::path::Path;

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
        let listing = crate::bundle::list(&example(), false).unwrap();
        let delivery = steps(&example(), &listing, &"ab".repeat(32), &Limits::default());
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

    /// A build archive unpacked for real by the instance's command (GNU tar as root): an
    /// entry through a symlink it made fails the step and writes nothing there; no setuid
    /// or setgid bit survives; a folder already there keeps its mode.
    #[test]
    fn a_hostile_build_archive_is_stopped_by_the_real_extraction() {
        use std::os::unix::fs::PermissionsExt as _;
        let work = tempfile::tempdir().unwrap();
        let (victim, out) = (work.path().join("victim"), work.path().join("out"));
        std::fs::create_dir_all(out.join("keep")).unwrap();
        std::fs::create_dir_all(&victim).unwrap();
        // Not 0755, which tar would make of 0777 under umask 022 anyway.
        std::fs::set_permissions(out.join("keep"), std::fs::Permissions::from_mode(0o700)).unwrap();
        let uid = std::process::Command::new("id").arg("-u").output().unwrap();
        assert_eq!(String::from_utf8_lossy(&uid.stdout).trim(), "0", "as on an instance: tar as root");
        let archive = work.path().join("build.tar.gz");
        let gz = flate2::write::GzEncoder::new(std::fs::File::create(&archive).unwrap(), Default::default());
        let mut tar = tar::Builder::new(gz);
        let mut add = |name: &str, kind: tar::EntryType, mode: u32, link: Option<&Path>| {
            let mut h = tar::Header::new_gnu();
            h.set_entry_type(kind);
            h.set_mode(mode);
            h.set_size(if kind == tar::EntryType::Regular { 1 } else { 0 });
            match link {
                Some(target) => tar.append_link(&mut h, name, target).unwrap(),
                None if kind == tar::EntryType::Regular => tar.append_data(&mut h, name, &b"x"[..]).unwrap(),
                None => tar.append_data(&mut h, name, std::io::empty()).unwrap(),
            }
        };
        add("a", tar::EntryType::Symlink, 0o777, Some(&victim));
        add("a/passwd", tar::EntryType::Regular, 0o644, None);
        add("suid", tar::EntryType::Regular, 0o6755, None);
        add("keep", tar::EntryType::Directory, 0o777, None);
        tar.into_inner().unwrap().finish().unwrap();
        // As in the unpack step, which starts with `umask 022`.
        let script = format!(
            "umask 022\n{}",
            safe_extract(&archive.to_string_lossy(), &out.to_string_lossy(), Modes::Build)
        );
        let run = std::process::Command::new("sh").args(["-eu", "-c", &script]).output().unwrap();
        assert!(!run.status.success(), "{}", String::from_utf8_lossy(&run.stderr));
        assert!(String::from_utf8_lossy(&run.stderr).contains("Not a directory"));
        assert_eq!(std::fs::read_dir(&victim).unwrap().count(), 0, "written through the symlink");
        let mode = |p: &str| std::fs::metadata(out.join(p)).unwrap().permissions().mode() & 0o7777;
        assert_eq!((mode("suid"), mode("keep")), (0o755, 0o700));
    }

    #[test]
    fn redaction_hides_whole_values_and_lines() {
        let secrets = [Secret::new("hunter22"), Secret::new("line-one\nline-two"), Secret::new("ab")];
        let text = "token=hunter22 and line-one then line-two, ab stays";
        assert_eq!(redact(text, &secrets), "token=*** and *** then ***, ab stays");
    }
}
