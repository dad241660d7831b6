//! The public-key field of an 826 (untrusted network input) through
//! `PublicKey::from_spki_der`: never panics, and what it accepts is a 1024..=4096-bit key
//! whose DER is the field's start, with only zeros after it. Seeds: the committed
//! public keys (`seeds/parse_spki/`); `crates/sfc-crypto/tests/spki_properties.rs` runs
//! the same check on every `cargo test`.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sfc_crypto::PublicKey;

fuzz_target!(|field: &[u8]| {
    if let Ok(key) = PublicKey::from_spki_der(field) {
        assert!((1024..=4096).contains(&key.bits()));
        let der = key.spki_der();
        assert!(field.starts_with(der));
        assert!(field[der.len()..].iter().all(|&b| b == 0));
    }
});
