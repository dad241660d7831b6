//! Large byte buffers kept for reuse instead of freed and allocated again.
//!
//! Why: a buffer of a MiB or more allocated on one thread and freed on another stays
//! behind in glibc's per-thread arenas, so a server that allocated one per upload (the
//! session's batches) or per part (the S3 store) grew its RSS upload after upload or
//! part after part (BENCHMARKS.md, "Fourth round"; `storage/s3/parts.rs`). A pool keeps
//! at most `KEEP` buffers of at least `CAPACITY` bytes; smaller ones and any beyond
//! `KEEP` are freed. What a pooled buffer holds is left as it was: its owner decides
//! whether stale bytes matter.

use std::sync::{Mutex, MutexGuard, PoisonError};

/// At most `KEEP` buffers of `CAPACITY` bytes or more.
#[derive(Debug, Default)]
pub(crate) struct BufferPool<const CAPACITY: usize, const KEEP: usize> {
    buffers: Mutex<Vec<Vec<u8>>>,
}

impl<const CAPACITY: usize, const KEEP: usize> BufferPool<CAPACITY, KEEP> {
    fn lock(&self) -> MutexGuard<'_, Vec<Vec<u8>>> {
        self.buffers.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// A pooled buffer, if there is one.
    pub(crate) fn take(&self) -> Option<Vec<u8>> {
        self.lock().pop()
    }

    /// Keeps `buffer` for a later [`BufferPool::take`] if it is large enough and the pool
    /// has room; frees it otherwise.
    pub(crate) fn put(&self, buffer: Vec<u8>) {
        if buffer.capacity() < CAPACITY {
            return;
        }
        let mut pooled = self.lock();
        if pooled.len() < KEEP {
            pooled.push(buffer);
        }
    }

    /// Buffers in the pool.
    #[cfg(any(test, feature = "testing"))]
    pub(crate) fn len(&self) -> usize {
        self.lock().len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_large_buffers_up_to_its_limit_and_gives_them_back() {
        let pool = BufferPool::<1024, 2>::default();
        assert_eq!(pool.take(), None);
        pool.put(Vec::with_capacity(100));
        assert_eq!(pool.len(), 0, "too small to keep");
        let kept = vec![7u8; 1024];
        let address = kept.as_ptr();
        pool.put(kept);
        pool.put(Vec::with_capacity(2048));
        pool.put(Vec::with_capacity(4096));
        assert_eq!(pool.len(), 2, "no more than KEEP");
        let _newer = pool.take().unwrap();
        let older = pool.take().unwrap();
        assert_eq!(older.as_ptr(), address);
        assert_eq!(older, vec![7u8; 1024], "contents left as they were");
        assert_eq!(pool.take(), None);
    }
}
