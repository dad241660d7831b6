//! The client list with each client's file count and bytes, as the dashboard, the client
//! list and the API's stats show them. Computing it reads every `files` row and asks the
//! file store for every file's size (an S3 `HEAD` each with `--store s3://`), so a pass
//! runs as a task of its own, one at a time, and its result is shared:
//!
//! - requests arriving while a pass runs wait for it (dashboards in many tabs, or a slow
//!   store, no longer pile up passes); a request that goes away (a closed tab) does not
//!   stop it, and its result is kept for the next;
//! - a result is reused while this server changes nothing in the tables
//!   ([`Core::changes`]) for [`OVERVIEW_MAX_AGE`]; for the dashboard's polling
//!   ([`Freshness::Polled`]), also for [`OVERVIEW_MIN_AGE`] whatever clients change
//!   meanwhile (a busy server passes over its store at most once per interval for it, not
//!   once per look). A change made through the admin listener itself (a delete) shows at
//!   once; the client list shows clients' changes at once too. Changes made through other
//!   servers on a shared database show within [`OVERVIEW_MAX_AGE`];
//! - with a store whose paths are immutable (S3: a key per upload), a pass asks the store
//!   only for the sizes of files stored since the last pass ([`KnownSizes`]).

use super::api::blocking;
use super::ApiError;
use crate::admin::{client_views_reusing, ClientView, KnownSizes};
use crate::session::Core;
use axum::http::StatusCode;
use futures::future::{BoxFuture, FutureExt, Shared};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

/// How long a result is reused while this server changes nothing.
pub(crate) const OVERVIEW_MAX_AGE: Duration = Duration::from_secs(10);
/// How long a result is reused whatever clients change (not the admin listener).
pub(crate) const OVERVIEW_MIN_AGE: Duration = Duration::from_secs(2);

type Pass = Shared<BoxFuture<'static, Result<Arc<Vec<ClientView>>, String>>>;

/// How current a result must be.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Freshness {
    /// Computed after this server's last change (the client list, the API).
    Current,
    /// The dashboard's polling: up to [`OVERVIEW_MIN_AGE`] behind clients' changes.
    Polled,
}

/// When a pass began, and what had changed by then.
#[derive(Clone, Copy, Debug)]
struct Stamp {
    started: Instant,
    /// [`Core::changes`] then.
    changes: u64,
    /// [`Overview::admin_changes`] then.
    admin_changes: u64,
}

#[derive(Default)]
struct State {
    last: Option<(Stamp, Arc<Vec<ClientView>>)>,
    running: Option<(Stamp, Pass)>,
    /// The sizes the last pass to succeed read (every pass starts from them; each key's
    /// size never changes, so any pass's are right).
    sizes: Arc<KnownSizes>,
}

/// See the module documentation.
#[derive(Default)]
pub(crate) struct Overview {
    state: Arc<Mutex<State>>,
    /// Raised by [`Overview::changed_here`].
    admin_changes: AtomicU64,
}

impl std::fmt::Debug for Overview {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Overview").finish_non_exhaustive()
    }
}

impl Stamp {
    /// Whether what was computed at this stamp may answer a request made at `asked`, now
    /// that `now` has changed.
    fn answers(&self, asked: Instant, now: &Stamp, freshness: Freshness) -> bool {
        let age = now.started.saturating_duration_since(self.started);
        self.started >= asked
            || (self.changes == now.changes && age < OVERVIEW_MAX_AGE)
            || (freshness == Freshness::Polled
                && self.admin_changes == now.admin_changes
                && age < OVERVIEW_MIN_AGE)
    }

    /// Whether a pass begun at this stamp, still running, may answer a request now.
    fn may_join(&self, now: &Stamp, freshness: Freshness) -> bool {
        match freshness {
            Freshness::Current => self.changes == now.changes,
            Freshness::Polled => self.admin_changes == now.admin_changes,
        }
    }
}

impl Overview {
    /// The clients, by name, with their files' counts and sizes.
    pub(crate) async fn clients(
        &self,
        core: &Arc<Core>,
        freshness: Freshness,
    ) -> Result<Arc<Vec<ClientView>>, ApiError> {
        let asked = Instant::now();
        loop {
            let (pass, answers) = {
                let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
                let now = self.stamp(core);
                if let Some((stamp, clients)) = &state.last {
                    if stamp.answers(asked, &now, freshness) {
                        return Ok(Arc::clone(clients));
                    }
                }
                match &state.running {
                    // A pass under way answers if it began late enough; one that began
                    // too early is waited for all the same (one pass at a time), then
                    // looked at again.
                    Some((stamp, pass)) => (pass.clone(), stamp.may_join(&now, freshness)),
                    None => {
                        let pass = self.start(core, now, Arc::clone(&state.sizes));
                        state.running = Some((now, pass.clone()));
                        (pass, true)
                    }
                }
            };
            let result = pass
                .await
                .map_err(|error| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, error));
            if answers {
                return result;
            }
        }
    }

    /// After a change made through the admin listener: the next request does not get a
    /// result computed before it.
    pub(crate) fn changed_here(&self) {
        self.admin_changes.fetch_add(1, Ordering::SeqCst);
    }

    fn stamp(&self, core: &Core) -> Stamp {
        Stamp {
            started: Instant::now(),
            changes: core.changes(),
            admin_changes: self.admin_changes.load(Ordering::SeqCst),
        }
    }

    /// Starts a pass as a task of its own, which keeps its result (unless a later pass's
    /// is kept already) whether or not anyone still waits for it; `sizes` are those the
    /// last pass read, and the sizes this one read are kept for the next.
    fn start(&self, core: &Arc<Core>, stamp: Stamp, sizes: Arc<KnownSizes>) -> Pass {
        let (core, state) = (Arc::clone(core), Arc::clone(&self.state));
        let task = tokio::spawn(async move {
            let result = blocking(move || {
                client_views_reusing(core.meta_store(), core.blob_store(), &sizes)
            })
            .await
            .map_err(|error| error.1);
            let mut state = state.lock().unwrap_or_else(PoisonError::into_inner);
            let result = result.map(|(views, sizes)| {
                state.sizes = Arc::new(sizes);
                Arc::new(views)
            });
            if state
                .running
                .as_ref()
                .is_some_and(|(running, _)| running.started == stamp.started)
            {
                state.running = None;
            }
            if let Ok(clients) = &result {
                let newer = state
                    .last
                    .as_ref()
                    .is_some_and(|(last, _)| last.started > stamp.started);
                if !newer {
                    state.last = Some((stamp, Arc::clone(clients)));
                }
            }
            result
        });
        async move {
            task.await
                .unwrap_or_else(|error| Err(format!("the overview's pass failed: {error}")))
        }
        .boxed()
        .shared()
    }
}
