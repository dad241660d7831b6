//! The metadata store as [`super::Core`] holds it: every call passes through, and the
//! calls that change a row (of `clients` or `files`; `LastSeen` flushes aside) are counted,
//! so that a view computed from the tables (the admin overview) can tell whether it is
//! still current without reading them again.

use crate::storage::{ClientRecord, FileRecord, Inserted, MetaStore, StoreError, Timestamp};
use sfc_proto::ClientId;
use std::sync::atomic::{AtomicU64, Ordering};

/// See the module documentation.
#[derive(Debug)]
pub(super) struct CountingChanges {
    inner: Box<dyn MetaStore>,
    changes: AtomicU64,
}

impl CountingChanges {
    pub(super) fn new(inner: Box<dyn MetaStore>) -> Self {
        CountingChanges {
            inner,
            changes: AtomicU64::new(0),
        }
    }

    /// Changes made so far (attempts included: a failed one may have changed something).
    pub(super) fn count(&self) -> u64 {
        self.changes.load(Ordering::SeqCst)
    }

    /// Counts a change, then makes it.
    fn changing<T>(&self, change: impl FnOnce(&dyn MetaStore) -> T) -> T {
        let result = change(self.inner.as_ref());
        // After the change: a view that read the count before it and the tables after it
        // is computed again on the next look, never kept with the change missing.
        self.changes.fetch_add(1, Ordering::SeqCst);
        result
    }
}

impl MetaStore for CountingChanges {
    fn client(&self, id: &ClientId) -> Result<Option<ClientRecord>, StoreError> {
        self.inner.client(id)
    }
    fn insert_client(
        &self,
        id: &ClientId,
        name: &str,
        now: Timestamp,
    ) -> Result<Inserted, StoreError> {
        self.changing(|meta| meta.insert_client(id, name, now))
    }
    fn set_keys(
        &self,
        id: &ClientId,
        public_key: Option<&[u8]>,
        aes_key: &[u8],
        now: Timestamp,
    ) -> Result<(), StoreError> {
        self.changing(|meta| meta.set_keys(id, public_key, aes_key, now))
    }
    fn put_file(&self, file: &FileRecord, now: Timestamp) -> Result<Option<String>, StoreError> {
        self.changing(|meta| meta.put_file(file, now))
    }
    fn set_verified(
        &self,
        id: &ClientId,
        file_name: &str,
        now: Timestamp,
    ) -> Result<bool, StoreError> {
        self.changing(|meta| meta.set_verified(id, file_name, now))
    }
    fn file(&self, id: &ClientId, file_name: &str) -> Result<Option<FileRecord>, StoreError> {
        self.inner.file(id, file_name)
    }
    fn remove_file(
        &self,
        id: &ClientId,
        file_name: &str,
        seen: Option<Timestamp>,
    ) -> Result<Option<FileRecord>, StoreError> {
        self.changing(|meta| meta.remove_file(id, file_name, seen))
    }
    fn remove_client(&self, id: &ClientId) -> Result<Option<Vec<FileRecord>>, StoreError> {
        self.changing(|meta| meta.remove_client(id))
    }
    fn touch(&self, seen: &[(ClientId, Timestamp)]) -> Result<(), StoreError> {
        self.inner.touch(seen)
    }
    fn clients(&self) -> Result<Vec<ClientRecord>, StoreError> {
        self.inner.clients()
    }
    fn files(&self) -> Result<Vec<FileRecord>, StoreError> {
        self.inner.files()
    }
    fn pending_removals(&self) -> Result<Vec<String>, StoreError> {
        self.inner.pending_removals()
    }
    // Not a change the views show: no row changes.
    fn forget_removals(&self, paths: &[String]) -> Result<(), StoreError> {
        self.inner.forget_removals(paths)
    }
    fn files_of(&self, id: &ClientId) -> Result<Vec<FileRecord>, StoreError> {
        self.inner.files_of(id)
    }
    fn setup_id(&self) -> Result<Option<String>, StoreError> {
        self.inner.setup_id()
    }
    fn record_setup_id(&self, id: &str) -> Result<String, StoreError> {
        self.inner.record_setup_id(id)
    }
    fn close(&self) -> Result<(), StoreError> {
        self.inner.close()
    }
    fn is_shared(&self) -> bool {
        self.inner.is_shared()
    }
}
