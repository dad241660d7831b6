//! The SecureFileComm server (protocol version 3; see `docs/PROTOCOL.md`).
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

pub mod admin;
mod buffer_pool;
pub mod cli;
pub mod config;
mod net;
mod session;
mod storage;

pub use config::{AdminConfig, ServerConfig};
pub use net::listener::{raise_fd_limit, run, Server};
pub use net::proxy_protocol::ProxySources;
pub use net::rate_limit::RateLimit;
pub use net::running::RunningServer;
pub use net::shutdown::shutdown_signal;
pub use storage::fs::LocalBlobStore;
pub use storage::postgres::PostgresStore;
pub use storage::s3::S3BlobStore;
pub use storage::setup::Storage;
pub use storage::sqlite::SqliteStore;
pub use storage::{
    recover, BlobStore, ClientRecord, FileRecord, Inserted, MetaStore, Persisted, StoreError,
    TempBlob, Timestamp,
};

/// Opt-in TLS: the certificate and key files.
pub mod tls {
    pub use crate::net::tls::TlsFiles;
    pub use crate::net::tls_init::{fingerprint, tls_init, TlsInit, CERT_FILE, KEY_FILE};
}

/// Test doubles and the sans-IO session, compiled only with the `testing` feature (the
/// crate's own tests, the fuzz crate): storage in memory with fault switches,
/// deterministic randomness, and the [`session::Conversation`] to drive without sockets.
#[cfg(feature = "testing")]
pub mod testing {
    pub use crate::net::entropy::OsEntropy;
    pub use crate::storage::names::{
        disk_name, split_version, unversioned, version_millis, versioned,
    };
    pub use crate::storage::testing::{
        check_blob_setup_id, check_contract, check_open_reads_back, check_pending_removals,
        check_remove_client, check_setup_id, Faults, FaultyBlobs, FaultyMeta, Gate, MemoryStorage,
    };
    pub use crate::testing_doubles::{CountingEntropy, OpenDoors};

    /// The sans-IO session: one [`session::Conversation`] per connection over a shared
    /// [`session::Core`].
    pub mod session {
        pub use crate::session::{
            Action, CloseReason, Conversation, Core, Ctx, Entropy, Event, Job, JobDone, Lease,
            Limits, LogLine, Now, Outcome, PeerPolicy, RequestLog,
        };
    }
}

#[cfg(feature = "testing")]
mod testing_doubles;
