//! Streaming POSIX `cksum` (CRC-32/CKSUM over the data, then over the length), backed by
//! the SIMD `crc-fast` crate.

use crc_fast::{CrcAlgorithm, Digest};

/// Streaming POSIX `cksum`.
///
/// `cksum` is CRC-32 with polynomial 0x04C11DB7, not reflected, initial value 0, fed the
/// data and then the data length (least significant byte first, only as many bytes as the
/// length needs, none for 0), and finally complemented.
///
/// `crc-fast`'s `Crc32Cksum` keeps the raw (not yet complemented) register in its
/// `Digest`; [`finish`](Self::finish) feeds the length bytes into a copy of that running
/// state and lets the digest apply the final complement (`xorout = 0xFFFFFFFF`) once.
#[derive(Clone, Debug)]
pub struct Cksum {
    digest: Digest,
}

impl Default for Cksum {
    fn default() -> Self {
        Self::new()
    }
}

impl Cksum {
    /// A checksum over no data yet.
    #[must_use]
    pub fn new() -> Self {
        Self {
            digest: Digest::new(CrcAlgorithm::Crc32Cksum),
        }
    }

    /// Feeds more data.
    pub fn update(&mut self, data: &[u8]) {
        self.digest.update(data);
    }

    /// Number of bytes fed so far.
    #[must_use]
    pub fn len(&self) -> u64 {
        self.digest.get_amount()
    }

    /// Whether no byte has been fed yet.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The value `cksum` prints for the data fed so far. Does not consume or change `self`.
    #[must_use]
    pub fn finish(&self) -> u32 {
        let len = self.len();
        let len_bytes = len.to_le_bytes();
        let needed = (u64::BITS - len.leading_zeros()).div_ceil(8) as usize;
        let mut digest = self.digest;
        digest.update(len_bytes.get(..needed).unwrap_or(&len_bytes));
        // The CRC register is 32 bits wide; the crate stores it in a u64.
        (digest.finalize() & 0xFFFF_FFFF) as u32
    }
}

/// A sink for [`std::io::copy`]: `io::copy(&mut file, &mut sum)` checksums a whole
/// reader without a read loop of its own.
impl std::io::Write for Cksum {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        self.update(data);
        Ok(data.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// `cksum` of a whole buffer.
#[must_use]
pub fn cksum(data: &[u8]) -> u32 {
    let mut c = Cksum::new();
    c.update(data);
    c.finish()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Reference: the `crc` crate's CRC-32/CKSUM, length appended the same way.
    fn reference(data: &[u8]) -> u32 {
        let crc = crc::Crc::<u32, crc::Table<16>>::new(&crc::CRC_32_CKSUM);
        let mut d = crc.digest();
        d.update(data);
        let mut len = data.len() as u64;
        while len != 0 {
            d.update(&[(len & 0xFF) as u8]);
            len >>= 8;
        }
        d.finalize()
    }

    #[test]
    fn known_values() {
        assert_eq!(cksum(b"hello world\n"), 3_733_384_285);
        assert_eq!(cksum(b""), 4_294_967_295);
        // `printf 'a' | cksum` and a 256-byte zero buffer (two length bytes).
        assert_eq!(cksum(b"a"), 1_220_704_766);
        assert_eq!(cksum(&[0u8; 256]), reference(&[0u8; 256]));
    }

    #[test]
    fn len_and_default() {
        let mut c = Cksum::default();
        assert!(c.is_empty());
        assert_eq!(c.finish(), 4_294_967_295);
        c.update(b"hello ");
        c.update(b"world\n");
        assert_eq!(c.len(), 12);
        assert!(!c.is_empty());
        assert_eq!(c.finish(), 3_733_384_285);
        // finish does not disturb the running state.
        assert_eq!(c.finish(), 3_733_384_285);
        let snapshot = c.clone();
        c.update(b"x");
        assert_eq!(snapshot.finish(), 3_733_384_285);
        assert_eq!(c.finish(), cksum(b"hello world\nx"));
    }

    #[test]
    fn a_reader_copied_into_it_is_checksummed_whole() {
        let data: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
        let mut sum = Cksum::new();
        let copied = std::io::copy(&mut data.as_slice(), &mut sum).unwrap();
        assert_eq!(copied, 100_000);
        assert_eq!(sum.finish(), cksum(&data));
    }

    proptest! {
        #[test]
        fn streaming_equals_one_shot(
            data in proptest::collection::vec(any::<u8>(), 0..5000),
            cuts in proptest::collection::vec(any::<prop::sample::Index>(), 0..8),
        ) {
            let mut points: Vec<usize> = cuts.iter().map(|i| i.index(data.len() + 1)).collect();
            points.sort_unstable();
            let mut c = Cksum::new();
            let mut prev = 0;
            for p in points {
                c.update(&data[prev..p]);
                prev = p;
            }
            c.update(&data[prev..]);
            prop_assert_eq!(c.len(), data.len() as u64);
            prop_assert_eq!(c.finish(), cksum(&data));
        }

        #[test]
        fn agrees_with_crc_crate(data in proptest::collection::vec(any::<u8>(), 0..70_000)) {
            prop_assert_eq!(cksum(&data), reference(&data));
        }
    }
}
