//! Storage behind two small traits: a metadata store (clients, files) and a blob store
//! (the received files).
//!
//! The session logic sees only these traits, so a networked database or object storage
//! can replace the implementations, and test doubles can inject faults (disk full,
//! database failure) anywhere. Every method is synchronous and may block; callers on an
//! async runtime run them on the blocking pool.
//!
//! # Durability
//!
//! A 1603 is sent only after, in this order: the temporary file is written and
//! `fsync`ed, renamed over its final name, the directory is `fsync`ed, and the `files`
//! row is committed. Replacing a stored file never loses it (see
//! `session::Core::store_upload`): in the local folder, where a new version takes the
//! old one's path, a verified row is first committed as unverified, the replaced
//! version is kept under a temporary name ([`TempBlob::persist_undoable`]) until the row
//! is committed, and put back if that commit fails; in S3 every upload has a key of its
//! own ([`s3`]), and the old version is removed once the row names the new one (the
//! path [`MetaStore::put_file`] says it replaced). The SQLite implementation
//! runs in WAL mode with
//! `synchronous=FULL`, so a commit is on disk when it returns (measured on this machine
//! class: ~6,600 single-row commits/s with FULL, ~48,000 with NORMAL, which may lose the
//! last commits on power loss; ~2,100 with a rollback journal). Commits happen only on
//! 825, 826, 827, 900, 902, on the last packet of a file, and for the periodic LastSeen
//! flush, never per 828 packet, so FULL costs nothing that matters; and the SQLite store
//! commits concurrent writes in groups ([`sqlite`]), one flush for all of them.
//!
//! At start-up [`pairing`] checks that the database and the file store belong together
//! (a set-up ID in both), then [`recover`] removes what a crash can leave behind:
//! temporary files and stored files that no row names (never acknowledged).

pub mod fs;
pub mod names;
pub mod pairing;
pub mod perms;
pub mod postgres;
pub mod s3;
pub mod setup;
pub mod sqlite;

pub use setup::recover;
#[cfg(any(test, feature = "testing"))]
pub mod testing;

use sfc_proto::ClientId;
use std::fmt;
use std::io;
use std::time::{SystemTime, UNIX_EPOCH};

/// Why a storage operation failed. Always answered with 1607 and logged.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The database reported an error.
    #[error("database error: {0}")]
    Database(String),
    /// A file operation failed.
    #[error("storage I/O error: {0}")]
    Io(#[from] io::Error),
    /// The store was closed (server shutting down).
    #[error("the database is closed")]
    Closed,
    /// A write whose commit may have happened or may still happen (its outcome could not
    /// be learned in time): the caller must undo nothing that the write would name.
    #[error("database error: {0}")]
    Uncertain(String),
}

/// The error of a [`TempBlob::persist_undoable`] whose move into place could be neither
/// made durable nor undone: the new, unconfirmed version is in place.
#[derive(Debug, thiserror::Error)]
#[error("{cause}; undoing the move failed too ({undo}): the new version is in place")]
pub struct LeftInPlace {
    /// Why the move failed.
    pub cause: io::Error,
    /// Why undoing it failed.
    pub undo: io::Error,
}

/// Whether a [`TempBlob::persist_undoable`] error is a [`LeftInPlace`].
pub fn left_in_place(error: &io::Error) -> bool {
    error
        .get_ref()
        .is_some_and(|inner| inner.is::<LeftInPlace>())
}

/// A row of `clients`.
#[derive(Clone, PartialEq, Eq)]
pub struct ClientRecord {
    /// `ID`: 16 bytes.
    pub id: ClientId,
    /// `Name`: the registered user name.
    pub name: String,
    /// `PublicKey`: the DER as the client sent it, if any.
    pub public_key: Option<Vec<u8>>,
    /// `LastSeen`: time of the client's latest request, as stored text (UTC).
    pub last_seen: Option<String>,
    /// `AESKey`: the AES key last sent to the client, if any.
    pub aes_key: Option<Vec<u8>>,
}

impl fmt::Debug for ClientRecord {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never print key material.
        f.debug_struct("ClientRecord")
            .field("id", &self.id)
            .field("name", &self.name)
            .field("public_key", &self.public_key.as_ref().map(Vec::len))
            .field("last_seen", &self.last_seen)
            .field("aes_key", &self.aes_key.as_ref().map(|_| "<set>"))
            .finish()
    }
}

impl zeroize::Zeroize for ClientRecord {
    /// Wipes the AES key bytes (the rest is not secret); `Zeroizing<ClientRecord>` does it
    /// on drop.
    fn zeroize(&mut self) {
        if let Some(key) = self.aes_key.as_mut() {
            key.zeroize();
        }
    }
}

/// A row of `files`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FileRecord {
    /// `ID`: the owner's client ID.
    pub client_id: ClientId,
    /// `FileName`: the label as the client sent it.
    pub file_name: String,
    /// `PathName`: the stored file's path relative to the data folder, `/`-separated.
    pub path: String,
    /// `Verified`: the client confirmed the checksum with 900.
    pub verified: bool,
}

/// Outcome of [`MetaStore::insert_client`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Inserted {
    /// The client was stored.
    Ok,
    /// Another client already has this name.
    NameTaken,
}

/// Whether a failed removal would fail the same way every time: the path is not one the
/// store writes (a row adopted from another implementation), or names a directory.
pub fn removal_cannot_succeed(error: &io::Error) -> bool {
    matches!(
        error.kind(),
        io::ErrorKind::InvalidInput | io::ErrorKind::IsADirectory
    )
}

/// The table of pending removals ([`MetaStore::pending_removals`]) in SQLite and
/// PostgreSQL: made at start-up if missing, beside the original tables, without a new
/// schema version (as the set-up ID's table).
pub(crate) const PENDING_REMOVALS_TABLE: &str =
    "CREATE TABLE IF NOT EXISTS sfc_pending_removals (PathName TEXT PRIMARY KEY NOT NULL)";

/// Clients and files (the `defensive.db` tables).
///
/// Every mutating method takes `now` and also advances the client's `LastSeen` to it in
/// the same transaction (never backwards).
pub trait MetaStore: Send + Sync + fmt::Debug {
    /// The client with this ID.
    fn client(&self, id: &ClientId) -> Result<Option<ClientRecord>, StoreError>;
    /// Stores a new client (no keys yet).
    fn insert_client(
        &self,
        id: &ClientId,
        name: &str,
        now: Timestamp,
    ) -> Result<Inserted, StoreError>;
    /// Stores the AES key just sent and, when given, the public key.
    fn set_keys(
        &self,
        id: &ClientId,
        public_key: Option<&[u8]>,
        aes_key: &[u8],
        now: Timestamp,
    ) -> Result<(), StoreError>;
    /// Inserts or replaces the file's row; returns the path the replaced row named, if
    /// any (the version the caller may now remove: servers sharing the database may
    /// have replaced the row since the caller last read it). A replaced path other than
    /// the new one is recorded as a pending removal in the same transaction.
    fn put_file(&self, file: &FileRecord, now: Timestamp) -> Result<Option<String>, StoreError>;
    /// Sets Verified = 1; false when there is no such file.
    fn set_verified(
        &self,
        id: &ClientId,
        file_name: &str,
        now: Timestamp,
    ) -> Result<bool, StoreError>;
    /// The row of one file, if any. The default scans [`MetaStore::files`]; stores
    /// override it with a direct lookup.
    fn file(&self, id: &ClientId, file_name: &str) -> Result<Option<FileRecord>, StoreError> {
        Ok(self
            .files()?
            .into_iter()
            .find(|f| f.client_id == *id && f.file_name == file_name))
    }
    /// The rows of one client's files, by name. The default filters [`MetaStore::files`];
    /// stores override it with a direct lookup.
    fn files_of(&self, id: &ClientId) -> Result<Vec<FileRecord>, StoreError> {
        let mut files: Vec<FileRecord> = self
            .files()?
            .into_iter()
            .filter(|f| f.client_id == *id)
            .collect();
        files.sort_by(|a, b| a.file_name.cmp(&b.file_name));
        Ok(files)
    }
    /// Deletes a file row and returns it; with `seen`, in the same transaction advances
    /// the client's `LastSeen` (a 902 is the client's own request; an operator's removal
    /// passes `None` and leaves it). The row's path is recorded as a pending removal in
    /// the same transaction.
    fn remove_file(
        &self,
        id: &ClientId,
        file_name: &str,
        seen: Option<Timestamp>,
    ) -> Result<Option<FileRecord>, StoreError>;
    /// Deletes a client and the rows of all its files in one transaction (its name is
    /// free again), recording their paths as pending removals in it; returns the removed
    /// file rows, or `None` when there is no such client. The stored files are the
    /// caller's to remove (rows first, as for 902).
    fn remove_client(&self, id: &ClientId) -> Result<Option<Vec<FileRecord>>, StoreError>;
    /// Advances `LastSeen` for many clients in one transaction.
    fn touch(&self, seen: &[(ClientId, Timestamp)]) -> Result<(), StoreError>;
    /// The paths recorded as pending removals ([`MetaStore::put_file`],
    /// [`MetaStore::remove_file`], [`MetaStore::remove_client`]) and not forgotten since:
    /// files that no row named any more when they were recorded and whose removal may not
    /// have happened (a crash, a store failure). Start-up removes those no row names now
    /// ([`setup::remove_pending`]), however many there are; on storage servers share, so
    /// does a running server's clean-up for those still recorded a pass later
    /// ([`setup::sweep_shared_store`]).
    fn pending_removals(&self) -> Result<Vec<String>, StoreError>;
    /// Forgets these pending removals: their files are removed, or a row names the path
    /// again (a folder's new upload of the same name).
    fn forget_removals(&self, paths: &[String]) -> Result<(), StoreError>;
    /// All clients, by name.
    fn clients(&self) -> Result<Vec<ClientRecord>, StoreError>;
    /// All files, by owner and name.
    fn files(&self) -> Result<Vec<FileRecord>, StoreError>;
    /// The set-up ID recorded in the database, `None` when there is none yet
    /// ([`pairing`]).
    fn setup_id(&self) -> Result<Option<String>, StoreError>;
    /// Records `id` as the set-up ID unless one is recorded already, and returns the one
    /// recorded: of several servers starting at once on one database, the first wins.
    fn record_setup_id(&self, id: &str) -> Result<String, StoreError>;
    /// Flushes and closes; later calls fail with [`StoreError::Closed`].
    fn close(&self) -> Result<(), StoreError>;
    /// Whether other servers may use this database at the same time (PostgreSQL). The
    /// default: no (SQLite, this server's own).
    fn is_shared(&self) -> bool {
        false
    }
}

/// The received files.
pub trait BlobStore: Send + Sync + fmt::Debug {
    /// Creates a temporary file that becomes `disk_name` in the client's folder when
    /// persisted. `disk_name` comes from `disk_name` in `storage/names.rs`.
    fn create_temp(&self, client: &ClientId, disk_name: &str) -> io::Result<Box<dyn TempBlob>>;
    /// Creates the temporary file of an upload of the file the client calls `label`: the
    /// store chooses its name on disk (by default `disk_name` in `storage/names.rs`).
    fn create_temp_for(&self, client: &ClientId, label: &str) -> io::Result<Box<dyn TempBlob>> {
        self.create_temp(client, &names::disk_name(label))
    }
    /// Removes a stored file given its path relative to the data folder.
    fn remove(&self, path: &str) -> io::Result<()>;
    /// After a removed client's files: removes what the store keeps for the client
    /// beyond them (a local folder's per-client directory, if it is empty). The default:
    /// nothing to remove (object stores have no folders).
    fn remove_client(&self, _client: &ClientId) -> io::Result<()> {
        Ok(())
    }
    /// Opens a stored file for reading (the admin's download), given its path relative
    /// to the data folder, with the size of what was opened (not of what the path names
    /// a moment later: an upload may replace it). The default: not supported by this
    /// store.
    fn open(&self, path: &str) -> io::Result<(Box<dyn io::Read + Send>, u64)> {
        Err(io::Error::new(
            io::ErrorKind::Unsupported,
            format!("this store cannot read {path:?} back"),
        ))
    }
    /// Size of a stored file.
    fn size(&self, path: &str) -> io::Result<u64>;
    /// Whether what a path holds never changes while it exists (every upload has a path
    /// of its own, as in S3), so that a size read once may be reused. The default: no
    /// (a folder's new version takes the old one's path).
    fn paths_are_immutable(&self) -> bool {
        false
    }
    /// Whether other servers may write into this store while this one serves (a bucket
    /// a cluster shares). Its recovery then goes by the age of what it finds and by
    /// upload markers, never by what this server knows, so it is also safe while this
    /// server serves ([`setup::sweep_shared_store`]). The default: no (a folder of this
    /// server's own, whose temporary files are its live uploads).
    fn is_shared(&self) -> bool {
        false
    }
    /// At shutdown, once no upload is left: finishes, within `within`, what dropped
    /// uploads started in the background (an object store's aborts of their multipart
    /// uploads, which would otherwise be cut off and leave their parts stored until a
    /// later recovery). False if some were still running then. The default: nothing
    /// runs in the background.
    fn close(&self, _within: std::time::Duration) -> bool {
        true
    }
    /// Removes temporary files left by an earlier run; returns how many.
    fn remove_stale_temps(&self) -> io::Result<usize>;
    /// Paths (relative to the data folder, as [`TempBlob::persist`] returns them) of
    /// every stored file, temporary files excluded; for start-up recovery. A store shared
    /// by several servers (S3) lists only files too old to be another server's
    /// upload whose row is about to be committed.
    fn stored_paths(&self) -> io::Result<Vec<String>>;
    /// The set-up ID kept with the files ([`pairing::SETUP_ID_PATH`]), `None` when there
    /// is none.
    fn setup_id(&self) -> io::Result<Option<String>>;
    /// Keeps `id` as the set-up ID, durably, unless an ID is kept already (created only
    /// where there is none, atomically: of servers doing it at once, one wins); returns
    /// the ID kept.
    fn keep_setup_id(&self, id: &str) -> io::Result<String>;
}

/// A file being received. Dropping it without [`TempBlob::persist`] removes it.
pub trait TempBlob: Send + fmt::Debug {
    /// The path it will have once persisted, relative to the data folder.
    fn path(&self) -> &str;
    /// Appends bytes.
    fn write_all(&mut self, bytes: &[u8]) -> io::Result<()>;
    /// Lets go of what the file holds open between two writes (a file descriptor),
    /// keeping what was written; the next write or persist takes it up again. Called
    /// between the packets of a connection-per-request client, whose upload may wait
    /// long for its next packet. The default holds nothing to let go of.
    fn suspend(&mut self) -> io::Result<()> {
        Ok(())
    }
    /// Makes the content durable and moves it into place, replacing an earlier version:
    /// fsync, rename, fsync of the directory. Returns the path relative to the data folder.
    fn persist(self: Box<Self>) -> io::Result<String>;
    /// Like [`TempBlob::persist`], but keeps what it replaces until the caller decides:
    /// [`Persisted::keep`] once the `files` row is committed, [`Persisted::undo`] if the
    /// commit failed (puts the earlier version back, or removes the new file when there
    /// was none). A crash in between leaves the new, complete file under the final name
    /// and the kept version under a temporary name (removed at start-up).
    ///
    /// An error means the stored version is as it was, unless [`left_in_place`] says
    /// otherwise (the move could be neither made durable nor undone).
    ///
    /// The default cannot undo: it persists, and its `undo` fails, leaving the new file
    /// in place.
    fn persist_undoable(self: Box<Self>) -> io::Result<Box<dyn Persisted>> {
        let path = self.persist()?;
        Ok(Box::new(NoUndo { path }))
    }
}

/// A file moved into place by [`TempBlob::persist_undoable`], its row not yet committed.
pub trait Persisted: Send + fmt::Debug {
    /// Its path relative to the data folder.
    fn path(&self) -> &str;
    /// The row is committed: discard the replaced version.
    fn keep(self: Box<Self>) -> io::Result<()>;
    /// The row could not be committed: restore the replaced version, or remove the new
    /// file if it replaced nothing.
    fn undo(self: Box<Self>) -> io::Result<()>;
}

/// [`Persisted`] without an undo (the default of [`TempBlob::persist_undoable`]).
#[derive(Debug)]
pub struct NoUndo {
    /// Path relative to the data folder.
    pub path: String,
}

impl Persisted for NoUndo {
    fn path(&self) -> &str {
        &self.path
    }
    fn keep(self: Box<Self>) -> io::Result<()> {
        Ok(())
    }
    fn undo(self: Box<Self>) -> io::Result<()> {
        Err(io::Error::new(
            io::ErrorKind::Unsupported,
            "this store cannot put the earlier version back",
        ))
    }
}

/// Wall-clock time in milliseconds since the Unix epoch; shown as UTC text
/// `YYYY-MM-DD HH:MM:SS.mmm`, which sorts chronologically.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Timestamp(pub i64);

impl Timestamp {
    /// The current time.
    pub fn now() -> Self {
        let millis = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
            .unwrap_or(0);
        Timestamp(millis)
    }
}

impl fmt::Display for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Outside the calendar's range (years -9999..=9999): shown at its nearest end.
        let nanos = i128::from(self.0) * 1_000_000;
        let t = time::OffsetDateTime::from_unix_timestamp_nanos(nanos).unwrap_or(if nanos < 0 {
            time::PrimitiveDateTime::MIN.assume_utc()
        } else {
            time::PrimitiveDateTime::MAX.assume_utc()
        });
        write!(
            f,
            "{:04}-{:02}-{:02} {:02}:{:02}:{:02}.{:03}",
            t.year(),
            u8::from(t.month()),
            t.day(),
            t.hour(),
            t.minute(),
            t.second(),
            t.millisecond()
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use fs::{DataDirLock, LocalBlobStore, FILES_DIR};
    use setup::{is_own_path, Recovered};
    use sqlite::SqliteStore;

    /// A data folder with one recorded file, one orphan, a temporary file and things
    /// that are not the server's (which must survive).
    fn data_folder() -> (
        tempfile::TempDir,
        SqliteStore,
        LocalBlobStore,
        String,
        String,
    ) {
        let dir = tempfile::tempdir().unwrap();
        let meta = SqliteStore::open_in_memory().unwrap();
        let blobs = LocalBlobStore::new(dir.path());
        let client = ClientId([0xab; 16]);
        let mut kept = blobs.create_temp(&client, "kept.bin").unwrap();
        kept.write_all(b"kept").unwrap();
        let kept = kept.persist().unwrap();
        meta.insert_client(&client, "alice", Timestamp(0)).unwrap();
        let record = FileRecord {
            client_id: client,
            file_name: "kept.bin".into(),
            path: kept.clone(),
            verified: true,
        };
        meta.put_file(&record, Timestamp(0)).unwrap();
        let mut orphan = blobs.create_temp(&client, "orphan.bin").unwrap();
        orphan.write_all(b"never acknowledged").unwrap();
        let orphan = orphan.persist().unwrap();
        let client_dir = dir.path().join(FILES_DIR).join(client.to_hex());
        std::fs::write(client_dir.join(".upload-1.tmp"), b"partial").unwrap();
        std::fs::write(dir.path().join(FILES_DIR).join("README"), b"operator's").unwrap();
        std::fs::create_dir(dir.path().join(FILES_DIR).join("not-a-client")).unwrap();
        std::fs::write(dir.path().join(FILES_DIR).join("not-a-client/x"), b"x").unwrap();
        std::fs::create_dir(client_dir.join("sub")).unwrap();
        (dir, meta, blobs, kept, orphan)
    }

    /// A client removal cut short (its rows removed, none of its files) is finished at
    /// start-up however many files it had: the database recorded them. Before, more than
    /// [`setup::MAX_ORPHANS_REMOVED`] unrecorded files were all left, for good. A path a
    /// row names again (a folder's new upload of the same name) is only forgotten; a
    /// removal that fails is kept for the next start.
    #[test]
    fn removals_recorded_in_the_database_are_finished_at_start_up() {
        use testing::{Faults, FaultyBlobs};
        let dir = tempfile::tempdir().unwrap();
        let meta = SqliteStore::open_in_memory().unwrap();
        let faults = std::sync::Arc::new(Faults::default());
        let blobs = FaultyBlobs::new(
            LocalBlobStore::new(dir.path()),
            std::sync::Arc::clone(&faults),
        );
        let (alice, bob) = (ClientId([0xa1; 16]), ClientId([0xb0; 16]));
        meta.insert_client(&alice, "alice", Timestamp(0)).unwrap();
        meta.insert_client(&bob, "bob", Timestamp(0)).unwrap();
        let store = |client: ClientId, name: &str| {
            let mut temp = blobs.create_temp(&client, name).unwrap();
            temp.write_all(name.as_bytes()).unwrap();
            let row = FileRecord {
                client_id: client,
                file_name: name.into(),
                path: temp.persist().unwrap(),
                verified: true,
            };
            meta.put_file(&row, Timestamp(0)).unwrap();
            row
        };
        let many = setup::MAX_ORPHANS_REMOVED * 2;
        let alices: Vec<FileRecord> = (0..many).map(|n| store(alice, &format!("f{n}"))).collect();
        let bobs = store(bob, "b.bin");
        // The crash: rows gone, files not.
        assert_eq!(meta.remove_client(&alice).unwrap().unwrap().len(), many);
        // Bob's file removed by a 902 and stored again at the same path before a crash.
        meta.remove_file(&bob, "b.bin", None).unwrap();
        assert_eq!(store(bob, "b.bin"), bobs);
        assert_eq!(meta.pending_removals().unwrap().len(), many + 1);

        faults
            .remove_fails
            .store(true, std::sync::atomic::Ordering::SeqCst);
        let failing = setup::remove_pending(&meta, &blobs).unwrap();
        // A few failures end the pass (the store is likely down): all kept for next time.
        assert_eq!((failing.removed, failing.left), (0, many + 1));
        assert_eq!(meta.pending_removals().unwrap().len(), many + 1);
        faults
            .remove_fails
            .store(false, std::sync::atomic::Ordering::SeqCst);

        // Bob's gone.bin: its row names a later version whose object is missing (a store
        // restored from an older snapshot), so the version recorded when the row moved
        // on may be its last copy.
        let version = |millis: u64| {
            let made = uuid::Builder::from_unix_timestamp_millis(millis, &[7; 10]).into_uuid();
            names::versioned("gone.bin", made.as_u128())
        };
        let t0 = 1_790_000_000_000;
        let mut first = blobs.create_temp(&bob, &version(t0)).unwrap();
        first.write_all(b"last copy").unwrap();
        let last_copy = first.persist().unwrap();
        let gone = |path: String| FileRecord {
            client_id: bob,
            file_name: "gone.bin".into(),
            path,
            verified: true,
        };
        meta.put_file(&gone(last_copy.clone()), Timestamp(0))
            .unwrap();
        let missing = format!("{FILES_DIR}/{}/{}", bob.to_hex(), version(t0 + 1_000));
        meta.put_file(&gone(missing), Timestamp(0)).unwrap();
        // One of Alice's files fails with EIO; where another was is now a directory (its
        // removal cannot succeed): neither keeps the others from their turn.
        let eio = alices[0].path.clone();
        *faults.remove_fails_at.lock().unwrap() = Some(eio.clone());
        std::fs::remove_file(dir.path().join(&alices[1].path)).unwrap();
        std::fs::create_dir(dir.path().join(&alices[1].path)).unwrap();

        setup::recover_at_start_up(&meta, &blobs).unwrap();
        for row in &alices[2..] {
            assert!(!dir.path().join(&row.path).exists(), "{}", row.path);
        }
        assert!(dir.path().join(&eio).is_file());
        assert!(dir.path().join(&alices[1].path).is_dir(), "left alone");
        assert_eq!(
            std::fs::read(dir.path().join(&bobs.path)).unwrap(),
            b"b.bin"
        );
        assert_eq!(
            std::fs::read(dir.path().join(&last_copy)).unwrap(),
            b"last copy"
        );
        assert_eq!(
            meta.pending_removals().unwrap(),
            vec![eio.clone(), last_copy.clone()]
        );

        // The next start, the removals healed but the store unable to say whether an
        // object exists (a busy S3): the failed one goes; the version whose row's object
        // cannot be looked up is neither removed nor taken for a last copy, but kept.
        *faults.remove_fails_at.lock().unwrap() = None;
        faults
            .size_fails
            .store(true, std::sync::atomic::Ordering::SeqCst);
        let unsure = setup::remove_pending(&meta, &blobs).unwrap();
        assert_eq!((unsure.removed, unsure.last_copies, unsure.left), (1, 0, 1));
        assert!(!dir.path().join(&eio).exists());
        assert!(dir.path().join(&last_copy).exists());
        faults
            .size_fails
            .store(false, std::sync::atomic::Ordering::SeqCst);
        // And once it answers: the last copy stays.
        let done = setup::remove_pending(&meta, &blobs).unwrap();
        assert_eq!(
            done,
            setup::PendingDone {
                last_copies: 1,
                ..setup::PendingDone::default()
            }
        );
        assert_eq!(meta.pending_removals().unwrap(), vec![last_copy]);
    }

    #[test]
    fn recovery_removes_temporary_and_unrecorded_files_only() {
        let (dir, meta, blobs, kept, orphan) = data_folder();
        assert_eq!(
            blobs.stored_paths().unwrap(),
            [kept.clone(), orphan.clone()]
        );
        let recovered = recover(&|| meta.files(), 1, &blobs).unwrap();
        assert_eq!(
            recovered,
            Recovered {
                stale_temps: 1,
                orphans: vec![orphan.clone()],
                ..Recovered::default()
            }
        );
        assert!(!dir.path().join(&orphan).exists());
        assert_eq!(std::fs::read(dir.path().join(&kept)).unwrap(), b"kept");
        for foreign in ["README", "not-a-client/x"] {
            assert!(
                dir.path().join(FILES_DIR).join(foreign).exists(),
                "{foreign}"
            );
        }
        assert!(blobs.stored_paths().unwrap() == [kept]);
        // Nothing left to do the second time.
        assert_eq!(
            recover(&|| meta.files(), 1, &blobs).unwrap(),
            Recovered::default()
        );
    }

    /// A pass while serving ([`setup::sweep_shared_store`]) leaves alone what the database
    /// records as a removal under way, removes nothing once the database and the store no
    /// longer belong together, and stops early when told to (with what it did).
    #[test]
    fn recovery_while_serving_spares_recorded_removals_and_stops_when_told() {
        use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
        let nothing = || Ok(Vec::new());
        let never = || false;
        let paired = || Ok(());
        let serving = |spared, stopping, still_paired| setup::WhileServing {
            spared,
            stopping,
            still_paired,
        };
        let (dir, meta, blobs, _kept, orphan) = data_folder();
        let rows = || meta.files();
        let recorded_removal = || Ok(vec![orphan.clone()]);
        let sparing = serving(&recorded_removal, &never, &paired);
        let recovered = setup::recover_sparing(&rows, 1, &blobs, &sparing).unwrap();
        assert_eq!(recovered.orphans, Vec::<String>::new());
        assert!(dir.path().join(&orphan).exists());
        // Recorded only by the time of the second round: spared too.
        let asked = AtomicUsize::new(0);
        let recorded_later = || match asked.fetch_add(1, SeqCst) {
            0 => Ok(Vec::new()),
            _ => Ok(vec![orphan.clone()]),
        };
        let sparing = serving(&recorded_later, &never, &paired);
        let recovered = setup::recover_sparing(&rows, 1, &blobs, &sparing).unwrap();
        assert_eq!(recovered.orphans, Vec::<String>::new());
        assert!(dir.path().join(&orphan).exists());
        // The set-up IDs no longer match before removing: nothing removed.
        let unpaired = || Err("swapped".to_owned());
        let swapped = serving(&nothing, &never, &unpaired);
        let recovered = setup::recover_sparing(&rows, 1, &blobs, &swapped).unwrap();
        assert_eq!(recovered.orphans, Vec::<String>::new());
        assert!(recovered.orphans_skipped.is_some());
        assert!(dir.path().join(&orphan).exists());
        // Told to stop (only) when asked before the second round of listing.
        let asked = AtomicUsize::new(0);
        let second = || asked.fetch_add(1, SeqCst) == 1;
        let stopped = serving(&nothing, &second, &paired);
        let recovered = setup::recover_sparing(&rows, 1, &blobs, &stopped).unwrap();
        assert_eq!(recovered.stale_temps, 0, "removed by the first pass");
        assert!(dir.path().join(&orphan).exists());
        // Told to stop when asked before removing: the orphan stays.
        let asked = AtomicUsize::new(0);
        let before_removing = || asked.fetch_add(1, SeqCst) >= 2;
        let stopped = serving(&nothing, &before_removing, &paired);
        let recovered = setup::recover_sparing(&rows, 1, &blobs, &stopped).unwrap();
        assert_eq!(recovered.orphans, Vec::<String>::new());
        assert!(dir.path().join(&orphan).exists());
        assert_eq!(asked.load(SeqCst), 3);
        // None of those: removed.
        let plain = serving(&nothing, &never, &paired);
        let recovered = setup::recover_sparing(&rows, 1, &blobs, &plain).unwrap();
        assert_eq!(recovered.orphans, std::slice::from_ref(&orphan));
        assert!(!dir.path().join(&orphan).exists());
    }

    /// Passes of the running clean-up ([`setup::sweep_shared_store`]): a removal the
    /// database records is left to its recorder at the first pass that sees it and
    /// finished at the next (overdue); with the store's set-up ID not seen, a pass is
    /// limited to what needs no row, and an unrecorded file stays until they are paired.
    #[test]
    fn passes_while_serving_finish_overdue_removals_and_need_the_set_up_ids() {
        use setup::{sweep_shared_store, SweepOutcome, SweepState};
        use std::sync::atomic::Ordering::SeqCst;
        let storage = testing::MemoryStorage::new();
        let (meta, blobs) = (storage.meta(), storage.blobs());
        meta.record_setup_id("set-up").unwrap();
        blobs.keep_setup_id("set-up").unwrap();
        let client = ClientId([7; 16]);
        meta.insert_client(&client, "carol", Timestamp(0)).unwrap();
        let store = |name: &str| {
            let mut temp = blobs.create_temp(&client, name).unwrap();
            temp.write_all(name.as_bytes()).unwrap();
            temp.persist().unwrap()
        };
        let removed = store("removed.bin");
        let row = FileRecord {
            client_id: client,
            file_name: "removed.bin".into(),
            path: removed.clone(),
            verified: true,
        };
        meta.put_file(&row, Timestamp(0)).unwrap();
        // The row goes and the removal is recorded; the file is not removed (yet).
        meta.remove_file(&client, "removed.bin", None).unwrap();
        let (mut state, never) = (SweepState::default(), || false);
        let first = sweep_shared_store(&meta, &blobs, &never, &mut state);
        assert_eq!(first.outcome, SweepOutcome::Done);
        assert_eq!(
            (first.pending.removed, first.recovered.orphans.len()),
            (0, 0)
        );
        assert!(blobs.size(&removed).is_ok(), "left to its recorder");
        let second = sweep_shared_store(&meta, &blobs, &never, &mut state);
        assert_eq!(second.pending.removed, 1);
        assert!(blobs.size(&removed).is_err());
        assert_eq!(meta.pending_removals().unwrap(), Vec::<String>::new());

        // The store's ID not seen: limited, the unrecorded file kept.
        let unrecorded = store("unrecorded.bin");
        storage.faults().setup_id_unseen.store(true, SeqCst);
        let limited = sweep_shared_store(&meta, &blobs, &never, &mut state);
        assert_eq!(limited.outcome, SweepOutcome::Limited);
        assert!(limited.reason.as_deref().unwrap().contains("set-up ID"));
        assert!(blobs.size(&unrecorded).is_ok());
        storage.faults().setup_id_unseen.store(false, SeqCst);
        let paired = sweep_shared_store(&meta, &blobs, &never, &mut state);
        assert_eq!(paired.outcome, SweepOutcome::Done);
        assert_eq!(paired.recovered.orphans, std::slice::from_ref(&unrecorded));
        // The IDs stop matching during a pass (here: once it has cleaned up abandoned
        // uploads), before its removals: nothing removed, and the pass is limited.
        let later = store("unrecorded-later.bin");
        let unpair = || {
            storage.faults().setup_id_unseen.store(true, SeqCst);
            false
        };
        let cut = sweep_shared_store(&meta, &blobs, &unpair, &mut state);
        assert_eq!(cut.outcome, SweepOutcome::Limited);
        assert_eq!(cut.recovered.orphans, Vec::<String>::new());
        assert!(blobs.size(&later).is_ok());
        storage.faults().setup_id_unseen.store(false, SeqCst);
        // Stopping: reported as cut short.
        let stopped = sweep_shared_store(&meta, &blobs, &|| true, &mut state);
        assert_eq!(stopped.outcome, SweepOutcome::Failed);
    }

    /// A lasting reason to leave unrecorded files alone is the same whatever its counts
    /// (logged once by the running clean-up, not again for each new orphan).
    #[test]
    fn reasons_differing_only_in_counts_are_one() {
        let reason =
            |n: usize| format!("{n} stored files have no row, more than a crash leaves (64)");
        assert!(setup::same_reason(Some(&reason(65)), Some(&reason(70))));
        assert!(!setup::same_reason(Some(&reason(65)), None));
        assert!(!setup::same_reason(
            Some(&reason(65)),
            Some("the database has no client but the store holds 65 unrecorded files")
        ));
        assert!(setup::same_reason(None, None));
    }

    /// A blob store whose listing of stored files is the moment another server commits
    /// a row (it acknowledged that file while this one was starting).
    struct CommitsWhileListing<'a> {
        inner: &'a LocalBlobStore,
        commit: &'a (dyn Fn() + Sync),
    }

    impl fmt::Debug for CommitsWhileListing<'_> {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("CommitsWhileListing")
        }
    }

    impl BlobStore for CommitsWhileListing<'_> {
        fn create_temp(&self, client: &ClientId, name: &str) -> io::Result<Box<dyn TempBlob>> {
            self.inner.create_temp(client, name)
        }
        fn remove(&self, path: &str) -> io::Result<()> {
            self.inner.remove(path)
        }
        fn size(&self, path: &str) -> io::Result<u64> {
            self.inner.size(path)
        }
        fn remove_stale_temps(&self) -> io::Result<usize> {
            self.inner.remove_stale_temps()
        }
        fn stored_paths(&self) -> io::Result<Vec<String>> {
            let listed = self.inner.stored_paths();
            (self.commit)();
            listed
        }
        fn setup_id(&self) -> io::Result<Option<String>> {
            self.inner.setup_id()
        }
        fn keep_setup_id(&self, id: &str) -> io::Result<String> {
            self.inner.keep_setup_id(id)
        }
    }

    /// The row another server commits for the orphan of [`data_folder`] (it acknowledged
    /// that file while this one recovered).
    fn row_of_orphan(orphan: &str) -> FileRecord {
        FileRecord {
            client_id: ClientId([0xab; 16]),
            file_name: "orphan.bin".into(),
            path: orphan.to_owned(),
            verified: false,
        }
    }

    /// Several servers on one database and object store: a file acknowledged by another
    /// server while this one recovers is listed, and its row committed, after recovery
    /// began. Recovery reads the rows after the listing, so it keeps that file.
    #[test]
    fn recovery_reads_the_rows_after_listing_the_files() {
        let (dir, meta, blobs, _kept, orphan) = data_folder();
        let acknowledged = row_of_orphan(&orphan);
        let commit = || {
            meta.put_file(&acknowledged, Timestamp(0)).unwrap();
        };
        let listing = CommitsWhileListing {
            inner: &blobs,
            commit: &commit,
        };
        let recovered = recover(&|| meta.files(), 1, &listing).unwrap();
        assert_eq!(recovered.stale_temps, 1);
        assert!(recovered.orphans.is_empty(), "{:?}", recovered.orphans);
        assert!(dir.path().join(&orphan).exists());
    }

    /// A database that is not the store's (a server started without its `--database`,
    /// on a new, empty `defensive.db`; a stale copy naming few of the files): recovery
    /// would see every stored file as unrecorded. It removes none of them.
    #[test]
    fn recovery_removes_nothing_when_the_database_is_not_the_stores() {
        let (dir, _meta, blobs, kept, orphan) = data_folder();
        let empty = SqliteStore::open_in_memory().unwrap();
        let recovered = recover(&|| empty.files(), 0, &blobs).unwrap();
        assert_eq!(recovered.stale_temps, 1);
        assert!(recovered.orphans.is_empty());
        let why = recovered.orphans_skipped.unwrap();
        assert!(
            why.contains("no client") && why.contains("--database"),
            "{why}"
        );
        assert!(dir.path().join(&kept).exists() && dir.path().join(&orphan).exists());

        // One row, and more unrecorded files than a crash leaves.
        let client = ClientId([0xcd; 16]);
        let many: Vec<String> = (0..=setup::MAX_ORPHANS_REMOVED)
            .map(|i| {
                let mut file = blobs.create_temp(&client, &format!("f{i}")).unwrap();
                file.write_all(b"acknowledged elsewhere").unwrap();
                file.persist().unwrap()
            })
            .collect();
        let stale = SqliteStore::open_in_memory().unwrap();
        stale.insert_client(&client, "bob", Timestamp(0)).unwrap();
        let row = FileRecord {
            client_id: client,
            file_name: "f0".into(),
            path: many[0].clone(),
            verified: true,
        };
        stale.put_file(&row, Timestamp(0)).unwrap();
        let recovered = recover(&|| stale.files(), 1, &blobs).unwrap();
        assert!(recovered.orphans.is_empty());
        let why = recovered.orphans_skipped.unwrap();
        assert!(why.contains("more than a crash leaves"), "{why}");
        for path in many.iter().chain([&kept, &orphan]) {
            assert!(dir.path().join(path).exists(), "{path}");
        }
    }

    /// A file recorded (by another server) between recovery's first reading of the rows
    /// and its removals is kept: the rows are read again just before removing.
    #[test]
    fn recovery_reads_the_rows_again_before_removing() {
        let (dir, meta, blobs, _kept, orphan) = data_folder();
        let acknowledged = row_of_orphan(&orphan);
        let reads = std::cell::Cell::new(0);
        let rows = || {
            reads.set(reads.get() + 1);
            if reads.get() == 2 {
                meta.put_file(&acknowledged, Timestamp(0))?;
            }
            meta.files()
        };
        let recovered = recover(&rows, 1, &blobs).unwrap();
        assert_eq!(reads.get(), 2);
        assert!(recovered.orphans.is_empty(), "{:?}", recovered.orphans);
        assert!(dir.path().join(&orphan).exists());
    }

    /// A version of `disk_name` made at `millis` (a UUIDv7, as the S3 store names them),
    /// stored for `client` with its content.
    fn store_version(
        blobs: &LocalBlobStore,
        client: &ClientId,
        disk_name: &str,
        version: u128,
    ) -> String {
        let mut file = blobs
            .create_temp(client, &names::versioned(disk_name, version))
            .unwrap();
        file.write_all(disk_name.as_bytes()).unwrap();
        file.persist().unwrap()
    }

    fn made_at(millis: u64) -> u128 {
        uuid::Builder::from_unix_timestamp_millis(millis, &[7; 10])
            .into_uuid()
            .as_u128()
    }

    /// Commits a verified row naming `path` for the client's `name`.
    fn record_row(meta: &SqliteStore, client: ClientId, name: &str, path: &str) {
        let row = FileRecord {
            client_id: client,
            file_name: name.into(),
            path: path.to_owned(),
            verified: true,
        };
        meta.put_file(&row, Timestamp(0)).unwrap();
    }

    /// A removal that fails does not keep the others from theirs.
    #[test]
    fn recovery_goes_on_past_a_failed_removal() {
        use testing::{Faults, FaultyBlobs};
        let (dir, meta, local, _kept, orphan) = data_folder();
        let client = ClientId([0xab; 16]);
        let mut second = local.create_temp(&client, "second.bin").unwrap();
        second.write_all(b"also never acknowledged").unwrap();
        let second = second.persist().unwrap();
        let faults = std::sync::Arc::new(Faults::default());
        let first = orphan.clone().min(second.clone());
        let other = orphan.max(second);
        *faults.remove_fails_at.lock().unwrap() = Some(first.clone());
        let blobs = FaultyBlobs::new(local, std::sync::Arc::clone(&faults));
        let recovered = recover(&|| meta.files(), 1, &blobs).unwrap();
        assert_eq!(
            (recovered.orphans, recovered.failed),
            (vec![other.clone()], 1)
        );
        assert!(dir.path().join(&first).exists());
        assert!(!dir.path().join(&other).exists());
    }

    /// A row written before keys had versions names a long disk name (over the 221 bytes
    /// a version's name keeps) whose object is missing (a database restored from an older
    /// backup); the unrecorded versions written since under the shortened name are that
    /// file's, maybe its last copy, and kept. Before, they were taken for unrelated
    /// orphans and removed.
    #[test]
    fn versions_of_a_long_unversioned_row_are_kept_as_possible_last_copies() {
        let (dir, meta, blobs, _kept, orphan) = data_folder();
        let client = ClientId([0xab; 16]);
        let long = "L".repeat(240);
        record_row(
            &meta,
            client,
            "long",
            &format!("{FILES_DIR}/{}/{long}", client.to_hex()),
        );
        let newer = store_version(&blobs, &client, &long, made_at(1_790_000_000_000));
        let recovered = recover(&|| meta.files(), 1, &blobs).unwrap();
        assert_eq!(recovered.orphans, vec![orphan]);
        assert!(
            dir.path().join(&newer).exists(),
            "the file's newer version was removed"
        );
    }

    /// Versions a file's row no longer names because a later one replaced them (S3's key
    /// per upload; a crash or failed delete after the replacement's commit) are removed
    /// however many there are; unrecorded files that are not such versions still count
    /// against the cap, and a version whose replacement's object is missing is kept.
    #[test]
    fn recovery_removes_replaced_versions_beyond_the_cap() {
        let (dir, meta, blobs, kept, orphan) = data_folder();
        let client = ClientId([0xab; 16]);
        let t0 = 1_790_000_000_000;
        let record = |name: &str, path: &str| record_row(&meta, client, name, path);
        let current = store_version(&blobs, &client, "doc.bin", made_at(t0 + 1_000));
        record("doc.bin", &current);
        let replaced: Vec<String> = (0..=setup::MAX_ORPHANS_REMOVED as u64)
            .map(|i| store_version(&blobs, &client, "doc.bin", made_at(t0 + i)))
            .collect();
        // Not replaced: made after the row's version (never acknowledged, or the row is
        // from an older backup), or not dated (a random version).
        let later = store_version(&blobs, &client, "doc.bin", made_at(t0 + 2_000));
        let undated = store_version(&blobs, &client, "doc.bin", uuid::Uuid::new_v4().as_u128());
        // The row of gone.bin names a version whose object is missing.
        let lost = format!(
            "{FILES_DIR}/{}/{}",
            client.to_hex(),
            names::versioned("gone.bin", made_at(t0 + 1_000))
        );
        record("gone.bin", &lost);
        let before_lost = store_version(&blobs, &client, "gone.bin", made_at(t0));
        // ... and a later version, unrecorded (an older database restored): either may be
        // the file's last copy.
        let after_lost = store_version(&blobs, &client, "gone.bin", made_at(t0 + 2_000));

        let recovered = recover(&|| meta.files(), 1, &blobs).unwrap();
        let mut expected_replaced = replaced.clone();
        expected_replaced.sort();
        assert_eq!(recovered.replaced, expected_replaced);
        let mut expected_orphans = vec![orphan, later, undated];
        expected_orphans.sort();
        let mut orphans = recovered.orphans.clone();
        orphans.sort();
        assert_eq!(
            (orphans, recovered.orphans_skipped),
            (expected_orphans, None)
        );
        let mut left = blobs.stored_paths().unwrap();
        left.sort();
        let mut expected_left = vec![kept, current, before_lost.clone(), after_lost.clone()];
        expected_left.sort();
        assert_eq!(left, expected_left);
        assert!(!dir.path().join(&replaced[0]).exists());

        // More unrecorded files than the cap (gone.bin's versions among them, which are never
        // removed but count): they are all kept, replaced versions still go.
        let other = ClientId([0xcd; 16]);
        let many: Vec<String> = (0..setup::MAX_ORPHANS_REMOVED - 1)
            .map(|i| store_version(&blobs, &other, &format!("f{i}"), made_at(t0)))
            .collect();
        let replaced_again = store_version(&blobs, &client, "doc.bin", made_at(t0 + 500));
        let recovered = recover(&|| meta.files(), 1, &blobs).unwrap();
        assert_eq!(recovered.replaced, [replaced_again]);
        assert!(recovered.orphans.is_empty());
        assert!(recovered
            .orphans_skipped
            .unwrap()
            .contains("more than a crash leaves"));
        assert!(many.iter().all(|path| dir.path().join(path).exists()));
        assert!(dir.path().join(&before_lost).exists() && dir.path().join(&after_lost).exists());
    }

    /// A row naming a version written before long disk names were shortened (a store that
    /// took longer keys) and whose object is missing: a later version under the shortened
    /// name is the same file's, maybe its last copy, and kept.
    #[test]
    fn versions_under_a_shortened_name_belong_to_the_file_of_the_longer_one() {
        let (dir, meta, blobs, _, _) = data_folder();
        let client = ClientId([0xab; 16]);
        let t0 = 1_790_000_000_000;
        let long = names::disk_name(&"y".repeat(254));
        let before = format!(
            "{FILES_DIR}/{}/{long}~v{:032x}",
            client.to_hex(),
            made_at(t0)
        );
        record_row(&meta, client, &"y".repeat(254), &before);
        let later = store_version(&blobs, &client, &long, made_at(t0 + 2_000));
        assert!(later.len() < before.len());
        let recovered = recover(&|| meta.files(), 1, &blobs).unwrap();
        assert!(
            !recovered.orphans.contains(&later),
            "{:?}",
            recovered.orphans
        );
        assert!(dir.path().join(&later).exists());
    }

    /// A row naming an undated version (a random one, written before versions were
    /// dated) replaces nothing: the file's other versions are plain orphans (within the
    /// cap), never removed as replaced ones beyond it; and an undated version of a file
    /// whose row names a missing object is kept (it may be the last copy).
    #[test]
    fn recovery_treats_versions_of_an_undated_row_as_orphans() {
        let (dir, meta, blobs, kept, orphan) = data_folder();
        let client = ClientId([0xab; 16]);
        let t0 = 1_790_000_000_000;
        let record = |name: &str, path: &str| record_row(&meta, client, name, path);
        let current = store_version(&blobs, &client, "old.bin", uuid::Uuid::new_v4().as_u128());
        record("old.bin", &current);
        let dated = store_version(&blobs, &client, "old.bin", made_at(t0));
        let undated = store_version(&blobs, &client, "old.bin", uuid::Uuid::new_v4().as_u128());
        let lost = format!(
            "{FILES_DIR}/{}/{}",
            client.to_hex(),
            names::versioned("gone.bin", uuid::Uuid::new_v4().as_u128())
        );
        record("gone.bin", &lost);
        let last_copy = store_version(&blobs, &client, "gone.bin", uuid::Uuid::new_v4().as_u128());

        let recovered = recover(&|| meta.files(), 1, &blobs).unwrap();
        assert!(recovered.replaced.is_empty(), "{:?}", recovered.replaced);
        let mut orphans = recovered.orphans.clone();
        orphans.sort();
        let mut expected = vec![orphan, dated.clone(), undated];
        expected.sort();
        assert_eq!((orphans, recovered.orphans_skipped), (expected, None));
        let mut left = blobs.stored_paths().unwrap();
        left.sort();
        let mut expected_left = vec![kept, current, last_copy];
        expected_left.sort();
        assert_eq!(left, expected_left);

        // Beyond the cap, such versions stay with every other unrecorded file.
        let dated = store_version(&blobs, &client, "old.bin", made_at(t0));
        let other = ClientId([0xcd; 16]);
        for i in 0..setup::MAX_ORPHANS_REMOVED {
            store_version(&blobs, &other, &format!("f{i}"), made_at(t0));
        }
        let recovered = recover(&|| meta.files(), 1, &blobs).unwrap();
        assert!(recovered.replaced.is_empty() && recovered.orphans.is_empty());
        assert!(recovered.orphans_skipped.is_some());
        assert!(dir.path().join(&dated).exists());
    }

    #[test]
    fn recovery_leaves_files_alone_when_a_row_names_a_foreign_path() {
        let (dir, meta, blobs, _kept, orphan) = data_folder();
        let foreign = FileRecord {
            client_id: ClientId([0xab; 16]),
            file_name: "theirs".into(),
            path: "/srv/other-server/theirs".into(),
            verified: true,
        };
        meta.put_file(&foreign, Timestamp(0)).unwrap();
        let recovered = recover(&|| meta.files(), 1, &blobs).unwrap();
        assert_eq!(recovered.stale_temps, 1);
        assert!(recovered.orphans.is_empty());
        assert!(recovered
            .orphans_skipped
            .unwrap()
            .contains("/srv/other-server/theirs"));
        assert!(dir.path().join(&orphan).exists());
    }

    #[test]
    fn own_paths_are_recognised_exactly() {
        let hex = "ab".repeat(16);
        assert!(is_own_path(&format!("files/{hex}/x.bin")));
        for other in [
            format!("files/{hex}"),
            format!("files/{hex}/a/b"),
            format!("files/{hex}/.."),
            format!("files/{}/x", "AB".repeat(16)),
            format!("files/{}/x", "ab".repeat(15)),
            format!("/files/{hex}/x"),
            format!("other/{hex}/x"),
            format!("files/{hex}/"),
        ] {
            assert!(!is_own_path(&other), "{other}");
        }
    }

    #[test]
    fn a_data_folder_is_locked_by_one_server_at_a_time() {
        let dir = tempfile::tempdir().unwrap();
        let first = DataDirLock::acquire(dir.path()).unwrap();
        let error = DataDirLock::acquire(dir.path()).unwrap_err();
        assert_eq!(error.kind(), io::ErrorKind::WouldBlock);
        let message = error.to_string();
        assert!(
            message.contains("in use by another sfc-server"),
            "{message}"
        );
        assert!(
            message.contains(&std::process::id().to_string()),
            "{message}"
        );
        drop(first);
        DataDirLock::acquire(dir.path()).unwrap();
    }

    #[test]
    fn timestamps_format_as_utc() {
        assert_eq!(Timestamp(0).to_string(), "1970-01-01 00:00:00.000");
        assert_eq!(
            Timestamp(951_827_696_789).to_string(),
            "2000-02-29 12:34:56.789"
        );
        assert_eq!(
            Timestamp(1_798_761_599_999).to_string(),
            "2026-12-31 23:59:59.999"
        );
        assert!(Timestamp::now().to_string().starts_with("20"));
    }
}
