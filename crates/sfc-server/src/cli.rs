//! The `sfc-server` command line: parsed by clap, validated once, then turned into a
//! [`ServerConfig`] ([`Cli::server_config`]); nothing downstream re-checks a flag.

use crate::config::{
    redact_postgres_url, resolve_port, AdminConfig, Database, PostgresUrl, ServerConfig, Store,
    ADMIN_TOKEN_FILE, DATABASE_URL_ENV, DEFAULT_ADMIN_SEND_TIMEOUT_SECS, DEFAULT_DATABASE_POOL,
    DEFAULT_FAIL_BURST, DEFAULT_FAIL_RATE, DEFAULT_IDLE_TIMEOUT_SECS, DEFAULT_MAX_CONNECTIONS,
    DEFAULT_MAX_CONNECTIONS_PER_ADDRESS, DEFAULT_MAX_FILE_SIZE, DEFAULT_MAX_UPLOADS,
    DEFAULT_MAX_UPLOADS_PER_ADDRESS, DEFAULT_REGISTER_BURST, DEFAULT_REGISTER_RATE,
    DEFAULT_REQUEST_TIMEOUT_SECS, DEFAULT_SHUTDOWN_GRACE_SECS, DEFAULT_STORE_SWEEP_INTERVAL_SECS,
    DEFAULT_UPLOAD_BUFFERS_MIB, DEFAULT_UPLOAD_TIMEOUT_SECS, MAX_ADMIN_SEND_TIMEOUT_SECS,
    MAX_CONNECTIONS_LIMIT, MAX_DATABASE_POOL, MAX_IDLE_TIMEOUT_SECS, MAX_REQUEST_TIMEOUT_SECS,
    MAX_SHUTDOWN_GRACE_SECS, MAX_STORE_SWEEP_INTERVAL_SECS, MAX_UPLOADS_LIMIT,
    MAX_UPLOAD_BUFFERS_MIB, MAX_UPLOAD_TIMEOUT_SECS, MIN_STORE_SWEEP_INTERVAL_SECS,
};
use crate::net::proxy_protocol::ProxySources;
use crate::net::rate_limit::RateLimit;
use crate::net::tls::TlsFiles;
use clap::error::ErrorKind;
use clap::parser::ValueSource;
use clap::{Parser, Subcommand};
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

/// Receives files from SecureFileComm clients, encrypted, and keeps them in a data folder.
///
/// Speaks version 3 of the SecureFileComm protocol. Serves clients from a data folder that holds `port.info` (the TCP port; missing or
/// invalid: port 1256), `defensive.db` (SQLite: registered clients and stored files) and
/// `files/<client-id>/` (the received files).
#[derive(Debug, Parser)]
#[command(name = "sfc-server", version)]
pub struct Cli {
    /// Folder for the settings file, the database and the received files.
    ///
    /// Holds port.info, defensive.db and files/ (created if missing).
    #[arg(long, global = true, value_name = "DIR", default_value = ".")]
    pub data_dir: PathBuf,

    /// Port to listen on (instead of the one in port.info).
    ///
    /// 0 picks a free port (the log shows it).
    #[arg(long, value_name = "N")]
    pub port: Option<u16>,

    /// Address to listen on.
    ///
    /// An IP (all IPv4 addresses by default; "::" for IPv6), or IP:PORT.
    #[arg(long, value_name = "ADDR", default_value = "0.0.0.0")]
    pub bind: String,

    /// How much to log: error, warn, info, debug or trace.
    ///
    /// Also takes a tracing filter such as "sfc_server=debug"; overrides RUST_LOG.
    /// Default: RUST_LOG, else info.
    #[arg(long, value_name = "LEVEL", global = true)]
    pub log_level: Option<String>,

    /// Largest file accepted, in bytes.
    ///
    /// Counts the file's own size (before encryption). The protocol's maximum is the
    /// default.
    #[arg(long, value_name = "BYTES", default_value_t = DEFAULT_MAX_FILE_SIZE,
          value_parser = clap::value_parser!(u64).range(0..=DEFAULT_MAX_FILE_SIZE))]
    pub max_file_size: u64,

    /// How many clients may be connected at once; more wait their turn.
    ///
    /// Connections beyond it wait in the listen backlog. 1 to 1000000 (each is an open
    /// file).
    #[arg(long, value_name = "N", default_value_t = DEFAULT_MAX_CONNECTIONS,
          value_parser = usize_in(1, MAX_CONNECTIONS_LIMIT))]
    pub max_connections: usize,

    /// How many connections one address may have open at once (0: no limit).
    ///
    /// IPv6 addresses count per /64. A connection beyond it is closed at once. Use 0
    /// behind a proxy, where every client has the proxy's address. At most 1000000.
    #[arg(long, value_name = "N", default_value_t = DEFAULT_MAX_CONNECTIONS_PER_ADDRESS,
          value_parser = usize_in(0, MAX_CONNECTIONS_LIMIT))]
    pub max_connections_per_address: usize,

    /// Seconds of silence after which a connection is closed.
    ///
    /// 1 to 86400 (a day).
    #[arg(long, value_name = "SECS", default_value_t = DEFAULT_IDLE_TIMEOUT_SECS,
          value_parser = clap::value_parser!(u64).range(1..=MAX_IDLE_TIMEOUT_SECS))]
    pub idle_timeout: u64,

    /// Seconds a client may take to send one request.
    ///
    /// A request's header and payload (an 828's header and fixed part) must arrive within
    /// this many seconds, and an 828's content at 64 KiB per this many seconds at least.
    /// 1 to 86400 (a day).
    #[arg(long, value_name = "SECS", default_value_t = DEFAULT_REQUEST_TIMEOUT_SECS,
          value_parser = clap::value_parser!(u64).range(1..=MAX_REQUEST_TIMEOUT_SECS))]
    pub request_timeout: u64,

    /// Seconds given to requests in progress when the server is stopped.
    ///
    /// On SIGINT/SIGTERM, requests in flight get this long to finish. 0 to 3600 (an
    /// hour).
    #[arg(long, value_name = "SECS", default_value_t = DEFAULT_SHUTDOWN_GRACE_SECS,
          value_parser = clap::value_parser!(u64).range(0..=MAX_SHUTDOWN_GRACE_SECS))]
    pub shutdown_grace: u64,

    /// Seconds after which an unfinished upload that stopped arriving is dropped.
    ///
    /// An upload that receives no packet for this long is abandoned. 1 to 604800 (a
    /// week).
    #[arg(long, value_name = "SECS", default_value_t = DEFAULT_UPLOAD_TIMEOUT_SECS,
          value_parser = clap::value_parser!(u64).range(1..=MAX_UPLOAD_TIMEOUT_SECS))]
    pub upload_timeout: u64,

    /// Memory, in MiB, for received file content waiting to be written to disk.
    ///
    /// Shared by all uploads: each takes up to 1 MiB while it streams and keeps it
    /// between packets. Beyond it
    /// an upload gets 16 KiB: same result, more and smaller writes. 1 to 1048576 (1 TiB).
    #[arg(long, value_name = "MIB", default_value_t = DEFAULT_UPLOAD_BUFFERS_MIB,
          value_parser = usize_in(1, MAX_UPLOAD_BUFFERS_MIB))]
    pub upload_buffers: usize,

    /// Most unfinished uploads at once, all clients together.
    ///
    /// A client that starts one more gets an error (1607) and the server logs a warning.
    /// Between packets, an upload of a connection-per-request client holds no open file.
    /// 1 to 1000000.
    #[arg(long, value_name = "N", default_value_t = DEFAULT_MAX_UPLOADS,
          value_parser = usize_in(1, MAX_UPLOADS_LIMIT))]
    pub max_uploads: usize,

    /// Most unfinished uploads at once from one IP address (an IPv6 /64 counts as one).
    ///
    /// A client that starts one more gets an error (1607) and the server logs a warning.
    /// At most 1000000; 0: no cap (behind a proxy that gives every client its address).
    #[arg(long, value_name = "N", default_value_t = DEFAULT_MAX_UPLOADS_PER_ADDRESS,
          value_parser = usize_in(0, MAX_UPLOADS_LIMIT))]
    pub max_uploads_per_address: usize,

    /// Encrypt connections with TLS using this certificate (needs --tls-key).
    ///
    /// A PEM certificate chain, leaf first. Without it the server speaks plain TCP, like
    /// every other implementation.
    #[arg(long, value_name = "FILE", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,

    /// The private key of the --tls-cert certificate.
    ///
    /// PEM: PKCS#8, PKCS#1 or SEC1.
    #[arg(long, value_name = "FILE", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,

    /// New accounts one address may register per minute (0: no limit).
    ///
    /// Registrations (825) per source address (IPv6: per /64); beyond it an 825 gets
    /// 1607.
    #[arg(long, value_name = "N", default_value_t = DEFAULT_REGISTER_RATE)]
    pub register_rate: u32,

    /// New accounts one address may register at once before --register-rate applies.
    #[arg(long, value_name = "N", default_value_t = DEFAULT_REGISTER_BURST,
          value_parser = clap::value_parser!(u32).range(1..))]
    pub register_burst: u32,

    /// Failed requests one address may make per minute before it is shut out (0: no limit).
    ///
    /// Requests answered 1601, 1606 or 1607, or a failed TLS handshake, per source
    /// address; beyond it the connection is closed and new ones from that address are
    /// refused until the budget refills.
    #[arg(long, value_name = "N", default_value_t = DEFAULT_FAIL_RATE)]
    pub fail_rate: u32,

    /// Failed requests one address may make at once before --fail-rate applies.
    #[arg(long, value_name = "N", default_value_t = DEFAULT_FAIL_BURST,
          value_parser = clap::value_parser!(u32).range(1..))]
    pub fail_burst: u32,

    /// Accept a client's files only from the address it last logged in from.
    ///
    /// Opt-in: a client's file packets (828) and checksum verdicts (900/901/902) are
    /// accepted only from the address (IPv6: /64) of its latest key exchange (826/827), so
    /// that someone who saw its client ID cannot delete, overwrite or probe its files from
    /// elsewhere. Breaks clients whose address changes within a session.
    #[arg(long)]
    pub pin_address: bool,

    /// Keep the list of clients and files in this PostgreSQL database.
    ///
    /// postgres://USER:PASSWORD@HOST:PORT/DB, instead of defensive.db in the data folder;
    /// several servers may share it. Also read from SFC_DATABASE_URL, which keeps the
    /// password off the command line; the flag wins. Received files stay in the data
    /// folder.
    #[arg(long, global = true, value_name = "URL", env = "SFC_DATABASE_URL",
          hide_env_values = true, value_parser = DatabaseUrlParser)]
    pub database: Option<PostgresUrl>,

    /// Connections to the --database PostgreSQL server that this server keeps at most.
    ///
    /// 1 to 1000.
    #[arg(long, value_name = "N", default_value_t = DEFAULT_DATABASE_POOL,
          value_parser = usize_in(1, MAX_DATABASE_POOL))]
    pub database_pool: usize,

    /// Behind a balancer: read the client's address from a PROXY header (v1/v2).
    ///
    /// The balancers listed in --proxy-from must start each connection with a PROXY
    /// protocol header (v1 or v2, as HAProxy's send-proxy-v2 sends).
    ///
    /// Behind a TCP balancer every connection comes from the balancer; its header names
    /// the client, whose address then counts for the per-address limits, rate limits,
    /// --pin-address and the logs. Connections from other addresses, and connections
    /// without a valid header within --request-timeout, are refused.
    #[arg(long, requires = "proxy_from")]
    pub proxy_protocol: bool,

    /// The balancers trusted to send PROXY headers (e.g. 127.0.0.1,10.0.0.0/8).
    ///
    /// Addresses and networks, comma-separated.
    #[arg(long, value_name = "LIST", requires = "proxy_protocol",
          value_parser = ProxySources::parse)]
    pub proxy_from: Option<ProxySources>,

    /// Keep received files in a folder (file://PATH) or in S3 (s3://BUCKET/PREFIX).
    ///
    /// Instead of files/ in the data folder. For S3, endpoint, region and credentials come
    /// from AWS_ENDPOINT_URL, AWS_REGION, AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY and
    /// AWS_ALLOW_HTTP. Also read from SFC_STORE.
    #[arg(long, global = true, value_name = "URL", env = "SFC_STORE",
          value_parser = Store::parse)]
    pub store: Option<Store>,

    /// With PostgreSQL and S3: seconds between the running server's clean-ups of the bucket.
    ///
    /// Each does what start-up recovery does: aborts multipart uploads no server finishes
    /// and deletes old objects no row names, so that what a crashed node left is not kept
    /// until a server starts (±20 %, counted from the end of the last pass). 0: at
    /// start-up only; otherwise 60 to 604800 (a week). Only with PostgreSQL and S3 (storage
    /// other servers share): a server's own folder and database are cleaned at start-up.
    #[arg(long, value_name = "SECS", default_value_t = DEFAULT_STORE_SWEEP_INTERVAL_SECS,
          value_parser = store_sweep_interval)]
    pub store_sweep_interval: u64,

    /// Serve the admin dashboard, JSON API and /metrics on this address (IP:PORT). Off by default.
    ///
    /// E.g. 127.0.0.1:8080. A non-loopback address needs --admin-tls-cert/--admin-tls-key
    /// (or --admin-insecure).
    #[arg(long, value_name = "ADDR")]
    pub admin_listen: Option<SocketAddr>,

    /// The admin token (created owner-only with a random token when missing).
    ///
    /// Default: admin.token in the data folder.
    #[arg(long, value_name = "FILE", requires = "admin_listen")]
    pub admin_token_file: Option<PathBuf>,

    /// Serve the admin listener over HTTPS with this certificate (PEM chain).
    #[arg(long, value_name = "FILE", requires_all = ["admin_tls_key", "admin_listen"])]
    pub admin_tls_cert: Option<PathBuf>,

    /// The private key of --admin-tls-cert (PEM).
    #[arg(long, value_name = "FILE", requires = "admin_tls_cert")]
    pub admin_tls_key: Option<PathBuf>,

    /// Allow the admin listener on a non-loopback address without TLS.
    #[arg(long, requires = "admin_listen")]
    pub admin_insecure: bool,

    /// A host name the admin listener answers to (repeatable), e.g. admin.example.org.
    ///
    /// It always answers to its IP addresses and localhost; a request naming another host
    /// (what a web page's name resolving to the listener's address sends: DNS rebinding)
    /// gets 421.
    #[arg(long = "admin-host", value_name = "NAME", requires = "admin_listen")]
    pub admin_hosts: Vec<String>,

    /// Seconds an admin response may wait for its client to take any of it.
    ///
    /// A client that stops reading a download or a page for this long has its connection
    /// closed; a slow client that keeps reading is not cut (it must take about a third of
    /// the socket's send buffer, at most a few MiB, within the limit). 1 to 86400 (a day).
    #[arg(long, value_name = "SECS", default_value_t = DEFAULT_ADMIN_SEND_TIMEOUT_SECS,
          requires = "admin_listen",
          value_parser = clap::value_parser!(u64).range(1..=MAX_ADMIN_SEND_TIMEOUT_SECS))]
    pub admin_send_timeout: u64,

    /// Show what the database holds instead of serving.
    #[command(subcommand)]
    pub command: Option<Command>,
}

/// Log levels a filter directive may name.
const LOG_LEVELS: [&str; 6] = ["off", "error", "warn", "info", "debug", "trace"];

/// The log filter to use: `--log-level`, else `RUST_LOG`, else `default`. A filter that
/// would silence the server by mistake (a bare word that is not a level, such as
/// "bogus", reads as "trace for a module named bogus" and hides everything else) or that
/// does not parse is refused with a message naming where it came from.
pub fn log_filter(
    flag: Option<&str>,
    rust_log: Option<&str>,
    default: &str,
) -> Result<String, String> {
    let (text, source) = match (flag, rust_log) {
        (Some(text), _) => (text, "--log-level"),
        (None, Some(text)) if !text.trim().is_empty() => (text, "RUST_LOG"),
        _ => return Ok(default.to_string()),
    };
    let is_level = |word: &str| LOG_LEVELS.contains(&word.trim().to_ascii_lowercase().as_str());
    let valid_directive = |directive: &str| {
        let directive = directive.trim();
        match directive.rsplit_once('=') {
            Some((target, level)) => !target.trim().is_empty() && is_level(level),
            None => is_level(directive),
        }
    };
    let parses = tracing_subscriber::EnvFilter::try_new(text).is_ok();
    if parses && !text.trim().is_empty() && text.split(',').all(valid_directive) {
        Ok(text.to_string())
    } else {
        Err(format!(
            "invalid log filter in {source}: {text:?}. Use a level (error, warn, info, debug, \
             trace or off) or directives such as \"info,sfc_server=debug\""
        ))
    }
}

/// `--store-sweep-interval`: 0, or [`MIN_STORE_SWEEP_INTERVAL_SECS`] to
/// [`MAX_STORE_SWEEP_INTERVAL_SECS`] (each pass lists the bucket and reads every row).
fn store_sweep_interval(text: &str) -> Result<u64, String> {
    let range = MIN_STORE_SWEEP_INTERVAL_SECS..=MAX_STORE_SWEEP_INTERVAL_SECS;
    match text.parse::<u64>() {
        Ok(secs) if secs == 0 || range.contains(&secs) => Ok(secs),
        Ok(secs) => Err(format!(
            "{secs} is not in 0 or {}..={}",
            range.start(),
            range.end()
        )),
        Err(error) => Err(error.to_string()),
    }
}

/// A count from `min` to `max`, refused by clap as out of range beyond (exit 2): an
/// unbounded count overflows or panics where it is used (a semaphore, a pool, a sum).
fn usize_in(min: usize, max: usize) -> clap::builder::RangedU64ValueParser<usize> {
    clap::builder::RangedU64ValueParser::new().range(min as u64..=max as u64)
}

/// `--database`'s parser: [`PostgresUrl::parse`], refusing a URL in clap's usual way
/// (exit 2) but naming it redacted. clap's wrapper for a plain parsing function would
/// quote the whole value, password included, in "invalid value '…'", whether it came
/// from the flag or SFC_DATABASE_URL. Checked here rather than after parsing so that the
/// admin views and the server alike stop with clap's exit code.
#[derive(Clone, Copy, Debug)]
struct DatabaseUrlParser;

impl clap::builder::TypedValueParser for DatabaseUrlParser {
    type Value = PostgresUrl;

    fn parse_ref(
        &self,
        cmd: &clap::Command,
        arg: Option<&clap::Arg>,
        value: &std::ffi::OsStr,
    ) -> Result<PostgresUrl, clap::Error> {
        self.parse_ref_(cmd, arg, value, ValueSource::CommandLine)
    }

    fn parse_ref_(
        &self,
        cmd: &clap::Command,
        arg: Option<&clap::Arg>,
        value: &std::ffi::OsStr,
        source: ValueSource,
    ) -> Result<PostgresUrl, clap::Error> {
        let text = value.to_string_lossy();
        let reason = match value.to_str() {
            Some(text) => match PostgresUrl::parse(text) {
                Ok(url) => return Ok(url),
                Err(reason) => reason,
            },
            None => "not valid UTF-8".into(),
        };
        let arg = arg.map_or_else(|| "--database".to_owned(), ToString::to_string);
        let from = match source {
            ValueSource::EnvVariable => format!(" (from {DATABASE_URL_ENV})"),
            _ => String::new(),
        };
        let shown = redact_postgres_url(&text);
        let message = format!("invalid value '{shown}' for '{arg}'{from}: {reason}");
        Err(cmd.clone().error(ErrorKind::ValueValidation, message))
    }

    fn parse_(
        &self,
        cmd: &clap::Command,
        arg: Option<&clap::Arg>,
        value: std::ffi::OsString,
        source: ValueSource,
    ) -> Result<PostgresUrl, clap::Error> {
        self.parse_ref_(cmd, arg, &value, source)
    }
}

/// Admin views.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// List registered clients: name, ID, last seen, keys, number of files.
    Clients {
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// List stored files: owner, file name, size, verified state, path.
    Files {
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Make a TLS key and certificate in the data folder and print its fingerprint.
    ///
    /// Writes tls-cert.pem (self-signed, for localhost, 127.0.0.1 and every --name) and
    /// tls-key.pem, owner-only, into the data folder, and prints the certificate's
    /// SHA-256 fingerprint for clients to pin (sfc-client --tls-fingerprint). Then serve
    /// with --tls-cert and --tls-key.
    TlsInit {
        /// Another host name or IP address clients use to reach this server (repeatable).
        #[arg(long = "name", value_name = "HOST_OR_IP")]
        names: Vec<String>,
        /// Replace existing files (clients that pinned the old fingerprint refuse the new).
        #[arg(long)]
        force: bool,
    },
}

impl Cli {
    /// The metadata store: `--database` (or SFC_DATABASE_URL), else SQLite.
    pub fn database_choice(&self) -> Database {
        match &self.database {
            Some(url) => {
                Database::Postgres(Box::new(url.clone().with_pool_size(self.database_pool)))
            }
            None => Database::Sqlite,
        }
    }

    /// The server configuration these options describe (reads `port.info` unless
    /// `--port` or a port in `--bind` is given).
    pub fn server_config(&self) -> anyhow::Result<ServerConfig> {
        let mut config = ServerConfig::new(&self.data_dir);
        config.bind = match self.bind.parse::<SocketAddr>() {
            Ok(addr) => SocketAddr::new(addr.ip(), self.port.unwrap_or(addr.port())),
            Err(_) => {
                let ip: IpAddr = self.bind.trim_matches(['[', ']']).parse().map_err(|_| {
                    anyhow::anyhow!(
                        "--bind {:?} is neither an IP address nor IP:PORT",
                        self.bind
                    )
                })?;
                SocketAddr::new(ip, resolve_port(&self.data_dir, self.port))
            }
        };
        config.max_file_size = self.max_file_size;
        config.max_connections = self.max_connections;
        config.max_connections_per_address = self.max_connections_per_address;
        config.idle_timeout = Duration::from_secs(self.idle_timeout);
        config.request_timeout = Duration::from_secs(self.request_timeout);
        config.shutdown_grace = Duration::from_secs(self.shutdown_grace);
        config.upload_timeout = Duration::from_secs(self.upload_timeout);
        config.upload_buffers = self.upload_buffers.saturating_mul(1 << 20);
        config.max_uploads = self.max_uploads;
        config.max_uploads_per_address = self.max_uploads_per_address;
        config.tls = match (&self.tls_cert, &self.tls_key) {
            (Some(cert), Some(key)) => Some(TlsFiles {
                cert: cert.clone(),
                key: key.clone(),
            }),
            (None, None) => None,
            _ => anyhow::bail!("--tls-cert and --tls-key go together"),
        };
        config.register_limit = RateLimit::new(self.register_rate, self.register_burst);
        config.failure_limit = RateLimit::new(self.fail_rate, self.fail_burst);
        config.pin_address = self.pin_address;
        config.database = self.database_choice();
        config.proxy_protocol = self.proxy_from.clone().filter(|_| self.proxy_protocol);
        config.store = self.store.clone().unwrap_or_default();
        config.store_sweep_interval = Duration::from_secs(self.store_sweep_interval);
        config.admin = match self.admin_listen {
            Some(listen) => {
                let token_file = self
                    .admin_token_file
                    .clone()
                    .unwrap_or_else(|| self.data_dir.join(ADMIN_TOKEN_FILE));
                let admin = AdminConfig {
                    listen,
                    token_file,
                    tls: match (&self.admin_tls_cert, &self.admin_tls_key) {
                        (Some(cert), Some(key)) => Some(TlsFiles {
                            cert: cert.clone(),
                            key: key.clone(),
                        }),
                        _ => None,
                    },
                    insecure: self.admin_insecure,
                    send_timeout: Duration::from_secs(self.admin_send_timeout),
                    hosts: self.admin_hosts.clone(),
                };
                admin.check().map_err(anyhow::Error::msg)?;
                Some(admin)
            }
            None => None,
        };
        Ok(config)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::PORT_FILE;

    #[test]
    fn log_filters_that_would_silence_the_server_are_refused() {
        assert_eq!(log_filter(None, None, "info").unwrap(), "info");
        assert_eq!(log_filter(None, Some(""), "warn").unwrap(), "warn");
        for good in [
            "debug",
            "WARN",
            "info,sfc_server=debug",
            "sfc_server=trace",
            "off",
        ] {
            assert_eq!(log_filter(Some(good), None, "info").unwrap(), good);
            assert_eq!(log_filter(None, Some(good), "info").unwrap(), good);
        }
        for bad in [
            "bogus",
            "sfc_server=[",
            "info,bogus",
            "=debug",
            "sfc_server=loud",
            " ",
        ] {
            let message = log_filter(Some(bad), None, "info").unwrap_err();
            assert!(message.contains("--log-level"), "{message}");
            let message = log_filter(None, Some(bad).filter(|b| !b.trim().is_empty()), "info");
            if !bad.trim().is_empty() {
                assert!(message.unwrap_err().contains("RUST_LOG"));
            }
        }
        // The flag wins over RUST_LOG.
        assert_eq!(
            log_filter(Some("warn"), Some("bogus"), "info").unwrap(),
            "warn"
        );
    }

    #[test]
    fn cli_defaults_and_overrides() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(PORT_FILE), "4000").unwrap();
        let d = dir.path().to_str().unwrap();
        let cli = Cli::try_parse_from(["sfc-server", "--data-dir", d]).unwrap();
        let config = cli.server_config().unwrap();
        assert_eq!(config.bind, "0.0.0.0:4000".parse().unwrap());
        assert_eq!(config.max_file_size, DEFAULT_MAX_FILE_SIZE);
        assert_eq!(config.max_connections, DEFAULT_MAX_CONNECTIONS);
        assert_eq!(config.upload_buffers, 256 << 20);
        assert_eq!(config.max_connections_per_address, 256);
        let cli = Cli::try_parse_from([
            "sfc-server",
            "--data-dir",
            d,
            "--port",
            "0",
            "--bind",
            "127.0.0.1",
            "--max-file-size",
            "1000",
            "--idle-timeout",
            "5",
            "--upload-buffers",
            "3",
            "--max-connections-per-address",
            "0",
        ])
        .unwrap();
        let config = cli.server_config().unwrap();
        assert_eq!(config.upload_buffers, 3 << 20);
        assert_eq!(config.max_connections_per_address, 0);
        assert_eq!(config.bind, "127.0.0.1:0".parse().unwrap());
        assert_eq!(config.max_file_size, 1000);
        assert_eq!(config.idle_timeout, Duration::from_secs(5));
        let cli =
            Cli::try_parse_from(["sfc-server", "--data-dir", d, "--bind", "[::1]:7"]).unwrap();
        assert_eq!(
            cli.server_config().unwrap().bind,
            "[::1]:7".parse().unwrap()
        );
        let cli = Cli::try_parse_from(["sfc-server", "--bind", "nonsense"]).unwrap();
        assert!(cli.server_config().is_err());
        assert!(Cli::try_parse_from(["sfc-server", "--max-connections", "0"]).is_err());
        assert!(Cli::try_parse_from(["sfc-server", "--max-file-size", "4294967296"]).is_err());
        let cli = Cli::try_parse_from(["sfc-server", "files", "--json", "--data-dir", d]).unwrap();
        assert!(matches!(cli.command, Some(Command::Files { json: true })));
        Cli::command_for_tests().debug_assert();
    }

    #[test]
    fn proxy_protocol_flags() {
        let cli = Cli::try_parse_from(["sfc-server", "--port", "1"]).unwrap();
        assert_eq!(cli.server_config().unwrap().proxy_protocol, None);
        let cli = Cli::try_parse_from([
            "sfc-server",
            "--port",
            "1",
            "--proxy-protocol",
            "--proxy-from",
            "127.0.0.1,10.0.0.0/8",
        ])
        .unwrap();
        let sources = cli.server_config().unwrap().proxy_protocol.unwrap();
        assert!(sources.trusts("10.1.2.3".parse().unwrap()));
        assert!(!sources.trusts("127.0.0.2".parse().unwrap()));
        // Each needs the other; a bad list is refused by the parser.
        assert!(Cli::try_parse_from(["sfc-server", "--proxy-protocol"]).is_err());
        assert!(Cli::try_parse_from(["sfc-server", "--proxy-from", "127.0.0.1"]).is_err());
        assert!(Cli::try_parse_from([
            "sfc-server",
            "--proxy-protocol",
            "--proxy-from",
            "10.0.0.0/40"
        ])
        .is_err());
    }

    #[test]
    fn admin_flags() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path().to_str().unwrap();
        let parse = |args: &[&str]| {
            let mut all = vec!["sfc-server", "--data-dir", d, "--port", "1"];
            all.extend_from_slice(args);
            Cli::try_parse_from(all).map_err(|e| e.to_string())
        };
        assert_eq!(parse(&[]).unwrap().server_config().unwrap().admin, None);
        let admin = parse(&["--admin-listen", "127.0.0.1:8080"])
            .unwrap()
            .server_config()
            .unwrap()
            .admin
            .unwrap();
        assert_eq!(admin.listen, "127.0.0.1:8080".parse().unwrap());
        assert_eq!(admin.token_file, dir.path().join(ADMIN_TOKEN_FILE));
        assert_eq!(admin.tls, None);
        assert_eq!(
            admin.send_timeout,
            Duration::from_secs(DEFAULT_ADMIN_SEND_TIMEOUT_SECS)
        );
        let admin = parse(&["--admin-listen", "127.0.0.1:1", "--admin-send-timeout", "5"])
            .unwrap()
            .server_config()
            .unwrap()
            .admin
            .unwrap();
        assert_eq!(admin.send_timeout, Duration::from_secs(5));
        assert!(parse(&["--admin-send-timeout", "5"]).is_err());
        // --admin-host: repeatable, names only, and only with the listener.
        assert_eq!(admin.hosts, Vec::<String>::new());
        let hosts = ["--admin-listen", "127.0.0.1:1", "--admin-host", "a.example"];
        let admin = parse(&[&hosts[..], &["--admin-host", "sfc_admin"]].concat())
            .unwrap()
            .server_config()
            .unwrap()
            .admin
            .unwrap();
        assert_eq!(admin.hosts, ["a.example", "sfc_admin"]);
        assert!(parse(&["--admin-host", "a.example"]).is_err());
        for bad in [
            "",
            "a b",
            "-a.example",
            "a..example",
            "a.example:80",
            "[::1]",
        ] {
            let flag = format!("--admin-host={bad}");
            let error = parse(&["--admin-listen", "127.0.0.1:1", &flag])
                .unwrap()
                .server_config()
                .unwrap_err()
                .to_string();
            assert!(error.contains("is not a host name"), "{bad}: {error}");
        }
        for out_of_range in ["0", "86401"] {
            let flags = [
                "--admin-listen",
                "127.0.0.1:1",
                "--admin-send-timeout",
                out_of_range,
            ];
            assert!(parse(&flags).is_err(), "{out_of_range}");
        }
        // Off loopback: TLS or an explicit --admin-insecure.
        let error = parse(&["--admin-listen", "0.0.0.0:8080"])
            .unwrap()
            .server_config()
            .unwrap_err()
            .to_string();
        assert!(error.contains("--admin-insecure"), "{error}");
        let admin = parse(&["--admin-listen", "0.0.0.0:8080", "--admin-insecure"])
            .unwrap()
            .server_config()
            .unwrap()
            .admin
            .unwrap();
        assert!(admin.insecure);
        let admin = parse(&[
            "--admin-listen",
            "[::]:8443",
            "--admin-tls-cert",
            "c.pem",
            "--admin-tls-key",
            "k.pem",
            "--admin-token-file",
            "/run/t",
        ])
        .unwrap()
        .server_config()
        .unwrap()
        .admin
        .unwrap();
        assert_eq!(admin.token_file, PathBuf::from("/run/t"));
        assert_eq!(admin.tls.unwrap().key, PathBuf::from("k.pem"));
        assert!(parse(&["--admin-insecure"]).is_err());
        assert!(parse(&["--admin-listen", "127.0.0.1:1", "--admin-tls-cert", "c"]).is_err());
        assert!(parse(&["--admin-listen", "localhost:1"]).is_err());
    }

    #[test]
    fn database_flags() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path().to_str().unwrap();
        let parse = |args: &[&str]| {
            let mut all = vec!["sfc-server", "--data-dir", d, "--port", "1"];
            all.extend_from_slice(args);
            Cli::try_parse_from(all)
        };
        // SFC_DATABASE_URL is not set in the test environment (tests/postgres.rs runs
        // the binary with it).
        if std::env::var_os(crate::config::DATABASE_URL_ENV).is_none() {
            let config = parse(&[]).unwrap().server_config().unwrap();
            assert_eq!(config.database, Database::Sqlite);
        }
        let config = parse(&[
            "--database",
            "postgres://u:s3cret@127.0.0.1:5/db",
            "--database-pool",
            "3",
        ])
        .unwrap()
        .server_config()
        .unwrap();
        let Database::Postgres(url) = &config.database else {
            panic!("{:?}", config.database)
        };
        assert_eq!(
            (url.to_string().as_str(), url.pool_size),
            ("postgres://u@127.0.0.1:5/db", 3)
        );
        assert!(!format!("{config:?}").contains("s3cret"));
        // Global, like --data-dir: the admin views take it after the subcommand.
        let cli = parse(&["files", "--database", "postgresql://h/db"]).unwrap();
        assert!(matches!(cli.database_choice(), Database::Postgres(_)));
        assert!(parse(&["--database", "sqlite:defensive.db"]).is_err());
        assert!(parse(&["--database-pool", "0"]).is_err());
    }

    #[test]
    fn store_flag() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path().to_str().unwrap();
        let parse = |args: &[&str]| {
            let mut all = vec!["sfc-server", "--data-dir", d, "--port", "1"];
            all.extend_from_slice(args);
            Cli::try_parse_from(all)
        };
        let store = |args: &[&str]| parse(args).unwrap().server_config().unwrap().store;
        if std::env::var_os("SFC_STORE").is_none() {
            assert_eq!(store(&[]), Store::DataDir);
        }
        assert_eq!(
            store(&["--store", "file:///srv/sfc"]),
            Store::Folder("/srv/sfc".into())
        );
        let Store::S3(location) = store(&["--store", "s3://my-bucket/sfc/files/"]) else {
            panic!()
        };
        assert_eq!(
            (location.bucket.as_str(), location.prefix.as_str()),
            ("my-bucket", "sfc/files")
        );
        let Store::S3(location) = store(&["--store", "s3://my-bucket"]) else {
            panic!()
        };
        assert_eq!(location.prefix, "");
        let longest = format!(
            "s3://bucket/{}",
            "p".repeat(crate::config::MAX_S3_PREFIX_LEN)
        );
        assert!(parse(&["--store", &longest]).is_ok());
        let too_long = format!("{longest}q");
        for bad in [
            too_long.as_str(),
            "s3://",
            "s3://UPPER",
            "s3://b/../x",
            "s3://bucket/a//b",
            "file://",
            "/srv/sfc",
            "gs://bucket",
        ] {
            assert!(parse(&["--store", bad]).is_err(), "{bad}");
        }
        // Global: the admin views take it after the subcommand.
        assert!(parse(&["files", "--store", "s3://bucket/p"]).is_ok());
    }

    #[test]
    fn tls_and_rate_limit_flags() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path().to_str().unwrap();
        let config = Cli::try_parse_from(["sfc-server", "--data-dir", d, "--port", "1"])
            .unwrap()
            .server_config()
            .unwrap();
        assert_eq!(config.tls, None, "plain TCP by default");
        assert_eq!(
            config.register_limit,
            RateLimit::new(DEFAULT_REGISTER_RATE, DEFAULT_REGISTER_BURST)
        );
        assert_eq!(
            config.failure_limit,
            RateLimit::new(DEFAULT_FAIL_RATE, DEFAULT_FAIL_BURST)
        );
        let config = Cli::try_parse_from([
            "sfc-server",
            "--data-dir",
            d,
            "--port",
            "1",
            "--tls-cert",
            "c.pem",
            "--tls-key",
            "k.pem",
            "--register-rate",
            "5",
            "--register-burst",
            "7",
            "--fail-rate",
            "0",
        ])
        .unwrap()
        .server_config()
        .unwrap();
        assert_eq!(
            config.tls,
            Some(TlsFiles {
                cert: "c.pem".into(),
                key: "k.pem".into()
            })
        );
        assert_eq!(config.register_limit, RateLimit::new(5, 7));
        assert!(config.failure_limit.is_unlimited());
        assert!(!config.pin_address);
        assert!(Cli::try_parse_from(["sfc-server", "--tls-cert", "c.pem"]).is_err());
        assert!(Cli::try_parse_from(["sfc-server", "--tls-key", "k.pem"]).is_err());
        assert!(Cli::try_parse_from(["sfc-server", "--fail-burst", "0"]).is_err());
    }

    #[test]
    fn numeric_options_take_their_maximum_and_refuse_one_more() {
        let parse = |option: &str, value: u64| {
            Cli::try_parse_from(["sfc-server", "--port", "1", option, &value.to_string()])
        };
        let count = |n: usize| n as u64;
        for (option, max) in [
            ("--idle-timeout", MAX_IDLE_TIMEOUT_SECS),
            ("--request-timeout", MAX_REQUEST_TIMEOUT_SECS),
            ("--shutdown-grace", MAX_SHUTDOWN_GRACE_SECS),
            ("--upload-timeout", MAX_UPLOAD_TIMEOUT_SECS),
            ("--store-sweep-interval", MAX_STORE_SWEEP_INTERVAL_SECS),
            ("--max-connections", count(MAX_CONNECTIONS_LIMIT)),
            (
                "--max-connections-per-address",
                count(MAX_CONNECTIONS_LIMIT),
            ),
            ("--upload-buffers", count(MAX_UPLOAD_BUFFERS_MIB)),
            ("--max-uploads", count(MAX_UPLOADS_LIMIT)),
            ("--max-uploads-per-address", count(MAX_UPLOADS_LIMIT)),
            ("--database-pool", count(MAX_DATABASE_POOL)),
        ] {
            let cli = parse(option, max).unwrap_or_else(|e| panic!("{option} {max}: {e}"));
            cli.server_config().unwrap();
            for beyond in [max + 1, u64::MAX] {
                let error = parse(option, beyond).unwrap_err();
                assert_eq!(
                    error.kind(),
                    ErrorKind::ValueValidation,
                    "{option} {beyond}"
                );
                assert_eq!(error.exit_code(), 2);
                let text = error.to_string();
                assert!(text.contains("is not in"), "{text}");
            }
        }
        let config = Cli::try_parse_from([
            "sfc-server",
            "--port",
            "1",
            "--idle-timeout",
            "86400",
            "--request-timeout",
            "86400",
            "--shutdown-grace",
            "3600",
            "--upload-timeout",
            "604800",
            "--upload-buffers",
            "1048576",
        ])
        .unwrap()
        .server_config()
        .unwrap();
        assert_eq!(config.idle_timeout, Duration::from_secs(86_400));
        assert_eq!(config.request_timeout, Duration::from_secs(86_400));
        assert_eq!(config.shutdown_grace, Duration::from_secs(3600));
        assert_eq!(config.upload_timeout, Duration::from_secs(604_800));
        assert_eq!(config.upload_buffers, 1 << 40);
        // The largest time-outs still fit where they are added to the clock.
        let now = std::time::Instant::now();
        for timeout in [
            config.idle_timeout,
            config.request_timeout,
            config.shutdown_grace,
        ] {
            assert!(now.checked_add(timeout).is_some());
        }
        // The smallest: 0 only where it means something.
        assert!(parse("--shutdown-grace", 0).is_ok());
        assert!(parse("--max-connections-per-address", 0).is_ok());
        let uncapped = parse("--max-uploads-per-address", 0).unwrap();
        assert_eq!(uncapped.server_config().unwrap().max_uploads_per_address, 0);
        let start_up_only = parse("--store-sweep-interval", 0).unwrap();
        let config = start_up_only.server_config().unwrap();
        assert_eq!(config.store_sweep_interval, Duration::ZERO);
        let hourly = Cli::try_parse_from(["sfc-server", "--port", "1"]).unwrap();
        let hourly = hourly.server_config().unwrap();
        assert_eq!(hourly.store_sweep_interval, Duration::from_secs(3600));
        assert_eq!(
            parse("--store-sweep-interval", 60)
                .unwrap()
                .server_config()
                .unwrap()
                .store_sweep_interval,
            Duration::from_secs(60)
        );
        // Below a minute, a pass would follow a pass (each lists the bucket).
        let error = parse("--store-sweep-interval", 59).unwrap_err();
        assert_eq!(error.kind(), ErrorKind::ValueValidation);
        assert!(error.to_string().contains("0 or 60..=604800"), "{error}");
        for option in [
            "--idle-timeout",
            "--request-timeout",
            "--upload-timeout",
            "--max-connections",
            "--upload-buffers",
            "--max-uploads",
            "--database-pool",
        ] {
            assert!(parse(option, 0).is_err(), "{option} 0");
        }
    }

    #[test]
    fn an_invalid_database_url_is_refused_without_showing_its_password() {
        for (url, shown, reason) in [
            (
                "postgres://sfc:s3cret@db/sfc?sslmode=require",
                "'postgres://sfc@db/sfc?sslmode=require'",
                "this server does not speak TLS to PostgreSQL",
            ),
            (
                "postgres://sfc:s3cret@db/sfc?sslmode=verify-full",
                "'postgres://sfc@db/sfc?sslmode=verify-full'",
                "invalid value for option `sslmode`",
            ),
            (
                "postgres://sfc:s3cret@db:notaport/sfc",
                "'postgres://sfc@db:…'",
                "invalid value for option `port`",
            ),
            (
                "postgresql://db/sfc?password=s3cret&sslmode=require",
                // Nothing after a password is shown: it may be a piece of it.
                "'postgresql://db/sfc?password=…&…'",
                "sslmode=require",
            ),
            (
                "postgres://sfc:s3cret@db/sfc?passwrd=s3cret",
                "'postgres://sfc@db/sfc?passwrd=…'",
                "unknown option `passwrd`",
            ),
            ("sqlite:s3cret", "'(not shown)'", "takes a postgres:// URL"),
        ] {
            let error = Cli::try_parse_from(["sfc-server", "--database", url]).unwrap_err();
            assert_eq!(error.kind(), ErrorKind::ValueValidation, "{url}");
            assert_eq!(error.exit_code(), 2);
            let text = error.to_string();
            assert!(!text.contains("s3cret"), "{text}");
            assert!(text.contains(shown), "{shown} in {text}");
            assert!(text.contains("'--database <URL>'"), "{text}");
            assert!(text.contains(reason), "{reason} in {text}");
        }
        // A password of digits with its `@host` forgotten reads as a port out of range.
        let error =
            Cli::try_parse_from(["sfc-server", "--database", "postgres://sfc:123456"]).unwrap_err();
        let text = error.to_string();
        assert!(!text.contains("123456"), "{text}");
        assert!(text.contains("'postgres://sfc:…'"), "{text}");
    }

    impl Cli {
        fn command_for_tests() -> clap::Command {
            <Cli as clap::CommandFactory>::command()
        }
    }
}
