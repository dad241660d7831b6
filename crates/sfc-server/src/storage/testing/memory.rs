//! Storage in memory, with fault injection: for tests, fuzzing and other sans-IO drivers
//! of [`crate::session::Core`].
//!
//! [`MemoryStorage`] holds the tables and the files; [`MemoryStorage::meta`] and
//! [`MemoryStorage::blobs`] give a [`MetaStore`] and a [`BlobStore`] over the same state,
//! and [`MemoryStorage::storage`] both as a [`crate::Storage`] for a real server. The
//! state can be inspected at any time ([`MemoryStorage::clients`],
//! [`MemoryStorage::files`], [`MemoryStorage::stored`], [`MemoryStorage::temp_count`]).
//!
//! Semantics follow the real stores: a temporary file becomes visible under its final
//! name only when persisted (atomically replacing an earlier version); an unpersisted
//! temporary file that is dropped disappears; names are unique; `LastSeen` never goes
//! backwards.
//!
//! [`Faults`] switches failures on and off while the state is shared:
//!
//! - `db_down`: every metadata operation fails (a database error);
//! - `disk_full`: writes to temporary files and persisting fail with `ENOSPC`;
//! - [`Faults::db_fails_after`]: the database accepts that many more commits, then fails
//!   (while files can still be written): a commit failing after the rename;
//! - a *durable budget* ([`Faults::crash_after`]): after that many durable operations
//!   (commits, renames, removals) every further one fails, as if the machine had died at
//!   that point. What was applied until then is what a restart would find:
//!   [`MemoryStorage::restart`] drops the temporary files (the start-up clean-up) and
//!   lifts the budget.

use super::faults::Faults;
use crate::storage::names::TEMP_PREFIX;
use crate::storage::{
    BlobStore, ClientRecord, FileRecord, Inserted, MetaStore, Persisted, StoreError, TempBlob,
    Timestamp,
};
use sfc_proto::ClientId;
use std::collections::BTreeMap;
use std::fmt;
use std::io;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

#[derive(Debug, Default)]
struct Tables {
    clients: BTreeMap<ClientId, ClientRecord>,
    files: BTreeMap<(ClientId, String), FileRecord>,
    setup_id: Option<String>,
    pending_removals: std::collections::BTreeSet<String>,
}

#[derive(Debug, Default)]
struct Blobs {
    /// Stored files by path relative to the data folder.
    stored: BTreeMap<String, Vec<u8>>,
    /// Temporary files (uploads in progress, kept versions) by name.
    temps: BTreeMap<u64, Vec<u8>>,
    next_temp: u64,
    /// The set-up ID kept with the files.
    setup_id: Option<String>,
}

#[derive(Debug, Default)]
struct Shared {
    tables: Mutex<Tables>,
    blobs: Mutex<Blobs>,
    faults: Faults,
}

impl Shared {
    fn tables(&self) -> MutexGuard<'_, Tables> {
        self.tables.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn blobs(&self) -> MutexGuard<'_, Blobs> {
        self.blobs.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Tables and files in memory; see the module documentation.
#[derive(Debug, Clone, Default)]
pub struct MemoryStorage {
    shared: Arc<Shared>,
}

impl MemoryStorage {
    /// Empty storage, no faults.
    pub fn new() -> Self {
        Self::default()
    }

    /// The failure switches.
    pub fn faults(&self) -> &Faults {
        &self.shared.faults
    }

    /// A [`MetaStore`] over this state.
    pub fn meta(&self) -> MemoryMeta {
        MemoryMeta {
            shared: Arc::clone(&self.shared),
        }
    }

    /// A [`BlobStore`] over this state.
    pub fn blobs(&self) -> MemoryBlobs {
        MemoryBlobs {
            shared: Arc::clone(&self.shared),
        }
    }

    /// Both stores, for [`crate::RunningServer::start_with`].
    pub fn storage(&self) -> crate::Storage {
        crate::Storage {
            meta: Box::new(self.meta()),
            blobs: Box::new(self.blobs()),
            lock: None,
        }
    }

    /// All clients, by ID.
    pub fn clients(&self) -> Vec<ClientRecord> {
        self.shared.tables().clients.values().cloned().collect()
    }

    /// All file rows, by owner and name.
    pub fn files(&self) -> Vec<FileRecord> {
        self.shared.tables().files.values().cloned().collect()
    }

    /// Stored files (final names only) by relative path.
    pub fn stored(&self) -> BTreeMap<String, Vec<u8>> {
        self.shared.blobs().stored.clone()
    }

    /// Number of temporary files.
    pub fn temp_count(&self) -> usize {
        self.shared.blobs().temps.len()
    }

    /// What a restart after a crash finds: temporary files removed, faults healed.
    pub fn restart(&self) {
        self.shared.blobs().temps.clear();
        self.shared.faults.heal();
    }
}

/// [`MetaStore`] of a [`MemoryStorage`].
pub struct MemoryMeta {
    shared: Arc<Shared>,
}

impl fmt::Debug for MemoryMeta {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MemoryMeta").finish_non_exhaustive()
    }
}

fn touch(tables: &mut Tables, id: &ClientId, now: Timestamp) {
    if let Some(client) = tables.clients.get_mut(id) {
        let now = now.to_string();
        if client.last_seen.as_ref().is_none_or(|seen| *seen < now) {
            client.last_seen = Some(now);
        }
    }
}

impl MetaStore for MemoryMeta {
    fn client(&self, id: &ClientId) -> Result<Option<ClientRecord>, StoreError> {
        self.shared.faults.db()?;
        Ok(self.shared.tables().clients.get(id).cloned())
    }

    fn insert_client(
        &self,
        id: &ClientId,
        name: &str,
        now: Timestamp,
    ) -> Result<Inserted, StoreError> {
        self.shared.faults.db()?;
        let mut tables = self.shared.tables();
        if tables.clients.values().any(|c| c.name == name) {
            return Ok(Inserted::NameTaken);
        }
        if tables.clients.contains_key(id) {
            return Err(StoreError::Database(format!("client {id} exists")));
        }
        self.shared.faults.durable_db()?;
        tables.clients.insert(
            *id,
            ClientRecord {
                id: *id,
                name: name.to_owned(),
                public_key: None,
                last_seen: Some(now.to_string()),
                aes_key: None,
            },
        );
        Ok(Inserted::Ok)
    }

    fn set_keys(
        &self,
        id: &ClientId,
        public_key: Option<&[u8]>,
        aes_key: &[u8],
        now: Timestamp,
    ) -> Result<(), StoreError> {
        self.shared.faults.db()?;
        let mut tables = self.shared.tables();
        if !tables.clients.contains_key(id) {
            return Err(StoreError::Database(format!(
                "no client {id} to store keys for"
            )));
        }
        self.shared.faults.durable_db()?;
        if let Some(client) = tables.clients.get_mut(id) {
            if let Some(key) = public_key {
                if client
                    .public_key
                    .as_deref()
                    .is_some_and(|pinned| pinned != key)
                {
                    return Err(StoreError::Database(format!(
                        "client {id} has another public key on record (key pinning)"
                    )));
                }
                client.public_key = Some(key.to_vec());
            }
            client.aes_key = Some(aes_key.to_vec());
        }
        touch(&mut tables, id, now);
        Ok(())
    }

    fn put_file(&self, file: &FileRecord, now: Timestamp) -> Result<Option<String>, StoreError> {
        self.shared.faults.file_commit()?;
        let mut tables = self.shared.tables();
        if !tables.clients.contains_key(&file.client_id) {
            return Err(StoreError::Database(format!(
                "a file row for client {} that does not exist",
                file.client_id
            )));
        }
        let replaced = tables
            .files
            .insert((file.client_id, file.file_name.clone()), file.clone());
        if let Some(old) = replaced.as_ref().filter(|old| old.path != file.path) {
            tables.pending_removals.insert(old.path.clone());
        }
        touch(&mut tables, &file.client_id, now);
        Ok(replaced.map(|old| old.path))
    }

    fn set_verified(
        &self,
        id: &ClientId,
        file_name: &str,
        now: Timestamp,
    ) -> Result<bool, StoreError> {
        self.shared.faults.durable_db()?;
        let mut tables = self.shared.tables();
        let found = match tables.files.get_mut(&(*id, file_name.to_owned())) {
            Some(file) => {
                file.verified = true;
                true
            }
            None => false,
        };
        touch(&mut tables, id, now);
        Ok(found)
    }

    fn file(&self, id: &ClientId, file_name: &str) -> Result<Option<FileRecord>, StoreError> {
        self.shared.faults.db()?;
        Ok(self
            .shared
            .tables()
            .files
            .get(&(*id, file_name.to_owned()))
            .cloned())
    }

    fn remove_file(
        &self,
        id: &ClientId,
        file_name: &str,
        seen: Option<Timestamp>,
    ) -> Result<Option<FileRecord>, StoreError> {
        self.shared.faults.durable_db()?;
        let mut tables = self.shared.tables();
        let removed = tables.files.remove(&(*id, file_name.to_owned()));
        if let Some(row) = &removed {
            tables.pending_removals.insert(row.path.clone());
        }
        if let Some(now) = seen {
            touch(&mut tables, id, now);
        }
        Ok(removed)
    }

    fn remove_client(&self, id: &ClientId) -> Result<Option<Vec<FileRecord>>, StoreError> {
        self.shared.faults.durable_db()?;
        let mut tables = self.shared.tables();
        if tables.clients.remove(id).is_none() {
            return Ok(None);
        }
        let keys: Vec<_> = tables
            .files
            .keys()
            .filter(|(owner, _)| owner == id)
            .cloned()
            .collect();
        let removed: Vec<FileRecord> = keys
            .iter()
            .filter_map(|key| tables.files.remove(key))
            .collect();
        for row in &removed {
            tables.pending_removals.insert(row.path.clone());
        }
        Ok(Some(removed))
    }

    fn touch(&self, seen: &[(ClientId, Timestamp)]) -> Result<(), StoreError> {
        if seen.is_empty() {
            return Ok(());
        }
        self.shared.faults.durable_db()?;
        let mut tables = self.shared.tables();
        for (id, now) in seen {
            touch(&mut tables, id, *now);
        }
        Ok(())
    }

    fn pending_removals(&self) -> Result<Vec<String>, StoreError> {
        self.shared.faults.db()?;
        Ok(self
            .shared
            .tables()
            .pending_removals
            .iter()
            .cloned()
            .collect())
    }

    fn forget_removals(&self, paths: &[String]) -> Result<(), StoreError> {
        if paths.is_empty() {
            return Ok(());
        }
        self.shared.faults.durable_db()?;
        let mut tables = self.shared.tables();
        for path in paths {
            tables.pending_removals.remove(path);
        }
        Ok(())
    }

    fn clients(&self) -> Result<Vec<ClientRecord>, StoreError> {
        self.shared.faults.db()?;
        let mut clients: Vec<_> = self.shared.tables().clients.values().cloned().collect();
        clients.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(clients)
    }

    fn files(&self) -> Result<Vec<FileRecord>, StoreError> {
        self.shared.faults.db()?;
        Ok(self.shared.tables().files.values().cloned().collect())
    }

    fn setup_id(&self) -> Result<Option<String>, StoreError> {
        self.shared.faults.db()?;
        if self.shared.faults.setup_id_unseen.load(Ordering::SeqCst) {
            return Ok(None);
        }
        Ok(self.shared.tables().setup_id.clone())
    }

    fn record_setup_id(&self, id: &str) -> Result<String, StoreError> {
        self.shared.faults.durable_db()?;
        Ok(self
            .shared
            .tables()
            .setup_id
            .get_or_insert_with(|| id.to_owned())
            .clone())
    }

    fn close(&self) -> Result<(), StoreError> {
        Ok(())
    }
}

/// [`BlobStore`] of a [`MemoryStorage`].
pub struct MemoryBlobs {
    shared: Arc<Shared>,
}

impl fmt::Debug for MemoryBlobs {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MemoryBlobs").finish_non_exhaustive()
    }
}

/// Refuses paths a real store would refuse (see [`super::fs`]).
fn confined(path: &str) -> io::Result<()> {
    let ok = !path.is_empty()
        && !path.starts_with('/')
        && path
            .split('/')
            .all(|c| !c.is_empty() && c != "." && c != "..");
    if ok {
        Ok(())
    } else {
        Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("stored path {path:?} is not a plain relative path"),
        ))
    }
}

impl BlobStore for MemoryBlobs {
    fn create_temp(&self, client: &ClientId, disk_name: &str) -> io::Result<Box<dyn TempBlob>> {
        if disk_name.is_empty()
            || disk_name.contains('/')
            || disk_name == "."
            || disk_name == ".."
            || disk_name.starts_with(TEMP_PREFIX)
        {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("{disk_name:?} is not a plain file name"),
            ));
        }
        let mut blobs = self.shared.blobs();
        let temp = blobs.next_temp;
        blobs.next_temp += 1;
        blobs.temps.insert(temp, Vec::new());
        Ok(Box::new(MemoryTemp {
            shared: Arc::clone(&self.shared),
            temp: Some(temp),
            path: format!(
                "{}/{}/{disk_name}",
                crate::storage::fs::FILES_DIR,
                client.to_hex()
            ),
        }))
    }

    fn remove(&self, path: &str) -> io::Result<()> {
        confined(path)?;
        self.shared.faults.durable()?;
        self.shared.blobs().stored.remove(path);
        Ok(())
    }

    fn open(&self, path: &str) -> io::Result<(Box<dyn io::Read + Send>, u64)> {
        confined(path)?;
        match self.shared.blobs().stored.get(path) {
            Some(bytes) => Ok((Box::new(io::Cursor::new(bytes.clone())), bytes.len() as u64)),
            None => Err(io::Error::from(io::ErrorKind::NotFound)),
        }
    }

    fn size(&self, path: &str) -> io::Result<u64> {
        confined(path)?;
        match self.shared.blobs().stored.get(path) {
            Some(bytes) => Ok(bytes.len() as u64),
            None => Err(io::Error::from(io::ErrorKind::NotFound)),
        }
    }

    fn remove_stale_temps(&self) -> io::Result<usize> {
        let mut blobs = self.shared.blobs();
        let count = blobs.temps.len();
        blobs.temps.clear();
        Ok(count)
    }

    fn stored_paths(&self) -> io::Result<Vec<String>> {
        Ok(self.shared.blobs().stored.keys().cloned().collect())
    }

    fn setup_id(&self) -> io::Result<Option<String>> {
        if self.shared.faults.setup_id_unseen.load(Ordering::SeqCst) {
            return Ok(None);
        }
        Ok(self.shared.blobs().setup_id.clone())
    }

    fn keep_setup_id(&self, id: &str) -> io::Result<String> {
        self.shared.faults.durable()?;
        Ok(self
            .shared
            .blobs()
            .setup_id
            .get_or_insert_with(|| id.to_owned())
            .clone())
    }
}

/// A temporary file of a [`MemoryBlobs`].
struct MemoryTemp {
    shared: Arc<Shared>,
    temp: Option<u64>,
    path: String,
}

impl fmt::Debug for MemoryTemp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MemoryTemp")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

impl MemoryTemp {
    /// Renames the temporary file over its final name; returns the replaced content.
    fn rename(&mut self) -> io::Result<Option<Vec<u8>>> {
        self.shared.faults.disk()?;
        let temp = self
            .temp
            .ok_or_else(|| io::Error::other("temporary file already closed"))?;
        self.shared.faults.durable()?;
        let mut blobs = self.shared.blobs();
        let content = blobs.temps.remove(&temp).unwrap_or_default();
        self.temp = None;
        Ok(blobs.stored.insert(self.path.clone(), content))
    }
}

impl TempBlob for MemoryTemp {
    fn path(&self) -> &str {
        &self.path
    }

    fn write_all(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.shared.faults.disk()?;
        let temp = self
            .temp
            .ok_or_else(|| io::Error::other("temporary file already closed"))?;
        match self.shared.blobs().temps.get_mut(&temp) {
            Some(content) => {
                content.extend_from_slice(bytes);
                Ok(())
            }
            None => Err(io::Error::other("temporary file removed")),
        }
    }

    fn persist(mut self: Box<Self>) -> io::Result<String> {
        self.rename()?;
        Ok(std::mem::take(&mut self.path))
    }

    fn persist_undoable(mut self: Box<Self>) -> io::Result<Box<dyn Persisted>> {
        // The replaced version stays under a temporary name until kept or undone.
        let replaced = self.rename()?;
        let backup = replaced.map(|content| {
            let mut blobs = self.shared.blobs();
            let temp = blobs.next_temp;
            blobs.next_temp += 1;
            blobs.temps.insert(temp, content);
            temp
        });
        Ok(Box::new(MemoryPersisted {
            shared: Arc::clone(&self.shared),
            path: std::mem::take(&mut self.path),
            backup,
        }))
    }
}

impl Drop for MemoryTemp {
    fn drop(&mut self) {
        if let Some(temp) = self.temp.take() {
            self.shared.blobs().temps.remove(&temp);
        }
    }
}

/// A persisted file of a [`MemoryBlobs`] awaiting its row.
struct MemoryPersisted {
    shared: Arc<Shared>,
    path: String,
    backup: Option<u64>,
}

impl fmt::Debug for MemoryPersisted {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MemoryPersisted")
            .field("path", &self.path)
            .field("backup", &self.backup.is_some())
            .finish_non_exhaustive()
    }
}

impl Persisted for MemoryPersisted {
    fn path(&self) -> &str {
        &self.path
    }

    fn keep(self: Box<Self>) -> io::Result<()> {
        if let Some(backup) = self.backup {
            // Not durable on a real disk either: a leftover is removed at start-up.
            self.shared.blobs().temps.remove(&backup);
        }
        Ok(())
    }

    fn undo(self: Box<Self>) -> io::Result<()> {
        self.shared.faults.durable()?;
        let mut blobs = self.shared.blobs();
        match self.backup.and_then(|backup| blobs.temps.remove(&backup)) {
            Some(content) => {
                blobs.stored.insert(self.path.clone(), content);
            }
            None => {
                blobs.stored.remove(&self.path);
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_the_contract_of_the_real_stores() {
        crate::storage::testing::check_contract(&MemoryStorage::new().meta());
        crate::storage::testing::check_setup_id(&MemoryStorage::new().meta());
        crate::storage::testing::check_blob_setup_id(&MemoryStorage::new().blobs());
    }

    #[test]
    fn removes_clients_and_reads_files_back_like_the_real_stores() {
        let storage = MemoryStorage::new();
        crate::storage::testing::check_remove_client(&storage.meta());
        crate::storage::testing::check_open_reads_back(&storage.blobs());
        crate::storage::testing::check_pending_removals(&MemoryStorage::new().meta());
    }

    #[test]
    fn behaves_like_the_real_stores() {
        let storage = MemoryStorage::new();
        let meta = storage.meta();
        let blobs = storage.blobs();
        let id = ClientId([1; 16]);
        let t = Timestamp(1_000);
        assert_eq!(meta.insert_client(&id, "a", t).unwrap(), Inserted::Ok);
        assert_eq!(
            meta.insert_client(&ClientId([2; 16]), "a", t).unwrap(),
            Inserted::NameTaken
        );
        meta.set_keys(&id, Some(b"pk"), &[7; 32], Timestamp(500))
            .unwrap();
        let client = meta.client(&id).unwrap().unwrap();
        assert_eq!(client.last_seen.as_deref(), Some("1970-01-01 00:00:01.000"));
        assert!(meta.set_keys(&ClientId([9; 16]), None, &[1], t).is_err());

        let mut temp = blobs.create_temp(&id, "x").unwrap();
        temp.write_all(b"abc").unwrap();
        assert_eq!(storage.temp_count(), 1);
        let path = temp.persist().unwrap();
        assert_eq!(storage.temp_count(), 0);
        assert_eq!(blobs.size(&path).unwrap(), 3);
        drop(blobs.create_temp(&id, "y").unwrap());
        assert_eq!(storage.temp_count(), 0);
        assert!(blobs.create_temp(&id, "../y").is_err());
        assert!(blobs.remove("../y").is_err());

        // Replacement, undone and kept.
        let mut temp = blobs.create_temp(&id, "x").unwrap();
        temp.write_all(b"v2").unwrap();
        let persisted = temp.persist_undoable().unwrap();
        assert_eq!(storage.stored()[&path], b"v2");
        persisted.undo().unwrap();
        assert_eq!(storage.stored()[&path], b"abc");
        let mut temp = blobs.create_temp(&id, "x").unwrap();
        temp.write_all(b"v3").unwrap();
        temp.persist_undoable().unwrap().keep().unwrap();
        assert_eq!(storage.stored()[&path], b"v3");
        assert_eq!(storage.temp_count(), 0);

        // Faults.
        storage.faults().db_down.store(true, Ordering::SeqCst);
        assert!(meta.client(&id).is_err());
        storage.faults().heal();
        storage.faults().disk_full.store(true, Ordering::SeqCst);
        let mut temp = blobs.create_temp(&id, "z").unwrap();
        assert_eq!(temp.write_all(b"z").unwrap_err().raw_os_error(), Some(28));
        drop(temp);
        storage.faults().heal();
        storage.faults().crash_after(1);
        meta.touch(&[(id, t)]).unwrap();
        assert!(meta.touch(&[(id, t)]).is_err());
        assert!(storage.faults().crashed());
        let mut temp = blobs.create_temp(&id, "w").unwrap();
        temp.write_all(b"w").unwrap();
        assert!(temp.persist().is_err());
        storage.restart();
        assert_eq!(storage.temp_count(), 0);
        assert!(!storage
            .stored()
            .contains_key("files/01010101010101010101010101010101/w"));
    }
}
