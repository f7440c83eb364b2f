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

#[derive(Debug, Default)]
pub(super) struct Budgets {
    counters: Mutex<HashMap<Bucket, Slots>>,
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
    pub(super) fn lock(&self) -> MutexGuard<'_, HashMap<Bucket, Slots>> {
        self.counters.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The batch's budget claims, decided under `map`'s lock: `None` for a
    /// claim that is not a budget's.
    pub(super) fn decide_all(
        map: &mut HashMap<Bucket, Slots>,
        claims: &[Claim],
    ) -> Vec<Option<Decision>> {
        let mut out = Vec::with_capacity(claims.len());
        for (i, c) in claims.iter().enumerate() {
            if !matches!(c.bucket.kind, Kind::Budget(..)) {
                out.push(None);
                continue;
            }
            let w = window_of(c.window);
            if let Some(slots) = map.get_mut(&c.bucket) {
                prune(slots, &w);
            }
            let pending = claims[..i]
                .iter()
                .filter(|e| e.bucket == c.bucket)
                .map(|e| e.cost)
                .sum();
            let empty = Slots::new();
            let slots = map.get(&c.bucket).unwrap_or(&empty);
            out.push(Some(decide(slots, pending, c)));
        }
        out
    }

    /// Adds the batch's budget claims (all were allowed).
    pub(super) fn take_all(map: &mut HashMap<Bucket, Slots>, claims: &[Claim]) {
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
