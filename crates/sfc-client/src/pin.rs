//! Trusting one server's own certificate: pinning.
//!
//! A private server usually has a self-signed certificate, made with `openssl req -x509`
//! (which marks it as a CA) or by the server itself. Such a certificate is accepted when
//! it is exactly one of the certificates in `--tls-ca FILE`, or when its SHA-256
//! fingerprint is one given with `--tls-fingerprint` (hex as `openssl x509 -fingerprint
//! -sha256` prints it, colons optional, or `SHA256:` and base64 as SSH prints key
//! fingerprints). A pinned certificate stands for itself: neither a chain, nor the name,
//! nor the validity dates are checked, as with an SSH host key; the handshake's signature
//! still proves that the server holds its key. Any other certificate goes through the
//! usual verification (a chain to a trusted CA, the host of `--server`).

use std::fmt;
use std::sync::Arc;

use base64::Engine as _;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::crypto::{verify_tls12_signature, verify_tls13_signature, CryptoProvider};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{CertificateError, DigitallySignedStruct, Error, SignatureScheme};
use sha2::{Digest, Sha256};

/// A certificate's SHA-256 fingerprint.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Fingerprint(pub [u8; 32]);

impl Fingerprint {
    /// The fingerprint of a DER certificate.
    pub fn of(cert: &[u8]) -> Self {
        Fingerprint(Sha256::digest(cert).into())
    }

    /// Parses `AB:CD:…` or `abcd…` (64 hex digits, colons and spaces allowed, an optional
    /// `sha256:` / `SHA256 Fingerprint=` prefix), or `SHA256:` and base64 (SSH's form).
    pub fn parse(text: &str) -> Result<Self, String> {
        let text = text.trim();
        let lower = text.to_ascii_lowercase();
        let body = lower
            .strip_prefix("sha256 fingerprint=")
            .or_else(|| lower.strip_prefix("sha256:"))
            .or_else(|| lower.strip_prefix("sha256="))
            .unwrap_or(&lower);
        let hex: String = body.chars().filter(|c| !matches!(c, ':' | ' ')).collect();
        if hex.len() == 64 && hex.bytes().all(|b| b.is_ascii_hexdigit()) {
            let mut out = [0u8; 32];
            for (byte, pair) in out.iter_mut().zip(hex.as_bytes().chunks(2)) {
                let pair = std::str::from_utf8(pair).map_err(|e| e.to_string())?;
                *byte = u8::from_str_radix(pair, 16).map_err(|e| e.to_string())?;
            }
            return Ok(Fingerprint(out));
        }
        // SSH's form keeps the case of its base64.
        let original_body = text.get(text.len() - body.len()..).unwrap_or(body);
        let decoded = base64::engine::general_purpose::STANDARD_NO_PAD
            .decode(original_body.trim_end_matches('='))
            .ok()
            .and_then(|bytes| <[u8; 32]>::try_from(bytes).ok());
        decoded.map(Fingerprint).ok_or_else(|| {
            format!(
                "{text:?} is not a SHA-256 fingerprint: write 64 hex digits (colons allowed), \
                 as `openssl x509 -noout -fingerprint -sha256 -in cert.pem` prints them"
            )
        })
    }
}

impl fmt::Display for Fingerprint {
    /// `SHA256:AB:CD:…`, as openssl prints it (with SSH's prefix).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SHA256:")?;
        for (i, byte) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(":")?;
            }
            write!(f, "{byte:02X}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// Accepts a pinned certificate as it is; sends any other to the usual verification.
pub struct PinningVerifier {
    /// Certificates accepted as they are (those of `--tls-ca`).
    pub pinned: Vec<CertificateDer<'static>>,
    /// Fingerprints accepted (`--tls-fingerprint`).
    pub fingerprints: Vec<Fingerprint>,
    /// The usual verification, when there are CAs to verify against.
    pub webpki: Option<Arc<WebPkiServerVerifier>>,
    /// For the handshake signatures.
    pub provider: Arc<CryptoProvider>,
}

impl fmt::Debug for PinningVerifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PinningVerifier")
            .field("pinned", &self.pinned.len())
            .field("fingerprints", &self.fingerprints)
            .finish_non_exhaustive()
    }
}

impl ServerCertVerifier for PinningVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, Error> {
        let fingerprint = Fingerprint::of(end_entity);
        if self
            .pinned
            .iter()
            .any(|pin| pin.as_ref() == end_entity.as_ref())
            || self.fingerprints.contains(&fingerprint)
        {
            return Ok(ServerCertVerified::assertion());
        }
        match &self.webpki {
            Some(webpki) => webpki.verify_server_cert(
                end_entity,
                intermediates,
                server_name,
                ocsp_response,
                now,
            ),
            None => Err(Error::InvalidCertificate(CertificateError::Other(
                rustls::OtherError(Arc::new(NotPinned(fingerprint))),
            ))),
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// The server's certificate is none of the pinned ones.
#[derive(Debug)]
struct NotPinned(Fingerprint);

impl fmt::Display for NotPinned {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "its fingerprint is {}, not one given with --tls-fingerprint",
            self.0
        )
    }
}

impl std::error::Error for NotPinned {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fingerprints_parse_in_the_usual_forms() {
        let fp = Fingerprint::of(b"certificate");
        let shown = fp.to_string();
        assert!(shown.starts_with("SHA256:"));
        assert_eq!(Fingerprint::parse(&shown), Ok(fp));
        let colons = shown.trim_start_matches("SHA256:");
        assert_eq!(Fingerprint::parse(colons), Ok(fp));
        assert_eq!(
            Fingerprint::parse(&format!("sha256 Fingerprint={colons}")),
            Ok(fp)
        );
        assert_eq!(
            Fingerprint::parse(&colons.replace(':', "").to_lowercase()),
            Ok(fp)
        );
        let ssh = base64::engine::general_purpose::STANDARD_NO_PAD.encode(fp.0);
        assert_eq!(Fingerprint::parse(&format!("SHA256:{ssh}")), Ok(fp));
        assert!(Fingerprint::parse("abc").is_err());
        assert!(Fingerprint::parse(&"a".repeat(63)).is_err());
    }
}
