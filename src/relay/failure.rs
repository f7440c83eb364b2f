//! Why a relayed response failed after its headers, and how the client is
//! told: an error event in the client's API ends an event stream.

use bytes::Bytes;

use crate::api::anthropic_error_event;
use crate::api::Api;
use crate::exchange::BodyError;
use crate::sse;

#[derive(Debug, thiserror::Error)]
pub(super) enum Failure {
    #[error("upstream stream failed: {0}")]
    Upstream(BodyError),
    #[error("upstream ended the stream without [DONE]")]
    Truncated,
    #[error("upstream sent nothing for {0:?}")]
    Idle(std::time::Duration),
    #[error("upstream exceeded its total time limit")]
    Total,
    #[error("upstream response too large to translate")]
    Untranslatable,
    #[error("upstream sent an invalid event stream frame")]
    BadFrame,
}

impl Failure {
    /// The `reason` label of the stream-error metric.
    pub(super) fn reason(&self) -> &'static str {
        match self {
            Failure::Upstream(_) => "upstream_error",
            Failure::Truncated => "truncated",
            Failure::Idle(_) => "idle_timeout",
            Failure::Total => "total_timeout",
            Failure::Untranslatable => "untranslatable",
            Failure::BadFrame => "bad_frame",
        }
    }

    /// The SSE error event that ends a failed stream, in the client's API.
    pub(super) fn event(&self, client: Api) -> Bytes {
        let (message, code) = self.describe();
        let event = match client {
            Api::OpenAi | Api::Gemini => {
                let body = serde_json::json!({
                    "error": {"message": message, "type": "upstream_error", "code": code}
                });
                sse::encode(None, &body.to_string())
            }
            Api::Anthropic => anthropic_error_event(502, message),
            Api::Responses => crate::api::responses_error_event(code, message),
        };
        Bytes::from(event)
    }

    /// The client's message and the OpenAI error `code`.
    fn describe(&self) -> (&'static str, &'static str) {
        match self {
            Failure::Upstream(_) => (
                "the upstream provider failed mid-stream",
                "upstream_stream_error",
            ),
            Failure::Truncated => (
                "the upstream provider ended the stream early",
                "upstream_stream_truncated",
            ),
            Failure::Idle(_) => (
                "the upstream provider stalled mid-stream",
                "upstream_idle_timeout",
            ),
            Failure::Total => (
                "the upstream provider exceeded its time limit",
                "upstream_timeout",
            ),
            Failure::Untranslatable => (
                "the upstream response was too large to translate",
                "upstream_untranslatable",
            ),
            Failure::BadFrame => (
                "the upstream provider sent an invalid event stream",
                "upstream_bad_frame",
            ),
        }
    }
}
