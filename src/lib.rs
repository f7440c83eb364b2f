//! h3gate: an HTTP/3-first QUIC edge gateway for LLM APIs.
//!
//! ```text
//!  UDP  QUIC (quinn) + h3 ───► listener::quic ─┐
//!                                               ├─► GatewayRequest ─► pipeline::handle(&State, req) ─► Response
//!  TCP  TLS + HTTP/1.1|2 (hyper) ► listener::http ┘        (one code path for every protocol)
//!
//!  pipeline::handle: request id → route by path → read body (bounded) → model → route
//!    → forward with failover (before the first byte only) → stream back → access log
//! ```
//!
//! `State` is built from `Config` in one step (`State::build`) and shared
//! behind an atomic swap; `server::run` wires sockets, listeners and drain.

pub mod abuse;
pub mod access;
pub mod api;
pub mod admin;
pub mod admission;
pub mod audit;
pub mod clock;
pub mod auth;
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
pub mod sse;
pub mod state;
pub mod telemetry;
pub mod tls;
pub mod translate;
