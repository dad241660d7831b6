//! Opt-in TLS around the unchanged protocol (`--tls-cert FILE --tls-key FILE`).
//!
//! The protocol's bytes are the same inside TLS; only the transport changes. With TLS on,
//! every connection must start with a TLS handshake, which has to finish within the
//! request timeout (a client that connects and stays silent, or speaks plain protocol
//! bytes, is closed at once or at that deadline, never held). Plain TCP stays the
//! default, for compatibility with every other implementation.
//!
//! Certificates and the private key are read from PEM files: the certificate file holds
//! the server's certificate followed by any intermediates; the key file a PKCS#8, PKCS#1
//! (RSA) or SEC1 (EC) private key. Protocol versions and cipher suites are rustls's safe
//! defaults (TLS 1.3 and 1.2 with AEAD suites only) on the aws-lc-rs provider.

use anyhow::Context;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpStream;
use tokio_rustls::server::TlsStream;
use tokio_rustls::TlsAcceptor;

/// The PEM files of the server's certificate chain and private key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TlsFiles {
    /// Certificate chain, leaf first (PEM).
    pub cert: PathBuf,
    /// Private key (PEM: PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
}

/// Reads every certificate in a PEM file (leaf first).
pub fn load_certs(path: &Path) -> anyhow::Result<Vec<CertificateDer<'static>>> {
    let bytes = std::fs::read(path)
        .with_context(|| format!("cannot read the TLS certificate file {}", path.display()))?;
    let certs = CertificateDer::pem_slice_iter(&bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| {
            anyhow::anyhow!(
                "the TLS certificate file {} is not valid PEM: {e}",
                path.display()
            )
        })?;
    if certs.is_empty() {
        anyhow::bail!(
            "the TLS certificate file {} holds no certificate (expected PEM \"-----BEGIN CERTIFICATE-----\")",
            path.display()
        );
    }
    Ok(certs)
}

/// Reads the first private key in a PEM file. Warns when the file is readable by others.
pub fn load_key(path: &Path) -> anyhow::Result<PrivateKeyDer<'static>> {
    let bytes = zeroize::Zeroizing::new(
        std::fs::read(path)
            .with_context(|| format!("cannot read the TLS key file {}", path.display()))?,
    );
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        if let Ok(meta) = std::fs::metadata(path) {
            if meta.permissions().mode() & 0o077 != 0 {
                tracing::warn!(
                    path = %path.display(),
                    mode = format!("{:o}", meta.permissions().mode() & 0o777),
                    "the TLS private key is readable by other users; chmod 600 it"
                );
            }
        }
    }
    PrivateKeyDer::from_pem_slice(&bytes).map_err(|e| {
        anyhow::anyhow!(
            "the TLS key file {} holds no usable private key (PEM PKCS#8, PKCS#1 or SEC1): {e}",
            path.display()
        )
    })
}

/// The rustls server configuration for these files.
pub fn server_config(files: &TlsFiles) -> anyhow::Result<Arc<rustls::ServerConfig>> {
    let certs = load_certs(&files.cert)?;
    let key = load_key(&files.key)?;
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .context("the TLS provider supports no protocol version")?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .with_context(|| {
            format!(
                "cannot use the certificate {} with the key {}",
                files.cert.display(),
                files.key.display()
            )
        })?;
    Ok(Arc::new(config))
}

/// Why a TLS handshake did not complete (logged; the connection is then closed).
#[derive(Debug, thiserror::Error)]
pub enum HandshakeError {
    /// The peer does not speak TLS, or not acceptably.
    #[error("TLS handshake failed: {0}")]
    Failed(std::io::Error),
    /// Too slow.
    #[error("TLS handshake not completed within {} s", .0.as_secs_f64())]
    TimedOut(Duration),
    /// Closed before its first byte: a balancer's or a monitor's connection check, not a
    /// failed handshake.
    #[error("closed before the TLS handshake began")]
    ClosedAtOnce,
}

/// Runs the server side of the handshake within `deadline`. `Err` carries the reason
/// for the log (the connection is then simply closed: a client that does not speak TLS
/// gets rustls's alert, if it can be written, and the close).
pub async fn handshake(
    acceptor: &TlsAcceptor,
    stream: TcpStream,
    deadline: Duration,
) -> Result<TlsStream<TcpStream>, HandshakeError> {
    let handshake = async {
        // Looked at, not taken: the handshake reads it.
        if stream
            .peek(&mut [0u8; 1])
            .await
            .map_err(HandshakeError::Failed)?
            == 0
        {
            return Err(HandshakeError::ClosedAtOnce);
        }
        acceptor
            .accept(stream)
            .await
            .map_err(HandshakeError::Failed)
    };
    tokio::time::timeout(deadline, handshake)
        .await
        .unwrap_or(Err(HandshakeError::TimedOut(deadline)))
}
