//! The API families clients and providers speak, and the parts of their wire
//! formats every layer needs: how each names an error. A leaf: it depends on
//! nothing in the crate, so errors, translation, providers and the relay can
//! all use it without depending on each other.

/// The wire format of a request or response body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Api {
    /// OpenAI's (and every OpenAI-compatible server's).
    OpenAi,
    /// Anthropic's Messages API.
    Anthropic,
    /// OpenAI's Responses API: OpenAI's error shape, its own typed stream
    /// events (`response.created` … `response.completed`, no `[DONE]`).
    Responses,
    /// Google's Gemini API (`generateContent`): spoken upstream only — no
    /// client surface serves it, so a client is never `Gemini`.
    Gemini,
}

/// Anthropic's error `type` for an HTTP status.
pub fn anthropic_error_type(status: u16) -> &'static str {
    match status {
        401 => "authentication_error",
        403 => "permission_error",
        404 => "not_found_error",
        413 => "request_too_large",
        429 => "rate_limit_error",
        503 | 529 => "overloaded_error",
        s if s >= 500 => "api_error",
        _ => "invalid_request_error",
    }
}

/// A Responses API `error` event (it ends the stream; the SDKs raise it).
pub fn responses_error_event(code: &str, message: &str) -> String {
    crate::sse::encode(
        Some("error"),
        &serde_json::json!({"type": "error", "code": code, "message": message, "param": null, "sequence_number": 0})
            .to_string(),
    )
}

/// An Anthropic `error` event for a failure the gateway reports itself.
pub fn anthropic_error_event(status: u16, message: &str) -> String {
    crate::sse::encode(
        Some("error"),
        &serde_json::json!({"type": "error", "error": {"type": anthropic_error_type(status), "message": message}})
            .to_string(),
    )
}
