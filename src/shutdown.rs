//! Cancellation and task tracking. Every task the gateway spawns goes through
//! [`Shutdown::spawn`], so shutdown can wait for all of them.
//!
//! The stages, in order:
//! - `signalled`: the shutdown signal arrived. `/ready` answers 503 from
//!   now on; the public listeners still accept (for `server.drain_delay`).
//! - `draining`: stop accepting, send GOAWAY, let in-flight requests finish.
//! - `forced`: the grace period is over; drop what is left.
//! - `exiting`: the drain is over and the process is about to exit; tasks
//!   that must outlive the drain (the admin listener, so `/ready` keeps
//!   answering 503) stop here. They are tracked apart, so the drain does not
//!   wait for them.

use std::future::Future;
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

#[derive(Clone, Debug)]
pub struct Shutdown {
    signal: CancellationToken,
    graceful: CancellationToken,
    force: CancellationToken,
    exit: CancellationToken,
    tracker: TaskTracker,
    /// Tasks that run until exit.
    until_exit: TaskTracker,
}

impl Shutdown {
    /// `signal` is the token whose cancellation starts the shutdown; the
    /// drain itself starts with [`Shutdown::begin_drain`].
    pub fn new(signal: CancellationToken) -> Self {
        Shutdown {
            signal,
            graceful: CancellationToken::new(),
            force: CancellationToken::new(),
            exit: CancellationToken::new(),
            tracker: TaskTracker::new(),
            until_exit: TaskTracker::new(),
        }
    }

    pub fn spawn<F>(&self, fut: F) -> tokio::task::JoinHandle<F::Output>
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        self.tracker.spawn(fut)
    }

    /// Spawns a task that outlives the drain; it must end on [`Shutdown::exiting`].
    pub fn spawn_until_exit<F>(&self, fut: F) -> tokio::task::JoinHandle<F::Output>
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        self.until_exit.spawn(fut)
    }

    pub fn tracker(&self) -> &TaskTracker {
        &self.tracker
    }

    /// Whether the shutdown signal arrived (what `/ready` reports).
    pub fn is_signalled(&self) -> bool {
        self.signal.is_cancelled()
    }

    /// Resolves when the shutdown signal arrives.
    pub async fn signalled(&self) {
        self.signal.cancelled().await
    }

    /// Starts the drain proper (after `drain_delay`).
    pub fn begin_drain(&self) {
        self.graceful.cancel();
    }

    /// Whether the drain proper has started (listeners stopped accepting).
    pub fn is_draining(&self) -> bool {
        self.graceful.is_cancelled()
    }

    /// Resolves when the drain starts.
    pub async fn draining(&self) {
        self.graceful.cancelled().await
    }

    /// Resolves when the grace period is over and remaining work must stop.
    pub async fn forced(&self) {
        self.force.cancelled().await
    }

    /// Resolves when the process is about to exit.
    pub async fn exiting(&self) {
        self.exit.cancelled().await
    }

    /// Waits for every tracked task, up to `grace`; then forces the rest to
    /// stop and waits briefly for them. Returns whether everything ended in time.
    pub async fn drain(&self, grace: Duration) -> bool {
        self.begin_drain();
        self.tracker.close();
        let clean = tokio::time::timeout(grace, self.tracker.wait())
            .await
            .is_ok();
        if !clean {
            tracing::warn!(
                remaining_tasks = self.tracker.len(),
                "shutdown grace period over; closing remaining connections"
            );
            self.force.cancel();
            let _ = tokio::time::timeout(Duration::from_secs(2), self.tracker.wait()).await;
        }
        clean
    }

    /// After the drain: stops the tasks that ran until exit (bounded wait).
    pub async fn exit(&self) {
        self.signal.cancel();
        self.begin_drain();
        self.exit.cancel();
        self.until_exit.close();
        let _ = tokio::time::timeout(Duration::from_secs(2), self.until_exit.wait()).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn stages_come_in_order() {
        let signal = CancellationToken::new();
        let sd = Shutdown::new(signal.clone());
        let lasting = sd.clone();
        let admin = sd.spawn_until_exit(async move { lasting.exiting().await });
        signal.cancel();
        assert!(sd.is_signalled());
        assert!(!sd.is_draining(), "the drain waits for begin_drain");
        assert!(
            sd.drain(Duration::from_secs(1)).await,
            "nothing to wait for"
        );
        assert!(sd.is_draining());
        assert!(!admin.is_finished(), "until-exit tasks outlive the drain");
        sd.exit().await;
        assert!(admin.is_finished());
    }

    #[tokio::test(start_paused = true)]
    async fn a_drain_past_its_grace_is_not_clean() {
        let sd = Shutdown::new(CancellationToken::new());
        let stuck = sd.clone();
        sd.spawn(async move { stuck.forced().await });
        assert!(!sd.drain(Duration::from_millis(10)).await);
    }
}
