//! What the accept loops (the protocol listener's and the admin listener's) do when
//! `accept` fails. Out of descriptors or memory, the process pauses before the next
//! accept (the pending connections wait in the listen backlog) instead of spinning; an
//! error of one connection that went before it was accepted (`ECONNABORTED`, a network
//! error Linux reports through `accept`) costs nothing more than that connection. Either
//! way the log gets at most one line per [`WARN_EVERY`], with the number of failures
//! since the last, so that exhaustion lasting minutes is not ten lines a second.

use super::log_throttle::LineThrottle;
use std::io;
use std::time::{Duration, Instant};

/// The pause after an accept failed for want of descriptors or memory.
pub(crate) const EXHAUSTED_PAUSE: Duration = Duration::from_millis(100);
/// At most one log line per this interval.
pub(crate) const WARN_EVERY: Duration = Duration::from_secs(10);

/// Failures of one listener's `accept`, for its log lines.
#[derive(Debug)]
pub(crate) struct AcceptErrors {
    /// What the log lines name (the listener).
    what: &'static str,
    line: LineThrottle,
}

impl AcceptErrors {
    pub(crate) fn new(what: &'static str) -> Self {
        AcceptErrors {
            what,
            line: LineThrottle::default(),
        }
    }

    /// Counts `error`, logs when a line is due, and says how long to wait before the
    /// next accept.
    pub(crate) fn failed(&mut self, error: &io::Error, now: Instant) -> Option<Duration> {
        if let Some(count) = self.line.count(now, WARN_EVERY) {
            tracing::warn!(%error, failures = count, "{}: accept failed (at most one line every {} s, with the number of failures since the last)", self.what, WARN_EVERY.as_secs());
        }
        is_exhaustion(error).then_some(EXHAUSTED_PAUSE)
    }
}

/// Whether `error` says the process (or the system) is out of descriptors or memory,
/// as opposed to a failure of the one connection being accepted.
#[cfg(unix)]
pub(crate) fn is_exhaustion(error: &io::Error) -> bool {
    use rustix::io::Errno;
    Errno::from_io_error(error).is_some_and(|errno| {
        [Errno::MFILE, Errno::NFILE, Errno::NOBUFS, Errno::NOMEM].contains(&errno)
    })
}

/// Elsewhere every failure pauses, as before.
#[cfg(not(unix))]
pub(crate) fn is_exhaustion(_error: &io::Error) -> bool {
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    #[cfg(unix)]
    #[test]
    fn only_exhaustion_pauses_the_accept_loop() {
        let mut errors = AcceptErrors::new("test listener");
        let now = Instant::now();
        for errno in [rustix::io::Errno::MFILE, rustix::io::Errno::NFILE] {
            let error = io::Error::from_raw_os_error(errno.raw_os_error());
            assert_eq!(errors.failed(&error, now), Some(EXHAUSTED_PAUSE));
        }
        for errno in [rustix::io::Errno::CONNABORTED, rustix::io::Errno::PROTO] {
            let error = io::Error::from_raw_os_error(errno.raw_os_error());
            assert_eq!(errors.failed(&error, now), None, "{errno:?}");
        }
    }
}
