//! Reading a stored object back (the admin's download) as a plain [`io::Read`]: one
//! ranged `GET` of [`READ_RANGE`] bytes at a time, so that a download of any size holds
//! one range in memory and no request outlives the client's request time-out (a single
//! `GET` streaming a large object would).

use super::Shared;
use bytes::{Buf, Bytes};
use object_store::path::Path as Key;
use object_store::ObjectStore;
use std::io;
use std::sync::Arc;

/// Bytes asked for by one ranged `GET`.
pub const READ_RANGE: u64 = 4 << 20;

/// An object read one range at a time. Keys are never written twice (one per upload), so
/// the ranges of one object all come from the same content; an object removed midway
/// ends the read with an error.
pub(super) struct ObjectReader {
    shared: Arc<Shared>,
    key: Key,
    size: u64,
    /// Where the next range starts.
    next: u64,
    /// What is left of the range read last.
    range: Bytes,
}

impl ObjectReader {
    pub(super) fn new(shared: Arc<Shared>, key: Key, size: u64) -> Self {
        Self {
            shared,
            key,
            size,
            next: 0,
            range: Bytes::new(),
        }
    }
}

impl io::Read for ObjectReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        if !self.range.has_remaining() {
            if self.next >= self.size {
                return Ok(0);
            }
            let end = self.size.min(self.next + READ_RANGE);
            let range = self
                .shared
                .run(self.shared.s3.get_range(&self.key, self.next..end))?;
            let expected = end - self.next;
            if range.len() as u64 != expected {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    format!(
                        "{}: asked for {expected} bytes at {}, got {}",
                        self.key,
                        self.next,
                        range.len()
                    ),
                ));
            }
            self.next = end;
            self.range = range;
        }
        let n = buf.len().min(self.range.remaining());
        let part = self.range.split_to(n);
        if let Some(to) = buf.get_mut(..n) {
            to.copy_from_slice(&part);
        }
        Ok(n)
    }
}
