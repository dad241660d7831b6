//! Opening the store (the pool and its runtime) and running statements on it, with one
//! retry on a connection found closed.

use super::migrations::{check_encoding, migrate, newer_schema, schema_version};
use super::IDLE_IN_TRANSACTION_TIMEOUT;
use super::{db_err, pool_err, PostgresStore, CONNECT_TIMEOUT, POOL_WAIT, STATEMENT_TIMEOUT};
use super::{StoreError, SCHEMA_VERSION};
use crate::config::PostgresUrl;
use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod};
use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::Duration;
use tokio_postgres::Row;

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
                "-c statement_timeout={} -c idle_in_transaction_session_timeout={}",
                STATEMENT_TIMEOUT.as_millis(),
                IDLE_IN_TRANSACTION_TIMEOUT.as_millis()
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
    pub(super) fn run<T>(
        &self,
        work: impl Future<Output = Result<T, StoreError>>,
    ) -> Result<T, StoreError> {
        if self.closed.load(Ordering::Acquire) {
            return Err(StoreError::Closed);
        }
        self.handle.block_on(work)
    }

    /// Runs one statement (prepared once per connection) and returns its rows.
    pub(super) fn query(
        &self,
        sql: &str,
        params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
    ) -> Result<Vec<Row>, StoreError> {
        self.query_pg(sql, params)?.map_err(db_err)
    }

    /// Like [`Self::query`], but never runs the statement twice: for a write that is not
    /// idempotent, whose connection may close after its commit with only the answer
    /// lost (the caller then asks the database what happened). It is tried once more
    /// only when its connection is found closed before the statement is sent (the pool
    /// handed out a connection PostgreSQL had closed: known as closed, or failing the
    /// statement's preparation).
    pub(super) fn query_at_most_once(
        &self,
        sql: &str,
        params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
    ) -> Result<Vec<Row>, StoreError> {
        self.run(async {
            let mut first = true;
            loop {
                let client = self.pool.get().await.map_err(pool_err)?;
                let unsent = if client.is_closed() {
                    "the connection is closed".to_owned()
                } else {
                    match client.prepare_cached(sql).await {
                        Ok(statement) => {
                            let result = client.query(&statement, params).await;
                            release(client, &result);
                            return result.map_err(db_err);
                        }
                        Err(error) if error.is_closed() => error.to_string(),
                        // The connection is fine: the client goes back to the pool.
                        Err(error) => return Err(db_err(error)),
                    }
                };
                drop(deadpool_postgres::Object::take(client));
                if !first {
                    return Err(StoreError::Database(format!("PostgreSQL: {unsent}")));
                }
                first = false;
                tracing::info!(error = %unsent, "PostgreSQL connection found closed before a statement was sent; trying a new one");
            }
        })
    }

    /// Runs one statement in a transaction of its own and commits it, so that its rows
    /// are in hand before the commit is sent: for a removal, whose rows name the files to
    /// remove, and whose commit may happen with only its answer lost (run again then, it
    /// would find nothing and the files would stay). A failure before the commit was sent
    /// rolled everything back; the statement runs once more on a new connection when
    /// that failure was a closed connection. A failed commit gives [`Commit::Unknown`]:
    /// the caller asks the database what happened.
    pub(super) fn query_then_commit(
        &self,
        sql: &str,
        params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
    ) -> Result<Commit, StoreError> {
        self.run(async {
            let mut first = true;
            loop {
                let mut client = self.pool.get().await.map_err(pool_err)?;
                let result = run_and_commit(&mut client, sql, params).await;
                let closed = matches!(
                    &result,
                    Err(Failed::BeforeCommit(error) | Failed::Commit(_, error)) if error.is_closed()
                );
                if closed {
                    drop(deadpool_postgres::Object::take(client));
                }
                match result {
                    Ok(rows) => return Ok(Commit::Done(rows)),
                    Err(Failed::Commit(rows, error)) => {
                        return Ok(Commit::Unknown(rows, db_err(error)))
                    }
                    Err(Failed::BeforeCommit(error)) if closed && first => {
                        first = false;
                        tracing::info!(%error, "PostgreSQL connection lost before a commit; running the transaction on a new one");
                    }
                    Err(Failed::BeforeCommit(error)) => return Err(db_err(error)),
                }
            }
        })
    }

    /// Like [`Self::query`], but gives PostgreSQL's own error (`Ok(Err)`) for the caller
    /// to look at. A statement that meets a closed connection (PostgreSQL restarted, or
    /// the connection cut, before the pool noticed) runs once more on a new one: every
    /// statement run this way is idempotent, or checks for its own earlier success
    /// ([`MetaStore::insert_client`]); [`MetaStore::put_file`] is neither and uses
    /// [`Self::query_at_most_once`].
    pub(super) fn query_pg(
        &self,
        sql: &str,
        params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
    ) -> Result<Result<Vec<Row>, tokio_postgres::Error>, StoreError> {
        self.run(once_more_if_closed(|| self.query_once(sql, params)))
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
        release(client, &result);
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

/// What [`PostgresStore::query_then_commit`] knows of its transaction.
pub(super) enum Commit {
    /// Committed; the statement's rows.
    Done(Vec<Row>),
    /// The statement ran, but the commit failed: it may have happened with only its
    /// answer lost. The statement's rows, and the commit's error.
    Unknown(Vec<Row>, StoreError),
}

/// Where a transaction of [`run_and_commit`] failed.
enum Failed {
    /// Before the commit was sent: nothing happened.
    BeforeCommit(tokio_postgres::Error),
    /// The commit: the statement's rows, and the error.
    Commit(Vec<Row>, tokio_postgres::Error),
}

async fn run_and_commit(
    client: &mut deadpool_postgres::Object,
    sql: &str,
    params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
) -> Result<Vec<Row>, Failed> {
    let transaction = client.transaction().await.map_err(Failed::BeforeCommit)?;
    let statement = transaction
        .prepare_cached(sql)
        .await
        .map_err(Failed::BeforeCommit)?;
    let rows = transaction
        .query(&statement, params)
        .await
        .map_err(Failed::BeforeCommit)?;
    match transaction.commit().await {
        Ok(()) => Ok(rows),
        Err(error) => Err(Failed::Commit(rows, error)),
    }
}

/// Runs `attempt`, and once more when it met a closed connection (PostgreSQL restarted, or
/// the connection cut, before the pool noticed): the attempt must be safe to repeat.
pub(super) async fn once_more_if_closed<T, Attempt, Fut>(
    attempt: Attempt,
) -> Result<Result<T, tokio_postgres::Error>, StoreError>
where
    Attempt: Fn() -> Fut,
    Fut: Future<Output = Result<Result<T, tokio_postgres::Error>, StoreError>>,
{
    match attempt().await? {
        Err(error) if error.is_closed() => {
            tracing::info!(%error, "PostgreSQL connection lost; trying a new one");
            attempt().await
        }
        result => Ok(result),
    }
}

/// Gives `client` back to the pool, unless `result` says its connection is closed: then
/// it leaves the pool, which opens a new one when asked.
pub(super) fn release<T>(
    client: deadpool_postgres::Object,
    result: &Result<T, tokio_postgres::Error>,
) {
    if matches!(result, Err(error) if error.is_closed()) {
        drop(deadpool_postgres::Object::take(client));
    }
}
