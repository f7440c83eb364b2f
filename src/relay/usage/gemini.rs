//! Gemini's usage and stream end, in its wire format: `usageMetadata`
//! (`promptTokenCount` counting the cached `cachedContentTokenCount`,
//! `candidatesTokenCount` plus `thoughtsTokenCount` for the output) and a
//! `finishReason` (or a blocked prompt) on the stream's last chunk.

use serde_json::Value;

use super::{Seen, Tokens};
use crate::sse;
use crate::translate::gemini::{ended as finish_of, usage_counts};

fn tokens(usage: &Value) -> Tokens {
    let (prompt, completion, cached) = usage_counts(usage);
    Tokens {
        prompt,
        completion,
        cached,
        cache_write: 0,
    }
}

/// One chunk of a Gemini stream. Every chunk may carry running totals:
/// only the last one's (with the finish reason) is the stream's usage, so
/// it is accounted once. An `error` chunk ends the stream as failed.
pub(super) fn event(ev: &sse::Event, ended: &mut bool) -> Seen {
    if *ended {
        return Seen::Nothing;
    }
    // Most chunks are text: only those that may end the stream are parsed.
    let data = ev.data.as_str();
    if !(data.contains("\"finishReason\"")
        || data.contains("\"blockReason\"")
        || data.contains("\"error\""))
    {
        return Seen::Nothing;
    }
    let Ok(v) = serde_json::from_str::<Value>(data) else {
        return Seen::Nothing;
    };
    if v.get("error").is_some_and(Value::is_object) {
        *ended = true;
        return Seen::Failed;
    }
    if finish_of(&v).is_none() {
        return Seen::Nothing;
    }
    *ended = true;
    Seen::Last(tokens(&v["usageMetadata"]))
}

/// The usage of a whole `GenerateContentResponse`, if it reports one.
pub(super) fn json_body(body: &[u8]) -> Option<Tokens> {
    let v: Value = serde_json::from_slice(body).ok()?;
    v.get("usageMetadata").filter(|u| u.is_object()).map(tokens)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(data: &str) -> sse::Event {
        sse::Event {
            event: None,
            data: data.to_string(),
            id: None,
        }
    }

    /// Running totals in every chunk: only the last one's count, once.
    #[test]
    fn the_stream_usage_is_read_once_at_its_end() {
        let mut ended = false;
        let chunk = r#"{"candidates":[{"content":{"parts":[{"text":"finishReason"}]}}],"usageMetadata":{"promptTokenCount":7,"candidatesTokenCount":1}}"#;
        assert_eq!(event(&ev(chunk), &mut ended), Seen::Nothing);
        let last = r#"{"candidates":[{"finishReason":"STOP"}],"usageMetadata":{"promptTokenCount":9,"candidatesTokenCount":5,"thoughtsTokenCount":2,"cachedContentTokenCount":4}}"#;
        let want = Tokens {
            prompt: 9,
            completion: 7,
            cached: 4,
            cache_write: 0,
        };
        assert_eq!(event(&ev(last), &mut ended), Seen::Last(want));
        assert_eq!(event(&ev(last), &mut ended), Seen::Nothing, "after the end");
        let mut ended = false;
        let err = r#"{"error":{"code":500,"message":"x","status":"INTERNAL"}}"#;
        assert_eq!(event(&ev(err), &mut ended), Seen::Failed);
        let mut ended = false;
        let blocked =
            r#"{"promptFeedback":{"blockReason":"SAFETY"},"usageMetadata":{"promptTokenCount":3}}"#;
        assert!(matches!(event(&ev(blocked), &mut ended), Seen::Last(t) if t.prompt == 3));
        assert_eq!(json_body(last.as_bytes()), Some(want));
        assert_eq!(json_body(b"{}"), None);
        assert_eq!(json_body(b"not json"), None);
    }
}
