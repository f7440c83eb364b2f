//! Azure OpenAI: OpenAI's wire format at deployment paths,
//! `{endpoint}/openai/deployments/{deployment}/chat/completions?api-version=…`
//! (the target's model names the deployment), the key in `api-key`, or a
//! Microsoft Entra bearer token from `token_file`, read again when it is
//! rotated (workload identity).

use http::{header, HeaderName};

use super::client::{HttpClients, Paths, Upstream};
use super::Common;
use crate::config::ProviderConfig;

#[derive(Debug)]
pub struct Azure {
    pub common: Common,
    pub client: Upstream,
}

impl Azure {
    pub fn new(
        common: Common,
        cfg: &ProviderConfig,
        clients: &mut HttpClients,
    ) -> Result<Self, String> {
        let auth = if cfg.token_file.is_some() {
            (header::AUTHORIZATION, "Bearer ")
        } else {
            (HeaderName::from_static("api-key"), "")
        };
        let paths = Paths::Azure {
            api_version: cfg.api_version.clone(),
        };
        Ok(Azure {
            common,
            client: Upstream::with_paths(cfg, clients, auth, &[], paths)?,
        })
    }
}
