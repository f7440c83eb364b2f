//! The protocol adapters at the edge. Each takes an already-bound socket,
//! turns its protocol's requests into [`crate::exchange::GatewayRequest`]s,
//! hands them to [`crate::pipeline::handle`] and writes the response back.

pub mod caps;
pub mod http;
pub mod quic;

use std::sync::Arc;

use arc_swap::ArcSwap;

use crate::state::State;

/// The current runtime state. Each request takes a snapshot when it starts
/// and keeps it to the end; a reload swaps in a new one for later requests.
pub type SharedState = Arc<ArcSwap<State>>;
