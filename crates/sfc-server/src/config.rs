//! Configuration: the library's [`ServerConfig`] and `port.info`. The command line that
//! fills it is [`crate::cli`]; the session's limits are derived from it once
//! ([`ServerConfig::session_limits`]).

use crate::net::proxy_protocol::ProxySources;
use crate::net::rate_limit::RateLimit;
use crate::net::tls::TlsFiles;
use crate::session::Limits;
use sfc_proto::limits::MAX_ORIG_FILE_SIZE;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// Port used when `port.info` is missing or invalid (docs/PROTOCOL.md, "State files").
pub const DEFAULT_PORT: u16 = 1256;
/// Name of the port file in the data folder.
pub const PORT_FILE: &str = "port.info";
/// Name of the database in the data folder.
pub const DB_FILE: &str = "defensive.db";
/// Default largest plaintext file: the protocol's maximum (`content_size` is a u32).
pub const DEFAULT_MAX_FILE_SIZE: u64 = MAX_ORIG_FILE_SIZE as u64;
/// Default maximum of simultaneous connections.
pub const DEFAULT_MAX_CONNECTIONS: usize = 16_384;
/// Default of `--max-connections-per-address`.
pub const DEFAULT_MAX_CONNECTIONS_PER_ADDRESS: usize = 256;
/// Default idle timeout in seconds.
pub const DEFAULT_IDLE_TIMEOUT_SECS: u64 = 30;
/// Default request deadline in seconds.
pub const DEFAULT_REQUEST_TIMEOUT_SECS: u64 = 10;
/// Default grace period for in-flight requests at shutdown, in seconds.
pub const DEFAULT_SHUTDOWN_GRACE_SECS: u64 = 10;
/// Default lifetime of an upload that receives no packet, in seconds.
pub const DEFAULT_UPLOAD_TIMEOUT_SECS: u64 = 600;
/// Default [`ServerConfig::recovery_min_age`].
pub const DEFAULT_RECOVERY_MIN_AGE: Duration = Duration::from_secs(15 * 60);
/// Default of `--upload-buffers`, MiB (see [`ServerConfig::upload_buffers`]).
pub const DEFAULT_UPLOAD_BUFFERS_MIB: usize = 256;
/// Default of `--max-uploads`: uploads in progress at once, all clients.
pub const DEFAULT_MAX_UPLOADS: usize = 10_000;
/// Default of `--max-uploads-per-address`.
pub const DEFAULT_MAX_UPLOADS_PER_ADDRESS: usize = 256;
/// Default interval for persisting LastSeen notes and expiring uploads, in seconds.
pub const DEFAULT_FLUSH_INTERVAL_SECS: u64 = 5;
/// Default of `--store-sweep-interval`, seconds (an hour).
pub const DEFAULT_STORE_SWEEP_INTERVAL_SECS: u64 = 3600;
/// Default registrations (825) per minute per source address.
pub const DEFAULT_REGISTER_RATE: u32 = 60;
/// Default registrations a source address may make at once.
pub const DEFAULT_REGISTER_BURST: u32 = 300;
/// Default failed requests (1601/1606/1607) per minute per source address.
pub const DEFAULT_FAIL_RATE: u32 = 120;
/// Default failed requests a source address may make at once.
pub const DEFAULT_FAIL_BURST: u32 = 300;
/// Default of `--database-pool`: connections to PostgreSQL per server process.
pub const DEFAULT_DATABASE_POOL: usize = 16;
/// Default of `--admin-send-timeout`, seconds: how long an admin response may wait for
/// its client to take any of it (nginx's `send_timeout` default).
pub const DEFAULT_ADMIN_SEND_TIMEOUT_SECS: u64 = 60;
// The command line's maxima. Every value below them is safe where it is used: a time-out
// is added to `Instant::now()` (which panics past what the clock can hold) and armed as
// a tokio timer (about two years at most), counts size semaphores and pools.

/// Largest `--idle-timeout`, seconds (one day): a silent connection holds one of
/// `--max-connections`; longer is never closing it.
pub const MAX_IDLE_TIMEOUT_SECS: u64 = 24 * 3600;
/// Largest `--request-timeout`, seconds (one day): 64 KiB a day is no rate at all.
pub const MAX_REQUEST_TIMEOUT_SECS: u64 = 24 * 3600;
/// Largest `--admin-send-timeout`, seconds (one day): a stalled response holds one of
/// the admin listener's 256 connections.
pub const MAX_ADMIN_SEND_TIMEOUT_SECS: u64 = 24 * 3600;
/// Largest `--shutdown-grace`, seconds (one hour): service managers kill a stop long
/// before (systemd after 90 s by default).
pub const MAX_SHUTDOWN_GRACE_SECS: u64 = 3600;
/// Largest `--upload-timeout`, seconds (one week): a paused upload keeps its temporary
/// file and a `--max-uploads` slot; a week covers a client away over a weekend.
pub const MAX_UPLOAD_TIMEOUT_SECS: u64 = 7 * 24 * 3600;
/// Smallest `--store-sweep-interval` but 0, seconds: each pass lists the bucket and reads
/// every row.
pub const MIN_STORE_SWEEP_INTERVAL_SECS: u64 = 60;
/// Largest `--store-sweep-interval`, seconds (one week, as `--upload-timeout`).
pub const MAX_STORE_SWEEP_INTERVAL_SECS: u64 = 7 * 24 * 3600;
/// Largest `--max-connections` and `--max-connections-per-address`: each connection is
/// a file descriptor, and Linux allows a process 1,048,576 at most by default
/// (`fs.nr_open`). Also far below what tokio's semaphore takes (`usize::MAX >> 3`).
pub const MAX_CONNECTIONS_LIMIT: usize = 1_000_000;
/// Largest `--upload-buffers`, MiB (1 TiB): more memory than a server has; in bytes it
/// stays far inside a `usize`.
pub const MAX_UPLOAD_BUFFERS_MIB: usize = 1 << 20;
/// Largest `--max-uploads` and `--max-uploads-per-address`: each unfinished upload has a
/// temporary file.
pub const MAX_UPLOADS_LIMIT: usize = 1_000_000;
/// Largest `--database-pool`: PostgreSQL allows 100 connections by default, and each
/// costs it a process.
pub const MAX_DATABASE_POOL: usize = 1000;
/// Environment variable read for `--database` (so that a password need not sit on a
/// command line, where `ps` shows it).
pub const DATABASE_URL_ENV: &str = "SFC_DATABASE_URL";

/// Everything the server needs to run. Build it with [`ServerConfig::new`] and adjust
/// the public fields.
#[derive(Clone, Debug)]
pub struct ServerConfig {
    /// Folder with `port.info`, `defensive.db` and `files/`. Created if missing.
    pub data_dir: PathBuf,
    /// Address to listen on. Default `0.0.0.0:1256`; port 0 picks a free port.
    pub bind: SocketAddr,
    /// Largest plaintext file accepted, in bytes (at most 4,294,967,279, the protocol's
    /// maximum). Also bounds an 828's payload: 267 + the file's encrypted size.
    pub max_file_size: u64,
    /// Simultaneous connections; further clients wait in the listen backlog.
    pub max_connections: usize,
    /// Simultaneous connections from one address (IPv6: one /64); beyond it a new
    /// connection is closed at once. 0: no cap.
    pub max_connections_per_address: usize,
    /// A connection that sends no byte for this long is closed.
    pub idle_timeout: Duration,
    /// A request's header and payload (an 828's header and fixed part) must arrive
    /// within this time, and an 828's content at 64 KiB per this time at least.
    pub request_timeout: Duration,
    /// At shutdown, in-flight requests get this long to finish.
    pub shutdown_grace: Duration,
    /// An upload that receives no packet for this long is abandoned.
    pub upload_timeout: Duration,
    /// With files in S3: the least age of what start-up recovery removes (abandoned
    /// uploads, unrecorded objects), whatever `upload_timeout` (see
    /// [`Self::recovery_grace`]). Not a flag: the default covers the longest commit of a
    /// row; tests lower it to wait less.
    pub recovery_min_age: Duration,
    /// Bytes of decrypted content not yet written that all uploads may hold together
    /// (the session's batch budget: an upload beyond it gets a small buffer).
    pub upload_buffers: usize,
    /// Uploads in progress at once, all clients (a new one beyond it gets 1607).
    pub max_uploads: usize,
    /// Uploads in progress at once from one address.
    pub max_uploads_per_address: usize,
    /// Interval for persisting LastSeen notes and expiring uploads.
    pub flush_interval: Duration,
    /// With storage other servers share (PostgreSQL and S3): how often (±20 %, from the
    /// end of the last pass) a running server does what start-up recovery does there
    /// (`storage::setup::sweep_shared_store`: abort abandoned uploads, delete old
    /// unrecorded objects), so that what a node that crashed and never came back left is
    /// not kept until some server starts. Zero: only at start-up. A server's own storage
    /// (a folder, SQLite) is cleaned at start-up only: nothing else writes into it, and
    /// a folder's temporary files are this server's live uploads. The command line's
    /// bounds (0, or [`MIN_STORE_SWEEP_INTERVAL_SECS`] to a week) are not checked here:
    /// tests sweep every few hundred ms.
    pub store_sweep_interval: Duration,
    /// Worker threads of the runtime [`crate::RunningServer`] creates (`None`: one per
    /// core). `run`/`Server` use the caller's runtime.
    pub worker_threads: Option<usize>,
    /// Opt-in TLS: serve TLS with this certificate chain and key (PEM) instead of plain
    /// TCP. `None` (the default): plain TCP, as every other implementation speaks.
    pub tls: Option<TlsFiles>,
    /// Registrations (825) per source address; beyond it an 825 gets 1607.
    pub register_limit: RateLimit,
    /// Failed requests (answered 1601, 1606 or 1607) per source address; beyond it the
    /// connection is closed and new ones from that address are refused until it refills.
    pub failure_limit: RateLimit,
    /// Opt-in: accept a client's 828/900/901/902 only from the address of its latest
    /// key exchange (826/827) in this run (`net/address_pin.rs`). Off by default.
    pub pin_address: bool,
    /// Where clients and files are recorded: SQLite `defensive.db` in the data folder
    /// (the default) or a PostgreSQL database shared by several servers.
    pub database: Database,
    /// `--proxy-protocol`: only these balancers may connect, and each connection must
    /// start with a PROXY header (v1 or v2) naming the client, whose address then counts
    /// for every per-address rule and log line. `None` (the default): off.
    pub proxy_protocol: Option<ProxySources>,
    /// Where received files are kept: `files/` in the data folder (the default), another
    /// local folder, or S3-compatible object storage shared by several servers.
    pub store: Store,
    /// The admin HTTP listener (`--admin-listen`); `None` (the default): off.
    pub admin: Option<AdminConfig>,
}

/// The blob store a server runs on (`--store`).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum Store {
    /// `files/` in the data folder.
    #[default]
    DataDir,
    /// `files/` in this folder (`--store file://PATH`).
    Folder(PathBuf),
    /// A bucket and key prefix in S3-compatible object storage (`--store s3://BUCKET/PREFIX`);
    /// endpoint, region and credentials come from the standard `AWS_*` environment variables.
    S3(S3Location),
}

impl Store {
    /// Parses `--store`: `file://PATH` or `s3://BUCKET[/PREFIX]`.
    pub fn parse(text: &str) -> Result<Self, String> {
        if let Some(path) = text.strip_prefix("file://") {
            if path.is_empty() {
                return Err("file:// names no folder".into());
            }
            return Ok(Store::Folder(PathBuf::from(path)));
        }
        if let Some(rest) = text.strip_prefix("s3://") {
            return S3Location::parse(rest).map(Store::S3);
        }
        Err(
            "--store takes file://PATH or s3://BUCKET/PREFIX (without it the server keeps \
             files in the data folder)"
                .into(),
        )
    }
}

/// A bucket and a key prefix (`s3://BUCKET/PREFIX`). `Debug` and `Display` never show
/// the settings' values (they may hold a secret key).
#[derive(Clone, PartialEq, Eq)]
pub struct S3Location {
    /// Bucket name (3–63 of `a-z 0-9 . -`).
    pub bucket: String,
    /// Key prefix without leading or trailing `/`; empty for the bucket's root.
    pub prefix: String,
    /// `object_store` settings applied over those from the environment, by their
    /// `AmazonS3ConfigKey` names (`aws_endpoint`, `aws_access_key_id`, …); for library
    /// users and tests that cannot set process-wide variables. Empty from `--store`.
    pub settings: Vec<(String, String)>,
}

impl std::fmt::Debug for S3Location {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let keys: Vec<&str> = self.settings.iter().map(|(key, _)| key.as_str()).collect();
        f.debug_struct("S3Location")
            .field("bucket", &self.bucket)
            .field("prefix", &self.prefix)
            .field("settings", &keys)
            .finish()
    }
}

/// Longest key prefix `--store s3://BUCKET/PREFIX` takes, in bytes. S3 limits a key to
/// 1,024 bytes, and the longest key this server writes adds 330 to the prefix (an
/// upload's marker: `/uploads/`, 32 hex digits, `/`, a disk name of up to 255 bytes,
/// `/`, 32 hex digits); a longer prefix would let small files be stored and make every
/// file over 8 MiB fail at its marker.
pub const MAX_S3_PREFIX_LEN: usize = 1024 - 330;

impl S3Location {
    /// Parses `BUCKET[/PREFIX]` (what follows `s3://`).
    pub fn parse(text: &str) -> Result<Self, String> {
        let (bucket, prefix) = text.split_once('/').unwrap_or((text, ""));
        let valid_bucket = (3..=63).contains(&bucket.len())
            && bucket
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'.' || b == b'-');
        if !valid_bucket {
            return Err(format!(
                "{bucket:?} is not a bucket name (3-63 of a-z, 0-9, '.', '-')"
            ));
        }
        let prefix = prefix.trim_matches('/');
        let valid_prefix = prefix.split('/').all(|part| {
            (prefix.is_empty() || !part.is_empty())
                && part != "."
                && part != ".."
                && !part.chars().any(|c| c.is_control())
        });
        if !valid_prefix {
            return Err(format!(
                "{prefix:?} is not a key prefix (no empty, '.' or '..' parts)"
            ));
        }
        if prefix.len() > MAX_S3_PREFIX_LEN {
            return Err(format!(
                "the key prefix is {} bytes long; at most {MAX_S3_PREFIX_LEN} leave room for \
                 the keys this server writes under it (S3 keys are at most 1,024 bytes)",
                prefix.len()
            ));
        }
        Ok(S3Location {
            bucket: bucket.to_owned(),
            prefix: prefix.to_owned(),
            settings: Vec::new(),
        })
    }
}

impl std::fmt::Display for S3Location {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "s3://{}/{}", self.bucket, self.prefix)
    }
}

/// Name of the admin token file in the data folder when `--admin-token-file` is not given.
pub const ADMIN_TOKEN_FILE: &str = "admin.token";

/// The admin HTTP listener: the dashboard, the JSON API, `/metrics`, health checks.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AdminConfig {
    /// Address to listen on (port 0 picks a free port).
    pub listen: SocketAddr,
    /// The file holding the admin token; created owner-only with a random token when
    /// missing.
    pub token_file: PathBuf,
    /// Serve HTTPS with this certificate and key. Required off loopback unless
    /// `insecure`.
    pub tls: Option<TlsFiles>,
    /// Allow plain HTTP on a non-loopback address (`--admin-insecure`).
    pub insecure: bool,
    /// A response (a download, a page) whose client takes none of it for this long is
    /// cut and its connection closed (`--admin-send-timeout`); a slow client that keeps
    /// reading is not cut (it must take about a third of the socket's send buffer, at most
    /// a few MiB, within the limit: the kernel reports the socket writable only then).
    pub send_timeout: Duration,
    /// Host names the listener answers to besides its IP addresses and `localhost`
    /// (`--admin-host`); requests naming any other host get 421.
    pub hosts: Vec<String>,
}

impl AdminConfig {
    /// Plain HTTP on `listen` with the token in `token_file`.
    pub fn new(listen: SocketAddr, token_file: impl Into<PathBuf>) -> Self {
        AdminConfig {
            listen,
            token_file: token_file.into(),
            tls: None,
            insecure: false,
            send_timeout: Duration::from_secs(DEFAULT_ADMIN_SEND_TIMEOUT_SECS),
            hosts: Vec::new(),
        }
    }

    /// Refuses plain HTTP off loopback (the token and session cookie would travel in
    /// clear) unless the operator said `--admin-insecure`.
    pub fn check(&self) -> Result<(), String> {
        if self.tls.is_none() && !self.insecure && !self.listen.ip().is_loopback() {
            return Err(format!(
                "--admin-listen {} is not a loopback address: give --admin-tls-cert and \
                 --admin-tls-key, or --admin-insecure to serve the admin token in clear",
                self.listen
            ));
        }
        for name in &self.hosts {
            if !is_host_name(name) {
                return Err(format!(
                    "--admin-host {name:?} is not a host name (letters, digits, '-', '_' and '.', \
                     at most 253 characters)"
                ));
            }
        }
        Ok(())
    }
}

/// A DNS name as `Host` carries it: labels of 1–63 letters, digits, `-` (not at either
/// end) and `_` (container service names), separated by dots, at most 253 characters (a
/// trailing dot allowed).
fn is_host_name(name: &str) -> bool {
    let name = name.strip_suffix('.').unwrap_or(name);
    !name.is_empty()
        && name.len() <= 253
        && name.split('.').all(|label| {
            (1..=63).contains(&label.len())
                && !label.starts_with('-')
                && !label.ends_with('-')
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        })
}

/// The metadata store a server runs on.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum Database {
    /// `defensive.db` in the data folder.
    #[default]
    Sqlite,
    /// A PostgreSQL database (`--database postgres://…`).
    Postgres(Box<PostgresUrl>),
}

/// A checked `postgres://` (or `postgresql://`) URL and the size of the connection pool.
/// `Debug` and `Display` never show the password.
#[derive(Clone)]
pub struct PostgresUrl {
    url: String,
    config: tokio_postgres::Config,
    /// Connections per server process.
    pub pool_size: usize,
}

impl PostgresUrl {
    /// Checks `url` (a `postgres://` or `postgresql://` URL as libpq takes it: user,
    /// password, host, port, database, `?options`).
    pub fn parse(url: &str) -> Result<Self, String> {
        if !(url.starts_with("postgres://") || url.starts_with("postgresql://")) {
            return Err(
                "--database takes a postgres:// URL (without it the server uses \
                 defensive.db in the data folder)"
                    .into(),
            );
        }
        let config: tokio_postgres::Config = url
            .parse()
            .map_err(|error| format!("invalid PostgreSQL URL: {}", redact_reason(&error, url)))?;
        if config.get_hosts().is_empty() {
            return Err("the PostgreSQL URL names no host".into());
        }
        // The driver ends the user and password at the first '@': a second one (a raw '@'
        // in the password) would make the rest of the password part of the host name,
        // which the log shows.
        let raw_at = config.get_hosts().iter().any(
            |host| matches!(host, tokio_postgres::config::Host::Tcp(name) if name.contains('@')),
        );
        if raw_at {
            return Err("the PostgreSQL URL has more than one '@' before the host \
                        (write an '@' in the password as %40)"
                .into());
        }
        if config.get_ssl_mode() == tokio_postgres::config::SslMode::Require {
            return Err(
                "sslmode=require: this server does not speak TLS to PostgreSQL yet \
                 (use a unix socket, loopback or a private network)"
                    .into(),
            );
        }
        Ok(PostgresUrl {
            url: url.to_owned(),
            config,
            pool_size: DEFAULT_DATABASE_POOL,
        })
    }

    /// The same URL with a pool of `pool_size` connections.
    pub fn with_pool_size(self, pool_size: usize) -> Self {
        PostgresUrl { pool_size, ..self }
    }

    /// The driver's connection settings.
    pub fn config(&self) -> &tokio_postgres::Config {
        &self.config
    }
}

/// The driver's reason for refusing `url` (with its cause, which its `Display` leaves
/// out), without parts of the URL: its only message that quotes the URL is "unknown
/// option `NAME`", and NAME may be the tail of a value with a raw '&' (a password), so it
/// is shown only when it looks like an option name and is not written after a secret
/// option ([`written_before_any_secret`]).
fn redact_reason(error: &tokio_postgres::Error, url: &str) -> String {
    let text = match std::error::Error::source(error) {
        Some(cause) => format!("{error}: {cause}"),
        None => error.to_string(),
    };
    match text.split_once("unknown option `") {
        Some((head, rest)) => {
            let name = rest.split('`').next().unwrap_or("");
            let query = url.split_once('?').map_or("", |(_, query)| query);
            if is_option_name(name) && written_before_any_secret(query, name) {
                text
            } else {
                format!("{head}an unknown option (write '&' and '=' in a value as %26 and %3D)")
            }
        }
        None => text,
    }
}

/// Options whose values are secrets. A raw '&' in one of them makes the rest of the value
/// read as further options (`password=ab&cd=ef`: an option `cd`, or `host=cd`), so
/// nothing written after one is shown or quoted.
const SECRET_OPTIONS: [&str; 2] = ["password", "sslpassword"];

/// Whether `query` (a URL's options) has an option `name` before any secret option, and
/// before any key that is not a plain option name (the driver percent-decodes keys:
/// `pass%77ord` is a password too).
fn written_before_any_secret(query: &str, name: &str) -> bool {
    query
        .split('&')
        .map(|option| option.split_once('=').map_or(option, |(key, _)| key))
        .take_while(|key| is_option_name(key) && !SECRET_OPTIONS.contains(key))
        .any(|key| key == name)
}

/// Whether `text` looks like a libpq option name (`sslmode`, `connect_timeout`, …).
fn is_option_name(text: &str) -> bool {
    (1..=40).contains(&text.len()) && text.bytes().all(|b| b.is_ascii_lowercase() || b == b'_')
}

/// Options whose values [`redact_postgres_url`] shows: none of them holds a secret.
const PLAIN_OPTIONS: [&str; 11] = [
    "sslmode",
    "sslnegotiation",
    "channel_binding",
    "target_session_attrs",
    "load_balance_hosts",
    "connect_timeout",
    "port",
    "host",
    "hostaddr",
    "dbname",
    "user",
];

/// `text`, a `--database` value that may not parse, in a form fit for an error message:
/// no password and no option values but those in [`PLAIN_OPTIONS`] (e.g.
/// `postgres://sfc@db/files?sslmode=require&password=…`). From the first part that might
/// hold a password on (a port that is not a number: `postgres://sfc:s3cret` lacks its
/// `@host`), nothing more is shown ("…"); a value that is not a postgres:// URL is not
/// shown at all (it might be a libpq "key=value" string with a password).
pub fn redact_postgres_url(text: &str) -> String {
    let Some((scheme, rest)) = ["postgres://", "postgresql://"]
        .into_iter()
        .find_map(|scheme| Some((scheme, text.strip_prefix(scheme)?)))
    else {
        return "(not shown)".into();
    };
    let mut shown = String::from(scheme);
    match redact_url_rest(rest, &mut shown) {
        Some(()) => shown,
        None => shown + "…",
    }
}

/// Appends to `shown` what may be shown of `rest` (a URL after its scheme); `None`
/// where it stopped.
fn redact_url_rest(rest: &str, shown: &mut String) -> Option<()> {
    let name_like = |part: &str| {
        !part.is_empty()
            && part
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b".-_%".contains(&b))
    };
    let (main, query) = match rest.split_once('?') {
        Some((main, query)) => (main, Some(query)),
        None => (rest, None),
    };
    // The driver ends the password at the first '@', even past a '?': an '@' there
    // leaves it unclear where the password ends.
    if query.is_some_and(|query| query.contains('@')) {
        return None;
    }
    // A raw '@' in the password: the last '@' ends it.
    let address = match main.rsplit_once('@') {
        Some((credentials, address)) => {
            let user = credentials.split(':').next().unwrap_or("");
            if !user.is_empty() && !name_like(user) {
                return None;
            }
            shown.push_str(user);
            shown.push('@');
            address
        }
        None => main,
    };
    let (hosts, database) = match address.split_once('/') {
        Some((hosts, database)) => (hosts, Some(database)),
        None => (address, None),
    };
    // `postgres:///db` names no host: PostgresUrl::parse says so.
    let chunks = hosts.split(',').filter(|_| !hosts.is_empty());
    for (i, chunk) in chunks.enumerate() {
        if i > 0 {
            shown.push(',');
        }
        let (host, port) = match chunk.strip_prefix('[') {
            Some(inner) => {
                let (ip, after) = inner.split_once(']')?;
                let ip_like = ip
                    .bytes()
                    .all(|b| b.is_ascii_hexdigit() || b":.%".contains(&b));
                if !ip_like || !(after.is_empty() || after.starts_with(':')) {
                    return None;
                }
                (&chunk[..ip.len() + 2], after.strip_prefix(':'))
            }
            None => match chunk.split_once(':') {
                Some((host, port)) => (host, Some(port)),
                None => (chunk, None),
            },
        };
        if !(host.starts_with('[') || name_like(host)) {
            return None;
        }
        shown.push_str(host);
        if let Some(port) = port {
            shown.push(':');
            // Not a port (`postgres://sfc:123456` lacks its `@host`): may be a password.
            if !port.bytes().all(|b| b.is_ascii_digit()) || port.parse::<u16>().is_err() {
                return None;
            }
            shown.push_str(port);
        }
    }
    if let Some(database) = database {
        shown.push('/');
        if !(database.is_empty() || name_like(database)) {
            return None;
        }
        shown.push_str(database);
    }
    if let Some(query) = query {
        shown.push('?');
        let mut after_secret = false;
        for (i, option) in query.split('&').enumerate() {
            if i > 0 {
                shown.push('&');
            }
            // An option without '=' may be the tail of a value with a raw '&', and so
            // may anything after a secret (`password=ab&host=cd`: `cd` is the password's).
            let (key, value) = option.split_once('=')?;
            if !is_option_name(key) || after_secret {
                return None;
            }
            after_secret |= SECRET_OPTIONS.contains(&key);
            shown.push_str(key);
            shown.push('=');
            if PLAIN_OPTIONS.contains(&key) && name_like(value) {
                shown.push_str(value);
            } else {
                shown.push('…');
            }
        }
    }
    Some(())
}

impl PartialEq for PostgresUrl {
    fn eq(&self, other: &Self) -> bool {
        self.url == other.url && self.pool_size == other.pool_size
    }
}

impl Eq for PostgresUrl {}

impl std::fmt::Display for PostgresUrl {
    /// `postgres://user@host:port/database`, without the password.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let host = match self.config.get_hosts().first() {
            Some(tokio_postgres::config::Host::Tcp(host)) => host.clone(),
            Some(tokio_postgres::config::Host::Unix(path)) => path.display().to_string(),
            None => String::new(),
        };
        let user = self.config.get_user().unwrap_or("");
        let at = if user.is_empty() { "" } else { "@" };
        write!(f, "postgres://{user}{at}{host}")?;
        if let Some(port) = self.config.get_ports().first() {
            write!(f, ":{port}")?;
        }
        write!(f, "/{}", self.config.get_dbname().unwrap_or(""))
    }
}

impl std::fmt::Debug for PostgresUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PostgresUrl")
            .field("url", &self.to_string())
            .field("pool_size", &self.pool_size)
            .finish()
    }
}

impl ServerConfig {
    /// Defaults: listen on `0.0.0.0:1256`, limits and timeouts as documented on the fields.
    pub fn new(data_dir: impl Into<PathBuf>) -> Self {
        ServerConfig {
            data_dir: data_dir.into(),
            bind: SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), DEFAULT_PORT),
            max_file_size: DEFAULT_MAX_FILE_SIZE,
            max_connections: DEFAULT_MAX_CONNECTIONS,
            max_connections_per_address: DEFAULT_MAX_CONNECTIONS_PER_ADDRESS,
            idle_timeout: Duration::from_secs(DEFAULT_IDLE_TIMEOUT_SECS),
            request_timeout: Duration::from_secs(DEFAULT_REQUEST_TIMEOUT_SECS),
            shutdown_grace: Duration::from_secs(DEFAULT_SHUTDOWN_GRACE_SECS),
            upload_timeout: Duration::from_secs(DEFAULT_UPLOAD_TIMEOUT_SECS),
            recovery_min_age: DEFAULT_RECOVERY_MIN_AGE,
            upload_buffers: DEFAULT_UPLOAD_BUFFERS_MIB << 20,
            max_uploads: DEFAULT_MAX_UPLOADS,
            max_uploads_per_address: DEFAULT_MAX_UPLOADS_PER_ADDRESS,
            flush_interval: Duration::from_secs(DEFAULT_FLUSH_INTERVAL_SECS),
            store_sweep_interval: Duration::from_secs(DEFAULT_STORE_SWEEP_INTERVAL_SECS),
            worker_threads: None,
            tls: None,
            register_limit: RateLimit::new(DEFAULT_REGISTER_RATE, DEFAULT_REGISTER_BURST),
            failure_limit: RateLimit::new(DEFAULT_FAIL_RATE, DEFAULT_FAIL_BURST),
            pin_address: false,
            database: Database::Sqlite,
            proxy_protocol: None,
            store: Store::DataDir,
            admin: None,
        }
    }

    /// The session's limits, derived once from this configuration: the largest file is
    /// capped at the protocol's maximum here and nowhere else.
    pub fn session_limits(&self) -> Limits {
        Limits {
            max_file_size: self.max_file_size.min(DEFAULT_MAX_FILE_SIZE),
            upload_timeout: self.upload_timeout,
            batch_budget: self.upload_buffers,
            request_timeout: self.request_timeout,
            max_uploads: self.max_uploads,
            max_uploads_per_address: self.max_uploads_per_address,
        }
    }

    /// How old an object in S3 must be before a starting server may take it for another
    /// server's leftover (the store's `grace`, [`crate::S3BlobStore::open`]): the upload
    /// time-out, but never less than [`Self::recovery_min_age`]. An object is written
    /// before its row is committed, and that commit may wait for a row lock and then for
    /// its outcome to settle (`storage::postgres::statements::LONGEST_ROW_COMMIT`); with a short
    /// `--upload-timeout`, another server starting meanwhile would otherwise remove an
    /// object whose row is about to name it.
    pub fn recovery_grace(&self) -> Duration {
        self.upload_timeout.max(self.recovery_min_age)
    }

    /// Path of `defensive.db`.
    pub fn db_path(&self) -> PathBuf {
        self.data_dir.join(DB_FILE)
    }
}

/// What reading `port.info` gave.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PortInfo {
    /// A valid port.
    Port(u16),
    /// The file is missing.
    Missing,
    /// The file exists but does not hold a port (the reason).
    Invalid(String),
}

/// Reads `port.info` in `dir`: one line with the TCP port (surrounding whitespace and a
/// trailing newline are fine). Never fails: problems are reported in the result.
pub fn read_port_info(dir: &Path) -> PortInfo {
    let path = dir.join(PORT_FILE);
    let bytes = match std::fs::read(&path) {
        Ok(bytes) => bytes,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => return PortInfo::Missing,
        Err(error) => return PortInfo::Invalid(format!("cannot read {}: {error}", path.display())),
    };
    let text = String::from_utf8_lossy(&bytes);
    let line = text
        .lines()
        .map(str::trim)
        .find(|l| !l.is_empty())
        .unwrap_or("");
    match line.parse::<u16>() {
        Ok(port) => PortInfo::Port(port),
        Err(_) => PortInfo::Invalid(format!(
            "{} holds {:?}, not a port number (0-65535)",
            path.display(),
            line.chars().take(40).collect::<String>()
        )),
    }
}

/// The port to use: `--port` if given, else `port.info`, else [`DEFAULT_PORT`] with a
/// warning.
pub fn resolve_port(dir: &Path, cli_port: Option<u16>) -> u16 {
    if let Some(port) = cli_port {
        return port;
    }
    match read_port_info(dir) {
        PortInfo::Port(0) => {
            tracing::warn!(
                "{PORT_FILE} in {} says 0: the system picks a free port, another one at \
                 every start, which clients cannot know (the log shows which one)",
                dir.display()
            );
            0
        }
        PortInfo::Port(port) => port,
        PortInfo::Missing => {
            tracing::warn!(
                "no {PORT_FILE} in {}; using the default port {DEFAULT_PORT}",
                dir.display()
            );
            DEFAULT_PORT
        }
        PortInfo::Invalid(reason) => {
            tracing::warn!("{reason}; using the default port {DEFAULT_PORT}");
            DEFAULT_PORT
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn port_info_variants() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(read_port_info(dir.path()), PortInfo::Missing);
        assert_eq!(resolve_port(dir.path(), None), DEFAULT_PORT);
        let write = |text: &[u8]| std::fs::write(dir.path().join(PORT_FILE), text).unwrap();
        write(b"1357\n");
        assert_eq!(read_port_info(dir.path()), PortInfo::Port(1357));
        assert_eq!(resolve_port(dir.path(), Some(99)), 99);
        write(b"  \n 8080 \r\n");
        assert_eq!(resolve_port(dir.path(), None), 8080);
        for bad in [&b"abc"[..], b"70000", b"-1", b"", b"\xff\xfe", b"12 34"] {
            write(bad);
            assert!(
                matches!(read_port_info(dir.path()), PortInfo::Invalid(_)),
                "{bad:?}"
            );
            assert_eq!(resolve_port(dir.path(), None), DEFAULT_PORT);
        }
        // A directory named port.info is not a crash either.
        std::fs::remove_file(dir.path().join(PORT_FILE)).unwrap();
        std::fs::create_dir(dir.path().join(PORT_FILE)).unwrap();
        assert_eq!(resolve_port(dir.path(), None), DEFAULT_PORT);
    }

    #[test]
    fn postgres_urls_are_checked_and_never_show_the_password() {
        let url = PostgresUrl::parse("postgres://sfc:s3cret@db.example:5433/files").unwrap();
        assert_eq!(url.to_string(), "postgres://sfc@db.example:5433/files");
        assert!(!format!("{url:?}").contains("s3cret"));
        assert_eq!(url.config().get_password(), Some(&b"s3cret"[..]));
        assert_eq!(url.pool_size, DEFAULT_DATABASE_POOL);
        let url = PostgresUrl::parse("postgresql://db/x?password=s3cret").unwrap();
        assert!(!format!("{url} {url:?}").contains("s3cret"));
        for bad in [
            "mysql://db/x",
            "defensive.db",
            "postgres://db:notaport/x",
            "postgres:///x",
            "postgres://db/x?sslmode=require",
            "postgres://u:s3c@ret@db/x",
        ] {
            let reason = PostgresUrl::parse(bad).unwrap_err();
            assert!(
                !reason.contains("s3c") && !reason.contains("ret"),
                "{reason}"
            );
        }
        // An '@' in the password written as %40 is fine.
        let url = PostgresUrl::parse("postgres://u:s3c%40ret@db/x").unwrap();
        assert_eq!(url.to_string(), "postgres://u@db:5432/x");
        // The driver's reasons keep their cause but not a name that may be a password's.
        let reason = PostgresUrl::parse("postgres://db/x?sslmod=disable").unwrap_err();
        assert!(reason.contains("unknown option `sslmod`"), "{reason}");
        let reason = PostgresUrl::parse("postgres://db/x?password=a&s3cret&b=1").unwrap_err();
        assert!(reason.contains("an unknown option") && !reason.contains("s3cret"));
        // A piece of a password that looks like an option name is not quoted either.
        for url in [
            "postgres://db/x?password=a&secret=1",
            "postgres://db/x?sslmode=disable&password=a&secret=1",
            "postgres://db/x?sslpassword=a&secret=1",
        ] {
            let reason = PostgresUrl::parse(url).unwrap_err();
            assert!(
                reason.contains("an unknown option") && !reason.contains("secret"),
                "{url}: {reason}"
            );
        }
        // A misspelt option written before the password still is.
        let reason = PostgresUrl::parse("postgres://db/x?sslmod=disable&password=a").unwrap_err();
        assert!(reason.contains("unknown option `sslmod`"), "{reason}");
        // A percent-encoded key is a password all the same.
        let reason = PostgresUrl::parse("postgres://db/x?pass%77ord=ab&cdsecret=ef").unwrap_err();
        assert!(!reason.contains("cdsecret"), "{reason}");
    }

    #[test]
    fn redacted_database_urls_show_no_password() {
        for (url, shown) in [
            ("postgres://sfc:s3cret@db/sfc", "postgres://sfc@db/sfc"),
            (
                "postgresql://sfc:s3cret@db:5433/sfc?sslmode=require",
                "postgresql://sfc@db:5433/sfc?sslmode=require",
            ),
            (
                "postgres://db/x?connect_timeout=5&password=s3cret",
                "postgres://db/x?connect_timeout=5&password=…",
            ),
            // Anything after a secret may be a piece of it, known option names too.
            (
                "postgres://db/x?password=s3c&host=ret&sslmode=require",
                "postgres://db/x?password=…&…",
            ),
            (
                "postgres://u:s3cret@[::1]:5432,h2/x",
                "postgres://u@[::1]:5432,h2/x",
            ),
            ("postgres:///x", "postgres:///x"),
            // Where the password ends is unclear: nothing more is shown.
            ("postgres://sfc:s3cret", "postgres://sfc:…"),
            ("postgres://sfc:123456", "postgres://sfc:…"),
            ("postgres://sfc:0065536/x", "postgres://sfc:…"),
            ("postgres://sfc:s3cret/x", "postgres://sfc:…"),
            ("postgres://sfc:s3c@ret@db/x", "postgres://sfc@db/x"),
            ("postgres://sfc:s3c?ret@db/x", "postgres://…"),
            ("postgres://db/x?password=s3c@ret", "postgres://…"),
            (
                "postgres://db/x?password=s3c&ret",
                "postgres://db/x?password=…&…",
            ),
            // After a secret, a name libpq does not know may be a piece of it.
            (
                "postgres://db/x?password=s3c&ret=x",
                "postgres://db/x?password=…&…",
            ),
            (
                "postgres://db/x?sslpassword=s3c&ret=x&sslmode=disable",
                "postgres://db/x?sslpassword=…&…",
            ),
            ("postgres://s3c/ret:x@db/x", "postgres://…"),
            ("host=db password=s3cret", "(not shown)"),
        ] {
            assert_eq!(redact_postgres_url(url), shown, "{url}");
        }
    }
}
