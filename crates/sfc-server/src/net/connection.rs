//! One TCP connection: socket I/O around the sans-IO pieces.
//!
//! Bytes read from the socket go through sfc-proto's [`RequestDecoder`]; whole requests go
//! to [`Core::handle_request`], an 828's content is decrypted straight from the read
//! buffer (zero-copy [`RequestEvent::Content`] slices) into the upload's batch buffer, and
//! replies are written in request order. Any number of requests are served until the
//! client closes (server rule 1). Whether a request is the first on its connection
//! (server rule 2) is tracked here and passed to the session in [`Ctx`].
//!
//! Blocking work (SQLite, file creation, writes of a full batch, fsync/rename) runs on
//! tokio's blocking pool; continuing a parked upload, decrypting and checksumming run
//! inline (CPU only, at most one read buffer at a time).
//!
//! Memory: a connection waiting for its next request holds no read buffer (it reads up to
//! [`FIRST_READ`] bytes into the task's own state); the read buffer is [`SMALL_BUFFER`]
//! while a request arrives and [`LARGE_BUFFER`] only while it streams 828 content (from
//! an 828's fixed part until a request that is not an intermediate packet).
//!
//! Timeouts: no byte for `idle_timeout` closes the connection; a started request must
//! deliver its header and payload (or an 828's header and fixed part) within
//! `request_timeout`, and an 828's content must keep arriving at
//! [`CONTENT_PROGRESS_CHUNK`] bytes per `request_timeout`, so a slow-loris client cannot
//! hold a connection forever. A reply that cannot be written within `idle_timeout`
//! closes the connection too.
//!
//! Errors never end the process (server rule 9): an invalid request is answered with
//! 1607 (1601 for an invalid 825 name) and the connection goes on; when framing is lost
//! ([`sfc_proto::DecodeError::breaks_framing`]) the 1607 is followed by closing.
//!
//! Rate limits ([`crate::net::rate_limit`]): an 825 beyond the peer address's registration
//! budget is answered 1607 without touching the database; every reply 1601/1606/1607
//! counts against the address's failure budget, and the reply that exhausts it is
//! followed by closing.
//!
//! The stream is plain TCP or TLS around it ([`crate::net::tls`]); the code is the same.

use crate::net::rate_limit::RateLimiter;
use crate::session::{Core, Ctx, Lease, Outcome};
use crate::storage::Timestamp;
use sfc_proto::{
    encrypted_size, ClientId, DecodeError, RequestCode, RequestDecoder, RequestEvent,
    RequestHeader, Response,
};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::watch;
use tokio::time::Instant;

/// Why `--pin-address` refused a request.
const ADDRESS_REFUSED: &str =
    "refused: not from the address of the client's latest key exchange (--pin-address)";

/// Read buffer of an idle connection.
pub const SMALL_BUFFER: usize = 4 * 1024;
/// Bytes read at once while waiting for a request (an idle connection holds no buffer;
/// see `Conn::run`): a request header and the start of its payload.
pub const FIRST_READ: usize = 512;
/// Read buffer while streaming file content.
pub const LARGE_BUFFER: usize = 64 * 1024;
/// File content must arrive at this many bytes per `request_timeout` at least.
pub const CONTENT_PROGRESS_CHUNK: u64 = 64 * 1024;

/// What a connection needs from the configuration.
#[derive(Clone, Debug)]
pub struct ConnLimits {
    /// No byte for this long closes the connection.
    pub idle_timeout: Duration,
    /// Deadline for a request's header and payload (see the module documentation).
    pub request_timeout: Duration,
    /// Largest plaintext file accepted (bounds an 828's payload).
    pub max_file_size: u64,
    /// Per-address limits on registrations and failed requests (shared by all
    /// connections).
    pub rate: Arc<RateLimiter>,
    /// Opt-in `--pin-address` ([`crate::net::address_pin`]): `None` when off.
    pub address_pins: Option<Arc<crate::net::address_pin::AddressPins>>,
}

#[derive(Debug, PartialEq, Eq)]
enum Flow {
    Continue,
    Close,
}

/// The 828 whose content is being received.
struct Current {
    header: RequestHeader,
    packet_number: u16,
    total_packets: u16,
    lease: Option<Lease>,
    reject: Option<Outcome>,
    /// Part of a refused transfer: content dropped, no reply.
    swallow: bool,
}

/// One connection over any byte stream: plain TCP, or TLS around it (crate::net::tls).
struct Conn<S> {
    stream: S,
    peer: SocketAddr,
    core: Arc<Core>,
    limits: Arc<ConnLimits>,
    decoder: RequestDecoder,
    current: Option<Current>,
    first: bool,
    started: Instant,
    deadline: Option<Instant>,
    progress: u64,
    /// Client whose transfer was refused mid-file on this connection (see the module
    /// documentation).
    refused: Option<ClientId>,
    /// Version byte of the request being served (any is accepted; logged, rule 5).
    version: u8,
    /// The last request was an intermediate packet: more content is coming, keep the
    /// large buffer.
    streaming: bool,
}

/// Runs `f` on the blocking pool. A panic there (a bug) becomes an `Err`, never a crash.
async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> Result<T, String> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| format!("internal error: {e}"))
}

/// Serves one connection until the client closes it, it times out, or the server shuts
/// down (`shutdown` becomes true: the connection closes at the next request boundary).
pub(crate) async fn serve<S: AsyncRead + AsyncWrite + Unpin + Send>(
    stream: S,
    peer: SocketAddr,
    core: Arc<Core>,
    limits: Arc<ConnLimits>,
    shutdown: watch::Receiver<bool>,
) {
    let mut conn = Conn {
        stream,
        peer,
        core,
        limits,
        decoder: RequestDecoder::new(),
        current: None,
        first: true,
        started: Instant::now(),
        deadline: None,
        progress: 0,
        refused: None,
        streaming: false,
        version: 0,
    };
    tracing::debug!(%peer, "connection opened");
    let reason = conn.run(shutdown).await;
    conn.close(reason).await;
}

impl<S: AsyncRead + AsyncWrite + Unpin + Send> Conn<S> {
    fn ctx(&self) -> Ctx {
        Ctx {
            first_on_connection: self.first,
            now: Timestamp::now(),
        }
    }

    async fn run(&mut self, mut shutdown: watch::Receiver<bool>) -> &'static str {
        let mut buf = Vec::new();
        let mut first = [0u8; FIRST_READ];
        let mut filled = 0;
        loop {
            // Decode everything read so far.
            let mut pos = 0;
            loop {
                let input = buf.get(pos..filled).unwrap_or_default();
                let pending_event = self.decoder.bytes_needed() == 0 && !self.decoder.at_boundary();
                if input.is_empty() && !pending_event {
                    break;
                }
                if self.decoder.at_boundary() {
                    self.started = Instant::now();
                    self.deadline = Some(self.started + self.limits.request_timeout);
                }
                match self.decoder.decode(input) {
                    Ok((used, event)) => {
                        pos += used;
                        let flow = match event {
                            Some(event) => self.on_event(event).await,
                            None if used == 0 => break,
                            None => Flow::Continue,
                        };
                        if flow == Flow::Close {
                            return "closed after an error";
                        }
                    }
                    Err(error) => {
                        let outcome = Outcome::error(format!("malformed request: {error}"));
                        let code = match &error {
                            DecodeError::UnknownRequestCode(code) => *code,
                            DecodeError::PayloadSize { code, .. } => *code,
                            _ => 0,
                        };
                        self.log(code, None, 0, &outcome, None);
                        self.reply(&outcome).await;
                        self.within_failure_budget();
                        return "framing lost";
                    }
                }
            }
            if *shutdown.borrow() && self.decoder.at_boundary() {
                return "server shutting down";
            }
            // Large buffer only while file content is expected; none between requests
            // (every byte read has been decoded by now), when a connection may sit idle
            // for long: the wait for the next request reads into `first`, on the task.
            let at_boundary = self.decoder.at_boundary();
            let streaming = self.current.is_some() || self.streaming;
            let waiting = at_boundary && !streaming;
            let want = if streaming {
                LARGE_BUFFER
            } else {
                SMALL_BUFFER
            };
            if waiting {
                buf = Vec::new();
            } else if buf.len() != want {
                buf = vec![0u8; want];
            }
            let target: &mut [u8] = if waiting { &mut first } else { &mut buf };
            let idle = Instant::now() + self.limits.idle_timeout;
            let deadline = self.deadline.map_or(idle, |d| d.min(idle));
            let read = tokio::select! {
                read = tokio::time::timeout_at(deadline, self.stream.read(target)) => read,
                _ = shutdown.wait_for(|stop| *stop), if at_boundary => {
                    return "server shutting down";
                }
            };
            if let (true, Ok(Ok(n))) = (waiting, &read) {
                buf = vec![0u8; SMALL_BUFFER];
                let copied = first.get(..*n).unwrap_or_default();
                if let Some(start) = buf.get_mut(..copied.len()) {
                    start.copy_from_slice(copied);
                }
            }
            match read {
                Ok(Ok(0)) => {
                    return if self.decoder.at_boundary() {
                        "closed by the client"
                    } else {
                        "closed by the client mid-request"
                    };
                }
                Ok(Ok(n)) => filled = n,
                Ok(Err(_)) => return "connection error",
                Err(_) if self.decoder.at_boundary() => return "idle timeout",
                Err(_) => return "request timeout",
            }
        }
    }

    async fn on_event(&mut self, event: RequestEvent<'_>) -> Flow {
        match event {
            RequestEvent::Request(request) => {
                self.refused = None;
                self.streaming = false;
                self.version = request.version;
                let code = request.body.code().as_u16();
                let id = request.client_id;
                let size = request.body.payload_len() as u64;
                let register = request.body.code() == RequestCode::Register;
                let core = Arc::clone(&self.core);
                let ctx = self.ctx();
                let pinned = matches!(
                    request.body.code(),
                    RequestCode::SendFile
                        | RequestCode::ChecksumOk
                        | RequestCode::ChecksumRetry
                        | RequestCode::ChecksumFailed
                );
                let outcome = if register && !self.limits.rate.allow_registration(self.peer.ip()) {
                    Outcome::error(
                        "registration refused: too many registrations from this address (rate limit)",
                    )
                } else if pinned && !self.address_allowed(&id) {
                    Outcome::error(ADDRESS_REFUSED)
                } else {
                    blocking(move || core.handle_request(&ctx, request))
                        .await
                        .unwrap_or_else(Outcome::error)
                };
                if let (
                    Some(Response::PublicKeyAccepted { .. } | Response::ReconnectAccepted { .. }),
                    Some(pins),
                ) = (&outcome.reply, &self.limits.address_pins)
                {
                    if let Some(before) = pins.pin(id, self.peer.ip()) {
                        tracing::warn!(
                            peer = %self.peer,
                            client = %id.short(),
                            %before,
                            "key exchange from another address: requests for this client now accepted only from here (--pin-address)"
                        );
                    }
                }
                let shown = match (&outcome.reply, register) {
                    (Some(Response::Registered { client_id }), true) => Some(*client_id),
                    (_, true) => None,
                    _ => Some(id),
                };
                self.end_request(code, shown, size, outcome, None).await
            }
            RequestEvent::Invalid { header, error } => {
                self.refused = None;
                self.version = header.version;
                let core = Arc::clone(&self.core);
                // An invalid 828 abandons the parked upload: not from another address.
                let outcome = if header.code == RequestCode::SendFile
                    && !self.address_allowed(&header.client_id)
                {
                    Outcome::error(ADDRESS_REFUSED)
                } else {
                    blocking(move || core.handle_invalid(&header, &error))
                        .await
                        .unwrap_or_else(Outcome::error)
                };
                let id = (header.code != RequestCode::Register).then_some(header.client_id);
                self.end_request(
                    header.code.as_u16(),
                    id,
                    u64::from(header.payload_size),
                    outcome,
                    None,
                )
                .await
            }
            RequestEvent::FilePacket {
                header,
                packet,
                content_len,
            } => {
                self.deadline = Some(Instant::now() + self.limits.request_timeout);
                self.progress = 0;
                self.version = header.version;
                if self.refused == Some(header.client_id) && packet.packet_number != 1 {
                    if packet.packet_number >= packet.total_packets {
                        self.refused = None;
                    }
                    self.current = Some(Current {
                        header,
                        packet_number: packet.packet_number,
                        total_packets: packet.total_packets,
                        lease: None,
                        reject: None,
                        swallow: true,
                    });
                    return Flow::Continue;
                }
                self.refused = None;
                let max_content = encrypted_size(self.limits.max_file_size);
                if u64::from(content_len) > max_content {
                    // Beyond every limit: do not read gigabytes to skip them.
                    let outcome = Outcome::error(format!(
                        "packet of {content_len} content bytes exceeds the largest file ({} encrypted bytes)",
                        max_content
                    ));
                    let packet_info = Some((packet.packet_number, packet.total_packets, false));
                    self.log(
                        828,
                        Some(header.client_id),
                        u64::from(header.payload_size),
                        &outcome,
                        packet_info,
                    );
                    self.reply(&outcome).await;
                    self.within_failure_budget();
                    return Flow::Close;
                }
                let ctx = self.ctx();
                let id = header.client_id;
                // Continuing a parked upload is a mutex operation; only a new upload
                // (database read, file creation) goes to the blocking pool.
                let result = match self.checkout_from_peer(id) {
                    Ok(Some(mut lease)) => {
                        match Core::continue_packet(&mut lease, &packet, content_len) {
                            Ok(()) => {
                                self.core.touch(id, ctx.now);
                                Ok(lease)
                            }
                            Err(reason) => {
                                let _ = blocking(move || drop(lease)).await;
                                Err(Outcome::error(format!("upload abandoned: {reason}")))
                            }
                        }
                    }
                    Ok(None) => {
                        let core = Arc::clone(&self.core);
                        let p = packet.clone();
                        blocking(move || core.begin_upload(&ctx, id, &p, content_len))
                            .await
                            .unwrap_or_else(|e| Err(Outcome::error(e)))
                    }
                    Err(outcome) => Err(outcome),
                };
                let (lease, reject) = match result {
                    Ok(lease) => (Some(lease), None),
                    Err(outcome) => (None, Some(outcome)),
                };
                self.current = Some(Current {
                    header,
                    packet_number: packet.packet_number,
                    total_packets: packet.total_packets,
                    lease,
                    reject,
                    swallow: false,
                });
                Flow::Continue
            }
            RequestEvent::Content(piece) => {
                self.progress += piece.len() as u64;
                if self.progress >= CONTENT_PROGRESS_CHUNK {
                    self.progress = 0;
                    self.deadline = Some(Instant::now() + self.limits.request_timeout);
                }
                self.receive(piece).await;
                Flow::Continue
            }
            RequestEvent::FilePacketEnd => {
                let Some(current) = self.current.take() else {
                    return Flow::Continue;
                };
                let Current {
                    header,
                    packet_number,
                    total_packets,
                    lease,
                    reject,
                    swallow,
                } = current;
                let ctx = self.ctx();
                if swallow {
                    let outcome = Outcome {
                        reply: None,
                        detail: Some("dropped: the rest of a refused transfer".into()),
                    };
                    let packet = Some((packet_number, total_packets, true));
                    let payload = u64::from(header.payload_size);
                    return self
                        .end_request(828, Some(header.client_id), payload, outcome, packet)
                        .await;
                }
                let outcome = match (lease, reject) {
                    (_, Some(reject)) => reject,
                    (Some(lease), None) if Core::end_packet_blocks(&ctx, &lease) => {
                        let core = Arc::clone(&self.core);
                        blocking(move || core.end_packet(&ctx, lease))
                            .await
                            .unwrap_or_else(Outcome::error)
                    }
                    (Some(lease), None) => self.core.end_packet(&ctx, lease),
                    (None, None) => Outcome::error("upload lost"),
                };
                let refused = outcome.code() == Some(1607);
                if refused && !self.first && packet_number < total_packets {
                    self.refused = Some(header.client_id);
                }
                let intermediate = packet_number < total_packets && !refused;
                self.streaming = intermediate;
                self.end_request(
                    828,
                    Some(header.client_id),
                    u64::from(header.payload_size),
                    outcome,
                    Some((packet_number, total_packets, intermediate)),
                )
                .await
            }
        }
    }

    /// Decrypts a piece of content into the current upload, writing full batches.
    async fn receive(&mut self, piece: &[u8]) {
        let Some(current) = self.current.as_mut() else {
            return;
        };
        let mut rest = piece;
        while !rest.is_empty() {
            let Some(lease) = current.lease.as_mut() else {
                return; // refused packet: its content is skipped
            };
            let failure = match lease.push(rest) {
                Ok(used) => {
                    rest = rest.get(used..).unwrap_or_default();
                    if lease.needs_flush() {
                        let Some(mut lease) = current.lease.take() else {
                            return;
                        };
                        match blocking(move || {
                            let result = lease.flush();
                            (lease, result)
                        })
                        .await
                        {
                            Ok((lease, Ok(()))) => {
                                current.lease = Some(lease);
                                self.deadline = Some(Instant::now() + self.limits.request_timeout);
                                None
                            }
                            Ok((lease, Err(error))) => {
                                let _ = blocking(move || drop(lease)).await;
                                Some(format!("upload abandoned: cannot write the file: {error}"))
                            }
                            Err(error) => Some(error),
                        }
                    } else {
                        None
                    }
                }
                Err(error) => Some(format!("upload abandoned: {error}")),
            };
            if let Some(reason) = failure {
                if let Some(lease) = current.lease.take() {
                    let _ = blocking(move || drop(lease)).await;
                }
                current.reject = Some(Outcome::error(reason));
                return;
            }
        }
    }

    async fn end_request(
        &mut self,
        code: u16,
        client: Option<ClientId>,
        payload: u64,
        outcome: Outcome,
        packet: Option<(u16, u16, bool)>,
    ) -> Flow {
        self.log(code, client, payload, &outcome, packet);
        self.first = false;
        self.deadline = None;
        if !self.reply(&outcome).await {
            return Flow::Close;
        }
        if matches!(outcome.code(), Some(1601 | 1606 | 1607)) && !self.within_failure_budget() {
            return Flow::Close;
        }
        Flow::Continue
    }

    /// `--pin-address` ([`crate::net::address_pin`]): true when requests for `id` may come
    /// from this peer (always, when the option is off).
    fn address_allowed(&self, id: &ClientId) -> bool {
        self.limits
            .address_pins
            .as_ref()
            .is_none_or(|pins| pins.allows(id, self.peer.ip()))
    }

    /// [`Core::checkout`], refused (and the parked upload left alone) when the peer is
    /// not the address `--pin-address` allows for this client.
    fn checkout_from_peer(&self, id: ClientId) -> Result<Option<Lease>, Outcome> {
        if !self.address_allowed(&id) {
            return Err(Outcome::error(ADDRESS_REFUSED));
        }
        self.core.checkout(id)
    }

    /// Counts a failed request against the peer's address (crate::net::rate_limit); false
    /// when the address has no budget left: the connection is to be closed.
    fn within_failure_budget(&self) -> bool {
        if self.limits.rate.record_failure(self.peer.ip()) {
            return true;
        }
        tracing::warn!(
            peer = %self.peer,
            "too many failed requests from this address: connection closed (rate limit)"
        );
        false
    }

    /// Writes the reply, if any; false when the connection is no longer usable.
    async fn reply(&mut self, outcome: &Outcome) -> bool {
        let Some(response) = &outcome.reply else {
            return true;
        };
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

    fn log(
        &self,
        code: u16,
        client: Option<ClientId>,
        payload: u64,
        outcome: &Outcome,
        packet: Option<(u16, u16, bool)>,
    ) {
        let intermediate = packet.is_some_and(|(_, _, intermediate)| intermediate);
        // Intermediate packets log at debug: skip formatting them (per packet) when off.
        if intermediate && outcome.code() != Some(1607) && !tracing::enabled!(tracing::Level::DEBUG)
        {
            return;
        }
        let packet = packet.map(|(number, total, _)| format!("{number}/{total}"));
        let client = client.map_or_else(|| "-".to_string(), |c| c.short());
        let reply = outcome
            .code()
            .map_or_else(|| "none".to_string(), |c| c.to_string());
        let ms = (self.started.elapsed().as_secs_f64() * 10_000.0).round() / 10.0;
        let detail = outcome.detail.as_deref();
        let peer = self.peer;
        let version = self.version;
        match outcome.code() {
            Some(1607) => {
                tracing::warn!(%peer, %client, code, version, payload, packet, %reply, ms, detail, "request refused")
            }
            _ if intermediate => {
                tracing::debug!(%peer, %client, code, version, payload, packet, %reply, ms, "packet")
            }
            _ => {
                tracing::info!(%peer, %client, code, version, payload, packet, %reply, ms, detail, "request")
            }
        }
    }

    async fn close(mut self, reason: &'static str) {
        // A packet cut short abandons its upload (slot freed, temporary file removed).
        if let Some(current) = self.current.take() {
            if let Some(lease) = current.lease {
                tracing::info!(
                    client = %current.header.client_id.short(),
                    "upload abandoned: connection ended mid-packet"
                );
                let _ = blocking(move || drop(lease)).await;
            }
        }
        let _ = tokio::time::timeout(Duration::from_secs(1), self.stream.shutdown()).await;
        match reason {
            "request timeout" | "closed by the client mid-request" | "framing lost" => {
                tracing::info!(peer = %self.peer, reason, "connection closed")
            }
            _ => tracing::debug!(peer = %self.peer, reason, "connection closed"),
        }
    }
}
