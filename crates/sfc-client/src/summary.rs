//! What a run did, file by file: for the closing summary, `--json` and the exit code.
//!
//! A file that fails (the server refuses it, its checksum never matches, it changed while
//! being sent) does not stop the batch, as with scp and rsync; a failure of the
//! connection or the protocol does: the files after it are reported as skipped. The exit
//! code is that of the first failure (see [`crate::error::exit`]), 0 when every file was
//! stored.

use std::path::PathBuf;
use std::time::Duration;

use serde_json::json;

use crate::error::{exit, ClientError};
use crate::files::FileToSend;
use crate::progress::human_bytes;

/// How one file ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Status {
    /// Stored, and its checksum confirmed (900 acknowledged).
    Stored,
    /// Tried and not stored (or stored, but not as the file is now).
    Failed,
    /// Not tried: the batch stopped before it.
    Skipped,
}

impl Status {
    fn as_str(self) -> &'static str {
        match self {
            Status::Stored => "stored",
            Status::Failed => "failed",
            Status::Skipped => "skipped",
        }
    }
}

/// One file's line in the summary.
#[derive(Clone, Debug)]
pub struct FileReport {
    /// The name stored on the server.
    pub name: String,
    /// The file as given.
    pub path: PathBuf,
    /// Its size in bytes when it was checked.
    pub size: u64,
    /// The agreed checksum (POSIX cksum), when the server confirmed one.
    pub cksum: Option<u32>,
    /// How it ended.
    pub status: Status,
    /// Why it failed or was skipped.
    pub reason: Option<String>,
    /// The exit code its failure maps to (0 when stored).
    pub exit_code: u8,
    /// Time spent on it.
    pub duration: Duration,
}

impl FileReport {
    /// A stored file.
    pub fn stored(file: &FileToSend, cksum: u32, duration: Duration) -> Self {
        FileReport {
            name: file.label.as_str().to_owned(),
            path: file.path.clone(),
            size: file.size,
            cksum: Some(cksum),
            status: Status::Stored,
            reason: None,
            exit_code: exit::OK,
            duration,
        }
    }

    /// A file that failed with `error`.
    pub fn failed(file: &FileToSend, error: &ClientError, duration: Duration) -> Self {
        FileReport {
            status: Status::Failed,
            cksum: None,
            reason: Some(error.to_string()),
            exit_code: error.exit_code(),
            ..Self::stored(file, 0, duration)
        }
    }

    /// A file not tried because the batch stopped (`error` says why).
    pub fn skipped(file: &FileToSend, error: &ClientError) -> Self {
        FileReport {
            status: Status::Skipped,
            reason: Some(format!("not tried: {error}")),
            ..Self::failed(file, error, Duration::ZERO)
        }
    }

    /// The file as one JSON object (`--json`).
    pub fn to_json(&self) -> serde_json::Value {
        json!({
            "name": self.name,
            "path": self.path.display().to_string(),
            "size": self.size,
            "cksum": self.cksum,
            "status": self.status.as_str(),
            "reason": self.reason,
            "seconds": round_ms(self.duration),
        })
    }
}

fn round_ms(duration: Duration) -> f64 {
    (duration.as_secs_f64() * 1000.0).round() / 1000.0
}

/// What a whole run did.
#[derive(Clone, Debug, Default)]
pub struct Summary {
    /// Every file of the batch, in order.
    pub files: Vec<FileReport>,
    /// True when this run registered a new client.
    pub registered: bool,
}

impl Summary {
    /// Files with `status`.
    pub fn count(&self, status: Status) -> usize {
        self.files.iter().filter(|f| f.status == status).count()
    }

    /// The exit code: that of the first file that failed or was skipped, else 0.
    pub fn exit_code(&self) -> u8 {
        self.files
            .iter()
            .find(|f| f.status != Status::Stored)
            .map_or(exit::OK, |f| f.exit_code)
    }

    /// A batch of which nothing was tried: `error` came first.
    pub fn not_tried(files: &[FileToSend], error: &ClientError) -> Self {
        Summary {
            files: files
                .iter()
                .map(|f| FileReport::skipped(f, error))
                .collect(),
            registered: false,
        }
    }

    /// True when every file was stored.
    pub fn all_stored(&self) -> bool {
        self.files.iter().all(|f| f.status == Status::Stored)
    }

    /// The closing lines for people, for a batch of several files: `all N files stored`,
    /// or the counts and each failure or skip with its reason. Empty for a single file
    /// (its result or error has been said already).
    pub fn human(&self) -> Vec<String> {
        let total = self.files.len();
        let stored = self.count(Status::Stored);
        if total <= 1 {
            return Vec::new();
        }
        if stored == total {
            return vec![format!("all {total} files stored")];
        }
        let mut lines = vec![format!(
            "summary: {stored} of {total} file{} stored ({}), {} failed, {} skipped",
            if total == 1 { "" } else { "s" },
            human_bytes(self.stored_bytes()),
            self.count(Status::Failed),
            self.count(Status::Skipped)
        )];
        for file in self.files.iter().filter(|f| f.status != Status::Stored) {
            lines.push(format!(
                "  {} {}: {}",
                file.status.as_str(),
                file.name,
                file.reason.as_deref().unwrap_or("")
            ));
        }
        lines
    }

    fn stored_bytes(&self) -> u64 {
        self.files
            .iter()
            .filter(|f| f.status == Status::Stored)
            .map(|f| f.size)
            .sum()
    }

    /// The total as one JSON object (`--json`, after the files).
    pub fn total_json(&self, duration: Duration) -> serde_json::Value {
        self.total_with(duration, self.exit_code(), None)
    }

    /// The total (`--json`) of a batch that never started, the command line or
    /// transfer.info being wrong: no file, the error's exit code and message.
    pub fn refused_json(error: &ClientError, duration: Duration) -> serde_json::Value {
        let nothing = Summary {
            files: Vec::new(),
            registered: false,
        };
        nothing.total_with(duration, error.exit_code(), Some(error.to_string()))
    }

    fn total_with(
        &self,
        duration: Duration,
        exit_code: u8,
        error: Option<String>,
    ) -> serde_json::Value {
        json!({
            "total": {
                "files": self.files.len(),
                "stored": self.count(Status::Stored),
                "failed": self.count(Status::Failed),
                "skipped": self.count(Status::Skipped),
                "bytes": self.stored_bytes(),
                "seconds": round_ms(duration),
                "exit_code": exit_code,
                "error": error,
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::files::check_file;

    #[test]
    fn the_summary_counts_and_picks_the_first_failure_code() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.bin");
        std::fs::write(&path, b"12345").unwrap();
        let file = check_file(&path, crate::upload::PacketSizing::default()).unwrap();
        let checksum = ClientError::ChecksumFailed {
            files: vec!["a.bin".into()],
            attempts: 4,
        };
        let network = ClientError::Internal("gone".into());
        let summary = Summary {
            files: vec![
                FileReport::stored(&file, 7, Duration::from_millis(1500)),
                FileReport::failed(&file, &checksum, Duration::ZERO),
                FileReport::skipped(&file, &network),
            ],
            registered: false,
        };
        assert_eq!(summary.exit_code(), exit::CHECKSUM);
        let lines = summary.human();
        assert!(lines[0].starts_with("summary: 1 of 3 files stored (5 B), 1 failed, 1 skipped"));
        assert!(lines[2].contains("skipped a.bin: not tried: internal error: gone"));
        let json = summary.files[0].to_json();
        assert_eq!(json["cksum"], 7);
        assert_eq!(json["seconds"], 1.5);
        assert_eq!(json["status"], "stored");
        let total = summary.total_json(Duration::from_secs(2));
        assert_eq!(total["total"]["exit_code"], 4);
        assert_eq!(total["total"]["bytes"], 5);
    }

    /// A registration that could not be saved ends the run before any file: the key it
    /// could not save is in none of the files' reasons (`--json` prints one per file).
    #[test]
    fn no_reason_carries_an_unsaved_private_key() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.bin");
        std::fs::write(&path, b"12345").unwrap();
        let file = check_file(&path, crate::upload::PacketSizing::default()).unwrap();
        let key = "MIICdgIBADANBgkqhkiG9w0BAQEFAASCAmAwggJcAgEAAoGBAL-secret-key";
        let error = crate::test_support::unsaved_identity(key);
        let mut summary = Summary::not_tried(&[file.clone(), file.clone()], &error);
        summary
            .files
            .push(FileReport::failed(&file, &error, Duration::ZERO));
        for report in &summary.files {
            let json = report.to_json().to_string();
            assert!(!json.contains(key), "{json}");
            assert!(json.contains("00112233445566778899aabbccddeeff"), "{json}");
        }
        assert!(summary.human().iter().all(|line| !line.contains(key)));
        assert_eq!(error.unsaved_private_key(), Some(key));
    }
}
