//! A connection's read buffer, starting on a page boundary.
//!
//! Why aligned: the kernel copies received data out of the socket's pages into the buffer
//! given to `recv`, and on AMD Zen 3 (EPYC family 25, model 1) that copy takes 3–5 × as
//! long when the buffer lies at some offsets within a page: its stores then share their
//! page offset with the loads that follow them. A 64 KiB `Vec` lands wherever the
//! allocator puts it, so the server's receive cost per GiB was 0.10 s on one run and
//! 0.35–0.5 s on the next (BENCHMARKS.md, "Fifth round"; `sfc-bench floors` shows both).

/// Bytes of a page, the alignment of the buffer's start.
pub const PAGE: usize = 4096;

/// `len` bytes starting on a page boundary, inside a vector one page longer.
#[derive(Debug, Default)]
pub(crate) struct ReadBuffer {
    bytes: Vec<u8>,
    /// Where the page-aligned part begins in `bytes`.
    start: usize,
    len: usize,
}

impl ReadBuffer {
    /// A zeroed buffer of `len` bytes (none for 0).
    pub(crate) fn with_len(len: usize) -> Self {
        if len == 0 {
            return Self::default();
        }
        let bytes = vec![0u8; len + PAGE];
        // `align_offset` may give up (usize::MAX); the buffer then works unaligned.
        let start = bytes.as_ptr().align_offset(PAGE).min(PAGE);
        Self { bytes, start, len }
    }

    pub(crate) fn len(&self) -> usize {
        self.len
    }

    /// The whole buffer, to read into.
    pub(crate) fn space(&mut self) -> &mut [u8] {
        self.bytes
            .get_mut(self.start..self.start + self.len)
            .unwrap_or_default()
    }

    /// The first `n` bytes (what a read put there).
    pub(crate) fn filled(&self, n: usize) -> &[u8] {
        self.bytes
            .get(self.start..self.start + n.min(self.len))
            .unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::net::connection::{LARGE_BUFFER, SMALL_BUFFER};

    #[test]
    fn the_buffer_starts_on_a_page_and_holds_what_was_read() {
        // Several allocations, so that some would land off a page boundary unaligned.
        let mut kept = Vec::new();
        for len in [SMALL_BUFFER, LARGE_BUFFER, 100, LARGE_BUFFER, SMALL_BUFFER] {
            let mut buffer = ReadBuffer::with_len(len);
            assert_eq!(buffer.len(), len);
            let space = buffer.space();
            assert_eq!(space.len(), len);
            assert_eq!(space.as_ptr() as usize % PAGE, 0, "{:p}", space.as_ptr());
            space[..4].copy_from_slice(b"head");
            space[len - 1] = b'!';
            assert_eq!(buffer.filled(4), b"head");
            assert_eq!(buffer.filled(len + 10).len(), len);
            assert_eq!(buffer.filled(len).last(), Some(&b'!'));
            kept.push(buffer);
        }
        let mut empty = ReadBuffer::with_len(0);
        assert_eq!(
            (empty.len(), empty.space().len(), empty.filled(3).len()),
            (0, 0, 0)
        );
    }
}
