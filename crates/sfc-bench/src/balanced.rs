//! Scenario (h): the flows of (d) through HAProxy to several `sfc-server` nodes — the
//! deployment of docs/DEPLOY.md, with its `docs/deploy/haproxy.cfg` (only the ports
//! changed): the nodes read PROXY v2 headers from HAProxy (`--proxy-protocol`), each
//! client comes from its own loopback address, so `balance source` spreads them.
//!
//! Metadata: a PostgreSQL database shared by the nodes when `--database URL` is given (the
//! benchmark does not start one), else each node's own SQLite file (the flows work
//! either way: each flow stays on one connection, hence one node).

use crate::flows::{self, FlowConfig, FlowResult};
use crate::procs::Server;
use anyhow::{bail, Context, Result};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// What (h) runs beyond the flows' settings.
#[derive(Debug)]
pub struct BalancedConfig<'a> {
    /// The flows (clients, file and packet sizes, the work folder).
    pub flows: FlowConfig<'a>,
    /// Number of nodes.
    pub nodes: usize,
    /// The haproxy program.
    pub haproxy: &'a Path,
    /// The configuration to start from (docs/deploy/haproxy.cfg).
    pub template: &'a Path,
    /// `--database` for every node (a shared PostgreSQL), or each node's SQLite.
    pub database: Option<&'a str>,
}

/// The default template: the repository's docs/deploy/haproxy.cfg.
pub fn default_template() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs/deploy/haproxy.cfg")
}

/// HAProxy, killed when dropped.
struct Haproxy {
    child: Child,
    addr: SocketAddr,
}

impl Drop for Haproxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The template with the frontend on `port` and one `server` line per node.
fn render(template: &str, nodes: &[SocketAddr], port: u16) -> Result<String> {
    let mut out = String::new();
    let mut servers = false;
    for line in template.lines() {
        let indent = line
            .get(..line.len() - line.trim_start().len())
            .unwrap_or_default();
        let words: Vec<&str> = line.split_whitespace().collect();
        match words.first().copied() {
            Some("bind") => out.push_str(&format!("{indent}bind 127.0.0.1:{port}\n")),
            Some("server") if !servers => {
                servers = true;
                let rest = words.get(3..).unwrap_or_default().join(" ");
                for (i, node) in nodes.iter().enumerate() {
                    out.push_str(&format!("{indent}server node{} {node} {rest}\n", i + 1));
                }
            }
            Some("server") => {}
            // One line per connection would cost HAProxy more than the flows do.
            Some("log") => {}
            _ => {
                out.push_str(line);
                out.push('\n');
            }
        }
    }
    if !servers {
        bail!("the HAProxy template has no server line");
    }
    Ok(out)
}

fn start_haproxy(cfg: &BalancedConfig<'_>, nodes: &[SocketAddr], work: &Path) -> Result<Haproxy> {
    let template = std::fs::read_to_string(cfg.template)
        .with_context(|| format!("cannot read {}", cfg.template.display()))?;
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let config = work.join("haproxy.cfg");
    std::fs::write(&config, render(&template, nodes, port)?)?;
    let child = Command::new(cfg.haproxy)
        .arg("-f")
        .arg(&config)
        .arg("-db")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .with_context(|| {
            format!(
                "cannot start {} (apt-get install haproxy)",
                cfg.haproxy.display()
            )
        })?;
    let mut haproxy = Haproxy {
        child,
        addr: SocketAddr::from(([127, 0, 0, 1], port)),
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    while TcpStream::connect_timeout(&haproxy.addr, Duration::from_millis(200)).is_err() {
        if let Ok(Some(status)) = haproxy.child.try_wait() {
            bail!(
                "haproxy exited at start-up ({status}); check {}",
                config.display()
            );
        }
        if Instant::now() > deadline {
            bail!("haproxy does not listen on {}", haproxy.addr);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(haproxy)
}

/// Runs (h) once: fresh nodes, HAProxy, the flows through it.
pub fn run(cfg: &BalancedConfig<'_>) -> Result<FlowResult> {
    let work = cfg.flows.work;
    let _ = std::fs::remove_dir_all(work);
    std::fs::create_dir_all(work)?;
    let (keys, plaintext) = flows::prepare(&cfg.flows)?;
    let mut extra: Vec<String> = ["--proxy-protocol", "--proxy-from", "127.0.0.1"]
        .map(String::from)
        .to_vec();
    if let Some(url) = cfg.database {
        extra.extend(["--database".to_string(), url.to_string()]);
    }
    let mut nodes = Vec::new();
    for n in 0..cfg.nodes.max(1) {
        nodes.push(Server::start(
            &cfg.flows.bins.server,
            &work.join(format!("node{}", n + 1)),
            &extra,
        )?);
    }
    let addrs: Vec<SocketAddr> = nodes.iter().map(|node| node.addr).collect();
    let haproxy = start_haproxy(cfg, &addrs, work)?;
    let (outcomes, elapsed) = flows::drive(haproxy.addr, keys, plaintext, &cfg.flows)?;
    drop(haproxy);
    let result = flows::tally(outcomes, elapsed);
    for mut node in nodes {
        node.check_alive()?;
        node.stop()?;
    }
    let _ = std::fs::remove_dir_all(work);
    Ok(result)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_documented_config_is_rendered_for_the_nodes() {
        let template = std::fs::read_to_string(default_template()).unwrap();
        let nodes: Vec<SocketAddr> = vec!["127.0.0.1:5001".parse().unwrap(); 2];
        let config = render(&template, &nodes, 5000).unwrap();
        assert!(config.contains("bind 127.0.0.1:5000\n"));
        let servers = config
            .lines()
            .filter(|line| line.trim_start().starts_with("server "))
            .count();
        assert_eq!(servers, 2);
        assert!(config.contains("send-proxy-v2"));
        assert!(!config.contains("log stdout"));
    }
}
