//! Reference figures measured with system tools in the same run: `openssl speed`,
//! `dd conv=fsync`, `cksum`; and a description of the machine.

use anyhow::{anyhow, bail, Context, Result};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Instant;

/// `openssl speed -elapsed [-decrypt] -evp aes-256-cbc -bytes 16384 -seconds S`, in MB/s
/// (10^6 bytes). 16 KiB blocks: the streaming rate, as large as openssl measures by default.
/// `-elapsed`: divided by wall time like every figure of ours, not by user CPU time (the
/// default), which would hide the load of a shared machine.
pub fn openssl_aes(decrypt: bool, seconds: u32) -> Result<f64> {
    openssl_speed(decrypt, seconds, true)
}

/// The same divided by CPU time (`openssl speed` without `-elapsed`): one core's
/// encryption rate, whatever else runs; compared with CPU-time figures of ours.
pub fn openssl_aes_cpu(seconds: u32) -> Result<f64> {
    openssl_speed(false, seconds, false)
}

fn openssl_speed(decrypt: bool, seconds: u32, elapsed: bool) -> Result<f64> {
    let mut command = Command::new("openssl");
    command.arg("speed");
    if decrypt {
        command.arg("-decrypt");
    }
    if elapsed {
        command.arg("-elapsed");
    }
    let output = command
        .args(["-evp", "aes-256-cbc", "-bytes", "16384", "-seconds"])
        .arg(seconds.to_string())
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .output()
        .context("cannot run openssl speed (is openssl installed?)")?;
    if !output.status.success() {
        bail!("openssl speed failed: {}", output.status);
    }
    let text = String::from_utf8_lossy(&output.stdout);
    // Last line: "AES-256-CBC     1048289.28k" (thousands of bytes per second).
    let line = text
        .lines()
        .rev()
        .find(|l| l.to_ascii_uppercase().starts_with("AES-256-CBC"))
        .ok_or_else(|| anyhow!("unexpected openssl speed output:\n{text}"))?;
    let value = line
        .split_whitespace()
        .last()
        .and_then(|v| v.strip_suffix('k'))
        .and_then(|v| v.parse::<f64>().ok())
        .ok_or_else(|| anyhow!("unexpected openssl speed line {line:?}"))?;
    Ok(value * 1000.0 / 1e6)
}

/// `dd if=/dev/zero of=DIR/dd.bin bs=1M count=SIZE/1M conv=fsync`, in MB/s over the wall
/// time of the command (write and fsync); the file is removed afterwards.
pub fn dd_fsync(dir: &Path, size: u64) -> Result<f64> {
    let target = dir.join("dd-reference.bin");
    let count = size.div_ceil(1 << 20);
    let started = Instant::now();
    let status = Command::new("dd")
        .arg("if=/dev/zero")
        .arg(format!("of={}", target.display()))
        .args(["bs=1M", "conv=fsync"])
        .arg(format!("count={count}"))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .context("cannot run dd")?;
    let secs = started.elapsed().as_secs_f64();
    let _ = std::fs::remove_file(&target);
    sync();
    if !status.success() {
        bail!("dd failed: {status}");
    }
    Ok((count << 20) as f64 / secs / 1e6)
}

/// `cksum FILE`: (checksum, MB/s over the command's wall time).
pub fn system_cksum(file: &Path, size: u64) -> Result<(u32, f64)> {
    let started = Instant::now();
    let output = Command::new("cksum")
        .arg(file)
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .output()
        .context("cannot run cksum")?;
    let secs = started.elapsed().as_secs_f64();
    if !output.status.success() {
        bail!("cksum failed: {}", output.status);
    }
    let text = String::from_utf8_lossy(&output.stdout);
    let crc = text
        .split_whitespace()
        .next()
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| anyhow!("unexpected cksum output {text:?}"))?;
    Ok((crc, size as f64 / secs / 1e6))
}

/// `sync`: flushes every filesystem, so one disk measurement does not pay for another's
/// dirty pages.
pub fn sync() {
    let _ = Command::new("sync").status();
}

fn first_line(program: &str, args: &[&str]) -> String {
    Command::new(program)
        .args(args)
        .stderr(Stdio::null())
        .output()
        .ok()
        .map(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .next()
                .unwrap_or("")
                .trim()
                .to_string()
        })
        .unwrap_or_default()
}

/// The load average (1, 5, 15 minutes) as printed by `/proc/loadavg`.
pub fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

/// The value of `key` in the first processor of a `/proc/cpuinfo` text (`key : value`;
/// the key exactly, so `model` is not `model name`).
fn cpuinfo_field<'a>(cpuinfo: &'a str, key: &str) -> Option<&'a str> {
    cpuinfo.lines().find_map(|line| {
        let (k, v) = line.split_once(':')?;
        (k.trim() == key).then(|| v.trim())
    })
}

/// The CPU's name, its family, model and stepping numbers (which tell apart hosts of
/// the same brand name) and the SIMD flags that matter for AES and CRC.
fn cpu_line(cpuinfo: &str) -> String {
    let model = cpuinfo_field(cpuinfo, "model name").unwrap_or_default();
    let ids: Vec<String> = [
        ("family", "cpu family"),
        ("model", "model"),
        ("stepping", "stepping"),
    ]
    .iter()
    .filter_map(|(label, key)| Some(format!("{label} {}", cpuinfo_field(cpuinfo, key)?)))
    .collect();
    let flags = cpuinfo_field(cpuinfo, "flags").unwrap_or_default();
    let simd: Vec<&str> = ["aes", "vaes", "pclmulqdq", "vpclmulqdq", "avx2", "avx512f"]
        .into_iter()
        .filter(|f| flags.split_whitespace().any(|x| x == *f))
        .collect();
    format!("{model} ({}; {})", ids.join(", "), simd.join(" "))
}

/// A few lines that identify the machine and the tools.
pub fn machine() -> Vec<(String, String)> {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let mem = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines()
                .find_map(|l| l.strip_prefix("MemTotal:"))
                .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
        })
        .map_or_else(String::new, |kb| {
            format!("{:.1} GiB", kb as f64 / 1048576.0)
        });
    let mut lines = vec![
        ("cpu".into(), cpu_line(&cpuinfo)),
        ("cores".into(), cores.to_string()),
        ("memory".into(), mem),
        ("kernel".into(), first_line("uname", &["-r"])),
        ("openssl".into(), first_line("openssl", &["version"])),
        ("cksum".into(), first_line("cksum", &["--version"])),
        ("rustc".into(), first_line("rustc", &["--version"])),
        ("load average at start".into(), loadavg()),
    ];
    if let Ok(value) = std::fs::read_to_string(PAGE_REPORTING_DELAY) {
        lines.push(("free page reporting".into(), page_reporting_line(&value)));
    }
    lines
}

/// How long a freed page stays in the guest before it is reported to the host (virtio
/// free page reporting), in ms; only present in a VM that reports.
const PAGE_REPORTING_DELAY: &str = "/sys/module/page_reporting/parameters/min_free_ms";

/// The machine line for [`PAGE_REPORTING_DELAY`]'s value: at 0 the host takes back the
/// pages of the previous run's deleted file at once and the next upload faults them in
/// again (BENCHMARKS.md, Method, "Noise").
fn page_reporting_line(value: &str) -> String {
    let value = value.trim();
    match value.parse::<u64>() {
        Ok(0) => "min_free_ms 0: freed pages go back to the host at once; a run that \
                  writes into them again pays for it (outliers: BENCHMARKS.md, Method, Noise)"
            .into(),
        Ok(ms) => format!("min_free_ms {ms}: freed pages go back to the host after {ms} ms"),
        Err(_) => format!("min_free_ms {value:?} (unreadable)"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The start of this project machine's `/proc/cpuinfo` (flags shortened).
    const CPUINFO: &str = "processor\t: 0\nvendor_id\t: AuthenticAMD\ncpu family\t: 25\nmodel\t\t: 17\nmodel name\t: AMD EPYC\nstepping\t: 1\nmicrocode\t: 0x1000065\ncpu MHz\t\t: 2596.132\ncache size\t: 1024 KB\nflags\t\t: fpu vme de pse sse4_2 aes avx avx2 vaes vpclmulqdq avx512f\n\nprocessor\t: 1\nvendor_id\t: AuthenticAMD\ncpu family\t: 25\nmodel\t\t: 17\n";

    #[test]
    fn the_page_reporting_line_warns_when_pages_go_back_at_once() {
        assert!(page_reporting_line("0\n").contains("at once"));
        assert!(page_reporting_line("30000\n").ends_with("after 30000 ms"));
        assert!(page_reporting_line("x").contains("unreadable"));
    }

    #[test]
    fn the_cpu_line_names_family_model_and_stepping() {
        assert_eq!(
            cpu_line(CPUINFO),
            "AMD EPYC (family 25, model 17, stepping 1; aes vaes vpclmulqdq avx2 avx512f)"
        );
        assert_eq!(cpuinfo_field(CPUINFO, "model"), Some("17"));
        assert_eq!(cpuinfo_field(CPUINFO, "model name"), Some("AMD EPYC"));
    }
}
