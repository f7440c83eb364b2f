//! Ollama through its OpenAI-compatible API (`http://127.0.0.1:11434/v1`
//! by default). No key is needed; one set (a proxy in front) is sent as
//! `Authorization: Bearer`.

use http::header;

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
        let auth = (!cfg.api_key.is_empty()).then(|| {
            (
                header::AUTHORIZATION,
                format!("Bearer {}", cfg.api_key.expose()),
            )
        });
        Ok(Ollama {
            common,
            client: Upstream::new(cfg, clients, auth, &[])?,
        })
    }
}
