//! Stored files no row names any more (the row was removed, or names another version at
//! another path) whose removal failed, or whose row's removal failed and may still have
//! happened ([`Core::remove_row`]): kept and retried by housekeeping
//! ([`Core::retry_removals`]), so that a passing store failure (an object store
//! unreachable for a moment) does not leave them until a start-up, whose recovery
//! removes only a few ([`crate::storage::setup::MAX_ORPHANS_REMOVED`]) of the files no
//! row names (in S3, where nothing else would remove them, every version a later one
//! replaced).
//!
//! A retry removes the file only while no row names its path, under the file name's
//! lock ([`super::name_locks::NameLocks`]): in a folder a new upload of the same label
//! is stored at the same path, and must not be what the retry removes.
//!
//! The database also records each such path, in the transaction that removes or
//! replaces its row ([`MetaStore::pending_removals`]); a removal that succeeds (here or
//! in a retry) forgets it, and start-up removes what a crash or a restart left recorded
//! ([`crate::storage::setup::remove_pending`]), as does, on storage servers share, a
//! running server's clean-up for a record it finds a pass later
//! ([`crate::storage::setup::sweep_shared_store`]). This list in memory is what is
//! retried while the server runs.

use super::Core;
use crate::storage::MetaStore;
use sfc_proto::ClientId;
use std::io;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, PoisonError};

/// Most failed removals kept for a retry; beyond, they are left to start-up recovery.
pub const MAX_PENDING_REMOVALS: usize = 4096;

/// Retries after the first that still find a row naming the path of a removal reported
/// as failed ([`Core::remove_row`]) before it is dropped (13 looks in all): the removal
/// may still become visible (a commit whose answer was lost, seen by other connections a
/// moment later); about a minute of housekeeping at its default interval.
pub(super) const ROW_RECHECKS: u8 = 12;

/// One file to remove: its path, and the client and label whose row named it.
#[derive(Debug)]
struct Unremoved {
    client: ClientId,
    file_name: String,
    path: String,
    /// Retries left that keep it while a row still names its path (0: dropped then).
    rechecks: u8,
}

/// The failed removals (see the module documentation).
#[derive(Debug, Default)]
pub(super) struct PendingRemovals {
    pending: Mutex<Vec<Unremoved>>,
    /// Whether the "too many" line was logged since the list last had room.
    full_logged: AtomicBool,
}

impl PendingRemovals {
    /// Keeps `file` for a retry: once (a second failure of the same removal keeps the
    /// most rechecks of the two); when the list is full, a file no row names any more
    /// takes the place of one kept only while its row's removal might still show.
    fn keep(&self, file: Unremoved) {
        let mut pending = self.pending.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(known) = pending
            .iter_mut()
            .find(|known| known.client == file.client && known.path == file.path)
        {
            known.rechecks = known.rechecks.max(file.rechecks);
            return;
        }
        if pending.len() >= MAX_PENDING_REMOVALS && file.rechecks == 0 {
            if let Some(doubtful) = pending.iter().position(|known| known.rechecks > 0) {
                pending.swap_remove(doubtful);
            }
        }
        if pending.len() < MAX_PENDING_REMOVALS {
            pending.push(file);
            self.full_logged.store(false, Ordering::Relaxed);
        } else if !self.full_logged.swap(true, Ordering::Relaxed) {
            tracing::warn!(
                path = %file.path,
                "more than {MAX_PENDING_REMOVALS} failed removals pending: this one and later ones are left to start-up recovery"
            );
        }
    }

    fn take(&self) -> Vec<Unremoved> {
        std::mem::take(&mut *self.pending.lock().unwrap_or_else(PoisonError::into_inner))
    }

    /// Puts back what [`Self::take`] took (each file once already), before those kept
    /// meanwhile, which are then merged in as [`Self::keep`] does.
    fn put_back(&self, mut files: Vec<Unremoved>) {
        let meanwhile = {
            let mut pending = self.pending.lock().unwrap_or_else(PoisonError::into_inner);
            files.truncate(MAX_PENDING_REMOVALS);
            std::mem::replace(&mut *pending, files)
        };
        for file in meanwhile {
            self.keep(file);
        }
    }

    /// How many removals wait for a retry.
    pub(super) fn len(&self) -> usize {
        self.pending
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
    }
}

impl Core {
    /// Removes the row of the client's `file_name` (the caller holds its name's lock) and
    /// returns it; the caller then removes its file ([`Core::remove_unnamed`]). When the
    /// removal fails, it may still have happened (PostgreSQL: a commit whose answer was
    /// lost, seen by the database only a moment later): the file the row named before is
    /// then kept for [`Core::retry_removals`], which removes it only once no row names
    /// its path, and the error returned.
    pub(super) fn remove_row(
        &self,
        client: &ClientId,
        file_name: &str,
        seen: Option<crate::storage::Timestamp>,
    ) -> Result<Option<crate::storage::FileRecord>, crate::storage::StoreError> {
        let named = self.meta.file(client, file_name)?;
        let removed = self.meta.remove_file(client, file_name, seen);
        if let (Err(_), Some(row)) = (&removed, named) {
            self.removals.keep(Unremoved {
                client: *client,
                file_name: file_name.to_owned(),
                path: row.path,
                rechecks: ROW_RECHECKS,
            });
        }
        removed
    }

    /// Removes a client's row and its files' rows, and returns the files' rows, as
    /// [`Core::remove_row`] does for one file: when the removal fails, the files read
    /// before are kept for the retry.
    pub(super) fn remove_client_rows(
        &self,
        client: &ClientId,
    ) -> Result<Option<Vec<crate::storage::FileRecord>>, crate::storage::StoreError> {
        let named = self.meta.files_of(client)?;
        let removed = self.meta.remove_client(client);
        if removed.is_err() {
            for row in named {
                self.removals.keep(Unremoved {
                    client: *client,
                    file_name: row.file_name,
                    path: row.path,
                    rechecks: ROW_RECHECKS,
                });
            }
        }
        removed
    }

    /// Removes the stored file at `path`, which the row of the client's `file_name` no
    /// longer names, and forgets its pending removal; if that fails, keeps it for
    /// [`Core::retry_removals`] and returns the error.
    pub(super) fn remove_unnamed(
        &self,
        client: &ClientId,
        file_name: &str,
        path: &str,
    ) -> io::Result<()> {
        self.remove_stored(client, file_name, path)?;
        self.forget_removals(&[path.to_owned()]);
        Ok(())
    }

    /// [`Core::remove_unnamed`] without forgetting the pending removal (the caller
    /// forgets many at once).
    pub(super) fn remove_stored(
        &self,
        client: &ClientId,
        file_name: &str,
        path: &str,
    ) -> io::Result<()> {
        let result = self.blobs.remove(path);
        if result.is_err() {
            self.removals.keep(Unremoved {
                client: *client,
                file_name: file_name.to_owned(),
                path: path.to_owned(),
                rechecks: 0,
            });
        }
        result
    }

    /// Forgets the database's record of these removals: done, or not to be done. Best
    /// effort: a record left is finished (or forgotten) by the next start-up (or, on
    /// storage servers share, a running server's clean-up).
    pub(super) fn forget_removals(&self, paths: &[String]) {
        if let Err(error) = self.meta.forget_removals(paths) {
            tracing::debug!(%error, count = paths.len(), "cannot forget finished removals (the next start-up does)");
        }
    }

    /// Retries the removals that failed (housekeeping calls it): each file is removed if
    /// no row names it (checked under its name's lock); one a row names again is dropped
    /// from the list (after [`ROW_RECHECKS`] retries if its row's removal was reported
    /// as failed), and so is one whose removal cannot succeed
    /// ([`crate::storage::removal_cannot_succeed`]). One
    /// whose check or removal fails otherwise ends the call (the store is likely still
    /// failing: one slow failure per call, not one per file) and is kept behind the
    /// files not yet tried, which the next call tries first. A client no row names any
    /// more whose files are all gone then loses what the store keeps for it beyond them
    /// (its empty folder), as after a removal that did not fail. Returns how many were
    /// removed and how many are still pending.
    pub fn retry_removals(&self) -> (usize, usize) {
        let mut removed = 0;
        let mut owners: Vec<ClientId> = Vec::new();
        let mut again = Vec::new();
        let mut files = self.removals.take().into_iter();
        while let Some(file) = files.next() {
            let _name = self.names.lock(file.client, &file.file_name);
            let removal = match self.meta.file(&file.client, &file.file_name) {
                Ok(Some(row)) if row.path == file.path => {
                    match file.rechecks.checked_sub(1) {
                        Some(rechecks) => again.push(Unremoved { rechecks, ..file }),
                        // Named again: a folder's new upload of the same name.
                        None => self.forget_removals(&[file.path]),
                    }
                    continue;
                }
                Ok(_) => self.blobs.remove(&file.path),
                Err(error) => Err(io::Error::other(error)),
            };
            match removal {
                Ok(()) => {
                    removed += 1;
                    self.forget_removals(std::slice::from_ref(&file.path));
                    if !owners.contains(&file.client) {
                        owners.push(file.client);
                    }
                }
                Err(error) if crate::storage::removal_cannot_succeed(&error) => {
                    tracing::warn!(path = %file.path, %error, "cannot remove a stored file, and retrying cannot help: given up (left to the operator)");
                    self.forget_removals(&[file.path]);
                }
                Err(_) => {
                    // The database or the store is likely down: one failure per call, not
                    // one (each as slow as its time-out, under a name's lock) per file.
                    // The rest go first next time: a file that keeps failing must not
                    // keep every file after it from its turn.
                    again.extend(files);
                    again.push(file);
                    break;
                }
            }
        }
        self.removals.put_back(again);
        for client in owners {
            self.remove_client_leftovers(&client);
        }
        let pending = self.removals.len();
        if removed > 0 {
            tracing::info!(
                removed,
                pending,
                "removed stored files whose earlier removal had failed"
            );
        }
        (removed, pending)
    }

    /// Removes what the blob store keeps for `client` beyond its files (its folder, only
    /// if empty) once no client row has that ID: a removal of the client whose files
    /// could not all be removed at once left it.
    fn remove_client_leftovers(&self, client: &ClientId) {
        if !matches!(self.meta.client(client), Ok(None)) {
            return;
        }
        if let Err(error) = self.blobs.remove_client(client) {
            tracing::warn!(client = %client.short(), %error, "cannot remove a removed client's folder");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(n: usize, rechecks: u8) -> Unremoved {
        Unremoved {
            client: ClientId([1; 16]),
            file_name: format!("f{n}"),
            path: format!("files/x/f{n}"),
            rechecks,
        }
    }

    fn kept(list: &PendingRemovals) -> Vec<(String, u8)> {
        let files = list.take();
        let names = files
            .iter()
            .map(|f| (f.file_name.clone(), f.rechecks))
            .collect();
        list.put_back(files);
        names
    }

    /// A removal asked for again is kept once (with the most rechecks); a full list
    /// refuses a doubtful one (its row may still be there) but makes room for one no row
    /// names by dropping a doubtful one.
    #[test]
    fn each_file_is_kept_once_and_a_full_list_prefers_files_no_row_names() {
        let list = PendingRemovals::default();
        list.keep(entry(0, 0));
        list.keep(entry(0, ROW_RECHECKS));
        list.keep(entry(0, 1));
        assert_eq!(kept(&list), [("f0".to_owned(), ROW_RECHECKS)]);
        for n in 1..MAX_PENDING_REMOVALS {
            list.keep(entry(n, ROW_RECHECKS));
        }
        assert_eq!(list.len(), MAX_PENDING_REMOVALS);
        list.keep(entry(MAX_PENDING_REMOVALS, ROW_RECHECKS));
        assert_eq!(list.len(), MAX_PENDING_REMOVALS);
        let sure = MAX_PENDING_REMOVALS + 1;
        list.keep(entry(sure, 0));
        let names = kept(&list);
        assert_eq!(names.len(), MAX_PENDING_REMOVALS);
        assert!(names.contains(&(format!("f{sure}"), 0)));
        assert!(!names
            .iter()
            .any(|(name, _)| *name == format!("f{MAX_PENDING_REMOVALS}")));
    }
}
