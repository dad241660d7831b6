//! The metadata store in SQLite (`defensive.db`).
//!
//! Schema (exactly the tables and columns PROTOCOL.md names):
//!
//! ```sql
//! clients(ID BLOB 16 bytes PRIMARY KEY, Name TEXT UNIQUE, PublicKey BLOB, LastSeen TEXT, AESKey BLOB)
//! files(ID BLOB, FileName TEXT, PathName TEXT, Verified INTEGER, PRIMARY KEY (ID, FileName))
//! ```
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
        Self::start(
            Self::open_existing_connection(path)?,
            Some(Self::open_reader(path)?),
        )
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

fn migrate(conn: &mut Connection) -> Result<(), StoreError> {
    let version: i64 = conn
        .query_row("PRAGMA user_version", [], |row| row.get(0))
        .map_err(db_err)?;
    if version > SCHEMA_VERSION {
        return Err(StoreError::Database(format!(
            "the database has schema version {version}; this server knows up to {SCHEMA_VERSION}"
        )));
    }
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
        let result = self.write(move |c| {
            c.prepare_cached("INSERT INTO clients (ID, Name, LastSeen) VALUES (?1, ?2, ?3)")?
                .execute(params![&id.0[..], name, now.to_string()])
        });
        match result {
            Ok(_) => Ok(Inserted::Ok),
            Err(StoreError::Database(message)) if message.contains("clients.Name") => {
                Ok(Inserted::NameTaken)
            }
            Err(error) => Err(error),
        }
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
        let changed = self.write(move |c| {
            let changed = match public_key {
                Some(key) => c
                    .prepare_cached("UPDATE clients SET PublicKey = ?2, AESKey = ?3 WHERE ID = ?1")?
                    .execute(params![&id.0[..], key, &aes_key[..]])?,
                None => c
                    .prepare_cached("UPDATE clients SET AESKey = ?2 WHERE ID = ?1")?
                    .execute(params![&id.0[..], &aes_key[..]])?,
            };
            touch_one(c, &id, now)?;
            Ok(changed)
        })?;
        if changed == 1 {
            Ok(())
        } else {
            Err(StoreError::Database(format!(
                "no client {id} to store keys for"
            )))
        }
    }

    fn put_file(&self, file: &FileRecord, now: Timestamp) -> Result<(), StoreError> {
        let file = file.clone();
        self.write(move |c| {
            c.prepare_cached(
                "INSERT INTO files (ID, FileName, PathName, Verified) VALUES (?1, ?2, ?3, ?4)
                 ON CONFLICT (ID, FileName) DO UPDATE
                 SET PathName = excluded.PathName, Verified = excluded.Verified",
            )?
            .execute(params![
                &file.client_id.0[..],
                file.file_name,
                file.path,
                i64::from(file.verified)
            ])?;
            touch_one(c, &file.client_id, now)
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

    fn remove_file(
        &self,
        id: &ClientId,
        file_name: &str,
        now: Timestamp,
    ) -> Result<Option<FileRecord>, StoreError> {
        let (id, file_name) = (*id, file_name.to_owned());
        self.write(move |c| {
            let record = c
                .prepare_cached(
                    "SELECT ID, FileName, PathName, Verified FROM files WHERE ID = ?1 AND FileName = ?2",
                )?
                .query_row(params![&id.0[..], file_name], file_from_row)
                .optional()?;
            if record.is_some() {
                c.prepare_cached("DELETE FROM files WHERE ID = ?1 AND FileName = ?2")?
                    .execute(params![&id.0[..], file_name])?;
            }
            touch_one(c, &id, now)?;
            Ok(record)
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
                tracing::info!(
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
mod tests {
    use super::*;
    use std::sync::Arc;

    fn id(n: u8) -> ClientId {
        ClientId([n; 16])
    }

    #[test]
    fn clients_and_files_round_trip() {
        let store = SqliteStore::open_in_memory().unwrap();
        assert_eq!(store.schema_version().unwrap(), SCHEMA_VERSION);
        let t = Timestamp(1_000);
        assert_eq!(
            store.insert_client(&id(1), "alice", t).unwrap(),
            Inserted::Ok
        );
        assert_eq!(
            store.insert_client(&id(2), "alice", t).unwrap(),
            Inserted::NameTaken
        );
        assert!(store.insert_client(&id(1), "bob", t).is_err());
        store
            .set_keys(&id(1), Some(&[1, 2, 3]), &[7; 32], Timestamp(2_000))
            .unwrap();
        store
            .set_keys(&id(1), None, &[8; 32], Timestamp(1_500))
            .unwrap();
        assert!(store.set_keys(&id(9), None, &[8; 32], t).is_err());
        let alice = store.client(&id(1)).unwrap().unwrap();
        assert_eq!(alice.public_key.as_deref(), Some(&[1u8, 2, 3][..]));
        assert_eq!(alice.aes_key.as_deref(), Some(&[8u8; 32][..]));
        // LastSeen never goes backwards.
        assert_eq!(alice.last_seen.as_deref(), Some("1970-01-01 00:00:02.000"));
        assert!(store.client(&id(3)).unwrap().is_none());

        let file = FileRecord {
            client_id: id(1),
            file_name: "a/b.txt".into(),
            path: "files/x/a%2Fb.txt".into(),
            verified: false,
        };
        store.put_file(&file, t).unwrap();
        assert_eq!(store.file(&id(1), "a/b.txt").unwrap(), Some(file.clone()));
        assert_eq!(store.file(&id(1), "other").unwrap(), None);
        assert!(store.set_verified(&id(1), "a/b.txt", t).unwrap());
        assert!(!store.set_verified(&id(1), "nope", t).unwrap());
        assert!(store.files().unwrap()[0].verified);
        store.put_file(&file, t).unwrap();
        assert!(!store.files().unwrap()[0].verified);
        assert_eq!(store.remove_file(&id(1), "a/b.txt", t).unwrap(), Some(file));
        assert_eq!(store.remove_file(&id(1), "a/b.txt", t).unwrap(), None);
        store
            .touch(&[(id(1), Timestamp(5_000)), (id(2), Timestamp(5_000))])
            .unwrap();
        assert_eq!(store.clients().unwrap().len(), 1);
        store.close().unwrap();
        assert!(matches!(store.client(&id(1)), Err(StoreError::Closed)));
    }

    #[test]
    fn file_database_uses_wal_and_refuses_newer_schemas() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("defensive.db");
        {
            let store = SqliteStore::open(&path).unwrap();
            let mode: String = store
                .write(|c| c.query_row("PRAGMA journal_mode", [], |r| r.get(0)))
                .unwrap();
            assert_eq!(mode, "wal");
            let sync: i64 = store
                .write(|c| c.query_row("PRAGMA synchronous", [], |r| r.get(0)))
                .unwrap();
            assert_eq!(sync, 2, "synchronous=FULL");
            store.insert_client(&id(1), "a", Timestamp(0)).unwrap();
            store.close().unwrap();
        }
        // Reopening keeps the data and does not migrate again.
        let store = SqliteStore::open(&path).unwrap();
        assert_eq!(store.clients().unwrap().len(), 1);
        store
            .write(|c| c.pragma_update(None, "user_version", SCHEMA_VERSION + 1))
            .unwrap();
        store.close().unwrap();
        let error = SqliteStore::open(&path).unwrap_err();
        assert!(error.to_string().contains("schema version"), "{error}");
    }

    #[test]
    fn concurrent_writes_share_one_transaction_and_all_survive() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("defensive.db");
        let store = Arc::new(SqliteStore::open(&path).unwrap());
        let stats = store.group_commit_stats().unwrap();
        let release = hold_writer(&store);
        let writers: Vec<_> = (0..64u8)
            .map(|n| {
                let store = Arc::clone(&store);
                std::thread::spawn(move || {
                    store.insert_client(&id(n), &format!("client-{n}"), Timestamp(0))
                })
            })
            .collect();
        wait_for_queue(&stats, 65);
        release.send(()).unwrap();
        for writer in writers {
            assert_eq!(writer.join().unwrap().unwrap(), Inserted::Ok);
        }
        // The held transaction, then all 64 writes in one more.
        assert_eq!((stats.transactions(), stats.writes()), (2, 65));
        store.close().unwrap();
        let store = SqliteStore::open(&path).unwrap();
        assert_eq!(store.clients().unwrap().len(), 64);
    }

    #[test]
    fn a_failing_write_is_undone_alone_within_its_group() {
        let store = Arc::new(SqliteStore::open_in_memory().unwrap());
        let stats = store.group_commit_stats().unwrap();
        let release = hold_writer(&store);
        let queue = |n: u8, name: &'static str, s: &Arc<SqliteStore>| {
            let store = Arc::clone(s);
            let handle =
                std::thread::spawn(move || store.insert_client(&id(n), name, Timestamp(0)));
            wait_for_queue(&stats, 1 + u64::from(n));
            handle
        };
        let first = queue(1, "alice", &store);
        let taken = queue(2, "alice", &store);
        let other = queue(3, "bob", &store);
        release.send(()).unwrap();
        assert_eq!(first.join().unwrap().unwrap(), Inserted::Ok);
        assert_eq!(taken.join().unwrap().unwrap(), Inserted::NameTaken);
        assert_eq!(other.join().unwrap().unwrap(), Inserted::Ok);
        assert_eq!(
            stats.transactions(),
            2,
            "the three writes shared a transaction"
        );
        let names: Vec<_> = store
            .clients()
            .unwrap()
            .into_iter()
            .map(|c| c.name)
            .collect();
        assert_eq!(names, ["alice", "bob"]);
    }

    #[test]
    fn a_transaction_lost_midway_fails_every_write_of_its_group() {
        let store = Arc::new(SqliteStore::open_in_memory().unwrap());
        let stats = store.group_commit_stats().unwrap();
        let release = hold_writer(&store);
        let s = Arc::clone(&store);
        let before = std::thread::spawn(move || s.insert_client(&id(1), "alice", Timestamp(0)));
        wait_for_queue(&stats, 2);
        // What SQLite does on an I/O error or a full disk: the whole transaction is gone.
        let s = Arc::clone(&store);
        let lost = std::thread::spawn(move || s.write(|c| c.execute_batch("ROLLBACK")));
        wait_for_queue(&stats, 3);
        let s = Arc::clone(&store);
        let after = std::thread::spawn(move || s.insert_client(&id(2), "bob", Timestamp(0)));
        wait_for_queue(&stats, 4);
        release.send(()).unwrap();
        assert!(before.join().unwrap().is_err(), "its row was rolled back");
        assert!(lost.join().unwrap().is_err());
        assert!(after.join().unwrap().is_err(), "it never ran");
        assert!(store.clients().unwrap().is_empty());
        // The writer goes on with the next group.
        assert_eq!(
            store.insert_client(&id(3), "carol", Timestamp(0)).unwrap(),
            Inserted::Ok
        );
        store.close().unwrap();
        assert!(matches!(
            store.insert_client(&id(4), "dave", Timestamp(0)),
            Err(StoreError::Closed)
        ));
    }

    /// Occupies the writer thread until the returned sender is used, so that the writes
    /// queued meanwhile form the next group.
    fn hold_writer(store: &Arc<SqliteStore>) -> std::sync::mpsc::Sender<()> {
        let (release, released) = std::sync::mpsc::channel::<()>();
        let (started, running) = std::sync::mpsc::channel::<()>();
        let store = Arc::clone(store);
        std::thread::spawn(move || {
            store.write(move |_| {
                let _ = started.send(());
                let _ = released.recv();
                Ok(())
            })
        });
        running.recv().unwrap();
        release
    }

    fn wait_for_queue(stats: &GroupStats, submitted: u64) {
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while stats.submitted() < submitted {
            assert!(std::time::Instant::now() < deadline, "writes never queued");
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    #[test]
    fn columns_are_exactly_the_specified_ones() {
        let store = SqliteStore::open_in_memory().unwrap();
        let columns = |table: &str| -> Vec<String> {
            store
                .write({
                    let sql = format!("PRAGMA table_info({table})");
                    move |c| {
                        let mut s = c.prepare(&sql)?;
                        let names = s.query_map([], |r| r.get::<_, String>(1))?;
                        names.collect()
                    }
                })
                .unwrap()
        };
        assert_eq!(
            columns("clients"),
            ["ID", "Name", "PublicKey", "LastSeen", "AESKey"]
        );
        assert_eq!(columns("files"), ["ID", "FileName", "PathName", "Verified"]);
    }
}
