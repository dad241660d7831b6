//! Scenario (h): the flows of (d) through HAProxy to several `sfc-server` nodes — the
//! deployment of docs/DEPLOY.md, with its `docs/deploy/haproxy.cfg` (only the ports
//! changed): the nodes read PROXY v2 headers from HAProxy (`--proxy-protocol`), each
//! client comes from its own loopback address, so `balance source` spreads them.
//!
//! Metadata: a PostgreSQL database shared by the nodes when `--database URL` is given (the
//! benchmark does not start one), else each node's own SQLite file (the flows work
//! either way: each flow stays on one connection, hence one node).

use crate::context::RunContext;
use crate::flows::{self, FlowConfig, FlowResult, FlowSummary};
use crate::procs::Server;
use crate::report::Row;
use anyhow::{bail, Context, Result};
use serde_json::json;
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
    extra.extend(flows::database_args(cfg.flows.database));
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

/// Scenario (h): the flows of (d) through HAProxy to `--nodes` nodes.
pub fn run_balanced(ctx: &mut RunContext) -> Result<()> {
    let cli = &ctx.cli;
    let metadata = if cli.database.is_some() {
        "one PostgreSQL database"
    } else {
        "each node's SQLite"
    };
    eprintln!(
        "(h) {} concurrent flows through HAProxy to {} nodes, metadata in {metadata} ...",
        cli.clients, cli.nodes
    );
    let runs = measure_balanced(ctx)?;
    let summary = FlowSummary::of(&runs);
    let (ok, started, rate, p50, p99) = (
        summary.ok,
        summary.started,
        summary.rate,
        summary.p50,
        summary.p99,
    );
    let cli = &ctx.cli;
    let what = format!(
        "{} concurrent clients × (825, 826, {} B file, 900) through HAProxy to {} nodes, metadata in {metadata}",
        cli.clients, cli.flow_file_size, cli.nodes
    );
    ctx.rows.push(flows::success_row("h", &what, ok, started));
    ctx.rows.push(Row {
        id: "h".into(),
        what: "flows per second; p99 flow latency (p50)".into(),
        ours: format!(
            "{} flows/s; {} ms ({} ms)",
            rate.show(0),
            p99.show(0),
            p50.show(0)
        ),
        reference: "—".into(),
        ratio: None,
        target: "(reported; compare with d of the same run)".into(),
        met: None,
    });
    ctx.json.insert(
        "h_balanced".into(),
        json!({
            "clients": ctx.cli.clients, "nodes": ctx.cli.nodes, "postgres": ctx.cli.database.is_some(),
            "ok": ok, "started": started,
            "flows_per_s": rate.json(), "p50_ms": p50.json(), "p99_ms": p99.json(),
            "errors": &summary.errors,
        }),
    );
    summary.check()
}

/// The `--runs` runs of (h), each line printed as it ends.
fn measure_balanced(ctx: &RunContext) -> Result<Vec<FlowResult>> {
    let cli = &ctx.cli;
    let template = cli.haproxy_config.clone().unwrap_or_else(default_template);
    let work = ctx.shm.join("balanced");
    let mut runs = Vec::new();
    for run in 0..cli.runs {
        let result = self::run(&BalancedConfig {
            flows: FlowConfig {
                bins: &ctx.bins,
                work: &work,
                clients: cli.clients,
                file_size: cli.flow_file_size,
                packet_size: cli.flow_packet_size,
                timeout: Duration::from_secs(60),
                database: cli.database.as_deref(),
                // The nodes of (h) run without the admin listener.
                admin: None,
            },
            nodes: cli.nodes,
            haproxy: &cli.haproxy,
            template: &template,
        });
        let _ = std::fs::remove_dir_all(&work);
        let result = result?;
        eprintln!(
            "    run {}: {}/{} ok in {:.2} s = {:.0} flows/s, p50 {:.3} s, p99 {:.3} s",
            run + 1,
            result.ok,
            result.started,
            result.elapsed,
            result.rate(),
            result.p50(),
            result.p99(),
        );
        for error in &result.errors {
            eprintln!("      failure: {error}");
        }
        runs.push(result);
    }
    Ok(runs)
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
