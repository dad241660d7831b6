//! One connection's conversation, sans-IO: decoded request events and the time go in,
//! actions come out (send this reply, run this storage job on the blocking pool, log
//! this, close). It holds every per-connection rule: whether a request is the first on
//! its connection (rule S2), when a packet starts or continues an upload, the
//! rest of a refused transfer swallowed without replies, the per-address rate limits
//! and `--pin-address` decisions, the request deadline and what is logged.
//!
//! It reads no clock, touches no socket and does no storage work itself: the driver
//! (`net::connection`, the fuzz target, the property tests) decodes bytes, passes the
//! events with the current time to [`Conversation::handle`], and then takes
//! [`Conversation::poll_action`] until it returns `None`. A [`Job`] is storage work
//! (SQLite, file creation, writes, fsync): the driver runs it wherever it likes
//! ([`Job::run`], on tokio's blocking pool in the server) and gives the result back with
//! [`Conversation::job_done`] before passing the next event.
//!
//! Refused transfers (rule S12): when a packet of a client's file is refused with 1607 on
//! a connection that has served a request before, the client's further packets on this
//! connection (valid or not) are read and dropped without a reply, a log line or a
//! failure counted (a streaming client does not read replies to intermediate packets, so
//! answering each would only fill its receive buffer; and a client of another dialect
//! would otherwise count one failure per packet), until a packet 1, another client or
//! another request code. A refused upload is logged and counted once.
//!
//! Uploads and connections (rule S10, issue 12): an upload parked by a packet that was
//! not the first request on its connection (a client that keeps its connection) is
//! dropped when that connection ends, every one of them if the connection carried
//! several clients' uploads; only a connection-per-request client continues an upload
//! on another connection.
//!
//! Sizes and time (rule S13, `--request-timeout`): an 828 whose content is beyond the
//! largest file is answered 1607 and the connection closed without reading it, whether
//! the packet is valid, invalid or part of a refused transfer; the content of an invalid
//! 828, dropped as it arrives, is held to the request deadline like any other.
//!
//! Rate limits ([`PeerPolicy`]): an 825 beyond the peer address's registration budget
//! is answered 1607 without touching the database; every reply 1601/1606/1607 counts
//! against the address's failure budget (so does a refused 828 whose connection ends
//! before its 1607 is due), and the reply that exhausts it is followed by closing. Errors never end the process (rule S9): an invalid request is
//! answered with 1607 (1601 for an invalid 825 name) and the conversation goes on; when
//! framing is lost ([`Event::Malformed`]) the 1607 is followed by closing.

mod packets;
#[cfg(test)]
mod tests;

use super::io::{Done, JobKind};
use super::uploads::Slot;
use super::Lease;
use super::{
    Action, CloseReason, Core, Ctx, Event, JobDone, LogLine, Now, Outcome, PeerPolicy, RequestLog,
};
use sfc_proto::{
    ClientId, DecodeError, FilePacketHeader, Name, Request, RequestCode, RequestEvent,
    RequestHeader, Response,
};
use std::collections::VecDeque;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::Instant;

/// File content must arrive at this many bytes per request timeout at least.
pub const CONTENT_PROGRESS_CHUNK: u64 = 64 * 1024;

/// Why `--pin-address` refused a request.
const ADDRESS_REFUSED: &str =
    "refused: not from the address of the client's latest key exchange (--pin-address)";

/// The 828 whose content is being received.
#[derive(Debug)]
struct Current {
    header: RequestHeader,
    file_name: Name,
    number: u16,
    total: u16,
    lease: Option<Lease>,
    reject: Option<Outcome>,
    /// Part of a refused transfer: content dropped, no reply.
    swallow: bool,
}

/// What the job in flight is for.
#[derive(Debug)]
enum Waiting {
    Request {
        code: u16,
        id: ClientId,
        size: u64,
        register: bool,
    },
    Invalid {
        code: u16,
        id: Option<ClientId>,
        payload: u64,
    },
    Begin,
    Flush,
    EndPacket,
    Drop,
    DropParked {
        client: ClientId,
    },
}

/// An upload this connection parked after a packet that was not its first request: it
/// is dropped when the connection ends (one per client: a connection may carry several
/// clients' uploads).
#[derive(Debug)]
struct Parked {
    client: ClientId,
    serial: u64,
}

#[derive(Debug)]
enum Step {
    Act(Action),
    /// Count a failure against the peer when reached (not when the reply before it
    /// could not be written); `close`: close when the budget is spent.
    CountFailure {
        close: bool,
    },
}

/// One connection's conversation; see the module documentation.
#[derive(Debug)]
pub struct Conversation {
    core: Arc<Core>,
    policy: Arc<dyn PeerPolicy>,
    peer: IpAddr,
    steps: VecDeque<Step>,
    waiting: Option<Waiting>,
    current: Option<Current>,
    /// No request has been answered on this connection yet (rule S2).
    first: bool,
    /// Client whose transfer was refused on this connection (rule S12).
    refused: Option<ClientId>,
    /// See [`Parked`].
    parked: Vec<Parked>,
    /// The connection has ended: the jobs that drop its uploads run one after another.
    closed: bool,
    /// Content bytes of an invalid 828 still to come (dropped as they arrive); its
    /// request deadline applies until the last one.
    skipping: u64,
    /// Serial of the upload whose packet is ending (becomes `parked`).
    ending: Option<u64>,
    /// The file the current request is about, for the log.
    file: Option<Name>,
    /// Version byte of the request being served.
    version: u8,
    /// The last request was an intermediate packet: more content is coming.
    streaming: bool,
    /// The last request stored a file (1603) on a connection that had served requests
    /// before: the client's 900/901/902 is due on this connection.
    verdict_due: bool,
    started: Instant,
    deadline: Option<Instant>,
    progress: u64,
    now: Now,
}

impl Conversation {
    /// A new conversation with `peer`, started at `now`.
    pub fn new(core: Arc<Core>, policy: Arc<dyn PeerPolicy>, peer: IpAddr, now: Now) -> Self {
        Conversation {
            core,
            policy,
            peer,
            steps: VecDeque::new(),
            waiting: None,
            current: None,
            first: true,
            refused: None,
            parked: Vec::new(),
            closed: false,
            skipping: 0,
            ending: None,
            file: None,
            version: 0,
            streaming: false,
            verdict_due: false,
            started: now.mono,
            deadline: None,
            progress: 0,
            now,
        }
    }

    /// When the request in progress must have made progress by (`None`: between
    /// requests, only the idle timeout applies).
    pub fn deadline(&self) -> Option<Instant> {
        self.deadline
    }

    /// A transfer is under way on this connection: a packet, more packets of an upload,
    /// or the 900/901/902 after its 1603. A graceful shutdown waits for it (within its
    /// grace period) before closing the connection.
    pub fn in_transfer(&self) -> bool {
        self.current.is_some() || self.streaming || self.verdict_due || self.waiting.is_some()
    }

    /// The client whose packet is being received, once the packet is accepted (its
    /// upload continued or started); `None` before that, for a refused packet, and
    /// between packets.
    pub fn receiving(&self) -> Option<ClientId> {
        self.current
            .as_ref()
            .filter(|current| current.lease.is_some())
            .map(|current| current.header.client_id)
    }

    /// File content is expected (the driver may read in larger pieces).
    pub fn expects_content(&self) -> bool {
        self.current.is_some() || self.streaming || self.skipping > 0
    }

    /// The next action, if any.
    pub fn poll_action(&mut self) -> Option<Action> {
        while let Some(step) = self.steps.pop_front() {
            match step {
                Step::Act(action) => return Some(action),
                Step::CountFailure { close } => {
                    if !self.policy.record_failure(self.peer, self.now.mono) {
                        if close {
                            self.steps
                                .push_front(Step::Act(Action::Close(CloseReason::AfterError)));
                        }
                        return Some(Action::Log(LogLine::FailureBudgetSpent));
                    }
                }
            }
        }
        None
    }

    /// Takes one event. Returns how many bytes of a content piece
    /// ([`RequestEvent::Content`], [`Event::MoreContent`]) were taken: when fewer than
    /// all, a flush job is queued; pass the rest with [`Event::MoreContent`] once it is
    /// done. 0 for other events.
    pub fn handle(&mut self, event: Event<'_>, now: Now) -> usize {
        self.now = now;
        match event {
            Event::RequestStarted => {
                self.skipping = 0;
                self.started = now.mono;
                self.deadline = Some(now.mono + self.core.limits().request_timeout);
                0
            }
            Event::Decoded(RequestEvent::Request(request)) => {
                self.on_request(request);
                0
            }
            Event::Decoded(RequestEvent::Invalid {
                header,
                error,
                packet,
            }) => {
                self.on_invalid(header, error, packet);
                0
            }
            Event::Decoded(RequestEvent::FilePacket {
                header,
                packet,
                content_len,
            }) => {
                self.on_file_packet(header, packet, content_len);
                0
            }
            Event::Decoded(RequestEvent::Content(piece)) => {
                self.progress += piece.len() as u64;
                if self.progress >= CONTENT_PROGRESS_CHUNK {
                    self.progress = 0;
                    self.renew_deadline();
                }
                self.receive(piece)
            }
            Event::MoreContent(rest) => self.receive(rest),
            Event::Decoded(RequestEvent::FilePacketEnd) => {
                self.on_packet_end();
                0
            }
            Event::Malformed(error) => {
                self.on_malformed(&error);
                0
            }
            Event::Closed => {
                self.on_closed();
                0
            }
        }
    }

    /// The result of the job last handed out by [`Conversation::poll_action`].
    pub fn job_done(&mut self, done: JobDone, now: Now) {
        self.now = now;
        let Some(waiting) = self.waiting.take() else {
            return;
        };
        match (waiting, done.0) {
            (
                Waiting::Request {
                    code,
                    id,
                    size,
                    register,
                },
                done,
            ) => {
                let outcome = Self::outcome_of(done);
                self.after_request(code, id, size, register, outcome);
            }
            (Waiting::Invalid { code, id, payload }, done) => {
                let outcome = Self::outcome_of(done);
                self.refuse_transfer(code, id, &outcome);
                self.end_request(code, id, payload, outcome, None);
            }
            (Waiting::Begin, done) => {
                let result = match done {
                    Done::Begun(result) => result,
                    Done::Panicked(reason) => Err(Outcome::error(reason)),
                    _ => Err(Outcome::error("internal error: unexpected job result")),
                };
                if let Some(current) = self.current.as_mut() {
                    match result {
                        Ok(lease) => current.lease = Some(lease),
                        Err(outcome) => current.reject = Some(outcome),
                    }
                }
                // The content is read again only now: the server's own wait (the store,
                // the blocking pool) is not the client's, as after a flush.
                self.renew_deadline();
            }
            (Waiting::Flush, done) => self.flushed(done),
            (Waiting::EndPacket, done) => {
                let outcome = Self::outcome_of(done);
                self.finish_packet(outcome);
            }
            (Waiting::Drop, _) => {
                if self.closed {
                    self.drop_next_parked();
                }
            }
            (Waiting::DropParked { client }, done) => {
                if let Done::DroppedParked(Some(file)) = done {
                    self.act(Action::Log(LogLine::AbandonedWithConnection {
                        client,
                        file,
                    }));
                }
                self.drop_next_parked();
            }
        }
    }

    fn outcome_of(done: Done) -> Outcome {
        match done {
            Done::Outcome(outcome) => outcome,
            Done::Panicked(reason) => Outcome::error(reason),
            _ => Outcome::error("internal error: unexpected job result"),
        }
    }

    fn act(&mut self, action: Action) {
        self.steps.push_back(Step::Act(action));
    }

    fn run(&mut self, job: JobKind, waiting: Waiting) {
        self.waiting = Some(waiting);
        self.act(Action::Run(super::Job(job)));
    }

    fn ctx(&self) -> Ctx {
        Ctx::new(self.first, self.now)
    }

    /// Content of an invalid 828 arrived (and is dropped).
    fn skipped(&mut self, len: usize) {
        self.skipping = self.skipping.saturating_sub(len as u64);
        if self.skipping == 0 {
            self.deadline = None;
        }
    }

    fn renew_deadline(&mut self) {
        self.deadline = Some(self.now.mono + self.core.limits().request_timeout);
    }

    fn address_allowed(&self, id: &ClientId) -> bool {
        self.policy.address_allowed(id, self.peer)
    }

    fn on_request(&mut self, request: Request) {
        self.verdict_due = false;
        self.refused = None;
        self.file = None;
        self.streaming = false;
        self.version = request.version;
        let code = request.body.code();
        let id = request.client_id;
        let size = request.body.payload_len() as u64;
        let register = code == RequestCode::Register;
        let pinned = matches!(
            code,
            RequestCode::SendFile
                | RequestCode::ChecksumOk
                | RequestCode::ChecksumRetry
                | RequestCode::ChecksumFailed
        );
        let refusal = if register && !self.policy.allow_registration(self.peer, self.now.mono) {
            Some(Outcome::rate_limited(
                "registration refused: too many registrations from this address (rate limit)",
            ))
        } else if pinned && !self.address_allowed(&id) {
            Some(Outcome::error(ADDRESS_REFUSED))
        } else {
            None
        };
        let code = code.as_u16();
        match refusal {
            Some(outcome) => self.after_request(code, id, size, register, outcome),
            None => {
                let job = JobKind::Request(Arc::clone(&self.core), self.ctx(), request);
                self.run(
                    job,
                    Waiting::Request {
                        code,
                        id,
                        size,
                        register,
                    },
                );
            }
        }
    }

    fn after_request(
        &mut self,
        code: u16,
        id: ClientId,
        size: u64,
        register: bool,
        outcome: Outcome,
    ) {
        if let Some(Response::PublicKeyAccepted { .. } | Response::ReconnectAccepted { .. }) =
            &outcome.reply
        {
            if let Some(before) = self.policy.pin(id, self.peer) {
                self.act(Action::Log(LogLine::AddressRepinned { client: id, before }));
            }
        }
        let shown = match (&outcome.reply, register) {
            (Some(Response::Registered { client_id }), true) => Some(*client_id),
            (_, true) => None,
            _ => Some(id),
        };
        self.end_request(code, shown, size, outcome, None);
    }

    fn on_invalid(
        &mut self,
        header: RequestHeader,
        error: DecodeError,
        fields: Option<FilePacketHeader>,
    ) {
        self.version = header.version;
        self.verdict_due = false;
        // Like any request: no more packets of an upload are due on this connection.
        self.streaming = false;
        let number = fields.as_ref().map(|f| f.packet_number);
        let total = fields.as_ref().map(|f| f.total_packets);
        self.file = fields.map(|f| f.file_name);
        let code = header.code.as_u16();
        let id = (header.code != RequestCode::Register).then_some(header.client_id);
        let payload = u64::from(header.payload_size);
        let packet = header.code == RequestCode::SendFile;
        if packet {
            // Its content follows, to be dropped: too large, it is not read at all.
            let content_len = header
                .payload_size
                .saturating_sub(sfc_proto::limits::FILE_PACKET_FIXED_LEN as u32);
            let numbers = number.zip(total);
            if self.refuse_oversized(&header, numbers, content_len) {
                return;
            }
            self.skipping = u64::from(content_len);
            self.progress = 0;
            self.renew_deadline();
        }
        // Only a packet whose fields decoded (not a packet 1) continues a refused transfer.
        let continues = number.is_some_and(|n| n != 1);
        if packet && continues && self.refused == Some(header.client_id) {
            // The rest of a refused transfer (rule S12): no reply, no failure counted.
            let outcome =
                Outcome::dropped(format!("dropped: the rest of a refused transfer ({error})"));
            self.end_request(code, id, payload, outcome, None);
            return;
        }
        self.refused = None;
        // An invalid 828 abandons the parked upload: not from another address.
        if packet && !self.address_allowed(&header.client_id) {
            let outcome = Outcome::error(ADDRESS_REFUSED);
            self.refuse_transfer(code, id, &outcome);
            self.end_request(code, id, payload, outcome, None);
        } else {
            let job = JobKind::Invalid(Arc::clone(&self.core), header, error);
            self.run(job, Waiting::Invalid { code, id, payload });
        }
    }

    fn on_malformed(&mut self, error: &DecodeError) {
        self.file = None;
        let outcome = Outcome::error(format!("malformed request: {error}"));
        let code = match error {
            DecodeError::UnknownRequestCode(code) => *code,
            DecodeError::PayloadSize { code, .. } => *code,
            _ => 0,
        };
        self.log(code, None, 0, &outcome, None);
        self.steps.push_back(Step::CountFailure { close: false });
        self.act(Action::SendAndClose(
            Response::ServerError,
            CloseReason::FramingLost,
        ));
    }

    /// An 828 refused with 1607 on a connection that served a request before: the
    /// client's next packets on this connection are swallowed (rule S12).
    fn refuse_transfer(&mut self, code: u16, id: Option<ClientId>, outcome: &Outcome) {
        let refused = outcome.code() == Some(sfc_proto::ResponseCode::ServerError);
        if code == RequestCode::SendFile.as_u16() && refused && !self.first {
            self.refused = id;
        }
    }

    fn on_closed(&mut self) {
        self.closed = true;
        // What the driver left when it stopped (at a reply it could not write) is no
        // longer due: the failure of a reply never sent is not counted (nor can it close
        // the connection before its uploads are dropped), and nothing more can be sent.
        self.steps.retain(|step| {
            !matches!(
                step,
                Step::CountFailure { .. }
                    | Step::Act(Action::Send(_) | Action::SendAndClose(..) | Action::Close(_))
            )
        });
        // A packet cut short abandons its upload (slot freed, temporary file removed);
        // the parked uploads go after it (one job at a time).
        if let Some(current) = self.current.take() {
            if let Some(lease) = current.lease {
                let client = current.header.client_id;
                self.act(Action::Log(LogLine::AbandonedMidPacket {
                    client,
                    file: current.file_name,
                }));
                self.run(JobKind::Drop(lease), Waiting::Drop);
                return;
            }
            if current.reject.is_some() || current.swallow {
                let client = current.header.client_id;
                // Its 1607 was never sent, but the refusal was decided (and its work
                // done: a database read, say): it costs the address a failure, as sent
                // it would have. (The rest of a refused transfer, `swallow`, costs
                // nothing, as its packets would not.)
                if current.reject.is_some() {
                    let _ = self.policy.record_failure(self.peer, self.now.mono);
                }
                let upload_left = self.core.registry.has_upload(&client);
                self.act(Action::Log(LogLine::RefusedMidPacket {
                    client,
                    upload_left,
                }));
            }
        }
        self.drop_next_parked();
    }

    /// An upload of a client that keeps its connection is not continued on another one
    /// (rule S10): it ends with its connection. Runs the job for the next one; the job's
    /// result runs the one after.
    fn drop_next_parked(&mut self) {
        if let Some(Parked { client, serial }) = self.parked.pop() {
            let job = JobKind::DropParked(Arc::clone(&self.core), client, serial);
            self.run(job, Waiting::DropParked { client });
        }
    }

    /// Remembers an upload parked by this connection. Uploads no longer parked
    /// (finished, expired, started again elsewhere) are forgotten first, so that the list
    /// stays as long as what the connection really holds, however many clients it
    /// carries over time.
    fn remember_parked(&mut self, client: ClientId, serial: u64) {
        {
            let slots = self.core.registry.lock();
            self.parked.retain(|p| match slots.get(&p.client) {
                Some(Slot::Parked { upload, .. }) => upload.serial == p.serial,
                // Maybe receiving a packet elsewhere, to be parked again; or held while its
                // client is removed (whose end frees the slot; the next call forgets it).
                Some(Slot::CheckedOut { .. } | Slot::Held) => true,
                None => false,
            });
        }
        self.parked.push(Parked { client, serial });
    }

    fn end_request(
        &mut self,
        code: u16,
        client: Option<ClientId>,
        payload: u64,
        outcome: Outcome,
        packet: Option<(u16, u16, bool)>,
    ) {
        self.log(code, client, payload, &outcome, packet);
        self.first = false;
        // An invalid 828 is answered before its content has arrived: the deadline
        // applies to that content too (see `skipped`).
        if self.skipping == 0 {
            self.deadline = None;
        }
        let failure = outcome.is_failure();
        if let Some(reply) = outcome.reply {
            self.act(Action::Send(reply));
        }
        if failure {
            self.steps.push_back(Step::CountFailure { close: true });
        }
    }

    fn log(
        &mut self,
        code: u16,
        client: Option<ClientId>,
        payload: u64,
        outcome: &Outcome,
        packet: Option<(u16, u16, bool)>,
    ) {
        // Asked only of refused 828s (not on the per-packet path).
        let upload_left = code == RequestCode::SendFile.as_u16()
            && outcome.code() == Some(sfc_proto::ResponseCode::ServerError)
            && client.is_some_and(|id| self.core.registry.has_upload(&id));
        let line = RequestLog {
            code,
            client,
            version: self.version,
            payload,
            packet,
            reply: outcome.code(),
            elapsed: self.now.mono.saturating_duration_since(self.started),
            detail: outcome.detail.clone(),
            cause: outcome.cause,
            file: self.file.clone(),
            upload_left,
        };
        self.act(Action::Log(LogLine::Request(line)));
    }
}
