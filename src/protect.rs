//! The edge-protection steps of the pipeline, each a plain function the
//! pipeline calls in order: network filter → host → authentication →
//! authorization → rate limits (the address's and the key's, in one call,
//! once every limit is known). Plus the security headers every response
//! carries.

pub mod budget;

use std::net::IpAddr;
use std::sync::Arc;

use http::header::{self, HeaderMap, HeaderValue};

use crate::auth::KeyRecord;
use crate::config::RateLimitConfig;
use crate::error::GatewayError;
use crate::exchange::Response;
pub use crate::rate_limit::TokenReservation;
use crate::rate_limit::{self, Bucket, Claim, Kind, Lease, LeaseId, Limit, Subject};
use crate::state::State;

/// Denied networks, addresses under an abuse deny, or outside the allow list.
pub fn network(state: &State, client: IpAddr) -> Result<(), GatewayError> {
    if !state.ip_filter.permits(client) || state.abuse.is_denied(client) {
        crate::metrics::NETWORK_DENIED.get().increment(1);
        return Err(GatewayError::Forbidden(
            "access from this address is not allowed".into(),
        ));
    }
    Ok(())
}

/// `Host` (HTTP/1.1) or `:authority` (HTTP/2, HTTP/3) must be a configured
/// host when any are configured; the port is ignored.
pub fn host(state: &State, uri: &http::Uri, headers: &HeaderMap) -> Result<(), GatewayError> {
    let hosts = &state.config.network.hosts;
    if hosts.is_empty() {
        return Ok(());
    }
    let authority = uri
        .authority()
        .map(|a| a.host().to_string())
        .or_else(|| {
            let h = headers.get(header::HOST)?.to_str().ok()?;
            Some(h.parse::<http::uri::Authority>().ok()?.host().to_string())
        })
        .unwrap_or_default();
    let name = authority.trim_start_matches('[').trim_end_matches(']');
    if hosts.iter().any(|h| h.eq_ignore_ascii_case(name)) {
        Ok(())
    } else {
        Err(GatewayError::Misdirected)
    }
}

/// The caller's key, when auth is on (401 without a valid one).
pub fn authenticate(
    state: &State,
    headers: &HeaderMap,
) -> Result<Option<Arc<KeyRecord>>, GatewayError> {
    match &state.keys {
        Some(keys) if state.config.auth.required => keys.authenticate(headers).map(Some),
        // Auth off: a key is still recognised (for its limits), never required.
        Some(keys) => Ok(keys.authenticate(headers).ok()),
        None => Ok(None),
    }
}

/// 403 unless the key has the endpoint's scope (and may use `model`).
pub fn authorize(
    key: Option<&KeyRecord>,
    scope: &str,
    model: Option<&str>,
) -> Result<(), GatewayError> {
    let Some(key) = key else { return Ok(()) };
    if !key.allows_scope(scope) {
        return Err(GatewayError::Forbidden(format!(
            "this key does not have the `{scope}` scope"
        )));
    }
    if let Some(m) = model {
        if !key.allows_model(m) {
            return Err(GatewayError::Forbidden(format!(
                "this key may not use the model `{m}`"
            )));
        }
    }
    Ok(())
}

/// What a request holds once its rate limits allowed it: the token
/// reservation (corrected when the request ends) and, on a cluster, the
/// key's concurrency lease (given back when the request ends).
#[derive(Debug, Default)]
pub struct Granted {
    pub tokens: Option<TokenReservation>,
    pub lease: Option<Lease>,
    /// A reservation per budget the request counts against.
    pub budgets: Vec<budget::Held>,
}

/// Every rate limit and budget that applies to the request, decided in one
/// call to the limiter once all are known: the address's requests per
/// minute, and with a key its requests and — when `tokens` holds the
/// estimate (proxied endpoints) — its tokens per minute, on a cluster its
/// concurrency (a lease: one slot of `max_concurrent`, across the
/// replicas), and — when `spend` holds the request's estimate — its own
/// and its team's budgets. 429 when any is refused (a budget's refusal
/// first: it lasts), and then none is taken. The key's decisions become its
/// `x-ratelimit-*` and `x-h3gate-budget-remaining*` headers (on success
/// too). A request dropped while the limiter answers keeps the requests,
/// tokens and budget the backend took (the estimate stays: never more than
/// the limit allows) and gives its lease back (so does a claim whose answer
/// timed out). A backend that cannot answer: `[cluster] on_redis_error`
/// (local limits, or 503).
pub async fn rate_limit(
    state: &State,
    client: IpAddr,
    key: Option<&KeyRecord>,
    tokens: Option<u64>,
    spend: Option<budget::Estimate>,
    headers: &mut HeaderMap,
) -> Result<Granted, GatewayError> {
    let limiter = &state.limiter;
    let mut claims = claims(
        &state.config.rate_limit,
        client,
        key,
        tokens,
        limiter.leases(),
    );
    let budgets = match (key, spend) {
        (Some(k), Some(e)) => budget::claims(state, k, e, crate::clock::now_secs()),
        _ => Vec::new(),
    };
    let rates = claims.len();
    let whose: Vec<budget::Whose> = budgets
        .into_iter()
        .map(|(c, w)| {
            claims.push(c);
            w
        })
        .collect();
    if claims.is_empty() {
        return Ok(Granted::default());
    }
    let decided = limiter
        .consume(&claims)
        .await
        .map_err(|_| GatewayError::RateLimiterUnavailable)?;
    let decisions = || claims.iter().zip(&decided.decisions);
    for (c, d) in decisions().take(rates) {
        if matches!(c.bucket.subject, Subject::Key(_)) {
            rate_limit::headers(headers, c.bucket.kind, d);
        }
    }
    let on_budgets: Vec<_> = claims[rates..]
        .iter()
        .zip(&whose)
        .zip(&decided.decisions[rates..])
        .map(|((c, w), d)| (c, w, d))
        .collect();
    let refused_any = decided.decisions.iter().any(|d| !d.allowed);
    if let Some(k) = key.filter(|_| !on_budgets.is_empty()) {
        budget::observe(state, k, &on_budgets, refused_any);
        budget::headers(headers, &on_budgets);
    }
    if let Some((c, w, d)) = on_budgets
        .iter()
        .filter(|(_, _, d)| !d.allowed)
        .max_by_key(|(_, _, d)| d.retry_after)
    {
        crate::metrics::RATE_LIMITED
            .with([c.bucket.scope()])
            .increment(1);
        return Err(budget::refusal(c, w, d));
    }
    // A rate's refusal says when to come back; a full lease set does not.
    let refused = decisions()
        .take(rates)
        .filter(|(_, d)| !d.allowed)
        .max_by_key(|(c, d)| (c.bucket.kind != Kind::Lease, d.retry_after));
    if let Some((c, d)) = refused {
        if c.bucket.kind == Kind::Lease {
            crate::metrics::ADMISSION_SHED
                .with(["client", "client_limit"])
                .increment(1);
            return Err(GatewayError::ClientLimit);
        }
        let scope = c.bucket.scope();
        crate::metrics::RATE_LIMITED.with([scope]).increment(1);
        return Err(GatewayError::RateLimited {
            scope,
            retry_after_secs: d.retry_after.as_secs_f64().ceil() as u64,
        });
    }
    let of = |kind| claims[..rates].iter().find(|c| c.bucket.kind == kind);
    Ok(Granted {
        tokens: of(Kind::Tokens).map(|c| limiter.reservation(c, &decided)),
        lease: of(Kind::Lease).and_then(|c| limiter.lease(c, &decided)),
        budgets: claims[rates..]
            .iter()
            .zip(&whose)
            .map(|(c, w)| budget::Held {
                unit: w.unit,
                reservation: limiter.reservation(c, &decided),
            })
            .collect(),
    })
}

/// The claims of one request (see [`rate_limit`]); `leases`: the key's
/// concurrency is claimed too.
fn claims(
    rl: &RateLimitConfig,
    client: IpAddr,
    key: Option<&KeyRecord>,
    tokens: Option<u64>,
    leases: bool,
) -> Vec<Claim> {
    let mut claims = Vec::with_capacity(4);
    let claim = |subject, kind, per_minute: u32, burst: u32, cost| Claim {
        bucket: Bucket { subject, kind },
        limit: Limit {
            per_minute: u64::from(per_minute),
            burst: u64::from(burst),
        },
        cost,
        lease: None,
        window: None,
    };
    if rl.per_ip_rpm > 0 {
        let address = Subject::Address(client);
        claims.push(claim(
            address,
            Kind::Requests,
            rl.per_ip_rpm,
            rl.per_ip_burst,
            1,
        ));
    }
    let Some(key) = key else { return claims };
    let rpm = key.rpm.unwrap_or(rl.key_rpm);
    let tpm = key.tpm.unwrap_or(rl.key_tpm);
    let tokens = tokens.filter(|_| tpm > 0);
    let slots = key.max_concurrent.filter(|n| leases && *n > 0);
    if rpm == 0 && tokens.is_none() && slots.is_none() {
        return claims;
    }
    let id: Arc<str> = key.sha256.as_str().into();
    if rpm > 0 {
        claims.push(claim(Subject::Key(id.clone()), Kind::Requests, rpm, rpm, 1));
    }
    if let Some(estimate) = tokens {
        let cost = estimate.min(u64::from(tpm));
        claims.push(claim(
            Subject::Key(id.clone()),
            Kind::Tokens,
            tpm,
            tpm,
            cost,
        ));
    }
    if let Some(n) = slots {
        claims.push(Claim {
            lease: Some(LeaseId::random()),
            window: None,
            ..claim(Subject::Key(id), Kind::Lease, 0, n, 1)
        });
    }
    claims
}

/// RFC 8470 for requests that arrived as 0-RTT early data (which an
/// attacker could replay): safe methods with small bodies are served at once
/// (returns true: still early) once the connection's ticket is confirmed as
/// used for the first time; anything else waits for the handshake — a
/// replayed flight never completes it, so it is never forwarded — or, with
/// `early_unsafe = "reject"`, gets 425 Too Early.
pub async fn early_data(
    state: &State,
    method: &http::Method,
    headers: &HeaderMap,
    handshake: &dyn crate::exchange::Handshake,
) -> Result<bool, GatewayError> {
    use crate::config::EarlyUnsafe;
    let q = &state.config.quic;
    let safe = matches!(
        *method,
        http::Method::GET | http::Method::HEAD | http::Method::OPTIONS
    );
    let small = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
        .is_none_or(|n| n <= q.max_early_data.get());
    if safe && small && handshake.early_confirmed().await {
        crate::metrics::quic::early_request("served");
        return Ok(true);
    }
    if !safe && q.early_unsafe == EarlyUnsafe::Reject {
        crate::metrics::quic::early_request("rejected");
        return Err(GatewayError::TooEarly);
    }
    crate::metrics::quic::early_request("held");
    match tokio::time::timeout(q.handshake_timeout.get(), handshake.completed()).await {
        Ok(()) => Ok(false),
        Err(_) => Err(GatewayError::TooEarly),
    }
}

/// On every response: no sniffing, no framing, no referrer, no caching of
/// API answers, HSTS, and a CSP that allows nothing.
pub fn security_headers(resp: &mut Response) {
    let h = resp.headers_mut();
    h.insert(
        header::STRICT_TRANSPORT_SECURITY,
        HeaderValue::from_static("max-age=31536000; includeSubDomains"),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static("default-src 'none'"),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.remove(header::SERVER);
}

#[cfg(test)]
mod tests {
    use std::net::IpAddr;

    use super::*;
    use crate::config::{Config, OnRedisError};
    use crate::rate_limit::{Correction, Decision, Limiter, LimiterError, Pending, RateLimits};

    /// Auth off, the mock provider, and `rate_limit` lines.
    fn state(rate_limit: &str) -> State {
        let text = format!(
            "[tls]\ncert = \"/nonexistent/cert.pem\"\nkey = \"/nonexistent/key.pem\"\n\
             generate_dev_cert = true\n[auth]\nrequired = false\n[rate_limit]\n{rate_limit}\n\
             [[providers]]\nname = \"m\"\nkind = \"mock\"\n[[routes]]\nmodel = \"*\"\ntargets = [\"m\"]\n"
        );
        let config = Config::from_toml(&text, std::path::Path::new("/nonexistent"), &|_| None)
            .unwrap_or_else(|e| panic!("{e}"));
        State::build(config).unwrap()
    }

    fn key(rpm: u32, tpm: u32) -> KeyRecord {
        KeyRecord {
            name: "k".into(),
            id: "h3g_abcd****wxyz".into(),
            sha256: "ab".repeat(32),
            scopes: Vec::new(),
            models: Vec::new(),
            created_at: 0,
            expires_at: None,
            revoked_at: None,
            rpm: Some(rpm),
            tpm: Some(tpm),
            max_concurrent: None,
            team: None,
            budget: None,
            budget_tokens: None,
            budget_period: None,
            revision: 1,
            updated_at: 0,
        }
    }

    const CLIENT: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(192, 0, 2, 1));

    /// A backend that is down.
    #[derive(Debug)]
    struct Down;

    impl Limiter for Down {
        fn consume<'a>(&'a self, _: &'a [Claim]) -> Pending<'a, Vec<Decision>> {
            Box::pin(async { Err(LimiterError("connection refused".into())) })
        }
        fn correct<'a>(&'a self, _: &'a [Correction]) -> Pending<'a, ()> {
            Box::pin(async { Err(LimiterError("connection refused".into())) })
        }
    }

    #[tokio::test(start_paused = true)]
    async fn one_decision_for_every_limit_and_a_refusal_takes_none() {
        let state = state("per_ip_rpm = 60\nper_ip_burst = 2");
        let k = key(2, 100);
        let mut h = HeaderMap::new();
        let first = rate_limit(&state, CLIENT, Some(&k), Some(90), None, &mut h).await;
        assert!(first.unwrap().tokens.is_some(), "the tokens are reserved");
        assert_eq!(h["x-ratelimit-remaining-requests"], "1");
        assert_eq!(h["x-ratelimit-remaining-tokens"], "10");
        let mut h = HeaderMap::new();
        let refused = rate_limit(&state, CLIENT, Some(&k), Some(20), None, &mut h).await;
        match refused {
            Err(GatewayError::RateLimited { scope, .. }) => assert_eq!(scope, "key_tokens"),
            other => panic!("{other:?}"),
        }
        assert_eq!(h["x-ratelimit-remaining-requests"], "1", "nothing taken");
        assert_eq!(h["x-ratelimit-remaining-tokens"], "10");
        // Had the refusal taken a request (address or key), this would be refused.
        let mut h = HeaderMap::new();
        let last = rate_limit(&state, CLIENT, Some(&k), Some(10), None, &mut h).await;
        assert!(last.is_ok());
        assert_eq!(h["x-ratelimit-remaining-requests"], "0");
        let over = rate_limit(&state, CLIENT, None, None, None, &mut HeaderMap::new()).await;
        match over {
            Err(GatewayError::RateLimited { scope, .. }) => assert_eq!(scope, "ip"),
            other => panic!("{other:?}"),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_failing_backend_falls_back_to_local_limits_or_denies() {
        let mut local = state("");
        local.limiter = Arc::new(RateLimits::shared(
            Arc::new(Down),
            OnRedisError::Local,
            None,
        ));
        let k = key(1, 100);
        let mut h = HeaderMap::new();
        let first = rate_limit(&local, CLIENT, Some(&k), Some(5), None, &mut h).await;
        assert!(first.unwrap().tokens.is_some(), "reserved locally");
        assert_eq!(h["x-ratelimit-remaining-requests"], "0", "local decisions");
        let second = rate_limit(
            &local,
            CLIENT,
            Some(&k),
            Some(5),
            None,
            &mut HeaderMap::new(),
        )
        .await;
        match second {
            Err(GatewayError::RateLimited { scope, .. }) => assert_eq!(scope, "key_requests"),
            other => panic!("local limits still apply: {other:?}"),
        }

        let mut closed = state("");
        closed.limiter = Arc::new(RateLimits::shared(Arc::new(Down), OnRedisError::Deny, None));
        let denied = rate_limit(&closed, CLIENT, Some(&k), None, None, &mut HeaderMap::new()).await;
        let e = denied.unwrap_err();
        assert_eq!(e.status(), http::StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(e.code(), Some("rate_limiter_unavailable"));
        let resp = e.into_response_for(crate::api::Api::Anthropic, "req-1");
        assert_eq!(resp.headers()[header::RETRY_AFTER], "1");

        // No limit applies: the backend is not asked.
        let mut idle = state("per_ip_rpm = 0");
        idle.limiter = Arc::new(RateLimits::new(Arc::new(Down)));
        let none = rate_limit(&idle, CLIENT, None, Some(5), None, &mut HeaderMap::new()).await;
        assert!(none.unwrap().tokens.is_none());
    }

    /// A shared backend whose lease sets are full (and rates open).
    #[derive(Debug)]
    struct NoSlots;

    impl Limiter for NoSlots {
        fn consume<'a>(&'a self, claims: &'a [Claim]) -> Pending<'a, Vec<Decision>> {
            let d = claims
                .iter()
                .map(|c| Decision {
                    allowed: c.bucket.kind != Kind::Lease,
                    limit: c.limit.burst,
                    remaining: 0,
                    reset: std::time::Duration::ZERO,
                    retry_after: std::time::Duration::from_secs(1),
                })
                .collect();
            Box::pin(async move { Ok(d) })
        }
        fn correct<'a>(&'a self, _: &'a [Correction]) -> Pending<'a, ()> {
            Box::pin(async { Ok(()) })
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_full_lease_set_is_the_client_limit_and_only_keys_with_a_cap_claim_one() {
        let mut s = state("per_ip_rpm = 0");
        let ttl = Some(std::time::Duration::from_secs(30));
        s.limiter = Arc::new(RateLimits::shared(
            Arc::new(NoSlots),
            OnRedisError::Deny,
            ttl,
        ));
        let capped = KeyRecord {
            max_concurrent: Some(2),
            ..key(10, 100)
        };
        let refused = rate_limit(
            &s,
            CLIENT,
            Some(&capped),
            Some(5),
            None,
            &mut HeaderMap::new(),
        )
        .await;
        let e = refused.unwrap_err();
        assert_eq!(e.status(), http::StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(e.code(), Some("too_many_concurrent_requests"));
        let uncapped = key(10, 100);
        let mut h = HeaderMap::new();
        let granted = rate_limit(&s, CLIENT, Some(&uncapped), Some(5), None, &mut h).await;
        let granted = granted.unwrap();
        assert!(granted.lease.is_none() && granted.tokens.is_some());
        assert_eq!(s.limiter.leases_held(), 0);
    }

    #[test]
    fn on_backend_error_is_gone_and_on_redis_error_takes_local_or_deny() {
        let base = "[tls]\ngenerate_dev_cert = true\n[auth]\nrequired = false\n\
            [[providers]]\nname = \"m\"\nkind = \"mock\"\n[[routes]]\nmodel = \"*\"\ntargets = [\"m\"]\n";
        let load = |extra: &str| {
            Config::from_toml(
                &format!("{base}{extra}"),
                std::path::Path::new("/nonexistent"),
                &|_| None,
            )
        };
        let e = load("[rate_limit]\non_backend_error = \"deny\"\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("on_backend_error"), "{e}");
        let e = load("[cluster]\non_redis_error = \"allow\"\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("on_redis_error"), "{e}");
        let c = load("[cluster]\non_redis_error = \"deny\"\n").unwrap();
        assert_eq!(c.cluster.on_redis_error, OnRedisError::Deny);
    }
}
