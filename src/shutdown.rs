//! Cancellation and task tracking. Every task the gateway spawns goes through
//! [`Shutdown::spawn`], so shutdown can wait for all of them.
//!
//! Two stages: `graceful` (stop accepting, send GOAWAY, let in-flight
//! requests finish) and, once the grace period is over, `force` (drop what is
//! left).

use std::future::Future;
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

#[derive(Clone, Debug)]
pub struct Shutdown {
    graceful: CancellationToken,
    force: CancellationToken,
    tracker: TaskTracker,
}

impl Shutdown {
    /// `graceful` is the token whose cancellation starts the drain.
    pub fn new(graceful: CancellationToken) -> Self {
        Shutdown {
            graceful,
            force: CancellationToken::new(),
            tracker: TaskTracker::new(),
        }
    }

    pub fn spawn<F>(&self, fut: F) -> tokio::task::JoinHandle<F::Output>
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        self.tracker.spawn(fut)
    }

    pub fn tracker(&self) -> &TaskTracker {
        &self.tracker
    }

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

    /// Waits for every tracked task, up to `grace`; then forces the rest to
    /// stop and waits briefly for them. Returns whether everything ended in time.
    pub async fn drain(&self, grace: Duration) -> bool {
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
}

/// A hyper executor whose tasks (HTTP/2 streams) are tracked for shutdown.
#[derive(Clone, Debug)]
pub struct TrackedExecutor(pub TaskTracker);

impl<F> hyper::rt::Executor<F> for TrackedExecutor
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    fn execute(&self, fut: F) {
        self.0.spawn(fut);
    }
}
