//! The real `sfc-server` binary as a child process whose stderr lines arrive on a
//! channel (drained all the time, so the server never blocks on a full pipe). Dropped:
//! SIGTERM, a bounded wait, then SIGKILL — every process a test starts is reaped.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// Path of the binary cargo built for these tests.
pub const SERVER_BIN: &str = env!("CARGO_BIN_EXE_sfc-server");

/// A running server process.
pub struct ServerProcess {
    pub child: Child,
    lines: mpsc::Receiver<String>,
    seen: Vec<String>,
}

impl ServerProcess {
    /// Spawns `command` (normally `Command::new(SERVER_BIN)` with arguments) with stdin
    /// and stdout closed, stderr captured and RUST_LOG unset.
    pub fn spawn(mut command: Command) -> Self {
        let mut child = command
            .env_remove("RUST_LOG")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn sfc-server");
        let stderr = child.stderr.take().expect("piped stderr");
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        ServerProcess {
            child,
            lines,
            seen: Vec::new(),
        }
    }

    /// Spawns the binary with `args`.
    pub fn start(args: &[&str]) -> Self {
        let mut command = Command::new(SERVER_BIN);
        command.args(args);
        Self::spawn(command)
    }

    /// Spawns the binary on `data_dir`, on a free port of 127.0.0.1, with `extra` options.
    pub fn start_local(data_dir: &str, extra: &[&str]) -> Self {
        let mut args = vec!["--data-dir", data_dir, "--port", "0", "--bind", "127.0.0.1"];
        args.extend_from_slice(extra);
        Self::start(&args)
    }

    /// Waits up to 20 s for a stderr line containing `needle` (also among lines already
    /// seen); returns it.
    pub fn wait_for(&mut self, needle: &str) -> Option<String> {
        if let Some(line) = self.seen.iter().find(|l| l.contains(needle)) {
            return Some(line.clone());
        }
        let deadline = Instant::now() + Duration::from_secs(20);
        while let Some(left) = deadline.checked_duration_since(Instant::now()) {
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    self.seen.push(line.clone());
                    if line.contains(needle) {
                        return Some(line);
                    }
                }
                Err(_) => return None,
            }
        }
        None
    }

    /// Waits for the `listening on ADDR` line and returns ADDR.
    /// Every line logged so far (waiting `settle` for more) that contains `needle`.
    pub fn lines_containing(&mut self, needle: &str, settle: Duration) -> Vec<String> {
        while let Ok(line) = self.lines.try_recv() {
            self.seen.push(line);
        }
        let deadline = Instant::now() + settle;
        while let Some(left) = deadline.checked_duration_since(Instant::now()) {
            match self.lines.recv_timeout(left) {
                Ok(line) => self.seen.push(line),
                Err(mpsc::RecvTimeoutError::Timeout) => break,
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    std::thread::sleep(left);
                    break;
                }
            }
        }
        self.seen
            .iter()
            .filter(|line| line.contains(needle))
            .cloned()
            .collect()
    }

    pub fn listening_addr(&mut self) -> SocketAddr {
        let line = self
            .wait_for("listening on ")
            .expect("the server starts listening");
        listening_addr(&line)
    }

    /// Sends SIGTERM and waits up to `patience` for the exit; None if it did not exit.
    pub fn terminate_within(&mut self, patience: Duration) -> Option<ExitStatus> {
        sfc_testkit::terminate(&mut self.child, patience)
            .ok()
            .flatten()
    }

    /// Sends SIGTERM and waits for the exit (panics after 20 s).
    pub fn terminate(&mut self) -> ExitStatus {
        self.terminate_within(Duration::from_secs(20))
            .expect("the server stops on SIGTERM")
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        if let Ok(Some(_)) = self.child.try_wait() {
            return;
        }
        let _ = sfc_testkit::terminate_or_kill(&mut self.child, Duration::from_secs(10));
    }
}

/// The address in a "listening on ADDR" line, parsed as the Python tests do.
pub fn listening_addr(line: &str) -> SocketAddr {
    let rest = line
        .split("listening on ")
        .nth(1)
        .expect("a listening line");
    rest.split_whitespace()
        .next()
        .and_then(|addr| addr.parse().ok())
        .expect("an address after 'listening on'")
}
