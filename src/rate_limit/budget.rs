//! Budget counters in memory ([`Kind::Budget`]): per bucket, the spend of
//! each slot of its period's window (one slot for a calendar day or month,
//! up to 30 for a rolling window). The in-memory limiter decides budget
//! claims here, in the same batch and under the same locks as its rates;
//! the shared backend keeps the same counters in Redis (`limits.lua`).
//!
//! Spend is held as reserved: a claim adds its estimate to the current
//! slot, its correction (the real cost less the estimate) goes to the same
//! slot later, even once the window moved on.

use std::collections::HashMap;
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::{Bucket, Claim, Correction, Decision, Kind, Subject, Unit, Window};
use crate::spend::Period;

/// One bucket's spend by slot, oldest first.
type Slots = Vec<(u64, u64)>;

/// Budget buckets are few (keys with budgets, teams) and their names are
/// not the client's to choose: a fast hasher (seeded per process).
type Map = HashMap<Bucket, Slots, foldhash::fast::RandomState>;

#[derive(Debug, Default)]
pub(super) struct Budgets {
    counters: Mutex<Map>,
}

/// A budget bucket's counters, for the spend file (see
/// [`super::MemoryLimiter::budget_counters`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BudgetCounter {
    /// `key:<sha256>` or `team:<name>`.
    pub subject: String,
    pub unit: Unit,
    pub period: Period,
    /// `(slot, spend)`, oldest first.
    pub slots: Vec<(u64, u64)>,
}

impl BudgetCounter {
    fn bucket(&self) -> Option<Bucket> {
        let subject = if let Some(k) = self.subject.strip_prefix("key:") {
            Subject::Key(k.into())
        } else if let Some(t) = self.subject.strip_prefix("team:") {
            Subject::Team(t.into())
        } else {
            return None;
        };
        Some(Bucket {
            subject,
            kind: Kind::Budget(self.unit, self.period),
        })
    }
}

/// The window a budget claim or correction carries (a claim without one,
/// which the pipeline never makes, is decided at the Unix epoch).
pub(super) fn window_of(w: Option<Window>) -> Window {
    w.unwrap_or(Window {
        slot: 0,
        slots: 1,
        step: 0,
        ends: 0,
        now: 0,
    })
}

/// Forgets the slots that left the window.
fn prune(slots: &mut Slots, w: &Window) {
    let first = w.first();
    slots.retain(|(s, used)| *s >= first && *used > 0);
}

/// Decides one budget claim against `slots` (already pruned), plus what an
/// earlier claim of the same batch added (`pending`).
pub(super) fn decide(slots: &Slots, pending: u64, c: &Claim) -> Decision {
    let w = window_of(c.window);
    let budget = c.limit.burst;
    let used = slots.iter().map(|(_, u)| u).sum::<u64>() + pending;
    let secs = Duration::from_secs;
    // Until the newest spend leaves: the budget is whole again.
    let whole_at = |used: u64| {
        if used == 0 {
            Duration::ZERO
        } else {
            secs(w.until_leaves(slots.last().map_or(w.slot, |(s, _)| *s)))
        }
    };
    if used >= budget || used.saturating_add(c.cost) > budget {
        // When enough old spend leaves the window for this claim to fit.
        let mut left = used;
        let mut retry = w.until_leaves(w.slot);
        for (s, u) in slots {
            left -= (*u).min(left);
            if left < budget && left.saturating_add(c.cost) <= budget {
                retry = w.until_leaves(*s);
                break;
            }
        }
        return Decision {
            allowed: false,
            limit: budget,
            remaining: budget.saturating_sub(used),
            reset: whole_at(used),
            retry_after: secs(retry.max(1)),
        };
    }
    let after = used + c.cost;
    Decision {
        allowed: true,
        limit: budget,
        remaining: budget - after,
        reset: if after == 0 {
            Duration::ZERO
        } else {
            secs(w.until_leaves(w.slot))
        },
        retry_after: Duration::ZERO,
    }
}

fn add(slots: &mut Slots, slot: u64, delta: i64) {
    match slots.iter_mut().find(|(s, _)| *s == slot) {
        Some((_, used)) => {
            *used = used.saturating_add_signed(delta);
        }
        None if delta > 0 => {
            let at = slots.partition_point(|(s, _)| *s < slot);
            slots.insert(at, (slot, delta as u64));
        }
        None => {}
    }
}

impl Budgets {
    pub(super) fn lock(&self) -> MutexGuard<'_, Map> {
        self.counters.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The batch's budget claims, decided under `map`'s lock: `None` for a
    /// claim that is not a budget's.
    pub(super) fn decide_all(map: &mut Map, claims: &[Claim]) -> Vec<Option<Decision>> {
        let mut out = Vec::with_capacity(claims.len());
        for (i, c) in claims.iter().enumerate() {
            if !matches!(c.bucket.kind, Kind::Budget(..)) {
                out.push(None);
                continue;
            }
            let w = window_of(c.window);
            let pending = claims[..i]
                .iter()
                .filter(|e| e.bucket == c.bucket)
                .map(|e| e.cost)
                .sum();
            // One lookup per claim: pruned and read in place.
            let decision = match map.get_mut(&c.bucket) {
                Some(slots) => {
                    prune(slots, &w);
                    decide(slots, pending, c)
                }
                None => decide(&Slots::new(), pending, c),
            };
            out.push(Some(decision));
        }
        out
    }

    /// Adds the batch's budget claims (all were allowed).
    pub(super) fn take_all(map: &mut Map, claims: &[Claim]) {
        for c in claims
            .iter()
            .filter(|c| matches!(c.bucket.kind, Kind::Budget(..)))
        {
            let w = window_of(c.window);
            let delta = i64::try_from(c.cost).unwrap_or(i64::MAX);
            match map.get_mut(&c.bucket) {
                Some(slots) => add(slots, w.slot, delta),
                None if c.cost > 0 => {
                    map.insert(c.bucket.clone(), vec![(w.slot, c.cost)]);
                }
                None => {}
            }
        }
    }

    pub(super) fn correct(&self, c: &Correction) {
        let w = window_of(c.window);
        let mut map = self.lock();
        match map.get_mut(&c.bucket) {
            Some(slots) => {
                add(slots, w.slot, c.delta);
                prune(slots, &w);
                if slots.is_empty() {
                    map.remove(&c.bucket);
                }
            }
            None if c.delta > 0 => {
                map.insert(c.bucket.clone(), vec![(w.slot, c.delta as u64)]);
            }
            None => {}
        }
    }

    /// Takes over a shared backend's view of a budget: all of its spend in
    /// the current slot.
    pub(super) fn mirror(&self, c: &Claim, d: &Decision) {
        let used = d.limit.saturating_sub(d.remaining);
        let w = window_of(c.window);
        let mut map = self.lock();
        if used == 0 {
            map.remove(&c.bucket);
        } else {
            map.insert(c.bucket.clone(), vec![(w.slot, used)]);
        }
    }

    pub(super) fn snapshot(&self) -> Vec<BudgetCounter> {
        let map = self.lock();
        let mut out: Vec<BudgetCounter> = map
            .iter()
            .filter_map(|(b, slots)| {
                let Kind::Budget(unit, period) = b.kind else {
                    return None;
                };
                let subject = match &b.subject {
                    Subject::Key(k) => format!("key:{k}"),
                    Subject::Team(t) => format!("team:{t}"),
                    Subject::Address(_) => return None,
                };
                Some(BudgetCounter {
                    subject,
                    unit,
                    period,
                    slots: slots.clone(),
                })
            })
            .collect();
        out.sort_by(|a, b| (&a.subject, a.period.tag()).cmp(&(&b.subject, b.period.tag())));
        out
    }

    /// Adds saved counters (at start, before any request).
    pub(super) fn restore(&self, counters: &[BudgetCounter]) {
        let mut map = self.lock();
        for c in counters {
            let Some(bucket) = c.bucket() else { continue };
            let slots = map.entry(bucket).or_default();
            for (s, used) in &c.slots {
                add(slots, *s, i64::try_from(*used).unwrap_or(i64::MAX));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::rate_limit::{Limit, MemoryLimiter};

    /// 2026-12-01T00:00:00Z
    const DEC_1: u64 = 1_796_083_200;

    fn budget(subject: Subject, period: Period, budget: u64, cost: u64, now: u64) -> Claim {
        Claim {
            bucket: Bucket {
                subject,
                kind: Kind::Budget(Unit::Usd, period),
            },
            limit: Limit {
                per_minute: 0,
                burst: budget,
            },
            cost,
            lease: None,
            window: Some(period.window(now)),
        }
    }

    fn key() -> Subject {
        Subject::Key(Arc::from("k"))
    }

    fn one(l: &MemoryLimiter, c: &Claim) -> Decision {
        l.consume_now(std::slice::from_ref(c))[0]
    }

    #[test]
    fn spending_exactly_the_budget_fits_and_one_more_nano_does_not() {
        let l = MemoryLimiter::default();
        let at = DEC_1 + 3600;
        let d = one(&l, &budget(key(), Period::Day, 1000, 600, at));
        assert!(d.allowed);
        assert_eq!(d.remaining, 400);
        assert_eq!(
            d.reset,
            Duration::from_secs(23 * 3600),
            "until midnight UTC"
        );
        let d = one(&l, &budget(key(), Period::Day, 1000, 400, at));
        assert!(d.allowed && d.remaining == 0, "exactly the budget");
        // Spent: even a claim of nothing is refused, until the day ends.
        for cost in [1, 0] {
            let d = one(&l, &budget(key(), Period::Day, 1000, cost, at + 60));
            assert!(!d.allowed, "cost {cost}");
            assert_eq!(d.retry_after, Duration::from_secs(23 * 3600 - 60));
        }
        // Midnight UTC: a new day, a whole budget.
        let d = one(&l, &budget(key(), Period::Day, 1000, 1000, DEC_1 + 86_400));
        assert!(d.allowed && d.remaining == 0);
    }

    #[test]
    fn a_month_resets_on_the_first_and_corrections_go_to_the_claimed_month() {
        let l = MemoryLimiter::default();
        let nov_30 = DEC_1 - 3600;
        let c = budget(key(), Period::Month, 1000, 900, nov_30);
        assert!(one(&l, &c).allowed);
        assert!(!one(&l, &budget(key(), Period::Month, 1000, 200, nov_30)).allowed);
        // December: November's spend is gone; November's late correction
        // (the real cost was lower) does not reach December.
        let dec = budget(key(), Period::Month, 1000, 1000, DEC_1);
        l.correct_now(&[Correction {
            bucket: c.bucket.clone(),
            limit: c.limit,
            delta: -500,
            lease: None,
            window: c.window,
        }]);
        let d = one(&l, &dec);
        assert!(d.allowed && d.remaining == 0, "{d:?}");
    }

    #[test]
    fn a_rolling_window_frees_its_oldest_slot_first() {
        let l = MemoryLimiter::default();
        let p = Period::Rolling { hours: 720 }; // 30 daily slots
        assert!(one(&l, &budget(key(), p, 1000, 300, DEC_1)).allowed);
        assert!(one(&l, &budget(key(), p, 1000, 700, DEC_1 + 86_400)).allowed);
        let refused = one(&l, &budget(key(), p, 1000, 200, DEC_1 + 2 * 86_400));
        assert!(!refused.allowed);
        // The first day's 300 leaves the window 30 days after it began.
        assert_eq!(refused.retry_after, Duration::from_secs(28 * 86_400));
        let later = DEC_1 + 30 * 86_400;
        let d = one(&l, &budget(key(), p, 1000, 300, later));
        assert!(d.allowed && d.remaining == 0, "{d:?}");
    }

    #[test]
    fn a_refused_budget_takes_nothing_from_the_rates_and_the_reverse() {
        let l = MemoryLimiter::default();
        let rate = Claim {
            bucket: Bucket {
                subject: key(),
                kind: Kind::Requests,
            },
            limit: Limit {
                per_minute: 60,
                burst: 1,
            },
            cost: 1,
            lease: None,
            window: None,
        };
        let spent = budget(key(), Period::Day, 100, 150, DEC_1);
        let d = l.consume_now(&[rate.clone(), spent]);
        assert!(d[0].allowed && !d[1].allowed);
        assert!(one(&l, &rate).allowed, "the request was not taken");
        // The rate refuses now: the budget's claim is not taken either.
        let fits = budget(key(), Period::Day, 100, 60, DEC_1);
        let d = l.consume_now(&[rate, fits.clone()]);
        assert!(!d[0].allowed && d[1].allowed);
        assert_eq!(d[1].remaining, 100, "reported as it is");
        assert_eq!(one(&l, &fits).remaining, 40);
    }

    #[test]
    fn teams_and_keys_are_separate_budgets_and_counters_survive_a_snapshot() {
        let l = MemoryLimiter::default();
        let team = Subject::Team(Arc::from("ml"));
        assert!(one(&l, &budget(team.clone(), Period::Day, 100, 100, DEC_1)).allowed);
        assert!(one(&l, &budget(key(), Period::Day, 100, 100, DEC_1)).allowed);
        let saved = l.budget_counters();
        assert_eq!(saved.len(), 2);
        let json = serde_json::to_string(&saved).unwrap();
        let back: Vec<BudgetCounter> = serde_json::from_str(&json).unwrap();
        let fresh = MemoryLimiter::default();
        fresh.restore_budgets(&back);
        assert!(!one(&fresh, &budget(team, Period::Day, 100, 1, DEC_1)).allowed);
        assert!(!one(&fresh, &budget(key(), Period::Day, 100, 1, DEC_1)).allowed);
    }
}
