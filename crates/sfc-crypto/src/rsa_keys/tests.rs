use std::sync::OnceLock;

use rsa::pkcs1::EncodeRsaPrivateKey;
use rsa::pkcs8::EncodePublicKey;
use rsa::traits::PrivateKeyParts;
use rsa::{BigUint, RsaPublicKey};

use super::*;

/// One generated key pair shared by the tests of this module (generation takes ~0.3 s in
/// debug builds).
fn pair() -> &'static RsaKeyPair {
    static PAIR: OnceLock<RsaKeyPair> = OnceLock::new();
    PAIR.get_or_init(|| RsaKeyPair::generate().unwrap())
}

/// SPKI DER of a syntactically valid RSA public key with an arbitrary odd `bits`-bit
/// modulus (not a product of primes: only the parser is under test).
fn fake_spki(bits: usize) -> Vec<u8> {
    fake_spki_with(bits, BigUint::from(65537u32))
}

/// [`fake_spki`] with the public exponent `e`.
fn fake_spki_with(bits: usize, e: BigUint) -> Vec<u8> {
    let mut n = vec![0x5Au8; bits / 8];
    n[0] = 0xC3;
    *n.last_mut().unwrap() |= 1;
    let key = RsaPublicKey::new_unchecked(BigUint::from_bytes_be(&n), e);
    key.to_public_key_der().unwrap().into_vec()
}

#[test]
fn generated_key_shape() {
    let p = pair();
    let der = p.public_key_der();
    assert_eq!(der.len(), PUBLIC_KEY_DER_LEN);
    assert_eq!(p.bits(), RSA_BITS);
    let public = PublicKey::from_spki_der(&der).unwrap();
    assert_eq!(public.bits(), 1024);
    assert_eq!(public.wrapped_key_len(), WRAPPED_KEY_LEN_1024);
    assert_eq!(public.key.e(), &BigUint::from(RSA_PUBLIC_EXPONENT));
    assert_eq!(public.spki_der(), der.as_slice());
    assert_eq!(p.public_key(), public);
    // The exponent as it sits in the DER: INTEGER 17 right at the end.
    assert_eq!(&der[der.len() - 3..], &[0x02, 0x01, 0x11]);
}

#[test]
fn debug_does_not_leak() {
    let p = pair();
    let dbg = format!("{p:?}");
    assert!(dbg.contains("redacted"), "{dbg}");
    let b64 = p.to_base64().unwrap();
    assert!(!dbg.contains(&b64[40..60]));
    let d = format!("{:?}", p.private.d());
    assert!(!dbg.contains(&d));
    let pubdbg = format!("{:?}", p.public_key());
    assert!(pubdbg.contains("bits: 1024"), "{pubdbg}");
}

#[test]
fn pkcs8_and_base64_round_trip() {
    let p = pair();
    let der = p.to_pkcs8_der().unwrap();
    let back = RsaKeyPair::from_pkcs8_der(&der).unwrap();
    assert_eq!(back.public_key_der(), p.public_key_der());
    assert_eq!(back.to_pkcs8_der().unwrap(), der);

    let b64 = p.to_base64().unwrap();
    assert!(!b64.contains('\n') && !b64.contains(' ') && !b64.contains('\r'));
    let back = RsaKeyPair::from_base64(&b64).unwrap();
    assert_eq!(back.public_key_der(), p.public_key_der());
    let back = RsaKeyPair::from_file_bytes(b64.as_bytes()).unwrap();
    assert_eq!(back.public_key_der(), p.public_key_der());
}

#[test]
fn tolerant_base64() {
    let p = pair();
    let b64 = p.to_base64().unwrap();
    // Crypto++ Base64Encoder style: 72-column lines, trailing newline.
    let wrapped: String = b64
        .as_bytes()
        .chunks(72)
        .map(|c| format!("{}\n", std::str::from_utf8(c).unwrap()))
        .collect();
    // PEM armour, CRLF, indentation, blank lines.
    let pem = format!(
        "\u{feff}-----BEGIN PRIVATE KEY-----\r\n{}\r\n\r\n  -----END PRIVATE KEY-----\r\n",
        b64.as_bytes()
            .chunks(64)
            .map(|c| std::str::from_utf8(c).unwrap())
            .collect::<Vec<_>>()
            .join("\r\n  ")
    );
    // Spaces and tabs in the middle, missing '=' padding.
    let mut spaced = String::new();
    for (i, ch) in b64.trim_end_matches('=').chars().enumerate() {
        spaced.push(ch);
        if i % 10 == 9 {
            spaced.push_str(" \t");
        }
    }
    for text in [wrapped.as_str(), pem.as_str(), spaced.as_str()] {
        let back = RsaKeyPair::from_base64(text).unwrap();
        assert_eq!(back.public_key_der(), p.public_key_der());
        let back = RsaKeyPair::from_file_bytes(text.as_bytes()).unwrap();
        assert_eq!(back.public_key_der(), p.public_key_der());
    }
}

#[test]
fn raw_der_priv_key_and_pkcs1() {
    let p = pair();
    let der = p.to_pkcs8_der().unwrap();
    let back = RsaKeyPair::from_file_bytes(&der).unwrap();
    assert_eq!(back.public_key_der(), p.public_key_der());

    let pkcs1 = p.private.to_pkcs1_der().unwrap();
    let back = RsaKeyPair::from_pkcs8_der(pkcs1.as_bytes()).unwrap();
    assert_eq!(back.public_key_der(), p.public_key_der());
    let back = RsaKeyPair::from_file_bytes(pkcs1.as_bytes()).unwrap();
    assert_eq!(back.public_key_der(), p.public_key_der());
    let b64 = STANDARD.encode(pkcs1.as_bytes());
    let back = RsaKeyPair::from_base64(&b64).unwrap();
    assert_eq!(back.public_key_der(), p.public_key_der());
}

#[test]
fn private_key_garbage() {
    assert_eq!(
        RsaKeyPair::from_pkcs8_der(b"\x30\x03\x02\x01\x00").unwrap_err(),
        CryptoError::InvalidPrivateKey
    );
    assert_eq!(
        RsaKeyPair::from_file_bytes(b"").unwrap_err(),
        CryptoError::InvalidPrivateKey
    );
    assert_eq!(
        RsaKeyPair::from_base64("not base64 !!").unwrap_err(),
        CryptoError::InvalidBase64
    );
    assert_eq!(
        RsaKeyPair::from_file_bytes(&[0x30, 0xFF, 0xFE, 0x00]).unwrap_err(),
        CryptoError::InvalidPrivateKey
    );
    // Valid base64 of garbage.
    assert_eq!(
        RsaKeyPair::from_base64("aGVsbG8gd29ybGQK").unwrap_err(),
        CryptoError::InvalidPrivateKey
    );
    // A public key is not a private key.
    assert_eq!(
        RsaKeyPair::from_file_bytes(&pair().public_key_der()).unwrap_err(),
        CryptoError::InvalidPrivateKey
    );
}

#[test]
fn spki_rejects_garbage() {
    for bad in [
        &b""[..],
        b"\x00",
        b"\x30",
        b"hello world",
        b"\x30\x82\xff\xff\x00",
        b"\x30\x03\x02\x01\x00",
        &[0u8; 160],
    ] {
        let err = PublicKey::from_spki_der(bad).unwrap_err();
        assert!(
            matches!(err, CryptoError::InvalidPublicKey(_)),
            "{bad:?}: {err:?}"
        );
    }
    // Truncated DER.
    let der = pair().public_key_der();
    assert!(matches!(
        PublicKey::from_spki_der(&der[..150]),
        Err(CryptoError::InvalidPublicKey(_))
    ));
}

#[test]
fn spki_rejects_non_rsa() {
    // An EC P-256 SPKI (id-ecPublicKey), made with openssl.
    let ec = [
        0x30, 0x59, 0x30, 0x13, 0x06, 0x07, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01, 0x06, 0x08,
        0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07, 0x03, 0x42, 0x00, 0x04, 0x6b, 0x17, 0xd1,
        0xf2, 0xe1, 0x2c, 0x42, 0x47, 0xf8, 0xbc, 0xe6, 0xe5, 0x63, 0xa4, 0x40, 0xf2, 0x77, 0x03,
        0x7d, 0x81, 0x2d, 0xeb, 0x33, 0xa0, 0xf4, 0xa1, 0x39, 0x45, 0xd8, 0x98, 0xc2, 0x96, 0x4f,
        0xe3, 0x42, 0xe2, 0xfe, 0x1a, 0x7f, 0x9b, 0x8e, 0xe7, 0xeb, 0x4a, 0x7c, 0x0f, 0x9e, 0x16,
        0x2b, 0xce, 0x33, 0x57, 0x6b, 0x31, 0x5e, 0xce, 0xcb, 0xb6, 0x40, 0x68, 0x37, 0xbf, 0x51,
        0xf5,
    ];
    let err = PublicKey::from_spki_der(&ec).unwrap_err();
    assert!(
        matches!(&err, CryptoError::InvalidPublicKey(m) if m.contains("not an RSA key")),
        "{err:?}"
    );
}

#[test]
fn spki_size_limits() {
    assert_eq!(
        PublicKey::from_spki_der(&fake_spki(512)).unwrap_err(),
        CryptoError::KeyTooSmall { bits: 512 }
    );
    assert_eq!(
        PublicKey::from_spki_der(&fake_spki(1016)).unwrap_err(),
        CryptoError::KeyTooSmall { bits: 1016 }
    );
    assert_eq!(
        PublicKey::from_spki_der(&fake_spki(8192)).unwrap_err(),
        CryptoError::KeyTooLarge { bits: 8192 }
    );
    assert_eq!(
        PublicKey::from_spki_der(&fake_spki(4104)).unwrap_err(),
        CryptoError::KeyTooLarge { bits: 4104 }
    );
    for bits in [1024, 2048, 3072, 4096] {
        let k = PublicKey::from_spki_der(&fake_spki(bits)).unwrap();
        assert_eq!(k.bits(), bits);
        assert_eq!(k.wrapped_key_len(), bits / 8);
    }
    let msg = CryptoError::KeyTooLarge { bits: 8192 }.to_string();
    assert!(msg.contains("8192") && msg.contains("4096"), "{msg}");
}

/// The exponents accepted (rule S6): odd, 3 to 2^33 - 1, which keeps every public-key
/// operation at most ~34 squarings; 1, even ones and larger ones are refused.
#[test]
fn spki_exponent_limits() {
    for e in [3u64, 17, 65537, (1 << 33) - 1] {
        let der = fake_spki_with(1024, BigUint::from(e));
        assert!(PublicKey::from_spki_der(&der).is_ok(), "e = {e}");
    }
    for e in [1u64, 2, 65536, (1 << 33) + 1, u64::MAX] {
        let der = fake_spki_with(1024, BigUint::from(e));
        assert!(
            matches!(
                PublicKey::from_spki_der(&der),
                Err(CryptoError::InvalidPublicKey(_))
            ),
            "e = {e}"
        );
    }
}

#[test]
fn spki_zero_padding() {
    let der = pair().public_key_der();
    let mut padded = der.clone();
    padded.extend_from_slice(&[0; 8]);
    let k = PublicKey::from_spki_der(&padded).unwrap();
    assert_eq!(k.spki_der(), der.as_slice());

    // Zero padding after a larger (2048-bit) DER too.
    let der2048 = fake_spki(2048);
    let mut field = der2048.clone();
    field.resize(der2048.len() + 100, 0);
    let k = PublicKey::from_spki_der(&field).unwrap();
    assert_eq!(k.bits(), 2048);
    assert_eq!(k.spki_der(), der2048.as_slice());
}

#[test]
fn spki_rejects_trailing_nonzero() {
    let der = pair().public_key_der();
    for tail in [&[1u8][..], &[0, 0, 0, 7], &[0xFF; 8]] {
        let mut v = der.clone();
        v.extend_from_slice(tail);
        let err = PublicKey::from_spki_der(&v).unwrap_err();
        assert!(
            matches!(&err, CryptoError::InvalidPublicKey(m) if m.contains("non-zero")),
            "{err:?}"
        );
    }
}

#[test]
fn wrap_unwrap_round_trip() {
    let p = pair();
    let public = PublicKey::from_spki_der(&p.public_key_der()).unwrap();
    let key = AesKey::random();
    let wrapped = public.wrap_aes_key(&key).unwrap();
    assert_eq!(wrapped.len(), WRAPPED_KEY_LEN_1024);
    // OAEP is randomized.
    assert_ne!(wrapped, public.wrap_aes_key(&key).unwrap());
    assert_eq!(p.unwrap_aes_key(&wrapped).unwrap(), key);
}

#[test]
fn unwrap_garbage_fails() {
    let p = pair();
    assert_eq!(
        p.unwrap_aes_key(&[0x42; 128]).unwrap_err(),
        CryptoError::Unwrap
    );
    assert_eq!(
        p.unwrap_aes_key(&[0x42; 100]).unwrap_err(),
        CryptoError::WrappedKeyLength {
            len: 100,
            expected: 128
        }
    );
    // A key wrapped for someone else.
    let other = RsaKeyPair::generate().unwrap();
    let wrapped = other.public_key().wrap_aes_key(&AesKey::random()).unwrap();
    assert_eq!(p.unwrap_aes_key(&wrapped).unwrap_err(), CryptoError::Unwrap);
    // A wrapped 16-byte key is not an AES-256 key.
    let short = p
        .public_key()
        .key
        .encrypt(&mut OsRng, oaep(), &[7u8; 16])
        .unwrap();
    assert_eq!(
        p.unwrap_aes_key(&short).unwrap_err(),
        CryptoError::InvalidAesKeyLength { len: 16 }
    );
}

#[test]
fn bit_len_helper() {
    assert_eq!(bit_len(&[]), 0);
    assert_eq!(bit_len(&[0, 0]), 0);
    assert_eq!(bit_len(&[1]), 1);
    assert_eq!(bit_len(&[0, 0x80, 0]), 16);
    assert_eq!(bit_len(&[0x7F, 0]), 15);
}
