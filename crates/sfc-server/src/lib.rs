//! The SecureFileComm server (protocol version 3; see `PROTOCOL.md`).
//!
//! | module | job |
//! |---|---|
//! | [`config`] | [`ServerConfig`], the command line, `port.info` |
//! | [`listener`] | accept loop, connection limit, housekeeping, graceful shutdown, [`RunningServer`] |
//! | [`connection`] | socket I/O: read buffer → `RequestDecoder` → session → replies; timeouts |
//! | [`session`] | the protocol logic, synchronous and sans-IO, over the storage traits |
//! | [`storage`] | the [`storage::MetaStore`] and [`storage::BlobStore`] traits; [`storage::sqlite`], [`storage::fs`] |
//! | [`names`] | file label → name on disk |
//! | [`admin`] | the `clients` and `files` views |
//!
//! ```text
//! TCP stream -> connection (RequestDecoder, timeouts, rule 2)
//!            -> session::Core (register, keys, uploads keyed by client ID)
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
pub mod config;
pub mod connection;
pub mod listener;
pub mod names;
pub mod session;
pub mod storage;

pub use config::ServerConfig;
pub use listener::{run, RunningServer, Server, Storage};
