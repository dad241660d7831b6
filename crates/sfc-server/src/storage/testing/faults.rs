//! One switchboard of storage failures ([`Faults`]) for every test double: the
//! in-memory stores ([`super::MemoryStorage`]) check it themselves, and
//! [`FaultyMeta`]/[`FaultyBlobs`] put it in front of any other store (SQLite, the local
//! file store) for tests that run a real server.
//!
//! - `db_down`: every metadata operation fails (a database error);
//! - `disk_full`: writes to temporary files and persisting fail with `ENOSPC`;
//! - [`Faults::db_fails_after`]: the database accepts that many more commits, then fails
//!   (while files can still be written): a commit failing after the rename;
//! - [`Faults::file_commits_fail_after`]: the same, counting only commits of `files`
//!   rows (so that periodic LastSeen commits cannot use up the budget);
//!   [`Faults::one_file_commit_fails_after`]: a single one of them fails;
//! - a *durable budget* ([`Faults::crash_after`], in-memory stores only): after that
//!   many durable operations (commits, renames, removals) every further one fails, as
//!   if the machine had died at that point;
//! - `persist_fails` ([`FaultyBlobs`] only): moving a temporary file into place fails
//!   with an I/O error while writes still succeed (an fsync or rename error);
//! - `undo_fails` ([`FaultyBlobs`] only): undoing a move into place fails, the new
//!   version staying in place; `remove_fails`: removing a stored file fails;
//!   `paths_immutable`: the store claims immutable paths;
//! - [`Faults::lose_file_commit_answers`] ([`FaultyMeta`] only): commits of `files` rows
//!   happen but report a failure, as a connection to PostgreSQL that breaks after COMMIT
//!   does; optionally the database is then down;
//! - `setup_id_unseen` (in-memory stores only): both set-up IDs read as none;
//! - six [`Gate`]s ([`FaultyMeta`]/[`FaultyBlobs`] only): `listing_gate` holds the next
//!   `files()` (start-up recovery reads it), `keys_gate` the next store of a client's
//!   keys, `persist_gate` the next move of a temporary file into place, `remove_gate` the
//!   next removal of a stored file, `size_gate` the next size query and `open_gate` the
//!   next open of a stored file, each until the test opens it: a slow recovery, a slow
//!   826, a commit still running when the server shuts down, a slow store under
//!   `/readyz`, a download racing a new version.

use crate::storage::{
    BlobStore, ClientRecord, FileRecord, Inserted, MetaStore, Persisted, StoreError, TempBlob,
    Timestamp,
};
use sfc_proto::ClientId;
use std::io;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, PoisonError};
use std::time::Duration;

/// Failure switches, shared by the stores they are given to.
#[derive(Debug)]
pub struct Faults {
    /// Every metadata operation fails.
    pub db_down: AtomicBool,
    /// Writing or persisting a temporary file fails with `ENOSPC`.
    pub disk_full: AtomicBool,
    /// Persisting a temporary file fails with `EIO` (writing it does not).
    pub persist_fails: AtomicBool,
    /// A move into place happens but reports a [`crate::storage::LeftInPlace`] error (as
    /// a local folder does when its fsync and then its undo both fail).
    pub persist_left_in_place: AtomicBool,
    /// Undoing a move into place fails with `EIO`, leaving the new version in place.
    pub undo_fails: AtomicBool,
    /// Removing a stored file fails with `EIO` ([`FaultyBlobs`] only).
    pub remove_fails: AtomicBool,
    /// Size queries fail with `EIO` ([`FaultyBlobs`] only): a store that cannot answer.
    pub size_fails: AtomicBool,
    /// A [`FaultyBlobs`] says its paths are immutable (as S3's are) whatever the store
    /// behind it says: for tests that give every version a name of their own.
    pub paths_immutable: AtomicBool,
    /// Both set-up IDs (the database's, the store's) read as none, as reads just before
    /// another server wrote them do (in-memory stores only).
    pub setup_id_unseen: AtomicBool,
    /// Commits of `files` rows are not made, and report that their outcome is not known
    /// (a commit still waiting for a synchronous standby, as the store sees it).
    pub file_commits_uncertain: AtomicBool,
    /// Commits of `files` rows happen but report a failure.
    file_answers_lost: AtomicBool,
    /// ... and the database is down from then on.
    down_after_lost_answer: AtomicBool,
    /// Durable operations still allowed (`u64::MAX`: unlimited).
    budget: AtomicU64,
    /// Database commits still allowed (`u64::MAX`: unlimited).
    db_budget: AtomicU64,
    /// Commits of `files` rows still allowed (`u64::MAX`: unlimited).
    file_budget: AtomicU64,
    /// Commits of `files` rows to let through before one fails alone (`u64::MAX`: none).
    file_failure_after: AtomicU64,
    /// Holds the next `files()` of a [`FaultyMeta`].
    pub listing_gate: Gate,
    /// Holds the next `set_keys` of a [`FaultyMeta`] (an 826's or 827's key store).
    pub keys_gate: Gate,
    /// Holds the next move into place of a [`FaultyBlobs`] temporary file.
    pub persist_gate: Gate,
    /// Holds the next removal of a stored file by a [`FaultyBlobs`].
    pub remove_gate: Gate,
    /// Holds the next size query of a [`FaultyBlobs`] (`/readyz`'s probe makes one).
    pub size_gate: Gate,
    /// Holds the next open of a stored file by a [`FaultyBlobs`] (a download's).
    pub open_gate: Gate,
    /// Size queries a [`FaultyBlobs`] passed on (an S3 `HEAD` each on a real store).
    pub size_queries: AtomicU64,
    /// Row lookups (`file`) a [`FaultyMeta`] was asked for, failed ones included.
    pub file_lookups: AtomicU64,
    /// A stored path whose removal by a [`FaultyBlobs`] fails with `EIO` (others do not).
    pub remove_fails_at: std::sync::Mutex<Option<String>>,
}

impl Default for Faults {
    fn default() -> Self {
        Faults {
            db_down: AtomicBool::new(false),
            disk_full: AtomicBool::new(false),
            persist_fails: AtomicBool::new(false),
            undo_fails: AtomicBool::new(false),
            remove_fails: AtomicBool::new(false),
            size_fails: AtomicBool::new(false),
            paths_immutable: AtomicBool::new(false),
            setup_id_unseen: AtomicBool::new(false),
            file_commits_uncertain: AtomicBool::new(false),
            file_answers_lost: AtomicBool::new(false),
            down_after_lost_answer: AtomicBool::new(false),
            budget: AtomicU64::new(u64::MAX),
            db_budget: AtomicU64::new(u64::MAX),
            file_budget: AtomicU64::new(u64::MAX),
            file_failure_after: AtomicU64::new(u64::MAX),
            listing_gate: Gate::default(),
            keys_gate: Gate::default(),
            persist_gate: Gate::default(),
            remove_gate: Gate::default(),
            size_gate: Gate::default(),
            open_gate: Gate::default(),
            size_queries: AtomicU64::new(0),
            file_lookups: AtomicU64::new(0),
            persist_left_in_place: AtomicBool::new(false),
            remove_fails_at: std::sync::Mutex::new(None),
        }
    }
}

/// The longest a [`Gate`] holds a call.
pub const GATE_PATIENCE: Duration = Duration::from_secs(120);

/// Holds one store call until the test lets it go on: [`Gate::hold_next`] arms it, the
/// next call through it reports that it arrived ([`Gate::wait_arrived`]) and waits until
/// [`Gate::open`]. Calls pass freely while it is not armed.
#[derive(Debug, Default)]
pub struct Gate {
    state: Mutex<GateState>,
    changed: Condvar,
}

#[derive(Debug, Default)]
struct GateState {
    armed: bool,
    arrived: bool,
    open: bool,
}

impl Gate {
    /// The next call through the gate waits for [`Gate::open`].
    pub fn hold_next(&self) {
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        *state = GateState {
            armed: true,
            ..GateState::default()
        };
    }

    /// Waits until the held call has arrived; false if it did not within `timeout`.
    pub fn wait_arrived(&self, timeout: Duration) -> bool {
        let state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        let (state, _) = self
            .changed
            .wait_timeout_while(state, timeout, |s| !s.arrived)
            .unwrap_or_else(PoisonError::into_inner);
        state.arrived
    }

    /// Lets the held call (or the next one, if none has arrived yet) go on.
    pub fn open(&self) {
        self.state
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .open = true;
        self.changed.notify_all();
    }

    /// Called by the store: waits here if the gate is armed, for [`Gate::open`] or at
    /// most [`GATE_PATIENCE`] (a test that failed before opening it leaves no thread
    /// blocked for good).
    fn pass(&self) {
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        if !state.armed {
            return;
        }
        state.armed = false;
        state.arrived = true;
        self.changed.notify_all();
        let _open = self
            .changed
            .wait_timeout_while(state, GATE_PATIENCE, |s| !s.open)
            .unwrap_or_else(PoisonError::into_inner);
    }
}

impl Faults {
    /// Allows `n` more durable operations; every later one fails (a simulated crash).
    pub fn crash_after(&self, n: u64) {
        self.budget.store(n, Ordering::SeqCst);
    }

    /// Allows `n` more database commits; later ones fail until [`Faults::heal`] or
    /// [`Faults::db_recovers`].
    pub fn db_fails_after(&self, n: u64) {
        self.db_budget.store(n, Ordering::SeqCst);
    }

    /// Allows `n` more commits of `files` rows; later ones fail until
    /// [`Faults::db_recovers`].
    pub fn file_commits_fail_after(&self, n: u64) {
        self.file_budget.store(n, Ordering::SeqCst);
    }

    /// Allows `n` more commits of `files` rows, fails the next one, and allows every
    /// later one: a single failed commit, with the database fine again at once.
    pub fn one_file_commit_fails_after(&self, n: u64) {
        self.file_failure_after.store(n, Ordering::SeqCst);
    }

    /// Whether the next commit of a `files` row may go through (taking one unit of the
    /// budgets).
    fn file_commit_allowed(&self) -> bool {
        let single_failure =
            self.file_failure_after
                .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |left| match left {
                    u64::MAX => None,
                    0 => Some(u64::MAX),
                    n => Some(n - 1),
                })
                == Ok(0);
        !single_failure && spend(&self.file_budget)
    }

    /// Commits of `files` rows (stored, or removed with their client or alone) take
    /// effect but report a failure (their answer lost);
    /// with `then_down`, the first such commit also takes the database down (`db_down`),
    /// so that it cannot be asked what happened. Until [`Faults::db_recovers`].
    pub fn lose_file_commit_answers(&self, then_down: bool) {
        self.down_after_lost_answer
            .store(then_down, Ordering::SeqCst);
        self.file_answers_lost.store(true, Ordering::SeqCst);
    }

    /// What a commit of `files` rows that happened answers: `result`, or a failure when
    /// answers are lost ([`Faults::lose_file_commit_answers`]).
    fn answer<T>(&self, result: T) -> Result<T, StoreError> {
        if !self.file_answers_lost.load(Ordering::SeqCst) {
            return Ok(result);
        }
        if self.down_after_lost_answer.load(Ordering::SeqCst) {
            self.db_down.store(true, Ordering::SeqCst);
        }
        Err(StoreError::Database(
            "connection lost after the commit (injected)".into(),
        ))
    }

    /// Ends `db_down`, [`Faults::db_fails_after`], [`Faults::file_commits_fail_after`]
    /// and [`Faults::lose_file_commit_answers`].
    pub fn db_recovers(&self) {
        self.file_answers_lost.store(false, Ordering::SeqCst);
        self.down_after_lost_answer.store(false, Ordering::SeqCst);
        self.db_down.store(false, Ordering::SeqCst);
        self.db_budget.store(u64::MAX, Ordering::SeqCst);
        self.file_budget.store(u64::MAX, Ordering::SeqCst);
        self.file_failure_after.store(u64::MAX, Ordering::SeqCst);
    }

    /// True once the durable budget is spent.
    pub fn crashed(&self) -> bool {
        self.budget.load(Ordering::SeqCst) == 0
    }

    /// Lifts the durable budget and clears both switches.
    pub fn heal(&self) {
        self.budget.store(u64::MAX, Ordering::SeqCst);
        self.db_recovers();
        self.disk_full.store(false, Ordering::SeqCst);
        self.persist_fails.store(false, Ordering::SeqCst);
    }

    pub(super) fn db(&self) -> Result<(), StoreError> {
        if self.db_down.load(Ordering::SeqCst) || self.crashed() {
            Err(StoreError::Database(
                "database unavailable (injected)".into(),
            ))
        } else {
            Ok(())
        }
    }

    /// Spends one durable operation, or fails when none is left.
    pub(super) fn durable(&self) -> io::Result<()> {
        if spend(&self.budget) {
            Ok(())
        } else {
            Err(io::Error::other("the machine is down (injected crash)"))
        }
    }

    pub(super) fn durable_db(&self) -> Result<(), StoreError> {
        self.db()?;
        if !spend(&self.db_budget) {
            return Err(StoreError::Database("commit failed (injected)".into()));
        }
        self.durable()
            .map_err(|e| StoreError::Database(e.to_string()))
    }

    /// A commit of a `files` row: [`Faults::durable_db`] and the file commit budget.
    pub(super) fn file_commit(&self) -> Result<(), StoreError> {
        if !self.file_commit_allowed() {
            return Err(StoreError::Database("commit failed (injected)".into()));
        }
        self.durable_db()
    }

    /// Persisting: `disk_full` or `persist_fails`.
    fn persist(&self) -> io::Result<()> {
        self.disk()?;
        if self.persist_fails.load(Ordering::SeqCst) {
            Err(io::Error::from_raw_os_error(5)) // EIO
        } else {
            Ok(())
        }
    }

    pub(super) fn disk(&self) -> io::Result<()> {
        if self.disk_full.load(Ordering::SeqCst) {
            Err(io::Error::from_raw_os_error(28)) // ENOSPC
        } else {
            Ok(())
        }
    }
}

/// Takes one unit of a budget; false when it is spent.
fn spend(budget: &AtomicU64) -> bool {
    budget
        .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |left| match left {
            0 => None,
            u64::MAX => Some(u64::MAX),
            n => Some(n - 1),
        })
        .is_ok()
}

/// A [`MetaStore`] that consults [`Faults`] before passing each call on (the durable
/// budget aside).
#[derive(Debug)]
pub struct FaultyMeta<M> {
    inner: M,
    faults: Arc<Faults>,
}

impl<M: MetaStore> FaultyMeta<M> {
    /// `inner` behind `faults`.
    pub fn new(inner: M, faults: Arc<Faults>) -> Self {
        FaultyMeta { inner, faults }
    }

    fn commit(&self) -> Result<(), StoreError> {
        self.faults.db()?;
        if spend(&self.faults.db_budget) {
            Ok(())
        } else {
            Err(StoreError::Database("commit failed (injected)".into()))
        }
    }
}

impl<M: MetaStore> MetaStore for FaultyMeta<M> {
    fn client(&self, id: &ClientId) -> Result<Option<ClientRecord>, StoreError> {
        self.faults.db()?;
        self.inner.client(id)
    }
    fn insert_client(
        &self,
        id: &ClientId,
        name: &str,
        now: Timestamp,
    ) -> Result<Inserted, StoreError> {
        self.commit()?;
        self.inner.insert_client(id, name, now)
    }
    fn set_keys(
        &self,
        id: &ClientId,
        public_key: Option<&[u8]>,
        aes_key: &[u8],
        now: Timestamp,
    ) -> Result<(), StoreError> {
        self.faults.keys_gate.pass();
        self.commit()?;
        self.inner.set_keys(id, public_key, aes_key, now)
    }
    fn put_file(&self, file: &FileRecord, now: Timestamp) -> Result<Option<String>, StoreError> {
        self.commit()?;
        if self.faults.file_commits_uncertain.load(Ordering::SeqCst) {
            return Err(StoreError::Uncertain(
                "whether the commit happened is not known (injected)".into(),
            ));
        }
        if !self.faults.file_commit_allowed() {
            return Err(StoreError::Database("commit failed (injected)".into()));
        }
        let replaced = self.inner.put_file(file, now)?;
        self.faults.answer(replaced)
    }
    fn file(&self, id: &ClientId, file_name: &str) -> Result<Option<FileRecord>, StoreError> {
        self.faults.file_lookups.fetch_add(1, Ordering::SeqCst);
        self.faults.db()?;
        self.inner.file(id, file_name)
    }
    fn set_verified(
        &self,
        id: &ClientId,
        file_name: &str,
        now: Timestamp,
    ) -> Result<bool, StoreError> {
        self.commit()?;
        self.inner.set_verified(id, file_name, now)
    }
    fn remove_file(
        &self,
        id: &ClientId,
        file_name: &str,
        seen: Option<Timestamp>,
    ) -> Result<Option<FileRecord>, StoreError> {
        self.commit()?;
        let removed = self.inner.remove_file(id, file_name, seen)?;
        self.faults.answer(removed)
    }
    fn remove_client(&self, id: &ClientId) -> Result<Option<Vec<FileRecord>>, StoreError> {
        self.commit()?;
        let removed = self.inner.remove_client(id)?;
        self.faults.answer(removed)
    }
    fn touch(&self, seen: &[(ClientId, Timestamp)]) -> Result<(), StoreError> {
        self.commit()?;
        self.inner.touch(seen)
    }
    // Start-up and shutdown read and close whatever the switches say.
    fn clients(&self) -> Result<Vec<ClientRecord>, StoreError> {
        self.inner.clients()
    }
    fn files(&self) -> Result<Vec<FileRecord>, StoreError> {
        self.faults.listing_gate.pass();
        self.inner.files()
    }
    fn pending_removals(&self) -> Result<Vec<String>, StoreError> {
        self.faults.db()?;
        self.inner.pending_removals()
    }
    fn forget_removals(&self, paths: &[String]) -> Result<(), StoreError> {
        if paths.is_empty() {
            return Ok(());
        }
        self.commit()?;
        self.inner.forget_removals(paths)
    }
    fn files_of(&self, id: &ClientId) -> Result<Vec<FileRecord>, StoreError> {
        self.faults.db()?;
        self.inner.files_of(id)
    }
    fn setup_id(&self) -> Result<Option<String>, StoreError> {
        self.faults.db()?;
        self.inner.setup_id()
    }
    fn record_setup_id(&self, id: &str) -> Result<String, StoreError> {
        self.commit()?;
        self.inner.record_setup_id(id)
    }
    fn close(&self) -> Result<(), StoreError> {
        self.inner.close()
    }
    fn is_shared(&self) -> bool {
        self.inner.is_shared()
    }
}

/// A [`BlobStore`] whose temporary files fail with `ENOSPC` while
/// [`Faults::disk_full`] is on, cannot be moved into place while
/// [`Faults::persist_fails`] is, and wait at [`Faults::persist_gate`] before they are.
#[derive(Debug)]
pub struct FaultyBlobs<B> {
    inner: B,
    faults: Arc<Faults>,
}

impl<B: BlobStore> FaultyBlobs<B> {
    /// `inner` behind `faults`.
    pub fn new(inner: B, faults: Arc<Faults>) -> Self {
        FaultyBlobs { inner, faults }
    }
}

#[derive(Debug)]
struct FaultyTemp {
    inner: Box<dyn TempBlob>,
    faults: Arc<Faults>,
}

impl<B: BlobStore> BlobStore for FaultyBlobs<B> {
    fn create_temp(&self, client: &ClientId, disk_name: &str) -> io::Result<Box<dyn TempBlob>> {
        Ok(Box::new(FaultyTemp {
            inner: self.inner.create_temp(client, disk_name)?,
            faults: Arc::clone(&self.faults),
        }))
    }
    fn remove(&self, path: &str) -> io::Result<()> {
        self.faults.remove_gate.pass();
        let fails_here = self
            .faults
            .remove_fails_at
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .as_deref()
            == Some(path);
        if fails_here || self.faults.remove_fails.load(Ordering::SeqCst) {
            return Err(io::Error::from_raw_os_error(5)); // EIO
        }
        self.inner.remove(path)
    }
    fn remove_client(&self, client: &ClientId) -> io::Result<()> {
        self.inner.remove_client(client)
    }
    fn open(&self, path: &str) -> io::Result<(Box<dyn io::Read + Send>, u64)> {
        self.faults.open_gate.pass();
        self.inner.open(path)
    }
    fn size(&self, path: &str) -> io::Result<u64> {
        self.faults.size_queries.fetch_add(1, Ordering::SeqCst);
        self.faults.size_gate.pass();
        if self.faults.size_fails.load(Ordering::SeqCst) {
            return Err(io::Error::from_raw_os_error(5)); // EIO
        }
        self.inner.size(path)
    }
    fn paths_are_immutable(&self) -> bool {
        self.faults.paths_immutable.load(Ordering::SeqCst) || self.inner.paths_are_immutable()
    }
    fn is_shared(&self) -> bool {
        self.inner.is_shared()
    }
    fn close(&self, within: std::time::Duration) -> bool {
        self.inner.close(within)
    }
    fn remove_stale_temps(&self) -> io::Result<usize> {
        self.inner.remove_stale_temps()
    }
    fn stored_paths(&self) -> io::Result<Vec<String>> {
        self.inner.stored_paths()
    }
    fn setup_id(&self) -> io::Result<Option<String>> {
        self.inner.setup_id()
    }
    fn keep_setup_id(&self, id: &str) -> io::Result<String> {
        self.faults.disk()?;
        self.inner.keep_setup_id(id)
    }
}

impl TempBlob for FaultyTemp {
    fn path(&self) -> &str {
        self.inner.path()
    }
    fn write_all(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.faults.disk()?;
        self.inner.write_all(bytes)
    }
    fn suspend(&mut self) -> io::Result<()> {
        self.inner.suspend()
    }
    fn persist(self: Box<Self>) -> io::Result<String> {
        self.faults.persist_gate.pass();
        self.faults.persist()?;
        self.inner.persist()
    }
    fn persist_undoable(self: Box<Self>) -> io::Result<Box<dyn Persisted>> {
        self.faults.persist_gate.pass();
        self.faults.persist()?;
        let inner = self.inner.persist_undoable()?;
        if self.faults.persist_left_in_place.load(Ordering::SeqCst) {
            // Neither kept nor undone: what a crash leaves (the earlier version as a
            // temporary file, removed at start-up).
            drop(inner);
            return Err(io::Error::other(crate::storage::LeftInPlace {
                cause: io::Error::from_raw_os_error(5),
                undo: io::Error::from_raw_os_error(5),
            }));
        }
        Ok(Box::new(FaultyPersisted {
            inner,
            faults: self.faults,
        }))
    }
}

/// A file moved into place through [`FaultyBlobs`]: its undo may fail (`undo_fails`).
#[derive(Debug)]
struct FaultyPersisted {
    inner: Box<dyn Persisted>,
    faults: Arc<Faults>,
}

impl Persisted for FaultyPersisted {
    fn path(&self) -> &str {
        self.inner.path()
    }
    fn keep(self: Box<Self>) -> io::Result<()> {
        self.inner.keep()
    }
    fn undo(self: Box<Self>) -> io::Result<()> {
        if self.faults.undo_fails.load(Ordering::SeqCst) {
            self.inner.keep()?;
            return Err(io::Error::from_raw_os_error(5)); // EIO
        }
        self.inner.undo()
    }
}
