//! Crash points for the crash-safety tests. With the `failpoints` feature (enabled only in the
//! workspace's test builds) the agent aborts, as a SIGKILL would end it, when it reaches the point
//! named by the environment variable [`ENV`] ([`Failpoint::PanicInWorker`] panics the worker
//! instead). Without the feature [`hit`] is empty.

/// The environment variable naming the point to crash at.
pub const ENV: &str = "RELAUNCH_FAILPOINT";

/// A step at which a crash must be survivable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failpoint {
    /// The shutdown action returned (the application is exiting by itself) and that it ran is
    /// not yet recorded.
    DuringShutdown,
    /// The stop is journaled but not issued.
    AfterStopJournal,
    /// The stop returned and is not yet reported.
    AfterStop,
    /// A request's worker started and reported; it panics (a bug) instead of aborting the
    /// process, to test that the scheduler survives it.
    PanicInWorker,
}

impl Failpoint {
    /// The value of [`ENV`] that selects this point.
    pub const fn name(self) -> &'static str {
        match self {
            Failpoint::DuringShutdown => "during-shutdown",
            Failpoint::AfterStopJournal => "after-stop-journal",
            Failpoint::AfterStop => "after-stop",
            Failpoint::PanicInWorker => "panic-in-worker",
        }
    }
}

/// Aborts the process when `point` is the one selected (test builds only).
#[inline]
pub fn hit(point: Failpoint) {
    #[cfg(feature = "failpoints")]
    if std::env::var(ENV).is_ok_and(|v| v == point.name()) {
        if point == Failpoint::PanicInWorker {
            #[allow(clippy::panic)] // the point of this failpoint
            {
                panic!("failpoint {}", point.name());
            }
        }
        std::process::abort();
    }
    #[cfg(not(feature = "failpoints"))]
    let _ = point;
}
