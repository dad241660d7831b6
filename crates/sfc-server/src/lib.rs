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
//! | [`tls`] | opt-in TLS (`--tls-cert`/`--tls-key`): PEM loading, handshake under a deadline |
//! | [`rate_limit`] | per-address limits on registrations and failed requests |
//! | [`perms`] | owner-only modes for the database, folders and stored files |
//! | [`address_pin`] | opt-in: a client's 828/900/901/902 only from its key exchange's address |
//!
//! ```text
//! TCP stream -> connection (RequestDecoder, timeouts, rule 2)
//!            -> session::Core (register, keys, uploads keyed by client ID)
//!            -> MetaStore (SQLite defensive.db) + BlobStore (files/<client-id>/<name>)
//! ```

pub mod address_limit;
pub mod address_pin;
pub mod admin;
pub mod config;
pub mod connection;
pub mod listener;
pub mod names;
pub mod perms;
pub mod rate_limit;
pub mod session;
pub mod storage;
pub mod tls;

pub use config::ServerConfig;
pub use listener::{run, RunningServer, Server, Storage};
