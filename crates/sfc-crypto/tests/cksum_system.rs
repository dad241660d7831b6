//! `cksum` against committed `cksum` output and against the system `cksum` command.
#![cfg(test)]

use std::io::Write;
use std::path::PathBuf;
use std::process::Command;

use sfc_crypto::{cksum, Cksum};

#[test]
fn committed_cksum_outputs() {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/vectors/cksum");
    let expected = std::fs::read_to_string(dir.join("expected.txt")).unwrap();
    let mut checked = 0;
    for line in expected.lines() {
        let mut it = line.split_whitespace();
        let (sum, len, name) = (
            it.next().unwrap().parse::<u32>().unwrap(),
            it.next().unwrap().parse::<u64>().unwrap(),
            it.next().unwrap(),
        );
        let data = std::fs::read(dir.join(name)).unwrap();
        assert_eq!(data.len() as u64, len, "{name}");
        assert_eq!(cksum(&data), sum, "{name}");
        let mut streaming = Cksum::new();
        for chunk in data.chunks(333) {
            streaming.update(chunk);
        }
        assert_eq!((streaming.finish(), streaming.len()), (sum, len), "{name}");
        checked += 1;
    }
    assert!(checked >= 5, "expected.txt lists only {checked} files");
}

/// Small deterministic PRNG (xorshift64*) so the test needs no extra dependency.
fn random_bytes(n: usize, mut seed: u64) -> Vec<u8> {
    let mut out = Vec::with_capacity(n);
    while out.len() < n {
        seed ^= seed >> 12;
        seed ^= seed << 25;
        seed ^= seed >> 27;
        let v = seed.wrapping_mul(0x2545_F491_4F6C_DD1D);
        out.extend_from_slice(&v.to_le_bytes());
    }
    out.truncate(n);
    out
}

#[test]
fn matches_system_cksum() {
    if Command::new("cksum").arg("--version").output().is_err()
        && Command::new("cksum").arg("/dev/null").output().is_err()
    {
        // CI installs it (.ci/run): there, a missing cksum is a failure, not a skip.
        assert!(
            std::env::var_os("CI").is_none(),
            "no `cksum` command: the cross-check cannot run"
        );
        println!("NOTE: no `cksum` command on this machine; skipping the comparison");
        return;
    }
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(1)
        | 1;
    // Sizes whose length field (appended to the data, least significant byte first, as
    // few bytes as needed) takes 0, 1, 2, 3 and 4 bytes.
    for (i, size) in [0usize, 1, 255, 256, 65_536, 1_000_003, 17_000_005]
        .into_iter()
        .enumerate()
    {
        let data = random_bytes(size, seed.wrapping_add(i as u64 * 0x9E37_79B9));
        let mut file = tempfile::NamedTempFile::new().unwrap();
        file.write_all(&data).unwrap();
        file.flush().unwrap();
        let out = Command::new("cksum").arg(file.path()).output().unwrap();
        assert!(out.status.success(), "cksum failed: {out:?}");
        let text = String::from_utf8(out.stdout).unwrap();
        let mut it = text.split_whitespace();
        let sum: u32 = it.next().unwrap().parse().unwrap();
        let len: u64 = it.next().unwrap().parse().unwrap();
        assert_eq!(len, size as u64);
        assert_eq!(cksum(&data), sum, "size {size}, seed {seed}");
    }
}
