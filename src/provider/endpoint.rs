//! The API operations a request can ask for: their public paths, their
//! paths below a provider's base URL, methods, and wire formats.

use crate::api::Api;

/// The API operation a request asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Endpoint {
    ChatCompletions,
    Completions,
    Embeddings,
    /// Anthropic `/v1/messages`.
    Messages,
    /// Anthropic `/v1/messages/count_tokens`.
    CountTokens,
    /// `GET /v1/models/{model}`: one model, answered by its provider.
    Model,
    /// OpenAI's Responses API, `POST /v1/responses`.
    Responses,
    /// `GET /v1/responses/{id}`: a stored response (the id as the upstream
    /// knows it goes in [`UpstreamCall::model`]).
    StoredResponse,
    /// `DELETE /v1/responses/{id}`.
    DeleteResponse,
    /// `GET /v1/responses/{id}/input_items`.
    ResponseInputItems,
    /// `POST /v1/responses/{id}/cancel` (a background response).
    CancelResponse,
    /// Gemini `POST /models/{model}:generateContent` (or
    /// `:streamGenerateContent?alt=sse`): upstream only, never public.
    GenerateContent,
}

impl Endpoint {
    /// Path below the provider's base URL (which includes `/v1`);
    /// [`Endpoint::Model`] appends the model name.
    pub fn path(self) -> &'static str {
        match self {
            Endpoint::ChatCompletions => "/chat/completions",
            Endpoint::Completions => "/completions",
            Endpoint::Embeddings => "/embeddings",
            Endpoint::Messages => "/messages",
            Endpoint::CountTokens => "/messages/count_tokens",
            Endpoint::Model | Endpoint::GenerateContent => "/models/",
            Endpoint::Responses => "/responses",
            Endpoint::StoredResponse
            | Endpoint::DeleteResponse
            | Endpoint::ResponseInputItems
            | Endpoint::CancelResponse => "/responses/",
        }
    }

    /// What follows the model name (or the stored response's id) in the
    /// URL: Gemini's method (and, for a stream, `?alt=sse`), a stored
    /// response's operation; nothing for the other endpoints.
    pub fn suffix(self, stream: bool) -> &'static str {
        match (self, stream) {
            (Endpoint::GenerateContent, false) => ":generateContent",
            (Endpoint::GenerateContent, true) => ":streamGenerateContent?alt=sse",
            (Endpoint::ResponseInputItems, _) => "/input_items",
            (Endpoint::CancelResponse, _) => "/cancel",
            _ => "",
        }
    }

    /// One stored response's: reached by its id, not by a model's route.
    pub fn is_stored(self) -> bool {
        matches!(
            self,
            Endpoint::StoredResponse
                | Endpoint::DeleteResponse
                | Endpoint::ResponseInputItems
                | Endpoint::CancelResponse
        )
    }

    /// The public path this endpoint is served on.
    pub fn from_public_path(path: &str) -> Option<Endpoint> {
        match path {
            "/v1/chat/completions" => Some(Endpoint::ChatCompletions),
            "/v1/completions" => Some(Endpoint::Completions),
            "/v1/embeddings" => Some(Endpoint::Embeddings),
            "/v1/messages" => Some(Endpoint::Messages),
            "/v1/messages/count_tokens" => Some(Endpoint::CountTokens),
            p if p.len() > "/v1/models/".len() && p.starts_with("/v1/models/") => {
                Some(Endpoint::Model)
            }
            "/v1/responses" => Some(Endpoint::Responses),
            p => match p.strip_prefix("/v1/responses/")?.split_once('/') {
                None if p.len() > "/v1/responses/".len() => Some(Endpoint::StoredResponse),
                Some((id, "input_items")) if !id.is_empty() => Some(Endpoint::ResponseInputItems),
                Some((id, "cancel")) if !id.is_empty() => Some(Endpoint::CancelResponse),
                _ => None,
            },
        }
    }

    /// The stored response's id in a public path (`/v1/responses/{id}…`).
    pub fn response_id(path: &str) -> &str {
        let rest = path.strip_prefix("/v1/responses/").unwrap_or("");
        rest.split('/').next().unwrap_or("")
    }

    /// The API whose wire format this endpoint speaks.
    pub fn api(self) -> Api {
        match self {
            Endpoint::Messages | Endpoint::CountTokens => Api::Anthropic,
            Endpoint::GenerateContent => Api::Gemini,
            e if e == Endpoint::Responses || e.is_stored() => Api::Responses,
            _ => Api::OpenAi,
        }
    }

    /// The HTTP method the endpoint is called with.
    /// `gen_ai.operation.name`, the semantic conventions' name for it.
    pub fn operation(self) -> &'static str {
        match self {
            Endpoint::ChatCompletions
            | Endpoint::Messages
            | Endpoint::Responses
            | Endpoint::GenerateContent => "chat",
            Endpoint::StoredResponse
            | Endpoint::DeleteResponse
            | Endpoint::ResponseInputItems
            | Endpoint::CancelResponse => "responses",
            Endpoint::Completions => "text_completion",
            Endpoint::Embeddings => "embeddings",
            Endpoint::CountTokens => "count_tokens",
            Endpoint::Model => "models",
        }
    }

    pub fn method(self) -> http::Method {
        match self {
            Endpoint::Model | Endpoint::StoredResponse | Endpoint::ResponseInputItems => {
                http::Method::GET
            }
            Endpoint::DeleteResponse => http::Method::DELETE,
            _ => http::Method::POST,
        }
    }

    /// Whether responses can stream.
    pub fn streams(self) -> bool {
        matches!(
            self,
            Endpoint::ChatCompletions
                | Endpoint::Completions
                | Endpoint::Messages
                | Endpoint::Responses
                | Endpoint::GenerateContent
        )
    }
}
