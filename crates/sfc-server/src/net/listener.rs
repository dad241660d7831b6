//! The accept loop, the connection limit, housekeeping and graceful shutdown; and
//! [`RunningServer`], a server on its own thread for tests and embedding.
//!
//! Shutdown: stop accepting, tell every connection to close at its next request boundary
//! (a request in flight finishes and gets its reply), wait up to `shutdown_grace`, then
//! abort what is left (an upload cut short removes its temporary file), persist the
//! LastSeen notes and close the database.

use crate::config::ServerConfig;
use crate::net::address_limit::ConnectionsPerAddress;
use crate::net::admin_http::AdminServer;
use crate::net::connection::{self, ConnLimits};
use crate::net::entropy::OsEntropy;
use crate::net::guards::AddressGuards;
use crate::net::monitor::Monitor;
use crate::net::proxy_protocol;
use crate::net::rate_limit::RateLimiter;
use crate::net::refusals::{Refusal, RefusalLog, REFUSAL_LOG_INTERVAL};
use crate::session::Core;
use crate::storage::fs::DataDirLock;
use crate::storage::setup::{recover_at_start_up, Storage};
use anyhow::Context;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::{watch, Semaphore};
use tokio::task::JoinSet;

/// Raises the soft limit on open files to the hard limit (each connection is a file
/// descriptor) and logs the result.
pub fn raise_fd_limit(max_connections: usize) {
    match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(limit) => {
            tracing::info!(limit, "open-file limit");
            let needed = max_connections as u64 + 64;
            if limit < needed {
                tracing::warn!(
                    limit,
                    max_connections,
                    "the open-file limit is below --max-connections; connections beyond it will fail to be accepted"
                );
            }
        }
        Err(error) => tracing::warn!(%error, "cannot raise the open-file limit"),
    }
}

/// Listen backlog: connections the kernel completes before the server accepts them
/// (capped by `net.core.somaxconn`). The usual 128 overflows in bursts (hundreds of
/// clients at once, or a short stall of the accept loop), and every client beyond it
/// waits for a SYN retransmission (1 s, then 3 s, ...).
pub const LISTEN_BACKLOG: u32 = 4096;

fn bind_listener(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = match addr {
        SocketAddr::V4(_) => tokio::net::TcpSocket::new_v4()?,
        SocketAddr::V6(_) => tokio::net::TcpSocket::new_v6()?,
    };
    #[cfg(not(windows))]
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(LISTEN_BACKLOG)
}

/// A bound server, ready to serve.
#[derive(Debug)]
pub struct Server {
    listener: TcpListener,
    core: Arc<Core>,
    config: ServerConfig,
    addr: SocketAddr,
    /// Opt-in TLS (`config.tls`), loaded and checked at bind time.
    tls: Option<Arc<rustls::ServerConfig>>,
    /// Metrics and live state, fed by the connections.
    monitor: Arc<Monitor>,
    /// The admin HTTP listener (`config.admin`), bound beside the protocol listener.
    admin: Option<AdminServer>,
    /// Held until the server is dropped.
    _lock: Option<DataDirLock>,
}

impl Server {
    /// Binds the listener, then opens the standard storage in the data folder: a port
    /// that is taken (or a bad TLS file) stops the server before anything is created.
    pub async fn bind(config: ServerConfig) -> anyhow::Result<Self> {
        let listener = bind_listener(config.bind)
            .with_context(|| format!("cannot listen on {}", config.bind))?;
        let tls = load_tls(&config)?;
        let opened = {
            let config = config.clone();
            tokio::task::spawn_blocking(move || Storage::open(&config)).await??
        };
        Self::assemble(config, opened, listener, tls).await
    }

    /// Binds the listener over the given storage (removing stale temporary files first).
    pub async fn bind_with(config: ServerConfig, storage: Storage) -> anyhow::Result<Self> {
        let tls = load_tls(&config)?;
        let listener = bind_listener(config.bind)
            .with_context(|| format!("cannot listen on {}", config.bind))?;
        Self::assemble(config, storage, listener, tls).await
    }

    async fn assemble(
        config: ServerConfig,
        storage: Storage,
        listener: TcpListener,
        tls: Option<Arc<rustls::ServerConfig>>,
    ) -> anyhow::Result<Self> {
        let Storage { meta, blobs, lock } = storage;
        let limits = config.session_limits();
        let core = tokio::task::spawn_blocking(move || -> anyhow::Result<Core> {
            recover_at_start_up(meta.as_ref(), blobs.as_ref())?;
            Ok(Core::new(meta, blobs, limits, Box::new(OsEntropy)))
        })
        .await??;
        let addr = listener.local_addr()?;
        let core = Arc::new(core);
        let monitor = Arc::new(Monitor::new(config.upload_timeout));
        let admin = match &config.admin {
            Some(admin) => {
                Some(AdminServer::bind(admin, Arc::clone(&core), Arc::clone(&monitor)).await?)
            }
            None => None,
        };
        Ok(Server {
            listener,
            core,
            config,
            addr,
            tls,
            monitor,
            admin,
            _lock: lock,
        })
    }

    /// The address actually bound (with the real port when port 0 was asked for).
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// The admin listener's address, when `--admin-listen` is on.
    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.admin.as_ref().and_then(|a| a.local_addr().ok())
    }

    /// Serves until `shutdown` completes, then shuts down gracefully (see the module
    /// documentation).
    pub async fn serve(self, shutdown: impl Future<Output = ()>) -> anyhow::Result<()> {
        let Server {
            listener,
            core,
            config,
            addr,
            tls,
            monitor,
            admin,
            _lock: lock,
        } = self;
        let rate = Arc::new(RateLimiter::new(
            config.register_limit,
            config.failure_limit,
        ));
        let limits = connection_limits(&config, &rate, &monitor);
        let tls = tls.map(tokio_rustls::TlsAcceptor::from);
        let permits = Arc::new(Semaphore::new(config.max_connections));
        let per_address = ConnectionsPerAddress::new(config.max_connections_per_address);
        let refusals = Arc::new(RefusalLog::new(REFUSAL_LOG_INTERVAL));
        let (stop_tx, stop_rx) = watch::channel(false);
        let admin = admin.map(|admin| {
            let mut stop = stop_rx.clone();
            tokio::spawn(admin.serve(async move {
                let _ = stop.wait_for(|stop| *stop).await;
            }))
        });
        let mut connections = JoinSet::new();
        let housekeeping = tokio::spawn(housekeeping(
            Arc::clone(&core),
            config.flush_interval,
            stop_rx.clone(),
        ));
        log_security_settings(&config, tls.is_some());
        tracing::info!("listening on {addr}");
        tokio::pin!(shutdown);
        let mut saturated = false;
        loop {
            while connections.try_join_next().is_some() {}
            let full = permits.available_permits() == 0;
            if full && !saturated {
                tracing::warn!(
                    max_connections = config.max_connections,
                    "connection limit reached; new clients wait"
                );
            }
            saturated = full;
            let permit = tokio::select! {
                () = &mut shutdown => break,
                permit = Arc::clone(&permits).acquire_owned() => match permit {
                    Ok(permit) => permit,
                    Err(_) => break,
                },
            };
            let accepted = tokio::select! {
                () = &mut shutdown => break,
                accepted = listener.accept() => accepted,
            };
            match accepted {
                Ok((stream, peer)) => {
                    let shared = Shared {
                        core: Arc::clone(&core),
                        limits: Arc::clone(&limits),
                        rate: Arc::clone(&rate),
                        refusals: Arc::clone(&refusals),
                        tls: tls.clone(),
                        request_timeout: config.request_timeout,
                        stop: stop_rx.clone(),
                    };
                    if let Some(balancers) = &config.proxy_protocol {
                        if !balancers.trusts(peer.ip()) {
                            tracing::info!(%peer, "connection refused: not from a --proxy-from address (--proxy-protocol is on)");
                            monitor.connection_refused(peer, "proxy-untrusted");
                            drop(stream);
                            drop(permit);
                            continue;
                        }
                        // The client's address is in the header: admitted on the task.
                        let per_address = Arc::clone(&per_address);
                        connections.spawn(async move {
                            serve_proxied(stream, peer, &per_address, shared).await;
                            drop(permit);
                        });
                        continue;
                    }
                    let Some(slot) = admit(&rate, &per_address, &refusals, peer, &monitor) else {
                        drop(stream);
                        drop(permit);
                        continue;
                    };
                    let open = monitor.connection_opened();
                    connections.spawn(async move {
                        serve_accepted(stream, peer, shared).await;
                        drop(open);
                        drop(slot);
                        drop(permit);
                    });
                }
                Err(error) => {
                    // Out of file descriptors and the like: back off, never crash.
                    tracing::warn!(%error, "accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }

        drop(listener);
        let _ = stop_tx.send(true);
        if let Some(mut admin) = admin {
            // A download in progress may not hold the shutdown beyond the grace period.
            if tokio::time::timeout(config.shutdown_grace, &mut admin)
                .await
                .is_err()
            {
                admin.abort();
            }
        }
        shut_down(connections, &config, housekeeping, core).await;
        // Only now may another server take the folder.
        drop(lock);
        Ok(())
    }
}

/// The TLS configuration, when asked for: a bad certificate or key stops the server with
/// a clear message.
fn load_tls(config: &ServerConfig) -> anyhow::Result<Option<Arc<rustls::ServerConfig>>> {
    match &config.tls {
        Some(files) => Ok(Some(crate::net::tls::server_config(files)?)),
        None => Ok(None),
    }
}

/// What every connection gets: the idle timeout, the rate limits and (with
/// `--pin-address`) the address pins.
fn connection_limits(
    config: &ServerConfig,
    rate: &Arc<RateLimiter>,
    monitor: &Arc<Monitor>,
) -> Arc<ConnLimits> {
    let guards = AddressGuards {
        rate: Arc::clone(rate),
        pins: config
            .pin_address
            .then(crate::net::address_pin::AddressPins::new),
    };
    Arc::new(ConnLimits {
        idle_timeout: config.idle_timeout,
        policy: Arc::new(guards),
        monitor: Arc::clone(monitor),
    })
}

fn log_security_settings(config: &ServerConfig, tls: bool) {
    tracing::info!(
        transport = if tls { "TLS" } else { "plain TCP" },
        registrations = %config.register_limit,
        failures = %config.failure_limit,
        connections_per_address = config.max_connections_per_address,
        pin_address = config.pin_address,
        proxy_protocol_from = config.proxy_protocol.as_ref().map(tracing::field::display),
        "security settings"
    );
}

/// The address's place for a new connection, or `None` (logged) when it is refused: out
/// of failure budget (net::rate_limit), or at --max-connections-per-address. A refused
/// connection is closed before anything is read.
fn admit(
    rate: &RateLimiter,
    per_address: &Arc<ConnectionsPerAddress>,
    refusals: &RefusalLog,
    peer: SocketAddr,
    monitor: &Monitor,
) -> Option<crate::net::address_limit::AddressSlot> {
    if rate.is_blocked(peer.ip()) {
        refusals.refused(peer, Refusal::Banned);
        monitor.connection_refused(peer, "failure-budget");
        return None;
    }
    let slot = per_address.enter(peer.ip());
    if slot.is_none() {
        refusals.refused(peer, Refusal::TooManyConnections);
        monitor.connection_refused(peer, "per-address");
    }
    slot
}

/// What a connection task needs from the listener.
struct Shared {
    core: Arc<Core>,
    limits: Arc<ConnLimits>,
    rate: Arc<RateLimiter>,
    /// Refused connections, logged per address and interval (behind a balancer the
    /// refusal is decided on the connection's task, once the PROXY header is read).
    refusals: Arc<RefusalLog>,
    tls: Option<tokio_rustls::TlsAcceptor>,
    request_timeout: Duration,
    stop: watch::Receiver<bool>,
}

/// Serves one accepted connection: plain, or after a TLS handshake (a failed handshake
/// counts against the address's failure budget).
async fn serve_accepted(stream: tokio::net::TcpStream, peer: SocketAddr, shared: Shared) {
    let Shared {
        core,
        limits,
        rate,
        refusals: _,
        tls,
        request_timeout,
        stop,
    } = shared;
    let _ = stream.set_nodelay(true);
    match tls {
        None => connection::serve(stream, peer, core, limits, stop).await,
        // Boxed: the TLS state is large, and a task is as large as its largest branch,
        // so plain connections would carry it too.
        Some(acceptor) => {
            match Box::pin(crate::net::tls::handshake(
                &acceptor,
                stream,
                request_timeout,
            ))
            .await
            {
                Ok(stream) => Box::pin(connection::serve(stream, peer, core, limits, stop)).await,
                Err(reason) => {
                    rate.record_failure(peer.ip());
                    limits.monitor.connection_refused(peer, "tls-handshake");
                    tracing::info!(%peer, %reason, "connection closed");
                }
            }
        }
    }
}

/// `--proxy-protocol`: a trusted balancer's connection, served as its client's once the
/// PROXY header is read (net::proxy_protocol); without a valid header it is closed.
async fn serve_proxied(
    mut stream: tokio::net::TcpStream,
    balancer: SocketAddr,
    per_address: &Arc<ConnectionsPerAddress>,
    shared: Shared,
) {
    let header = proxy_protocol::read_header(&mut stream, shared.request_timeout).await;
    let client = match header {
        Ok(header) => header.client_address(balancer),
        Err(error) => {
            tracing::info!(peer = %balancer, %error, "connection refused: bad PROXY header");
            shared
                .limits
                .monitor
                .connection_refused(balancer, "proxy-header");
            return;
        }
    };
    tracing::debug!(peer = %client, %balancer, "PROXY header read");
    let monitor = Arc::clone(&shared.limits.monitor);
    if let Some(slot) = admit(
        &shared.rate,
        per_address,
        &shared.refusals,
        client,
        &monitor,
    ) {
        let open = monitor.connection_opened();
        serve_accepted(stream, client, shared).await;
        drop(open);
        drop(slot);
    }
}

/// Graceful shutdown once the listener is closed and the connections told to stop: wait
/// up to the grace period, abort the rest, stop housekeeping, close the database.
async fn shut_down(
    mut connections: JoinSet<()>,
    config: &ServerConfig,
    housekeeping: tokio::task::JoinHandle<()>,
    core: Arc<Core>,
) {
    let open = connections.len();
    tracing::info!(
        open,
        grace_secs = config.shutdown_grace.as_secs_f64(),
        "shutting down: no new connections; transfers under way may finish"
    );
    log_uploads(&core, "shutting down: upload in progress");
    let drained = tokio::time::timeout(config.shutdown_grace, async {
        while connections.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        tracing::warn!(
            aborted = connections.len(),
            "grace period over; closing the remaining connections"
        );
        log_uploads(&core, "upload cut by the shutdown");
        connections.abort_all();
        while connections.join_next().await.is_some() {}
    } else {
        // Left: uploads of connection-per-request clients, whose next packet can no
        // longer come (no new connections).
        log_uploads(&core, "upload cut by the shutdown");
    }
    let _ = housekeeping.await;
    let closing = Arc::clone(&core);
    match tokio::task::spawn_blocking(move || closing.close()).await {
        Ok(Ok(())) => tracing::info!("database closed; server stopped"),
        Ok(Err(error)) => tracing::error!(%error, "closing the database failed"),
        Err(error) => tracing::error!(%error, "closing the database failed"),
    }
}

/// One INFO line per upload in progress: client, file, packets received of total.
fn log_uploads(core: &Core, what: &str) {
    for (client, progress) in core.uploads_in_progress_now() {
        let state = if progress.parked {
            "between packets"
        } else {
            "receiving a packet"
        };
        tracing::info!(
            client = %client.short(),
            file = %progress.file,
            packets = %format!("{}/{}", progress.packets, progress.total),
            state,
            "{what}"
        );
    }
}

async fn housekeeping(core: Arc<Core>, every: Duration, mut stop: watch::Receiver<bool>) {
    let mut ticker = tokio::time::interval(every.max(Duration::from_millis(10)));
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            _ = stop.wait_for(|stop| *stop) => return,
        }
        let core = Arc::clone(&core);
        let result = tokio::task::spawn_blocking(move || {
            let expired = core.expire_uploads(std::time::Instant::now());
            (core.flush_last_seen(), expired)
        })
        .await;
        if let Ok((Err(error), _)) = result {
            tracing::warn!(%error, "cannot persist LastSeen");
        }
    }
}

/// Binds and serves until `shutdown` completes (see [`Server`]).
pub async fn run(config: ServerConfig, shutdown: impl Future<Output = ()>) -> anyhow::Result<()> {
    Server::bind(config).await?.serve(shutdown).await
}

/// A future that completes on SIGINT (Ctrl-C) or, on Unix, SIGTERM.
///
/// The handlers are installed when this function is called (it must run inside a tokio
/// runtime), not when the future is first polled, so a signal that arrives right after
/// "listening on" is never lost to the default action.
#[cfg(unix)]
pub fn shutdown_signal() -> std::io::Result<impl Future<Output = ()>> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut interrupt = signal(SignalKind::interrupt())?;
    let mut terminate = signal(SignalKind::terminate())?;
    Ok(async move {
        tokio::select! {
            _ = interrupt.recv() => tracing::info!("SIGINT received"),
            _ = terminate.recv() => tracing::info!("SIGTERM received"),
        }
    })
}

/// A future that completes on Ctrl-C.
#[cfg(not(unix))]
pub fn shutdown_signal() -> std::io::Result<impl Future<Output = ()>> {
    Ok(async {
        if tokio::signal::ctrl_c().await.is_ok() {
            tracing::info!("Ctrl-C received");
        } else {
            std::future::pending::<()>().await;
        }
    })
}

/// A server on its own thread with its own tokio runtime.
///
/// ```no_run
/// let mut config = sfc_server::ServerConfig::new("/tmp/data");
/// config.bind = "127.0.0.1:0".parse().unwrap();
/// let server = sfc_server::RunningServer::start(config).unwrap();
/// println!("{}", server.addr());
/// server.stop();
/// ```
#[derive(Debug)]
pub struct RunningServer {
    addr: SocketAddr,
    admin_addr: Option<SocketAddr>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl RunningServer {
    /// Starts a server with the standard storage; returns once it is listening.
    pub fn start(config: ServerConfig) -> anyhow::Result<Self> {
        Self::start_inner(config, None)
    }

    /// Starts a server over the given storage (e.g. a fault-injecting double).
    pub fn start_with(config: ServerConfig, storage: Storage) -> anyhow::Result<Self> {
        Self::start_inner(config, Some(storage))
    }

    fn start_inner(config: ServerConfig, storage: Option<Storage>) -> anyhow::Result<Self> {
        type Bound = (SocketAddr, Option<SocketAddr>);
        let (ready_tx, ready_rx) = std::sync::mpsc::channel::<anyhow::Result<Bound>>();
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let mut builder = tokio::runtime::Builder::new_multi_thread();
        builder.enable_all().thread_name("sfc-server-worker");
        if let Some(threads) = config.worker_threads {
            builder.worker_threads(threads.max(1));
        }
        let runtime = builder.build().context("cannot start the tokio runtime")?;
        let thread = std::thread::Builder::new()
            .name("sfc-server".into())
            .spawn(move || {
                runtime.block_on(async move {
                    let bound = match storage {
                        Some(storage) => Server::bind_with(config, storage).await,
                        None => Server::bind(config).await,
                    };
                    match bound {
                        Ok(server) => {
                            let _ = ready_tx.send(Ok((server.local_addr(), server.admin_addr())));
                            let stopped = async {
                                let _ = stop_rx.await;
                            };
                            if let Err(error) = server.serve(stopped).await {
                                tracing::error!(%error, "server failed");
                            }
                        }
                        Err(error) => {
                            let _ = ready_tx.send(Err(error));
                        }
                    }
                });
                runtime.shutdown_timeout(Duration::from_secs(5));
            })
            .context("cannot start the server thread")?;
        let (addr, admin_addr) = match ready_rx.recv() {
            Ok(Ok(bound)) => bound,
            Ok(Err(error)) => {
                let _ = thread.join();
                return Err(error);
            }
            Err(_) => {
                let _ = thread.join();
                anyhow::bail!("the server thread ended before listening");
            }
        };
        Ok(RunningServer {
            addr,
            admin_addr,
            stop: Some(stop_tx),
            thread: Some(thread),
        })
    }

    /// The address the server listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The admin listener's address, when `--admin-listen` is on.
    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.admin_addr
    }

    /// Shuts down gracefully and joins the server thread.
    pub fn stop(mut self) {
        self.shutdown();
    }

    fn shutdown(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl Drop for RunningServer {
    fn drop(&mut self) {
        self.shutdown();
    }
}
