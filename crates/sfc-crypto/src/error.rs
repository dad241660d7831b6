//! The one error type of this crate.

/// Everything that can go wrong in `sfc-crypto`.
///
/// Messages never contain key material. Variants that concern secret data (private key
/// parsing, unwrapping, padding) deliberately carry no detail beyond what is needed to act.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CryptoError {
    /// The RSA key pair generator failed (should not happen with a working OS RNG).
    #[error("RSA key generation failed")]
    KeyGeneration,
    /// A peer's public key is not a well-formed RSA SubjectPublicKeyInfo DER.
    #[error("invalid RSA public key: {0}")]
    InvalidPublicKey(String),
    /// The RSA modulus is shorter than [`crate::MIN_RSA_BITS`].
    #[error("RSA key too small: {bits} bits (minimum {min})", min = crate::MIN_RSA_BITS)]
    KeyTooSmall {
        /// Size of the rejected modulus in bits.
        bits: usize,
    },
    /// The RSA modulus is longer than [`crate::MAX_RSA_BITS`].
    #[error("RSA key too large: {bits} bits (maximum {max})", max = crate::MAX_RSA_BITS)]
    KeyTooLarge {
        /// Size of the rejected modulus in bits.
        bits: usize,
    },
    /// The private key bytes are neither a PKCS#8 nor a PKCS#1 RSA private key (DER).
    #[error("invalid RSA private key (expected PKCS#8 or PKCS#1 DER)")]
    InvalidPrivateKey,
    /// The private key text is not valid base64 (after removing whitespace and PEM armour).
    #[error("invalid base64 in private key text")]
    InvalidBase64,
    /// Encoding a key to DER failed.
    #[error("RSA key encoding failed")]
    KeyEncoding,
    /// A wrapped AES key does not have the length of the RSA modulus.
    #[error("wrapped key is {len} bytes, expected {expected}")]
    WrappedKeyLength {
        /// Length received.
        len: usize,
        /// Length of the RSA modulus in bytes.
        expected: usize,
    },
    /// RSA-OAEP decryption of a wrapped AES key failed (wrong key or corrupted data).
    #[error("RSA-OAEP unwrap of the AES key failed")]
    Unwrap,
    /// RSA-OAEP encryption of an AES key failed.
    #[error("RSA-OAEP wrap of the AES key failed")]
    Wrap,
    /// An AES key (given or unwrapped) is not [`crate::AES_KEY_LEN`] bytes long.
    #[error("AES key is {len} bytes, expected {expected}", expected = crate::AES_KEY_LEN)]
    InvalidAesKeyLength {
        /// Length received.
        len: usize,
    },
    /// The total ciphertext length is 0 or not a multiple of [`crate::AES_BLOCK_LEN`].
    #[error("ciphertext length {len} is not a positive multiple of 16")]
    CiphertextLength {
        /// Total ciphertext bytes fed to the decryptor.
        len: u64,
    },
    /// The last decrypted block does not end with valid PKCS#7 padding (wrong key or
    /// corrupted ciphertext).
    #[error("invalid PKCS#7 padding (wrong key or corrupted ciphertext)")]
    BadPadding,
    /// The AES backend reported an internal failure.
    #[error("AES backend failure")]
    Cipher,
}
