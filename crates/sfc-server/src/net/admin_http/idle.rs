//! The admin connections being served, each busy (a request in progress, its response
//! not yet all written) or idle (waiting for a request head) since when, so that a full
//! listener makes room for a new connection by closing the one idle longest instead of
//! refusing the newcomer. Without it, whoever holds all [`super::listen::MAX_CONNECTIONS`]
//! (a local user with 8 loopback addresses, 32 connections each, one `/healthz` every
//! 19 s to stay under the head time-out) locks the operator out for as long as they
//! like; with it the operator's connection closes one of theirs. A request waiting out
//! the verdict delay of a blocked address counts as idle after the idle ones: otherwise a
//! guesser could keep every place busy with wrong tokens, 2 s each.

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::Poll;
use std::time::Instant;
use tokio::sync::Notify;

/// One connection's state.
#[derive(Debug)]
struct Tracked {
    /// Requests in progress (HTTP/1: at most one, but counted to be safe).
    busy: usize,
    /// Since when it has had no request in progress (`None`: busy).
    idle_since: Option<Instant>,
    /// Since when its request has been waiting out the verdict delay of a blocked
    /// address, or for a body the client has not sent ([`Refusable::delayed`]): as good
    /// as idle.
    delayed_since: Option<Instant>,
    /// Told to close (not chosen again).
    closing: bool,
    close: Arc<Notify>,
}

/// The connections being served (see the module documentation).
#[derive(Debug, Default)]
pub(crate) struct Connections {
    table: Mutex<HashMap<u64, Tracked>>,
    next_id: AtomicU64,
}

impl Connections {
    fn table(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Tracked>> {
        self.table.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Changes connection `id`'s state, if it is still tracked.
    fn update(&self, id: u64, change: impl FnOnce(&mut Tracked)) {
        if let Some(tracked) = self.table().get_mut(&id) {
            change(tracked);
        }
    }

    /// Starts tracking a connection, idle from `now` (it has sent nothing yet).
    pub(crate) fn register(self: &Arc<Self>, now: Instant) -> Connection {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let close = Arc::new(Notify::new());
        self.table().insert(
            id,
            Tracked {
                busy: 0,
                idle_since: Some(now),
                delayed_since: None,
                closing: false,
                close: Arc::clone(&close),
            },
        );
        Connection {
            handle: Handle {
                id,
                connections: Arc::clone(self),
            },
            close,
        }
    }

    /// Tells the connection idle longest to close, or else the one delayed longest
    /// ([`Refusable::delayed`]: a guesser who keeps every place busy with wrong tokens, or
    /// with bodies it never sends, does not keep the operator out); the connection is
    /// dropped at once (`listen.rs`). False when every connection is busy otherwise or
    /// already closing.
    pub(crate) fn close_longest_idle(&self) -> bool {
        let mut table = self.table();
        let longest = table
            .values_mut()
            .filter(|tracked| !tracked.closing)
            // Idle (no request in progress: `busy` 0) before delayed.
            .filter_map(|tracked| {
                let rank = match (tracked.idle_since, tracked.delayed_since) {
                    (Some(since), _) => (false, since),
                    (None, Some(since)) => (true, since),
                    (None, None) => return None,
                };
                Some((rank, tracked))
            })
            .min_by_key(|(rank, _)| *rank);
        match longest {
            Some((_, tracked)) => {
                tracked.closing = true;
                // Kept if the connection is not waiting yet: it sees it when it does.
                tracked.close.notify_one();
                true
            }
            None => false,
        }
    }
}

/// One connection's entry in its [`Connections`].
#[derive(Clone, Debug)]
struct Handle {
    id: u64,
    connections: Arc<Connections>,
}

impl Handle {
    fn update(&self, change: impl FnOnce(&mut Tracked)) {
        self.connections.update(self.id, change);
    }
}

/// A tracked connection; untracked when dropped.
#[derive(Debug)]
pub(crate) struct Connection {
    handle: Handle,
    /// Notified when the listener wants this connection closed.
    pub(crate) close: Arc<Notify>,
}

impl Connection {
    /// Marks a request in progress until the returned guard is dropped (with the
    /// response's body: [`TrackedBody`]); the [`Refusable`] goes into the request.
    pub(crate) fn request_started(&self) -> (InProgress, Refusable) {
        self.handle.update(|tracked| {
            tracked.busy += 1;
            tracked.idle_since = None;
        });
        (
            InProgress(self.handle.clone()),
            Refusable(self.handle.clone()),
        )
    }
}

impl Drop for Connection {
    fn drop(&mut self) {
        self.handle.connections.table().remove(&self.handle.id);
    }
}

/// A request's handle on its connection, for the waits that make it as good as idle: a
/// blocked address's verdict ([`super::access::wait_if_blocked`]), a body not sent yet.
#[derive(Clone, Debug)]
pub(crate) struct Refusable(Handle);

impl Refusable {
    /// Until the returned guard is dropped, the connection may be closed for a newcomer
    /// as if it were idle (after those that are).
    pub(crate) fn delayed(&self) -> Delayed {
        self.0
            .update(|tracked| tracked.delayed_since = Some(Instant::now()));
        Delayed(self.0.clone())
    }
}

/// See [`Refusable::delayed`].
#[derive(Debug)]
pub(crate) struct Delayed(Handle);

impl Drop for Delayed {
    fn drop(&mut self) {
        self.0.update(|tracked| tracked.delayed_since = None);
    }
}

/// A request in progress on a tracked connection.
#[derive(Debug)]
pub(crate) struct InProgress(Handle);

impl Drop for InProgress {
    fn drop(&mut self) {
        self.0.update(|tracked| {
            tracked.busy = tracked.busy.saturating_sub(1);
            if tracked.busy == 0 {
                tracked.idle_since = Some(Instant::now());
            }
        });
    }
}

/// A response body that keeps its request marked in progress until hyper is done with
/// it (all written, or the connection gone).
pub(crate) struct TrackedBody {
    inner: axum::body::Body,
    _request: InProgress,
}

impl TrackedBody {
    pub(crate) fn new(inner: axum::body::Body, request: InProgress) -> Self {
        TrackedBody {
            inner,
            _request: request,
        }
    }
}

impl hyper::body::Body for TrackedBody {
    type Data = bytes::Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> Poll<Option<Result<hyper::body::Frame<Self::Data>, Self::Error>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_util::FutureExt;
    use std::time::Duration;

    #[test]
    fn the_connection_idle_longest_is_closed_and_busy_ones_never() {
        let connections = Arc::new(Connections::default());
        let start = Instant::now();
        let oldest = connections.register(start);
        let busy = connections.register(start - Duration::from_secs(60));
        let (request, _) = busy.request_started();
        let newer = connections.register(start + Duration::from_secs(1));
        assert!(connections.close_longest_idle());
        // `oldest` was told (its permit is stored), `newer` not yet.
        assert!(oldest.close.notified().now_or_never().is_some());
        assert!(newer.close.notified().now_or_never().is_none());
        assert!(connections.close_longest_idle(), "then the next idle one");
        assert!(newer.close.notified().now_or_never().is_some());
        assert!(!connections.close_longest_idle(), "the busy one stays");
        drop(request);
        assert!(
            connections.close_longest_idle(),
            "idle once its response is done"
        );
        drop((oldest, busy, newer));
        assert!(connections.table().is_empty());
    }

    #[test]
    fn a_request_waiting_out_a_blocked_verdict_is_closed_after_the_idle_ones() {
        let connections = Arc::new(Connections::default());
        let start = Instant::now();
        let waiting = connections.register(start);
        let (_request, refusable) = waiting.request_started();
        let idle = connections.register(start + Duration::from_secs(1));
        let delayed = refusable.delayed();
        assert!(connections.close_longest_idle());
        assert!(idle.close.notified().now_or_never().is_some(), "idle first");
        assert!(connections.close_longest_idle(), "then the delayed one");
        assert!(waiting.close.notified().now_or_never().is_some());
        drop(delayed);
        let other = connections.register(start);
        let (_other_request, other_refusable) = other.request_started();
        drop(other_refusable.delayed());
        assert!(!connections.close_longest_idle(), "busy once answered");
    }
}
