//! What goes in and out of a [`super::Conversation`]: events, actions, storage jobs and
//! their results, log lines, and the per-address policy it consults.

use super::{Core, Ctx, Lease, Outcome};
use sfc_proto::{
    ClientId, DecodeError, FilePacketHeader, Name, Request, RequestEvent, RequestHeader, Response,
    ResponseCode,
};
use std::fmt;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Per-address decisions shared by every connection: the rate limits and the opt-in
/// address pins. Time comes in as an argument.
pub trait PeerPolicy: Send + Sync + fmt::Debug {
    /// Takes one registration from `peer`'s budget; false when none is left.
    fn allow_registration(&self, peer: IpAddr, now: Instant) -> bool;
    /// Counts a failed request from `peer`; false when its budget is exhausted.
    fn record_failure(&self, peer: IpAddr, now: Instant) -> bool;
    /// True when requests for `client` may come from `peer` (`--pin-address`).
    fn address_allowed(&self, client: &ClientId, peer: IpAddr) -> bool;
    /// A key exchange of `client` from `peer`: pins it there; returns the earlier
    /// address when it changed (`None` when pinning is off).
    fn pin(&self, client: ClientId, peer: IpAddr) -> Option<IpAddr>;
}

/// What the driver passes in.
#[derive(Debug)]
pub enum Event<'a> {
    /// The first bytes of a request are about to be decoded (starts its deadline and the
    /// time logged for it).
    RequestStarted,
    /// What the request decoder produced.
    Decoded(RequestEvent<'a>),
    /// The rest of a content piece that [`super::Conversation::handle`] did not take whole
    /// (after the flush job it asked for).
    MoreContent(&'a [u8]),
    /// The decoder failed: framing is lost.
    Malformed(DecodeError),
    /// The connection ended (closed by either side, timed out, shut down).
    Closed,
}

/// What the driver must do, in order.
#[derive(Debug)]
pub enum Action {
    /// Write this reply; when it cannot be written, close the connection.
    Send(Response),
    /// Write this reply (a failure does not matter), then close for `reason`.
    SendAndClose(Response, CloseReason),
    /// Run this storage job and give its result to [`super::Conversation::job_done`] before
    /// anything else.
    Run(Job),
    /// Start this write on a blocking thread and go on without waiting: its result goes
    /// back to the upload, not through the driver (write-behind, `session::uploads`).
    Write(super::BackgroundWrite),
    /// Log this.
    Log(LogLine),
    /// Close the connection.
    Close(CloseReason),
}

/// Why the conversation ends the connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CloseReason {
    /// After an error reply (failure budget exhausted, packet larger than any file).
    AfterError,
    /// The request decoder lost the framing.
    FramingLost,
}

impl CloseReason {
    /// The reason as the driver's "connection closed" log line gives it.
    pub fn describe(self) -> &'static str {
        match self {
            CloseReason::AfterError => "closed after an error",
            CloseReason::FramingLost => "framing lost",
        }
    }
}

/// A line for the log; the driver formats it.
#[derive(Debug)]
pub enum LogLine {
    /// One request and its reply.
    Request(RequestLog),
    /// A key exchange from another address moved `--pin-address`'s pin.
    AddressRepinned {
        /// The client.
        client: ClientId,
        /// Where its requests were accepted from before.
        before: IpAddr,
    },
    /// The peer's failure budget is spent; the connection is closed.
    FailureBudgetSpent,
    /// The connection ended in the middle of a packet; its upload is abandoned.
    AbandonedMidPacket {
        /// The client whose upload it was.
        client: ClientId,
        /// The file being uploaded.
        file: Name,
    },
    /// The connection ended in the middle of a packet that was refused (its 1607 due
    /// after its content), at once or after a failure in its content (which abandoned
    /// its upload); nothing is answered.
    RefusedMidPacket {
        /// The client the packet named.
        client: ClientId,
        /// The client still has an upload in progress (another connection's): a packet
        /// refused at once leaves it alone; one accepted, then failed, ended its own.
        upload_left: bool,
    },
    /// The connection of a client that keeps its connection ended between two packets
    /// of an upload; the upload is dropped (rule S10).
    AbandonedWithConnection {
        /// The client whose upload it was.
        client: ClientId,
        /// The file being uploaded.
        file: Name,
    },
}

/// One request as logged.
#[derive(Debug)]
pub struct RequestLog {
    /// Request code.
    pub code: u16,
    /// The client, when known (`None` for an 825 that got no ID).
    pub client: Option<ClientId>,
    /// The request's version byte (any is accepted; logged, rule S5).
    pub version: u8,
    /// Payload size.
    pub payload: u64,
    /// An 828's packet number, total, and whether it is intermediate.
    pub packet: Option<(u16, u16, bool)>,
    /// The reply's code (`None`: no reply).
    pub reply: Option<ResponseCode>,
    /// Time from the request's first byte to its reply.
    pub elapsed: Duration,
    /// Why, for a refusal; or a note.
    pub detail: Option<String>,
    /// What kind of refusal, when the metrics count it apart.
    pub cause: Option<super::Cause>,
    /// The file an 828 is about, when known.
    pub file: Option<Name>,
    /// After an 828 refused with 1607: its client still has an upload in progress (a
    /// packet refused because another connection is receiving one leaves that upload
    /// alone). False for every other request.
    pub upload_left: bool,
}

/// Storage work the conversation needs done; may block.
#[derive(Debug)]
pub struct Job(pub(super) JobKind);

#[derive(Debug)]
pub(super) enum JobKind {
    Request(Arc<Core>, Ctx, Request),
    Invalid(Arc<Core>, RequestHeader, DecodeError),
    BeginUpload(Arc<Core>, Ctx, ClientId, FilePacketHeader, u32),
    Flush(Lease),
    EndPacket(Arc<Core>, Ctx, Lease),
    Drop(Lease),
    DropParked(Arc<Core>, ClientId, u64),
}

/// A job's result.
#[derive(Debug)]
pub struct JobDone(pub(super) Done);

#[derive(Debug)]
pub(super) enum Done {
    Outcome(Outcome),
    Begun(Result<Lease, Outcome>),
    Flushed(Lease, Result<(), std::io::Error>),
    Dropped,
    /// A parked upload dropped with its connection: its file name (`None`: it was
    /// continued or ended elsewhere meanwhile).
    DroppedParked(Option<Name>),
    Panicked(String),
}

impl Job {
    /// What kind of work this is, for the storage metrics.
    pub fn kind(&self) -> &'static str {
        match &self.0 {
            JobKind::Request(..) | JobKind::Invalid(..) => "request",
            JobKind::BeginUpload(..) => "begin_upload",
            JobKind::Flush(_) => "write",
            JobKind::EndPacket(..) => "end_packet",
            JobKind::Drop(_) | JobKind::DropParked(..) => "drop_upload",
        }
    }

    /// Does the work (blocking).
    pub fn run(self) -> JobDone {
        JobDone(match self.0 {
            JobKind::Request(core, ctx, request) => {
                Done::Outcome(core.handle_request(&ctx, request))
            }
            JobKind::Invalid(core, header, error) => {
                Done::Outcome(core.handle_invalid(&header, &error))
            }
            JobKind::BeginUpload(core, ctx, id, packet, len) => {
                Done::Begun(core.begin_upload(&ctx, id, &packet, len))
            }
            JobKind::Flush(mut lease) => {
                let result = lease.flush();
                Done::Flushed(lease, result)
            }
            JobKind::EndPacket(core, ctx, lease) => Done::Outcome(core.end_packet(&ctx, lease)),
            JobKind::Drop(lease) => {
                drop(lease);
                Done::Dropped
            }
            JobKind::DropParked(core, client, serial) => {
                Done::DroppedParked(core.drop_parked(&client, serial))
            }
        })
    }
}

impl JobDone {
    /// The job did not finish (it panicked: a bug); `reason` is logged with the 1607.
    pub fn panicked(reason: String) -> Self {
        JobDone(Done::Panicked(reason))
    }
}
