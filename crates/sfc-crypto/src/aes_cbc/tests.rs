use aes::cipher::block_padding::{NoPadding, Pkcs7};
use aes::cipher::{BlockEncryptMut, KeyIvInit};
use proptest::prelude::*;

use super::*;

type RefEnc = cbc::Encryptor<aes::Aes256>;

fn test_key() -> AesKey {
    AesKey::from_bytes(&(0u8..32).collect::<Vec<_>>()).unwrap()
}

/// Reference: RustCrypto one-shot AES-256-CBC, zero IV, PKCS#7.
fn reference_encrypt(key: &AesKey, data: &[u8]) -> Vec<u8> {
    RefEnc::new(key.as_bytes().into(), &ZERO_IV.into()).encrypt_padded_vec_mut::<Pkcs7>(data)
}

/// Raw CBC (no padding added) of block-aligned `data`.
fn raw_encrypt(key: &AesKey, data: &[u8]) -> Vec<u8> {
    assert_eq!(data.len() % 16, 0);
    RefEnc::new(key.as_bytes().into(), &ZERO_IV.into()).encrypt_padded_vec_mut::<NoPadding>(data)
}

/// Splits `data` at the given (unsorted, possibly repeated) points.
fn split<'a>(data: &'a [u8], cuts: &[prop::sample::Index]) -> Vec<&'a [u8]> {
    let mut points: Vec<usize> = cuts.iter().map(|i| i.index(data.len() + 1)).collect();
    points.sort_unstable();
    let mut parts = Vec::new();
    let mut prev = 0;
    for p in points {
        parts.push(&data[prev..p]);
        prev = p;
    }
    parts.push(&data[prev..]);
    parts
}

fn encrypt_parts(key: &AesKey, parts: &[&[u8]]) -> Vec<u8> {
    let mut enc = CbcEncryptor::new(key).unwrap();
    let mut out = Vec::new();
    for p in parts {
        let before = out.len();
        enc.update(p, &mut out).unwrap();
        assert_eq!(out.len() % 16, 0, "update emits whole blocks only");
        assert!(out.len() - before <= p.len() + 15);
    }
    assert_eq!(enc.bytes_in(), parts.iter().map(|p| p.len() as u64).sum());
    enc.finish(&mut out).unwrap();
    out
}

fn decrypt_parts(key: &AesKey, parts: &[&[u8]]) -> Result<Vec<u8>, CryptoError> {
    let mut dec = CbcDecryptor::new(key).unwrap();
    let mut out = Vec::new();
    for p in parts {
        dec.update(p, &mut out)?;
    }
    assert_eq!(dec.bytes_in(), parts.iter().map(|p| p.len() as u64).sum());
    dec.finish(&mut out)?;
    Ok(out)
}

fn decrypt(key: &AesKey, data: &[u8]) -> Result<Vec<u8>, CryptoError> {
    decrypt_parts(key, &[data])
}

#[test]
fn encrypted_len_formula() {
    assert_eq!(encrypted_len(0), 16);
    assert_eq!(encrypted_len(1), 16);
    assert_eq!(encrypted_len(15), 16);
    assert_eq!(encrypted_len(16), 32);
    assert_eq!(encrypted_len(17), 32);
    assert_eq!(encrypted_len(100_000), 100_016);
    assert_eq!(encrypted_len(u64::MAX), u64::MAX);
    for n in 0..100u64 {
        assert_eq!(encrypted_len(n), 16 * (n / 16 + 1));
    }
}

#[test]
fn aes_key_basics() {
    assert_eq!(
        AesKey::from_bytes(&[0; 31]).unwrap_err(),
        CryptoError::InvalidAesKeyLength { len: 31 }
    );
    assert_eq!(
        AesKey::from_bytes(&[0; 33]).unwrap_err(),
        CryptoError::InvalidAesKeyLength { len: 33 }
    );
    let a = AesKey::random();
    let b = AesKey::random();
    assert_ne!(a, b);
    assert_eq!(a.clone(), a);
    let k = AesKey::from_bytes(&[0xAB; 32]).unwrap();
    assert_eq!(k.as_bytes(), &[0xAB; 32]);
    let dbg = format!("{k:?}");
    assert!(
        !dbg.to_lowercase().contains("ab") && !dbg.contains("171"),
        "{dbg}"
    );
}

#[test]
fn known_lengths_match_reference() {
    let key = test_key();
    for n in [0usize, 1, 15, 16, 17, 31, 32, 33, 4096, 100_000] {
        let data: Vec<u8> = (0..n).map(|i| (i * 7 + 3) as u8).collect();
        let ct = encrypt_parts(&key, &[&data]);
        assert_eq!(ct.len() as u64, encrypted_len(n as u64));
        assert_eq!(ct, reference_encrypt(&key, &data), "n = {n}");
        assert_eq!(decrypt(&key, &ct).unwrap(), data);
        // Byte-at-a-time both ways.
        let bytes: Vec<&[u8]> = data.chunks(1).collect();
        if n <= 4096 {
            assert_eq!(encrypt_parts(&key, &bytes), ct);
            let ct_bytes: Vec<&[u8]> = ct.chunks(1).collect();
            assert_eq!(decrypt_parts(&key, &ct_bytes).unwrap(), data);
        }
    }
}

#[test]
fn empty_updates_are_harmless() {
    let key = test_key();
    let data = b"0123456789abcdefXYZ";
    let ct = encrypt_parts(&key, &[b"", &data[..5], b"", &data[5..], b""]);
    assert_eq!(ct, reference_encrypt(&key, data));
    assert_eq!(
        decrypt_parts(&key, &[b"", &ct[..3], b"", &ct[3..], b""]).unwrap(),
        data
    );
}

#[test]
fn update_appends_without_realloc() {
    let key = test_key();
    let mut enc = CbcEncryptor::new(&key).unwrap();
    let chunk = vec![0x11u8; 65536];
    let mut out = Vec::with_capacity(65536 + AES_BLOCK_LEN);
    out.extend_from_slice(b"");
    let ptr = out.as_ptr();
    enc.update(&chunk[..100], &mut out).unwrap();
    assert_eq!(out.len(), 96);
    out.clear();
    enc.update(&chunk, &mut out).unwrap();
    assert_eq!(out.len(), 65536);
    assert_eq!(out.as_ptr(), ptr, "no reallocation with enough capacity");
    // Appends after existing content.
    let mut prefixed = b"prefix".to_vec();
    enc.update(&chunk[..16], &mut prefixed).unwrap();
    assert_eq!(&prefixed[..6], b"prefix");
    assert_eq!(prefixed.len(), 6 + 16);
}

#[test]
fn decryptor_length_errors() {
    let key = test_key();
    assert_eq!(
        decrypt(&key, b"").unwrap_err(),
        CryptoError::CiphertextLength { len: 0 }
    );
    assert_eq!(
        decrypt(&key, &[0u8; 17]).unwrap_err(),
        CryptoError::CiphertextLength { len: 17 }
    );
    assert_eq!(
        decrypt(&key, &[0u8; 15]).unwrap_err(),
        CryptoError::CiphertextLength { len: 15 }
    );
    let ct = reference_encrypt(&key, b"some data that spans blocks");
    assert_eq!(
        decrypt(&key, &ct[..ct.len() - 1]).unwrap_err(),
        CryptoError::CiphertextLength {
            len: ct.len() as u64 - 1
        }
    );
}

#[test]
fn decryptor_bad_padding() {
    let key = test_key();
    // Plaintexts whose last block is not valid PKCS#7, encrypted without adding padding.
    let mut bad_tails: Vec<[u8; 16]> = vec![[0u8; 16], [17u8; 16], [0xFF; 16]];
    let mut t = [3u8; 16];
    t[14] = 2; // "... 2 3": claims 3 bytes of padding, but they are not all 3
    bad_tails.push(t);
    let mut t = [16u8; 16];
    t[0] = 15; // claims 16 bytes of padding, the first is not 16
    bad_tails.push(t);
    for tail in bad_tails {
        for prefix_blocks in [0usize, 1, 3] {
            let mut pt = vec![0x61u8; prefix_blocks * 16];
            pt.extend_from_slice(&tail);
            let ct = raw_encrypt(&key, &pt);
            assert_eq!(
                decrypt(&key, &ct).unwrap_err(),
                CryptoError::BadPadding,
                "tail {tail:?}"
            );
        }
    }
    // Wrong key: overwhelmingly bad padding (fixed key pair chosen so it is).
    let ct = reference_encrypt(&key, b"hello world\n");
    let other = AesKey::from_bytes(&[9u8; 32]).unwrap();
    let res = decrypt(&other, &ct);
    assert!(
        res.is_err() || res.as_deref() != Ok(b"hello world\n".as_slice()),
        "{res:?}"
    );
}

#[test]
fn valid_full_padding_block() {
    // A plaintext ending exactly on a block boundary gets a whole block of 16s.
    let key = test_key();
    let pt = [0x42u8; 32];
    let ct = encrypt_parts(&key, &[&pt]);
    assert_eq!(ct.len(), 48);
    let mut padded = pt.to_vec();
    padded.extend_from_slice(&[16u8; 16]);
    assert_eq!(ct, raw_encrypt(&key, &padded));
}

#[test]
fn debug_impls() {
    let key = test_key();
    let enc = CbcEncryptor::new(&key).unwrap();
    let dec = CbcDecryptor::new(&key).unwrap();
    assert!(format!("{enc:?}").contains("bytes_in"));
    assert!(format!("{dec:?}").contains("bytes_in"));
}

proptest! {
    #[test]
    fn chunked_encrypt_equals_one_shot(
        data in proptest::collection::vec(any::<u8>(), 0..3000),
        cuts in proptest::collection::vec(any::<prop::sample::Index>(), 0..10),
        key in any::<[u8; 32]>(),
    ) {
        let key = AesKey::from_bytes(&key).unwrap();
        let one_shot = encrypt_parts(&key, &[&data]);
        prop_assert_eq!(&one_shot, &reference_encrypt(&key, &data));
        let parts = split(&data, &cuts);
        prop_assert_eq!(encrypt_parts(&key, &parts), one_shot);
    }

    #[test]
    fn decrypt_inverts_encrypt(
        data in proptest::collection::vec(any::<u8>(), 0..3000),
        enc_cuts in proptest::collection::vec(any::<prop::sample::Index>(), 0..10),
        dec_cuts in proptest::collection::vec(any::<prop::sample::Index>(), 0..10),
        key in any::<[u8; 32]>(),
    ) {
        let key = AesKey::from_bytes(&key).unwrap();
        let ct = encrypt_parts(&key, &split(&data, &enc_cuts));
        prop_assert_eq!(ct.len() as u64, encrypted_len(data.len() as u64));
        let pt = decrypt_parts(&key, &split(&ct, &dec_cuts)).unwrap();
        prop_assert_eq!(pt, data);
    }

    /// Arbitrary bytes as ciphertext (what a client sends in its 828s), read in arbitrary
    /// pieces: never a panic, and the pieces never change the answer (the same plaintext,
    /// or the same kind of error: a length that is not whole blocks, bad padding).
    #[test]
    fn arbitrary_ciphertext_in_any_pieces_decrypts_as_in_one(
        ct in proptest::collection::vec(any::<u8>(), 0..3000),
        cuts in proptest::collection::vec(any::<prop::sample::Index>(), 0..10),
        key in any::<[u8; 32]>(),
    ) {
        let key = AesKey::from_bytes(&key).unwrap();
        let whole = decrypt(&key, &ct);
        let pieces = decrypt_parts(&key, &split(&ct, &cuts));
        match (&whole, &pieces) {
            (Ok(a), Ok(b)) => prop_assert_eq!(a, b),
            (Err(a), Err(b)) => prop_assert_eq!(
                std::mem::discriminant(a),
                std::mem::discriminant(b)
            ),
            _ => prop_assert!(false, "{whole:?} against {pieces:?}"),
        }
    }
}

/// `update_into` on a reused, never re-zeroed buffer produces exactly what `update`
/// appends, for any split; a short output buffer is refused before anything is consumed.
#[test]
fn update_into_matches_update() {
    let key = test_key();
    let data: Vec<u8> = (0..70_000u32).map(|i| (i * 13 + 5) as u8).collect();
    let expected = reference_encrypt(&key, &data);
    for piece in [1usize, 15, 16, 17, 1000, 4096, 65_536, 70_000] {
        let mut scratch = vec![0xEEu8; piece + AES_BLOCK_LEN];
        let mut enc = CbcEncryptor::new(&key).unwrap();
        let mut ct = Vec::new();
        for p in data.chunks(piece) {
            let n = enc.update_into(p, &mut scratch).unwrap();
            assert_eq!(n % AES_BLOCK_LEN, 0);
            ct.extend_from_slice(&scratch[..n]);
        }
        enc.finish(&mut ct).unwrap();
        assert_eq!(ct, expected, "piece {piece}");

        let mut dec = CbcDecryptor::new(&key).unwrap();
        let mut plain = Vec::new();
        for p in ct.chunks(piece) {
            let n = dec.update_into(p, &mut scratch).unwrap();
            plain.extend_from_slice(&scratch[..n]);
        }
        assert_eq!(dec.bytes_in(), ct.len() as u64);
        dec.finish(&mut plain).unwrap();
        assert_eq!(plain, data, "piece {piece}");
    }

    let mut enc = CbcEncryptor::new(&key).unwrap();
    let mut short = [0u8; 32];
    assert_eq!(
        enc.update_into(&[0; 32], &mut short),
        Err(CryptoError::Cipher)
    );
    assert_eq!(enc.bytes_in(), 0);
    let mut dec = CbcDecryptor::new(&key).unwrap();
    assert_eq!(
        dec.update_into(&[0; 32], &mut short),
        Err(CryptoError::Cipher)
    );
    assert_eq!(dec.bytes_in(), 0);
    let mut enough = [0u8; 47];
    assert_eq!(enc.update_into(&[0; 32], &mut enough), Ok(32));
}
