//! Incremental request decoding for a byte stream.
//!
//! A server feeds the bytes as they arrive; the decoder yields one [`RequestEvent`] at a
//! time. Small requests are buffered (at most a few hundred bytes, bounded by
//! [`RequestCode::payload_range`]); an 828's content is NOT buffered but handed back as
//! slices of the caller's own input ([`RequestEvent::Content`]), so a multi-gigabyte
//! packet streams through in constant memory.
//!
//! ```
//! use sfc_proto::{ClientId, Name, Request, RequestBody, RequestDecoder, RequestEvent};
//! let bytes = Request::new(ClientId::ZERO, RequestBody::Register { name: Name::new("bob").unwrap() }).encode();
//! let mut decoder = RequestDecoder::new();
//! let mut input = &bytes[..];
//! while !input.is_empty() {
//!     let (used, event) = decoder.decode(input).unwrap();
//!     input = &input[used..];
//!     if let Some(RequestEvent::Request(request)) = event {
//!         assert_eq!(request.body, RequestBody::Register { name: Name::new("bob").unwrap() });
//!     }
//! }
//! ```

use crate::codes::RequestCode;
use crate::error::DecodeError;
use crate::header::RequestHeader;
use crate::limits::{FILE_PACKET_FIXED_LEN, NAME_FIELD_LEN, REQUEST_HEADER_LEN};
use crate::name::Name;
use crate::request::{name_from_field, FilePacketHeader, Request, RequestBody};

/// What the decoder found in the stream.
#[derive(Debug, PartialEq, Eq)]
pub enum RequestEvent<'a> {
    /// A whole request of any code but 828.
    Request(Request),
    /// The header and fixed part of an 828. Exactly `content_len` bytes of content follow
    /// as [`RequestEvent::Content`] events, then one [`RequestEvent::FilePacketEnd`].
    FilePacket {
        /// The request header.
        header: RequestHeader,
        /// The fixed part, already checked with [`FilePacketHeader::check`].
        packet: FilePacketHeader,
        /// Content bytes that follow (`payload_size - 267`).
        content_len: u32,
    },
    /// A piece of the current 828's content, borrowed from the input.
    Content(&'a [u8]),
    /// The current 828's content is complete.
    FilePacketEnd,
    /// A request whose framing was fine but whose payload is invalid (bad name, packet
    /// fields that contradict each other). The stream stays in sync: an invalid 828's
    /// `payload_size - 267` content bytes follow as [`RequestEvent::Content`] events, to be
    /// dropped, without a [`RequestEvent::FilePacketEnd`] (a server sees them arrive, so
    /// its request deadline can keep applying while they are skipped).
    Invalid {
        /// The request header.
        header: RequestHeader,
        /// What was wrong.
        error: DecodeError,
        /// An 828's fixed part, when it decoded but its fields contradict each other (so
        /// that a refusal can name the file and the packet).
        packet: Option<FilePacketHeader>,
    },
}

// Small, so that changing state (several times per file packet) copies little: an 828's
// 267-byte fixed part is collected in `RequestDecoder::file`, outside the state.
#[derive(Debug)]
enum State {
    Header {
        buf: [u8; REQUEST_HEADER_LEN],
        filled: usize,
    },
    Payload {
        header: RequestHeader,
        buf: Vec<u8>,
    },
    /// Collecting an 828's fixed part in `RequestDecoder::file`.
    FileFixed {
        header: RequestHeader,
        filled: usize,
    },
    Content {
        remaining: u32,
    },
    Skip {
        remaining: u32,
    },
    Failed(DecodeError),
}

/// Sans-IO request decoder; see the module documentation.
#[derive(Debug)]
pub struct RequestDecoder {
    state: State,
    /// What decoding 828s needs beyond the state; allocated with the first 828, so that a
    /// connection that sends none (most idle ones) does not hold it.
    file: Option<Box<FileParts>>,
}

/// The fixed part of the 828 being decoded (see [`State::FileFixed`]), and the last 828's
/// file name field with its decoded name.
#[derive(Debug)]
struct FileParts {
    fixed: [u8; FILE_PACKET_FIXED_LEN],
    last_name: Option<LastName>,
}

/// A file's packets all carry the same 255-byte name field: comparing it with the last
/// one costs one `memcmp`, against validating it and allocating the name again.
#[derive(Debug)]
struct LastName {
    field: [u8; NAME_FIELD_LEN],
    name: Name,
}

impl LastName {
    /// The name in `field`: the last one again if the field is the same, else decoded
    /// (and kept, if valid).
    fn decode(
        last: &mut Option<LastName>,
        field: &[u8; NAME_FIELD_LEN],
    ) -> Result<Name, DecodeError> {
        if let Some(last) = last.as_ref().filter(|last| last.field == *field) {
            return Ok(last.name.clone());
        }
        let name = name_from_field(field, "file name")?;
        *last = Some(LastName {
            field: *field,
            name: name.clone(),
        });
        Ok(name)
    }
}

impl Default for RequestDecoder {
    fn default() -> Self {
        Self::new()
    }
}

const EMPTY_HEADER: State = State::Header {
    buf: [0; REQUEST_HEADER_LEN],
    filled: 0,
};

/// Copies as much of `input` as fits into `buf[*filled..]`; returns bytes taken.
fn fill(buf: &mut [u8], filled: &mut usize, input: &[u8]) -> usize {
    let free = buf.get_mut(*filled..).unwrap_or_default();
    let n = free.len().min(input.len());
    if let (Some(dst), Some(src)) = (free.get_mut(..n), input.get(..n)) {
        dst.copy_from_slice(src);
    }
    *filled += n;
    n
}

impl RequestDecoder {
    /// A decoder at the start of a stream.
    pub fn new() -> Self {
        RequestDecoder {
            state: EMPTY_HEADER,
            file: None,
        }
    }

    /// True between messages: a stream that ends here ended cleanly.
    pub fn at_boundary(&self) -> bool {
        matches!(self.state, State::Header { filled: 0, .. })
    }

    /// Bytes still needed to complete the current header, fixed part, payload or content.
    pub fn bytes_needed(&self) -> usize {
        match &self.state {
            State::Header { filled, .. } => REQUEST_HEADER_LEN - filled,
            State::Payload { header, buf } => (header.payload_size as usize) - buf.len(),
            State::FileFixed { filled, .. } => FILE_PACKET_FIXED_LEN - filled,
            State::Content { remaining } | State::Skip { remaining } => *remaining as usize,
            State::Failed(_) => 0,
        }
    }

    /// Consumes bytes from `input` and returns how many were used and at most one event.
    ///
    /// Call again with the unused rest until it is empty; `(0, None)` is never returned for
    /// non-empty input except after an error. A framing error ([`DecodeError::breaks_framing`])
    /// is returned as `Err` and is sticky: the stream cannot be resynchronised.
    pub fn decode<'a>(
        &mut self,
        input: &'a [u8],
    ) -> Result<(usize, Option<RequestEvent<'a>>), DecodeError> {
        let mut used = 0;
        loop {
            let rest = input.get(used..).unwrap_or_default();
            let step = match &mut self.state {
                State::Failed(error) => return Err(error.clone()),
                State::Header { buf, filled } => header_step(buf, filled, rest),
                State::Payload { header, buf } => payload_step(header, buf, rest),
                State::FileFixed { header, filled } => {
                    let parts = self.file.get_or_insert_with(|| {
                        Box::new(FileParts {
                            fixed: [0; FILE_PACKET_FIXED_LEN],
                            last_name: None,
                        })
                    });
                    file_fixed_step(*header, parts, filled, rest)
                }
                State::Content { remaining } => content_step(remaining, rest),
                State::Skip { remaining } => skip_step(remaining, rest),
            };
            match step {
                Step::NeedMore(taken) => return Ok((used + taken, None)),
                Step::Then(taken, next) => {
                    used += taken;
                    self.state = next;
                }
                Step::Emit(taken, event, next) => {
                    if let Some(next) = next {
                        self.state = next;
                    }
                    return Ok((used + taken, Some(event)));
                }
                Step::Fail(error) => {
                    self.state = State::Failed(error.clone());
                    return Err(error);
                }
            }
        }
    }
}

/// What one state made of the input (the bytes it took first).
enum Step<'a> {
    /// Took the bytes; the state is incomplete until more input arrives.
    NeedMore(usize),
    /// Took the bytes and moves to a state that goes on with the rest of the input.
    Then(usize, State),
    /// Took the bytes and yields an event, moving to a new state (or staying).
    Emit(usize, RequestEvent<'a>, Option<State>),
    /// A framing error: the stream is lost.
    Fail(DecodeError),
}

/// The 23-byte request header, then the payload or an 828's fixed part.
fn header_step<'a>(
    buf: &mut [u8; REQUEST_HEADER_LEN],
    filled: &mut usize,
    rest: &[u8],
) -> Step<'a> {
    let taken = fill(buf, filled, rest);
    if *filled < REQUEST_HEADER_LEN {
        return Step::NeedMore(taken);
    }
    let header = match RequestHeader::decode(buf) {
        Ok(header) => header,
        Err(error) => return Step::Fail(error),
    };
    let next = if header.code == RequestCode::SendFile {
        State::FileFixed { header, filled: 0 }
    } else {
        // Bounded by payload_range(): at most 255 + 1024 bytes.
        State::Payload {
            header,
            buf: Vec::with_capacity(header.payload_size as usize),
        }
    };
    Step::Then(taken, next)
}

/// A small request's payload, buffered whole and decoded.
fn payload_step<'a>(header: &RequestHeader, buf: &mut Vec<u8>, rest: &[u8]) -> Step<'a> {
    let want = header.payload_size as usize - buf.len();
    let take = want.min(rest.len());
    buf.extend_from_slice(rest.get(..take).unwrap_or_default());
    if buf.len() < header.payload_size as usize {
        return Step::NeedMore(take);
    }
    let header = *header;
    let event = match RequestBody::decode_small(header.code, buf) {
        Ok(body) => RequestEvent::Request(Request {
            client_id: header.client_id,
            version: header.version,
            body,
        }),
        Err(error) => RequestEvent::Invalid {
            header,
            error,
            packet: None,
        },
    };
    Step::Emit(take, event, Some(EMPTY_HEADER))
}

/// An 828's fixed part: checked, then its content streams (or is skipped if invalid).
fn file_fixed_step<'a>(
    header: RequestHeader,
    parts: &mut FileParts,
    filled: &mut usize,
    rest: &[u8],
) -> Step<'a> {
    let FileParts { fixed, last_name } = parts;
    let taken = fill(fixed, filled, rest);
    if *filled < FILE_PACKET_FIXED_LEN {
        return Step::NeedMore(taken);
    }
    // payload_range() guarantees payload_size >= 267.
    let content_len = header
        .payload_size
        .saturating_sub(FILE_PACKET_FIXED_LEN as u32);
    let mut inconsistent = None;
    let decoded = FilePacketHeader::decode_with(fixed, |field| LastName::decode(last_name, field));
    let checked = decoded.and_then(|packet| {
        if let Err(error) = packet.check(content_len) {
            inconsistent = Some(packet);
            return Err(error.into());
        }
        Ok(packet)
    });
    match checked {
        Ok(packet) => Step::Emit(
            taken,
            RequestEvent::FilePacket {
                header,
                packet,
                content_len,
            },
            Some(State::Content {
                remaining: content_len,
            }),
        ),
        Err(error) => Step::Emit(
            taken,
            RequestEvent::Invalid {
                header,
                error,
                packet: inconsistent,
            },
            // No content to skip: at the next request's header already.
            Some(if content_len == 0 {
                EMPTY_HEADER
            } else {
                State::Skip {
                    remaining: content_len,
                }
            }),
        ),
    }
}

/// An 828's content, handed back as slices of the input; then its end.
fn content_step<'a>(remaining: &mut u32, rest: &'a [u8]) -> Step<'a> {
    if *remaining == 0 {
        return Step::Emit(0, RequestEvent::FilePacketEnd, Some(EMPTY_HEADER));
    }
    if rest.is_empty() {
        return Step::NeedMore(0);
    }
    let take = rest.len().min(*remaining as usize);
    *remaining -= take as u32;
    let piece = rest.get(..take).unwrap_or_default();
    Step::Emit(take, RequestEvent::Content(piece), None)
}

/// An invalid 828's content, handed back as slices of the input to be dropped; no end
/// event (the boundary follows its last piece at once).
fn skip_step<'a>(remaining: &mut u32, rest: &'a [u8]) -> Step<'a> {
    if *remaining == 0 {
        return Step::Then(0, EMPTY_HEADER);
    }
    if rest.is_empty() {
        return Step::NeedMore(0);
    }
    let take = rest.len().min(*remaining as usize);
    *remaining -= take as u32;
    let piece = rest.get(..take).unwrap_or_default();
    let next = (*remaining == 0).then_some(EMPTY_HEADER);
    Step::Emit(take, RequestEvent::Content(piece), next)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{ClientId, Name};

    fn packet(number: u16, total: u16, content_size: u32, orig: u32) -> FilePacketHeader {
        FilePacketHeader {
            content_size,
            orig_file_size: orig,
            packet_number: number,
            total_packets: total,
            file_name: Name::new("f.bin").unwrap(),
        }
    }

    /// Feeds `bytes` in chunks of `chunk` and collects owned events.
    fn run(bytes: &[u8], chunk: usize) -> Vec<String> {
        let mut decoder = RequestDecoder::new();
        let mut out = Vec::new();
        for piece in bytes.chunks(chunk) {
            let mut rest = piece;
            loop {
                match decoder.decode(rest) {
                    Ok((used, event)) => {
                        rest = &rest[used..];
                        match event {
                            Some(RequestEvent::Content(c)) => {
                                out.push(format!("content {}", c.len()))
                            }
                            Some(e) => out.push(format!("{e:?}")),
                            None => {}
                        }
                        if rest.is_empty()
                            && !matches!(decoder.state, State::Content { remaining: 0 })
                        {
                            break;
                        }
                    }
                    Err(e) => {
                        out.push(format!("error {e}"));
                        return out;
                    }
                }
            }
        }
        out
    }

    #[test]
    fn content_streams_without_buffering() {
        let content = vec![0xab; 1000];
        let p = packet(1, 1, 1008, 1000);
        let mut bytes = p.encode_prefix(ClientId([1; 16]), 1000).to_vec();
        bytes.extend_from_slice(&content);
        let mut decoder = RequestDecoder::new();
        let (used, event) = decoder.decode(&bytes).unwrap();
        assert_eq!(used, 290);
        assert!(matches!(
            event,
            Some(RequestEvent::FilePacket {
                content_len: 1000,
                ..
            })
        ));
        let (used, event) = decoder.decode(&bytes[290..]).unwrap();
        assert_eq!(used, 1000);
        // The content is the caller's own bytes, not a copy.
        match event {
            Some(RequestEvent::Content(piece)) => {
                assert_eq!(piece.as_ptr(), bytes[290..].as_ptr());
                assert_eq!(piece.len(), 1000);
            }
            other => panic!("unexpected {other:?}"),
        }
        assert!(!decoder.at_boundary());
        assert_eq!(
            decoder.decode(&[]).unwrap(),
            (0, Some(RequestEvent::FilePacketEnd))
        );
        assert!(decoder.at_boundary());
    }

    #[test]
    fn byte_by_byte_equals_all_at_once() {
        let mut bytes = Vec::new();
        bytes.extend(
            Request::new(
                ClientId::ZERO,
                RequestBody::Register {
                    name: Name::new("a").unwrap(),
                },
            )
            .encode(),
        );
        bytes.extend(packet(1, 2, 48, 40).encode_prefix(ClientId([2; 16]), 32));
        bytes.extend([7u8; 32]);
        bytes.extend(packet(2, 2, 48, 40).encode_prefix(ClientId([2; 16]), 16));
        bytes.extend([8u8; 16]);
        let whole = run(&bytes, bytes.len());
        let single = run(&bytes, 1);
        assert_eq!(
            whole
                .iter()
                .filter(|e| e.starts_with("FilePacketEnd"))
                .count(),
            2
        );
        let sum = |events: &[String]| -> usize {
            events
                .iter()
                .filter_map(|e| {
                    e.strip_prefix("content ")
                        .map(|n| n.parse::<usize>().unwrap())
                })
                .sum()
        };
        assert_eq!(sum(&whole), 48);
        assert_eq!(sum(&single), 48);
        let non_content = |events: &[String]| -> Vec<String> {
            events
                .iter()
                .filter(|e| !e.starts_with("content"))
                .cloned()
                .collect()
        };
        assert_eq!(non_content(&whole), non_content(&single));
    }

    #[test]
    fn zero_length_content_yields_end_at_once() {
        let p = packet(1, 2, 16, 5);
        let bytes = p.encode_prefix(ClientId::ZERO, 0);
        let mut decoder = RequestDecoder::new();
        let (used, event) = decoder.decode(&bytes).unwrap();
        assert_eq!(used, bytes.len());
        assert!(matches!(
            event,
            Some(RequestEvent::FilePacket { content_len: 0, .. })
        ));
        assert_eq!(
            decoder.decode(&[]).unwrap(),
            (0, Some(RequestEvent::FilePacketEnd))
        );
    }

    #[test]
    fn invalid_packet_is_reported_and_its_content_skipped() {
        let bad = packet(0, 1, 16, 3);
        let mut bytes = bad.encode_prefix(ClientId::ZERO, 16).to_vec();
        bytes.extend([1u8; 16]);
        let next = Request::new(
            ClientId::ZERO,
            RequestBody::ChecksumOk {
                file_name: Name::new("f.bin").unwrap(),
            },
        );
        bytes.extend(next.encode());
        let mut decoder = RequestDecoder::new();
        let (used, event) = decoder.decode(&bytes).unwrap();
        assert!(matches!(
            event,
            Some(RequestEvent::Invalid {
                error: DecodeError::Packet(_),
                ..
            })
        ));
        // The content follows, to be dropped; the boundary right after it.
        let (used2, event) = decoder.decode(&bytes[used..]).unwrap();
        assert_eq!(event, Some(RequestEvent::Content(&[1u8; 16][..])));
        assert!(decoder.at_boundary());
        let (used3, event) = decoder.decode(&bytes[used + used2..]).unwrap();
        assert_eq!(event, Some(RequestEvent::Request(next)));
        assert_eq!(used + used2 + used3, bytes.len());
    }

    #[test]
    fn an_invalid_packet_without_content_ends_at_the_boundary() {
        let bad = packet(0, 1, 16, 3);
        let bytes = bad.encode_prefix(ClientId::ZERO, 0);
        let mut decoder = RequestDecoder::new();
        let (used, event) = decoder.decode(&bytes).unwrap();
        assert_eq!(used, bytes.len());
        assert!(matches!(event, Some(RequestEvent::Invalid { .. })));
        // Read whole: a stream that ends here does not end inside a request.
        assert!(decoder.at_boundary());
    }

    #[test]
    fn bad_name_keeps_the_stream_in_sync() {
        let mut bytes = RequestHeader::new(ClientId::ZERO, RequestCode::Register, 255)
            .encode()
            .to_vec();
        bytes.extend([0u8; 255]);
        let mut decoder = RequestDecoder::new();
        let (used, event) = decoder.decode(&bytes).unwrap();
        assert_eq!(used, bytes.len());
        assert!(matches!(
            event,
            Some(RequestEvent::Invalid {
                error: DecodeError::Name { field: "name", .. },
                ..
            })
        ));
        assert!(decoder.at_boundary());
    }

    #[test]
    fn framing_errors_are_sticky() {
        let mut header = RequestHeader::new(ClientId::ZERO, RequestCode::Register, 255).encode();
        header[17..19].copy_from_slice(&4242u16.to_le_bytes());
        let mut decoder = RequestDecoder::new();
        let error = decoder.decode(&header).unwrap_err();
        assert_eq!(error, DecodeError::UnknownRequestCode(4242));
        assert!(error.breaks_framing());
        assert_eq!(decoder.decode(&[0; 10]), Err(error));
    }

    #[test]
    fn each_packet_s_name_field_is_read_even_when_the_last_one_is_reused() {
        let id = ClientId([7; 16]);
        let fixed = |name: &str, left: bool, number: u16| {
            let mut header = packet(number, 9, 4, 1);
            header.file_name = Name::new(name).unwrap();
            let mut bytes = header.encode_prefix(id, 4).to_vec();
            if left {
                bytes[REQUEST_HEADER_LEN + 12..REQUEST_HEADER_LEN + 267]
                    .copy_from_slice(&header.file_name.encode_field_left_padded());
            }
            bytes.extend_from_slice(&[0; 4]);
            bytes
        };
        let mut stream = Vec::new();
        stream.extend(fixed("a.bin", false, 1));
        stream.extend(fixed("a.bin", false, 2));
        stream.extend(fixed("a.bin", true, 3));
        stream.extend(fixed("b.bin", false, 4));
        let mut bad = fixed("b.bin", false, 5);
        bad[REQUEST_HEADER_LEN + 12] = b'\n';
        stream.extend(bad);
        stream.extend(fixed("b.bin", false, 6));
        for chunk in [1, 7, 300, stream.len()] {
            let mut decoder = RequestDecoder::new();
            let mut rest = &stream[..];
            let mut names = Vec::new();
            while !rest.is_empty() || decoder.bytes_needed() == 0 && !decoder.at_boundary() {
                let take = rest.len().min(chunk);
                let (used, event) = decoder.decode(&rest[..take]).unwrap();
                rest = &rest[used..];
                match event {
                    Some(RequestEvent::FilePacket { packet, .. }) => {
                        names.push(packet.file_name.as_str().to_owned())
                    }
                    Some(RequestEvent::Invalid { error, .. }) => {
                        names.push(format!("invalid: {error}"))
                    }
                    _ => {}
                }
            }
            assert_eq!(names.len(), 6, "chunk {chunk}: {names:?}");
            assert_eq!(
                &names[..4],
                ["a.bin", "a.bin", "a.bin", "b.bin"],
                "chunk {chunk}"
            );
            assert!(
                names[4].starts_with("invalid: "),
                "chunk {chunk}: {names:?}"
            );
            assert_eq!(names[5], "b.bin", "chunk {chunk}");
        }
    }
}
