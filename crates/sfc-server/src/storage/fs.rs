//! The blob store in a local folder.
//!
//! Layout under the data folder:
//!
//! ```text
//! files/<client-id as 32 hex digits>/<names::disk_name(label)>     stored files
//! files/<client-id as 32 hex digits>/.upload-<uuid>.tmp            uploads in progress
//! ```
//!
//! A temporary file is written beside its destination, so the final rename never
//! crosses a filesystem. Persisting is `fsync(file)`, `rename(temp, final)` (atomic,
//! replacing an earlier version), `fsync(directory)`. A new client folder is made durable
//! by `fsync` of its parent folders. Dropping an unpersisted temporary file removes it;
//! leftovers of a crash are removed at start-up ([`BlobStore::remove_stale_temps`]).

use super::{BlobStore, TempBlob};
use crate::names::{is_temp_name, TEMP_PREFIX};
use sfc_proto::ClientId;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Component, Path, PathBuf};

/// Folder under the data folder that holds one folder per client.
pub const FILES_DIR: &str = "files";

/// [`BlobStore`] in a local folder.
#[derive(Debug, Clone)]
pub struct LocalBlobStore {
    root: PathBuf,
}

fn sync_dir(path: &Path) -> io::Result<()> {
    // Directories can be opened read-only and fsynced on Unix; elsewhere this is a no-op
    // that may fail, which is not an error worth failing the upload for.
    match File::open(path) {
        Ok(dir) => match dir.sync_all() {
            Ok(()) => Ok(()),
            Err(error) if cfg!(unix) => Err(error),
            Err(_) => Ok(()),
        },
        Err(error) if cfg!(unix) => Err(error),
        Err(_) => Ok(()),
    }
}

impl LocalBlobStore {
    /// A store rooted at the data folder.
    pub fn new(root: impl Into<PathBuf>) -> Self {
        LocalBlobStore { root: root.into() }
    }

    fn client_dir_rel(client: &ClientId) -> String {
        format!("{FILES_DIR}/{}", client.to_hex())
    }

    /// Resolves a stored relative path, refusing anything that could leave the root.
    fn resolve(&self, rel: &str) -> io::Result<PathBuf> {
        let path = Path::new(rel);
        let confined =
            !rel.is_empty() && path.components().all(|c| matches!(c, Component::Normal(_)));
        if !confined {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("stored path {rel:?} is not a plain relative path"),
            ));
        }
        Ok(self.root.join(path))
    }

    fn ensure_client_dir(&self, client: &ClientId) -> io::Result<PathBuf> {
        let files = self.root.join(FILES_DIR);
        let dir = files.join(client.to_hex());
        if dir.is_dir() {
            return Ok(dir);
        }
        let files_existed = files.is_dir();
        fs::create_dir_all(&dir)?;
        sync_dir(&files)?;
        if !files_existed {
            sync_dir(&self.root)?;
        }
        Ok(dir)
    }
}

impl BlobStore for LocalBlobStore {
    fn create_temp(&self, client: &ClientId, disk_name: &str) -> io::Result<Box<dyn TempBlob>> {
        let dir = self.ensure_client_dir(client)?;
        let temp_path = dir.join(format!(
            "{TEMP_PREFIX}{}.tmp",
            uuid::Uuid::new_v4().simple()
        ));
        let file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&temp_path)?;
        Ok(Box::new(LocalTemp {
            file: Some(file),
            temp_path,
            final_path: dir.join(disk_name),
            dir,
            rel_path: format!("{}/{disk_name}", Self::client_dir_rel(client)),
        }))
    }

    fn remove(&self, path: &str) -> io::Result<()> {
        let full = self.resolve(path)?;
        match fs::remove_file(&full) {
            Ok(()) => {}
            Err(error) if error.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(error) => return Err(error),
        }
        if let Some(parent) = full.parent() {
            sync_dir(parent)?;
        }
        Ok(())
    }

    fn size(&self, path: &str) -> io::Result<u64> {
        Ok(fs::metadata(self.resolve(path)?)?.len())
    }

    fn remove_stale_temps(&self) -> io::Result<usize> {
        let files = self.root.join(FILES_DIR);
        let clients = match fs::read_dir(&files) {
            Ok(entries) => entries,
            Err(error) if error.kind() == io::ErrorKind::NotFound => return Ok(0),
            Err(error) => return Err(error),
        };
        let mut removed = 0;
        for client in clients {
            let client = client?;
            if !client.file_type()?.is_dir() {
                continue;
            }
            for entry in fs::read_dir(client.path())? {
                let entry = entry?;
                let stale = entry.file_name().to_str().is_some_and(is_temp_name);
                if stale && entry.file_type()?.is_file() {
                    fs::remove_file(entry.path())?;
                    removed += 1;
                }
            }
        }
        Ok(removed)
    }
}

/// A temporary file beside its destination.
#[derive(Debug)]
struct LocalTemp {
    file: Option<File>,
    temp_path: PathBuf,
    final_path: PathBuf,
    dir: PathBuf,
    rel_path: String,
}

impl TempBlob for LocalTemp {
    fn write_all(&mut self, bytes: &[u8]) -> io::Result<()> {
        match self.file.as_mut() {
            Some(file) => file.write_all(bytes),
            None => Err(io::Error::other("temporary file already closed")),
        }
    }

    fn persist(mut self: Box<Self>) -> io::Result<String> {
        let file = self
            .file
            .take()
            .ok_or_else(|| io::Error::other("temporary file already closed"))?;
        file.sync_all()?;
        drop(file);
        fs::rename(&self.temp_path, &self.final_path)?;
        // From here on the temporary name no longer exists: nothing to clean up.
        self.temp_path = PathBuf::new();
        sync_dir(&self.dir)?;
        Ok(std::mem::take(&mut self.rel_path))
    }
}

impl Drop for LocalTemp {
    fn drop(&mut self) {
        self.file.take();
        if !self.temp_path.as_os_str().is_empty() {
            if let Err(error) = fs::remove_file(&self.temp_path) {
                if error.kind() != io::ErrorKind::NotFound {
                    tracing::warn!(path = %self.temp_path.display(), %error, "could not remove temporary file");
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn temp_files_persist_atomically_and_are_removed_when_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let store = LocalBlobStore::new(dir.path());
        let client = ClientId([0xab; 16]);
        let mut temp = store.create_temp(&client, "a.txt").unwrap();
        temp.write_all(b"hello").unwrap();
        let rel = temp.persist().unwrap();
        assert_eq!(rel, format!("files/{}/a.txt", "ab".repeat(16)));
        assert_eq!(fs::read(dir.path().join(&rel)).unwrap(), b"hello");
        assert_eq!(store.size(&rel).unwrap(), 5);

        // Replacing an earlier version.
        let mut temp = store.create_temp(&client, "a.txt").unwrap();
        temp.write_all(b"v2").unwrap();
        assert_eq!(temp.persist().unwrap(), rel);
        assert_eq!(fs::read(dir.path().join(&rel)).unwrap(), b"v2");

        let mut dropped = store.create_temp(&client, "b.txt").unwrap();
        dropped.write_all(b"partial").unwrap();
        drop(dropped);
        let names: Vec<_> = fs::read_dir(dir.path().join("files").join("ab".repeat(16)))
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        assert_eq!(names, ["a.txt"]);

        store.remove(&rel).unwrap();
        store.remove(&rel).unwrap();
        assert!(store.remove("../x").is_err());
        assert!(store.remove("/etc/passwd").is_err());
    }

    #[test]
    fn stale_temps_are_removed() {
        let dir = tempfile::tempdir().unwrap();
        let store = LocalBlobStore::new(dir.path());
        assert_eq!(store.remove_stale_temps().unwrap(), 0);
        let client_dir = dir.path().join("files").join("00".repeat(16));
        fs::create_dir_all(&client_dir).unwrap();
        fs::write(client_dir.join(".upload-1.tmp"), b"x").unwrap();
        fs::write(client_dir.join(".upload-2.tmp"), b"x").unwrap();
        fs::write(client_dir.join("kept.bin"), b"x").unwrap();
        assert_eq!(store.remove_stale_temps().unwrap(), 2);
        assert!(client_dir.join("kept.bin").exists());
    }
}
