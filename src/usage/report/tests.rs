use std::sync::Arc;

use super::*;
use crate::spend::{History, Spent};

/// 2026-12-01T00:00:00Z
const DEC_1: u64 = 1_796_083_200;
const HOUR: u64 = 3600;
const DAY: u64 = 86_400;

fn spent(at: u64, key: &str, team: &str, model: &str, cost: u64) -> Spent {
    Spent {
        at,
        key: (!key.is_empty()).then(|| key.into()),
        team: (!team.is_empty()).then(|| team.into()),
        model: model.into(),
        provider: "up".into(),
        usage: crate::spend::Usage {
            input: 100,
            output: 10,
            cached_input: 30,
            cache_write: 5,
        },
        cost,
    }
}

/// alice (eng) and bob (ops) on two models over two days, and a request
/// without a key.
fn history() -> History {
    let h = History::default();
    h.record(&spent(DEC_1 + HOUR, "alice", "eng", "gpt-4o", 1_000_000));
    h.record(&spent(
        DEC_1 + HOUR + 5,
        "alice",
        "eng",
        "gpt-4o",
        1_000_000,
    ));
    h.record(&spent(
        DEC_1 + 2 * HOUR,
        "alice",
        "eng",
        "claude",
        3_000_000,
    ));
    h.record(&spent(DEC_1 + DAY + HOUR, "bob", "ops", "gpt-4o", 500_000));
    h.record(&spent(DEC_1 + DAY + 2 * HOUR, "", "", "gpt-4o", 250_000));
    h
}

fn params(q: &str) -> Query {
    Params::from_query(q)
        .unwrap()
        .query(DEC_1 + 20 * DAY)
        .unwrap()
}

async fn ask(h: &History, q: &str) -> Usage {
    usage(&Source::Memory(h), &params(q)).await.unwrap()
}

fn groups(u: &Usage) -> Vec<(&str, u64)> {
    u.rows
        .iter()
        .map(|r| (r.group.as_str(), r.requests))
        .collect()
}

#[tokio::test]
async fn rows_are_grouped_by_model_key_team_and_day() {
    let h = history();
    let by_model = ask(&h, "").await;
    assert_eq!(by_model.group_by, GroupBy::Model);
    assert_eq!(groups(&by_model), [("claude", 1), ("gpt-4o", 4)]);
    assert_eq!(
        by_model.from, "2026-12-01T00:00:00Z",
        "from: the month's start"
    );
    let by_key = ask(&h, "group_by=key").await;
    assert_eq!(groups(&by_key), [("alice", 3), ("bob", 1), ("", 1)]);
    let by_team = ask(&h, "group_by=team").await;
    assert_eq!(groups(&by_team), [("eng", 3), ("ops", 1), ("", 1)]);
    let by_day = ask(&h, "group_by=day").await;
    assert_eq!(groups(&by_day), [("2026-12-01", 3), ("2026-12-02", 2)]);
    let t = &by_day.total;
    assert_eq!(
        (
            t.requests,
            t.input_tokens,
            t.output_tokens,
            t.cached_input_tokens,
            t.cache_write_tokens
        ),
        (5, 500, 50, 150, 25)
    );
    assert_eq!(t.cost_usd, 0.00575);
    let alice = by_key.rows.iter().find(|r| r.group == "alice").unwrap();
    assert_eq!(alice.cost_usd, 0.005);
}

#[tokio::test]
async fn filters_and_ranges_narrow_the_rows() {
    let h = history();
    let alice = ask(&h, "key=alice&group_by=model").await;
    assert_eq!(groups(&alice), [("claude", 1), ("gpt-4o", 2)]);
    assert_eq!(alice.key.as_deref(), Some("alice"));
    let ops = ask(&h, "team=ops").await;
    assert_eq!(groups(&ops), [("gpt-4o", 1)]);
    assert_eq!(ops.total.cost_usd, 0.0005);
    let nobody = ask(&h, "key=alice&team=ops").await;
    assert!(nobody.rows.is_empty());
    assert_eq!(nobody.total.requests, 0);
    // The second day only; then one hour of the first (a bucket counts
    // when it overlaps the range).
    let day2 = ask(&h, "from=2026-12-02&to=2026-12-03").await;
    assert_eq!(day2.total.requests, 2);
    let hour = ask(&h, "from=2026-12-01T01:30:00Z&to=2026-12-01T02:00:00Z").await;
    assert_eq!(groups(&hour), [("gpt-4o", 2)]);
    assert_eq!(hour.to, "2026-12-01T02:00:00Z");
    let next_month = ask(&h, "from=2027-01-01&to=2027-02-01").await;
    assert!(next_month.rows.is_empty());
}

#[test]
fn bad_parameters_are_named() {
    let now = DEC_1;
    let err = |q: &str| {
        Params::from_query(q)
            .and_then(|p| p.query(now))
            .unwrap_err()
            .param
    };
    assert_eq!(err("from=yesterday"), "from");
    assert_eq!(err("to=2026-13-01"), "to");
    assert_eq!(err("from=2026-12-02&to=2026-12-01"), "from");
    assert_eq!(err("group_by=month"), "group_by");
    assert_eq!(err("key="), "key");
    assert_eq!(err("keys=alice"), "keys");
    assert_eq!(err("team=a&team=b"), "team");
    let q = Params::from_query("key=a%7Cb&team=eng+ops")
        .unwrap()
        .query(now)
        .unwrap();
    assert_eq!(q.key.as_deref(), Some("a|b"));
    assert_eq!(q.team.as_deref(), Some("eng ops"));
    assert_eq!(
        (q.from, q.to),
        (DEC_1, DEC_1 + 1),
        "to: now, this second included"
    );
}

#[test]
fn the_table_has_every_row_and_the_total() {
    let u = Usage {
        from: "a".into(),
        to: "b".into(),
        group_by: GroupBy::Key,
        key: None,
        team: None,
        rows: vec![Row {
            group: String::new(),
            requests: 2,
            input_tokens: 3,
            output_tokens: 4,
            cached_input_tokens: 1,
            cache_write_tokens: 0,
            cost_usd: 0.25,
        }],
        total: Total {
            requests: 2,
            input_tokens: 3,
            output_tokens: 4,
            cached_input_tokens: 1,
            cache_write_tokens: 0,
            cost_usd: 0.25,
        },
    };
    let t = table(&u);
    let lines: Vec<&str> = t.lines().collect();
    assert_eq!(lines.len(), 4, "{t}");
    assert!(lines[1].starts_with("KEY") && lines[1].contains("COST_USD"));
    assert!(lines[2].starts_with("- ") && lines[2].ends_with("0.250000"));
    assert!(lines[3].starts_with("TOTAL"));
}

fn key(name: &str, team: Option<&str>, usd: Option<f64>, tokens: Option<u64>) -> Arc<KeyRecord> {
    Arc::new(KeyRecord {
        name: name.into(),
        id: format!("h3g_{name}"),
        sha256: format!("{name:0>64}"),
        scopes: Vec::new(),
        models: Vec::new(),
        created_at: 0,
        expires_at: None,
        revoked_at: None,
        rpm: None,
        tpm: None,
        max_concurrent: None,
        team: team.map(str::to_string),
        budget: usd,
        budget_tokens: tokens,
        budget_period: Some(Period::Day),
        revision: 1,
        updated_at: 0,
    })
}

fn entries(list: &[BudgetState]) -> Vec<(&str, &str, Unit)> {
    list.iter()
        .map(|b| (b.scope, b.name.as_str(), b.unit))
        .collect()
}

#[tokio::test]
async fn budgets_are_counted_by_the_limiter_where_it_decides_else_by_the_history() {
    let h = history();
    let now = DEC_1 + 3 * HOUR;
    let keys = vec![
        key("alice", Some("eng"), Some(0.01), None),
        key("bob", None, None, None),
        key("carol", None, None, Some(1000)),
    ];
    let teams = HashMap::from([
        (
            "eng".to_string(),
            Budget {
                usd: Some(1.0),
                tokens: Some(1_000),
                period: Period::Month,
            },
        ),
        (
            "ops".to_string(),
            Budget {
                usd: None,
                tokens: None,
                period: Period::Month,
            },
        ),
    ]);
    let src = Source::Memory(&h);
    // From the history: finished requests of the window.
    let list = budgets(&keys, &teams, None, &src, now).await.unwrap();
    assert_eq!(
        entries(&list),
        [
            ("key", "alice", Unit::Usd),
            ("key", "carol", Unit::Tokens),
            ("team", "eng", Unit::Usd),
            ("team", "eng", Unit::Tokens)
        ],
        "one entry per budget and unit; no budget, no entry"
    );
    let alice = &list[0];
    assert_eq!(alice.team.as_deref(), Some("eng"));
    assert_eq!(
        (alice.budget, alice.spent, alice.remaining),
        (Amount::Usd(0.01), Amount::Usd(0.005), Amount::Usd(0.005))
    );
    assert_eq!(alice.spent_tokens, 330, "the other unit: the history's");
    assert_eq!(alice.window_from, "2026-12-01T00:00:00Z");
    assert_eq!(alice.resets_at, "2026-12-02T00:00:00Z");
    let eng_tokens = &list[3];
    assert_eq!(eng_tokens.remaining, Amount::Tokens(670));
    assert_eq!(eng_tokens.resets_at, "2027-01-01T00:00:00Z");
    let json = serde_json::to_value(eng_tokens).unwrap();
    assert_eq!(json["unit"], "tokens");
    assert_eq!(json["budget"], 1000);
    assert_eq!(json["period"], "month");
    // The next day, alice's daily window is empty; the team's month is not.
    let later = budgets(&keys, &teams, None, &src, DEC_1 + DAY + 3 * HOUR)
        .await
        .unwrap();
    assert_eq!(later[0].spent, Amount::Usd(0.0));
    assert_eq!(later[2].spent, Amount::Usd(0.005));
    // From the limiter's counters for a unit with a budget (reservations
    // included); this window's slot only.
    let slot = Period::Day.window(now).slot;
    let counters = vec![BudgetCounter {
        subject: format!("key:{}", keys[0].sha256),
        unit: Unit::Usd,
        period: Period::Day,
        slots: vec![(slot - 1, 7_000_000), (slot, 9_000_000)],
    }];
    let list = budgets(&keys, &teams, Some(&counters), &src, now)
        .await
        .unwrap();
    assert_eq!(list[0].spent, Amount::Usd(0.009));
    assert_eq!(list[0].remaining, Amount::Usd(0.001));
    assert_eq!(list[0].spent_tokens, 330, "no token budget: the history's");
    assert_eq!(list[1].spent, Amount::Tokens(0), "carol's counter is empty");
}

/// `to` alone, before this month: `from` is the start of `to`'s month (it
/// was this month's, so the range was refused as backwards, naming a
/// `from` the caller never gave).
#[test]
fn to_alone_reads_its_own_month() {
    let q = params("to=2026-11-15");
    assert_eq!(
        q.from,
        crate::spend::period::parse_time("2026-11-01").unwrap()
    );
    assert_eq!(
        q.to,
        crate::spend::period::parse_time("2026-11-15").unwrap()
    );
    assert_eq!(params("").from, DEC_1, "without either: this month");
}
