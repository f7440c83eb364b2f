//! Token usage and the end of a response, read in the upstream's wire
//! format: event by event from a stream, or from a whole JSON body. Each
//! API family is a `match` arm, so a new one is a compiler-guided change.

use serde::Deserialize;

use crate::api::Api;
use crate::sse;
use crate::translate::stream::has_usage_object;

/// One response's tokens as the gateway counts them: cached prompt tokens
/// (read or written) count as prompt tokens.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Tokens {
    pub prompt: u64,
    pub completion: u64,
}

/// What one upstream event says about its stream.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Seen {
    Nothing,
    Usage(Tokens),
    /// The upstream ended the stream cleanly.
    End,
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
    Anthropic { input_tokens: u64 },
}

impl EventReader {
    pub(super) fn new(upstream: Api) -> Self {
        match upstream {
            Api::OpenAi => EventReader::OpenAi,
            Api::Anthropic => EventReader::Anthropic { input_tokens: 0 },
        }
    }

    pub(super) fn read(&mut self, ev: &sse::Event) -> Seen {
        match self {
            EventReader::OpenAi => openai_event(ev),
            EventReader::Anthropic { input_tokens } => anthropic_event(ev, input_tokens),
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

fn anthropic_event(ev: &sse::Event, input_tokens: &mut u64) -> Seen {
    match ev.event.as_deref().unwrap_or_default() {
        "message_start" => {
            if let Ok(MessageStart { message }) = serde_json::from_str(&ev.data) {
                *input_tokens = message.usage.tokens().prompt;
            }
            Seen::Nothing
        }
        "message_delta" => match serde_json::from_str(&ev.data) {
            Ok(UsageOnly { usage: Some(mut u) }) => {
                if u.prompt_tokens + u.cache_read_input_tokens == 0 {
                    u.prompt_tokens = *input_tokens;
                }
                Seen::Usage(u.tokens())
            }
            _ => Seen::Nothing,
        },
        "message_stop" => Seen::End,
        "error" => Seen::Failed,
        _ => Seen::Nothing,
    }
}

/// The usage of a whole JSON body in `upstream`'s API, if it reports one.
pub(super) fn json_body(upstream: Api, body: &[u8]) -> Option<Tokens> {
    match upstream {
        // Both put one object under `usage`; `Usage` knows both spellings.
        Api::OpenAi | Api::Anthropic => {
            let UsageOnly { usage } = serde_json::from_slice(body).ok()?;
            usage.map(|u| u.tokens())
        }
    }
}

#[derive(Deserialize)]
struct UsageOnly {
    usage: Option<Usage>,
}

/// OpenAI's usage, or Anthropic's under its own names.
#[derive(Deserialize, Default)]
#[serde(default)]
struct Usage {
    #[serde(alias = "input_tokens")]
    prompt_tokens: u64,
    #[serde(alias = "output_tokens")]
    completion_tokens: u64,
    cache_read_input_tokens: u64,
    cache_creation_input_tokens: u64,
}

impl Usage {
    fn tokens(&self) -> Tokens {
        Tokens {
            prompt: self.prompt_tokens
                + self.cache_read_input_tokens
                + self.cache_creation_input_tokens,
            completion: self.completion_tokens,
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
