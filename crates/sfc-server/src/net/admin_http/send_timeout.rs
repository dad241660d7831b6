//! A time limit on writes that make no progress: an admin connection whose client takes
//! none of a response for [`AdminConfig::send_timeout`](crate::config::AdminConfig) fails
//! its write, and hyper closes it. Reads are timed elsewhere (the request head by hyper,
//! the body by `TimedBody`); without this, a client that asked for a large download and
//! stopped reading held its connection, its slot of the per-address cap and the reader
//! on the blocking pool for ever. The limit is on the stall, not on the response: a slow
//! client that keeps reading is never cut (like nginx's `send_timeout`). Progress is the
//! socket taking more bytes, which Linux reports once about a third of its send buffer is
//! free: a client must take that much (at most a few MiB) within the limit.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Sleep};

/// `inner` with its writes (and flushes, and the TLS close) failing once one has been
/// pending for `limit` without the socket taking a byte.
pub(super) struct SendTimeout<T> {
    inner: T,
    limit: Duration,
    peer: SocketAddr,
    /// Armed when a write first returns `Pending`, disarmed by any write that completes.
    stall: Pin<Box<Sleep>>,
    stalled: bool,
}

impl<T> SendTimeout<T> {
    pub(super) fn new(inner: T, limit: Duration, peer: SocketAddr) -> Self {
        SendTimeout {
            inner,
            limit,
            peer,
            stall: Box::pin(tokio::time::sleep(limit)),
            stalled: false,
        }
    }

    /// Passes on a finished write and disarms the timer; on a pending one, arms the timer
    /// if it is not armed and fails the write once it has run out.
    fn watch<R>(
        &mut self,
        write: Poll<io::Result<R>>,
        cx: &mut Context<'_>,
    ) -> Poll<io::Result<R>> {
        if write.is_ready() {
            self.stalled = false;
            return write;
        }
        if !self.stalled {
            self.stalled = true;
            self.stall.as_mut().reset(Instant::now() + self.limit);
        }
        match self.stall.as_mut().poll(cx) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(()) => {
                tracing::info!(
                    peer = %self.peer,
                    seconds = self.limit.as_secs(),
                    "admin connection closed: the client took none of its response in time"
                );
                Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "the client took none of the response in time",
                )))
            }
        }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for SendTimeout<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for SendTimeout<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let write = Pin::new(&mut self.inner).poll_write(cx, buf);
        self.watch(write, cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let write = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        self.watch(write, cx)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let flush = Pin::new(&mut self.inner).poll_flush(cx);
        self.watch(flush, cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let shutdown = Pin::new(&mut self.inner).poll_shutdown(cx);
        self.watch(shutdown, cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;

    fn peer() -> SocketAddr {
        "127.0.0.1:1".parse().unwrap()
    }

    /// A writer whose reader never reads fails after the limit, and not before; one
    /// whose reader takes a little now and then, each time within the limit, never
    /// fails, however long the whole takes.
    #[tokio::test(start_paused = true)]
    async fn a_stalled_write_fails_at_the_limit_and_a_slow_one_never() {
        let limit = Duration::from_secs(60);
        let (writer, _reader_never_read) = tokio::io::duplex(1024);
        let mut stalled = SendTimeout::new(writer, limit, peer());
        let started = Instant::now();
        let error = stalled.write_all(&[0u8; 4096]).await.unwrap_err();
        assert_eq!(error.kind(), io::ErrorKind::TimedOut);
        assert_eq!(started.elapsed(), limit);

        let (writer, mut reader) = tokio::io::duplex(1024);
        let mut slow = SendTimeout::new(writer, limit, peer());
        let drain = tokio::spawn(async move {
            use tokio::io::AsyncReadExt;
            let mut taken = 0;
            let mut buf = [0u8; 512];
            loop {
                tokio::time::sleep(limit - Duration::from_secs(1)).await;
                match reader.read(&mut buf).await.unwrap() {
                    0 => return taken,
                    n => taken += n,
                }
            }
        });
        let started = Instant::now();
        slow.write_all(&[0u8; 8192]).await.unwrap();
        slow.shutdown().await.unwrap();
        assert!(started.elapsed() > limit * 10, "{:?}", started.elapsed());
        assert_eq!(drain.await.unwrap(), 8192);
    }
}
