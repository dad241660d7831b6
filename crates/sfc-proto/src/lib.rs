//! The SecureFileComm protocol, version 3 — wire format only.
//!
//! This crate is the byte-exact contract of `docs/PROTOCOL.md` as plain data and functions
//! ("sans-IO", in the style of `quinn-proto` or `rustls`): no sockets, no async, no
//! cryptography. Client and server both use it; neither has its own copy of a field size,
//! a code or a parser.
//!
//! Where each part of docs/PROTOCOL.md lives:
//!
//! | docs/PROTOCOL.md | here |
//! |---|---|
//! | Request header (client_id, version, code, payload_size) | [`RequestHeader`] |
//! | Request codes 825–828, 900–902 and their payloads | [`RequestCode`], [`Request`], [`RequestBody`], [`FilePacketHeader`] |
//! | Response header (version, code, payload_size) | [`ResponseHeader`] |
//! | Response codes 1600–1607 and their payloads | [`ResponseCode`], [`Response`] |
//! | 255-byte NUL-padded strings, left/right padding (rule S3) | [`Name`] |
//! | Client ID, 16 bytes, 32 hex digits in files | [`ClientId`] |
//! | field sizes, 828 fixed part of 267 bytes, packet limits | [`limits`] |
//! | `content_size = 16 * (orig_file_size / 16 + 1)`, rule S4 | [`encrypted_size`], [`FilePacketHeader::check`] |
//! | reading a stream of requests, 828 content in pieces | [`RequestDecoder`] |
//!
//! Every decode function returns a precise [`DecodeError`]; nothing here panics on input.
//!
//! # Speed
//!
//! `cargo bench -p sfc-proto` (benches/decode.rs) feeds a stream of 828 packets to
//! [`RequestDecoder`] in 64 KiB reads, as the server does. Content is handed out as slices of
//! the caller's buffer, never copied, so the cost is per header, not per byte, and decoding
//! is never the bottleneck next to AES-CBC (figures: the repository's BENCHMARKS.md,
//! "Library benchmarks").

mod client_id;
mod codes;
mod decoder;
mod error;
mod header;
pub mod limits;
mod name;
mod request;
mod response;

pub use client_id::{ClientId, ParseClientIdError};
pub use codes::{Described, RequestCode, ResponseCode};
pub use decoder::{RequestDecoder, RequestEvent};
pub use error::{DecodeError, NameError, PacketError};
pub use header::{RequestHeader, ResponseHeader};
pub use name::Name;
pub use request::{encrypted_size, FilePacketHeader, Request, RequestBody};
pub use response::Response;
