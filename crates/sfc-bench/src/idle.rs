//! Scenario (e): many idle connections held open (connected, nothing sent), the server's
//! RSS with them, and a normal `sfc-client` upload served meanwhile.

use crate::admin::{self, AdminCheck};
use crate::context::RunContext;
use crate::procs::{fd_count, run_client, Bins, Server};
use crate::report::{connect_from, loopback_source, make_file, mib, Row};
use anyhow::{bail, Result};
use serde_json::json;
use std::io::Read;
use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

/// What to run.
#[derive(Debug)]
pub struct IdleConfig<'a> {
    /// The binaries.
    pub bins: &'a Bins,
    /// Folder for the server's data folder, the client folder and its file.
    pub work: &'a Path,
    /// Idle connections wanted.
    pub connections: usize,
    /// Size of the normal client's file.
    pub file_size: u64,
    /// `--admin`: the admin listener on, its token in this file.
    pub admin: Option<&'a Path>,
}

/// Figures of one run.
#[derive(Debug, Default)]
pub struct IdleResult {
    /// Open-file limit of this process (soft, hard) after raising it.
    pub own_nofile: (u64, u64),
    /// What the server reported as its open-file limit.
    pub server_nofile: Option<u64>,
    /// Connections opened and accepted by the server.
    pub held: usize,
    /// Connect failures.
    pub failed: usize,
    /// Seconds to open them.
    pub open_secs: f64,
    /// Server RSS before, kB.
    pub server_idle_kb: u64,
    /// Server RSS with the connections open, kB.
    pub server_rss_kb: u64,
    /// The normal client's wall time, seconds.
    pub client_secs: f64,
    /// Idle connections still open after the normal client finished.
    pub still_open: usize,
    /// Server options used (without the admin listener's).
    pub server_args: Vec<String>,
    /// `--admin`: what the admin listener answered after start-up.
    pub admin: Option<AdminCheck>,
}

/// Raises this process's open-file limit as far as the system allows (soft to hard; as
/// root also the hard limit, up to fs.nr_open). Children (the server) inherit it.
pub fn raise_nofile(wanted: u64) -> (u64, u64) {
    use rlimit::Resource;
    let nr_open: u64 = std::fs::read_to_string("/proc/sys/fs/nr_open")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(wanted);
    if let Ok((_, hard)) = Resource::NOFILE.get() {
        let target = wanted.min(nr_open).max(hard);
        if Resource::NOFILE.set(target, target).is_err() {
            let _ = Resource::NOFILE.set(hard, hard);
        }
    }
    Resource::NOFILE.get().unwrap_or((0, 0))
}

/// Runs the scenario.
pub fn run(cfg: &IdleConfig<'_>) -> Result<IdleResult> {
    let wanted = cfg.connections as u64 + 1024;
    let own_nofile = raise_nofile(wanted);
    let data = cfg.work.join("server");
    let _ = std::fs::remove_dir_all(&data);
    let server_args = server_args(cfg)?;
    let mut args = server_args.clone();
    args.extend(cfg.admin.map(admin::server_args).unwrap_or_default());
    let mut server = Server::start(&cfg.bins.server, &data, &args)?;
    std::thread::sleep(Duration::from_millis(300));
    let mut result = IdleResult {
        own_nofile,
        server_nofile: server.nofile_limit(),
        server_idle_kb: server.rss_kb()?,
        server_args,
        ..IdleResult::default()
    };
    if let Some(token_file) = cfg.admin {
        result.admin = Some(admin::exercise(&server, token_file)?);
        // The server closes the admin connections before the descriptors are counted.
        std::thread::sleep(Duration::from_millis(300));
    }
    let fds_before = fd_count(server.pid).unwrap_or(0);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let started = Instant::now();
    let (streams, failed) = open_connections(&runtime, server.addr, cfg.connections);
    result.failed = failed;
    result.held = wait_until_accepted(&server, fds_before, streams.len());
    result.open_secs = started.elapsed().as_secs_f64();
    std::thread::sleep(Duration::from_millis(500));
    result.server_rss_kb = server.rss_kb()?;
    eprintln!(
        "    {} idle connections held ({} failed) in {:.1} s; server RSS {} kB (idle {} kB)",
        result.held, result.failed, result.open_secs, result.server_rss_kb, result.server_idle_kb
    );

    result.client_secs = normal_client(cfg, &mut server, result.held)?;
    result.still_open = count_still_open(&streams);
    drop(streams);
    runtime.shutdown_timeout(Duration::from_secs(2));
    server.stop()?;
    let _ = std::fs::remove_dir_all(&data);
    Ok(result)
}

/// The server's options: its defaults unless the connections need a larger limit.
fn server_args(cfg: &IdleConfig<'_>) -> Result<Vec<String>> {
    // The server's defaults (--max-connections 16,384) hold 10,000 idle connections and
    // serve a normal client beside them; only a larger count needs a larger limit, or
    // the normal client would wait in the listen backlog.
    let default_max = cfg.bins.server_default("--max-connections")?;
    Ok(if (cfg.connections + 100) as u64 > default_max {
        vec![
            "--max-connections".to_string(),
            (cfg.connections + 100).to_string(),
        ]
    } else {
        Vec::new()
    })
}

/// Opens `wanted` connections to `addr`, each from its own loopback address: the open
/// ones (as std streams) and the number of failures.
fn open_connections(
    runtime: &tokio::runtime::Runtime,
    addr: SocketAddr,
    wanted: usize,
) -> (Vec<std::net::TcpStream>, usize) {
    runtime.block_on(async move {
        let mut streams = Vec::with_capacity(wanted);
        let mut failed = 0;
        // In waves, so the listen backlog never overflows.
        let mut left = wanted;
        while left > 0 {
            let wave = left.min(500);
            let first = wanted - left;
            let connects: Vec<_> = (first..first + wave)
                .map(|i| {
                    tokio::spawn(tokio::time::timeout(
                        Duration::from_secs(10),
                        connect_from(loopback_source(2, i), addr),
                    ))
                })
                .collect();
            for connect in connects {
                match connect.await {
                    // Held as std streams (non-blocking), outside the runtime.
                    Ok(Ok(Ok(stream))) => match stream.into_std() {
                        Ok(stream) => streams.push(stream),
                        Err(_) => failed += 1,
                    },
                    _ => failed += 1,
                }
            }
            left -= wave;
        }
        (streams, failed)
    })
}

/// Waits (up to 20 s) until the server has accepted `opened` connections, judged by its
/// descriptor count; returns how many it holds.
fn wait_until_accepted(server: &Server, fds_before: usize, opened: usize) -> usize {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let accepted = fd_count(server.pid).unwrap_or(0).saturating_sub(fds_before);
        let held = accepted.min(opened);
        if accepted >= opened || Instant::now() > deadline {
            return held;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A normal sfc-client upload while `held` idle connections are open: its wall time, s.
fn normal_client(cfg: &IdleConfig<'_>, server: &mut Server, held: usize) -> Result<f64> {
    let file = cfg.work.join("normal.bin");
    make_file(&file, cfg.file_size, 42)?;
    let client_dir = cfg.work.join("client");
    let run = run_client(
        &cfg.bins.client,
        &client_dir,
        server.addr,
        "bench-normal",
        &file,
        None,
        Duration::from_secs(60),
    );
    let _ = std::fs::remove_dir_all(&client_dir);
    let _ = std::fs::remove_file(&file);
    let run = run?;
    server.check_alive()?;
    if !run.status.success() {
        bail!(
            "the normal client failed ({}) with {} idle connections open:\n{}\nserver log:\n{}",
            run.status,
            held,
            run.stderr.trim(),
            server.tail(10)
        );
    }
    Ok(run.wall.as_secs_f64())
}

/// Idle connections still open: a closed one reads EOF, an open one has nothing to read.
fn count_still_open(streams: &[std::net::TcpStream]) -> usize {
    streams
        .iter()
        .filter(|s| {
            let mut byte = [0u8; 1];
            let mut stream: &std::net::TcpStream = s;
            matches!(stream.read(&mut byte), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock)
        })
        .count()
}

/// Scenario (e): `--idle-connections` idle connections held, and a normal client meanwhile.
pub fn run_idle(ctx: &mut RunContext) -> Result<()> {
    eprintln!("(e) {} idle connections ...", ctx.cli.idle_connections);
    let work = ctx.shm.join("idle");
    let token_file = ctx.admin_token_file();
    let result = self::run(&IdleConfig {
        bins: &ctx.bins,
        work: &work,
        connections: ctx.cli.idle_connections,
        file_size: 100_000,
        admin: token_file.as_deref(),
    });
    let _ = std::fs::remove_dir_all(&work);
    let result = result?;
    // Per connection: above the RSS just before they were opened (with --admin, after
    // the admin requests, whose cost the admin note gives).
    let before = result
        .admin
        .map_or(result.server_idle_kb, |c| c.rss_after_kb);
    ctx.rows.push(Row {
        id: "e".into(),
        what: format!("server RSS with {} idle connections held", result.held),
        ours: format!(
            "{:.1} MiB ({:.1} KiB per connection)",
            mib(result.server_rss_kb),
            result.server_rss_kb.saturating_sub(before) as f64 / result.held.max(1) as f64
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
    if let Some(check) = result.admin {
        ctx.notes
            .push(format!("(e) {}", AdminCheck::summary(&[check])));
    }
    ctx.json.insert(
        "e_idle".into(),
        json!({
            "wanted": ctx.cli.idle_connections, "held": result.held, "failed": result.failed,
            "still_open": result.still_open, "open_secs": result.open_secs,
            "own_nofile": [result.own_nofile.0, result.own_nofile.1],
            "server_nofile": result.server_nofile, "server_idle_kb": result.server_idle_kb,
            "server_rss_kb": result.server_rss_kb, "normal_client_secs": result.client_secs,
            "server_args": result.server_args, "admin": result.admin.map(|c| c.json()),
        }),
    );
    Ok(())
}
