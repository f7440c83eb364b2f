//! W3C Trace Context: `traceparent` / `tracestate` read from a request and
//! written to the upstream and to the client (`traceresponse`).

use http::HeaderValue;
use opentelemetry::trace::{SpanId, TraceId};

/// `tracestate` longer than this is not passed on (the spec's 512 bytes).
const MAX_TRACESTATE: usize = 512;

/// The caller's span, from its `traceparent`.
#[derive(Debug, Clone)]
pub struct Parent {
    pub trace_id: TraceId,
    pub span_id: SpanId,
    pub sampled: bool,
    /// Its `tracestate`, passed on as it came.
    pub state: Option<HeaderValue>,
}

impl Parent {
    /// The caller's span, when its `traceparent` is valid (a single field).
    pub fn from_headers(headers: &http::HeaderMap) -> Option<Parent> {
        let mut all = headers.get_all("traceparent").iter();
        let (value, None) = (all.next()?, all.next()) else {
            return None;
        };
        let (trace_id, span_id, flags) = parse(value.as_bytes())?;
        let mut states = headers.get_all("tracestate").iter();
        let state = match (states.next(), states.next()) {
            (Some(s), None) if s.len() <= MAX_TRACESTATE => Some(s.clone()),
            _ => None,
        };
        Some(Parent {
            trace_id,
            span_id,
            sampled: flags & 1 == 1,
            state,
        })
    }
}

/// `version-traceid-spanid-flags`, lowercase hex; version `ff` and all-zero
/// ids are invalid; a later version may append fields after a `-`.
fn parse(v: &[u8]) -> Option<(TraceId, SpanId, u8)> {
    if v.len() < 55 || (v.len() > 55 && (v[..2] == *b"00" || v[55] != b'-')) {
        return None;
    }
    if v[2] != b'-' || v[35] != b'-' || v[52] != b'-' || v[..2] == *b"ff" {
        return None;
    }
    hex(&v[..2])?;
    let trace = hex(&v[3..35])?;
    let span = u64::try_from(hex(&v[36..52])?).ok()?;
    let flags = u8::try_from(hex(&v[53..55])?).ok()?;
    (trace != 0 && span != 0).then(|| (TraceId::from(trace), SpanId::from(span), flags))
}

fn hex(digits: &[u8]) -> Option<u128> {
    digits.iter().try_fold(0u128, |acc, &d| {
        let n = match d {
            b'0'..=b'9' => d - b'0',
            b'a'..=b'f' => d - b'a' + 10,
            _ => return None,
        };
        Some(acc << 4 | u128::from(n))
    })
}

/// The `traceparent` (and `traceresponse`) value for a span.
pub fn traceparent(trace_id: TraceId, span_id: SpanId, sampled: bool) -> HeaderValue {
    let s = format!("00-{trace_id}-{span_id}-{:02x}", u8::from(sampled));
    // Hex digits and dashes only.
    HeaderValue::from_str(&s).unwrap_or_else(|_| HeaderValue::from_static(""))
}

#[cfg(test)]
mod tests {
    use super::*;

    const VALID: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    #[test]
    fn parses_the_specs_example_and_refuses_the_invalid() {
        let (t, s, f) = parse(VALID.as_bytes()).unwrap();
        assert_eq!(t.to_string(), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(s.to_string(), "00f067aa0ba902b7");
        assert_eq!(f, 1);
        assert_eq!(traceparent(t, s, true), VALID);
        for bad in [
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
            "00_4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "",
        ] {
            assert!(parse(bad.as_bytes()).is_none(), "{bad}");
        }
        let later = format!("01{}-what-comes-next", &VALID[2..]);
        assert!(
            parse(later.as_bytes()).is_some(),
            "a later version's fields"
        );
    }

    #[test]
    fn two_traceparents_are_none() {
        let mut h = http::HeaderMap::new();
        h.append("traceparent", VALID.parse().unwrap());
        h.insert("tracestate", "vendor=1".parse().unwrap());
        let p = Parent::from_headers(&h).unwrap();
        assert_eq!(p.state.unwrap(), "vendor=1");
        h.append("traceparent", VALID.parse().unwrap());
        assert!(Parent::from_headers(&h).is_none());
    }
}
