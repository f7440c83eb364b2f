//! `h3gate_cost_usd_total{model,provider}`: what requests cost, in USD.
//!
//! The `metrics` crate's counters count whole numbers; a cost is a fraction
//! of a dollar. The family is kept here in nano-USD and rendered as a float
//! counter beside the recorder's exposition (`/metrics`).

use super::Nanos;

/// Adds one request's cost (`priced`: its model has a price; otherwise it
/// counts as 0 and in `h3gate_cost_unpriced_requests_total`). `model` is
/// the bounded model label of `h3gate_tokens_total`, never client input.
pub fn cost(model: &str, provider: &str, nanos: Nanos, priced: bool) {
    // Filled in by the cost-metrics change.
    let _ = (model, provider, nanos, priced);
}
