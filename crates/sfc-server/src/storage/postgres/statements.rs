//! The [`MetaStore`] statements: one statement per method (see the module docs of
//! `storage::postgres`), and rows turned into records.

use super::connection::Commit;
use super::{db_err, PostgresStore, NAME_CONSTRAINT};
use crate::storage::{ClientRecord, FileRecord, Inserted, MetaStore, StoreError, Timestamp};
use sfc_proto::ClientId;
use std::collections::HashMap;
use std::sync::atomic::Ordering;
use tokio_postgres::error::SqlState;
use tokio_postgres::Row;
use zeroize::Zeroizing;

const CLIENT_COLUMNS: &str = "SELECT ID, Name, PublicKey, LastSeen, AESKey FROM clients";
const FILE_COLUMNS: &str = "SELECT ID, FileName, PathName, Verified FROM files";
/// Rounds of "update, else insert" before [`MetaStore::put_file`] gives up: each further
/// round needs another server to delete and insert the same row in between.
const PUT_FILE_ATTEMPTS: usize = 3;

/// How long after it began `put_file` may still start a settled statement: its
/// attempts (two settled statements each, the locked UPDATE then the INSERT) stop there,
/// so that its row is committed, or never will be, within [`LONGEST_ROW_COMMIT`]. Far
/// beyond what a working database takes (milliseconds): only a cascade of lost
/// connections, stuck paths and lost answers gets there.
const PUT_FILE_BUDGET: std::time::Duration = crate::config::DEFAULT_RECOVERY_MIN_AGE
    .saturating_sub(std::time::Duration::from_secs(60))
    .saturating_sub(super::connection::SETTLED_STATEMENT_BOUND);

/// The longest a file's row may take to be committed once `put_file` begins: a settled
/// statement started at the end of [`PUT_FILE_BUDGET`]. An object in S3 is written before
/// its row is committed, so recovery leaves objects younger than this alone
/// ([`crate::config::ServerConfig::recovery_grace`]).
pub(crate) const LONGEST_ROW_COMMIT: std::time::Duration =
    PUT_FILE_BUDGET.saturating_add(super::connection::SETTLED_STATEMENT_BOUND);

// With a margin for the S3 requests around the commit (each retried for seconds at most),
// and room in the budget for a statement that waits out every bound and one after it.
const _: () = assert!(
    LONGEST_ROW_COMMIT.as_secs() + 60 <= crate::config::DEFAULT_RECOVERY_MIN_AGE.as_secs()
        && PUT_FILE_BUDGET.as_secs() >= super::connection::SETTLED_STATEMENT_BOUND.as_secs()
);
/// `LastSeen` moved forward to `$n`, never backwards.
const ADVANCE: &str = "LastSeen = GREATEST(COALESCE(LastSeen, ''), $n)";

fn advance(param: usize) -> String {
    ADVANCE.replace("$n", &format!("${param}"))
}

fn client_id(row: &Row) -> Result<ClientId, StoreError> {
    let bytes: Vec<u8> = row.try_get(0).map_err(db_err)?;
    <[u8; 16]>::try_from(bytes.as_slice())
        .map(ClientId)
        .map_err(|_| StoreError::Database(format!("a row has a {}-byte ID", bytes.len())))
}

fn client_from_row(row: &Row) -> Result<ClientRecord, StoreError> {
    Ok(ClientRecord {
        id: client_id(row)?,
        name: row.try_get(1).map_err(db_err)?,
        public_key: row.try_get(2).map_err(db_err)?,
        last_seen: row.try_get(3).map_err(db_err)?,
        aes_key: row.try_get(4).map_err(db_err)?,
    })
}

fn file_from_row(row: &Row) -> Result<FileRecord, StoreError> {
    Ok(FileRecord {
        client_id: client_id(row)?,
        file_name: row.try_get(1).map_err(db_err)?,
        path: row.try_get(2).map_err(db_err)?,
        verified: row.try_get(3).map_err(db_err)?,
    })
}

fn is_name_taken(error: &tokio_postgres::Error) -> bool {
    error.as_db_error().is_some_and(|db| {
        *db.code() == SqlState::UNIQUE_VIOLATION && db.constraint() == Some(NAME_CONSTRAINT)
    })
}

impl MetaStore for PostgresStore {
    fn client(&self, id: &ClientId) -> Result<Option<ClientRecord>, StoreError> {
        let rows = self.query(&format!("{CLIENT_COLUMNS} WHERE ID = $1"), &[&&id.0[..]])?;
        rows.first().map(client_from_row).transpose()
    }

    fn insert_client(
        &self,
        id: &ClientId,
        name: &str,
        now: Timestamp,
    ) -> Result<Inserted, StoreError> {
        let now = now.to_string();
        let inserted = self.query_pg(
            "INSERT INTO clients (ID, Name, LastSeen) VALUES ($1, $2, $3)",
            &[&&id.0[..], &name, &now],
        )?;
        let error = match inserted {
            Ok(_) => return Ok(Inserted::Ok),
            Err(error) => error,
        };
        let unique = error
            .as_db_error()
            .is_some_and(|db| *db.code() == SqlState::UNIQUE_VIOLATION);
        // Our own insert, committed by an attempt whose answer was lost (the ID is new
        // and random, so a row with it and this name is ours).
        if unique && self.client(id)?.is_some_and(|row| row.name == name) {
            return Ok(Inserted::Ok);
        }
        if is_name_taken(&error) {
            Ok(Inserted::NameTaken)
        } else {
            Err(db_err(error))
        }
    }

    fn set_keys(
        &self,
        id: &ClientId,
        public_key: Option<&[u8]>,
        aes_key: &[u8],
        now: Timestamp,
    ) -> Result<(), StoreError> {
        let now = now.to_string();
        let aes_key = Zeroizing::new(aes_key.to_vec());
        let changed = match public_key {
            // Pinning: the first key wins; another key never replaces it.
            Some(key) => self.query(
                &format!(
                    "UPDATE clients SET PublicKey = $2, AESKey = $3, {}
                     WHERE ID = $1 AND (PublicKey IS NULL OR PublicKey = $2) RETURNING 1",
                    advance(4)
                ),
                &[&&id.0[..], &key, &&aes_key[..], &now],
            )?,
            None => self.query(
                &format!(
                    "UPDATE clients SET AESKey = $2, {} WHERE ID = $1 RETURNING 1",
                    advance(3)
                ),
                &[&&id.0[..], &&aes_key[..], &now],
            )?,
        };
        if !changed.is_empty() {
            return Ok(());
        }
        match self.client(id)? {
            Some(_) => Err(StoreError::Database(format!(
                "client {id} has another public key on record (key pinning)"
            ))),
            None => Err(StoreError::Database(format!(
                "no client {id} to store keys for"
            ))),
        }
    }

    /// An update that reads the row it replaces (locked first, so the path returned is
    /// the one replaced even when another server changed the row a moment before), else
    /// an insert; an insert that meets a row another server inserted meanwhile updates
    /// that one instead. Each statement is atomic and moves `LastSeen` with it.
    ///
    /// Each runs in a transaction whose outcome is settled ([`Self::query_settled`]):
    /// an error means the row was not written and will not be later, so the caller may
    /// undo the file's move (`session::Core::store_upload`). (Autocommitted, a statement
    /// whose connection broke while it waited for the row's lock committed when the lock
    /// came free, after the caller had been told it failed and had removed the new file:
    /// a row naming a missing file.) A statement whose answer is lost before the commit
    /// was sent rolled back, and runs again on a new connection.
    fn put_file(&self, file: &FileRecord, now: Timestamp) -> Result<Option<String>, StoreError> {
        let now = now.to_string();
        let params: [&(dyn tokio_postgres::types::ToSql + Sync); 5] = [
            &&file.client_id.0[..],
            &file.file_name,
            &file.path,
            &file.verified,
            &now,
        ];
        let began = std::time::Instant::now();
        let over_budget = || {
            (began.elapsed() > PUT_FILE_BUDGET).then(|| {
                StoreError::Database(format!(
                    "storing the row of {:?} took over {} s; given up",
                    file.file_name,
                    PUT_FILE_BUDGET.as_secs()
                ))
            })
        };
        for _ in 0..PUT_FILE_ATTEMPTS {
            if let Some(error) = over_budget() {
                return Err(error);
            }
            let replaced = self.query_settled(
                &format!(
                    "WITH replaced AS (
                        UPDATE files AS f SET PathName = $3, Verified = $4
                        FROM (SELECT ID, FileName, PathName FROM files
                              WHERE ID = $1 AND FileName = $2 FOR UPDATE) AS old
                        WHERE f.ID = old.ID AND f.FileName = old.FileName
                        RETURNING old.PathName
                     ), pending AS (
                        INSERT INTO sfc_pending_removals (PathName)
                        SELECT PathName FROM replaced WHERE PathName <> $3
                        ON CONFLICT DO NOTHING
                     ), seen AS (
                        UPDATE clients SET {} WHERE ID = $1 AND EXISTS (SELECT 1 FROM replaced)
                     )
                     SELECT PathName, pg_current_xact_id()::text FROM replaced",
                    advance(5)
                ),
                &params,
                |_| self.names(file),
            )?;
            if let Some(row) = replaced.first() {
                return row.try_get(0).map(Some).map_err(db_err);
            }
            if let Some(error) = over_budget() {
                return Err(error);
            }
            let inserted = self.query_settled(
                &format!(
                    "WITH inserted AS (
                        INSERT INTO files (ID, FileName, PathName, Verified)
                        VALUES ($1, $2, $3, $4)
                        ON CONFLICT (ID, FileName) DO NOTHING
                        RETURNING 1
                     ), seen AS (
                        UPDATE clients SET {} WHERE ID = $1 AND EXISTS (SELECT 1 FROM inserted)
                     )
                     SELECT count(*), pg_current_xact_id()::text FROM inserted",
                    advance(5)
                ),
                &params,
                |rows| match inserted_count(rows)? {
                    0 => Ok(true),
                    _ => self.names(file),
                },
            )?;
            let count = inserted_count(&inserted)?;
            if count == 1 {
                return Ok(None);
            }
            // Another server inserted the row between the two statements: update it.
        }
        Err(StoreError::Database(format!(
            "the row of {:?} kept changing under {PUT_FILE_ATTEMPTS} attempts to store it",
            file.file_name
        )))
    }

    fn set_verified(
        &self,
        id: &ClientId,
        file_name: &str,
        now: Timestamp,
    ) -> Result<bool, StoreError> {
        let now = now.to_string();
        let rows = self.query(
            &format!(
                "WITH verified AS (
                    UPDATE files SET Verified = true WHERE ID = $1 AND FileName = $2 RETURNING 1
                 ), seen AS (
                    UPDATE clients SET {} WHERE ID = $1
                 )
                 SELECT count(*) FROM verified",
                advance(3)
            ),
            &[&&id.0[..], &file_name, &now],
        )?;
        let count: i64 = match rows.first() {
            Some(row) => row.try_get(0).map_err(db_err)?,
            None => 0,
        };
        Ok(count == 1)
    }

    fn file(&self, id: &ClientId, file_name: &str) -> Result<Option<FileRecord>, StoreError> {
        let rows = self.query(
            &format!("{FILE_COLUMNS} WHERE ID = $1 AND FileName = $2"),
            &[&&id.0[..], &file_name],
        )?;
        rows.first().map(file_from_row).transpose()
    }

    /// The row's path is read before the commit ([`PostgresStore::query_then_commit`]):
    /// after a commit whose answer was lost, the row being gone means this removal
    /// happened (or another server's; either way no row names that path), and the path
    /// is returned for its file to be removed. Run again instead, the removal would find
    /// nothing, and the file would stay with no row naming it.
    fn remove_file(
        &self,
        id: &ClientId,
        file_name: &str,
        seen: Option<Timestamp>,
    ) -> Result<Option<FileRecord>, StoreError> {
        // The removed row's path is recorded as a pending removal in the same statement.
        const REMOVED: &str = "WITH removed AS (
                DELETE FROM files WHERE ID = $1 AND FileName = $2
                RETURNING ID, FileName, PathName, Verified
             ), pending AS (
                INSERT INTO sfc_pending_removals (PathName) SELECT PathName FROM removed
                ON CONFLICT DO NOTHING
             )";
        let commit = match seen {
            None => self.query_then_commit(
                &format!("{REMOVED} SELECT ID, FileName, PathName, Verified FROM removed"),
                &[&&id.0[..], &file_name],
            )?,
            Some(now) => self.query_then_commit(
                &format!(
                    "{REMOVED}, seen AS (
                        UPDATE clients SET {} WHERE ID = $1
                     )
                     SELECT ID, FileName, PathName, Verified FROM removed",
                    advance(3)
                ),
                &[&&id.0[..], &file_name, &now.to_string()],
            )?,
        };
        let (rows, lost) = match commit {
            Commit::Done(rows) => (rows, None),
            Commit::Unknown(rows, error) => (rows, Some(error)),
        };
        let removed = rows.first().map(file_from_row).transpose()?;
        let (Some(error), Some(removed)) = (lost, &removed) else {
            return Ok(removed);
        };
        match self.file(id, file_name) {
            // Still the row this removal read: it did not happen. (Paths are never reused
            // by another server: a key per upload in S3; a folder has one server.)
            Ok(Some(row)) if row.path == removed.path => Err(error),
            // Gone, or naming a version stored since: no row names the path read.
            Ok(_) => Ok(Some(removed.clone())),
            Err(_) => Err(error),
        }
    }

    /// One statement in a transaction ([`PostgresStore::query_then_commit`]); after a
    /// commit whose answer was lost, the client's row being gone means it happened, and
    /// the files it read are returned for removal.
    fn remove_client(&self, id: &ClientId) -> Result<Option<Vec<FileRecord>>, StoreError> {
        // The client's own row comes back with NULLs.
        let commit = self.query_then_commit(
            "WITH gone_files AS (
                DELETE FROM files WHERE ID = $1
                RETURNING ID, FileName, PathName, Verified
             ), pending AS (
                INSERT INTO sfc_pending_removals (PathName) SELECT PathName FROM gone_files
                ON CONFLICT DO NOTHING
             ), gone_client AS (
                DELETE FROM clients WHERE ID = $1 RETURNING ID
             )
             SELECT ID, FileName, PathName, Verified FROM gone_files
             UNION ALL
             SELECT ID, NULL, NULL, NULL FROM gone_client",
            &[&&id.0[..]],
        )?;
        let (rows, lost) = match commit {
            Commit::Done(rows) => (rows, None),
            Commit::Unknown(rows, error) => (rows, Some(error)),
        };
        let mut files = Vec::new();
        let mut client_removed = false;
        for row in &rows {
            let name: Option<String> = row.try_get(1).map_err(db_err)?;
            if name.is_none() {
                client_removed = true;
            } else {
                files.push(file_from_row(row)?);
            }
        }
        files.sort_by(|a, b| a.file_name.cmp(&b.file_name));
        if let (Some(error), true) = (lost, client_removed) {
            // A client's ID is never given out again: its row still there means the
            // removal did not happen.
            if !matches!(self.client(id), Ok(None)) {
                return Err(error);
            }
        }
        Ok(client_removed.then_some(files))
    }

    fn touch(&self, seen: &[(ClientId, Timestamp)]) -> Result<(), StoreError> {
        // One value per client: UPDATE … FROM applies only one of several matches.
        let mut latest: HashMap<ClientId, Timestamp> = HashMap::new();
        for (id, now) in seen {
            let entry = latest.entry(*id).or_insert(*now);
            *entry = (*entry).max(*now);
        }
        if latest.is_empty() {
            return Ok(());
        }
        let (ids, times): (Vec<Vec<u8>>, Vec<String>) = latest
            .into_iter()
            .map(|(id, now)| (id.0.to_vec(), now.to_string()))
            .unzip();
        // The rows are locked in ID order first: two nodes flushing the same clients
        // would otherwise lock them in the order of their arrays (an index lookup per
        // element) and could each wait for the other (a deadlock, one flush failed).
        // NO KEY UPDATE: the lock the UPDATE itself takes, which does not block the
        // foreign-key checks of `files` rows being inserted.
        self.query(
            "UPDATE clients SET LastSeen = GREATEST(COALESCE(clients.LastSeen, ''), seen.at)
             FROM (SELECT c.ID AS id, s.at
                   FROM clients AS c JOIN unnest($1::bytea[], $2::text[]) AS s (id, at)
                     ON c.ID = s.id
                   ORDER BY c.ID
                   FOR NO KEY UPDATE OF c) AS seen
             WHERE clients.ID = seen.id",
            &[&ids, &times],
        )?;
        Ok(())
    }

    fn pending_removals(&self) -> Result<Vec<String>, StoreError> {
        self.query(
            "SELECT PathName FROM sfc_pending_removals ORDER BY PathName COLLATE \"C\"",
            &[],
        )?
        .iter()
        .map(|row| row.try_get(0).map_err(db_err))
        .collect()
    }

    fn forget_removals(&self, paths: &[String]) -> Result<(), StoreError> {
        if paths.is_empty() {
            return Ok(());
        }
        self.query(
            "DELETE FROM sfc_pending_removals WHERE PathName = ANY($1::text[])",
            &[&paths],
        )?;
        Ok(())
    }

    fn clients(&self) -> Result<Vec<ClientRecord>, StoreError> {
        self.query(
            &format!("{CLIENT_COLUMNS} ORDER BY Name COLLATE \"C\""),
            &[],
        )?
        .iter()
        .map(client_from_row)
        .collect()
    }

    fn files_of(&self, id: &ClientId) -> Result<Vec<FileRecord>, StoreError> {
        self.query(
            &format!("{FILE_COLUMNS} WHERE ID = $1 ORDER BY FileName COLLATE \"C\""),
            &[&&id.0[..]],
        )?
        .iter()
        .map(file_from_row)
        .collect()
    }

    fn files(&self) -> Result<Vec<FileRecord>, StoreError> {
        self.query(
            &format!("{FILE_COLUMNS} ORDER BY ID, FileName COLLATE \"C\""),
            &[],
        )?
        .iter()
        .map(file_from_row)
        .collect()
    }

    fn setup_id(&self) -> Result<Option<String>, StoreError> {
        if !self
            .query("SELECT to_regclass('sfc_setup') IS NOT NULL", &[])?
            .first()
            .map(|row| row.try_get::<_, bool>(0))
            .transpose()
            .map_err(db_err)?
            .unwrap_or(false)
        {
            return Ok(None);
        }
        self.query("SELECT id FROM sfc_setup", &[])?
            .first()
            .map(|row| row.try_get(0).map_err(db_err))
            .transpose()
    }

    fn record_setup_id(&self, id: &str) -> Result<String, StoreError> {
        self.run(super::migrations::record_setup_id(&self.pool, id))
    }

    fn close(&self) -> Result<(), StoreError> {
        self.closed.store(true, Ordering::Release);
        self.pool.close();
        Ok(())
    }

    fn is_shared(&self) -> bool {
        true
    }
}

impl PostgresStore {
    /// Whether the row of `file`'s client and name names `file`'s path: a settled
    /// [`MetaStore::put_file`] took effect.
    fn names(&self, file: &FileRecord) -> Result<bool, StoreError> {
        let row = self.file(&file.client_id, &file.file_name)?;
        Ok(row.is_some_and(|row| row.path == file.path))
    }
}

/// The rows `put_file`'s insert says it inserted.
fn inserted_count(rows: &[tokio_postgres::Row]) -> Result<i64, StoreError> {
    match rows.first() {
        Some(row) => row.try_get(0).map_err(db_err),
        None => Ok(0),
    }
}
