//! The TCP connection to the server, in either of the two styles servers expect.
//!
//! docs/PROTOCOL.md, rule C1: keep one connection for the whole session; if the server
//! closes it after a reply (the original server does, after every request), reconnect and
//! from then on use one connection per request, expecting a reply after EVERY request —
//! each intermediate file packet and 901 included. Only a connection closed after its
//! first reply says that: one the server kept for two replies or more and then closed was
//! cut by an idle time-out, a restart or a balancer, and is just opened again in the same
//! style. [`Mode`] records which style is in force; [`Connection::prepare`] detects a
//! server that closed after its last reply, and
//! [`Connection::round_trip`] retries a request once on a fresh connection when the old
//! one turns out to be dead (only when it had already carried a request, so a server that
//! fails a request on a fresh connection is reported, not retried).
//!
//! With `--tls` every connection starts with a TLS handshake ([`crate::tls`]); the
//! protocol inside is unchanged. A plain connection that gets a TLS alert or a close
//! instead of a reply says so and suggests `--tls`.
//!
//! Every reply is read by its header's `payload_size` (rule C5), which
//! [`ResponseHeader::decode`] bounds per code, so a lying server cannot make us allocate.
//!
//! Time limits (`--timeout`) hold for a whole exchange, not for each read or write (a
//! socket time-out restarts with every byte, so a server sending one byte a second could
//! hold a reply for hours): a request sent with [`Connection::round_trip`] must be taken
//! within the time-out — plus the time-out for each 64 KiB of it, the least rate this
//! project's server also requires of file content, so that a large file packet (one
//! connection per request) may take minutes over a slow link; each of its writes must
//! still make progress within the time-out. Every reply must be complete within the
//! time-out counted from the first wait for one — stray replies skipped on the way
//! included, so waiting for a file's checksum is bounded once, not once per stray. A
//! file's packets, written by the caller through [`Connection::stream_mut`], keep the
//! time-out for each write: a long upload makes progress, and a server that stops
//! reading is caught by it.

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use sfc_proto::limits::{REQUEST_HEADER_LEN, RESPONSE_HEADER_LEN};
use sfc_proto::{DecodeError, RequestCode, RequestHeader, Response, ResponseHeader};

use crate::config::ServerAddress;
use crate::error::{format_duration, ClientError, NetworkError};
use crate::progress::{human_bytes, Reporter, Verbosity};
use crate::tls::{looks_like_tls_alert, Stream, TlsSetup};

/// Connection style in force.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// One connection for the session; no reply to intermediate packets or 901.
    Persistent,
    /// A new connection for every request and a reply to every request.
    PerRequest,
}

/// What went wrong during one exchange.
#[derive(Debug)]
pub enum Failure {
    /// The server had closed or reset the connection before sending anything back —
    /// the signature of a server that closes after every reply.
    Gone {
        /// "sending" or "waiting for the reply to".
        phase: &'static str,
        /// The I/O error.
        error: io::Error,
    },
    /// Any other I/O failure (time-out, reset in the middle of a reply, ...).
    Io {
        /// "sending" or "waiting for the reply to".
        phase: &'static str,
        /// The I/O error.
        error: io::Error,
    },
    /// A reply that is not valid protocol.
    Malformed(DecodeError),
}

const SENDING: &str = "sending";
const WAITING: &str = "waiting for the reply to";

fn write_failure(error: io::Error) -> Failure {
    match error.kind() {
        io::ErrorKind::BrokenPipe
        | io::ErrorKind::ConnectionReset
        | io::ErrorKind::ConnectionAborted
        | io::ErrorKind::NotConnected => Failure::Gone {
            phase: SENDING,
            error,
        },
        _ => Failure::Io {
            phase: SENDING,
            error,
        },
    }
}

/// The connection to one server.
#[derive(Debug)]
pub struct Connection {
    server: String,
    addrs: Vec<SocketAddr>,
    connect_timeout: Duration,
    io_timeout: Duration,
    mode: Mode,
    stream: Option<Stream>,
    /// Opt-in TLS (`--tls`): every new connection starts with this handshake.
    tls: Option<TlsSetup>,
    last_reply_was_error: bool,
    /// `--pace`: one write per file packet, with this pause after each.
    pace: Option<Duration>,
    /// True while the open stream has carried no request (a new connection kept for the
    /// next one).
    unused: bool,
    /// Replies read on the open stream (or the one just lost), stray ones included.
    replies_on_stream: u32,
    /// The wait for the replies to the last request sent: started by the first read after
    /// it, ended by the next request.
    reply_wait: Option<ReplyWait>,
    /// How long that wait lasts: the time-out, or more for a file's last packet
    /// ([`file_reply_allowance`]); set back to the time-out by each request.
    reply_allowance: Duration,
    payload: Vec<u8>,
    reporter: Reporter,
}

impl Connection {
    /// Resolves the server's address; connects lazily on the first request.
    pub fn new(
        server: &ServerAddress,
        connect_timeout: Duration,
        io_timeout: Duration,
        reporter: Reporter,
    ) -> Result<Self, NetworkError> {
        let name = server.to_string();
        let addrs = server.resolve().map_err(|source| NetworkError {
            server: name.clone(),
            during: "looking up the host name".to_owned(),
            timeout: None,
            source,
        })?;
        Ok(Connection {
            server: name,
            addrs,
            connect_timeout,
            io_timeout,
            mode: Mode::Persistent,
            stream: None,
            tls: None,
            last_reply_was_error: false,
            unused: false,
            replies_on_stream: 0,
            reply_wait: None,
            reply_allowance: io_timeout,
            pace: None,
            payload: Vec::with_capacity(sfc_proto::limits::MAX_RESPONSE_PAYLOAD),
            reporter,
        })
    }

    /// The server address, as configured.
    pub fn server(&self) -> &str {
        &self.server
    }

    /// The connection style in force.
    pub fn mode(&self) -> Mode {
        self.mode
    }

    /// The time-out for sending a request and for the replies to it (`--timeout`).
    pub fn io_timeout(&self) -> Duration {
        self.io_timeout
    }

    /// The time-out from now (at most a day, as `--timeout` allows).
    fn deadline_from_now(&self) -> Instant {
        Instant::now() + self.io_timeout
    }

    /// Sends file packets one per write with `pause` after each (`--pace`).
    pub fn use_pace(&mut self, pause: Duration) {
        self.pace = Some(pause);
    }

    /// The pause after each file packet, when pacing.
    pub fn pace(&self) -> Option<Duration> {
        self.pace
    }

    /// Speaks TLS on every connection from now on (`--tls`; see [`crate::tls`]).
    pub fn use_tls(&mut self, setup: TlsSetup) {
        self.tls = Some(setup);
        self.stream = None;
    }

    /// From now on, one connection per request with a reply to each.
    pub fn switch_to_per_request(&mut self) {
        if self.mode != Mode::PerRequest {
            self.reporter.detail(
                Verbosity::Verbose,
                "   the server closes the connection after each reply: using one connection per \
                 request from now on",
            );
        }
        self.mode = Mode::PerRequest;
        if !self.unused {
            self.stream = None;
        }
    }

    /// True when the server kept the current (or just lost) connection for more than one
    /// reply: it does not close after each reply (the original server's style, rule C1),
    /// so a close now is an idle time-out, a restart or a balancer, and the next
    /// connection keeps the persistent style.
    pub fn kept_for_several_replies(&self) -> bool {
        self.replies_on_stream >= 2
    }

    /// Uses one connection per request from the start (as the original client does).
    pub fn use_per_request(&mut self) {
        self.mode = Mode::PerRequest;
        self.stream = None;
    }

    /// Gets a stream ready for the next request. Returns true when the stream is fresh
    /// (this request will be the first on it).
    ///
    /// Persistent mode: reuses the stream unless the server has closed it; a close after
    /// the connection's first and only reply switches to per-request mode (rule C1); a
    /// close after a 1607 (a server may drop a connection it no longer trusts) or of a
    /// connection kept for several replies just reconnects. Per-request mode: always a
    /// new connection.
    pub fn prepare(&mut self) -> Result<bool, NetworkError> {
        match self.mode {
            Mode::PerRequest => {
                if self.stream.is_none() || !self.unused {
                    self.stream = None;
                    self.connect()?;
                }
                Ok(true)
            }
            Mode::Persistent => {
                if let Some(stream) = self.stream.as_mut() {
                    if stream.peer_closed() {
                        self.stream = None;
                        if self.last_reply_was_error {
                            self.reporter.detail(
                                Verbosity::Verbose,
                                "   the server closed the connection after its error reply; \
                                 reconnecting",
                            );
                        } else if self.kept_for_several_replies() {
                            self.report_kept_connection_closed();
                        } else {
                            self.switch_to_per_request();
                        }
                    }
                }
                if self.stream.is_some() {
                    Ok(self.unused)
                } else {
                    self.connect()?;
                    Ok(true)
                }
            }
        }
    }

    fn connect(&mut self) -> Result<(), NetworkError> {
        let mut last_error = None;
        for index in 0..self.addrs.len() {
            let Some(&addr) = self.addrs.get(index) else {
                break;
            };
            match TcpStream::connect_timeout(&addr, self.connect_timeout) {
                Ok(stream) => {
                    let setup = stream
                        .set_nodelay(true)
                        .and_then(|()| stream.set_read_timeout(Some(self.io_timeout)))
                        .and_then(|()| stream.set_write_timeout(Some(self.io_timeout)));
                    if let Err(source) = setup {
                        last_error = Some(source);
                        continue;
                    }
                    self.reporter
                        .detail(Verbosity::Trace, format!("   connected to {addr}"));
                    let stream = match &self.tls {
                        None => Stream::Plain(stream),
                        // A certificate that does not verify ends the run here, before a
                        // single protocol byte is sent.
                        Some(tls) => {
                            let deadline = self.deadline_from_now();
                            Stream::handshake(stream, tls, deadline).map_err(|source| {
                                NetworkError {
                                    server: self.server.clone(),
                                    during: "setting up TLS".to_owned(),
                                    timeout: Some(self.io_timeout),
                                    source,
                                }
                            })?
                        }
                    };
                    self.stream = Some(stream);
                    self.last_reply_was_error = false;
                    self.unused = true;
                    self.replies_on_stream = 0;
                    self.reply_wait = None;
                    // The next connection starts with the address that answered: one that
                    // does not (an AAAA record whose route drops packets) would otherwise
                    // cost every later connection its time-out, every packet of a
                    // connection-per-request upload.
                    self.addrs.rotate_left(index);
                    return Ok(());
                }
                Err(e) => last_error = Some(e),
            }
        }
        Err(NetworkError {
            server: self.server.clone(),
            during: "connecting".to_owned(),
            timeout: Some(self.connect_timeout),
            source: last_error.unwrap_or_else(|| io::Error::from(io::ErrorKind::NotFound)),
        })
    }

    fn stream(&mut self) -> Result<&mut Stream, io::Error> {
        self.stream
            .as_mut()
            .ok_or_else(|| io::Error::from(io::ErrorKind::NotConnected))
    }

    /// The open stream, for a writer thread (plain TCP or TLS; `Send`) to send a request:
    /// its replies are then awaited with [`Self::read_reply`]. Each write may take up to
    /// the time-out (a long upload keeps making progress; see the module's notes).
    pub fn stream_mut(&mut self) -> Option<&mut Stream> {
        self.unused = false;
        self.reply_wait = None;
        self.reply_allowance = self.io_timeout;
        let stream = self.stream.as_mut()?;
        // Earlier exchanges left the time left of their deadlines on the socket.
        stream.reset_timeouts(self.io_timeout).ok()?;
        Some(stream)
    }

    /// Classifies a write error that happened on [`Self::stream_mut`] and drops the stream.
    /// A write that timed out is a server that stopped taking the request (said so, with
    /// the flag that sets the limit), not a reply that did not come.
    pub fn write_failed(&mut self, error: io::Error) -> Failure {
        self.stream = None;
        let error = if is_time_out(&error) && error.get_ref().is_none() {
            request_stalled(self.io_timeout)
        } else {
            error
        };
        write_failure(error)
    }

    /// Logs a request's header at verbose level (file packets only at trace level).
    pub fn log_request(&self, bytes: &[u8]) {
        let Some(head) = bytes.first_chunk::<REQUEST_HEADER_LEN>() else {
            return;
        };
        if let Ok(header) = RequestHeader::decode(head) {
            let level = if header.code == RequestCode::SendFile {
                Verbosity::Trace
            } else {
                Verbosity::Verbose
            };
            self.reporter.detail(
                level,
                format!(
                    "-> {}, payload {} B",
                    header.code.described(),
                    header.payload_size
                ),
            );
        }
    }

    /// Reads one reply: the 7-byte header, then exactly `payload_size` bytes. All the
    /// replies to one request (a file's checksum and the strays before it) must be
    /// complete within the time-out from the first wait for one of them.
    pub fn read_reply(&mut self) -> Result<Response, Failure> {
        let wait = match self.reply_wait {
            Some(wait) => wait,
            None => *self.reply_wait.insert(ReplyWait {
                deadline: Instant::now() + self.reply_allowance,
                timeout: self.reply_allowance,
                replies: 0,
            }),
        };
        let result = self.read_reply_inner(wait);
        match &result {
            Ok(_) => {
                if let Some(wait) = self.reply_wait.as_mut() {
                    wait.replies += 1;
                }
            }
            // Framing can no longer be trusted.
            Err(_) => self.stream = None,
        }
        result
    }

    /// Reads the 7-byte reply header by the wait's deadline. A close or reset before its
    /// first byte is [`Failure::Gone`]; a plain connection that gets a TLS alert says to
    /// use `--tls`.
    fn read_header(&mut self, wait: ReplyWait) -> Result<[u8; RESPONSE_HEADER_LEN], Failure> {
        let mut head = [0u8; RESPONSE_HEADER_LEN];
        let mut filled = 0;
        let plain = self.tls.is_none();
        {
            let stream = self.stream().map_err(|error| Failure::Gone {
                phase: WAITING,
                error,
            })?;
            let mut stream = stream.until(wait.deadline);
            while filled < head.len() {
                let free = head.get_mut(filled..).unwrap_or_default();
                match stream.read(free) {
                    Ok(0) if filled == 0 => {
                        return Err(Failure::Gone {
                            phase: WAITING,
                            error: io::Error::new(
                                io::ErrorKind::UnexpectedEof,
                                "the server closed the connection without replying",
                            ),
                        })
                    }
                    Ok(0) => {
                        return Err(Failure::Io {
                            phase: WAITING,
                            error: io::Error::from(io::ErrorKind::UnexpectedEof),
                        })
                    }
                    Ok(n) => filled += n,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(error)
                        if filled == 0
                            && matches!(
                                error.kind(),
                                io::ErrorKind::ConnectionReset | io::ErrorKind::ConnectionAborted
                            ) =>
                    {
                        let error = io::Error::new(
                            error.kind(),
                            "the server reset the connection without replying",
                        );
                        return Err(Failure::Gone {
                            phase: WAITING,
                            error,
                        });
                    }
                    Err(error) if is_time_out(&error) => {
                        return Err(Failure::Io {
                            phase: WAITING,
                            error: wait.timed_out(filled > 0),
                        })
                    }
                    Err(error) => {
                        return Err(Failure::Io {
                            phase: WAITING,
                            error,
                        })
                    }
                }
            }
        }
        if plain && looks_like_tls_alert(&head) {
            return Err(Failure::Io {
                phase: WAITING,
                error: io::Error::new(
                    io::ErrorKind::InvalidData,
                    "the server answered with a TLS alert and closed the connection: it serves \
                     TLS; run with --tls (and --tls-ca FILE unless its certificate is issued by a \
                     CA this system trusts)",
                ),
            });
        }
        Ok(head)
    }

    fn read_reply_inner(&mut self, wait: ReplyWait) -> Result<Response, Failure> {
        let head = self.read_header(wait)?;
        let header = ResponseHeader::decode(&head).map_err(Failure::Malformed)?;
        // decode() bounded payload_size by the code's allowed range (at most a few hundred
        // bytes), so this cannot be made to allocate much.
        let len = header.payload_size as usize;
        let mut payload = std::mem::take(&mut self.payload);
        payload.clear();
        payload.resize(len, 0);
        let read = self
            .stream()
            .and_then(|s| s.until(wait.deadline).read_exact(&mut payload))
            .map_err(|error| Failure::Io {
                phase: WAITING,
                error: match is_time_out(&error) {
                    true => wait.timed_out(true),
                    false => error,
                },
            });
        let decoded = read
            .and_then(|()| Response::decode_payload(&header, &payload).map_err(Failure::Malformed));
        self.payload = payload;
        let response = decoded?;
        self.log_reply(&header, &response);
        Ok(response)
    }

    fn log_reply(&self, header: &ResponseHeader, response: &Response) {
        let level = if matches!(response, Response::PacketReceived { .. }) {
            Verbosity::Trace
        } else {
            Verbosity::Verbose
        };
        self.reporter.detail(
            level,
            format!(
                "<- {}, payload {} B (version {})",
                header.code.described(),
                header.payload_size,
                header.version
            ),
        );
    }

    /// After a failed write: the whole replies that had already arrived, read without
    /// waiting; the stream is dropped. A server that refuses a request it will not read
    /// (1607, rule S13) closes without reading the rest, so the write fails while the
    /// refusal waits in the receive buffer (the kernel keeps it there after the reset).
    fn arrived_replies(&mut self) -> Vec<Response> {
        let Some(mut stream) = self.stream.take() else {
            return Vec::new();
        };
        // Far more than the few replies a server sends before it closes.
        let arrived = stream.take_arrived(64 * 1024);
        let mut replies = Vec::new();
        for (header, payload) in complete_replies(&arrived) {
            let Ok(response) = Response::decode_payload(&header, payload) else {
                break;
            };
            self.log_reply(&header, &response);
            replies.push(response);
        }
        replies
    }

    /// After a failed write: the 1607 that had arrived before the close, if one had. A
    /// server that refuses a request unread (rule S13: a file over its limit) answers and
    /// closes, so the write of a request larger than the socket buffers fails with the
    /// refusal waiting to be read; it is a server error like any other (rule C8), not a
    /// sign of a server that closes after each reply. The stream is dropped.
    pub fn refusal_before_close(&mut self) -> Option<Response> {
        // Every arrived reply, not only the first: a server that answers each packet
        // sends its short 1603s before the 1607. All of them answer this request (the
        // replies to earlier ones were read), so a 1607 among them is its refusal.
        self.arrived_replies()
            .into_iter()
            .find(|reply| *reply == Response::ServerError)
    }

    /// Bookkeeping after a reply: remembers a 1607; in per-request mode, closes the
    /// connection (the next request gets a new one).
    pub fn replied(&mut self, response: &Response) {
        self.last_reply_was_error = matches!(response, Response::ServerError);
        self.replies_on_stream = self.replies_on_stream.saturating_add(1);
        if self.mode == Mode::PerRequest {
            self.stream = None;
        }
    }

    /// Gives the replies to the request being sent `allowance` instead of the time-out,
    /// counted from the first wait for them (a file's last packet: see
    /// [`file_reply_allowance`]).
    pub fn allow_for_replies(&mut self, allowance: Duration) {
        if self.reply_wait.is_none() {
            self.reply_allowance = allowance.max(self.io_timeout);
        }
    }

    /// Sends one whole request and reads its reply, switching to per-request mode (and
    /// sending again, once) if the server had closed the connection after its last reply.
    pub fn round_trip(&mut self, request: &[u8]) -> Result<Response, ClientError> {
        self.round_trip_allowing(request, self.io_timeout)
    }

    /// [`Self::round_trip`] with `allowance` for the reply instead of the time-out (a
    /// file's last packet, one connection per request).
    pub fn round_trip_allowing(
        &mut self,
        request: &[u8],
        allowance: Duration,
    ) -> Result<Response, ClientError> {
        let what = request
            .first_chunk::<REQUEST_HEADER_LEN>()
            .and_then(|h| RequestHeader::decode(h).ok())
            .map(|h| h.code.described().to_string())
            .unwrap_or_else(|| "(unknown)".to_owned());
        loop {
            let fresh = self.prepare()?;
            self.log_request(request);
            self.unused = false;
            self.reply_wait = None;
            self.reply_allowance = allowance.max(self.io_timeout);
            let io_timeout = self.io_timeout;
            let written = self
                .stream()
                .and_then(|s| write_request(s, request, io_timeout, "request"));
            let result = match written {
                Ok(()) => self.read_reply(),
                Err(error) => match self.refusal_before_close() {
                    Some(refusal) => Ok(refusal),
                    None => Err(self.write_failed(error)),
                },
            };
            match result {
                Ok(response) => {
                    self.replied(&response);
                    return Ok(response);
                }
                Err(Failure::Gone { .. }) if !fresh && self.mode == Mode::Persistent => {
                    self.stream = None;
                    if self.kept_for_several_replies() {
                        // An idle time-out or a restart: the next turn reconnects.
                        self.report_kept_connection_closed();
                    } else if !self.last_reply_was_error {
                        // Closed after its first reply, or the server is gone: only one
                        // that takes a new connection closes after each reply. (After a
                        // 1607 it may just have dropped a connection it no longer trusted,
                        // rule S9: reconnect in the same style.)
                        self.connect()?;
                        self.switch_to_per_request();
                    }
                }
                Err(failure) => return Err(self.error(failure, &what)),
            }
        }
    }

    /// Says (with `-v`) that a connection kept for several replies was closed, and why
    /// that does not change the style.
    pub fn report_kept_connection_closed(&self) {
        self.reporter.detail(
            Verbosity::Verbose,
            format!(
                "   the server closed the connection after {} replies on it (an idle time-out \
                 or a restart, not a server that closes after each reply); reconnecting",
                self.replies_on_stream
            ),
        );
    }

    /// Turns a failure during `what` into the error reported to the user.
    pub fn error(&mut self, failure: Failure, what: &str) -> ClientError {
        self.stream = None;
        match failure {
            Failure::Gone { phase, error } => ClientError::Network(NetworkError {
                server: self.server.clone(),
                during: format!("{phase} request {what}"),
                timeout: Some(self.io_timeout),
                source: refused(error),
            }),
            Failure::Io { phase, error } => ClientError::Network(NetworkError {
                server: self.server.clone(),
                during: format!("{phase} request {what}"),
                timeout: Some(self.io_timeout),
                source: error,
            }),
            Failure::Malformed(e) => ClientError::Protocol {
                server: self.server.clone(),
                request: what.to_owned(),
                detail: format!("sent a reply that is not valid protocol: {e}"),
            },
        }
    }

    /// Closes the connection (the server sees the end of the session).
    pub fn close(&mut self) {
        if let Some(mut stream) = self.stream.take() {
            stream.shutdown();
        }
    }
}

/// The whole replies (header and payload) that `arrived` (bytes from the server, from a
/// reply's start) begins with, up to the first incomplete or invalid header.
fn complete_replies(arrived: &[u8]) -> impl Iterator<Item = (ResponseHeader, &[u8])> {
    let mut rest = arrived;
    std::iter::from_fn(move || {
        let header = ResponseHeader::decode(rest.first_chunk::<RESPONSE_HEADER_LEN>()?).ok()?;
        let end = RESPONSE_HEADER_LEN + header.payload_size as usize;
        let payload = rest.get(RESPONSE_HEADER_LEN..end)?;
        rest = rest.get(end..).unwrap_or_default();
        Some((header, payload))
    })
}

/// Whether `arrived` (bytes from the server, from a reply's start) holds a complete 1607,
/// payload included (what [`Connection::refusal_before_close`] then reads), among the
/// complete replies it begins with.
pub(crate) fn holds_refusal(arrived: &[u8]) -> bool {
    complete_replies(arrived).any(|(header, _)| header.code == sfc_proto::ResponseCode::ServerError)
}

/// The wait for the replies to one request.
#[derive(Clone, Copy, Debug)]
struct ReplyWait {
    /// When every reply to it must have been read: the time-out after the first wait.
    deadline: Instant,
    /// That time-out, for messages.
    timeout: Duration,
    /// Replies read so far (strays the caller skipped).
    replies: u32,
}

impl ReplyWait {
    /// The error for a reply not complete by the deadline (`partial`: some of it came),
    /// in words that name the time-out.
    fn timed_out(&self, partial: bool) -> io::Error {
        let within = format_duration(self.timeout);
        let text = match (partial, self.replies) {
            (true, _) => format!(
                "the reply was not complete within {within} (timed out: --timeout bounds each \
                 whole reply, however slowly it comes)"
            ),
            (false, 0) => format!("no answer within {within} (timed out: --timeout)"),
            (false, n) => format!(
                "no answer within {within} (timed out: --timeout bounds the whole wait, the {n} \
                 stray repl{} skipped on the way included)",
                if n == 1 { "y" } else { "ies" }
            ),
        };
        io::Error::new(io::ErrorKind::TimedOut, text)
    }
}

fn is_time_out(error: &io::Error) -> bool {
    matches!(
        error.kind(),
        io::ErrorKind::TimedOut | io::ErrorKind::WouldBlock
    )
}

/// The least rate at which a request must be taken: this many bytes per `--timeout`, as
/// this project's server requires of an 828's content (64 KiB per its `--request-timeout`,
/// crates/sfc-server/README.md). A 16 MiB packet over a slow link takes minutes; one
/// deadline of `--timeout` for all of it cut such uploads off.
const MIN_BYTES_PER_TIMEOUT: usize = 64 * 1024;

/// The server writes, syncs and records a whole file before it answers its last packet
/// (rule S18): on a slow disk that may take longer than the time-out for a large file. So
/// that reply gets the time-out, plus the time-out for each whole GiB of the file's
/// ciphertext (a server must flush at least 1 GiB per time-out: 17 MB/s at the default
/// 60 s).
pub fn file_reply_allowance(timeout: Duration, encrypted_size: u32) -> Duration {
    timeout.saturating_mul(encrypted_size / (1 << 30) + 1)
}

/// The time the server has to take a whole request of `len` bytes: the time-out,
/// plus the time-out for each whole [`MIN_BYTES_PER_TIMEOUT`] in it. A request under 64 KiB
/// (every request but a large file packet) has exactly the time-out.
fn request_allowance(timeout: Duration, len: usize) -> Duration {
    let whole_pieces = u32::try_from(len / MIN_BYTES_PER_TIMEOUT).unwrap_or(u32::MAX);
    timeout.saturating_mul(whole_pieces.saturating_add(1))
}

/// Writes a whole request, or a batch of requests (`what` names it in the errors). Each
/// write must make progress within `timeout`, so a server that stops reading is caught;
/// all of it must be taken within [`request_allowance`], so a server taking a little now
/// and then, below the least rate, is caught too.
pub(crate) fn write_request(
    stream: &mut Stream,
    request: &[u8],
    timeout: Duration,
    what: &str,
) -> io::Result<()> {
    let allowance = request_allowance(timeout, request.len());
    let deadline = Instant::now() + allowance;
    // Which limit ended it: the whole request's, or the time-out without progress.
    let timed_out = || match Instant::now() >= deadline {
        true => request_timed_out(allowance, request.len(), what),
        false => request_stalled(timeout),
    };
    // Each socket call has the time-out, also each of the several a TLS write may make.
    let mut bounded = stream.until_progress(deadline, timeout);
    let mut rest = request;
    while !rest.is_empty() {
        match bounded.write(rest) {
            Ok(0) => return Err(io::Error::from(io::ErrorKind::WriteZero)),
            Ok(n) => rest = rest.get(n..).unwrap_or_default(),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) if is_time_out(&e) => return Err(timed_out()),
            Err(e) => return Err(e),
        }
    }
    // With TLS, the records rustls still holds.
    bounded.flush().map_err(|e| match is_time_out(&e) {
        true => timed_out(),
        false => e,
    })
}

/// A request (or `what`) of `len` bytes the server did not take in full within
/// `allowance`.
fn request_timed_out(allowance: Duration, len: usize, what: &str) -> io::Error {
    let within = format_duration(allowance);
    let text = match len < MIN_BYTES_PER_TIMEOUT {
        true => format!(
            "the server did not take the whole {what} within {within} (timed out: --timeout)"
        ),
        false => format!(
            "the server did not take the whole {what} ({}) within {within} (timed out: \
             --timeout, plus --timeout for each 64 KiB of it)",
            human_bytes(len as u64)
        ),
    };
    io::Error::new(io::ErrorKind::TimedOut, text)
}

/// A request of which the server took nothing for `timeout`.
fn request_stalled(timeout: Duration) -> io::Error {
    io::Error::new(
        io::ErrorKind::TimedOut,
        format!(
            "the server stopped taking the request: none of it was taken for {} (timed out: \
             --timeout)",
            format_duration(timeout)
        ),
    )
}

/// A connection closed or reset before any reply. No TLS bytes came (a TLS server answers
/// a plain request with an alert, recognised when the reply header is read), so this is
/// a refusal (a per-address connection limit, a ban after failures) or a server that
/// stopped with the request in hand (a crash, a restart): both are named.
fn refused(error: io::Error) -> io::Error {
    let (kind, what) = match error.kind() {
        io::ErrorKind::UnexpectedEof | io::ErrorKind::BrokenPipe => {
            (io::ErrorKind::UnexpectedEof, "closed")
        }
        _ => (io::ErrorKind::ConnectionReset, "reset"),
    };
    let said = if error.get_ref().is_some() {
        error.to_string()
    } else {
        format!("the server {what} the connection without replying ({error})")
    };
    io::Error::new(
        kind,
        format!(
            "{said}: it may have stopped or restarted, or be refusing connections from this \
             address (too many at once, or a ban after repeated failures); try again later or \
             ask its operator"
        ),
    )
}

/// The error for a reply of the wrong kind: names the server, the request and both codes.
pub(crate) fn unexpected(
    conn: &Connection,
    code: RequestCode,
    response: &Response,
    expected: &str,
) -> ClientError {
    ClientError::Protocol {
        server: conn.server().to_owned(),
        request: code.described().to_string(),
        detail: format!(
            "answered {} where {expected} was expected",
            response.code().described()
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpListener;

    fn quiet_connection(addr: SocketAddr) -> Connection {
        connection_with_timeout(addr, Duration::from_secs(5))
    }

    fn connection_with_timeout(addr: SocketAddr, io_timeout: Duration) -> Connection {
        let server = ServerAddress::parse(&addr.to_string()).unwrap();
        Connection::new(
            &server,
            Duration::from_secs(5),
            io_timeout,
            Reporter::quiet(),
        )
        .unwrap()
    }

    #[test]
    fn peer_close_is_detected_before_the_next_request() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let mut conn = quiet_connection(addr);
        assert!(conn.prepare().unwrap());
        let (server_side, _) = listener.accept().unwrap();
        assert!(
            conn.prepare().unwrap(),
            "open stream is reused, still fresh"
        );
        conn.unused = false;
        assert!(!conn.prepare().unwrap(), "open stream is reused, used");
        drop(server_side);
        std::thread::sleep(Duration::from_millis(50));
        // Closed after its first (pretend) normal reply: per-request mode and a fresh
        // connection.
        conn.replied(&sfc_proto::Response::Ack { client_id: None });
        assert!(conn.prepare().unwrap());
        assert_eq!(conn.mode(), Mode::PerRequest);
    }

    /// A server name with several addresses, the first of which refuses: once one has
    /// answered, later connections start with it.
    #[test]
    fn the_address_that_answered_is_tried_first_next_time() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let live = listener.local_addr().unwrap();
        let refusing = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap();
        let mut conn = quiet_connection(live);
        conn.addrs = vec![refusing, live];
        conn.use_per_request();
        assert!(conn.prepare().unwrap());
        assert_eq!(conn.addrs, vec![live, refusing]);
        conn.unused = false;
        assert!(conn.prepare().unwrap());
        assert_eq!(conn.addrs, vec![live, refusing]);
        assert!(conn.stream.is_some());
    }

    fn register_request() -> Vec<u8> {
        sfc_proto::Request::new(
            sfc_proto::ClientId::ZERO,
            sfc_proto::RequestBody::Register {
                name: sfc_proto::Name::new("a").unwrap(),
            },
        )
        .encode()
    }

    /// The server closes only after the next request has arrived (so the close cannot be
    /// seen before sending): the request is sent again on a new connection, and the
    /// connection switches to per-request mode.
    #[test]
    fn a_request_lost_on_a_closed_connection_is_sent_again() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let server = server_closing_after(listener, 1);
        let mut conn = quiet_connection(addr);
        let request = register_request();
        assert!(conn.round_trip(&request).is_ok());
        assert_eq!(conn.mode(), Mode::Persistent);
        assert!(conn.round_trip(&request).is_ok());
        assert_eq!(conn.mode(), Mode::PerRequest);
        server.join().unwrap();
    }

    /// The same, but the lost request followed a 1607: the server dropped a connection it
    /// no longer trusted (rule S9), which says nothing about its style.
    #[test]
    fn a_close_after_a_1607_reconnects_in_the_same_style() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let server = std::thread::spawn(move || {
            let mut buf = [0u8; 23 + 255];
            let (mut first, _) = listener.accept().unwrap();
            first.read_exact(&mut buf).unwrap();
            first
                .write_all(&sfc_proto::Response::ServerError.encode())
                .unwrap();
            first.read_exact(&mut buf).unwrap();
            drop(first);
            let (mut second, _) = listener.accept().unwrap();
            second.read_exact(&mut buf).unwrap();
            second
                .write_all(
                    &sfc_proto::Response::Registered {
                        client_id: sfc_proto::ClientId([1; 16]),
                    }
                    .encode(),
                )
                .unwrap();
        });
        let mut conn = quiet_connection(addr);
        let request = register_request();
        assert_eq!(
            conn.round_trip(&request).unwrap(),
            sfc_proto::Response::ServerError
        );
        assert!(matches!(
            conn.round_trip(&request).unwrap(),
            sfc_proto::Response::Registered { .. }
        ));
        assert_eq!(conn.mode(), Mode::Persistent);
        server.join().unwrap();
    }

    /// A server that answers `replies` requests on a connection, then swallows the next
    /// one and closes; the connection after it answers one request.
    fn server_closing_after(listener: TcpListener, replies: usize) -> std::thread::JoinHandle<()> {
        let reply = sfc_proto::Response::Registered {
            client_id: sfc_proto::ClientId([1; 16]),
        }
        .encode();
        std::thread::spawn(move || {
            let mut buf = [0u8; 23 + 255];
            let (mut first, _) = listener.accept().unwrap();
            for _ in 0..replies {
                first.read_exact(&mut buf).unwrap();
                first.write_all(&reply).unwrap();
            }
            first.read_exact(&mut buf).unwrap();
            drop(first);
            let (mut second, _) = listener.accept().unwrap();
            second.read_exact(&mut buf).unwrap();
            second.write_all(&reply).unwrap();
        })
    }

    /// A connection the server kept for two replies, then closed without replying to the
    /// third request (an idle time-out, a restart): the request is sent again on a new
    /// connection in the same, persistent style.
    #[test]
    fn a_close_after_several_replies_reconnects_in_the_same_style() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let server = server_closing_after(listener, 2);
        let mut conn = quiet_connection(addr);
        let request = register_request();
        for _ in 0..3 {
            assert!(conn.round_trip(&request).is_ok());
            assert_eq!(conn.mode(), Mode::Persistent);
        }
        server.join().unwrap();
    }

    /// The same close seen before sending (the server closed a connection kept for two
    /// replies): a new connection, still persistent.
    #[test]
    fn a_connection_kept_for_several_replies_and_closed_is_opened_again() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let mut conn = quiet_connection(addr);
        assert!(conn.prepare().unwrap());
        let (server_side, _) = listener.accept().unwrap();
        let ack = sfc_proto::Response::Ack {
            client_id: Some(sfc_proto::ClientId([1; 16])),
        };
        conn.replied(&ack);
        conn.replied(&ack);
        conn.unused = false;
        drop(server_side);
        std::thread::sleep(Duration::from_millis(50));
        assert!(conn.prepare().unwrap(), "a new connection");
        assert_eq!(conn.mode(), Mode::Persistent);
        assert!(!conn.kept_for_several_replies(), "counted anew");
    }

    /// A file's last packet gets the time-out per GiB of ciphertext on top of the
    /// time-out for its reply (the server syncs the whole file first).
    #[test]
    fn a_large_file_s_last_reply_gets_more_time() {
        let minute = Duration::from_secs(60);
        assert_eq!(file_reply_allowance(minute, 5000), minute);
        assert_eq!(file_reply_allowance(minute, (1 << 30) - 1), minute);
        assert_eq!(file_reply_allowance(minute, 1 << 30), 2 * minute);
        assert_eq!(file_reply_allowance(minute, u32::MAX), 4 * minute);
    }

    /// A reply given more time than the time-out is waited for that long, on a
    /// persistent connection and per request; the next request has the time-out again.
    #[test]
    fn a_reply_allowance_holds_for_its_request_only() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let reply = sfc_proto::Response::Registered {
            client_id: sfc_proto::ClientId([1; 16]),
        }
        .encode();
        let server = std::thread::spawn(move || {
            let (mut s, _) = listener.accept().unwrap();
            let mut buf = [0u8; 23 + 255];
            for _ in 0..3 {
                s.read_exact(&mut buf).unwrap();
                std::thread::sleep(Duration::from_millis(600));
                if s.write_all(&reply).is_err() {
                    return;
                }
            }
        });
        let mut conn = connection_with_timeout(addr, Duration::from_millis(300));
        let request = register_request();
        let long = Duration::from_secs(5);
        assert!(conn.round_trip_allowing(&request, long).is_ok());
        // Persistent: the request written on the stream, then the allowance.
        write_request(conn.stream_mut().unwrap(), &request, long, "request").unwrap();
        conn.allow_for_replies(long);
        assert!(conn.read_reply().is_ok());
        let error = conn.round_trip(&request).unwrap_err().to_string();
        assert!(error.contains("within 300 ms"), "{error}");
        server.join().unwrap();
    }

    /// A refusal is seen behind stray replies, but only once all of it has arrived.
    #[test]
    fn a_refusal_counts_once_complete() {
        let id = sfc_proto::ClientId([4; 16]);
        let stray = sfc_proto::Response::PacketReceived { client_id: id }.encode();
        let refusal = sfc_proto::Response::ServerError.encode();
        // A 1607 with a 16-byte payload (an ID, as some servers send).
        let mut long_refusal = refusal.clone();
        long_refusal[3..7].copy_from_slice(&16u32.to_le_bytes());
        long_refusal.extend_from_slice(&[4; 16]);
        assert!(holds_refusal(&refusal));
        assert!(holds_refusal(&[stray.as_slice(), &refusal].concat()));
        assert!(holds_refusal(&[stray.as_slice(), &long_refusal].concat()));
        assert!(!holds_refusal(&long_refusal[..long_refusal.len() - 1]));
        assert!(!holds_refusal(&refusal[..refusal.len() - 1]));
        assert!(!holds_refusal(&stray));
        assert!(!holds_refusal(&stray[..10]));
        assert!(!holds_refusal(&[]));
    }

    /// On a fresh connection the same failure is an error, never a silent resend.
    #[test]
    fn a_close_without_reply_on_a_fresh_connection_is_an_error() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let server = std::thread::spawn(move || {
            let (mut s, _) = listener.accept().unwrap();
            let mut buf = [0u8; 23 + 255];
            s.read_exact(&mut buf).unwrap();
        });
        let mut conn = quiet_connection(addr);
        let e = conn.round_trip(&register_request()).unwrap_err();
        assert_eq!(e.exit_code(), 5);
        let text = e.to_string();
        assert!(
            text.contains("closed the connection without replying"),
            "{e}"
        );
        // It read the request: a refusal is not the only reading.
        assert!(
            text.contains("may have stopped or restarted, or be refusing"),
            "{e}"
        );
        server.join().unwrap();
    }

    #[test]
    fn refused_connection_is_a_network_error_naming_the_address() {
        let addr = {
            let l = TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap()
        };
        let mut conn = quiet_connection(addr);
        let e = conn.prepare().unwrap_err();
        let text = e.to_string();
        assert!(text.contains(&addr.to_string()), "{text}");
        assert!(text.contains("refused"), "{text}");
    }

    #[test]
    fn lying_or_truncated_replies_are_errors_not_panics() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let server = std::thread::spawn(move || {
            for reply in [
                vec![3u8, 0x40, 0x06, 0xff, 0xff, 0xff, 0x7f], // 1600, 2 GiB payload
                vec![3u8, 0x48, 0x06, 0, 0, 0, 0],             // unknown code 1608
                vec![3u8, 0x40, 0x06, 16, 0, 0, 0, 1, 2],      // truncated payload
            ] {
                let (mut s, _) = listener.accept().unwrap();
                let mut buf = [0u8; 23 + 255];
                s.read_exact(&mut buf).unwrap();
                s.write_all(&reply).unwrap();
            }
        });
        let request = register_request();
        let mut conn = quiet_connection(addr);
        for expected in [6u8, 6, 5] {
            let e = conn.round_trip(&request).unwrap_err();
            assert_eq!(e.exit_code(), expected, "{e}");
            assert!(e.to_string().contains("825 (register)"), "{e}");
        }
        server.join().unwrap();
    }

    /// The longest reply: a 1603 (286 bytes; its file name field is always 255 bytes).
    fn long_reply() -> Vec<u8> {
        sfc_proto::Response::FileReceived {
            client_id: sfc_proto::ClientId([1; 16]),
            content_size: 16,
            file_name: sfc_proto::Name::new("f.bin").unwrap(),
            cksum: 7,
        }
        .encode()
    }

    /// Writes `bytes` one at a time, 300 ms before each, until done or the client has
    /// gone.
    fn trickle(socket: &mut TcpStream, bytes: &[u8]) {
        for byte in bytes.chunks(1) {
            std::thread::sleep(Duration::from_millis(300));
            if socket.write_all(byte).is_err() {
                return;
            }
        }
    }

    /// A valid reply trickled one byte every 300 ms (86 s in all, each byte far inside the
    /// 1 s time-out) is a time-out after about 1 s, not a reply 86 s later.
    #[test]
    fn a_trickled_reply_times_out_as_a_whole() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let server = std::thread::spawn(move || {
            let (mut socket, _) = listener.accept().unwrap();
            trickle(&mut socket, &long_reply());
        });
        let mut conn = connection_with_timeout(addr, Duration::from_secs(1));
        let started = std::time::Instant::now();
        let e = conn.round_trip(&register_request()).unwrap_err();
        assert!(started.elapsed() < Duration::from_secs(10), "{e}");
        assert_eq!(e.exit_code(), 5, "{e}");
        let text = e.to_string();
        assert!(text.contains("not complete within 1 s"), "{text}");
        assert!(text.contains("--timeout"), "{text}");
        server.join().unwrap();
    }

    /// A request under 64 KiB has exactly the time-out; a larger one the time-out more for
    /// each whole 64 KiB: a 16 MiB file packet 257 times it.
    #[test]
    fn a_request_may_take_the_timeout_plus_the_timeout_per_64_kib() {
        let minute = Duration::from_secs(60);
        let header_and_fields = 23 + 267;
        for len in [23 + 255, 23 + 1279, (64 << 10) - 1] {
            assert_eq!(request_allowance(minute, len), minute, "{len} bytes");
        }
        assert_eq!(request_allowance(minute, 64 << 10), 2 * minute);
        // The largest --packet-size: 16 MiB of content, 16 more with the padding.
        let largest_packet = header_and_fields + (16 << 20) + 16;
        assert_eq!(request_allowance(minute, largest_packet), 257 * minute);
        assert_eq!(
            request_allowance(Duration::from_secs(86_400), usize::MAX),
            Duration::from_secs(86_400).saturating_mul(u32::MAX)
        );
        let text = request_timed_out(257 * minute, largest_packet, "request").to_string();
        assert!(
            text.contains("whole request (16.0 MiB) within 15420 s"),
            "{text}"
        );
        assert!(text.contains("--timeout for each 64 KiB of it"), "{text}");
    }

    /// A large request (a file packet, one connection per request) that the server takes
    /// steadily, far above 64 KiB per time-out, but for longer than the time-out, goes
    /// through.
    #[test]
    fn a_large_request_taken_steadily_may_take_longer_than_the_timeout() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let mut request = register_request();
        request.resize(32 << 20, 0);
        let len = request.len();
        let server = std::thread::spawn(move || {
            let (mut socket, _) = listener.accept().unwrap();
            let mut chunk = vec![0u8; 256 << 10];
            let mut taken = 0;
            // 5 MiB/s (80 times the least rate, and fast enough for each write to make
            // progress well within the time-out: a blocked write goes on only once a third
            // of the socket's send buffer is free) for 2 s, twice the time-out; then the rest
            // at once, so that what the socket buffers still hold when the client is done
            // writing does not hold up the reply past its own time-out.
            let slow_until = std::time::Instant::now() + Duration::from_secs(2);
            while taken < len {
                match socket.read(&mut chunk) {
                    Ok(0) | Err(_) => return,
                    Ok(n) => taken += n,
                }
                if std::time::Instant::now() < slow_until {
                    std::thread::sleep(Duration::from_millis(50));
                }
            }
            let reply = sfc_proto::Response::Registered {
                client_id: sfc_proto::ClientId([1; 16]),
            };
            socket.write_all(&reply.encode()).unwrap();
        });
        let mut conn = connection_with_timeout(addr, Duration::from_secs(1));
        let reply = conn.round_trip(&request);
        server.join().unwrap();
        assert!(
            matches!(reply, Ok(sfc_proto::Response::Registered { .. })),
            "{reply:?}"
        );
    }

    /// A server that stops reading in the middle of a large request is a time-out after
    /// about the time-out, not after the time-out per 64 KiB (almost 9 minutes here).
    #[test]
    fn a_request_the_server_stops_taking_times_out() {
        use std::sync::mpsc;

        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let (client_done, done) = mpsc::channel::<()>();
        let server = std::thread::spawn(move || {
            let (mut socket, _) = listener.accept().unwrap();
            let mut start = vec![0u8; 64 << 10];
            socket.read_exact(&mut start).unwrap();
            // Holds the connection open, reading nothing more, until the client gives up.
            let _ = done.recv();
        });
        let mut request = register_request();
        request.resize(32 << 20, 0);
        let mut conn = connection_with_timeout(addr, Duration::from_secs(1));
        let started = std::time::Instant::now();
        let result = conn.round_trip(&request);
        drop(client_done);
        let e = result.unwrap_err();
        assert!(started.elapsed() < Duration::from_secs(10), "{e}");
        assert_eq!(e.exit_code(), 5, "{e}");
        let text = e.to_string();
        assert!(
            text.contains("none of it was taken for 1 s (timed out: --timeout)"),
            "{text}"
        );
        server.join().unwrap();
    }

    /// A server that answers every packet, then refuses one it will not read (1607) and
    /// closes: the write of a request larger than the socket buffers fails with the
    /// earlier replies and then the 1607 waiting to be read. The 1607 is found behind
    /// them: the request was refused (rule C8), the connection did not just fail.
    #[test]
    fn a_refusal_behind_other_replies_is_found_after_a_failed_write() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let server = std::thread::spawn(move || {
            let (mut socket, _) = listener.accept().unwrap();
            let mut head = [0u8; 64 << 10];
            socket.read_exact(&mut head).unwrap();
            let packet_received = sfc_proto::Response::PacketReceived {
                client_id: sfc_proto::ClientId([1; 16]),
            }
            .encode();
            // One write: with Nagle's algorithm, replies written one by one wait for the
            // first one's ACK, and the close (a reset, with data unread) drops them.
            let replies = [
                packet_received.as_slice(),
                &packet_received,
                &sfc_proto::Response::ServerError.encode(),
            ]
            .concat();
            socket.write_all(&replies).unwrap();
            // Closed with the rest of the request unread: the client's write fails.
        });
        let mut request = register_request();
        request.resize(32 << 20, 0);
        let mut conn = quiet_connection(addr);
        let reply = conn.round_trip(&request);
        server.join().unwrap();
        assert_eq!(reply.unwrap(), sfc_proto::Response::ServerError);
    }

    /// The same through TLS: rustls waits for a whole record, and a trickled record must
    /// not hold it past the deadline either.
    #[test]
    fn a_trickled_tls_record_times_out_as_a_whole() {
        use rustls::pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};
        use std::sync::Arc;

        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec!["127.0.0.1".to_owned()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        let pki = tempfile::tempdir().unwrap();
        let ca_file = pki.path().join("server.pem");
        std::fs::write(&ca_file, cert.pem()).unwrap();
        let config = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::aws_lc_rs::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(
            vec![cert.der().clone()],
            PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())),
        )
        .unwrap();

        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let server = std::thread::spawn(move || {
            let (mut socket, _) = listener.accept().unwrap();
            let mut tls = rustls::ServerConnection::new(Arc::new(config)).unwrap();
            while tls.is_handshaking() {
                tls.complete_io(&mut socket).unwrap();
            }
            while tls.wants_write() {
                tls.write_tls(&mut socket).unwrap();
            }
            // The reply as one TLS record, put on the wire a byte at a time.
            tls.writer().write_all(&long_reply()).unwrap();
            let mut record = Vec::new();
            while tls.wants_write() {
                tls.write_tls(&mut record).unwrap();
            }
            trickle(&mut socket, &record);
        });
        let server_address = ServerAddress::parse(&addr.to_string()).unwrap();
        let mut conn = connection_with_timeout(addr, Duration::from_secs(1));
        conn.use_tls(crate::tls::setup(&server_address, Some(&ca_file), &[]).unwrap());
        let started = std::time::Instant::now();
        let e = conn.round_trip(&register_request()).unwrap_err();
        assert!(started.elapsed() < Duration::from_secs(10), "{e}");
        assert_eq!(e.exit_code(), 5, "{e}");
        assert!(e.to_string().contains("within 1 s"), "{e}");
        server.join().unwrap();
    }
}
