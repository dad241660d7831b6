//! `--syscalls`: one extra, unmeasured upload with `strace -f -c` attached to the server
//! (`-p PID`, detached with SIGINT afterwards) and the client started under it; the
//! system calls each side made, per syscall name, from strace's summary table.

use anyhow::{anyhow, bail, Context, Result};
use serde_json::json;
use sfc_testkit::{send_signal, stop_or_kill, Signal};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Syscall names shown in the report (the rest count in the total).
pub const TOP: usize = 8;

/// Calls per syscall name, from a `strace -c` summary.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SyscallCounts {
    /// The `total` line's calls.
    pub total: u64,
    /// (name, calls), most calls first.
    pub calls: Vec<(String, u64)>,
}

impl SyscallCounts {
    /// `total N per GiB: name n, …` for `size` bytes uploaded, scaled to 1 GiB.
    pub fn show(&self, size: u64) -> String {
        let scale = |n: u64| thousands((n as f64 * (1u64 << 30) as f64 / size as f64).round());
        let top: Vec<String> = self
            .calls
            .iter()
            .take(TOP)
            .map(|(name, n)| format!("{name} {}", scale(*n)))
            .collect();
        format!("total {} ({})", scale(self.total), top.join(", "))
    }

    /// `{"total": n, "top": [[name, n], …]}`, per GiB.
    pub fn json(&self, size: u64) -> serde_json::Value {
        let scale = |n: u64| (n as f64 * (1u64 << 30) as f64 / size as f64).round();
        let top: Vec<serde_json::Value> = self
            .calls
            .iter()
            .take(TOP)
            .map(|(name, n)| json!([name, scale(*n)]))
            .collect();
        json!({"total": scale(self.total), "top": top})
    }
}

/// What `--syscalls` found for one scenario.
#[derive(Debug, Clone, PartialEq)]
pub enum SyscallRun {
    /// Not counted (strace missing), and why.
    Skipped(String),
    /// The traced upload failed.
    Failed(String),
    /// The calls of each side during the traced upload.
    Counted {
        /// sfc-server's.
        server: SyscallCounts,
        /// sfc-client's (with strace's own start-up of it).
        client: SyscallCounts,
    },
}

impl SyscallRun {
    /// The note of scenario `id` for an upload of `size` bytes.
    pub fn note(&self, id: &str, size: u64) -> String {
        match self {
            SyscallRun::Skipped(why) => format!("({id}) --syscalls skipped: {why}"),
            SyscallRun::Failed(error) => format!("({id}) --syscalls failed: {error}"),
            SyscallRun::Counted { server, client } => format!(
                "({id}) system calls per GiB uploaded (one extra unmeasured upload, strace -f -c on each side): server {}; client {}",
                server.show(size),
                client.show(size)
            ),
        }
    }

    /// For `--json`: per GiB.
    pub fn json(&self, size: u64) -> serde_json::Value {
        match self {
            SyscallRun::Skipped(why) => json!({"skipped": why}),
            SyscallRun::Failed(error) => json!({"failed": error}),
            SyscallRun::Counted { server, client } => {
                json!({"server": server.json(size), "client": client.json(size)})
            }
        }
    }
}

/// `31971` → `31,971`.
fn thousands(value: f64) -> String {
    let digits = format!("{value:.0}");
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 && c.is_ascii_digit() {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// Parses strace's `-c` table: each row ends with the syscall name, its fourth column
/// is the number of calls (`errors` may be blank); the `total` row gives the total.
pub fn parse_summary(text: &str) -> Option<SyscallCounts> {
    let mut counts = SyscallCounts::default();
    let mut total = None;
    for line in text.lines() {
        let fields: Vec<&str> = line.split_whitespace().collect();
        // % time, seconds, usecs/call, calls, [errors,] syscall
        if !(5..=6).contains(&fields.len()) {
            continue;
        }
        let (Some(percent), Some(calls), Some(name)) =
            (fields.first(), fields.get(3), fields.last())
        else {
            continue;
        };
        let (Ok(_), Ok(calls)) = (percent.parse::<f64>(), calls.parse::<u64>()) else {
            continue;
        };
        if *name == "total" {
            total = Some(calls);
        } else {
            counts.calls.push(((*name).to_string(), calls));
        }
    }
    counts.total = total?;
    counts
        .calls
        .sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    Some(counts)
}

/// `strace -V`'s first line; None when strace cannot be run.
pub fn strace_version() -> Option<String> {
    let output = Command::new("strace").arg("-V").output().ok()?;
    let text = String::from_utf8_lossy(&output.stdout);
    output
        .status
        .success()
        .then(|| text.lines().next().unwrap_or("strace").trim().to_string())
}

/// The `TracerPid` of a `/proc/PID/status` text.
fn tracer_pid(status: &str) -> Option<u32> {
    status
        .lines()
        .find_map(|line| line.strip_prefix("TracerPid:")?.trim().parse().ok())
}

/// Whether every thread of `pid` is traced by `tracer`.
fn all_traced(pid: u32, tracer: u32) -> bool {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return false;
    };
    let mut any = false;
    for task in tasks.flatten() {
        let status = std::fs::read_to_string(task.path().join("status")).unwrap_or_default();
        if tracer_pid(&status) != Some(tracer) {
            return false;
        }
        any = true;
    }
    any
}

/// A `strace` process writing its summary to `out`; stopped (SIGINT, then SIGKILL) and
/// reaped when dropped.
#[derive(Debug)]
struct Strace {
    child: Child,
    out: PathBuf,
    log: PathBuf,
}

impl Strace {
    /// `strace -f -c -o OUT ARGS…`, its own messages (and a traced command's stderr) to
    /// `LOG`.
    fn spawn(work: &Path, tag: &str, args: &[&std::ffi::OsStr]) -> Result<Strace> {
        let out = work.join(format!("strace-{tag}.txt"));
        let log = work.join(format!("strace-{tag}.log"));
        let child = Command::new("strace")
            .args(["-f", "-c", "-o"])
            .arg(&out)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log)?)
            .spawn()
            .context("cannot start strace")?;
        Ok(Strace { child, out, log })
    }

    /// What strace printed on stderr (the traced command's stderr included).
    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Its summary, once it has exited.
    fn summary(&self) -> Result<SyscallCounts> {
        let text = std::fs::read_to_string(&self.out).unwrap_or_default();
        parse_summary(&text).ok_or_else(|| {
            anyhow!(
                "no strace summary in {text:?}; strace said:\n{}",
                self.log()
            )
        })
    }

    /// SIGINT (strace detaches from `-p` processes and writes its summary), up to 20 s
    /// to exit, then SIGKILL; reaped either way.
    fn stop(&mut self) -> Result<()> {
        match stop_or_kill(&mut self.child, Signal::Interrupt, Duration::from_secs(20))? {
            Some(_) => Ok(()),
            None => bail!("strace did not stop within 20 s of SIGINT; killed"),
        }
    }
}

impl Drop for Strace {
    fn drop(&mut self) {
        let _ = self.stop();
        let _ = std::fs::remove_file(&self.out);
        let _ = std::fs::remove_file(&self.log);
    }
}

/// `strace -f -c -p PID`, returned once every thread of `pid` is traced.
fn attach(pid: u32, work: &Path) -> Result<Strace> {
    let pid_text = pid.to_string();
    let args = [std::ffi::OsStr::new("-p"), std::ffi::OsStr::new(&pid_text)];
    let mut strace = Strace::spawn(work, "server", &args)?;
    let deadline = Instant::now() + Duration::from_secs(10);
    while !all_traced(pid, strace.child.id()) {
        if let Some(status) = strace.child.try_wait()? {
            bail!("strace -p {pid} exited ({status}):\n{}", strace.log());
        }
        if Instant::now() > deadline {
            bail!(
                "strace -p {pid} did not attach within 10 s:\n{}",
                strace.log()
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(strace)
}

/// Runs `client` under `strace -f -c`, killing it after `timeout`: its summary.
fn trace_client(client: &Command, work: &Path, timeout: Duration) -> Result<SyscallCounts> {
    let mut args = vec![std::ffi::OsStr::new("--"), client.get_program()];
    args.extend(client.get_args());
    let mut strace = Strace::spawn(work, "client", &args)?;
    let deadline = Instant::now() + timeout;
    let status = loop {
        if let Some(status) = strace.child.try_wait()? {
            break status;
        }
        if Instant::now() > deadline {
            // The client first (strace exits with it), then strace.
            let strace_pid = strace.child.id();
            let children =
                std::fs::read_to_string(format!("/proc/{strace_pid}/task/{strace_pid}/children"))
                    .unwrap_or_default();
            for child in children
                .split_whitespace()
                .filter_map(|pid| pid.parse().ok())
            {
                // Best effort: the error below says what happened either way.
                let _ = send_signal(child, Signal::Kill);
            }
            bail!("sfc-client under strace did not finish within {timeout:?}; killed");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    if !status.success() {
        bail!(
            "sfc-client under strace failed ({status}):\n{}",
            strace.log()
        );
    }
    strace.summary()
}

/// The syscalls of one upload: (server, client).
pub fn trace_upload(
    server_pid: u32,
    client: &Command,
    work: &Path,
) -> Result<(SyscallCounts, SyscallCounts)> {
    let mut server = attach(server_pid, work)?;
    let client = trace_client(client, work, Duration::from_secs(300));
    server.stop()?;
    let server = server.summary()?;
    Ok((server, client?))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `strace -f -c` of an sfc-server during a 1 GiB upload.
    const SUMMARY: &str = "\
% time     seconds  usecs/call     calls    errors syscall
------ ----------- ----------- --------- --------- ----------------
 72.55    4.278678         857      4991       176 futex
 16.76    0.988270         163      6046           epoll_wait
  5.61    0.331070         161      2045           write
  5.04    0.297209          17     16684           recvfrom
  0.01    0.000662          10        63           fadvise64
------ ----------- ----------- --------- --------- ----------------
100.00    5.897442         184     31971       534 total
";

    #[test]
    fn the_summary_table_is_read_by_calls() {
        let counts = parse_summary(SUMMARY).unwrap();
        assert_eq!(counts.total, 31971);
        assert_eq!(
            counts.calls,
            vec![
                ("recvfrom".to_string(), 16684),
                ("epoll_wait".to_string(), 6046),
                ("futex".to_string(), 4991),
                ("write".to_string(), 2045),
                ("fadvise64".to_string(), 63),
            ]
        );
        // strace's messages or an empty file: no summary.
        assert_eq!(parse_summary("strace: Process 12 attached\n"), None);
        assert_eq!(parse_summary(""), None);
    }

    #[test]
    fn counts_are_scaled_to_a_gib() {
        let counts = parse_summary(SUMMARY).unwrap();
        assert_eq!(
            counts.show(1 << 30),
            "total 31,971 (recvfrom 16,684, epoll_wait 6,046, futex 4,991, write 2,045, fadvise64 63)"
        );
        // 64 MiB uploaded: 16 × the calls per GiB.
        assert!(counts
            .show(64 << 20)
            .starts_with("total 511,536 (recvfrom 266,944,"));
        let json = counts.json(512 << 20);
        assert_eq!(json["total"], 63942.0);
        assert_eq!(json["top"][0], json!(["recvfrom", 33368.0]));
    }

    #[test]
    fn thousands_are_separated() {
        assert_eq!(thousands(0.0), "0");
        assert_eq!(thousands(999.0), "999");
        assert_eq!(thousands(1000.0), "1,000");
        assert_eq!(thousands(1234567.4), "1,234,567");
    }

    #[test]
    fn the_tracer_is_read_from_the_status() {
        let status = "Name:\tsfc-server-work\nUmask:\t0022\nState:\tS (sleeping)\nTgid:\t4711\nNgid:\t0\nPid:\t4713\nPPid:\t4700\nTracerPid:\t4720\nUid:\t0\t0\t0\t0\n";
        assert_eq!(tracer_pid(status), Some(4720));
        assert_eq!(tracer_pid(&status.replace("4720", "0")), Some(0));
        assert_eq!(tracer_pid("Name:\tx\n"), None);
    }
}
