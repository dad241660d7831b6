//! RSA-1024 (e = 17) key pairs, SPKI public keys, and RSA-OAEP (SHA-1, MGF1-SHA-1) wrapping
//! of AES keys, backed by RustCrypto `rsa` 0.9.

use core::fmt;

use base64::engine::general_purpose::{GeneralPurpose, GeneralPurposeConfig, STANDARD};
use base64::engine::DecodePaddingMode;
use base64::{alphabet, Engine as _};
use rand::rngs::OsRng;
use rsa::pkcs1::DecodeRsaPrivateKey;
use rsa::pkcs8::der::Decode;
use rsa::pkcs8::{DecodePrivateKey, DecodePublicKey, EncodePrivateKey, EncodePublicKey};
use rsa::traits::PublicKeyParts;
use rsa::{BigUint, Oaep, RsaPrivateKey, RsaPublicKey};
use sha1::Sha1;
use zeroize::Zeroizing;

use crate::{AesKey, CryptoError};

/// Modulus size of the keys this crate generates.
pub const RSA_BITS: usize = 1024;
/// Public exponent of the keys this crate generates (what Crypto++ uses; keeps the DER at
/// 160 bytes).
pub const RSA_PUBLIC_EXPONENT: u64 = 17;
/// Length of the SPKI DER of a 1024-bit key with e = 17: the protocol's public key field.
pub const PUBLIC_KEY_DER_LEN: usize = 160;
/// Length of an AES key wrapped under a 1024-bit key.
pub const WRAPPED_KEY_LEN_1024: usize = 128;
/// Smallest RSA modulus accepted from a peer.
pub const MIN_RSA_BITS: usize = 1024;
/// Largest RSA modulus accepted from a peer.
pub const MAX_RSA_BITS: usize = 4096;

/// How many times [`RsaKeyPair::generate`] retries if a key does not have the expected shape.
const GENERATE_ATTEMPTS: usize = 8;

/// Base64 decoder that accepts input with or without `=` padding.
const LENIENT_BASE64: GeneralPurpose = GeneralPurpose::new(
    &alphabet::STANDARD,
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

fn oaep() -> Oaep {
    Oaep::new::<Sha1>()
}

/// Checks that a modulus of `bits` bits is within [`MIN_RSA_BITS`]..=[`MAX_RSA_BITS`].
fn check_bits(bits: usize) -> Result<(), CryptoError> {
    if bits < MIN_RSA_BITS {
        Err(CryptoError::KeyTooSmall { bits })
    } else if bits > MAX_RSA_BITS {
        Err(CryptoError::KeyTooLarge { bits })
    } else {
        Ok(())
    }
}

/// Bit length of a big-endian unsigned integer.
fn bit_len(be: &[u8]) -> usize {
    let trimmed: &[u8] = match be.iter().position(|&b| b != 0) {
        Some(i) => be.get(i..).unwrap_or_default(),
        None => return 0,
    };
    match trimmed.first() {
        Some(&first) => trimmed.len() * 8 - first.leading_zeros() as usize,
        None => 0,
    }
}

/// Total length (header + content) of the DER SEQUENCE at the start of `data`.
fn der_sequence_len(data: &[u8]) -> Result<usize, CryptoError> {
    let invalid = |m: &str| CryptoError::InvalidPublicKey(m.to_owned());
    match data.first() {
        Some(0x30) => {}
        Some(_) => return Err(invalid("not a DER SEQUENCE")),
        None => return Err(invalid("empty input")),
    }
    let first_len = *data.get(1).ok_or_else(|| invalid("truncated DER header"))?;
    let (header, content) = if first_len < 0x80 {
        (2usize, usize::from(first_len))
    } else {
        let n = usize::from(first_len & 0x7F);
        if n == 0 || n > 4 {
            return Err(invalid("unsupported DER length encoding"));
        }
        let bytes = data
            .get(2..2 + n)
            .ok_or_else(|| invalid("truncated DER header"))?;
        let content = bytes
            .iter()
            .fold(0usize, |acc, &b| (acc << 8) | usize::from(b));
        (2 + n, content)
    };
    let total = header
        .checked_add(content)
        .ok_or_else(|| invalid("DER length overflow"))?;
    if total > data.len() {
        return Err(CryptoError::InvalidPublicKey(format!(
            "truncated DER: declares {total} bytes, got {}",
            data.len()
        )));
    }
    Ok(total)
}

/// A peer's RSA public key as received on the wire (X.509 SubjectPublicKeyInfo, DER).
#[derive(Clone, PartialEq, Eq)]
pub struct PublicKey {
    key: RsaPublicKey,
    /// Canonical DER (without any zero padding that came with it).
    der: Vec<u8>,
}

impl PublicKey {
    /// Parses an RSA SubjectPublicKeyInfo DER with a 1024..=4096-bit modulus and an odd
    /// exponent from 3 to 2^33 - 1 (the `rsa` crate's checks: keeps wrapping cheap).
    ///
    /// Bytes after the DER structure are accepted only if they are all zero (the protocol's
    /// fixed 160-byte field may carry a shorter DER padded with zeros); anything else
    /// trailing is an error.
    ///
    /// # Errors
    /// * [`CryptoError::InvalidPublicKey`] for anything that is not an RSA SPKI DER, for
    ///   non-zero trailing bytes, or for a malformed modulus/exponent;
    /// * [`CryptoError::KeyTooSmall`] / [`CryptoError::KeyTooLarge`] for a modulus outside
    ///   1024..=4096 bits.
    pub fn from_spki_der(data: &[u8]) -> Result<Self, CryptoError> {
        let total = der_sequence_len(data)?;
        let (der, tail) = data.split_at(total);
        let nonzero = tail.iter().filter(|&&b| b != 0).count();
        if nonzero != 0 {
            return Err(CryptoError::InvalidPublicKey(format!(
                "{nonzero} non-zero byte(s) in the {} bytes after the {total}-byte DER",
                tail.len()
            )));
        }
        let spki = rsa::pkcs8::SubjectPublicKeyInfoRef::from_der(der)
            .map_err(|e| CryptoError::InvalidPublicKey(format!("SPKI: {e}")))?;
        if spki.algorithm.oid != rsa::pkcs1::ALGORITHM_OID {
            return Err(CryptoError::InvalidPublicKey(format!(
                "not an RSA key (algorithm {})",
                spki.algorithm.oid
            )));
        }
        let key_bytes = spki.subject_public_key.as_bytes().ok_or_else(|| {
            CryptoError::InvalidPublicKey("public key BIT STRING has unused bits".to_owned())
        })?;
        let pkcs1 = rsa::pkcs1::RsaPublicKey::from_der(key_bytes)
            .map_err(|e| CryptoError::InvalidPublicKey(format!("RSAPublicKey: {e}")))?;
        check_bits(bit_len(pkcs1.modulus.as_bytes()))?;
        // Full validation (algorithm parameters, exponent range, odd modulus, ...).
        let key = RsaPublicKey::from_public_key_der(der)
            .map_err(|e| CryptoError::InvalidPublicKey(e.to_string()))?;
        Ok(Self {
            key,
            der: der.to_vec(),
        })
    }

    /// Size of the modulus in bits.
    #[must_use]
    pub fn bits(&self) -> usize {
        self.key.n().bits()
    }

    /// Length in bytes of a key wrapped under this public key (the modulus length).
    #[must_use]
    pub fn wrapped_key_len(&self) -> usize {
        self.key.size()
    }

    /// The canonical SPKI DER of this key (without any zero padding it arrived with).
    #[must_use]
    pub fn spki_der(&self) -> &[u8] {
        &self.der
    }

    /// Wraps `key` with RSA-OAEP, SHA-1 and MGF1-SHA-1 (Crypto++ `RSAES_OAEP_SHA`,
    /// PyCryptodome `PKCS1_OAEP` default). The result is [`Self::wrapped_key_len`] bytes
    /// (128 for a 1024-bit key).
    ///
    /// # Errors
    /// [`CryptoError::Wrap`] if the RSA encryption fails.
    pub fn wrap_aes_key(&self, key: &AesKey) -> Result<Vec<u8>, CryptoError> {
        self.key
            .encrypt(&mut OsRng, oaep(), key.as_bytes())
            .map_err(|_| CryptoError::Wrap)
    }
}

impl fmt::Debug for PublicKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PublicKey")
            .field("bits", &self.bits())
            .field("e", &self.key.e().to_string())
            .field("der_len", &self.der.len())
            .finish()
    }
}

/// The client's RSA key pair. The private key is zeroized on drop (by `rsa`); `Debug` shows
/// only public facts.
pub struct RsaKeyPair {
    private: RsaPrivateKey,
    public_der: Vec<u8>,
}

impl RsaKeyPair {
    fn from_private(private: RsaPrivateKey) -> Result<Self, CryptoError> {
        check_bits(private.n().bits())?;
        let public_der = private
            .to_public_key()
            .to_public_key_der()
            .map_err(|_| CryptoError::KeyEncoding)?
            .into_vec();
        Ok(Self {
            private,
            public_der,
        })
    }

    /// Generates a fresh 1024-bit key pair with public exponent 17, whose SPKI DER is
    /// exactly [`PUBLIC_KEY_DER_LEN`] bytes.
    ///
    /// # Errors
    /// [`CryptoError::KeyGeneration`] if the generator fails.
    pub fn generate() -> Result<Self, CryptoError> {
        let e = BigUint::from(RSA_PUBLIC_EXPONENT);
        for _ in 0..GENERATE_ATTEMPTS {
            let private = RsaPrivateKey::new_with_exp(&mut OsRng, RSA_BITS, &e)
                .map_err(|_| CryptoError::KeyGeneration)?;
            let pair = Self::from_private(private)?;
            if pair.public_der.len() == PUBLIC_KEY_DER_LEN && pair.bits() == RSA_BITS {
                return Ok(pair);
            }
        }
        Err(CryptoError::KeyGeneration)
    }

    /// Size of the modulus in bits.
    #[must_use]
    pub fn bits(&self) -> usize {
        self.private.n().bits()
    }

    /// The public half.
    #[must_use]
    pub fn public_key(&self) -> PublicKey {
        PublicKey {
            key: self.private.to_public_key(),
            der: self.public_der.clone(),
        }
    }

    /// The public key as X.509 SubjectPublicKeyInfo DER (160 bytes for our keys).
    #[must_use]
    pub fn public_key_der(&self) -> Vec<u8> {
        self.public_der.clone()
    }

    /// The private key as PKCS#8 `PrivateKeyInfo` DER (what Crypto++ `Save` writes).
    ///
    /// # Errors
    /// [`CryptoError::KeyEncoding`] if encoding fails.
    pub fn to_pkcs8_der(&self) -> Result<Zeroizing<Vec<u8>>, CryptoError> {
        let doc = self
            .private
            .to_pkcs8_der()
            .map_err(|_| CryptoError::KeyEncoding)?;
        Ok(doc.to_bytes())
    }

    /// Base64 (standard alphabet, padded) of the PKCS#8 DER, on ONE line, no newline.
    ///
    /// # Errors
    /// [`CryptoError::KeyEncoding`] if encoding fails.
    pub fn to_base64(&self) -> Result<Zeroizing<String>, CryptoError> {
        let der = self.to_pkcs8_der()?;
        Ok(Zeroizing::new(STANDARD.encode(der.as_slice())))
    }

    /// Parses a PKCS#8 `PrivateKeyInfo` DER or, failing that, a PKCS#1 `RSAPrivateKey` DER
    /// (as some other clients write).
    ///
    /// # Errors
    /// [`CryptoError::InvalidPrivateKey`] if it is neither; [`CryptoError::KeyTooSmall`] /
    /// [`CryptoError::KeyTooLarge`] for a modulus outside 1024..=4096 bits.
    pub fn from_pkcs8_der(der: &[u8]) -> Result<Self, CryptoError> {
        let private = RsaPrivateKey::from_pkcs8_der(der)
            .or_else(|_| RsaPrivateKey::from_pkcs1_der(der))
            .map_err(|_| CryptoError::InvalidPrivateKey)?;
        Self::from_private(private)
    }

    /// Parses base64 of a PKCS#8 (or PKCS#1) DER. Tolerant: whitespace and newlines anywhere,
    /// PEM armour lines (`-----BEGIN ...-----`, `-----END ...-----`), a UTF-8 BOM and
    /// missing `=` padding are ignored.
    ///
    /// # Errors
    /// [`CryptoError::InvalidBase64`] for bad base64, else as [`Self::from_pkcs8_der`].
    pub fn from_base64(text: &str) -> Result<Self, CryptoError> {
        let mut cleaned = Zeroizing::new(String::with_capacity(text.len()));
        for line in text.lines() {
            let trimmed = line.trim_matches(|c: char| c.is_whitespace() || c == '\u{feff}');
            if trimmed.starts_with("-----") {
                continue;
            }
            cleaned.extend(
                line.chars()
                    .filter(|c| !c.is_whitespace() && *c != '\u{feff}'),
            );
        }
        let der = Zeroizing::new(
            LENIENT_BASE64
                .decode(cleaned.as_bytes())
                .map_err(|_| CryptoError::InvalidBase64)?,
        );
        Self::from_pkcs8_der(&der)
    }

    /// Parses the contents of a `priv.key` file: raw DER (PKCS#8 or PKCS#1) or base64 text
    /// of it, detected automatically.
    ///
    /// # Errors
    /// As [`Self::from_pkcs8_der`] or [`Self::from_base64`].
    pub fn from_file_bytes(bytes: &[u8]) -> Result<Self, CryptoError> {
        let mut der_error = None;
        if bytes.first() == Some(&0x30) {
            match Self::from_pkcs8_der(bytes) {
                Ok(pair) => return Ok(pair),
                Err(e) => der_error = Some(e),
            }
        }
        match core::str::from_utf8(bytes) {
            Ok(text) => Self::from_base64(text).map_err(|e| der_error.unwrap_or(e)),
            Err(_) => Err(der_error.unwrap_or(CryptoError::InvalidPrivateKey)),
        }
    }

    /// Unwraps an AES key that a peer wrapped with RSA-OAEP (SHA-1, MGF1-SHA-1) under our
    /// public key. Uses RSA blinding.
    ///
    /// # Errors
    /// * [`CryptoError::WrappedKeyLength`] if `wrapped` is not the modulus length;
    /// * [`CryptoError::Unwrap`] if OAEP decryption fails;
    /// * [`CryptoError::InvalidAesKeyLength`] if the unwrapped key is not 32 bytes.
    pub fn unwrap_aes_key(&self, wrapped: &[u8]) -> Result<AesKey, CryptoError> {
        let expected = self.private.size();
        if wrapped.len() != expected {
            return Err(CryptoError::WrappedKeyLength {
                len: wrapped.len(),
                expected,
            });
        }
        let plain = Zeroizing::new(
            self.private
                .decrypt_blinded(&mut OsRng, oaep(), wrapped)
                .map_err(|_| CryptoError::Unwrap)?,
        );
        AesKey::from_bytes(&plain)
    }
}

impl fmt::Debug for RsaKeyPair {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RsaKeyPair")
            .field("bits", &self.bits())
            .field("e", &self.private.e().to_string())
            .field("private", &"<redacted>")
            .finish()
    }
}

#[cfg(test)]
mod tests;
