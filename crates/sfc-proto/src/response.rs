//! Responses: one variant per code.

use crate::client_id::ClientId;
use crate::codes::ResponseCode;
use crate::error::DecodeError;
use crate::header::{take, ResponseHeader};
use crate::limits::{
    CLIENT_ID_LEN, FILE_RECEIVED_LEN, FILE_RECEIVED_SHORT_LEN, PROTOCOL_VERSION,
    RESPONSE_HEADER_LEN,
};
use crate::name::Name;
use crate::request::decode_name;

/// A server's reply.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Response {
    /// 1600: client_id.
    Registered {
        /// The new client's ID.
        client_id: ClientId,
    },
    /// 1601: no payload.
    RegistrationFailed,
    /// 1602: client_id, wrapped AES key.
    PublicKeyAccepted {
        /// The client's ID.
        client_id: ClientId,
        /// The AES key, RSA-OAEP encrypted with the client's public key.
        wrapped_key: Vec<u8>,
    },
    /// 1603 after the last packet: client_id, content_size, file_name, cksum.
    FileReceived {
        /// The client's ID.
        client_id: ClientId,
        /// Encrypted size received.
        content_size: u32,
        /// The file's label (sent padded on the right).
        file_name: Name,
        /// POSIX cksum of the decrypted file.
        cksum: u32,
    },
    /// 1603 after an intermediate packet, on a connection-per-request session
    /// (docs/PROTOCOL.md, rule S2): client_id only.
    PacketReceived {
        /// The client's ID.
        client_id: ClientId,
    },
    /// 1604: client_id (some servers send none).
    Ack {
        /// The client's ID, when the server sent one.
        client_id: Option<ClientId>,
    },
    /// 1605: client_id, wrapped AES key.
    ReconnectAccepted {
        /// The client's ID.
        client_id: ClientId,
        /// The AES key, RSA-OAEP encrypted with the public key on record.
        wrapped_key: Vec<u8>,
    },
    /// 1606: client_id (some servers send none).
    ReconnectRejected {
        /// The client ID the server echoed, when it sent one.
        client_id: Option<ClientId>,
    },
    /// 1607: no payload.
    ServerError,
}

impl Response {
    /// The response code.
    pub fn code(&self) -> ResponseCode {
        match self {
            Response::Registered { .. } => ResponseCode::Registered,
            Response::RegistrationFailed => ResponseCode::RegistrationFailed,
            Response::PublicKeyAccepted { .. } => ResponseCode::PublicKeyAccepted,
            Response::FileReceived { .. } | Response::PacketReceived { .. } => {
                ResponseCode::FileReceived
            }
            Response::Ack { .. } => ResponseCode::Ack,
            Response::ReconnectAccepted { .. } => ResponseCode::ReconnectAccepted,
            Response::ReconnectRejected { .. } => ResponseCode::ReconnectRejected,
            Response::ServerError => ResponseCode::ServerError,
        }
    }

    /// Encodes header (version 3) and payload.
    pub fn encode(&self) -> Vec<u8> {
        let mut payload = Vec::with_capacity(FILE_RECEIVED_LEN);
        match self {
            Response::Registered { client_id }
            | Response::PacketReceived { client_id }
            | Response::Ack {
                client_id: Some(client_id),
            }
            | Response::ReconnectRejected {
                client_id: Some(client_id),
            } => payload.extend_from_slice(client_id.as_bytes()),
            Response::PublicKeyAccepted {
                client_id,
                wrapped_key,
            }
            | Response::ReconnectAccepted {
                client_id,
                wrapped_key,
            } => {
                payload.extend_from_slice(client_id.as_bytes());
                payload.extend_from_slice(wrapped_key);
            }
            Response::FileReceived {
                client_id,
                content_size,
                file_name,
                cksum,
            } => {
                payload.extend_from_slice(client_id.as_bytes());
                payload.extend_from_slice(&content_size.to_le_bytes());
                payload.extend_from_slice(&file_name.encode_field());
                payload.extend_from_slice(&cksum.to_le_bytes());
            }
            Response::RegistrationFailed
            | Response::ServerError
            | Response::Ack { client_id: None }
            | Response::ReconnectRejected { client_id: None } => {}
        }
        let header = ResponseHeader {
            version: PROTOCOL_VERSION,
            code: self.code(),
            payload_size: u32::try_from(payload.len()).unwrap_or(u32::MAX),
        };
        let mut out = Vec::with_capacity(RESPONSE_HEADER_LEN + payload.len());
        out.extend_from_slice(&header.encode());
        out.extend_from_slice(&payload);
        out
    }

    /// Decodes a payload of `header.payload_size` bytes read after `header`.
    pub fn decode_payload(header: &ResponseHeader, payload: &[u8]) -> Result<Self, DecodeError> {
        if payload.len() != header.payload_size as usize {
            return Err(DecodeError::TooShort {
                needed: header.payload_size as usize,
                got: payload.len(),
            });
        }
        let mut rest = payload;
        let optional_id = |rest: &mut &[u8]| -> Result<Option<ClientId>, DecodeError> {
            if rest.len() >= CLIENT_ID_LEN {
                Ok(Some(ClientId(take::<CLIENT_ID_LEN>(rest)?)))
            } else {
                Ok(None)
            }
        };
        let response = match header.code {
            ResponseCode::Registered => Response::Registered {
                client_id: ClientId(take::<CLIENT_ID_LEN>(&mut rest)?),
            },
            ResponseCode::RegistrationFailed => return Ok(Response::RegistrationFailed),
            ResponseCode::ServerError => return Ok(Response::ServerError),
            ResponseCode::PublicKeyAccepted | ResponseCode::ReconnectAccepted => {
                let client_id = ClientId(take::<CLIENT_ID_LEN>(&mut rest)?);
                let wrapped_key = std::mem::take(&mut rest).to_vec();
                if header.code == ResponseCode::PublicKeyAccepted {
                    Response::PublicKeyAccepted {
                        client_id,
                        wrapped_key,
                    }
                } else {
                    Response::ReconnectAccepted {
                        client_id,
                        wrapped_key,
                    }
                }
            }
            ResponseCode::FileReceived if payload.len() == FILE_RECEIVED_SHORT_LEN => {
                Response::PacketReceived {
                    client_id: ClientId(take::<CLIENT_ID_LEN>(&mut rest)?),
                }
            }
            ResponseCode::FileReceived => {
                if payload.len() != FILE_RECEIVED_LEN {
                    return Err(DecodeError::PayloadSize {
                        code: header.code.as_u16(),
                        min: FILE_RECEIVED_LEN as u32,
                        max: FILE_RECEIVED_LEN as u32,
                        actual: header.payload_size,
                    });
                }
                let client_id = ClientId(take::<CLIENT_ID_LEN>(&mut rest)?);
                let content_size = u32::from_le_bytes(take::<4>(&mut rest)?);
                let file_name = decode_name(&mut rest, "file name")?;
                let cksum = u32::from_le_bytes(take::<4>(&mut rest)?);
                Response::FileReceived {
                    client_id,
                    content_size,
                    file_name,
                    cksum,
                }
            }
            // Tolerated shapes (docs/PROTOCOL.md, rule C5): an ID or nothing; anything after
            // it ignored.
            ResponseCode::Ack => {
                return Ok(Response::Ack {
                    client_id: optional_id(&mut rest)?,
                })
            }
            ResponseCode::ReconnectRejected => {
                return Ok(Response::ReconnectRejected {
                    client_id: optional_id(&mut rest)?,
                })
            }
        };
        if rest.is_empty() {
            Ok(response)
        } else {
            Err(DecodeError::TrailingBytes { extra: rest.len() })
        }
    }

    /// Decodes one whole response (header and payload) from `bytes`.
    pub fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
        let (head, payload) =
            bytes
                .split_first_chunk::<RESPONSE_HEADER_LEN>()
                .ok_or(DecodeError::TooShort {
                    needed: RESPONSE_HEADER_LEN,
                    got: bytes.len(),
                })?;
        let header = ResponseHeader::decode(head)?;
        let expected = header.payload_size as usize;
        match payload.len().cmp(&expected) {
            std::cmp::Ordering::Less => Err(DecodeError::TooShort {
                needed: RESPONSE_HEADER_LEN + expected,
                got: bytes.len(),
            }),
            std::cmp::Ordering::Greater => Err(DecodeError::TrailingBytes {
                extra: payload.len() - expected,
            }),
            std::cmp::Ordering::Equal => Self::decode_payload(&header, payload),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_received_layout() {
        let response = Response::FileReceived {
            client_id: ClientId([1; 16]),
            content_size: 32,
            file_name: Name::new("a.txt").unwrap(),
            cksum: 3733384285,
        };
        let bytes = response.encode();
        assert_eq!(bytes.len(), 7 + 279);
        assert_eq!(&bytes[..7], &[3, 0x43, 0x06, 0x17, 0x01, 0, 0]);
        assert_eq!(&bytes[23..27], &32u32.to_le_bytes());
        assert_eq!(&bytes[27..33], b"a.txt\0");
        assert_eq!(&bytes[282..], &3733384285u32.to_le_bytes());
        assert_eq!(Response::decode(&bytes).unwrap(), response);
    }

    #[test]
    fn left_padded_file_name_in_1603_is_accepted() {
        let mut bytes = Response::FileReceived {
            client_id: ClientId([1; 16]),
            content_size: 32,
            file_name: Name::new("a.txt").unwrap(),
            cksum: 1,
        }
        .encode();
        let left = Name::new("a.txt").unwrap().encode_field_left_padded();
        bytes[27..282].copy_from_slice(&left);
        assert!(matches!(
            Response::decode(&bytes).unwrap(),
            Response::FileReceived { file_name, .. } if file_name.as_str() == "a.txt"
        ));
    }

    #[test]
    fn tolerated_shapes() {
        // 1606 without payload, 1604 without payload, 1601 with stray bytes.
        assert_eq!(
            Response::decode(&[3, 0x46, 0x06, 0, 0, 0, 0]).unwrap(),
            Response::ReconnectRejected { client_id: None }
        );
        assert_eq!(
            Response::decode(&[3, 0x44, 0x06, 0, 0, 0, 0]).unwrap(),
            Response::Ack { client_id: None }
        );
        assert_eq!(
            Response::decode(&[2, 0x41, 0x06, 2, 0, 0, 0, 9, 9]).unwrap(),
            Response::RegistrationFailed
        );
        let short = Response::PacketReceived {
            client_id: ClientId([4; 16]),
        };
        assert_eq!(Response::decode(&short.encode()).unwrap(), short);
    }

    #[test]
    fn malformed_responses_are_errors() {
        assert!(matches!(
            Response::decode(&[3, 0x40]),
            Err(DecodeError::TooShort { .. })
        ));
        // 1600 with 15 bytes: size field disagrees with the code.
        let mut bytes = vec![3, 0x40, 0x06, 15, 0, 0, 0];
        bytes.extend([0; 15]);
        assert!(matches!(
            Response::decode(&bytes),
            Err(DecodeError::PayloadSize { code: 1600, .. })
        ));
        // 1603 of 100 bytes: neither short nor full.
        let mut bytes = vec![3, 0x43, 0x06, 100, 0, 0, 0];
        bytes.extend([1; 100]);
        assert!(matches!(
            Response::decode(&bytes),
            Err(DecodeError::PayloadSize { code: 1603, .. })
        ));
        // Announced payload longer than what is there.
        assert!(matches!(
            Response::decode(&[3, 0x40, 0x06, 16, 0, 0, 0, 1]),
            Err(DecodeError::TooShort { .. })
        ));
    }
}
