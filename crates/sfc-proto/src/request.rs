//! Request payloads: one struct per code.

use crate::client_id::ClientId;
use crate::codes::RequestCode;
use crate::decoder::{RequestDecoder, RequestEvent};
use crate::error::{DecodeError, PacketError};
use crate::header::{take, RequestHeader};
use crate::limits::{
    FILE_PACKET_FIXED_LEN, MAX_PADDED_CONTENT, NAME_FIELD_LEN, PROTOCOL_VERSION, REQUEST_HEADER_LEN,
};
use crate::name::Name;

/// Encrypted size of a file of `orig_file_size` bytes: AES-CBC with PKCS#7 always adds
/// 1..=16 bytes, so `16 * (orig_file_size / 16 + 1)`.
pub const fn encrypted_size(orig_file_size: u64) -> u64 {
    16 * (orig_file_size / 16 + 1)
}

/// The fixed 267-byte part of an 828 payload; the packet's content follows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FilePacketHeader {
    /// Encrypted size of the whole file (most clients), or this packet's content length
    /// (a few clients; docs/PROTOCOL.md, rule S4).
    pub content_size: u32,
    /// Plaintext size of the whole file.
    pub orig_file_size: u32,
    /// This packet's number, 1..=total_packets.
    pub packet_number: u16,
    /// Number of packets the file is sent in.
    pub total_packets: u16,
    /// The file's label.
    pub file_name: Name,
}

impl FilePacketHeader {
    /// Encodes the 267 bytes (file name padded on the right).
    pub fn encode(&self) -> [u8; FILE_PACKET_FIXED_LEN] {
        let mut out = [0u8; FILE_PACKET_FIXED_LEN];
        let (content_size, rest) = out.split_at_mut(4);
        content_size.copy_from_slice(&self.content_size.to_le_bytes());
        let (orig, rest) = rest.split_at_mut(4);
        orig.copy_from_slice(&self.orig_file_size.to_le_bytes());
        let (number, rest) = rest.split_at_mut(2);
        number.copy_from_slice(&self.packet_number.to_le_bytes());
        let (total, name) = rest.split_at_mut(2);
        total.copy_from_slice(&self.total_packets.to_le_bytes());
        name.copy_from_slice(&self.file_name.encode_field());
        out
    }

    /// Decodes the 267 bytes. Consistency with the content is checked by [`Self::check`].
    pub fn decode(bytes: &[u8; FILE_PACKET_FIXED_LEN]) -> Result<Self, DecodeError> {
        Self::decode_with(bytes, |field| name_from_field(field, "file name"))
    }

    /// [`Self::decode`] with the name field decoded by `name` (the stream decoder reuses
    /// the previous packet's name when the field is the same).
    pub(crate) fn decode_with(
        bytes: &[u8; FILE_PACKET_FIXED_LEN],
        name: impl FnOnce(&[u8; NAME_FIELD_LEN]) -> Result<Name, DecodeError>,
    ) -> Result<Self, DecodeError> {
        let mut rest: &[u8] = bytes;
        let content_size = u32::from_le_bytes(take::<4>(&mut rest)?);
        let orig_file_size = u32::from_le_bytes(take::<4>(&mut rest)?);
        let packet_number = u16::from_le_bytes(take::<2>(&mut rest)?);
        let total_packets = u16::from_le_bytes(take::<2>(&mut rest)?);
        let file_name = name(&take::<NAME_FIELD_LEN>(&mut rest)?)?;
        Ok(FilePacketHeader {
            content_size,
            orig_file_size,
            packet_number,
            total_packets,
            file_name,
        })
    }

    /// Checks what one packet can tell on its own: 1 <= packet_number <= total_packets,
    /// and content_size is either the whole encrypted size or exactly this packet's content
    /// length. With the whole encrypted size, the content may be longer than content_size
    /// (a file smaller than a zero-padded packet, rule S11), up to
    /// [`MAX_PADDED_CONTENT`] bytes.
    pub fn check(&self, content_len: u32) -> Result<(), PacketError> {
        if self.total_packets == 0 {
            return Err(PacketError::ZeroTotalPackets);
        }
        if self.packet_number == 0 || self.packet_number > self.total_packets {
            return Err(PacketError::PacketNumberOutOfRange {
                number: self.packet_number,
                total: self.total_packets,
            });
        }
        if self.content_size_is_whole() {
            // Content beyond the whole encrypted size is zero padding (rule S11), checked
            // by the receiver; bounded so that no one pads a packet with gigabytes.
            return if content_len <= self.content_size.max(MAX_PADDED_CONTENT) {
                Ok(())
            } else {
                Err(PacketError::ContentBeyondWhole {
                    content_size: self.content_size,
                    content_len,
                    max: MAX_PADDED_CONTENT,
                })
            };
        }
        if self.content_size == content_len {
            Ok(())
        } else {
            Err(PacketError::ContentSizeMismatch {
                content_size: self.content_size,
                orig_file_size: self.orig_file_size,
                content_len,
            })
        }
    }

    /// True when content_size is the whole file's encrypted size (the usual style).
    pub fn content_size_is_whole(&self) -> bool {
        u64::from(self.content_size) == encrypted_size(u64::from(self.orig_file_size))
    }

    /// Encodes the request header and this fixed part: the 290 bytes that precede a
    /// packet's `content_len` content bytes on the wire.
    pub fn encode_prefix(
        &self,
        client_id: ClientId,
        content_len: u32,
    ) -> [u8; REQUEST_HEADER_LEN + FILE_PACKET_FIXED_LEN] {
        let header = RequestHeader::new(
            client_id,
            RequestCode::SendFile,
            content_len.saturating_add(FILE_PACKET_FIXED_LEN as u32),
        );
        let mut out = [0u8; REQUEST_HEADER_LEN + FILE_PACKET_FIXED_LEN];
        let (head, fixed) = out.split_at_mut(REQUEST_HEADER_LEN);
        head.copy_from_slice(&header.encode());
        fixed.copy_from_slice(&self.encode());
        out
    }
}

/// A request's payload, one variant per code.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RequestBody {
    /// 825: name.
    Register {
        /// The user name to register.
        name: Name,
    },
    /// 826: name, public key (SPKI DER, normally 160 bytes).
    SendPublicKey {
        /// The registered user name.
        name: Name,
        /// The public key field as sent (`payload_size - 255` bytes).
        public_key: Vec<u8>,
    },
    /// 827: name.
    Reconnect {
        /// The registered user name.
        name: Name,
    },
    /// 828: one file packet, whole (for tests and small tools; servers stream the content
    /// with [`RequestDecoder`] instead).
    SendFile {
        /// The fixed part.
        packet: FilePacketHeader,
        /// This packet's slice of the ciphertext.
        content: Vec<u8>,
    },
    /// 900: file name.
    ChecksumOk {
        /// The file's label.
        file_name: Name,
    },
    /// 901: file name.
    ChecksumRetry {
        /// The file's label.
        file_name: Name,
    },
    /// 902: file name.
    ChecksumFailed {
        /// The file's label.
        file_name: Name,
    },
}

impl RequestBody {
    /// The request code of this payload.
    pub fn code(&self) -> RequestCode {
        match self {
            RequestBody::Register { .. } => RequestCode::Register,
            RequestBody::SendPublicKey { .. } => RequestCode::SendPublicKey,
            RequestBody::Reconnect { .. } => RequestCode::Reconnect,
            RequestBody::SendFile { .. } => RequestCode::SendFile,
            RequestBody::ChecksumOk { .. } => RequestCode::ChecksumOk,
            RequestBody::ChecksumRetry { .. } => RequestCode::ChecksumRetry,
            RequestBody::ChecksumFailed { .. } => RequestCode::ChecksumFailed,
        }
    }

    /// Payload length in bytes.
    pub fn payload_len(&self) -> usize {
        match self {
            RequestBody::SendPublicKey { public_key, .. } => NAME_FIELD_LEN + public_key.len(),
            RequestBody::SendFile { content, .. } => FILE_PACKET_FIXED_LEN + content.len(),
            _ => NAME_FIELD_LEN,
        }
    }

    fn encode_payload(&self, out: &mut Vec<u8>) {
        match self {
            RequestBody::Register { name } | RequestBody::Reconnect { name } => {
                out.extend_from_slice(&name.encode_field())
            }
            RequestBody::SendPublicKey { name, public_key } => {
                out.extend_from_slice(&name.encode_field());
                out.extend_from_slice(public_key);
            }
            RequestBody::SendFile { packet, content } => {
                out.extend_from_slice(&packet.encode());
                out.extend_from_slice(content);
            }
            RequestBody::ChecksumOk { file_name }
            | RequestBody::ChecksumRetry { file_name }
            | RequestBody::ChecksumFailed { file_name } => {
                out.extend_from_slice(&file_name.encode_field())
            }
        }
    }

    /// Decodes the payload of any code but 828, whose size the header has already checked.
    pub(crate) fn decode_small(code: RequestCode, payload: &[u8]) -> Result<Self, DecodeError> {
        let mut rest = payload;
        let body = match code {
            RequestCode::Register => RequestBody::Register {
                name: decode_name(&mut rest, "name")?,
            },
            RequestCode::SendPublicKey => {
                let name = decode_name(&mut rest, "name")?;
                let public_key = std::mem::take(&mut rest).to_vec();
                RequestBody::SendPublicKey { name, public_key }
            }
            RequestCode::Reconnect => RequestBody::Reconnect {
                name: decode_name(&mut rest, "name")?,
            },
            RequestCode::ChecksumOk => RequestBody::ChecksumOk {
                file_name: decode_name(&mut rest, "file name")?,
            },
            RequestCode::ChecksumRetry => RequestBody::ChecksumRetry {
                file_name: decode_name(&mut rest, "file name")?,
            },
            RequestCode::ChecksumFailed => RequestBody::ChecksumFailed {
                file_name: decode_name(&mut rest, "file name")?,
            },
            RequestCode::SendFile => {
                return Err(DecodeError::PayloadSize {
                    code: code.as_u16(),
                    min: FILE_PACKET_FIXED_LEN as u32,
                    max: u32::MAX,
                    actual: u32::try_from(payload.len()).unwrap_or(u32::MAX),
                })
            }
        };
        if rest.is_empty() {
            Ok(body)
        } else {
            Err(DecodeError::TrailingBytes { extra: rest.len() })
        }
    }
}

pub(crate) fn decode_name(rest: &mut &[u8], field: &'static str) -> Result<Name, DecodeError> {
    name_from_field(&take::<NAME_FIELD_LEN>(rest)?, field)
}

/// The name in a 255-byte field; an invalid one is a [`DecodeError::Name`] for `field`.
pub(crate) fn name_from_field(
    bytes: &[u8; NAME_FIELD_LEN],
    field: &'static str,
) -> Result<Name, DecodeError> {
    Name::decode_field(bytes).map_err(|source| DecodeError::Name { field, source })
}

/// A whole request: header fields and payload.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Request {
    /// The sender's client ID.
    pub client_id: ClientId,
    /// The version byte.
    pub version: u8,
    /// The payload.
    pub body: RequestBody,
}

impl Request {
    /// A request with this crate's protocol version.
    pub fn new(client_id: ClientId, body: RequestBody) -> Self {
        Request {
            client_id,
            version: PROTOCOL_VERSION,
            body,
        }
    }

    /// The header this request is sent with. Payloads over 4 GiB cannot be expressed; the
    /// size saturates (only in-memory 828 bodies could be that large).
    pub fn header(&self) -> RequestHeader {
        RequestHeader {
            client_id: self.client_id,
            version: self.version,
            code: self.body.code(),
            payload_size: u32::try_from(self.body.payload_len()).unwrap_or(u32::MAX),
        }
    }

    /// Encodes header and payload.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(REQUEST_HEADER_LEN + self.body.payload_len());
        out.extend_from_slice(&self.header().encode());
        self.body.encode_payload(&mut out);
        out
    }

    /// Decodes exactly one whole request (through the same [`RequestDecoder`] a server
    /// streams with, so both paths accept and reject the same bytes).
    pub fn decode(bytes: &[u8]) -> Result<Self, DecodeError> {
        let mut decoder = RequestDecoder::new();
        let mut rest = bytes;
        let mut file: Option<(RequestHeader, FilePacketHeader, Vec<u8>)> = None;
        loop {
            let (used, event) = decoder.decode(rest)?;
            rest = rest.get(used..).unwrap_or_default();
            match event {
                Some(RequestEvent::Request(request)) => {
                    return finish_whole(request, rest);
                }
                Some(RequestEvent::Invalid { error, .. }) => return Err(error),
                Some(RequestEvent::FilePacket {
                    header,
                    packet,
                    content_len,
                }) => {
                    file = Some((
                        header,
                        packet,
                        Vec::with_capacity(content_len.min(1 << 20) as usize),
                    ));
                }
                Some(RequestEvent::Content(piece)) => {
                    if let Some((_, _, content)) = file.as_mut() {
                        content.extend_from_slice(piece);
                    }
                }
                Some(RequestEvent::FilePacketEnd) => {
                    if let Some((header, packet, content)) = file.take() {
                        let request = Request {
                            client_id: header.client_id,
                            version: header.version,
                            body: RequestBody::SendFile { packet, content },
                        };
                        return finish_whole(request, rest);
                    }
                }
                None => {
                    return Err(DecodeError::TooShort {
                        needed: decoder.bytes_needed(),
                        got: 0,
                    })
                }
            }
        }
    }
}

fn finish_whole(request: Request, rest: &[u8]) -> Result<Request, DecodeError> {
    if rest.is_empty() {
        Ok(request)
    } else {
        Err(DecodeError::TrailingBytes { extra: rest.len() })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn name(s: &str) -> Name {
        Name::new(s).unwrap()
    }

    #[test]
    fn encrypted_size_matches_the_protocol_formula() {
        assert_eq!(encrypted_size(0), 16);
        assert_eq!(encrypted_size(1), 16);
        assert_eq!(encrypted_size(15), 16);
        assert_eq!(encrypted_size(16), 32);
        assert_eq!(encrypted_size(17), 32);
        assert_eq!(
            encrypted_size(u64::from(crate::limits::MAX_ORIG_FILE_SIZE)),
            u64::from(u32::MAX) + 1 - 16
        );
    }

    #[test]
    fn file_packet_layout() {
        let packet = FilePacketHeader {
            content_size: 0x0102_0304,
            orig_file_size: 0x0a0b_0c0d,
            packet_number: 0x0201,
            total_packets: 0x0403,
            file_name: name("x.bin"),
        };
        let bytes = packet.encode();
        assert_eq!(&bytes[..12], &[4, 3, 2, 1, 0xd, 0xc, 0xb, 0xa, 1, 2, 3, 4]);
        assert_eq!(&bytes[12..18], b"x.bin\0");
        assert_eq!(FilePacketHeader::decode(&bytes).unwrap(), packet);
        let prefix = packet.encode_prefix(ClientId([1; 16]), 100);
        assert_eq!(&prefix[19..23], &(367u32).to_le_bytes());
        assert_eq!(&prefix[23..], &bytes[..]);
    }

    #[test]
    fn packet_checks() {
        let mut p = FilePacketHeader {
            content_size: 32,
            orig_file_size: 20,
            packet_number: 1,
            total_packets: 2,
            file_name: name("f"),
        };
        assert_eq!(p.check(16), Ok(()));
        assert_eq!(p.check(32), Ok(()));
        // Zero padding beyond a whole content_size (rule S11), up to 64 KiB.
        assert_eq!(p.check(48), Ok(()));
        assert_eq!(p.check(MAX_PADDED_CONTENT), Ok(()));
        assert_eq!(
            p.check(MAX_PADDED_CONTENT + 1),
            Err(PacketError::ContentBeyondWhole {
                content_size: 32,
                content_len: MAX_PADDED_CONTENT + 1,
                max: MAX_PADDED_CONTENT
            })
        );
        // The padded 12-byte file of issue 12: content_size 16, 1,024 content bytes.
        let padded = FilePacketHeader {
            content_size: 16,
            orig_file_size: 12,
            packet_number: 1,
            total_packets: 1,
            file_name: name("f"),
        };
        assert_eq!(padded.check(1024), Ok(()));
        p.content_size = 40;
        assert!(matches!(
            p.check(48),
            Err(PacketError::ContentSizeMismatch { .. })
        ));
        // Per-packet content_size (docs/PROTOCOL.md, rule S4).
        p.content_size = 16;
        assert_eq!(p.check(16), Ok(()));
        assert!(p.check(15).is_err());
        p.content_size = 32;
        p.packet_number = 0;
        assert_eq!(
            p.check(16),
            Err(PacketError::PacketNumberOutOfRange {
                number: 0,
                total: 2
            })
        );
        p.packet_number = 3;
        assert!(p.check(16).is_err());
        p.total_packets = 0;
        assert_eq!(p.check(16), Err(PacketError::ZeroTotalPackets));
        // orig_file_size inconsistent with content_size.
        let q = FilePacketHeader {
            content_size: 48,
            orig_file_size: 20,
            packet_number: 1,
            total_packets: 1,
            file_name: name("f"),
        };
        assert!(q.check(16).is_err());
    }

    #[test]
    fn every_small_request_round_trips() {
        let bodies = vec![
            RequestBody::Register {
                name: name("alice"),
            },
            RequestBody::SendPublicKey {
                name: name("alice"),
                public_key: vec![0x30; 160],
            },
            RequestBody::Reconnect {
                name: name("alice"),
            },
            RequestBody::ChecksumOk {
                file_name: name("a.txt"),
            },
            RequestBody::ChecksumRetry {
                file_name: name("a.txt"),
            },
            RequestBody::ChecksumFailed {
                file_name: name("a.txt"),
            },
            RequestBody::SendFile {
                packet: FilePacketHeader {
                    content_size: 16,
                    orig_file_size: 3,
                    packet_number: 1,
                    total_packets: 1,
                    file_name: name("a.txt"),
                },
                content: vec![9; 16],
            },
        ];
        for body in bodies {
            let request = Request::new(ClientId([5; 16]), body);
            let bytes = request.encode();
            assert_eq!(bytes.len(), 23 + request.body.payload_len());
            assert_eq!(Request::decode(&bytes).unwrap(), request);
            // Truncated by one byte: too short, never a panic.
            assert!(matches!(
                Request::decode(&bytes[..bytes.len() - 1]),
                Err(DecodeError::TooShort { .. })
            ));
            let mut longer = bytes.clone();
            longer.push(0);
            assert_eq!(
                Request::decode(&longer),
                Err(DecodeError::TrailingBytes { extra: 1 })
            );
        }
    }
}
