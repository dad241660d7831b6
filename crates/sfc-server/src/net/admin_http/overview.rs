//! The client list with each client's file count and bytes, as the dashboard, the client
//! pages and the API show them. Computing it reads every `files` row and asks the file
//! store for every file's size (an S3 `HEAD` each with `--store s3://`), so it is computed
//! by one request at a time and shared:
//!
//! - requests that arrive while it is being computed take that result (dashboards in many
//!   tabs, or a slow store, no longer pile up passes over the store);
//! - while this server changes nothing in the tables ([`Core::changes`]), a result is
//!   reused for [`OVERVIEW_MAX_AGE`]: an idle dashboard costs one pass per interval.
//!   Changes made through other servers on a shared database show within that interval;
//!   this server's own show at once.

use super::api::blocking;
use super::ApiError;
use crate::admin::{client_views, ClientView};
use crate::session::Core;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How long a result is reused while this server changes nothing.
pub(crate) const OVERVIEW_MAX_AGE: Duration = Duration::from_secs(10);

#[derive(Debug)]
struct Computed {
    /// When its computation began.
    started: Instant,
    /// [`Core::changes`] then.
    changes: u64,
    clients: Arc<Vec<ClientView>>,
}

/// See the module documentation.
#[derive(Debug, Default)]
pub(crate) struct Overview {
    /// Held while computing: requests arriving meanwhile wait and take its result.
    last: tokio::sync::Mutex<Option<Computed>>,
}

impl Overview {
    /// The clients, by name, with their files' counts and sizes.
    pub(crate) async fn clients(&self, core: &Arc<Core>) -> Result<Arc<Vec<ClientView>>, ApiError> {
        let asked = Instant::now();
        let mut last = self.last.lock().await;
        if let Some(computed) = last.as_ref() {
            let began_since_asked = computed.started >= asked;
            let unchanged =
                computed.changes == core.changes() && computed.started.elapsed() < OVERVIEW_MAX_AGE;
            if began_since_asked || unchanged {
                return Ok(Arc::clone(&computed.clients));
            }
        }
        let (started, changes) = (Instant::now(), core.changes());
        let core = Arc::clone(core);
        let clients =
            Arc::new(blocking(move || client_views(core.meta_store(), core.blob_store())).await?);
        *last = Some(Computed {
            started,
            changes,
            clients: Arc::clone(&clients),
        });
        Ok(clients)
    }
}
