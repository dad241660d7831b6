//! What every scenario shares: the binaries, the work folders, the test file, and the
//! rows, notes and JSON figures collected for the report.

use crate::cli::Cli;
use crate::procs::Bins;
use crate::reference;
use crate::report::{self, Row, Spread};
use crate::upload;
use anyhow::{bail, Context, Result};
use serde_json::json;
use std::path::{Path, PathBuf};
use std::time::Instant;

/// Removes the benchmark's folders when dropped (also on errors).
#[derive(Debug)]
struct WorkDirs(Vec<PathBuf>);

impl Drop for WorkDirs {
    fn drop(&mut self) {
        for dir in &self.0 {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

/// Builds sfc-server and sfc-client with the profile of this build, when started by
/// `cargo run` (otherwise the binaries are taken as they are).
pub fn build_binaries() -> Result<()> {
    let (Ok(cargo), Ok(manifest)) = (std::env::var("CARGO"), std::env::var("CARGO_MANIFEST_DIR"))
    else {
        return Ok(());
    };
    let mut command = std::process::Command::new(cargo);
    command
        .current_dir(manifest)
        .args(["build", "--bins", "-p", "sfc-server", "-p", "sfc-client"]);
    if !cfg!(debug_assertions) {
        command.arg("--release");
    }
    eprintln!("building sfc-server and sfc-client ...");
    let status = command.status().context("cannot run cargo build")?;
    if !status.success() {
        bail!("cargo build failed: {status}");
    }
    Ok(())
}

/// One run of the tool: its options, the binaries under test, the work folders, and
/// what the scenarios have found so far.
#[derive(Debug)]
pub struct RunContext {
    /// The command line.
    pub cli: Cli,
    /// The binaries under test.
    pub bins: Bins,
    /// This run's folder on tmpfs.
    pub shm: PathBuf,
    /// This run's folder on disk.
    pub disk: PathBuf,
    /// The upload test file, once written.
    pub source: Option<PathBuf>,
    /// Rows of the results table.
    pub rows: Vec<Row>,
    /// Notes printed under the table.
    pub notes: Vec<String>,
    /// Raw figures for `--json`.
    pub json: serde_json::Map<String, serde_json::Value>,
    /// Scenarios that failed, with their error.
    pub failures: Vec<String>,
    /// Removes `shm` and `disk` when the run ends; declared last, so dropped last.
    _work_dirs: WorkDirs,
}

impl RunContext {
    /// Finds the binaries and creates this run's work folders.
    pub fn new(cli: Cli) -> Result<RunContext> {
        let bin_dir = match &cli.bin_dir {
            Some(dir) => dir.clone(),
            None => std::env::current_exe()?
                .parent()
                .map(Path::to_path_buf)
                .context("cannot locate this executable's folder")?,
        };
        let bins = Bins::in_dir(&bin_dir)?;
        let tag = format!("sfc-bench-{}", std::process::id());
        let shm = cli.shm.join(&tag);
        let disk = cli
            .disk_dir
            .clone()
            .unwrap_or_else(std::env::temp_dir)
            .join(&tag);
        std::fs::create_dir_all(&shm)
            .with_context(|| format!("cannot create {}", shm.display()))?;
        let work_dirs = WorkDirs(vec![shm.clone(), disk.clone()]);
        Ok(RunContext {
            cli,
            bins,
            shm,
            disk,
            source: None,
            rows: Vec::new(),
            notes: Vec::new(),
            json: serde_json::Map::new(),
            failures: Vec::new(),
            _work_dirs: work_dirs,
        })
    }

    /// `--admin`: the admin token file every server shares (created by the first), in
    /// this run's tmpfs folder.
    pub fn admin_token_file(&self) -> Option<PathBuf> {
        self.cli.admin.then(|| self.shm.join("admin.token"))
    }

    /// Scenario (a) or (b): uploads `source` with the server's data folder under `work`,
    /// which is removed afterwards whatever the outcome; `syscalls`: also count the
    /// system calls of one more upload when `--syscalls` is given.
    pub fn upload(
        &self,
        source: &Path,
        work: &Path,
        disk: bool,
        store: Option<(&str, &[(String, String)])>,
        syscalls: bool,
    ) -> Result<upload::UploadResult> {
        self.upload_with(&self.bins, source, work, disk, store, syscalls)
    }

    /// [`RunContext::upload`] with other binaries (`compare`).
    pub fn upload_with(
        &self,
        bins: &Bins,
        source: &Path,
        work: &Path,
        disk: bool,
        store: Option<(&str, &[(String, String)])>,
        syscalls: bool,
    ) -> Result<upload::UploadResult> {
        let token_file = self.admin_token_file();
        let result = upload::run(&upload::UploadConfig {
            bins,
            work,
            source,
            size: self.cli.size,
            runs: self.cli.runs,
            packet_size: self.cli.packet_size,
            disk,
            openssl_seconds: self.cli.openssl_seconds,
            store,
            admin: token_file.as_deref(),
            syscalls: syscalls && self.cli.syscalls,
        });
        let _ = std::fs::remove_dir_all(work);
        result
    }

    /// The upload test file of `--size` bytes on tmpfs, written on first use.
    pub fn source(&mut self) -> Result<PathBuf> {
        if let Some(path) = &self.source {
            return Ok(path.clone());
        }
        let path = self.shm.join(format!("upload-{}.bin", self.cli.size));
        eprintln!(
            "writing the {} test file {} ...",
            size_label(self.cli.size),
            path.display()
        );
        report::make_file(&path, self.cli.size, 0x5fc_beac)?;
        self.source = Some(path.clone());
        Ok(path)
    }

    /// Removes the upload test file, if one was written.
    pub fn remove_source(&mut self) {
        if let Some(source) = self.source.take() {
            let _ = std::fs::remove_file(source);
        }
    }

    /// Prints the machine, the results table, the notes and the failures (Markdown).
    pub fn print_report(&self, machine: &[(String, String)], started: Instant) {
        println!("## Machine\n");
        for (key, value) in machine {
            println!("- {key}: {value}");
        }
        println!("- load average at end: {}", reference::loadavg());
        println!("- total time: {:.0} s\n", started.elapsed().as_secs_f64());
        println!(
            "## Results (1 MB = 10^6 bytes; median (min–max) of {} runs)\n",
            self.cli.runs
        );
        print!("{}", report::table(&self.rows));
        if !self.notes.is_empty() {
            println!();
            for note in &self.notes {
                println!("- {note}");
            }
        }
        if !self.failures.is_empty() {
            println!("\n## Failed runs\n");
            for failure in &self.failures {
                println!("- {failure}");
            }
        }
    }

    /// Writes the raw figures, the machine and the failures to `--json`, if given.
    pub fn write_json(&self, machine: &[(String, String)]) -> Result<()> {
        if let Some(path) = &self.cli.json {
            let mut json = self.json.clone();
            json.insert(
                "machine".into(),
                serde_json::Value::Object(
                    machine.iter().map(|(k, v)| (k.clone(), json!(v))).collect(),
                ),
            );
            json.insert("admin_listener".into(), json!(self.cli.admin));
            json.insert("failures".into(), json!(self.failures));
            std::fs::write(path, serde_json::to_string_pretty(&json)?)
                .with_context(|| format!("cannot write {}", path.display()))?;
        }
        Ok(())
    }
}

/// `1 GiB`, `64 MiB` or `1000B`.
pub fn size_label(size: u64) -> String {
    if size >= 1 << 30 && size.is_multiple_of(1 << 30) {
        format!("{} GiB", size >> 30)
    } else if size >= 1 << 20 && size.is_multiple_of(1 << 20) {
        format!("{} MiB", size >> 20)
    } else {
        format!("{size}B")
    }
}

/// A table row comparing our median with a reference value, met at `target` × it.
pub fn ratio_row(
    id: &str,
    what: String,
    ours: Spread,
    unit: &str,
    reference: String,
    reference_value: f64,
    target: f64,
) -> Row {
    let ratio = ours.median / reference_value;
    Row {
        id: id.into(),
        what,
        ours: format!("{} {unit}", ours.show(0)),
        reference,
        ratio: Some(ratio),
        target: format!("≥ {target:.2} ×"),
        met: Some(ratio >= target),
    }
}

/// Whole numbers, for the notes.
pub fn round(values: &[f64]) -> Vec<f64> {
    values.iter().map(|v| v.round()).collect()
}

/// Two decimals, for the notes.
pub fn round2(values: &[f64]) -> Vec<f64> {
    values.iter().map(|v| (v * 100.0).round() / 100.0).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn size_labels_use_the_largest_whole_unit() {
        assert_eq!(size_label(1 << 30), "1 GiB");
        assert_eq!(size_label(3 << 30), "3 GiB");
        assert_eq!(size_label(1536 << 20), "1536 MiB");
        assert_eq!(size_label(1000), "1000B");
    }

    #[test]
    fn ratio_rows_compare_the_median_with_the_target() {
        let ours = Spread::of(&[90.0, 100.0, 110.0]);
        let row = ratio_row("a", "what".into(), ours, "MB/s", "ref".into(), 125.0, 0.8);
        assert_eq!(row.ratio, Some(0.8));
        assert_eq!(row.met, Some(true));
        assert_eq!(row.ours, "100 (90–110) MB/s");
        assert_eq!(row.target, "≥ 0.80 ×");
        let row = ratio_row("a", "what".into(), ours, "MB/s", "ref".into(), 126.0, 0.8);
        assert_eq!(row.met, Some(false));
    }

    #[test]
    fn rounding_for_the_notes() {
        assert_eq!(round(&[1.4, 1.6]), vec![1.0, 2.0]);
        assert_eq!(round2(&[1.234, 1.235_1]), vec![1.23, 1.24]);
    }
}
