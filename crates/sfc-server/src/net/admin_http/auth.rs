//! Who may use the admin listener: one token (a file, created owner-only with a random
//! token when missing), given as `Authorization: Bearer` (the API, `/metrics`) or
//! exchanged at the login form for a session cookie (`HttpOnly`, `SameSite=Strict`,
//! `Secure` under TLS) that carries a CSRF token every action must echo. Failed logins
//! are counted per address and refused for a while beyond [`LOGIN_FAILURES_PER_MINUTE`].

use anyhow::Context;
use std::collections::HashMap;
use std::io::Write;
use std::net::IpAddr;
use std::path::Path;
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};
use zeroize::Zeroizing;

/// The session cookie's name.
pub const COOKIE: &str = "sfc_admin";
/// A session ends this long after login.
pub const SESSION_LIFETIME: Duration = Duration::from_secs(12 * 3600);
/// Sessions kept at most (the oldest goes first).
pub const MAX_SESSIONS: usize = 256;
/// Failed logins (or wrong bearer tokens) one address may make per minute; beyond it
/// every attempt gets 429 until the minute is over.
pub const LOGIN_FAILURES_PER_MINUTE: u32 = 5;
/// Shortest token accepted from a token file.
pub const MIN_TOKEN_LEN: usize = 16;

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

/// Reads the token from `path`, or creates the file (owner-only) with a random token
/// and says where.
pub fn load_or_create_token(path: &Path) -> anyhow::Result<Zeroizing<String>> {
    match std::fs::read_to_string(path) {
        Ok(text) => {
            let text = Zeroizing::new(text);
            let token = Zeroizing::new(text.trim().to_owned());
            if token.len() < MIN_TOKEN_LEN {
                anyhow::bail!(
                    "the admin token file {} holds fewer than {MIN_TOKEN_LEN} characters",
                    path.display()
                );
            }
            keep_private(path)?;
            Ok(token)
        }
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
            let token = Zeroizing::new(random_token());
            let mut options = std::fs::OpenOptions::new();
            options.write(true).create_new(true);
            #[cfg(unix)]
            std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
            let mut file = options.open(path).with_context(|| {
                format!("cannot create the admin token file {}", path.display())
            })?;
            file.write_all(format!("{}\n", token.as_str()).as_bytes())?;
            file.sync_all()?;
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

/// Whoever can read the token file is an administrator (every stored file, every
/// client): a file others may read is made owner-only, as the database is at start-up;
/// one the server cannot make so (another user's file) is refused.
fn keep_private(path: &Path) -> anyhow::Result<()> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let meta = std::fs::metadata(path)
            .with_context(|| format!("cannot read the admin token file {}", path.display()))?;
        let mode = meta.permissions().mode();
        if mode & 0o077 != 0 {
            let owner_only = std::fs::Permissions::from_mode(mode & 0o700);
            std::fs::set_permissions(path, owner_only).with_context(|| {
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
}

/// The logged-in sessions and the failed-login counts.
#[derive(Debug, Default)]
pub struct Sessions {
    sessions: Mutex<HashMap<String, Session>>,
    failures: Mutex<HashMap<IpAddr, (Instant, u32)>>,
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
        sessions.retain(|_, s| s.expires > now);
        if sessions.len() >= MAX_SESSIONS {
            let oldest = sessions
                .iter()
                .min_by_key(|(_, s)| s.expires)
                .map(|(k, _)| k.clone());
            if let Some(oldest) = oldest {
                sessions.remove(&oldest);
            }
        }
        sessions.insert(
            id.clone(),
            Session {
                csrf: csrf.clone(),
                expires: now + SESSION_LIFETIME,
            },
        );
        (id, csrf)
    }

    /// The CSRF token of a live session.
    pub fn csrf(&self, id: &str, now: Instant) -> Option<String> {
        let sessions = lock(&self.sessions);
        sessions
            .get(id)
            .filter(|s| s.expires > now)
            .map(|s| s.csrf.clone())
    }

    /// Ends a session.
    pub fn end(&self, id: &str) {
        lock(&self.sessions).remove(id);
    }

    /// True when `ip` has used up its failed logins for this minute.
    pub fn blocked(&self, ip: IpAddr, now: Instant) -> bool {
        let failures = lock(&self.failures);
        failures.get(&ip).is_some_and(|(since, count)| {
            now.saturating_duration_since(*since) < Duration::from_secs(60)
                && *count >= LOGIN_FAILURES_PER_MINUTE
        })
    }

    /// Counts a failed login from `ip`.
    pub fn failed(&self, ip: IpAddr, now: Instant) {
        let mut failures = lock(&self.failures);
        if failures.len() > 4096 {
            failures.retain(|_, (since, _)| {
                now.saturating_duration_since(*since) < Duration::from_secs(60)
            });
        }
        let entry = failures.entry(ip).or_insert((now, 0));
        if now.saturating_duration_since(entry.0) >= Duration::from_secs(60) {
            *entry = (now, 0);
        }
        entry.1 = entry.1.saturating_add(1);
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

    /// A token file made with the default umask (0644): whoever reads it administers
    /// the server. It is made owner-only before it is used.
    #[test]
    #[cfg(unix)]
    fn a_token_file_others_can_read_is_made_owner_only() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("admin.token");
        std::fs::write(&path, format!("{}\n", "t".repeat(40))).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        assert_eq!(*load_or_create_token(&path).unwrap(), "t".repeat(40));
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
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
    fn sessions_expire_and_failures_block_for_a_minute() {
        let sessions = Sessions::default();
        let t = Instant::now();
        let (id, csrf) = sessions.create(t);
        assert_eq!(sessions.csrf(&id, t), Some(csrf));
        assert_eq!(sessions.csrf(&id, t + SESSION_LIFETIME), None);
        sessions.end(&id);
        assert_eq!(sessions.csrf(&id, t), None);
        let ip: IpAddr = "192.0.2.1".parse().unwrap();
        for _ in 0..LOGIN_FAILURES_PER_MINUTE {
            assert!(!sessions.blocked(ip, t));
            sessions.failed(ip, t);
        }
        assert!(sessions.blocked(ip, t));
        assert!(!sessions.blocked("192.0.2.2".parse().unwrap(), t));
        assert!(!sessions.blocked(ip, t + Duration::from_secs(61)));
    }
}
