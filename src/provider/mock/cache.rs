//! Prompt-cache usage on request, so cached-token accounting can be tested
//! against the real wire formats: the first user message saying `cached:N`
//! gets N more prompt tokens reported as read from the cache, and
//! `cache_write:N` N more as written to it.
//!
//! - OpenAI: `usage.prompt_tokens` counts them all and
//!   `usage.prompt_tokens_details.cached_tokens` the cached ones (in the JSON
//!   answer and the stream's final usage chunk, with `include_usage`); the
//!   written ones are plain prompt tokens (OpenAI reports no cache writes).
//! - Anthropic: `usage.input_tokens` excludes both, which are in
//!   `cache_read_input_tokens` and `cache_creation_input_tokens` (in the JSON
//!   answer, `message_start` and `message_delta`).

use serde_json::Value;

use super::MockRequest;

impl MockRequest {
    /// `(cached, written)` prompt tokens asked for by the first user
    /// message's text (a string, or text blocks/parts): `cached:N`,
    /// `cache_write:N`; 0 for what it does not say.
    pub fn cache_usage(&self) -> (u32, u32) {
        let Some(first) = self.messages.iter().flatten().find(|m| m["role"] == "user") else {
            return (0, 0);
        };
        let text = match &first["content"] {
            Value::String(s) => s.clone(),
            Value::Array(parts) => parts
                .iter()
                .filter_map(|p| p["text"].as_str())
                .collect::<Vec<_>>()
                .join(" "),
            _ => String::new(),
        };
        (
            number_after(&text, "cached:"),
            number_after(&text, "cache_write:"),
        )
    }
}

/// The digits right after the first `tag` in `text` (0 when none, and at
/// most `u32::MAX`).
fn number_after(text: &str, tag: &str) -> u32 {
    let Some((_, rest)) = text.split_once(tag) else {
        return 0;
    };
    let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
    digits
        .parse::<u64>()
        .map(|n| u32::try_from(n).unwrap_or(u32::MAX))
        .unwrap_or(if digits.is_empty() { 0 } else { u32::MAX })
}

#[cfg(test)]
mod tests {
    use serde_json::{json, Value};

    use super::super::{Answer, MockRequest};
    use crate::provider::Endpoint;
    use crate::sse;

    fn request(body: Value) -> MockRequest {
        serde_json::from_value(body).unwrap()
    }

    fn events(stream: Vec<String>) -> Vec<(Option<String>, Value)> {
        let mut p = sse::Parser::new(1 << 16);
        for ev in stream {
            p.push(ev.as_bytes()).unwrap();
        }
        let mut out = Vec::new();
        while let Some(ev) = p.next_event().unwrap() {
            if ev.data != "[DONE]" {
                out.push((ev.event, serde_json::from_str(&ev.data).unwrap()));
            }
        }
        out
    }

    #[test]
    fn the_first_user_message_asks_for_cached_tokens() {
        let ask =
            |messages: Value| request(json!({"model": "m", "messages": messages})).cache_usage();
        assert_eq!(ask(json!([{"role": "user", "content": "hi"}])), (0, 0));
        assert_eq!(
            ask(json!([
                {"role": "system", "content": "cached:9"},
                {"role": "user", "content": "cached:600 and cache_write:100 please"},
                {"role": "user", "content": "cached:1"},
            ])),
            (600, 100),
            "the first user message only"
        );
        assert_eq!(
            ask(json!([{"role": "user", "content": [{"type": "text", "text": "x cached:5"}]}])),
            (5, 0),
            "text blocks"
        );
        assert_eq!(
            ask(json!([{"role": "user", "content": "cached: 5"}])),
            (0, 0)
        );
        assert_eq!(
            ask(json!([{"role": "user", "content": "cached:99999999999"}])),
            (u32::MAX, 0)
        );
        assert_eq!(request(json!({"model": "m"})).cache_usage(), (0, 0));
    }

    #[test]
    fn openai_usage_counts_cached_tokens_in_the_prompt_and_details() {
        let plain = Answer::new("m", Endpoint::ChatCompletions, 7, 5);
        assert!(plain.complete()["usage"]
            .get("prompt_tokens_details")
            .is_none());
        let a = Answer::new("m", Endpoint::ChatCompletions, 7, 5).with_cache(600, 100);
        let usage = &a.complete()["usage"];
        assert_eq!(usage["prompt_tokens"], 707, "{usage}");
        assert_eq!(usage["prompt_tokens_details"]["cached_tokens"], 600);
        assert_eq!(usage["total_tokens"], 712);
        let streamed = events(a.stream_events(true));
        let last = &streamed.last().unwrap().1;
        assert_eq!(last["choices"], json!([]));
        assert_eq!(&last["usage"], usage, "the final chunk's usage");
        assert!(
            events(a.stream_events(false))
                .iter()
                .all(|(_, v)| v.get("usage").is_none()),
            "no usage without include_usage"
        );
    }

    #[test]
    fn anthropic_usage_reports_cache_reads_and_writes_apart() {
        let plain = Answer::new("c", Endpoint::Messages, 7, 5);
        assert_eq!(
            plain.complete()["usage"],
            json!({"input_tokens": 7, "output_tokens": 5}),
            "unchanged without a cache"
        );
        let a = Answer::new("c", Endpoint::Messages, 7, 5).with_cache(600, 100);
        let want = json!({"input_tokens": 7, "cache_read_input_tokens": 600,
            "cache_creation_input_tokens": 100, "output_tokens": 5});
        assert_eq!(a.complete()["usage"], want);
        let streamed = events(a.message_events());
        let start = &streamed[0];
        assert_eq!(start.0.as_deref(), Some("message_start"));
        let mut start_usage = want.clone();
        start_usage["output_tokens"] = json!(1);
        assert_eq!(start.1["message"]["usage"], start_usage);
        let delta = streamed
            .iter()
            .find(|(name, _)| name.as_deref() == Some("message_delta"))
            .unwrap();
        assert_eq!(delta.1["usage"], want);
    }
}
