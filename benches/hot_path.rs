//! Micro-benchmarks of the per-request hot path, so a regression shows
//! before it ships: `cargo bench --bench hot_path`.
//!
//! Each figure is a cost per request (or per chunk) to set against the
//! ~50 µs a whole proxied request takes on one core.

use std::hint::black_box;
use std::net::IpAddr;
use std::sync::Arc;

use criterion::{criterion_group, criterion_main, Criterion};
use futures_util::FutureExt;
use h3gate::config::Config;
use h3gate::exchange::Protocol;
use h3gate::rate_limit::{Bucket, Claim, Kind, Limit, Limiter, MemoryLimiter, RateLimits, Subject};

fn state() -> (h3gate::state::State, String, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let keys = dir.path().join("keys.json");
    let (key, _) = h3gate::auth::create(
        &keys,
        h3gate::auth::NewKey {
            name: "bench".into(),
            ..Default::default()
        },
    )
    .unwrap();
    let text = format!(
        r#"
[tls]
generate_dev_cert = true
[auth]
keys_file = "{}"
[[providers]]
name = "up"
kind = "openai"
base_url = "http://127.0.0.1:9/v1"
models = ["gpt-4o-mini"]
[[routes]]
model = "gpt-*"
targets = ["up"]
[[routes]]
model = "*"
targets = ["up"]
"#,
        keys.display()
    );
    let config = Config::from_toml(&text, dir.path(), &|_| None).unwrap();
    (h3gate::state::State::build(config).unwrap(), key, dir)
}

fn protection(c: &mut Criterion) {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let (state, key, _dir) = state();
    let mut headers = http::HeaderMap::new();
    headers.insert("authorization", format!("Bearer {key}").parse().unwrap());
    c.bench_function("auth: authenticate a bearer key", |b| {
        b.iter(|| {
            black_box(
                state
                    .keys
                    .as_ref()
                    .unwrap()
                    .authenticate(black_box(&headers))
                    .is_ok(),
            )
        })
    });
    let memory = Arc::new(MemoryLimiter::default());
    let limiter = RateLimits::in_memory(memory.clone());
    let limit = Limit {
        per_minute: 1_000_000_000,
        burst: 1_000_000,
    };
    let claim = |subject, kind| Claim {
        bucket: Bucket { subject, kind },
        limit,
        cost: 1,
        lease: None,
        window: None,
    };
    let client: IpAddr = "192.0.2.1".parse().unwrap();
    let address = [claim(Subject::Address(client), Kind::Requests)];
    c.bench_function("rate limit: GCRA take (per address)", |b| {
        b.iter(|| black_box(decide(&limiter, black_box(&address))))
    });
    let mut n = 0u32;
    c.bench_function("rate limit: GCRA take (many addresses)", |b| {
        b.iter(|| {
            n = n.wrapping_add(1);
            let ip = IpAddr::from([10, 0, (n >> 8) as u8, n as u8]);
            black_box(decide(
                &limiter,
                &[claim(Subject::Address(ip), Kind::Requests)],
            ))
        })
    });
    // What the pipeline asks of the limiter for one proxied request, claims
    // built as protect::rate_limit builds them: the address's requests, the
    // key's requests, the key's tokens. (Cost 1 each: at this rate a larger
    // cost would run the bucket dry.)
    let sha = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08".to_string();
    c.bench_function("rate limit: one request's limits (batch of 3)", |b| {
        b.iter(|| {
            let id: Arc<str> = sha.as_str().into();
            let claims = vec![
                claim(Subject::Address(client), Kind::Requests),
                claim(Subject::Key(id.clone()), Kind::Requests),
                claim(Subject::Key(id), Kind::Tokens),
            ];
            black_box(decide(&limiter, &claims))
        })
    });
    // The same through the `dyn Limiter` seam a shared backend plugs into
    // (a boxed future per call).
    let seam: Arc<dyn Limiter> = memory;
    let id: Arc<str> = sha.as_str().into();
    let claims = [
        claim(Subject::Address(client), Kind::Requests),
        claim(Subject::Key(id.clone()), Kind::Requests),
        claim(Subject::Key(id), Kind::Tokens),
    ];
    c.bench_function("rate limit: batch of 3 through dyn Limiter", |b| {
        b.iter(|| {
            let d = seam.consume(black_box(&claims)).now_or_never();
            black_box(d.and_then(Result::ok).is_some_and(|d| d[2].allowed))
        })
    });
}

/// Budgets on the hot path, in memory: what a request with a key in a team
/// adds to its rate limits (the key's USD and token budgets and the team's
/// USD budget, in the same batch), and the end of it (the reservations
/// reconciled, the cost computed, the usage bucket recorded).
fn budgets(c: &mut Criterion) {
    use h3gate::rate_limit::Unit;
    use h3gate::spend::{Period, PriceTable, Spend, Spent, Usage};
    let limiter = RateLimits::in_memory(Arc::default());
    let rate = Limit {
        per_minute: 1_000_000_000,
        burst: 1_000_000,
    };
    let budget = Limit {
        per_minute: 0,
        burst: u64::MAX / 4,
    };
    let client: IpAddr = "192.0.2.1".parse().unwrap();
    let sha: Arc<str> = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08".into();
    let team: Arc<str> = "ml-platform".into();
    let now = h3gate::clock::now_secs();
    let claim = |subject: Subject, kind, limit, cost, window| Claim {
        bucket: Bucket { subject, kind },
        limit,
        cost,
        lease: None,
        window,
    };
    let batch = |with_budgets: bool| {
        let mut claims = vec![
            claim(Subject::Address(client), Kind::Requests, rate, 1, None),
            claim(Subject::Key(sha.clone()), Kind::Requests, rate, 1, None),
            claim(Subject::Key(sha.clone()), Kind::Tokens, rate, 1, None),
        ];
        if with_budgets {
            let day = Period::Day;
            let month = Period::Month;
            claims.extend([
                claim(
                    Subject::Key(sha.clone()),
                    Kind::Budget(Unit::Usd, day),
                    budget,
                    35_000_000,
                    Some(day.window(now)),
                ),
                claim(
                    Subject::Key(sha.clone()),
                    Kind::Budget(Unit::Tokens, day),
                    budget,
                    1_000,
                    Some(day.window(now)),
                ),
                claim(
                    Subject::Team(team.clone()),
                    Kind::Budget(Unit::Usd, month),
                    budget,
                    35_000_000,
                    Some(month.window(now)),
                ),
            ]);
        }
        claims
    };
    // The decision, and the reservations given back as the request ends
    // (corrected in memory at once).
    let mut run = |name: &str, with_budgets: bool| {
        c.bench_function(name, |b| {
            b.iter(|| {
                let claims = batch(with_budgets);
                let decided = limiter.consume(&claims).now_or_never().and_then(Result::ok);
                let decided = decided.expect("in memory: at once");
                for c in &claims[3..] {
                    limiter.reservation(c, &decided).reconcile(Some(17_000_000));
                }
                black_box(decided.decisions.iter().all(|d| d.allowed))
            })
        });
    };
    run(
        "budget: one request's rate limits alone (batch of 3)",
        false,
    );
    run(
        "budget: rate limits + 3 budgets, reserved and reconciled",
        true,
    );
    let prices = PriceTable::new(&[]);
    let spend = Spend::default();
    let usage = Usage {
        input: 1200,
        output: 300,
        cached_input: 1024,
        cache_write: 0,
    };
    let (key, model, provider): (Arc<str>, Arc<str>, Arc<str>) =
        ("svc-checkout".into(), "gpt-4o-mini".into(), "openai".into());
    c.bench_function("spend: cost and the usage bucket at a request's end", |b| {
        b.iter(|| {
            let cost = prices
                .lookup(black_box("gpt-4o-mini"))
                .map_or(0, |p| p.cost(&usage));
            spend.history.record(&Spent {
                at: now,
                key: Some(key.clone()),
                team: Some(team.clone()),
                model: model.clone(),
                provider: provider.clone(),
                usage,
                cost,
            });
            black_box(cost)
        })
    });
}

/// One batch as the pipeline decides it (the in-memory backend answers at
/// once).
fn decide(limiter: &RateLimits, claims: &[Claim]) -> bool {
    limiter
        .consume(claims)
        .now_or_never()
        .and_then(Result::ok)
        .is_some_and(|d| d.decisions.iter().all(|d| d.allowed))
}

fn metrics(c: &mut Criterion) {
    let _handle = h3gate::metrics::install();
    let (state, _key, _dir) = state();
    let route = state.router.resolve("gpt-4o-mini").unwrap().clone();
    let provider = route.targets[0].provider.clone();
    c.bench_function("metrics: all series of one request", |b| {
        b.iter(|| {
            state.metrics.request_started(Protocol::Http2);
            state
                .metrics
                .overhead(Protocol::Http2, std::time::Duration::from_micros(40));
            provider.metrics().first_byte.record(0.001);
            provider.metrics().first_token.record(0.001);
            provider.metrics().tokens("gpt-4o-mini", 12, 10);
            route
                .metrics
                .record(Protocol::Http2, 200, std::time::Duration::from_micros(900));
            state.metrics.request_ended(
                Protocol::Http2,
                h3gate::exchange::Outcome::Complete,
                120,
                300,
            );
        })
    });
}

fn routing_and_sse(c: &mut Criterion) {
    let (state, _key, _dir) = state();
    c.bench_function("routing: resolve a glob route", |b| {
        b.iter(|| black_box(state.router.resolve(black_box("gpt-4o-mini")).is_some()))
    });
    let chunk = h3gate::provider::mock::Answer::new(
        "m",
        h3gate::provider::Endpoint::ChatCompletions,
        10,
        1,
    )
    .chunk(Some("hello"), false);
    c.bench_function("sse: parse one chat chunk", |b| {
        let mut p = h3gate::sse::Parser::new(1 << 20);
        b.iter(|| {
            p.push(black_box(chunk.as_bytes())).unwrap();
            black_box(p.next_event().unwrap())
        })
    });
    let body = br#"{"model":"gpt-4o-mini","stream":true,"max_tokens":64,"messages":[{"role":"system","content":"Be brief."},{"role":"user","content":"Say hello to the gateway, please."}]}"#;
    #[derive(serde::Deserialize)]
    #[allow(dead_code)]
    struct Routing {
        model: Option<String>,
        #[serde(default)]
        stream: bool,
        max_tokens: Option<u64>,
    }
    c.bench_function("request: parse model and stream only", |b| {
        b.iter(|| {
            black_box(
                serde_json::from_slice::<Routing>(black_box(body))
                    .unwrap()
                    .stream,
            )
        })
    });
    let _ = Arc::new(());
}

/// What translating between OpenAI and Anthropic costs: one request body,
/// one streamed event, both directions; and the usage-chunk filter.
fn translation(c: &mut Criterion) {
    use h3gate::provider::{mock::Answer, Endpoint};
    use h3gate::translate::{request, stream::Translator, Conversion, Options};
    let opts = Options::default();
    let chat = br#"{"model":"claude-x","stream":true,"max_tokens":64,"messages":[{"role":"system","content":"Be brief."},{"role":"user","content":"Say hello to the gateway, please."}]}"#;
    c.bench_function("translate: chat request -> messages", |b| {
        b.iter(|| black_box(request::chat_to_messages(black_box(chat), &opts).unwrap()))
    });
    let messages = br#"{"model":"gpt-4o-mini","stream":true,"max_tokens":64,"system":"Be brief.","messages":[{"role":"user","content":"Say hello to the gateway, please."}]}"#;
    c.bench_function("translate: messages request -> chat", |b| {
        b.iter(|| black_box(request::messages_to_chat(black_box(messages), &opts).unwrap()))
    });
    let event = |raw: String| {
        let mut p = h3gate::sse::Parser::new(1 << 20);
        p.push(raw.as_bytes()).unwrap();
        p.next_event().unwrap().unwrap()
    };
    let anthropic_delta =
        event(Answer::new("claude-x", Endpoint::Messages, 10, 3).message_events()[3].clone());
    c.bench_function(
        "translate: one Anthropic stream event -> OpenAI chunk",
        |b| {
            let mut t = Translator::new(
                Conversion::MessagesToChat {
                    include_usage: false,
                },
                "m",
            )
            .expect("a converting stream");
            let mut out = String::with_capacity(512);
            b.iter(|| {
                out.clear();
                t.event(black_box(&anthropic_delta), &mut out);
                black_box(out.len())
            })
        },
    );
    let openai_chunk = event(
        Answer::new("gpt-4o-mini", Endpoint::ChatCompletions, 10, 3).chunk(Some(" hello"), false),
    );
    c.bench_function("translate: one OpenAI chunk -> Anthropic events", |b| {
        let mut t = Translator::new(Conversion::ChatToMessages, "m").expect("a converting stream");
        let mut out = String::with_capacity(512);
        b.iter(|| {
            out.clear();
            t.event(black_box(&openai_chunk), &mut out);
            black_box(out.len())
        })
    });
    let response_events = Answer::new("gpt-4o-mini", Endpoint::Responses, 10, 3).response_events();
    let tag = h3gate::translate::responses::ResponseTag {
        provider: 1,
        key: 2,
        owner: 3,
    };
    for (name, raw) in [
        (
            "responses: one text delta event (passed on)",
            response_events[4].clone(),
        ),
        (
            "responses: response.completed (id tagged)",
            response_events.last().unwrap().clone(),
        ),
    ] {
        let ev = event(raw);
        c.bench_function(name, |b| {
            let mut out = String::with_capacity(2048);
            b.iter(|| {
                out.clear();
                tag.tag_event(black_box(&ev), &mut out);
                black_box(out.len())
            })
        });
    }
    c.bench_function("translate: usage-chunk filter, one chunk", |b| {
        let mut t = Translator::new(Conversion::StripUsage, "m").expect("a converting stream");
        let mut out = String::with_capacity(512);
        b.iter(|| {
            out.clear();
            t.event(black_box(&openai_chunk), &mut out);
            black_box(out.len())
        })
    });
}

criterion_group!(
    benches,
    protection,
    budgets,
    metrics,
    routing_and_sse,
    translation
);
criterion_main!(benches);
