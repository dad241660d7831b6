//! The schema: its migrations, applied once under an advisory lock, and the checks of a
//! database before use (encoding, version).

use super::db_err;
use crate::storage::pairing::SETUP_TABLE;
use crate::storage::StoreError;

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

/// Advisory lock key held while migrating ("SFCSCHEM").
const MIGRATION_LOCK: i64 = 0x5346_4353_4348_454d;

pub(super) fn newer_schema(version: i32) -> StoreError {
    StoreError::Database(format!(
        "the database has schema version {version}; this server knows up to {SCHEMA_VERSION}"
    ))
}

/// Names, labels and paths are UTF-8 text; a database in another encoding could refuse
/// some or store them differently.
/// A server setting's value (`SHOW name`).
async fn show(client: &tokio_postgres::Client, name: &str) -> Result<String, StoreError> {
    client
        .query_one(&format!("SHOW {name}"), &[])
        .await
        .map_err(db_err)?
        .try_get(0)
        .map_err(db_err)
}

pub(super) async fn check_encoding(client: &tokio_postgres::Client) -> Result<(), StoreError> {
    let encoding = show(client, "server_encoding").await?;
    if encoding.eq_ignore_ascii_case("UTF8") {
        Ok(())
    } else {
        Err(StoreError::Database(format!(
            "the database's encoding is {encoding}; sfc-server needs UTF8 \
             (CREATE DATABASE … ENCODING 'UTF8')"
        )))
    }
}

/// The oldest PostgreSQL the store runs on (`server_version_num`): 13, for the
/// transaction IDs a file's row is settled by (`pg_current_xact_id`, `pg_xact_status`).
pub(super) const MIN_SERVER_VERSION: i32 = 130_000;

/// Refuses a PostgreSQL older than [`MIN_SERVER_VERSION`] at start-up, with the reason,
/// rather than failing every upload later.
pub(super) async fn check_version(client: &tokio_postgres::Client) -> Result<(), StoreError> {
    version_supported(&show(client, "server_version_num").await?)
}

fn version_supported(server_version_num: &str) -> Result<(), StoreError> {
    match server_version_num.trim().parse::<i32>() {
        Ok(version) if version >= MIN_SERVER_VERSION => Ok(()),
        _ => Err(StoreError::Database(format!(
            "PostgreSQL {server_version_num} (server_version_num) is too old: sfc-server \
             needs 13 or later (pg_current_xact_id, pg_xact_status)"
        ))),
    }
}

pub(super) async fn schema_version(client: &tokio_postgres::Client) -> Result<i32, StoreError> {
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

pub(super) async fn migrate(client: &mut tokio_postgres::Client) -> Result<(), StoreError> {
    let tx = client.transaction().await.map_err(db_err)?;
    // Servers starting at once: the first migrates, the others wait and find it done.
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])
        .await
        .map_err(db_err)?;
    // A server that finds the table made by another logs no "already exists" NOTICE.
    tx.batch_execute(
        "SET LOCAL client_min_messages = warning;
        CREATE TABLE IF NOT EXISTS schema_version (
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
    // Additive, under the same lock: the schema version older servers check is
    // unchanged, so a rolling upgrade leaves them running (they record no removals).
    tx.batch_execute(crate::storage::PENDING_REMOVALS_TABLE)
        .await
        .map_err(db_err)?;
    tx.commit().await.map_err(db_err)
}

/// Records the set-up ID unless one is ([`crate::storage::MetaStore::record_setup_id`]),
/// making its table first: under the migration lock, since servers starting at once
/// would otherwise race to create it (`CREATE TABLE IF NOT EXISTS` is not safe against a
/// concurrent one). Tried once more on a new connection when the pool's was closed
/// (PostgreSQL restarted since): the transaction is safe to repeat.
pub(super) async fn record_setup_id(
    pool: &deadpool_postgres::Pool,
    id: &str,
) -> Result<String, StoreError> {
    super::connection::once_more_if_closed(|| record_setup_id_once(pool, id))
        .await?
        .map_err(|error| {
            let hint = match error.as_db_error().map(|db| db.code()) {
                Some(&tokio_postgres::error::SqlState::INSUFFICIENT_PRIVILEGE) => {
                    " (the role needs to create a table in the database: it should own it, \
                     docs/DEPLOY.md)"
                }
                _ => "",
            };
            StoreError::Database(format!("{}{hint}", super::with_causes(&error)))
        })
}

async fn record_setup_id_once(
    pool: &deadpool_postgres::Pool,
    id: &str,
) -> Result<Result<String, tokio_postgres::Error>, StoreError> {
    let mut client = pool.get().await.map_err(super::pool_err)?;
    let result: Result<String, tokio_postgres::Error> = async {
        let tx = client.transaction().await?;
        tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])
            .await?;
        tx.batch_execute(&format!(
            "SET LOCAL client_min_messages = warning; {SETUP_TABLE}"
        ))
        .await?;
        tx.execute(
            "INSERT INTO sfc_setup (singleton, id) VALUES (1, $1) ON CONFLICT DO NOTHING",
            &[&id],
        )
        .await?;
        let recorded: String = tx
            .query_one("SELECT id FROM sfc_setup", &[])
            .await?
            .try_get(0)?;
        tx.commit().await?;
        Ok(recorded)
    }
    .await;
    super::connection::release(client, &result);
    Ok(result)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_postgresql_13_and_later_is_accepted() {
        assert!(version_supported("130000").is_ok());
        assert!(version_supported("150018").is_ok());
        let old = version_supported("120022").unwrap_err().to_string();
        assert!(old.contains("needs 13 or later"), "{old}");
        assert!(version_supported("not a number").is_err());
    }
}
