//! Committed vectors made by PyCryptodome (`interop/gen_crypto_vectors.py`); no Python
//! needed here.
#![cfg(test)]

use std::path::PathBuf;

use sfc_crypto::{
    encrypted_len, AesKey, CbcDecryptor, CbcEncryptor, CryptoError, PublicKey, RsaKeyPair,
    PUBLIC_KEY_DER_LEN, WRAPPED_KEY_LEN_1024,
};

fn vector(name: &str) -> Vec<u8> {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/vectors")
        .join(name);
    std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn fixed_key() -> AesKey {
    AesKey::from_bytes(&(0u8..32).collect::<Vec<_>>()).unwrap()
}

fn pattern(n: usize) -> Vec<u8> {
    (0..n).map(|i| ((i * 7 + 3) % 256) as u8).collect()
}

#[test]
fn pycryptodome_public_key() {
    let der = vector("pycryptodome_pub.der");
    assert_eq!(der.len(), PUBLIC_KEY_DER_LEN);
    let k = PublicKey::from_spki_der(&der).unwrap();
    assert_eq!(k.bits(), 1024);
    assert_eq!(k.spki_der(), der.as_slice());
    let wrapped = k.wrap_aes_key(&fixed_key()).unwrap();
    assert_eq!(wrapped.len(), WRAPPED_KEY_LEN_1024);
}

#[test]
fn pycryptodome_private_key_all_encodings() {
    let public = vector("pycryptodome_pub.der");
    let wrapped = vector("wrap_for_pycryptodome_key.bin");
    let pkcs8 = vector("pycryptodome_priv.pkcs8.der");
    let pkcs1 = vector("pycryptodome_priv.pkcs1.der");
    let pem = vector("pycryptodome_priv.pkcs8.pem");
    let pairs = [
        RsaKeyPair::from_pkcs8_der(&pkcs8).unwrap(),
        RsaKeyPair::from_pkcs8_der(&pkcs1).unwrap(),
        RsaKeyPair::from_file_bytes(&pkcs8).unwrap(),
        RsaKeyPair::from_file_bytes(&pkcs1).unwrap(),
        RsaKeyPair::from_file_bytes(&pem).unwrap(),
        RsaKeyPair::from_base64(std::str::from_utf8(&pem).unwrap()).unwrap(),
    ];
    for pair in pairs {
        // Our SPKI encoding of PyCryptodome's key is byte-identical to PyCryptodome's.
        assert_eq!(pair.public_key_der(), public);
        // Our PKCS#8 re-export too.
        assert_eq!(pair.to_pkcs8_der().unwrap().as_slice(), pkcs8.as_slice());
        assert_eq!(pair.unwrap_aes_key(&wrapped).unwrap(), fixed_key());
    }
}

#[test]
fn our_key_pair_unwraps_pycryptodome_wrap() {
    let public = vector("ours_pub.der");
    assert_eq!(public.len(), PUBLIC_KEY_DER_LEN);
    let pair = RsaKeyPair::from_file_bytes(&vector("ours_priv.b64")).unwrap();
    assert_eq!(pair.public_key_der(), public);
    let key = pair
        .unwrap_aes_key(&vector("wrap_by_pycryptodome.bin"))
        .unwrap();
    assert_eq!(key, fixed_key());
    // One line of base64, as we write it.
    let text = String::from_utf8(vector("ours_priv.b64")).unwrap();
    assert_eq!(text, *pair.to_base64().unwrap());
}

#[test]
fn public_key_sizes() {
    for (name, bits) in [("pub_2048.der", 2048), ("pub_4096.der", 4096)] {
        let k = PublicKey::from_spki_der(&vector(name)).unwrap();
        assert_eq!(k.bits(), bits, "{name}");
        assert_eq!(
            k.wrap_aes_key(&fixed_key()).unwrap().len(),
            bits / 8,
            "{name}"
        );
    }
    assert_eq!(
        PublicKey::from_spki_der(&vector("pub_512_fake.der")).unwrap_err(),
        CryptoError::KeyTooSmall { bits: 512 }
    );
    assert_eq!(
        PublicKey::from_spki_der(&vector("pub_8192_fake.der")).unwrap_err(),
        CryptoError::KeyTooLarge { bits: 8192 }
    );
}

fn encrypt_chunked(key: &AesKey, data: &[u8], chunk: usize) -> Vec<u8> {
    let mut enc = CbcEncryptor::new(key).unwrap();
    let mut out = Vec::new();
    for c in data.chunks(chunk) {
        enc.update(c, &mut out).unwrap();
    }
    enc.finish(&mut out).unwrap();
    out
}

fn decrypt_chunked(key: &AesKey, data: &[u8], chunk: usize) -> Vec<u8> {
    let mut dec = CbcDecryptor::new(key).unwrap();
    let mut out = Vec::new();
    for c in data.chunks(chunk) {
        dec.update(c, &mut out).unwrap();
    }
    dec.finish(&mut out).unwrap();
    out
}

#[test]
fn cbc_vectors() {
    let key = fixed_key();
    for n in [0usize, 1, 15, 16, 17, 4096, 100_000] {
        let expected = vector(&format!("cbc_{n}.bin"));
        assert_eq!(expected.len() as u64, encrypted_len(n as u64));
        let plain = pattern(n);
        for chunk in [1usize, 7, 16, 17, 4096, 65536, usize::MAX] {
            if chunk == 1 && n > 4096 {
                continue;
            }
            assert_eq!(
                encrypt_chunked(&key, &plain, chunk),
                expected,
                "n = {n}, chunk = {chunk}"
            );
            assert_eq!(
                decrypt_chunked(&key, &expected, chunk),
                plain,
                "n = {n}, chunk = {chunk}"
            );
        }
    }
}
