//! Deterministic stand-ins for what the session takes from outside (feature `testing`).

use crate::session::{Entropy, PeerPolicy};
use sfc_crypto::AesKey;
use sfc_proto::ClientId;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

/// Client IDs and AES keys from a counter: reproducible runs (fuzzing, property tests).
/// IDs are never all-zero and never repeat.
#[derive(Debug, Default)]
pub struct CountingEntropy {
    next: AtomicU64,
}

impl CountingEntropy {
    fn next(&self) -> u64 {
        self.next.fetch_add(1, Ordering::Relaxed) + 1
    }
}

impl Entropy for CountingEntropy {
    fn client_id(&self) -> ClientId {
        let mut id = [0xc1; 16];
        id[8..].copy_from_slice(&self.next().to_le_bytes());
        ClientId(id)
    }

    fn aes_key(&self) -> AesKey {
        let mut key = [0x4b; 32];
        key[..8].copy_from_slice(&self.next().to_le_bytes());
        // 32 bytes: always a valid AES-256 key.
        AesKey::from_bytes(&key).unwrap_or_else(|_| AesKey::random())
    }
}

/// No rate limits, no address pins.
#[derive(Debug, Default, Clone, Copy)]
pub struct OpenDoors;

impl PeerPolicy for OpenDoors {
    fn allow_registration(&self, _peer: IpAddr, _now: Instant) -> bool {
        true
    }

    fn record_failure(&self, _peer: IpAddr, _now: Instant) -> bool {
        true
    }

    fn address_allowed(&self, _client: &ClientId, _peer: IpAddr) -> bool {
        true
    }

    fn pin(&self, _client: ClientId, _peer: IpAddr) -> Option<IpAddr> {
        None
    }
}
