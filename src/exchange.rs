//! The protocol-independent request and response the listeners hand to the
//! pipeline, and the body type both directions stream through.

use std::net::SocketAddr;

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName};
use http::{Method, Uri};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Empty, Full};

/// Error type of a streamed body.
pub type BodyError = Box<dyn std::error::Error + Send + Sync>;

/// A streamed body: request bodies from clients, response bodies to them.
pub type Body = UnsyncBoxBody<Bytes, BodyError>;

/// The response the pipeline returns to a listener.
pub type Response = http::Response<Body>;

/// The protocol a request arrived on. Labels in logs and metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Protocol {
    Http1,
    Http2,
    Http3,
}

impl Protocol {
    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Http1 => "http/1.1",
            Protocol::Http2 => "h2",
            Protocol::Http3 => "h3",
        }
    }
}

/// Whether the TLS handshake of the request's connection is complete: a
/// request handled before that is 0-RTT early data, which could be a replay.
pub trait Handshake: Send + Sync {
    fn is_complete(&self) -> bool;
    /// Resolves when the handshake completes (never, for a replayed flight).
    fn completed(&self) -> std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send + '_>>;
    /// Whether early requests may be served before the handshake completes:
    /// the session ticket the connection resumed with was used for the first
    /// time. rustls' own single-use store decides that on one node (true);
    /// with replicas sharing tickets it is Redis' answer (bounded wait).
    /// The QUIC connection's facts for a trace (HTTP/3 only).
    fn transport(&self) -> Option<TransportFacts> {
        None
    }
    fn early_confirmed(
        &self,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = bool> + Send + '_>> {
        Box::pin(std::future::ready(true))
    }
}

/// A QUIC connection, as a trace records it.
#[derive(Debug, Clone, Copy)]
pub struct TransportFacts {
    /// The path's round-trip time estimate, now.
    pub rtt: std::time::Duration,
    /// The connection served requests sent as 0-RTT early data.
    pub zero_rtt: bool,
    /// How long the handshake took (once it completed).
    pub handshake: Option<std::time::Duration>,
}

/// How a request ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// The response was delivered whole.
    Complete,
    /// Delivered whole, but it reports an upstream failure (an error event).
    UpstreamFailed,
    /// The response body failed while being sent.
    Error,
    /// The response started and was dropped before its end.
    Aborted,
    /// The request was dropped before a response existed.
    Cancelled,
}

impl Outcome {
    pub const ALL: [Outcome; 5] = [
        Outcome::Complete,
        Outcome::UpstreamFailed,
        Outcome::Error,
        Outcome::Aborted,
        Outcome::Cancelled,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Complete => "complete",
            Outcome::UpstreamFailed => "upstream_failed",
            Outcome::Error => "error",
            Outcome::Aborted => "aborted",
            Outcome::Cancelled => "cancelled",
        }
    }
}

/// One request, as every listener delivers it to [`crate::pipeline::handle`].
pub struct GatewayRequest {
    pub method: Method,
    pub uri: Uri,
    pub headers: HeaderMap,
    /// Streamed as it arrives; the pipeline counts and bounds it.
    pub body: Body,
    pub protocol: Protocol,
    /// The socket peer (the client, or the proxy in front of us).
    pub peer: SocketAddr,
    /// The connection's handshake, where early data is possible (HTTP/3 with 0-RTT).
    pub handshake: Option<std::sync::Arc<dyn Handshake>>,
    /// The QUIC connection (HTTP/3), for its facts in a trace.
    pub connection: Option<std::sync::Arc<dyn Handshake>>,
}

pub fn full(bytes: impl Into<Bytes>) -> Body {
    Full::new(bytes.into())
        .map_err(|never| match never {})
        .boxed_unsync()
}

pub fn empty() -> Body {
    Empty::new().map_err(|never| match never {}).boxed_unsync()
}

/// A JSON response with the given status.
pub fn json(status: http::StatusCode, body: impl Into<Bytes>) -> Response {
    let mut resp = http::Response::new(full(body));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json"),
    );
    resp
}

/// Connection-specific header fields, which HTTP/2 and HTTP/3 forbid
/// (RFC 9113 §8.2.2, RFC 9114 §4.2) and which never cross a proxy.
const HOP_BY_HOP: [HeaderName; 5] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    header::TRANSFER_ENCODING,
    header::UPGRADE,
];

/// Removes connection-specific fields (and `TE` unless it is `trailers`).
pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
    if let Some(connection) = headers.get(header::CONNECTION).cloned() {
        if let Ok(list) = connection.to_str() {
            for name in list.split(',') {
                if let Ok(name) = HeaderName::from_bytes(name.trim().as_bytes()) {
                    headers.remove(name);
                }
            }
        }
    }
    for name in &HOP_BY_HOP {
        headers.remove(name);
    }
    if headers
        .get(header::TE)
        .is_some_and(|te| !te.as_bytes().eq_ignore_ascii_case(b"trailers"))
    {
        headers.remove(header::TE);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strips_connection_specific_fields() {
        let mut h = HeaderMap::new();
        h.insert(header::CONNECTION, "keep-alive, x-private".parse().unwrap());
        h.insert("x-private", "1".parse().unwrap());
        h.insert("keep-alive", "timeout=5".parse().unwrap());
        h.insert(header::TRANSFER_ENCODING, "chunked".parse().unwrap());
        h.insert(header::TE, "gzip".parse().unwrap());
        h.insert(header::CONTENT_TYPE, "application/json".parse().unwrap());
        strip_hop_by_hop(&mut h);
        assert_eq!(h.len(), 1);
        assert!(h.contains_key(header::CONTENT_TYPE));

        let mut h = HeaderMap::new();
        h.insert(header::TE, "trailers".parse().unwrap());
        strip_hop_by_hop(&mut h);
        assert!(h.contains_key(header::TE));
    }
}
