//! The blob store in a local folder.
//!
//! Layout under the data folder:
//!
//! ```text
//! files/<client-id as 32 hex digits>/<names::disk_name(label)>     stored files
//! files/<client-id as 32 hex digits>/.upload-<uuid>.tmp            uploads in progress
//! sfc-setup-id                                                      the set-up ID (storage::pairing)
//! ```
//!
//! A temporary file is written beside its destination, so the final rename never
//! crosses a filesystem. Persisting is `fsync(file)`, `rename(temp, final)` (atomic,
//! replacing an earlier version), `fsync(directory)`. A new client folder is made durable
//! by `fsync` of its parent folders. Dropping an unpersisted temporary file removes it;
//! leftovers of a crash are removed at start-up ([`BlobStore::remove_stale_temps`]).

use super::{BlobStore, Persisted, TempBlob};
use crate::storage::names::{is_temp_name, TEMP_PREFIX};
use crate::storage::pairing::{already_kept, kept, parse_kept, SETUP_ID_PATH};
use sfc_proto::ClientId;
use std::fs::{self, File};
use std::io::{self, Write};
use std::path::{Component, Path, PathBuf};

/// Folder under the data folder that holds one folder per client.
pub const FILES_DIR: &str = "files";

/// File in the data folder that a running server holds locked.
pub const LOCK_FILE: &str = "sfc-server.lock";

/// An exclusive lock on a data folder, held for the life of the server (`flock` on
/// [`LOCK_FILE`], released by the kernel when the process ends, also on a crash). Two
/// servers on one folder would each remove the other's uploads in progress at start-up.
#[derive(Debug)]
pub struct DataDirLock {
    /// Held open: closing a file releases its lock.
    files: Vec<File>,
}

impl DataDirLock {
    /// Takes the lock, or says which server holds it. A filesystem without locks is
    /// reported as an error too: the caller decides whether to go on without one.
    pub fn acquire(data_dir: &Path) -> io::Result<Self> {
        Ok(DataDirLock {
            files: vec![lock_folder(data_dir)?],
        })
    }

    /// Also locks `folder` (a `--store file://` folder outside the data folder: start-up
    /// removes what no row of this server names there, so it is one server's too).
    pub fn also(&mut self, folder: &Path) -> io::Result<()> {
        self.files.push(lock_folder(folder)?);
        Ok(())
    }
}

/// `flock` on [`LOCK_FILE`] in `data_dir`, with this process's ID written in it.
fn lock_folder(data_dir: &Path) -> io::Result<File> {
    let path = data_dir.join(LOCK_FILE);
    let mut options = fs::OpenOptions::new();
    options.read(true).write(true).create(true).truncate(false);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, crate::storage::perms::FILE_MODE);
    let mut file = options.open(&path)?;
    crate::storage::perms::set_file_mode(&file, crate::storage::perms::FILE_MODE)?;
    match file.try_lock() {
        Ok(()) => {}
        Err(fs::TryLockError::WouldBlock) => {
            let holder = fs::read_to_string(&path).unwrap_or_default();
            return Err(io::Error::new(
                io::ErrorKind::WouldBlock,
                format!(
                    "the folder {} is in use by another sfc-server (process {}; lock file {})",
                    data_dir.display(),
                    holder.trim(),
                    path.display()
                ),
            ));
        }
        Err(fs::TryLockError::Error(error)) => return Err(error),
    }
    // Who holds it, for the message above and for operators.
    file.set_len(0)?;
    writeln!(file, "{}", std::process::id())?;
    Ok(file)
}

/// [`BlobStore`] in a local folder.
#[derive(Debug, Clone)]
pub struct LocalBlobStore {
    root: PathBuf,
}

pub(crate) fn sync_dir(path: &Path) -> io::Result<()> {
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

/// Closes `file` and reports what `close` says. Dropping a `File` ignores it, but a
/// network filesystem (NFS) may report a failed write only there, and the next `fsync`,
/// on the descriptor the file is reopened with, would not see that error again.
#[cfg(unix)]
fn close_reporting(file: File) -> io::Result<()> {
    nix::unistd::close(file).map_err(io::Error::from)
}

#[cfg(not(unix))]
fn close_reporting(file: File) -> io::Result<()> {
    drop(file);
    Ok(())
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
            // Owner-only (crate::storage::perms); a folder of an older version is tightened here.
            crate::storage::perms::tighten(&dir, crate::storage::perms::DIR_MODE)?;
            return Ok(dir);
        }
        let files_existed = files.is_dir();
        crate::storage::perms::create_private_dir_all(&dir)?;
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
        // 0600 whatever the umask; the rename keeps the mode (crate::storage::perms).
        let file = crate::storage::perms::create_private_file(&temp_path)?;
        Ok(Box::new(LocalTemp {
            file: Some(file),
            suspended: false,
            temp_path,
            final_path: dir.join(disk_name),
            dir,
            rel_path: format!("{}/{disk_name}", Self::client_dir_rel(client)),
            written: 0,
            kicked: 0,
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

    fn remove_client(&self, client: &ClientId) -> io::Result<()> {
        let files = self.root.join(FILES_DIR);
        // Not empty: a file the rows did not name (or a temporary file) stays, with it.
        match fs::remove_dir(files.join(client.to_hex())) {
            Ok(()) => sync_dir(&files),
            Err(error)
                if matches!(
                    error.kind(),
                    io::ErrorKind::NotFound | io::ErrorKind::DirectoryNotEmpty
                ) =>
            {
                Ok(())
            }
            Err(error) => Err(error),
        }
    }

    fn open(&self, path: &str) -> io::Result<(Box<dyn io::Read + Send>, u64)> {
        let file = fs::File::open(self.resolve(path)?)?;
        // The open file's size: a rename over the path later does not change it.
        let size = file.metadata()?.len();
        Ok((Box::new(file), size))
    }

    fn size(&self, path: &str) -> io::Result<u64> {
        Ok(fs::metadata(self.resolve(path)?)?.len())
    }

    fn remove_stale_temps(&self) -> io::Result<usize> {
        let mut removed = 0;
        self.for_each_client_file(|_, entry| {
            if entry.file_name().to_str().is_some_and(is_temp_name) {
                fs::remove_file(entry.path())?;
                removed += 1;
            }
            Ok(())
        })?;
        Ok(removed)
    }

    fn stored_paths(&self) -> io::Result<Vec<String>> {
        let mut paths = Vec::new();
        self.for_each_client_file(|folder, entry| {
            // Only client folders this server makes; anything else is not ours to list.
            let hex = folder
                .to_str()
                .filter(|name| ClientId::from_hex(name).is_ok_and(|id| id.to_hex() == *name));
            let name = entry.file_name();
            if let (Some(hex), Some(name)) = (hex, name.to_str()) {
                if !is_temp_name(name) {
                    paths.push(format!("{FILES_DIR}/{hex}/{name}"));
                }
            }
            Ok(())
        })?;
        paths.sort();
        Ok(paths)
    }

    fn setup_id(&self) -> io::Result<Option<String>> {
        let mut kept = Vec::new();
        match File::open(self.root.join(SETUP_ID_PATH)) {
            // A few bytes at most; more is not an ID (parse_kept says so).
            Ok(file) => io::Read::read_to_end(&mut io::Read::take(file, 128), &mut kept)?,
            Err(error) if error.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(error) => return Err(error),
        };
        parse_kept(&kept).map(Some)
    }

    fn keep_setup_id(&self, id: &str) -> io::Result<String> {
        self.keep_setup_id_with(
            id,
            |from, to| fs::hard_link(from, to),
            crate::storage::perms::write_private_file,
        )
    }
}

impl LocalBlobStore {
    /// [`BlobStore::keep_setup_id`], hard-linking with `link` and writing a new private
    /// file with `write` (the tests' seams).
    fn keep_setup_id_with(
        &self,
        id: &str,
        link: impl FnOnce(&Path, &Path) -> io::Result<()>,
        write: impl Fn(&Path, &[u8]) -> io::Result<()>,
    ) -> io::Result<String> {
        crate::storage::perms::create_private_dir_all(&self.root)?;
        let target = self.root.join(SETUP_ID_PATH);
        // Written whole aside, then linked to its name, which fails if the name exists:
        // never replaced, never seen in part (a crash leaves at most the aside copy).
        let aside = self.root.join(format!(
            ".{SETUP_ID_PATH}.{}.tmp",
            uuid::Uuid::new_v4().simple()
        ));
        if let Err(error) = write(&aside, &kept(id)) {
            // A full disk, say: writing under its name would fail the same way.
            let _ = fs::remove_file(&aside);
            return Err(error);
        }
        let linked = link(&aside, &target);
        let _ = fs::remove_file(&aside);
        let link_error = match linked {
            Ok(()) => {
                sync_dir(&self.root)?;
                return Ok(id.to_owned());
            }
            Err(error) if error.kind() == io::ErrorKind::AlreadyExists => {
                return already_kept(self.setup_id())
            }
            Err(error) => error,
        };
        // Where hard links are refused (vfat, some FUSE and network mounts): created
        // under its name, which also fails if the name exists. A crash while it is written
        // leaves a few bytes that do not parse: start-up then stops and says so, rather
        // than pairing the store anew.
        match write(&target, &kept(id)) {
            Ok(()) => {
                sync_dir(&self.root)?;
                tracing::info!(error = %link_error, "kept the set-up ID without a hard link");
                Ok(id.to_owned())
            }
            Err(error) if error.kind() == io::ErrorKind::AlreadyExists => {
                already_kept(self.setup_id())
            }
            Err(error) => {
                // Created but not written (created exclusively: no one else's file): an
                // empty set-up ID would stop every later start as damaged.
                let _ = fs::remove_file(&target);
                Err(io::Error::new(
                    error.kind(),
                    format!(
                        "cannot keep the set-up ID (hard link: {link_error}; creating it: \
                         {error})"
                    ),
                ))
            }
        }
    }
}

impl LocalBlobStore {
    /// Calls `visit` with the folder name and the entry of every regular file in every
    /// folder under `files/` (none when `files/` does not exist yet).
    fn for_each_client_file(
        &self,
        mut visit: impl FnMut(&std::ffi::OsStr, &fs::DirEntry) -> io::Result<()>,
    ) -> io::Result<()> {
        let clients = match fs::read_dir(self.root.join(FILES_DIR)) {
            Ok(entries) => entries,
            Err(error) if error.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(error) => return Err(error),
        };
        for client in clients {
            let client = client?;
            if !client.file_type()?.is_dir() {
                continue;
            }
            let folder = client.file_name();
            for entry in fs::read_dir(client.path())? {
                let entry = entry?;
                if entry.file_type()?.is_file() {
                    visit(&folder, &entry)?;
                }
            }
        }
        Ok(())
    }
}

/// A temporary file beside its destination.
#[derive(Debug)]
struct LocalTemp {
    /// `None` when suspended ([`TempBlob::suspend`]) or closed.
    file: Option<File>,
    /// Closed by [`TempBlob::suspend`]: reopened by path for the next write.
    suspended: bool,
    temp_path: PathBuf,
    final_path: PathBuf,
    dir: PathBuf,
    rel_path: String,
    /// Bytes written so far.
    written: u64,
    /// Bytes handed to write-behind so far ([`start_writeback`]).
    kicked: u64,
}

/// Bytes written between two write-behind kicks ([`start_writeback`]).
const WRITE_BEHIND: u64 = 16 << 20;

/// Starts writing a range of the file to disk without waiting (write-behind), so that
/// the disk works while the rest of the file arrives and the fsync before 1603 finds
/// little left to do. Without it the whole file stays dirty in the page cache until that
/// fsync (far below the kernel's dirty thresholds), and the client waits for all of it
/// to be written after the last packet (see BENCHMARKS.md, scenario b).
///
/// On Linux, `POSIX_FADV_DONTNEED` starts asynchronous writeback of the range's dirty
/// pages, then drops its pages that are already clean from the page cache: right for a
/// file the server only writes. A no-op on tmpfs. A failure is harmless (the fsync still
/// makes the file durable), so it is ignored.
#[cfg(target_os = "linux")]
fn start_writeback(file: &File, offset: u64, len: u64) {
    let _ = rustix::fs::fadvise(
        file,
        offset,
        std::num::NonZeroU64::new(len),
        rustix::fs::Advice::DontNeed,
    );
}

#[cfg(not(target_os = "linux"))]
fn start_writeback(_file: &File, _offset: u64, _len: u64) {}

impl TempBlob for LocalTemp {
    fn path(&self) -> &str {
        &self.rel_path
    }

    fn write_all(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.resume()?;
        match self.file.as_mut() {
            Some(file) => {
                file.write_all(bytes)?;
                self.written += bytes.len() as u64;
                if self.written - self.kicked >= WRITE_BEHIND {
                    start_writeback(file, self.kicked, self.written - self.kicked);
                    self.kicked = self.written;
                }
                Ok(())
            }
            None => Err(io::Error::other("temporary file already closed")),
        }
    }

    fn suspend(&mut self) -> io::Result<()> {
        match self.file.take() {
            Some(file) => {
                self.suspended = true;
                close_reporting(file)
            }
            None => Ok(()),
        }
    }

    fn persist(mut self: Box<Self>) -> io::Result<String> {
        self.close_synced()?;
        fs::rename(&self.temp_path, &self.final_path)?;
        // From here on the temporary name no longer exists: nothing to clean up.
        self.temp_path = PathBuf::new();
        sync_dir(&self.dir)?;
        Ok(std::mem::take(&mut self.rel_path))
    }

    fn persist_undoable(mut self: Box<Self>) -> io::Result<Box<dyn Persisted>> {
        let backup = self.move_into_place()?;
        let persisted = LocalPersisted {
            final_path: std::mem::take(&mut self.final_path),
            dir: self.dir.clone(),
            rel_path: std::mem::take(&mut self.rel_path),
            backup,
        };
        if let Err(error) = sync_dir(&self.dir) {
            // Not durably in place: put things back as they were, or say they are not.
            return Err(match Box::new(persisted).undo() {
                Ok(()) => error,
                Err(undo) => io::Error::other(super::LeftInPlace { cause: error, undo }),
            });
        }
        Ok(Box::new(persisted))
    }
}

impl LocalTemp {
    /// Reopens a suspended file by path, for appending.
    fn resume(&mut self) -> io::Result<()> {
        if self.suspended {
            self.file = Some(fs::OpenOptions::new().append(true).open(&self.temp_path)?);
            self.suspended = false;
        }
        Ok(())
    }

    /// Makes the content durable (fsync) and closes the file, before any rename. A
    /// suspended file is reopened first: fsync makes the file's data durable whichever
    /// descriptor wrote it.
    fn close_synced(&mut self) -> io::Result<()> {
        self.resume()?;
        let file = self
            .file
            .take()
            .ok_or_else(|| io::Error::other("temporary file already closed"))?;
        file.sync_all()
    }

    /// fsync of the content, then the rename that puts it in place; `backup` (if the final
    /// name exists) keeps the version being replaced ([`keep_replaced`]), made before the
    /// rename.
    fn move_into_place(&mut self) -> io::Result<Option<PathBuf>> {
        self.close_synced()?;
        let backup = self.dir.join(format!(
            "{TEMP_PREFIX}{}.old",
            uuid::Uuid::new_v4().simple()
        ));
        let backup = keep_replaced(&self.final_path, backup, |from, to| fs::hard_link(from, to))?;
        if let Err(error) = fs::rename(&self.temp_path, &self.final_path) {
            if let Some(backup) = &backup {
                let _ = fs::remove_file(backup);
            }
            return Err(error);
        }
        self.temp_path = PathBuf::new();
        Ok(backup)
    }
}

/// Keeps the version at `final_path` under `backup` before it is replaced: a hard link
/// (`link`), or where the filesystem refuses one (vfat, some FUSE and network mounts,
/// `protected_hardlinks`) a copy, synced so that an undo never puts back a partial
/// file. `None` when there is nothing to keep. When neither works the replacement must
/// not happen (an undo would then have nothing to put back): the error says why.
fn keep_replaced(
    final_path: &Path,
    backup: PathBuf,
    link: impl FnOnce(&Path, &Path) -> io::Result<()>,
) -> io::Result<Option<PathBuf>> {
    let link_error = match link(final_path, &backup) {
        Ok(()) => return Ok(Some(backup)),
        Err(error) if error.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(error) => error,
    };
    let copied = fs::copy(final_path, &backup).and_then(|_| File::open(&backup)?.sync_all());
    match copied {
        Ok(()) => {
            tracing::info!(path = %final_path.display(), error = %link_error, "kept the replaced version as a copy (no hard link)");
            Ok(Some(backup))
        }
        Err(error) if error.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(copy_error) => {
            let _ = fs::remove_file(&backup);
            Err(io::Error::new(
                copy_error.kind(),
                format!(
                    "cannot keep the version being replaced (hard link: {link_error}; copy: {copy_error})"
                ),
            ))
        }
    }
}

/// A file moved into place whose row is not committed yet (see [`Persisted`]).
#[derive(Debug)]
struct LocalPersisted {
    final_path: PathBuf,
    dir: PathBuf,
    rel_path: String,
    /// Hard link to the replaced version, under a temporary name.
    backup: Option<PathBuf>,
}

impl Persisted for LocalPersisted {
    fn path(&self) -> &str {
        &self.rel_path
    }

    fn keep(self: Box<Self>) -> io::Result<()> {
        // Not fsynced: after a crash the backup is a temporary file, removed at start-up.
        match &self.backup {
            Some(backup) => fs::remove_file(backup),
            None => Ok(()),
        }
    }

    fn undo(self: Box<Self>) -> io::Result<()> {
        match &self.backup {
            Some(backup) => fs::rename(backup, &self.final_path)?,
            None => fs::remove_file(&self.final_path)?,
        }
        sync_dir(&self.dir)
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
    fn without_hard_links_the_replaced_version_is_kept_as_a_copy() {
        let dir = tempfile::tempdir().unwrap();
        let stored = dir.path().join("f.bin");
        fs::write(&stored, b"version 1").unwrap();
        // As vfat or a FUSE mount answers.
        let refuse = |_: &Path, _: &Path| Err(io::Error::from_raw_os_error(1));
        let backup = keep_replaced(&stored, dir.path().join("b.old"), refuse)
            .unwrap()
            .expect("a backup");
        assert_eq!(fs::read(&backup).unwrap(), b"version 1");
        // Nothing stored under the name: nothing to keep.
        let missing = dir.path().join("missing.bin");
        let kept = keep_replaced(&missing, dir.path().join("c.old"), refuse).unwrap();
        assert_eq!(kept, None);
        assert!(!dir.path().join("c.old").exists());
    }

    #[test]
    fn a_version_that_cannot_be_kept_stops_the_replacement() {
        // A folder where the file is expected can be neither hard-linked nor copied.
        let dir = tempfile::tempdir().unwrap();
        let stored = dir.path().join("f.bin");
        fs::create_dir(&stored).unwrap();
        let link = |from: &Path, to: &Path| fs::hard_link(from, to);
        let error = keep_replaced(&stored, dir.path().join("b.old"), link).unwrap_err();
        assert!(
            error
                .to_string()
                .contains("cannot keep the version being replaced"),
            "{error}"
        );
        assert!(!dir.path().join("b.old").exists());
    }

    fn open_fds() -> usize {
        std::fs::read_dir("/proc/self/fd").map_or(0, |dir| dir.count())
    }

    #[test]
    #[cfg(target_os = "linux")]
    fn a_suspended_temp_file_holds_no_descriptor_and_goes_on_where_it_was() {
        let dir = tempfile::tempdir().unwrap();
        let store = LocalBlobStore::new(dir.path());
        let client = ClientId([0xcd; 16]);
        let mut temps: Vec<_> = (0..20)
            .map(|n| {
                let mut temp = store.create_temp(&client, &format!("f{n}")).unwrap();
                temp.write_all(b"hello ").unwrap();
                temp
            })
            .collect();
        let before = open_fds();
        for temp in &mut temps {
            temp.suspend().unwrap();
        }
        // Other tests run in parallel threads: compare with a wide margin.
        assert!(
            open_fds() + 15 <= before,
            "suspending released no descriptors"
        );
        let mut paths = Vec::new();
        for mut temp in temps {
            temp.write_all(b"world").unwrap();
            temp.suspend().unwrap();
            paths.push(temp.persist().unwrap());
        }
        for path in paths {
            assert_eq!(
                std::fs::read(dir.path().join(path)).unwrap(),
                b"hello world"
            );
        }
    }

    #[test]
    fn without_hard_links_the_set_up_id_is_kept_all_the_same() {
        let dir = tempfile::tempdir().unwrap();
        let store = LocalBlobStore::new(dir.path());
        // As vfat or a FUSE mount answers.
        let refuse = |_: &Path, _: &Path| Err(io::Error::from_raw_os_error(1));
        let write = crate::storage::perms::write_private_file;
        assert_eq!(
            store.keep_setup_id_with("first-1", refuse, write).unwrap(),
            "first-1"
        );
        assert_eq!(store.setup_id().unwrap().as_deref(), Some("first-1"));
        // Never replaced: a second server finds the first one's.
        assert_eq!(
            store.keep_setup_id_with("second-2", refuse, write).unwrap(),
            "first-1"
        );
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|entry| entry.unwrap().file_name())
            .collect();
        assert_eq!(names, [SETUP_ID_PATH], "no aside copy is left");
    }

    /// A full disk when the set-up ID is first kept: the start fails, and nothing is
    /// left under its name (an empty file there would stop every later start as a
    /// damaged set-up ID), with or without hard links.
    #[test]
    fn a_set_up_id_that_cannot_be_written_leaves_nothing_behind() {
        let dir = tempfile::tempdir().unwrap();
        let store = LocalBlobStore::new(dir.path());
        let full = |path: &Path, _: &[u8]| {
            // Created, then the write fails (ENOSPC).
            crate::storage::perms::write_private_file(path, b"")?;
            Err(io::Error::from_raw_os_error(28))
        };
        let refuse = |_: &Path, _: &Path| Err(io::Error::from_raw_os_error(1));
        let error = store
            .keep_setup_id_with("first-1", refuse, full)
            .unwrap_err();
        assert_eq!(error.raw_os_error(), Some(28), "{error}");
        // The aside copy fails alike when hard links work: not retried under its name.
        let link = |from: &Path, to: &Path| std::fs::hard_link(from, to);
        assert!(store.keep_setup_id_with("first-1", link, full).is_err());
        // The fallback's own write failing.
        let mut writes = 0;
        let second_fails = |path: &Path, bytes: &[u8]| {
            writes += 1;
            if writes == 1 {
                crate::storage::perms::write_private_file(path, bytes)
            } else {
                full(path, bytes)
            }
        };
        let second_fails = std::cell::RefCell::new(second_fails);
        let error = store
            .keep_setup_id_with("first-1", refuse, |p: &Path, b: &[u8]| {
                (second_fails.borrow_mut())(p, b)
            })
            .unwrap_err();
        assert!(error.to_string().contains("creating it"), "{error}");
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|entry| entry.unwrap().file_name())
            .collect();
        assert!(names.is_empty(), "{names:?}");
        assert_eq!(store.setup_id().unwrap(), None);
        // Once there is room, it is kept.
        assert_eq!(store.keep_setup_id("first-1").unwrap(), "first-1");
    }

    #[test]
    fn the_set_up_id_is_kept_beside_the_client_folders() {
        let dir = tempfile::tempdir().unwrap();
        let store = LocalBlobStore::new(dir.path());
        crate::storage::testing::check_blob_setup_id(&store);
        let path = dir.path().join(SETUP_ID_PATH);
        assert_eq!(std::fs::read(&path).unwrap(), b"first-1\n");
        // No aside copy is left.
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|entry| entry.unwrap().file_name())
            .collect();
        assert_eq!(names, [SETUP_ID_PATH]);
        #[cfg(unix)]
        assert_eq!(crate::storage::perms::mode_of(&path), Some(0o600));
        // Damaged: an error, never "no ID" (which would let the store be taken over).
        std::fs::write(&path, b"not an id").unwrap();
        let error = store.setup_id().unwrap_err();
        assert_eq!(error.kind(), io::ErrorKind::InvalidData);
    }

    #[test]
    fn stored_files_read_back() {
        let dir = tempfile::tempdir().unwrap();
        crate::storage::testing::check_open_reads_back(&LocalBlobStore::new(dir.path()));
    }

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
    fn an_undoable_persist_keeps_or_restores_the_replaced_version() {
        let dir = tempfile::tempdir().unwrap();
        let store = LocalBlobStore::new(dir.path());
        let client = ClientId([0xcd; 16]);
        let folder = dir.path().join("files").join("cd".repeat(16));
        let names = || {
            let mut names: Vec<_> = fs::read_dir(&folder)
                .unwrap()
                .map(|e| e.unwrap().file_name().into_string().unwrap())
                .collect();
            names.sort();
            names
        };
        // A new file, undone: gone.
        let mut temp = store.create_temp(&client, "n.bin").unwrap();
        temp.write_all(b"new").unwrap();
        let persisted = temp.persist_undoable().unwrap();
        assert_eq!(fs::read(dir.path().join(persisted.path())).unwrap(), b"new");
        persisted.undo().unwrap();
        assert!(names().is_empty());
        // A replacement, undone: the earlier version is back, nothing else left.
        let mut temp = store.create_temp(&client, "r.bin").unwrap();
        temp.write_all(b"v1").unwrap();
        let rel = temp.persist().unwrap();
        let mut temp = store.create_temp(&client, "r.bin").unwrap();
        temp.write_all(b"v2").unwrap();
        let persisted = temp.persist_undoable().unwrap();
        assert_eq!(fs::read(dir.path().join(&rel)).unwrap(), b"v2");
        assert_eq!(names().len(), 2, "the backup is kept meanwhile");
        persisted.undo().unwrap();
        assert_eq!(fs::read(dir.path().join(&rel)).unwrap(), b"v1");
        assert_eq!(names(), ["r.bin"]);
        // A replacement, kept: the new version stays and the backup goes.
        let mut temp = store.create_temp(&client, "r.bin").unwrap();
        temp.write_all(b"v3").unwrap();
        temp.persist_undoable().unwrap().keep().unwrap();
        assert_eq!(fs::read(dir.path().join(&rel)).unwrap(), b"v3");
        assert_eq!(names(), ["r.bin"]);
        // A backup left by a crash is a temporary file, removed at start-up.
        let mut temp = store.create_temp(&client, "r.bin").unwrap();
        temp.write_all(b"v4").unwrap();
        std::mem::forget(temp.persist_undoable().unwrap());
        assert_eq!(store.remove_stale_temps().unwrap(), 1);
        assert_eq!(fs::read(dir.path().join(&rel)).unwrap(), b"v4");
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
