//! `State::build(config)`: everything the running gateway needs to handle a
//! request, built in one explicit step and shared read-mostly. A new
//! configuration builds a new `State`; in-flight requests keep the old one.

use std::collections::HashMap;
use std::sync::Arc;

use tokio_util::sync::CancellationToken;

use crate::abuse::Abuse;
use crate::admission::{ClientCaps, Gate};
use crate::audit::Audit;
use crate::auth::{Keys, Offline};
use crate::cluster::Cluster;
use crate::config::Config;
use crate::ip_filter::IpFilter;
use crate::metrics::Metrics;
use crate::provider::{HttpClients, Provider};
use crate::rate_limit::{RateLimits, RedisLimiter};
use crate::routing::Router;
use crate::shutdown::Shutdown;

#[derive(Debug)]
pub struct State {
    pub config: Arc<Config>,
    pub router: Router,
    pub providers: HashMap<String, Arc<Provider>>,
    /// Client headers some provider takes (`forward_headers` and each
    /// kind's own): the only client headers a call carries upstream.
    pub forwardable: Vec<http::HeaderName>,
    pub metrics: Arc<Metrics>,
    /// Gateway-wide admission: bounded concurrency and wait queue.
    pub admission: Arc<Gate>,
    /// Per-client share of admission.
    pub clients: ClientCaps,
    /// Client keys (when a keys file is configured).
    pub keys: Option<Arc<Keys>>,
    /// Rate limits (in memory, or in the cluster's Redis) and their
    /// reconciler; kept across reloads while `[cluster]` is unchanged.
    pub limiter: Arc<RateLimits>,
    /// Public listener address filter.
    pub ip_filter: IpFilter,
    /// Admin listener address filter.
    pub admin_filter: IpFilter,
    /// Failure counting and temporary denies; kept across reloads.
    pub abuse: Arc<Abuse>,
    /// Prices (bundled, under `[[prices]]`).
    pub prices: Arc<crate::spend::PriceTable>,
    /// Teams' budgets by name (`[[teams]]`).
    pub teams: HashMap<String, crate::spend::Budget>,
    /// Spend history and soft-limit alerts; kept across reloads.
    pub spend: Arc<crate::spend::Spend>,
    /// Where spend is kept beyond the process (the spend file, or Redis);
    /// kept across reloads.
    pub usage: Arc<crate::usage::Keeper>,
    /// The shared Redis (`[cluster] redis_url`); `None` on a single node.
    /// Kept across reloads while `[cluster]` is unchanged.
    pub cluster: Option<Arc<Cluster>>,
    audit: std::sync::OnceLock<Audit>,
    /// `[tracing]`, when on.
    pub tracer: Option<Arc<crate::trace::Tracer>>,
    /// Stops this state's background tasks (health checks) when it is dropped.
    tasks: CancellationToken,
}

#[derive(Debug, thiserror::Error)]
#[error("cannot build the gateway state: {0}")]
pub struct BuildError(String);

impl State {
    pub fn build(mut config: Config) -> Result<State, BuildError> {
        leave_out_keyless_optional_providers(&mut config);
        let mut clients = HttpClients::default();
        let mut providers = HashMap::new();
        for pc in &config.providers {
            let provider = Provider::build(pc, &mut clients).map_err(BuildError)?;
            providers.insert(pc.name.clone(), Arc::new(provider));
        }
        let router = Router::new(&config, &providers);
        let mut forwardable: Vec<http::HeaderName> = Vec::new();
        for h in config.providers.iter().flat_map(|p| p.forwarded_headers()) {
            match http::HeaderName::from_bytes(h.as_bytes()) {
                Ok(name) if !forwardable.contains(&name) => forwardable.push(name),
                _ => {}
            }
        }
        let a = &config.admission;
        let admission = Arc::new(Gate::new(
            "gateway",
            a.max_concurrent as usize,
            a.max_queue as usize,
            a.max_wait.get(),
        ));
        let clients = ClientCaps::new(a.max_per_client as usize);
        let cluster = Cluster::connect(&config.cluster).map_err(BuildError)?;
        let limiter = match &cluster {
            Some(c) => RateLimits::shared(
                Arc::new(RedisLimiter::new(c.clone())),
                c.policy(),
                Some(c.config().lease_ttl.get()),
            ),
            None => RateLimits::in_memory(Arc::default()),
        };
        let keys = match (&config.auth.keys_file, &cluster) {
            (Some(path), Some(c)) => {
                Some(Keys::shared(Some(path), c.clone(), Offline::ApplyLocally))
            }
            (Some(path), None) => Some(Keys::load(path)),
            (None, _) => None,
        }
        .transpose()
        .map_err(|e| BuildError(e.to_string()))?
        .map(Arc::new);
        let n = &config.network;
        let teams = config
            .teams
            .iter()
            .map(|t| {
                let budget = crate::spend::Budget {
                    usd: t.budget,
                    tokens: t.budget_tokens,
                    period: t.budget_period,
                };
                (t.name.clone(), budget)
            })
            .collect();
        Ok(State {
            prices: Arc::new(crate::spend::PriceTable::new(&config.prices)),
            teams,
            spend: Arc::default(),
            usage: Arc::default(),
            cluster,
            keys,
            limiter: Arc::new(limiter),
            ip_filter: IpFilter::new(&n.allow, &n.deny),
            admin_filter: IpFilter::new(&n.admin_allow, &n.admin_deny),
            abuse: Arc::new(Abuse::new(&config.abuse)),
            audit: std::sync::OnceLock::new(),
            tracer: crate::trace::Tracer::new(&config.tracing),
            config: Arc::new(config),
            router,
            providers,
            forwardable,
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
        if let Some(keys) = &self.keys {
            shutdown.spawn(keys.clone().watch(self.tasks.clone(), shutdown.clone()));
        }
        let _ = self
            .audit
            .set(Audit::start(self.config.audit.file.as_deref(), shutdown));
        // Kept across reloads: a no-op when the inherited writer runs.
        Abuse::start_writer(&self.abuse, shutdown);
        self.abuse
            .share(self.cluster.clone(), self.tasks.clone(), shutdown);
        self.limiter.start(shutdown);
        if let Some(t) = &self.tracer {
            t.start(shutdown);
        }
        if let Some(c) = &self.cluster {
            c.start(shutdown);
        }
        // Kept across reloads: the running task takes this state's parts.
        self.usage.start(
            &self.spend,
            &self.config.spend,
            self.limiter.memory().cloned(),
            self.cluster.clone(),
            shutdown,
        );
    }

    /// Reads the spend file back (one node with `[spend] file`): the usage
    /// history and the budget counters. Once, at start, before serving
    /// (never on a reload: the running spend is kept). Returns how many
    /// history buckets it read.
    pub fn restore_spend(&self) -> Result<usize, crate::usage::file::FileError> {
        let Some(path) = self
            .config
            .spend
            .file
            .as_deref()
            .filter(|_| self.cluster.is_none())
        else {
            return Ok(0);
        };
        let n = crate::usage::file::load_into(
            path,
            &self.spend.history,
            self.limiter.memory().map(|m| &**m),
            self.config.spend.retention.get().as_secs(),
            crate::clock::now_secs(),
        )?;
        tracing::info!(file = %path.display(), buckets = n, "spend restored from the spend file");
        Ok(n)
    }

    /// The audit log (a no-op until [`State::start_tasks`], or when off).
    pub fn audit(&self) -> &Audit {
        static OFF: std::sync::OnceLock<Audit> = std::sync::OnceLock::new();
        self.audit
            .get()
            .unwrap_or_else(|| OFF.get_or_init(Audit::default))
    }

    /// Keeps the running limiter buckets (unless `[cluster]` changed: then
    /// the new cluster's limiter), abuse state (counters and denies),
    /// admission gate and per-client counts across a reload; each takes its
    /// new settings. (A fresh gate would strand the requests
    /// queued on the old one, and let old and new limits add up.)
    pub fn inherit(&mut self, old: &State) {
        if old.config.cluster == self.config.cluster {
            self.cluster = old.cluster.clone();
            self.limiter = old.limiter.clone();
            // The shared key set, with its pending changes, stays too.
            if self.cluster.is_some() && old.config.auth.keys_file == self.config.auth.keys_file {
                self.keys = old.keys.clone();
            }
        } else if let (Some(new), Some(old)) = (self.limiter.memory(), old.limiter.memory()) {
            // A new in-memory limiter (another `[cluster]` without Redis):
            // the budgets' spend goes on.
            new.restore_budgets(&old.budget_counters());
        }
        self.spend = old.spend.clone();
        self.usage = old.usage.clone();
        let a = &self.config.admission;
        old.admission.resize(
            a.max_concurrent as usize,
            a.max_queue as usize,
            a.max_wait.get(),
        );
        self.admission = old.admission.clone();
        self.clients.inherit(&old.clients);
        let fresh = std::mem::replace(&mut self.abuse, old.abuse.clone());
        self.abuse.reconfigure(&self.config.abuse, &fresh);
    }
}

/// A provider without its credential: an `api_key`, or for Bedrock AWS
/// credentials (its config keys, or the environment's now).
fn keyless(p: &crate::config::ProviderConfig) -> bool {
    match p.kind {
        crate::config::ProviderKind::Bedrock => !crate::provider::bedrock::has_credentials(p),
        _ => !p.has_credentials(),
    }
}

/// Removes `optional` providers without an `api_key`, their route targets,
/// and routes left without a target (the effective configuration, as
/// `h3gate check` prints it, no longer has them).
fn leave_out_keyless_optional_providers(config: &mut Config) {
    let (out, kept): (Vec<_>, Vec<_>) = std::mem::take(&mut config.providers)
        .into_iter()
        .partition(|p| p.optional && keyless(p));
    config.providers = kept;
    if out.is_empty() {
        return;
    }
    for p in &out {
        tracing::warn!(provider = %p.name, "optional provider left out: its api_key is empty");
    }
    let gone = |name: &str| out.iter().any(|p| p.name == name);
    for route in &mut config.routes {
        route.targets.retain(|t| !gone(&t.provider));
    }
    config.routes.retain(|r| {
        let keep = !r.targets.is_empty();
        if !keep {
            tracing::warn!(route = %r.model, "route left out: none of its providers is configured");
        }
        keep
    });
}

impl Drop for State {
    fn drop(&mut self) {
        self.tasks.cancel();
    }
}

/// The current runtime state. Each request takes a snapshot when it starts
/// and keeps it to the end; a reload swaps in a new one for later requests.
pub type SharedState = Arc<arc_swap::ArcSwap<State>>;
