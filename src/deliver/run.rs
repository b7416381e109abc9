//! The edge: carries out a [`Delivery`] on one instance over one SSH connection.
//!
//! Order: connect (retried inside the SSH budget, host key pinned) -> upload the bundle
//! (skipped when the instance already holds one with the same sha256) while cloud-init
//! may still be installing packages -> wait for boot -> unpack -> secrets -> scripts ->
//! services -> health checks -> completion marker. The first failing step ends the
//! instance's delivery with the step's name, exit status, output tail and, for a unit,
//! its journal; secret values are redacted from all of it.

use std::path::Path;
use std::time::{Duration, Instant};

use super::{Check, Delivery, Step, secret_script};
use crate::cloud_init::status::Verdict;
use crate::keys::Secret;
use crate::lifecycle::progress::Progress;
use crate::remote::{self, Session, Target};
use crate::shell::quote as shell_quote;

/// How many lines of a failing unit's journal an error carries.
const JOURNAL_LINES: u32 = 40;

/// What every instance of one deployment receives.
pub struct Shipment<'a> {
    pub delivery: &'a Delivery,
    /// The packed bundle on this machine.
    pub bundle: &'a Path,
    /// The host public key spot generated (OpenSSH one-line form).
    pub host_public: &'a str,
    pub client_private: &'a Secret,
    /// Secret values in the order of `delivery.secrets`.
    pub secret_values: &'a [Secret],
    /// How long to keep trying to reach SSH.
    pub ssh_budget: Duration,
}

impl std::fmt::Debug for Shipment<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shipment")
            .field("bundle", &self.bundle)
            .field("secrets", &self.secret_values.len())
            .finish_non_exhaustive()
    }
}

/// Why delivery to one instance failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StepFailure {
    pub step: String,
    /// The step's exit status, when it ran to an end.
    pub status: Option<u32>,
    pub message: String,
    /// The last lines of the step's output (secrets redacted).
    pub tail: String,
    /// The failing unit's journal, for service and health steps.
    pub journal: Option<String>,
}

impl std::fmt::Display for StepFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "step `{}` failed: {}", self.step, self.message)?;
        if !self.tail.trim().is_empty() {
            write!(f, "\n  output (last lines):")?;
            for line in tail_lines(&self.tail, 20) {
                write!(f, "\n    | {line}")?;
            }
        }
        if let Some(journal) = self.journal.as_deref().filter(|j| !j.trim().is_empty()) {
            write!(f, "\n  journal:")?;
            for line in tail_lines(journal, 20) {
                write!(f, "\n    | {line}")?;
            }
        }
        Ok(())
    }
}

fn tail_lines(text: &str, n: usize) -> Vec<&str> {
    let lines: Vec<&str> = text.trim_end().lines().collect();
    lines[lines.len().saturating_sub(n)..].to_vec()
}

impl<'a> Shipment<'a> {
    fn fail(&self, step: &str, status: Option<u32>, message: &str, tail: &str) -> StepFailure {
        StepFailure {
            step: step.to_string(),
            status,
            message: super::redact(message, self.secret_values),
            tail: super::redact(tail, self.secret_values),
            journal: None,
        }
    }

    fn ssh_failure(&self, step: &str, e: &remote::Error) -> StepFailure {
        self.fail(step, None, &e.to_string(), "")
    }

    /// Delivers to one instance; `label` names it in the log.
    pub async fn deliver(
        &self,
        target: &Target,
        label: &str,
        progress: &Progress,
    ) -> Result<(), StepFailure> {
        let started = Instant::now();
        let mut session =
            remote::connect_with_budget(target, self.host_public, self.client_private, self.ssh_budget)
                .await
                .map_err(|e| self.ssh_failure("connect", &e))?;
        progress.event(format!(
            "{label}: SSH up at {}:{} (host key verified, {:.1}s)",
            target.host,
            target.port,
            started.elapsed().as_secs_f64()
        ));
        let result = self.steps(&mut session, label, progress).await;
        session.close().await;
        result
    }

    async fn steps(
        &self,
        session: &mut Session,
        label: &str,
        progress: &Progress,
    ) -> Result<(), StepFailure> {
        session.detect_root(Duration::from_secs(30)).await.map_err(|e| self.ssh_failure("connect", &e))?;
        self.upload(session, label, progress).await?;
        for step in &self.delivery.before_secrets {
            self.step(session, step, label, progress).await?;
        }
        for (file, value) in self.delivery.secrets.iter().zip(self.secret_values) {
            let name = format!("secret {}", file.name);
            let out = session
                .run_with_input(
                    &session.as_root(&secret_script(&file.dest)),
                    Some(value.expose().as_bytes()),
                    Duration::from_secs(30),
                )
                .await
                .map_err(|e| self.ssh_failure(&name, &e))?;
            if out.status != 0 {
                return Err(self.fail(
                    &name,
                    Some(out.status),
                    &format!("writing {} failed", file.dest),
                    &out.tail,
                ));
            }
        }
        if !self.delivery.secrets.is_empty() {
            progress.event(format!("{label}: {} secret(s) written (mode 0600)", self.delivery.secrets.len()));
        }
        for step in &self.delivery.after_secrets {
            self.step(session, step, label, progress).await?;
        }
        Ok(())
    }

    async fn upload(&self, session: &Session, label: &str, progress: &Progress) -> Result<(), StepFailure> {
        let path = &self.delivery.bundle_path;
        let sha = &self.delivery.bundle_sha256;
        let have = session
            .run(
                &session.as_root(&format!(
                    "[ -f {p} ] && sha256sum {p} | cut -d' ' -f1 || true",
                    p = shell_quote(path)
                )),
                Duration::from_secs(120),
            )
            .await
            .map_err(|e| self.ssh_failure("upload bundle", &e))?;
        if have.tail.trim() == sha {
            progress.event(format!("{label}: bundle {} already there", &sha[..12]));
            return Ok(());
        }
        let started = Instant::now();
        let file = tokio::fs::File::open(self.bundle)
            .await
            .map_err(|e| self.fail("upload bundle", None, &format!("cannot read the bundle: {e}"), ""))?;
        let bytes = file.metadata().await.map(|m| m.len()).unwrap_or(0);
        // Generous: 1 MB/s at worst, never under 5 minutes.
        let timeout = Duration::from_secs(300 + bytes / 1_000_000);
        session
            .upload(tokio::io::BufReader::with_capacity(256 * 1024, file), path, 0o600, sha, timeout)
            .await
            .map_err(|e| self.ssh_failure("upload bundle", &e))?;
        let secs = started.elapsed().as_secs_f64();
        progress.event(format!(
            "{label}: bundle uploaded ({:.1} MB in {secs:.1}s, sha256 verified)",
            bytes as f64 / 1e6
        ));
        Ok(())
    }

    async fn step(
        &self,
        session: &Session,
        step: &Step,
        label: &str,
        progress: &Progress,
    ) -> Result<(), StepFailure> {
        let started = Instant::now();
        let command = session.as_root(&step.script);
        let result = if step.input.is_empty() {
            session.run(&command, step.timeout).await
        } else {
            session.run_with_input(&command, Some(step.input.as_slice()), step.timeout).await
        };
        let failure = match result {
            Ok(out) if out.status == 0 && step.check == Check::CloudInit => {
                match crate::cloud_init::status::judge(&out.tail) {
                    Verdict::Ready { warnings } => {
                        for warning in &warnings {
                            progress.event(format!(
                                "{label}: warning: cloud-init recovered from: {}",
                                super::redact(warning, self.secret_values)
                            ));
                        }
                        let how = if warnings.is_empty() { "ok" } else { "ok, degraded" };
                        progress.event(format!(
                            "{label}: {} {how} ({:.1}s)",
                            step.name,
                            started.elapsed().as_secs_f64()
                        ));
                        return Ok(());
                    }
                    // The report is the message; its raw line is not repeated as output.
                    Verdict::Failed(why) => self.fail(&step.name, None, &why, ""),
                }
            }
            Ok(out) if out.status == 0 => {
                progress.event(format!(
                    "{label}: {} ok ({:.1}s)",
                    step.name,
                    started.elapsed().as_secs_f64()
                ));
                return Ok(());
            }
            Ok(out) => {
                self.fail(&step.name, Some(out.status), &format!("exit status {}", out.status), &out.tail)
            }
            Err(remote::Error::Timeout(_)) => {
                self.fail(&step.name, None, &format!("did not finish within {}s", step.timeout.as_secs()), "")
            }
            Err(e) => self.ssh_failure(&step.name, &e),
        };
        let mut failure = failure;
        if let Some(unit) = &step.unit {
            let command = format!(
                "journalctl -u {u} -n {JOURNAL_LINES} --no-pager 2>&1 || systemctl status {u} 2>&1",
                u = shell_quote(unit)
            );
            if let Ok(out) = session.run(&session.as_root(&command), Duration::from_secs(30)).await {
                failure.journal = Some(super::redact(&out.tail, self.secret_values));
            }
        }
        Err(failure)
    }
}
