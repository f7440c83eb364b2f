//! A streaming response committed before its upstream answered: SSE
//! `: ping` comments until the failover loop is done, then the relay.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::header::{self, HeaderValue};
use http_body::{Body as HttpBody, Frame};
use tokio::time::Instant;

use super::{ClientEnd, Framing, RelayBody};
use crate::access::Record;
use crate::api::Api;
use crate::exchange::{Body, BodyError, Response};
use crate::routing::Forwarded;

type Forwarding = Pin<Box<dyn std::future::Future<Output = Forwarded> + Send>>;

/// A streaming response committed (200) before the upstream answered:
/// `: ping` comments every `every` keep idle-timeout middleboxes from
/// cutting it; then the upstream's stream, or an error event if every
/// attempt failed (the status can no longer change).
pub struct KeepAliveBody {
    waiting: Option<(Forwarding, tokio::time::Interval)>,
    relay: Option<RelayBody>,
    client: ClientEnd,
}

impl KeepAliveBody {
    pub fn response(
        fwd: Forwarding,
        every: Duration,
        model_label: Arc<str>,
        record: Arc<Record>,
        client_api: Api,
    ) -> Response {
        let mut tick = tokio::time::interval_at(Instant::now(), every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let body = KeepAliveBody {
            waiting: Some((fwd, tick)),
            relay: None,
            client: ClientEnd {
                model_label,
                record,
                api: client_api,
            },
        };
        let mut resp = http::Response::new(Body::new(body));
        let h = resp.headers_mut();
        h.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/event-stream"),
        );
        h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
        resp
    }
}

impl HttpBody for KeepAliveBody {
    type Data = Bytes;
    type Error = BodyError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BodyError>>> {
        let this = &mut *self;
        if let Some(relay) = this.relay.as_mut() {
            return Pin::new(relay).poll_frame(cx);
        }
        let Some((fwd, tick)) = this.waiting.as_mut() else {
            return Poll::Ready(None);
        };
        if let Poll::Ready(done) = fwd.as_mut().poll(cx) {
            this.waiting = None;
            return match done.result {
                Ok(attempted) => {
                    let client = this.client.clone();
                    let relay = RelayBody::start(attempted, client, Framing::EventStream);
                    Pin::new(this.relay.insert(relay.into_body())).poll_frame(cx)
                }
                Err(e) => {
                    this.client.record.mark_upstream_failure();
                    Poll::Ready(Some(Ok(Frame::data(Bytes::from(
                        e.sse_event(this.client.api),
                    )))))
                }
            };
        }
        if tick.poll_tick(cx).is_ready() {
            return Poll::Ready(Some(Ok(Frame::data(Bytes::from_static(b": ping\n\n")))));
        }
        Poll::Pending
    }

    fn is_end_stream(&self) -> bool {
        self.waiting.is_none() && self.relay.as_ref().is_none_or(|r| r.is_end_stream())
    }
}
