//! Opening the standard storage in the data folder (folders, modes, the folder lock,
//! SQLite or the `--database` PostgreSQL) and the start-up clean-up after an earlier run
//! ([`recover`]), after checking that the database and the file store belong together
//! ([`pair_at_start_up`]); on storage other servers share, the same clean-up while
//! serving ([`sweep_shared_store`]).

use super::fs::{DataDirLock, LocalBlobStore, FILES_DIR};
use super::names;
use super::pairing::{self, Paired, SETUP_ID_PATH};
use super::perms;
use super::postgres::PostgresStore;
use super::s3::S3BlobStore;
use super::sqlite::SqliteStore;
use super::{BlobStore, FileRecord, MetaStore, StoreError};
use crate::config::{Database, ServerConfig, Store, DB_FILE};
use anyhow::Context;
use sfc_proto::ClientId;
use std::borrow::Cow;
use std::io;
use std::path::Path;
use std::time::Duration;

/// The stores a server runs on. [`crate::Server::bind`] opens the standard ones (SQLite
/// `defensive.db` and the local `files/` folder); tests can pass their own (fault
/// injection) to [`crate::Server::bind_with`].
#[derive(Debug)]
pub struct Storage {
    /// Clients and files.
    pub meta: Box<dyn MetaStore>,
    /// Received files.
    pub blobs: Box<dyn BlobStore>,
    /// The lock on the data folder, held as long as the server runs (`None` for
    /// storage that is not a local folder, or a filesystem without locks).
    pub lock: Option<DataDirLock>,
}

impl Storage {
    /// Opens `defensive.db` (creating and migrating it) and the local blob store in the
    /// data folder (creating it), and removes temporary files left by an earlier run.
    pub fn open(config: &ServerConfig) -> anyhow::Result<Self> {
        // A data folder the server creates is owner-only (storage::perms); so is files/.
        perms::create_private_dir_all(&config.data_dir).with_context(|| {
            format!(
                "cannot create the data folder {}",
                config.data_dir.display()
            )
        })?;
        let files = config.data_dir.join(FILES_DIR);
        let tightened = perms::tighten(&files, perms::DIR_MODE).with_context(|| {
            format!(
                "cannot make the folder {} owner-only (chmod 0700; it must belong to the user \
                 running the server)",
                files.display()
            )
        })?;
        if tightened {
            tracing::warn!(path = %files.display(), "was readable by other users; now 0700");
        }
        // Before anything is opened or cleaned up: another server may be using the folder.
        let mut lock = match DataDirLock::acquire(&config.data_dir) {
            Ok(lock) => Some(lock),
            Err(error) if error.kind() == std::io::ErrorKind::WouldBlock => {
                return Err(anyhow::anyhow!(error))
            }
            Err(error) => {
                let lock = config.data_dir.join(super::fs::LOCK_FILE);
                tracing::warn!(%error, path = %lock.display(), "cannot lock the data folder; make sure no other server uses it");
                None
            }
        };
        // A `file://` store elsewhere is this server's alone too: start-up removes every
        // file there that none of its rows names, another server's included.
        if let (Store::Folder(root), Some(lock)) = (&config.store, lock.as_mut()) {
            perms::create_private_dir_all(root)
                .with_context(|| format!("cannot create the folder {}", root.display()))?;
            let same = |a: &Path, b: &Path| matches!((a.canonicalize(), b.canonicalize()), (Ok(a), Ok(b)) if a == b);
            if !same(root, &config.data_dir) {
                match lock.also(root) {
                    Ok(()) => {}
                    Err(error) if error.kind() == std::io::ErrorKind::WouldBlock => {
                        return Err(anyhow::anyhow!(error))
                    }
                    Err(error) => {
                        let path = root.join(super::fs::LOCK_FILE);
                        tracing::warn!(%error, path = %path.display(), "cannot lock the store folder; make sure no other server uses it");
                    }
                }
            }
        }
        let meta = open_meta(config)?;
        let blobs = open_blobs(&config.data_dir, &config.store, config.recovery_grace())?;
        Ok(Storage { meta, blobs, lock })
    }
}

/// The blob store `store` names: `files/` in the data folder or another folder, or an S3
/// bucket (`grace`: [`ServerConfig::recovery_grace`], see [`super::s3`]).
pub fn open_blobs(
    data_dir: &Path,
    store: &Store,
    grace: Duration,
) -> anyhow::Result<Box<dyn BlobStore>> {
    Ok(match store {
        Store::DataDir => Box::new(LocalBlobStore::new(data_dir)),
        Store::Folder(root) => {
            perms::create_private_dir_all(&root.join(FILES_DIR))
                .with_context(|| format!("cannot create the folder {}", root.display()))?;
            Box::new(LocalBlobStore::new(root))
        }
        Store::S3(location) => {
            let blobs = S3BlobStore::open(location, grace)
                .with_context(|| format!("cannot open the object store {location}"))?;
            tracing::info!(store = %location, "files in object storage");
            Box::new(blobs)
        }
    })
}

/// The blob store `store` names, for the admin views: as [`open_blobs`], but a store
/// folder must exist already (a mistyped `--store` is an error, not a new empty store
/// that shows every file missing), and nothing is created.
pub fn open_existing_blobs(data_dir: &Path, store: &Store) -> anyhow::Result<Box<dyn BlobStore>> {
    if let Store::Folder(root) = store {
        let files = root.join(FILES_DIR);
        if !files.is_dir() {
            anyhow::bail!(
                "no {FILES_DIR}/ folder in {} (is --store the folder the server stores in?)",
                root.display()
            );
        }
        return Ok(Box::new(LocalBlobStore::new(root)));
    }
    // Recovery never runs here, so the grace period does not matter.
    open_blobs(data_dir, store, Duration::MAX)
}

/// The metadata store `config.database` names, created or migrated as needed.
fn open_meta(config: &ServerConfig) -> anyhow::Result<Box<dyn MetaStore>> {
    Ok(match &config.database {
        Database::Sqlite => {
            let db = config.db_path();
            Box::new(
                SqliteStore::open(&db)
                    .with_context(|| format!("cannot open the database {}", db.display()))?,
            )
        }
        Database::Postgres(url) => {
            let store = PostgresStore::open(url)
                .with_context(|| format!("cannot open the database {url}"))?;
            tracing::info!(database = %url, pool = url.pool_size, "metadata in PostgreSQL");
            Box::new(store)
        }
    })
}

/// The metadata store of an existing set-up, for the admin views: never created nor
/// migrated.
pub fn open_existing_meta(
    data_dir: &Path,
    database: &Database,
) -> anyhow::Result<Box<dyn MetaStore>> {
    Ok(match database {
        Database::Sqlite => {
            let path = data_dir.join(DB_FILE);
            if !path.is_file() {
                anyhow::bail!(
                    "no database at {} (has the server run with this data folder?)",
                    path.display()
                );
            }
            Box::new(
                SqliteStore::open_existing(&path)
                    .with_context(|| format!("cannot open {}", path.display()))?,
            )
        }
        Database::Postgres(url) => Box::new(
            PostgresStore::open_existing(url).with_context(|| format!("cannot open {url}"))?,
        ),
    })
}

/// Where the store `config` names keeps its set-up ID ([`pairing::SETUP_ID_PATH`]), for
/// messages.
pub fn setup_id_location(config: &ServerConfig) -> String {
    match &config.store {
        Store::DataDir => config.data_dir.join(SETUP_ID_PATH).display().to_string(),
        Store::Folder(root) => root.join(SETUP_ID_PATH).display().to_string(),
        // `s3://BUCKET/PREFIX` (`s3://BUCKET/` without a prefix), as the store is named.
        Store::S3(location) => format!(
            "{}/{SETUP_ID_PATH}",
            location.to_string().trim_end_matches('/')
        ),
    }
}

/// Checks that the database and the file store belong together, recording the set-up ID
/// where it is missing ([`pairing`]); a mismatched pair stops the server (blocking).
/// `location` says where the store keeps the ID ([`setup_id_location`]).
pub fn pair_at_start_up(
    meta: &dyn MetaStore,
    blobs: &dyn BlobStore,
    location: &str,
) -> anyhow::Result<()> {
    match pairing::pair(meta, blobs, &pairing::new_setup_id(), location)? {
        Paired::Matched(id) => tracing::debug!(setup = %id, "database and file store paired"),
        Paired::StoreAdopted(id) => tracing::info!(
            setup = %id,
            "the file store had no set-up ID; it now has the database's"
        ),
        Paired::New(id) => tracing::info!(
            setup = %id,
            "new set-up: its ID is recorded in the database and the file store"
        ),
        Paired::Unclaimed { stored } => tracing::warn!(
            stored,
            "the database has no client and no set-up ID, and the file store holds files but \
             no set-up ID: neither is given one (is this the database these files belong \
             to? check --database, --data-dir and --store); the next start with a client \
             registered gives both one"
        ),
    }
    Ok(())
}

/// Reads the tables once and removes what a crash can leave behind (blocking). A
/// database that cannot be read stops the server; a failed clean-up is only logged.
pub fn recover_at_start_up(meta: &dyn MetaStore, blobs: &dyn BlobStore) -> anyhow::Result<()> {
    let (clients, files) = match (meta.clients(), meta.files()) {
        (Ok(clients), Ok(files)) => (clients, files),
        (Err(error), _) | (_, Err(error)) => {
            return Err(anyhow::anyhow!("cannot read the database: {error}"))
        }
    };
    // First the removals the database recorded (a crash or a store failure cut them
    // short): however many, they are not unrecorded files whose count could mean a
    // wrong database.
    match remove_pending(meta, blobs) {
        Ok(pending) => {
            if pending.removed > 0 {
                tracing::info!(
                    removed = pending.removed,
                    "removed stored files whose removal an earlier run had begun (their rows were already gone)"
                );
            }
            if pending.left > 0 {
                tracing::warn!(
                    left = pending.left,
                    "cannot finish the removals an earlier run had begun: tried again at the next start"
                );
            }
        }
        Err(error) => tracing::warn!(%error, "cannot finish the removals an earlier run had begun"),
    }
    match recover(&|| meta.files(), clients.len(), blobs) {
        Ok(recovered) => log_recovered(&recovered, Pass::StartUp),
        Err(error) => tracing::warn!(%error, "cannot clean up after an earlier run"),
    }
    tracing::info!(
        clients = clients.len(),
        files = files.len(),
        "database ready"
    );
    Ok(())
}

/// What [`sweep_shared_store`] keeps from one pass to the next.
#[derive(Debug, Default)]
pub struct SweepState {
    /// Why the last pass left unrecorded files alone, if it did: a lasting reason is
    /// logged when it first appears (or changes), not at every pass.
    skipped: Option<String>,
    /// The removals the database recorded at the last pass: those still recorded a pass
    /// later are overdue (their recorder crashed, or gave up retrying) and finished.
    pending_before: std::collections::HashSet<String>,
}

/// What a pass of [`sweep_shared_store`] did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Swept {
    /// Whether it did all it does.
    pub outcome: SweepOutcome,
    /// The clean-up start-up recovery also does.
    pub recovered: Recovered,
    /// Overdue removals the database recorded, finished.
    pub pending: PendingDone,
    /// Why it was limited or failed.
    pub reason: Option<String>,
}

/// How far a pass of [`sweep_shared_store`] got.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub enum SweepOutcome {
    /// Everything it does.
    #[default]
    Done,
    /// Abandoned uploads and old backups only: the database and the store were not (or
    /// could not be seen to be) paired, at the start of the pass or just before its
    /// removals, so no row could be trusted; or the clients could not be read.
    Limited,
    /// It failed (the store or the database), or was cut short by the shutdown.
    Failed,
}

impl SweepOutcome {
    /// Its label in `/metrics`.
    pub fn as_str(self) -> &'static str {
        match self {
            SweepOutcome::Done => "done",
            SweepOutcome::Limited => "limited",
            SweepOutcome::Failed => "failed",
        }
    }
}

/// While serving, on storage other servers share (PostgreSQL and S3, both
/// [`MetaStore::is_shared`] and [`BlobStore::is_shared`]): what start-up recovery does
/// there, for what servers that stopped or crashed and have not started again left
/// (multipart uploads no server finishes, old backups, old objects no row names, removals
/// the database recorded and nobody finished). It judges as [`recover`] does, by age
/// and upload markers, never by what this server knows, so this server's own uploads in
/// progress are spared as any other server's are. Unlike a start:
/// - the set-up IDs are read again first, and once more just before removing unrecorded
///   objects (a database swapped under the running server would make every stored file
///   look unrecorded): without a match only abandoned uploads and old backups are
///   cleaned up, which need no row;
/// - a removal the database records is not an unrecorded file: whoever recorded it
///   finishes it; one still recorded a pass later is overdue and finished here as at a
///   start ([`remove_pending`]; S3 never reuses a key, so finishing it beside its
///   recorder is harmless).
///
/// Stops early once `stopping` is true (then what went wrong is not logged: the
/// database may be closed under it). Blocking; logs what it did, and returns it.
pub fn sweep_shared_store(
    meta: &dyn MetaStore,
    blobs: &dyn BlobStore,
    stopping: &dyn Fn() -> bool,
    state: &mut SweepState,
) -> Swept {
    let started = std::time::Instant::now();
    // What went wrong, unless the shutdown is under way.
    let warn = |what: &str, error: &dyn std::fmt::Display| {
        if !stopping() {
            tracing::warn!(%error, "{what}");
        }
    };
    let paired = paired_now(meta, blobs);
    let mut swept = Swept::default();
    if paired.is_ok() {
        match meta.pending_removals() {
            Ok(pending) => {
                let pending: std::collections::HashSet<String> = pending.into_iter().collect();
                let mut overdue: Vec<String> = pending
                    .intersection(&state.pending_before)
                    .cloned()
                    .collect();
                overdue.sort();
                if !overdue.is_empty() && !stopping() {
                    match remove_pending_of(meta, blobs, overdue, stopping) {
                        Ok(done) => swept.pending = done,
                        Err(error) => {
                            warn("cannot finish the removals the database recorded", &error)
                        }
                    }
                }
                state.pending_before = pending;
            }
            Err(error) => warn("cannot read the removals the database recorded", &error),
        }
        if swept.pending.removed > 0 {
            tracing::info!(
                removed = swept.pending.removed,
                "removed stored files whose removal a server had begun and not finished (their rows were already gone)"
            );
        }
    }
    let clients = match paired.and_then(|()| {
        meta.clients()
            .map(|clients| clients.len())
            .map_err(|error| format!("cannot read the clients: {error}"))
    }) {
        Ok(clients) => Some(clients),
        Err(why) => {
            swept.outcome = SweepOutcome::Limited;
            swept.reason = Some(why.clone());
            if !same_reason(state.skipped.as_deref(), Some(&why)) && !stopping() {
                tracing::warn!(reason = %why, "cleaning up the shared store: only abandoned uploads and old backups");
            }
            state.skipped = Some(why);
            None
        }
    };
    // Why, when the set-up IDs no longer match just before removing.
    let unpaired_later = std::cell::RefCell::new(None);
    let recovered = match clients {
        Some(clients) => {
            let pending = || meta.pending_removals();
            let still_paired = || {
                paired_now(meta, blobs)
                    .inspect_err(|why| *unpaired_later.borrow_mut() = Some(why.clone()))
            };
            let serving = WhileServing {
                spared: &pending,
                stopping,
                still_paired: &still_paired,
            };
            recover_sparing(&|| meta.files(), clients, blobs, &serving)
        }
        None => blobs.remove_stale_temps().map(|stale_temps| Recovered {
            stale_temps,
            ..Recovered::default()
        }),
    };
    match recovered {
        Ok(recovered) => {
            let mut said = recovered.clone();
            if clients.is_some() {
                // A lasting reason (too many unrecorded files, say) is said once.
                if said.orphans_skipped.is_some()
                    && same_reason(said.orphans_skipped.as_deref(), state.skipped.as_deref())
                {
                    said.orphans_skipped = None;
                }
                state.skipped.clone_from(&recovered.orphans_skipped);
            }
            log_recovered(&said, Pass::Sweep);
            swept.recovered = recovered;
        }
        Err(error) => {
            warn("cannot clean up the shared store", &error);
            swept.outcome = SweepOutcome::Failed;
            swept.reason = Some(error.to_string());
        }
    }
    if let Some(why) = unpaired_later.take() {
        if swept.outcome == SweepOutcome::Done {
            swept.outcome = SweepOutcome::Limited;
            swept.reason = Some(why);
        }
    }
    if stopping() {
        swept.outcome = SweepOutcome::Failed;
        swept.reason = Some("cut short by the shutdown".to_owned());
    }
    tracing::debug!(
        secs = started.elapsed().as_secs_f64(),
        outcome = swept.outcome.as_str(),
        uploads_and_backups = swept.recovered.stale_temps,
        unrecorded = swept.recovered.orphans.len(),
        replaced = swept.recovered.replaced.len(),
        recorded_removals = swept.pending.removed,
        failed = swept.recovered.failed,
        "shared store cleaned up"
    );
    swept
}

/// Whether two reasons for leaving unrecorded files alone are the same, whatever the
/// counts in them ("65 stored files have no row" and "66 …" are one lasting reason).
pub(super) fn same_reason(a: Option<&str>, b: Option<&str>) -> bool {
    let words = |text: &str| -> String { text.chars().filter(|c| !c.is_ascii_digit()).collect() };
    a.map(words) == b.map(words)
}

/// Whether the database and the store hold the same set-up ID now ([`pairing`]); if not,
/// why unrecorded files cannot be judged. The store is read first, as at a start
/// ([`pairing::pair`]): an ID the store has is always in the database already.
fn paired_now(meta: &dyn MetaStore, blobs: &dyn BlobStore) -> Result<(), String> {
    let kept = blobs
        .setup_id()
        .map_err(|error| format!("cannot read the store's set-up ID: {error}"))?;
    let recorded = meta
        .setup_id()
        .map_err(|error| format!("cannot read the database's set-up ID: {error}"))?;
    match (recorded, kept) {
        (Some(recorded), Some(kept)) if recorded == kept => Ok(()),
        (Some(recorded), Some(kept)) => Err(format!(
            "the database's set-up ID ({recorded}) is not the store's ({kept}): is it still \
             the database these files belong to?"
        )),
        (None, None) => Err(
            "neither the database nor the store has a set-up ID yet (a server's start pairs \
             them)"
                .to_owned(),
        ),
        (Some(_), None) => Err(
            "the database has a set-up ID and the store none (a server's start gives it \
                 one)"
                .to_owned(),
        ),
        (None, Some(_)) => Err(
            "the store has a set-up ID and the database none: is it the database these \
             files belong to?"
                .to_owned(),
        ),
    }
}

/// Which pass of [`recover`] is reporting.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Pass {
    StartUp,
    Sweep,
}

fn log_recovered(recovered: &Recovered, pass: Pass) {
    let next = match pass {
        Pass::StartUp => "tried again at the next start",
        Pass::Sweep => "tried again at the next clean-up",
    };
    if recovered.stale_temps > 0 {
        match pass {
            Pass::StartUp => tracing::info!(
                removed = recovered.stale_temps,
                "removed temporary files of an earlier run"
            ),
            Pass::Sweep => tracing::info!(
                removed = recovered.stale_temps,
                "removed uploads no server finishes (a server stopped during them) and old backups"
            ),
        }
    }
    for path in &recovered.orphans {
        tracing::warn!(%path, "removed a stored file no row names (an upload never acknowledged before a crash)");
    }
    for path in &recovered.replaced {
        tracing::info!(%path, "removed a replaced version of a file (its removal after the replacement was cut short)");
    }
    if recovered.failed > 0 {
        tracing::warn!(
            failed = recovered.failed,
            "could not remove some unrecorded files: {next}"
        );
    }
    if let Some(why) = &recovered.orphans_skipped {
        tracing::warn!(reason = %why, "not looking for unrecorded files");
    }
}

/// What [`remove_pending`] did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct PendingDone {
    /// Stored files removed.
    pub removed: usize,
    /// Pending removals forgotten without removing anything: a row names the path again
    /// (a folder's new upload of the same name), the path is not one this server
    /// writes, or its removal cannot succeed (a directory there).
    pub forgotten: usize,
    /// Kept, and kept recorded, because they may be a file's last copy: the file's row
    /// names another version whose object is missing (a store restored from an older
    /// snapshot).
    pub last_copies: usize,
    /// Pending removals that failed, or were not tried after too many failures (or the
    /// shutdown), kept for the next start (or a later pass of [`sweep_shared_store`]).
    pub left: usize,
}

/// Records [`remove_pending`] forgets at once: a start-up killed in the middle of a long
/// pass keeps what it did.
const FORGET_BATCH: usize = 256;

/// Failed removals after which [`remove_pending`] and [`recover`] take the store for down
/// and leave the rest to the next start or pass (one slow failure each, at a start before
/// the server listens).
const PENDING_FAILURES_TOLERATED: usize = 8;

/// Finishes the removals the database recorded as pending ([`MetaStore::pending_removals`]):
/// each file no row names now is removed, and the removal forgotten. These are files
/// whose rows a 902, an operator's removal or a replacing upload had already removed in
/// the transaction that recorded them, so no count of them says the database is a wrong
/// one ([`MAX_ORPHANS_REMOVED`] does not apply): a client removal with thousands of
/// files cut short by a crash is finished here. A path a row names again is only
/// forgotten; so is a path of a form this server does not write (a row adopted from
/// another implementation), which is left in place, and one whose removal cannot succeed.
/// As in [`recover`], a version of a file whose row names a missing object is never
/// removed (it may be that file's last copy). A removal that fails is kept for the next
/// start; after [`PENDING_FAILURES_TOLERATED`] failures the rest are too.
pub fn remove_pending(
    meta: &dyn MetaStore,
    blobs: &dyn BlobStore,
) -> Result<PendingDone, StoreError> {
    remove_pending_of(meta, blobs, meta.pending_removals()?, &|| false)
}

/// [`remove_pending`] of these recorded removals (read before the rows), stopping (the
/// rest left recorded) once `stopping` is true.
fn remove_pending_of(
    meta: &dyn MetaStore,
    blobs: &dyn BlobStore,
    pending: Vec<String>,
    stopping: &dyn Fn() -> bool,
) -> Result<PendingDone, StoreError> {
    let mut done = PendingDone::default();
    if pending.is_empty() {
        return Ok(done);
    }
    // Read after the records: a row that names a recorded path again is seen.
    let rows = meta.files()?;
    let named: std::collections::HashSet<&str> = rows.iter().map(|row| row.path.as_str()).collect();
    let by_file = RowsByFile::of(&rows);
    let mut row_objects = std::collections::HashMap::new();
    let mut forget = Vec::new();
    let mut owners = std::collections::BTreeSet::new();
    let mut failures = 0;
    let total = pending.len();
    for (index, path) in pending.into_iter().enumerate() {
        if stopping() {
            done.left += total - index;
            break;
        }
        if named.contains(path.as_str()) || !is_own_path(&path) {
            done.forgotten += 1;
            forget.push(path);
            continue;
        }
        let row_object = match by_file.relation(&path) {
            Relation::Replaced(row) | Relation::SameFile(row) => {
                object_exists(blobs, row, &mut row_objects)
            }
            Relation::Unrelated => Ok(true),
        };
        match row_object {
            Err(error) => {
                tracing::warn!(%path, %error, "cannot tell whether a file whose row is gone is its file's last copy: kept for a later pass");
                if one_more_failure(&mut done, &mut failures, total - index - 1) {
                    break;
                }
            }
            Ok(false) => {
                tracing::warn!(%path, "not removing a file whose row is gone: its file's row names a missing object, so this may be its last copy");
                done.last_copies += 1;
            }
            Ok(true) => match blobs.remove(&path) {
                Ok(()) => {
                    done.removed += 1;
                    if let Some(owner) = path.split('/').nth(1) {
                        owners.insert(owner.to_owned());
                    }
                    forget.push(path);
                }
                Err(error) if super::removal_cannot_succeed(&error) => {
                    tracing::warn!(%path, %error, "cannot remove a file whose row is gone, and retrying cannot help: given up (left to the operator)");
                    done.forgotten += 1;
                    forget.push(path);
                }
                Err(error) => {
                    tracing::warn!(%path, %error, "cannot remove a file whose row is gone");
                    if one_more_failure(&mut done, &mut failures, total - index - 1) {
                        break;
                    }
                }
            },
        }
        if forget.len() >= FORGET_BATCH {
            meta.forget_removals(&forget)?;
            forget.clear();
        }
    }
    meta.forget_removals(&forget)?;
    // A removed client's folder goes with its last file, as after a removal that did
    // not fail.
    for owner in owners {
        let Ok(id) = ClientId::from_hex(&owner) else {
            continue;
        };
        if matches!(meta.client(&id), Ok(None)) {
            if let Err(error) = blobs.remove_client(&id) {
                tracing::warn!(client = %id.short(), %error, "cannot remove a removed client's folder");
            }
        }
    }
    Ok(done)
}

/// Whether the object at `path` exists, asked of the store once per path (`known`). Only
/// the store saying it is missing is `false`; a failure to ask (a busy S3 answering 503)
/// is an error, not remembered.
fn object_exists<'a>(
    blobs: &dyn BlobStore,
    path: &'a str,
    known: &mut std::collections::HashMap<&'a str, bool>,
) -> io::Result<bool> {
    if let Some(&exists) = known.get(path) {
        return Ok(exists);
    }
    let exists = match blobs.size(path) {
        Ok(_) => true,
        Err(error) if error.kind() == io::ErrorKind::NotFound => false,
        Err(error) => return Err(error),
    };
    known.insert(path, exists);
    Ok(exists)
}

/// Counts a record of [`remove_pending`] kept after a failure; true when the pass stops
/// there (the store is likely failing), the `untried` records after it kept too.
fn one_more_failure(done: &mut PendingDone, failures: &mut usize, untried: usize) -> bool {
    done.left += 1;
    *failures += 1;
    let stop = *failures >= PENDING_FAILURES_TOLERATED;
    if stop {
        done.left += untried;
    }
    stop
}

/// What [`recover`] cleaned up (at start-up, or in a pass of [`sweep_shared_store`]).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Recovered {
    /// Temporary files of uploads that never finished (or versions kept for an undo).
    pub stale_temps: usize,
    /// Stored files no row names, removed.
    pub orphans: Vec<String>,
    /// Versions no row names of files whose rows name a later version, removed (S3's key
    /// per upload; not counted against [`MAX_ORPHANS_REMOVED`]).
    pub replaced: Vec<String>,
    /// Why orphans were not looked for, if they were not.
    pub orphans_skipped: Option<String>,
    /// Removals that failed (each logged); they are tried again at the next start (or
    /// the next pass of [`sweep_shared_store`]).
    pub failed: usize,
}

/// Most unrecorded files [`recover`] removes. A crash leaves one per upload that was
/// between its move into place and its commit (a handful); many more mean the database
/// is not the one the store belongs to (a missing `--database`, a wrong `--data-dir` or
/// `--store`, a restored backup), and removing them would destroy acknowledged files.
pub const MAX_ORPHANS_REMOVED: usize = 64;

/// Start-up cleanup after a crash: removes temporary files, then stored files that no
/// `files` row names. Such a file is complete but was never acknowledged: a crash
/// between its rename and the commit of its row (so no 1603 was sent and the client
/// sends it again), or between the commit of a new path and the removal of the old one.
///
/// Unrecorded files are left alone (and the reason logged) when the database has no
/// registered client (`registered_clients`: a new database, such as the empty
/// `defensive.db` a server makes when started without its `--database`), when there are
/// more than [`MAX_ORPHANS_REMOVED`] of them (either way the database is likely not the
/// store's), or when a row names a path of a form this server
/// does not write (`files/<32 hex digits>/<name>`: a database adopted from another
/// implementation). Leaving one costs only its space: in a folder an upload of the same
/// name by its client later writes over it; in S3 (a key per upload) it stays until a
/// start-up (or a pass of [`sweep_shared_store`]) finds few enough to remove.
///
/// The cap does not apply to *replaced versions* (S3): an unrecorded
/// `files/<id>/<disk name>~v<version>` whose file's row names a version of the same disk
/// name made later (both versions UUIDv7, dated by [`names::version_millis`] when their
/// upload began) whose object exists. Those are what a crash between a commit and the
/// removal of the version it replaced, or a failed removal, leaves; a database that is
/// not the store's has no such row, and one restored from an older backup names versions
/// made before the unrecorded newer ones. They are removed however many there are, so
/// that they do not pile up past the cap and keep every other orphan too. This rests on
/// a file's versions being dated in the order their rows were committed: servers'
/// clocks in sync (as the time-outs already need), and one upload of a file at a time
/// (two uploads of one file by one client through two servers at once may commit out of
/// order; only with a database restored between them and the first one's removal failed
/// could the newer row then be taken for a replaced version). An unrecorded version of a
/// file whose row names a missing object (older or newer than that row's, dated or not)
/// is never removed (it may be that file's last copy: a database restored from an older
/// backup names versions since replaced and removed) and counts against the cap.
///
/// `rows` reads the `files` rows ([`MetaStore::files`]). They are read after the stored
/// files are listed: with several servers on one database and one object store, another
/// server may finish an upload while this one starts, and only rows read after the
/// listing are sure to name every file in it that was acknowledged (a file finished
/// later is either still protected by its upload's marker or was not listed at all).
/// Just before removing, the files are listed and the rows read once more, and only
/// what both rounds found unrecorded is removed: a file written again meanwhile (its
/// upload's marker, its new age) or recorded meanwhile is kept.
pub fn recover(
    rows: &dyn Fn() -> Result<Vec<FileRecord>, StoreError>,
    registered_clients: usize,
    blobs: &dyn BlobStore,
) -> io::Result<Recovered> {
    recover_sparing(rows, registered_clients, blobs, &WhileServing::AT_START_UP)
}

/// What [`recover_sparing`] checks besides what [`recover`] does, while the server serves.
pub(super) struct WhileServing<'a> {
    /// Paths left alone (read after the rows in each round): the removals the database
    /// records, which whoever recorded them finishes.
    pub spared: &'a dyn Fn() -> Result<Vec<String>, StoreError>,
    /// True once the pass must stop (asked after the abandoned uploads, before the
    /// second round of listing and before each removal); it returns what it did so far.
    pub stopping: &'a dyn Fn() -> bool,
    /// Whether the database and the store still belong together (if not, why), asked
    /// once after the last reading of the rows: if not, nothing is removed.
    pub still_paired: &'a dyn Fn() -> Result<(), String>,
}

impl WhileServing<'_> {
    /// Nothing spared, never stopping, paired (checked before the start).
    const AT_START_UP: WhileServing<'static> = WhileServing {
        spared: &|| Ok(Vec::new()),
        stopping: &|| false,
        still_paired: &|| Ok(()),
    };
}

/// [`recover`], with the checks of [`WhileServing`].
pub(super) fn recover_sparing(
    rows: &dyn Fn() -> Result<Vec<FileRecord>, StoreError>,
    registered_clients: usize,
    blobs: &dyn BlobStore,
    serving: &WhileServing<'_>,
) -> io::Result<Recovered> {
    let WhileServing {
        spared,
        stopping,
        still_paired,
    } = *serving;
    let read_rows =
        || rows().map_err(|error| io::Error::other(format!("cannot read the rows: {error}")));
    let read_spared = || -> io::Result<std::collections::HashSet<String>> {
        spared()
            .map(|paths| paths.into_iter().collect())
            .map_err(|error| io::Error::other(format!("cannot read the pending removals: {error}")))
    };
    let stale_temps = blobs.remove_stale_temps()?;
    if stopping() {
        return Ok(Recovered {
            stale_temps,
            ..Recovered::default()
        });
    }
    let listed = blobs.stored_paths()?;
    let recorded = read_rows()?;
    let spared_then = read_spared()?;
    let skipped = |why: String| Recovered {
        stale_temps,
        orphans_skipped: Some(why),
        ..Recovered::default()
    };
    if let Some(row) = recorded.iter().find(|row| !is_own_path(&row.path)) {
        return Ok(skipped(format!(
            "the row of {:?} names {:?}, a path this server does not write",
            row.file_name, row.path
        )));
    }
    let mut candidates = unrecorded(listed, &recorded);
    candidates.retain(|path| !spared_then.contains(path));
    if candidates.is_empty() {
        return Ok(Recovered {
            stale_temps,
            ..Recovered::default()
        });
    }
    if registered_clients == 0 {
        return Ok(skipped(format!(
            "the database has no client but the store holds {} unrecorded files (is it the \
             database these files belong to? check --database, --data-dir and --store); \
             none removed",
            candidates.len()
        )));
    }
    // Whether the object a row names exists (asked once per path).
    let mut known = std::collections::HashMap::new();
    let mut exists = |path: &str| -> bool {
        *known
            .entry(path.to_owned())
            .or_insert_with(|| blobs.size(path).is_ok())
    };
    let (mut replaced, mut orphans, mut last_copies) = (Vec::new(), Vec::new(), 0);
    {
        let rows = RowsByFile::of(&recorded);
        for path in candidates {
            match rows.relation(&path) {
                // Its file's row names a missing object: this may be that file's last
                // copy (an older database restored, naming a version since replaced).
                // Never removed here; counted as unrecorded.
                Relation::Replaced(row) | Relation::SameFile(row) if !exists(row) => {
                    last_copies += 1
                }
                Relation::Replaced(_) => replaced.push(path),
                Relation::SameFile(_) | Relation::Unrelated => orphans.push(path),
            }
        }
    }
    let unrecorded_count = orphans.len() + last_copies;
    let orphans_skipped = (unrecorded_count > MAX_ORPHANS_REMOVED).then(|| {
        format!(
            "{unrecorded_count} stored files have no row, more than a crash leaves \
             ({MAX_ORPHANS_REMOVED}): is the database the one these files belong to? (check \
             --database, --data-dir and --store); none of them removed"
        )
    });
    if orphans_skipped.is_some() {
        orphans.clear();
    }
    if (replaced.is_empty() && orphans.is_empty()) || stopping() {
        return Ok(Recovered {
            stale_temps,
            orphans_skipped,
            ..Recovered::default()
        });
    }
    let still_listed: std::collections::HashSet<String> =
        blobs.stored_paths()?.into_iter().collect();
    let rows_now = read_rows()?;
    let spared_now = read_spared()?;
    if let Err(why) = still_paired() {
        return Ok(Recovered {
            stale_temps,
            orphans_skipped: Some(why),
            ..Recovered::default()
        });
    }
    let confirm = |paths: Vec<String>| {
        unrecorded(
            paths
                .into_iter()
                .filter(|path| still_listed.contains(path) && !spared_now.contains(path))
                .collect(),
            &rows_now,
        )
    };
    let rows = RowsByFile::of(&rows_now);
    // A failed removal is logged and the rest go on (a path that always fails must not
    // keep every later one); after a few, the store is likely down and the rest wait.
    let mut failed = 0;
    let mut remove = |path: &str| {
        if stopping() {
            return None;
        }
        match blobs.remove(path) {
            Ok(()) => Some(true),
            Err(error) => {
                tracing::warn!(%path, %error, "cannot remove an unrecorded file");
                failed += 1;
                (failed < PENDING_FAILURES_TOLERATED).then_some(false)
            }
        }
    };
    let mut removed_replaced = Vec::new();
    let mut removed_orphans = Vec::new();
    'removing: {
        for path in confirm(replaced) {
            if matches!(rows.relation(&path), Relation::Replaced(row) if exists(row)) {
                match remove(&path) {
                    Some(true) => removed_replaced.push(path),
                    Some(false) => {}
                    None => break 'removing,
                }
            }
        }
        for path in confirm(orphans) {
            match remove(&path) {
                Some(true) => removed_orphans.push(path),
                Some(false) => {}
                None => break 'removing,
            }
        }
    }
    Ok(Recovered {
        stale_temps,
        orphans: removed_orphans,
        replaced: removed_replaced,
        orphans_skipped,
        failed,
    })
}

/// Each row's path and its version's date ([`names::version_millis`], if dated), by
/// client folder and disk name: which file an unrecorded path is a version of.
struct RowsByFile<'a> {
    named: std::collections::HashMap<FileKey<'a>, (&'a str, Option<u64>)>,
}

/// A stored file's client folder and disk name ([`version_of`]).
type FileKey<'a> = (&'a str, Cow<'a, str>);

/// What an unrecorded path is to the rows; each names the row's path.
enum Relation<'a> {
    /// A version of a file whose row names a version made later.
    Replaced(&'a str),
    /// Another version of a file that has a row (made later, or not dated).
    SameFile(&'a str),
    /// No row names a version of its file.
    Unrelated,
}

impl<'a> RowsByFile<'a> {
    fn of(rows: &'a [FileRecord]) -> Self {
        let mut named = std::collections::HashMap::new();
        for row in rows {
            if let Some((folder, disk_name, made)) = version_of(&row.path) {
                // Two rows of one disk name are never written (disk names are injective).
                named
                    .entry((folder, disk_name))
                    .or_insert((row.path.as_str(), made));
            }
        }
        Self { named }
    }

    fn relation(&self, path: &str) -> Relation<'a> {
        let Some((folder, disk_name, made)) = version_of(path) else {
            return Relation::Unrelated;
        };
        match self.named.get(&(folder, disk_name)) {
            None => Relation::Unrelated,
            Some(&(row, Some(latest))) if made.is_some_and(|made| made < latest) => {
                Relation::Replaced(row)
            }
            Some(&(row, _)) => Relation::SameFile(row),
        }
    }
}

/// The client folder and disk name of a stored file's path, and when its version was
/// made if it is a dated version. A version's disk name is taken as
/// [`names::versioned`] writes it now ([`names::version_stem`]), so that a key written
/// with a longer one (before names were shortened) is a version of the same file, and so
/// is a name without a version (a row written before keys had versions), however long.
fn version_of(path: &str) -> Option<(&str, Cow<'_, str>, Option<u64>)> {
    let (folder, name) = path.rsplit_once('/')?;
    Some(match names::split_version(name) {
        Some((disk_name, version)) => (
            folder,
            names::version_stem(disk_name),
            names::version_millis(version),
        ),
        None => (folder, names::version_stem(name), None),
    })
}

/// The paths of `listed` that no row of `rows` names.
fn unrecorded(listed: Vec<String>, rows: &[FileRecord]) -> Vec<String> {
    let named: std::collections::HashSet<&str> = rows.iter().map(|row| row.path.as_str()).collect();
    listed
        .into_iter()
        .filter(|path| !named.contains(path.as_str()))
        .collect()
}

/// `files/<32 lowercase hex digits>/<one plain name>`, as [`super::fs`] and the in-memory test store write.
pub(super) fn is_own_path(path: &str) -> bool {
    let mut parts = path.split('/');
    let (Some(top), Some(client), Some(name), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return false;
    };
    top == FILES_DIR
        && client.len() == 32
        && client
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        && !name.is_empty()
        && name != "."
        && name != ".."
}
