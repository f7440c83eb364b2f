//! A provider's credentials and forwarded headers, checked.

use super::Problems;
use crate::config::{ProviderConfig, ProviderKind};

/// Client headers that never go upstream, whatever `forward_headers` says:
/// the client's credentials, and what each hop sets for itself.
const NEVER_FORWARDED: [&str; 12] = [
    "authorization",
    "x-api-key",
    "api-key",
    "x-goog-api-key",
    "cookie",
    "host",
    "content-length",
    "content-type",
    "transfer-encoding",
    "connection",
    "te",
    "upgrade",
];

/// Keys, token file, Azure's `api_version`, `forward_headers`.
pub(super) fn check_provider_credentials(
    provider: &ProviderConfig,
    at: &dyn Fn(&str) -> String,
    p: &mut Problems,
) {
    if provider.token_file.is_some() {
        if !matches!(
            provider.kind,
            ProviderKind::Openai | ProviderKind::Azure | ProviderKind::Ollama
        ) {
            p.add(
                at("token_file"),
                "is for openai, azure and ollama providers (a bearer token)",
            );
        }
        if provider.keys().any(|k| !k.is_empty()) {
            p.add(
                at("token_file"),
                "is instead of api_key / api_keys: set one of them",
            );
        }
    }
    if provider.kind == ProviderKind::Azure {
        if provider.base_url.is_empty() {
            p.add(
                at("base_url"),
                "is required for kind = \"azure\": the resource's endpoint, e.g. https://NAME.openai.azure.com",
            );
        }
        if provider.api_version.is_empty() {
            p.add(
                at("api_version"),
                "is required for kind = \"azure\", e.g. \"2024-10-21\"",
            );
        }
    } else if !provider.api_version.is_empty() {
        p.add(at("api_version"), "is for kind = \"azure\" only");
    }
    for (i, h) in provider.forward_headers.iter().enumerate() {
        let lower = h.to_ascii_lowercase();
        let at = at(&format!("forward_headers[{i}]"));
        if http::HeaderName::from_bytes(h.as_bytes()).is_err() {
            p.add(at, "is not a valid header name");
        } else if NEVER_FORWARDED.contains(&lower.as_str()) || lower.starts_with("proxy-") {
            p.add(
                at,
                format!("{h:?} is never forwarded (credentials and hop headers stay behind)"),
            );
        }
    }
}
