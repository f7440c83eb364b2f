//! What a decoded configuration must mean to be served. Every rule reports
//! its own problem; nothing stops at the first one.

use std::collections::HashSet;

use super::problem::Problem;

mod credentials;
use super::{Config, ProviderConfig, ProviderKind};
use credentials::check_provider_credentials;

/// The largest value a QUIC variable-length integer can carry (2^62 - 1).
const VARINT_MAX: u64 = (1 << 62) - 1;

/// Every check, section by section, in the order their problems are listed.
pub(super) fn validate(c: &Config) -> Vec<Problem> {
    let mut p = Problems::default();
    check_server(c, &mut p);
    check_tls(c, &mut p);
    check_quic(c, &mut p);
    check_http(c, &mut p);
    check_listeners(c, &mut p);
    check_log(c, &mut p);
    check_providers(c, &mut p);
    check_auth(c, &mut p);
    check_request_timeout(c, &mut p);
    check_cors(c, &mut p);
    check_abuse(c, &mut p);
    check_retry(c, &mut p);
    check_routes(c, &mut p);
    check_cluster(c, &mut p);
    check_spend(c, &mut p);
    for (path, message) in c.tracing.problems() {
        p.add(path, message);
    }
    p.0
}

/// `[[teams]]` (unique valid names, budgets greater than zero) and
/// `[[prices]]` (a model, finite prices of zero or more).
fn check_spend(c: &Config, p: &mut Problems) {
    let mut names = HashSet::new();
    for (i, team) in c.teams.iter().enumerate() {
        if !crate::spend::valid_name(&team.name) {
            p.add(
                format!("teams[{i}].name"),
                "must be letters, digits, '-', '_' or '.' (like key names)",
            );
        } else if !names.insert(team.name.as_str()) {
            p.add(
                format!("teams[{i}].name"),
                format!("duplicate team {:?}", team.name),
            );
        }
        if team.budget.is_some_and(|b| !b.is_finite() || b <= 0.0) {
            p.add(
                format!("teams[{i}].budget"),
                "must be a number of USD greater than zero",
            );
        }
        if team.budget_tokens == Some(0) {
            p.add(
                format!("teams[{i}].budget_tokens"),
                "must be greater than zero",
            );
        }
    }
    for (i, price) in c.prices.iter().enumerate() {
        if price.model.trim().is_empty() {
            p.add(format!("prices[{i}].model"), "is required");
        }
        for (field, v) in [
            ("input", Some(price.input)),
            ("output", Some(price.output)),
            ("cached_input", price.cached_input),
            ("cache_write", price.cache_write),
        ] {
            if v.is_some_and(|v| !v.is_finite() || v < 0.0) {
                p.add(
                    format!("prices[{i}].{field}"),
                    "must be a finite number of USD per million tokens, zero or more",
                );
            }
        }
    }
}

/// `[server]` limits: the drain and the request body.
fn check_server(c: &Config, p: &mut Problems) {
    if c.server.shutdown_timeout.is_zero() {
        p.add("server.shutdown_timeout", "must be greater than zero");
    }
    if c.server.max_request_body.get() == 0 {
        p.add("server.max_request_body", "must be greater than zero");
    }
}

/// `[tls]`: the certificate files exist (or the development certificate has hosts).
fn check_tls(c: &Config, p: &mut Problems) {
    if c.tls.generate_dev_cert && c.tls.dev_hosts.is_empty() {
        p.add(
            "tls.dev_hosts",
            "needs at least one host name for the development certificate",
        );
    }
    if !c.tls.generate_dev_cert {
        for (path, file) in [("tls.cert", &c.tls.cert), ("tls.key", &c.tls.key)] {
            if !file.is_file() {
                p.add(path, format!("file {} does not exist", file.display()));
            }
        }
    }
    for (i, pair) in c.tls.certificates.iter().enumerate() {
        for (k, file) in [("cert", &pair.cert), ("key", &pair.key)] {
            if !file.is_file() {
                p.add(
                    format!("tls.certificates[{i}].{k}"),
                    format!("file {} does not exist", file.display()),
                );
            }
        }
    }
}

/// `[quic]`: windows QUIC can carry, stream counts HTTP/3 needs, timeouts and caps.
fn check_quic(c: &Config, p: &mut Problems) {
    let q = &c.quic;
    for (path, v) in [
        ("quic.stream_receive_window", q.stream_receive_window.get()),
        ("quic.receive_window", q.receive_window.get()),
        ("quic.send_window", q.send_window.get()),
    ] {
        if v == 0 {
            p.add(path, "must be greater than zero");
        } else if v > VARINT_MAX {
            p.add(path, "is larger than QUIC allows (2^62 - 1)");
        }
    }
    if q.receive_window < q.stream_receive_window {
        p.add(
            "quic.receive_window",
            "must be at least quic.stream_receive_window (one stream could not use its window)",
        );
    }
    if q.max_concurrent_bidi_streams == 0 {
        p.add("quic.max_concurrent_bidi_streams", "must be at least 1");
    }
    if q.max_concurrent_uni_streams < 3 {
        p.add(
            "quic.max_concurrent_uni_streams",
            "must be at least 3 (HTTP/3 control and QPACK streams)",
        );
    }
    if q.idle_timeout.is_zero() {
        p.add("quic.idle_timeout", "must be greater than zero");
    }
    if let Some(k) = q.keep_alive_interval {
        if k.is_zero() || k >= q.idle_timeout {
            p.add(
                "quic.keep_alive_interval",
                "must be greater than zero and shorter than quic.idle_timeout",
            );
        }
    }
    if q.max_incoming == 0 || q.max_connections == 0 || q.max_connections_per_ip == 0 {
        p.add(
            "quic",
            "max_incoming, max_connections and max_connections_per_ip must be at least 1",
        );
    }
    if q.handshake_timeout.is_zero() {
        p.add("quic.handshake_timeout", "must be greater than zero");
    }
    if q.max_field_section_size.get() < 1024 {
        p.add("quic.max_field_section_size", "must be at least 1KB");
    }
}

/// `[http]`: header limits, timeouts and connection caps.
fn check_http(c: &Config, p: &mut Problems) {
    if c.http.max_header_bytes.get() < 1024 {
        p.add("http.max_header_bytes", "must be at least 1KB");
    }
    if c.http.header_read_timeout.is_zero() {
        p.add("http.header_read_timeout", "must be greater than zero");
    }
    if c.http.max_concurrent_streams == 0 {
        p.add("http.max_concurrent_streams", "must be at least 1");
    }
    for (path, d) in [
        ("http.idle_timeout", c.http.idle_timeout),
        ("http.write_timeout", c.http.write_timeout),
    ] {
        if d.is_zero() {
            p.add(path, "must be greater than zero");
        }
    }
    if c.http.max_connections == 0 || c.http.max_connections_per_ip == 0 {
        p.add(
            "http",
            "max_connections and max_connections_per_ip must be at least 1",
        );
    }
}

/// `server.listen` and `[admin]`: addresses, and the token off loopback.
fn check_listeners(c: &Config, p: &mut Problems) {
    if c.server.listen.is_empty() {
        p.add("server.listen", "needs at least one address");
    }
    if c.admin.enabled && c.admin.listen.is_empty() {
        p.add("admin.listen", "needs at least one address");
    }
    if c.admin.enabled
        && c.admin
            .listen
            .iter()
            // Port 0 binds a free port each: two of them never collide.
            .any(|a| a.port() != 0 && c.server.listen.iter().any(|s| s == a))
    {
        p.add("admin.listen", "must differ from server.listen");
    }
    if c.admin.enabled
        && c.admin.listen.iter().any(|a| !a.ip().is_loopback())
        && c.admin.token.is_empty()
    {
        p.add(
            "admin.token",
            "is required when admin.listen is not a loopback address (set admin.token = \"${H3GATE_ADMIN_TOKEN}\")",
        );
    }
    if !c.admin.token.is_empty() && c.admin.token.expose().len() < 16 {
        p.add("admin.token", "must be at least 16 characters");
    }
}

/// `[log] level` is a valid filter.
fn check_log(c: &Config, p: &mut Problems) {
    if let Err(e) = tracing_subscriber::EnvFilter::try_new(&c.log.level) {
        p.add("log.level", format!("not a valid level or filter: {e}"));
    }
}

/// `[[providers]]`: unique names, then each one.
fn check_providers(c: &Config, p: &mut Problems) {
    let mut names = HashSet::new();
    for (i, provider) in c.providers.iter().enumerate() {
        let at = |k: &str| format!("providers[{i}].{k}");
        if provider.name.is_empty() {
            p.add(at("name"), "is required");
        } else if !names.insert(provider.name.as_str()) {
            p.add(
                at("name"),
                format!("duplicate provider name {:?}", provider.name),
            );
        }
        check_provider_endpoint(provider, &at, p);
        check_provider_failures(provider, &at, p);
        check_provider_credentials(provider, &at, p);
    }
}

/// A provider's upstream: its URL, extra headers and default `max_tokens`.
fn check_provider_endpoint(
    provider: &ProviderConfig,
    at: &dyn Fn(&str) -> String,
    p: &mut Problems,
) {
    // Bedrock's default URL is made from its region (checked when built).
    let derived = provider.kind == ProviderKind::Bedrock && provider.base_url.is_empty();
    if provider.kind != ProviderKind::Mock && !derived {
        match reqwest::Url::parse(provider.base_url()) {
            Ok(u) if u.scheme() == "http" || u.scheme() == "https" => {}
            Ok(_) => p.add(at("base_url"), "must be an http:// or https:// URL"),
            Err(e) => p.add(at("base_url"), format!("not a valid URL: {e}")),
        }
    }
    for (name, value) in &provider.headers {
        if http::HeaderName::from_bytes(name.as_bytes()).is_err()
            || http::HeaderValue::from_str(value.expose()).is_err()
        {
            p.add(
                at(&format!("headers.{name}")),
                "is not a valid header name and value",
            );
        }
    }
    if provider.default_max_tokens == 0 {
        p.add(at("default_max_tokens"), "must be at least 1");
    }
}

/// A provider's failure handling: breaker, health check and timeouts.
fn check_provider_failures(
    provider: &ProviderConfig,
    at: &dyn Fn(&str) -> String,
    p: &mut Problems,
) {
    let b = &provider.breaker;
    if b.consecutive_failures == 0 {
        p.add(at("breaker.consecutive_failures"), "must be at least 1");
    }
    if !(b.error_ratio > 0.0 && b.error_ratio <= 1.0) {
        p.add(at("breaker.error_ratio"), "must be in (0, 1]");
    }
    if b.window.is_zero() || b.cooldown.is_zero() {
        p.add(
            at("breaker"),
            "window and cooldown must be greater than zero",
        );
    }
    if let Some(h) = &provider.health_check {
        if h.interval.is_zero() || h.timeout.is_zero() || h.timeout > h.interval {
            p.add(
                at("health_check"),
                "needs interval > 0 and 0 < timeout <= interval",
            );
        }
        if h.unhealthy_threshold == 0 || h.healthy_threshold == 0 {
            p.add(at("health_check"), "thresholds must be at least 1");
        }
        if !h.path.starts_with('/') {
            p.add(at("health_check.path"), "must start with /");
        }
    }
    let t = &provider.timeouts;
    for (k, d) in [
        ("timeouts.connect", t.connect),
        ("timeouts.first_byte", t.first_byte),
        ("timeouts.idle", t.idle),
        ("timeouts.total", t.total),
    ] {
        if d.is_zero() {
            p.add(at(k), "must be greater than zero");
        }
    }
}

/// `[auth]`: the keys file when keys are required (and, on one node, present).
fn check_auth(c: &Config, p: &mut Problems) {
    if c.auth.required && c.auth.keys_file.is_none() {
        p.add(
            "auth.keys_file",
            "is required while auth.required = true: create keys with `h3gate keys create`, or say auth.required = false to run without client keys",
        );
    }
    if let Some(f) = &c.auth.keys_file {
        // In a cluster the file is the replica's mirror of Redis: a new
        // replica has none yet.
        if !f.is_file() && !c.cluster.is_shared() {
            p.add(
                "auth.keys_file",
                format!(
                    "{} does not exist: create it with `h3gate keys create --name NAME`",
                    f.display()
                ),
            );
        }
    }
}

/// `server.request_timeout`.
fn check_request_timeout(c: &Config, p: &mut Problems) {
    if c.server.request_timeout.is_zero() {
        p.add("server.request_timeout", "must be greater than zero");
    }
}

/// `[cors]`: origins, and no `*` with credentials.
fn check_cors(c: &Config, p: &mut Problems) {
    let cors = &c.cors;
    if cors.allow_credentials && cors.allowed_origins.iter().any(|o| o == "*") {
        p.add(
            "cors.allowed_origins",
            "`*` cannot be combined with allow_credentials = true",
        );
    }
    for (i, o) in cors.allowed_origins.iter().enumerate() {
        if o != "*" && !(o.starts_with("https://") || o.starts_with("http://")) {
            p.add(
                format!("cors.allowed_origins[{i}]"),
                "must be `*` or an origin like https://app.example.com",
            );
        }
    }
}

/// `[abuse]` and `[rate_limit]`: thresholds that can trigger.
fn check_abuse(c: &Config, p: &mut Problems) {
    if c.abuse.enabled
        && (c.abuse.max_failures == 0 || c.abuse.window.is_zero() || c.abuse.deny_for.is_zero())
    {
        p.add(
            "abuse",
            "max_failures, window and deny_for must be greater than zero",
        );
    }
    if c.rate_limit.per_ip_rpm > 0 && c.rate_limit.per_ip_burst == 0 {
        p.add(
            "rate_limit.per_ip_burst",
            "must be at least 1 when per_ip_rpm is set",
        );
    }
}

/// `[cluster]`: a usable Redis URL, the shared secret, the QUIC-LB layout.
fn check_cluster(c: &Config, p: &mut Problems) {
    let k = &c.cluster;
    if k.is_shared() {
        let schemes = [
            "redis://",
            "rediss://",
            "unix://",
            "redis+unix://",
            "valkey://",
            "valkeys://",
        ];
        if !schemes.iter().any(|s| k.redis_url.starts_with(s)) {
            p.add(
                "cluster.redis_url",
                "must start with redis://, rediss:// or unix://",
            );
        }
        if k.secret.is_empty() {
            p.add(
                "cluster.secret",
                "is required with redis_url (e.g. secret = \"${H3GATE_CLUSTER_SECRET}\", from `openssl rand -hex 32`)",
            );
        }
        let tls = ["rediss://", "valkeys://"]
            .iter()
            .any(|s| k.redis_url.starts_with(s));
        if k.ca_file.is_some() && !tls {
            p.add("cluster.ca_file", "applies only to a rediss:// redis_url");
        }
        if k.timeout.is_zero() {
            p.add("cluster.timeout", "must be greater than zero");
        }
        if k.lease_ttl.get() < std::time::Duration::from_secs(1) {
            p.add("cluster.lease_ttl", "must be at least 1s");
        }
    }
    if let Err(e) = k.secret_bytes() {
        p.add("cluster.secret", e);
    }
    if !(1..=15).contains(&k.server_id_len) {
        p.add("cluster.server_id_len", "must be 1 to 15 bytes");
    } else if k.node_id.is_some_and(|n| n > k.max_node_id()) {
        p.add(
            "cluster.node_id",
            format!("does not fit in server_id_len = {} bytes", k.server_id_len),
        );
    }
    if k.config_rotation > 6 {
        p.add(
            "cluster.config_rotation",
            "must be 0 to 6 (7 marks unroutable IDs)",
        );
    }
}

/// `[retry]` and `[admission]`: attempts, backoff and the queue.
fn check_retry(c: &Config, p: &mut Problems) {
    let r = &c.retry;
    if r.max_attempts == 0 {
        p.add("retry.max_attempts", "must be at least 1");
    }
    if r.backoff_max < r.backoff_base {
        p.add("retry.backoff_max", "must be at least retry.backoff_base");
    }
    if r.deadline.is_zero() {
        p.add("retry.deadline", "must be greater than zero");
    }
    let a = &c.admission;
    if a.max_concurrent == 0 {
        p.add("admission.max_concurrent", "must be at least 1");
    }
    if a.max_wait.is_zero() {
        p.add("admission.max_wait", "must be greater than zero");
    }
}

/// `[[routes]]`: unique models, and targets naming known providers.
fn check_routes(c: &Config, p: &mut Problems) {
    if c.routes.is_empty() {
        p.add("routes", "at least one [[routes]] entry is required");
    }
    let mut models = HashSet::new();
    for (i, route) in c.routes.iter().enumerate() {
        if route.model.is_empty() {
            p.add(format!("routes[{i}].model"), "is required");
        } else if !models.insert(route.model.as_str()) {
            p.add(
                format!("routes[{i}].model"),
                format!("duplicate route for model {:?}", route.model),
            );
        }
        if route.targets.is_empty() {
            p.add(
                format!("routes[{i}].targets"),
                "needs at least one provider",
            );
        }
        for (j, target) in route.targets.iter().enumerate() {
            if !c.providers.iter().any(|pr| pr.name == target.provider) {
                p.add(
                    format!("routes[{i}].targets[{j}]"),
                    format!("no provider named {:?}", target.provider),
                );
            }
            if target.weight == 0 {
                p.add(
                    format!("routes[{i}].targets[{j}].weight"),
                    "must be at least 1",
                );
            }
            if target.model.as_deref() == Some("") {
                p.add(
                    format!("routes[{i}].targets[{j}].model"),
                    "must not be empty",
                );
            }
        }
        if route.stream_keepalive.is_some_and(|d| d.is_zero()) {
            p.add(
                format!("routes[{i}].stream_keepalive"),
                "must be greater than zero",
            );
        }
    }
}

#[derive(Default)]
pub(super) struct Problems(Vec<Problem>);

impl Problems {
    pub(super) fn add(&mut self, path: impl Into<String>, message: impl Into<String>) {
        self.0.push(Problem {
            path: path.into(),
            message: message.into(),
        });
    }
}
