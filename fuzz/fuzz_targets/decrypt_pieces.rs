//! The content of a client's 828s (untrusted ciphertext) through `CbcDecryptor` in
//! pieces: never panics, and the pieces never change the answer (the same plaintext, or
//! the same kind of error). Input: a 32-byte key, a byte choosing the pieces' sizes (its
//! value + 1, then one byte, alternately), then the ciphertext. Seeds: `seeds/
//! decrypt_pieces/` (real ciphertexts and a bad padding);
//! `arbitrary_ciphertext_in_any_pieces_decrypts_as_in_one` in
//! `crates/sfc-crypto/src/aes_cbc/tests.rs` is its property test.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sfc_crypto::{AesKey, CbcDecryptor, CryptoError};

fn decrypt(key: &AesKey, pieces: &[&[u8]]) -> Result<Vec<u8>, CryptoError> {
    let mut decryptor = CbcDecryptor::new(key)?;
    let mut out = Vec::new();
    for piece in pieces {
        decryptor.update(piece, &mut out)?;
    }
    decryptor.finish(&mut out)?;
    Ok(out)
}

fuzz_target!(|input: &[u8]| {
    let Some((key, rest)) = input.split_at_checked(32) else {
        return;
    };
    let Some((&step, ciphertext)) = rest.split_first() else {
        return;
    };
    let key = AesKey::from_bytes(key).expect("32 bytes are a key");
    let mut pieces = Vec::new();
    let mut left = ciphertext;
    let mut long = true;
    while !left.is_empty() {
        let size = if long { usize::from(step) + 1 } else { 1 };
        let (piece, after) = left.split_at(size.min(left.len()));
        pieces.push(piece);
        left = after;
        long = !long;
    }
    let whole = decrypt(&key, &[ciphertext]);
    let split = decrypt(&key, &pieces);
    match (&whole, &split) {
        (Ok(a), Ok(b)) => assert_eq!(a, b),
        (Err(a), Err(b)) => assert_eq!(std::mem::discriminant(a), std::mem::discriminant(b)),
        _ => panic!("{whole:?} in one piece, {split:?} in {}", pieces.len()),
    }
});
