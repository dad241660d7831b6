//! Decode errors: each says precisely what was wrong with the bytes.

use thiserror::Error;

/// Why a 255-byte string field was rejected (docs/PROTOCOL.md, rule S3).
#[derive(Clone, Debug, PartialEq, Eq, Error)]
pub enum NameError {
    /// The field held only NUL bytes.
    #[error("name is empty")]
    Empty,
    /// The name is longer than the field allows (254 bytes plus a NUL).
    #[error("name is {len} bytes long; at most 254 fit the field")]
    TooLong {
        /// Length of the name in bytes.
        len: usize,
    },
    /// A NUL byte inside the name (not part of the padding).
    #[error("name contains a NUL byte at offset {offset}")]
    InteriorNul {
        /// Offset of the NUL within the field.
        offset: usize,
    },
    /// A byte that is not printable ASCII (control character or non-ASCII).
    #[error("name contains the non-printable byte 0x{byte:02x} at offset {offset}")]
    NonPrintable {
        /// Offset of the byte within the field.
        offset: usize,
        /// The offending byte.
        byte: u8,
    },
}

/// Why the fixed part of an 828 file packet is inconsistent in itself.
#[derive(Clone, Debug, PartialEq, Eq, Error)]
pub enum PacketError {
    /// `total_packets` is 0.
    #[error("total_packets is 0")]
    ZeroTotalPackets,
    /// `packet_number` is 0 or greater than `total_packets`.
    #[error("packet_number {number} is outside 1..={total}")]
    PacketNumberOutOfRange {
        /// The packet number sent.
        number: u16,
        /// The total number of packets sent.
        total: u16,
    },
    /// `content_size` is neither the encrypted size of `orig_file_size` nor this packet's
    /// content length (docs/PROTOCOL.md, rule S4).
    #[error(
        "content_size {content_size} matches neither the encrypted size of orig_file_size \
         {orig_file_size} nor this packet's {content_len} content bytes"
    )]
    ContentSizeMismatch {
        /// The content_size field.
        content_size: u32,
        /// The orig_file_size field.
        orig_file_size: u32,
        /// This packet's content length (payload_size - 267).
        content_len: u32,
    },
    /// `content_size` is the whole encrypted size, but this packet's content is longer
    /// than that by more than the padding a client may add (docs/PROTOCOL.md, rule S11).
    #[error(
        "this packet's {content_len} content bytes exceed content_size {content_size} \
         (the whole encrypted size) and the {max} bytes a zero-padded packet may have"
    )]
    ContentBeyondWhole {
        /// The content_size field.
        content_size: u32,
        /// This packet's content length (payload_size - 267).
        content_len: u32,
        /// The longest content a zero-padded packet may have.
        max: u32,
    },
}

/// Why bytes could not be decoded as a protocol message.
#[derive(Clone, Debug, PartialEq, Eq, Error)]
pub enum DecodeError {
    /// Fewer bytes than the structure needs.
    #[error("too short: {needed} bytes needed, {got} available")]
    TooShort {
        /// Bytes the structure needs.
        needed: usize,
        /// Bytes that were available.
        got: usize,
    },
    /// More bytes than the structure has.
    #[error("{extra} unexpected bytes after the message")]
    TrailingBytes {
        /// Number of extra bytes.
        extra: usize,
    },
    /// A request code this protocol does not define.
    #[error("unknown request code {0}")]
    UnknownRequestCode(u16),
    /// A response code this protocol does not define.
    #[error("unknown response code {0}")]
    UnknownResponseCode(u16),
    /// The header's payload_size is not allowed for its code.
    #[error("payload_size {actual} is not allowed for code {code} (expected {min}..={max})")]
    PayloadSize {
        /// The message code.
        code: u16,
        /// Smallest payload the code allows.
        min: u32,
        /// Largest payload the code allows.
        max: u32,
        /// The payload_size field.
        actual: u32,
    },
    /// A string field is invalid.
    #[error("invalid {field}: {source}")]
    Name {
        /// Which field: "name" or "file name".
        field: &'static str,
        /// What was wrong with it.
        source: NameError,
    },
    /// The 828 fixed part is inconsistent.
    #[error("invalid file packet: {0}")]
    Packet(#[from] PacketError),
}

impl DecodeError {
    /// True when the stream can no longer be parsed after this error (framing is lost),
    /// false when the whole message was consumed and the next one can be read.
    pub fn breaks_framing(&self) -> bool {
        matches!(
            self,
            DecodeError::UnknownRequestCode(_)
                | DecodeError::UnknownResponseCode(_)
                | DecodeError::PayloadSize { .. }
        )
    }
}
