//! Google's Gemini API: `x-goog-api-key`, and every request translated —
//! OpenAI chat completions and Anthropic messages both become
//! `POST {base_url}/models/{model}:generateContent` (a stream:
//! `:streamGenerateContent?alt=sse`), answered back in the client's API
//! (see `translate::gemini`). Other endpoints (completions, embeddings,
//! token counts, `/v1/models/{model}`) are not served: another target may.

use bytes::Bytes;
use http::HeaderName;

use super::client::{HttpClients, Upstream};
use super::{Common, Endpoint, PrepareError, UpstreamCall};
use crate::config::ProviderConfig;
use crate::translate::gemini::request;
use crate::translate::{Conversion, Options, TranslateError};

#[derive(Debug)]
pub struct Gemini {
    pub common: Common,
    pub client: Upstream,
}

impl Gemini {
    pub fn new(
        common: Common,
        cfg: &ProviderConfig,
        clients: &mut HttpClients,
    ) -> Result<Self, String> {
        let auth = (HeaderName::from_static("x-goog-api-key"), "");
        Ok(Gemini {
            common,
            client: Upstream::new(cfg, clients, auth, &[])?,
        })
    }
}

/// Checks a Gemini model id (`gemini-2.5-flash`, without `models/`) as it
/// goes in the URL path: letters, digits, `.`, `_` and `-` only, so a
/// model name can never change the path or add a query.
pub fn model_id(model: &str) -> Result<&str, TranslateError> {
    let id = model;
    let ok = !id.is_empty()
        && id.len() <= 128
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
    if ok {
        Ok(id)
    } else {
        Err(TranslateError::Invalid(format!(
            "the model name `{}` cannot be sent to a Gemini provider",
            model.chars().take(64).collect::<String>()
        )))
    }
}

/// The endpoint, body and conversion of a call to a Gemini target, with
/// `model` (already the target's) checked for the URL.
pub fn prepare(
    endpoint: Endpoint,
    call: &UpstreamCall,
    model: &str,
    opts: &Options,
) -> Result<(Endpoint, Bytes, Conversion), PrepareError> {
    let (body, conversion) = match endpoint {
        Endpoint::ChatCompletions => (
            request::chat_to_gemini(&call.body, opts),
            Conversion::GeminiToChat {
                include_usage: call.include_usage,
            },
        ),
        Endpoint::Messages => (
            request::messages_to_gemini(&call.body, opts),
            Conversion::GeminiToMessages,
        ),
        _ => return Err(PrepareError::Unsupported),
    };
    model_id(model).map_err(PrepareError::Invalid)?;
    let body = body.map_err(PrepareError::Invalid)?;
    Ok((Endpoint::GenerateContent, Bytes::from(body), conversion))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn model_names_cannot_change_the_path() {
        assert!(model_id("gemini-2.5-flash").is_ok());
        assert!(model_id("gemini-1.5-pro-002").is_ok());
        for bad in [
            "",
            "a/b",
            "models/gemini",
            "x:generateContent",
            "g?key=1",
            "../x",
            "g e",
        ] {
            assert!(model_id(bad).is_err(), "{bad}");
        }
        assert_eq!(Endpoint::GenerateContent.suffix(false), ":generateContent");
        assert_eq!(
            Endpoint::GenerateContent.suffix(true),
            ":streamGenerateContent?alt=sse"
        );
        assert_eq!(Endpoint::ChatCompletions.suffix(true), "");
    }

    #[test]
    fn a_gemini_target_prepares_generate_content() {
        use crate::config::{ProviderKind, Secret};
        use crate::provider::{HttpClients, Provider};
        let _ = rustls::crypto::ring::default_provider().install_default();
        let cfg = ProviderConfig {
            name: "g".into(),
            kind: ProviderKind::Gemini,
            api_key: Secret::new("test-key-not-real"),
            ..Default::default()
        };
        assert_eq!(
            cfg.base_url(),
            "https://generativelanguage.googleapis.com/v1beta"
        );
        assert!(!cfg.propagates_trace(), "not to Google's public API");
        let p = Provider::build(&cfg, &mut HttpClients::default()).unwrap();
        assert_eq!(p.common().system, "gcp.gemini");
        let call = |endpoint, body: &str| UpstreamCall {
            endpoint,
            model: "gemini-x".into(),
            body: Bytes::from(body.to_string()),
            stream: true,
            include_usage: true,
            request_id: "r".into(),
            early_data: false,
            drop_unsupported: false,
            trace: None,
            headers: Default::default(),
            pin: None,
            owner: 0,
        };
        let chat = r#"{"model":"gemini-x","messages":[{"role":"user","content":"hi"}]}"#;
        let prepared = p
            .prepare(
                &call(Endpoint::ChatCompletions, chat),
                Some("gemini-2.5-flash"),
            )
            .unwrap();
        assert_eq!(prepared.endpoint, Endpoint::GenerateContent);
        assert_eq!(prepared.model, "gemini-2.5-flash");
        assert_eq!(
            prepared.conversion,
            Conversion::GeminiToChat {
                include_usage: true
            }
        );
        assert_eq!(prepared.upstream_api(), crate::api::Api::Gemini);
        let body: serde_json::Value = serde_json::from_slice(&prepared.body).unwrap();
        assert_eq!(body["contents"][0]["parts"][0]["text"], "hi");
        let messages = p.prepare(&call(Endpoint::Messages, chat), None).unwrap();
        assert_eq!(messages.conversion, Conversion::GeminiToMessages);
        for endpoint in [Endpoint::Embeddings, Endpoint::Model, Endpoint::CountTokens] {
            assert_eq!(
                p.prepare(&call(endpoint, chat), None).unwrap_err(),
                PrepareError::Unsupported
            );
        }
        assert!(matches!(
            p.prepare(&call(Endpoint::ChatCompletions, chat), Some("a/b")),
            Err(PrepareError::Invalid(_))
        ));
    }

    /// Google's error body keeps its status, message and name.
    #[test]
    fn a_gemini_error_body_is_read() {
        let body = br#"{"error":{"code":429,"message":"Resource has been exhausted","status":"RESOURCE_EXHAUSTED"}}"#;
        let e =
            crate::error::GatewayError::from_upstream(http::StatusCode::TOO_MANY_REQUESTS, body);
        let v: serde_json::Value = serde_json::from_slice(&e.body("r")).unwrap();
        assert_eq!(v["error"]["type"], "RESOURCE_EXHAUSTED");
        assert_eq!(v["error"]["code"], "429");
        assert_eq!(v["error"]["message"], "Resource has been exhausted");
        assert_eq!(e.status(), http::StatusCode::TOO_MANY_REQUESTS);
    }
}
