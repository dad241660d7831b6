//! Child processes: the `sfc-server` and `sfc-client` release binaries, memory readings
//! from `/proc`, and cleanup (every child is killed and reaped, also on errors).

use anyhow::{anyhow, bail, Context, Result};
use std::collections::VecDeque;
use std::io::{BufRead, BufReader, Read};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

/// The binaries under test.
#[derive(Debug, Clone)]
pub struct Bins {
    /// `sfc-server`.
    pub server: PathBuf,
    /// `sfc-client`.
    pub client: PathBuf,
}

impl Bins {
    /// Finds both binaries in `dir`.
    pub fn in_dir(dir: &Path) -> Result<Self> {
        let server = dir.join("sfc-server");
        let client = dir.join("sfc-client");
        for bin in [&server, &client] {
            if !bin.is_file() {
                bail!(
                    "{} not found: build the binaries first (cargo build --release --bins) or pass --bin-dir",
                    bin.display()
                );
            }
        }
        Ok(Bins { server, client })
    }

    /// The default the measured `sfc-server` binary shows for `flag` in its `--help`
    /// (clap's `[default: N]`): read from the binary itself, so the figure always belongs
    /// to the build being measured.
    pub fn server_default(&self, flag: &str) -> Result<u64> {
        let help = Command::new(&self.server).arg("--help").output()?;
        let text = String::from_utf8_lossy(&help.stdout);
        parse_help_default(&text, flag).with_context(|| {
            format!(
                "{} --help shows no default for {flag}",
                self.server.display()
            )
        })
    }
}

/// The number in `[default: N]` of the option `flag` in clap's long help: the option's
/// paragraph runs from its line to the next option line.
fn parse_help_default(help: &str, flag: &str) -> Option<u64> {
    let mut lines = help.lines().skip_while(|line| {
        !line
            .trim_start()
            .split([' ', ',', '='])
            .any(|word| word == flag)
    });
    let first = lines.next()?;
    std::iter::once(first)
        .chain(lines.take_while(|line| !line.trim_start().starts_with('-')))
        .find_map(|line| {
            let rest = line.split("[default: ").nth(1)?;
            rest.split(']').next()?.replace(',', "").parse().ok()
        })
}

#[cfg(test)]
mod tests {
    use super::{listening, parse_help_default, Listening, ProcFiles};
    use std::sync::mpsc;
    use std::time::{Duration, Instant};

    /// Keeps the calling thread on the CPU until it has used `cpu` seconds more (by its
    /// own CPU time, so that a loaded machine only makes it take longer).
    fn spin(cpu: f64) {
        let start = super::thread_cpu_secs().unwrap();
        let mut x = 0_u64;
        while super::thread_cpu_secs().unwrap() - start < cpu {
            for _ in 0..100_000 {
                x = std::hint::black_box(x.wrapping_mul(31).wrapping_add(7));
            }
        }
    }

    #[test]
    fn kept_open_proc_files_follow_a_thread_from_its_start_to_its_end() {
        let mut files = ProcFiles::open(std::process::id());
        assert!(files.peak_rss_kb().is_some_and(|kb| kb > 0));
        let (tid_tx, tid_rx) = mpsc::channel();
        let (go_tx, go_rx) = mpsc::channel::<()>();
        let worker = std::thread::spawn(move || {
            let me = std::fs::read_link("/proc/thread-self").unwrap();
            let tid: u32 = me.file_name().unwrap().to_str().unwrap().parse().unwrap();
            tid_tx.send(tid).unwrap();
            for _ in 0..2 {
                go_rx.recv().unwrap();
                spin(0.12);
                tid_tx.send(tid).unwrap();
            }
            go_rx.recv().unwrap();
        });
        let tid = tid_rx.recv().unwrap();
        // Started after the files were opened: found by looking again.
        let cpu_of = |files: &mut ProcFiles| {
            files
                .thread_usage()
                .into_iter()
                .find_map(|(t, cpu, _, _)| (t == tid).then_some(cpu))
        };
        assert_eq!(cpu_of(&mut files), None);
        files.find_threads();
        go_tx.send(()).unwrap();
        tid_rx.recv().unwrap();
        let first = cpu_of(&mut files).expect("the new thread is read");
        go_tx.send(()).unwrap();
        tid_rx.recv().unwrap();
        // The same open file, read again, shows the CPU spent since.
        let second = cpu_of(&mut files).expect("still there");
        assert!(second >= first + 0.05, "{first} then {second}");
        go_tx.send(()).unwrap();
        worker.join().unwrap();
        // Its files say it has gone: it is no longer reported, and forgotten.
        let deadline = Instant::now() + Duration::from_secs(5);
        while cpu_of(&mut files).is_some() {
            assert!(Instant::now() < deadline, "thread {tid} still reported");
            std::thread::sleep(Duration::from_millis(10));
        }
        assert!(!files.threads.contains_key(&tid));
    }

    #[test]
    fn the_listeners_are_read_from_the_log() {
        // Lines of an sfc-server started with --admin-listen 127.0.0.1:0.
        let line = "2026-11-28T10:27:27.747960Z  INFO listening on 127.0.0.1:35657";
        assert!(matches!(listening(line), Some(Listening::Protocol(a)) if a == "127.0.0.1:35657"));
        let line = "2026-11-28T10:27:27.747974Z  INFO admin listener on http://127.0.0.1:37357/";
        assert!(matches!(listening(line), Some(Listening::Admin(a)) if a == "127.0.0.1:37357"));
        for line in [
            "2026-11-28T10:27:27.745206Z  INFO open-file limit limit=20000",
            "2026-11-28T10:27:27.747788Z  WARN admin token created (owner-only); log in to the admin listener with its content path=/tmp/bt-probe/adm.token",
        ] {
            assert!(listening(line).is_none(), "{line}");
        }
    }

    #[test]
    fn reads_the_default_of_the_named_option_only() {
        let help = "Options:\n      --max-connections <N>\n          Most connections at once\n\n          [default: 16384]\n\n      --max-connections-per-address <N>\n          [default: 256]\n      --idle-timeout <SECS>\n          no default here\n";
        assert_eq!(parse_help_default(help, "--max-connections"), Some(16384));
        assert_eq!(
            parse_help_default(help, "--max-connections-per-address"),
            Some(256)
        );
        assert_eq!(parse_help_default(help, "--idle-timeout"), None);
        assert_eq!(parse_help_default(help, "--missing"), None);
    }
}

/// A field of `/proc/PID/status` in kB (`VmRSS`, `VmHWM`).
pub fn status_kb(pid: u32, field: &str) -> Option<u64> {
    status_field_kb(
        &std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?,
        field,
    )
}

/// A field in kB from the text of a `/proc/PID/status` file.
fn status_field_kb(text: &str, field: &str) -> Option<u64> {
    text.lines().find_map(|line| {
        let rest = line.strip_prefix(field)?.strip_prefix(':')?;
        rest.split_whitespace().next()?.parse().ok()
    })
}

/// CPU time (user + system, all threads) of a process, seconds; with `children`, that of
/// its waited-for children instead.
pub fn cpu_secs(pid: u32, children: bool) -> Option<f64> {
    stat_cpu_secs(
        &std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?,
        children,
    )
}

/// CPU time (user + system) of the calling thread, seconds.
pub fn thread_cpu_secs() -> Option<f64> {
    stat_cpu_secs(
        &std::fs::read_to_string("/proc/thread-self/stat").ok()?,
        false,
    )
}

/// CPU seconds from the text of a `/proc/PID/stat` or `/proc/PID/task/TID/stat` file.
pub(crate) fn stat_cpu_secs(text: &str, children: bool) -> Option<f64> {
    // Fields after the command name (which may contain spaces) in parentheses.
    let rest = text.rsplit_once(')')?.1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // utime, stime, cutime, cstime are fields 14..=17 of the whole line; `rest` starts at
    // field 3.
    let (a, b) = if children { (13, 14) } else { (11, 12) };
    let ticks: f64 = fields.get(a)?.parse::<f64>().ok()? + fields.get(b)?.parse::<f64>().ok()?;
    Some(ticks / clock_ticks())
}

/// Every thread of a process still there: (TID, its `/proc/PID/task/TID` folder, CPU
/// seconds (user + system) so far).
pub fn tasks(pid: u32) -> Vec<(u32, std::path::PathBuf, f64)> {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return Vec::new();
    };
    tasks
        .flatten()
        .filter_map(|task| {
            let tid: u32 = task.file_name().to_str()?.parse().ok()?;
            let stat = std::fs::read_to_string(task.path().join("stat")).ok()?;
            Some((tid, task.path(), stat_cpu_secs(&stat, false)?))
        })
        .collect()
}

/// The `/proc` files of a running process, opened once and read again in place on every
/// sample: opening them anew each time (a path walk through procfs per file) cost the
/// tool about 6 % of a core at its 3 ms interval, on the two cores it measures.
struct ProcFiles {
    pid: u32,
    status: Option<std::fs::File>,
    /// Per thread: its `stat` and `io` files.
    threads: std::collections::HashMap<u32, (std::fs::File, std::fs::File)>,
    buf: Vec<u8>,
}

impl ProcFiles {
    fn open(pid: u32) -> Self {
        let mut files = ProcFiles {
            pid,
            status: std::fs::File::open(format!("/proc/{pid}/status")).ok(),
            threads: std::collections::HashMap::new(),
            buf: Vec::with_capacity(4096),
        };
        files.find_threads();
        files
    }

    /// Opens the files of threads started since the last call.
    fn find_threads(&mut self) {
        let Ok(tasks) = std::fs::read_dir(format!("/proc/{}/task", self.pid)) else {
            return;
        };
        for task in tasks.flatten() {
            let Some(tid) = task.file_name().to_str().and_then(|t| t.parse().ok()) else {
                continue;
            };
            if self.threads.contains_key(&tid) {
                continue;
            }
            let open = |name| std::fs::File::open(task.path().join(name));
            if let (Ok(stat), Ok(io)) = (open("stat"), open("io")) {
                self.threads.insert(tid, (stat, io));
            }
        }
    }

    /// `VmHWM` in kB; `None` once the process has gone.
    fn peak_rss_kb(&mut self) -> Option<u64> {
        let text = read_again(self.status.as_ref()?, &mut self.buf)?;
        status_field_kb(text, "VmHWM")
    }

    /// CPU seconds (user + system) of each thread still there, with the bytes it read
    /// and wrote (`stat`, `io`): (TID, seconds, rchar, wchar).
    fn thread_usage(&mut self) -> Vec<(u32, f64, u64, u64)> {
        let mut usage = Vec::with_capacity(self.threads.len());
        let mut gone = Vec::new();
        for (&tid, (stat, io)) in &self.threads {
            let Some(cpu) = read_again(stat, &mut self.buf).and_then(|t| stat_cpu_secs(t, false))
            else {
                gone.push(tid);
                continue;
            };
            let io = read_again(io, &mut self.buf).unwrap_or_default();
            let count = |key: &str| {
                io.lines()
                    .find_map(|line| line.strip_prefix(key)?.trim().parse().ok())
                    .unwrap_or(0)
            };
            usage.push((tid, cpu, count("rchar:"), count("wchar:")));
        }
        for tid in gone {
            self.threads.remove(&tid);
        }
        usage
    }
}

/// The whole text of a `/proc` file read again from its start (procfs regenerates it on
/// every read at offset 0); `None` once its process or thread has gone.
fn read_again<'a>(mut file: &std::fs::File, buf: &'a mut Vec<u8>) -> Option<&'a str> {
    use std::io::{Seek, SeekFrom};
    buf.clear();
    file.seek(SeekFrom::Start(0)).ok()?;
    file.read_to_end(buf).ok()?;
    if buf.is_empty() {
        return None;
    }
    std::str::from_utf8(buf).ok()
}

/// CPU seconds of sfc-client's threads during an upload, as last sampled before it
/// exited (so a few milliseconds short).
#[derive(Debug, Clone, Copy, Default)]
pub struct ClientThreads {
    /// The main thread: key exchange, then AES encryption of every packet.
    pub main: f64,
    /// The thread that reads the file and computes its cksum (`rchar` counts its file
    /// reads).
    pub reader: f64,
    /// The thread that sends to the socket (`send` counts in neither `rchar` nor
    /// `wchar`).
    pub writer: f64,
}

impl ClientThreads {
    fn classify(pid: u32, threads: &std::collections::HashMap<u32, (f64, u64, u64)>) -> Self {
        let mut result = ClientThreads::default();
        for (tid, (cpu, read, written)) in threads {
            if *tid == pid {
                result.main += cpu;
            } else if read > written {
                result.reader += cpu;
            } else {
                result.writer += cpu;
            }
        }
        result
    }
}

fn clock_ticks() -> f64 {
    // USER_HZ is 100 on every Linux architecture this runs on (getconf CLK_TCK).
    100.0
}

/// Resets the peak RSS (`VmHWM`) of a process; false where the kernel does not allow it.
fn reset_hwm(pid: u32) -> bool {
    std::fs::write(format!("/proc/{pid}/clear_refs"), "5").is_ok()
}

/// Number of open file descriptors of a process.
pub fn fd_count(pid: u32) -> Option<usize> {
    Some(std::fs::read_dir(format!("/proc/{pid}/fd")).ok()?.count())
}

fn strip_ansi(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

#[derive(Debug, Default)]
struct LogTail {
    lines: VecDeque<String>,
    nofile: Option<u64>,
}

/// An address the server logged: its protocol listener or its admin listener.
#[derive(Debug)]
enum Listening {
    Protocol(String),
    Admin(String),
}

/// The listener a server log line announces: `listening on ADDR`, or `admin listener on
/// http://ADDR/`.
fn listening(line: &str) -> Option<Listening> {
    if let Some(rest) = line.split("admin listener on ").nth(1) {
        let url = rest.split_whitespace().next()?;
        let addr = url.split("://").nth(1)?.trim_end_matches('/');
        return Some(Listening::Admin(addr.to_string()));
    }
    let rest = line.split("listening on ").nth(1)?;
    Some(Listening::Protocol(rest.trim().to_string()))
}

/// Reads the server's stderr to its end (so the server never blocks on a full pipe):
/// keeps the last lines and the open-file limit in `log`, sends the listeners' addresses.
fn read_log(
    stderr: impl Read + Send + 'static,
    log: Arc<Mutex<LogTail>>,
    addr_tx: mpsc::Sender<Listening>,
) {
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines() {
            let Ok(line) = line else { break };
            let line = strip_ansi(&line);
            if let Some(address) = listening(&line) {
                let _ = addr_tx.send(address);
            }
            let mut tail = log.lock().unwrap_or_else(|p| p.into_inner());
            if line.contains("open-file limit") {
                tail.nofile = line
                    .split("limit=")
                    .nth(1)
                    .and_then(|s| s.split_whitespace().next())
                    .and_then(|s| s.parse().ok());
            }
            tail.lines.push_back(line);
            if tail.lines.len() > 200 {
                tail.lines.pop_front();
            }
        }
    });
}

/// A running `sfc-server`.
#[derive(Debug)]
pub struct Server {
    child: Child,
    /// Its process ID.
    pub pid: u32,
    /// Where it listens (always 127.0.0.1).
    pub addr: SocketAddr,
    /// Where its admin listener listens, when started with `--admin-listen`.
    pub admin_addr: Option<SocketAddr>,
    log: Arc<Mutex<LogTail>>,
}

impl Server {
    /// Starts a server on 127.0.0.1 with a free port; returns once it is listening.
    pub fn start(bin: &Path, data_dir: &Path, extra: &[String]) -> Result<Server> {
        Self::start_with_env(bin, data_dir, extra, &[])
    }

    /// [`Server::start`] with more environment variables (the S3 store's `AWS_*`).
    pub fn start_with_env(
        bin: &Path,
        data_dir: &Path,
        extra: &[String],
        env: &[(String, String)],
    ) -> Result<Server> {
        std::fs::create_dir_all(data_dir)
            .with_context(|| format!("cannot create {}", data_dir.display()))?;
        let mut child = Command::new(bin)
            .arg("--data-dir")
            .arg(data_dir)
            .args(["--port", "0", "--bind", "127.0.0.1", "--log-level", "info"])
            .args(extra)
            .envs(env.iter().map(|(k, v)| (k, v)))
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("cannot start {}", bin.display()))?;
        let pid = child.id();
        let log = Arc::new(Mutex::new(LogTail::default()));
        let (addr_tx, addr_rx) = mpsc::channel();
        if let Some(stderr) = child.stderr.take() {
            read_log(stderr, Arc::clone(&log), addr_tx);
        }
        let mut server = Server {
            child,
            pid,
            addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            admin_addr: None,
            log,
        };
        let admin = extra.iter().any(|arg| arg == "--admin-listen");
        server.wait_listening(&addr_rx, admin)?;
        Ok(server)
    }

    /// Waits (up to 30 s) until the server has logged its address, and that of its admin
    /// listener when `admin`.
    fn wait_listening(&mut self, addr_rx: &mpsc::Receiver<Listening>, admin: bool) -> Result<()> {
        let deadline = Instant::now() + Duration::from_secs(30);
        let mut protocol = false;
        while !protocol || (admin && self.admin_addr.is_none()) {
            let parse = |text: &str| -> Result<SocketAddr> {
                text.parse()
                    .with_context(|| format!("server printed an odd address {text:?}"))
            };
            match addr_rx.recv_timeout(Duration::from_millis(100)) {
                Ok(Listening::Protocol(text)) => {
                    self.addr = parse(&text)?;
                    protocol = true;
                }
                Ok(Listening::Admin(text)) => self.admin_addr = Some(parse(&text)?),
                Err(_) if Instant::now() > deadline => {
                    bail!("the server did not listen within 30 s:\n{}", self.tail(20))
                }
                Err(_) => self.check_alive()?,
            }
        }
        Ok(())
    }

    /// The last `n` lines it logged.
    pub fn tail(&self, n: usize) -> String {
        let tail = self.log.lock().unwrap_or_else(|p| p.into_inner());
        let skip = tail.lines.len().saturating_sub(n);
        tail.lines
            .iter()
            .skip(skip)
            .cloned()
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// The open-file limit the server reported at start-up.
    pub fn nofile_limit(&self) -> Option<u64> {
        self.log.lock().unwrap_or_else(|p| p.into_inner()).nofile
    }

    /// Fails if the server has exited.
    pub fn check_alive(&mut self) -> Result<()> {
        if let Some(status) = self.child.try_wait()? {
            bail!("the server exited ({status}):\n{}", self.tail(20));
        }
        Ok(())
    }

    /// Current RSS in kB.
    pub fn rss_kb(&self) -> Result<u64> {
        status_kb(self.pid, "VmRSS").ok_or_else(|| anyhow!("cannot read the server's VmRSS"))
    }

    /// Stops the server: SIGTERM, up to 15 s for a graceful shutdown, then SIGKILL.
    pub fn stop(mut self) -> Result<()> {
        match sfc_testkit::terminate_or_kill(&mut self.child, Duration::from_secs(15))? {
            Some(status) if status.success() => Ok(()),
            Some(status) => Err(anyhow!("the server exited with {status}")),
            None => bail!("the server did not stop within 15 s of SIGTERM; killed"),
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
        }
        let _ = self.child.wait();
    }
}

/// The peak RSS of a process over a stretch of time: its `VmHWM`, reset at the start,
/// where the kernel allows the reset; only elsewhere `VmRSS` sampled every 5 ms (which
/// misses peaks between samples). Sampling only where needed keeps the tool off the two
/// cores it measures (~0.015 s of CPU per 1 GiB upload).
#[derive(Debug)]
pub struct PeakRss {
    pid: u32,
    sampler: Option<RssSampler>,
}

impl PeakRss {
    /// Starts watching `pid`.
    pub fn watch(pid: u32) -> Self {
        let sampler = (!reset_hwm(pid)).then(|| RssSampler::start(vec![pid]));
        PeakRss { pid, sampler }
    }

    /// The peak RSS since [`PeakRss::watch`], kB (0 if it could not be read).
    pub fn finish(self) -> u64 {
        match self.sampler {
            Some(sampler) => sampler.finish().first().copied().unwrap_or(0),
            None => status_kb(self.pid, "VmHWM").unwrap_or(0),
        }
    }
}

/// Polls the RSS of processes every few milliseconds in a background thread.
#[derive(Debug)]
struct RssSampler {
    stop: Arc<AtomicBool>,
    peaks: Arc<Vec<AtomicU64>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl RssSampler {
    /// Samples `VmRSS` of `pids`.
    fn start(pids: Vec<u32>) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let peaks: Arc<Vec<AtomicU64>> = Arc::new(pids.iter().map(|_| AtomicU64::new(0)).collect());
        let thread = {
            let stop = Arc::clone(&stop);
            let peaks = Arc::clone(&peaks);
            std::thread::spawn(move || loop {
                for (pid, peak) in pids.iter().zip(peaks.iter()) {
                    if let Some(kb) = status_kb(*pid, "VmRSS") {
                        peak.fetch_max(kb, Ordering::Relaxed);
                    }
                }
                if stop.load(Ordering::Relaxed) {
                    break;
                }
                std::thread::sleep(Duration::from_millis(5));
            })
        };
        RssSampler {
            stop,
            peaks,
            thread: Some(thread),
        }
    }

    /// Stops sampling; the peak VmRSS seen per process, in kB.
    fn finish(mut self) -> Vec<u64> {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
        self.peaks
            .iter()
            .map(|p| p.load(Ordering::Relaxed))
            .collect()
    }
}

impl Drop for RssSampler {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// One run of `sfc-client`.
#[derive(Debug)]
pub struct ClientRun {
    /// From spawning the process to its exit (it exits after the confirming 1604).
    pub wall: Duration,
    /// Its peak RSS in kB (last `VmHWM` read before it exited).
    pub peak_rss_kb: u64,
    /// Exit status.
    pub status: ExitStatus,
    /// What it printed on stderr.
    pub stderr: String,
    /// CPU time per thread.
    pub threads: ClientThreads,
}

/// Runs `sfc-client --server ADDR --name NAME --dir DIR --quiet [--packet-size N] FILE`,
/// killing it after `timeout`.
pub fn run_client(
    bin: &Path,
    dir: &Path,
    server: SocketAddr,
    name: &str,
    file: &Path,
    packet_size: Option<usize>,
    timeout: Duration,
) -> Result<ClientRun> {
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let mut command = client_command(bin, dir, server, name, file, packet_size);
    let started = Instant::now();
    let mut child = command
        .spawn()
        .with_context(|| format!("cannot start {}", bin.display()))?;
    let pid = child.id();
    let stderr = child.stderr.take();
    let reader = std::thread::spawn(move || {
        let mut text = String::new();
        if let Some(mut stderr) = stderr {
            let _ = stderr.read_to_string(&mut text);
        }
        text
    });
    let done = Arc::new(AtomicBool::new(false));
    let hwm = Arc::new(AtomicU64::new(0));
    let poller = spawn_poller(pid, Arc::clone(&done), Arc::clone(&hwm));
    let watchdog = spawn_watchdog(pid, Arc::clone(&done), timeout);
    let status = child.wait()?;
    let wall = started.elapsed();
    done.store(true, Ordering::Relaxed);
    let threads = poller.join().unwrap_or_default();
    let timed_out = watchdog.join().unwrap_or(false);
    let stderr = reader.join().unwrap_or_default();
    if timed_out {
        bail!("sfc-client did not finish within {timeout:?}; killed. stderr:\n{stderr}");
    }
    Ok(ClientRun {
        wall,
        peak_rss_kb: hwm.load(Ordering::Relaxed),
        status,
        stderr,
        threads,
    })
}

/// `sfc-client --server ADDR --name NAME --dir DIR --quiet [--packet-size N] FILE`, its
/// stderr captured.
pub fn client_command(
    bin: &Path,
    dir: &Path,
    server: SocketAddr,
    name: &str,
    file: &Path,
    packet_size: Option<usize>,
) -> Command {
    let mut command = Command::new(bin);
    command
        .arg("--server")
        .arg(server.to_string())
        .arg("--name")
        .arg(name)
        .arg("--dir")
        .arg(dir)
        .arg("--quiet");
    if let Some(size) = packet_size {
        command.arg("--packet-size").arg(size.to_string());
    }
    command
        .arg(file)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    command
}

/// Polls the client's peak RSS into `hwm` and its threads' CPU time until `done` (or
/// until it has exited); returns the threads' CPU time.
fn spawn_poller(
    pid: u32,
    done: Arc<AtomicBool>,
    hwm: Arc<AtomicU64>,
) -> std::thread::JoinHandle<ClientThreads> {
    std::thread::spawn(move || {
        // Last reading per thread: threads end before the process, so keep them all.
        let mut threads = std::collections::HashMap::new();
        let mut files = ProcFiles::open(pid);
        let mut samples = 0_u32;
        while !done.load(Ordering::Relaxed) {
            match files.peak_rss_kb() {
                Some(kb) => {
                    hwm.fetch_max(kb, Ordering::Relaxed);
                }
                None => break,
            }
            // The client starts its threads once, after the key exchange: looking for
            // new ones every ~50 ms loses none of their CPU (only the last reading of a
            // thread counts).
            if samples.is_multiple_of(16) {
                files.find_threads();
            }
            samples = samples.wrapping_add(1);
            for (tid, cpu, read, written) in files.thread_usage() {
                threads.insert(tid, (cpu, read, written));
            }
            std::thread::sleep(Duration::from_millis(3));
        }
        ClientThreads::classify(pid, &threads)
    })
}

/// Kills the client after `timeout` unless `done` comes first; returns whether it did.
fn spawn_watchdog(
    pid: u32,
    done: Arc<AtomicBool>,
    timeout: Duration,
) -> std::thread::JoinHandle<bool> {
    std::thread::spawn(move || {
        let deadline = Instant::now() + timeout;
        while !done.load(Ordering::Relaxed) {
            if Instant::now() > deadline {
                if let Err(error) = sfc_testkit::send_signal(pid, sfc_testkit::Signal::Kill) {
                    eprintln!("    the watchdog could not stop the client: {error}");
                }
                return true;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        false
    })
}
