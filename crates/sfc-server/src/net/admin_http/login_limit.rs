//! The admin listener's failed-login limit: wrong tokens are counted per address, keyed
//! as every other per-address limit ([`key_of`]: IPv4 as is, IPv6 by its /64, which one
//! host commonly owns whole and could otherwise rotate through for fresh budgets).
//!
//! The table is bounded ([`MAX_TRACKED`] addresses). Expired windows are swept at most
//! once per [`SWEEP_EVERY`], so neither a flood nor an address that stopped trying keeps
//! them. When the table is still full, new addresses share one overflow window: a flood
//! from many addresses costs no memory and only gets wrong tokens refused sooner, since
//! the right token is never refused (see `access::authenticate`).

use crate::net::rate_limit::key_of;
use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

/// Failed logins (or wrong bearer tokens) one address may make per minute; beyond it
/// every attempt gets 429 until the minute is over.
pub const LOGIN_FAILURES_PER_MINUTE: u32 = 5;
/// The window the failures are counted in.
const WINDOW: Duration = Duration::from_secs(60);
/// Addresses tracked at most (plus the shared overflow window).
pub(super) const MAX_TRACKED: usize = 4096;
/// Expired windows are swept at most this often (a sweep walks the whole table).
const SWEEP_EVERY: Duration = Duration::from_secs(1);

/// Failures counted since `started`.
#[derive(Clone, Copy, Debug)]
struct Window {
    started: Instant,
    failures: u32,
}

impl Window {
    fn is_live(&self, now: Instant) -> bool {
        now.saturating_duration_since(self.started) < WINDOW
    }

    fn is_spent(&self, now: Instant) -> bool {
        self.is_live(now) && self.failures >= LOGIN_FAILURES_PER_MINUTE
    }
}

/// See the module documentation.
#[derive(Debug, Default)]
pub(crate) struct FailedLogins {
    table: Mutex<Table>,
}

#[derive(Debug, Default)]
struct Table {
    windows: HashMap<IpAddr, Window>,
    /// Shared by the addresses a full table has no room for.
    overflow: Option<Window>,
    swept_at: Option<Instant>,
}

impl Table {
    fn sweep_if_due(&mut self, now: Instant) {
        if self
            .swept_at
            .is_some_and(|at| now.saturating_duration_since(at) < SWEEP_EVERY)
        {
            return;
        }
        self.swept_at = Some(now);
        self.windows.retain(|_, window| window.is_live(now));
        self.overflow = self.overflow.filter(|window| window.is_live(now));
    }

    /// True when `key` has (or may get) a window of its own.
    fn has_room_for(&self, key: &IpAddr) -> bool {
        self.windows.contains_key(key) || self.windows.len() < MAX_TRACKED
    }
}

impl FailedLogins {
    /// True when `ip` (its /64 for IPv6) has used up its failed logins for this minute.
    pub(crate) fn blocked(&self, ip: IpAddr, now: Instant) -> bool {
        let key = key_of(ip);
        let mut table = self.table.lock().unwrap_or_else(PoisonError::into_inner);
        table.sweep_if_due(now);
        let window = if table.has_room_for(&key) {
            table.windows.get(&key)
        } else {
            table.overflow.as_ref()
        };
        window.is_some_and(|window| window.is_spent(now))
    }

    /// Counts a failed login from `ip` (its /64 for IPv6).
    pub(crate) fn failed(&self, ip: IpAddr, now: Instant) {
        let key = key_of(ip);
        let mut table = self.table.lock().unwrap_or_else(PoisonError::into_inner);
        table.sweep_if_due(now);
        let fresh = Window {
            started: now,
            failures: 0,
        };
        let window = if table.has_room_for(&key) {
            table.windows.entry(key).or_insert(fresh)
        } else {
            table.overflow.get_or_insert(fresh)
        };
        if !window.is_live(now) {
            *window = fresh;
        }
        window.failures = window.failures.saturating_add(1);
    }

    /// Addresses with a window of their own now.
    #[cfg(test)]
    fn tracked(&self) -> usize {
        self.table
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .windows
            .len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{Ipv4Addr, Ipv6Addr};

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    fn fail_until_blocked(limit: &FailedLogins, ip: IpAddr, now: Instant) {
        for _ in 0..LOGIN_FAILURES_PER_MINUTE {
            assert!(!limit.blocked(ip, now), "{ip} blocked too early");
            limit.failed(ip, now);
        }
        assert!(limit.blocked(ip, now), "{ip} not blocked");
    }

    #[test]
    fn failures_block_an_address_for_a_minute() {
        let limit = FailedLogins::default();
        let t = Instant::now();
        fail_until_blocked(&limit, ip("192.0.2.1"), t);
        assert!(!limit.blocked(ip("192.0.2.2"), t), "another address");
        // The IPv4-mapped form is the same address.
        assert!(limit.blocked(ip("::ffff:192.0.2.1"), t));
        assert!(limit.blocked(ip("192.0.2.1"), t + Duration::from_secs(59)));
        assert!(!limit.blocked(ip("192.0.2.1"), t + WINDOW));
    }

    /// One host owns its /64: rotating through it gives no fresh budget.
    #[test]
    fn addresses_of_one_ipv6_64_share_one_budget() {
        let limit = FailedLogins::default();
        let t = Instant::now();
        for n in 0..LOGIN_FAILURES_PER_MINUTE {
            let rotated = ip(&format!("2001:db8:1:2:{:x}::{n}", n + 1));
            assert!(!limit.blocked(rotated, t));
            limit.failed(rotated, t);
        }
        assert!(limit.blocked(ip("2001:db8:1:2:ffff:ffff:ffff:ffff"), t));
        assert!(limit.blocked(ip("2001:db8:1:2::1"), t));
        // The neighbouring /64s have budgets of their own.
        assert!(!limit.blocked(ip("2001:db8:1:3::1"), t));
        assert!(!limit.blocked(ip("2001:db8:1:1:ffff:ffff:ffff:ffff"), t));
        fail_until_blocked(&limit, ip("2001:db8:1:3::1"), t);
        assert_eq!(limit.tracked(), 2);
    }

    #[test]
    fn the_table_stays_bounded_under_many_addresses() {
        let limit = FailedLogins::default();
        let t = Instant::now();
        // One failure each from many /64s within the same second.
        for n in 0..(MAX_TRACKED as u64 * 3) {
            let ip = IpAddr::V6(Ipv6Addr::from(u128::from(n) << 64 | 1));
            limit.failed(ip, t);
        }
        assert_eq!(limit.tracked(), MAX_TRACKED);
        // A tracked address keeps its own budget...
        let first = IpAddr::V6(Ipv6Addr::from(1u128));
        assert!(!limit.blocked(first, t));
        // ...the addresses without room shared one, spent long ago.
        let newcomer = IpAddr::V4(Ipv4Addr::new(198, 51, 100, 7));
        assert!(limit.blocked(newcomer, t));
        // Once the minute is over, the next sweep empties the table.
        let later = t + WINDOW;
        assert!(!limit.blocked(newcomer, later));
        assert_eq!(limit.tracked(), 0);
        limit.failed(newcomer, later);
        assert_eq!(limit.tracked(), 1);
    }

    /// An address that stopped trying does not linger: the next failure from anyone
    /// (at most one sweep a second) drops it.
    #[test]
    fn expired_windows_are_swept_at_most_once_a_second() {
        let limit = FailedLogins::default();
        let t = Instant::now();
        limit.failed(ip("192.0.2.1"), t);
        limit.failed(ip("192.0.2.2"), t + WINDOW - Duration::from_millis(500));
        assert_eq!(limit.tracked(), 2);
        // The first window has expired, but the table was swept less than a second ago.
        limit.failed(ip("192.0.2.3"), t + WINDOW);
        assert_eq!(limit.tracked(), 3);
        limit.failed(ip("192.0.2.3"), t + WINDOW + SWEEP_EVERY);
        assert_eq!(limit.tracked(), 2, "192.0.2.1 swept");
    }
}
