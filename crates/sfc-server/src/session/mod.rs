//! The protocol logic: what the server answers to what, and its effects on storage.
//!
//! Plain synchronous functions over [`MetaStore`] and [`BlobStore`]; no sockets, no
//! async. [`crate::net::connection`] drives it from a TCP stream, and anything else (a fuzzer,
//! a unit test) can drive it with arbitrary request sequences through
//! [`Core::handle_request`], or piece by piece like a connection does.
//!
//! # State
//!
//! Everything that must outlive a connection is keyed by client ID, never by connection
//! (docs/PROTOCOL.md, rule S1): client records and AES keys live in the metadata store;
//! the upload in progress lives in an in-memory registry, at most one per client.
//!
//! An upload ([`Upload`]: CBC decryptor, running cksum, temporary file, expected next
//! packet, totals, batch of decrypted bytes not yet written) is *parked* in the registry
//! between packets, and *checked out* as a [`Lease`] only by the connection that is
//! receiving one of its packets. Parking and checking out are a mutex operation, no I/O,
//! so a client may send each packet on whichever connection it likes. A packet for a
//! client whose upload is checked out by another connection (two packets at once) is
//! refused with 1607. A lease that is dropped without being parked or finished
//! (connection lost mid-packet, task aborted) abandons the upload: its registry slot is
//! freed and its temporary file removed. Parked uploads that see no packet for
//! [`Limits::upload_timeout`] expire ([`Core::expire_uploads`]). Packet 1 always starts
//! a new upload, and an accepted 826/827 drops the client's parked one (docs/PROTOCOL.md
//! S10); an upload parked by a packet that was not the first request on its connection
//! ends with that connection (the conversation drops it on [`Event::Closed`]). At most
//! [`Limits::max_uploads`] uploads are in progress, [`Limits::max_uploads_per_address`]
//! from one address.
//!
//! # Packets
//!
//! Packets must come in order 1..=N with constant `total_packets`, `orig_file_size` and
//! file name; each packet's `content_size` is either the whole encrypted size or its own
//! content length (checked by [`FilePacketHeader::check`]). Anything else abandons the
//! upload and answers 1607. Content is decrypted as it arrives (one CBC stream across
//! packets), checksummed, and collected in a batch of `FLUSH_AT` (1 MiB) before each
//! write (two batches while one is written behind), so memory per upload is bounded
//! whatever the file or packet size. After the last packet: total ciphertext =
//! `16 * (orig_file_size / 16 + 1)`, valid padding, plaintext length = `orig_file_size`;
//! then fsync, rename, directory fsync, `files` row committed with Verified = 0, and only
//! then 1603.
//!
//! # Replies the specification leaves open (rule S2)
//!
//! An intermediate packet is answered with a short 1603 and a 901 with 1604 only when
//! the request is the first on its connection ([`Ctx::first_on_connection`]).
//!
//! # LastSeen
//!
//! Requests that commit anyway (825, 826, 827, 900, 902, the last packet) advance
//! `LastSeen` in the same transaction. Others (901, intermediate packets) only note the
//! time in memory; [`Core::flush_last_seen`] persists those notes in one transaction
//! (the listener calls it periodically and at shutdown), so there is never a commit per
//! packet.

mod changes;
mod conversation;
mod core;
mod durability;
mod error;
mod io;
mod name_locks;
mod packets;
mod removals;
mod uploads;

pub use self::core::{Core, Removal};
pub use conversation::Conversation;
pub use io::{Action, CloseReason, Event, Job, JobDone, LogLine, PeerPolicy, RequestLog};
pub use uploads::{BackgroundWrite, Lease};

use crate::storage::Timestamp;
use sfc_crypto::AesKey;
use sfc_proto::{ClientId, Response, ResponseCode};
use std::fmt;
use std::time::{Duration, Instant};

/// Limits the session enforces, derived once from the configuration
/// ([`crate::ServerConfig::session_limits`]) and never adjusted again.
#[derive(Clone, Debug)]
pub struct Limits {
    /// Largest plaintext file accepted (`orig_file_size`); also bounds an 828's content.
    pub max_file_size: u64,
    /// A parked upload that receives no packet for this long is abandoned.
    pub upload_timeout: Duration,
    /// Bytes of batch buffers (decrypted content not yet written) all uploads may hold
    /// together. An upload parked between two packets keeps its batch, so without a
    /// bound many clients that each send a packet and stop could pin `FLUSH_AT` (1 MiB)
    /// apiece (twice that with a write in flight: the second buffer is granted from this
    /// budget too, and without room for it the batch is written without write-behind).
    /// Beyond it an upload gets `MIN_BATCH` (16 KiB) (more, smaller writes).
    pub batch_budget: usize,
    /// A started request must deliver its header and payload (an 828's header and fixed
    /// part) within this time, and an 828's content `CONTENT_PROGRESS_CHUNK` (64 KiB) per
    /// this time ([`Conversation::deadline`]).
    pub request_timeout: Duration,
    /// Uploads in progress at once, all clients together (0: no cap): a packet 1
    /// beyond it is refused with 1607.
    pub max_uploads: usize,
    /// Uploads in progress at once from one peer address (0: no cap).
    pub max_uploads_per_address: usize,
}

/// Where the values the session must not make itself come from: client IDs and AES
/// keys (randomness). The server uses the operating system's generator.
pub trait Entropy: Send + Sync + fmt::Debug {
    /// A new client ID (the server's are random UUIDs, version 4).
    fn client_id(&self) -> ClientId;
    /// A new AES-256 key.
    fn aes_key(&self) -> AesKey;
}

impl<E: Entropy + ?Sized> Entropy for std::sync::Arc<E> {
    fn client_id(&self) -> ClientId {
        (**self).client_id()
    }

    fn aes_key(&self) -> AesKey {
        (**self).aes_key()
    }
}

/// The current time, given to the session from outside.
#[derive(Clone, Copy, Debug)]
pub struct Now {
    /// Wall-clock time, for `LastSeen`.
    pub wall: Timestamp,
    /// Monotonic time, for deadlines and upload expiry.
    pub mono: Instant,
}

/// What the session needs to know about the request besides its bytes.
#[derive(Clone, Copy, Debug)]
pub struct Ctx {
    /// The peer's address (counted against `--max-uploads-per-address`); `None` for
    /// requests that come from no connection (tests, tools).
    pub peer: Option<std::net::IpAddr>,
    /// This is the first request on its connection (rule S2).
    pub first_on_connection: bool,
    /// When the request arrived (wall clock: `LastSeen`).
    pub now: Timestamp,
    /// When the request arrived (monotonic: upload expiry).
    pub at: Instant,
}

impl Ctx {
    /// The context of a request arriving at `now`.
    pub fn new(first_on_connection: bool, now: Now) -> Self {
        Ctx {
            peer: None,
            first_on_connection,
            now: now.wall,
            at: now.mono,
        }
    }
}

/// Why a request was refused, where the metrics count it apart.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cause {
    /// The database or the file store failed an operation.
    Storage,
    /// A per-address rate limit refused it.
    RateLimit,
    /// The server's own cap on uploads in progress (`--max-uploads`) refused it.
    Capacity,
}

/// The session's decision: the reply to send, if any, and why (for the log).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    /// The reply; `None` for requests answered with silence (rule S2).
    pub reply: Option<Response>,
    /// The reason for a refusal or an error, or a note worth logging.
    pub detail: Option<String>,
    /// What kind of refusal, when the metrics count it apart.
    pub cause: Option<Cause>,
}

impl Outcome {
    pub(crate) fn reply(response: Response) -> Self {
        Outcome {
            reply: Some(response),
            detail: None,
            cause: None,
        }
    }

    pub(crate) fn silent() -> Self {
        Outcome {
            reply: None,
            detail: None,
            cause: None,
        }
    }

    /// A 1607 with its reason.
    pub fn error(detail: impl Into<String>) -> Self {
        Outcome {
            reply: Some(Response::ServerError),
            detail: Some(detail.into()),
            cause: None,
        }
    }

    /// A 1607 because the database or the file store failed.
    pub(crate) fn storage_error(detail: impl Into<String>) -> Self {
        Outcome {
            cause: Some(Cause::Storage),
            ..Outcome::error(detail)
        }
    }

    /// A 1607 because the server has as many uploads in progress as it takes.
    pub(crate) fn capacity_error(detail: impl Into<String>) -> Self {
        Outcome {
            cause: Some(Cause::Capacity),
            ..Outcome::error(detail)
        }
    }

    /// A 1607 for an upload abandoned because its temporary file could not be written.
    pub(crate) fn write_failed(error: &std::io::Error) -> Self {
        Outcome::storage_error(format!("upload abandoned: cannot write the file: {error}"))
    }

    /// A refusal by a per-address rate limit.
    pub(crate) fn rate_limited(detail: impl Into<String>) -> Self {
        Outcome {
            cause: Some(Cause::RateLimit),
            ..Outcome::error(detail)
        }
    }

    /// Silence (rule S12: the rest of a refused transfer), with a note for the log.
    pub(crate) fn dropped(detail: impl Into<String>) -> Self {
        Outcome {
            detail: Some(detail.into()),
            ..Outcome::silent()
        }
    }

    pub(crate) fn with_detail(mut self, detail: impl Into<String>) -> Self {
        self.detail = Some(detail.into());
        self
    }

    /// The reply's code, for the log.
    pub fn code(&self) -> Option<ResponseCode> {
        self.reply.as_ref().map(Response::code)
    }

    /// True for the replies that count against the peer's failure budget (1601, 1606,
    /// 1607), but for the server's own failures (its database or file store) and its cap
    /// on uploads in progress from all clients (`--max-uploads`; the per-address one
    /// counts, as the address's own doing):
    /// those say nothing of the peer, and counting them would turn an outage into bans
    /// of the clients that retried through it (rule C8 tries each request four times).
    pub fn is_failure(&self) -> bool {
        let refused = matches!(
            self.code(),
            Some(
                ResponseCode::RegistrationFailed
                    | ResponseCode::ReconnectRejected
                    | ResponseCode::ServerError
            )
        );
        refused && !matches!(self.cause, Some(Cause::Storage | Cause::Capacity))
    }
}

#[cfg(test)]
mod tests;
