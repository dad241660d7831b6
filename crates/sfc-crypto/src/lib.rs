//! SecureFileComm cryptography: everything the protocol (`docs/PROTOCOL.md`, sections
//! "Cryptography" and "Checksum") needs, with no I/O and no async.
//!
//! * [`RsaKeyPair`] — the client's RSA-1024 key pair with public exponent 17 (so its
//!   X.509 SubjectPublicKeyInfo DER is exactly [`PUBLIC_KEY_DER_LEN`] = 160 bytes, as
//!   Crypto++ writes it); PKCS#8 DER / one-line base64 export; tolerant import of PKCS#8 or
//!   PKCS#1, raw DER or base64 (PEM armour and line breaks ignored); RSA-OAEP (SHA-1,
//!   MGF1-SHA-1) unwrapping of the AES key.
//! * [`PublicKey`] — a peer's key from the wire: RSA SPKI DER of 1024..=4096 bits, zero
//!   padding after the DER accepted, anything else trailing rejected; RSA-OAEP wrapping.
//! * [`AesKey`], [`CbcEncryptor`], [`CbcDecryptor`] — AES-256-CBC, IV all zeros, PKCS#7, as
//!   ONE stream fed in arbitrary chunks; [`encrypted_len`] = `16 * (n / 16 + 1)`.
//! * [`Cksum`], [`cksum`] — what POSIX `cksum` prints.
//!
//! Secrets ([`AesKey`], the private key) are zeroized on drop and never shown by `Debug`.
//!
//! ```
//! use sfc_crypto::{cksum, encrypted_len, AesKey, CbcDecryptor, CbcEncryptor, RsaKeyPair};
//!
//! # fn main() -> Result<(), sfc_crypto::CryptoError> {
//! // Client: key pair; the server gets the 160-byte SPKI DER.
//! let client = RsaKeyPair::generate()?;
//! let spki = client.public_key_der();
//! assert_eq!(spki.len(), sfc_crypto::PUBLIC_KEY_DER_LEN);
//!
//! // Server: fresh AES key, wrapped for the client.
//! let server_key = AesKey::random();
//! let wrapped = sfc_crypto::PublicKey::from_spki_der(&spki)?.wrap_aes_key(&server_key)?;
//! let key = client.unwrap_aes_key(&wrapped)?;
//!
//! // Client: encrypt a file in chunks; server: decrypt and checksum.
//! let file = b"hello world\n";
//! let mut ct = Vec::new();
//! let mut enc = CbcEncryptor::new(&key)?;
//! for chunk in file.chunks(5) {
//!     enc.update(chunk, &mut ct)?;
//! }
//! enc.finish(&mut ct)?;
//! assert_eq!(ct.len() as u64, encrypted_len(file.len() as u64));
//!
//! let mut pt = Vec::new();
//! let mut dec = CbcDecryptor::new(&server_key)?;
//! dec.update(&ct, &mut pt)?;
//! dec.finish(&mut pt)?;
//! assert_eq!(pt, file);
//! assert_eq!(cksum(&pt), 3_733_384_285);
//! # Ok(())
//! # }
//! ```
//!
//! # Backends, chosen by measurement
//!
//! The figures (`cargo bench -p sfc-crypto` beside `openssl speed`) are in the repository's
//! BENCHMARKS.md, section "Library benchmarks".
//!
//! * **AES-256-CBC: `aws-lc-rs`** (`cipher::StreamingEncryptingKey` /
//!   `StreamingDecryptingKey`, CBC + PKCS#7, `EncryptionContext::Iv128` of zeros).
//!   CBC encryption is serial, so encryption is what bounds a transfer, and aws-lc-rs
//!   encrypts faster than RustCrypto in every paired run (about OpenSSL's speed).
//!   Decryption is parallel and far faster with either. aws-lc's decrypt error does not tell a bad length
//!   from bad padding, so [`CbcDecryptor`] counts the bytes itself and reports
//!   [`CryptoError::CiphertextLength`] or [`CryptoError::BadPadding`] precisely. Cost:
//!   `aws-lc-sys` compiles C with `cc` (once, then cached; gcc is enough).
//! * **RSA: RustCrypto `rsa` 0.9** with `sha1` 0.10 and `rand` 0.8. aws-lc-rs refuses
//!   1024-bit RSA keys ("TooSmall"), and the protocol fixes RSA-1024. RSA runs once per
//!   session, so its speed does not matter.
//! * **cksum: `crc-fast`** (`CrcAlgorithm::Crc32Cksum`, SIMD carry-less multiply). Its
//!   `Digest` keeps the raw register; [`Cksum::finish`] feeds the length bytes into a copy
//!   of it and lets the digest apply the final complement once; an order of magnitude
//!   faster than the table-driven `crc` crate.
//!
//! # Advisory RUSTSEC-2023-0071 (`rsa`, "Marvin Attack")
//!
//! `rsa` 0.9 has a timing side channel in RSA *decryption* (non-constant-time big-integer
//! arithmetic); there is no fixed version. An attacker who can submit many chosen
//! ciphertexts to a decryption oracle and time the answers precisely could recover the
//! plaintext or forge signatures. **Not a practical risk here:** the private-key operation
//! runs only on the CLIENT, once per session, to unwrap the AES key the server sent
//! ([`RsaKeyPair::unwrap_aes_key`], which also uses RSA blinding). The server never
//! decrypts RSA (it only wraps with the client's public key), so no network attacker gets
//! a decryption oracle, let alone the many thousands of timed queries the attack needs.
//! Anyone able to make the client decrypt at will is already a malicious server, which
//! chooses the AES key anyway. Revisit if a server-side RSA decryption or signature is
//! ever added, or when `rsa` 0.10 (constant-time `crypto-bigint`) is released stable.

mod aes_cbc;
mod cksum;
mod error;
mod rsa_keys;

pub use aes_cbc::{encrypted_len, AesKey, CbcDecryptor, CbcEncryptor, AES_BLOCK_LEN, AES_KEY_LEN};
pub use cksum::{cksum, Cksum};
pub use error::CryptoError;
pub use rsa_keys::{
    PublicKey, RsaKeyPair, MAX_RSA_BITS, MIN_RSA_BITS, PUBLIC_KEY_DER_LEN, RSA_BITS,
    RSA_PUBLIC_EXPONENT, WRAPPED_KEY_LEN_1024,
};
