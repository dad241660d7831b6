//! The metadata store in SQLite (`defensive.db`).
//!
//! Schema (exactly the tables and columns docs/PROTOCOL.md names, "State files"):
//!
//! ```sql
//! clients(ID BLOB 16 bytes PRIMARY KEY, Name TEXT UNIQUE, PublicKey BLOB, LastSeen TEXT, AESKey BLOB)
//! files(ID BLOB, FileName TEXT, PathName TEXT, Verified INTEGER, PRIMARY KEY (ID, FileName))
//! ```
//!
//! Beside them, this server's own tables, which other implementations ignore: the
//! one-row `sfc_setup` holds the set-up ID ([`super::pairing`]), and
//! `sfc_pending_removals(PathName TEXT PRIMARY KEY)` the paths of stored files whose rows
//! were removed or replaced, written in the same transaction, until their files are
//! removed ([`MetaStore::pending_removals`]).
//!
//! `LastSeen` is UTC text `YYYY-MM-DD HH:MM:SS.mmm`. `PathName` is relative to the data
//! folder. The schema version is kept in `PRAGMA user_version`; [`MIGRATIONS`] brings an
//! older database forward at start-up, and a database from a newer server is refused.
//!
//! Journal: WAL with `synchronous=FULL` (see [`crate::storage`] for the figures): a
//! committed row survives power loss, which a 1603 relies on. Writes go to one writer
//! thread that commits them in groups (`writer.rs`: one fsync for all the writes that
//! arrived while the previous group was committing); reads use a second connection
//! (WAL lets it read while the writer writes), or the writer's for an in-memory
//! database, which a second connection could not see. Statements are cached. The admin
//! views open their own store.

mod writer;

use super::pairing::SETUP_TABLE;
use super::{ClientRecord, FileRecord, Inserted, MetaStore, StoreError, Timestamp};
use rusqlite::{params, Connection, OpenFlags, OptionalExtension};
use sfc_proto::ClientId;
use std::path::Path;
use std::sync::{Mutex, RwLock};
use std::time::Duration;
pub use writer::GroupStats;
use writer::Writer;
use zeroize::Zeroizing;

/// Schema migrations; entry `i` brings `user_version` from `i` to `i + 1`.
/// `IF NOT EXISTS` lets a database made by another implementation of the protocol (same
/// tables, `user_version` 0) be adopted as it is.
pub const MIGRATIONS: &[&str] = &[
    // 1: the initial schema.
    "CREATE TABLE IF NOT EXISTS clients (
        ID BLOB PRIMARY KEY NOT NULL CHECK (length(ID) = 16),
        Name TEXT UNIQUE NOT NULL CHECK (length(Name) BETWEEN 1 AND 255),
        PublicKey BLOB,
        LastSeen TEXT,
        AESKey BLOB
    );
    CREATE TABLE IF NOT EXISTS files (
        ID BLOB NOT NULL CHECK (length(ID) = 16),
        FileName TEXT NOT NULL,
        PathName TEXT NOT NULL,
        Verified INTEGER NOT NULL DEFAULT 0,
        PRIMARY KEY (ID, FileName)
    );",
];

/// Schema version this build writes.
pub const SCHEMA_VERSION: i64 = MIGRATIONS.len() as i64;

/// How long a connection waits for a lock held by another process (an admin view).
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

fn db_err(error: rusqlite::Error) -> StoreError {
    StoreError::Database(error.to_string())
}

/// SQLite-backed [`MetaStore`].
#[derive(Debug)]
pub struct SqliteStore {
    /// `None` once closed.
    writer: RwLock<Option<Writer>>,
    /// Second connection for reads; `None` for an in-memory database (reads go to the
    /// writer) and once closed.
    reader: Option<Mutex<Option<Connection>>>,
}

impl SqliteStore {
    /// Opens (creating if needed, owner-only) the database, sets WAL + synchronous=FULL,
    /// migrates.
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        // Owner-only: the database holds every client's AES key (crate::storage::perms).
        crate::storage::perms::prepare_private_db(path)?;
        let conn = Connection::open(path).map_err(db_err)?;
        let mode: String = conn
            .query_row("PRAGMA journal_mode=WAL", [], |row| row.get(0))
            .map_err(db_err)?;
        if !mode.eq_ignore_ascii_case("wal") {
            return Err(StoreError::Database(format!(
                "could not switch {} to WAL mode (got {mode})",
                path.display()
            )));
        }
        let conn = Self::setup(conn)?;
        Self::start(conn, Some(Self::open_reader(path)?))
    }

    /// A private in-memory database (tests, sans-IO drivers).
    pub fn open_in_memory() -> Result<Self, StoreError> {
        let conn = Self::setup(Connection::open_in_memory().map_err(db_err)?)?;
        Self::start(conn, None)
    }

    /// Opens an existing database for the admin views, without creating or migrating.
    pub fn open_existing(path: &Path) -> Result<Self, StoreError> {
        let conn = Self::open_existing_connection(path)?;
        check_version(&conn)?;
        check_schema(&conn)?;
        Self::start(conn, Some(Self::open_reader(path)?))
    }

    /// A connection to a database that must exist already.
    fn open_existing_connection(path: &Path) -> Result<Connection, StoreError> {
        let conn = Connection::open_with_flags(
            path,
            OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
        .map_err(db_err)?;
        conn.busy_timeout(BUSY_TIMEOUT).map_err(db_err)?;
        Ok(conn)
    }

    fn open_reader(path: &Path) -> Result<Connection, StoreError> {
        let conn = Self::open_existing_connection(path)?;
        // This connection only reads; make any write through it an error.
        conn.pragma_update(None, "query_only", true)
            .map_err(db_err)?;
        Ok(conn)
    }

    fn setup(mut conn: Connection) -> Result<Connection, StoreError> {
        conn.pragma_update(None, "synchronous", "FULL")
            .map_err(db_err)?;
        conn.busy_timeout(BUSY_TIMEOUT).map_err(db_err)?;
        migrate(&mut conn)?;
        check_schema(&conn)?;
        // Additive, as `sfc_setup`: the schema version an older server checks is
        // unchanged, so it still opens the database (and records no removals).
        conn.execute_batch(super::PENDING_REMOVALS_TABLE)
            .map_err(db_err)?;
        Ok(conn)
    }

    fn start(conn: Connection, reader: Option<Connection>) -> Result<Self, StoreError> {
        let writer = Writer::start(conn).map_err(|error| {
            StoreError::Database(format!("cannot start the database writer: {error}"))
        })?;
        Ok(SqliteStore {
            writer: RwLock::new(Some(writer)),
            reader: reader.map(|conn| Mutex::new(Some(conn))),
        })
    }

    /// Runs `op` on the writer thread, in the next group transaction; returns once that
    /// transaction is committed.
    fn write<T, F>(&self, op: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> rusqlite::Result<T> + Send + 'static,
    {
        // Sending happens under a shared lock (close takes it exclusively); the wait
        // for the commit happens after it is released.
        let answer = {
            let guard = self.writer.read().unwrap_or_else(|p| p.into_inner());
            let writer = guard.as_ref().ok_or(StoreError::Closed)?;
            writer.submit(op).map_err(StoreError::Database)?
        };
        answer
            .recv()
            .map_err(|_| StoreError::Database("the database writer stopped".into()))?
            .map_err(StoreError::Database)
    }

    /// Runs a read on the read connection (or the writer's, for an in-memory database).
    fn read<T, F>(&self, op: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> rusqlite::Result<T> + Send + 'static,
    {
        match &self.reader {
            Some(reader) => {
                let guard = reader.lock().unwrap_or_else(|p| p.into_inner());
                let conn = guard.as_ref().ok_or(StoreError::Closed)?;
                op(conn).map_err(db_err)
            }
            None => self.write(op),
        }
    }

    /// The schema version recorded in the database.
    pub fn schema_version(&self) -> Result<i64, StoreError> {
        self.read(|c| c.query_row("PRAGMA user_version", [], |row| row.get(0)))
    }

    /// Counters of the group committer (writes ÷ transactions is the average group
    /// size); `None` once closed.
    pub fn group_commit_stats(&self) -> Option<std::sync::Arc<GroupStats>> {
        let guard = self.writer.read().unwrap_or_else(|p| p.into_inner());
        guard.as_ref().map(Writer::stats)
    }
}

/// The schema version, refused when a newer server wrote it.
fn check_version(conn: &Connection) -> Result<i64, StoreError> {
    let version: i64 = conn
        .query_row("PRAGMA user_version", [], |row| row.get(0))
        .map_err(db_err)?;
    if version > SCHEMA_VERSION {
        return Err(StoreError::Database(format!(
            "the database has schema version {version}; this server knows up to {SCHEMA_VERSION}"
        )));
    }
    Ok(version)
}

/// A table, its columns, and its unique keys (each a sorted set of columns).
type Required = (
    &'static str,
    &'static [&'static str],
    &'static [&'static [&'static str]],
);

/// The columns of each table and the unique keys its statements rely on: a name given
/// once (`insert_client` learns of a taken name from the key), one row per client and
/// file (`put_file`'s `ON CONFLICT`).
const REQUIRED: &[Required] = &[
    (
        "clients",
        &["ID", "Name", "PublicKey", "LastSeen", "AESKey"],
        &[&["ID"], &["Name"]],
    ),
    (
        "files",
        &["ID", "FileName", "PathName", "Verified"],
        &[&["FileName", "ID"]],
    ),
];

/// Checks the tables have what [`REQUIRED`] names. Migration 1 keeps tables that exist
/// (a database adopted from another implementation): one without these keys would give
/// a name twice, or fail every upload at its last packet.
fn check_schema(conn: &Connection) -> Result<(), StoreError> {
    for (table, columns, keys) in REQUIRED {
        let present: Vec<String> = conn
            .prepare("SELECT name FROM pragma_table_info(?1)")
            .and_then(|mut statement| {
                statement
                    .query_map([table], |row| row.get(0))?
                    .collect::<rusqlite::Result<_>>()
            })
            .map_err(db_err)?;
        let lacking: Vec<&str> = columns
            .iter()
            .copied()
            .filter(|column| !present.iter().any(|p| p.eq_ignore_ascii_case(column)))
            .collect();
        if !lacking.is_empty() {
            return Err(StoreError::Database(format!(
                "the database's table {table} lacks the column(s) {}: it was not made by \
                 this server, nor has it the specification's columns",
                lacking.join(", ")
            )));
        }
        let unique = unique_keys(conn, table).map_err(db_err)?;
        for key in *keys {
            let wanted: Vec<String> = key.iter().map(|c| c.to_ascii_lowercase()).collect();
            if !unique.contains(&wanted) {
                return Err(StoreError::Database(format!(
                    "the database's table {table} has no primary key or unique constraint on \
                     ({}): this server relies on it (it was not made by this server; add the \
                     constraint, or start from a new database)",
                    key.join(", ")
                )));
            }
        }
    }
    Ok(())
}

/// The column sets (lowercase, sorted) of `table`'s unique, whole-table indexes, its
/// primary key's included.
fn unique_keys(conn: &Connection, table: &str) -> rusqlite::Result<Vec<Vec<String>>> {
    let indexes: Vec<String> = conn
        .prepare("SELECT name FROM pragma_index_list(?1) WHERE \"unique\" = 1 AND partial = 0")?
        .query_map([table], |row| row.get(0))?
        .collect::<rusqlite::Result<_>>()?;
    let mut keys = Vec::new();
    for index in indexes {
        let mut columns: Vec<String> = conn
            .prepare("SELECT name FROM pragma_index_info(?1)")?
            .query_map([&index], |row| row.get::<_, Option<String>>(0))?
            .collect::<rusqlite::Result<Vec<_>>>()?
            .into_iter()
            .map(|column| column.unwrap_or_default().to_ascii_lowercase())
            .collect();
        columns.sort();
        keys.push(columns);
    }
    Ok(keys)
}

fn migrate(conn: &mut Connection) -> Result<(), StoreError> {
    let version = check_version(conn)?;
    let start = usize::try_from(version).unwrap_or(0);
    for (index, sql) in MIGRATIONS.iter().enumerate().skip(start) {
        let tx = conn.transaction().map_err(db_err)?;
        tx.execute_batch(sql).map_err(db_err)?;
        tx.pragma_update(
            None,
            "user_version",
            i64::try_from(index + 1).unwrap_or(i64::MAX),
        )
        .map_err(db_err)?;
        tx.commit().map_err(db_err)?;
        tracing::info!(version = index + 1, "database schema migrated");
    }
    Ok(())
}

/// Records `path` as a pending removal, in the caller's transaction.
fn record_pending(conn: &Connection, path: &str) -> rusqlite::Result<()> {
    conn.prepare_cached("INSERT OR IGNORE INTO sfc_pending_removals (PathName) VALUES (?1)")?
        .execute(params![path])?;
    Ok(())
}

const TOUCH: &str = "UPDATE clients SET LastSeen = max(coalesce(LastSeen, ''), ?2) WHERE ID = ?1";

fn touch_one(conn: &Connection, id: &ClientId, now: Timestamp) -> rusqlite::Result<()> {
    conn.prepare_cached(TOUCH)?
        .execute(params![&id.0[..], now.to_string()])?;
    Ok(())
}

fn client_from_row(row: &rusqlite::Row<'_>) -> rusqlite::Result<ClientRecord> {
    let id: Vec<u8> = row.get(0)?;
    let id = <[u8; 16]>::try_from(id.as_slice()).unwrap_or_default();
    Ok(ClientRecord {
        id: ClientId(id),
        name: row.get(1)?,
        public_key: row.get(2)?,
        last_seen: row.get(3)?,
        aes_key: row.get(4)?,
    })
}

fn file_from_row(row: &rusqlite::Row<'_>) -> rusqlite::Result<FileRecord> {
    let id: Vec<u8> = row.get(0)?;
    let id = <[u8; 16]>::try_from(id.as_slice()).unwrap_or_default();
    Ok(FileRecord {
        client_id: ClientId(id),
        file_name: row.get(1)?,
        path: row.get(2)?,
        verified: row.get::<_, i64>(3)? != 0,
    })
}

const CLIENT_COLUMNS: &str = "SELECT ID, Name, PublicKey, LastSeen, AESKey FROM clients";

impl MetaStore for SqliteStore {
    fn client(&self, id: &ClientId) -> Result<Option<ClientRecord>, StoreError> {
        let id = *id;
        self.read(move |c| {
            c.prepare_cached(&format!("{CLIENT_COLUMNS} WHERE ID = ?1"))?
                .query_row(params![&id.0[..]], client_from_row)
                .optional()
        })
    }

    fn insert_client(
        &self,
        id: &ClientId,
        name: &str,
        now: Timestamp,
    ) -> Result<Inserted, StoreError> {
        let (id, name) = (*id, name.to_owned());
        self.write(move |c| {
            let inserted = c
                .prepare_cached("INSERT INTO clients (ID, Name, LastSeen) VALUES (?1, ?2, ?3)")?
                .execute(params![&id.0[..], name, now.to_string()]);
            match inserted {
                Ok(_) => Ok(Inserted::Ok),
                // Name is the table's only UNIQUE column (a clash of the primary key ID
                // is SQLITE_CONSTRAINT_PRIMARYKEY, an error).
                Err(rusqlite::Error::SqliteFailure(error, _))
                    if error.code == rusqlite::ErrorCode::ConstraintViolation
                        && error.extended_code == rusqlite::ffi::SQLITE_CONSTRAINT_UNIQUE =>
                {
                    Ok(Inserted::NameTaken)
                }
                Err(error) => Err(error),
            }
        })
    }

    fn set_keys(
        &self,
        id: &ClientId,
        public_key: Option<&[u8]>,
        aes_key: &[u8],
        now: Timestamp,
    ) -> Result<(), StoreError> {
        let id = *id;
        let public_key = public_key.map(<[u8]>::to_vec);
        // Wiped when the write is done, like every other copy of a key.
        let aes_key = Zeroizing::new(aes_key.to_vec());
        // Key pinning in the same statement (the session checks it too, but two 826s
        // of one client on two connections could both pass that check).
        let (changed, exists) = self.write(move |c| {
            let changed = match public_key {
                Some(key) => c
                    .prepare_cached(
                        "UPDATE clients SET PublicKey = ?2, AESKey = ?3
                         WHERE ID = ?1 AND (PublicKey IS NULL OR PublicKey = ?2)",
                    )?
                    .execute(params![&id.0[..], key, &aes_key[..]])?,
                None => c
                    .prepare_cached("UPDATE clients SET AESKey = ?2 WHERE ID = ?1")?
                    .execute(params![&id.0[..], &aes_key[..]])?,
            };
            if changed == 0 {
                let exists = c
                    .prepare_cached("SELECT 1 FROM clients WHERE ID = ?1")?
                    .exists(params![&id.0[..]])?;
                return Ok((changed, exists));
            }
            touch_one(c, &id, now)?;
            Ok((changed, true))
        })?;
        match (changed, exists) {
            (1, _) => Ok(()),
            (_, true) => Err(StoreError::Database(format!(
                "client {id} has another public key on record (key pinning)"
            ))),
            _ => Err(StoreError::Database(format!(
                "no client {id} to store keys for"
            ))),
        }
    }

    fn put_file(&self, file: &FileRecord, now: Timestamp) -> Result<Option<String>, StoreError> {
        let file = file.clone();
        self.write(move |c| {
            // The one writer thread runs this transaction alone: what it reads is what
            // the upsert replaces.
            let replaced: Option<String> = c
                .prepare_cached("SELECT PathName FROM files WHERE ID = ?1 AND FileName = ?2")?
                .query_row(params![&file.client_id.0[..], file.file_name], |row| {
                    row.get(0)
                })
                .optional()?;
            // Only for a client that exists: the table has no foreign key (its schema is
            // the original's), and a client may be removed while its upload finishes.
            let written = c
                .prepare_cached(
                    "INSERT INTO files (ID, FileName, PathName, Verified)
                     SELECT ?1, ?2, ?3, ?4 WHERE EXISTS (SELECT 1 FROM clients WHERE ID = ?1)
                     ON CONFLICT (ID, FileName) DO UPDATE
                     SET PathName = excluded.PathName, Verified = excluded.Verified",
                )?
                .execute(params![
                    &file.client_id.0[..],
                    file.file_name,
                    file.path,
                    i64::from(file.verified)
                ])?;
            if written == 0 {
                return Err(rusqlite::Error::SqliteFailure(
                    rusqlite::ffi::Error::new(rusqlite::ffi::SQLITE_CONSTRAINT_FOREIGNKEY),
                    Some("a file row for a client that does not exist".into()),
                ));
            }
            if let Some(old) = replaced.as_ref().filter(|old| **old != file.path) {
                record_pending(c, old)?;
            }
            touch_one(c, &file.client_id, now)?;
            Ok(replaced)
        })
    }

    fn set_verified(
        &self,
        id: &ClientId,
        file_name: &str,
        now: Timestamp,
    ) -> Result<bool, StoreError> {
        let (id, file_name) = (*id, file_name.to_owned());
        self.write(move |c| {
            let changed = c
                .prepare_cached("UPDATE files SET Verified = 1 WHERE ID = ?1 AND FileName = ?2")?
                .execute(params![&id.0[..], file_name])?;
            touch_one(c, &id, now)?;
            Ok(changed == 1)
        })
    }

    fn file(&self, id: &ClientId, file_name: &str) -> Result<Option<FileRecord>, StoreError> {
        let (id, file_name) = (*id, file_name.to_owned());
        self.read(move |c| {
            c.prepare_cached(
                "SELECT ID, FileName, PathName, Verified FROM files WHERE ID = ?1 AND FileName = ?2",
            )?
            .query_row(params![&id.0[..], file_name], file_from_row)
            .optional()
        })
    }

    fn files_of(&self, id: &ClientId) -> Result<Vec<FileRecord>, StoreError> {
        let id = *id;
        self.read(move |c| {
            let mut statement = c.prepare_cached(
                "SELECT ID, FileName, PathName, Verified FROM files WHERE ID = ?1 ORDER BY FileName",
            )?;
            let rows = statement.query_map(params![&id.0[..]], file_from_row)?;
            rows.collect()
        })
    }

    fn remove_file(
        &self,
        id: &ClientId,
        file_name: &str,
        seen: Option<Timestamp>,
    ) -> Result<Option<FileRecord>, StoreError> {
        let (id, file_name) = (*id, file_name.to_owned());
        self.write(move |c| {
            let record = c
                .prepare_cached(
                    "SELECT ID, FileName, PathName, Verified FROM files WHERE ID = ?1 AND FileName = ?2",
                )?
                .query_row(params![&id.0[..], file_name], file_from_row)
                .optional()?;
            if let Some(row) = &record {
                c.prepare_cached("DELETE FROM files WHERE ID = ?1 AND FileName = ?2")?
                    .execute(params![&id.0[..], file_name])?;
                record_pending(c, &row.path)?;
            }
            if let Some(now) = seen {
                touch_one(c, &id, now)?;
            }
            Ok(record)
        })
    }

    fn remove_client(&self, id: &ClientId) -> Result<Option<Vec<FileRecord>>, StoreError> {
        let id = *id;
        self.write(move |c| {
            let files = c
                .prepare_cached(
                    "SELECT ID, FileName, PathName, Verified FROM files WHERE ID = ?1 ORDER BY FileName",
                )?
                .query_map(params![&id.0[..]], file_from_row)?
                .collect::<Result<Vec<_>, _>>()?;
            c.prepare_cached("DELETE FROM files WHERE ID = ?1")?
                .execute(params![&id.0[..]])?;
            for row in &files {
                record_pending(c, &row.path)?;
            }
            let removed = c
                .prepare_cached("DELETE FROM clients WHERE ID = ?1")?
                .execute(params![&id.0[..]])?;
            // File rows without their client (a database adopted from another server;
            // this one never writes them) were removed too: their files must go as well.
            Ok((removed > 0 || !files.is_empty()).then_some(files))
        })
    }

    fn touch(&self, seen: &[(ClientId, Timestamp)]) -> Result<(), StoreError> {
        if seen.is_empty() {
            return Ok(());
        }
        let seen = seen.to_vec();
        self.write(move |c| {
            for (id, now) in &seen {
                touch_one(c, id, *now)?;
            }
            Ok(())
        })
    }

    fn pending_removals(&self) -> Result<Vec<String>, StoreError> {
        self.read(|c| {
            let mut statement =
                c.prepare("SELECT PathName FROM sfc_pending_removals ORDER BY PathName")?;
            let rows = statement.query_map([], |row| row.get(0))?;
            rows.collect()
        })
    }

    fn forget_removals(&self, paths: &[String]) -> Result<(), StoreError> {
        if paths.is_empty() {
            return Ok(());
        }
        let paths = paths.to_vec();
        self.write(move |c| {
            let mut statement =
                c.prepare_cached("DELETE FROM sfc_pending_removals WHERE PathName = ?1")?;
            for path in &paths {
                statement.execute(params![path])?;
            }
            Ok(())
        })
    }

    fn clients(&self) -> Result<Vec<ClientRecord>, StoreError> {
        self.read(|c| {
            let mut statement = c.prepare(&format!("{CLIENT_COLUMNS} ORDER BY Name"))?;
            let rows = statement.query_map([], client_from_row)?;
            rows.collect()
        })
    }

    fn files(&self) -> Result<Vec<FileRecord>, StoreError> {
        self.read(|c| {
            let mut statement = c.prepare(
                "SELECT ID, FileName, PathName, Verified FROM files ORDER BY ID, FileName",
            )?;
            let rows = statement.query_map([], file_from_row)?;
            rows.collect()
        })
    }

    fn setup_id(&self) -> Result<Option<String>, StoreError> {
        self.read(|c| {
            let made: bool = c.query_row(
                "SELECT EXISTS (SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'sfc_setup')",
                [],
                |row| row.get(0),
            )?;
            if !made {
                return Ok(None);
            }
            c.query_row("SELECT id FROM sfc_setup", [], |row| row.get(0))
                .optional()
        })
    }

    fn record_setup_id(&self, id: &str) -> Result<String, StoreError> {
        let id = id.to_owned();
        self.write(move |c| {
            c.execute_batch(SETUP_TABLE)?;
            c.execute(
                "INSERT INTO sfc_setup (singleton, id) VALUES (1, ?1) ON CONFLICT DO NOTHING",
                params![id],
            )?;
            c.query_row("SELECT id FROM sfc_setup", [], |row| row.get(0))
        })
    }

    fn close(&self) -> Result<(), StoreError> {
        if let Some(reader) = &self.reader {
            let mut guard = reader.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(conn) = guard.take() {
                conn.close().map_err(|(_, error)| db_err(error))?;
            }
        }
        // Queued writes finish first; new ones get `Closed`.
        let writer = self
            .writer
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        match writer {
            Some(writer) => {
                let stats = writer.stats();
                tracing::debug!(
                    writes = stats.writes(),
                    transactions = stats.transactions(),
                    "database writer stopping (group commit)"
                );
                writer.stop().map_err(StoreError::Database)
            }
            None => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests;
