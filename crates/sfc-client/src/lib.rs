//! SecureFileComm client: puts files on a SecureFileComm (protocol version 3) server.
//!
//! The binary `sfc-client` is a thin layer over [`run`]. The flow, file formats and the
//! rules for servers that differ are those of docs/PROTOCOL.md ("State files — Client",
//! "Session flows" and the client rules C1–C10).
//!
//! The modules are private (the table is for readers of the source); the library's API
//! is what this page re-exports: [`run`] and what it takes and returns ([`Config`] from
//! [`Cli`], [`Reporter`], [`Summary`]), the [`Session`] it drives, [`ClientError`] with
//! [`exit`] codes, and [`Fingerprint`] for pinned certificates.
//!
//! | module | job |
//! |---|---|
//! | `cli` | the command line (clap): each flag parsed and checked once |
//! | `config` | transfer.info + command line → validated [`Config`] (errors name the line) |
//! | `address` | `host:port` parsing and resolution |
//! | `files` | the files of a batch: checks, labels, `-r` walks, names stored twice |
//! | `store` | the folder lock; which identity belongs to which server; backups; the writable check |
//! | `identity` | me.info / priv.key: tolerant reading, atomic owner-only writing |
//! | `connection` | TCP with time-outs; persistent or one connection per request |
//! | `session` | register / reconnect / key exchange, 1607 retries; each file's replies and verdicts |
//! | `upload` | packet plan; streaming read → cksum + AES-CBC → packets; writer pipeline |
//! | `tls` | opt-in TLS (`--tls`, `--tls-ca`): certificate verification, plain/TLS stream |
//! | `pin` | pinned certificates and `--tls-fingerprint` |
//! | `summary` | per-file results, the closing summary, `--json`, the exit code |
//! | `progress` | messages by verbosity, progress bar |
//! | `error` | [`ClientError`] and the exit codes |

mod address;
mod bar;
mod cli;
mod config;
mod connection;
mod error;
mod files;
mod identity;
mod pin;
mod progress;
mod session;
mod store;
mod summary;
#[cfg(test)]
mod test_support;
mod tls;
mod upload;

pub use cli::Cli;
pub use config::Config;
pub use error::{exit, ClientError};
pub use pin::Fingerprint;
pub use progress::{say, Reporter, Stream, Verbosity};
pub use session::{FileResult, Session};
pub use summary::{FileReport, Status, Summary};

use std::time::Instant;

use config::{ConfigError, Origin};
use connection::Connection;

/// Runs a whole batch: identity, session, every file in order.
///
/// Every file was checked (readable, small enough, packet size possible) when the
/// [`Config`] was made, before anything is sent. A file that fails does not stop the
/// others (see [`Summary`]); an error before the first file (identity, connection, key
/// exchange) is returned as such. Each failure is reported as it happens. The folder
/// (`--dir`) is locked for the whole run: if another run holds it, nothing is done.
pub fn run(config: &Config, reporter: &Reporter) -> Result<Summary, ClientError> {
    for warning in &config.warnings {
        reporter.warn(warning);
    }
    // A bad --tls-ca is bad input: reported before anything is sent.
    let options = &config.options;
    let tls = match options.tls {
        true => Some(tls::setup(
            &config.server,
            options.tls_ca.as_deref(),
            &options.tls_fingerprint,
        )?),
        false => None,
    };
    // Held until the run ends (uploads included): a 1606 to the reconnection registers
    // anew and rewrites the identity after the first reads.
    let lock = store::FolderLock::acquire(&config.dir)?;
    if let Some(problem) = lock.problem() {
        reporter.detail(
            Verbosity::Verbose,
            format!("   {problem}; the identity is only read in this run"),
        );
    }
    let (folder, saved) = identity_for(config, &lock, reporter)?;
    let mut conn = Connection::new(
        &config.server,
        options.connect_timeout,
        options.io_timeout,
        reporter.clone(),
    )?;
    if options.per_request {
        conn.use_per_request();
    }
    if let Some(pause) = options.pace {
        conn.use_pace(pause);
    }
    if let Some(tls) = tls {
        conn.use_tls(tls);
    }
    let session = Session::establish(conn, reporter.clone(), &folder, config.name.as_ref(), saved)?;
    let summary = send_all(session, config, reporter);
    drop(lock);
    Ok(summary)
}

/// The folder of this server's identity and the identity saved there, if any. Without
/// one, the folder must be writable and a name must be known before anything is sent.
fn identity_for(
    config: &Config,
    lock: &store::FolderLock,
    reporter: &Reporter,
) -> Result<(store::IdentityFolder, Option<identity::Identity>), ClientError> {
    let folder = store::locate(lock, &config.server.to_string())?;
    let mut loaded = folder.load()?;
    if loaded.is_none() && folder.nested {
        // Perhaps the same server under another address: try me.info first. A 1606 then
        // registers anew for this address only, never replacing me.info.
        loaded = identity::load(&config.dir)?;
    }
    let Some(loaded) = loaded else {
        if config.name.is_none() {
            return Err(ClientError::Config(ConfigError {
                origin: Origin::Flag("--name"),
                reason: "a user name is needed to register (there is no me.info yet): pass \
                         --name or write it on line 2 of transfer.info"
                    .to_owned(),
            }));
        }
        // A registration whose result cannot be saved would lose the name for good.
        folder.check_writable()?;
        return Ok((folder, None));
    };
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
    Ok((folder, Some(loaded.identity)))
}

/// Sends every file of the batch in order; a file that fails does not stop the others,
/// an error of the connection or the protocol does (the rest are skipped).
fn send_all(mut session: Session, config: &Config, reporter: &Reporter) -> Summary {
    let mut summary = Summary {
        files: Vec::with_capacity(config.files.len()),
        registered: session.registered(),
    };
    let mut stopped: Option<ClientError> = None;
    for (index, file) in config.files.iter().enumerate() {
        reporter.set_file(index + 1, config.files.len());
        if let Some(error) = &stopped {
            summary.files.push(FileReport::skipped(file, error));
            continue;
        }
        let started = Instant::now();
        let report = match session.send_file(file, config.options.packet_sizing()) {
            Ok(FileResult::Stored { cksum, .. }) => {
                FileReport::stored(file, cksum, started.elapsed())
            }
            Ok(FileResult::ChecksumMismatch { sends }) => {
                reporter.error(format!(
                    "{}: the checksum was still wrong after {sends} sends; gave up (902 sent)",
                    file.label
                ));
                let error = ClientError::ChecksumFailed {
                    files: vec![file.label.as_str().to_owned()],
                    attempts: sends,
                };
                FileReport::failed(file, &error, started.elapsed())
            }
            Err(error) => {
                report_error(reporter, &error);
                let report = FileReport::failed(file, &error, started.elapsed());
                if ends_batch(&error) {
                    stopped = Some(error);
                }
                report
            }
        };
        summary.files.push(report);
    }
    session.close();
    summary
}

/// True for errors after which no further file can be sent in this session: the
/// connection or the protocol failed. A file the server refuses (1607 after the retries),
/// whose checksum never matches or that cannot be read does not stop the others.
fn ends_batch(error: &ClientError) -> bool {
    !matches!(
        error,
        ClientError::File { .. }
            | ClientError::ServerErrors { .. }
            | ClientError::ChecksumFailed { .. }
    )
}

/// Prints an error as the binary does: fatal messages as they are, others after `error: `.
pub fn report_error(reporter: &Reporter, error: &ClientError) {
    let text = error.to_string();
    if text.starts_with("fatal:") {
        reporter.error(text);
    } else {
        reporter.error(format!("error: {text}"));
    }
    if let Some(key) = error.unsaved_private_key() {
        // Once, to stderr only: never in the message, which becomes every file's --json
        // reason.
        reporter.error(key);
    }
}
