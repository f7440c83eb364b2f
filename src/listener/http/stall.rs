//! A client that stops reading: bounded by `[http] write_timeout` at two
//! levels. The connection's writes ([`WriteTimeout`]): when the client reads
//! nothing at all, its TCP window fills and writes stop making progress.
//! One HTTP/2 stream ([`StreamExecutor`]): a client can keep reading its
//! connection while never opening one stream's flow-control window; hyper
//! then stops asking that stream's body for data, and the stream task is
//! ended. Either way the response body, and with it the upstream request,
//! is dropped.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Sleep};
use tokio_util::task::TaskTracker;

/// The connection's I/O, failing a write that makes no progress for
/// `timeout` (the client stopped reading and its window is full), which
/// ends the connection and every request on it.
pub(super) struct WriteTimeout<T> {
    io: T,
    timeout: Duration,
    /// Armed while a write or flush is pending.
    stalled: Option<Pin<Box<Sleep>>>,
}

impl<T> WriteTimeout<T> {
    pub(super) fn new(io: T, timeout: Duration) -> Self {
        WriteTimeout {
            io,
            timeout,
            stalled: None,
        }
    }

    /// Passes `poll` through, timing how long it stays pending.
    fn watch<R>(&mut self, cx: &mut Context<'_>, poll: Poll<io::Result<R>>) -> Poll<io::Result<R>> {
        if poll.is_ready() {
            self.stalled = None;
            return poll;
        }
        let timeout = self.timeout;
        let timer = self
            .stalled
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(timeout)));
        if timer.as_mut().poll(cx).is_ready() {
            return Poll::Ready(Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "the client stopped reading (write_timeout)",
            )));
        }
        Poll::Pending
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for WriteTimeout<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for WriteTimeout<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let poll = Pin::new(&mut self.io).poll_write(cx, buf);
        self.watch(cx, poll)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let poll = Pin::new(&mut self.io).poll_write_vectored(cx, bufs);
        self.watch(cx, poll)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let poll = Pin::new(&mut self.io).poll_flush(cx);
        self.watch(cx, poll)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let poll = Pin::new(&mut self.io).poll_shutdown(cx);
        self.watch(cx, poll)
    }
}

tokio::task_local! {
    /// The progress of the HTTP/2 stream whose task is running.
    static STREAM: Arc<StreamProgress>;
}

/// Whether a stream's response body handed hyper a frame that hyper has not
/// followed up by asking for the next one, and since when.
#[derive(Debug)]
pub(super) struct StreamProgress {
    base: Instant,
    /// Nanoseconds after `base` plus one; 0 while not waiting.
    waiting_since: AtomicU64,
}

impl StreamProgress {
    fn new(base: Instant) -> Self {
        StreamProgress {
            base,
            waiting_since: AtomicU64::new(0),
        }
    }

    /// Around a response body's `poll_frame` on an HTTP/2 stream (a no-op
    /// elsewhere): asking resets the wait; a delivered frame starts it.
    pub(super) fn observe<T, E>(poll: &Poll<Option<Result<T, E>>>) {
        let _ = STREAM.try_with(|p| {
            let since = match poll {
                Poll::Ready(Some(Ok(_))) => {
                    let nanos = p.base.elapsed().as_nanos();
                    u64::try_from(nanos).unwrap_or(u64::MAX - 1) + 1
                }
                _ => 0,
            };
            p.waiting_since.store(since, Ordering::Relaxed);
        });
    }

    fn waiting_since(&self) -> Option<Instant> {
        match self.waiting_since.load(Ordering::Relaxed) {
            0 => None,
            n => Some(self.base + Duration::from_nanos(n - 1)),
        }
    }

    /// Resolves once a delivered frame has waited `timeout` for hyper to
    /// ask for the next one.
    async fn stalled(&self, timeout: Duration) {
        loop {
            match self.waiting_since() {
                Some(since) if since.elapsed() >= timeout => return,
                Some(since) => tokio::time::sleep_until(since + timeout).await,
                None => tokio::time::sleep(timeout).await,
            }
        }
    }
}

/// Runs hyper's HTTP/2 stream tasks, tracked for shutdown, each ended when
/// its client stops taking its data for `write_timeout`.
#[derive(Clone, Debug)]
pub(super) struct StreamExecutor {
    pub tracker: TaskTracker,
    pub write_timeout: Duration,
}

impl<F> hyper::rt::Executor<F> for StreamExecutor
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    fn execute(&self, fut: F) {
        let progress = Arc::new(StreamProgress::new(Instant::now()));
        let timeout = self.write_timeout;
        self.tracker
            .spawn(STREAM.scope(progress.clone(), async move {
                tokio::select! {
                    _ = fut => {}
                    _ = progress.stalled(timeout) => {
                        tracing::debug!("an HTTP/2 stream's client stopped reading it; ending the stream");
                    }
                }
            }));
    }
}
