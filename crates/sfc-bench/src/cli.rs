//! The command line: the scenario to run and the options every scenario shares.

use clap::{Parser, Subcommand};
use std::path::PathBuf;

/// Benchmarks of SecureFileComm against openssl, dd and cksum on this machine.
#[derive(Debug, Parser)]
#[command(name = "sfc-bench", version)]
pub struct Cli {
    #[command(subcommand)]
    pub scenario: Scenario,
    /// Measured runs per scenario (the upload scenarios add one warm-up run).
    #[arg(long, global = true, default_value_t = 3)]
    pub runs: usize,
    /// Size of the upload and micro-benchmark file, bytes (K, M, G suffixes: powers of 2).
    #[arg(long, global = true, default_value = "1G", value_parser = parse_size)]
    pub size: u64,
    /// `--packet-size` passed to sfc-client in (a) and (b) (default: the client's own).
    #[arg(long, global = true)]
    pub packet_size: Option<usize>,
    /// tmpfs folder for the source file and the (a) data folder.
    #[arg(long, global = true, default_value = "/dev/shm")]
    pub shm: PathBuf,
    /// Folder on disk for the (b) data folder [default: the system temp folder].
    #[arg(long, global = true)]
    pub disk_dir: Option<PathBuf>,
    /// Concurrent clients in (d).
    #[arg(long, global = true, default_value_t = 1000)]
    pub clients: usize,
    /// File size per client in (d), bytes.
    #[arg(long, global = true, default_value_t = 100_000)]
    pub flow_file_size: usize,
    /// Content bytes per 828 packet in (d) (2048: the protocol's compatible default).
    #[arg(long, global = true, default_value_t = 2048)]
    pub flow_packet_size: usize,
    /// Also run (d) with the server's data folder on disk (always done by `all`).
    #[arg(long, global = true)]
    pub flows_on_disk: bool,
    /// Nodes behind HAProxy in (h).
    #[arg(long, global = true, default_value_t = 3)]
    pub nodes: usize,
    /// The haproxy program for (h).
    #[arg(long, global = true, default_value = "haproxy")]
    pub haproxy: PathBuf,
    /// HAProxy configuration for (h) (its bind and server lines are replaced)
    /// [default: the repository's docs/deploy/haproxy.cfg].
    #[arg(long, global = true)]
    pub haproxy_config: Option<PathBuf>,
    /// PostgreSQL URL for the server in (d) and the nodes of (h), which share it
    /// (postgres://…; each run's client names are new) [default: SQLite].
    #[arg(long, global = true)]
    pub database: Option<String>,
    /// Idle connections in (e).
    #[arg(long, global = true, default_value_t = 10_000)]
    pub idle_connections: usize,
    /// Seconds per `openssl speed` measurement.
    #[arg(long, global = true, default_value_t = 2)]
    pub openssl_seconds: u32,
    /// SeaweedFS's `weed` for the s3 scenario [default: $SFC_WEED, PATH, .venv/bin/weed].
    #[arg(long, global = true)]
    pub weed: Option<PathBuf>,
    /// Folder with sfc-server and sfc-client [default: beside this executable].
    #[arg(long, global = true)]
    pub bin_dir: Option<PathBuf>,
    /// Do not build the binaries first (only done when started by `cargo run`).
    #[arg(long, global = true)]
    pub no_build: bool,
    /// Also write the raw figures as JSON to this file.
    #[arg(long, global = true)]
    pub json: Option<PathBuf>,
    /// Start every server with its admin HTTP listener on, and use it once.
    ///
    /// The servers of tmpfs, disk, s3, flows, idle and compare (not the nodes of
    /// balanced) get `--admin-listen 127.0.0.1:0 --admin-token-file FILE` (FILE in this
    /// run's tmpfs folder, created by the first server). After start-up and the idle RSS
    /// reading, each server is asked for /healthz and /metrics (with the token); both must
    /// answer 200.
    /// The report (machine section, notes, --json) says the listener was on, with the
    /// server's RSS before and after those requests.
    #[arg(long, global = true)]
    pub admin: bool,
    /// Count the system calls of one extra upload in tmpfs and disk (needs strace).
    ///
    /// After the measured runs, one unmeasured upload with `strace -f -c -p SERVER_PID`
    /// attached to the server (detached with SIGINT afterwards) and the client started
    /// under `strace -f -c`; the report gives each side's calls per GiB of file, in total
    /// and for the most frequent syscalls. Without strace this is skipped with a note.
    #[arg(long, global = true)]
    pub syscalls: bool,
    /// The other build for `compare`: a folder with its sfc-server and sfc-client.
    #[arg(long, global = true)]
    pub against: Option<PathBuf>,
    /// Rounds of `compare` (each build runs (a) once per round, --runs uploads).
    #[arg(long, global = true, default_value_t = 6)]
    pub rounds: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Subcommand)]
pub enum Scenario {
    /// (a)+(c): 1 GiB upload, data folder on tmpfs, vs openssl AES-256-CBC encryption; RSS.
    Tmpfs,
    /// (b): 1 GiB upload, data folder on disk (fsync before 1603), vs dd conv=fsync.
    Disk,
    /// (d): concurrent clients doing the whole flow.
    Flows,
    /// (e): idle connections held open, and a normal client meanwhile.
    Idle,
    /// (f): AES decryption and cksum vs openssl speed -decrypt and cksum.
    Micro,
    /// (g): the (a) upload with the files in S3 (SeaweedFS here, its data on tmpfs),
    /// beside (a) in the same run. Not part of `all`.
    S3,
    /// (h): the flows of (d) through HAProxy (docs/deploy/haproxy.cfg) to --nodes nodes.
    /// Not part of `all`.
    Balanced,
    /// What the kernel and the ciphers alone cost per GiB here, done as the programs do
    /// them (tmpfs read and write, loopback TCP, AES, CRC): the floors of (a)'s CPU.
    Floors,
    /// Two builds alternately: --bin-dir (or the build beside sfc-bench) and --against,
    /// --rounds rounds of (a) each; server and client CPU per upload pooled per build.
    /// Not part of `all`.
    Compare,
    /// Everything above but s3, balanced and compare.
    All,
}

/// `--size`: bytes, or K, M, G (powers of 2).
fn parse_size(text: &str) -> Result<u64, String> {
    let text = text.trim();
    let (digits, factor) = match text.chars().last() {
        Some('K' | 'k') => (&text[..text.len() - 1], 1u64 << 10),
        Some('M' | 'm') => (&text[..text.len() - 1], 1 << 20),
        Some('G' | 'g') => (&text[..text.len() - 1], 1 << 30),
        _ => (text, 1),
    };
    digits
        .parse::<u64>()
        .map(|n| n * factor)
        .map_err(|_| format!("{text:?} is not a size"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn the_command_line_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn sizes_take_binary_suffixes() {
        assert_eq!(parse_size("1G"), Ok(1 << 30));
        assert_eq!(parse_size("64m"), Ok(64 << 20));
        assert_eq!(parse_size(" 4K "), Ok(4096));
        assert_eq!(parse_size("1000"), Ok(1000));
        assert!(parse_size("12X").is_err());
        assert!(parse_size("G").is_err());
    }

    #[test]
    fn options_are_global_and_parsed_once() {
        let cli =
            Cli::try_parse_from(["sfc-bench", "flows", "--clients", "7", "--size", "2M"]).unwrap();
        assert_eq!(cli.scenario, Scenario::Flows);
        assert_eq!((cli.clients, cli.size, cli.runs), (7, 2 << 20, 3));
        assert!(!cli.admin && !cli.syscalls);
        let cli = Cli::try_parse_from(["sfc-bench", "--admin", "tmpfs", "--syscalls"]).unwrap();
        assert!(cli.admin && cli.syscalls);
    }

    #[test]
    fn compare_takes_the_other_build_and_its_rounds() {
        let cli =
            Cli::try_parse_from(["sfc-bench", "compare", "--against", "/builds/old"]).unwrap();
        assert_eq!(cli.scenario, Scenario::Compare);
        assert_eq!(cli.against, Some(PathBuf::from("/builds/old")));
        assert_eq!((cli.rounds, cli.runs), (6, 3));
        let cli = Cli::try_parse_from(["sfc-bench", "--rounds", "8", "compare"]).unwrap();
        assert_eq!((cli.rounds, cli.against), (8, None));
    }
}
