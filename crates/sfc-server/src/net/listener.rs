//! The accept loop and the connection limit, housekeeping, and [`Server`]: binding the
//! listener, opening the storage, recovering at start-up. Admission of each connection
//! is [`crate::net::admission`], graceful shutdown [`crate::net::shutdown`], a server on
//! its own thread [`crate::net::running`].

use crate::config::ServerConfig;
use crate::net::accept_errors::AcceptErrors;
use crate::net::admin_http::AdminServer;
use crate::net::admission::Admission;
use crate::net::entropy::OsEntropy;
use crate::net::monitor::Monitor;
use crate::net::refusals::{RefusalLog, REFUSAL_LOG_INTERVAL};
use crate::net::shutdown;
use crate::session::Core;
use crate::storage::setup::{self, pair_at_start_up, recover_at_start_up, Storage};
use anyhow::Context;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::{TcpListener, TcpSocket};
use tokio::sync::{watch, Semaphore};
use tokio::task::JoinSet;

/// Raises the soft limit on open files to the hard limit (each connection is a file
/// descriptor) and logs the result.
pub fn raise_fd_limit(max_connections: usize) {
    match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(limit) => {
            tracing::info!(limit, "open-file limit");
            // The protocol connections, the admin listener's (capped, counted whether it
            // is on or not: the difference is small), and 64 for the rest (listeners,
            // database, files being stored).
            let needed =
                max_connections as u64 + crate::net::admin_http::MAX_ADMIN_CONNECTIONS as u64 + 64;
            if limit < needed {
                tracing::warn!(
                    limit,
                    max_connections,
                    "the open-file limit is below --max-connections plus the admin listener's cap; connections beyond it will fail to be accepted"
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

/// Binds the protocol port without listening yet: a busy port (a server already
/// listening on it) fails here, before the storage is opened, while connections are
/// refused until [`listen`] (a health check must not see the node up during recovery).
fn bind_port(addr: SocketAddr) -> std::io::Result<TcpSocket> {
    let socket = match addr {
        SocketAddr::V4(_) => TcpSocket::new_v4()?,
        SocketAddr::V6(_) => TcpSocket::new_v6()?,
    };
    #[cfg(not(windows))]
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    Ok(socket)
}

/// Starts listening on the port [`bind_port`] bound, once the server is ready. With
/// SO_REUSEADDR another process that only bound the port too (a second server starting
/// at the same time) is found here, not at bind time.
fn listen(socket: TcpSocket, addr: SocketAddr) -> anyhow::Result<TcpListener> {
    socket
        .listen(LISTEN_BACKLOG)
        .with_context(|| format!("cannot listen on {addr}"))
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
    /// (The data folder's lock is the core's: see `Core::holding_folder`.)
    admin: Option<AdminServer>,
}

impl Server {
    /// Binds the port, then opens the standard storage in the data folder: a port that
    /// is taken (or a bad TLS file) stops the server before anything is created. The
    /// port listens (accepts connections) only once recovery is over.
    pub async fn bind(config: ServerConfig) -> anyhow::Result<Self> {
        let socket =
            bind_port(config.bind).with_context(|| format!("cannot listen on {}", config.bind))?;
        let tls = load_tls(&config)?;
        let opened = {
            let config = config.clone();
            tokio::task::spawn_blocking(move || Storage::open(&config)).await??
        };
        Self::assemble(config, opened, socket, tls).await
    }

    /// Binds the port over the given storage (removing stale temporary files first);
    /// listens once recovery is over, as [`Server::bind`].
    pub async fn bind_with(config: ServerConfig, storage: Storage) -> anyhow::Result<Self> {
        let tls = load_tls(&config)?;
        let socket =
            bind_port(config.bind).with_context(|| format!("cannot listen on {}", config.bind))?;
        Self::assemble(config, storage, socket, tls).await
    }

    async fn assemble(
        config: ServerConfig,
        storage: Storage,
        socket: TcpSocket,
        tls: Option<Arc<rustls::ServerConfig>>,
    ) -> anyhow::Result<Self> {
        // The real port (port 0 asks the system for one) is known from the bind.
        let addr = socket.local_addr()?;
        let Storage { meta, blobs, lock } = storage;
        let limits = config.session_limits();
        let setup_id_location = crate::storage::setup::setup_id_location(&config);
        let core = tokio::task::spawn_blocking(move || -> anyhow::Result<Core> {
            pair_at_start_up(meta.as_ref(), blobs.as_ref(), &setup_id_location)?;
            recover_at_start_up(meta.as_ref(), blobs.as_ref())?;
            Ok(Core::new(meta, blobs, limits, Box::new(OsEntropy)).holding_folder(lock))
        })
        .await??;
        let core = Arc::new(core);
        let monitor = Arc::new(Monitor::new(config.upload_timeout));
        let admin = match &config.admin {
            Some(admin) => {
                Some(AdminServer::bind(admin, Arc::clone(&core), Arc::clone(&monitor)).await?)
            }
            None => None,
        };
        // Last: everything is ready, and `serve` logs "listening on" right away.
        let listener = listen(socket, addr)?;
        Ok(Server {
            listener,
            core,
            config,
            addr,
            tls,
            monitor,
            admin,
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

    /// Serves until `shutdown` completes, then shuts down gracefully (see
    /// [`crate::net::shutdown`]).
    pub async fn serve(self, shutdown: impl Future<Output = ()>) -> anyhow::Result<()> {
        let Server {
            listener,
            core,
            config,
            addr,
            tls,
            monitor,
            admin,
        } = self;
        let (stop_tx, stop_rx) = watch::channel(false);
        let admission = Admission::new(&config, &core, tls, &monitor, stop_rx.clone());
        let permits = Arc::new(Semaphore::new(config.max_connections));
        let admin = admin.map(|admin| shutdown::spawn_admin(admin, stop_rx.clone()));
        let mut connections = JoinSet::new();
        let housekeeping = tokio::spawn(housekeeping(
            Arc::clone(&core),
            config.flush_interval,
            stop_rx.clone(),
        ));
        let refusal_lines = tokio::spawn(flush_refusals(admission.refusal_log(), stop_rx.clone()));
        let shared = core.blob_store().is_shared() && core.meta_store().is_shared();
        if shared && !config.store_sweep_interval.is_zero() {
            // Ends at the stop signal; not waited for (see `sweep_shared_store`).
            tokio::spawn(sweep_shared_store(
                Arc::clone(&core),
                Arc::clone(&monitor),
                config.store_sweep_interval,
                stop_rx.clone(),
            ));
        }
        log_security_settings(&config, admission.tls.is_some());
        tracing::info!("listening on {addr}");
        tokio::pin!(shutdown);
        let mut saturated = false;
        let mut accept_errors = AcceptErrors::new("protocol listener");
        loop {
            saturated = warn_when_saturated(&permits, config.max_connections, saturated);
            // Ended connections are joined while waiting, so that their tasks' memory goes
            // with them, not at the next accept (which on a quiet server may be long).
            let permit = tokio::select! {
                () = &mut shutdown => break,
                Some(_) = connections.join_next() => continue,
                permit = Arc::clone(&permits).acquire_owned() => match permit {
                    Ok(permit) => permit,
                    Err(_) => break,
                },
            };
            let accepted = loop {
                tokio::select! {
                    () = &mut shutdown => break None,
                    Some(_) = connections.join_next() => {}
                    accepted = listener.accept() => break Some(accepted),
                }
            };
            let Some(accepted) = accepted else { break };
            match accepted {
                Ok((stream, peer)) => admission.accept(stream, peer, permit, &mut connections),
                Err(error) => {
                    // Out of file descriptors and the like: back off, never crash.
                    if let Some(pause) = accept_errors.failed(&error, std::time::Instant::now()) {
                        tokio::select! {
                            () = &mut shutdown => break,
                            () = tokio::time::sleep(pause) => {}
                        }
                    }
                }
            }
        }

        // One grace period for everything, counted from here.
        let deadline = tokio::time::Instant::now() + config.shutdown_grace;
        drop(listener);
        // The core's last handle outside the tasks goes with `shut_down`, as before.
        drop(admission);
        let _ = stop_tx.send(true);
        let _ = refusal_lines.await;
        // The data folder's lock goes with the core's last handle: here, or when the last
        // storage job cut by the grace period is done.
        shutdown::shut_down(connections, admin, &config, deadline, housekeeping, core).await;
        Ok(())
    }
}

/// Every interval, and once at shutdown, logs the refused connections that no later
/// refusal reported (a flood that stopped).
async fn flush_refusals(log: Arc<RefusalLog>, mut stop: watch::Receiver<bool>) {
    let mut every = tokio::time::interval(REFUSAL_LOG_INTERVAL);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = every.tick() => log.flush(false),
            _ = stop.wait_for(|stop| *stop) => break,
        }
    }
    log.flush(true);
}

/// Logs once when every connection slot is taken (new clients wait for one); returns
/// whether they all are.
fn warn_when_saturated(permits: &Semaphore, max_connections: usize, saturated: bool) -> bool {
    let full = permits.available_permits() == 0;
    if full && !saturated {
        tracing::warn!(
            max_connections,
            "connection limit reached; new clients wait"
        );
    }
    full
}

/// The TLS configuration, when asked for: a bad certificate or key stops the server with
/// a clear message.
fn load_tls(config: &ServerConfig) -> anyhow::Result<Option<Arc<rustls::ServerConfig>>> {
    match &config.tls {
        Some(files) => Ok(Some(crate::net::tls::server_config(files)?)),
        None => Ok(None),
    }
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

async fn housekeeping(core: Arc<Core>, every: Duration, mut stop: watch::Receiver<bool>) {
    let mut ticker = tokio::time::interval(every.max(Duration::from_millis(10)));
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // Retries of failed removals run beside the rest, one at a time: a store still
    // failing may take its retry time-out, which must not hold up the expiry of idle
    // uploads or the LastSeen flush.
    let mut retrying: Option<tokio::task::JoinHandle<(usize, usize)>> = None;
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            _ = stop.wait_for(|stop| *stop) => return,
        }
        if retrying
            .as_ref()
            .is_none_or(tokio::task::JoinHandle::is_finished)
        {
            let core = Arc::clone(&core);
            retrying = Some(tokio::task::spawn_blocking(move || core.retry_removals()));
        }
        let core = Arc::clone(&core);
        let result = tokio::task::spawn_blocking(move || {
            core.expire_uploads(std::time::Instant::now());
            core.flush_last_seen()
        })
        .await;
        if let Ok(Err(error)) = result {
            tracing::warn!(%error, "cannot persist LastSeen");
        }
    }
}

/// While serving on storage other servers share, every `every` (±20 %, so that nodes
/// started together do not sweep in step) after the last pass ended: the clean-up
/// start-up recovery does there ([`setup::sweep_shared_store`]), one pass at a time.
async fn sweep_shared_store(
    core: Arc<Core>,
    monitor: Arc<Monitor>,
    every: Duration,
    mut stop: watch::Receiver<bool>,
) {
    tracing::info!(
        every_secs = every.as_secs_f64(),
        "the shared store is cleaned up while serving (--store-sweep-interval)"
    );
    let mut state = setup::SweepState::default();
    loop {
        tokio::select! {
            biased;
            _ = stop.wait_for(|stop| *stop) => return,
            () = tokio::time::sleep(jittered(every)) => {}
        }
        let sweeping = Arc::clone(&core);
        let stopping = stop.clone();
        let pass = tokio::task::spawn_blocking(move || {
            let stopping = || *stopping.borrow();
            let swept = setup::sweep_shared_store(
                sweeping.meta_store(),
                sweeping.blob_store(),
                &stopping,
                &mut state,
            );
            (swept, state)
        });
        // The shutdown does not wait for a pass under way: it stops at its next removal
        // or listing round (a listing under way finishes first), and stopping anywhere
        // is as safe as a crash there (removals are decided on rows read just before).
        // Until it has stopped it keeps the core (and the data folder's lock); the
        // database may be closed under it, which ends it at its next read.
        tokio::select! {
            biased;
            _ = stop.wait_for(|stop| *stop) => return,
            done = pass => match done {
                Ok((swept, kept)) => {
                    monitor.store_swept(&swept);
                    state = kept;
                }
                Err(error) => {
                    tracing::error!(%error, "the clean-up of the shared store failed");
                    monitor.store_swept(&setup::Swept {
                        outcome: setup::SweepOutcome::Failed,
                        reason: Some(format!("the pass failed: {error}")),
                        ..setup::Swept::default()
                    });
                    state = setup::SweepState::default();
                }
            },
        }
    }
}

/// `every` ± up to 20 %, at random (`every` capped at the flag's maximum: a library
/// caller's configuration is not checked by the command line).
fn jittered(every: Duration) -> Duration {
    let every = every.min(Duration::from_secs(
        crate::config::MAX_STORE_SWEEP_INTERVAL_SECS,
    ));
    // The first half of a version-4 UUID: random but for its 4 version bits.
    let (random, _) = uuid::Uuid::new_v4().as_u64_pair();
    let factor = 0.8 + 0.4 * (random as f64 / u64::MAX as f64);
    every.mul_f64(factor)
}

/// Binds and serves until `shutdown` completes (see [`Server`]).
pub async fn run(config: ServerConfig, shutdown: impl Future<Output = ()>) -> anyhow::Result<()> {
    Server::bind(config).await?.serve(shutdown).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sweep_intervals_vary_by_a_fifth_at_most() {
        let hour = Duration::from_secs(3600);
        let drawn: Vec<Duration> = (0..200).map(|_| jittered(hour)).collect();
        assert!(drawn
            .iter()
            .all(|d| *d >= hour.mul_f64(0.8) && *d <= hour.mul_f64(1.2)));
        // Not all alike, and spread over most of the range.
        let (low, high) = (drawn.iter().min().unwrap(), drawn.iter().max().unwrap());
        assert!(
            *high - *low > Duration::from_secs(1000),
            "{low:?}..{high:?}"
        );
        // A library caller's huge interval is capped, not a panic.
        let longest = Duration::from_secs(crate::config::MAX_STORE_SWEEP_INTERVAL_SECS);
        assert!(jittered(Duration::MAX) <= longest.mul_f64(1.2));
    }
}
