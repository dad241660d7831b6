//! The admin listener's failed-login limit: the failure budget of a [`RateLimiter`], so
//! keyed as every other per-address limit (IPv4 as is, IPv6 by its /64, which one host
//! commonly owns whole and could otherwise rotate through for fresh budgets).
//!
//! A token bucket: [`LOGIN_FAILURES_PER_MINUTE`] wrong tokens at once, then one more
//! every [`RETRY_AFTER`] (12 s). The table is the limiter's, bounded at [`MAX_TRACKED`]
//! addresses: refilled buckets are dropped first, and newcomers to a table still full
//! share one bucket ([`WhenFull::NewcomersShare`]), so that someone holding many /64s
//! cannot push their own spent buckets out for fresh ones. That can refuse a newcomer's
//! wrong tokens sooner, nothing more: only wrong tokens are ever refused, the right one
//! gets in whatever the budget (see `access::authenticate`).

use crate::net::rate_limit::{RateLimit, RateLimiter, WhenFull};
use std::net::IpAddr;
use std::time::{Duration, Instant};

/// Wrong tokens one address may try at once, and per minute once they are used up.
pub const LOGIN_FAILURES_PER_MINUTE: u32 = 5;
/// How long a verdict on a token takes while its address is blocked, the right token's
/// too (so that the wait says nothing): a refusal that came at once would tell a guesser
/// "wrong" as quickly as a 401 does, and the limit would slow nothing. Each connection
/// then gets one verdict per this delay; the operator's right token still gets in, after it.
pub const BLOCKED_VERDICT_DELAY: Duration = Duration::from_secs(2);
/// How long a blocked address waits for its next try.
pub(super) const RETRY_AFTER: Duration = Duration::from_secs(60 / LOGIN_FAILURES_PER_MINUTE as u64);
/// What a refused wrong token is told (the page and the API alike).
pub(super) fn refusal_text() -> String {
    format!(
        "Too many failed logins from this address; try again in {} s.",
        RETRY_AFTER.as_secs()
    )
}

/// Addresses tracked at most: an admin listener sees few.
const MAX_TRACKED: usize = 4096;

/// See the module documentation.
#[derive(Debug)]
pub(crate) struct FailedLogins(RateLimiter);

impl Default for FailedLogins {
    fn default() -> Self {
        let limit = RateLimit::new(LOGIN_FAILURES_PER_MINUTE, LOGIN_FAILURES_PER_MINUTE);
        FailedLogins(RateLimiter::with_policy(
            RateLimit::UNLIMITED,
            limit,
            MAX_TRACKED,
            WhenFull::NewcomersShare,
        ))
    }
}

impl FailedLogins {
    /// True when `ip` (its /64 for IPv6) has no wrong token left to try.
    pub(crate) fn blocked(&self, ip: IpAddr, now: Instant) -> bool {
        self.0.is_blocked_at(ip, now)
    }

    /// Spends one of `ip`'s (its /64's) tries on a wrong token.
    pub(crate) fn failed(&self, ip: IpAddr, now: Instant) {
        self.0.record_failure_at(ip, now);
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
    fn five_at_once_then_one_every_12_seconds() {
        let limit = FailedLogins::default();
        let t = Instant::now();
        fail_until_blocked(&limit, ip("192.0.2.1"), t);
        assert!(!limit.blocked(ip("192.0.2.2"), t), "another address");
        // The IPv4-mapped form is the same address.
        assert!(limit.blocked(ip("::ffff:192.0.2.1"), t));
        // Asking does not spend: still blocked until the next try has refilled.
        let almost = t + RETRY_AFTER - Duration::from_millis(100);
        assert!(limit.blocked(ip("192.0.2.1"), almost));
        let next = t + RETRY_AFTER;
        assert!(!limit.blocked(ip("192.0.2.1"), next));
        limit.failed(ip("192.0.2.1"), next);
        assert!(
            limit.blocked(ip("192.0.2.1"), next),
            "one try, not a new five"
        );
        // A quiet minute refills the whole burst.
        fail_until_blocked(&limit, ip("192.0.2.1"), next + Duration::from_secs(60));
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
        assert_eq!(limit.0.tracked(), 2);
    }

    /// Someone holding many /64s spends the budgets of a full table's worth of them,
    /// then comes back from new ones: the newcomers share one budget, and the spent
    /// buckets stay (not pushed out for fresh ones).
    #[test]
    fn a_full_table_makes_newcomers_share_one_budget() {
        let limit = FailedLogins::default();
        let t = Instant::now();
        let nth = |n: u64| IpAddr::V6(Ipv6Addr::from(u128::from(n) << 64 | 1));
        for n in 0..MAX_TRACKED as u64 {
            for _ in 0..LOGIN_FAILURES_PER_MINUTE {
                limit.failed(nth(n), t);
            }
        }
        assert_eq!(limit.0.tracked(), MAX_TRACKED);
        let later = t + Duration::from_secs(1);
        for n in 0..u64::from(LOGIN_FAILURES_PER_MINUTE) {
            let newcomer = nth(MAX_TRACKED as u64 + n);
            assert!(!limit.blocked(newcomer, later), "newcomer {n}");
            limit.failed(newcomer, later);
        }
        assert!(limit.blocked(nth(MAX_TRACKED as u64 + 100), later));
        assert!(
            limit.blocked(nth(0), later),
            "a spent bucket was pushed out"
        );
        assert_eq!(limit.0.tracked(), MAX_TRACKED);
    }

    #[test]
    fn the_table_stays_bounded_under_many_addresses() {
        let limit = FailedLogins::default();
        let t = Instant::now();
        // One failure each from many /64s, a microsecond apart.
        for n in 0..(MAX_TRACKED as u64 * 3) {
            let ip = IpAddr::V6(Ipv6Addr::from(u128::from(n) << 64 | 1));
            limit.failed(ip, t + Duration::from_micros(n));
            assert!(limit.0.tracked() <= MAX_TRACKED);
        }
        // The addresses beyond the table shared one budget, long spent.
        let now = t + Duration::from_secs(1);
        let newcomer = IpAddr::V4(Ipv4Addr::new(198, 51, 100, 7));
        assert!(limit.blocked(newcomer, now));
        // A quiet minute later every bucket has refilled: room again, and a budget of its
        // own.
        fail_until_blocked(&limit, newcomer, t + Duration::from_secs(120));
        assert!(!limit.blocked(ip("198.51.100.8"), t + Duration::from_secs(120)));
        assert!(limit.0.tracked() <= MAX_TRACKED);
    }
}
