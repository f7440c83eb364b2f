//! The usage history in the cluster's Redis (with `[cluster]`): one hash
//! per UTC day, `{prefix}usage:{YYYY-MM-DD}`, one field per bucket and
//! measure — `HH|key|team|model|provider|m` (the hour of the day, the
//! names with `%` and `|` percent-encoded, and the measure: `r` requests,
//! `i`/`o` input and output tokens, `c` cached input, `w` cache writes, `n`
//! nano-USD) — added to with `HINCRBY`, so every replica adds to the same
//! sums. A day's hash expires `[spend] retention` after the day ends.
//!
//! The request path only records into the in-memory [`crate::spend::History`],
//! which holds the buckets not yet in Redis; [`super::Keeper`]'s task takes
//! them every second and adds them here in `MULTI`/`EXEC` batches. While
//! Redis does not answer they stay pending (and are sent when it does),
//! up to [`PENDING_CAP`] buckets; past it a request's usage is dropped and
//! counted (`h3gate_cluster_syncs_total{what="usage",result="dropped"}`).
//! A batch whose `EXEC` reached Redis but whose answer was lost is sent
//! again: counted twice (rare, and never lost).
//!
//! Queries read the days in range (`HGETALL`, at most the retention's
//! days, in pipelines of [`DAYS_PER_CALL`]) and sum them with
//! [`crate::spend::history::summarise`].

use std::collections::BTreeMap;

use crate::cluster::{Cluster, ClusterError};
use crate::spend::history::{BucketKey, Sums};

/// Buckets waiting for Redis, at most (the history's cap with `[cluster]`).
pub const PENDING_CAP: usize = 100_000;
/// Buckets per `MULTI`/`EXEC` (six fields each, at most).
const BUCKETS_PER_CALL: usize = 1_000;
/// Days read per pipeline.
const DAYS_PER_CALL: usize = 31;
const DAY: u64 = 86_400;

/// A day's hash: `{prefix}usage:2026-12-01`.
fn day_key(cluster: &Cluster, day: u64) -> String {
    cluster.key(&format!(
        "usage:{}",
        &crate::spend::period::rfc3339(day * DAY)[..10]
    ))
}

fn enc(s: &str) -> std::borrow::Cow<'_, str> {
    if s.contains(['%', '|']) {
        s.replace('%', "%25").replace('|', "%7C").into()
    } else {
        s.into()
    }
}

fn dec(s: &str) -> String {
    if s.contains('%') {
        s.replace("%7C", "|").replace("%25", "%")
    } else {
        s.to_string()
    }
}

/// The measures of a bucket, by their field suffix (zeros left out).
fn measures(s: &Sums) -> impl Iterator<Item = (char, u64)> {
    [
        ('r', s.requests),
        ('i', s.input_tokens),
        ('o', s.output_tokens),
        ('c', s.cached_input_tokens),
        ('w', s.cache_write_tokens),
        ('n', s.cost_nanos),
    ]
    .into_iter()
    .filter(|(_, v)| *v > 0)
}

/// A bucket's field for one measure, within its day's hash.
fn field(k: &BucketKey, measure: char) -> String {
    format!(
        "{:02}|{}|{}|{}|{}|{measure}",
        (k.hour % DAY) / 3600,
        enc(&k.key),
        enc(&k.team),
        enc(&k.model),
        enc(&k.provider)
    )
}

/// A field of `day`'s hash back as its bucket and measure (`None`: not one
/// of ours).
fn parse_field(day: u64, f: &str) -> Option<(BucketKey, char)> {
    let mut parts = f.split('|');
    let hour: u64 = parts.next()?.parse().ok().filter(|h| *h < 24)?;
    let key = dec(parts.next()?);
    let team = dec(parts.next()?);
    let model = dec(parts.next()?);
    let provider = dec(parts.next()?);
    let measure = parts.next()?.chars().next()?;
    if parts.next().is_some() {
        return None;
    }
    let k = BucketKey {
        hour: day * DAY + hour * 3600,
        key,
        team,
        model,
        provider,
    };
    Some((k, measure))
}

fn add_measure(s: &mut Sums, measure: char, v: u64) {
    let to = match measure {
        'r' => &mut s.requests,
        'i' => &mut s.input_tokens,
        'o' => &mut s.output_tokens,
        'c' => &mut s.cached_input_tokens,
        'w' => &mut s.cache_write_tokens,
        'n' => &mut s.cost_nanos,
        _ => return,
    };
    *to = to.saturating_add(v);
}

/// Adds `buckets` to Redis. On failure, the buckets not added (the failed
/// batch and the ones after it) are returned with the error.
pub async fn flush(
    cluster: &Cluster,
    buckets: Vec<(BucketKey, Sums)>,
    retention: u64,
) -> Result<(), (ClusterError, Vec<(BucketKey, Sums)>)> {
    let mut rest = buckets.as_slice();
    while !rest.is_empty() {
        let (batch, after) = rest.split_at(rest.len().min(BUCKETS_PER_CALL));
        let mut pipe = redis::pipe();
        pipe.atomic();
        let mut days = BTreeMap::new();
        for (k, s) in batch {
            let day = k.hour / DAY;
            let key = days.entry(day).or_insert_with(|| day_key(cluster, day));
            for (m, v) in measures(s) {
                pipe.cmd("HINCRBY")
                    .arg(&*key)
                    .arg(field(k, m))
                    .arg(i64::try_from(v).unwrap_or(i64::MAX))
                    .ignore();
            }
        }
        for (day, key) in &days {
            let until = (day + 1) * DAY + retention;
            pipe.cmd("EXPIREAT").arg(key).arg(until).ignore();
        }
        if let Err(e) = cluster.call_background::<()>("usage_flush", &pipe).await {
            return Err((e, rest.to_vec()));
        }
        rest = after;
    }
    Ok(())
}

/// The buckets of the days `[from, to)` touches that can hold any at
/// `now`: the last `max_days` days (the retention's), today included.
pub async fn read(
    cluster: &Cluster,
    from: u64,
    to: u64,
    max_days: u64,
    now: u64,
) -> Result<Vec<(BucketKey, Sums)>, ClusterError> {
    let today = now / DAY;
    let last = (to.saturating_sub(1) / DAY).min(today);
    let first = (from / DAY).max(today.saturating_sub(max_days));
    let mut out: BTreeMap<BucketKey, Sums> = BTreeMap::new();
    if from >= to || first > last {
        return Ok(Vec::new());
    }
    let days: Vec<u64> = (first..=last).collect();
    for chunk in days.chunks(DAYS_PER_CALL) {
        let mut pipe = redis::pipe();
        for day in chunk {
            pipe.cmd("HGETALL").arg(day_key(cluster, *day));
        }
        let answers: Vec<std::collections::HashMap<String, i64>> =
            cluster.call_background("usage_read", &pipe).await?;
        for (day, fields) in chunk.iter().zip(answers) {
            for (f, v) in fields {
                let Some((k, m)) = parse_field(*day, &f) else {
                    continue;
                };
                add_measure(out.entry(k).or_default(), m, u64::try_from(v).unwrap_or(0));
            }
        }
    }
    Ok(out.into_iter().collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_round_trip_names_with_separators() {
        let k = BucketKey {
            hour: 1_796_083_200 + 13 * 3600,
            key: "a|b%7C".into(),
            team: "".into(),
            model: "gpt-4o".into(),
            provider: "up".into(),
        };
        let f = field(&k, 'n');
        assert_eq!(f, "13|a%7Cb%257C||gpt-4o|up|n");
        assert_eq!(parse_field(1_796_083_200 / DAY, &f), Some((k, 'n')));
        for bad in [
            "",
            "24|a|b|c|d|r",
            "x|a|b|c|d|r",
            "01|a|b|c|d|r|extra",
            "01|a|b|c|d",
        ] {
            assert_eq!(parse_field(0, bad), None, "{bad}");
        }
    }

    #[test]
    fn zero_measures_are_left_out() {
        let s = Sums {
            requests: 1,
            input_tokens: 10,
            cost_nanos: 5,
            ..Sums::default()
        };
        let m: Vec<char> = measures(&s).map(|(c, _)| c).collect();
        assert_eq!(m, ['r', 'i', 'n']);
        let mut back = Sums::default();
        for (c, v) in measures(&s) {
            add_measure(&mut back, c, v);
        }
        assert_eq!(back, s);
    }
}
