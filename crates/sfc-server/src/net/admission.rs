//! Admission of an accepted connection: the PROXY header of a trusted balancer
//! (`--proxy-protocol`), the address's failure budget and connection cap, the TLS
//! handshake, then the connection's task ([`crate::net::connection`]).

use crate::config::ServerConfig;
use crate::net::address_limit::{AddressSlot, ConnectionsPerAddress};
use crate::net::connection::{self, ConnLimits};
use crate::net::guards::AddressGuards;
use crate::net::monitor::Monitor;
use crate::net::proxy_protocol::{self, ProxySources};
use crate::net::rate_limit::RateLimiter;
use crate::net::refusals::{Listed, Refusal, RefusalLog, REFUSAL_LOG_INTERVAL};
use crate::session::Core;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpStream;
use tokio::sync::{watch, OwnedSemaphorePermit};
use tokio::task::JoinSet;

/// What the accept loop admits connections against and hands to their tasks.
pub(super) struct Admission {
    core: Arc<Core>,
    limits: Arc<ConnLimits>,
    rate: Arc<RateLimiter>,
    per_address: Arc<ConnectionsPerAddress>,
    refusals: Arc<RefusalLog>,
    pub(super) tls: Option<tokio_rustls::TlsAcceptor>,
    monitor: Arc<Monitor>,
    proxy_protocol: Option<ProxySources>,
    request_timeout: Duration,
    stop: watch::Receiver<bool>,
}

impl Admission {
    /// The rate limits, the per-address caps and the refusal log, fresh for one server.
    pub(super) fn new(
        config: &ServerConfig,
        core: &Arc<Core>,
        tls: Option<Arc<rustls::ServerConfig>>,
        monitor: &Arc<Monitor>,
        stop: watch::Receiver<bool>,
    ) -> Self {
        let rate = Arc::new(RateLimiter::new(
            config.register_limit,
            config.failure_limit,
        ));
        let limits = connection_limits(config, &rate, monitor);
        Admission {
            core: Arc::clone(core),
            limits,
            rate,
            per_address: ConnectionsPerAddress::new(config.max_connections_per_address),
            refusals: Arc::new(RefusalLog::new(REFUSAL_LOG_INTERVAL)),
            tls: tls.map(tokio_rustls::TlsAcceptor::from),
            monitor: Arc::clone(monitor),
            proxy_protocol: config.proxy_protocol.clone(),
            request_timeout: config.request_timeout,
            stop,
        }
    }

    /// The log of refused connections (the listener flushes what it holds back).
    pub(super) fn refusal_log(&self) -> Arc<RefusalLog> {
        Arc::clone(&self.refusals)
    }

    /// Admits an accepted connection and spawns its task holding `permit`, or closes it
    /// (logged and counted) before anything is read.
    pub(super) fn accept(
        &self,
        stream: TcpStream,
        peer: SocketAddr,
        permit: OwnedSemaphorePermit,
        connections: &mut JoinSet<()>,
    ) {
        let shared = Shared {
            core: Arc::clone(&self.core),
            limits: Arc::clone(&self.limits),
            rate: Arc::clone(&self.rate),
            refusals: Arc::clone(&self.refusals),
            tls: self.tls.clone(),
            request_timeout: self.request_timeout,
            stop: self.stop.clone(),
        };
        if let Some(balancers) = &self.proxy_protocol {
            if !balancers.trusts(peer.ip()) {
                let listed = self.refusals.refused(peer, Refusal::NotFromBalancer);
                self.monitor
                    .connection_refused(peer, "proxy-untrusted", listed);
                drop(stream);
                drop(permit);
                return;
            }
            // The client's address is in the header: admitted on the task.
            let per_address = Arc::clone(&self.per_address);
            connections.spawn(async move {
                serve_proxied(stream, peer, &per_address, shared).await;
                drop(permit);
            });
            return;
        }
        let Some(slot) = admit(
            &self.rate,
            &self.per_address,
            &self.refusals,
            peer,
            &self.monitor,
        ) else {
            drop(stream);
            drop(permit);
            return;
        };
        let open = self.monitor.connection_opened();
        connections.spawn(async move {
            serve_accepted(stream, peer, shared).await;
            drop(open);
            drop(slot);
            drop(permit);
        });
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

/// The address's place for a new connection, or `None` (logged) when it is refused: out
/// of failure budget (net::rate_limit), or at --max-connections-per-address. A refused
/// connection is closed before anything is read.
fn admit(
    rate: &RateLimiter,
    per_address: &Arc<ConnectionsPerAddress>,
    refusals: &RefusalLog,
    peer: SocketAddr,
    monitor: &Monitor,
) -> Option<AddressSlot> {
    if rate.is_blocked(peer.ip()) {
        let listed = refusals.refused(peer, Refusal::Banned);
        monitor.connection_refused(peer, "failure-budget", listed);
        return None;
    }
    let slot = per_address.enter(peer.ip());
    if slot.is_none() {
        let listed = refusals.refused(peer, Refusal::TooManyConnections);
        monitor.connection_refused(peer, "per-address", listed);
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
/// counts against the address's failure budget; a connection closed before its first
/// byte, such as a balancer's health check, does not).
async fn serve_accepted(stream: TcpStream, peer: SocketAddr, shared: Shared) {
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
            let handshake = Box::pin(crate::net::tls::handshake(
                &acceptor,
                stream,
                request_timeout,
            ));
            let Some(handshake) = unless_shutting_down(&stop, handshake).await else {
                tracing::debug!(%peer, "TLS handshake cut: the server is shutting down");
                return;
            };
            match handshake {
                Ok(stream) => Box::pin(connection::serve(stream, peer, core, limits, stop)).await,
                // As on a plain listener: no failure, nothing refused.
                Err(crate::net::tls::HandshakeError::ClosedAtOnce) => {
                    tracing::debug!(%peer, "closed before the TLS handshake began");
                }
                Err(reason) => {
                    rate.record_failure(peer.ip());
                    // Each one costs the address a failure: listed each time.
                    limits
                        .monitor
                        .connection_refused(peer, "tls-handshake", Some(Listed::ONE));
                    tracing::info!(%peer, %reason, "connection closed");
                }
            }
        }
    }
}

/// `work`, or `None` once the server is shutting down: a connection that has not begun
/// a request (its PROXY header or TLS handshake still to come) is not waited for, as an
/// idle one is not.
async fn unless_shutting_down<T>(
    stop: &watch::Receiver<bool>,
    work: impl std::future::Future<Output = T>,
) -> Option<T> {
    let mut stop = stop.clone();
    tokio::select! {
        output = work => Some(output),
        _ = stop.wait_for(|stopping| *stopping) => None,
    }
}

/// `--proxy-protocol`: a trusted balancer's connection, served as its client's once the
/// PROXY header is read (net::proxy_protocol); without a valid header it is closed.
async fn serve_proxied(
    mut stream: TcpStream,
    balancer: SocketAddr,
    per_address: &Arc<ConnectionsPerAddress>,
    shared: Shared,
) {
    let header = proxy_protocol::read_header(&mut stream, shared.request_timeout);
    let Some(header) = unless_shutting_down(&shared.stop, header).await else {
        tracing::debug!(peer = %balancer, "PROXY header wait cut: the server is shutting down");
        return;
    };
    let client = match header {
        Ok(header) => header.client_address(balancer),
        Err(error) => {
            tracing::info!(peer = %balancer, %error, "connection refused: bad PROXY header");
            shared
                .limits
                .monitor
                .connection_refused(balancer, "proxy-header", Some(Listed::ONE));
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
