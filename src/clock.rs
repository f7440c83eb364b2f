//! Wall-clock time for what outlives the process (expiry times in files,
//! `created` fields on the wire). A leaf. Intervals use `tokio::time::Instant`.

use std::time::{SystemTime, UNIX_EPOCH};

/// Seconds since the Unix epoch (0 if the clock is before it).
pub fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}
