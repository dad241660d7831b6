//! Scenario (f): the server's two per-byte costs on the same file as the system tools —
//! AES-256-CBC decryption (sfc-crypto's `CbcDecryptor::update_into`, 64 KiB pieces into a
//! reused buffer, as the server decrypts; the file is read in 1 MiB chunks and only the
//! decryption is timed, like `openssl speed`, which decrypts memory) and cksum (sfc-crypto, reading the file like `cksum FILE` does and
//! timed as a whole, read included).

use crate::context::{ratio_row, size_label, RunContext};
use crate::reference;
use crate::report::{Spread, MB};
use anyhow::{anyhow, bail, Result};
use serde_json::json;
use sfc_crypto::{AesKey, CbcDecryptor, Cksum};
use std::io::Read;
use std::path::Path;
use std::time::{Duration, Instant};

/// Figures of one run.
#[derive(Debug, Clone, Copy, Default)]
pub struct MicroRun {
    /// Our decryption (`update_into`, the server's way), MB/s.
    pub decrypt: f64,
    /// Our decryption with `update` (zero-fills the output each call), MB/s.
    pub decrypt_append: f64,
    /// `openssl speed -decrypt -evp aes-256-cbc`, MB/s.
    pub openssl_decrypt: f64,
    /// Our cksum of the file (read + CRC), MB/s.
    pub cksum: f64,
    /// Our cksum, CRC only (file already in memory chunks), MB/s.
    pub cksum_compute: f64,
    /// `cksum FILE`, MB/s.
    pub system_cksum: f64,
}

const READ_CHUNK: usize = 1 << 20;
const PIECE: usize = 64 * 1024;

/// Decrypts the file in [`PIECE`]s: with `into`, `CbcDecryptor::update_into` into one
/// reused buffer (the server's way); otherwise `update` appending to a cleared `Vec`
/// (which zero-fills its spare room on every call).
fn decrypt_file(file: &Path, into: bool) -> Result<f64> {
    let key = AesKey::random();
    let mut decryptor = CbcDecryptor::new(&key).map_err(|e| anyhow!("{e}"))?;
    let mut input = std::fs::File::open(file)?;
    let mut buf = vec![0u8; READ_CHUNK];
    let mut scratch = vec![0u8; PIECE + 64];
    let mut out = Vec::with_capacity(PIECE + 64);
    let mut busy = Duration::ZERO;
    let mut total = 0u64;
    loop {
        let n = read_full(&mut input, &mut buf)?;
        if n == 0 {
            break;
        }
        let chunk = buf.get(..n).unwrap_or_default();
        let started = Instant::now();
        for piece in chunk.chunks(PIECE) {
            if into {
                decryptor
                    .update_into(piece, &mut scratch)
                    .map_err(|e| anyhow!("{e}"))?;
            } else {
                out.clear();
                decryptor
                    .update(piece, &mut out)
                    .map_err(|e| anyhow!("{e}"))?;
            }
        }
        busy += started.elapsed();
        total += n as u64;
    }
    // Any bytes decrypt; only the final padding check would fail, so no finish().
    Ok(total as f64 / busy.as_secs_f64() / MB)
}

fn read_full(file: &mut std::fs::File, buf: &mut [u8]) -> Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        let n = file.read(buf.get_mut(filled..).unwrap_or_default())?;
        if n == 0 {
            break;
        }
        filled += n;
    }
    Ok(filled)
}

fn cksum_file(file: &Path) -> Result<(u32, f64, f64)> {
    let started = Instant::now();
    let mut input = std::fs::File::open(file)?;
    let mut buf = vec![0u8; READ_CHUNK];
    let mut sum = Cksum::new();
    let mut busy = Duration::ZERO;
    loop {
        let n = read_full(&mut input, &mut buf)?;
        if n == 0 {
            break;
        }
        let t = Instant::now();
        sum.update(buf.get(..n).unwrap_or_default());
        busy += t.elapsed();
    }
    let wall = started.elapsed().as_secs_f64();
    let len = sum.len() as f64;
    Ok((sum.finish(), len / wall / MB, len / busy.as_secs_f64() / MB))
}

/// One run on `file` of `size` bytes.
pub fn run_once(file: &Path, size: u64, openssl_seconds: u32) -> Result<MicroRun> {
    let openssl_decrypt = reference::openssl_aes(true, openssl_seconds)?;
    let decrypt = decrypt_file(file, true)?;
    let decrypt_append = decrypt_file(file, false)?;
    let (system_crc, system_cksum) = reference::system_cksum(file, size)?;
    let (crc, cksum, cksum_compute) = cksum_file(file)?;
    if crc != system_crc {
        bail!(
            "cksum mismatch on {}: ours {crc}, system {system_crc}",
            file.display()
        );
    }
    Ok(MicroRun {
        decrypt,
        decrypt_append,
        openssl_decrypt,
        cksum,
        cksum_compute,
        system_cksum,
    })
}

/// Scenario (f): our AES decryption and cksum beside openssl's and the system's.
pub fn run_micro(ctx: &mut RunContext) -> Result<()> {
    eprintln!("(f) AES decryption and cksum ...");
    let source = ctx.source()?;
    let mut runs = Vec::new();
    for run in 0..ctx.cli.runs {
        let r = run_once(&source, ctx.cli.size, ctx.cli.openssl_seconds)?;
        eprintln!(
            "    run {}: decrypt {:.0} MB/s (with update: {:.0}; openssl {:.0}); cksum {:.0} MB/s, CRC only {:.0} MB/s (system cksum {:.0})",
            run + 1,
            r.decrypt,
            r.decrypt_append,
            r.openssl_decrypt,
            r.cksum,
            r.cksum_compute,
            r.system_cksum
        );
        runs.push(r);
    }
    let pick = |f: fn(&MicroRun) -> f64| Spread::of(&runs.iter().map(f).collect::<Vec<_>>());
    let decrypt = pick(|r| r.decrypt);
    let append = pick(|r| r.decrypt_append);
    let openssl = pick(|r| r.openssl_decrypt);
    let cksum = pick(|r| r.cksum);
    let compute = pick(|r| r.cksum_compute);
    let system = pick(|r| r.system_cksum);
    ctx.rows.push(ratio_row(
        "f",
        "AES-256-CBC decrypt (sfc-crypto update_into, 64 KiB pieces), MB/s".into(),
        decrypt,
        "MB/s",
        format!("openssl speed -decrypt {} MB/s", openssl.show(0)),
        openssl.median,
        0.8,
    ));
    ctx.rows.push(ratio_row(
        "f",
        format!(
            "cksum of the {} file (read + CRC), MB/s",
            size_label(ctx.cli.size)
        ),
        cksum,
        "MB/s",
        format!("cksum FILE {} MB/s", system.show(0)),
        system.median,
        0.8,
    ));
    ctx.notes.push(format!(
        "(f) decryption with CbcDecryptor::update (appends to a Vec, zero-filling its room on every call) instead of update_into: {} MB/s ({:.2} × openssl); cksum CRC computation alone: {} MB/s",
        append.show(0),
        append.median / openssl.median,
        compute.show(0)
    ));
    ctx.json.insert(
        "f_micro".into(),
        json!({
            "decrypt_mbps": decrypt.json(), "decrypt_update_mbps": append.json(),
            "openssl_decrypt_mbps": openssl.json(),
            "cksum_mbps": cksum.json(), "cksum_compute_mbps": compute.json(),
            "system_cksum_mbps": system.json(),
        }),
    );
    Ok(())
}
