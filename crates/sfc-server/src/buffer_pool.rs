//! Large byte buffers kept for reuse instead of freed and allocated again.
//!
//! Why: a buffer of a MiB or more allocated on one thread and freed on another stays
//! behind in glibc's per-thread arenas, so a server that allocated one per upload (the
//! session's batches) or per part (the S3 store) grew its RSS upload after upload or
//! part after part (BENCHMARKS.md, "Fourth round"; `storage/s3/parts.rs`). A pool keeps
//! at most `KEEP` buffers of at least `CAPACITY` bytes; smaller ones and any beyond
//! `KEEP` are freed. What a pooled buffer holds is left as it was: its owner decides
//! whether stale bytes matter. A [`Pooled`] buffer goes back by itself when dropped,
//! wherever that happens (an abandoned upload, a background write nobody waits for, a
//! finished S3 request), so no path can forget to return it.

use std::ops::{Deref, DerefMut};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

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

/// A buffer of a [`BufferPool`], put back in it when dropped. Used as a `Vec<u8>`.
pub(crate) struct Pooled<const CAPACITY: usize, const KEEP: usize> {
    buffer: Vec<u8>,
    pool: Arc<BufferPool<CAPACITY, KEEP>>,
}

impl<const CAPACITY: usize, const KEEP: usize> Pooled<CAPACITY, KEEP> {
    /// An empty buffer (nothing allocated) that will go back to `pool` once it has grown
    /// to `CAPACITY`.
    pub(crate) fn empty(pool: &Arc<BufferPool<CAPACITY, KEEP>>) -> Self {
        Self::holding(Vec::new(), pool)
    }

    /// A pooled buffer if there is one, an empty one otherwise.
    pub(crate) fn take(pool: &Arc<BufferPool<CAPACITY, KEEP>>) -> Self {
        Self::holding(pool.take().unwrap_or_default(), pool)
    }

    /// `buffer`, to go back to `pool`.
    pub(crate) fn holding(buffer: Vec<u8>, pool: &Arc<BufferPool<CAPACITY, KEEP>>) -> Self {
        Pooled {
            buffer,
            pool: Arc::clone(pool),
        }
    }

    /// Puts the buffer back now and goes on empty (nothing allocated).
    pub(crate) fn give_back(&mut self) {
        self.pool.put(std::mem::take(&mut self.buffer));
    }
}

impl<const CAPACITY: usize, const KEEP: usize> Drop for Pooled<CAPACITY, KEEP> {
    fn drop(&mut self) {
        self.give_back();
    }
}

impl<const CAPACITY: usize, const KEEP: usize> Deref for Pooled<CAPACITY, KEEP> {
    type Target = Vec<u8>;

    fn deref(&self) -> &Vec<u8> {
        &self.buffer
    }
}

impl<const CAPACITY: usize, const KEEP: usize> DerefMut for Pooled<CAPACITY, KEEP> {
    fn deref_mut(&mut self) -> &mut Vec<u8> {
        &mut self.buffer
    }
}

impl<const CAPACITY: usize, const KEEP: usize> AsRef<[u8]> for Pooled<CAPACITY, KEEP> {
    fn as_ref(&self) -> &[u8] {
        &self.buffer
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

    #[test]
    fn a_pooled_buffer_goes_back_when_dropped_or_given_back() {
        let pool = Arc::new(BufferPool::<1024, 4>::default());
        let mut grown = Pooled::empty(&pool);
        grown.extend_from_slice(&[1; 2000]);
        let address = grown.as_ptr();
        drop(grown);
        assert_eq!(pool.len(), 1);
        let mut again = Pooled::take(&pool);
        assert_eq!((again.as_ptr(), again.len()), (address, 2000));
        assert_eq!(pool.len(), 0);
        again.give_back();
        assert_eq!(
            (pool.len(), again.capacity()),
            (1, 0),
            "given back, now empty"
        );
        drop(again);
        assert_eq!(pool.len(), 1, "an empty buffer is not kept");
        drop(Pooled::holding(vec![0; 10], &pool));
        assert_eq!(pool.len(), 1, "nor a small one");
    }
}
