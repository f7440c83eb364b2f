//! How the failover loop reads its [`Ledger`]: what to note of a target
//! passed over, and what the attempts so far say.

use crate::error::{AttemptFailure, FailureClass, Ledger, Skip};

impl Ledger {
    /// Notes that `target` was passed over for `why`, unless that says
    /// nothing new: a target already sent the request is not listed again
    /// as unusable (its failure says why), and a target is listed once as
    /// not serving the endpoint or as cooling down.
    pub(super) fn skip(&mut self, target: &str, why: Skip) {
        let noted = match why {
            Skip::Unhealthy | Skip::BreakerOpen => self.sent_to(target),
            Skip::Unsupported | Skip::Cooling => self.holds(target, FailureClass::Skipped(why)),
            Skip::Busy | Skip::BreakerRefused => false,
        };
        if !noted {
            self.push(target, FailureClass::Skipped(why));
        }
    }

    /// How many attempts were sent.
    pub(super) fn sent(&self) -> u32 {
        let n = self.iter().filter(|a| a.class.sent()).count();
        u32::try_from(n).unwrap_or(u32::MAX)
    }

    /// The last attempt sent.
    pub(super) fn last_sent(&self) -> Option<&AttemptFailure> {
        self.iter().rev().find(|a| a.class.sent())
    }

    pub(super) fn sent_to(&self, target: &str) -> bool {
        self.iter().any(|a| a.target == target && a.class.sent())
    }

    pub(super) fn holds(&self, target: &str, class: FailureClass) -> bool {
        self.iter().any(|a| a.target == target && a.class == class)
    }

    /// Whether `target` is not worth passing over a cooling target for: it
    /// does not serve the endpoint, or it refused this request (busy, or its
    /// breaker) when its turn came.
    pub(super) fn refused(&self, target: &str) -> bool {
        [Skip::Unsupported, Skip::Busy, Skip::BreakerRefused]
            .into_iter()
            .any(|why| self.holds(target, FailureClass::Skipped(why)))
    }
}
