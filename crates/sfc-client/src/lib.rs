//! SecureFileComm client: puts files on a SecureFileComm (protocol version 3) server.
//!
//! The binary `sfc-client` is a thin layer over [`run`]. The flow, file formats and the
//! rules for servers that differ are those of PROTOCOL.md ("Files on each side — Client"
//! and "Points the specification leaves open — Client", rules 1–7).
//!
//! | module | job |
//! |---|---|
//! | [`config`] | transfer.info + flags → validated [`Config`] (errors name the line) |
//! | [`identity`] | me.info / priv.key: tolerant reading, atomic owner-only writing |
//! | [`connection`] | TCP with time-outs; persistent or one connection per request |
//! | [`session`] | register / reconnect / key exchange, 1607 retries, checksum verdicts |
//! | [`upload`] | streaming read → cksum + AES-CBC → packets; packet-size rule |
//! | [`tls`] | opt-in TLS (`--tls`, `--tls-ca`): certificate verification, plain/TLS stream |
//! | [`progress`] | messages by verbosity, progress bar |
//! | [`error`] | [`ClientError`] and the exit codes |

pub mod config;
pub mod connection;
pub mod error;
pub mod identity;
pub mod progress;
pub mod session;
pub mod tls;
pub mod upload;

pub use config::{Config, Overrides};
pub use error::{exit, ClientError};
pub use progress::{Reporter, Verbosity};
pub use session::{FileResult, Session};

use config::{ConfigError, Origin};
use connection::Connection;

/// What a successful run did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Summary {
    /// Files stored and confirmed, in order: label and checksum.
    pub stored: Vec<(String, u32)>,
    /// True when this run registered a new client.
    pub registered: bool,
}

/// Runs a whole batch: identity, session, every file in order.
///
/// Every file is checked (readable, small enough, packet size possible) before anything
/// is sent. A file whose checksum never matches does not stop the others; the run then
/// ends with [`ClientError::ChecksumFailed`]. Any other error ends the run at once.
pub fn run(config: &Config, reporter: &Reporter) -> Result<Summary, ClientError> {
    for warning in &config.warnings {
        reporter.warn(warning);
    }
    for file in &config.files {
        upload::plan(file.size, config.packet_size).map_err(|reason| ClientError::File {
            path: file.path.clone(),
            reason,
        })?;
    }
    // A bad --tls-ca is bad input: reported before anything is sent.
    let tls = match &config.tls {
        Some(options) => Some(tls::setup(&config.server, options)?),
        None => None,
    };
    let loaded = identity::load(&config.dir)?;
    if let Some(loaded) = &loaded {
        for warning in &loaded.warnings {
            reporter.warn(warning);
        }
        if let Some(name) = &config.name {
            if name != &loaded.identity.name {
                reporter.warn(format!(
                    "me.info belongs to user {:?}; reconnecting as that user, not as {:?}",
                    loaded.identity.name.as_str(),
                    name.as_str()
                ));
            }
        }
    } else if config.name.is_none() {
        return Err(ClientError::Config(ConfigError {
            origin: Origin::Flag("--name"),
            reason: "a user name is needed to register (there is no me.info yet): pass --name \
                     or write it on line 2 of transfer.info"
                .to_owned(),
        }));
    }
    let mut conn = Connection::new(
        &config.server,
        config.connect_timeout,
        config.io_timeout,
        reporter.clone(),
    )?;
    if config.per_request {
        conn.use_per_request();
    }
    if let Some(tls) = tls {
        conn.use_tls(tls);
    }
    let mut session = Session::establish(
        conn,
        reporter.clone(),
        &config.dir,
        config.name.as_ref(),
        loaded.map(|l| l.identity),
    )?;
    let registered = session.registered();
    let mut stored = Vec::new();
    let mut failed = Vec::new();
    for file in &config.files {
        match session.send_file(file, config.packet_size)? {
            FileResult::Stored { cksum, .. } => {
                stored.push((file.label.as_str().to_owned(), cksum));
            }
            FileResult::ChecksumMismatch { sends } => {
                reporter.error(format!(
                    "{}: the checksum was still wrong after {sends} sends; gave up (902 sent)",
                    file.label
                ));
                failed.push(file.label.as_str().to_owned());
            }
        }
    }
    session.close();
    if !failed.is_empty() {
        return Err(ClientError::ChecksumFailed {
            files: failed,
            attempts: session::MAX_RESENDS + 1,
        });
    }
    Ok(Summary { stored, registered })
}
