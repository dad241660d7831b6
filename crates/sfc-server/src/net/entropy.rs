//! The operating system's randomness for the session ([`Entropy`]).

use crate::session::Entropy;
use sfc_crypto::AesKey;
use sfc_proto::ClientId;

/// Client IDs are random UUIDs (version 4); AES keys come from the crypto library's
/// generator.
#[derive(Debug, Default, Clone, Copy)]
pub struct OsEntropy;

impl Entropy for OsEntropy {
    fn client_id(&self) -> ClientId {
        ClientId(*uuid::Uuid::new_v4().as_bytes())
    }

    fn aes_key(&self) -> AesKey {
        AesKey::random()
    }
}
