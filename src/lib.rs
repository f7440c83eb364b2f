//! h3gate: an HTTP/3-first QUIC edge gateway for LLM APIs.
//!
//! ```text
//!  UDP  QUIC (quinn) + h3 ───► listener::quic ─┐
//!                                               ├─► GatewayRequest ─► pipeline::handle(&State, req) ─► Response
//!  TCP  TLS + HTTP/1.1|2 (hyper) ► listener::http ┘        (one code path for every protocol)
//!
//!  pipeline::handle, each step given the request's Ctx:
//!    begin (request id, client, the request's end) → edge checks (network, 0-RTT, host)
//!    → endpoint by path → authenticate → authorize → admission → body and model
//!    → rate limits (one decision) → route → forward with failover (before the first byte)
//!    → relay back → answer (headers) → the end (access line, metrics, claims given back)
//! ```
//!
//! `State` is built from `Config` in one step (`State::build`) and shared
//! behind an atomic swap; `server::run` wires sockets, listeners and drain.
//! Only `listener/` knows the wire protocols (quinn, h3, hyper); the small
//! leaves (`api`, `glob`, `clock`, `files`, `sse`) depend on nothing above
//! them, and `tests/shape.rs` keeps the module graph free of cycles.

pub mod abuse;
pub mod access;
pub mod admin;
pub mod admission;
pub mod api;
pub mod audit;
pub mod auth;
pub mod clock;
pub mod cluster;
pub mod config;
pub mod cors;
pub mod error;
pub mod exchange;
pub mod files;
pub mod glob;
pub mod ip_filter;
pub mod listener;
pub mod metrics;
pub mod pipeline;
pub mod protect;
pub mod provider;
pub mod rate_limit;
pub mod relay;
pub mod reload;
pub mod routing;
pub mod server;
pub mod shutdown;
pub mod spend;
pub mod sse;
pub mod state;
pub mod telemetry;
pub mod tls;
pub mod trace;
pub mod translate;
pub mod usage;
