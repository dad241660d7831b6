//! Owner-only file modes, set explicitly (whatever the umask).
//!
//! The server's data is private to the account it runs as: `defensive.db` (with its
//! `-wal`/`-shm` files) holds every client's current AES key, and `files/` holds the
//! decrypted files. So:
//!
//! | what | mode |
//! |---|---|
//! | the data folder, when the server creates it | 0700 |
//! | `files/` and `files/<client id>/` | 0700 |
//! | `defensive.db`, `-wal`, `-shm` | 0600 (SQLite gives the `-wal`/`-shm` files the database's mode) |
//! | stored files and temporary files | 0600 |
//!
//! Modes are set with `chmod` after creation, so a permissive umask cannot widen them and
//! a strict one cannot make the files unusable. Files left with wider modes by an older
//! version are tightened at start-up (the database) or when next written (client folders,
//! stored files). Elsewhere than Unix these functions do nothing.

use std::fs::{File, OpenOptions};
use std::io;
use std::path::Path;

/// Mode of private folders.
pub const DIR_MODE: u32 = 0o700;
/// Mode of private files.
pub const FILE_MODE: u32 = 0o600;

/// Sets `path`'s permission bits to exactly `mode`.
#[cfg(unix)]
pub fn set_mode(path: &Path, mode: u32) -> io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
}

/// Sets `path`'s permission bits to exactly `mode`.
#[cfg(not(unix))]
pub fn set_mode(_path: &Path, _mode: u32) -> io::Result<()> {
    Ok(())
}

/// Sets an open file's permission bits to exactly `mode`.
#[cfg(unix)]
pub fn set_file_mode(file: &File, mode: u32) -> io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    file.set_permissions(std::fs::Permissions::from_mode(mode))
}

/// Sets an open file's permission bits to exactly `mode`.
#[cfg(not(unix))]
pub fn set_file_mode(_file: &File, _mode: u32) -> io::Result<()> {
    Ok(())
}

/// The permission bits of `path` (`None` where there are none, or it does not exist).
#[cfg(unix)]
pub fn mode_of(path: &Path) -> Option<u32> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path)
        .ok()
        .map(|m| m.permissions().mode() & 0o7777)
}

/// The permission bits of `path` (`None` where there are none, or it does not exist).
#[cfg(not(unix))]
pub fn mode_of(_path: &Path) -> Option<u32> {
    None
}

/// If `path` exists and grants anything to group or others, sets it to `mode`. Returns
/// true when it changed something.
pub fn tighten(path: &Path, mode: u32) -> io::Result<bool> {
    match mode_of(path) {
        Some(current) if current & 0o077 != 0 => {
            set_mode(path, mode)?;
            Ok(true)
        }
        _ => Ok(false),
    }
}

/// Options that create a new file (failing if it exists) readable and writable by the
/// owner only. Callers also call [`set_file_mode`] on the result, to be umask-proof.
pub fn new_private_file() -> OpenOptions {
    let mut options = OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(FILE_MODE);
    }
    options
}

/// Creates a new private file (0600, umask-proof) for writing.
pub fn create_private_file(path: &Path) -> io::Result<File> {
    let file = new_private_file().open(path)?;
    set_file_mode(&file, FILE_MODE)?;
    Ok(file)
}

/// Creates the new private file `path` holding `bytes`, fsynced (it fails if `path`
/// exists).
pub fn write_private_file(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let mut file = create_private_file(path)?;
    io::Write::write_all(&mut file, bytes)?;
    file.sync_all()
}

/// Creates `path` and any missing parents; every folder created gets mode 0700 exactly.
/// Folders that already exist are left as they are.
pub fn create_private_dir_all(path: &Path) -> io::Result<()> {
    let mut missing = Vec::new();
    let mut cursor = Some(path);
    while let Some(dir) = cursor {
        if dir.as_os_str().is_empty() || dir.is_dir() {
            break;
        }
        missing.push(dir);
        cursor = dir.parent();
    }
    for dir in missing.iter().rev() {
        match std::fs::create_dir(dir) {
            Ok(()) => set_mode(dir, DIR_MODE)?,
            // Created meanwhile by someone else (another upload of the same client).
            Err(error) if error.kind() == io::ErrorKind::AlreadyExists && dir.is_dir() => {}
            Err(error) => return Err(error),
        }
    }
    Ok(())
}

/// Before SQLite opens the database at `path`: creates it empty with mode 0600 if it does
/// not exist (SQLite then gives its `-wal` and `-shm` files the same mode), or tightens
/// it and its `-wal`/`-shm` files to 0600 if they are wider (logged).
pub fn prepare_private_db(path: &Path) -> io::Result<()> {
    match create_private_file(path) {
        Ok(_) => Ok(()),
        Err(error) if error.kind() == io::ErrorKind::AlreadyExists => {
            let mut all = vec![path.to_path_buf()];
            for suffix in ["-wal", "-shm", "-journal"] {
                let mut name = path.as_os_str().to_owned();
                name.push(suffix);
                all.push(name.into());
            }
            for file in all {
                if tighten(&file, FILE_MODE)? {
                    tracing::warn!(path = %file.display(), "was readable by other users; now 0600");
                }
            }
            Ok(())
        }
        Err(error) => Err(error),
    }
}

#[cfg(all(test, unix))]
mod tests {
    use super::*;

    #[test]
    fn created_folders_and_files_are_owner_only() {
        let root = tempfile::tempdir().unwrap();
        let deep = root.path().join("a").join("b").join("c");
        create_private_dir_all(&deep).unwrap();
        for dir in [root.path().join("a"), root.path().join("a/b"), deep.clone()] {
            assert_eq!(mode_of(&dir), Some(DIR_MODE), "{}", dir.display());
        }
        create_private_dir_all(&deep).unwrap();
        let file = deep.join("f");
        drop(create_private_file(&file).unwrap());
        assert_eq!(mode_of(&file), Some(FILE_MODE));
        assert!(create_private_file(&file).is_err(), "never reuses a file");
        set_mode(&file, 0o644).unwrap();
        assert!(tighten(&file, FILE_MODE).unwrap());
        assert_eq!(mode_of(&file), Some(FILE_MODE));
        assert!(!tighten(&file, FILE_MODE).unwrap());
        assert!(!tighten(&root.path().join("missing"), FILE_MODE).unwrap());
    }
}
