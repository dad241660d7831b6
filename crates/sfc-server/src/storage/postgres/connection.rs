//! Opening the store (the pool and its runtime) and running statements on it, with one
//! retry on a connection found closed.

use super::migrations::{check_encoding, check_version, migrate, newer_schema, schema_version};
use super::IDLE_IN_TRANSACTION_TIMEOUT;
use super::{
    db_err, pool_err, PostgresStore, ANSWER_WAIT, CONNECT_TIMEOUT, POOL_WAIT, STATEMENT_TIMEOUT,
};
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
            check_version(&client).await?;
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
        let options = session_options(config.get_options());
        config.options(options);
        let connect_timeout = config
            .get_connect_timeout()
            .copied()
            .unwrap_or(CONNECT_TIMEOUT);
        config.connect_timeout(connect_timeout);
        // The URL's `connect_timeout` is per host, tried in turn (`host=db1,db2`): a new
        // pooled connection may take that long for each before it fails.
        let hosts = u32::try_from(config.get_hosts().len().max(1)).unwrap_or(u32::MAX);
        let create_timeout = connect_timeout.saturating_mul(hosts);
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
            .create_timeout(Some(create_timeout))
            .recycle_timeout(Some(CONNECT_TIMEOUT))
            .build()
            .map_err(|error| StoreError::Database(format!("cannot set up the pool: {error}")))?;
        Ok(PostgresStore {
            pool,
            handle: runtime.handle().clone(),
            runtime: Mutex::new(Some(runtime)),
            closed: AtomicBool::new(false),
            shown: url.to_string(),
            settle_by: Mutex::new(None),
            answer_wait: Mutex::new(ANSWER_WAIT),
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
        let wait = self.answer_wait();
        self.run(async {
            let mut first = true;
            loop {
                let mut client = self.pool.get().await.map_err(pool_err)?;
                let result = run_and_commit(&mut client, sql, params, wait).await;
                let unusable = match &result {
                    Err(Failed::BeforeCommit(error) | Failed::Commit(_, error)) => {
                        error.is_closed()
                    }
                    Err(Failed::NoAnswer | Failed::NoAnswerToCommit(_)) => true,
                    Ok(_) => false,
                };
                if unusable {
                    drop(deadpool_postgres::Object::take(client));
                }
                match result {
                    Ok(rows) => return Ok(Commit::Done(rows)),
                    Err(Failed::Commit(rows, error)) => {
                        return Ok(Commit::Unknown(rows, db_err(error)))
                    }
                    Err(Failed::NoAnswerToCommit(rows)) => {
                        return Ok(Commit::Unknown(rows, no_answer(wait, "the commit")))
                    }
                    // Never committed: the commit was not sent.
                    Err(Failed::NoAnswer) if first => {
                        first = false;
                        tracing::warn!(
                            wait_secs = wait.as_secs_f64(),
                            "no answer from PostgreSQL before a commit; running the transaction on a new connection"
                        );
                    }
                    Err(Failed::NoAnswer) => return Err(no_answer(wait, "a statement")),
                    Err(Failed::BeforeCommit(error)) if unusable && first => {
                        first = false;
                        tracing::info!(%error, "PostgreSQL connection lost before a commit; running the transaction on a new one");
                    }
                    Err(Failed::BeforeCommit(error)) => return Err(db_err(error)),
                }
            }
        })
    }

    /// Runs one statement in a transaction of its own, as [`Self::query_then_commit`]
    /// does, and knows for certain whether it committed: a statement that changes rows
    /// returns its transaction's ID as the last column of every row
    /// (`pg_current_xact_id()::text`), and when the commit's answer is lost the outcome
    /// is asked of PostgreSQL by that ID ([`Self::transaction_outcome`]) until it is
    /// known. So an error means the change was not made, and is never made later (an
    /// autocommitted statement whose connection broke while it ran, waiting for a row
    /// lock say, commits whenever it ends), unless PostgreSQL could not say within
    /// [`SETTLE_WAIT`] (then the error says so). No rows: nothing was changed, whatever
    /// became of the commit.
    ///
    /// `took_effect` is asked when PostgreSQL says "committed", with the statement's rows:
    /// the change they describe must be there.
    /// A transaction whose commit was lost in a crash (or a fail-over to a standby that
    /// never got it) leaves its ID unused in the log, and after the restart PostgreSQL
    /// may give the same ID to another transaction, whose commit the question would then
    /// report.
    pub(super) fn query_settled(
        &self,
        sql: &str,
        params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
        took_effect: impl FnOnce(&[Row]) -> Result<bool, StoreError>,
    ) -> Result<Vec<Row>, StoreError> {
        let (rows, error) = match self.query_then_commit(sql, params)? {
            Commit::Done(rows) => return Ok(rows),
            Commit::Unknown(rows, error) => (rows, error),
        };
        let Some(row) = rows.first() else {
            return Ok(rows);
        };
        let xid: String = row.try_get(row.len() - 1).map_err(db_err)?;
        let xid = self
            .settle_by
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take()
            .unwrap_or(xid);
        match self.transaction_outcome(&xid) {
            Outcome::Committed if took_effect(&rows)? => {
                tracing::warn!(%error, xid, "the commit's answer was lost; PostgreSQL says it committed");
                Ok(rows)
            }
            // Either the ID went to another transaction after a restart, or this one's
            // change is not visible yet (a commit waiting for a synchronous standby is
            // marked committed before others see it): which, cannot be told.
            Outcome::Committed => Err(StoreError::Uncertain(format!(
                "{error} (PostgreSQL says transaction {xid} committed, but its change is not \
                 there: not visible yet, or after a restart the ID went to another \
                 transaction)"
            ))),
            Outcome::RolledBack => Err(StoreError::Database(format!(
                "{error} (PostgreSQL says the transaction was rolled back)"
            ))),
            Outcome::Unknown(why) => Err(StoreError::Uncertain(format!(
                "{error}; whether the transaction committed is unknown: {why}"
            ))),
        }
    }

    /// Whether transaction `xid` committed: asked (`pg_xact_status`) on any connection
    /// every [`SETTLE_POLL`] while it is still in progress (a commit waiting on a
    /// synchronous standby, a backend that has not yet noticed its connection is gone),
    /// for at most [`SETTLE_WAIT`]. A blocking call, like every store call.
    fn transaction_outcome(&self, xid: &str) -> Outcome {
        let deadline = std::time::Instant::now() + SETTLE_WAIT;
        loop {
            let last = match self.query_pg("SELECT pg_xact_status($1::text::xid8)", &[&xid]) {
                Ok(Ok(rows)) => {
                    let status: Option<String> = rows.first().and_then(|row| row.try_get(0).ok());
                    match status.as_deref() {
                        Some("committed") => return Outcome::Committed,
                        Some("aborted") => return Outcome::RolledBack,
                        Some("in progress") => "still in progress".to_owned(),
                        // Too old to be known (never the case moments after it ran).
                        _ => return Outcome::Unknown(format!("no status for transaction {xid}")),
                    }
                }
                Ok(Err(error)) => error.to_string(),
                Err(error) => error.to_string(),
            };
            if std::time::Instant::now() >= deadline {
                return Outcome::Unknown(last);
            }
            std::thread::sleep(SETTLE_POLL);
        }
    }

    /// Like [`Self::query`], but gives PostgreSQL's own error (`Ok(Err)`) for the caller
    /// to look at. A statement that meets a closed connection (PostgreSQL restarted, or
    /// the connection cut, before the pool noticed) runs once more on a new one: every
    /// statement run this way is idempotent, or checks for its own earlier success
    /// ([`MetaStore::insert_client`]); [`MetaStore::put_file`] is neither and uses
    /// [`Self::query_settled`].
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
        let wait = self.answer_wait();
        let client = self.pool.get().await.map_err(pool_err)?;
        let answered = tokio::time::timeout(wait, async {
            match client.prepare_cached(sql).await {
                Ok(statement) => client.query(&statement, params).await,
                Err(error) => Err(error),
            }
        })
        .await;
        let Ok(result) = answered else {
            // Stuck: the next user of this connection would wait behind it.
            drop(deadpool_postgres::Object::take(client));
            return Err(no_answer(wait, "a statement"));
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

    /// How long a statement or a commit waits for its answer.
    fn answer_wait(&self) -> Duration {
        *self
            .answer_wait
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// For tests: statements and commits wait `wait` for their answers instead of
    /// [`ANSWER_WAIT`].
    #[cfg(any(test, feature = "testing"))]
    pub fn set_answer_wait(&self, wait: Duration) {
        *self
            .answer_wait
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = wait;
    }

    /// For tests: the next commit whose answer is lost is settled by asking about
    /// transaction `xid` instead of its own (another transaction's ID, as PostgreSQL may
    /// hand out again after a crash).
    #[cfg(any(test, feature = "testing"))]
    pub fn settle_next_by(&self, xid: &str) {
        *self
            .settle_by
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(xid.to_owned());
    }

    /// A setting as a pooled connection has it (`SHOW name`), for tests.
    #[cfg(any(test, feature = "testing"))]
    pub fn setting(&self, name: &str) -> Result<String, StoreError> {
        let query = format!("SHOW {name}");
        self.run(async {
            let client = self.pool.get().await.map_err(pool_err)?;
            let row = client.query_one(&query, &[]).await.map_err(db_err)?;
            row.try_get(0).map_err(db_err)
        })
    }
}

/// The `options` every connection starts with: the store's time-outs
/// ([`STATEMENT_TIMEOUT`], [`IDLE_IN_TRANSACTION_TIMEOUT`]), which the commit bounds
/// and recovery's grace period rely on, then the URL's own (PostgreSQL takes the last of
/// a setting given twice, so a time-out the URL sets wins; anything else it sets, such
/// as a `search_path`, no longer drops the store's).
fn session_options(from_url: Option<&str>) -> String {
    let ours = format!(
        "-c statement_timeout={} -c idle_in_transaction_session_timeout={}",
        STATEMENT_TIMEOUT.as_millis(),
        IDLE_IN_TRANSACTION_TIMEOUT.as_millis()
    );
    match from_url.map(str::trim) {
        Some(theirs) if !theirs.is_empty() => format!("{ours} {theirs}"),
        _ => ours,
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

/// How long [`PostgresStore::query_settled`] asks for the outcome of a transaction whose
/// commit's answer was lost: a statement or a commit still running then ends within the
/// statement time-out, and a transaction whose commit never arrived within the
/// idle-in-transaction time-out.
const SETTLE_WAIT: Duration = STATEMENT_TIMEOUT
    .saturating_add(IDLE_IN_TRANSACTION_TIMEOUT)
    .saturating_add(Duration::from_secs(5));

/// A connection from the pool, or a new one (unless the URL sets a longer
/// `connect_timeout`, per host).
const CONNECTION_BOUND: Duration = POOL_WAIT.saturating_add(CONNECT_TIMEOUT);

/// The longest one [`PostgresStore::query_pg`] may take: a connection and an answer,
/// twice (once more on a new connection after a closed one).
const QUERY_BOUND: Duration = CONNECTION_BOUND
    .saturating_add(ANSWER_WAIT)
    .saturating_mul(2);

/// The longest one [`PostgresStore::query_settled`] may take, answers waited for in
/// full at every step: a first try that meets a closed or stuck connection before its
/// commit; the second, its statement and its commit; settling a lost answer (polls until
/// [`SETTLE_WAIT`], the last of which may take a whole [`QUERY_BOUND`]); then reading the
/// row that a "committed" must have changed.
pub(super) const SETTLED_STATEMENT_BOUND: Duration = CONNECTION_BOUND
    .saturating_add(ANSWER_WAIT)
    .saturating_add(CONNECTION_BOUND)
    .saturating_add(ANSWER_WAIT.saturating_mul(2))
    .saturating_add(SETTLE_WAIT)
    .saturating_add(QUERY_BOUND)
    .saturating_add(QUERY_BOUND);

/// Between two questions of [`PostgresStore::transaction_outcome`].
const SETTLE_POLL: Duration = Duration::from_millis(50);

/// What PostgreSQL says of a transaction.
enum Outcome {
    Committed,
    RolledBack,
    /// It could not say (the reason).
    Unknown(String),
}

/// Where a transaction of [`run_and_commit`] failed.
enum Failed {
    /// Before the commit was sent: nothing happened.
    BeforeCommit(tokio_postgres::Error),
    /// No answer within the wait before the commit was sent: nothing committed (the
    /// commit can no longer be sent; PostgreSQL rolls back when the session ends).
    NoAnswer,
    /// The commit: the statement's rows, and the error.
    Commit(Vec<Row>, tokio_postgres::Error),
    /// No answer to the commit within the wait: the statement's rows.
    NoAnswerToCommit(Vec<Row>),
}

/// Runs `sql` in a transaction and commits it, waiting at most `wait` for PostgreSQL's
/// answers before the commit and `wait` for the commit's (see [`ANSWER_WAIT`]).
async fn run_and_commit(
    client: &mut deadpool_postgres::Object,
    sql: &str,
    params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
    wait: Duration,
) -> Result<Vec<Row>, Failed> {
    // One wait for the transaction's start and its statement, one for its commit.
    let (transaction, rows) = tokio::time::timeout(wait, async {
        let transaction = client.transaction().await?;
        let statement = transaction.prepare_cached(sql).await?;
        let rows = transaction.query(&statement, params).await?;
        Ok::<_, tokio_postgres::Error>((transaction, rows))
    })
    .await
    .map_err(|_| Failed::NoAnswer)?
    .map_err(Failed::BeforeCommit)?;
    match tokio::time::timeout(wait, transaction.commit()).await {
        Ok(Ok(())) => Ok(rows),
        Ok(Err(error)) => Err(Failed::Commit(rows, error)),
        Err(_) => Err(Failed::NoAnswerToCommit(rows)),
    }
}

/// The error for no answer from PostgreSQL to `what` within `wait`.
fn no_answer(wait: Duration, what: &str) -> StoreError {
    StoreError::Database(format!(
        "no answer from PostgreSQL to {what} within {} s (the connection is dropped)",
        wait.as_secs()
    ))
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

#[cfg(test)]
mod tests {
    use super::session_options;

    #[test]
    fn the_urls_options_come_after_the_stores_time_outs() {
        let ours = "-c statement_timeout=30000 -c idle_in_transaction_session_timeout=5000";
        assert_eq!(session_options(None), ours);
        assert_eq!(session_options(Some("  ")), ours);
        assert_eq!(
            session_options(Some("-c search_path=sfc")),
            format!("{ours} -c search_path=sfc")
        );
    }
}
