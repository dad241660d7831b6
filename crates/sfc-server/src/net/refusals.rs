//! Log lines for connections refused before anything is read (rate-limit ban,
//! `--max-connections-per-address`): visible to the operator, but at most one line per
//! address and reason per interval, with the number refused since the previous line, so
//! that a flood cannot flood the log. Refusals held back when the flood stops are
//! reported by [`RefusalLog::flush`], which the listener calls every interval.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

/// At most one line per address and reason per this interval.
pub(crate) const REFUSAL_LOG_INTERVAL: Duration = Duration::from_secs(10);
/// Addresses remembered before the ones quiet for an interval are forgotten.
const REMEMBERED: usize = 4096;

/// Why a connection was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) enum Refusal {
    /// The address spent its failure budget (`--fail-rate`, `--fail-burst`).
    Banned,
    /// The address has `--max-connections-per-address` connections open.
    TooManyConnections,
}

#[derive(Debug)]
struct Entry {
    logged_at: Instant,
    /// Refused since the last line.
    unlogged: u64,
}

/// See the module documentation.
#[derive(Debug)]
pub(crate) struct RefusalLog {
    interval: Duration,
    entries: Mutex<HashMap<(IpAddr, Refusal), Entry>>,
}

impl RefusalLog {
    pub(crate) fn new(interval: Duration) -> Self {
        RefusalLog {
            interval,
            entries: Mutex::default(),
        }
    }

    /// Counts one refusal; returns how many refusals the line due now reports (this
    /// one included), or `None` when no line is due yet.
    pub(crate) fn count(&self, ip: IpAddr, why: Refusal, now: Instant) -> Option<u64> {
        let mut entries = self.entries.lock().unwrap_or_else(PoisonError::into_inner);
        if entries.len() >= REMEMBERED {
            let interval = self.interval;
            entries.retain(|_, e| now.saturating_duration_since(e.logged_at) < interval);
        }
        match entries.get_mut(&(ip, why)) {
            Some(entry) if now.saturating_duration_since(entry.logged_at) < self.interval => {
                entry.unlogged += 1;
                None
            }
            Some(entry) => {
                let count = entry.unlogged + 1;
                entry.logged_at = now;
                entry.unlogged = 0;
                Some(count)
            }
            None => {
                entries.insert(
                    (ip, why),
                    Entry {
                        logged_at: now,
                        unlogged: 0,
                    },
                );
                Some(1)
            }
        }
    }

    /// The refusals held back whose interval has passed (no later refusal reported
    /// them), or with `all` every one held back (at shutdown), with their counts; they
    /// count as logged `now`.
    pub(crate) fn due(&self, now: Instant, all: bool) -> Vec<(IpAddr, Refusal, u64)> {
        let mut entries = self.entries.lock().unwrap_or_else(PoisonError::into_inner);
        entries
            .iter_mut()
            .filter(|(_, e)| {
                e.unlogged > 0
                    && (all || now.saturating_duration_since(e.logged_at) >= self.interval)
            })
            .map(|(&(ip, why), e)| {
                let count = std::mem::take(&mut e.unlogged);
                e.logged_at = now;
                (ip, why, count)
            })
            .collect()
    }

    /// Logs the lines [`RefusalLog::due`] returns.
    pub(crate) fn flush(&self, all: bool) {
        for (ip, why, count) in self.due(Instant::now(), all) {
            self.emit(&ip, why, count);
        }
    }

    /// Counts a refused connection from `peer` and logs a line when one is due.
    pub(crate) fn refused(&self, peer: SocketAddr, why: Refusal) {
        if let Some(count) = self.count(peer.ip(), why, Instant::now()) {
            self.emit(&peer, why, count);
        }
    }

    /// One line; `peer` is the address with the port of the refused connection, or the
    /// address alone for refusals held back.
    fn emit(&self, peer: &dyn std::fmt::Display, why: Refusal, count: u64) {
        let every = self.interval.as_secs();
        match why {
            Refusal::Banned => tracing::warn!(
                peer = %peer,
                refused = count,
                "connections refused: too many failed requests from this address (--fail-rate; \
                 at most one line per address every {every} s, with the number refused since \
                 the last)"
            ),
            Refusal::TooManyConnections => tracing::warn!(
                peer = %peer,
                refused = count,
                "connections refused: too many open connections from this address \
                 (--max-connections-per-address; at most one line per address every {every} \
                 s, with the number refused since the last)"
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_line_per_address_and_reason_per_interval_with_the_count() {
        let log = RefusalLog::new(Duration::from_secs(10));
        let t0 = Instant::now();
        let a: IpAddr = [10, 0, 0, 1].into();
        let b: IpAddr = [10, 0, 0, 2].into();
        assert_eq!(log.count(a, Refusal::Banned, t0), Some(1));
        for s in 1..5 {
            assert_eq!(
                log.count(a, Refusal::Banned, t0 + Duration::from_secs(s)),
                None
            );
        }
        // Another address, another reason: lines of their own.
        assert_eq!(log.count(b, Refusal::Banned, t0), Some(1));
        assert_eq!(log.count(a, Refusal::TooManyConnections, t0), Some(1));
        // After the interval: the 4 held back and this one.
        assert_eq!(
            log.count(a, Refusal::Banned, t0 + Duration::from_secs(11)),
            Some(5)
        );
        assert_eq!(
            log.count(a, Refusal::Banned, t0 + Duration::from_secs(12)),
            None
        );
    }

    #[test]
    fn refusals_held_back_are_reported_when_the_flood_stops() {
        let log = RefusalLog::new(Duration::from_secs(10));
        let t0 = Instant::now();
        let a: IpAddr = [10, 0, 0, 1].into();
        assert_eq!(log.count(a, Refusal::Banned, t0), Some(1));
        for s in 1..4 {
            assert_eq!(
                log.count(a, Refusal::Banned, t0 + Duration::from_secs(s)),
                None
            );
        }
        // Within the interval nothing is due; after it, the 3 held back, once.
        assert!(log.due(t0 + Duration::from_secs(5), false).is_empty());
        let at = t0 + Duration::from_secs(10);
        assert_eq!(log.due(at, false), vec![(a, Refusal::Banned, 3)]);
        assert!(log.due(t0 + Duration::from_secs(30), true).is_empty());
        // They count as logged then: the next refusal within the interval waits.
        assert_eq!(
            log.count(a, Refusal::Banned, at + Duration::from_secs(1)),
            None
        );
        // At shutdown whatever is held back is reported, interval or not.
        assert_eq!(
            log.due(at + Duration::from_secs(2), true),
            vec![(a, Refusal::Banned, 1)]
        );
    }
}
