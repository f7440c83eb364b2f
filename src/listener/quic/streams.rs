//! The QUIC side of h3 for the server: h3's transport traits over quinn,
//! like `h3-quinn`, plus what h3 0.0.8 does not surface — the moment the
//! client stops a request stream (STOP_SENDING) — so a request whose client
//! went away is cancelled, and a `stop_sending` that is safe at any time.
//!
//! Accepted request streams register their send side's [`quinn::SendStream::stopped`]
//! future under the stream id; the request task takes it with
//! [`Stops::take`]. A stream's entry goes when its send half is dropped.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{ready, Context, Poll};

use bytes::{Buf, Bytes};
use futures_util::future::BoxFuture;
use futures_util::FutureExt;
use h3::error::Code;
use h3::quic::{self, ConnectionErrorIncoming, StreamErrorIncoming, StreamId, WriteBuf};
use quinn::VarInt;

/// Resolves when the client stops the stream (or the connection is lost);
/// never when the stream ends normally.
pub type Stopped = BoxFuture<'static, ()>;

/// The request streams' stop signals, by stream id.
#[derive(Default)]
pub struct Stops(Mutex<HashMap<u64, Stopped>>);

impl Stops {
    /// The stop signal of request stream `id` (once).
    pub fn take(&self, id: StreamId) -> Option<Stopped> {
        self.lock().remove(&id.into_inner())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Stopped>> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// The server's QUIC connection as h3 sees it.
pub struct Connection {
    conn: quinn::Connection,
    /// Client-initiated unidirectional streams (control, QPACK).
    uni: h3_quinn::Connection,
    accepting_bi: Option<
        BoxFuture<'static, Result<(quinn::SendStream, quinn::RecvStream), quinn::ConnectionError>>,
    >,
    opener: OpenStreams,
    stops: Arc<Stops>,
}

impl Connection {
    pub fn new(conn: quinn::Connection, stops: Arc<Stops>) -> Self {
        Connection {
            uni: h3_quinn::Connection::new(conn.clone()),
            opener: OpenStreams {
                conn: conn.clone(),
                opening: None,
            },
            conn,
            accepting_bi: None,
            stops,
        }
    }
}

fn connection_error(e: quinn::ConnectionError) -> ConnectionErrorIncoming {
    match e {
        quinn::ConnectionError::ApplicationClosed(close) => {
            ConnectionErrorIncoming::ApplicationClose {
                error_code: close.error_code.into_inner(),
            }
        }
        quinn::ConnectionError::TimedOut => ConnectionErrorIncoming::Timeout,
        e => ConnectionErrorIncoming::Undefined(Arc::new(e)),
    }
}

fn stream_error(e: quinn::ConnectionError) -> StreamErrorIncoming {
    StreamErrorIncoming::ConnectionErrorIncoming {
        connection_error: connection_error(e),
    }
}

impl<B: Buf> quic::Connection<B> for Connection {
    type RecvStream = h3_quinn::RecvStream;
    type OpenStreams = OpenStreams;

    fn poll_accept_recv(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Result<Self::RecvStream, ConnectionErrorIncoming>> {
        quic::Connection::<B>::poll_accept_recv(&mut self.uni, cx)
    }

    fn poll_accept_bidi(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Result<Self::BidiStream, ConnectionErrorIncoming>> {
        let accepting = self.accepting_bi.get_or_insert_with(|| {
            let conn = self.conn.clone();
            async move { conn.accept_bi().await }.boxed()
        });
        let accepted = ready!(accepting.poll_unpin(cx));
        self.accepting_bi = None;
        let (send, recv) = accepted.map_err(connection_error)?;
        let id = u64::from(send.id());
        let stopped = send.stopped();
        self.stops.lock().insert(
            id,
            async move {
                // `Ok(None)`: the response was delivered and acknowledged.
                if let Ok(None) = stopped.await {
                    std::future::pending::<()>().await;
                }
            }
            .boxed(),
        );
        Poll::Ready(Ok(BidiStream {
            send: SendStream::new(send, Some(self.stops.clone())),
            recv: RecvStream { stream: recv },
        }))
    }

    fn opener(&self) -> Self::OpenStreams {
        OpenStreams {
            conn: self.conn.clone(),
            opening: None,
        }
    }
}

impl<B: Buf> quic::OpenStreams<B> for Connection {
    type SendStream = SendStream<B>;
    type BidiStream = BidiStream<B>;

    fn poll_open_bidi(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Result<Self::BidiStream, StreamErrorIncoming>> {
        self.opener.poll_open_bidi(cx)
    }

    fn poll_open_send(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Result<Self::SendStream, StreamErrorIncoming>> {
        self.opener.poll_open_send(cx)
    }

    fn close(&mut self, code: Code, reason: &[u8]) {
        close(&self.conn, code, reason);
    }
}

fn close(conn: &quinn::Connection, code: Code, reason: &[u8]) {
    conn.close(
        VarInt::from_u64(code.value()).unwrap_or(VarInt::MAX),
        reason,
    );
}

/// Opens the server's unidirectional streams (control, QPACK).
pub struct OpenStreams {
    conn: quinn::Connection,
    opening: Option<BoxFuture<'static, Result<quinn::SendStream, quinn::ConnectionError>>>,
}

impl<B: Buf> quic::OpenStreams<B> for OpenStreams {
    type SendStream = SendStream<B>;
    type BidiStream = BidiStream<B>;

    fn poll_open_bidi(
        &mut self,
        _cx: &mut Context<'_>,
    ) -> Poll<Result<Self::BidiStream, StreamErrorIncoming>> {
        // An HTTP/3 server never opens a bidirectional stream (RFC 9114 §6.1).
        Poll::Ready(Err(StreamErrorIncoming::Unknown(
            "a server does not open request streams".into(),
        )))
    }

    fn poll_open_send(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Result<Self::SendStream, StreamErrorIncoming>> {
        let opening = self.opening.get_or_insert_with(|| {
            let conn = self.conn.clone();
            async move { conn.open_uni().await }.boxed()
        });
        let opened = ready!(opening.poll_unpin(cx));
        self.opening = None;
        Poll::Ready(Ok(SendStream::new(opened.map_err(stream_error)?, None)))
    }

    fn close(&mut self, code: Code, reason: &[u8]) {
        close(&self.conn, code, reason);
    }
}

impl Clone for OpenStreams {
    fn clone(&self) -> Self {
        OpenStreams {
            conn: self.conn.clone(),
            opening: None,
        }
    }
}

/// The sending half of a stream.
pub struct SendStream<B: Buf> {
    stream: quinn::SendStream,
    writing: Option<WriteBuf<B>>,
    /// Where a request stream's stop signal is registered (removed on drop).
    stops: Option<Arc<Stops>>,
}

impl<B: Buf> SendStream<B> {
    fn new(stream: quinn::SendStream, stops: Option<Arc<Stops>>) -> Self {
        SendStream {
            stream,
            writing: None,
            stops,
        }
    }
}

impl<B: Buf> Drop for SendStream<B> {
    fn drop(&mut self) {
        if let Some(stops) = &self.stops {
            stops.lock().remove(&u64::from(self.stream.id()));
        }
    }
}

fn write_error(e: quinn::WriteError) -> StreamErrorIncoming {
    match e {
        quinn::WriteError::Stopped(code) => StreamErrorIncoming::StreamTerminated {
            error_code: code.into_inner(),
        },
        quinn::WriteError::ConnectionLost(e) => stream_error(e),
        e => StreamErrorIncoming::Unknown(Box::new(e)),
    }
}

fn id(stream: quinn::StreamId) -> StreamId {
    // An invariant, not input: quinn's stream ids are QUIC varints (< 2^62),
    // which is exactly the range h3's ids hold.
    #[allow(clippy::expect_used)]
    StreamId::try_from(u64::from(stream)).expect("a QUIC stream id is a varint")
}

impl<B: Buf> quic::SendStream<B> for SendStream<B> {
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), StreamErrorIncoming>> {
        if let Some(data) = self.writing.as_mut() {
            while data.has_remaining() {
                let written = ready!(Pin::new(&mut self.stream).poll_write(cx, data.chunk()))
                    .map_err(write_error)?;
                data.advance(written);
            }
        }
        self.writing = None;
        Poll::Ready(Ok(()))
    }

    fn send_data<T: Into<WriteBuf<B>>>(&mut self, data: T) -> Result<(), StreamErrorIncoming> {
        if self.writing.is_some() {
            return Err(StreamErrorIncoming::ConnectionErrorIncoming {
                connection_error: ConnectionErrorIncoming::InternalError(
                    "send_data while a write is pending".into(),
                ),
            });
        }
        self.writing = Some(data.into());
        Ok(())
    }

    fn poll_finish(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), StreamErrorIncoming>> {
        Poll::Ready(
            self.stream
                .finish()
                .map_err(|e| StreamErrorIncoming::Unknown(Box::new(e))),
        )
    }

    fn reset(&mut self, code: u64) {
        let _ = self
            .stream
            .reset(VarInt::from_u64(code).unwrap_or(VarInt::MAX));
    }

    fn send_id(&self) -> StreamId {
        id(self.stream.id())
    }
}

/// The receiving half of a request stream. Unlike h3-quinn's, stopping it
/// is safe while a read is pending (the read is made afresh on each poll:
/// quinn's `read_chunk` is cancel-safe).
pub struct RecvStream {
    stream: quinn::RecvStream,
}

impl quic::RecvStream for RecvStream {
    type Buf = Bytes;

    fn poll_data(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Result<Option<Bytes>, StreamErrorIncoming>> {
        let read = std::pin::pin!(self.stream.read_chunk(usize::MAX, true));
        match ready!(read.poll(cx)) {
            Ok(chunk) => Poll::Ready(Ok(chunk.map(|c| c.bytes))),
            Err(quinn::ReadError::Reset(code)) => {
                Poll::Ready(Err(StreamErrorIncoming::StreamTerminated {
                    error_code: code.into_inner(),
                }))
            }
            Err(quinn::ReadError::ConnectionLost(e)) => Poll::Ready(Err(stream_error(e))),
            Err(e) => Poll::Ready(Err(StreamErrorIncoming::Unknown(Box::new(e)))),
        }
    }

    fn stop_sending(&mut self, code: u64) {
        let _ = self
            .stream
            .stop(VarInt::from_u64(code).unwrap_or(VarInt::MAX));
    }

    fn recv_id(&self) -> StreamId {
        id(self.stream.id())
    }
}

/// A request stream: both halves.
pub struct BidiStream<B: Buf> {
    send: SendStream<B>,
    recv: RecvStream,
}

impl<B: Buf> quic::BidiStream<B> for BidiStream<B> {
    type SendStream = SendStream<B>;
    type RecvStream = RecvStream;

    fn split(self) -> (SendStream<B>, RecvStream) {
        (self.send, self.recv)
    }
}

impl<B: Buf> quic::RecvStream for BidiStream<B> {
    type Buf = Bytes;

    fn poll_data(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<Result<Option<Bytes>, StreamErrorIncoming>> {
        self.recv.poll_data(cx)
    }

    fn stop_sending(&mut self, code: u64) {
        self.recv.stop_sending(code);
    }

    fn recv_id(&self) -> StreamId {
        self.recv.recv_id()
    }
}

impl<B: Buf> quic::SendStream<B> for BidiStream<B> {
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), StreamErrorIncoming>> {
        self.send.poll_ready(cx)
    }

    fn send_data<T: Into<WriteBuf<B>>>(&mut self, data: T) -> Result<(), StreamErrorIncoming> {
        self.send.send_data(data)
    }

    fn poll_finish(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), StreamErrorIncoming>> {
        self.send.poll_finish(cx)
    }

    fn reset(&mut self, code: u64) {
        self.send.reset(code);
    }

    fn send_id(&self) -> StreamId {
        self.send.send_id()
    }
}
