//! Who may use the admin listener: one token (a file, created owner-only with a random
//! token when missing), given as `Authorization: Bearer` (the API, `/metrics`) or
//! exchanged at the login form for a session cookie (`HttpOnly`, `SameSite=Strict`,
//! `Secure` under TLS) that carries a CSRF token every action must echo. Failed logins
//! are limited in `login_limit.rs`.

use anyhow::Context;
use std::collections::HashMap;
use std::io::Read;
use std::path::Path;
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};
use zeroize::Zeroizing;

/// The session cookie's name.
pub const COOKIE: &str = "sfc_admin";
/// A session ends this long after login.
pub const SESSION_LIFETIME: Duration = Duration::from_secs(12 * 3600);
/// A session no request has used for this long ends: a closed tab's or a browser's that
/// stopped, so a cookie taken from one is of no use an hour later (a dashboard tab that
/// keeps refreshing, every 2 s, keeps its session up to [`SESSION_LIFETIME`]).
pub const SESSION_IDLE: Duration = Duration::from_secs(3600);
/// Sessions kept at most (the least recently used goes first).
pub const MAX_SESSIONS: usize = 256;
/// Shortest token accepted from a token file.
pub const MIN_TOKEN_LEN: usize = 16;
/// Shorter tokens are accepted with a warning at start-up.
pub const STRONG_TOKEN_LEN: usize = 32;

/// 256 random bits from the operating system's CSPRNG, as 64 hex digits.
pub fn random_token() -> String {
    use std::fmt::Write;
    let bits = sfc_crypto::AesKey::random();
    bits.as_bytes()
        .iter()
        .fold(String::with_capacity(64), |mut hex, byte| {
            let _ = write!(hex, "{byte:02x}");
            hex
        })
}

/// Longest token file read (a token is a line of text; a larger file is not one).
const MAX_TOKEN_FILE_LEN: u64 = 4096;

/// Reads the token from `path`, or creates the file (owner-only) with a random token
/// and says where. An existing file is checked through the handle it is read from, so
/// that it cannot be swapped between the check and the read.
pub fn load_or_create_token(path: &Path) -> anyhow::Result<Zeroizing<String>> {
    check_token_folder(path)?;
    match open_token_file(path) {
        Ok((file, through_link)) => {
            keep_private(path, &file, through_link)?;
            let mut text = Zeroizing::new(String::new());
            file.take(MAX_TOKEN_FILE_LEN + 1)
                .read_to_string(&mut text)
                .with_context(|| format!("cannot read the admin token file {}", path.display()))?;
            if text.len() as u64 > MAX_TOKEN_FILE_LEN {
                anyhow::bail!(
                    "the admin token file {} is larger than {MAX_TOKEN_FILE_LEN} bytes: not a \
                     token file",
                    path.display()
                );
            }
            let token = Zeroizing::new(text.trim().to_owned());
            if token.len() < MIN_TOKEN_LEN {
                anyhow::bail!(
                    "the admin token file {} holds fewer than {MIN_TOKEN_LEN} characters",
                    path.display()
                );
            }
            if token.len() < STRONG_TOKEN_LEN {
                // The right token gets in even beyond the failure limit (access.rs), so
                // the limit slows guessing but does not stop it: the token's length must.
                tracing::warn!(
                    path = %path.display(),
                    "the admin token has fewer than {STRONG_TOKEN_LEN} characters: make it \
                     long and random (delete the file and restart: a 64-digit random token \
                     is written)"
                );
            }
            Ok(token)
        }
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
            let token = Zeroizing::new(random_token());
            let line = Zeroizing::new(format!("{}\n", token.as_str()));
            crate::storage::perms::write_private_file(path, line.as_bytes()).with_context(
                || format!("cannot create the admin token file {}", path.display()),
            )?;
            tracing::warn!(
                path = %path.display(),
                "admin token created (owner-only); log in to the admin listener with its content"
            );
            Ok(token)
        }
        Err(error) => Err(error)
            .with_context(|| format!("cannot read the admin token file {}", path.display())),
    }
}

/// Opens an existing token file to read, and says whether its path is a symbolic link.
/// Without blocking: a FIFO planted at the path would hang the start-up. A link (a
/// mounted secret is one) is followed, but [`keep_private`] never changes a mode
/// through it: a link planted to a system file others may read (known content) would
/// otherwise have that file made owner-only and its content taken as the token.
#[cfg(unix)]
fn open_token_file(path: &Path) -> std::io::Result<(std::fs::File, bool)> {
    use rustix::fs::OFlags;
    use std::os::unix::fs::OpenOptionsExt;
    let open = |flags: OFlags| {
        std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(flags.bits() as i32)
            .open(path)
    };
    match open(OFlags::NOFOLLOW | OFlags::NONBLOCK) {
        Ok(file) => Ok((file, false)),
        Err(error) if error.raw_os_error() == Some(rustix::io::Errno::LOOP.raw_os_error()) => {
            Ok((open(OFlags::NONBLOCK)?, true))
        }
        Err(error) => Err(error),
    }
}

#[cfg(not(unix))]
fn open_token_file(path: &Path) -> std::io::Result<(std::fs::File, bool)> {
    Ok((std::fs::File::open(path)?, false))
}

/// Whoever can read the token file is an administrator (every stored file, every
/// client), and whoever owns it chose the token: anything but a regular file is
/// refused, and so is a file of another user ([`check_token_file_owner`]); a file
/// others may read is made owner-only, as the database is at start-up, and refused if
/// the server cannot make it so or reached it through a symbolic link.
#[cfg_attr(not(unix), allow(unused_variables))]
fn keep_private(path: &Path, file: &std::fs::File, through_link: bool) -> anyhow::Result<()> {
    let meta = file
        .metadata()
        .with_context(|| format!("cannot read the admin token file {}", path.display()))?;
    if !meta.is_file() {
        anyhow::bail!(
            "the admin token file {} is not a regular file",
            path.display()
        );
    }
    #[cfg(unix)]
    {
        use std::os::unix::fs::{MetadataExt, PermissionsExt};
        check_token_file_owner(path, meta.uid(), effective_uid())?;
        let mode = meta.permissions().mode();
        if mode & 0o077 != 0 && through_link {
            anyhow::bail!(
                "the admin token file {} is a symbolic link to a file open to other users \
                 (mode {:o}); chmod 600 the file it points to (as its owner)",
                path.display(),
                mode & 0o777
            );
        }
        if mode & 0o077 != 0 {
            let owner_only = std::fs::Permissions::from_mode(mode & 0o700);
            file.set_permissions(owner_only).with_context(|| {
                format!(
                    "the admin token file {} is open to other users (mode {:o}) and cannot be \
                     made owner-only; chmod 600 it (as its owner)",
                    path.display(),
                    mode & 0o777
                )
            })?;
            tracing::warn!(path = %path.display(), was = format!("{:o}", mode & 0o777), "the admin token file was open to other users: made owner-only");
        }
    }
    Ok(())
}

/// Like OpenSSH's `StrictModes`, for the token file's folder and every folder above it:
/// another user who may replace entries in one of them (a folder writable by others
/// without the sticky bit, or owned by another user) could swap the token file, or a
/// folder or symbolic link on its path, between two starts. A sticky folder such as
/// `/tmp` lets nobody replace another's entry, and the file itself is checked too. The
/// folders are those of the path as given (which hold its symbolic links), those of its
/// real path (symbolic links resolved), and, when the file is a link, those of the file
/// it points to: every folder the file is reached through.
#[cfg(unix)]
fn check_token_folder(path: &Path) -> anyhow::Result<()> {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let folder = match path.parent() {
        Some(folder) if !folder.as_os_str().is_empty() => folder,
        _ => Path::new("."),
    };
    let Ok(real_folder) = std::fs::canonicalize(folder) else {
        // A missing folder: creating the file says so.
        return Ok(());
    };
    let mut folders = std::collections::BTreeSet::new();
    if let Ok(given) = std::path::absolute(folder) {
        folders.extend(given.ancestors().map(Path::to_path_buf));
    }
    folders.extend(real_folder.ancestors().map(Path::to_path_buf));
    if let Some(target_folder) = std::fs::canonicalize(path)
        .ok()
        .and_then(|target| target.parent().map(Path::to_path_buf))
    {
        folders.extend(target_folder.ancestors().map(Path::to_path_buf));
    }
    for folder in &folders {
        let meta = std::fs::metadata(folder).with_context(|| {
            format!(
                "cannot check the folder {} on the path of the admin token file {}",
                folder.display(),
                path.display()
            )
        })?;
        folder_may_hold_the_token(
            folder,
            meta.uid(),
            meta.permissions().mode(),
            effective_uid(),
        )
        .map_err(|refused| anyhow::anyhow!("{refused} (the token file: {})", path.display()))?;
    }
    Ok(())
}

#[cfg(not(unix))]
fn check_token_folder(_path: &Path) -> anyhow::Result<()> {
    Ok(())
}

/// The rule of [`check_token_folder`] on a folder's owner and mode.
#[cfg_attr(not(unix), allow(dead_code))]
fn folder_may_hold_the_token(
    folder: &Path,
    owner: u32,
    mode: u32,
    effective_uid: u32,
) -> anyhow::Result<()> {
    const STICKY: u32 = 0o1000;
    if !owned_by_server_or_root(owner, effective_uid) {
        anyhow::bail!(
            "the folder {} on the admin token file's path is owned by uid {owner}, not by \
             the server's user (uid {effective_uid}) or root: its owner could replace the \
             token file; keep the token in folders of the server's user or root \
             (--admin-token-file)",
            folder.display()
        );
    }
    if mode & 0o022 != 0 && mode & STICKY == 0 {
        anyhow::bail!(
            "the folder {} on the admin token file's path may be written by other users \
             (mode {:o}): they could replace the token file; keep the token where only \
             the server's user or root may write (--admin-token-file), or chmod go-w that \
             folder",
            folder.display(),
            mode & 0o7777
        );
    }
    Ok(())
}

/// Like OpenSSH's `StrictModes`: the token file must belong to the server's effective
/// user or to root. Otherwise its owner (say, another local user planting a 0600 file
/// for a server running as root) chose the token and could change it at any time.
fn check_token_file_owner(path: &Path, file_uid: u32, effective_uid: u32) -> anyhow::Result<()> {
    if owned_by_server_or_root(file_uid, effective_uid) {
        return Ok(());
    }
    anyhow::bail!(
        "the admin token file {} is owned by uid {file_uid}, not by the server's user \
         (uid {effective_uid}) or root: its owner chose the token; remove it (a new one is \
         created) or chown it to uid {effective_uid}",
        path.display()
    )
}

/// Whom the token file and its folder may belong to: the server's user, or root (who
/// could read anything anyway).
fn owned_by_server_or_root(owner: u32, effective_uid: u32) -> bool {
    owner == effective_uid || owner == 0
}

/// The server's effective uid: rustix's `geteuid` is a plain system call that cannot
/// fail, unlike parsing `/proc/self/status` or reading the owner of a probe file (which
/// needs a writable folder).
#[cfg(unix)]
fn effective_uid() -> u32 {
    rustix::process::geteuid().as_raw()
}

/// Compares without an early exit, so that the time taken does not tell how much of a
/// guess was right.
pub fn same_secret(a: &str, b: &str) -> bool {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    let mut diff = u8::from(a.len() != b.len());
    for (i, x) in a.iter().enumerate() {
        diff |= x ^ b.get(i).copied().unwrap_or(0);
    }
    diff == 0
}

#[derive(Debug)]
struct Session {
    csrf: String,
    expires: Instant,
    last_used: Instant,
}

impl Session {
    fn live(&self, now: Instant) -> bool {
        self.expires > now && now.saturating_duration_since(self.last_used) < SESSION_IDLE
    }
}

/// The logged-in sessions.
#[derive(Debug, Default)]
pub struct Sessions {
    sessions: Mutex<HashMap<String, Session>>,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Sessions {
    /// A new session: its cookie value and its CSRF token.
    pub fn create(&self, now: Instant) -> (String, String) {
        let id = random_token();
        let csrf = random_token();
        let mut sessions = lock(&self.sessions);
        sessions.retain(|_, s| s.live(now));
        if sessions.len() >= MAX_SESSIONS {
            let least_used = sessions
                .iter()
                .min_by_key(|(_, s)| s.last_used)
                .map(|(k, _)| k.clone());
            if let Some(least_used) = least_used {
                sessions.remove(&least_used);
            }
        }
        sessions.insert(
            id.clone(),
            Session {
                csrf: csrf.clone(),
                expires: now + SESSION_LIFETIME,
                last_used: now,
            },
        );
        (id, csrf)
    }

    /// The CSRF token of a live session, which this use keeps from idling out.
    pub fn csrf(&self, id: &str, now: Instant) -> Option<String> {
        let mut sessions = lock(&self.sessions);
        let session = sessions.get_mut(id)?;
        if !session.live(now) {
            // Ended for good, even for a request that read the clock a moment earlier.
            sessions.remove(id);
            return None;
        }
        session.last_used = session.last_used.max(now);
        Some(session.csrf.clone())
    }

    /// Ends a session.
    pub fn end(&self, id: &str) {
        lock(&self.sessions).remove(id);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_created_owner_only_and_read_back() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("admin.token");
        let token = load_or_create_token(&path).unwrap();
        assert_eq!(token.len(), 64);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        assert_eq!(*load_or_create_token(&path).unwrap(), *token);
        std::fs::write(&path, "short\n").unwrap();
        assert!(load_or_create_token(&path).is_err());
        assert_ne!(random_token(), random_token());
        let token = random_token();
        assert!(token.len() == 64 && token.bytes().all(|b| b.is_ascii_hexdigit()));
    }

    /// Writes `token` and a newline to `path` with `mode`.
    #[cfg(unix)]
    fn write_token_file(path: &Path, token: &str, mode: u32) {
        use std::os::unix::fs::PermissionsExt;
        std::fs::write(path, format!("{token}\n")).unwrap();
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
    }

    /// A token file made with the default umask (0644): whoever reads it administers
    /// the server. It is made owner-only before it is used.
    #[test]
    #[cfg(unix)]
    fn a_token_file_others_can_read_is_made_owner_only() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("admin.token");
        write_token_file(&path, &"t".repeat(40), 0o644);
        assert_eq!(*load_or_create_token(&path).unwrap(), "t".repeat(40));
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }

    /// A link planted to a system file others may read (its content known) is not made
    /// owner-only through the link and taken as the token; a link to the server's own
    /// owner-only file (a mounted secret) is followed.
    #[test]
    #[cfg(unix)]
    fn a_token_file_reached_through_a_link_is_never_tightened_through_it() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let known = dir.path().join("machine-id");
        write_token_file(&known, &"k".repeat(32), 0o644);
        let planted = dir.path().join("admin.token");
        std::os::unix::fs::symlink(&known, &planted).unwrap();
        let refused = load_or_create_token(&planted).unwrap_err().to_string();
        assert!(refused.contains("symbolic link"), "{refused}");
        let mode = std::fs::metadata(&known).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o644, "the linked file is left as it was");

        let secret = dir.path().join("secret");
        write_token_file(&secret, &"s".repeat(32), 0o600);
        let mounted = dir.path().join("mounted.token");
        std::os::unix::fs::symlink(&secret, &mounted).unwrap();
        assert_eq!(*load_or_create_token(&mounted).unwrap(), "s".repeat(32));
    }

    /// A FIFO at the path would block the start-up on its open; a large file is no token.
    #[test]
    #[cfg(unix)]
    fn only_a_small_regular_file_is_read_as_the_token() {
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("fifo.token");
        let made = std::process::Command::new("mkfifo")
            .arg(&fifo)
            .status()
            .unwrap();
        assert!(made.success());
        let refused = load_or_create_token(&fifo).unwrap_err().to_string();
        assert!(refused.contains("not a regular file"), "{refused}");

        let large = dir.path().join("large.token");
        std::fs::write(&large, "x".repeat(MAX_TOKEN_FILE_LEN as usize + 1)).unwrap();
        let refused = load_or_create_token(&large).unwrap_err().to_string();
        assert!(refused.contains("larger than"), "{refused}");
    }

    #[test]
    fn a_token_folder_others_may_write_or_own_is_refused() {
        let folder = Path::new("/srv/sfc");
        assert!(folder_may_hold_the_token(folder, 1001, 0o40755, 1001).is_ok());
        assert!(
            folder_may_hold_the_token(folder, 0, 0o40755, 1001).is_ok(),
            "root's"
        );
        assert!(
            folder_may_hold_the_token(folder, 0, 0o41777, 1001).is_ok(),
            "sticky"
        );
        for (owner, mode, words) in [
            (1001, 0o40777, "may be written by other users (mode 777)"),
            (1001, 0o40775, "may be written by other users (mode 775)"),
            (1002, 0o40700, "owned by uid 1002"),
        ] {
            let refused = folder_may_hold_the_token(folder, owner, mode, 1001)
                .unwrap_err()
                .to_string();
            assert!(
                refused.contains(words) && refused.contains("/srv/sfc"),
                "{refused}"
            );
        }
    }

    /// A folder above the token file's that others may write is refused too: they could
    /// rename the token file's folder away and put their own in its place. Reached
    /// through a symbolic link, the real folders are the ones checked.
    #[test]
    #[cfg(unix)]
    fn a_token_file_below_a_world_writable_folder_is_refused() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let open = dir.path().join("open");
        let private = open.join("private");
        std::fs::create_dir_all(&private).unwrap();
        std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o777)).unwrap();
        let link = dir.path().join("link");
        std::os::unix::fs::symlink(&private, &link).unwrap();
        for path in [private.join("admin.token"), link.join("admin.token")] {
            let refused = load_or_create_token(&path).unwrap_err().to_string();
            assert!(
                refused.contains("may be written by other users")
                    && refused.contains(&open.canonicalize().unwrap().display().to_string()),
                "{refused}"
            );
            assert!(
                !private.join("admin.token").exists(),
                "nothing created there"
            );
        }
        std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o755)).unwrap();
        assert_eq!(
            load_or_create_token(&link.join("admin.token"))
                .unwrap()
                .len(),
            64
        );

        // A symbolic link on the path, in a folder others may write: they could point it
        // at a folder holding a token of their choice. So is a token file that is a link
        // into a folder others may write.
        let shared = dir.path().join("shared");
        std::fs::create_dir(&shared).unwrap();
        std::os::unix::fs::symlink(&private, shared.join("sfc")).unwrap();
        let elsewhere = dir.path().join("elsewhere");
        std::fs::create_dir(&elsewhere).unwrap();
        std::fs::write(elsewhere.join("planted"), "p".repeat(64)).unwrap();
        std::fs::set_permissions(
            elsewhere.join("planted"),
            std::fs::Permissions::from_mode(0o600),
        )
        .unwrap();
        std::os::unix::fs::symlink(elsewhere.join("planted"), private.join("linked.token"))
            .unwrap();
        assert!(load_or_create_token(&shared.join("sfc/admin.token")).is_ok());
        assert!(load_or_create_token(&private.join("linked.token")).is_ok());
        for (open, path) in [
            (&shared, shared.join("sfc/admin.token")),
            (&elsewhere, private.join("linked.token")),
        ] {
            std::fs::set_permissions(open, std::fs::Permissions::from_mode(0o777)).unwrap();
            let refused = load_or_create_token(&path).unwrap_err().to_string();
            assert!(
                refused.contains("may be written by other users")
                    && refused.contains(&open.display().to_string())
                    && refused.contains(&path.display().to_string()),
                "{refused}"
            );
            std::fs::set_permissions(open, std::fs::Permissions::from_mode(0o755)).unwrap();
        }
    }

    /// On a real folder: a token file in a folder everyone may write is refused, before
    /// anything is created there.
    #[test]
    #[cfg(unix)]
    fn a_token_file_in_a_world_writable_folder_is_refused() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let open = dir.path().join("open");
        std::fs::create_dir(&open).unwrap();
        std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o777)).unwrap();
        let path = open.join("admin.token");
        let refused = load_or_create_token(&path).unwrap_err().to_string();
        assert!(
            refused.contains("may be written by other users"),
            "{refused}"
        );
        assert!(!path.exists(), "nothing created there");
        std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o700)).unwrap();
        assert_eq!(load_or_create_token(&path).unwrap().len(), 64);
    }

    #[test]
    fn a_token_file_of_another_user_is_refused() {
        let path = Path::new("/srv/sfc/admin.token");
        let refused = check_token_file_owner(path, 1001, 0)
            .unwrap_err()
            .to_string();
        assert!(
            refused.contains("/srv/sfc/admin.token")
                && refused.contains("owned by uid 1001")
                && refused.contains("(uid 0)"),
            "{refused}"
        );
        assert!(check_token_file_owner(path, 1001, 1002).is_err());
    }

    #[test]
    fn a_token_file_of_the_server_user_or_root_is_accepted() {
        let path = Path::new("admin.token");
        assert!(check_token_file_owner(path, 1001, 1001).is_ok());
        assert!(check_token_file_owner(path, 0, 0).is_ok());
        assert!(check_token_file_owner(path, 0, 1001).is_ok(), "root's file");
    }

    /// The check on a real file: as root (CI containers), a file handed to another uid
    /// is refused at start-up; otherwise only the user's own file can be made here.
    #[test]
    #[cfg(target_os = "linux")]
    fn loading_checks_the_token_files_owner() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("admin.token");
        std::fs::write(&path, format!("{}\n", "t".repeat(40))).unwrap();
        let own = load_or_create_token(&path).unwrap();
        assert_eq!(*own, "t".repeat(40));
        if effective_uid() != 0 {
            return;
        }
        std::os::unix::fs::chown(&path, Some(4242), Some(4242)).unwrap();
        let refused = load_or_create_token(&path).unwrap_err().to_string();
        assert!(refused.contains("owned by uid 4242"), "{refused}");
    }

    #[test]
    fn secrets_compare_exactly() {
        assert!(same_secret("abc", "abc"));
        assert!(!same_secret("abc", "abd"));
        assert!(!same_secret("abc", "ab"));
        assert!(!same_secret("ab", "abc"));
        assert!(!same_secret("", "a"));
    }

    #[test]
    fn sessions_expire() {
        let sessions = Sessions::default();
        let t = Instant::now();
        let (id, csrf) = sessions.create(t);
        assert_eq!(sessions.csrf(&id, t), Some(csrf));
        assert_eq!(sessions.csrf(&id, t + SESSION_LIFETIME), None);
        sessions.end(&id);
        assert_eq!(sessions.csrf(&id, t), None);
    }

    /// Beyond [`MAX_SESSIONS`], the session used least recently goes, not the oldest
    /// login (which may be the dashboard in use).
    #[test]
    fn the_least_recently_used_session_goes_first() {
        let sessions = Sessions::default();
        let t = Instant::now();
        let ids: Vec<String> = (0..MAX_SESSIONS)
            .map(|i| sessions.create(t + Duration::from_millis(i as u64)).0)
            .collect();
        let later = t + Duration::from_secs(1);
        assert!(sessions.csrf(&ids[0], later).is_some());
        sessions.create(later);
        assert!(
            sessions.csrf(&ids[0], later).is_some(),
            "the one in use went"
        );
        assert!(
            sessions.csrf(&ids[1], later).is_none(),
            "the least used stayed"
        );
        assert!(sessions.csrf(&ids[2], later).is_some());
    }

    /// A session used at least once per idle period lives until its lifetime ends; one
    /// left unused for the idle period ends then.
    #[test]
    fn sessions_left_unused_end_after_the_idle_period() {
        let sessions = Sessions::default();
        let t = Instant::now();
        let (used, used_csrf) = sessions.create(t);
        let (left, _) = sessions.create(t);
        let step = SESSION_IDLE - Duration::from_secs(1);
        let mut now = t;
        while now + step < t + SESSION_LIFETIME {
            now += step;
            assert_eq!(
                sessions.csrf(&used, now).as_ref(),
                Some(&used_csrf),
                "{:?}",
                now - t
            );
        }
        assert_eq!(sessions.csrf(&left, t + SESSION_IDLE), None);
        assert_eq!(
            sessions.csrf(&left, t + step),
            None,
            "an ended session came back"
        );
        // The lifetime still ends a session in use.
        assert_eq!(sessions.csrf(&used, t + SESSION_LIFETIME), None);
    }
}
