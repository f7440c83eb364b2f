//! `State::build(config)`: everything the running gateway needs to handle a
//! request, built in one explicit step and shared read-mostly. A new
//! configuration builds a new `State`; in-flight requests keep the old one.

use std::collections::HashMap;
use std::sync::Arc;

use crate::config::Config;
use crate::metrics::Metrics;
use crate::provider::{HttpClients, Provider};
use crate::routing::Router;

#[derive(Debug)]
pub struct State {
    pub config: Arc<Config>,
    pub router: Router,
    pub providers: HashMap<String, Arc<Provider>>,
    pub metrics: Arc<Metrics>,
}

#[derive(Debug, thiserror::Error)]
#[error("cannot build the gateway state: {0}")]
pub struct BuildError(String);

impl State {
    pub fn build(config: Config) -> Result<State, BuildError> {
        let mut clients = HttpClients::default();
        let mut providers = HashMap::new();
        for pc in &config.providers {
            let provider = Provider::build(pc, &mut clients).map_err(BuildError)?;
            providers.insert(pc.name.clone(), Arc::new(provider));
        }
        let router = Router::new(&config.routes, &providers);
        Ok(State {
            config: Arc::new(config),
            router,
            providers,
            metrics: Arc::new(Metrics::default()),
        })
    }
}
