//! What each attempt of a request came to, in order: the [`Ledger`] the
//! failover loop keeps (`routing/failover.rs`, which also reads it:
//! `routing/ledger.rs`), and the client's error carries and renders
//! (`a: connect error; b: status 503`). Nothing is flattened into text
//! until it is displayed. It lives here, below the error, so that the
//! error does not depend on routing.

use std::fmt;

/// Why a target was passed over without being sent the request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Skip {
    /// Its provider failed its health checks.
    Unhealthy,
    /// Its circuit breaker is open.
    BreakerOpen,
    /// Its provider has no such endpoint.
    Unsupported,
    /// It asked to be left alone for a while (`Retry-After`).
    Cooling,
    /// Its provider is at its concurrency cap.
    Busy,
    /// Its breaker refused it at the moment of sending (open, or half-open
    /// with its one probe in flight).
    BreakerRefused,
}

impl Skip {
    fn as_str(self) -> &'static str {
        match self {
            Skip::Unhealthy => "unhealthy",
            Skip::BreakerOpen | Skip::BreakerRefused => "breaker_open",
            Skip::Unsupported => "does not serve this endpoint",
            Skip::Cooling => "cooling down (retry-after)",
            Skip::Busy => "busy",
        }
    }
}

/// What went wrong with one target.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailureClass {
    /// Not sent: passed over, for this reason.
    Skipped(Skip),
    /// The connection failed.
    Connect,
    /// No response headers within the provider's limit.
    Timeout,
    /// No response headers before the request's deadline.
    Deadline,
    /// An error status.
    Status(u16),
    /// The request or its response failed otherwise.
    Invalid,
}

impl FailureClass {
    /// Whether the request was sent (not a skip).
    pub fn sent(self) -> bool {
        !matches!(self, FailureClass::Skipped(_))
    }
}

impl fmt::Display for FailureClass {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FailureClass::Skipped(skip) => f.write_str(skip.as_str()),
            FailureClass::Connect => f.write_str("connect error"),
            FailureClass::Timeout => f.write_str("timeout"),
            FailureClass::Deadline => f.write_str("timeout (request deadline)"),
            FailureClass::Status(status) => write!(f, "status {status}"),
            FailureClass::Invalid => f.write_str("invalid response"),
        }
    }
}

/// One target that did not serve the request, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AttemptFailure {
    /// The target's name (`provider` or `provider/model`).
    pub target: String,
    pub class: FailureClass,
}

impl fmt::Display for AttemptFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.target, self.class)
    }
}

/// Every attempt of one request that did not serve it, in order. Displayed
/// as `a: timeout; b: status 503`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Ledger(Vec<AttemptFailure>);

impl Ledger {
    pub fn iter(&self) -> std::slice::Iter<'_, AttemptFailure> {
        self.0.iter()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn push(&mut self, target: &str, class: FailureClass) {
        self.0.push(AttemptFailure {
            target: target.to_string(),
            class,
        });
    }
}

impl FromIterator<AttemptFailure> for Ledger {
    fn from_iter<I: IntoIterator<Item = AttemptFailure>>(iter: I) -> Self {
        Ledger(iter.into_iter().collect())
    }
}

impl fmt::Display for Ledger {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, attempt) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("; ")?;
            }
            write!(f, "{attempt}")?;
        }
        Ok(())
    }
}
