//! Scenario (d): many concurrent clients, each doing the whole flow on one connection —
//! 825 register, 826 public key (1602, unwrap the AES key), 828 packets of a small file,
//! 1603 with the right checksum, 900, 1604 — spoken in-process with sfc-proto and
//! sfc-crypto, all started at once.
//!
//! RSA key generation is left out of the flow (a few key pairs are made beforehand and
//! shared): the server cannot tell, and a client generates its key once, not per upload.

use crate::procs::{reset_hwm, status_kb, Bins, RssSampler, Server};
use crate::report::{connect_from, loopback_source, percentile};
use anyhow::{anyhow, bail, Context, Result};
use sfc_crypto::{cksum, CbcEncryptor, RsaKeyPair};
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
    let name = Name::new(&format!("bench-flow-{index}")).map_err(|e| anyhow!("{e}"))?;

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

    let mut ciphertext = Vec::with_capacity(shared.plaintext.len() + 32);
    let mut encryptor = CbcEncryptor::new(&key).map_err(|e| anyhow!("{e}"))?;
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

/// Runs the scenario against a fresh server.
pub fn run(cfg: &FlowConfig<'_>) -> Result<FlowResult> {
    let (keys, plaintext) = prepare(cfg)?;
    let data = cfg.work.join("server");
    let _ = std::fs::remove_dir_all(&data);
    let mut server = Server::start(&cfg.bins.server, &data, &[])?;
    std::thread::sleep(Duration::from_millis(300));
    let server_idle_kb = server.rss_kb()?;
    let hwm_reset = reset_hwm(server.pid);
    let sampler = RssSampler::start(vec![server.pid]);
    let (outcomes, elapsed) = drive(server.addr, keys, plaintext, cfg)?;
    let sampled = sampler.finish().first().copied().unwrap_or(0);
    let hwm = if hwm_reset {
        status_kb(server.pid, "VmHWM").unwrap_or(0)
    } else {
        0
    };
    server.check_alive()?;
    let mut result = tally(outcomes, elapsed);
    result.server_idle_kb = server_idle_kb;
    result.server_peak_kb = sampled.max(hwm);
    server.stop()?;
    let _ = std::fs::remove_dir_all(&data);
    Ok(result)
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
