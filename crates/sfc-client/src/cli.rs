//! The command line: parsed by clap, each value checked once by its parser (a
//! [`PacketSize`], seconds as a [`Duration`]), then turned into a [`crate::Config`] with
//! transfer.info by [`crate::config`]. Nothing downstream checks a flag again.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::{ArgAction, Args, Parser};

use crate::pin::Fingerprint;
use crate::progress::Verbosity;
use crate::upload::plan::{PacketSize, PacketSizing};

const AFTER_HELP: &str = "\
Files (in --dir, default the current folder):
  transfer.info  line 1 address:port (IPv4, [IPv6] or host name), line 2 user name
                 (1-100 printable ASCII characters), line 3 path of the file to send
                 (relative to --dir). Flags and file arguments override its lines.
  me.info        written as soon as the server has registered the name (1600): name,
                 client ID (32 hex digits), private key (base64). When it exists the
                 client reconnects (827) instead of registering; if the server has
                 forgotten the client (1606) it registers again (the old me.info and
                 priv.key are kept as *.<client id>.bak).
  priv.key       the RSA private key (base64 of PKCS#8 DER), reused on reconnect.
  me.server      the server the identity in me.info belongs to; identities for other
                 servers are kept in servers/<address>/, so one never replaces another.
  me.pending     the client ID of me.info while its key exchange (826 -> 1602) is
                 unfinished (cut by the network or Ctrl-C): the next run sends the
                 public key again (826) instead of reconnecting, then removes it.
  me.info and priv.key are written atomically with owner-only permissions (0600).

A file that fails does not stop the others; a batch ends with a summary (stored, failed,
skipped, with each reason), and --json prints it for scripts. The exit code of a batch
is that of the first file that failed.

Exit codes:
  0  every file was stored and its checksum confirmed
  1  internal error (a bug, local disk not writable, key generation failed)
  2  bad input or usage: transfer.info, flags, me.info/priv.key, a file that cannot be
     read or is too large for the protocol, two files stored under one name (nothing
     is sent); or a file that changed while it was being sent
  3  rejected by the server: name already taken (1601), or 1607 to the same request
     after 3 retries
  4  a file's checksum was still wrong after 3 resends (902 sent)
  5  network failure: connection refused, reset or closed, timed out, host not found;
     with --tls also an untrusted server certificate or a server that does not speak
     TLS (and without --tls a server that speaks only TLS)
  6  protocol error: the server sent a reply this client cannot accept
  130  interrupted (Ctrl-C)

Examples:
  sfc-client                                  # everything from ./transfer.info
  sfc-client --server 127.0.0.1:1256 --name alice report.pdf photo.jpg
  sfc-client -r photos --json > result.json   # a folder, names like photos' own paths
  sfc-client --dir ~/sfc -v big.iso --packet-size 65536
  sfc-client --tls --tls-ca ca.pem --server files.example.org:1256 report.pdf
  sfc-client --tls --tls-fingerprint AB:CD:...:EF report.pdf";

/// Puts files on a SecureFileComm server (protocol version 3): registers (or reconnects),
/// exchanges keys, uploads each file encrypted with AES-256-CBC, and confirms the server's
/// checksum (POSIX cksum). Works with servers that keep the connection open and with those
/// that close it after every reply.
#[derive(Clone, Debug, Parser)]
#[command(name = "sfc-client", version, after_help = AFTER_HELP)]
pub struct Cli {
    /// Files to send, one after another in one session (paths relative to the current
    /// folder) [default: line 3 of transfer.info]
    #[arg(value_name = "FILE")]
    pub files: Vec<PathBuf>,

    /// Server address [default: line 1 of transfer.info]
    #[arg(short, long, value_name = "HOST:PORT")]
    pub server: Option<String>,

    /// User name to register with [default: line 2 of transfer.info]
    #[arg(short, long, value_name = "NAME")]
    pub name: Option<String>,

    /// Send every regular file below each FILE that is a folder, each stored under its
    /// path below that folder (e.g. docs/a.txt); symbolic links are left out unless
    /// --follow-symlinks is given. The client's own files in --dir (me.info, priv.key,
    /// me.server, me.pending, the lock, their backups, servers/) and a key it saved in the
    /// system's temporary folder (sfc-client-NAME-ID.key) are never sent this way
    #[arg(short = 'r', long)]
    pub recursive: bool,

    /// With -r, follow symbolic links to files and folders
    #[arg(long, requires = "recursive")]
    pub follow_symlinks: bool,

    /// Store the (single) file under this name on the server instead of its base name
    #[arg(long = "as", value_name = "NAME")]
    pub stored_as: Option<String>,

    /// Folder holding transfer.info, me.info and priv.key
    #[arg(short, long, value_name = "DIR", default_value = ".")]
    pub dir: PathBuf,

    /// How to talk to the server.
    #[command(flatten)]
    pub options: Options,

    /// Print the result as JSON on standard output: one object per file (name, path,
    /// size, cksum, status stored/failed/skipped, reason, seconds) and then a total;
    /// messages go to standard error
    #[arg(long)]
    pub json: bool,

    /// Print nothing but errors
    #[arg(short, long, conflicts_with = "verbose")]
    pub quiet: bool,

    /// Show each request and reply (code, sizes); twice (-vv) also every file packet
    #[arg(short, long, action = ArgAction::Count)]
    pub verbose: u8,
}

/// The flags that shape the conversation with the server; carried as they are into the
/// [`crate::Config`].
#[derive(Clone, Debug, Args)]
pub struct Options {
    /// Ciphertext bytes per file packet [default: 2048, raised only as far as a file needs
    /// to fit in 65,535 packets]
    #[arg(long, value_name = "BYTES")]
    pub packet_size: Option<PacketSize>,

    /// Seconds allowed to establish a connection
    #[arg(long, value_name = "SECONDS", value_parser = parse_seconds, default_value = "10")]
    pub connect_timeout: Duration,

    /// Seconds allowed for each request to be taken and each whole reply to arrive; a request
    /// of 64 KiB or more (a large file packet, or a batch of packets streamed on one
    /// connection) has as much again per whole 64 KiB in it, each write still making
    /// progress within this
    #[arg(long = "timeout", value_name = "SECONDS", value_parser = parse_seconds,
          default_value = "60")]
    pub io_timeout: Duration,

    /// Open a new connection for every request and expect a reply to each, as the original
    /// client does (normally detected: the client switches by itself when the server closes
    /// the connection after a reply)
    #[arg(long = "connection-per-request")]
    pub per_request: bool,

    /// Send each file packet with its own write and wait MS milliseconds after it, for
    /// servers that read each field with a single recv() and lose track on a short read
    /// (see the README). Unless --packet-size is given, packets then carry 1024 bytes, so
    /// that each fits one TCP segment (raised only as far as a file needs to fit in 65,535
    /// packets)
    #[arg(long, value_name = "MS", value_parser = parse_pace)]
    pub pace: Option<Duration>,

    /// Speak TLS to the server (opt-in: servers run with --tls-cert/--tls-key), verifying
    /// its certificate against --tls-ca or the system's trusted roots and the host of
    /// --server. Plain TCP without it, as every other implementation speaks
    #[arg(long)]
    pub tls: bool,

    /// Trust only the certificates in this PEM file for --tls (instead of the system's
    /// roots): as CAs, and each as itself, so a server's self-signed certificate can be
    /// given here (pinning)
    #[arg(long, value_name = "FILE", requires = "tls")]
    pub tls_ca: Option<PathBuf>,

    /// Accept the server certificate with this SHA-256 fingerprint (hex as `openssl x509
    /// -noout -fingerprint -sha256` prints it, or SHA256:base64); may be repeated
    #[arg(long, value_name = "SHA256", requires = "tls", value_parser = Fingerprint::parse)]
    pub tls_fingerprint: Vec<Fingerprint>,
}

impl Cli {
    /// The command line `sfc-client --dir DIR` (no other flags): for tests and library
    /// users who then set fields.
    pub fn in_dir(dir: impl AsRef<Path>) -> Cli {
        let args: [OsString; 3] = [
            "sfc-client".into(),
            "--dir".into(),
            dir.as_ref().as_os_str().to_owned(),
        ];
        Cli::parse_from(args)
    }

    /// How much to say, from `--quiet` and `-v`.
    pub fn verbosity(&self) -> Verbosity {
        match (self.quiet, self.verbose) {
            (true, _) => Verbosity::Quiet,
            (false, 0) => Verbosity::Normal,
            (false, 1) => Verbosity::Verbose,
            (false, _) => Verbosity::Trace,
        }
    }
}

/// Packet content with `--pace` when `--packet-size` is not given: a packet (290 bytes of
/// prefix and this) fits one TCP segment on an Ethernet path (1,460 bytes).
pub const PACED_PACKET_CONTENT: usize = 1024;

impl Options {
    /// How packets are sized: exactly `--packet-size`; else a default raised as far as a
    /// file needs (rule C2), with `--pace` packets that fit one TCP segment if the file
    /// allows.
    pub fn packet_sizing(&self) -> PacketSizing {
        match (self.packet_size, self.pace) {
            (Some(size), _) => PacketSizing::Exactly(size),
            (None, Some(_)) => PacketSize::new(PACED_PACKET_CONTENT)
                .map_or_else(|_| PacketSizing::default(), PacketSizing::AtLeast),
            (None, None) => PacketSizing::default(),
        }
    }
}

fn parse_pace(text: &str) -> Result<Duration, String> {
    let ms: u64 = text
        .trim()
        .parse()
        .map_err(|_| format!("{text:?} is not a whole number of milliseconds"))?;
    if ms > 10_000 {
        return Err("must be at most 10000 milliseconds".to_owned());
    }
    Ok(Duration::from_millis(ms))
}

fn parse_seconds(text: &str) -> Result<Duration, String> {
    let secs: f64 = text
        .trim()
        .parse()
        .map_err(|_| format!("{text:?} is not a number of seconds"))?;
    // From a millisecond: a smaller value would round to no time at all.
    if !(secs.is_finite() && (0.001..=86_400.0).contains(&secs)) {
        return Err("must be at least 0.001 and at most 86400 seconds".to_owned());
    }
    Ok(Duration::from_secs_f64(secs))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_and_checked_values() {
        let cli = Cli::in_dir("x");
        assert_eq!(cli.options.connect_timeout, Duration::from_secs(10));
        assert_eq!(cli.options.io_timeout, Duration::from_secs(60));
        assert_eq!(cli.verbosity(), Verbosity::Normal);
        let cli =
            Cli::try_parse_from(["c", "--timeout", "0.5", "--packet-size", "64", "-vv"]).unwrap();
        assert_eq!(cli.options.io_timeout, Duration::from_millis(500));
        assert_eq!(cli.options.packet_size.map(PacketSize::get), Some(64));
        assert_eq!(cli.verbosity(), Verbosity::Trace);
        for bad in [
            &["c", "--packet-size", "0"][..],
            &["c", "--timeout", "0"],
            &["c", "--timeout", "nan"],
            &["c", "--timeout", "1e-10"],
            &["c", "--connect-timeout", "0.0009"],
            &["c", "--tls-ca", "ca.pem"],
        ] {
            assert!(Cli::try_parse_from(bad).is_err(), "{bad:?}");
        }
    }
}
