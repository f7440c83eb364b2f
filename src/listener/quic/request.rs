//! One HTTP/3 request stream: its headers bounded in time and checked as
//! strictly as hyper checks HTTP/2 (RFC 9114 §4.2, §4.1.2), its body
//! streamed to the pipeline and counted against `content-length`, and its
//! work cancelled the moment the client stops the stream or the connection
//! closes — exactly as a dropped HTTP/1.1 or HTTP/2 request.

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Buf, Bytes};
use h3::error::Code;
use h3::server::{RequestResolver, RequestStream};
use http::header::{self, HeaderMap};
use http_body::{Body as HttpBody, Frame};
use http_body_util::BodyExt;

use super::streams::{self, Stops};
use super::QuicHandshake;
use crate::exchange::{strip_hop_by_hop, Body, BodyError, GatewayRequest, Protocol, Response};
use crate::metrics;
use crate::pipeline;
use crate::state::SharedState;

type SendHalf = RequestStream<streams::SendStream<Bytes>, Bytes>;
type RecvHalf = RequestStream<streams::RecvStream, Bytes>;

/// What a request task needs from its connection.
pub(super) struct StreamCtx {
    pub state: SharedState,
    pub peer: SocketAddr,
    pub handshake: Arc<QuicHandshake>,
    pub conn: quinn::Connection,
    pub stops: Arc<Stops>,
    /// Time allowed from the stream's start to its whole header section
    /// (`[http] header_read_timeout`, for both listeners).
    pub header_timeout: Duration,
    /// Longest wait for the client's flow control to take more of the
    /// response (`[http] write_timeout`, for both listeners): a client that
    /// stopped reading does not hold its upstream for ever.
    pub write_timeout: Duration,
}

pub(super) async fn request(resolver: RequestResolver<streams::Connection, Bytes>, ctx: StreamCtx) {
    let peer = ctx.peer;
    // h3 answers 431 itself when the header section exceeds the limit, and
    // refuses uppercase or malformed field names.
    let (req, stream) =
        match tokio::time::timeout(ctx.header_timeout, resolver.resolve_request()).await {
            Ok(Ok(r)) => r,
            Ok(Err(e)) => {
                tracing::debug!(%peer, error = %e, "HTTP/3 request rejected");
                return;
            }
            Err(_) => {
                metrics::quic::stream_error("header_timeout");
                tracing::debug!(%peer, "HTTP/3 request headers not received in time");
                return;
            }
        };
    let (mut send, mut recv) = stream.split();
    let (parts, ()) = req.into_parts();
    let declared = match check_headers(&parts.headers) {
        Ok(declared) => declared,
        Err(why) => {
            // A malformed request is a stream error (RFC 9114 §4.1.2).
            metrics::quic::stream_error("malformed");
            tracing::debug!(%peer, why, "malformed HTTP/3 request");
            recv.stop_sending(Code::H3_MESSAGE_ERROR);
            send.stop_stream(Code::H3_MESSAGE_ERROR);
            return;
        }
    };
    let stopped = ctx.stops.take(send.send_id());
    let mut headers = parts.headers;
    strip_hop_by_hop(&mut headers);
    let head_only = parts.method == http::Method::HEAD;
    let mut request = GatewayRequest {
        method: parts.method,
        uri: parts.uri,
        headers,
        body: Body::new(H3RequestBody {
            stream: recv,
            done: false,
            declared,
            received: 0,
        }),
        protocol: Protocol::Http3,
        peer,
        handshake: None,
        connection: Some(ctx.handshake.clone()),
    };
    use crate::exchange::Handshake as _;
    if !ctx.handshake.is_complete() {
        if !ctx.handshake.early_seen.swap(true, Ordering::Relaxed) {
            metrics::quic::zero_rtt_connection();
        }
        request.handshake = Some(ctx.handshake.clone());
    }
    let state = ctx.state.load_full();
    let work = async {
        let resp = pipeline::handle(&state, request).await;
        send_response(&mut send, resp, head_only, ctx.write_timeout).await
    };
    let stopped = async {
        match stopped {
            Some(stopped) => stopped.await,
            None => std::future::pending().await,
        }
    };
    // The client going away ends the work: dropping it drops the upstream
    // call and releases everything the request holds.
    tokio::select! {
        sent = work => {
            if let Err(e) = sent {
                tracing::debug!(%peer, error = %e, "HTTP/3 response not delivered");
            }
        }
        _ = stopped => {
            tracing::debug!(%peer, "the client stopped the HTTP/3 stream: request cancelled");
        }
        _ = ctx.conn.closed() => {
            tracing::debug!(%peer, "the HTTP/3 connection closed: request cancelled");
        }
    }
}

/// Refuses what RFC 9114 §4.2 makes malformed (connection-specific fields,
/// `TE` other than `trailers`) and returns the declared `content-length`.
fn check_headers(headers: &HeaderMap) -> Result<Option<u64>, &'static str> {
    const CONNECTION_SPECIFIC: [&str; 5] = [
        "connection",
        "keep-alive",
        "proxy-connection",
        "transfer-encoding",
        "upgrade",
    ];
    if CONNECTION_SPECIFIC.iter().any(|h| headers.contains_key(*h)) {
        return Err("connection-specific header field");
    }
    if headers
        .get_all(header::TE)
        .iter()
        .any(|te| !te.as_bytes().eq_ignore_ascii_case(b"trailers"))
    {
        return Err("TE other than trailers");
    }
    let mut lengths = headers.get_all(header::CONTENT_LENGTH).iter();
    let Some(first) = lengths.next() else {
        return Ok(None);
    };
    let parse = |v: &http::HeaderValue| {
        std::str::from_utf8(v.as_bytes())
            .ok()
            .filter(|s| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()))
            .and_then(|s| s.parse::<u64>().ok())
    };
    let n = parse(first).ok_or("invalid content-length")?;
    if lengths.any(|v| parse(v) != Some(n)) {
        return Err("conflicting content-length values");
    }
    Ok(Some(n))
}

/// Writes the response: HEADERS, then DATA frames as the body yields them
/// (each write waits for flow control: backpressure), then FIN. A body error
/// resets the stream so the client sees the failure.
async fn send_response(
    send: &mut SendHalf,
    resp: Response,
    head_only: bool,
    write_timeout: Duration,
) -> Result<(), h3::error::StreamError> {
    let (parts, mut body) = resp.into_parts();
    let mut head = http::Response::from_parts(parts, ());
    strip_hop_by_hop(head.headers_mut());
    send.send_response(head).await?;
    if !head_only {
        while let Some(frame) = body.frame().await {
            match frame {
                Ok(frame) => match frame.into_data() {
                    Ok(data) if !data.is_empty() => {
                        let Ok(sent) =
                            tokio::time::timeout(write_timeout, send.send_data(data)).await
                        else {
                            tracing::debug!("the client stopped reading (write_timeout); resetting the HTTP/3 stream");
                            metrics::quic::stream_error("write_timeout");
                            send.stop_stream(Code::H3_REQUEST_CANCELLED);
                            return Ok(());
                        };
                        sent?
                    }
                    Ok(_) => {}
                    Err(frame) => {
                        if let Ok(trailers) = frame.into_trailers() {
                            send.send_trailers(trailers).await?;
                        }
                    }
                },
                Err(e) => {
                    tracing::debug!(error = %e, "response body failed; resetting the HTTP/3 stream");
                    send.stop_stream(Code::H3_INTERNAL_ERROR);
                    return Ok(());
                }
            }
        }
    }
    send.finish().await
}

/// The body's length disagrees with its `content-length` (RFC 9114 §4.1.2).
#[derive(Debug, thiserror::Error)]
#[error("the request body's length does not match its content-length")]
struct LengthMismatch;

/// An HTTP/3 request body, streamed and counted against its declared
/// length. Dropped unread, it asks the client to stop sending with
/// `H3_NO_ERROR` (RFC 9114 §4.1) instead of a bare reset.
struct H3RequestBody {
    stream: RecvHalf,
    done: bool,
    declared: Option<u64>,
    received: u64,
}

impl H3RequestBody {
    fn fail(&mut self, e: BodyError) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        self.done = true;
        self.stream.stop_sending(Code::H3_MESSAGE_ERROR);
        Poll::Ready(Some(Err(e)))
    }
}

impl HttpBody for H3RequestBody {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        if self.done {
            return Poll::Ready(None);
        }
        match self.stream.poll_recv_data(cx) {
            Poll::Ready(Ok(Some(mut buf))) => {
                let bytes = buf.copy_to_bytes(buf.remaining());
                self.received += bytes.len() as u64;
                if self.declared.is_some_and(|n| self.received > n) {
                    return self.fail(Box::new(LengthMismatch));
                }
                Poll::Ready(Some(Ok(Frame::data(bytes))))
            }
            Poll::Ready(Ok(None)) => {
                if self.declared.is_some_and(|n| self.received != n) {
                    return self.fail(Box::new(LengthMismatch));
                }
                self.done = true;
                Poll::Ready(None)
            }
            Poll::Ready(Err(e)) => {
                self.done = true;
                Poll::Ready(Some(Err(Box::new(e))))
            }
            Poll::Pending => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.done
    }
}

impl Drop for H3RequestBody {
    fn drop(&mut self) {
        if !self.done {
            // Safe mid-read: our stream makes each read afresh.
            self.stream.stop_sending(Code::H3_NO_ERROR);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                v.parse().unwrap(),
            );
        }
        h
    }

    #[test]
    fn malformed_requests_are_refused() {
        assert_eq!(check_headers(&headers(&[])), Ok(None));
        assert_eq!(
            check_headers(&headers(&[("content-length", "12")])),
            Ok(Some(12))
        );
        assert_eq!(
            check_headers(&headers(&[
                ("content-length", "12"),
                ("content-length", "12")
            ])),
            Ok(Some(12))
        );
        for bad in [
            vec![("connection", "close")],
            vec![("transfer-encoding", "chunked")],
            vec![("keep-alive", "5")],
            vec![("upgrade", "websocket")],
            vec![("te", "gzip")],
            vec![("content-length", "12"), ("content-length", "13")],
            vec![("content-length", "-1")],
            vec![("content-length", "1 2")],
        ] {
            assert!(check_headers(&headers(&bad)).is_err(), "{bad:?}");
        }
        assert!(check_headers(&headers(&[("te", "trailers")])).is_ok());
    }
}
