//! The plaintext buffers the file is read into, each starting on a page boundary.
//!
//! Why aligned: the kernel copies the file's page-cache pages into the buffer given to
//! `read`, and on AMD Zen 3 (EPYC family 25, model 1) that copy takes 4–5 × as long when
//! the buffer starts 1–31 bytes past a page boundary, because the copy's stores then
//! share their page offset with the loads that follow them. That is exactly where glibc
//! puts a fresh 1 MiB allocation (16 bytes into its own mapping): the reader thread spent
//! ~0.45 s per GiB in that copy instead of ~0.10 s (BENCHMARKS.md, "Fifth round").

use super::READ_CHUNK;

/// Bytes of a page, the alignment of every buffer's start.
pub(crate) const PAGE: usize = 4096;

/// [`READ_CHUNK`] bytes starting on a page boundary, inside a vector one page longer.
/// Empty until first used, so that an idle client holds none.
#[derive(Debug, Default)]
pub(crate) struct ReadBuffer {
    bytes: Vec<u8>,
    /// Where the page-aligned part begins in `bytes`.
    start: usize,
}

impl ReadBuffer {
    /// The whole aligned space, allocated on first use (its start never moves afterwards:
    /// the vector is never resized).
    pub(crate) fn space(&mut self) -> &mut [u8] {
        if self.bytes.is_empty() {
            self.bytes = vec![0u8; READ_CHUNK + PAGE];
            // `align_offset` may give up (usize::MAX); the buffer then works unaligned.
            self.start = self.bytes.as_ptr().align_offset(PAGE).min(PAGE);
        }
        self.bytes
            .get_mut(self.start..self.start + READ_CHUNK)
            .unwrap_or_default()
    }

    /// `len` bytes of the aligned space from `from` (what a read put there).
    pub(crate) fn get(&self, from: usize, len: usize) -> Option<&[u8]> {
        if from.checked_add(len)? > READ_CHUNK {
            return None;
        }
        self.bytes.get(self.start + from..self.start + from + len)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_space_starts_on_a_page_and_stays_there() {
        for _ in 0..8 {
            let mut buffer = ReadBuffer::default();
            let space = buffer.space();
            assert_eq!(space.len(), READ_CHUNK);
            let address = space.as_ptr() as usize;
            assert_eq!(address % PAGE, 0, "{address:#x}");
            space[..3].copy_from_slice(b"abc");
            space[READ_CHUNK - 1] = b'z';
            assert_eq!(buffer.space().as_ptr() as usize, address);
            assert_eq!(buffer.get(0, 3), Some(&b"abc"[..]));
            assert_eq!(buffer.get(READ_CHUNK - 1, 1), Some(&b"z"[..]));
            assert_eq!(buffer.get(READ_CHUNK, 1), None);
        }
    }
}
