//! Fixtures shared by the unit tests of several modules.

use std::io;
use std::sync::OnceLock;

use sfc_crypto::RsaKeyPair;

use crate::error::{ClientError, UnsavedIdentity};
use crate::identity::IdentityError;

/// An RSA private key as me.info holds it (base64 of PKCS#8 DER), made once for all tests:
/// generation takes a moment in debug builds.
pub(crate) fn key_text() -> &'static str {
    static KEY: OnceLock<String> = OnceLock::new();
    made_once(&KEY)
}

/// A second key, for the identity that replaces the first.
pub(crate) fn other_key_text() -> &'static str {
    static KEY: OnceLock<String> = OnceLock::new();
    made_once(&KEY)
}

fn made_once(key: &'static OnceLock<String>) -> &'static str {
    key.get_or_init(|| {
        RsaKeyPair::generate()
            .unwrap()
            .to_base64()
            .unwrap()
            .to_string()
    })
}

/// A registration whose identity could not be saved (priv.key not writable), with its
/// private key `key` known only in memory.
pub(crate) fn unsaved_identity(key: &str) -> ClientError {
    ClientError::IdentityNotSaved(Box::new(UnsavedIdentity {
        server: "h:1".into(),
        name: "tess".into(),
        client_id: "00112233445566778899aabbccddeeff".into(),
        key_file: None,
        key_text: Some(key.into()),
        key_sent: true,
        source: IdentityError::Write {
            path: "priv.key".into(),
            source: io::Error::from(io::ErrorKind::PermissionDenied),
        },
    }))
}
