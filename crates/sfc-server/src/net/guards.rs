//! The per-address decisions a conversation asks for ([`PeerPolicy`]): the rate limits
//! ([`super::rate_limit`]) and the opt-in address pins ([`super::address_pin`]), with
//! the clock read here, in the socket layer.

use super::address_pin::AddressPins;
use super::rate_limit::RateLimiter;
use crate::session::PeerPolicy;
use sfc_proto::ClientId;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Instant;

/// Rate limits and (when `--pin-address` is on) address pins, shared by all connections.
#[derive(Debug)]
pub struct AddressGuards {
    /// Registrations and failures per address.
    pub rate: Arc<RateLimiter>,
    /// `--pin-address`: `None` when off.
    pub pins: Option<AddressPins>,
}

impl PeerPolicy for AddressGuards {
    fn allow_registration(&self, peer: IpAddr, now: Instant) -> bool {
        self.rate.allow_registration_at(peer, now)
    }

    fn record_failure(&self, peer: IpAddr, now: Instant) -> bool {
        self.rate.record_failure_at(peer, now)
    }

    fn address_allowed(&self, client: &ClientId, peer: IpAddr) -> bool {
        self.pins
            .as_ref()
            .is_none_or(|pins| pins.allows(client, peer))
    }

    fn pin(&self, client: ClientId, peer: IpAddr) -> Option<IpAddr> {
        self.pins.as_ref().and_then(|pins| pins.pin(client, peer))
    }
}
