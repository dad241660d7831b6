//! Scenario (d): many concurrent clients, each doing the whole flow on one connection —
//! 825 register, 826 public key (1602, unwrap the AES key), 828 packets of a small file,
//! 1603 with the right checksum, 900, 1604 — spoken in-process with sfc-proto and
//! sfc-crypto, all started at once.
//!
//! RSA key generation is left out of the flow (a few key pairs are made beforehand and
//! shared): the server cannot tell, and a client generates its key once, not per upload.

use crate::admin::{self, AdminCheck};
use crate::context::RunContext;
use crate::procs::{Bins, PeakRss, Server};
use crate::report::{connect_from, loopback_source, mib, percentile, Row, Spread};
use anyhow::{anyhow, bail, Context, Result};
use serde_json::json;
use sfc_crypto::{cksum, AesKey, CbcEncryptor, RsaKeyPair};
use sfc_proto::limits::RESPONSE_HEADER_LEN;
use sfc_proto::{ClientId, FilePacketHeader, Name, Request, RequestBody, Response, ResponseHeader};
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// What to run.
#[derive(Debug)]
pub struct FlowConfig<'a> {
    /// The binaries.
    pub bins: &'a Bins,
    /// Folder for the server's data folder.
    pub work: &'a Path,
    /// Number of concurrent clients.
    pub clients: usize,
    /// Plaintext bytes each uploads.
    pub file_size: usize,
    /// Content bytes per 828 packet.
    pub packet_size: usize,
    /// A flow not finished within this counts as failed.
    pub timeout: Duration,
    /// `--database` for the server(s): a PostgreSQL URL, or `None` for SQLite.
    pub database: Option<&'a str>,
    /// `--admin`: the admin listener on, its token in this file.
    pub admin: Option<&'a Path>,
}

/// Figures of one run.
#[derive(Debug, Default)]
pub struct FlowResult {
    /// Flows started.
    pub started: usize,
    /// Flows that ended with 1604 after a matching checksum.
    pub ok: usize,
    /// The first few failures.
    pub errors: Vec<String>,
    /// Latency of each successful flow, seconds.
    pub latencies: Vec<f64>,
    /// From the start signal to the last flow's end, seconds.
    pub elapsed: f64,
    /// Server RSS before, kB.
    pub server_idle_kb: u64,
    /// Server peak RSS during the run, kB.
    pub server_peak_kb: u64,
    /// `--admin`: what the admin listener answered after start-up.
    pub admin: Option<AdminCheck>,
}

impl FlowResult {
    /// Successful flows per second.
    pub fn rate(&self) -> f64 {
        self.ok as f64 / self.elapsed.max(1e-9)
    }
    /// p50 latency, seconds.
    pub fn p50(&self) -> f64 {
        percentile(&self.latencies, 50.0)
    }
    /// p99 latency, seconds.
    pub fn p99(&self) -> f64 {
        percentile(&self.latencies, 99.0)
    }
}

struct Shared {
    addr: SocketAddr,
    keys: Vec<(RsaKeyPair, Vec<u8>)>,
    plaintext: Vec<u8>,
    cksum: u32,
    packet_size: usize,
    file_name: Name,
    /// Starts every client's name: unique per run, so that runs against one shared
    /// PostgreSQL database never meet an earlier run's names (1601).
    name_prefix: String,
}

async fn read_response(stream: &mut TcpStream) -> Result<Response> {
    let mut header = [0u8; RESPONSE_HEADER_LEN];
    stream
        .read_exact(&mut header)
        .await
        .context("reading a reply header")?;
    let header = ResponseHeader::decode(&header).map_err(|e| anyhow!("bad reply header: {e}"))?;
    let mut payload = vec![0u8; header.payload_size as usize];
    stream
        .read_exact(&mut payload)
        .await
        .context("reading a reply payload")?;
    Response::decode_payload(&header, &payload).map_err(|e| anyhow!("bad reply: {e}"))
}

async fn flow(shared: Arc<Shared>, index: usize) -> Result<Duration> {
    let started = Instant::now();
    let mut stream = connect_from(loopback_source(1, index), shared.addr)
        .await
        .context("connect")?;
    stream.set_nodelay(true)?;
    let name = Name::new(&format!("{}-{index}", shared.name_prefix)).map_err(|e| anyhow!("{e}"))?;

    let register = Request::new(ClientId::ZERO, RequestBody::Register { name: name.clone() });
    stream.write_all(&register.encode()).await?;
    let client_id = match read_response(&mut stream).await? {
        Response::Registered { client_id } => client_id,
        other => bail!("825 answered with {:?}", other.code()),
    };

    let (keys, der) = shared
        .keys
        .get(index % shared.keys.len().max(1))
        .ok_or_else(|| anyhow!("no key pair"))?;
    let send_key = Request::new(
        client_id,
        RequestBody::SendPublicKey {
            name,
            public_key: der.clone(),
        },
    );
    stream.write_all(&send_key.encode()).await?;
    let wrapped = match read_response(&mut stream).await? {
        Response::PublicKeyAccepted { wrapped_key, .. } => wrapped_key,
        other => bail!("826 answered with {:?}", other.code()),
    };
    let key = keys
        .unwrap_aes_key(&wrapped)
        .map_err(|e| anyhow!("unwrap: {e}"))?;

    let wire = file_packets(&shared, client_id, &key)?;
    stream.write_all(&wire).await?;
    match read_response(&mut stream).await? {
        Response::FileReceived { cksum, .. } if cksum == shared.cksum => {}
        Response::FileReceived { cksum, .. } => {
            bail!(
                "checksum mismatch: server {cksum}, expected {}",
                shared.cksum
            )
        }
        other => bail!("828 answered with {:?}", other.code()),
    }

    let ok = Request::new(
        client_id,
        RequestBody::ChecksumOk {
            file_name: shared.file_name.clone(),
        },
    );
    stream.write_all(&ok.encode()).await?;
    match read_response(&mut stream).await? {
        Response::Ack { .. } => {}
        other => bail!("900 answered with {:?}", other.code()),
    }
    Ok(started.elapsed())
}

/// The file of a flow encrypted with `key` and cut into 828 packets, as sent.
fn file_packets(shared: &Shared, client_id: ClientId, key: &AesKey) -> Result<Vec<u8>> {
    let mut ciphertext = Vec::with_capacity(shared.plaintext.len() + 32);
    let mut encryptor = CbcEncryptor::new(key).map_err(|e| anyhow!("{e}"))?;
    encryptor
        .update(&shared.plaintext, &mut ciphertext)
        .map_err(|e| anyhow!("{e}"))?;
    encryptor
        .finish(&mut ciphertext)
        .map_err(|e| anyhow!("{e}"))?;
    let total = ciphertext.len().div_ceil(shared.packet_size);
    let mut header = FilePacketHeader {
        content_size: u32::try_from(ciphertext.len())?,
        orig_file_size: u32::try_from(shared.plaintext.len())?,
        packet_number: 1,
        total_packets: u16::try_from(total)?,
        file_name: shared.file_name.clone(),
    };
    let mut wire = Vec::with_capacity(ciphertext.len() + total * 300);
    for (i, content) in ciphertext.chunks(shared.packet_size).enumerate() {
        header.packet_number = u16::try_from(i + 1)?;
        wire.extend_from_slice(&header.encode_prefix(client_id, u32::try_from(content.len())?));
        wire.extend_from_slice(content);
    }
    Ok(wire)
}

/// Runs the scenario against a fresh server.
pub fn run(cfg: &FlowConfig<'_>) -> Result<FlowResult> {
    let (keys, plaintext) = prepare(cfg)?;
    let data = cfg.work.join("server");
    let _ = std::fs::remove_dir_all(&data);
    let mut args = database_args(cfg.database);
    args.extend(cfg.admin.map(admin::server_args).unwrap_or_default());
    let mut server = Server::start(&cfg.bins.server, &data, &args)?;
    std::thread::sleep(Duration::from_millis(300));
    let server_idle_kb = server.rss_kb()?;
    let admin = match cfg.admin {
        Some(token_file) => Some(admin::exercise(&server, token_file)?),
        None => None,
    };
    let peak = PeakRss::watch(server.pid);
    let (outcomes, elapsed) = drive(server.addr, keys, plaintext, cfg)?;
    let server_peak_kb = peak.finish();
    server.check_alive()?;
    let mut result = tally(outcomes, elapsed);
    result.server_idle_kb = server_idle_kb;
    result.server_peak_kb = server_peak_kb;
    result.admin = admin;
    server.stop()?;
    let _ = std::fs::remove_dir_all(&data);
    Ok(result)
}

/// The server options that select the metadata store.
pub fn database_args(database: Option<&str>) -> Vec<String> {
    database
        .map(|url| vec!["--database".to_string(), url.to_string()])
        .unwrap_or_default()
}

/// `bench-flow-PID-SECONDS`: different for every run of every sfc-bench process.
fn run_prefix() -> String {
    let since_epoch = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    format!(
        "bench-flow-{}-{}{:03}",
        std::process::id(),
        since_epoch.as_secs(),
        since_epoch.subsec_millis()
    )
}

/// A few key pairs the clients share, each with its public key (DER).
pub type SharedKeys = Vec<(RsaKeyPair, Vec<u8>)>;

/// The shared key pairs and the file every client uploads.
pub fn prepare(cfg: &FlowConfig<'_>) -> Result<(SharedKeys, Vec<u8>)> {
    let keys = (0..4)
        .map(|_| {
            let pair = RsaKeyPair::generate().map_err(|e| anyhow!("{e}"))?;
            let der = pair.public_key_der();
            Ok((pair, der))
        })
        .collect::<Result<Vec<_>>>()?;
    let mut plaintext = vec![0u8; cfg.file_size];
    let mut state = 0x9e37_79b9_7f4a_7c15_u64;
    for byte in &mut plaintext {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        *byte = state as u8;
    }
    Ok((keys, plaintext))
}

/// The flows' outcomes as figures (no server figures).
pub fn tally(outcomes: Vec<Result<Duration>>, elapsed: Duration) -> FlowResult {
    let mut result = FlowResult {
        started: outcomes.len(),
        elapsed: elapsed.as_secs_f64(),
        ..FlowResult::default()
    };
    for outcome in outcomes {
        match outcome {
            Ok(latency) => {
                result.ok += 1;
                result.latencies.push(latency.as_secs_f64());
            }
            Err(error) if result.errors.len() < 5 => result.errors.push(format!("{error:#}")),
            Err(_) => {}
        }
    }
    result
}

/// Starts `cfg.clients` flows against `addr` at once; their outcomes and the time from
/// the start to the last one's end.
pub fn drive(
    addr: SocketAddr,
    keys: SharedKeys,
    plaintext: Vec<u8>,
    cfg: &FlowConfig<'_>,
) -> Result<(Vec<Result<Duration>>, Duration)> {
    let shared = Arc::new(Shared {
        addr,
        keys,
        cksum: cksum(&plaintext),
        plaintext,
        packet_size: cfg.packet_size,
        file_name: Name::new("flow.bin").map_err(|e| anyhow!("{e}"))?,
        name_prefix: run_prefix(),
    });
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let timeout = cfg.timeout;
    let clients = cfg.clients;
    let (outcomes, elapsed) = runtime.block_on(async move {
        let started = Instant::now();
        let tasks: Vec<_> = (0..clients)
            .map(|i| {
                let shared = Arc::clone(&shared);
                tokio::spawn(async move {
                    match tokio::time::timeout(timeout, flow(shared, i)).await {
                        Ok(result) => result,
                        Err(_) => Err(anyhow!("not finished within {timeout:?}")),
                    }
                })
            })
            .collect();
        let mut outcomes = Vec::with_capacity(tasks.len());
        for task in tasks {
            outcomes.push(
                task.await
                    .map_err(|e| anyhow!("task failed: {e}"))
                    .and_then(|r| r),
            );
        }
        (outcomes, started.elapsed())
    });
    runtime.shutdown_timeout(Duration::from_secs(2));
    Ok((outcomes, elapsed))
}

/// Totals of repeated runs of (d) or (h): latencies in milliseconds.
#[derive(Debug)]
pub struct FlowSummary {
    /// Successful flows over all runs.
    pub ok: usize,
    /// Flows started over all runs.
    pub started: usize,
    /// Successful flows per second.
    pub rate: Spread,
    /// p50 flow latency, ms.
    pub p50: Spread,
    /// p99 flow latency, ms.
    pub p99: Spread,
    /// The failures reported by the runs.
    pub errors: Vec<String>,
}

impl FlowSummary {
    /// The totals of `runs`.
    pub fn of(runs: &[FlowResult]) -> FlowSummary {
        FlowSummary {
            ok: runs.iter().map(|r| r.ok).sum(),
            started: runs.iter().map(|r| r.started).sum(),
            rate: Spread::of(&runs.iter().map(|r| r.rate()).collect::<Vec<_>>()),
            p50: Spread::of(&runs.iter().map(|r| r.p50() * 1000.0).collect::<Vec<_>>()),
            p99: Spread::of(&runs.iter().map(|r| r.p99() * 1000.0).collect::<Vec<_>>()),
            errors: runs.iter().flat_map(|r| r.errors.clone()).collect(),
        }
    }

    /// An error when a flow failed: the run as a whole failed.
    pub fn check(&self) -> Result<()> {
        if self.ok != self.started {
            bail!(
                "{} of {} flows failed",
                self.started - self.ok,
                self.started
            );
        }
        Ok(())
    }
}

/// The row "`what`: successful flows", `ok` of `started` (target: all).
pub fn success_row(id: &str, what: &str, ok: usize, started: usize) -> Row {
    Row {
        id: id.into(),
        what: format!("{what}: successful flows"),
        ours: format!("{ok}/{started}"),
        reference: "—".into(),
        ratio: None,
        target: "100 %".into(),
        met: Some(ok == started),
    }
}

/// Scenario (d): `--clients` concurrent whole flows, with the server's data folder on
/// tmpfs or on disk.
pub fn run_flows(ctx: &mut RunContext, on_disk: bool) -> Result<()> {
    let (work, label, id) = if on_disk {
        (ctx.disk.join("flows"), "disk", "d (disk)")
    } else {
        (ctx.shm.join("flows"), "tmpfs", "d")
    };
    eprintln!(
        "(d) {} concurrent flows, data folder on {label} ...",
        ctx.cli.clients
    );
    let runs = measure_flows(ctx, &work)?;
    let summary = FlowSummary::of(&runs);
    let admin = admin_note(ctx, label, &runs);
    let (ok, started, rate, p50, p99) = (
        summary.ok,
        summary.started,
        summary.rate,
        summary.p50,
        summary.p99,
    );
    let peak = runs.iter().map(|r| r.server_peak_kb).max().unwrap_or(0);
    let idle = runs.iter().map(|r| r.server_idle_kb).max().unwrap_or(0);
    let worst_p99 = p99.max / 1000.0;
    let metadata = if ctx.cli.database.is_some() {
        "PostgreSQL"
    } else {
        "SQLite"
    };
    let what = format!(
        "{} concurrent clients × (825, 826, {} B file in {} B packets, 900), data on {label}, metadata in {metadata}",
        ctx.cli.clients, ctx.cli.flow_file_size, ctx.cli.flow_packet_size
    );
    ctx.rows.push(success_row(id, &what, ok, started));
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
            "errors": &summary.errors, "admin": admin,
        }),
    );
    summary.check()
}

/// `--admin`: the note of what each run's server answered; their figures for `--json`.
fn admin_note(ctx: &mut RunContext, label: &str, runs: &[FlowResult]) -> serde_json::Value {
    let checks: Vec<AdminCheck> = runs.iter().filter_map(|r| r.admin).collect();
    if !checks.is_empty() {
        ctx.notes.push(format!(
            "(d, data on {label}) {}",
            AdminCheck::summary(&checks)
        ));
    }
    json!(checks.iter().map(AdminCheck::json).collect::<Vec<_>>())
}

/// The `--runs` runs of (d) with the data folder under `work`, each line printed as it ends.
fn measure_flows(ctx: &RunContext, work: &Path) -> Result<Vec<FlowResult>> {
    let mut runs = Vec::new();
    let token_file = ctx.admin_token_file();
    for run in 0..ctx.cli.runs {
        let result = self::run(&FlowConfig {
            bins: &ctx.bins,
            work,
            clients: ctx.cli.clients,
            file_size: ctx.cli.flow_file_size,
            packet_size: ctx.cli.flow_packet_size,
            timeout: Duration::from_secs(60),
            database: ctx.cli.database.as_deref(),
            admin: token_file.as_deref(),
        });
        let _ = std::fs::remove_dir_all(work);
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
    Ok(runs)
}
