//! The SecureFileComm server (protocol version 3; see `PROTOCOL.md`).
//!
//! Layers, outside in (see `docs/ARCHITECTURE.md`):
//!
//! | folder | job |
//! |---|---|
//! | `cli.rs`, `config.rs` | the command line, [`ServerConfig`], `port.info`, the limits derived once |
//! | `net/` | accept loop, connections (sockets, TLS, time-outs, the blocking pool), per-address limits |
//! | `session/` | sans-IO: one `Conversation` per connection over the shared `Core` (requests, uploads, durability) |
//! | `storage/` | the [`MetaStore`] and [`BlobStore`] traits, setup and recovery, SQLite, the local file store |
//! | `admin/` | the `clients` and `files` views |
//!
//! ```text
//! TCP stream -> net::connection (RequestDecoder, time-outs)
//!            -> session::Conversation (per-connection rules) -> session::Core (uploads by client ID)
//!            -> MetaStore (SQLite defensive.db) + BlobStore (files/<client-id>/<name>)
//! ```
#![deny(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]
#![cfg_attr(
    test,
    allow(
        clippy::unwrap_used,
        clippy::expect_used,
        clippy::panic,
        clippy::indexing_slicing
    )
)]

pub mod admin;
pub mod cli;
pub mod config;
mod net;
mod session;
mod storage;

pub use config::ServerConfig;
pub use net::listener::{raise_fd_limit, run, shutdown_signal, RunningServer, Server};
pub use net::rate_limit::RateLimit;
pub use session::{Core, Limits};
pub use storage::fs::LocalBlobStore;
pub use storage::postgres::PostgresStore;
pub use storage::setup::Storage;
pub use storage::sqlite::SqliteStore;
pub use storage::{
    recover, BlobStore, ClientRecord, FileRecord, Inserted, MetaStore, Persisted, StoreError,
    TempBlob, Timestamp,
};

/// Opt-in TLS: the certificate and key files.
pub mod tls {
    pub use crate::net::tls::TlsFiles;
}

/// Test doubles, compiled only with the `testing` feature (the crate's own tests, the
/// fuzz crate): storage in memory with fault switches, and the session's seams.
#[cfg(feature = "testing")]
pub mod testing {
    pub use crate::storage::memory::{Faults, MemoryStorage};
    pub use crate::storage::names::disk_name;
    /// The session's internals, for the sans-IO drivers.
    pub mod session {
        pub use crate::session::{Core, Ctx, Lease, Limits, Outcome};
    }
}
