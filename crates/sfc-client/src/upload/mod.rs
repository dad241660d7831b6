//! Sending one file: read → cksum + AES-CBC encrypt → 828 packets, as a stream.
//!
//! - [`plan`]: the pure packet plan (how many packets of what size; rule C2);
//! - [`packets`]: the file turned into packets (prefix, then ciphertext straight behind
//!   it), read in [`READ_CHUNK`] pieces into a few reused buffers;
//! - [`pipeline`]: the three threads of a send on a persistent connection (reader,
//!   encryption here, writer).
//!
//! The replies to a send are handled beside the session ([`crate::session`]), which
//! decides between the pipeline (persistent mode) and one packet per request.

pub mod plan;

mod buffer;
pub(crate) mod packets;
pub(crate) mod pipeline;

use sfc_crypto::AesKey;
use sfc_proto::limits::{FILE_PACKET_FIXED_LEN, REQUEST_HEADER_LEN};
use sfc_proto::ClientId;

use crate::config::FileToSend;
use crate::error::ClientError;
use crate::progress::{Reporter, Verbosity};
use packets::{PacketInfo, PacketSource};
pub use plan::{plan, PacketSizing, Plan};

/// Plaintext bytes read from the file at a time.
pub const READ_CHUNK: usize = 1 << 20;
/// Bytes of packets gathered before one write in persistent mode.
pub const BATCH: usize = 1 << 20;
/// Bytes before each packet's content: request header and 828 fixed part.
pub const PACKET_PREFIX_LEN: usize = REQUEST_HEADER_LEN + FILE_PACKET_FIXED_LEN;

/// Reusable buffers for sending files.
#[derive(Debug, Default)]
pub struct Uploader {
    chunk: buffer::ReadBuffer,
    pool: Vec<buffer::ReadBuffer>,
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

/// One send's packet source and the two output buffers (a packet or batch being filled,
/// and the spare one the writer thread writes from).
pub(crate) struct OpenSend<'a> {
    pub(crate) source: PacketSource<'a>,
    pub(crate) out: &'a mut Vec<u8>,
    pub(crate) spare: &'a mut Vec<u8>,
}

impl Uploader {
    /// New, empty buffers (they grow on first use to 4 plaintext chunks and 2 batches:
    /// about 6 MiB with packets of 1 MiB or less; each batch holds at least one whole
    /// packet, so about 38 MiB with `--packet-size` 16 MiB).
    pub fn new() -> Self {
        Self::default()
    }

    /// Opens the file of `params` for one send, with this uploader's buffers.
    pub(crate) fn open<'a>(
        &'a mut self,
        params: &SendParams<'a>,
    ) -> Result<OpenSend<'a>, ClientError> {
        let Uploader {
            chunk,
            pool,
            out,
            spare,
        } = self;
        let source = PacketSource::open(
            &params.file.path,
            &params.file.label,
            params.client_id,
            params.key,
            params.plan,
            chunk,
            pool,
        )?;
        Ok(OpenSend { source, out, spare })
    }
}

/// Logs one packet at trace level (`-vv`).
pub(crate) fn trace_packet(reporter: &Reporter, info: &PacketInfo, total: u16) {
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
