//! Gemini's usage and stream end, in its wire format: `usageMetadata`
//! (`promptTokenCount` counting the cached `cachedContentTokenCount`,
//! `candidatesTokenCount` plus `thoughtsTokenCount` for the output) and a
//! `finishReason` (or a blocked prompt) on the stream's last chunk.

use serde_json::Value;

use super::usage::{Seen, Tokens};
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
