//! `PublicKey::from_spki_der` reads the public-key field of an 826, which is untrusted
//! network input: arbitrary bytes and valid keys with random damage never panic, and
//! whatever is accepted is a 1024..=4096-bit key whose DER is the field's start, zeros
//! after it (rule S6 of docs/PROTOCOL.md). The fuzz target `parse_spki` runs the same
//! check for longer.
#![cfg(test)]

use proptest::prelude::*;
use sfc_crypto::PublicKey;
use std::path::PathBuf;

fn vector(name: &str) -> Vec<u8> {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/vectors")
        .join(name);
    std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// What an accepted field must satisfy.
fn check_accepted(field: &[u8]) {
    if let Ok(key) = PublicKey::from_spki_der(field) {
        assert!((1024..=4096).contains(&key.bits()), "{} bits", key.bits());
        let der = key.spki_der();
        assert!(field.starts_with(der), "the DER is the field's start");
        assert!(field[der.len()..].iter().all(|&b| b == 0), "zeros after it");
    }
}

proptest! {
    #[test]
    fn arbitrary_fields_never_panic(field in proptest::collection::vec(any::<u8>(), 0..1100)) {
        check_accepted(&field);
    }

    #[test]
    fn damaged_valid_keys_never_panic(
        which in 0usize..3,
        damage in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..6),
        cut in any::<prop::sample::Index>(),
        padding in 0usize..64,
    ) {
        let mut field = vector(["pycryptodome_pub.der", "pub_2048.der", "pub_4096.der"][which]);
        for (at, byte) in damage {
            let at = at.index(field.len());
            field[at] = byte;
        }
        field.extend(std::iter::repeat_n(0, padding));
        check_accepted(&field);
        field.truncate(cut.index(field.len() + 1));
        check_accepted(&field);
    }
}

#[test]
fn valid_keys_with_zero_padding_are_accepted_as_themselves() {
    for name in ["pycryptodome_pub.der", "pub_2048.der", "pub_4096.der"] {
        let der = vector(name);
        let mut padded = der.clone();
        padded.extend([0u8; 40]);
        let key = PublicKey::from_spki_der(&padded).unwrap();
        assert_eq!(key.spki_der(), der.as_slice(), "{name}");
        check_accepted(&padded);
    }
}
