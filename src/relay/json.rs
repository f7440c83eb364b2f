//! The JSON mode: a non-SSE body kept as shared chunks (no copy) to read its
//! `usage` at the end, and converted whole to the client's API when the
//! APIs differ.

use bytes::Bytes;

use super::failure::Failure;
use super::usage;
use super::{Accounting, Step};
use crate::api::Api;
use crate::translate::bedrock::response as converse;
use crate::translate::gemini::response as gemini;
use crate::translate::{response as translate_response, Conversion};

/// Largest JSON body kept to read its `usage`; a larger one goes unread.
const MAX_OBSERVED_JSON: usize = 1 << 20;
/// Largest JSON body converted to the client's API (it is held whole).
const MAX_TRANSLATED_JSON: usize = 32 << 20;

pub(super) struct Json {
    chunks: Vec<Bytes>,
    len: usize,
    upstream: Api,
    /// How the whole body becomes the client's (`None`: it passes through).
    conversion: Option<Conversion>,
    /// Its usage is counted (not a stored response read again).
    usage: bool,
    /// The model answering, for a Bedrock answer (which does not name it).
    model: Option<String>,
}

impl Json {
    pub(super) fn new(upstream: Api, conversion: Conversion, model: &str, usage: bool) -> Self {
        let converse = matches!(
            conversion,
            Conversion::ConverseToChat { .. } | Conversion::ConverseToMessages
        );
        Json {
            chunks: Vec::new(),
            len: 0,
            upstream,
            conversion: (conversion != Conversion::None).then_some(conversion),
            usage,
            model: converse.then(|| model.to_string()),
        }
    }

    /// Whether the body reaches the client as the upstream sent it.
    pub(super) fn passes_through(&self) -> bool {
        self.conversion.is_none()
    }

    pub(super) fn chunk(&mut self, data: &Bytes) -> Step {
        self.len += data.len();
        match self.conversion {
            // A converted body is sent whole at the end.
            Some(_) if self.len <= MAX_TRANSLATED_JSON => {
                self.chunks.push(data.clone());
                Step::Replace(Bytes::new())
            }
            Some(_) => Step::Fail(Failure::Untranslatable),
            None if self.len <= MAX_OBSERVED_JSON => {
                self.chunks.push(data.clone());
                Step::Pass
            }
            None => Step::Unread,
        }
    }

    /// At the clean end: reads the usage, and returns the converted body
    /// (nothing for a body passed through, or one that is not JSON).
    pub(super) fn finish(&mut self, account: &Accounting) -> Option<Bytes> {
        let body: Vec<u8> = std::mem::take(&mut self.chunks).concat();
        if let Some(tokens) = usage::json_body(self.upstream, &body).filter(|_| self.usage) {
            account.tokens(tokens);
        }
        let conversion = self.conversion?;
        let value: serde_json::Value = serde_json::from_slice(&body).ok()?;
        let converted = match conversion {
            Conversion::MessagesToChat { .. } => translate_response::message_to_chat(&value),
            Conversion::ChatToMessages => translate_response::chat_to_message(&value),
            Conversion::ModelToOpenAi => translate_response::model_to_openai(&value),
            Conversion::MessagesToResponses => crate::translate::responses::chat::chat_to_response(
                &translate_response::message_to_chat(&value),
            ),
            Conversion::TagResponse(tag) => {
                let mut value = value;
                tag.tag_response(&mut value);
                value
            }
            Conversion::GeminiToChat { .. } => gemini::to_chat(&value),
            Conversion::GeminiToMessages => gemini::to_message(&value),
            Conversion::ConverseToChat { .. } => {
                converse::converse_to_chat(&value, self.model.as_deref().unwrap_or_default())
            }
            Conversion::ConverseToMessages => {
                converse::converse_to_message(&value, self.model.as_deref().unwrap_or_default())
            }
            Conversion::None | Conversion::StripUsage => value,
        };
        Some(Bytes::from(converted.to_string()))
    }
}
