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
//! committed row survives power loss, which a 1603 relies on. One connection behind a
//! mutex serves the whole server; statements are cached; the admin views open their own
//! connection (WAL lets them read while the server writes).

use super::{ClientRecord, FileRecord, Inserted, MetaStore, StoreError, Timestamp};
use rusqlite::{params, Connection, OpenFlags, OptionalExtension};
use sfc_proto::ClientId;
use std::path::Path;
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

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

fn db_err(error: rusqlite::Error) -> StoreError {
    StoreError::Database(error.to_string())
}

/// SQLite-backed [`MetaStore`].
#[derive(Debug)]
pub struct SqliteStore {
    conn: Mutex<Option<Connection>>,
}

impl SqliteStore {
    /// Opens (creating if needed, owner-only) the database, sets WAL + synchronous=FULL,
    /// migrates.
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        // Owner-only: the database holds every client's AES key (crate::perms).
        crate::perms::prepare_private_db(path)?;
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
        Self::setup(conn)
    }

    /// A private in-memory database (tests, sans-IO drivers).
    pub fn open_in_memory() -> Result<Self, StoreError> {
        Self::setup(Connection::open_in_memory().map_err(db_err)?)
    }

    /// Opens an existing database for the admin views, without creating or migrating.
    pub fn open_existing(path: &Path) -> Result<Self, StoreError> {
        let conn = Connection::open_with_flags(
            path,
            OpenFlags::SQLITE_OPEN_READ_WRITE | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
        .map_err(db_err)?;
        conn.busy_timeout(Duration::from_secs(5)).map_err(db_err)?;
        Ok(SqliteStore {
            conn: Mutex::new(Some(conn)),
        })
    }

    fn setup(mut conn: Connection) -> Result<Self, StoreError> {
        conn.pragma_update(None, "synchronous", "FULL")
            .map_err(db_err)?;
        conn.busy_timeout(Duration::from_secs(5)).map_err(db_err)?;
        migrate(&mut conn)?;
        Ok(SqliteStore {
            conn: Mutex::new(Some(conn)),
        })
    }

    fn lock(&self) -> Result<MutexGuard<'_, Option<Connection>>, StoreError> {
        // A poisoned lock only means another thread panicked mid-call; SQLite itself
        // rolls back the unfinished transaction, so the connection is still usable.
        let guard = self.conn.lock().unwrap_or_else(|p| p.into_inner());
        if guard.is_none() {
            return Err(StoreError::Closed);
        }
        Ok(guard)
    }

    fn with<T>(
        &self,
        f: impl FnOnce(&mut Connection) -> rusqlite::Result<T>,
    ) -> Result<T, StoreError> {
        let mut guard = self.lock()?;
        let conn = guard.as_mut().ok_or(StoreError::Closed)?;
        f(conn).map_err(db_err)
    }

    /// The schema version recorded in the database.
    pub fn schema_version(&self) -> Result<i64, StoreError> {
        self.with(|c| c.query_row("PRAGMA user_version", [], |row| row.get(0)))
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
        self.with(|c| {
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
        let result = self.with(|c| {
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
        let changed = self.with(|c| {
            let tx = c.transaction()?;
            let changed = match public_key {
                Some(key) => tx
                    .prepare_cached("UPDATE clients SET PublicKey = ?2, AESKey = ?3 WHERE ID = ?1")?
                    .execute(params![&id.0[..], key, aes_key])?,
                None => tx
                    .prepare_cached("UPDATE clients SET AESKey = ?2 WHERE ID = ?1")?
                    .execute(params![&id.0[..], aes_key])?,
            };
            touch_one(&tx, id, now)?;
            tx.commit()?;
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
        self.with(|c| {
            let tx = c.transaction()?;
            tx.prepare_cached(
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
            touch_one(&tx, &file.client_id, now)?;
            tx.commit()
        })
    }

    fn set_verified(
        &self,
        id: &ClientId,
        file_name: &str,
        now: Timestamp,
    ) -> Result<bool, StoreError> {
        self.with(|c| {
            let tx = c.transaction()?;
            let changed = tx
                .prepare_cached("UPDATE files SET Verified = 1 WHERE ID = ?1 AND FileName = ?2")?
                .execute(params![&id.0[..], file_name])?;
            touch_one(&tx, id, now)?;
            tx.commit()?;
            Ok(changed == 1)
        })
    }

    fn file(&self, id: &ClientId, file_name: &str) -> Result<Option<FileRecord>, StoreError> {
        self.with(|c| {
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
        self.with(|c| {
            let tx = c.transaction()?;
            let record = tx
                .prepare_cached(
                    "SELECT ID, FileName, PathName, Verified FROM files WHERE ID = ?1 AND FileName = ?2",
                )?
                .query_row(params![&id.0[..], file_name], file_from_row)
                .optional()?;
            if record.is_some() {
                tx.prepare_cached("DELETE FROM files WHERE ID = ?1 AND FileName = ?2")?
                    .execute(params![&id.0[..], file_name])?;
            }
            touch_one(&tx, id, now)?;
            tx.commit()?;
            Ok(record)
        })
    }

    fn touch(&self, seen: &[(ClientId, Timestamp)]) -> Result<(), StoreError> {
        if seen.is_empty() {
            return Ok(());
        }
        self.with(|c| {
            let tx = c.transaction()?;
            for (id, now) in seen {
                touch_one(&tx, id, *now)?;
            }
            tx.commit()
        })
    }

    fn clients(&self) -> Result<Vec<ClientRecord>, StoreError> {
        self.with(|c| {
            let mut statement = c.prepare(&format!("{CLIENT_COLUMNS} ORDER BY Name"))?;
            let rows = statement.query_map([], client_from_row)?;
            rows.collect()
        })
    }

    fn files(&self) -> Result<Vec<FileRecord>, StoreError> {
        self.with(|c| {
            let mut statement = c.prepare(
                "SELECT ID, FileName, PathName, Verified FROM files ORDER BY ID, FileName",
            )?;
            let rows = statement.query_map([], file_from_row)?;
            rows.collect()
        })
    }

    fn close(&self) -> Result<(), StoreError> {
        let mut guard = self.conn.lock().unwrap_or_else(|p| p.into_inner());
        match guard.take() {
            Some(conn) => conn.close().map_err(|(_, error)| db_err(error)),
            None => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
                .with(|c| c.query_row("PRAGMA journal_mode", [], |r| r.get(0)))
                .unwrap();
            assert_eq!(mode, "wal");
            let sync: i64 = store
                .with(|c| c.query_row("PRAGMA synchronous", [], |r| r.get(0)))
                .unwrap();
            assert_eq!(sync, 2, "synchronous=FULL");
            store.insert_client(&id(1), "a", Timestamp(0)).unwrap();
            store.close().unwrap();
        }
        // Reopening keeps the data and does not migrate again.
        let store = SqliteStore::open(&path).unwrap();
        assert_eq!(store.clients().unwrap().len(), 1);
        store
            .with(|c| c.pragma_update(None, "user_version", SCHEMA_VERSION + 1))
            .unwrap();
        store.close().unwrap();
        let error = SqliteStore::open(&path).unwrap_err();
        assert!(error.to_string().contains("schema version"), "{error}");
    }

    #[test]
    fn columns_are_exactly_the_specified_ones() {
        let store = SqliteStore::open_in_memory().unwrap();
        let columns = |table: &str| -> Vec<String> {
            store
                .with(|c| {
                    let mut s = c.prepare(&format!("PRAGMA table_info({table})"))?;
                    let names = s.query_map([], |r| r.get::<_, String>(1))?;
                    names.collect()
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
