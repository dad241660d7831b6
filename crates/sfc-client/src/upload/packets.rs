//! Turning a file into its 828 packets: read → cksum + AES-CBC → packets, as a stream.
//!
//! Memory does not grow with the file: the file is read in [`READ_CHUNK`] pieces (into a
//! few reused buffers), each piece is fed to the checksum and the encryptor, and each
//! packet's ciphertext is written straight behind its 290-byte prefix. The file is opened
//! and read again for every send.

use std::fs::File;
use std::io::{self, Read};
use std::path::Path;
use std::sync::mpsc;

use sfc_crypto::{AesKey, CbcEncryptor, Cksum, AES_BLOCK_LEN};
use sfc_proto::{ClientId, FilePacketHeader, Name};

use super::buffer::ReadBuffer;
use super::plan::Plan;
use super::{PACKET_PREFIX_LEN, READ_CHUNK};
use crate::error::ClientError;

/// Spare room behind a packet's content in an output buffer: CBC may write up to a block
/// past the packet's end (it is carried into the next packet) and `update_into` wants 15
/// bytes more than its input.
const SLACK: usize = 4 * AES_BLOCK_LEN;

/// Plaintext buffers per send with a reader thread: the one being encrypted and the ones
/// the reader fills meanwhile (memory stays at this many [`READ_CHUNK`]s).
pub(crate) const READ_BUFFERS: usize = 4;

/// Room one packet needs in an output buffer.
pub(crate) fn packet_room(plan: &Plan) -> usize {
    PACKET_PREFIX_LEN + plan.packet_content + SLACK
}

/// Reads the planned number of bytes of a file, in chunks, and checksums them.
pub(crate) struct FileReader<'a> {
    file: File,
    path: &'a Path,
    cksum: Cksum,
    pub(crate) remaining: u64,
    expected: u32,
}

impl FileReader<'_> {
    /// Fills the start of `buf` with the next bytes of the file (as many as fit and are
    /// planned) and returns how many; 0 once the planned size is read.
    pub(crate) fn read_chunk(&mut self, buf: &mut ReadBuffer) -> Result<usize, ClientError> {
        let space = buf.space();
        let n = self.remaining.min(space.len() as u64) as usize;
        let chunk = space.get_mut(..n).unwrap_or_default();
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
pub(crate) type Chunk = Result<(ReadBuffer, usize), ClientError>;

/// The encrypting side's ends of the channels to a reader thread.
pub(crate) struct ReaderFeed {
    /// Filled buffers (or the reader's error), in file order.
    pub(crate) full: mpsc::Receiver<Chunk>,
    /// Buffers handed back to be filled again.
    pub(crate) free: mpsc::Sender<ReadBuffer>,
}

/// Turns a file into its packets: reads and checksums it (in this thread, or on a reader
/// thread that hands over filled buffers), encrypts each packet's content straight behind
/// its 290-byte prefix, and numbers the packets.
pub(crate) struct PacketSource<'a> {
    /// The file; `None` while a reader thread has it.
    pub(crate) reader: Option<FileReader<'a>>,
    /// The reader thread's channels while it runs.
    pub(crate) feed: Option<ReaderFeed>,
    /// Plaintext being encrypted: `chunk[chunk_pos..chunk_len]` is still to go.
    chunk: &'a mut ReadBuffer,
    chunk_pos: usize,
    chunk_len: usize,
    /// Further plaintext buffers for a reader thread, kept between sends.
    pub(crate) pool: &'a mut Vec<ReadBuffer>,
    encryptor: Option<CbcEncryptor>,
    /// Plaintext bytes given to the encryptor so far.
    plain_fed: u64,
    /// Ciphertext made beyond the end of the previous packet (CBC works in whole blocks,
    /// packets need not): it opens the next packet.
    carry: [u8; AES_BLOCK_LEN],
    carry_len: usize,
    pub(crate) header: FilePacketHeader,
    pub(crate) client_id: ClientId,
    pub(crate) plan: Plan,
    /// Ciphertext bytes in the packets made so far.
    pub(crate) sent: u64,
}

/// One packet appended by [`PacketSource::next_into`].
#[derive(Clone, Copy, Debug)]
pub(crate) struct PacketInfo {
    pub(crate) number: u16,
    pub(crate) content_len: usize,
    pub(crate) last: bool,
}

pub(crate) fn file_error(path: &Path, reason: impl Into<String>) -> ClientError {
    ClientError::File {
        path: path.to_owned(),
        reason: reason.into(),
    }
}

fn crypto_error(e: sfc_crypto::CryptoError) -> ClientError {
    ClientError::Internal(format!("encryption failed: {e}"))
}

pub(crate) fn buffer_error() -> ClientError {
    ClientError::Internal("packet buffer too small".to_owned())
}

impl<'a> PacketSource<'a> {
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn open(
        path: &'a Path,
        label: &Name,
        client_id: ClientId,
        key: &AesKey,
        plan: Plan,
        chunk: &'a mut ReadBuffer,
        pool: &'a mut Vec<ReadBuffer>,
    ) -> Result<Self, ClientError> {
        let file = open_regular(path)?;
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
        if n == 0 || n > READ_CHUNK {
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
    pub(crate) fn next_packet(
        &mut self,
        out: &mut [u8],
        filled: &mut usize,
    ) -> Result<Option<PacketInfo>, ClientError> {
        let total = u64::from(self.plan.encrypted_size);
        if self.sent >= total {
            return Ok(None);
        }
        let number = self.header.packet_number;
        let len = (total - self.sent).min(self.plan.packet_content as u64) as usize;
        let last = self.sent + len as u64 == total;
        self.check_numbering(number, last)?;
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

        // Ciphertext left over from the previous packet comes first, then just enough
        // plaintext encrypted to reach the packet's end: whole blocks, so up to the block
        // boundary at or after it (or all of the file for the last one).
        let mut pos = self.take_carry(out, content_start, len)?;
        let orig = u64::from(self.plan.orig_size);
        let target = if last {
            orig
        } else {
            orig.min((self.sent + len as u64).div_ceil(AES_BLOCK_LEN as u64) * AES_BLOCK_LEN as u64)
        };
        pos = self.encrypt_until(target, out, pos)?;
        if pos < end && self.plain_fed == orig {
            pos = self.finish_encryption(out, pos)?;
        }
        self.keep_excess(out, pos, end, last)?;
        self.sent += len as u64;
        self.header.packet_number = number.wrapping_add(1);
        *filled = end;
        Ok(Some(PacketInfo {
            number,
            content_len: len,
            last,
        }))
    }

    /// Checks that packet `number` (the last one when `last`) fits the plan.
    fn check_numbering(&self, number: u16, last: bool) -> Result<(), ClientError> {
        if number > self.plan.total_packets || number == 0 {
            return Err(ClientError::Internal(format!(
                "packet {number} exceeds the planned {} packets",
                self.plan.total_packets
            )));
        }
        if last != (number == self.plan.total_packets) {
            return Err(ClientError::Internal(format!(
                "the {}-byte ciphertext does not make the planned {} packets",
                self.plan.encrypted_size, self.plan.total_packets
            )));
        }
        Ok(())
    }

    /// Copies the carried ciphertext (at most `len` bytes of it) to `out[pos..]`; returns
    /// the position after it.
    fn take_carry(&mut self, out: &mut [u8], pos: usize, len: usize) -> Result<usize, ClientError> {
        let take = self.carry_len.min(len);
        out.get_mut(pos..pos + take)
            .ok_or_else(buffer_error)?
            .copy_from_slice(self.carry.get(..take).unwrap_or_default());
        self.carry.copy_within(take..self.carry_len, 0);
        self.carry_len -= take;
        Ok(pos + take)
    }

    /// Encrypts plaintext until `target` bytes of the file have been fed, writing the
    /// ciphertext to `out[pos..]`; returns the position after it.
    fn encrypt_until(
        &mut self,
        target: u64,
        out: &mut [u8],
        mut pos: usize,
    ) -> Result<usize, ClientError> {
        while self.plain_fed < target {
            if self.chunk_pos >= self.chunk_len {
                self.next_chunk()?;
            }
            let want = usize::try_from(target - self.plain_fed).unwrap_or(usize::MAX);
            let n = want.min(self.chunk_len - self.chunk_pos);
            let input = self.chunk.get(self.chunk_pos, n).ok_or_else(buffer_error)?;
            let encryptor = self
                .encryptor
                .as_mut()
                .ok_or_else(|| ClientError::Internal("encryption already finished".to_owned()))?;
            let tail = out.get_mut(pos..).unwrap_or_default();
            pos += encryptor.update_into(input, tail).map_err(crypto_error)?;
            self.chunk_pos += n;
            self.plain_fed += n as u64;
        }
        Ok(pos)
    }

    /// All plaintext is in: the final padded block completes the ciphertext.
    fn finish_encryption(&mut self, out: &mut [u8], mut pos: usize) -> Result<usize, ClientError> {
        if let Some(encryptor) = self.encryptor.take() {
            let mut block = Vec::with_capacity(AES_BLOCK_LEN);
            encryptor.finish(&mut block).map_err(crypto_error)?;
            out.get_mut(pos..pos + block.len())
                .ok_or_else(buffer_error)?
                .copy_from_slice(&block);
            pos += block.len();
        }
        Ok(pos)
    }

    /// Checks that the packet ending at `end` is complete (ciphertext written up to
    /// `pos`) and keeps whatever lies beyond its end for the next one.
    fn keep_excess(
        &mut self,
        out: &[u8],
        pos: usize,
        end: usize,
        last: bool,
    ) -> Result<(), ClientError> {
        if pos < end {
            return Err(ClientError::Internal(format!(
                "ciphertext shorter than the planned {} bytes",
                self.plan.encrypted_size
            )));
        }
        // A packet smaller than a block may have come wholly from the carry: what is left
        // of the carry then stays for the next packet, and nothing new was made.
        let excess = out.get(end..pos).ok_or_else(buffer_error)?;
        if !excess.is_empty() {
            if self.carry_len != 0 {
                return Err(ClientError::Internal(
                    "new ciphertext made while some was still carried".to_owned(),
                ));
            }
            self.carry
                .get_mut(..excess.len())
                .ok_or_else(buffer_error)?
                .copy_from_slice(excess);
            self.carry_len = excess.len();
        }
        if last && (self.encryptor.is_some() || self.carry_len != 0) {
            return Err(ClientError::Internal(format!(
                "ciphertext longer than the planned {} bytes",
                self.plan.encrypted_size
            )));
        }
        Ok(())
    }

    /// Appends the next packet (290-byte prefix, then content) to `out`; `None` when done.
    pub(crate) fn next_into(
        &mut self,
        out: &mut Vec<u8>,
    ) -> Result<Option<PacketInfo>, ClientError> {
        let start = out.len();
        out.resize(start + packet_room(&self.plan), 0);
        let mut filled = start;
        let result = self.next_packet(out, &mut filled);
        out.truncate(filled);
        result
    }

    /// The cksum of what was read (complete once the last packet is made).
    pub(crate) fn checksum(&self) -> u32 {
        self.reader
            .as_ref()
            .map_or(0, |reader| reader.cksum.finish())
    }
}

/// Reads exactly `buf.len()` bytes (UnexpectedEof if the file ends first).
fn read_full(file: &mut File, buf: &mut [u8]) -> io::Result<()> {
    file.read_exact(buf)
}

/// Opens the file to send, which must still be a regular file: each send opens it again
/// (a retry, a resend after 901), and something else put in its place since (a FIFO,
/// whose plain open would wait for a writer with no time limit) is refused.
fn open_regular(path: &Path) -> Result<File, ClientError> {
    let mut options = std::fs::OpenOptions::new();
    options.read(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        // Non-blocking opens and reads only for FIFOs and devices: a regular file reads
        // as ever.
        let nonblocking = rustix::fs::OFlags::NONBLOCK.bits();
        options.custom_flags(i32::try_from(nonblocking).unwrap_or_default());
    }
    let file = options
        .open(path)
        .map_err(|e| file_error(path, format!("cannot be opened: {e}")))?;
    match file.metadata() {
        Ok(metadata) if metadata.is_file() => Ok(file),
        Ok(_) => Err(file_error(path, "is no longer a regular file".to_owned())),
        Err(e) => Err(file_error(path, format!("cannot be read: {e}"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::upload::plan::{plan, requested, PacketSizing};
    use sfc_crypto::CbcDecryptor;
    use sfc_proto::{RequestDecoder, RequestEvent};

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
            let p = plan(size as u64, requested(packet)).unwrap();
            let (mut read_buf, mut cipher, mut out) =
                (ReadBuffer::default(), Vec::new(), Vec::new());
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
        let p = plan(200, PacketSizing::default()).unwrap();
        let (mut read_buf, mut cipher, mut out) = (ReadBuffer::default(), Vec::new(), Vec::new());
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

    /// Packets smaller than an AES block (`--packet-size 1` to 15) can be served wholly
    /// from the ciphertext carried over from the previous packet; every size must give the
    /// whole ciphertext in order.
    #[test]
    fn packets_smaller_than_a_block_carry_the_whole_ciphertext() {
        let dir = tempfile::tempdir().unwrap();
        let key = AesKey::random();
        let label = Name::new("f").unwrap();
        for packet in 1..=20usize {
            for size in [0usize, 1, 7, 15, 16, 17, 31, 32, 33, 69] {
                let data: Vec<u8> = (0..size).map(|i| (i * 13 % 256) as u8).collect();
                let path = dir.path().join("f");
                std::fs::write(&path, &data).unwrap();
                let p = plan(size as u64, requested(Some(packet))).unwrap();
                let (mut a, mut b, mut out) = (ReadBuffer::default(), Vec::new(), Vec::new());
                let mut source =
                    PacketSource::open(&path, &label, ClientId::ZERO, &key, p, &mut a, &mut b)
                        .unwrap();
                while source
                    .next_into(&mut out)
                    .unwrap_or_else(|e| panic!("packet {packet}, size {size}: {e}"))
                    .is_some()
                {}
                let mut decoder = RequestDecoder::new();
                let mut input = &out[..];
                let mut ciphertext = Vec::new();
                while !input.is_empty() {
                    let (used, event) = decoder.decode(input).unwrap();
                    input = &input[used..];
                    if let Some(RequestEvent::Content(piece)) = event {
                        ciphertext.extend_from_slice(piece);
                    }
                }
                let mut plain = Vec::new();
                let mut dec = CbcDecryptor::new(&key).unwrap();
                dec.update(&ciphertext, &mut plain).unwrap();
                dec.finish(&mut plain).unwrap();
                assert_eq!(plain, data, "packet {packet}, size {size}");
            }
        }
    }

    /// A FIFO in place of the file is refused at once, not waited on.
    #[cfg(unix)]
    #[test]
    fn a_fifo_is_refused_when_opened_to_send() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("pipe");
        let made = std::process::Command::new("mkfifo")
            .arg(&path)
            .status()
            .unwrap();
        assert!(made.success());
        let Err(ClientError::File { reason, .. }) = open_regular(&path) else {
            panic!("a FIFO opened as a file")
        };
        assert!(reason.contains("no longer a regular file"), "{reason}");
        let file = dir.path().join("file");
        std::fs::write(&file, b"content").unwrap();
        let mut read = String::new();
        open_regular(&file)
            .unwrap()
            .read_to_string(&mut read)
            .unwrap();
        assert_eq!(read, "content");
    }
}
