//! Throughput of the chosen backends against the alternatives.
//!
//! * AES-256-CBC (zero IV, PKCS#7) encrypt and decrypt of a 1 MiB buffer fed in 64 KiB
//!   chunks: ours (aws-lc-rs streaming, `CbcEncryptor`/`CbcDecryptor`) vs RustCrypto
//!   `aes` 0.8 + `cbc` 0.1 driven the same way (output appended to a reused `Vec`).
//! * cksum of a 1 MiB buffer in 64 KiB chunks: ours (`crc-fast`, SIMD) vs `crc` 3 with
//!   `Table<16>` (slice-by-16).
//!
//! Run: `cargo bench -p sfc-crypto -- --warm-up-time 1 --measurement-time 3`
#![allow(
    clippy::unwrap_used,
    clippy::indexing_slicing,
    reason = "benchmark code: a failure aborts the run, which is the wanted outcome"
)]

use aes::cipher::block_padding::{Padding, Pkcs7};
use aes::cipher::inout::InOutBuf;
use aes::cipher::{BlockDecryptMut, BlockEncryptMut, KeyIvInit};
use criterion::{black_box, criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use sfc_crypto::{AesKey, CbcDecryptor, CbcEncryptor, Cksum};

const TOTAL: usize = 1 << 20;
const CHUNK: usize = 64 * 1024;

type RcEnc = cbc::Encryptor<aes::Aes256>;
type RcDec = cbc::Decryptor<aes::Aes256>;

fn data() -> Vec<u8> {
    (0..TOTAL).map(|i| (i * 7 + 3) as u8).collect()
}

fn key() -> AesKey {
    AesKey::from_bytes(&[0x5A; 32]).unwrap()
}

/// Ours: streaming aws-lc-rs, 64 KiB chunks, output appended to a reused buffer.
fn ours_encrypt(key: &AesKey, plain: &[u8], out: &mut Vec<u8>, sink: &mut u64) {
    let mut enc = CbcEncryptor::new(key).unwrap();
    for chunk in plain.chunks(CHUNK) {
        out.clear();
        enc.update(chunk, out).unwrap();
        *sink ^= u64::from(*out.last().unwrap_or(&0));
    }
    out.clear();
    enc.finish(out).unwrap();
    *sink ^= u64::from(out[0]);
}

fn ours_decrypt(key: &AesKey, cipher: &[u8], out: &mut Vec<u8>, sink: &mut u64) {
    let mut dec = CbcDecryptor::new(key).unwrap();
    for chunk in cipher.chunks(CHUNK) {
        out.clear();
        dec.update(chunk, out).unwrap();
        *sink ^= u64::from(*out.last().unwrap_or(&0));
    }
    out.clear();
    dec.finish(out).unwrap();
    *sink ^= out.len() as u64;
}

/// RustCrypto, streamed the same way (chunks are block-aligned except the last).
fn rustcrypto_encrypt(key: &AesKey, plain: &[u8], out: &mut Vec<u8>, sink: &mut u64) {
    let mut enc = RcEnc::new(key.as_bytes().into(), &[0u8; 16].into());
    let mut rest: &[u8] = &[];
    for chunk in plain.chunks(CHUNK) {
        let whole = chunk.len() / 16 * 16;
        out.clear();
        out.resize(whole, 0);
        let buf = InOutBuf::new(&chunk[..whole], &mut out[..]).unwrap();
        let (blocks, _) = buf.into_chunks();
        enc.encrypt_blocks_inout_mut(blocks);
        *sink ^= u64::from(*out.last().unwrap_or(&0));
        rest = &chunk[whole..];
    }
    let mut last = aes::Block::default();
    last[..rest.len()].copy_from_slice(rest);
    Pkcs7::pad(&mut last, rest.len());
    enc.encrypt_block_mut(&mut last);
    out.clear();
    out.extend_from_slice(&last);
    *sink ^= u64::from(out[0]);
}

fn rustcrypto_decrypt(key: &AesKey, cipher: &[u8], out: &mut Vec<u8>, sink: &mut u64) {
    let mut dec = RcDec::new(key.as_bytes().into(), &[0u8; 16].into());
    let n = cipher.len();
    for (i, chunk) in cipher.chunks(CHUNK).enumerate() {
        out.clear();
        out.resize(chunk.len(), 0);
        let buf = InOutBuf::new(chunk, &mut out[..]).unwrap();
        let (blocks, _) = buf.into_chunks();
        dec.decrypt_blocks_inout_mut(blocks);
        if (i + 1) * CHUNK >= n {
            let last = aes::Block::from_slice(&out[out.len() - 16..]);
            let unpadded = Pkcs7::unpad(last).unwrap().len();
            out.truncate(out.len() - 16 + unpadded);
        }
        *sink ^= u64::from(*out.last().unwrap_or(&0));
    }
}

fn bench_aes(c: &mut Criterion) {
    let key = key();
    let plain = data();
    let mut cipher_full = Vec::with_capacity(TOTAL + 16);
    {
        let mut enc = CbcEncryptor::new(&key).unwrap();
        enc.update(&plain, &mut cipher_full).unwrap();
        enc.finish(&mut cipher_full).unwrap();
    }
    // Sanity: both backends agree.
    let mut check = Vec::new();
    let mut all = Vec::new();
    {
        let mut enc = RcEnc::new(key.as_bytes().into(), &[0u8; 16].into());
        check.resize(TOTAL, 0);
        let buf = InOutBuf::new(&plain[..], &mut check[..]).unwrap();
        enc.encrypt_blocks_inout_mut(buf.into_chunks().0);
        all.extend_from_slice(&check);
        let mut last = aes::Block::from([16u8; 16]);
        enc.encrypt_block_mut(&mut last);
        all.extend_from_slice(&last);
    }
    assert_eq!(all, cipher_full, "aws-lc-rs and RustCrypto disagree");

    let mut out = Vec::with_capacity(CHUNK + 32);
    let mut g = c.benchmark_group("aes256cbc_encrypt_1MiB_in_64KiB");
    g.throughput(Throughput::Bytes(TOTAL as u64));
    g.bench_function(BenchmarkId::new("aws-lc-rs", "ours"), |b| {
        let mut sink = 0;
        b.iter(|| ours_encrypt(&key, black_box(&plain), &mut out, &mut sink));
        black_box(sink);
    });
    g.bench_function(BenchmarkId::new("rustcrypto-aes-cbc", "alt"), |b| {
        let mut sink = 0;
        b.iter(|| rustcrypto_encrypt(&key, black_box(&plain), &mut out, &mut sink));
        black_box(sink);
    });
    g.finish();

    let mut g = c.benchmark_group("aes256cbc_decrypt_1MiB_in_64KiB");
    g.throughput(Throughput::Bytes(cipher_full.len() as u64));
    g.bench_function(BenchmarkId::new("aws-lc-rs", "ours"), |b| {
        let mut sink = 0;
        b.iter(|| ours_decrypt(&key, black_box(&cipher_full), &mut out, &mut sink));
        black_box(sink);
    });
    g.bench_function(BenchmarkId::new("rustcrypto-aes-cbc", "alt"), |b| {
        let mut sink = 0;
        b.iter(|| rustcrypto_decrypt(&key, black_box(&cipher_full), &mut out, &mut sink));
        black_box(sink);
    });
    g.finish();
}

fn bench_cksum(c: &mut Criterion) {
    let plain = data();
    let reference = crc::Crc::<u32, crc::Table<16>>::new(&crc::CRC_32_CKSUM);
    let crc_crate = |data: &[u8]| {
        let mut d = reference.digest();
        for chunk in data.chunks(CHUNK) {
            d.update(chunk);
        }
        let mut len = data.len() as u64;
        while len != 0 {
            d.update(&[len as u8]);
            len >>= 8;
        }
        d.finalize()
    };
    let ours = |data: &[u8]| {
        let mut c = Cksum::new();
        for chunk in data.chunks(CHUNK) {
            c.update(chunk);
        }
        c.finish()
    };
    assert_eq!(ours(&plain), crc_crate(&plain));

    let mut g = c.benchmark_group("cksum_1MiB_in_64KiB");
    g.throughput(Throughput::Bytes(TOTAL as u64));
    g.bench_function(BenchmarkId::new("crc-fast", "ours"), |b| {
        b.iter(|| ours(black_box(&plain)))
    });
    g.bench_function(BenchmarkId::new("crc-Table16", "alt"), |b| {
        b.iter(|| crc_crate(black_box(&plain)))
    });
    g.finish();
}

criterion_group!(benches, bench_aes, bench_cksum);
criterion_main!(benches);
