//! `/readyz`'s probe of the stores, shared: a probe (a database lookup, a file store size
//! query: an S3 `HEAD`) runs as a task of its own, one at a time; requests arriving
//! meanwhile take its answer, and a success is reused for [`READY_REUSE`], so that a
//! balancer (or anyone: the route needs no token) probing often does not cost the stores
//! a query per request. A request that goes away (a balancer's time-out) does not stop
//! the probe, and the next request takes its answer instead of starting another. A
//! failure is never reused once its probe is over (a recovered store shows at the next
//! probe); its detail is logged, at most one line per [`super::LOG_EVERY`], not sent. A
//! probe without an answer within [`PROBE_TIMEOUT`] (a hung store: NFS, a black-holed
//! endpoint) fails (`probe`); until the store answers it, requests get that answer at
//! once and no other probe starts (each would hold a blocking thread on the same store).

use crate::net::log_throttle::SharedLine;
use crate::session::Core;
use futures::future::{BoxFuture, FutureExt, Shared};
use sfc_proto::ClientId;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

/// How long a successful probe answers for.
pub(crate) const READY_REUSE: Duration = Duration::from_secs(1);
/// How long a probe may wait for the stores before it fails.
pub(crate) const PROBE_TIMEOUT: Duration = Duration::from_secs(5);

/// A probe's answer: `Ok`, or which store failed (`"database"`, `"file store"`).
type Answer = Result<(), &'static str>;
type Probe = Shared<BoxFuture<'static, Answer>>;

#[derive(Default)]
struct State {
    /// When the last probe finished, and its answer.
    last: Option<(Instant, Answer)>,
    /// The probe under way.
    running: Option<Probe>,
    /// A probe timed out and still waits for the stores.
    stuck: bool,
}

/// See the module documentation.
#[derive(Debug)]
pub(crate) struct Readiness {
    state: Arc<Mutex<State>>,
    pub(super) failures_logged: Arc<SharedLine>,
}

impl std::fmt::Debug for State {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("State")
            .field("last", &self.last)
            .field("running", &self.running.is_some())
            .field("stuck", &self.stuck)
            .finish()
    }
}

impl Default for Readiness {
    fn default() -> Self {
        Readiness {
            state: Arc::default(),
            failures_logged: Arc::new(SharedLine::new(super::LOG_EVERY)),
        }
    }
}

impl Readiness {
    /// `Ok`, or which store failed (`"database"`, `"file store"`).
    pub(crate) async fn check(&self, core: &Arc<Core>) -> Answer {
        let probe = {
            let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
            match (&state.last, &state.running) {
                (Some((finished, Ok(()))), _) if finished.elapsed() < READY_REUSE => {
                    return Ok(());
                }
                (_, Some(probe)) => probe.clone(),
                _ if state.stuck => {
                    drop(state);
                    log_failure(
                        &self.failures_logged,
                        "probe",
                        "the last probe still waits for the stores",
                    );
                    return Err("probe");
                }
                _ => {
                    let probe = self.start(core);
                    state.running = Some(probe.clone());
                    probe
                }
            }
        };
        probe.await
    }

    /// Starts a probe as a task of its own, which records its answer whether or not
    /// anyone still waits for it.
    fn start(&self, core: &Arc<Core>) -> Probe {
        let core = Arc::clone(core);
        let (state, failures_logged) = (Arc::clone(&self.state), Arc::clone(&self.failures_logged));
        let task = tokio::spawn(async move {
            let mut blocking = tokio::task::spawn_blocking(move || probe(&core));
            let answer = match tokio::time::timeout(PROBE_TIMEOUT, &mut blocking).await {
                Ok(Ok(Ok(()))) => Ok(()),
                Ok(Ok(Err((which, detail)))) => {
                    log_failure(&failures_logged, which, &detail);
                    Err(which)
                }
                Ok(Err(error)) => {
                    log_failure(&failures_logged, "probe", &error.to_string());
                    Err("probe")
                }
                Err(_) => {
                    let waited = format!("no answer within {} s", PROBE_TIMEOUT.as_secs());
                    log_failure(&failures_logged, "probe", &waited);
                    state.lock().unwrap_or_else(PoisonError::into_inner).stuck = true;
                    let unstuck = Arc::clone(&state);
                    tokio::spawn(async move {
                        let _ = blocking.await;
                        unstuck.lock().unwrap_or_else(PoisonError::into_inner).stuck = false;
                    });
                    Err("probe")
                }
            };
            let mut state = state.lock().unwrap_or_else(PoisonError::into_inner);
            state.last = Some((Instant::now(), answer));
            state.running = None;
            answer
        });
        async move { task.await.unwrap_or(Err("probe")) }
            .boxed()
            .shared()
    }
}

fn log_failure(line: &SharedLine, which: &str, detail: &str) {
    if let Some(count) = line.count() {
        tracing::warn!(
            store = which,
            error = detail,
            failures = count,
            "admin: /readyz: not ready (at most one line every {} s, with the number of failed probes since the last)",
            super::LOG_EVERY.as_secs()
        );
    }
}

/// One probe of both stores: `Err((which, detail))` for the first that fails.
fn probe(core: &Core) -> Result<(), (&'static str, String)> {
    let probe = ClientId([0; 16]);
    core.meta_store()
        .client(&probe)
        .map_err(|error| ("database", error.to_string()))?;
    match core
        .blob_store()
        .size(&format!("files/{}/readyz-probe", probe.to_hex()))
    {
        Ok(_) => Ok(()),
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(error) => Err(("file store", error.to_string())),
    }
}
