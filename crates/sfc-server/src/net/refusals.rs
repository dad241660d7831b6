//! Log lines for connections refused before anything is read (rate-limit ban,
//! `--max-connections-per-address`, a source not in `--proxy-from`): visible to the operator, but at most one line per
//! address and reason per interval, with the number refused since the previous line, so
//! that a flood cannot flood the log. Addresses are counted as the limits count them
//! (IPv6 by its /64, [`key_of`]), and at most [`REMEMBERED`] of them: beyond that,
//! refusals from new addresses share one line ([`Refused::Others`]; not an address, so
//! that it is never taken for one, such as `::`, the /64 of `::1`).
//! Refusals held back when the flood stops are reported by [`RefusalLog::flush`], which
//! the listener calls every interval.

use super::log_throttle::LineThrottle;
use super::rate_limit::key_of;
use std::collections::HashMap;
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

/// At most one line per address and reason per this interval.
pub(crate) const REFUSAL_LOG_INTERVAL: Duration = Duration::from_secs(10);
/// Addresses remembered before the ones quiet for an interval are forgotten.
const REMEMBERED: usize = 4096;
/// A full table is swept at most this often.
const SWEEP_EVERY: Duration = Duration::from_secs(1);

/// Why a connection was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) enum Refusal {
    /// The address spent its failure budget (`--fail-rate`, `--fail-burst`).
    Banned,
    /// The address has `--max-connections-per-address` connections open.
    TooManyConnections,
    /// With `--proxy-protocol`, the connection does not come from a `--proxy-from`
    /// address (a client going around the balancer, or a misconfiguration).
    NotFromBalancer,
}

/// What a refusal's log line reported, for the dashboard's failure list.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Listed {
    /// Refusals since the previous line of its key, this one included.
    pub(crate) count: u64,
    /// Counted with every address beyond the ones remembered apart
    /// ([`Refused::Others`]), not with this peer's.
    pub(crate) others: bool,
}

impl Listed {
    /// One refusal of its own (those that cost their sender a failure are each listed).
    pub(crate) const ONE: Listed = Listed {
        count: 1,
        others: false,
    };
}

/// Whose refusals a line counts.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) enum Refused {
    /// One address (an IPv6 address's /64).
    From(IpAddr),
    /// The new addresses a full table had no room for, together.
    Others,
}

impl fmt::Display for Refused {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Refused::From(ip) => ip.fmt(f),
            // One token: log parsers take `peer=` up to the next space.
            Refused::Others => f.write_str("others"),
        }
    }
}

/// See the module documentation.
#[derive(Debug)]
pub(crate) struct RefusalLog {
    interval: Duration,
    table: Mutex<Table>,
}

#[derive(Debug, Default)]
struct Table {
    entries: HashMap<(Refused, Refusal), LineThrottle>,
    /// When a full table was last swept: at most once per second, so that a flood from
    /// new addresses does not sweep it on every refusal.
    swept_at: Option<Instant>,
}

impl RefusalLog {
    pub(crate) fn new(interval: Duration) -> Self {
        RefusalLog {
            interval,
            table: Mutex::default(),
        }
    }

    /// [`RefusalLog::count_keyed`] without the key.
    #[cfg(test)]
    fn count(&self, ip: IpAddr, why: Refusal, now: Instant) -> Option<u64> {
        self.count_keyed(ip, why, now).1
    }

    /// Counts one refusal; returns the key it was counted under, and how many refusals
    /// the line due now reports (this one included), or `None` when no line is due yet.
    fn count_keyed(&self, ip: IpAddr, why: Refusal, now: Instant) -> (Refused, Option<u64>) {
        let mut ip = Refused::From(key_of(ip));
        let mut table = self.table.lock().unwrap_or_else(PoisonError::into_inner);
        let Table { entries, swept_at } = &mut *table;
        if entries.len() >= REMEMBERED && !entries.contains_key(&(ip, why)) {
            let interval = self.interval;
            if swept_at.is_none_or(|at| now.saturating_duration_since(at) >= SWEEP_EVERY) {
                *swept_at = Some(now);
                entries.retain(|_, line| line.matters(now, interval));
            }
            if entries.len() >= REMEMBERED {
                // Still full of addresses refused within the interval: no room for more.
                ip = Refused::Others;
            }
        }
        let due = entries
            .entry((ip, why))
            .or_default()
            .count(now, self.interval);
        (ip, due)
    }

    /// The refusals held back whose interval has passed (no later refusal reported
    /// them), or with `all` every one held back (at shutdown), with their counts; they
    /// count as logged `now`.
    pub(crate) fn due(&self, now: Instant, all: bool) -> Vec<(Refused, Refusal, u64)> {
        let mut table = self.table.lock().unwrap_or_else(PoisonError::into_inner);
        table
            .entries
            .iter_mut()
            .filter_map(|(&(ip, why), line)| {
                let count = line.held_back(now, self.interval, all)?;
                Some((ip, why, count))
            })
            .collect()
    }

    /// Logs the lines [`RefusalLog::due`] returns.
    pub(crate) fn flush(&self, all: bool) {
        for (ip, why, count) in self.due(Instant::now(), all) {
            self.emit(&ip, ip == Refused::Others, why, count);
        }
    }

    /// Counts a refused connection from `peer` and logs a line when one is due; returns
    /// what that line reports, `None` when none was logged now (the dashboard's failure
    /// list takes these lines, so a flood pushes nothing off it either; the counts held
    /// back and logged later by [`RefusalLog::flush`] are only logged).
    pub(crate) fn refused(&self, peer: SocketAddr, why: Refusal) -> Option<Listed> {
        match self.count_keyed(peer.ip(), why, Instant::now()) {
            (Refused::From(_), Some(count)) => {
                self.emit(&peer, false, why, count);
                Some(Listed {
                    count,
                    others: false,
                })
            }
            (others, Some(count)) => {
                self.emit(&others, true, why, count);
                Some(Listed {
                    count,
                    others: true,
                })
            }
            (_, None) => None,
        }
    }

    #[cfg(test)]
    fn remembered(&self) -> usize {
        self.table
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .entries
            .len()
    }

    /// One line; `peer` is the address with the port of the refused connection, the
    /// address alone for refusals held back, or [`Refused::Others`].
    fn emit(&self, peer: &dyn std::fmt::Display, others: bool, why: Refusal, count: u64) {
        let every = self.interval.as_secs();
        let whence = if others {
            format!("from addresses beyond the {REMEMBERED} counted apart, together")
        } else {
            "from this address".to_owned()
        };
        match why {
            Refusal::Banned => tracing::warn!(
                peer = %peer,
                refused = count,
                "connections refused: too many failed requests {whence} (--fail-rate; at \
                 most one line per address every {every} s, with the number refused since \
                 the last)"
            ),
            Refusal::NotFromBalancer => tracing::warn!(
                peer = %peer,
                refused = count,
                "connections refused: not from a --proxy-from address {whence} \
                 (--proxy-protocol is on; at most one line per address every {every} s, \
                 with the number refused since the last)"
            ),
            Refusal::TooManyConnections => tracing::warn!(
                peer = %peer,
                refused = count,
                "connections refused: too many open connections {whence} \
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
    fn ipv6_addresses_share_the_line_of_their_64() {
        let log = RefusalLog::new(Duration::from_secs(10));
        let t0 = Instant::now();
        let one: IpAddr = "2001:db8:1:2::1".parse().unwrap();
        let same_64: IpAddr = "2001:db8:1:2:ffff::9".parse().unwrap();
        let other_64: IpAddr = "2001:db8:1:3::1".parse().unwrap();
        assert_eq!(log.count(one, Refusal::Banned, t0), Some(1));
        assert_eq!(log.count(same_64, Refusal::Banned, t0), None);
        assert_eq!(log.count(other_64, Refusal::Banned, t0), Some(1));
        let at = t0 + Duration::from_secs(10);
        let prefix: IpAddr = "2001:db8:1:2::".parse().unwrap();
        assert_eq!(
            log.due(at, false),
            vec![(Refused::From(prefix), Refusal::Banned, 1)]
        );
    }

    #[test]
    fn the_table_stays_bounded_and_a_flood_of_addresses_shares_one_line() {
        let log = RefusalLog::new(Duration::from_secs(10));
        let t0 = Instant::now();
        let address = |n: u32| IpAddr::from(std::net::Ipv4Addr::from(0x0a00_0000 + n));
        for n in 0..REMEMBERED as u32 {
            assert_eq!(log.count(address(n), Refusal::Banned, t0), Some(1));
        }
        // Every entry was logged within the interval: newcomers share one line.
        let extra = 5_000;
        let lines = (0..extra)
            .filter_map(|n| log.count(address(1 << 20 | n), Refusal::Banned, t0))
            .count();
        assert_eq!(lines, 1);
        assert_eq!(log.remembered(), REMEMBERED + 1);
        let due = log.due(t0 + Duration::from_secs(10), false);
        assert_eq!(
            due,
            vec![(Refused::Others, Refusal::Banned, u64::from(extra) - 1)]
        );
        // Its line names no address (before: `::`, also the line of `::1`'s /64).
        let shown = Refused::Others.to_string();
        assert!(shown.parse::<IpAddr>().is_err(), "{shown}");
        // Once the interval has passed, room is made for new addresses again.
        let later = t0 + Duration::from_secs(11);
        assert_eq!(log.count(address(1 << 21), Refusal::Banned, later), Some(1));
        assert!(log.remembered() <= REMEMBERED);
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
        assert_eq!(
            log.due(at, false),
            vec![(Refused::From(a), Refusal::Banned, 3)]
        );
        assert!(log.due(t0 + Duration::from_secs(30), true).is_empty());
        // They count as logged then: the next refusal within the interval waits.
        assert_eq!(
            log.count(a, Refusal::Banned, at + Duration::from_secs(1)),
            None
        );
        // At shutdown whatever is held back is reported, interval or not.
        assert_eq!(
            log.due(at + Duration::from_secs(2), true),
            vec![(Refused::From(a), Refusal::Banned, 1)]
        );
    }
}
