//! Ollama through its OpenAI-compatible API (`http://127.0.0.1:11434/v1`
//! by default). No key is needed; one set (a proxy in front) is sent as
//! `Authorization: Bearer`.

use super::client::{HttpClients, Upstream};
use super::Common;
use crate::config::ProviderConfig;

#[derive(Debug)]
pub struct Ollama {
    pub common: Common,
    pub client: Upstream,
}

impl Ollama {
    pub fn new(
        common: Common,
        cfg: &ProviderConfig,
        clients: &mut HttpClients,
    ) -> Result<Self, String> {
        Ok(Ollama {
            common,
            client: Upstream::bearer(cfg, clients)?,
        })
    }
}
