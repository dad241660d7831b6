//! `--admin`: the servers start with their admin HTTP listener on (`--admin-listen
//! 127.0.0.1:0 --admin-token-file FILE`), and each is asked for `/healthz` and `/metrics`
//! once after start-up, so the listener has served requests before the memory figures are
//! read.

use crate::procs::Server;
use anyhow::{anyhow, bail, Context, Result};
use serde_json::json;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::time::Duration;

/// The server options that turn the admin listener on, its token in `token_file` (the
/// server creates it, owner-only, when missing).
pub fn server_args(token_file: &Path) -> Vec<String> {
    vec![
        "--admin-listen".to_string(),
        "127.0.0.1:0".to_string(),
        "--admin-token-file".to_string(),
        token_file.display().to_string(),
    ]
}

/// What the requests to a server's admin listener showed.
#[derive(Debug, Clone, Copy, Default)]
pub struct AdminCheck {
    /// Server RSS before the first request, kB.
    pub rss_before_kb: u64,
    /// Server RSS after the two requests, kB.
    pub rss_after_kb: u64,
    /// Size of the `/metrics` body, bytes.
    pub metrics_bytes: usize,
}

impl AdminCheck {
    /// For the notes: what the servers of a scenario (one per run, or one for all runs)
    /// answered, and their RSS before → after the requests.
    pub fn summary(checks: &[AdminCheck]) -> String {
        let rss: Vec<String> = checks
            .iter()
            .map(|c| format!("{} → {}", c.rss_before_kb, c.rss_after_kb))
            .collect();
        let bytes: Vec<String> = checks.iter().map(|c| c.metrics_bytes.to_string()).collect();
        format!(
            "admin listener on (--admin-listen 127.0.0.1:0): /healthz and /metrics ({} B) answered 200 after start-up; server RSS kB before → after those requests: {}",
            bytes.join(", "),
            rss.join(", ")
        )
    }

    /// For `--json`.
    pub fn json(&self) -> serde_json::Value {
        json!({
            "rss_before_requests_kb": self.rss_before_kb,
            "rss_after_requests_kb": self.rss_after_kb, "metrics_bytes": self.metrics_bytes,
        })
    }
}

/// Asks `server`'s admin listener for `/healthz` (no token) and `/metrics` (the token of
/// `token_file`); an error unless both answer 200.
pub fn exercise(server: &Server, token_file: &Path) -> Result<AdminCheck> {
    let addr = server
        .admin_addr
        .ok_or_else(|| anyhow!("the server logged no admin listener address"))?;
    let token = std::fs::read_to_string(token_file)
        .with_context(|| format!("cannot read {}", token_file.display()))?;
    let rss_before_kb = server.rss_kb()?;
    let (status, _) = get(addr, "/healthz", None)?;
    if status != 200 {
        bail!("GET /healthz answered {status}");
    }
    let (status, body) = get(addr, "/metrics", Some(token.trim()))?;
    if status != 200 {
        bail!("GET /metrics answered {status}");
    }
    Ok(AdminCheck {
        rss_before_kb,
        rss_after_kb: server.rss_kb()?,
        metrics_bytes: body.len(),
    })
}

/// `GET PATH` over HTTP/1.1 (`Connection: close`): the status and the body.
fn get(addr: SocketAddr, path: &str, token: Option<&str>) -> Result<(u16, Vec<u8>)> {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(5))
        .with_context(|| format!("cannot connect to the admin listener {addr}"))?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    let auth = token.map_or_else(String::new, |t| format!("Authorization: Bearer {t}\r\n"));
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\n{auth}Connection: close\r\n\r\n"
    )?;
    let mut response = Vec::new();
    stream
        .read_to_end(&mut response)
        .with_context(|| format!("reading the answer to GET {path}"))?;
    parse_response(&response).ok_or_else(|| {
        anyhow!(
            "GET {path}: not an HTTP response: {:?}",
            String::from_utf8_lossy(&response)
        )
    })
}

/// The status code and the body (as sent: a chunked body keeps its chunk lines) of an
/// HTTP/1.x response.
fn parse_response(response: &[u8]) -> Option<(u16, Vec<u8>)> {
    let head_end = response.windows(4).position(|w| w == b"\r\n\r\n")?;
    let head = std::str::from_utf8(response.get(..head_end)?).ok()?;
    let mut status_line = head.lines().next()?.split_whitespace();
    if !status_line.next()?.starts_with("HTTP/1.") {
        return None;
    }
    let status = status_line.next()?.parse().ok()?;
    Some((status, response.get(head_end + 4..)?.to_vec()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn responses_give_their_status_and_body() {
        let ok = b"HTTP/1.1 200 OK\r\ncontent-type: text/plain; charset=utf-8\r\ncontent-length: 3\r\ndate: Sat, 28 Nov 2026 10:30:00 GMT\r\n\r\nok\n";
        assert_eq!(parse_response(ok), Some((200, b"ok\n".to_vec())));
        let denied = b"HTTP/1.1 401 Unauthorized\r\ncontent-length: 0\r\n\r\n";
        assert_eq!(parse_response(denied), Some((401, Vec::new())));
        assert_eq!(parse_response(b"SSH-2.0-OpenSSH\r\n\r\n"), None);
        assert_eq!(parse_response(b"HTTP/1.1 200 OK\r\n"), None);
    }

    #[test]
    fn the_note_gives_each_servers_rss_around_the_requests() {
        let check = |before, after| AdminCheck {
            rss_before_kb: before,
            rss_after_kb: after,
            metrics_bytes: 2210,
        };
        let note = AdminCheck::summary(&[check(7512, 7640), check(7498, 7630)]);
        assert!(
            note.ends_with("(2210, 2210 B) answered 200 after start-up; server RSS kB before → after those requests: 7512 → 7640, 7498 → 7630"),
            "{note}"
        );
        assert_eq!(check(1, 2).json()["rss_after_requests_kb"], 2);
    }

    #[test]
    fn the_listener_is_asked_for_on_a_free_loopback_port() {
        let args = server_args(Path::new("/dev/shm/sfc-bench-1/admin.token"));
        assert_eq!(
            args,
            [
                "--admin-listen",
                "127.0.0.1:0",
                "--admin-token-file",
                "/dev/shm/sfc-bench-1/admin.token"
            ]
        );
    }
}
