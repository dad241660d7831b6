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
//! Beside them, as in SQLite: `sfc_setup` (the set-up ID) and
//! `sfc_pending_removals(PathName text PRIMARY KEY)`, the paths of stored files whose
//! rows a statement removed or replaced, recorded by that statement, until their files
//! are removed.
//!
//! # Migrations
//!
//! [`MIGRATIONS`](migrations::MIGRATIONS) are applied at start-up in one transaction, recorded in
//! `schema_version` (one row per version applied), under a transaction-level advisory
//! lock so that servers starting together migrate once; PostgreSQL's DDL is
//! transactional, so a failed migration leaves nothing behind. A database with a newer
//! version than this build knows is refused. The admin views never migrate.
//!
//! # What the database enforces (several servers at once)
//!
//! Every method is one statement (data-modifying `WITH` clauses where a write also moves
//! `LastSeen`), so it is atomic without a client-side transaction and costs one round
//! trip (the removals run theirs in a transaction of its own, to have its rows before
//! the commit: `connection::query_then_commit`); storing a file's row is an update, else an insert (two when the row is new):
//! - name uniqueness: the `clients_name_unique` constraint; its violation (SQLSTATE
//!   23505 on that constraint) is [`Inserted::NameTaken`], so of two servers registering
//!   one name at once exactly one succeeds;
//! - key pinning: the key is stored only `WHERE PublicKey IS NULL OR PublicKey = the
//!   key`, so two servers accepting different first keys for one client store exactly
//!   one, and the other gets an error (1607);
//! - "replace a file": one update of the row on the `(ID, FileName)` key that returns
//!   the path it replaced (read under the row's lock, so of two servers replacing one
//!   file each learns the version it replaced and removes that one), or one insert when
//!   there is no row (an insert that meets a row inserted meanwhile becomes an update);
//!   a row is always one writer's whole row;
//! - `LastSeen` only moves forward: `GREATEST` over the stored text (collation "C": the
//!   text sorts chronologically), evaluated on the latest row version;
//! - the periodic `LastSeen` flush locks its rows in ID order, so two servers flushing the
//!   same clients never deadlock (in the order of their batches they could: PostgreSQL
//!   would fail one flush after `deadlock_timeout`; its notes stay for the next flush).
//!   Servers of earlier builds beside this one still lock in batch order until they are
//!   upgraded too.
//!
//! # Connections
//!
//! A [`deadpool_postgres`] pool of `pool_size` connections, driven by a private
//! one-thread tokio runtime; the synchronous methods wait on it from the caller's thread
//! (the server's blocking pool). A database that is down makes operations fail at once
//! with a [`StoreError`] (answered 1607); a pooled connection found closed is dropped
//! and a new one opened on the next request, so the store reconnects by itself.
//! Statements time out after [`STATEMENT_TIMEOUT`] on the server (rolled back there), a
//! transaction left waiting for its client after [`IDLE_IN_TRANSACTION_TIMEOUT`], and TCP
//! keepalives notice a database host that vanished.
//!
//! A statement that meets a closed connection runs once more on a new one, except the
//! writes that must not run twice: storing a file's row runs in a transaction whose
//! outcome is settled by asking PostgreSQL about it by its ID after a lost commit answer,
//! a "committed" checked against the row (`PostgresStore::query_settled`); a removal, whose rows are read before its commit,
//! asks the database after a failed commit whether its row is gone.
//! A commit whose acknowledgement is lost and cannot be retried is otherwise ambiguous,
//! as with any networked database: the client gets 1607 and sends again; every write
//! here is idempotent for that resend except a registration, whose resend gets 1601
//! (name taken).

mod connection;
mod migrations;
mod statements;

use super::StoreError;
use deadpool_postgres::Pool;
use std::fmt;
use std::sync::atomic::AtomicBool;
use std::sync::Mutex;
use std::time::Duration;

pub use migrations::SCHEMA_VERSION;

/// Name of the unique constraint on `clients.Name` (how a taken name is recognised).
pub const NAME_CONSTRAINT: &str = "clients_name_unique";

/// Server-side limit of one statement (set per connection, before the URL's own
/// `options`: a `statement_timeout` there wins, up to [`ANSWER_WAIT`], beyond which the
/// server itself gives up waiting).
pub const STATEMENT_TIMEOUT: Duration = Duration::from_secs(30);

/// Server-side limit of a transaction's wait for its client's next statement (set with
/// [`STATEMENT_TIMEOUT`]). The removals' transactions wait one round trip between their
/// statement and their commit; a server that vanishes in that gap (a crash, a network
/// partition) would otherwise leave PostgreSQL holding the rows' locks, and every write
/// to them waiting, until it noticed the connection gone (TCP keepalives: hours by
/// default).
pub const IDLE_IN_TRANSACTION_TIMEOUT: Duration = Duration::from_secs(5);

/// How long opening a connection may take, per host the URL names (unless the URL sets
/// `connect_timeout`).
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// How long a request waits for a free pooled connection before it fails.
pub const POOL_WAIT: Duration = Duration::from_secs(10);

/// How long the store waits for PostgreSQL's answer to one statement or commit: the
/// server's own [`STATEMENT_TIMEOUT`] and a margin. Only a path that stopped moving
/// without closing lasts that long (a stuck proxy or balancer, a peer whose kernel still
/// acknowledges what nothing reads; TCP's own time-outs see neither); the connection is
/// then dropped, a statement fails (1607), and a commit's outcome is asked on another
/// connection.
pub const ANSWER_WAIT: Duration = STATEMENT_TIMEOUT.saturating_add(Duration::from_secs(10));

/// PostgreSQL-backed [`MetaStore`].
pub struct PostgresStore {
    pool: Pool,
    /// Drives the connections; shut down (without blocking) when the store is dropped.
    runtime: Mutex<Option<tokio::runtime::Runtime>>,
    handle: tokio::runtime::Handle,
    closed: AtomicBool,
    /// What to show in logs and errors (never the password).
    shown: String,
    /// For tests: the transaction ID the next lost commit is settled by instead of its
    /// own ([`PostgresStore::settle_next_by`]).
    settle_by: Mutex<Option<String>>,
    /// How long a statement or a commit waits for PostgreSQL's answer
    /// ([`ANSWER_WAIT`]; shorter in tests).
    answer_wait: Mutex<Duration>,
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
