//! Graceful shutdown: stop accepting, tell every connection to close at its next request
//! boundary (a request in flight finishes and gets its reply), wait up to
//! `shutdown_grace`, then abort what is left (an upload cut short removes its temporary
//! file), persist the LastSeen notes and close the database; and the signals that start
//! it.

use crate::config::ServerConfig;
use crate::net::admin_http::AdminServer;
use crate::session::Core;
use std::future::Future;
use std::sync::Arc;
use tokio::sync::watch;
use tokio::task::{JoinHandle, JoinSet};
use tokio::time::Instant;

/// Serves the admin listener on its own task until `stop` turns true.
pub(super) fn spawn_admin(admin: AdminServer, mut stop: watch::Receiver<bool>) -> JoinHandle<()> {
    tokio::spawn(admin.serve(async move {
        let _ = stop.wait_for(|stop| *stop).await;
    }))
}

/// Waits for the admin listener (told to stop) until `deadline`, then aborts it.
async fn stop_admin(admin: Option<JoinHandle<()>>, deadline: Instant) {
    if let Some(mut admin) = admin {
        // A download in progress may not hold the shutdown beyond the grace period.
        if tokio::time::timeout_at(deadline, &mut admin).await.is_err() {
            admin.abort();
            // Its handle on the core goes with it, before `shut_down` returns.
            let _ = admin.await;
        }
    }
}

/// Graceful shutdown once the listeners are closed and the connections (protocol and
/// admin) told to stop: wait for both until `deadline` (one grace period for the two,
/// not one after the other), abort the rest, stop housekeeping, close the database.
pub(super) async fn shut_down(
    mut connections: JoinSet<()>,
    admin: Option<JoinHandle<()>>,
    config: &ServerConfig,
    deadline: Instant,
    housekeeping: JoinHandle<()>,
    core: Arc<Core>,
) {
    // Connections that ended since the accept loop last looked are not open.
    while connections.try_join_next().is_some() {}
    let open = connections.len();
    tracing::info!(
        open,
        grace_secs = config.shutdown_grace.as_secs_f64(),
        "shutting down: no new connections; transfers under way may finish"
    );
    log_uploads(&core, "shutting down: upload in progress");
    let ((), drained) = tokio::join!(
        stop_admin(admin, deadline),
        tokio::time::timeout_at(deadline, async {
            while connections.join_next().await.is_some() {}
        }),
    );
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
    // The admin listener is stopped too: nothing uses the database any more but a
    // clean-up pass of shared storage being stopped (`listener::sweep_shared_store`).
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
            file = progress.file.as_str(),
            packets = %format!("{}/{}", progress.packets, progress.total),
            state,
            "{what}"
        );
    }
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
        // A second signal ends the process at once, as a crash would (nothing stored is
        // lost: every file is renamed into place and committed, or not at all), for an
        // operator who cannot wait for the grace period or a database that hangs.
        tokio::spawn(async move {
            tokio::select! {
                _ = interrupt.recv() => {}
                _ = terminate.recv() => {}
            }
            tracing::warn!("second signal received: exiting now, without waiting");
            std::process::exit(FORCED_EXIT);
        });
    })
}

/// The exit status after a second SIGINT/SIGTERM (128 + SIGINT, as shells report it).
#[cfg(unix)]
const FORCED_EXIT: i32 = 130;

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
