//! A cap on simultaneous connections per source address (`--max-connections-per-address`).
//!
//! Without it one address can take every one of `--max-connections` and leave everyone
//! else waiting in the listen backlog. Addresses are counted like the rate limits
//! ([`crate::net::rate_limit::key_of`]: IPv4 as is, IPv6 by /64). A connection beyond the cap
//! is closed at once, before anything is read. The table holds only addresses with open
//! connections, so it is bounded by `--max-connections`.

use crate::net::rate_limit::key_of;
use std::collections::HashMap;
use std::fmt;
use std::net::IpAddr;
use std::sync::{Arc, Mutex, PoisonError};

/// Open connections per address, against a cap.
pub struct ConnectionsPerAddress {
    /// Most connections one address may hold; 0: no cap.
    max: usize,
    open: Mutex<HashMap<IpAddr, usize>>,
}

impl fmt::Debug for ConnectionsPerAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ConnectionsPerAddress")
            .field("max", &self.max)
            .field("addresses", &self.addresses())
            .finish()
    }
}

impl ConnectionsPerAddress {
    /// A table allowing `max` connections per address (0: no cap).
    pub fn new(max: usize) -> Arc<Self> {
        Arc::new(ConnectionsPerAddress {
            max,
            open: Mutex::default(),
        })
    }

    /// Counts a new connection from `ip`; `None` when the address is at its cap. The
    /// connection counts until the returned slot is dropped.
    pub fn enter(self: &Arc<Self>, ip: IpAddr) -> Option<AddressSlot> {
        let key = key_of(ip);
        if self.max > 0 {
            let mut open = self.open.lock().unwrap_or_else(PoisonError::into_inner);
            let count = open.entry(key).or_insert(0);
            if *count >= self.max {
                return None;
            }
            *count += 1;
        }
        Some(AddressSlot {
            table: Arc::clone(self),
            key,
        })
    }

    /// Connections currently counted for `ip`.
    #[cfg(test)]
    pub fn open_from(&self, ip: IpAddr) -> usize {
        let open = self.open.lock().unwrap_or_else(PoisonError::into_inner);
        open.get(&key_of(ip)).copied().unwrap_or(0)
    }

    /// Addresses with at least one open connection.
    pub fn addresses(&self) -> usize {
        self.open
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
    }

    fn leave(&self, key: IpAddr) {
        if self.max == 0 {
            return;
        }
        let mut open = self.open.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(count) = open.get_mut(&key) {
            *count = count.saturating_sub(1);
            if *count == 0 {
                open.remove(&key);
            }
        }
    }
}

/// One counted connection; dropping it frees its place.
pub struct AddressSlot {
    table: Arc<ConnectionsPerAddress>,
    key: IpAddr,
}

impl fmt::Debug for AddressSlot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AddressSlot")
            .field("key", &self.key)
            .finish()
    }
}

impl Drop for AddressSlot {
    fn drop(&mut self) {
        self.table.leave(self.key);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    #[test]
    fn each_address_gets_at_most_the_cap_and_leaving_frees_a_place() {
        let table = ConnectionsPerAddress::new(2);
        let a = ip("10.0.0.1");
        let first = table.enter(a).unwrap();
        let _second = table.enter(a).unwrap();
        assert!(table.enter(a).is_none());
        // Another address is not affected.
        let _other = table.enter(ip("10.0.0.2")).unwrap();
        assert_eq!(table.open_from(a), 2);
        drop(first);
        assert_eq!(table.open_from(a), 1);
        let _again = table.enter(a).unwrap();
        assert!(table.enter(a).is_none());
    }

    #[test]
    fn ipv6_counts_per_64_and_mapped_ipv4_as_ipv4() {
        let table = ConnectionsPerAddress::new(1);
        let _one = table.enter(ip("2001:db8:1:2::1")).unwrap();
        assert!(
            table.enter(ip("2001:db8:1:2:ffff::9")).is_none(),
            "same /64"
        );
        let _other = table.enter(ip("2001:db8:1:3::1")).unwrap();
        let _v4 = table.enter(ip("192.0.2.7")).unwrap();
        assert!(
            table.enter(ip("::ffff:192.0.2.7")).is_none(),
            "mapped = the IPv4"
        );
    }

    #[test]
    fn the_table_forgets_addresses_without_connections() {
        let table = ConnectionsPerAddress::new(5);
        let slots: Vec<_> = (1..=100u8)
            .map(|n| table.enter(IpAddr::from([10, 0, 1, n])).unwrap())
            .collect();
        assert_eq!(table.addresses(), 100);
        drop(slots);
        assert_eq!(table.addresses(), 0);
    }

    #[test]
    fn zero_means_no_cap() {
        let table = ConnectionsPerAddress::new(0);
        let slots: Vec<_> = (0..1000)
            .map(|_| table.enter(ip("10.0.0.1")).unwrap())
            .collect();
        assert_eq!(slots.len(), 1000);
        assert_eq!(table.addresses(), 0, "nothing is tracked without a cap");
    }
}
