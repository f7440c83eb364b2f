//! Anthropic's Messages API: `x-api-key` and `anthropic-version` headers.
//! `/v1/messages` and `/v1/messages/count_tokens` requests pass through
//! untouched; OpenAI chat completions are translated (see `translate`).

use http::HeaderName;

use super::client::{HttpClients, Upstream};
use super::Common;
use crate::config::ProviderConfig;

#[derive(Debug)]
pub struct Anthropic {
    pub common: Common,
    pub client: Upstream,
}

impl Anthropic {
    pub fn new(
        common: Common,
        cfg: &ProviderConfig,
        clients: &mut HttpClients,
    ) -> Result<Self, String> {
        Ok(Anthropic {
            common,
            client: Upstream::new(
                cfg,
                clients,
                (HeaderName::from_static("x-api-key"), ""),
                &[("anthropic-version", cfg.anthropic_version.as_str())],
            )?,
        })
    }
}
