//! Per-source-address rate limits: registrations (825) and failed requests.
//!
//! Two token buckets per source address:
//!
//! - **registrations**: every 825 takes a token; without one the 825 is answered 1607
//!   (and counts as a failure). Bounds registration flooding and name squatting from
//!   one address.
//! - **failures**: every request answered 1601, 1606 or 1607 (and every failed TLS
//!   handshake) takes a token; the request that finds none still gets its reply, then
//!   the connection is closed, and new connections from that address are closed at once
//!   until the bucket has refilled to one token. Bounds guessing, forged requests with a
//!   sniffed client ID, key-replacement attempts and malformed-input floods.
//!
//! A bucket holds at most `burst` tokens and refills at `per_minute / 60` tokens a
//! second; a new address starts full. `per_minute = 0` switches a limit off.
//!
//! Addresses are keyed by IPv4 address, or by IPv6 /64 prefix (one host commonly owns a
//! whole /64); IPv4-mapped IPv6 addresses count as IPv4. The table itself is bounded
//! ([`MAX_TRACKED`] addresses): when it is full, addresses whose buckets are full again
//! (they carry no information) are dropped first; then, by default, the least recently
//! seen half ([`WhenFull::ForgetOldest`]: new clients are never held back by others'
//! floods), or, where refusing newcomers costs nothing that matters (the admin's wrong
//! tokens), the newcomers share one bucket ([`WhenFull::NewcomersShare`]: one who holds
//! many addresses cannot push their own spent buckets out for fresh ones).

use std::collections::HashMap;
use std::fmt;
use std::net::{IpAddr, Ipv6Addr};
use std::sync::{Mutex, PoisonError};
use std::time::Instant;

/// Most addresses tracked at once (about 100 bytes each).
pub const MAX_TRACKED: usize = 65_536;

/// A token-bucket limit: `burst` at once, refilled at `per_minute` a minute.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RateLimit {
    /// Tokens added per minute; 0 switches the limit off.
    pub per_minute: u32,
    /// Bucket size: what an address may use at once.
    pub burst: u32,
}

impl RateLimit {
    /// No limit.
    pub const UNLIMITED: RateLimit = RateLimit {
        per_minute: 0,
        burst: 0,
    };

    /// A limit of `per_minute` a minute with bursts of `burst`.
    pub const fn new(per_minute: u32, burst: u32) -> Self {
        RateLimit { per_minute, burst }
    }

    /// True when the limit is off.
    pub fn is_unlimited(&self) -> bool {
        self.per_minute == 0
    }

    fn capacity(&self) -> f64 {
        f64::from(self.burst.max(1))
    }

    fn per_second(&self) -> f64 {
        f64::from(self.per_minute) / 60.0
    }
}

impl fmt::Display for RateLimit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.is_unlimited() {
            write!(f, "unlimited")
        } else {
            write!(f, "{}/min, burst {}", self.per_minute, self.burst.max(1))
        }
    }
}

#[derive(Clone, Copy, Debug)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

impl Bucket {
    fn full(limit: &RateLimit, now: Instant) -> Self {
        Bucket {
            tokens: limit.capacity(),
            at: now,
        }
    }

    fn refill(&mut self, limit: &RateLimit, now: Instant) {
        let elapsed = now.saturating_duration_since(self.at).as_secs_f64();
        self.tokens = (self.tokens + elapsed * limit.per_second()).min(limit.capacity());
        self.at = now;
    }

    /// Takes a token if there is one.
    fn take(&mut self, limit: &RateLimit, now: Instant) -> bool {
        self.refill(limit, now);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }

    fn is_full(&self, limit: &RateLimit, now: Instant) -> bool {
        let mut probe = *self;
        probe.refill(limit, now);
        probe.tokens >= limit.capacity()
    }
}

#[derive(Debug)]
struct Entry {
    register: Bucket,
    failures: Bucket,
    touched: Instant,
}

/// What a full table does with a new address, once buckets that refilled are dropped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WhenFull {
    /// Drop the least recently seen half of the addresses.
    ForgetOldest,
    /// Count the new address in one bucket shared by every address the table has no
    /// room for.
    NewcomersShare,
}

/// The limiter shared by all connections; see the module documentation.
pub struct RateLimiter {
    register: RateLimit,
    failures: RateLimit,
    max_tracked: usize,
    when_full: WhenFull,
    table: Mutex<Table>,
}

#[derive(Debug, Default)]
struct Table {
    entries: HashMap<IpAddr, Entry>,
    /// The newcomers' shared entry ([`WhenFull::NewcomersShare`]).
    overflow: Option<Entry>,
}

impl fmt::Debug for RateLimiter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RateLimiter")
            .field("register", &self.register)
            .field("failures", &self.failures)
            .field("tracked", &self.tracked())
            .finish()
    }
}

/// The key an address is counted under: IPv4 as it is, IPv6 by its /64 prefix.
pub fn key_of(ip: IpAddr) -> IpAddr {
    match ip.to_canonical() {
        IpAddr::V4(v4) => IpAddr::V4(v4),
        IpAddr::V6(v6) => {
            let bits = u128::from(v6) & !((1u128 << 64) - 1);
            IpAddr::V6(Ipv6Addr::from(bits))
        }
    }
}

impl RateLimiter {
    /// A limiter with these limits.
    pub fn new(register: RateLimit, failures: RateLimit) -> Self {
        Self::with_capacity(register, failures, MAX_TRACKED)
    }

    /// A limiter tracking at most `max_tracked` addresses.
    pub fn with_capacity(register: RateLimit, failures: RateLimit, max_tracked: usize) -> Self {
        Self::with_policy(register, failures, max_tracked, WhenFull::ForgetOldest)
    }

    /// A limiter tracking at most `max_tracked` addresses, `when_full` deciding about
    /// new ones beyond.
    pub fn with_policy(
        register: RateLimit,
        failures: RateLimit,
        max_tracked: usize,
        when_full: WhenFull,
    ) -> Self {
        RateLimiter {
            register,
            failures,
            max_tracked: max_tracked.max(1),
            when_full,
            table: Mutex::new(Table::default()),
        }
    }

    /// Number of addresses tracked now (apart from the newcomers' shared bucket).
    pub fn tracked(&self) -> usize {
        self.table
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .entries
            .len()
    }

    /// An 825 from `ip`: true if it may be served.
    #[cfg(test)]
    pub fn allow_registration(&self, ip: IpAddr) -> bool {
        self.allow_registration_at(ip, Instant::now())
    }

    /// A request from `ip` failed (1601, 1606, 1607, failed handshake): true while the
    /// address is within its budget, false when it has none left (close the connection).
    pub fn record_failure(&self, ip: IpAddr) -> bool {
        self.record_failure_at(ip, Instant::now())
    }

    /// True when `ip` has no failure budget left (refuse its new connections).
    pub fn is_blocked(&self, ip: IpAddr) -> bool {
        self.is_blocked_at(ip, Instant::now())
    }

    pub(crate) fn allow_registration_at(&self, ip: IpAddr, now: Instant) -> bool {
        if self.register.is_unlimited() {
            return true;
        }
        let limit = self.register;
        self.with_entry(ip, now, |entry| entry.register.take(&limit, now))
    }

    pub(crate) fn record_failure_at(&self, ip: IpAddr, now: Instant) -> bool {
        if self.failures.is_unlimited() {
            return true;
        }
        let limit = self.failures;
        self.with_entry(ip, now, |entry| entry.failures.take(&limit, now))
    }

    pub(crate) fn is_blocked_at(&self, ip: IpAddr, now: Instant) -> bool {
        if self.failures.is_unlimited() {
            return false;
        }
        let table = self.table.lock().unwrap_or_else(PoisonError::into_inner);
        let entry = match table.entries.get(&key_of(ip)) {
            Some(entry) => Some(entry),
            // Not tracked: while the table is full, a newcomer counts in the shared
            // bucket (WhenFull::NewcomersShare; there is none otherwise).
            None if table.entries.len() >= self.max_tracked => table.overflow.as_ref(),
            None => None,
        };
        entry.is_some_and(|entry| {
            let mut bucket = entry.failures;
            bucket.refill(&self.failures, now);
            bucket.tokens < 1.0
        })
    }

    fn with_entry<T>(&self, ip: IpAddr, now: Instant, f: impl FnOnce(&mut Entry) -> T) -> T {
        let key = key_of(ip);
        let mut guard = self.table.lock().unwrap_or_else(PoisonError::into_inner);
        let table = &mut *guard;
        let fresh = || Entry {
            register: Bucket::full(&self.register, now),
            failures: Bucket::full(&self.failures, now),
            touched: now,
        };
        if !table.entries.contains_key(&key) && table.entries.len() >= self.max_tracked {
            self.make_room(table, now);
            if table.entries.len() >= self.max_tracked {
                // WhenFull::NewcomersShare, and no room even after the sweep.
                let entry = table.overflow.get_or_insert_with(fresh);
                entry.touched = now;
                return f(entry);
            }
        }
        let entry = table.entries.entry(key).or_insert_with(fresh);
        entry.touched = now;
        f(entry)
    }

    /// Drops addresses whose buckets are full (no information lost); if that is not
    /// enough, the least recently seen half ([`WhenFull::ForgetOldest`]), or nothing more
    /// (the newcomer goes to the shared bucket).
    fn make_room(&self, table: &mut Table, now: Instant) {
        let refilled = |e: &Entry| {
            e.register.is_full(&self.register, now) && e.failures.is_full(&self.failures, now)
        };
        table.entries.retain(|_, e| !refilled(e));
        if table.overflow.as_ref().is_some_and(refilled) {
            table.overflow = None;
        }
        if table.entries.len() < self.max_tracked || self.when_full == WhenFull::NewcomersShare {
            return;
        }
        let entries = &mut table.entries;
        let mut times: Vec<Instant> = entries.values().map(|e| e.touched).collect();
        times.sort_unstable();
        if let Some(median) = times.get(times.len() / 2).copied() {
            entries.retain(|_, e| e.touched > median);
        }
        if entries.len() >= self.max_tracked {
            // All seen at the same instant: start over rather than grow.
            entries.clear();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;
    use std::time::Duration;

    fn v4(last: u8) -> IpAddr {
        IpAddr::V4(Ipv4Addr::new(192, 0, 2, last))
    }

    #[test]
    fn registrations_are_limited_per_address_and_refill() {
        let limiter = RateLimiter::new(RateLimit::new(60, 3), RateLimit::UNLIMITED);
        let t0 = Instant::now();
        for _ in 0..3 {
            assert!(limiter.allow_registration_at(v4(1), t0));
        }
        assert!(!limiter.allow_registration_at(v4(1), t0), "burst used up");
        assert!(
            limiter.allow_registration_at(v4(2), t0),
            "another address has its own bucket"
        );
        // 60 a minute: one token a second.
        assert!(!limiter.allow_registration_at(v4(1), t0 + Duration::from_millis(500)));
        assert!(limiter.allow_registration_at(v4(1), t0 + Duration::from_millis(1600)));
        assert!(!limiter.allow_registration_at(v4(1), t0 + Duration::from_millis(1700)));
        // Refill never exceeds the burst.
        let later = t0 + Duration::from_secs(3600);
        for _ in 0..3 {
            assert!(limiter.allow_registration_at(v4(1), later));
        }
        assert!(!limiter.allow_registration_at(v4(1), later));
    }

    #[test]
    fn failures_block_an_address_until_it_refills() {
        let limiter = RateLimiter::new(RateLimit::UNLIMITED, RateLimit::new(6, 2));
        let t0 = Instant::now();
        assert!(!limiter.is_blocked_at(v4(1), t0));
        assert!(limiter.record_failure_at(v4(1), t0));
        assert!(limiter.record_failure_at(v4(1), t0));
        assert!(limiter.is_blocked_at(v4(1), t0));
        assert!(!limiter.record_failure_at(v4(1), t0), "over budget");
        assert!(!limiter.is_blocked_at(v4(2), t0));
        // 6 a minute: a token every 10 s.
        assert!(limiter.is_blocked_at(v4(1), t0 + Duration::from_secs(9)));
        assert!(!limiter.is_blocked_at(v4(1), t0 + Duration::from_secs(11)));
    }

    #[test]
    fn unlimited_is_unlimited_and_tracks_nothing() {
        let limiter = RateLimiter::new(RateLimit::UNLIMITED, RateLimit::UNLIMITED);
        for i in 0..1000u32 {
            assert!(limiter.allow_registration(v4((i % 250) as u8)));
            assert!(limiter.record_failure(v4(1)));
        }
        assert!(!limiter.is_blocked(v4(1)));
        assert_eq!(limiter.tracked(), 0);
    }

    #[test]
    fn ipv6_is_keyed_by_64_prefix_and_mapped_ipv4_as_ipv4() {
        let a: IpAddr = "2001:db8:1:2::1".parse().unwrap();
        let b: IpAddr = "2001:db8:1:2:ffff::9".parse().unwrap();
        let c: IpAddr = "2001:db8:1:3::1".parse().unwrap();
        assert_eq!(key_of(a), key_of(b));
        assert_ne!(key_of(a), key_of(c));
        let mapped: IpAddr = "::ffff:192.0.2.7".parse().unwrap();
        assert_eq!(key_of(mapped), v4(7));
        let limiter = RateLimiter::new(RateLimit::new(1, 1), RateLimit::UNLIMITED);
        assert!(limiter.allow_registration(a));
        assert!(!limiter.allow_registration(b), "same /64");
        assert!(limiter.allow_registration(c));
    }

    /// The limiter's own memory is bounded whatever the number of addresses.
    #[test]
    fn the_table_is_bounded() {
        let limiter = RateLimiter::with_capacity(RateLimit::new(1, 5), RateLimit::new(1, 5), 1000);
        let t0 = Instant::now();
        for i in 0..50_000u32 {
            let ip = IpAddr::V4(Ipv4Addr::from(0x0a00_0000 + i));
            let now = t0 + Duration::from_micros(u64::from(i));
            limiter.record_failure_at(ip, now);
            assert!(limiter.tracked() <= 1000);
        }
        // The most recent offenders are still remembered.
        let last = IpAddr::V4(Ipv4Addr::from(0x0a00_0000 + 49_999));
        for _ in 0..4 {
            limiter.record_failure_at(last, t0 + Duration::from_secs(1));
        }
        assert!(limiter.is_blocked_at(last, t0 + Duration::from_secs(1)));
    }

    #[test]
    fn entries_with_full_buckets_are_dropped_first() {
        let limiter = RateLimiter::with_capacity(RateLimit::new(60, 2), RateLimit::new(60, 2), 2);
        let t0 = Instant::now();
        limiter.record_failure_at(v4(1), t0);
        limiter.record_failure_at(v4(1), t0);
        limiter.record_failure_at(v4(2), t0);
        // 1 s later v4(2) is full again, v4(1) is not: v4(2) makes room for v4(3).
        let t1 = t0 + Duration::from_millis(1100);
        limiter.record_failure_at(v4(3), t1);
        assert_eq!(limiter.tracked(), 2);
        assert!(limiter.is_blocked_at(v4(1), t0 + Duration::from_millis(500)));
    }
}
