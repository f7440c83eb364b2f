//! The protocol adapters at the edge. Each takes an already-bound socket,
//! turns its protocol's requests into [`crate::exchange::GatewayRequest`]s,
//! hands them to [`crate::pipeline::handle`] and writes the response back.

pub mod admin;
pub mod caps;
pub mod http;
pub mod quic;
