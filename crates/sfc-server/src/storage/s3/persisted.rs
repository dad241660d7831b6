//! An object completed at its own key, waiting for its row: keep it (the marker goes) or
//! undo (the object goes).

use super::temp::S3Temp;
use super::Shared;
use crate::storage::Persisted;
use object_store::path::Path as Key;
use std::fmt;
use std::io;
use std::sync::Arc;

/// An object completed at its key whose row is not committed yet (see [`Persisted`]).
/// The key is this upload's alone, so undoing touches no other version.
pub(super) struct S3Persisted {
    pub(super) shared: Arc<Shared>,
    pub(super) key: Key,
    pub(super) rel_path: String,
    /// The marker protecting the object from recovery elsewhere, if multipart.
    pub(super) marker: Option<Key>,
}

impl fmt::Debug for S3Persisted {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("S3Persisted")
            .field("key", &self.key.as_ref())
            .finish_non_exhaustive()
    }
}

impl S3Persisted {
    fn unmark(&self) {
        if let Some(marker) = &self.marker {
            S3Temp::unmark(&self.shared, marker);
        }
    }
}

impl Persisted for S3Persisted {
    fn path(&self) -> &str {
        &self.rel_path
    }

    fn keep(self: Box<Self>) -> io::Result<()> {
        self.unmark();
        Ok(())
    }

    fn undo(self: Box<Self>) -> io::Result<()> {
        let shared = &self.shared;
        shared.run(shared.delete_quietly(&self.key))?;
        self.unmark();
        Ok(())
    }
}
