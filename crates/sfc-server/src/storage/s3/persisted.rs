//! An object completed at its key, waiting for its row: keep (delete the backup) or undo
//! (copy the backup back).

use super::temp::S3Temp;
use super::Shared;
use crate::storage::Persisted;
use object_store::path::Path as Key;
use object_store::ObjectStore;
use std::fmt;
use std::io;
use std::sync::Arc;

/// An object completed at its key whose row is not committed yet (see [`Persisted`]).
pub(super) struct S3Persisted {
    pub(super) shared: Arc<Shared>,
    pub(super) key: Key,
    pub(super) rel_path: String,
    /// Copy of the replaced version.
    pub(super) backup: Option<Key>,
    /// The marker protecting the object from recovery elsewhere, if multipart.
    pub(super) marker: Option<Key>,
}

impl fmt::Debug for S3Persisted {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("S3Persisted")
            .field("key", &self.key.as_ref())
            .field(
                "backup",
                &self.backup.as_ref().map(|k| k.as_ref().to_owned()),
            )
            .finish_non_exhaustive()
    }
}

impl Persisted for S3Persisted {
    fn path(&self) -> &str {
        &self.rel_path
    }

    fn keep(self: Box<Self>) -> io::Result<()> {
        let shared = &self.shared;
        if let Some(marker) = &self.marker {
            S3Temp::unmark(shared, marker);
        }
        match &self.backup {
            Some(backup) => shared.run(shared.delete_quietly(backup)),
            None => Ok(()),
        }
    }

    fn undo(self: Box<Self>) -> io::Result<()> {
        let shared = &self.shared;
        shared.run(async {
            match &self.backup {
                Some(backup) => {
                    shared.s3.copy(backup, &self.key).await?;
                    shared.delete_quietly(backup).await
                }
                None => shared.delete_quietly(&self.key).await,
            }
        })?;
        if let Some(marker) = &self.marker {
            S3Temp::unmark(shared, marker);
        }
        Ok(())
    }
}
