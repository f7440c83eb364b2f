//! Token usage and the end of a response, read in the upstream's wire
//! format: event by event from a stream, or from a whole JSON body. Each
//! API family is a `match` arm, so a new one is a compiler-guided change.

mod gemini;

use serde::Deserialize;

use crate::api::Api;
use crate::sse;
use crate::translate::stream::has_usage_object;

/// One response's tokens as the gateway counts them: cached prompt tokens
/// (read or written) count as prompt tokens, and are also told apart (they
/// have their own prices).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(super) struct Tokens {
    pub prompt: u64,
    pub completion: u64,
    /// Of `prompt`: read from the provider's prompt cache.
    pub cached: u64,
    /// Of `prompt`: written to it.
    pub cache_write: u64,
}

/// What one upstream event says about its stream.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Seen {
    Nothing,
    Usage(Tokens),
    /// The upstream ended the stream cleanly.
    End,
    /// The upstream's last event, with the stream's usage (Gemini's chunk
    /// with a finish reason, the Responses API's `response.completed`).
    Last(Tokens),
    /// The upstream ended the stream with an explicit error event (passed
    /// on to the client as such).
    Failed,
}

/// Reads one upstream stream's events, in its API.
pub(super) enum EventReader {
    /// `usage` in the last chunk (with `include_usage`); `[DONE]` ends it.
    OpenAi,
    /// Input tokens in `message_start`, output tokens (and sometimes the
    /// input again) in `message_delta`; `message_stop` ends it.
    Anthropic { input_tokens: Tokens },
    /// The Responses API's: usage in `response.completed` (or
    /// `.incomplete`), which ends it; `response.failed` and `error` end it
    /// as failed.
    Responses,
    /// `usageMetadata` (running totals) in the chunks; the chunk with a
    /// finish reason ends it, and its usage is the stream's (read once).
    Gemini { ended: bool },
    /// Bedrock's ConverseStream, its frames decoded to events: the usage in
    /// `metadata` (after `messageStop`, which ends it); `exception` fails it.
    Bedrock,
}

impl EventReader {
    pub(super) fn new(upstream: Api) -> Self {
        match upstream {
            Api::OpenAi => EventReader::OpenAi,
            Api::Anthropic => EventReader::Anthropic {
                input_tokens: Tokens::default(),
            },
            Api::Responses => EventReader::Responses,
            Api::Gemini => EventReader::Gemini { ended: false },
        }
    }

    pub(super) fn read(&mut self, ev: &sse::Event) -> Seen {
        match self {
            EventReader::OpenAi => openai_event(ev),
            EventReader::Anthropic { input_tokens } => anthropic_event(ev, input_tokens),
            EventReader::Responses => responses_event(ev),
            EventReader::Gemini { ended } => gemini::event(ev, ended),
            EventReader::Bedrock => bedrock_event(ev),
        }
    }
}

fn openai_event(ev: &sse::Event) -> Seen {
    if ev.data == "[DONE]" {
        return Seen::End;
    }
    // With `include_usage` every chunk says `"usage":null`: only the one
    // with a usage object is parsed.
    if !has_usage_object(&ev.data) {
        return Seen::Nothing;
    }
    match serde_json::from_str(&ev.data) {
        Ok(UsageOnly { usage: Some(u) }) => Seen::Usage(u.tokens()),
        _ => Seen::Nothing,
    }
}

fn anthropic_event(ev: &sse::Event, input_tokens: &mut Tokens) -> Seen {
    match ev.event.as_deref().unwrap_or_default() {
        "message_start" => {
            if let Ok(MessageStart { message }) = serde_json::from_str(&ev.data) {
                *input_tokens = message.usage.tokens();
            }
            Seen::Nothing
        }
        "message_delta" => match serde_json::from_str(&ev.data) {
            Ok(UsageOnly { usage: Some(u) }) => {
                let mut t = u.tokens();
                // The input (and its cache use) is in `message_start`,
                // unless the delta repeats it.
                if u.prompt_tokens == 0
                    && u.cache_read_input_tokens == 0
                    && u.cache_creation_input_tokens == 0
                {
                    t.prompt = input_tokens.prompt;
                    t.cached = input_tokens.cached;
                    t.cache_write = input_tokens.cache_write;
                }
                Seen::Usage(t)
            }
            _ => Seen::Nothing,
        },
        "message_stop" => Seen::End,
        "error" => Seen::Failed,
        _ => Seen::Nothing,
    }
}

fn responses_event(ev: &sse::Event) -> Seen {
    // The event name, or (for a server that leaves `event:` out) the type.
    let name = ev.event.as_deref().unwrap_or_else(|| {
        [
            "response.completed",
            "response.incomplete",
            "response.failed",
            "error",
        ]
        .into_iter()
        .find(|t| ev.data.contains(&format!("\"type\":\"{t}\"")))
        .unwrap_or_default()
    });
    match name {
        "response.completed" | "response.incomplete" => {
            match serde_json::from_str::<ResponseEvent>(&ev.data) {
                Ok(ResponseEvent {
                    response: UsageOnly { usage: Some(u) },
                }) => Seen::Last(u.tokens()),
                _ => Seen::End,
            }
        }
        "response.failed" | "error" => Seen::Failed,
        _ => Seen::Nothing,
    }
}

fn bedrock_event(ev: &sse::Event) -> Seen {
    match ev.event.as_deref().unwrap_or_default() {
        "metadata" => match serde_json::from_str(&ev.data) {
            Ok(UsageOnly { usage: Some(u) }) => Seen::Usage(u.tokens()),
            _ => Seen::Nothing,
        },
        "messageStop" => Seen::End,
        "exception" => Seen::Failed,
        _ => Seen::Nothing,
    }
}

#[derive(Deserialize)]
struct ResponseEvent {
    response: UsageOnly,
}

/// The usage of a whole JSON body in `upstream`'s API, if it reports one
/// (Bedrock's Converse too: its `usage` is read under its own names).
pub(super) fn json_body(upstream: Api, body: &[u8]) -> Option<Tokens> {
    match upstream {
        // Both put one object under `usage`; `Usage` knows both spellings.
        Api::OpenAi | Api::Anthropic | Api::Responses => {
            let UsageOnly { usage } = serde_json::from_slice(body).ok()?;
            usage.map(|u| u.tokens())
        }
        Api::Gemini => gemini::json_body(body),
    }
}

#[derive(Deserialize)]
struct UsageOnly {
    usage: Option<Usage>,
}

/// OpenAI's usage, or Anthropic's or Bedrock's under their own names
/// (Bedrock's `inputTokens`, like Anthropic's, leaves the cache's out).
#[derive(Deserialize, Default)]
#[serde(default)]
struct Usage {
    #[serde(alias = "input_tokens", alias = "inputTokens")]
    prompt_tokens: u64,
    #[serde(alias = "output_tokens", alias = "outputTokens")]
    completion_tokens: u64,
    #[serde(alias = "cacheReadInputTokens")]
    cache_read_input_tokens: u64,
    #[serde(alias = "cacheWriteInputTokens")]
    cache_creation_input_tokens: u64,
    /// OpenAI's: `cached_tokens` (part of `prompt_tokens`; the Responses
    /// API's `input_tokens_details`).
    #[serde(alias = "input_tokens_details")]
    prompt_tokens_details: Option<PromptDetails>,
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct PromptDetails {
    cached_tokens: u64,
}

impl Usage {
    /// OpenAI counts cached tokens in `prompt_tokens`; Anthropic's
    /// `input_tokens` leaves the cache's out.
    fn tokens(&self) -> Tokens {
        let openai_cached = self
            .prompt_tokens_details
            .as_ref()
            .map_or(0, |d| d.cached_tokens);
        Tokens {
            // Saturating: an upstream's numbers, whatever they are.
            prompt: self
                .prompt_tokens
                .saturating_add(self.cache_read_input_tokens)
                .saturating_add(self.cache_creation_input_tokens),
            completion: self.completion_tokens,
            cached: self.cache_read_input_tokens.saturating_add(openai_cached),
            cache_write: self.cache_creation_input_tokens,
        }
    }
}

#[derive(Deserialize)]
struct MessageStart {
    message: MessageUsage,
}

#[derive(Deserialize)]
struct MessageUsage {
    #[serde(default)]
    usage: Usage,
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An upstream's usage near `u64::MAX` saturates (it overflowed: a
    /// panic in a debug build, a wrapped count in a release one).
    #[test]
    fn huge_usage_saturates() {
        let max = u64::MAX;
        let body = format!(
            r#"{{"usage":{{"input_tokens":{max},"output_tokens":{max},"cache_read_input_tokens":{max},"cache_creation_input_tokens":7}}}}"#
        );
        let t = json_body(Api::Anthropic, body.as_bytes()).unwrap();
        assert_eq!((t.prompt, t.completion, t.cached), (max, max, max));
        let u = crate::spend::Usage {
            input: t.prompt,
            output: t.completion,
            cached_input: t.cached,
            cache_write: t.cache_write,
        };
        assert_eq!(u.total(), max);
    }
}
