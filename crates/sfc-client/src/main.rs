//! `sfc-client`: the command line over the `sfc_client` library.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{ArgAction, Parser};
use sfc_client::config::{DEFAULT_CONNECT_TIMEOUT, DEFAULT_IO_TIMEOUT};
use sfc_client::upload::MAX_REQUESTED_PACKET_CONTENT;
use sfc_client::{exit, run, Config, Overrides, Reporter, Verbosity};

const AFTER_HELP: &str = "\
Files (in --dir, default the current folder):
  transfer.info  line 1 address:port (IPv4, [IPv6] or host name), line 2 user name
                 (1-100 printable ASCII characters), line 3 path of the file to send
                 (relative to --dir). Flags and file arguments override its lines.
  me.info        written after registering: name, client ID (32 hex digits), private key
                 (base64). When it exists the client reconnects (827) instead of
                 registering; if the server has forgotten the client (1606) it registers
                 again and rewrites me.info.
  priv.key       the RSA private key (base64 of PKCS#8 DER), reused on reconnect.
  me.info and priv.key are written atomically with owner-only permissions (0600).

Exit codes:
  0  every file was stored and its checksum confirmed
  1  internal error (a bug, local disk not writable, key generation failed)
  2  bad input or usage: transfer.info, flags, me.info/priv.key, a file that cannot be
     read or is too large for the protocol (nothing is sent)
  3  rejected by the server: name already taken (1601), or 1607 to the same request
     after 3 retries
  4  a file's checksum was still wrong after 3 resends (902 sent)
  5  network failure: connection refused, reset, timed out, host not found; with --tls
     also an untrusted server certificate or a server that does not speak TLS (and
     without --tls a server that speaks only TLS)
  6  protocol error: the server sent a reply this client cannot accept

Examples:
  sfc-client                                  # everything from ./transfer.info
  sfc-client --server 127.0.0.1:1256 --name alice report.pdf photo.jpg
  sfc-client --dir ~/sfc -v big.iso --packet-size 65536
  sfc-client --tls --tls-ca ca.pem --server files.example.org:1256 report.pdf";

/// Puts files on a SecureFileComm server (protocol version 3): registers (or reconnects),
/// exchanges keys, uploads each file encrypted with AES-256-CBC, and confirms the server's
/// checksum (POSIX cksum). Works with servers that keep the connection open and with those
/// that close it after every reply.
#[derive(Debug, Parser)]
#[command(name = "sfc-client", version, after_help = AFTER_HELP)]
struct Cli {
    /// Files to send, one after another in one session (paths relative to the current
    /// folder) [default: line 3 of transfer.info]
    #[arg(value_name = "FILE")]
    files: Vec<PathBuf>,

    /// Server address [default: line 1 of transfer.info]
    #[arg(short, long, value_name = "HOST:PORT")]
    server: Option<String>,

    /// User name to register with [default: line 2 of transfer.info]
    #[arg(short, long, value_name = "NAME")]
    name: Option<String>,

    /// Folder holding transfer.info, me.info and priv.key
    #[arg(short, long, value_name = "DIR", default_value = ".")]
    dir: PathBuf,

    /// Ciphertext bytes per file packet [default: 2048, raised only as far as a file needs
    /// to fit in 65,535 packets]
    #[arg(long, value_name = "BYTES", value_parser = parse_packet_size)]
    packet_size: Option<usize>,

    /// Seconds allowed to establish a connection
    #[arg(long, value_name = "SECONDS", value_parser = parse_seconds,
          default_value_t = DEFAULT_CONNECT_TIMEOUT.as_secs_f64())]
    connect_timeout: f64,

    /// Seconds allowed for each read or write on the connection
    #[arg(long, value_name = "SECONDS", value_parser = parse_seconds,
          default_value_t = DEFAULT_IO_TIMEOUT.as_secs_f64())]
    timeout: f64,

    /// Open a new connection for every request and expect a reply to each, as the original
    /// client does (normally detected: the client switches by itself when the server closes
    /// the connection after a reply)
    #[arg(long)]
    connection_per_request: bool,

    /// Speak TLS to the server (opt-in: servers run with --tls-cert/--tls-key), verifying
    /// its certificate against --tls-ca or the system's trusted roots and the host of
    /// --server. Plain TCP without it, as every other implementation speaks
    #[arg(long)]
    tls: bool,

    /// Trust only the CA certificate(s) in this PEM file for --tls (instead of the
    /// system's roots)
    #[arg(long, value_name = "FILE", requires = "tls")]
    tls_ca: Option<PathBuf>,

    /// Print nothing but errors
    #[arg(short, long, conflicts_with = "verbose")]
    quiet: bool,

    /// Show each request and reply (code, sizes); twice (-vv) also every file packet
    #[arg(short, long, action = ArgAction::Count)]
    verbose: u8,
}

fn parse_seconds(text: &str) -> Result<f64, String> {
    let secs: f64 = text
        .trim()
        .parse()
        .map_err(|_| format!("{text:?} is not a number of seconds"))?;
    if !(secs.is_finite() && secs > 0.0 && secs <= 86_400.0) {
        return Err("must be more than 0 and at most 86400 seconds".to_owned());
    }
    Ok(secs)
}

fn parse_packet_size(text: &str) -> Result<usize, String> {
    let size: usize = text
        .trim()
        .parse()
        .map_err(|_| format!("{text:?} is not a number of bytes"))?;
    if size == 0 || size > MAX_REQUESTED_PACKET_CONTENT {
        return Err(format!(
            "must be from 1 to {MAX_REQUESTED_PACKET_CONTENT} bytes"
        ));
    }
    Ok(size)
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let verbosity = match (cli.quiet, cli.verbose) {
        (true, _) => Verbosity::Quiet,
        (false, 0) => Verbosity::Normal,
        (false, 1) => Verbosity::Verbose,
        (false, _) => Verbosity::Trace,
    };
    let reporter = Reporter::new(verbosity, true);
    let overrides = Overrides {
        server: cli.server,
        name: cli.name,
        dir: cli.dir,
        files: cli.files,
        packet_size: cli.packet_size,
        connect_timeout: Duration::from_secs_f64(cli.connect_timeout),
        io_timeout: Duration::from_secs_f64(cli.timeout),
        per_request: cli.connection_per_request,
        tls: cli.tls.then(|| sfc_client::tls::TlsOptions {
            ca_file: cli.tls_ca.clone(),
        }),
    };
    let result = Config::load(&overrides)
        .map_err(sfc_client::ClientError::from)
        .and_then(|config| run(&config, &reporter));
    match result {
        Ok(summary) => {
            if summary.stored.len() > 1 {
                reporter.info(format!("all {} files stored", summary.stored.len()));
            }
            ExitCode::from(exit::OK)
        }
        Err(e) => {
            let text = e.to_string();
            if text.starts_with("fatal:") {
                reporter.error(text);
            } else {
                reporter.error(format!("error: {text}"));
            }
            ExitCode::from(e.exit_code())
        }
    }
}
