//! One TCP connection: socket I/O around the sans-IO [`Conversation`].
//!
//! Bytes read from the socket go through sfc-proto's [`RequestDecoder`]; its events go
//! to the conversation with the current time (an 828's content as zero-copy slices of
//! the read buffer), and the conversation's actions are carried out here: replies
//! written in request order, storage jobs run on tokio's blocking pool and awaited
//! (background writes, `Action::Write`, started there and not awaited), log lines
//! emitted, the connection closed. Every protocol rule lives in the conversation.
//!
//! Memory: a connection waiting for its next request holds no read buffer (it reads up to
//! [`FIRST_READ`] bytes into the task's own state), also between the packets of a
//! streaming upload when the next one has not come within [`STREAMING_PAUSE`]; the read
//! buffer is [`SMALL_BUFFER`] while a request arrives and [`LARGE_BUFFER`] only while it
//! streams 828 content (each a page more, to start on a page boundary: see
//! [`crate::net::read_buffer`] for why).
//!
//! Time-outs: no byte for `idle_timeout` closes the connection; a started request must
//! make progress by the conversation's [`Conversation::deadline`], so a slow-loris
//! client cannot hold a connection forever. A reply that cannot be written within
//! `idle_timeout` closes the connection too.
//!
//! The stream is plain TCP or TLS around it ([`crate::net::tls`]); the code is the same.

use crate::net::monitor::Monitor;
use crate::net::read_buffer::ReadBuffer;
use crate::session::{Action, Conversation, Core, Event, JobDone, Now, PeerPolicy};
use crate::storage::Timestamp;
use sfc_proto::{RequestDecoder, RequestEvent, Response};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::watch;
use tokio::time::Instant;

/// Read buffer of an idle connection.
pub const SMALL_BUFFER: usize = 4 * 1024;
/// Bytes read at once while waiting for a request (an idle connection holds no buffer;
/// see `Conn::run`): a request header and the start of its payload.
pub const FIRST_READ: usize = 512;
/// Read buffer while streaming file content.
pub const LARGE_BUFFER: usize = 64 * 1024;
/// How long a connection between two packets of an upload keeps its large buffer for the
/// next one: a client writing packet by packet (each its own `send`) leaves the socket
/// empty at every packet's end, and a fresh buffer per packet would cost an allocation
/// and a read more each time.
const STREAMING_PAUSE: Duration = Duration::from_millis(200);

/// What a connection needs besides the core.
#[derive(Clone, Debug)]
pub struct ConnLimits {
    /// No byte for this long closes the connection.
    pub idle_timeout: Duration,
    /// Per-address rate limits and address pins (shared by all connections).
    pub policy: Arc<dyn PeerPolicy>,
    /// Metrics and live state (the admin listener's view).
    pub monitor: Arc<Monitor>,
}

/// The current time for the session.
fn now() -> Now {
    Now {
        wall: Timestamp::now(),
        mono: Instant::now().into_std(),
    }
}

/// One connection over any byte stream: plain TCP, or TLS around it (net::tls).
struct Conn<S> {
    stream: S,
    peer: SocketAddr,
    limits: Arc<ConnLimits>,
    decoder: RequestDecoder,
    conversation: Conversation,
    /// The time given with events: read once per socket read (and after each storage
    /// job), not once per event; a file packet of 2,048 bytes makes several events.
    clock: Now,
    /// The client whose upload this connection last showed in the monitor: its further
    /// packets are counted by their log lines, without noting each one's start.
    shown: Option<sfc_proto::ClientId>,
    /// Intermediate file packets not yet handed to the monitor (one hand-over per socket
    /// read instead of a lock and a map lookup per packet).
    tally: Option<Tally>,
}

/// Intermediate file packets of one client's upload, counted since the last hand-over.
#[derive(Debug)]
struct Tally {
    client: sfc_proto::ClientId,
    packets: u64,
    bytes: u64,
}

/// Serves one connection until the client closes it, it times out, or the server shuts
/// down (`shutdown` becomes true: the connection closes at the next request boundary
/// where no transfer is under way: an upload's packets and the 900/901/902 after its
/// 1603 are let through, within the listener's grace period).
pub(crate) async fn serve<S: AsyncRead + AsyncWrite + Unpin + Send>(
    stream: S,
    peer: SocketAddr,
    core: Arc<Core>,
    limits: Arc<ConnLimits>,
    shutdown: watch::Receiver<bool>,
) {
    let policy = Arc::clone(&limits.policy);
    let clock = now();
    let mut conn = Conn {
        stream,
        peer,
        limits,
        decoder: RequestDecoder::new(),
        conversation: Conversation::new(core, policy, peer.ip(), clock),
        clock,
        shown: None,
        tally: None,
    };
    tracing::debug!(%peer, "connection opened");
    let reason = conn.run(shutdown).await;
    conn.close(reason).await;
}

impl<S: AsyncRead + AsyncWrite + Unpin + Send> Conn<S> {
    async fn run(&mut self, mut shutdown: watch::Receiver<bool>) -> &'static str {
        let mut buf = ReadBuffer::default();
        let mut first = [0u8; FIRST_READ];
        let mut filled = 0;
        loop {
            let decoded = self.decode_all(buf.filled(filled)).await;
            self.hand_over_tally();
            if let Err(reason) = decoded {
                return reason;
            }
            let idle_between_transfers =
                self.decoder.at_boundary() && !self.conversation.in_transfer();
            if *shutdown.borrow() && idle_between_transfers {
                return "server shutting down";
            }
            // Large buffer only while file content is expected; none between requests
            // (every byte read has been decoded by now), when a connection may sit idle
            // for long: the wait for the next request reads into `first`, on the task.
            // Between two packets of a streaming upload the next one is usually there or
            // on its way (a client that writes each packet on its own): it is read into
            // the large buffer. A client that pauses longer than STREAMING_PAUSE (it keeps
            // its connection between files, or says nothing more) waits like any idle
            // connection, without a buffer.
            let at_boundary = self.decoder.at_boundary();
            let streaming = self.conversation.expects_content();
            let want = if streaming {
                LARGE_BUFFER
            } else {
                SMALL_BUFFER
            };
            let idle_request_boundary = at_boundary && !streaming;
            if !idle_request_boundary && buf.len() != want {
                buf = ReadBuffer::with_len(want);
            }
            let ready = if at_boundary && streaming {
                tokio::time::timeout(STREAMING_PAUSE, self.stream.read(buf.space()))
                    .await
                    .ok()
                    .map(Ok)
            } else {
                None
            };
            let waiting = at_boundary && ready.is_none();
            let read = match ready {
                Some(read) => read,
                None => {
                    if waiting {
                        buf = ReadBuffer::default();
                    }
                    let target: &mut [u8] = if waiting { &mut first } else { buf.space() };
                    let idle = Instant::now() + self.limits.idle_timeout;
                    let deadline = self
                        .conversation
                        .deadline()
                        .map_or(idle, |d| Instant::from_std(d).min(idle));
                    tokio::select! {
                        read = tokio::time::timeout_at(deadline, self.stream.read(target)) => read,
                        _ = shutdown.wait_for(|stop| *stop), if idle_between_transfers => {
                            return "server shutting down";
                        }
                    }
                }
            };
            if let (true, Ok(Ok(n))) = (waiting, &read) {
                buf = ReadBuffer::with_len(want);
                let copied = first.get(..*n).unwrap_or_default();
                if let Some(start) = buf.space().get_mut(..copied.len()) {
                    start.copy_from_slice(copied);
                }
            }
            match read {
                Ok(Ok(0)) if self.decoder.at_boundary() => return "closed by the client",
                Ok(Ok(0)) => return "closed by the client mid-request",
                Ok(Ok(n)) => {
                    self.limits.monitor.bytes_received(n);
                    filled = n;
                }
                Ok(Err(_)) => return "connection error",
                Err(_) if self.decoder.at_boundary() => return "idle timeout",
                Err(_) => return "request timeout",
            }
        }
    }

    /// Decodes everything read so far and carries out what the conversation asks for.
    async fn decode_all(&mut self, read: &[u8]) -> Result<(), &'static str> {
        self.clock = now();
        let mut pos = 0;
        loop {
            let input = read.get(pos..).unwrap_or_default();
            let pending_event = self.decoder.bytes_needed() == 0 && !self.decoder.at_boundary();
            if input.is_empty() && !pending_event {
                return Ok(());
            }
            if self.decoder.at_boundary() {
                self.conversation.handle(Event::RequestStarted, self.clock);
            }
            match self.decoder.decode(input) {
                Ok((used, Some(RequestEvent::Content(piece)))) => {
                    pos += used;
                    let mut taken = self
                        .conversation
                        .handle(Event::Decoded(RequestEvent::Content(piece)), self.clock);
                    self.carry_out().await?;
                    while let Some(rest) = piece.get(taken..).filter(|rest| !rest.is_empty()) {
                        taken += self
                            .conversation
                            .handle(Event::MoreContent(rest), self.clock);
                        self.carry_out().await?;
                    }
                }
                Ok((used, Some(event))) => {
                    pos += used;
                    // A packet that may begin an upload to show: shown once the session
                    // has accepted it, so that a refused one (another connection of the
                    // same client while one receives a packet) does not replace it.
                    let begins = match &event {
                        RequestEvent::FilePacket { header, packet, .. }
                            if packet.packet_number == 1
                                || self.shown != Some(header.client_id) =>
                        {
                            Some((header.client_id, packet.clone()))
                        }
                        _ => None,
                    };
                    self.conversation.handle(Event::Decoded(event), self.clock);
                    self.carry_out().await?;
                    if let Some((client, packet)) = begins {
                        if self.conversation.receiving() == Some(client) {
                            // Counts of the upload shown so far go to it, not to this one.
                            self.hand_over_tally();
                            let shown = self
                                .limits
                                .monitor
                                .packet_begins(self.peer, client, &packet);
                            self.shown = shown.then_some(client);
                        }
                    }
                }
                Ok((0, None)) => return Ok(()),
                Ok((used, None)) => pos += used,
                Err(error) => {
                    self.conversation
                        .handle(Event::Malformed(error), self.clock);
                    self.carry_out().await?;
                    return Err("framing lost");
                }
            }
        }
    }

    /// Carries out the conversation's actions; `Err` closes the connection.
    async fn carry_out(&mut self) -> Result<(), &'static str> {
        while let Some(action) = self.conversation.poll_action() {
            match action {
                Action::Send(response) => {
                    if !self.reply(&response).await {
                        return Err("closed after an error");
                    }
                }
                Action::SendAndClose(response, reason) => {
                    self.reply(&response).await;
                    return Err(reason.describe());
                }
                Action::Run(job) => {
                    let kind = job.kind();
                    let started = Instant::now();
                    let done = tokio::task::spawn_blocking(move || job.run())
                        .await
                        .unwrap_or_else(|e| JobDone::panicked(format!("internal error: {e}")));
                    self.limits.monitor.storage_job(kind, started.elapsed());
                    self.clock = now();
                    self.conversation.job_done(done, self.clock);
                }
                Action::Write(write) => {
                    // Not awaited: the upload collects the result (write-behind).
                    let monitor = Arc::clone(&self.limits.monitor);
                    tokio::task::spawn_blocking(move || {
                        let started = Instant::now();
                        write.run();
                        monitor.storage_job("write", started.elapsed());
                    });
                }
                Action::Log(line) => {
                    match Monitor::intermediate_packet(&line) {
                        Some((client, bytes)) => self.count(client, bytes),
                        None => {
                            // In order: the packets before this line were counted first.
                            self.hand_over_tally();
                            self.limits.monitor.record(self.peer, &line);
                        }
                    }
                    super::log::emit(self.peer, line);
                }
                Action::Close(reason) => return Err(reason.describe()),
            }
        }
        Ok(())
    }

    /// Counts an intermediate file packet for the monitor (handed over by
    /// [`Conn::hand_over_tally`]).
    fn count(&mut self, client: sfc_proto::ClientId, bytes: u64) {
        if self.tally.as_ref().is_some_and(|t| t.client != client) {
            self.hand_over_tally();
        }
        let tally = self.tally.get_or_insert(Tally {
            client,
            packets: 0,
            bytes: 0,
        });
        tally.packets += 1;
        tally.bytes += bytes;
    }

    /// Hands the counted packets to the monitor: after each socket read's events, and
    /// before anything else the monitor is told.
    fn hand_over_tally(&mut self) {
        if let Some(t) = self.tally.take() {
            self.limits
                .monitor
                .packets_received(t.client, t.packets, t.bytes);
        }
    }

    /// Writes a reply; false when the connection is no longer usable.
    async fn reply(&mut self, response: &Response) -> bool {
        let bytes = response.encode();
        // flush: a TLS stream may hold back what write_all accepted (no-op for TCP).
        let write = async {
            self.stream.write_all(&bytes).await?;
            self.stream.flush().await
        };
        matches!(
            tokio::time::timeout(self.limits.idle_timeout, write).await,
            Ok(Ok(()))
        )
    }

    async fn close(mut self, reason: &'static str) {
        // A packet cut short abandons its upload (slot freed, temporary file removed).
        self.conversation.handle(Event::Closed, now());
        let _ = self.carry_out().await;
        self.hand_over_tally();
        let _ = tokio::time::timeout(Duration::from_secs(1), self.stream.shutdown()).await;
        match reason {
            "request timeout" | "closed by the client mid-request" | "framing lost" => {
                tracing::info!(peer = %self.peer, reason, "connection closed")
            }
            _ => tracing::debug!(peer = %self.peer, reason, "connection closed"),
        }
    }
}
