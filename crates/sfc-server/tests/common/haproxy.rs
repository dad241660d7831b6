//! HAProxy from Debian's packages (`apt-get install haproxy`) in front of test nodes, run
//! with the configuration of docs/DEPLOY.md (`docs/deploy/haproxy.cfg`): only the ports
//! of `bind` and the `server` lines change (the nodes' free ports), and the `balance`
//! line or the PROXY version where a test asks. So the documented file is the tested one.
//!
//! Started in the foreground (`-db`), its output in a file in its temporary folder;
//! killed and reaped by `Drop`, also when the test panics.
//!
//! HAProxy missing: with `CI` set the tests fail (".ci/run installs it"); otherwise they
//! print how to get it and return early ([`available`]).

use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The documented configuration.
pub fn template_path() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs/deploy/haproxy.cfg")
}

/// The haproxy binary, if installed.
pub fn binary() -> Option<PathBuf> {
    let from_path = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|dir| dir.join("haproxy"))
            .find(|path| path.is_file())
    });
    from_path.or_else(|| {
        let sbin = PathBuf::from("/usr/sbin/haproxy");
        sbin.is_file().then_some(sbin)
    })
}

/// Whether HAProxy is installed. Without it: a failure when `CI` is set (the test must
/// run there), else a note on how to get it and `false` (the caller returns).
pub fn available(test: &str) -> bool {
    if binary().is_some() {
        return true;
    }
    if std::env::var_os("CI").is_some() {
        panic!("haproxy not found: .ci/run installs it (apt-get install haproxy)");
    }
    eprintln!(
        "{test}: skipped: haproxy not found (install it with `apt-get install haproxy`; CI runs these tests)"
    );
    false
}

/// What a test changes in the documented configuration.
#[derive(Clone, Debug)]
pub struct Setup {
    /// The nodes, in place of the documented `server` lines.
    pub nodes: Vec<SocketAddr>,
    /// `balance` algorithm; `None`: as documented (`source`).
    pub balance: Option<&'static str>,
    /// `send-proxy` (v1) instead of the documented `send-proxy-v2`.
    pub proxy_v1: bool,
}

/// The documented configuration with the test's changes and a frontend on `port`.
pub fn render(template: &str, setup: &Setup, port: u16) -> String {
    assert!(
        template.contains("send-proxy-v2"),
        "docs/deploy/haproxy.cfg must send PROXY v2 headers to the nodes"
    );
    let mut out = String::new();
    let mut servers_written = false;
    for line in template.lines() {
        let indent = &line[..line.len() - line.trim_start().len()];
        let words: Vec<&str> = line.split_whitespace().collect();
        match words.first().copied() {
            Some("bind") => out.push_str(&format!("{indent}bind 127.0.0.1:{port}\n")),
            Some("balance") if setup.balance.is_some() => {
                out.push_str(&format!("{indent}balance {}\n", setup.balance.unwrap()))
            }
            Some("server") => {
                // One documented line gives the form of every node's line.
                if !servers_written {
                    servers_written = true;
                    for (i, node) in setup.nodes.iter().enumerate() {
                        let rest = words[3..].join(" ");
                        out.push_str(&format!("{indent}server node{} {node} {rest}\n", i + 1));
                    }
                }
            }
            Some("default-server") if setup.proxy_v1 => {
                out.push_str(&line.replace("send-proxy-v2", "send-proxy"));
                out.push('\n');
            }
            _ => {
                out.push_str(line);
                out.push('\n');
            }
        }
    }
    assert!(servers_written, "docs/deploy/haproxy.cfg has server lines");
    out
}

/// A running HAProxy.
pub struct Haproxy {
    child: Child,
    dir: tempfile::TempDir,
    /// The frontend: clients connect here.
    pub addr: SocketAddr,
}

impl Haproxy {
    /// Starts HAProxy with the documented configuration changed as `setup` says, and
    /// waits until its frontend accepts connections.
    pub fn start(setup: &Setup) -> Self {
        let binary = binary().expect("haproxy installed (see `available`)");
        let template = std::fs::read_to_string(template_path()).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let config = dir.path().join("haproxy.cfg");
        std::fs::write(&config, render(&template, setup, port)).unwrap();
        let log = std::fs::File::create(dir.path().join("haproxy.log")).unwrap();
        let child = Command::new(binary)
            .arg("-f")
            .arg(&config)
            .arg("-db")
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("start haproxy");
        let mut haproxy = Haproxy {
            child,
            dir,
            addr: SocketAddr::from(([127, 0, 0, 1], port)),
        };
        haproxy.wait_listening();
        haproxy
    }

    fn wait_listening(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("haproxy exited ({status}):\n{}", self.log());
            }
            if TcpStream::connect_timeout(&self.addr, Duration::from_millis(200)).is_ok() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("haproxy does not listen on {}:\n{}", self.addr, self.log());
    }

    /// What HAProxy printed so far (its log lines, one per connection).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("haproxy.log")).unwrap_or_default()
    }
}

impl Drop for Haproxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn free_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap().port()
}
