//! Figures, their spread, the results table, and small helpers shared by the scenarios.

use anyhow::{Context, Result};
use std::fmt::Write as _;
use std::io::Write;
use std::path::Path;

/// 1 MB = 10^6 bytes.
pub const MB: f64 = 1e6;

/// Median, minimum and maximum of repeated measurements.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Spread {
    /// Median.
    pub median: f64,
    /// Smallest value.
    pub min: f64,
    /// Largest value.
    pub max: f64,
    /// Number of values.
    pub n: usize,
}

impl Spread {
    /// The spread of `values` (all zero when empty).
    pub fn of(values: &[f64]) -> Spread {
        let mut sorted: Vec<f64> = values.iter().copied().filter(|v| v.is_finite()).collect();
        sorted.sort_by(f64::total_cmp);
        let n = sorted.len();
        if n == 0 {
            return Spread {
                median: 0.0,
                min: 0.0,
                max: 0.0,
                n: 0,
            };
        }
        let median = if n % 2 == 1 {
            sorted.get(n / 2).copied().unwrap_or(0.0)
        } else {
            let a = sorted.get(n / 2 - 1).copied().unwrap_or(0.0);
            let b = sorted.get(n / 2).copied().unwrap_or(0.0);
            (a + b) / 2.0
        };
        Spread {
            median,
            min: sorted.first().copied().unwrap_or(0.0),
            max: sorted.last().copied().unwrap_or(0.0),
            n,
        }
    }

    /// `median (min–max)` with `decimals` decimals; just the value for one run.
    pub fn show(&self, decimals: usize) -> String {
        if self.n <= 1 || (self.max - self.min).abs() < f64::EPSILON {
            format!("{:.*}", decimals, self.median)
        } else {
            format!(
                "{:.*} ({:.*}–{:.*})",
                decimals, self.median, decimals, self.min, decimals, self.max
            )
        }
    }

    /// For JSON output.
    pub fn json(&self) -> serde_json::Value {
        serde_json::json!({"median": self.median, "min": self.min, "max": self.max, "n": self.n})
    }
}

/// Percentile (0..=100) of unsorted values, nearest-rank.
pub fn percentile(values: &[f64], p: f64) -> f64 {
    let mut sorted: Vec<f64> = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted
        .get(rank.clamp(1, sorted.len()) - 1)
        .copied()
        .unwrap_or(0.0)
}

/// One line of the results table.
#[derive(Debug, Clone)]
pub struct Row {
    /// Scenario letter of the issue, e.g. "a".
    pub id: String,
    /// What is measured.
    pub what: String,
    /// Our figure.
    pub ours: String,
    /// The reference figure measured in the same run ("—" when the target is absolute).
    pub reference: String,
    /// ours / reference, where meaningful.
    pub ratio: Option<f64>,
    /// The target.
    pub target: String,
    /// Whether the target was met (None: informational).
    pub met: Option<bool>,
}

/// Markdown table of `rows`.
pub fn table(rows: &[Row]) -> String {
    let mut out = String::new();
    out.push_str("| | measured | ours | reference (same run) | ratio | target | met |\n");
    out.push_str("|---|---|---|---|---|---|---|\n");
    for row in rows {
        let ratio = row
            .ratio
            .map_or_else(|| "—".to_string(), |r| format!("{r:.2}"));
        let met = match row.met {
            Some(true) => "yes",
            Some(false) => "**no**",
            None => "—",
        };
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} | {} | {} | {} |",
            row.id, row.what, row.ours, row.reference, ratio, row.target, met
        );
    }
    out
}

/// Writes `size` bytes of pseudo-random data (xorshift; incompressible enough for every
/// layer here) to `path`.
pub fn make_file(path: &Path, size: u64, seed: u64) -> Result<()> {
    let file =
        std::fs::File::create(path).with_context(|| format!("cannot create {}", path.display()))?;
    let mut writer = std::io::BufWriter::with_capacity(1 << 20, file);
    let mut state = seed | 1;
    let mut buf = vec![0u8; 1 << 20];
    let mut left = size;
    while left > 0 {
        for word in buf.chunks_exact_mut(8) {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            word.copy_from_slice(&state.to_le_bytes());
        }
        let n = left.min(buf.len() as u64) as usize;
        writer.write_all(buf.get(..n).unwrap_or_default())?;
        left -= n as u64;
    }
    writer.flush()?;
    Ok(())
}

/// Filesystem type and device of the mount that holds `path` (from /proc/mounts).
pub fn filesystem_of(path: &Path) -> String {
    let Ok(path) = std::fs::canonicalize(path) else {
        return "?".into();
    };
    let mounts = std::fs::read_to_string("/proc/mounts").unwrap_or_default();
    let mut best: Option<(usize, String)> = None;
    for line in mounts.lines() {
        let mut fields = line.split_whitespace();
        let (Some(device), Some(point), Some(fstype)) =
            (fields.next(), fields.next(), fields.next())
        else {
            continue;
        };
        if path.starts_with(point) && best.as_ref().is_none_or(|(len, _)| point.len() > *len) {
            best = Some((point.len(), format!("{fstype} on {device} at {point}")));
        }
    }
    best.map_or_else(|| "?".into(), |(_, s)| s)
}

/// Removes every regular file in `DIR/files/*/` (what earlier runs stored), so that
/// tmpfs memory and disk space go back before the next run.
pub fn remove_stored_files(data_dir: &Path) {
    let Ok(clients) = std::fs::read_dir(data_dir.join("files")) else {
        return;
    };
    for client in clients.flatten() {
        if let Ok(entries) = std::fs::read_dir(client.path()) {
            for entry in entries.flatten() {
                if entry.file_type().is_ok_and(|t| t.is_file()) {
                    let _ = std::fs::remove_file(entry.path());
                }
            }
        }
    }
}

/// kB → MiB.
pub fn mib(kb: u64) -> f64 {
    kb as f64 / 1024.0
}

/// A loopback source address for simulated client `index` of a scenario: 127.S.x.y, never
/// 127.0.0.1. Each simulated client gets an address of its own, as real clients have:
/// per-address limits of the server (registrations, failures) then apply per client,
/// and each address has its own range of ephemeral ports (TIME_WAIT left by one run
/// cannot exhaust the next one's).
pub fn loopback_source(scenario: u8, index: usize) -> std::net::SocketAddr {
    let index = index % (250 * 250);
    let ip = std::net::Ipv4Addr::new(127, scenario, (index / 250) as u8, (index % 250) as u8 + 1);
    std::net::SocketAddr::from((ip, 0))
}

/// Connects to `server` from `source` (see [`loopback_source`]).
pub async fn connect_from(
    source: std::net::SocketAddr,
    server: std::net::SocketAddr,
) -> std::io::Result<tokio::net::TcpStream> {
    let socket = tokio::net::TcpSocket::new_v4()?;
    socket.bind(source)?;
    // Closed with a reset rather than into TIME_WAIT, so that repeated runs never run out
    // of ephemeral ports. Deprecated because a non-zero linger blocks on drop; zero never
    // does.
    #[allow(deprecated)]
    socket.set_linger(Some(std::time::Duration::ZERO))?;
    socket.connect(server).await
}
