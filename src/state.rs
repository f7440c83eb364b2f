//! `State::build(config)`: everything the running gateway needs to handle a
//! request, built in one explicit step and shared read-mostly. A new
//! configuration builds a new `State`; in-flight requests keep the old one.

use std::collections::HashMap;
use std::sync::Arc;

use tokio_util::sync::CancellationToken;

use crate::admission::{ClientCaps, Gate};
use crate::config::Config;
use crate::metrics::Metrics;
use crate::provider::{HttpClients, Provider};
use crate::routing::Router;
use crate::shutdown::Shutdown;

#[derive(Debug)]
pub struct State {
    pub config: Arc<Config>,
    pub router: Router,
    pub providers: HashMap<String, Arc<Provider>>,
    pub metrics: Arc<Metrics>,
    /// Gateway-wide admission: bounded concurrency and wait queue.
    pub admission: Gate,
    /// Per-client share of admission.
    pub clients: ClientCaps,
    /// Stops this state's background tasks (health checks) when it is dropped.
    tasks: CancellationToken,
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
        let router = Router::new(&config, &providers);
        let a = &config.admission;
        let admission = Gate::new(
            "gateway",
            a.max_concurrent as usize,
            a.max_queue as usize,
            a.max_wait.get(),
        );
        let clients = ClientCaps::new(a.max_per_client as usize);
        Ok(State {
            config: Arc::new(config),
            router,
            providers,
            metrics: Arc::new(Metrics::default()),
            admission,
            clients,
            tasks: CancellationToken::new(),
        })
    }

    /// Starts this state's background work (active health checks); it stops
    /// when the state is replaced and dropped, or at shutdown.
    pub fn start_tasks(&self, shutdown: &Shutdown) {
        crate::routing::health::spawn_all(self.providers.values(), &self.tasks, shutdown);
    }
}

impl Drop for State {
    fn drop(&mut self) {
        self.tasks.cancel();
    }
}
