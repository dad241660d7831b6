//! Request and response headers.

use crate::client_id::ClientId;
use crate::codes::{RequestCode, ResponseCode};
use crate::error::DecodeError;
use crate::limits::{
    CLIENT_ID_LEN, FILE_PACKET_FIXED_LEN, FILE_RECEIVED_LEN, MAX_PUBLIC_KEY_FIELD_LEN,
    MAX_RESPONSE_PAYLOAD, MAX_WRAPPED_KEY_LEN, NAME_FIELD_LEN, PROTOCOL_VERSION,
    REQUEST_HEADER_LEN, RESPONSE_HEADER_LEN,
};

/// Request header: client_id (16), version (1), code (2), payload_size (4), little-endian.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RequestHeader {
    /// The sender's client ID (garbage on 825; ignored there).
    pub client_id: ClientId,
    /// The client's version byte (clients send 1, 2 or 3; docs/PROTOCOL.md, rule S5).
    pub version: u8,
    /// The request code.
    pub code: RequestCode,
    /// Number of payload bytes that follow.
    pub payload_size: u32,
}

impl RequestCode {
    /// The payload sizes this code allows, inclusive.
    pub const fn payload_range(self) -> (u32, u32) {
        const NAME: u32 = NAME_FIELD_LEN as u32;
        match self {
            RequestCode::Register
            | RequestCode::Reconnect
            | RequestCode::ChecksumOk
            | RequestCode::ChecksumRetry
            | RequestCode::ChecksumFailed => (NAME, NAME),
            RequestCode::SendPublicKey => (NAME + 1, NAME + MAX_PUBLIC_KEY_FIELD_LEN as u32),
            RequestCode::SendFile => (FILE_PACKET_FIXED_LEN as u32, u32::MAX),
        }
    }
}

impl ResponseCode {
    /// The payload sizes a client accepts for this code, inclusive. Deliberately tolerant
    /// where other servers differ (docs/PROTOCOL.md, rule C5): a 1606 or 1604 without
    /// payload, stray payload after 1601 and 1607.
    pub const fn payload_range(self) -> (u32, u32) {
        const ID: u32 = CLIENT_ID_LEN as u32;
        const ANY: u32 = MAX_RESPONSE_PAYLOAD as u32;
        match self {
            ResponseCode::Registered => (ID, ID),
            ResponseCode::PublicKeyAccepted | ResponseCode::ReconnectAccepted => {
                (ID + 1, ID + MAX_WRAPPED_KEY_LEN as u32)
            }
            ResponseCode::FileReceived => (ID, FILE_RECEIVED_LEN as u32),
            ResponseCode::RegistrationFailed
            | ResponseCode::Ack
            | ResponseCode::ReconnectRejected
            | ResponseCode::ServerError => (0, ANY),
        }
    }
}

fn check_payload_size(code: u16, (min, max): (u32, u32), actual: u32) -> Result<(), DecodeError> {
    if (min..=max).contains(&actual) {
        Ok(())
    } else {
        Err(DecodeError::PayloadSize {
            code,
            min,
            max,
            actual,
        })
    }
}

/// Splits `N` bytes off the front of `bytes`.
pub(crate) fn take<const N: usize>(bytes: &mut &[u8]) -> Result<[u8; N], DecodeError> {
    let (head, rest) = bytes
        .split_first_chunk::<N>()
        .ok_or(DecodeError::TooShort {
            needed: N,
            got: bytes.len(),
        })?;
    *bytes = rest;
    Ok(*head)
}

impl RequestHeader {
    /// A header with this crate's protocol version.
    pub fn new(client_id: ClientId, code: RequestCode, payload_size: u32) -> Self {
        RequestHeader {
            client_id,
            version: PROTOCOL_VERSION,
            code,
            payload_size,
        }
    }

    /// Encodes the 23 header bytes.
    pub fn encode(&self) -> [u8; REQUEST_HEADER_LEN] {
        let mut out = [0u8; REQUEST_HEADER_LEN];
        let (id, rest) = out.split_at_mut(CLIENT_ID_LEN);
        id.copy_from_slice(self.client_id.as_bytes());
        let (version, rest) = rest.split_at_mut(1);
        version.copy_from_slice(&[self.version]);
        let (code, size) = rest.split_at_mut(2);
        code.copy_from_slice(&self.code.as_u16().to_le_bytes());
        size.copy_from_slice(&self.payload_size.to_le_bytes());
        out
    }

    /// Decodes 23 header bytes: rejects unknown codes and payload sizes the code does not
    /// allow, so a lying size field is caught before any payload is read.
    pub fn decode(bytes: &[u8; REQUEST_HEADER_LEN]) -> Result<Self, DecodeError> {
        let mut rest: &[u8] = bytes;
        let client_id = ClientId(take::<CLIENT_ID_LEN>(&mut rest)?);
        let [version] = take::<1>(&mut rest)?;
        let raw_code = u16::from_le_bytes(take::<2>(&mut rest)?);
        let payload_size = u32::from_le_bytes(take::<4>(&mut rest)?);
        let code = RequestCode::try_from(raw_code)?;
        check_payload_size(raw_code, code.payload_range(), payload_size)?;
        Ok(RequestHeader {
            client_id,
            version,
            code,
            payload_size,
        })
    }
}

/// Response header: version (1), code (2), payload_size (4), little-endian.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ResponseHeader {
    /// The server's version byte.
    pub version: u8,
    /// The response code.
    pub code: ResponseCode,
    /// Number of payload bytes that follow.
    pub payload_size: u32,
}

impl ResponseHeader {
    /// Encodes the 7 header bytes.
    pub fn encode(&self) -> [u8; RESPONSE_HEADER_LEN] {
        let mut out = [0u8; RESPONSE_HEADER_LEN];
        let (version, rest) = out.split_at_mut(1);
        version.copy_from_slice(&[self.version]);
        let (code, size) = rest.split_at_mut(2);
        code.copy_from_slice(&self.code.as_u16().to_le_bytes());
        size.copy_from_slice(&self.payload_size.to_le_bytes());
        out
    }

    /// Decodes 7 header bytes: rejects unknown codes and payload sizes the code does not
    /// allow (so a client never allocates what a lying server announces).
    pub fn decode(bytes: &[u8; RESPONSE_HEADER_LEN]) -> Result<Self, DecodeError> {
        let mut rest: &[u8] = bytes;
        let [version] = take::<1>(&mut rest)?;
        let raw_code = u16::from_le_bytes(take::<2>(&mut rest)?);
        let payload_size = u32::from_le_bytes(take::<4>(&mut rest)?);
        let code = ResponseCode::try_from(raw_code)?;
        check_payload_size(raw_code, code.payload_range(), payload_size)?;
        Ok(ResponseHeader {
            version,
            code,
            payload_size,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_header_layout_is_little_endian() {
        let header = RequestHeader::new(ClientId([7; 16]), RequestCode::Register, 255);
        let bytes = header.encode();
        assert_eq!(&bytes[..16], &[7; 16]);
        assert_eq!(bytes[16], 3);
        assert_eq!(&bytes[17..19], &[0x39, 0x03]); // 825
        assert_eq!(&bytes[19..23], &[0xff, 0, 0, 0]);
        assert_eq!(RequestHeader::decode(&bytes).unwrap(), header);
    }

    #[test]
    fn request_header_rejects_unknown_code_and_bad_sizes() {
        let mut bytes = RequestHeader::new(ClientId::ZERO, RequestCode::Register, 255).encode();
        bytes[17..19].copy_from_slice(&829u16.to_le_bytes());
        assert_eq!(
            RequestHeader::decode(&bytes),
            Err(DecodeError::UnknownRequestCode(829))
        );
        let bytes = RequestHeader::new(ClientId::ZERO, RequestCode::Register, u32::MAX).encode();
        assert_eq!(
            RequestHeader::decode(&bytes),
            Err(DecodeError::PayloadSize {
                code: 825,
                min: 255,
                max: 255,
                actual: u32::MAX
            })
        );
        let bytes = RequestHeader::new(ClientId::ZERO, RequestCode::SendFile, 266).encode();
        assert!(matches!(
            RequestHeader::decode(&bytes),
            Err(DecodeError::PayloadSize { code: 828, .. })
        ));
        let bytes = RequestHeader::new(ClientId::ZERO, RequestCode::SendPublicKey, 255).encode();
        assert!(RequestHeader::decode(&bytes).is_err());
        let bytes = RequestHeader::new(ClientId::ZERO, RequestCode::SendFile, u32::MAX).encode();
        assert!(RequestHeader::decode(&bytes).is_ok());
    }

    /// Every code's payload bounds hold exactly at their edges: the smallest and largest
    /// size pass the header, one byte fewer or more is refused (826: 256..=1279;
    /// 1602/1605: 17..=528; 1601/1604/1606/1607: up to 528; 1603: 16..=279, of which the
    /// payload's decoding takes only 16 and 279).
    #[test]
    fn payload_bounds_hold_at_their_edges() {
        let edges = |(min, max): (u32, u32)| {
            let inside = [min, max];
            let outside: Vec<u32> = [min.checked_sub(1), max.checked_add(1)]
                .into_iter()
                .flatten()
                .collect();
            (inside, outside)
        };
        for code in RequestCode::ALL {
            let (inside, outside) = edges(code.payload_range());
            for size in inside {
                let bytes = RequestHeader::new(ClientId::ZERO, code, size).encode();
                assert!(RequestHeader::decode(&bytes).is_ok(), "{code:?} {size}");
            }
            for size in outside {
                let bytes = RequestHeader::new(ClientId::ZERO, code, size).encode();
                assert!(
                    matches!(
                        RequestHeader::decode(&bytes),
                        Err(DecodeError::PayloadSize { .. })
                    ),
                    "{code:?} {size}"
                );
            }
        }
        for code in ResponseCode::ALL {
            let (inside, outside) = edges(code.payload_range());
            let header = |payload_size| ResponseHeader {
                version: 3,
                code,
                payload_size,
            };
            for size in inside {
                assert!(
                    ResponseHeader::decode(&header(size).encode()).is_ok(),
                    "{code:?} {size}"
                );
            }
            for size in outside {
                assert!(
                    matches!(
                        ResponseHeader::decode(&header(size).encode()),
                        Err(DecodeError::PayloadSize { .. })
                    ),
                    "{code:?} {size}"
                );
            }
        }
        // The numbers of PROTOCOL.md's tables.
        assert_eq!(RequestCode::SendPublicKey.payload_range(), (256, 1279));
        assert_eq!(ResponseCode::PublicKeyAccepted.payload_range(), (17, 528));
        assert_eq!(ResponseCode::FileReceived.payload_range(), (16, 279));
        assert_eq!(ResponseCode::Ack.payload_range(), (0, 528));
    }

    #[test]
    fn any_version_byte_is_accepted() {
        for version in [0u8, 1, 2, 3, 255] {
            let mut bytes =
                RequestHeader::new(ClientId::ZERO, RequestCode::ChecksumOk, 255).encode();
            bytes[16] = version;
            assert_eq!(RequestHeader::decode(&bytes).unwrap().version, version);
        }
    }

    #[test]
    fn response_header_round_trip_and_limits() {
        let header = ResponseHeader {
            version: 3,
            code: ResponseCode::FileReceived,
            payload_size: 279,
        };
        let bytes = header.encode();
        assert_eq!(bytes, [3, 0x43, 0x06, 0x17, 0x01, 0, 0]);
        assert_eq!(ResponseHeader::decode(&bytes).unwrap(), header);
        let lying = ResponseHeader {
            payload_size: 1 << 30,
            ..header
        };
        assert!(matches!(
            ResponseHeader::decode(&lying.encode()),
            Err(DecodeError::PayloadSize { code: 1603, .. })
        ));
        let mut unknown = header.encode();
        unknown[1..3].copy_from_slice(&1608u16.to_le_bytes());
        assert_eq!(
            ResponseHeader::decode(&unknown),
            Err(DecodeError::UnknownResponseCode(1608))
        );
    }
}
