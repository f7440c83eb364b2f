//! Waiting on a condition instead of sleeping and hoping.

use std::time::Duration;

/// How often [`wait_until`] looks again.
const POLL: Duration = Duration::from_millis(20);

/// Checks `cond` until it holds (true) or `timeout` has passed (false),
/// looking again every 20 ms. The timeout only bounds a failing test; a
/// passing one goes on as soon as the condition holds.
pub async fn wait_until(timeout: Duration, mut cond: impl AsyncFnMut() -> bool) -> bool {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if cond().await {
            return true;
        }
        if tokio::time::Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(POLL).await;
    }
}
