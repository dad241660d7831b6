//! [`RunningServer`]: a server on its own thread with its own tokio runtime, for tests
//! and embedding.

use crate::config::ServerConfig;
use crate::net::listener::Server;
use crate::storage::setup::Storage;
use anyhow::Context;
use std::net::SocketAddr;
use std::time::Duration;

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
