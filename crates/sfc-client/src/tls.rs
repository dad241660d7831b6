//! Opt-in TLS (`--tls`, `--tls-ca FILE`): the unchanged protocol inside TLS.
//!
//! The server's certificate is verified against the CA certificates in `--tls-ca FILE`
//! (PEM) or, without it, the system's trusted roots; the name checked is the host of
//! `--server` (a DNS name, or an IP address that the certificate must list as an IP
//! address). A certificate that does not verify ends the run before a single protocol
//! byte is sent. rustls's safe defaults (TLS 1.3 and 1.2, AEAD suites) on aws-lc-rs.
//!
//! [`Stream`] is what [`crate::connection::Connection`] reads and writes: plain TCP or
//! TLS around it, with the same blocking `Read`/`Write` and time-outs. [`Stream::until`]
//! bounds a whole exchange by one deadline, TLS records included.

use std::collections::VecDeque;
use std::fmt;
use std::io::{self, Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rustls::client::WebPkiServerVerifier;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName};
use rustls::{ClientConfig, ClientConnection, StreamOwned};

use crate::address::{Host, ServerAddress};
use crate::config::{ConfigError, Origin};
use crate::pin::{Fingerprint, PinningVerifier};

/// A ready TLS client configuration and the name to verify.
#[derive(Clone)]
pub struct TlsSetup {
    config: Arc<ClientConfig>,
    name: ServerName<'static>,
    /// Where the trust comes from, for messages: "a CA in FILE" or "a CA this system trusts".
    trust: String,
}

impl fmt::Debug for TlsSetup {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TlsSetup")
            .field("name", &self.name)
            .field("trust", &self.trust)
            .finish_non_exhaustive()
    }
}

fn ca_error(reason: String) -> ConfigError {
    ConfigError {
        origin: Origin::Flag("--tls-ca"),
        reason,
    }
}

/// Reads the CA certificates of a PEM file.
pub fn load_ca_file(path: &Path) -> Result<Vec<CertificateDer<'static>>, ConfigError> {
    let bytes = std::fs::read(path)
        .map_err(|e| ca_error(format!("cannot read {}: {e}", path.display())))?;
    let certs = CertificateDer::pem_slice_iter(&bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| ca_error(format!("{} is not valid PEM: {e}", path.display())))?;
    if certs.is_empty() {
        return Err(ca_error(format!(
            "{} holds no certificate (expected PEM \"-----BEGIN CERTIFICATE-----\")",
            path.display()
        )));
    }
    Ok(certs)
}

/// The server name the certificate must carry: the host of `--server`.
pub fn server_name(server: &ServerAddress) -> Result<ServerName<'static>, ConfigError> {
    match &server.host {
        Host::Ipv4(ip) => Ok(ServerName::IpAddress(std::net::IpAddr::V4(*ip).into())),
        Host::Ipv6(ip) => Ok(ServerName::IpAddress(std::net::IpAddr::V6(*ip).into())),
        Host::Name(name) => {
            let name = name.strip_suffix('.').unwrap_or(name).to_owned();
            ServerName::try_from(name).map_err(|e| ConfigError {
                origin: Origin::Flag("--server"),
                reason: format!("not usable as a TLS server name: {e}"),
            })
        }
    }
}

/// Builds the client configuration. `ca_file` (`--tls-ca`): trust only the certificates
/// in this PEM file, as CAs and each as itself (a self-signed server certificate is
/// pinned, see [`crate::pin`]); `fingerprints` (`--tls-fingerprint`): accept the server
/// certificates with these SHA-256 fingerprints. With neither, the system's trusted roots.
pub fn setup(
    server: &ServerAddress,
    ca_file: Option<&Path>,
    fingerprints: &[Fingerprint],
) -> Result<TlsSetup, ConfigError> {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    let mut pinned = Vec::new();
    let mut trust = Vec::new();
    if let Some(path) = ca_file {
        for cert in load_ca_file(path)? {
            // A certificate that cannot serve as a CA can still be pinned.
            let _ = roots.add(cert.clone());
            pinned.push(cert);
        }
        trust.push(format!(
            "issued by a CA in {0} or be one of the certificates in {0}",
            path.display()
        ));
    }
    if !fingerprints.is_empty() {
        trust.push("have a fingerprint given with --tls-fingerprint".to_owned());
    }
    if ca_file.is_none() && fingerprints.is_empty() {
        add_system_roots(&mut roots)?;
        trust.push("issued by a CA this system trusts".to_owned());
    }
    let webpki = if roots.is_empty() {
        None
    } else {
        Some(
            WebPkiServerVerifier::builder_with_provider(Arc::new(roots), Arc::clone(&provider))
                .build()
                .map_err(|e| ConfigError {
                    origin: Origin::Flag(if ca_file.is_some() {
                        "--tls-ca"
                    } else {
                        "--tls"
                    }),
                    reason: format!("no usable CA certificate: {e}"),
                })?,
        )
    };
    let verifier = PinningVerifier {
        pinned,
        fingerprints: fingerprints.to_vec(),
        webpki,
        provider: Arc::clone(&provider),
    };
    let config = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| ConfigError {
            origin: Origin::Flag("--tls"),
            reason: format!("no TLS protocol version available: {e}"),
        })?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verifier))
        .with_no_client_auth();
    Ok(TlsSetup {
        config: Arc::new(config),
        name: server_name(server)?,
        trust: trust.join(", or "),
    })
}

fn add_system_roots(roots: &mut rustls::RootCertStore) -> Result<(), ConfigError> {
    let found = rustls_native_certs::load_native_certs();
    let (added, _ignored) = roots.add_parsable_certificates(found.certs);
    if added > 0 {
        return Ok(());
    }
    let errors: Vec<String> = found.errors.iter().map(|e| e.to_string()).collect();
    Err(ConfigError {
        origin: Origin::Flag("--tls"),
        reason: format!(
            "no trusted root certificates found on this system{}; pass the server's CA or \
             certificate with --tls-ca FILE, or its fingerprint with --tls-fingerprint",
            if errors.is_empty() {
                String::new()
            } else {
                format!(" ({})", errors.join("; "))
            }
        ),
    })
}

/// Plain TCP, or TLS around it.
#[derive(Debug)]
pub enum Stream {
    /// Plain TCP (the default).
    Plain(TcpStream),
    /// TLS over TCP.
    Tls(Box<TlsStream>),
}

/// The most plaintext [`Stream::refusal_waiting`] takes out of rustls to look at, as much
/// as it peeks at on a plain connection: replies are a few hundred bytes at most.
const LOOK_AHEAD_LIMIT: usize = 4096;

/// A TLS session over TCP, and the plaintext taken out of it ahead of the reads.
#[derive(Debug)]
pub struct TlsStream {
    owned: StreamOwned<ClientConnection, TcpStream>,
    /// Plaintext that [`Stream::refusal_waiting`] took out of rustls to look at (rustls
    /// shows no more than its first record's without taking it), served to every read
    /// before rustls is read again.
    ahead: VecDeque<u8>,
}

impl TlsStream {
    /// Reads from the plaintext taken ahead; `None` when there is none.
    fn read_ahead(&mut self, buf: &mut [u8]) -> Option<io::Result<usize>> {
        (!self.ahead.is_empty()).then(|| self.ahead.read(buf))
    }
}

impl Stream {
    /// Runs the client side of the TLS handshake on a connected socket, done by
    /// `deadline`. The error says in words why: an untrusted certificate, or a server that
    /// does not speak TLS.
    pub fn handshake(tcp: TcpStream, setup: &TlsSetup, deadline: Instant) -> io::Result<Stream> {
        let conn = ClientConnection::new(Arc::clone(&setup.config), setup.name.clone())
            .map_err(io::Error::other)?;
        let mut stream = StreamOwned::new(conn, tcp);
        while stream.conn.is_handshaking() {
            let mut socket = SocketUntil {
                tcp: &stream.sock,
                deadline,
                progress: None,
            };
            if let Err(error) = stream.conn.complete_io(&mut socket) {
                return Err(explain_handshake_error(error, setup));
            }
        }
        Ok(Stream::Tls(Box::new(TlsStream {
            owned: stream,
            ahead: VecDeque::new(),
        })))
    }

    /// This stream with every read and write bounded by `deadline`: a peer that sends (or
    /// takes) a byte now and then cannot stretch an exchange past it, as it can with a
    /// socket time-out alone (that one restarts with every byte). Past the deadline, only
    /// bytes that have already arrived are read, then reads and writes fail with
    /// [`io::ErrorKind::TimedOut`]. Leaves the socket's time-outs changed; see
    /// [`Self::reset_timeouts`].
    pub fn until(&mut self, deadline: Instant) -> StreamUntil<'_> {
        StreamUntil {
            stream: self,
            deadline,
            progress: None,
        }
    }

    /// As [`Self::until`], and each read or write on the socket also ends after `each`
    /// without progress: "any progress starts it again" holds for TLS too, whose one write
    /// may put several records (up to 64 KiB and more) on the socket.
    pub fn until_progress(&mut self, deadline: Instant, each: Duration) -> StreamUntil<'_> {
        StreamUntil {
            stream: self,
            deadline,
            progress: Some(each),
        }
    }

    /// Sets the socket's time-out for each read and each write (plain `Read`/`Write`).
    pub fn reset_timeouts(&self, timeout: Duration) -> io::Result<()> {
        self.tcp().set_read_timeout(Some(timeout))?;
        self.tcp().set_write_timeout(Some(timeout))
    }

    /// True for a TLS stream.
    pub fn is_tls(&self) -> bool {
        matches!(self, Stream::Tls(_))
    }

    /// The TCP socket underneath.
    pub fn tcp(&self) -> &TcpStream {
        match self {
            Stream::Plain(tcp) => tcp,
            Stream::Tls(tls) => &tls.owned.sock,
        }
    }

    /// Whether a refusal (1607) has arrived, looked at without waiting and without
    /// taking it from the replies read later: a server that refused a file packet drops
    /// the rest of the upload (rule S12), so sending on is only waste. On a plain
    /// connection, replies before it (a short 1603 to a first packet, rule S2) are passed
    /// over. Over TLS, the records that arrived are taken in and decrypted, and their
    /// plaintext (up to 4 KiB, as on a plain connection) is kept aside for the reads
    /// after: a 1607 behind a stray reply, or split over records, is seen too. An error
    /// only for a TLS session that has failed (an alert, a record that does not decrypt).
    pub fn refusal_waiting(&mut self) -> io::Result<bool> {
        match self {
            Stream::Plain(tcp) => {
                let mut arrived = [0u8; LOOK_AHEAD_LIMIT];
                Ok(match peek_arrived(tcp, &mut arrived) {
                    Ok(n) => crate::connection::holds_refusal(arrived.get(..n).unwrap_or_default()),
                    Err(_) => false,
                })
            }
            Stream::Tls(tls) => tls_refusal_waiting(tls),
        }
    }

    /// True if the server has closed (or reset) the connection. Pending bytes (a stray
    /// reply) count as open; for TLS, records that arrived are processed first, so a
    /// close_notify counts as closed and session tickets do not count as a reply.
    pub fn peer_closed(&mut self) -> bool {
        match self {
            Stream::Plain(tcp) => match peek_arrived(tcp, &mut [0u8; 1]) {
                Ok(0) => true,
                Ok(_) => false,
                Err(e) => e.kind() != io::ErrorKind::WouldBlock,
            },
            // Plaintext kept aside is a reply still to read.
            Stream::Tls(tls) => tls.ahead.is_empty() && tls_peer_closed(&mut tls.owned),
        }
    }

    /// Up to `limit` bytes that have already arrived and not been read, taken without
    /// waiting and without writing: after a failed write, TLS records may still be
    /// waiting to go out, and a plain read through rustls would try to send them first.
    /// Stops at the end of the stream or at any error.
    pub fn take_arrived(&mut self, limit: usize) -> Vec<u8> {
        let mut taken = Vec::new();
        let mut chunk = [0u8; 4096];
        match self {
            Stream::Plain(tcp) => {
                while taken.len() < limit {
                    match Arrived(tcp).read(&mut chunk) {
                        Ok(0) => break,
                        Ok(n) => taken.extend_from_slice(chunk.get(..n).unwrap_or_default()),
                        Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                        Err(_) => break,
                    }
                }
            }
            Stream::Tls(tls) => {
                let kept = tls.ahead.len().min(limit);
                taken.extend(tls.ahead.drain(..kept));
                if taken.len() < limit {
                    tls_take_arrived(&mut tls.owned, &mut chunk, &mut taken, limit);
                }
            }
        }
        taken
    }

    /// Ends the connection: a TLS close_notify first, then the TCP shutdown.
    pub fn shutdown(&mut self) {
        if let Stream::Tls(tls) = self {
            let StreamOwned { conn, sock } = &mut tls.owned;
            conn.send_close_notify();
            let _ = conn.complete_io(sock);
        }
        let _ = self.tcp().shutdown(std::net::Shutdown::Both);
    }
}

/// [`Stream::refusal_waiting`] over TLS: reads what records have arrived without waiting
/// (nothing is written: records rustls holds back stay for the next write; the socket's
/// mode and time-outs are left as they are), takes their plaintext out of rustls into
/// the look-ahead, and looks at all of it.
fn tls_refusal_waiting(tls: &mut TlsStream) -> io::Result<bool> {
    let StreamOwned { conn, sock } = &mut tls.owned;
    loop {
        match conn.read_tls(&mut Arrived(sock)) {
            // Closed: what came before it is looked at; the next read reports the close.
            Ok(0) => break,
            Ok(_) => {
                conn.process_new_packets()
                    .map_err(|error| io::Error::new(io::ErrorKind::InvalidData, error))?;
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            // Nothing more has arrived, rustls holds all the plaintext it takes, or the
            // socket failed (the next read or write says so).
            Err(_) => break,
        }
    }
    let mut chunk = [0u8; 1024];
    while tls.ahead.len() < LOOK_AHEAD_LIMIT {
        let room = (LOOK_AHEAD_LIMIT - tls.ahead.len()).min(chunk.len());
        let into = chunk.get_mut(..room).unwrap_or_default();
        match conn.reader().read(into) {
            Ok(n) if n > 0 => tls.ahead.extend(into.get(..n).unwrap_or_default()),
            // The end of the session, or nothing more for now: rustls says which again at
            // the read that reaches it.
            _ => break,
        }
    }
    Ok(crate::connection::holds_refusal(
        tls.ahead.make_contiguous(),
    ))
}

/// What has arrived on the socket (up to `buf`'s size), looked at without taking it or
/// waiting (else `WouldBlock`), whatever the socket's mode and time-outs.
fn peek_arrived(tcp: &TcpStream, buf: &mut [u8]) -> io::Result<usize> {
    let flags = rustix::net::RecvFlags::PEEK | rustix::net::RecvFlags::DONTWAIT;
    rustix::net::recv(tcp, buf, flags)
        .map(|(n, _)| n)
        .map_err(io::Error::from)
}

/// The socket, read without waiting (what has arrived, else `WouldBlock`), whatever its
/// mode and time-outs: for rustls, and for what has arrived on a plain connection.
struct Arrived<'a>(&'a TcpStream);

impl Read for Arrived<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        rustix::net::recv(self.0, buf, rustix::net::RecvFlags::DONTWAIT)
            .map(|(n, _)| n)
            .map_err(io::Error::from)
    }
}

fn tls_peer_closed(tls: &mut StreamOwned<ClientConnection, TcpStream>) -> bool {
    loop {
        match tls.conn.process_new_packets() {
            Ok(state) if state.peer_has_closed() => return true,
            Ok(state) if state.plaintext_bytes_to_read() > 0 => return false,
            Ok(_) => {}
            Err(_) => return true,
        }
        match tls.conn.read_tls(&mut Arrived(&tls.sock)) {
            Ok(0) => return true,
            Ok(_) => continue,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return false,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(_) => return true,
        }
    }
}

fn tls_take_arrived(
    tls: &mut StreamOwned<ClientConnection, TcpStream>,
    chunk: &mut [u8],
    taken: &mut Vec<u8>,
    limit: usize,
) {
    loop {
        // The plaintext of the records processed so far, then more records.
        loop {
            match tls.conn.reader().read(chunk) {
                Ok(0) => return,
                Ok(n) => taken.extend_from_slice(chunk.get(..n).unwrap_or_default()),
                Err(_) => break,
            }
            if taken.len() >= limit {
                return;
            }
        }
        match tls.conn.read_tls(&mut Arrived(&tls.sock)) {
            Ok(0) => return,
            Ok(_) => {
                if tls.conn.process_new_packets().is_err() {
                    return;
                }
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => return,
        }
    }
}

fn explain_handshake_error(error: io::Error, setup: &TlsSetup) -> io::Error {
    let rustls_error = error
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<rustls::Error>());
    let text = match rustls_error {
        Some(rustls::Error::InvalidCertificate(reason)) => format!(
            "the server's certificate is not trusted ({}): it must be {} (and, unless pinned, \
             name {:?}). Refusing to talk to this server (pass --tls-ca with the CA that issued \
             its certificate, or the certificate itself; or --tls-fingerprint)",
            match reason {
                rustls::CertificateError::Other(other) => other.to_string(),
                other => format!("{other:?}"),
            },
            setup.trust,
            setup.name.to_str()
        ),
        Some(rustls::Error::InvalidMessage(_))
        | Some(rustls::Error::InappropriateMessage { .. }) => {
            format!(
                "TLS handshake failed ({}): the server does not seem to speak TLS; run without \
                 --tls if it serves plain TCP",
                rustls_error.map_or_else(String::new, ToString::to_string)
            )
        }
        Some(other) => format!("TLS handshake failed: {other}"),
        None if error.kind() == io::ErrorKind::UnexpectedEof => {
            "the server closed the connection during the TLS handshake: it does not seem to \
             speak TLS; run without --tls if it serves plain TCP"
                .to_owned()
        }
        None => return error,
    };
    io::Error::new(io::ErrorKind::InvalidData, text)
}

impl Read for Stream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Stream::Plain(tcp) => tcp.read(buf),
            Stream::Tls(tls) => match tls.read_ahead(buf) {
                Some(read) => read,
                None => tls.owned.read(buf),
            },
        }
    }
}

impl Write for Stream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Stream::Plain(tcp) => tcp.write(buf),
            Stream::Tls(tls) => tls.owned.write(buf),
        }
    }

    fn write_all(&mut self, buf: &[u8]) -> io::Result<()> {
        match self {
            Stream::Plain(tcp) => tcp.write_all(buf),
            // StreamOwned's write_all hands rustls the data record by record; flush
            // makes sure every record is on the socket before a reply is awaited.
            Stream::Tls(tls) => {
                tls.owned.write_all(buf)?;
                tls.owned.flush()
            }
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match self {
            Stream::Plain(tcp) => tcp.flush(),
            Stream::Tls(tls) => tls.owned.flush(),
        }
    }
}

/// A [`Stream`] whose reads and writes all end by one deadline ([`Stream::until`]). TLS
/// goes through rustls as [`StreamOwned`] does, over a socket that is itself bounded, so
/// a record trickled in byte by byte times out as well.
#[derive(Debug)]
pub struct StreamUntil<'a> {
    stream: &'a mut Stream,
    deadline: Instant,
    progress: Option<Duration>,
}

impl StreamUntil<'_> {
    /// Runs `exchange` on the stream bounded by the deadline: on the socket for plain
    /// TCP, through rustls for TLS.
    fn bounded<T>(
        &mut self,
        exchange: impl FnOnce(&mut dyn ReadWrite) -> io::Result<T>,
    ) -> io::Result<T> {
        let (deadline, progress) = (self.deadline, self.progress);
        match &mut *self.stream {
            Stream::Plain(tcp) => exchange(&mut SocketUntil {
                tcp,
                deadline,
                progress,
            }),
            Stream::Tls(tls) => {
                let StreamOwned { conn, sock } = &mut tls.owned;
                let mut socket = SocketUntil {
                    tcp: sock,
                    deadline,
                    progress,
                };
                exchange(&mut rustls::Stream::new(conn, &mut socket))
            }
        }
    }
}

/// Both halves, for [`StreamUntil::bounded`].
trait ReadWrite: Read + Write {}

impl<T: Read + Write> ReadWrite for T {}

impl Read for StreamUntil<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if let Stream::Tls(tls) = &mut *self.stream {
            if let Some(read) = tls.read_ahead(buf) {
                return read;
            }
        }
        self.bounded(|stream| stream.read(buf))
    }
}

impl Write for StreamUntil<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.bounded(|stream| stream.write(buf))
    }

    /// For TLS, puts every pending record on the socket (rustls may hold some back).
    fn flush(&mut self) -> io::Result<()> {
        self.bounded(|stream| stream.flush())
    }
}

/// The TCP socket with each read and write allowed only the time left until `deadline`,
/// and at most `progress`, when given.
struct SocketUntil<'a> {
    tcp: &'a TcpStream,
    deadline: Instant,
    progress: Option<Duration>,
}

impl SocketUntil<'_> {
    /// The socket time-out for the next read or write. Past the deadline, what has
    /// already arrived (or fits the send buffer) still counts: a reply that came in time
    /// is not lost to the moment it is read at; nothing more is waited for.
    fn time_left(&self) -> Duration {
        const ALREADY_THERE: Duration = Duration::from_micros(1);
        let left = self.deadline.saturating_duration_since(Instant::now());
        self.progress
            .map_or(left, |each| left.min(each))
            .max(ALREADY_THERE)
    }
}

/// A blocking socket's time-out is `WouldBlock` on Unix (`TimedOut` on Windows); rustls
/// takes `WouldBlock` for a non-blocking socket, so it must not see one.
fn as_timed_out(error: io::Error) -> io::Error {
    if error.kind() == io::ErrorKind::WouldBlock {
        io::Error::from(io::ErrorKind::TimedOut)
    } else {
        error
    }
}

impl Read for SocketUntil<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.tcp.set_read_timeout(Some(self.time_left()))?;
        self.tcp.read(buf).map_err(as_timed_out)
    }
}

impl Write for SocketUntil<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.tcp.set_write_timeout(Some(self.time_left()))?;
        self.tcp.write(buf).map_err(as_timed_out)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// True when a 7-byte reply header is in fact the start of a TLS alert record: a plain
/// client talking to a TLS server gets this, then the close.
pub fn looks_like_tls_alert(head: &[u8]) -> bool {
    matches!(head, [0x15, 0x03, 0x00..=0x04, 0x00, 0x02, ..])
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Each socket read or write gets the time left until the deadline, and no more than
    /// the progress limit when there is one; past the deadline, only what is already there.
    #[test]
    fn each_socket_call_has_at_most_the_progress_limit() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let tcp = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let now = Instant::now();
        let socket = |deadline, progress| SocketUntil {
            tcp: &tcp,
            deadline,
            progress,
        };
        let far = now + Duration::from_secs(100);
        assert!(socket(far, None).time_left() > Duration::from_secs(99));
        let second = Duration::from_secs(1);
        assert_eq!(socket(far, Some(second)).time_left(), second);
        let near = socket(now + Duration::from_millis(300), Some(second)).time_left();
        assert!(near <= Duration::from_millis(300), "{near:?}");
        let past = socket(now, Some(second)).time_left();
        assert_eq!(past, Duration::from_micros(1));
    }

    /// The far end of a TLS session: a server holding a self-signed certificate for
    /// localhost, whose every `send` goes out as one record.
    struct TlsPeer {
        stream: StreamOwned<rustls::ServerConnection, TcpStream>,
    }

    impl TlsPeer {
        fn send(&mut self, plaintext: &[u8]) {
            self.stream.write_all(plaintext).unwrap();
            self.stream.flush().unwrap();
        }
    }

    /// A client [`Stream`] after its handshake with a [`TlsPeer`] (whose side of the
    /// handshake ran on a thread of its own).
    fn tls_session() -> (Stream, TlsPeer) {
        let dir = tempfile::tempdir().unwrap();
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(vec!["localhost".to_owned()]).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let cert = params.self_signed(&key).unwrap();
        let ca_file = dir.path().join("server.crt");
        std::fs::write(&ca_file, cert.pem()).unwrap();
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let server_config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(
                vec![cert.der().clone()],
                rustls::pki_types::PrivateKeyDer::try_from(key.serialize_der()).unwrap(),
            )
            .unwrap();
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let peer = std::thread::spawn(move || {
            let (tcp, _) = listener.accept().unwrap();
            let conn = rustls::ServerConnection::new(Arc::new(server_config)).unwrap();
            let mut stream = StreamOwned::new(conn, tcp);
            while stream.conn.is_handshaking() {
                stream.conn.complete_io(&mut stream.sock).unwrap();
            }
            TlsPeer { stream }
        });
        let address = ServerAddress::parse(&format!("localhost:{port}")).unwrap();
        let tls = setup(&address, Some(&ca_file), &[]).unwrap();
        let tcp = TcpStream::connect(("127.0.0.1", port)).unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        let stream = Stream::handshake(tcp, &tls, deadline).unwrap();
        (stream, peer.join().unwrap())
    }

    /// A reply the client skips (1604) and a refusal (1607).
    fn stray_and_refusal() -> (Vec<u8>, Vec<u8>) {
        let client_id = sfc_proto::ClientId([4; 16]);
        let stray = sfc_proto::Response::PacketReceived { client_id }.encode();
        (stray, sfc_proto::Response::ServerError.encode())
    }

    /// Polls [`Stream::refusal_waiting`] until it says yes (true) or 5 s pass (false).
    fn refusal_seen(stream: &mut Stream) -> bool {
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if stream.refusal_waiting().unwrap() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        false
    }

    /// A 1607 behind a stray reply, in a record of its own, is seen during the send;
    /// what was looked at is then read whole and in order, by every kind of read, and
    /// only then the close that followed it.
    #[test]
    fn over_tls_a_refusal_behind_a_stray_reply_is_seen_and_nothing_is_lost() {
        let (mut stream, mut peer) = tls_session();
        let (stray, refusal) = stray_and_refusal();
        peer.send(&stray);
        peer.send(&refusal);
        peer.stream.conn.send_close_notify();
        peer.stream.flush().unwrap();
        assert!(refusal_seen(&mut stream));
        assert!(!stream.peer_closed(), "a reply kept aside is still to read");
        let mut first = vec![0u8; stray.len()];
        stream.read_exact(&mut first).unwrap();
        assert_eq!(first, stray);
        let mut then = vec![0u8; refusal.len()];
        let deadline = Instant::now() + Duration::from_secs(5);
        stream.until(deadline).read_exact(&mut then).unwrap();
        assert_eq!(then, refusal);
        assert_eq!(stream.read(&mut [0u8; 16]).unwrap(), 0, "then the close");
        assert!(stream.peer_closed());
    }

    /// A 1607 split over two records (as a TLS proxy may send it) is seen once both have
    /// arrived; what arrived is then taken whole by `take_arrived`.
    #[test]
    fn over_tls_a_refusal_split_over_records_is_seen() {
        let (mut stream, mut peer) = tls_session();
        let (stray, refusal) = stray_and_refusal();
        let (head, tail) = refusal.split_at(3);
        peer.send(&[stray.as_slice(), head].concat());
        peer.send(tail);
        assert!(refusal_seen(&mut stream));
        assert_eq!(
            stream.take_arrived(usize::MAX),
            [stray.as_slice(), &refusal].concat()
        );
        peer.stream.conn.send_close_notify();
        peer.stream.flush().unwrap();
        let deadline = Instant::now() + Duration::from_secs(5);
        while !stream.peer_closed() {
            assert!(Instant::now() < deadline, "the close is seen");
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    #[test]
    fn tls_alerts_are_recognised() {
        assert!(looks_like_tls_alert(&[0x15, 3, 3, 0, 2, 2, 50]));
        assert!(looks_like_tls_alert(&[0x15, 3, 1, 0, 2, 2, 10]));
        // Real replies (version 3, codes 1600-1607) never start that way.
        assert!(!looks_like_tls_alert(&[3, 0x40, 0x06, 16, 0, 0, 0]));
        assert!(!looks_like_tls_alert(&[0x15, 3]));
    }

    #[test]
    fn server_names_follow_the_server_address() {
        let name = |text: &str| {
            server_name(&ServerAddress::parse(text).unwrap())
                .unwrap()
                .to_str()
                .into_owned()
        };
        assert_eq!(name("127.0.0.1:1256"), "127.0.0.1");
        assert_eq!(name("[::1]:1256"), "::1");
        assert_eq!(name("files.example.org.:1256"), "files.example.org");
    }

    #[test]
    fn a_bad_ca_file_is_a_clear_input_error() {
        let dir = tempfile::tempdir().unwrap();
        let server = ServerAddress::parse("127.0.0.1:1").unwrap();
        let missing = dir.path().join("none.pem");
        let e = setup(&server, Some(&missing), &[]).unwrap_err();
        assert!(e.to_string().starts_with("--tls-ca: cannot read"), "{e}");
        let garbage = dir.path().join("garbage.pem");
        std::fs::write(&garbage, "hello\n").unwrap();
        let e = setup(&server, Some(&garbage), &[]).unwrap_err();
        assert!(e.to_string().contains("holds no certificate"), "{e}");
    }
}
