//! The admin socket: binding (the token, the TLS files), accepting plain TCP or TLS
//! connections (each TLS handshake its own task, bounded in time and in number, overall
//! and per address), and serving each connection with hyper under time limits (the
//! request head, the body, a response the client stops taking) until shutdown.

use super::auth::{self, Sessions};
use super::idle;
use super::login_limit::FailedLogins;
use super::send_timeout::SendTimeout;
use super::{host, router, AdminState, Peer, Shared};
use crate::config::AdminConfig;
use crate::net::accept_errors::AcceptErrors;
use crate::net::address_limit::{AddressSlot, ConnectionsPerAddress};
use crate::net::log_throttle::SharedLine;
use crate::net::monitor::Monitor;
use crate::session::Core;
use anyhow::Context;
use axum::extract::ConnectInfo;
use std::collections::{HashSet, VecDeque};
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::{AbortHandle, JoinSet};

/// A TLS handshake on the admin listener must finish within this time.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// TLS handshakes under way at once; connections beyond are closed at once, so a flood
/// of silent connections costs at most this many tasks (each gone within the time-out).
const MAX_HANDSHAKES: usize = 64;
/// TLS handshakes under way at once from one address (IPv6: one /64). Without it one
/// address that opens 64 silent connections every 10 s holds every handshake slot and
/// locks everyone (the operator too) out; with it that takes 8 addresses. 8 is above the
/// 6 connections a browser opens to one host at once.
pub(crate) const MAX_HANDSHAKES_PER_ADDRESS: usize = 8;
/// Admin connections open at once (TLS handshakes included); connections beyond are
/// closed at once. Bounds the descriptors, tasks and buffers the admin listener can take
/// from the process (whose descriptor limit the protocol listener shares); an operator's
/// browser needs 6, a scraper 1.
pub(crate) const MAX_CONNECTIONS: usize = 256;
/// Admin connections open at once from one address (IPv6: one /64), so that one
/// address cannot take all [`MAX_CONNECTIONS`]: room for a few browser tabs and scripts.
pub const MAX_CONNECTIONS_PER_ADDRESS: usize = 32;
/// A request's head (request line and headers) must arrive within this time from the
/// moment the server starts waiting for it: at the connection's start, and again after
/// each response, so it is also the keep-alive idle time-out (hyper restarts the timer
/// as soon as a response is written; a separate, longer idle limit would never fire).
/// A browser sends a head in one packet; 20 s leaves room for a slow link and closes a
/// silent or trickling ("slowloris") connection. Responses are not timed as a whole (a
/// download of a large stored file may take as long as it takes), only while the client
/// takes none of them ([`AdminConfig::send_timeout`]).
pub(crate) const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(20);

/// Largest request head (start line and headers) read: the admin's requests carry a
/// cookie or a bearer token and little else; a longer head gets 431 and the connection
/// is closed. (hyper's default lets each connection buffer ~400 KiB, about 100 MiB over
/// the 256 connections, before anyone has logged in.)
pub(crate) const MAX_HEADER_BYTES: usize = 16 * 1024;

/// Most bytes a connection buffers from its socket (hyper's minimum is 8 KiB).
const MAX_READ_BUFFER: usize = 32 * 1024;
/// A request's body (the admin forms: a few hundred bytes) must arrive within this time
/// after its head; otherwise the handler reading it gets an error. Without it a client
/// that announces a body and never sends it would hold its connection for ever.
pub(crate) const BODY_READ_TIMEOUT: Duration = Duration::from_secs(30);

/// Why the admin listener closed a connection before serving it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Refused {
    /// [`MAX_CONNECTIONS_PER_ADDRESS`] open from its address.
    FromAddress,
    /// [`MAX_HANDSHAKES_PER_ADDRESS`] under way from its address.
    HandshakesFromAddress,
    /// [`MAX_HANDSHAKES`] under way, none to abort.
    Handshakes,
    /// [`MAX_CONNECTIONS`] open, none idle.
    Connections,
    /// Its TLS handshake failed or timed out.
    HandshakeFailed,
}

impl Refused {
    const ALL: [Refused; 5] = [
        Refused::FromAddress,
        Refused::HandshakesFromAddress,
        Refused::Handshakes,
        Refused::Connections,
        Refused::HandshakeFailed,
    ];

    fn what(self) -> &'static str {
        match self {
            Refused::FromAddress => "too many connections from one address",
            Refused::HandshakesFromAddress => "too many TLS handshakes under way from one address",
            Refused::Handshakes => "too many TLS handshakes under way",
            Refused::Connections => "too many connections open",
            Refused::HandshakeFailed => "TLS handshake failed",
        }
    }
}

/// The log lines of [`Refused`]: at most one per kind per [`super::LOG_EVERY`], with the
/// number since the last line, as the protocol listener's refusals. A peer that connects
/// in a loop (or sends a byte of garbage to a TLS listener each time) would otherwise
/// write a line per connection, at INFO, the default level.
#[derive(Debug)]
struct RefusalLines {
    lines: [SharedLine; Refused::ALL.len()],
}

impl RefusalLines {
    fn new() -> Self {
        RefusalLines {
            lines: std::array::from_fn(|_| SharedLine::new(super::LOG_EVERY)),
        }
    }

    fn line(&self, kind: Refused) -> Option<&SharedLine> {
        // `ALL` lists the kinds in their declared order.
        self.lines.get(kind as usize)
    }

    /// Counts one refusal of `peer`; logs it when a line is due (`reason`: what went
    /// wrong, for a failed handshake).
    fn refused(&self, kind: Refused, peer: SocketAddr, reason: Option<&str>) {
        let Some(refused) = self.line(kind).and_then(SharedLine::count) else {
            return;
        };
        let what = kind.what();
        match reason {
            Some(reason) => {
                tracing::info!(%peer, reason, refused, "admin listener: {what}; connection closed")
            }
            None => tracing::info!(%peer, refused, "admin listener: {what}; connection closed"),
        }
    }

    /// Logs what the lines held back (see [`super::AdminState::flush_lines`]).
    fn flush(&self, all: bool) {
        for kind in Refused::ALL {
            if let Some(refused) = self.line(kind).and_then(|line| line.held_back(all)) {
                let what = kind.what();
                tracing::info!(refused, "admin listener: {refused} more connections closed since the last line ({what})");
            }
        }
    }
}

/// A byte stream: TCP or TLS over it.
pub trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

/// A connection ready for HTTP, with the places it holds in the per-address tables.
struct Accepted {
    io: Box<dyn Io>,
    peer: SocketAddr,
    slot: AddressSlot,
}

/// The admin socket, accepting plain TCP or TLS connections.
pub(crate) struct AdminListener {
    tcp: TcpListener,
    tls: Option<tokio_rustls::TlsAcceptor>,
    /// TLS handshakes under way, each its own task: a client that connects and sends
    /// nothing delays nobody else.
    handshakes: JoinSet<Option<Accepted>>,
    /// Their tasks, oldest first (finished ones dropped as they are met): when all
    /// [`MAX_HANDSHAKES`] places are taken, the oldest is aborted for a newcomer.
    handshake_order: VecDeque<AbortHandle>,
    /// Handshakes aborted whose tasks the set still holds (until `join_next` takes
    /// them): not counted as under way. By task: one that finished between the check and
    /// the abort comes back finished, not cancelled, and must leave this set too.
    handshakes_aborted: HashSet<tokio::task::Id>,
    /// Handshakes under way per address ([`MAX_HANDSHAKES_PER_ADDRESS`]).
    handshakes_per_address: Arc<ConnectionsPerAddress>,
    /// Open connections per address ([`MAX_CONNECTIONS_PER_ADDRESS`]).
    connections_per_address: Arc<ConnectionsPerAddress>,
    accept_errors: AcceptErrors,
    /// The refusals' log lines, shared with the handshake tasks.
    refusals: Arc<RefusalLines>,
}

impl std::fmt::Debug for AdminListener {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AdminListener")
            .field("addr", &self.tcp.local_addr().ok())
            .field("tls", &self.tls.is_some())
            .finish()
    }
}

impl AdminListener {
    fn new(tcp: TcpListener, tls: Option<tokio_rustls::TlsAcceptor>) -> Self {
        AdminListener {
            tcp,
            tls,
            handshakes: JoinSet::new(),
            handshake_order: VecDeque::new(),
            handshakes_aborted: HashSet::new(),
            handshakes_per_address: ConnectionsPerAddress::new(MAX_HANDSHAKES_PER_ADDRESS),
            connections_per_address: ConnectionsPerAddress::new(MAX_CONNECTIONS_PER_ADDRESS),
            accept_errors: AcceptErrors::new("admin listener"),
            refusals: Arc::new(RefusalLines::new()),
        }
    }

    /// Handshakes under way, not counting those aborted.
    fn handshakes_under_way(&self) -> usize {
        self.handshakes
            .len()
            .saturating_sub(self.handshakes_aborted.len())
    }

    /// Aborts the handshake under way longest (its task drops its connection and its
    /// places); false when none is.
    fn abort_oldest_handshake(&mut self) -> bool {
        while let Some(task) = self.handshake_order.pop_front() {
            if !task.is_finished() {
                task.abort();
                self.handshakes_aborted.insert(task.id());
                return true;
            }
        }
        false
    }

    /// The next connection ready for HTTP (plain at once, TLS once its handshake is
    /// done). `served`: connections being served now, counted against
    /// [`MAX_CONNECTIONS`] with the handshakes under way. Cancel-safe.
    async fn accept(&mut self, served: usize, tracked: &idle::Connections) -> Accepted {
        loop {
            tokio::select! {
                accepted = self.tcp.accept() => {
                    let (stream, peer) = match accepted {
                        Ok(accepted) => accepted,
                        Err(error) => {
                            if let Some(pause) = self.accept_errors.failed(&error, std::time::Instant::now()) {
                                tokio::time::sleep(pause).await;
                            }
                            continue;
                        }
                    };
                    // Refusals close the socket at once (dropped), before anything is read.
                    let Some(slot) = self.connections_per_address.enter(peer.ip()) else {
                        self.refusals.refused(Refused::FromAddress, peer, None);
                        continue;
                    };
                    let handshaking = match &self.tls {
                        None => None,
                        Some(_) => match self.handshakes_per_address.enter(peer.ip()) {
                            Some(handshaking) => Some(handshaking),
                            None => {
                                self.refusals.refused(Refused::HandshakesFromAddress, peer, None);
                                continue;
                            }
                        },
                    };
                    // All handshake places taken (by silent connections from several
                    // addresses): the one under way longest makes room, as an idle
                    // connection does below.
                    if handshaking.is_some()
                        && self.handshakes_under_way() >= MAX_HANDSHAKES
                        && !self.abort_oldest_handshake()
                    {
                        self.refusals.refused(Refused::Handshakes, peer, None);
                        continue;
                    }
                    // A full listener makes room for a newcomer it would serve by closing
                    // the connection idle longest (`idle.rs`); only when none is idle is
                    // the newcomer refused.
                    if served + self.handshakes_under_way() >= MAX_CONNECTIONS
                        && !tracked.close_longest_idle()
                    {
                        self.refusals.refused(Refused::Connections, peer, None);
                        continue;
                    }
                    let (Some(acceptor), Some(handshaking)) = (&self.tls, handshaking) else {
                        return Accepted { io: Box::new(stream), peer, slot };
                    };
                    let acceptor = acceptor.clone();
                    let refusals = Arc::clone(&self.refusals);
                    let handshake = self.handshakes.spawn(async move {
                        let result = crate::net::tls::handshake(&acceptor, stream, HANDSHAKE_TIMEOUT).await;
                        drop(handshaking);
                        match result {
                            Ok(tls) => Some(Accepted { io: Box::new(tls), peer, slot }),
                            Err(reason) => {
                                refusals.refused(Refused::HandshakeFailed, peer, Some(&reason.to_string()));
                                None
                            }
                        }
                    });
                    self.handshake_order.push_back(handshake);
                    if self.handshake_order.len() > 2 * MAX_HANDSHAKES {
                        self.handshake_order.retain(|task| !task.is_finished());
                    }
                }
                Some(done) = self.handshakes.join_next_with_id(), if !self.handshakes.is_empty() => {
                    let id = match &done {
                        Ok((id, _)) => *id,
                        Err(error) => error.id(),
                    };
                    self.handshakes_aborted.remove(&id);
                    if let Ok((_, Some(ready))) = done {
                        return ready;
                    }
                }
            }
        }
    }
}

/// The admin listener, bound and ready to serve.
#[derive(Debug)]
pub(crate) struct AdminServer {
    listener: AdminListener,
    state: Shared,
    send_timeout: Duration,
}

impl AdminServer {
    /// Reads (or creates) the token, loads the TLS files and binds.
    pub(crate) async fn bind(
        config: &AdminConfig,
        core: Arc<Core>,
        monitor: Arc<Monitor>,
    ) -> anyhow::Result<Self> {
        config.check().map_err(anyhow::Error::msg)?;
        let token = auth::load_or_create_token(&config.token_file)?;
        let tls = match &config.tls {
            Some(files) => Some(tokio_rustls::TlsAcceptor::from(
                crate::net::tls::server_config(files)?,
            )),
            None => None,
        };
        let tcp = TcpListener::bind(config.listen)
            .await
            .with_context(|| format!("cannot listen on --admin-listen {}", config.listen))?;
        let secure_cookie = tls.is_some();
        Ok(AdminServer {
            listener: AdminListener::new(tcp, tls),
            state: Arc::new(AdminState {
                core,
                monitor,
                token,
                sessions: Sessions::default(),
                failed_logins: FailedLogins::default(),
                secure_cookie,
                overview: Default::default(),
                readiness: Default::default(),
                refused_logins_logged: SharedLine::new(super::LOG_EVERY),
                failed_logins_logged: SharedLine::new(super::LOG_EVERY),
                hosts: host::AllowedHosts::new(&config.hosts),
            }),
            send_timeout: config.send_timeout,
        })
    }

    /// The address bound.
    pub(crate) fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.tcp.local_addr()
    }

    /// Serves until `stop` completes, then closes each connection at its next request
    /// boundary (a request in flight gets its response) and returns once all are closed.
    pub(crate) async fn serve(self, stop: impl Future<Output = ()> + Send + 'static) {
        let addr = self.local_addr().ok();
        let scheme = if self.listener.tls.is_some() {
            "https"
        } else {
            "http"
        };
        if let Some(addr) = addr {
            tracing::info!("admin listener on {scheme}://{addr}/");
        }
        let state = Arc::clone(&self.state);
        let app = router(self.state);
        let mut flush = tokio::time::interval(super::FLUSH_EVERY);
        flush.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let send_timeout = self.send_timeout;
        let mut listener = self.listener;
        let refusals = Arc::clone(&listener.refusals);
        // Owned here: when this task is aborted (the grace period is over), so are they.
        let mut connections = JoinSet::new();
        let tracked = Arc::new(idle::Connections::default());
        let (stopping, stop_rx) = watch::channel(false);
        tokio::pin!(stop);
        loop {
            tokio::select! {
                () = &mut stop => break,
                accepted = listener.accept(connections.len(), &tracked) => {
                    let tracker = tracked.register(std::time::Instant::now());
                    let monitor = Arc::clone(&state.monitor);
                    connections.spawn(serve_connection(accepted, tracker, app.clone(), monitor, send_timeout, stop_rx.clone()));
                }
                Some(_) = connections.join_next(), if !connections.is_empty() => {}
                _ = flush.tick() => {
                    state.flush_lines(false);
                    refusals.flush(false);
                }
            }
        }
        state.flush_lines(true);
        // No new connections; handshakes under way are dropped.
        drop(listener);
        refusals.flush(true);
        let _ = stopping.send(true);
        while connections.join_next().await.is_some() {}
        // Also what the connections' last requests added.
        state.flush_lines(true);
    }
}

/// Serves HTTP/1 on one connection until the client closes it, a time-out closes it, or
/// `stop` turns true (then at the next request boundary).
async fn serve_connection(
    accepted: Accepted,
    tracker: idle::Connection,
    app: axum::Router,
    monitor: Arc<Monitor>,
    send_timeout: Duration,
    mut stop: watch::Receiver<bool>,
) {
    let Accepted { io, peer, slot } = accepted;
    let io = SendTimeout::new(io, send_timeout, peer);
    let close = Arc::clone(&tracker.close);
    let tracker = Arc::new(tracker);
    let service =
        hyper::service::service_fn(move |request: hyper::Request<hyper::body::Incoming>| {
            let (in_progress, refusable) = tracker.request_started();
            let mut request =
                request.map(|body| axum::body::Body::new(TimedBody::new(body, refusable.clone())));
            // What the handlers' `ConnectInfo<Peer>` reads (the rate limits key on it).
            request.extensions_mut().insert(ConnectInfo(Peer(peer)));
            // What `access::wait_if_blocked` marks its wait on.
            request.extensions_mut().insert(refusable);
            // The router is always ready (no back-pressure), so no poll_ready first.
            let call = tower::Service::call(&mut app.clone(), request);
            async move {
                let response = call.await?;
                // Busy until hyper is done with the response's body.
                Ok::<_, std::convert::Infallible>(
                    response.map(|body| {
                        axum::body::Body::new(idle::TrackedBody::new(body, in_progress))
                    }),
                )
            }
        });
    let connection = hyper::server::conn::http1::Builder::new()
        .timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT)
        .max_header_size(MAX_HEADER_BYTES)
        .max_buf_size(MAX_READ_BUFFER)
        .serve_connection(hyper_util::rt::TokioIo::new(io), service);
    tokio::pin!(connection);
    enum End {
        Served(Result<(), hyper::Error>),
        Stop,
        MakeRoom,
    }
    let end = tokio::select! {
        result = connection.as_mut() => End::Served(result),
        _ = stop.wait_for(|stop| *stop) => End::Stop,
        () = close.notified() => End::MakeRoom,
    };
    let result = match end {
        End::Served(result) => result,
        End::Stop => {
            connection.as_mut().graceful_shutdown();
            connection.await
        }
        // The listener is full and this connection makes room: idle longest, or waiting
        // out a blocked address's verdict or a body that has not come. Closed now (the
        // connection dropped), not once its request is answered, so that the cap holds.
        End::MakeRoom => Ok(()),
    };
    if let Err(error) = result {
        // hyper answered it itself, without the router: counted here.
        if let Some(status) = automatic_response(&error) {
            monitor.admin_response(status);
        }
        tracing::debug!(%peer, %error, "admin connection closed");
    }
    drop(slot);
}

/// The status of the response hyper writes itself for a request head it cannot take
/// (before closing the connection), if any.
fn automatic_response(error: &hyper::Error) -> Option<u16> {
    if error.is_parse_too_large() {
        // One kind for both: the text tells them apart.
        Some(if error.to_string().contains("URI too long") {
            414
        } else {
            431
        })
    } else if error.is_parse() && !error.is_parse_status() && !error.is_parse_version_h2() {
        // (HTTP/2's preface gets no answer at all.)
        Some(400)
    } else {
        None
    }
}

/// A request body that fails once [`BODY_READ_TIMEOUT`] has passed since the request's
/// head arrived and the body is still not complete.
///
/// While it waits for the client, its connection counts as idle for a full listener
/// ([`idle::Refusable::delayed`]): a client that announces a body and sends none does not
/// hold its place against a newcomer.
struct TimedBody {
    inner: hyper::body::Incoming,
    deadline: Pin<Box<tokio::time::Sleep>>,
    connection: idle::Refusable,
    /// Set while the body is awaited.
    waiting: Option<idle::Delayed>,
}

impl TimedBody {
    fn new(inner: hyper::body::Incoming, connection: idle::Refusable) -> Self {
        TimedBody {
            inner,
            deadline: Box::pin(tokio::time::sleep(BODY_READ_TIMEOUT)),
            connection,
            waiting: None,
        }
    }
}

impl hyper::body::Body for TimedBody {
    type Data = bytes::Bytes;
    type Error = axum::BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> Poll<Option<Result<hyper::body::Frame<Self::Data>, Self::Error>>> {
        if let Poll::Ready(frame) = Pin::new(&mut self.inner).poll_frame(cx) {
            self.waiting = None;
            return Poll::Ready(frame.map(|frame| frame.map_err(Into::into)));
        }
        if self.waiting.is_none() {
            self.waiting = Some(self.connection.delayed());
        }
        match self.deadline.as_mut().poll(cx) {
            Poll::Ready(()) => Poll::Ready(Some(Err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                "request body not received in time",
            )
            .into()))),
            Poll::Pending => Poll::Pending,
        }
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

    /// A handshake that ends in the moment it is aborted (the oldest, near its time-out,
    /// on another worker) comes back finished, not cancelled: it must stop counting as
    /// aborted all the same, or every such race takes one handshake place from the count
    /// for good (and the caps stop holding).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_handshake_that_ends_as_it_is_aborted_leaves_the_count_right() {
        let tcp = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let mut listener = AdminListener::new(tcp, None);
        let (started_tx, started_rx) = std::sync::mpsc::channel();
        // Busy in its last poll when the abort comes.
        let ending = listener.handshakes.spawn(async move {
            started_tx.send(()).unwrap();
            std::thread::sleep(Duration::from_millis(300));
            None
        });
        let waiting = listener.handshakes.spawn(std::future::pending());
        listener.handshake_order.extend([ending, waiting]);
        started_rx.recv().unwrap();
        assert!(listener.abort_oldest_handshake());
        assert_eq!(listener.handshakes_under_way(), 1);
        // The listener takes the ended task in (no connection comes meanwhile).
        let tracked = idle::Connections::default();
        let accepting = listener.accept(0, &tracked);
        let _ = tokio::time::timeout(Duration::from_millis(800), accepting).await;
        assert_eq!(listener.handshakes.len(), 1);
        assert_eq!(listener.handshakes_under_way(), 1, "the one still waiting");
    }
}
