//! The metadata store in PostgreSQL (`--database postgres://…`), which any number of
//! servers may share.
//!
//! Schema: the two tables of `defensive.db`, same columns (PostgreSQL folds unquoted names
//! to lower case, so `SELECT Name FROM clients` works as written for SQLite):
//!
//! ```sql
//! clients(ID bytea PRIMARY KEY (16 bytes), Name text UNIQUE, PublicKey bytea, LastSeen text, AESKey bytea)
//! files(ID bytea REFERENCES clients, FileName text, PathName text, Verified boolean, PRIMARY KEY (ID, FileName))
//! ```
//!
//! # Migrations
//!
//! [`MIGRATIONS`] are applied at start-up in one transaction, recorded in
//! `schema_version` (one row per version applied), under a transaction-level advisory
//! lock so that servers starting together migrate once; PostgreSQL's DDL is
//! transactional, so a failed migration leaves nothing behind. A database with a newer
//! version than this build knows is refused. The admin views never migrate.
//!
//! # What the database enforces (several servers at once)
//!
//! Every method is one statement (data-modifying `WITH` clauses where a write also moves
//! `LastSeen`), so it is atomic without a client-side transaction and costs one round
//! trip:
//! - name uniqueness: the `clients_name_unique` constraint; its violation (SQLSTATE
//!   23505 on that constraint) is [`Inserted::NameTaken`], so of two servers registering
//!   one name at once exactly one succeeds;
//! - key pinning: the key is stored only `WHERE PublicKey IS NULL OR PublicKey = the
//!   key`, so two servers accepting different first keys for one client store exactly
//!   one, and the other gets an error (1607);
//! - "replace a file": one upsert on the `(ID, FileName)` key, so a row is always one
//!   writer's whole row;
//! - `LastSeen` only moves forward: `GREATEST` over the stored text (collation "C": the
//!   text sorts chronologically), evaluated on the latest row version.
//!
//! # Connections
//!
//! A [`deadpool_postgres`] pool of `pool_size` connections, driven by a private
//! one-thread tokio runtime; the synchronous methods wait on it from the caller's thread
//! (the server's blocking pool). A database that is down makes operations fail at once
//! with a [`StoreError`] (answered 1607); a pooled connection found closed is dropped
//! and a new one opened on the next request, so the store reconnects by itself.
//! Statements time out after [`STATEMENT_TIMEOUT`] on the server (rolled back there),
//! and TCP keepalives notice a database host that vanished.
//!
//! A statement that meets a closed connection runs once more on a new one. A commit
//! whose acknowledgement is lost and cannot be retried is ambiguous, as with any
//! networked database: the client gets 1607 and sends again; every write here is
//! idempotent for that resend except a registration, whose resend gets 1601 (name taken).

use super::{ClientRecord, FileRecord, Inserted, MetaStore, StoreError, Timestamp};
use crate::config::PostgresUrl;
use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod};
use sfc_proto::ClientId;
use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::Duration;
use tokio_postgres::error::SqlState;
use tokio_postgres::Row;
use zeroize::Zeroizing;

/// Schema migrations; entry `i` brings the schema from version `i` to `i + 1`.
pub const MIGRATIONS: &[&str] = &[
    // 1: the initial schema.
    "CREATE TABLE clients (
        ID bytea PRIMARY KEY CHECK (octet_length(ID) = 16),
        Name text NOT NULL CONSTRAINT clients_name_unique UNIQUE
            CHECK (char_length(Name) BETWEEN 1 AND 255),
        PublicKey bytea,
        LastSeen text COLLATE \"C\",
        AESKey bytea
    );
    CREATE TABLE files (
        ID bytea NOT NULL REFERENCES clients (ID),
        FileName text NOT NULL,
        PathName text NOT NULL,
        Verified boolean NOT NULL DEFAULT false,
        PRIMARY KEY (ID, FileName)
    );",
];

/// Schema version this build writes.
pub const SCHEMA_VERSION: i32 = MIGRATIONS.len() as i32;

/// Name of the unique constraint on `clients.Name` (how a taken name is recognised).
pub const NAME_CONSTRAINT: &str = "clients_name_unique";

/// Server-side limit of one statement (set per connection unless the URL sets
/// `options`).
pub const STATEMENT_TIMEOUT: Duration = Duration::from_secs(30);

/// How long opening a connection may take (unless the URL sets `connect_timeout`).
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// How long a request waits for a free pooled connection before it fails.
pub const POOL_WAIT: Duration = Duration::from_secs(10);

/// Advisory lock key held while migrating ("SFCSCHEM").
const MIGRATION_LOCK: i64 = 0x5346_4353_4348_454d;

const CLIENT_COLUMNS: &str = "SELECT ID, Name, PublicKey, LastSeen, AESKey FROM clients";
const FILE_COLUMNS: &str = "SELECT ID, FileName, PathName, Verified FROM files";
/// `LastSeen` moved forward to `$n`, never backwards.
const ADVANCE: &str = "LastSeen = GREATEST(COALESCE(LastSeen, ''), $n)";

fn advance(param: usize) -> String {
    ADVANCE.replace("$n", &format!("${param}"))
}

/// PostgreSQL-backed [`MetaStore`].
pub struct PostgresStore {
    pool: Pool,
    /// Drives the connections; shut down (without blocking) when the store is dropped.
    runtime: Mutex<Option<tokio::runtime::Runtime>>,
    handle: tokio::runtime::Handle,
    closed: AtomicBool,
    /// What to show in logs and errors (never the password).
    shown: String,
}

impl fmt::Debug for PostgresStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PostgresStore")
            .field("database", &self.shown)
            .field("pool", &self.pool.status())
            .finish_non_exhaustive()
    }
}

impl Drop for PostgresStore {
    fn drop(&mut self) {
        self.pool.close();
        let runtime = self
            .runtime
            .get_mut()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        if let Some(runtime) = runtime {
            // May run on an async thread, where a blocking shutdown would panic.
            runtime.shutdown_background();
        }
    }
}

fn db_err(error: tokio_postgres::Error) -> StoreError {
    StoreError::Database(with_causes(&error))
}

fn pool_err(error: deadpool_postgres::PoolError) -> StoreError {
    StoreError::Database(format!("cannot reach PostgreSQL: {}", with_causes(&error)))
}

/// The error and its causes ("error connecting to server: Connection refused …"): the
/// driver's own message leaves the cause out.
fn with_causes(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let more = cause.to_string();
        if !text.ends_with(&more) {
            text.push_str(": ");
            text.push_str(&more);
        }
        source = cause.source();
    }
    text
}

impl PostgresStore {
    /// Connects, checks the database and brings its schema to this build's version
    /// (`SCHEMA_VERSION`).
    pub fn open(url: &PostgresUrl) -> Result<Self, StoreError> {
        let store = Self::connect(url)?;
        store.run(async {
            let mut client = store.pool.get().await.map_err(pool_err)?;
            check_encoding(&client).await?;
            migrate(&mut client).await
        })?;
        Ok(store)
    }

    /// Connects to a database a server has set up, without creating or migrating
    /// anything (the admin views).
    pub fn open_existing(url: &PostgresUrl) -> Result<Self, StoreError> {
        let store = Self::connect(url)?;
        let version = store.schema_version()?;
        if version == 0 {
            return Err(StoreError::Database(format!(
                "{} holds no sfc-server tables (has a server run with this --database?)",
                store.shown
            )));
        }
        if version > SCHEMA_VERSION {
            return Err(newer_schema(version));
        }
        Ok(store)
    }

    fn connect(url: &PostgresUrl) -> Result<Self, StoreError> {
        let mut config = url.config().clone();
        if config.get_options().is_none() {
            config.options(format!(
                "-c statement_timeout={}",
                STATEMENT_TIMEOUT.as_millis()
            ));
        }
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(CONNECT_TIMEOUT);
        }
        if config.get_application_name().is_none() {
            config.application_name("sfc-server");
        }
        // Notice a database host that went away without closing the connection.
        config
            .keepalives(true)
            .keepalives_idle(Duration::from_secs(30))
            .keepalives_interval(Duration::from_secs(10))
            .keepalives_retries(3)
            .tcp_user_timeout(Duration::from_secs(30));
        let manager = Manager::from_config(
            config,
            tokio_postgres::NoTls,
            ManagerConfig {
                // A closed connection is noticed when it is taken from the pool.
                recycling_method: RecyclingMethod::Fast,
            },
        );
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("sfc-postgres")
            .enable_all()
            .build()?;
        let pool = Pool::builder(manager)
            .max_size(url.pool_size.max(1))
            .runtime(deadpool_postgres::Runtime::Tokio1)
            .wait_timeout(Some(POOL_WAIT))
            .create_timeout(Some(CONNECT_TIMEOUT))
            .recycle_timeout(Some(CONNECT_TIMEOUT))
            .build()
            .map_err(|error| StoreError::Database(format!("cannot set up the pool: {error}")))?;
        Ok(PostgresStore {
            pool,
            handle: runtime.handle().clone(),
            runtime: Mutex::new(Some(runtime)),
            closed: AtomicBool::new(false),
            shown: url.to_string(),
        })
    }

    /// Runs `work` on the store's runtime and waits for it (a blocking call: never on an
    /// async worker thread).
    fn run<T>(&self, work: impl Future<Output = Result<T, StoreError>>) -> Result<T, StoreError> {
        if self.closed.load(Ordering::Acquire) {
            return Err(StoreError::Closed);
        }
        self.handle.block_on(work)
    }

    /// Runs one statement (prepared once per connection) and returns its rows.
    fn query(
        &self,
        sql: &str,
        params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
    ) -> Result<Vec<Row>, StoreError> {
        self.query_pg(sql, params)?.map_err(db_err)
    }

    /// Like [`Self::query`], but gives PostgreSQL's own error (`Ok(Err)`) for the caller
    /// to look at. A statement that meets a closed connection (PostgreSQL restarted, or
    /// the connection cut, before the pool noticed) runs once more on a new one: every
    /// statement here is idempotent, or checks for its own earlier success
    /// ([`MetaStore::insert_client`]).
    fn query_pg(
        &self,
        sql: &str,
        params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
    ) -> Result<Result<Vec<Row>, tokio_postgres::Error>, StoreError> {
        self.run(async {
            match self.query_once(sql, params).await? {
                Err(error) if error.is_closed() => {
                    tracing::info!(%error, "PostgreSQL connection lost; trying a new one");
                    self.query_once(sql, params).await
                }
                result => Ok(result),
            }
        })
    }

    async fn query_once(
        &self,
        sql: &str,
        params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
    ) -> Result<Result<Vec<Row>, tokio_postgres::Error>, StoreError> {
        let client = self.pool.get().await.map_err(pool_err)?;
        let result = match client.prepare_cached(sql).await {
            Ok(statement) => client.query(&statement, params).await,
            Err(error) => Err(error),
        };
        if matches!(&result, Err(error) if error.is_closed()) {
            // Not back into the pool.
            drop(deadpool_postgres::Object::take(client));
        }
        Ok(result)
    }

    /// The schema version recorded in the database (0: none).
    pub fn schema_version(&self) -> Result<i32, StoreError> {
        self.run(async {
            let client = self.pool.get().await.map_err(pool_err)?;
            schema_version(&client).await
        })
    }

    /// Connections open and idle in the pool.
    pub fn pool_status(&self) -> deadpool_postgres::Status {
        self.pool.status()
    }
}

fn newer_schema(version: i32) -> StoreError {
    StoreError::Database(format!(
        "the database has schema version {version}; this server knows up to {SCHEMA_VERSION}"
    ))
}

/// Names, labels and paths are UTF-8 text; a database in another encoding could refuse
/// some or store them differently.
async fn check_encoding(client: &tokio_postgres::Client) -> Result<(), StoreError> {
    let row = client
        .query_one("SHOW server_encoding", &[])
        .await
        .map_err(db_err)?;
    let encoding: String = row.try_get(0).map_err(db_err)?;
    if encoding.eq_ignore_ascii_case("UTF8") {
        Ok(())
    } else {
        Err(StoreError::Database(format!(
            "the database's encoding is {encoding}; sfc-server needs UTF8 \
             (CREATE DATABASE … ENCODING 'UTF8')"
        )))
    }
}

async fn schema_version(client: &tokio_postgres::Client) -> Result<i32, StoreError> {
    let exists = client
        .query_one("SELECT to_regclass('schema_version') IS NOT NULL", &[])
        .await
        .map_err(db_err)?;
    if !exists.try_get::<_, bool>(0).map_err(db_err)? {
        return Ok(0);
    }
    client
        .query_one("SELECT COALESCE(max(version), 0) FROM schema_version", &[])
        .await
        .map_err(db_err)?
        .try_get(0)
        .map_err(db_err)
}

async fn migrate(client: &mut tokio_postgres::Client) -> Result<(), StoreError> {
    let tx = client.transaction().await.map_err(db_err)?;
    // Servers starting at once: the first migrates, the others wait and find it done.
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])
        .await
        .map_err(db_err)?;
    tx.batch_execute(
        "CREATE TABLE IF NOT EXISTS schema_version (
            version integer PRIMARY KEY,
            applied_at timestamptz NOT NULL DEFAULT now()
        )",
    )
    .await
    .map_err(db_err)?;
    let version: i32 = tx
        .query_one("SELECT COALESCE(max(version), 0) FROM schema_version", &[])
        .await
        .map_err(db_err)?
        .try_get(0)
        .map_err(db_err)?;
    if version > SCHEMA_VERSION {
        return Err(newer_schema(version));
    }
    let start = usize::try_from(version).unwrap_or(0);
    for (index, sql) in MIGRATIONS.iter().enumerate().skip(start) {
        let next = i32::try_from(index + 1).unwrap_or(i32::MAX);
        tx.batch_execute(sql).await.map_err(db_err)?;
        tx.execute("INSERT INTO schema_version (version) VALUES ($1)", &[&next])
            .await
            .map_err(db_err)?;
        tracing::info!(version = next, "PostgreSQL schema migrated");
    }
    tx.commit().await.map_err(db_err)
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

    fn put_file(&self, file: &FileRecord, now: Timestamp) -> Result<(), StoreError> {
        let now = now.to_string();
        self.query(
            &format!(
                "WITH upsert AS (
                    INSERT INTO files (ID, FileName, PathName, Verified) VALUES ($1, $2, $3, $4)
                    ON CONFLICT (ID, FileName) DO UPDATE
                    SET PathName = excluded.PathName, Verified = excluded.Verified
                 )
                 UPDATE clients SET {} WHERE ID = $1",
                advance(5)
            ),
            &[
                &&file.client_id.0[..],
                &file.file_name,
                &file.path,
                &file.verified,
                &now,
            ],
        )?;
        Ok(())
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

    fn remove_file(
        &self,
        id: &ClientId,
        file_name: &str,
        now: Timestamp,
    ) -> Result<Option<FileRecord>, StoreError> {
        let now = now.to_string();
        let rows = self.query(
            &format!(
                "WITH removed AS (
                    DELETE FROM files WHERE ID = $1 AND FileName = $2
                    RETURNING ID, FileName, PathName, Verified
                 ), seen AS (
                    UPDATE clients SET {} WHERE ID = $1
                 )
                 SELECT ID, FileName, PathName, Verified FROM removed",
                advance(3)
            ),
            &[&&id.0[..], &file_name, &now],
        )?;
        rows.first().map(file_from_row).transpose()
    }

    fn remove_client(&self, id: &ClientId) -> Result<Option<Vec<FileRecord>>, StoreError> {
        // One statement, so one transaction; the client's own row comes back with NULLs.
        let rows = self.query(
            "WITH gone_files AS (
                DELETE FROM files WHERE ID = $1
                RETURNING ID, FileName, PathName, Verified
             ), gone_client AS (
                DELETE FROM clients WHERE ID = $1 RETURNING ID
             )
             SELECT ID, FileName, PathName, Verified FROM gone_files
             UNION ALL
             SELECT ID, NULL, NULL, NULL FROM gone_client",
            &[&&id.0[..]],
        )?;
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
        self.query(
            "UPDATE clients SET LastSeen = GREATEST(COALESCE(clients.LastSeen, ''), seen.at)
             FROM unnest($1::bytea[], $2::text[]) AS seen (id, at)
             WHERE clients.ID = seen.id",
            &[&ids, &times],
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

    fn files(&self) -> Result<Vec<FileRecord>, StoreError> {
        self.query(
            &format!("{FILE_COLUMNS} ORDER BY ID, FileName COLLATE \"C\""),
            &[],
        )?
        .iter()
        .map(file_from_row)
        .collect()
    }

    fn close(&self) -> Result<(), StoreError> {
        self.closed.store(true, Ordering::Release);
        self.pool.close();
        Ok(())
    }
}
