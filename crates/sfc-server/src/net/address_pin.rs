//! Opt-in (`--pin-address`): a client's 828/900/901/902 are accepted only from the
//! address of its latest successful key exchange (826 answered 1602, 827 answered 1605)
//! in this run of the server.
//!
//! Nothing in those requests authenticates the sender: the client ID travels in clear,
//! so anyone who has seen it can delete the client's files (902), mark them verified
//! (900), overwrite them with garbage (828: one try in ~256 decrypts to valid padding) or
//! use the server as a CBC padding oracle against the client's current key (828 answered
//! 1603 or 1607). Tying these requests to the address that did the key exchange stops
//! all of that from any other address, without a byte of the protocol changing.
//!
//! Opt-in because it is not compatible with every deployment: a client whose address
//! changes within a session (mobile networks, NAT pools with several public addresses)
//! would be refused (1607, then it gives up). A client that has not done a key exchange
//! since the server started is refused too (fail closed); every client of the protocol
//! starts its run with an 826 or 827. Addresses are compared like the rate limits key them
//! ([`crate::net::rate_limit::key_of`]: IPv6 by /64, IPv4-mapped as IPv4).
//!
//! What it does not do: the protocol has no proof of key possession, so a forged 826 (the
//! public key is public) or 827 from another address moves the pin there. But that forged
//! key exchange rotates the client's AES key (its session in progress breaks, and the
//! new key is wrapped for the real client's public key, which key pinning keeps) and is
//! logged as a move; so probing the key of a recorded session from elsewhere becomes
//! impossible, and deleting or overwriting from elsewhere becomes loud instead of silent.
//! Only TLS (which hides the client ID) or a future protocol version that authenticates
//! requests stops it.
//!
//! Memory: one entry per client that completed a key exchange (bounded by the registered
//! clients, which registration rate limits bound in turn).

use crate::net::rate_limit::key_of;
use sfc_proto::ClientId;
use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Mutex, PoisonError};

/// Client ID → address of its latest key exchange.
#[derive(Debug, Default)]
pub struct AddressPins {
    pins: Mutex<HashMap<ClientId, IpAddr>>,
}

impl AddressPins {
    /// An empty table.
    pub fn new() -> Self {
        Self::default()
    }

    /// The client completed a key exchange from `ip`: its later requests must come from
    /// there. Returns the address it was pinned to before, when that was another one.
    pub fn pin(&self, id: ClientId, ip: IpAddr) -> Option<IpAddr> {
        let key = key_of(ip);
        self.pins
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(id, key)
            .filter(|before| *before != key)
    }

    /// True when a request for `id` from `ip` may be served.
    pub fn allows(&self, id: &ClientId, ip: IpAddr) -> bool {
        self.pins
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(id)
            .is_some_and(|pinned| *pinned == key_of(ip))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_address_of_the_latest_key_exchange_is_allowed() {
        let pins = AddressPins::new();
        let id = ClientId([1; 16]);
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        let b: IpAddr = "192.0.2.2".parse().unwrap();
        assert!(!pins.allows(&id, a), "no key exchange yet: refused");
        assert_eq!(pins.pin(id, a), None);
        assert_eq!(pins.pin(id, a), None);
        assert!(pins.allows(&id, a));
        assert!(pins.allows(&id, "::ffff:192.0.2.1".parse().unwrap()));
        assert!(!pins.allows(&id, b));
        assert_eq!(pins.pin(id, b), Some(a), "a move is reported");
        assert!(pins.allows(&id, b));
        assert!(!pins.allows(&id, a));
        assert!(!pins.allows(&ClientId([2; 16]), b));
    }
}
