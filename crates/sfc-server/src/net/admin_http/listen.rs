//! The admin socket: binding (the token, the TLS files), accepting plain TCP or TLS
//! connections with a bounded handshake, and serving the router until shutdown.

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
            let (stream, peer) = match self.tcp.accept().await {
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
            // One handshake at a time, each bounded: enough for an operator's browser.
            match crate::net::tls::handshake(acceptor, stream, HANDSHAKE_TIMEOUT).await {
                Ok(tls) => return (Box::new(tls), peer),
                Err(reason) => {
                    tracing::info!(%peer, %reason, "admin listener: TLS handshake failed")
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
            listener: AdminListener { tcp, tls },
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
