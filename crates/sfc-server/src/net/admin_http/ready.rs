//! `/readyz`'s probe of the stores, shared: a probe (a database lookup, a file store size
//! query: an S3 `HEAD`) runs for one request at a time, requests arriving meanwhile take
//! its answer, and a success is reused for [`READY_REUSE`], so that a balancer (or anyone:
//! the route needs no token) probing often does not cost the stores a query per request.
//! A failure is never reused (a recovered store shows at the next probe); its detail is
//! logged, at most one line per [`FAILURE_LOG_EVERY`], not sent.

use crate::net::log_throttle::SharedLine;
use crate::session::Core;
use sfc_proto::ClientId;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How long a successful probe answers for.
pub(crate) const READY_REUSE: Duration = Duration::from_secs(1);
/// At most one log line about failed probes per this interval.
pub(crate) const FAILURE_LOG_EVERY: Duration = Duration::from_secs(10);

/// See the module documentation.
#[derive(Debug)]
pub(crate) struct Readiness {
    /// When the last probe began, and its answer; held while probing.
    last: tokio::sync::Mutex<Option<(Instant, Result<(), &'static str>)>>,
    pub(super) failures_logged: SharedLine,
}

impl Default for Readiness {
    fn default() -> Self {
        Readiness {
            last: tokio::sync::Mutex::default(),
            failures_logged: SharedLine::new(FAILURE_LOG_EVERY),
        }
    }
}

impl Readiness {
    /// `Ok`, or which store failed (`"database"`, `"file store"`).
    pub(crate) async fn check(&self, core: &Arc<Core>) -> Result<(), &'static str> {
        let asked = Instant::now();
        let mut last = self.last.lock().await;
        if let Some((started, answer)) = *last {
            let began_since_asked = started >= asked;
            if began_since_asked || (answer.is_ok() && started.elapsed() < READY_REUSE) {
                return answer;
            }
        }
        let started = Instant::now();
        let core = Arc::clone(core);
        let answer = match tokio::task::spawn_blocking(move || probe(&core)).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err((which, detail))) => {
                self.log_failure(which, &detail);
                Err(which)
            }
            Err(error) => {
                self.log_failure("probe", &error.to_string());
                Err("probe")
            }
        };
        *last = Some((started, answer));
        answer
    }

    fn log_failure(&self, which: &str, detail: &str) {
        if let Some(count) = self.failures_logged.count() {
            tracing::warn!(
                store = which,
                error = detail,
                failures = count,
                "admin: /readyz: not ready (at most one line every {} s, with the number of failed probes since the last)",
                FAILURE_LOG_EVERY.as_secs()
            );
        }
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
