//! Sending one file: read → cksum + AES-CBC encrypt → 828 packets, as a stream.
//!
//! Memory does not grow with the file: the file is read in [`READ_CHUNK`] pieces (into a
//! few reused buffers), each piece is fed to the checksum and the encryptor, and each
//! packet's ciphertext is written straight behind its 290-byte prefix. In persistent mode
//! a reader thread reads and checksums, this thread encrypts packets into one of two
//! reused buffers of about [`BATCH`] bytes and a writer thread writes the other with one
//! `write_all`; in per-request mode each packet is one request on its own connection and
//! its reply is read (client rule 1). The file is opened and read again for every send.
//!
//! Packet size (client rule 2): [`DEFAULT_PACKET_CONTENT`] bytes, which every known server
//! accepts, raised only as far as needed to stay within [`MAX_PACKETS`] packets; or what
//! the user asks for with `--packet-size`.

use std::fs::File;
use std::io::{self, Read, Write};
use std::path::Path;
use std::sync::mpsc;

use sfc_crypto::{AesKey, CbcEncryptor, Cksum, AES_BLOCK_LEN};
use sfc_proto::limits::{
    DEFAULT_PACKET_CONTENT, FILE_PACKET_FIXED_LEN, MAX_ORIG_FILE_SIZE, MAX_PACKETS,
    REQUEST_HEADER_LEN,
};
use sfc_proto::{
    encrypted_size, ClientId, FilePacketHeader, Name, Request, RequestBody, RequestCode, Response,
};

use crate::config::FileToSend;
use crate::connection::{unexpected, Connection, Failure, Mode};
use crate::error::ClientError;
use crate::progress::{Reporter, Verbosity};
use crate::tls::Stream;

/// Plaintext bytes read from the file at a time.
pub const READ_CHUNK: usize = 1 << 20;
/// Bytes of packets gathered before one write in persistent mode.
pub const BATCH: usize = 1 << 20;
/// Largest content size `--packet-size` accepts (buffers hold at least one packet).
pub const MAX_REQUESTED_PACKET_CONTENT: usize = 16 << 20;
/// Bytes before each packet's content: request header and 828 fixed part.
pub const PACKET_PREFIX_LEN: usize = REQUEST_HEADER_LEN + FILE_PACKET_FIXED_LEN;

/// How a file of a given size is cut into packets.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Plan {
    /// Plaintext size.
    pub orig_size: u32,
    /// Ciphertext size, sent as `content_size` in every packet (client rule 3).
    pub encrypted_size: u32,
    /// Content bytes per packet (the last one may be shorter).
    pub packet_content: usize,
    /// Number of packets.
    pub total_packets: u16,
}

/// Chooses the content size per packet for `encrypted` ciphertext bytes (client rule 2).
pub fn choose_packet_size(encrypted: u64, requested: Option<usize>) -> Result<usize, String> {
    let max_packets = u64::from(MAX_PACKETS);
    match requested {
        Some(0) => Err("--packet-size must be at least 1".to_owned()),
        Some(size) if size > MAX_REQUESTED_PACKET_CONTENT => Err(format!(
            "--packet-size {size} is too large; at most {MAX_REQUESTED_PACKET_CONTENT} bytes"
        )),
        Some(size) => {
            let packets = encrypted.div_ceil(size as u64);
            if packets > max_packets {
                Err(format!(
                    "--packet-size {size} would cut the {encrypted}-byte ciphertext into {packets} \
                     packets, more than the {max_packets} the protocol allows; use at least {}",
                    encrypted.div_ceil(max_packets)
                ))
            } else {
                Ok(size)
            }
        }
        None => {
            let needed = encrypted.div_ceil(max_packets);
            if needed <= DEFAULT_PACKET_CONTENT as u64 {
                Ok(DEFAULT_PACKET_CONTENT)
            } else {
                // Round up to whole AES blocks; still within the limit since it only grows.
                usize::try_from(needed.div_ceil(16) * 16)
                    .map_err(|_| "the file is too large for this machine".to_owned())
            }
        }
    }
}

/// Plans the upload of a file of `size` plaintext bytes; refuses sizes the protocol
/// cannot carry (content_size must fit in 32 bits).
pub fn plan(size: u64, requested: Option<usize>) -> Result<Plan, String> {
    if size > u64::from(MAX_ORIG_FILE_SIZE) {
        return Err(format!(
            "is {size} bytes; the protocol carries at most {MAX_ORIG_FILE_SIZE} bytes per file \
             (the encrypted size must fit in 32 bits)"
        ));
    }
    let encrypted = encrypted_size(size);
    let packet_content = choose_packet_size(encrypted, requested)?;
    let total = encrypted.div_ceil(packet_content as u64);
    Ok(Plan {
        orig_size: u32::try_from(size).map_err(|_| "too large".to_owned())?,
        encrypted_size: u32::try_from(encrypted).map_err(|_| "too large".to_owned())?,
        packet_content,
        total_packets: u16::try_from(total).map_err(|_| "too many packets".to_owned())?,
    })
}

/// What the server said about one complete send.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// The final 1603: the server's checksum, and ours.
    Received {
        /// The server's cksum of the decrypted file.
        server_cksum: u32,
        /// Our cksum of what we read.
        our_cksum: u32,
    },
    /// 1607 to a request of this send.
    ServerError {
        /// The request answered with 1607, e.g. `828 (file packet)`.
        request: String,
    },
}

/// Why a send did not complete.
#[derive(Debug)]
pub enum AttemptError {
    /// In persistent mode, the server had closed the connection after its last reply: the
    /// caller switches to per-request mode and sends again.
    Gone,
    /// Anything else: reported to the user.
    Fatal(ClientError),
}

impl From<ClientError> for AttemptError {
    fn from(e: ClientError) -> Self {
        AttemptError::Fatal(e)
    }
}

/// Spare room behind a packet's content in an output buffer: CBC may write up to a block
/// past the packet's end (it is carried into the next packet) and `update_into` wants 15
/// bytes more than its input.
const SLACK: usize = 4 * AES_BLOCK_LEN;

/// Plaintext buffers per send with a reader thread: the one being encrypted and the ones
/// the reader fills meanwhile (memory stays at this many [`READ_CHUNK`]s).
const READ_BUFFERS: usize = 4;

/// Room one packet needs in an output buffer.
fn packet_room(plan: &Plan) -> usize {
    PACKET_PREFIX_LEN + plan.packet_content + SLACK
}

/// Reads the planned number of bytes of a file, in chunks, and checksums them.
struct FileReader<'a> {
    file: File,
    path: &'a Path,
    cksum: Cksum,
    remaining: u64,
    expected: u32,
}

impl FileReader<'_> {
    /// Fills the start of `buf` with the next bytes of the file (as many as fit and are
    /// planned) and returns how many; 0 once the planned size is read.
    fn read_chunk(&mut self, buf: &mut [u8]) -> Result<usize, ClientError> {
        let n = self.remaining.min(buf.len() as u64) as usize;
        let chunk = buf.get_mut(..n).unwrap_or_default();
        read_full(&mut self.file, chunk).map_err(|e| {
            if e.kind() == io::ErrorKind::UnexpectedEof {
                file_error(
                    self.path,
                    format!(
                        "became shorter while being sent (expected {} bytes)",
                        self.expected
                    ),
                )
            } else {
                file_error(self.path, format!("read failed: {e}"))
            }
        })?;
        self.cksum.update(chunk);
        self.remaining -= n as u64;
        Ok(n)
    }
}

/// A filled plaintext buffer from the reader thread, and how many bytes of it count.
type Chunk = Result<(Vec<u8>, usize), ClientError>;

/// The encrypting side's ends of the channels to a reader thread.
struct ReaderFeed {
    /// Filled buffers (or the reader's error), in file order.
    full: mpsc::Receiver<Chunk>,
    /// Buffers handed back to be filled again.
    free: mpsc::Sender<Vec<u8>>,
}

/// Turns a file into its packets: reads and checksums it (in this thread, or on a reader
/// thread that hands over filled buffers), encrypts each packet's content straight behind
/// its 290-byte prefix, and numbers the packets.
struct PacketSource<'a> {
    /// The file; `None` while a reader thread has it.
    reader: Option<FileReader<'a>>,
    /// The reader thread's channels while it runs.
    feed: Option<ReaderFeed>,
    /// Plaintext being encrypted: `chunk[chunk_pos..chunk_len]` is still to go.
    chunk: &'a mut Vec<u8>,
    chunk_pos: usize,
    chunk_len: usize,
    /// Further plaintext buffers for a reader thread, kept between sends.
    pool: &'a mut Vec<Vec<u8>>,
    encryptor: Option<CbcEncryptor>,
    /// Plaintext bytes given to the encryptor so far.
    plain_fed: u64,
    /// Ciphertext made beyond the end of the previous packet (CBC works in whole blocks,
    /// packets need not): it opens the next packet.
    carry: [u8; AES_BLOCK_LEN],
    carry_len: usize,
    header: FilePacketHeader,
    client_id: ClientId,
    plan: Plan,
    /// Ciphertext bytes in the packets made so far.
    sent: u64,
}

/// One packet appended by [`PacketSource::next_into`].
#[derive(Clone, Copy, Debug)]
struct PacketInfo {
    number: u16,
    content_len: usize,
    last: bool,
}

fn file_error(path: &Path, reason: impl Into<String>) -> ClientError {
    ClientError::File {
        path: path.to_owned(),
        reason: reason.into(),
    }
}

fn crypto_error(e: sfc_crypto::CryptoError) -> ClientError {
    ClientError::Internal(format!("encryption failed: {e}"))
}

fn buffer_error() -> ClientError {
    ClientError::Internal("packet buffer too small".to_owned())
}

impl<'a> PacketSource<'a> {
    #[allow(clippy::too_many_arguments)]
    fn open(
        path: &'a Path,
        label: &Name,
        client_id: ClientId,
        key: &AesKey,
        plan: Plan,
        chunk: &'a mut Vec<u8>,
        pool: &'a mut Vec<Vec<u8>>,
    ) -> Result<Self, ClientError> {
        let file =
            File::open(path).map_err(|e| file_error(path, format!("cannot be opened: {e}")))?;
        if chunk.len() != READ_CHUNK {
            chunk.resize(READ_CHUNK, 0);
        }
        Ok(PacketSource {
            reader: Some(FileReader {
                file,
                path,
                cksum: Cksum::new(),
                remaining: u64::from(plan.orig_size),
                expected: plan.orig_size,
            }),
            feed: None,
            chunk,
            chunk_pos: 0,
            chunk_len: 0,
            pool,
            encryptor: Some(CbcEncryptor::new(key).map_err(crypto_error)?),
            plain_fed: 0,
            carry: [0; AES_BLOCK_LEN],
            carry_len: 0,
            header: FilePacketHeader {
                content_size: plan.encrypted_size,
                orig_file_size: plan.orig_size,
                packet_number: 1,
                total_packets: plan.total_packets,
                file_name: label.clone(),
            },
            client_id,
            plan,
            sent: 0,
        })
    }

    /// Makes the next plaintext available in `chunk`: from the reader thread when one
    /// runs (handing the used buffer back to it), else read here.
    fn next_chunk(&mut self) -> Result<(), ClientError> {
        let n = if let Some(feed) = &self.feed {
            let (mut buf, n) = feed.full.recv().map_err(|_| {
                ClientError::Internal("the file reader thread stopped early".to_owned())
            })??;
            std::mem::swap(self.chunk, &mut buf);
            // The reader may have stopped on an error already; the buffer is then dropped.
            let _ = feed.free.send(buf);
            n
        } else if let Some(reader) = self.reader.as_mut() {
            reader.read_chunk(self.chunk)?
        } else {
            return Err(ClientError::Internal("the file is not open".to_owned()));
        };
        if n == 0 || n > self.chunk.len() {
            return Err(ClientError::Internal(format!(
                "the file reader returned {n} bytes before the planned end"
            )));
        }
        self.chunk_pos = 0;
        self.chunk_len = n;
        Ok(())
    }

    /// Writes the next packet (290-byte prefix, then content) into `out` at `*filled` and
    /// advances `*filled` past it; `None` when done. `out` needs [`packet_room`] bytes
    /// from `*filled` on; what lies there is overwritten, it need not be zeroed.
    fn next_packet(
        &mut self,
        out: &mut [u8],
        filled: &mut usize,
    ) -> Result<Option<PacketInfo>, ClientError> {
        let total = u64::from(self.plan.encrypted_size);
        if self.sent >= total {
            return Ok(None);
        }
        let number = self.header.packet_number;
        if number > self.plan.total_packets || number == 0 {
            return Err(ClientError::Internal(format!(
                "packet {number} exceeds the planned {} packets",
                self.plan.total_packets
            )));
        }
        let len = (total - self.sent).min(self.plan.packet_content as u64) as usize;
        let last = self.sent + len as u64 == total;
        if last != (number == self.plan.total_packets) {
            return Err(ClientError::Internal(format!(
                "the {total}-byte ciphertext does not make the planned {} packets",
                self.plan.total_packets
            )));
        }
        let start = *filled;
        let content_start = start + PACKET_PREFIX_LEN;
        let end = content_start + len;
        if out.len() < end + SLACK {
            return Err(buffer_error());
        }
        let content_len =
            u32::try_from(len).map_err(|_| ClientError::Internal("packet too large".to_owned()))?;
        out.get_mut(start..content_start)
            .ok_or_else(buffer_error)?
            .copy_from_slice(&self.header.encode_prefix(self.client_id, content_len));

        // Ciphertext left over from the previous packet comes first.
        let mut pos = content_start;
        let take = self.carry_len.min(len);
        out.get_mut(pos..pos + take)
            .ok_or_else(buffer_error)?
            .copy_from_slice(self.carry.get(..take).unwrap_or_default());
        self.carry.copy_within(take..self.carry_len, 0);
        self.carry_len -= take;
        pos += take;

        // Then encrypt just enough plaintext to reach the packet's end: whole blocks, so
        // up to the block boundary at or after it (or all of the file for the last one).
        let orig = u64::from(self.plan.orig_size);
        let target = if last {
            orig
        } else {
            orig.min((self.sent + len as u64).div_ceil(AES_BLOCK_LEN as u64) * AES_BLOCK_LEN as u64)
        };
        while self.plain_fed < target {
            if self.chunk_pos >= self.chunk_len {
                self.next_chunk()?;
            }
            let want = usize::try_from(target - self.plain_fed).unwrap_or(usize::MAX);
            let n = want.min(self.chunk_len - self.chunk_pos);
            let input = self
                .chunk
                .get(self.chunk_pos..self.chunk_pos + n)
                .ok_or_else(buffer_error)?;
            let encryptor = self
                .encryptor
                .as_mut()
                .ok_or_else(|| ClientError::Internal("encryption already finished".to_owned()))?;
            let tail = out.get_mut(pos..).unwrap_or_default();
            pos += encryptor.update_into(input, tail).map_err(crypto_error)?;
            self.chunk_pos += n;
            self.plain_fed += n as u64;
        }
        if pos < end && self.plain_fed == orig {
            // All plaintext is in: the final padded block completes the ciphertext.
            if let Some(encryptor) = self.encryptor.take() {
                let mut block = Vec::with_capacity(AES_BLOCK_LEN);
                encryptor.finish(&mut block).map_err(crypto_error)?;
                out.get_mut(pos..pos + block.len())
                    .ok_or_else(buffer_error)?
                    .copy_from_slice(&block);
                pos += block.len();
            }
        }
        if pos < end {
            return Err(ClientError::Internal(format!(
                "ciphertext shorter than the planned {} bytes",
                self.plan.encrypted_size
            )));
        }
        // Whatever lies beyond the packet's end opens the next one.
        let excess = out.get(end..pos).ok_or_else(buffer_error)?;
        self.carry
            .get_mut(..excess.len())
            .ok_or_else(buffer_error)?
            .copy_from_slice(excess);
        self.carry_len = excess.len();
        if last && (self.encryptor.is_some() || self.carry_len != 0) {
            return Err(ClientError::Internal(format!(
                "ciphertext longer than the planned {} bytes",
                self.plan.encrypted_size
            )));
        }
        self.sent += len as u64;
        self.header.packet_number = number.wrapping_add(1);
        *filled = end;
        Ok(Some(PacketInfo {
            number,
            content_len: len,
            last,
        }))
    }

    /// Appends the next packet (290-byte prefix, then content) to `out`; `None` when done.
    fn next_into(&mut self, out: &mut Vec<u8>) -> Result<Option<PacketInfo>, ClientError> {
        let start = out.len();
        out.resize(start + packet_room(&self.plan), 0);
        let mut filled = start;
        let result = self.next_packet(out, &mut filled);
        out.truncate(filled);
        result
    }

    /// The cksum of what was read (complete once the last packet is made).
    fn checksum(&self) -> u32 {
        self.reader
            .as_ref()
            .map_or(0, |reader| reader.cksum.finish())
    }
}

/// Reads exactly `buf.len()` bytes (UnexpectedEof if the file ends first).
fn read_full(file: &mut File, buf: &mut [u8]) -> io::Result<()> {
    file.read_exact(buf)
}

/// Reusable buffers for sending files.
#[derive(Debug, Default)]
pub struct Uploader {
    chunk: Vec<u8>,
    pool: Vec<Vec<u8>>,
    out: Vec<u8>,
    spare: Vec<u8>,
}

/// What one send needs to know.
#[derive(Debug)]
pub struct SendParams<'a> {
    /// The file.
    pub file: &'a FileToSend,
    /// Its plan.
    pub plan: Plan,
    /// Our client ID.
    pub client_id: ClientId,
    /// The session's AES key.
    pub key: &'a AesKey,
    /// True to announce the send with 901 (a resend after a mismatch).
    pub announce_resend: bool,
}

impl Uploader {
    /// New, empty buffers (they grow to about 6 MiB on first use: 4 plaintext chunks and
    /// 2 batches).
    pub fn new() -> Self {
        Self::default()
    }

    /// Sends the file once (with a 901 first when `announce_resend`) and returns the
    /// server's verdict.
    pub fn send_once(
        &mut self,
        conn: &mut Connection,
        reporter: &Reporter,
        params: &SendParams<'_>,
    ) -> Result<Outcome, AttemptError> {
        let fresh = conn.prepare().map_err(ClientError::from)?;
        let resend = params.announce_resend.then(|| {
            Request::new(
                params.client_id,
                RequestBody::ChecksumRetry {
                    file_name: params.file.label.clone(),
                },
            )
            .encode()
        });
        reporter.detail(
            Verbosity::Verbose,
            format!(
                "-> {} x {} packet(s) of up to {} B content, {} B ciphertext of {} B",
                RequestCode::SendFile.described(),
                params.plan.total_packets,
                params.plan.packet_content,
                params.plan.encrypted_size,
                params.plan.orig_size
            ),
        );
        let Uploader {
            chunk,
            pool,
            out,
            spare,
        } = self;
        let mut source = PacketSource::open(
            &params.file.path,
            &params.file.label,
            params.client_id,
            params.key,
            params.plan,
            chunk,
            pool,
        )?;
        match conn.mode() {
            Mode::Persistent => send_persistent(
                conn,
                reporter,
                &mut source,
                (out, spare),
                resend.as_deref(),
                fresh,
            ),
            Mode::PerRequest => {
                send_per_request(conn, reporter, &mut source, out, resend.as_deref())
            }
        }
    }
}

fn trace_packet(reporter: &Reporter, info: &PacketInfo, total: u16) {
    if reporter.shows(Verbosity::Trace) {
        reporter.detail(
            Verbosity::Trace,
            format!(
                "-> 828 packet {}/{total}, content {} B, payload {} B",
                info.number,
                info.content_len,
                info.content_len + FILE_PACKET_FIXED_LEN
            ),
        );
    }
}

fn send_persistent(
    conn: &mut Connection,
    reporter: &Reporter,
    source: &mut PacketSource<'_>,
    (out, spare): (&mut Vec<u8>, &mut Vec<u8>),
    resend: Option<&[u8]>,
    fresh: bool,
) -> Result<Outcome, AttemptError> {
    let what = RequestCode::SendFile.described().to_string();
    let on_failure = |conn: &mut Connection, failure: Failure, what: &str| match failure {
        Failure::Gone { .. } if !fresh => AttemptError::Gone,
        other => AttemptError::Fatal(conn.error(other, what)),
    };
    if let Some(bytes) = resend {
        // No reply expected on a connection that has carried requests (server rule 2);
        // a stray 1604 some servers send anyway is skipped below (client rule 5).
        conn.log_request(bytes);
    }
    let Some(stream) = conn.stream_mut() else {
        return Err(on_failure(
            conn,
            Failure::Gone {
                phase: "sending",
                error: io::Error::from(io::ErrorKind::NotConnected),
            },
            &what,
        ));
    };
    match write_pipelined(stream, reporter, source, out, spare, resend) {
        Ok(()) => {}
        Err(PipeError::Source(e)) => {
            // The stream carries a partial request now: it cannot be used again.
            conn.close();
            return Err(AttemptError::Fatal(e));
        }
        Err(PipeError::Write(error)) => {
            let failure = conn.write_failed(error);
            return Err(on_failure(conn, failure, &what));
        }
    }
    let our_cksum = source.checksum();
    // The final 1603; skip strays (1604 after 901, 1603 for intermediate packets from a
    // server that answers them anyway), but not forever.
    let mut strays = 0u32;
    let stray_limit = u32::from(source.plan.total_packets) + 2;
    loop {
        let response = match conn.read_reply() {
            Ok(r) => r,
            Err(failure) => return Err(on_failure(conn, failure, &what)),
        };
        conn.replied(&response);
        match response {
            Response::FileReceived {
                client_id,
                content_size,
                file_name,
                cksum,
            } => {
                check_received(conn, reporter, source, client_id, content_size, &file_name);
                return Ok(Outcome::Received {
                    server_cksum: cksum,
                    our_cksum,
                });
            }
            Response::PacketReceived { .. } | Response::Ack { .. } if strays < stray_limit => {
                strays += 1;
                reporter.detail(
                    Verbosity::Verbose,
                    format!(
                        "   skipped a stray {} while waiting for the file's checksum",
                        response.code().described()
                    ),
                );
            }
            Response::ServerError => {
                // A server may have answered an intermediate packet with this 1607 and
                // queued more replies (one per later packet) behind it: they would be
                // taken for replies to the retry. Drop the connection with them; the
                // retry starts on a fresh one (state lives per client ID, not connection).
                conn.close();
                return Ok(Outcome::ServerError { request: what });
            }
            other => {
                return Err(AttemptError::Fatal(unexpected(
                    conn,
                    RequestCode::SendFile,
                    &other,
                    "1603 (file received)",
                )))
            }
        }
    }
}

fn send_per_request(
    conn: &mut Connection,
    reporter: &Reporter,
    source: &mut PacketSource<'_>,
    out: &mut Vec<u8>,
    resend: Option<&[u8]>,
) -> Result<Outcome, AttemptError> {
    if let Some(bytes) = resend {
        match conn.round_trip(bytes)? {
            Response::Ack { .. } => {}
            Response::ServerError => {
                return Ok(Outcome::ServerError {
                    request: RequestCode::ChecksumRetry.described().to_string(),
                })
            }
            other => {
                return Err(AttemptError::Fatal(unexpected(
                    conn,
                    RequestCode::ChecksumRetry,
                    &other,
                    "1604 (acknowledged)",
                )))
            }
        }
    }
    let total = source.plan.total_packets;
    loop {
        out.clear();
        let Some(info) = source.next_into(out)? else {
            return Err(AttemptError::Fatal(ClientError::Internal(
                "the file ended before its last packet".to_owned(),
            )));
        };
        trace_packet(reporter, &info, total);
        let response = conn.round_trip(out)?;
        reporter.set_progress(source.sent);
        match (info.last, response) {
            (
                true,
                Response::FileReceived {
                    client_id,
                    content_size,
                    file_name,
                    cksum,
                },
            ) => {
                check_received(conn, reporter, source, client_id, content_size, &file_name);
                return Ok(Outcome::Received {
                    server_cksum: cksum,
                    our_cksum: source.checksum(),
                });
            }
            (false, Response::PacketReceived { .. } | Response::FileReceived { .. }) => {}
            (_, Response::ServerError) => {
                return Ok(Outcome::ServerError {
                    request: RequestCode::SendFile.described().to_string(),
                })
            }
            (last, other) => {
                return Err(AttemptError::Fatal(unexpected(
                    conn,
                    RequestCode::SendFile,
                    &other,
                    if last {
                        "1603 (file received) with the checksum"
                    } else {
                        "1603 (packet received)"
                    },
                )))
            }
        }
    }
}

/// Why [`write_pipelined`] stopped.
enum PipeError {
    /// Reading or encrypting the file failed.
    Source(ClientError),
    /// Writing to the connection failed.
    Write(io::Error),
}

/// Writes the file's packets (after `resend`, a 901, if given) to `stream` with three
/// threads: a reader thread reads and checksums the file into a few reused
/// [`READ_CHUNK`] buffers; this thread encrypts each packet straight behind its prefix
/// into batches of about [`BATCH`] bytes; a writer thread writes the previous batch. The
/// two batch buffers are initialised once and handed back for the next send, as are the
/// plaintext buffers (in the source's pool).
fn write_pipelined(
    stream: &mut Stream,
    reporter: &Reporter,
    source: &mut PacketSource<'_>,
    first: &mut Vec<u8>,
    second: &mut Vec<u8>,
    resend: Option<&[u8]>,
) -> Result<(), PipeError> {
    let head = resend.map_or(0, <[u8]>::len);
    let capacity = BATCH + head + packet_room(&source.plan);
    let total = source.plan.total_packets;
    let mut batch = std::mem::take(first);
    let mut spare = Some(std::mem::take(second));
    for buf in [Some(&mut batch), spare.as_mut()].into_iter().flatten() {
        if buf.len() < capacity {
            buf.resize(capacity, 0);
        }
    }
    let Some(reader) = source.reader.take() else {
        return Err(PipeError::Source(ClientError::Internal(
            "the file is not open".to_owned(),
        )));
    };
    let (produced, written, read, returned) = std::thread::scope(|scope| {
        // Reader thread: fills free buffers, in file order, until the planned size is read.
        let (chunk_tx, chunk_rx) = mpsc::sync_channel::<Chunk>(READ_BUFFERS);
        let (free_tx, free_rx) = mpsc::channel::<Vec<u8>>();
        source.pool.resize_with(READ_BUFFERS - 1, Vec::new);
        for buf in source.pool.drain(..) {
            let _ = free_tx.send(buf);
        }
        let mut reader = reader;
        let reading = scope.spawn(move || {
            while reader.remaining > 0 {
                let Ok(mut buf) = free_rx.recv() else {
                    break;
                };
                if buf.len() != READ_CHUNK {
                    buf.resize(READ_CHUNK, 0);
                }
                let chunk = reader.read_chunk(&mut buf).map(|n| (buf, n));
                let failed = chunk.is_err();
                if chunk_tx.send(chunk).is_err() || failed {
                    break;
                }
            }
            (reader, free_rx)
        });
        source.feed = Some(ReaderFeed {
            full: chunk_rx,
            free: free_tx,
        });

        // Writer thread: writes full batches and hands the buffers back.
        let (full_tx, full_rx) = mpsc::sync_channel::<(Vec<u8>, usize)>(0);
        let (empty_tx, empty_rx) = mpsc::channel::<Vec<u8>>();
        let writer = scope.spawn(move || -> io::Result<()> {
            for (buf, len) in full_rx {
                stream.write_all(buf.get(..len).unwrap_or_default())?;
                if empty_tx.send(buf).is_err() {
                    break;
                }
            }
            Ok(())
        });

        // This thread: prefixes and encryption.
        let mut produce = || -> Result<(), ClientError> {
            let mut filled = 0;
            if let Some(bytes) = resend {
                batch
                    .get_mut(..bytes.len())
                    .ok_or_else(buffer_error)?
                    .copy_from_slice(bytes);
                filled = bytes.len();
            }
            while let Some(info) = source.next_packet(&mut batch, &mut filled)? {
                trace_packet(reporter, &info, total);
                if filled >= BATCH || info.last {
                    let next = match spare.take() {
                        Some(buf) => buf,
                        // The writer hands every buffer back unless it failed.
                        None => match empty_rx.recv() {
                            Ok(buf) => buf,
                            Err(_) => return Ok(()),
                        },
                    };
                    let full = std::mem::replace(&mut batch, next);
                    if full_tx.send((full, filled)).is_err() {
                        // The writer stopped on an error; it is reported below.
                        return Ok(());
                    }
                    filled = 0;
                    reporter.set_progress(source.sent);
                }
            }
            Ok(())
        };
        let produced = produce();
        drop(full_tx);
        let written = writer.join();
        let mut returned: Vec<Vec<u8>> = empty_rx.try_iter().collect();

        // Stop the reader (it has finished unless something failed) and take back the
        // plaintext buffers it holds or had queued.
        if let Some(feed) = source.feed.take() {
            for (buf, _) in feed.full.try_iter().flatten() {
                source.pool.push(buf);
            }
            drop(feed);
        }
        let read = reading.join().map(|(reader, free_rx)| {
            source.pool.extend(free_rx.try_iter());
            reader
        });
        source.pool.truncate(READ_BUFFERS - 1);
        returned.truncate(1);
        (produced, written, read, returned)
    });
    // Keep the buffers for the next send.
    *first = batch;
    if let Some(buf) = spare.or_else(|| returned.into_iter().next()) {
        *second = buf;
    }
    let read_ok = match read {
        Ok(reader) => {
            source.reader = Some(reader);
            true
        }
        Err(_) => false,
    };
    match (produced, written) {
        (_, Ok(Err(error))) => Err(PipeError::Write(error)),
        (Err(e), _) => Err(PipeError::Source(e)),
        (Ok(()), Ok(Ok(()))) if read_ok => Ok(()),
        (Ok(()), Ok(Ok(()))) => Err(PipeError::Source(ClientError::Internal(
            "the file reader thread failed".to_owned(),
        ))),
        (Ok(()), Err(_)) => Err(PipeError::Source(ClientError::Internal(
            "the writer thread failed".to_owned(),
        ))),
    }
}

/// Notes (at verbose level) a final 1603 whose fields differ from what we sent; the
/// checksum comparison decides.
fn check_received(
    conn: &Connection,
    reporter: &Reporter,
    source: &PacketSource<'_>,
    client_id: ClientId,
    content_size: u32,
    file_name: &Name,
) {
    if content_size != source.plan.encrypted_size {
        reporter.detail(
            Verbosity::Verbose,
            format!(
                "   note: {} reports {content_size} B received, we sent {} B",
                conn.server(),
                source.plan.encrypted_size
            ),
        );
    }
    if file_name != &source.header.file_name {
        reporter.detail(
            Verbosity::Verbose,
            format!("   note: the server names the file {file_name:?}"),
        );
    }
    if client_id != source.client_id {
        reporter.detail(
            Verbosity::Verbose,
            format!("   note: the server's reply carries client ID {client_id}"),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use sfc_crypto::CbcDecryptor;
    use sfc_proto::{RequestDecoder, RequestEvent};

    #[test]
    fn default_packet_size_is_raised_only_when_needed() {
        assert_eq!(choose_packet_size(16, None), Ok(2048));
        let limit = 2048 * u64::from(MAX_PACKETS);
        assert_eq!(choose_packet_size(limit, None), Ok(2048));
        assert_eq!(choose_packet_size(limit + 1, None), Ok(2064));
        let largest = encrypted_size(u64::from(MAX_ORIG_FILE_SIZE));
        let size = choose_packet_size(largest, None).unwrap();
        assert_eq!(size % 16, 0);
        assert!(largest.div_ceil(size as u64) <= u64::from(MAX_PACKETS));
        assert!(largest.div_ceil(size as u64 - 16) > u64::from(MAX_PACKETS));
    }

    #[test]
    fn requested_packet_size_is_checked() {
        assert_eq!(choose_packet_size(1000, Some(100)), Ok(100));
        assert_eq!(choose_packet_size(16, Some(1 << 20)), Ok(1 << 20));
        assert!(choose_packet_size(16, Some(0)).is_err());
        let e = choose_packet_size(65_536, Some(1)).unwrap_err();
        assert!(e.contains("at least 2"), "{e}");
        assert!(choose_packet_size(16, Some(MAX_REQUESTED_PACKET_CONTENT + 1)).is_err());
    }

    #[test]
    fn plans_refuse_files_too_large_for_32_bits() {
        let p = plan(0, None).unwrap();
        assert_eq!((p.encrypted_size, p.total_packets), (16, 1));
        let p = plan(17, None).unwrap();
        assert_eq!((p.encrypted_size, p.total_packets), (32, 1));
        let p = plan(4096, Some(1000)).unwrap();
        assert_eq!((p.encrypted_size, p.total_packets), (4112, 5));
        assert!(plan(u64::from(MAX_ORIG_FILE_SIZE), None).is_ok());
        let e = plan(u64::from(MAX_ORIG_FILE_SIZE) + 1, None).unwrap_err();
        assert!(e.contains("32 bits"), "{e}");
    }

    /// Packets produced for a file decode, in order, to its ciphertext; the checksum is
    /// the file's.
    #[test]
    fn packets_carry_the_whole_ciphertext_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let key = AesKey::random();
        for (size, packet) in [
            (0usize, None),
            (1, None),
            (16, Some(16)),
            (5000, Some(1000)),
            (3_000_000, Some(7777)),
        ] {
            let data: Vec<u8> = (0..size).map(|i| (i * 31 % 251) as u8).collect();
            let path = dir.path().join("f.bin");
            std::fs::write(&path, &data).unwrap();
            let p = plan(size as u64, packet).unwrap();
            let (mut read_buf, mut cipher, mut out) = (Vec::new(), Vec::new(), Vec::new());
            let label = Name::new("f.bin").unwrap();
            let mut source = PacketSource::open(
                &path,
                &label,
                ClientId([7; 16]),
                &key,
                p,
                &mut read_buf,
                &mut cipher,
            )
            .unwrap();
            let mut infos = Vec::new();
            while let Some(info) = source.next_into(&mut out).unwrap() {
                infos.push(info);
            }
            assert_eq!(infos.len(), usize::from(p.total_packets));
            assert!(infos.last().unwrap().last);
            assert_eq!(source.checksum(), sfc_crypto::cksum(&data));

            let mut decoder = RequestDecoder::new();
            let mut input = &out[..];
            let mut ciphertext = Vec::new();
            let mut numbers = Vec::new();
            while !input.is_empty() {
                let (used, event) = decoder.decode(input).unwrap();
                input = &input[used..];
                match event {
                    Some(RequestEvent::FilePacket { header, packet, .. }) => {
                        assert_eq!(header.client_id, ClientId([7; 16]));
                        assert_eq!(packet.content_size, p.encrypted_size);
                        assert_eq!(packet.orig_file_size, size as u32);
                        assert_eq!(packet.total_packets, p.total_packets);
                        assert_eq!(packet.file_name.as_str(), "f.bin");
                        numbers.push(packet.packet_number);
                    }
                    Some(RequestEvent::Content(piece)) => ciphertext.extend_from_slice(piece),
                    Some(RequestEvent::FilePacketEnd) | None => {}
                    Some(other) => panic!("unexpected {other:?}"),
                }
            }
            assert_eq!(numbers, (1..=p.total_packets).collect::<Vec<_>>());
            assert_eq!(ciphertext.len() as u32, p.encrypted_size);
            let mut plain = Vec::new();
            let mut dec = CbcDecryptor::new(&key).unwrap();
            dec.update(&ciphertext, &mut plain).unwrap();
            dec.finish(&mut plain).unwrap();
            assert_eq!(plain, data, "size {size}");
        }
    }

    #[test]
    fn a_file_that_shrinks_is_reported() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f.bin");
        std::fs::write(&path, vec![1u8; 100]).unwrap();
        let p = plan(200, None).unwrap();
        let (mut read_buf, mut cipher, mut out) = (Vec::new(), Vec::new(), Vec::new());
        let label = Name::new("f.bin").unwrap();
        let mut source = PacketSource::open(
            &path,
            &label,
            ClientId::ZERO,
            &AesKey::random(),
            p,
            &mut read_buf,
            &mut cipher,
        )
        .unwrap();
        let e = source.next_into(&mut out).unwrap_err();
        assert!(e.to_string().contains("shorter"), "{e}");
        assert_eq!(e.exit_code(), 2);
    }

    /// The pipelined path (reader thread, encryption into batches, writer thread) puts the
    /// same bytes on the wire as the packets made in one thread, also when the buffers are
    /// reused by a second send, and reports a file that shrinks.
    #[test]
    fn pipelined_writes_the_same_bytes() {
        use std::net::{TcpListener, TcpStream};
        let dir = tempfile::tempdir().unwrap();
        let key = AesKey::random();
        let label = Name::new("f.bin").unwrap();
        let (mut first, mut second) = (Vec::new(), Vec::new());
        let (mut chunk, mut pool) = (Vec::new(), Vec::new());
        for (size, packet) in [
            (0usize, None),
            (5000, Some(1000)),
            (3_000_000, Some(7777)),
            (3_000_000, None),
            (2_500_000, Some(1 << 20)),
        ] {
            let data: Vec<u8> = (0..size).map(|i| (i * 7 % 253) as u8).collect();
            let path = dir.path().join("f.bin");
            std::fs::write(&path, &data).unwrap();
            let p = plan(size as u64, packet).unwrap();
            let (mut rb, mut pl, mut expected) = (Vec::new(), Vec::new(), b"resend".to_vec());
            let mut source =
                PacketSource::open(&path, &label, ClientId([3; 16]), &key, p, &mut rb, &mut pl)
                    .unwrap();
            while source.next_into(&mut expected).unwrap().is_some() {}

            let listener = TcpListener::bind("127.0.0.1:0").unwrap();
            let addr = listener.local_addr().unwrap();
            let server = std::thread::spawn(move || {
                let (mut conn, _) = listener.accept().unwrap();
                let mut got = Vec::new();
                conn.read_to_end(&mut got).unwrap();
                got
            });
            let mut stream = Stream::Plain(TcpStream::connect(addr).unwrap());
            let mut source = PacketSource::open(
                &path,
                &label,
                ClientId([3; 16]),
                &key,
                p,
                &mut chunk,
                &mut pool,
            )
            .unwrap();
            let result = write_pipelined(
                &mut stream,
                &Reporter::quiet(),
                &mut source,
                &mut first,
                &mut second,
                Some(b"resend"),
            );
            assert!(result.is_ok(), "size {size}");
            assert_eq!(source.checksum(), sfc_crypto::cksum(&data));
            drop(source);
            drop(stream);
            assert!(server.join().unwrap() == expected, "size {size}");
            assert!(pool.len() < READ_BUFFERS);
        }

        // A file shorter than planned.
        let path = dir.path().join("short.bin");
        std::fs::write(&path, vec![1u8; 3_000_000]).unwrap();
        let p = plan(5_000_000, None).unwrap();
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let server = std::thread::spawn(move || {
            let (mut conn, _) = listener.accept().unwrap();
            let mut got = Vec::new();
            let _ = conn.read_to_end(&mut got);
        });
        let mut stream = Stream::Plain(TcpStream::connect(addr).unwrap());
        let mut source = PacketSource::open(
            &path,
            &label,
            ClientId::ZERO,
            &key,
            p,
            &mut chunk,
            &mut pool,
        )
        .unwrap();
        let result = write_pipelined(
            &mut stream,
            &Reporter::quiet(),
            &mut source,
            &mut first,
            &mut second,
            None,
        );
        match result {
            Err(PipeError::Source(e)) => assert!(e.to_string().contains("shorter"), "{e}"),
            _ => panic!("a shrunk file was sent"),
        }
        drop(stream);
        server.join().unwrap();
    }
}
