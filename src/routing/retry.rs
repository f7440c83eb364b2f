//! What is worth retrying, how long to back off, and what `Retry-After` says.

use std::time::Duration;

use http::StatusCode;

/// Upstream statuses worth another attempt (the request was not processed,
/// or the provider is overloaded). Never 400/401/403/404/422: those, and
/// context-length errors (400s), go straight back to the client.
pub fn retryable(status: StatusCode) -> bool {
    matches!(status.as_u16(), 408 | 429 | 500 | 502 | 503 | 504 | 529)
}

/// Whether a status counts against the target's circuit breaker: the
/// target misbehaving, not the request (4xx) or a rate limit (429, which
/// cools the target down through `Retry-After` instead).
pub fn breaker_failure(status: StatusCode) -> bool {
    status.is_server_error() || status.as_u16() == 529
}

/// Exponential backoff with full jitter: a uniform draw in
/// `[0, min(max, base × 2^retry)]`.
pub fn backoff(retry: u32, base: Duration, max: Duration) -> Duration {
    let ceiling = base.saturating_mul(1u32 << retry.min(16)).min(max);
    ceiling.mul_f64(fastrand::f64())
}

pub use crate::provider::retry_after;

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderMap;

    #[test]
    fn classification() {
        for s in [408, 429, 500, 502, 503, 504, 529] {
            assert!(retryable(StatusCode::from_u16(s).unwrap()), "{s}");
        }
        for s in [400, 401, 403, 404, 422] {
            assert!(!retryable(StatusCode::from_u16(s).unwrap()), "{s}");
        }
        assert!(!breaker_failure(StatusCode::TOO_MANY_REQUESTS));
        assert!(breaker_failure(StatusCode::from_u16(529).unwrap()));
    }

    #[test]
    fn backoff_is_bounded_full_jitter() {
        let base = Duration::from_millis(100);
        let max = Duration::from_secs(2);
        for retry in 0..20 {
            let d = backoff(retry, base, max);
            assert!(
                d <= max.min(base * 2u32.saturating_pow(retry.min(16))),
                "{retry}: {d:?}"
            );
        }
        let draws: Vec<Duration> = (0..100).map(|_| backoff(3, base, max)).collect();
        assert!(
            draws.iter().any(|d| *d < Duration::from_millis(400))
                && draws.iter().any(|d| *d > Duration::from_millis(400))
        );
    }

    #[test]
    fn retry_after_forms() {
        let mut h = HeaderMap::new();
        assert_eq!(retry_after(&h), None);
        h.insert("retry-after", "3".parse().unwrap());
        assert_eq!(retry_after(&h), Some(Duration::from_secs(3)));
        h.insert("retry-after-ms", "250".parse().unwrap());
        assert_eq!(retry_after(&h), Some(Duration::from_millis(250)));
        let mut h = HeaderMap::new();
        h.insert(
            "retry-after",
            "Wed, 21 Oct 2015 07:28:00 GMT".parse().unwrap(),
        );
        assert_eq!(retry_after(&h), None);
    }
}
