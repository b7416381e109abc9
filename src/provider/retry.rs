//! Retrying transient cloud failures: jittered exponential backoff inside a budget.
//!
//! Only [`ErrorKind::Transient`] failures (throttling, 5xx, resets, timeouts) are
//! retried, with "full jitter" delays (uniform in 0..min(cap, base * 2^attempt)) so many
//! parallel callers do not retry in step. The budget bounds both the attempts and the
//! total time spent waiting, so a call never hangs a deployment.

use std::future::Future;
use std::time::{Duration, Instant};

use super::{Error, ErrorKind};

/// How hard to retry.
#[derive(Debug, Clone, Copy)]
pub struct Policy {
    pub max_attempts: u32,
    pub base: Duration,
    pub cap: Duration,
    /// Longest total wait across all retries of one call.
    pub budget: Duration,
}

impl Default for Policy {
    fn default() -> Self {
        Self {
            max_attempts: 10,
            base: Duration::from_millis(100),
            cap: Duration::from_secs(5),
            budget: Duration::from_secs(45),
        }
    }
}

impl Policy {
    /// The delay before retry number `attempt` (1-based), drawn with full jitter.
    pub fn delay(&self, attempt: u32) -> Duration {
        let exp = self.base.saturating_mul(1u32 << attempt.min(16));
        let ceiling = exp.min(self.cap);
        let millis = u64::try_from(ceiling.as_millis()).unwrap_or(u64::MAX);
        Duration::from_millis(fastrand::u64(0..=millis))
    }
}

/// Runs `call` until it succeeds, fails with a non-transient error, or the policy's
/// attempts or time budget run out (then the last error is returned).
pub async fn run<T, F, Fut>(policy: &Policy, call: F) -> Result<T, Error>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, Error>>,
{
    retry(policy, call, || async { Ok(None) }, 0).await
}

/// How often a call that may have happened is looked for before it is sent again (or
/// given up): at once, then 1 s and 2 s later, as EC2's reads lag its writes.
pub const LOOKS: u32 = 3;

/// [`run`] for a call that is not idempotent: after a failure that may have done it
/// anyway (a timeout, a reset, a 5xx; not a throttle, which EC2 refuses unprocessed),
/// `done` is asked (up to [`LOOKS`] times) before the call is sent again, and after the
/// last failure too; what it finds is the answer.
pub async fn run_checked<T, F, Fut, D, DFut>(policy: &Policy, call: F, done: D) -> Result<T, Error>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, Error>>,
    D: FnMut() -> DFut,
    DFut: Future<Output = Result<Option<T>, Error>>,
{
    retry(policy, call, done, LOOKS).await
}

/// The loop of both: `looks` times `done` after a failure that may have done the call.
async fn retry<T, F, Fut, D, DFut>(policy: &Policy, mut call: F, mut done: D, looks: u32) -> Result<T, Error>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, Error>>,
    D: FnMut() -> DFut,
    DFut: Future<Output = Result<Option<T>, Error>>,
{
    let started = Instant::now();
    let mut attempt = 0;
    loop {
        attempt += 1;
        match call().await {
            Ok(value) => return Ok(value),
            Err(e) if e.kind == ErrorKind::Transient => {
                if !e.unprocessed() {
                    for look in 0..looks {
                        if look > 0 {
                            tokio::time::sleep(Duration::from_secs(1 << (look - 1))).await;
                        }
                        if let Some(value) = done().await? {
                            return Ok(value);
                        }
                    }
                }
                let delay = policy.delay(attempt);
                if attempt >= policy.max_attempts || started.elapsed() + delay > policy.budget {
                    return Err(e);
                }
                tokio::time::sleep(delay).await;
            }
            Err(e) => return Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};

    fn transient() -> Error {
        Error {
            kind: ErrorKind::Transient,
            code: "RequestLimitExceeded".into(),
            message: String::new(),
            operation: "Test",
            region: "r".into(),
        }
    }

    #[tokio::test]
    async fn retries_transient_errors_then_succeeds() {
        let calls = AtomicU32::new(0);
        let policy = Policy { base: Duration::from_millis(1), ..Policy::default() };
        let out = run(&policy, || async {
            if calls.fetch_add(1, Ordering::SeqCst) < 3 { Err(transient()) } else { Ok(7) }
        })
        .await;
        assert_eq!(out.unwrap(), 7);
        assert_eq!(calls.load(Ordering::SeqCst), 4);
    }

    #[tokio::test]
    async fn gives_up_after_max_attempts_and_never_retries_other_errors() {
        let calls = AtomicU32::new(0);
        let policy = Policy { max_attempts: 3, base: Duration::from_millis(1), ..Policy::default() };
        let out: Result<(), _> = run(&policy, || async {
            calls.fetch_add(1, Ordering::SeqCst);
            Err(transient())
        })
        .await;
        assert!(out.is_err());
        assert_eq!(calls.load(Ordering::SeqCst), 3);
        let calls = AtomicU32::new(0);
        let out: Result<(), _> = run(&policy, || async {
            calls.fetch_add(1, Ordering::SeqCst);
            Err(Error { kind: ErrorKind::Other, ..transient() })
        })
        .await;
        assert!(out.is_err());
        assert_eq!(calls.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn a_call_that_may_have_happened_is_looked_up_before_it_is_sent_again() {
        let policy = Policy { base: Duration::from_millis(1), ..Policy::default() };
        let reset = Error { code: "NetworkError".into(), ..transient() };
        let (calls, looks) = (AtomicU32::new(0), AtomicU32::new(0));
        let out = run_checked(
            &policy,
            || async {
                calls.fetch_add(1, Ordering::SeqCst);
                Err::<&str, _>(reset.clone())
            },
            || async {
                looks.fetch_add(1, Ordering::SeqCst);
                Ok(Some("made by the lost attempt"))
            },
        )
        .await;
        assert_eq!(out.unwrap(), "made by the lost attempt");
        assert_eq!((calls.load(Ordering::SeqCst), looks.load(Ordering::SeqCst)), (1, 1));
        // A throttled call did nothing: sent again without a look.
        let (calls, looks) = (AtomicU32::new(0), AtomicU32::new(0));
        let out = run_checked(
            &policy,
            || async {
                if calls.fetch_add(1, Ordering::SeqCst) == 0 { Err(transient()) } else { Ok("sent") }
            },
            || async {
                looks.fetch_add(1, Ordering::SeqCst);
                Ok(None)
            },
        )
        .await;
        assert_eq!(out.unwrap(), "sent");
        assert_eq!((calls.load(Ordering::SeqCst), looks.load(Ordering::SeqCst)), (2, 0));
    }

    #[test]
    fn delays_are_jittered_and_capped() {
        let policy = Policy::default();
        for attempt in 1..20 {
            assert!(policy.delay(attempt) <= policy.cap);
        }
        let draws: std::collections::BTreeSet<_> = (0..50).map(|_| policy.delay(6)).collect();
        assert!(draws.len() > 5, "full jitter spreads delays");
    }
}
