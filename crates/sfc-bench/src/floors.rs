//! The CPU floors of one upload on this host: what the kernel and the ciphers alone cost
//! per GiB, done the way `sfc-client` and `sfc-server` do them (the same system calls
//! and sizes), each timed by the CPU time of the one thread doing it. An upload's threads
//! can get near these figures, never below them, so they tell which part of (a)'s CPU is
//! the programs' own and which is the machine's.
//!
//! - tmpfs read: the source file in 1 MiB `read`s into a page-aligned buffer (the
//!   client's reader), and once more into a buffer 16 bytes past a page boundary, where
//!   glibc puts a fresh 1 MiB allocation: on some CPUs (AMD Zen 3) the kernel's copy is
//!   several times slower there, which is why the client aligns its buffers;
//! - tmpfs write: 1 MiB `write`s into a new file on the same tmpfs (the server's batches),
//!   the second of two writes, since the first touch of guest memory costs extra;
//! - loopback TCP: 1 MiB `write`s (the client's writer) to 64 KiB `read`s into a
//!   page-aligned buffer (the server's read buffer while content streams), sender and
//!   receiver each on its own thread; and once more into a buffer 16 bytes past a page;
//! - AES-256-CBC encrypt and decrypt (sfc-crypto `update_into`, 64 KiB pieces) and CRC
//!   (sfc-crypto `Cksum`) of data in memory.

use crate::context::RunContext;
use crate::procs::thread_cpu_secs;
use anyhow::{anyhow, Context, Result};
use serde_json::json;
use sfc_crypto::{AesKey, CbcDecryptor, CbcEncryptor, Cksum};
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;

const GIB: f64 = (1u64 << 30) as f64;
const CHUNK: usize = 1 << 20;
const SOCKET_READ: usize = 64 * 1024;
const PIECE: usize = 64 * 1024;
/// In-memory data the cipher and CRC floors work on, again and again (the file's size
/// in all).
const MEMORY_DATA: usize = 16 << 20;
/// Bytes of a page.
const PAGE: usize = 4096;
/// Where glibc puts a fresh 1 MiB allocation: 16 bytes into its own mapping.
const MISALIGNED: usize = 16;

/// CPU seconds per GiB.
#[derive(Debug, Clone, Copy, Default)]
pub struct Floors {
    /// Reading a tmpfs file into a page-aligned buffer.
    pub tmpfs_read: f64,
    /// The same into a buffer [`MISALIGNED`] bytes past a page boundary.
    pub tmpfs_read_misaligned: f64,
    /// Writing a new tmpfs file.
    pub tmpfs_write: f64,
    /// Sending over loopback TCP.
    pub tcp_send: f64,
    /// Receiving over loopback TCP into a page-aligned buffer.
    pub tcp_receive: f64,
    /// The same into a buffer [`MISALIGNED`] bytes past a page boundary.
    pub tcp_receive_misaligned: f64,
    /// AES-256-CBC encryption.
    pub encrypt: f64,
    /// AES-256-CBC decryption.
    pub decrypt: f64,
    /// The cksum CRC.
    pub crc: f64,
}

impl Floors {
    /// The client's reader thread: read + CRC.
    pub fn client_reader(&self) -> f64 {
        self.tmpfs_read + self.crc
    }

    /// The client's threads other than the encrypting one: reader + writer (send).
    pub fn client_others(&self) -> f64 {
        self.client_reader() + self.tcp_send
    }

    /// The server, for one upload to a tmpfs data folder: receive, decrypt, CRC, write.
    pub fn server(&self) -> f64 {
        self.tcp_receive + self.decrypt + self.crc + self.tmpfs_write
    }
}

/// CPU seconds `work` takes on the calling thread, with its result.
fn on_this_thread<T>(work: impl FnOnce() -> Result<T>) -> Result<(f64, T)> {
    let before = thread_cpu_secs().context("no /proc/thread-self/stat")?;
    let result = work()?;
    let after = thread_cpu_secs().context("no /proc/thread-self/stat")?;
    Ok((after - before, result))
}

/// `len` bytes of `bytes` (resized to fit) starting `offset` bytes past a page boundary:
/// where a buffer lies decides how fast the kernel copies into it (module documentation).
fn buffer_at(bytes: &mut Vec<u8>, len: usize, offset: usize) -> Result<&mut [u8]> {
    bytes.resize(len + 2 * PAGE, 0);
    let start = bytes.as_ptr().align_offset(PAGE).min(PAGE) + offset % PAGE;
    bytes
        .get_mut(start..start + len)
        .ok_or_else(|| anyhow!("no room for an aligned buffer"))
}

/// Reads `source` whole into a buffer starting `offset` bytes past a page boundary.
fn read_file(source: &Path, offset: usize) -> Result<(f64, u64)> {
    let mut bytes = Vec::new();
    let buf = buffer_at(&mut bytes, CHUNK, offset)?;
    on_this_thread(|| {
        let mut file = std::fs::File::open(source)?;
        let mut total = 0u64;
        loop {
            let n = file.read(buf)?;
            if n == 0 {
                return Ok(total);
            }
            total += n as u64;
        }
    })
}

fn write_file(target: &Path, size: u64) -> Result<f64> {
    let buf = vec![0x5au8; CHUNK];
    let (cpu, ()) = on_this_thread(|| {
        let mut file = std::fs::File::create(target)?;
        let mut left = size;
        while left > 0 {
            let n = usize::try_from(left.min(CHUNK as u64))?;
            file.write_all(buf.get(..n).unwrap_or_default())?;
            left -= n as u64;
        }
        Ok(())
    })?;
    std::fs::remove_file(target)?;
    Ok(cpu)
}

/// (sender CPU, receiver CPU) for `size` bytes over loopback.
fn loopback(size: u64, receive_offset: usize) -> Result<(f64, f64)> {
    let listener = TcpListener::bind("127.0.0.1:0")?;
    let addr = listener.local_addr()?;
    let sender = std::thread::spawn(move || -> Result<f64> {
        let mut stream = TcpStream::connect(addr)?;
        let buf = vec![0xa5u8; CHUNK];
        let (cpu, ()) = on_this_thread(|| {
            let mut left = size;
            while left > 0 {
                let n = usize::try_from(left.min(CHUNK as u64))?;
                stream.write_all(buf.get(..n).unwrap_or_default())?;
                left -= n as u64;
            }
            Ok(())
        })?;
        Ok(cpu)
    });
    let (mut stream, _) = listener.accept()?;
    let mut bytes = Vec::new();
    let buf = buffer_at(&mut bytes, SOCKET_READ, receive_offset)?;
    let (receive, received) = on_this_thread(|| {
        let mut total = 0u64;
        loop {
            let n = stream.read(buf)?;
            if n == 0 {
                return Ok(total);
            }
            total += n as u64;
        }
    })?;
    let send = sender
        .join()
        .map_err(|_| anyhow!("the sending thread panicked"))??;
    anyhow::ensure!(received == size, "received {received} of {size} bytes");
    Ok((send, receive))
}

/// CPU seconds of `rounds` passes of `step` over `plain` in [`PIECE`]s, each written into
/// one reused output buffer.
fn cipher_cpu(
    plain: &[u8],
    rounds: usize,
    mut step: impl FnMut(&[u8], &mut [u8]) -> Result<usize, sfc_crypto::CryptoError>,
) -> Result<f64> {
    let mut out = vec![0u8; PIECE + 64];
    let (cpu, ()) = on_this_thread(|| {
        for _ in 0..rounds {
            for piece in plain.chunks(PIECE) {
                step(piece, &mut out).map_err(|e| anyhow!("{e}"))?;
            }
        }
        Ok(())
    })?;
    Ok(cpu)
}

/// (encrypt, decrypt, CRC) CPU seconds for `size` bytes of data in memory, each piece
/// written into one reused output buffer as the programs do.
fn ciphers(size: u64) -> Result<(f64, f64, f64)> {
    let key = AesKey::random();
    let len = usize::try_from(size)?.clamp(PIECE, MEMORY_DATA);
    let plain: Vec<u8> = (0..len).map(|i| (i * 7 + 3) as u8).collect();
    let rounds = usize::try_from(size)?.div_ceil(len);
    let mut encryptor = CbcEncryptor::new(&key).map_err(|e| anyhow!("{e}"))?;
    let mut decryptor = CbcDecryptor::new(&key).map_err(|e| anyhow!("{e}"))?;
    let encrypt = cipher_cpu(&plain, rounds, |piece, out| {
        encryptor.update_into(piece, out)
    })?;
    // Any bytes decrypt (only a final padding check could fail, and there is none).
    let decrypt = cipher_cpu(&plain, rounds, |piece, out| {
        decryptor.update_into(piece, out)
    })?;
    let (crc, sum) = on_this_thread(|| {
        let mut sum = Cksum::new();
        for _ in 0..rounds {
            sum.update(&plain);
        }
        Ok(sum.finish())
    })?;
    std::hint::black_box(sum);
    let scale = (len * rounds) as f64 / size as f64;
    Ok((encrypt / scale, decrypt / scale, crc / scale))
}

/// Measures the floors with `source` (a file on tmpfs) and a scratch file in `dir` (the
/// same tmpfs).
pub fn measure(source: &Path, dir: &Path) -> Result<Floors> {
    let (read_cpu, size) = read_file(source, 0)?;
    let (misaligned_cpu, _) = read_file(source, MISALIGNED)?;
    anyhow::ensure!(size > 0, "{} is empty", source.display());
    let per_gib = GIB / size as f64;
    let scratch = dir.join(format!("sfc-bench-floor-{}.bin", std::process::id()));
    write_file(&scratch, size)?; // first touch of the guest's memory
    let write_cpu = write_file(&scratch, size)?;
    let (send, receive) = loopback(size, 0)?;
    let (_, receive_misaligned) = loopback(size, MISALIGNED)?;
    let (encrypt, decrypt, crc) = ciphers(size)?;
    Ok(Floors {
        tmpfs_read: read_cpu * per_gib,
        tmpfs_read_misaligned: misaligned_cpu * per_gib,
        tmpfs_write: write_cpu * per_gib,
        tcp_send: send * per_gib,
        tcp_receive: receive * per_gib,
        tcp_receive_misaligned: receive_misaligned * per_gib,
        encrypt: encrypt * per_gib,
        decrypt: decrypt * per_gib,
        crc: crc * per_gib,
    })
}

/// The floors as a note line.
pub fn describe(f: &Floors) -> String {
    format!(
        "CPU floors per GiB on this host (one thread each, the programs' system calls and sizes): tmpfs read {:.2} s ({:.2} s into a buffer {MISALIGNED} bytes past a page boundary), tmpfs write {:.2} s, loopback TCP send {:.2} s / receive {:.2} s ({:.2} s {MISALIGNED} bytes past a page), AES-256-CBC encrypt {:.2} s / decrypt {:.2} s, CRC {:.2} s; so at best sfc-client's reader {:.2} s, its reader + writer {:.2} s, its encrypting thread {:.2} s, and sfc-server {:.2} s (receive + decrypt + CRC + write)",
        f.tmpfs_read,
        f.tmpfs_read_misaligned,
        f.tmpfs_write,
        f.tcp_send,
        f.tcp_receive,
        f.tcp_receive_misaligned,
        f.encrypt,
        f.decrypt,
        f.crc,
        f.client_reader(),
        f.client_others(),
        f.encrypt,
        f.server()
    )
}

/// The floors as JSON.
pub fn to_json(f: &Floors) -> serde_json::Value {
    json!({
        "tmpfs_read_s_per_gib": f.tmpfs_read,
        "tmpfs_read_misaligned_s_per_gib": f.tmpfs_read_misaligned, "tmpfs_write_s_per_gib": f.tmpfs_write,
        "tcp_send_s_per_gib": f.tcp_send, "tcp_receive_s_per_gib": f.tcp_receive,
        "tcp_receive_misaligned_s_per_gib": f.tcp_receive_misaligned,
        "encrypt_s_per_gib": f.encrypt, "decrypt_s_per_gib": f.decrypt, "crc_s_per_gib": f.crc,
        "client_others_s_per_gib": f.client_others(), "server_s_per_gib": f.server(),
    })
}

/// Scenario `floors`: measured alone, or after (a) in `tmpfs`.
pub fn run_floors(ctx: &mut RunContext) -> Result<()> {
    eprintln!("CPU floors per GiB ...");
    let source = ctx.source()?;
    let floors = measure(&source, &ctx.shm)?;
    let line = describe(&floors);
    eprintln!("    {line}");
    ctx.notes.push(line);
    ctx.json.insert("floors".into(), to_json(&floors));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_floors_of_a_small_file_are_positive_and_add_up() {
        let temp = tempfile::tempdir().unwrap();
        let dir = temp.path().to_owned();
        let source = dir.join("source.bin");
        std::fs::write(&source, vec![7u8; 4 << 20]).unwrap();
        let floors = measure(&source, &dir).unwrap();
        for offset in [0, MISALIGNED] {
            assert_eq!(
                read_file(&source, offset).unwrap().1,
                4 << 20,
                "offset {offset}"
            );
        }
        let left: Vec<_> = std::fs::read_dir(&dir).unwrap().flatten().collect();
        assert_eq!(left.len(), 1, "only the source is left: {left:?}");
        let all = [
            floors.tmpfs_read,
            floors.tmpfs_read_misaligned,
            floors.tmpfs_write,
            floors.tcp_send,
            floors.tcp_receive,
            floors.tcp_receive_misaligned,
            floors.encrypt,
            floors.decrypt,
            floors.crc,
        ];
        assert!(all.iter().all(|s| s.is_finite() && *s >= 0.0), "{floors:?}");
        let sum = floors.tcp_receive + floors.decrypt + floors.crc + floors.tmpfs_write;
        assert!((floors.server() - sum).abs() < 1e-12);
    }
}
