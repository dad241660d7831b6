//! The buffers a multipart upload's parts are collected in, kept for the next parts.
//!
//! A part is handed to `object_store` as a payload it owns until the request is done
//! (retries included) and then drops on one of the S3 runtime's threads. Freed there and
//! allocated again on a blocking-pool thread for every 8 MiB, the buffers stayed behind
//! in glibc's per-thread arenas: a server's peak RSS grew by up to 32 MiB on one 64 MiB
//! upload under load (`tests/s3.rs`), twice what the upload holds at once. Here the
//! payload owns its buffer through a [`Pooled`] buffer, whose `Drop` puts it back in the pool,
//! so the same few buffers serve every part.

use super::PART_SIZE;
use crate::buffer_pool::{BufferPool, Pooled};
use bytes::Bytes;
use object_store::PutPayload;
use std::sync::Arc;

/// Full-size part buffers kept for the next parts: those of one upload (the part filling
/// and [`super::PARTS_IN_FLIGHT`] being sent). More are freed.
pub(super) const POOLED_PARTS: usize = super::PARTS_IN_FLIGHT + 1;

/// Part buffers of ended requests, for the next parts of any upload.
#[derive(Debug, Default)]
pub(super) struct PartPool {
    buffers: Arc<BufferPool<PART_SIZE, POOLED_PARTS>>,
}

impl PartPool {
    /// An empty buffer of [`PART_SIZE`] capacity: a pooled one, or a new one.
    pub(super) fn take(&self) -> Vec<u8> {
        match self.buffers.take() {
            // A part is collected by appending.
            Some(mut buffer) => {
                buffer.clear();
                buffer
            }
            None => Vec::with_capacity(PART_SIZE),
        }
    }

    /// The payload of one part: `buffer`'s bytes, the buffer back in the pool once the
    /// request has dropped it.
    pub(super) fn payload(&self, buffer: Vec<u8>) -> PutPayload {
        PutPayload::from(Bytes::from_owner(Pooled::holding(buffer, &self.buffers)))
    }

    /// Buffers in the pool.
    #[cfg(test)]
    fn len(&self) -> usize {
        self.buffers.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sent_part_s_buffer_serves_the_next_part() {
        let pool = Arc::new(PartPool::default());
        let mut buffer = pool.take();
        assert_eq!(buffer.capacity(), PART_SIZE);
        buffer.extend_from_slice(b"part one");
        let address = buffer.as_ptr();
        let payload = pool.payload(buffer);
        assert_eq!(payload.content_length(), 8);
        let bytes: Vec<u8> = payload.iter().flat_map(|b| b.to_vec()).collect();
        assert_eq!(bytes, b"part one");
        assert_eq!(pool.len(), 0, "still owned by the request");
        drop(payload);
        assert_eq!(pool.len(), 1);
        let again = pool.take();
        assert_eq!((again.as_ptr(), again.len()), (address, 0));
    }

    #[test]
    fn the_pool_keeps_one_upload_s_buffers_and_no_small_ones() {
        let pool = Arc::new(PartPool::default());
        let payloads: Vec<_> = (0..POOLED_PARTS + 2)
            .map(|_| pool.payload(pool.take()))
            .collect();
        drop(payloads);
        assert_eq!(pool.len(), POOLED_PARTS);
        let fresh = Arc::new(PartPool::default());
        drop(fresh.payload(b"small file".to_vec()));
        assert_eq!(fresh.len(), 0);
    }
}
