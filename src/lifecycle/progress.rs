//! What a long run tells the person (or log) watching it, and how it is stopped.
//!
//! [`Progress`] prints one line per event to stderr: timestamped when stderr is not a
//! terminal (CI logs), plain with a redrawn status line when it is. [`Cancel`] carries
//! SIGINT/SIGTERM into the async code, which checks it between steps.

use std::io::{IsTerminal as _, Write as _};
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

/// Event lines for a run.
#[derive(Debug)]
pub struct Progress {
    tty: bool,
    started: Instant,
    status_shown: Mutex<bool>,
}

impl Default for Progress {
    fn default() -> Self {
        Self::new()
    }
}

impl Progress {
    pub fn new() -> Self {
        Self {
            tty: std::io::stderr().is_terminal(),
            started: Instant::now(),
            status_shown: Mutex::new(false),
        }
    }

    pub fn elapsed(&self) -> Duration {
        self.started.elapsed()
    }

    /// One event, kept in the log (fenced when it could read as a workflow command).
    pub fn event(&self, message: impl AsRef<str>) {
        let mut shown = self.status_shown.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let line = if self.tty {
            if *shown {
                let _ = write!(std::io::stderr().lock(), "\r\x1b[K");
                *shown = false;
            }
            format!("  {}", message.as_ref())
        } else {
            let now = jiff::Timestamp::now().strftime("%H:%M:%S");
            format!("[{now} +{:.1}s] {}", self.started.elapsed().as_secs_f64(), message.as_ref())
        };
        // The fence goes around the whole line: a stop line must start its line.
        crate::fence::eprint(&crate::fence::guard(&line));
    }

    /// A transient status line, shown only on a terminal.
    pub fn status(&self, message: impl AsRef<str>) {
        if !self.tty {
            return;
        }
        let mut shown = self.status_shown.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let mut err = std::io::stderr().lock();
        let _ = write!(err, "\r\x1b[K{} ({:.0}s)", message.as_ref(), self.started.elapsed().as_secs_f64());
        let _ = err.flush();
        *shown = true;
    }
}

/// How many [`Cancel`] tokens are listening for signals right now.
static LISTENING: AtomicUsize = AtomicUsize::new(0);

/// Counts one listening [`Cancel`] for as long as it lives.
struct Listening;

impl Listening {
    fn new() -> Self {
        LISTENING.fetch_add(1, Ordering::SeqCst);
        Self
    }
}

impl Drop for Listening {
    fn drop(&mut self) {
        LISTENING.fetch_sub(1, Ordering::SeqCst);
    }
}

/// The first SIGINT or SIGTERM (tokio's handlers; must be inside a runtime).
async fn interrupted() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
    let term = async {
        match term.as_mut() {
            Some(t) => {
                t.recv().await;
            }
            None => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        () = term => {}
    }
}

/// SIGINT and SIGTERM end the process (exit 130) whenever no [`Cancel`] is listening.
/// Needed because in the action's container the binary is PID 1, and the kernel ignores
/// a signal PID 1 has no handler for: without this, the runner's cancel would go
/// unheard and the job would wait for its kill. While a `Cancel` listens (during
/// `create`), it stops the run and rolls back instead.
/// Must be called inside the process's runtime: the watcher is a task on it, served by its
/// worker threads even while the command itself runs synchronous code.
pub fn exit_on_signals() {
    tokio::spawn(async {
        loop {
            interrupted().await;
            if LISTENING.load(Ordering::SeqCst) == 0 {
                crate::fence::eprint("spot: stopped by a signal");
                std::process::exit(i32::from(crate::error::exit::INTERRUPTED));
            }
        }
    });
}

/// Set once when the run should stop (SIGINT, SIGTERM).
#[derive(Debug, Clone)]
pub struct Cancel {
    rx: tokio::sync::watch::Receiver<bool>,
}

impl Cancel {
    /// A token cancelled by the first SIGINT or SIGTERM; must be called inside a runtime.
    pub fn on_signals() -> Self {
        let (tx, rx) = tokio::sync::watch::channel(false);
        let listening = Listening::new();
        tokio::spawn(async move {
            let _listening = listening;
            interrupted().await;
            let _ = tx.send(true);
            // Keep the sender alive so receivers see the value, not a closed channel.
            std::future::pending::<()>().await;
        });
        Self { rx }
    }

    pub fn is_cancelled(&self) -> bool {
        *self.rx.borrow()
    }

    /// Resolves when cancelled.
    pub async fn cancelled(&self) {
        let mut rx = self.rx.clone();
        while !*rx.borrow_and_update() {
            if rx.changed().await.is_err() {
                std::future::pending::<()>().await;
            }
        }
    }

    /// Sleeps `d`, or less when cancelled; true when cancelled.
    pub async fn sleep(&self, d: Duration) -> bool {
        tokio::select! {
            () = tokio::time::sleep(d) => self.is_cancelled(),
            () = self.cancelled() => true,
        }
    }
}
