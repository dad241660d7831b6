//! A pipelined uploader, for comparison only: the design proposed for `sfc-client` in
//! BENCHMARKS.md ("what would close it" for target a), so that the figure it would reach
//! is measured on the same server, in the same run. It is not a client: it registers,
//! sends one file over one connection and confirms it, nothing else.
//!
//! Three threads, so that only AES-256-CBC encryption (the one part of an upload that
//! cannot be parallelised) runs on the encrypting thread:
//!
//! - reader: reads the file in 1 MiB chunks and checksums them;
//! - encryptor (this thread): writes each packet's 290-byte prefix into the output batch
//!   and encrypts the packet's plaintext straight behind it with
//!   `CbcEncryptor::update_into` (no intermediate ciphertext buffer, no `memmove`, no
//!   zero-fill per call; the batch buffers are initialised once and reused);
//! - writer: writes full 1 MiB batches to the socket.
//!
//! Packets are the same as `sfc-client` sends by default (client rule 2: 2048 bytes of
//! content, raised to a multiple of 16 only as far as the file needs to fit 65,535
//! packets). Because the content size is a multiple of 16, every packet but the last
//! holds exactly the encryption of the same number of plaintext bytes.

use anyhow::{anyhow, bail, Context, Result};
use sfc_crypto::{encrypted_len, CbcEncryptor, Cksum, RsaKeyPair, AES_BLOCK_LEN};
use sfc_proto::limits::{
    DEFAULT_PACKET_CONTENT, FILE_PACKET_FIXED_LEN, MAX_PACKETS, REQUEST_HEADER_LEN,
    RESPONSE_HEADER_LEN,
};
use sfc_proto::{ClientId, FilePacketHeader, Name, Request, RequestBody, Response, ResponseHeader};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::sync::mpsc;
use std::time::{Duration, Instant};

const CHUNK: usize = 1 << 20;
const BATCH: usize = 1 << 20;
const PREFIX: usize = REQUEST_HEADER_LEN + FILE_PACKET_FIXED_LEN;

fn read_response(stream: &mut TcpStream) -> Result<Response> {
    let mut header = [0u8; RESPONSE_HEADER_LEN];
    stream.read_exact(&mut header)?;
    let header = ResponseHeader::decode(&header).map_err(|e| anyhow!("bad reply: {e}"))?;
    let mut payload = vec![0u8; header.payload_size as usize];
    stream.read_exact(&mut payload)?;
    Response::decode_payload(&header, &payload).map_err(|e| anyhow!("bad reply: {e}"))
}

/// Content bytes per packet: client rule 2, as `sfc-client` chooses by default.
fn packet_content(encrypted: u64) -> usize {
    let needed = encrypted.div_ceil(u64::from(MAX_PACKETS));
    if needed <= DEFAULT_PACKET_CONTENT as u64 {
        DEFAULT_PACKET_CONTENT
    } else {
        (needed.div_ceil(16) * 16) as usize
    }
}

/// What one upload took.
#[derive(Debug, Clone, Copy)]
pub struct Stats {
    /// From the start to the confirming 1604 (RSA key generation included, as for
    /// `sfc-client`).
    pub wall: Duration,
    /// CPU seconds of the encrypting thread during the transfer.
    pub encrypt_cpu: f64,
    /// CPU seconds of the reader thread (read + cksum).
    pub reader_cpu: f64,
    /// CPU seconds of the writer thread (socket writes).
    pub writer_cpu: f64,
}

/// CPU time (user + system) of the calling thread, seconds.
fn thread_cpu() -> f64 {
    std::fs::read_to_string("/proc/thread-self/stat")
        .ok()
        .and_then(|text| {
            let rest = text.rsplit_once(')')?.1.to_string();
            let fields: Vec<&str> = rest.split_whitespace().collect();
            let ticks =
                fields.get(11)?.parse::<f64>().ok()? + fields.get(12)?.parse::<f64>().ok()?;
            Some(ticks / 100.0)
        })
        .unwrap_or(0.0)
}

/// Registers as `name`, uploads `file` and confirms it.
pub fn upload(server: SocketAddr, name: &str, file: &Path) -> Result<Stats> {
    let started = Instant::now();
    let size = std::fs::metadata(file)?.len();
    let keys = RsaKeyPair::generate().map_err(|e| anyhow!("{e}"))?;
    let mut stream = TcpStream::connect(server).context("connect")?;
    stream.set_nodelay(true)?;
    let name = Name::new(name).map_err(|e| anyhow!("{e}"))?;
    stream.write_all(
        &Request::new(ClientId::ZERO, RequestBody::Register { name: name.clone() }).encode(),
    )?;
    let client_id = match read_response(&mut stream)? {
        Response::Registered { client_id } => client_id,
        other => bail!("825 answered with {:?}", other.code()),
    };
    let send_key = RequestBody::SendPublicKey {
        name,
        public_key: keys.public_key_der(),
    };
    stream.write_all(&Request::new(client_id, send_key).encode())?;
    let wrapped = match read_response(&mut stream)? {
        Response::PublicKeyAccepted { wrapped_key, .. } => wrapped_key,
        other => bail!("826 answered with {:?}", other.code()),
    };
    let key = keys.unwrap_aes_key(&wrapped).map_err(|e| anyhow!("{e}"))?;

    let encrypted = encrypted_len(size);
    let content = packet_content(encrypted);
    let total = encrypted.div_ceil(content as u64);
    let label = Name::new(
        file.file_name()
            .and_then(|n| n.to_str())
            .ok_or_else(|| anyhow!("odd file name"))?,
    )
    .map_err(|e| anyhow!("{e}"))?;
    let mut header = FilePacketHeader {
        content_size: u32::try_from(encrypted)?,
        orig_file_size: u32::try_from(size)?,
        packet_number: 1,
        total_packets: u16::try_from(total)?,
        file_name: label.clone(),
    };

    let encrypt_start = thread_cpu();
    let (our_cksum, reader_cpu, writer_cpu) =
        std::thread::scope(|scope| -> Result<(u32, f64, f64)> {
            // Reader: chunks of plaintext, checksummed, through a pool of 4 buffers.
            let (full_tx, full_rx) = mpsc::sync_channel::<(Vec<u8>, usize)>(3);
            let (free_tx, free_rx) = mpsc::channel::<Vec<u8>>();
            for _ in 0..4 {
                let _ = free_tx.send(vec![0u8; CHUNK]);
            }
            let reader = scope.spawn(move || -> Result<(u32, f64)> {
                let mut input = std::fs::File::open(file)?;
                let mut sum = Cksum::new();
                let mut left = size;
                while left > 0 {
                    let mut buf = free_rx.recv().map_err(|_| anyhow!("encryptor gone"))?;
                    let n = left.min(CHUNK as u64) as usize;
                    let part = buf.get_mut(..n).ok_or_else(|| anyhow!("buffer"))?;
                    input.read_exact(part)?;
                    sum.update(part);
                    left -= n as u64;
                    if full_tx.send((buf, n)).is_err() {
                        break;
                    }
                }
                Ok((sum.finish(), thread_cpu()))
            });
            // Writer: full batches to the socket, buffers back through a pool of 3.
            let (out_tx, out_rx) = mpsc::sync_channel::<(Vec<u8>, usize)>(1);
            let (back_tx, back_rx) = mpsc::channel::<Vec<u8>>();
            let capacity = BATCH + PREFIX + content + 2 * AES_BLOCK_LEN;
            for _ in 0..3 {
                let _ = back_tx.send(vec![0u8; capacity]);
            }
            let mut socket = stream.try_clone()?;
            let writer = scope.spawn(move || -> Result<f64> {
                for (buf, len) in out_rx {
                    socket.write_all(buf.get(..len).unwrap_or_default())?;
                    if back_tx.send(buf).is_err() {
                        break;
                    }
                }
                Ok(thread_cpu())
            });

            // Encryptor.
            let mut encryptor = CbcEncryptor::new(&key).map_err(|e| anyhow!("{e}"))?;
            let mut out = back_rx.recv().map_err(|_| anyhow!("writer gone"))?;
            let mut filled = 0usize;
            let mut sent = 0u64; // ciphertext bytes of the packets closed so far
            let mut plain_left = 0usize; // plaintext still to go into the open packet
            let mut open: Option<(u64, bool)> = None; // open packet: (content length, last)
            let mut open_packet =
                |out: &mut Vec<u8>, filled: &mut usize, sent: u64| -> Result<(u64, bool, usize)> {
                    let len = (encrypted - sent).min(content as u64);
                    let last = sent + len == encrypted;
                    let prefix = header.encode_prefix(client_id, u32::try_from(len)?);
                    out.get_mut(*filled..*filled + PREFIX)
                        .ok_or_else(|| anyhow!("batch too small"))?
                        .copy_from_slice(&prefix);
                    *filled += PREFIX;
                    header.packet_number = header.packet_number.wrapping_add(1);
                    // Every packet but the last is the encryption of as many plaintext bytes;
                    // the last one takes the rest, and finish() adds the final block.
                    let plain = if last { size - sent } else { len };
                    Ok((len, last, plain as usize))
                };
            for (buf, n) in full_rx.iter() {
                let mut data = buf.get(..n).unwrap_or_default();
                while !data.is_empty() {
                    let (len, last) = match open {
                        Some(packet) => packet,
                        None => {
                            let (len, last, plain) = open_packet(&mut out, &mut filled, sent)?;
                            plain_left = plain;
                            open = Some((len, last));
                            (len, last)
                        }
                    };
                    let take = data.len().min(plain_left);
                    let (now, rest) = data.split_at(take);
                    let tail = out.get_mut(filled..).unwrap_or_default();
                    filled += encryptor
                        .update_into(now, tail)
                        .map_err(|e| anyhow!("{e}"))?;
                    plain_left -= take;
                    data = rest;
                    if plain_left == 0 && !last {
                        open = None;
                        sent += len;
                        if filled >= BATCH {
                            out_tx
                                .send((out, filled))
                                .map_err(|_| anyhow!("writer gone"))?;
                            out = back_rx.recv().map_err(|_| anyhow!("writer gone"))?;
                            filled = 0;
                        }
                    }
                }
                let _ = free_tx.send(buf);
            }
            match open {
                Some((_, true)) => {}
                Some((_, false)) => bail!("the file ended inside a packet"),
                // Empty file, or one that ended on a packet boundary: the last packet holds
                // only the final block.
                None => {
                    let (_, last, _) = open_packet(&mut out, &mut filled, sent)?;
                    if !last {
                        bail!("the file is shorter than planned");
                    }
                }
            }
            let mut last = Vec::with_capacity(AES_BLOCK_LEN);
            encryptor.finish(&mut last).map_err(|e| anyhow!("{e}"))?;
            out.get_mut(filled..filled + last.len())
                .ok_or_else(|| anyhow!("batch too small"))?
                .copy_from_slice(&last);
            filled += last.len();
            out_tx
                .send((out, filled))
                .map_err(|_| anyhow!("writer gone"))?;
            drop(out_tx);
            drop(full_rx);
            let writer_cpu = writer.join().map_err(|_| anyhow!("writer panicked"))??;
            let (crc, reader_cpu) = reader.join().map_err(|_| anyhow!("reader panicked"))??;
            Ok((crc, reader_cpu, writer_cpu))
        })?;
    let encrypt_cpu = thread_cpu() - encrypt_start;

    match read_response(&mut stream)? {
        Response::FileReceived { cksum, .. } if cksum == our_cksum => {}
        Response::FileReceived { cksum, .. } => {
            bail!("checksum mismatch: server {cksum}, ours {our_cksum}")
        }
        other => bail!("828 answered with {:?}", other.code()),
    }
    let ok = RequestBody::ChecksumOk { file_name: label };
    stream.write_all(&Request::new(client_id, ok).encode())?;
    match read_response(&mut stream)? {
        Response::Ack { .. } => Ok(Stats {
            wall: started.elapsed(),
            encrypt_cpu,
            reader_cpu,
            writer_cpu,
        }),
        other => bail!("900 answered with {:?}", other.code()),
    }
}
