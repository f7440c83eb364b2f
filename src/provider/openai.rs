//! OpenAI and any OpenAI-compatible server (vLLM, Groq, Together, LM
//! Studio …): `Authorization: Bearer`, bodies forwarded untouched unless
//! translated from Anthropic's API.

use super::client::{HttpClients, Upstream};
use super::Common;
use crate::config::ProviderConfig;

#[derive(Debug)]
pub struct OpenAi {
    pub common: Common,
    pub client: Upstream,
}

impl OpenAi {
    pub fn new(
        common: Common,
        cfg: &ProviderConfig,
        clients: &mut HttpClients,
    ) -> Result<Self, String> {
        Ok(OpenAi {
            common,
            client: Upstream::bearer(cfg, clients)?,
        })
    }
}
