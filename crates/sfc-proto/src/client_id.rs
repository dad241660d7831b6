//! The 16-byte client ID.

use crate::limits::CLIENT_ID_LEN;
use thiserror::Error;

/// A client's ID: 16 raw bytes on the wire, 32 lowercase hex digits in text files.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default)]
pub struct ClientId(pub [u8; CLIENT_ID_LEN]);

/// The 16 bytes as one integer: one write to the hasher, not a length and then the bytes
/// (the server looks IDs up in its maps several times per file packet).
impl std::hash::Hash for ClientId {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        state.write_u128(u128::from_le_bytes(self.0));
    }
}

/// Why a text client ID could not be parsed.
#[derive(Clone, Debug, PartialEq, Eq, Error)]
pub enum ParseClientIdError {
    /// Not exactly 32 hex digits.
    #[error("a client ID is 32 hex digits, got {0} characters")]
    Length(usize),
    /// A character that is not a hex digit.
    #[error("a client ID is hex digits only, got {0:?}")]
    NotHex(char),
}

impl ClientId {
    /// The all-zero ID that clients send with 825.
    pub const ZERO: ClientId = ClientId([0; CLIENT_ID_LEN]);

    /// The raw bytes.
    pub const fn as_bytes(&self) -> &[u8; CLIENT_ID_LEN] {
        &self.0
    }

    /// 32 lowercase hex digits, as written in `me.info`.
    pub fn to_hex(&self) -> String {
        use std::fmt::Write;
        self.0.iter().fold(String::with_capacity(32), |mut s, b| {
            let _ = write!(s, "{b:02x}");
            s
        })
    }

    /// The first 8 hex digits, for log lines.
    pub fn short(&self) -> String {
        let mut hex = self.to_hex();
        hex.truncate(8);
        hex
    }

    /// Parses 32 hex digits (either case), ignoring surrounding white space.
    pub fn from_hex(text: &str) -> Result<Self, ParseClientIdError> {
        let text = text.trim();
        if text.len() != CLIENT_ID_LEN * 2 {
            return Err(ParseClientIdError::Length(text.chars().count()));
        }
        let mut bytes = [0u8; CLIENT_ID_LEN];
        let mut digits = text.chars();
        for byte in bytes.iter_mut() {
            let mut nibble = || {
                let c = digits.next().ok_or(ParseClientIdError::Length(0))?;
                c.to_digit(16)
                    .map(|d| d as u8)
                    .ok_or(ParseClientIdError::NotHex(c))
            };
            *byte = (nibble()? << 4) | nibble()?;
        }
        Ok(ClientId(bytes))
    }
}

impl std::fmt::Display for ClientId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.to_hex())
    }
}

impl std::fmt::Debug for ClientId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ClientId({})", self.to_hex())
    }
}

impl From<[u8; CLIENT_ID_LEN]> for ClientId {
    fn from(bytes: [u8; CLIENT_ID_LEN]) -> Self {
        ClientId(bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_round_trip() {
        let id = ClientId([
            0x00, 0x01, 0x7f, 0x80, 0xff, 0x10, 0xab, 0xcd, 0xef, 0x12, 0x34, 0x56, 0x78, 0x9a,
            0xbc, 0xde,
        ]);
        let hex = id.to_hex();
        assert_eq!(hex, "00017f80ff10abcdef123456789abcde");
        assert_eq!(ClientId::from_hex(&hex).unwrap(), id);
        assert_eq!(
            ClientId::from_hex(" 00017F80FF10ABCDEF123456789ABCDE\n").unwrap(),
            id
        );
        assert_eq!(id.short(), "00017f80");
    }

    #[test]
    fn bad_hex_is_rejected() {
        assert_eq!(
            ClientId::from_hex("abc"),
            Err(ParseClientIdError::Length(3))
        );
        assert_eq!(
            ClientId::from_hex("g0017f80ff10abcdef123456789abcde"),
            Err(ParseClientIdError::NotHex('g'))
        );
        // 32 bytes but multi-byte characters: counted in characters in the message.
        assert!(ClientId::from_hex("ééééééééééééééééé").is_err());
    }
}
