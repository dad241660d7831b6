//! Which identity belongs to which server, and never losing one.
//!
//! `me.info` keeps the three lines other clients read. Beside it, `me.server` (one line,
//! the server address as given with `--server` or on line 1 of transfer.info) records the
//! server that issued it. Running against another server never touches that identity:
//! the other server's identity lives in `servers/<address>/` (its own me.info, priv.key
//! and me.server). An identity replaced after a 1606 is kept as
//! `me.info.<client-id>.bak` and `priv.key.<client-id>.bak`, written as the identity is
//! (atomically, owner-only, durable) before the new one replaces it. A me.info without
//! me.server (written by an older client or another implementation) is taken to belong to
//! the server it is used with, and me.server is written once that server accepts it.
//!
//! Before a registration is sent, the folder is checked by creating and removing a
//! temporary file there ([`IdentityFolder::check_writable`]); if saving still fails after
//! the server has registered us, the key goes to a fallback file in the system's
//! temporary folder and the error names it, with the name and client ID.
//!
//! A run holds an exclusive advisory lock on its folder (`--dir`, with everything below it)
//! from locating its identity to its end ([`FolderLock`]): two runs at once could otherwise
//! both register and interleave their writes, leaving one run's me.info beside the other's
//! priv.key, or replacing an identity without a backup. A second run refuses the folder.
//!
//! A new identity is saved as soon as the server has registered it (1600), before its key
//! exchange (826 → 1602): whatever cuts the exchange (the network, a time-out, Ctrl-C),
//! the name is not left registered on the server with nothing on the client. Until the
//! exchange is done, `me.pending` holds that identity's client ID; a run that finds it
//! beside a me.info of the same ID sends the public key again (826) instead of
//! reconnecting ([`IdentityFolder::key_pending`]), and the exchange removes it
//! ([`IdentityFolder::key_exchanged`]). A separate file keeps me.info's three lines as
//! other clients read them; holding the ID, a `me.pending` left from another identity
//! (a save cut before me.info) marks nothing.
//!
//! [`IdentityFolder::save`] writes, each file atomically: the backups, then me.server,
//! then me.pending, then me.info, then priv.key. Wherever it is cut (killed, power cut),
//! the folder holds an identity whose ID and key match and which names its server:
//! - before me.server: the old identity (or none) as it was; the backups are copies;
//! - after me.server: the old identity, now recorded as this server's. The folder was
//!   chosen because its me.info belonged to this server or to none, so at most an
//!   unclaimed me.info is claimed by a server that has just answered it 1606; a run for
//!   another server still tries it first, from `servers/<address>/`;
//! - after me.pending: the same; me.pending names the new ID, not the old one's;
//! - after me.info: the new identity, with its own key (me.info's key is used when
//!   priv.key's differs, see the `identity` module), its server already recorded and
//!   its key exchange marked pending. Written last, me.server left a new me.info
//!   unclaimed, which the next run took for whatever server it was given, and replaced
//!   after that server's 1606;
//! - after priv.key: the whole new identity.
//!
//! Ctrl-C does not cut a save: the handler waits for the one in progress and keeps others
//! from starting ([`hold_identity_writes_within`]) — unless the save hangs past the
//! handler's bound (10 s), when the run ends anyway. A killed save can still leave its
//! temporary file (`.me.info.<random>.tmp`, possibly holding a key); the next run that
//! locks the folder removes such files, in `--dir` and in `servers/*/`
//! ([`FolderLock::acquire`]).

use std::fs::{File, OpenOptions, TryLockError};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use sfc_proto::ClientId;

use crate::identity::{self, Identity, IdentityError, Loaded, ME_INFO, PRIV_KEY};

/// The sidecar naming the server that issued the me.info beside it.
pub const ME_SERVER: &str = "me.server";
/// The sidecar holding the client ID of a me.info whose key exchange (826 → 1602) has not
/// been completed yet.
pub const ME_PENDING: &str = "me.pending";
/// The folder (inside `--dir`) holding the identities for other servers.
pub const SERVERS_DIR: &str = "servers";
/// The lock file in `--dir`. Never removed: runs that created and deleted it could each
/// lock a different file of the same name.
pub const LOCK_FILE: &str = ".sfc-client.lock";
/// The start of the file name [`IdentityFolder::check_writable`] probes the folder with.
const WRITE_PROBE_PREFIX: &str = ".sfc-client-write-test.";
/// The client ID in a backup's name when the replaced me.info has no usable one.
const UNKNOWN_BACKUP_ID: &str = "old";

/// The name a replaced `file` (me.info or priv.key) is kept under: `<file>.<id>.bak`, or
/// `<file>.<id>.<number>.bak` from the second backup of other content under that ID
/// (`number` from 2): a backup is never overwritten.
fn backup_name(file: &str, id: &str, number: u32) -> String {
    if number <= 1 {
        format!("{file}.{id}.bak")
    } else {
        format!("{file}.{id}.{number}.bak")
    }
}

/// The most backups of one file under one ID ([`backup_name`]'s numbers).
const MAX_BACKUPS_PER_ID: u32 = 1000;

/// True for `name` as [`backup_name`] makes it: `id` lowercase hex or [`UNKNOWN_BACKUP_ID`].
fn is_backup_name(name: &str) -> bool {
    [ME_INFO, PRIV_KEY].iter().any(|file| {
        name.strip_prefix(file)
            .and_then(|rest| rest.strip_prefix('.'))
            .and_then(|rest| rest.strip_suffix(".bak"))
            .map(|rest| match rest.split_once('.') {
                Some((id, number)) => (id, is_decimal(number)),
                None => (rest, true),
            })
            .is_some_and(|(id, numbered)| numbered && (id == UNKNOWN_BACKUP_ID || is_lower_hex(id)))
    })
}

/// Decimal digits, at least one, no leading zero (a [`backup_name`] number).
fn is_decimal(text: &str) -> bool {
    !text.is_empty() && !text.starts_with('0') && text.bytes().all(|b| b.is_ascii_digit())
}

/// Lowercase hex digits (a client ID as the client writes it in file names), at least one.
fn is_lower_hex(text: &str) -> bool {
    !text.is_empty() && text.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// True for a name the client gives a file it writes atomically in its folder (see
/// [`identity::write_atomic`]).
fn is_written_atomically(name: &str) -> bool {
    [ME_INFO, PRIV_KEY, ME_SERVER, ME_PENDING].contains(&name) || is_backup_name(name)
}

/// True for a file the client writes in its folder (`--dir`, or one under `servers/`):
/// its identity, key, me.server, lock, identity backups, and the temporary files a killed
/// run can leave (which may hold a key). `-r` never sends them.
pub fn is_state_file(name: &str) -> bool {
    let written = |name: &str| name == LOCK_FILE || is_written_atomically(name);
    written(name)
        || identity::temporary_of(name).is_some_and(written)
        || name.starts_with(WRITE_PROBE_PREFIX)
}

/// Held while identity files are written, so that a Ctrl-C can wait for them.
static IDENTITY_WRITES: Mutex<()> = Mutex::new(());

/// Waits until no identity files are being written (a save, a claim, a fallback key), then
/// keeps new writes from starting until the guard is dropped. The Ctrl-C handler holds it
/// while it ends the process, so that a save is never cut in the middle; it runs on its own
/// thread (ctrlc), so waiting there for the main thread's save cannot deadlock.
pub fn hold_identity_writes() -> MutexGuard<'static, ()> {
    // A write that panicked leaves nothing to protect: go on.
    IDENTITY_WRITES
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
}

/// [`hold_identity_writes`], waiting at most `limit` for a write in progress: `None` if it
/// is still going on then (hung: an fsync on an unreachable network mount), and no guard.
pub fn hold_identity_writes_within(limit: Duration) -> Option<MutexGuard<'static, ()>> {
    lock_within(&IDENTITY_WRITES, limit)
}

/// Locks `mutex` if it comes free within `limit`. std's Mutex has no timed lock: this
/// tries again every few milliseconds, which for a wait at Ctrl-C costs nothing.
fn lock_within<T>(mutex: &Mutex<T>, limit: Duration) -> Option<MutexGuard<'_, T>> {
    const RETRY_EVERY: Duration = Duration::from_millis(10);
    let started = Instant::now();
    loop {
        match mutex.try_lock() {
            Ok(guard) => return Some(guard),
            // A write that panicked leaves nothing to protect: go on.
            Err(std::sync::TryLockError::Poisoned(poisoned)) => return Some(poisoned.into_inner()),
            Err(std::sync::TryLockError::WouldBlock) => {}
        }
        let left = limit.checked_sub(started.elapsed())?;
        std::thread::sleep(RETRY_EVERY.min(left));
    }
}

/// Removes the temporary files a killed run left in `dir`: those of the files it writes
/// atomically (they may hold a private key) and its write probes. Only under the folder's
/// lock: another run could be writing them. Best effort.
fn remove_leftovers(dir: &Path) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(name) = name.to_str() else {
            continue;
        };
        let leftover = identity::temporary_of(name).is_some_and(is_written_atomically)
            || name.starts_with(WRITE_PROBE_PREFIX);
        if leftover && entry.file_type().is_ok_and(|kind| kind.is_file()) {
            let _ = std::fs::remove_file(entry.path());
        }
    }
}

/// [`remove_leftovers`] in `dir` and in each identity folder under `dir/servers`.
fn remove_all_leftovers(dir: &Path) {
    remove_leftovers(dir);
    let Ok(servers) = std::fs::read_dir(dir.join(SERVERS_DIR)) else {
        return;
    };
    for entry in servers.flatten() {
        if entry.file_type().is_ok_and(|kind| kind.is_dir()) {
            remove_leftovers(&entry.path());
        }
    }
}

/// How [`save_fallback`] names a key it could not save in the client's folder, in the
/// system's temporary folder: `sfc-client-<name>-<client id>.key`.
const FALLBACK_KEY_PREFIX: &str = "sfc-client-";
const FALLBACK_KEY_SUFFIX: &str = ".key";

/// True for a name [`save_fallback`] gives a key in the system's temporary folder (or its
/// temporary file). `-r` of that folder never sends them.
pub fn is_fallback_key(name: &str) -> bool {
    // Down to the client ID (32 lowercase hex digits), so that a user's own
    // `sfc-client-….key` there is not taken for one.
    let written = |name: &str| {
        name.strip_prefix(FALLBACK_KEY_PREFIX)
            .and_then(|rest| rest.strip_suffix(FALLBACK_KEY_SUFFIX))
            .and_then(|rest| rest.rsplit_once('-'))
            .is_some_and(|(user, id)| !user.is_empty() && id.len() == 32 && is_lower_hex(id))
    };
    written(name) || identity::temporary_of(name).is_some_and(written)
}

/// A run's exclusive lock on its folder (`--dir`), held until it is dropped; the system
/// releases it however the process ends, so a killed run leaves no stale lock.
#[derive(Debug)]
pub struct FolderLock {
    dir: PathBuf,
    /// The locked file, or why the folder could not be locked.
    file: Result<File, String>,
}

impl FolderLock {
    /// Locks `dir` for this run; fails at once if another run holds it. Once locked, the
    /// temporary files killed runs left there are removed.
    ///
    /// A folder where the lock file cannot be created or locked (read-only, missing, or a
    /// file system without locks) gives an unlocked `FolderLock` instead of an error: a run
    /// that only reads me.info and priv.key works there as it did before the lock, and
    /// such a folder is as unwritable for other runs. Writing the identity needs the lock
    /// ([`IdentityFolder::check_writable`], [`IdentityFolder::save`],
    /// [`IdentityFolder::claim`]), so an unlocked run never registers.
    pub fn acquire(dir: &Path) -> Result<FolderLock, IdentityError> {
        let path = dir.join(LOCK_FILE);
        let unlocked = |why: String| FolderLock {
            dir: dir.to_owned(),
            file: Err(format!("cannot lock {}: {why}", path.display())),
        };
        let file = match open_lock_file(&path) {
            Ok(file) => file,
            Err(e) => return Ok(unlocked(e.to_string())),
        };
        match file.try_lock() {
            Ok(()) => {
                remove_all_leftovers(dir);
                Ok(FolderLock {
                    dir: dir.to_owned(),
                    file: Ok(file),
                })
            }
            Err(TryLockError::WouldBlock) => Err(IdentityError::Busy {
                dir: std::path::absolute(dir).unwrap_or_else(|_| dir.to_owned()),
                lock: LOCK_FILE,
            }),
            Err(TryLockError::Error(e)) => Ok(unlocked(e.to_string())),
        }
    }

    /// Why the folder is not locked, if it is not.
    pub fn problem(&self) -> Option<&str> {
        self.file.as_ref().err().map(String::as_str)
    }
}

/// Opens (creating it owner-only if needed) the lock file; never truncates it.
fn open_lock_file(path: &Path) -> io::Result<File> {
    let mut options = OpenOptions::new();
    options.write(true).create(true).truncate(false);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    // An existing lock file can be locked without write access (a folder made read-only
    // after an earlier run, a read-only file system): opened for reading, it still
    // excludes runs that could write there.
    options
        .open(path)
        .or_else(|e| File::open(path).map_err(|_| e))
}

/// The folder holding the identity for one server.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IdentityFolder {
    /// The folder (`--dir`, or `--dir/servers/<address>`).
    pub dir: PathBuf,
    /// The server address the identity is for.
    pub server: String,
    /// True when me.info in this folder has no me.server yet (written before it existed).
    pub unclaimed: bool,
    /// True for a folder under `servers/`, created when first needed.
    pub nested: bool,
    /// Why this run does not hold the lock on `--dir` ([`FolderLock::problem`]); `None`
    /// when it does. Nothing is written here without it.
    pub unlocked: Option<String>,
}

/// A folder name for a server address: letters, digits, `.` and `-` kept, the rest `_`.
pub fn folder_name(server: &str) -> String {
    server
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '.' || c == '-' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

fn read_owner(dir: &Path) -> Result<Option<String>, IdentityError> {
    let path = dir.join(ME_SERVER);
    match std::fs::read_to_string(&path) {
        Ok(text) => Ok(Some(text.trim().to_owned()).filter(|s| !s.is_empty())),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(IdentityError::Read { path, source }),
    }
}

/// Chooses the folder for `server`'s identity: `dir` when its me.info belongs to that
/// server (or to no recorded server, or there is none yet and `dir/servers/<address>`
/// holds none either), else `dir/servers/<address>`. Takes the lock on `dir` (not the
/// folder path) so that the files are read under it.
pub fn locate(lock: &FolderLock, server: &str) -> Result<IdentityFolder, IdentityError> {
    let dir = lock.dir.as_path();
    let unlocked = lock.problem().map(str::to_owned);
    let has_identity = dir.join(ME_INFO).exists();
    let owner = read_owner(dir)?;
    let other = dir.join(SERVERS_DIR).join(folder_name(server));
    let here = match &owner {
        // The identity saved for this server stays in use when dir's me.info was moved
        // away (as the advice after a key that would not unwrap says).
        _ if !has_identity => !other.join(ME_INFO).exists(),
        None => true,
        Some(owner) => owner == server,
    };
    if here {
        return Ok(IdentityFolder {
            dir: dir.to_owned(),
            server: server.to_owned(),
            unclaimed: has_identity && owner.is_none(),
            nested: false,
            unlocked,
        });
    }
    let unclaimed = other.join(ME_INFO).exists() && read_owner(&other)?.is_none();
    Ok(IdentityFolder {
        dir: other,
        server: server.to_owned(),
        unclaimed,
        nested: true,
        unlocked,
    })
}

impl IdentityFolder {
    /// The saved identity for this server, if any.
    pub fn load(&self) -> Result<Option<Loaded>, IdentityError> {
        identity::load(&self.dir)
    }

    /// Fails unless this run holds the folder's lock: another run could be writing the
    /// same files.
    fn check_locked(&self) -> Result<(), IdentityError> {
        match &self.unlocked {
            None => Ok(()),
            Some(reason) => Err(IdentityError::NotLocked {
                reason: reason.clone(),
            }),
        }
    }

    /// Creates the folder if needed (owner-only) and proves that files can be written in
    /// it by creating and removing a temporary file, so that a registration is never
    /// sent when its result could not be saved. The folder must also be locked by this
    /// run (checked after the probe, so a read-only folder is reported as before).
    pub fn check_writable(&self) -> Result<(), IdentityError> {
        let write_error = |source| IdentityError::Write {
            path: self.dir.clone(),
            source,
        };
        if self.nested {
            create_private_dir(&self.dir).map_err(write_error)?;
        }
        let mut probe = tempfile::Builder::new()
            .prefix(WRITE_PROBE_PREFIX)
            .tempfile_in(&self.dir)
            .map_err(write_error)?;
        probe.write_all(b"x").map_err(write_error)?;
        probe.close().map_err(write_error)?;
        self.check_locked()
    }

    /// Records that the me.info here belongs to this server.
    pub fn claim(&self) -> Result<(), IdentityError> {
        self.check_locked()?;
        let _writing = hold_identity_writes();
        self.write_owner()
    }

    fn write_owner(&self) -> Result<(), IdentityError> {
        self.write_sidecar(ME_SERVER, &self.server.to_string())
    }

    /// Writes `line` as the one line of the file `name` here (me.server, me.pending).
    fn write_sidecar(&self, name: &str, line: &str) -> Result<(), IdentityError> {
        let path = self.dir.join(name);
        identity::write_atomic(&path, format!("{line}\n").as_bytes())
            .map_err(|source| IdentityError::Write { path, source })
    }

    /// Saves an identity the server has just registered, its key exchange still to come:
    /// the identity it replaces (if any) is kept as `*.<client-id>.bak` first, then
    /// me.server, me.pending, me.info and priv.key are written, in that order (the
    /// module's documentation says why). Returns the backup of me.info when one was made.
    pub fn save(&self, identity: &Identity) -> Result<Option<PathBuf>, IdentityError> {
        self.check_locked()?;
        let _writing = hold_identity_writes();
        let backup = self.back_up()?;
        self.write_owner()?;
        self.write_sidecar(ME_PENDING, &identity.client_id.to_hex())?;
        identity::save(&self.dir, identity)?;
        Ok(backup)
    }

    /// True when `identity` (read from this folder) was saved before its key exchange and
    /// the exchange has not been completed since: me.pending holds its client ID.
    pub fn key_pending(&self, identity: &Identity) -> Result<bool, IdentityError> {
        let path = self.dir.join(ME_PENDING);
        match std::fs::read_to_string(&path) {
            Ok(text) => Ok(ClientId::from_hex(&text).is_ok_and(|id| id == identity.client_id)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
            Err(source) => Err(IdentityError::Read { path, source }),
        }
    }

    /// Records that the key exchange of the identity here is done: removes me.pending.
    pub fn key_exchanged(&self) -> Result<(), IdentityError> {
        self.check_locked()?;
        let _writing = hold_identity_writes();
        let path = self.dir.join(ME_PENDING);
        match std::fs::remove_file(&path) {
            Ok(()) => {
                identity::sync_dir(&self.dir);
                Ok(())
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(source) => Err(IdentityError::Write { path, source }),
        }
    }

    /// Backs up the me.info and priv.key a save is about to replace, each that exists: a
    /// priv.key without a me.info (another client's save cut between the two, a me.info
    /// moved aside) is a key the user may still need. Named by the client ID me.info
    /// holds, or [`UNKNOWN_BACKUP_ID`] when there is none to read.
    fn back_up(&self) -> Result<Option<PathBuf>, IdentityError> {
        let me = self.dir.join(ME_INFO);
        let text = match std::fs::read(&me) {
            Ok(bytes) => String::from_utf8_lossy(&bytes).into_owned(),
            Err(e) if e.kind() == io::ErrorKind::NotFound => String::new(),
            Err(source) => return Err(IdentityError::Read { path: me, source }),
        };
        let id = text
            .lines()
            .nth(1)
            .map(str::trim)
            .filter(|id| !id.is_empty() && id.bytes().all(|b| b.is_ascii_hexdigit()))
            .unwrap_or(UNKNOWN_BACKUP_ID)
            .to_ascii_lowercase();
        let mut originals = Vec::new();
        for file in [ME_INFO, PRIV_KEY] {
            let from = self.dir.join(file);
            match std::fs::read(&from) {
                Ok(bytes) => originals.push((file, zeroize::Zeroizing::new(bytes))),
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(source) => return Err(IdentityError::Read { path: from, source }),
            }
        }
        let number = self.free_backup_number(&id, &originals)?;
        let mut me_backup = None;
        for (file, old) in originals {
            let to = self.dir.join(backup_name(file, &id, number));
            // Like the identity itself (owner-only, fsynced, renamed, folder fsynced), and
            // durable before identity::save replaces the originals: a power cut must not
            // leave a new me.info beside an empty backup of the old one.
            identity::write_atomic(&to, &old).map_err(|source| IdentityError::Write {
                path: to.clone(),
                source,
            })?;
            if file == ME_INFO {
                me_backup = Some(to);
            }
        }
        Ok(me_backup)
    }

    /// The first [`backup_name`] number under which each of `originals` can be kept
    /// without replacing a backup of other content (the same content may be written
    /// again), one number for the pair so that they stay together.
    fn free_backup_number(
        &self,
        id: &str,
        originals: &[(&str, zeroize::Zeroizing<Vec<u8>>)],
    ) -> Result<u32, IdentityError> {
        for number in 1..=MAX_BACKUPS_PER_ID {
            let mut free = true;
            for (file, content) in originals {
                let path = self.dir.join(backup_name(file, id, number));
                match std::fs::read(&path) {
                    Ok(held) => free &= zeroize::Zeroizing::new(held) == *content,
                    Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                    Err(source) => return Err(IdentityError::Read { path, source }),
                }
            }
            if free {
                return Ok(number);
            }
        }
        Err(IdentityError::Write {
            path: self.dir.join(backup_name(ME_INFO, id, MAX_BACKUPS_PER_ID)),
            source: io::Error::other(format!(
                "{MAX_BACKUPS_PER_ID} backups under this ID already: move some away"
            )),
        })
    }
}

/// Writes the private key of an identity that could not be saved where it belongs to a
/// file in the system's temporary folder (owner-only); returns its path.
pub fn save_fallback(identity: &Identity) -> io::Result<PathBuf> {
    let key = identity.keypair.to_base64().map_err(io::Error::other)?;
    let _writing = hold_identity_writes();
    let path = std::env::temp_dir().join(format!(
        "{FALLBACK_KEY_PREFIX}{}-{}{FALLBACK_KEY_SUFFIX}",
        folder_name(identity.name.as_str()),
        identity.client_id.to_hex()
    ));
    identity::write_atomic(&path, key.as_bytes())?;
    Ok(path)
}

/// Creates `dir` and its missing parents, owner-only, each new folder's entry made
/// durable in its parent: a save later fsyncs only the folder it writes in, so without
/// this a power cut could take a new identity's whole folder.
fn create_private_dir(dir: &Path) -> io::Result<()> {
    let missing: Vec<&Path> = dir
        .ancestors()
        .take_while(|folder| !folder.as_os_str().is_empty() && !folder.is_dir())
        .collect();
    let mut builder = std::fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::DirBuilderExt;
        builder.mode(0o700);
    }
    builder.create(dir)?;
    for created in missing.iter().rev() {
        if let Some(parent) = created.parent() {
            identity::sync_dir(parent);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_support;

    const OLD_ID: &str = "00112233445566778899aabbccddeeff";
    const NEW_ID: &str = "ffeeddccbbaa99887766554433221100";

    /// The keys of OLD_ID and NEW_ID.
    fn key_text(id: &str) -> &'static str {
        if id == OLD_ID {
            test_support::key_text()
        } else {
            test_support::other_key_text()
        }
    }

    fn identity_of(id: &str) -> Identity {
        Identity {
            name: sfc_proto::Name::new("alice").unwrap(),
            client_id: sfc_proto::ClientId::from_hex(id).unwrap(),
            keypair: sfc_crypto::RsaKeyPair::from_base64(key_text(id)).unwrap(),
        }
    }

    fn public_key_of(id: &str) -> Vec<u8> {
        identity_of(id).keypair.public_key_der()
    }

    /// What was in the folder before a save: nothing, an identity with its me.server, or
    /// one without (an older client's).
    #[derive(Clone, Copy, Debug, PartialEq)]
    enum Before {
        Nothing,
        Claimed,
        Unclaimed,
    }

    /// A save (after a 1606 from server a:1, or a first registration) cut before each of
    /// its writes in turn, as a kill or a power cut would: the next run for a:1 finds an
    /// identity whose ID and key match and which is recorded as a:1's, so a run for another
    /// server neither takes it nor replaces it; a replaced identity is in its backup.
    #[test]
    fn every_cut_of_a_save_leaves_an_identity_that_names_its_server() {
        for before in [Before::Nothing, Before::Claimed, Before::Unclaimed] {
            for writes_done in 0.. {
                let dir = tempfile::tempdir().unwrap();
                let lock = FolderLock::acquire(dir.path()).unwrap();
                if before != Before::Nothing {
                    identity::save(dir.path(), &identity_of(OLD_ID)).unwrap();
                }
                if before == Before::Claimed {
                    std::fs::write(dir.path().join(ME_SERVER), "a:1\n").unwrap();
                }
                let old_me = std::fs::read(dir.path().join(ME_INFO)).ok();
                let folder = locate(&lock, "a:1").unwrap();
                assert_eq!(folder.dir, dir.path());

                let hook = identity::write_hook::kill_after(writes_done);
                let saved = folder.save(&identity_of(NEW_ID));
                drop(hook);

                let case = format!("{before:?}, cut after {writes_done} writes");
                let folder = locate(&lock, "a:1").unwrap();
                assert_eq!(folder.dir, dir.path(), "{case}");
                match folder.load().unwrap() {
                    None => assert_eq!(before, Before::Nothing, "{case}: identity lost"),
                    Some(loaded) => {
                        assert!(loaded.warnings.len() <= 1, "{case}: {:?}", loaded.warnings);
                        let id = loaded.identity.client_id.to_hex();
                        assert!(
                            loaded.identity.keypair.public_key_der() == public_key_of(&id),
                            "{case}: client {id} loaded with another client's key"
                        );
                        // The new identity is marked as awaiting its key exchange from the
                        // moment it is there; the old one never is.
                        let pending = folder.key_pending(&loaded.identity).unwrap();
                        assert_eq!(pending, id == NEW_ID, "{case}: key pending");
                        if id == NEW_ID {
                            let other = locate(&lock, "b:2").unwrap();
                            assert!(other.nested, "{case}: the new identity is unclaimed");
                            if let Some(old_me) = &old_me {
                                let backup = backup_name(ME_INFO, OLD_ID, 1);
                                let kept = std::fs::read(dir.path().join(backup)).unwrap();
                                assert_eq!(&kept, old_me, "{case}");
                            }
                        }
                    }
                }
                if saved.is_ok() {
                    assert_eq!(
                        identity::load(dir.path()).unwrap().unwrap().warnings,
                        Vec::<String>::new()
                    );
                    break;
                }
            }
        }
    }

    /// me.pending marks the identity saved with it until the key exchange is recorded; a
    /// me.pending of another client ID (left by a save cut before me.info) marks nothing.
    #[test]
    fn a_saved_identity_awaits_its_key_exchange_until_it_is_recorded() {
        let dir = tempfile::tempdir().unwrap();
        let lock = FolderLock::acquire(dir.path()).unwrap();
        let folder = locate(&lock, "a:1").unwrap();
        let identity = identity_of(NEW_ID);
        assert!(!folder.key_pending(&identity).unwrap());
        folder.save(&identity).unwrap();
        let loaded = folder.load().unwrap().unwrap().identity;
        assert!(folder.key_pending(&loaded).unwrap());
        assert!(!folder.key_pending(&identity_of(OLD_ID)).unwrap());
        // me.info keeps its three lines for other clients.
        let me = std::fs::read_to_string(dir.path().join(ME_INFO)).unwrap();
        assert_eq!(me.lines().count(), 3, "{me}");

        folder.key_exchanged().unwrap();
        assert!(!folder.key_pending(&loaded).unwrap());
        assert!(!dir.path().join(ME_PENDING).exists());
        folder.key_exchanged().unwrap();
    }

    /// A run killed in the middle of a write leaves its temporary file, which may hold a
    /// private key; the next run that locks the folder removes those of the client's files
    /// (in the folder and in servers/*/), and nothing else.
    #[test]
    fn leftover_temporaries_are_removed_by_the_next_run_that_locks_the_folder() {
        let dir = tempfile::tempdir().unwrap();
        let nested = dir.path().join(SERVERS_DIR).join("b.example-2");
        std::fs::create_dir_all(&nested).unwrap();
        let leftovers = [
            dir.path().join(".me.info.a1B2c3.tmp"),
            dir.path().join(".priv.key.x9Y8z7.tmp"),
            dir.path().join(".me.server.Qw3rTy.tmp"),
            dir.path()
                .join(format!(".priv.key.{OLD_ID}.bak.Zz9y8X.tmp")),
            dir.path().join(".sfc-client-write-test.abc123"),
            nested.join(".priv.key.k1L2m3.tmp"),
        ];
        let kept = [
            dir.path().join(ME_INFO),
            dir.path().join(PRIV_KEY),
            dir.path().join(".notes.txt.a1B2c3.tmp"),
            dir.path().join(".priv.key.tmp"),
            dir.path().join("notes.txt"),
            nested.join(ME_INFO),
        ];
        for path in leftovers.iter().chain(&kept) {
            std::fs::write(path, key_text(OLD_ID)).unwrap();
        }
        // A folder of that name is not a leftover file.
        let folder_named_like_one = dir.path().join(".me.info.Ab12Cd.tmp");
        std::fs::create_dir(&folder_named_like_one).unwrap();

        // Not while another run holds the lock: it may be writing them.
        let other_run = open_lock_file(&dir.path().join(LOCK_FILE)).unwrap();
        other_run.try_lock().unwrap();
        assert!(FolderLock::acquire(dir.path()).is_err());
        assert!(
            leftovers.iter().all(|path| path.exists()),
            "removed under another run's lock"
        );
        drop(other_run);

        let _lock = FolderLock::acquire(dir.path()).unwrap();
        for path in &leftovers {
            assert!(!path.exists(), "{} is left", path.display());
        }
        assert!(kept.iter().all(|path| path.exists()));
        assert!(folder_named_like_one.is_dir());
    }

    /// The Ctrl-C handler's guard waits for a save in progress: when it is held, the save
    /// has written every file (here paused just before me.info).
    #[test]
    fn an_interrupt_waits_for_a_save_in_progress() {
        let dir = tempfile::tempdir().unwrap();
        let lock = FolderLock::acquire(dir.path()).unwrap();
        let folder = locate(&lock, "a:1").unwrap();
        let (paused_tx, paused) = std::sync::mpsc::channel();
        let saving = {
            let folder = folder.clone();
            std::thread::spawn(move || {
                let _hook = identity::write_hook::install(move |path| {
                    if path.file_name().is_some_and(|name| name == ME_INFO) {
                        paused_tx.send(()).unwrap();
                        std::thread::sleep(std::time::Duration::from_millis(300));
                    }
                    Ok(())
                });
                folder.save(&identity_of(NEW_ID))
            })
        };
        paused.recv().unwrap();
        let held = hold_identity_writes();
        let loaded = identity::load(dir.path())
            .unwrap()
            .expect("me.info written");
        assert_eq!(loaded.identity.client_id.to_hex(), NEW_ID);
        assert_eq!(
            std::fs::read_to_string(dir.path().join(PRIV_KEY)).unwrap(),
            key_text(NEW_ID),
            "priv.key not written yet"
        );
        assert!(dir.path().join(ME_SERVER).exists());
        drop(held);
        saving.join().unwrap().unwrap();
    }

    /// Holds `mutex` on another thread for `hold`; returns once it is held.
    fn hold_elsewhere(mutex: &'static Mutex<()>, hold: Duration) -> std::thread::JoinHandle<()> {
        let (held_tx, held) = std::sync::mpsc::channel();
        let holder = std::thread::spawn(move || {
            let _guard = mutex.lock().unwrap();
            held_tx.send(()).unwrap();
            std::thread::sleep(hold);
        });
        held.recv().unwrap();
        holder
    }

    /// A save that hangs (held longer than the bound): the wait gives up after about the
    /// bound, without the guard, instead of waiting for ever.
    #[test]
    fn the_wait_for_a_hung_save_gives_up_after_its_bound() {
        static SAVING: Mutex<()> = Mutex::new(());
        let bound = Duration::from_millis(300);
        let holder = hold_elsewhere(&SAVING, Duration::from_secs(3));
        let started = Instant::now();
        let guard = lock_within(&SAVING, bound);
        let waited = started.elapsed();
        assert!(guard.is_none());
        assert!(waited >= bound, "{waited:?}");
        assert!(waited < Duration::from_secs(2), "{waited:?}");
        holder.join().unwrap();
    }

    /// A save that ends within the bound: the wait gets the guard as soon as it does.
    #[test]
    fn the_wait_for_a_short_save_gets_the_guard() {
        static SAVING: Mutex<()> = Mutex::new(());
        let hold = Duration::from_millis(200);
        let holder = hold_elsewhere(&SAVING, hold);
        let started = Instant::now();
        let guard = lock_within(&SAVING, Duration::from_secs(10));
        let waited = started.elapsed();
        assert!(guard.is_some());
        assert!(waited < Duration::from_secs(5), "{waited:?}");
        // Held by the wait now: the holder is done, and nobody else gets it.
        holder.join().unwrap();
        assert!(SAVING.try_lock().is_err());
        drop(guard);
        assert!(SAVING.try_lock().is_ok());
    }

    /// While the Ctrl-C handler holds its guard (it is ending the process), no save starts.
    #[test]
    fn no_save_starts_while_an_interrupt_holds_the_guard() {
        let dir = tempfile::tempdir().unwrap();
        let lock = FolderLock::acquire(dir.path()).unwrap();
        let folder = locate(&lock, "a:1").unwrap();
        let held = hold_identity_writes();
        let saving = std::thread::spawn(move || folder.save(&identity_of(NEW_ID)));
        std::thread::sleep(std::time::Duration::from_millis(300));
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|entry| entry.unwrap().file_name())
            .collect();
        assert_eq!(names, vec![LOCK_FILE], "written during the interrupt");
        drop(held);
        saving.join().unwrap().unwrap();
        assert!(identity::load(dir.path()).unwrap().is_some());
    }

    #[test]
    fn identities_of_other_servers_live_apart() {
        let dir = tempfile::tempdir().unwrap();
        let lock = FolderLock::acquire(dir.path()).unwrap();
        let here = locate(&lock, "a:1").unwrap();
        assert_eq!(here.dir, dir.path());
        std::fs::write(dir.path().join(ME_INFO), "x\n").unwrap();
        // An unclaimed me.info is used for whatever server is asked for.
        let legacy = locate(&lock, "b:2").unwrap();
        assert_eq!(legacy.dir, dir.path());
        assert!(legacy.unclaimed);
        legacy.claim().unwrap();
        assert_eq!(locate(&lock, "b:2").unwrap().dir, dir.path());
        let other = locate(&lock, "[::1]:1256").unwrap();
        assert_eq!(other.dir, dir.path().join("servers").join("___1__1256"));
        assert!(!other.unclaimed);
        identity::synced::take();
        other.check_writable().unwrap();
        assert!(other.dir.is_dir());
        // Both new folders' entries are made durable.
        let synced = identity::synced::take();
        let servers = dir.path().join("servers");
        assert!(synced.contains(&dir.path().to_owned()), "{synced:?}");
        assert!(synced.contains(&servers), "{synced:?}");
    }

    #[test]
    fn a_servers_identity_is_found_when_the_first_me_info_is_gone() {
        let dir = tempfile::tempdir().unwrap();
        let lock = FolderLock::acquire(dir.path()).unwrap();
        let nested = dir.path().join(SERVERS_DIR).join(folder_name("b:2"));
        std::fs::create_dir_all(&nested).unwrap();
        std::fs::write(nested.join(ME_INFO), "bob\n").unwrap();
        std::fs::write(nested.join(ME_SERVER), "b:2\n").unwrap();
        // dir's own me.info (server a's) was moved away.
        let folder = locate(&lock, "b:2").unwrap();
        assert_eq!(folder.dir, nested);
        assert!(folder.nested && !folder.unclaimed);
        // A server without an identity of its own still registers in dir.
        assert_eq!(locate(&lock, "c:3").unwrap().dir, dir.path());
    }

    #[test]
    fn a_replaced_identity_is_backed_up_owner_only_with_nothing_left_over() {
        let dir = tempfile::tempdir().unwrap();
        let old_id = "00112233445566778899aabbccddeeff";
        let old_me = format!("alice\n{old_id}\nOLDKEY\n");
        std::fs::write(dir.path().join(ME_INFO), &old_me).unwrap();
        std::fs::write(dir.path().join(PRIV_KEY), "OLDKEY\n").unwrap();
        #[cfg(unix)]
        for file in [ME_INFO, PRIV_KEY] {
            use std::os::unix::fs::PermissionsExt;
            // As another client may have left them: readable by all.
            let all = std::fs::Permissions::from_mode(0o644);
            std::fs::set_permissions(dir.path().join(file), all).unwrap();
        }
        let lock = FolderLock::acquire(dir.path()).unwrap();
        let folder = locate(&lock, "a:1").unwrap();
        let identity = Identity {
            name: sfc_proto::Name::new("alice").unwrap(),
            client_id: sfc_proto::ClientId::from_hex("ffeeddccbbaa99887766554433221100").unwrap(),
            keypair: sfc_crypto::RsaKeyPair::generate().unwrap(),
        };
        let backup = folder.save(&identity).unwrap().unwrap();
        let me_bak = dir.path().join(format!("{ME_INFO}.{old_id}.bak"));
        let key_bak = dir.path().join(format!("{PRIV_KEY}.{old_id}.bak"));
        assert_eq!(backup, me_bak);
        assert_eq!(std::fs::read_to_string(&me_bak).unwrap(), old_me);
        assert_eq!(std::fs::read_to_string(&key_bak).unwrap(), "OLDKEY\n");
        #[cfg(unix)]
        for path in [&me_bak, &key_bak] {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(path).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600, "{}", path.display());
        }
        let loaded = identity::load(dir.path()).unwrap().unwrap();
        assert_eq!(loaded.identity.client_id, identity.client_id);
        // The backups, the new identity, me.server and me.pending (no key exchange yet);
        // no temporary file.
        let mut names: Vec<String> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        names.sort();
        let mut expected = vec![
            ME_INFO.to_owned(),
            format!("{ME_INFO}.{old_id}.bak"),
            ME_SERVER.to_owned(),
            ME_PENDING.to_owned(),
            PRIV_KEY.to_owned(),
            LOCK_FILE.to_owned(),
            format!("{PRIV_KEY}.{old_id}.bak"),
        ];
        expected.sort();
        assert_eq!(names, expected);
        // What -r leaves out is exactly what was written here.
        assert!(names.iter().all(|name| is_state_file(name)), "{names:?}");
    }

    /// A priv.key without a me.info is backed up too before a save replaces it (before,
    /// without a me.info to name the backup, the key was overwritten).
    #[test]
    fn a_key_without_its_me_info_is_backed_up_before_a_save() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(PRIV_KEY), "LONEKEY\n").unwrap();
        let lock = FolderLock::acquire(dir.path()).unwrap();
        let folder = locate(&lock, "a:1").unwrap();
        let identity = Identity {
            name: sfc_proto::Name::new("bob").unwrap(),
            client_id: sfc_proto::ClientId::from_hex("ffeeddccbbaa99887766554433221100").unwrap(),
            keypair: sfc_crypto::RsaKeyPair::generate().unwrap(),
        };
        assert_eq!(
            folder.save(&identity).unwrap(),
            None,
            "no me.info backed up"
        );
        let key_bak = dir.path().join(backup_name(PRIV_KEY, UNKNOWN_BACKUP_ID, 1));
        assert_eq!(std::fs::read_to_string(&key_bak).unwrap(), "LONEKEY\n");
        assert!(is_state_file(
            &key_bak.file_name().unwrap().to_string_lossy()
        ));
        // The me.info moved aside again: the next save keeps that key beside the first
        // backup, not over it.
        let saved_key = std::fs::read(dir.path().join(PRIV_KEY)).unwrap();
        std::fs::remove_file(dir.path().join(ME_INFO)).unwrap();
        folder.save(&identity).unwrap();
        assert_eq!(std::fs::read_to_string(&key_bak).unwrap(), "LONEKEY\n");
        let second = dir.path().join(backup_name(PRIV_KEY, UNKNOWN_BACKUP_ID, 2));
        assert_eq!(std::fs::read(&second).unwrap(), saved_key);
        assert!(is_state_file(
            &second.file_name().unwrap().to_string_lossy()
        ));
        // The same key found alone once more is not kept twice.
        std::fs::remove_file(dir.path().join(ME_INFO)).unwrap();
        std::fs::write(dir.path().join(PRIV_KEY), "LONEKEY\n").unwrap();
        folder.save(&identity).unwrap();
        let third = dir.path().join(backup_name(PRIV_KEY, UNKNOWN_BACKUP_ID, 3));
        assert!(!third.exists());
    }

    #[test]
    fn state_file_names_match_only_what_the_client_writes() {
        for name in [
            "me.info",
            "priv.key",
            "me.server",
            "me.pending",
            ".sfc-client.lock",
            "me.info.00112233445566778899aabbccddeeff.bak",
            "priv.key.old.bak",
            "priv.key.old.2.bak",
            "me.info.00112233445566778899aabbccddeeff.12.bak",
            ".priv.key.a1B2c3.tmp",
            ".me.info.0011.bak.Zz9y8X.tmp",
            ".sfc-client-write-test.abc123",
        ] {
            assert!(is_state_file(name), "{name}");
        }
        for name in [
            "transfer.info",
            "servers",
            "me.info.bak",
            "priv.key.ABCDEF.bak",
            "priv.key.txt",
            "priv.key.0011.bak.gz",
            "priv.key.old.02.bak",
            "priv.key.old.x.bak",
            "priv.key.0011.2.3.bak",
            ".notes.txt.a1B2c3.tmp",
            ".priv.key.tmp",
            "my.priv.key",
        ] {
            assert!(!is_state_file(name), "{name}");
        }
    }

    #[test]
    fn a_missing_folder_is_not_writable() {
        let dir = tempfile::tempdir().unwrap();
        let lock = FolderLock::acquire(&dir.path().join("nonexist")).unwrap();
        assert!(lock.problem().is_some());
        let folder = locate(&lock, "a:1").unwrap();
        let e = folder.check_writable().unwrap_err();
        assert!(e.to_string().contains("nonexist"), "{e}");
    }

    #[test]
    fn a_locked_folder_is_refused_until_its_lock_is_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let first = FolderLock::acquire(dir.path()).unwrap();
        assert_eq!(first.problem(), None);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(dir.path().join(LOCK_FILE))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        let e = FolderLock::acquire(dir.path()).unwrap_err();
        assert!(e.is_bad_input());
        let text = e.to_string();
        assert!(text.contains("another sfc-client run"), "{text}");
        assert!(text.contains(&dir.path().display().to_string()), "{text}");
        drop(first);
        let again = FolderLock::acquire(dir.path()).unwrap();
        assert_eq!(again.problem(), None);
        assert!(dir.path().join(LOCK_FILE).is_file());
    }

    #[test]
    fn an_unlocked_run_reads_but_never_writes() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(ME_INFO), "x\n").unwrap();
        // As if the lock file could not be locked in a folder that is writable anyway.
        let lock = FolderLock {
            dir: dir.path().to_owned(),
            file: Err("cannot lock it: no locks here".to_owned()),
        };
        let folder = locate(&lock, "a:1").unwrap();
        assert!(folder.unclaimed);
        let e = folder.check_writable().unwrap_err();
        assert!(!e.is_bad_input());
        assert!(e.to_string().contains("no locks here"), "{e}");
        assert!(folder.claim().is_err());
        let identity = Identity {
            name: sfc_proto::Name::new("alice").unwrap(),
            client_id: sfc_proto::ClientId::from_hex("ffeeddccbbaa99887766554433221100").unwrap(),
            keypair: sfc_crypto::RsaKeyPair::generate().unwrap(),
        };
        assert!(folder.save(&identity).is_err());
        assert_eq!(
            std::fs::read_to_string(dir.path().join(ME_INFO)).unwrap(),
            "x\n"
        );
        assert!(!dir.path().join(ME_SERVER).exists());
        assert!(!dir.path().join(PRIV_KEY).exists());
    }
}
