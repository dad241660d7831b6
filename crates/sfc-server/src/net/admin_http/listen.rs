//! The admin socket: binding (the token, the TLS files), accepting plain TCP or TLS
//! connections (each TLS handshake its own task, bounded in time and in number), and
//! serving the router until shutdown.

use super::auth::{self, Sessions};
use super::{router, AdminState, Peer, Shared};
use crate::config::AdminConfig;
use crate::net::monitor::Monitor;
use crate::session::Core;
use anyhow::Context;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;

/// A TLS handshake on the admin listener must finish within this time.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// TLS handshakes under way at once; connections beyond are closed at once, so a flood
/// of silent connections costs at most this many tasks (each gone within the time-out).
const MAX_HANDSHAKES: usize = 64;

impl axum::extract::connect_info::Connected<axum::serve::IncomingStream<'_, AdminListener>>
    for Peer
{
    fn connect_info(stream: axum::serve::IncomingStream<'_, AdminListener>) -> Self {
        Peer(*stream.remote_addr())
    }
}

/// A byte stream: TCP or TLS over it.
pub trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

/// The admin socket, accepting plain TCP or TLS connections.
pub(crate) struct AdminListener {
    tcp: TcpListener,
    tls: Option<tokio_rustls::TlsAcceptor>,
    /// TLS handshakes under way, each its own task: a client that connects and sends
    /// nothing delays nobody else.
    handshakes: tokio::task::JoinSet<Option<(Box<dyn Io>, SocketAddr)>>,
}

impl std::fmt::Debug for AdminListener {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AdminListener")
            .field("addr", &self.tcp.local_addr().ok())
            .field("tls", &self.tls.is_some())
            .finish()
    }
}

impl axum::serve::Listener for AdminListener {
    type Io = Box<dyn Io>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        loop {
            tokio::select! {
                accepted = self.tcp.accept() => {
                    let (stream, peer) = match accepted {
                        Ok(accepted) => accepted,
                        Err(error) => {
                            tracing::warn!(%error, "admin listener: accept failed");
                            tokio::time::sleep(Duration::from_millis(100)).await;
                            continue;
                        }
                    };
                    let Some(acceptor) = &self.tls else {
                        return (Box::new(stream), peer);
                    };
                    if self.handshakes.len() >= MAX_HANDSHAKES {
                        tracing::info!(%peer, "admin listener: too many TLS handshakes under way; connection closed");
                        continue;
                    }
                    let acceptor = acceptor.clone();
                    self.handshakes.spawn(async move {
                        match crate::net::tls::handshake(&acceptor, stream, HANDSHAKE_TIMEOUT).await {
                            Ok(tls) => Some((Box::new(tls) as Box<dyn Io>, peer)),
                            Err(reason) => {
                                tracing::info!(%peer, %reason, "admin listener: TLS handshake failed");
                                None
                            }
                        }
                    });
                }
                Some(done) = self.handshakes.join_next(), if !self.handshakes.is_empty() => {
                    if let Ok(Some(ready)) = done {
                        return ready;
                    }
                }
            }
        }
    }

    fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.tcp.local_addr()
    }
}

/// The admin listener, bound and ready to serve.
#[derive(Debug)]
pub(crate) struct AdminServer {
    listener: AdminListener,
    state: Shared,
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
            listener: AdminListener {
                tcp,
                tls,
                handshakes: tokio::task::JoinSet::new(),
            },
            state: Arc::new(AdminState {
                core,
                monitor,
                token,
                sessions: Sessions::default(),
                secure_cookie,
            }),
        })
    }

    /// The address bound.
    pub(crate) fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.tcp.local_addr()
    }

    /// Serves until `stop` completes.
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
        let app = router(self.state).into_make_service_with_connect_info::<Peer>();
        if let Err(error) = axum::serve(self.listener, app)
            .with_graceful_shutdown(stop)
            .await
        {
            tracing::error!(%error, "admin listener failed");
        }
    }
}
