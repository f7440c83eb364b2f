//! Budgets in the shared limiter (`limits.lua`, on a real redis-server):
//! the script decides every budget claim as the in-memory limiter does
//! (calendar day, calendar month, rolling windows; the boundary; a window's
//! end; corrections; a refusal in a batch takes nothing). The replicas
//! sharing spend are in `cluster_spend.rs`.

mod common;

use std::sync::Arc;
use std::time::Duration;

use h3gate::rate_limit::{
    Bucket, Claim, Correction, Decision, Kind, Limit, Limiter, MemoryLimiter, RedisLimiter,
    Subject, Unit,
};
use h3gate::spend::Period;

use common::cluster::Redis;

/// 2026-12-01T00:00:00Z
const DEC_1: u64 = 1_796_083_200;
const DAY: u64 = 86_400;
/// $5 in nano-USD.
const FIVE_USD: u64 = 5_000_000_000;

/// A shared limiter on `redis`.
async fn shared(redis: &Redis) -> RedisLimiter {
    let cfg = h3gate::config::ClusterConfig {
        redis_url: redis.url(),
        secret: h3gate::config::Secret::new(common::cluster::TEST_SECRET),
        timeout: h3gate::config::Duration::secs(2),
        ..Default::default()
    };
    let cluster = h3gate::cluster::Cluster::connect(&cfg).unwrap().unwrap();
    let shutdown = h3gate::shutdown::Shutdown::new(tokio_util::sync::CancellationToken::new());
    cluster.start(&shutdown);
    assert!(cluster.ready(Duration::from_secs(5)).await);
    RedisLimiter::new(cluster)
}

fn budget(subject: &Subject, unit: Unit, period: Period) -> Bucket {
    Bucket {
        subject: subject.clone(),
        kind: Kind::Budget(unit, period),
    }
}

fn claim(bucket: &Bucket, limit: u64, cost: u64, now: u64) -> Claim {
    let Kind::Budget(_, period) = bucket.kind else {
        panic!("a budget's bucket")
    };
    Claim {
        bucket: bucket.clone(),
        limit: Limit {
            per_minute: 0,
            burst: limit,
        },
        cost,
        lease: None,
        window: Some(period.window(now)),
    }
}

/// The correction of `c` by `delta`, in `c`'s window.
fn correction(c: &Claim, delta: i64) -> Correction {
    Correction {
        bucket: c.bucket.clone(),
        limit: c.limit,
        delta,
        lease: None,
        window: c.window,
    }
}

/// Both limiters, fed the same claims and corrections.
struct Both {
    memory: MemoryLimiter,
    redis: RedisLimiter,
    step: usize,
}

impl Both {
    /// The batch on both; their decisions must be equal: all four fields
    /// of a budget's (its times come from the claim's window), whether a
    /// rate's is allowed and what remains (its times are each limiter's
    /// clock's).
    async fn consume(&mut self, batch: &[Claim]) -> Vec<Decision> {
        self.step += 1;
        let m = self.memory.consume_now(batch);
        let r = self.redis.consume(batch).await.unwrap();
        let view = |d: &[Decision]| {
            batch
                .iter()
                .zip(d)
                .map(|(c, d)| match c.bucket.kind {
                    Kind::Budget(..) => *d,
                    _ => Decision {
                        reset: Duration::ZERO,
                        ..*d
                    },
                })
                .collect::<Vec<_>>()
        };
        assert_eq!(view(&r), view(&m), "step {}: {batch:?}", self.step);
        m
    }

    async fn one(&mut self, c: &Claim) -> Decision {
        self.consume(std::slice::from_ref(c)).await[0]
    }

    async fn correct(&mut self, corrections: &[Correction]) {
        self.memory.correct_now(corrections);
        self.redis.correct(corrections).await.unwrap();
    }
}

fn secs(s: u64) -> Duration {
    Duration::from_secs(s)
}

/// The boundaries, spelled out: exactly the budget fits, a nano more does
/// not; the window's end resets a calendar budget; a correction goes to its
/// claim's slot; a refused batch takes nothing from the budgets that fit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn budgets_in_redis_decide_as_in_memory() {
    let redis = Redis::start();
    let mut both = Both {
        memory: MemoryLimiter::default(),
        redis: shared(&redis).await,
        step: 0,
    };
    let key = Subject::Key("cd".repeat(32).into());
    let team = Subject::Team(Arc::from("research"));
    let day = budget(&key, Unit::Usd, Period::Day);
    let t0 = DEC_1 + 3600;

    // A calendar day: $3, then $2 (exactly the budget), then one nano more.
    let first = claim(&day, FIVE_USD, 3_000_000_000, t0);
    let d = both.one(&first).await;
    assert!(d.allowed);
    assert_eq!(d.remaining, 2_000_000_000);
    assert_eq!(d.reset, secs(DAY - 3600), "until midnight UTC");
    let d = both
        .one(&claim(&day, FIVE_USD, 2_000_000_000, t0 + 1))
        .await;
    assert!(d.allowed, "exactly the budget is allowed");
    assert_eq!(d.remaining, 0);
    let nano = claim(&day, FIVE_USD, 1, t0 + 2);
    let d = both.one(&nano).await;
    assert!(!d.allowed, "one nano more is refused");
    assert_eq!(d.retry_after, secs(DAY - 3602));
    // The first request cost a nano less than reserved: one nano fits again.
    both.correct(&[correction(&first, -1)]).await;
    assert!(both.one(&nano).await.allowed);
    assert!(!both.one(&nano).await.allowed);
    // A zero-cost claim on a spent budget is refused too (nothing is left).
    assert!(!both.one(&claim(&day, FIVE_USD, 0, t0 + 3)).await.allowed);
    // The next day starts over; a late correction of yesterday's request
    // goes to yesterday's slot, not today's.
    let tomorrow = DEC_1 + DAY + 10;
    both.correct(&[correction(&first, 1_000_000_000)]).await;
    let d = both.one(&claim(&day, FIVE_USD, FIVE_USD, tomorrow)).await;
    assert!(d.allowed, "{d:?}");
    assert_eq!(d.remaining, 0);

    // A calendar month of tokens, with a team's budget in the same batch:
    // the team refuses, the key's claim that fit takes nothing.
    let month = budget(&key, Unit::Tokens, Period::Month);
    let team_month = budget(&team, Unit::Tokens, Period::Month);
    let t1 = DEC_1 + 5 * DAY;
    let d = both.one(&claim(&team_month, 1_000, 900, t1)).await;
    assert!(d.allowed);
    let batch = [
        claim(&month, 2_000, 500, t1),
        claim(&team_month, 1_000, 500, t1),
    ];
    let d = both.consume(&batch).await;
    assert!(d[0].allowed && !d[1].allowed, "{d:?}");
    assert_eq!(d[0].remaining, 2_000, "the key's budget, as it is");
    assert_eq!(d[1].remaining, 100);
    assert_eq!(d[1].retry_after, secs(26 * DAY), "until January");
    let batch = [
        claim(&month, 2_000, 500, t1),
        claim(&team_month, 1_000, 100, t1),
    ];
    assert!(both.consume(&batch).await.iter().all(|d| d.allowed));
    // The same budget twice in a batch counts twice.
    let twice = [
        claim(&month, 2_000, 1_000, t1),
        claim(&month, 2_000, 1_000, t1),
    ];
    let d = both.consume(&twice).await;
    assert!(
        d[0].allowed && !d[1].allowed,
        "500 + 1000 + 1000 > 2000: {d:?}"
    );
    // January: both start over.
    let jan = DEC_1 + 31 * DAY;
    let batch = [
        claim(&month, 2_000, 2_000, jan),
        claim(&team_month, 1_000, 1_000, jan),
    ];
    assert!(both.consume(&batch).await.iter().all(|d| d.allowed));

    // A rolling 30 days ($5): $2 on day 0, $2 on day 10, $1 on day 20; on
    // day 29 nothing fits until day 0's spend leaves (at day 30).
    let rolling = budget(&key, Unit::Usd, Period::Rolling { hours: 720 });
    let at = |d: u64| DEC_1 + d * DAY + 60;
    for (d, cost) in [(0, 2), (10, 2), (20, 1)] {
        let c = claim(&rolling, FIVE_USD, cost * 1_000_000_000, at(d));
        assert!(both.one(&c).await.allowed, "day {d}");
    }
    let late = claim(&rolling, FIVE_USD, 1_500_000_000, at(29));
    let d = both.one(&late).await;
    assert!(!d.allowed);
    assert_eq!(d.retry_after, secs(DAY - 60), "day 0 leaves at day 30");
    assert_eq!(d.reset, secs(21 * DAY - 60), "day 20 leaves at day 50");
    let d = both
        .one(&claim(&rolling, FIVE_USD, 1_500_000_000, at(30)))
        .await;
    assert!(d.allowed, "{d:?}");
    assert_eq!(d.remaining, 500_000_000);
    // Three fields (days 10, 20, 30) are left: day 0's was dropped.
    let mut conn = redis.connection();
    let k = format!("h3gate:budget:key:{}:usd:r720", "cd".repeat(32));
    let fields: Vec<String> = redis::cmd("HKEYS").arg(&k).query(&mut conn).unwrap();
    assert_eq!(fields.len(), 3, "{fields:?}");
    let ttl: i64 = redis::cmd("PTTL").arg(&k).query(&mut conn).unwrap();
    let expected = (30 * DAY - 60 + 3600) as i64 * 1000;
    assert!(ttl > expected - 60_000 && ttl <= expected, "{ttl} ms");
    // A correction never takes a slot below zero.
    both.correct(&[correction(&late, -10_000_000_000)]).await;
    let d = both.one(&claim(&rolling, FIVE_USD, 0, at(30))).await;
    assert_eq!(d.remaining, 500_000_000);
}

/// A random walk over days, months and rolling windows (24 h and 30 days)
/// for a key and a team, with corrections of earlier claims: the script's
/// decisions equal the in-memory limiter's at every step.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn random_budget_walks_agree() {
    let redis = Redis::start();
    let mut both = Both {
        memory: MemoryLimiter::default(),
        redis: shared(&redis).await,
        step: 0,
    };
    let mut rng = fastrand::Rng::with_seed(19);
    let subjects = [
        Subject::Key("ef".repeat(32).into()),
        Subject::Team(Arc::from("ml-platform")),
    ];
    let periods = [
        Period::Day,
        Period::Month,
        Period::Rolling { hours: 24 },
        Period::Rolling { hours: 720 },
    ];
    let rate = Claim {
        bucket: Bucket {
            subject: subjects[0].clone(),
            kind: Kind::Requests,
        },
        limit: Limit {
            per_minute: 1,
            burst: 1_000_000,
        },
        cost: 1,
        lease: None,
        window: None,
    };
    let mut now = DEC_1 - 3 * DAY;
    let mut taken: Vec<Claim> = Vec::new();
    let mut refused = 0;
    for _ in 0..400 {
        now += rng.u64(0..6 * 3600);
        let mut batch = vec![rate.clone()];
        for _ in 0..rng.usize(1..4) {
            let b = budget(
                &subjects[rng.usize(..2)],
                if rng.bool() { Unit::Usd } else { Unit::Tokens },
                periods[rng.usize(..periods.len())],
            );
            batch.push(claim(&b, 1_000, rng.u64(0..400), now));
        }
        let d = both.consume(&batch).await;
        if d.iter().all(|d| d.allowed) {
            taken.extend(batch.into_iter().skip(1));
        } else {
            refused += 1;
        }
        if !taken.is_empty() && rng.u8(..3) == 0 {
            let c = taken.swap_remove(rng.usize(..taken.len()));
            let delta = rng.i64(-(c.cost as i64) - 50..=c.cost as i64);
            both.correct(&[correction(&c, delta)]).await;
        }
    }
    assert!(
        (40..360).contains(&refused),
        "the walk refuses some batches and allows most: {refused} of 400"
    );
    let d = both.one(&rate).await;
    assert!(d.allowed);
    assert_eq!(
        d.remaining,
        1_000_000 - 1 - (400 - refused),
        "a refused batch took no request"
    );
}
