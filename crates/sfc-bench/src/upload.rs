//! Scenarios (a)+(c) and (b): one large upload with the real `sfc-client` to the real
//! `sfc-server`, timed from the client's start to its exit (after the confirming 1604),
//! with a reference measured between the runs.

use crate::procs::{
    cpu_secs, reset_hwm, run_client, status_kb, Bins, ClientThreads, RssSampler, Server,
};
use crate::reference;
use crate::report::{filesystem_of, remove_stored_files, MB};
use anyhow::{bail, Result};
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
    /// Where the data folder was.
    pub filesystem: String,
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
    let (args, env) = match cfg.store {
        Some((store, env)) => (vec!["--store".to_string(), store.to_string()], env),
        None => (Vec::new(), &[][..]),
    };
    let mut server = Server::start_with_env(&cfg.bins.server, &data, &args, env)?;
    std::thread::sleep(Duration::from_millis(500));
    let mut result = UploadResult {
        server_idle_kb: server.rss_kb()?,
        filesystem: filesystem_of(&data),
        ..UploadResult::default()
    };
    let timeout = Duration::from_secs(300);
    for run in 0..=cfg.runs {
        let warm_up = run == 0;
        if !warm_up {
            result
                .openssl
                .push(reference::openssl_aes(false, cfg.openssl_seconds)?);
            result
                .openssl_cpu
                .push(reference::openssl_aes_cpu(cfg.openssl_seconds)?);
            if cfg.disk {
                result.dd.push(reference::dd_fsync(cfg.work, cfg.size)?);
            }
        }
        remove_stored_files(&data);
        if cfg.disk {
            reference::sync();
        }
        let hwm_reset = reset_hwm(server.pid);
        let sampler = RssSampler::start(vec![server.pid]);
        let me = std::process::id();
        let cpu_before = (cpu_secs(server.pid, false), cpu_secs(me, true));
        let client_dir = cfg.work.join(format!("client-{run}"));
        let outcome = run_client(
            &cfg.bins.client,
            &client_dir,
            server.addr,
            &format!("bench-upload-{run}"),
            cfg.source,
            cfg.packet_size,
            timeout,
        );
        let cpu_after = (cpu_secs(server.pid, false), cpu_secs(me, true));
        let sampled = sampler.finish().first().copied().unwrap_or(0);
        let _ = std::fs::remove_dir_all(&client_dir);
        let server_cpu = cpu_after.0.zip(cpu_before.0).map_or(0.0, |(a, b)| a - b);
        let client_cpu = cpu_after.1.zip(cpu_before.1).map_or(0.0, |(a, b)| a - b);
        let outcome = outcome?;
        server.check_alive()?;
        if !outcome.status.success() {
            bail!(
                "sfc-client failed ({}):\n{}\nserver log:\n{}",
                outcome.status,
                outcome.stderr.trim(),
                server.tail(10)
            );
        }
        let stored = match cfg.store {
            Some((store, env)) => stored_size_in(&cfg.bins.server, &data, store, env)?,
            None => stored_size(&data),
        };
        match stored {
            Some(size) if size == cfg.size => {}
            other => bail!("the server stored {other:?} bytes, expected {}", cfg.size),
        }
        let hwm = if hwm_reset {
            status_kb(server.pid, "VmHWM").unwrap_or(0)
        } else {
            0
        };
        let rate = cfg.size as f64 / outcome.wall.as_secs_f64() / MB;
        let threads = outcome.threads;
        eprintln!(
            "    {} {:.3} s = {rate:.0} MB/s; CPU s: client {client_cpu:.2} (main/encrypting {:.2}, reader {:.2}, writer {:.2}), server {server_cpu:.2}; peak RSS kB: client {}, server {}",
            if warm_up {
                "warm-up:".to_string()
            } else {
                format!("run {run}:")
            },
            outcome.wall.as_secs_f64(),
            threads.main,
            threads.reader,
            threads.writer,
            outcome.peak_rss_kb,
            sampled.max(hwm)
        );
        if warm_up {
            continue;
        }
        result.mbps.push(rate);
        result.server_cpu.push(server_cpu);
        result.client_cpu.push(client_cpu);
        result.server_peak_kb.push(sampled.max(hwm));
        result.client_peak_kb.push(outcome.peak_rss_kb);
        result.client_threads.push(threads);
    }
    remove_stored_files(&data);
    server.stop()?;
    let _ = std::fs::remove_dir_all(&data);
    if cfg.disk {
        reference::sync();
    }
    Ok(result)
}
