//! The client's saved identity: `me.info` and `priv.key`.
//!
//! Written by this client (docs/PROTOCOL.md, rule C7):
//! - `me.info`: line 1 the user name, line 2 the client ID as 32 lowercase hex digits,
//!   line 3 the RSA private key as base64 of its PKCS#8 DER, on one line;
//! - `priv.key`: the same base64, one line.
//!
//! Both are written atomically — a temporary file in the same folder, owner-only (0600),
//! written, fsynced, then renamed over the old file, and the folder fsynced — so a killed
//! client leaves the old file or the new one, never half of one. A killed client may leave
//! the temporary file, which may hold a key; the next run that locks the folder removes it
//! (`store`).
//!
//! `me.info` is written first, then `priv.key`, and when their keys differ `me.info`'s is
//! used. `me.info` holds the client ID and its key in one file, replaced by one rename, so
//! it is a matching pair wherever a save is cut (killed, power cut):
//! - before `me.info`'s rename: the old `me.info` and the old `priv.key`;
//! - between the two renames: the new `me.info` beside the old `priv.key`, whose key is
//!   not used (with a warning);
//! - after both: the new pair.
//!
//! Preferring `priv.key` (and writing it first) paired the old ID with the new key after a
//! cut between the renames: a server that still knew the old ID sent a 1605 key that did
//! not unwrap; one that had forgotten it answered 1606, and the registration after that
//! failed with 1601, the name now belonging to the new ID, written nowhere. Preferring
//! `me.info` is also right for files another client wrote in either order. Which server
//! the identity belongs to (`me.server`, written before both) is the `store` module's.
//!
//! Read tolerantly: the key may be base64 over several lines, with PEM armour, and
//! `priv.key` may be raw DER (PKCS#8 or PKCS#1), as other clients write them. The key in
//! `me.info` is preferred; `priv.key` is the fallback when `me.info` has none on line 3 (as
//! some clients write it) or an unusable one.

use std::io::{self, Write};
use std::path::{Path, PathBuf};

use sfc_crypto::RsaKeyPair;
use sfc_proto::{ClientId, Name};
use thiserror::Error;

/// File name of the saved identity.
pub const ME_INFO: &str = "me.info";
/// File name of the saved private key.
pub const PRIV_KEY: &str = "priv.key";

/// The way out of an identity that cannot be used: never "delete", which would lose the
/// only copy of a key another server may still know.
pub const START_OVER: &str =
    "move me.info and priv.key out of the folder (keep them) to register as a new client";

/// A registered client: name, ID and RSA key pair.
#[derive(Debug)]
pub struct Identity {
    /// The registered user name.
    pub name: Name,
    /// The ID the server assigned.
    pub client_id: ClientId,
    /// The key pair whose public half the server has.
    pub keypair: RsaKeyPair,
}

/// Why the saved identity cannot be read or written.
#[derive(Debug, Error)]
pub enum IdentityError {
    /// A line of me.info is wrong.
    #[error("{} line {line}: {reason} ({START_OVER})", path.display())]
    Malformed {
        /// The file.
        path: PathBuf,
        /// 1-based line number.
        line: usize,
        /// What is wrong.
        reason: String,
    },
    /// No usable private key in priv.key or me.info.
    #[error("no usable private key: {reason} ({START_OVER})")]
    BadKey {
        /// What was tried and why it failed.
        reason: String,
    },
    /// A file exists but cannot be read.
    #[error("cannot read {}: {source}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: io::Error,
    },
    /// Saving failed.
    #[error("cannot write {}: {source}", path.display())]
    Write {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: io::Error,
    },
    /// The key could not be encoded.
    #[error("cannot encode the private key: {0}")]
    Encode(sfc_crypto::CryptoError),
    /// Another run holds the lock on the folder.
    #[error(
        "another sfc-client run is using the folder {} (it holds the lock on {lock} there): \
         wait until it has finished, or give this run another folder with --dir",
        dir.display()
    )]
    Busy {
        /// The folder (`--dir`), absolute.
        dir: PathBuf,
        /// The lock file's name.
        lock: &'static str,
    },
    /// The identity would be written without holding the folder's lock.
    #[error(
        "{reason}; me.info and priv.key are written only under that lock, so that two \
         sfc-client runs cannot mix or lose identities"
    )]
    NotLocked {
        /// Why the folder could not be locked (names the lock file).
        reason: String,
    },
}

impl IdentityError {
    /// True for problems with the files' contents or a folder in use by another run (the
    /// user can fix them), false for local failures to write.
    pub fn is_bad_input(&self) -> bool {
        matches!(
            self,
            IdentityError::Malformed { .. }
                | IdentityError::BadKey { .. }
                | IdentityError::Read { .. }
                | IdentityError::Busy { .. }
        )
    }
}

/// The identity found in `dir` and remarks worth showing (e.g. which key was used).
#[derive(Debug)]
pub struct Loaded {
    /// The identity.
    pub identity: Identity,
    /// Non-fatal remarks.
    pub warnings: Vec<String>,
}

fn read_if_exists(path: &Path) -> Result<Option<Vec<u8>>, IdentityError> {
    match std::fs::read(path) {
        Ok(bytes) => Ok(Some(bytes)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(IdentityError::Read {
            path: path.to_owned(),
            source,
        }),
    }
}

/// Reads `<dir>/me.info` (and `<dir>/priv.key`). `Ok(None)` when me.info does not exist:
/// the client has not registered yet.
pub fn load(dir: &Path) -> Result<Option<Loaded>, IdentityError> {
    let me_path = dir.join(ME_INFO);
    // me.info holds the private key: wiped from memory when done (zeroize).
    let Some(me_bytes) = read_if_exists(&me_path)?.map(zeroize::Zeroizing::new) else {
        return Ok(None);
    };
    let malformed = |line: usize, reason: String| IdentityError::Malformed {
        path: me_path.clone(),
        line,
        reason,
    };
    let text = std::str::from_utf8(&me_bytes).map_err(|e| {
        let valid = me_bytes.get(..e.valid_up_to()).unwrap_or_default();
        malformed(
            valid.iter().filter(|&&b| b == b'\n').count() + 1,
            "is not valid UTF-8 text".to_owned(),
        )
    })?;
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let mut lines = text.lines();

    let name_line = lines.next().unwrap_or("").trim();
    if name_line.is_empty() {
        return Err(malformed(1, "the user name is missing".to_owned()));
    }
    let name = Name::new(name_line).map_err(|e| malformed(1, format!("invalid user name: {e}")))?;

    let id_line = lines.next().unwrap_or("").trim();
    if id_line.is_empty() {
        return Err(malformed(2, "the client ID is missing".to_owned()));
    }
    let client_id = ClientId::from_hex(id_line).map_err(|e| malformed(2, e.to_string()))?;

    // Line 3 on: the key, possibly over several lines (rule C7).
    let key_text = zeroize::Zeroizing::new(lines.collect::<Vec<_>>().join("\n"));
    let me_key = if key_text.trim().is_empty() {
        None
    } else {
        Some(RsaKeyPair::from_base64(&key_text))
    };

    let priv_path = dir.join(PRIV_KEY);
    let priv_key = match read_if_exists(&priv_path) {
        Ok(bytes) => bytes.map(|bytes| {
            let bytes = zeroize::Zeroizing::new(bytes);
            RsaKeyPair::from_file_bytes(&bytes).map_err(|e| e.to_string())
        }),
        // Unreadable (left owned by another user, say): only a fallback for me.info's key
        // (rule C7), so no reason to refuse what me.info alone can do.
        Err(IdentityError::Read { source, .. }) => Some(Err(format!("cannot be read: {source}"))),
        Err(other) => return Err(other),
    };

    let mut warnings = Vec::new();
    let keypair = choose_key(me_key, priv_key, (&me_path, &priv_path), &mut warnings)?;
    Ok(Some(Loaded {
        identity: Identity {
            name,
            client_id,
            keypair,
        },
        warnings,
    }))
}

/// The key to use: the one on line 3 of me.info (written with its ID), else priv.key's
/// (rule C7), with a warning when they differ or one is unusable.
fn choose_key(
    me_key: Option<Result<RsaKeyPair, sfc_crypto::CryptoError>>,
    priv_key: Option<Result<RsaKeyPair, String>>,
    (me_path, priv_path): (&Path, &Path),
    warnings: &mut Vec<String>,
) -> Result<RsaKeyPair, IdentityError> {
    let malformed = |line: usize, reason: String| IdentityError::Malformed {
        path: me_path.to_owned(),
        line,
        reason,
    };
    let keypair = match (me_key, priv_key) {
        (Some(Ok(from_me)), from_priv) => {
            match &from_priv {
                Some(Ok(from_priv)) if from_priv.public_key_der() != from_me.public_key_der() => {
                    warnings.push(format!(
                        "{} and the key in {} differ; using the key in {ME_INFO}, saved with \
                         its client ID (a save cut off between the two files leaves the old \
                         {PRIV_KEY})",
                        priv_path.display(),
                        me_path.display(),
                    ))
                }
                Some(Err(priv_err)) => warnings.push(format!(
                    "{} is unusable ({priv_err}); using the key in {} line 3",
                    priv_path.display(),
                    me_path.display()
                )),
                _ => {}
            }
            from_me
        }
        (Some(Err(me_err)), Some(Ok(from_priv))) => {
            warnings.push(format!(
                "the key in {} line 3 is unusable ({me_err}); using {}",
                me_path.display(),
                priv_path.display()
            ));
            from_priv
        }
        (None, Some(Ok(from_priv))) => from_priv,
        (Some(Err(me_err)), Some(Err(priv_err))) => {
            return Err(IdentityError::BadKey {
                reason: format!(
                    "{} line 3: {me_err}; {}: {priv_err}",
                    me_path.display(),
                    priv_path.display()
                ),
            })
        }
        (None, Some(Err(priv_err))) => {
            return Err(IdentityError::BadKey {
                reason: format!(
                    "{}: {priv_err}, and {} has no key on line 3",
                    priv_path.display(),
                    me_path.display()
                ),
            })
        }
        (Some(Err(me_err)), None) => {
            return Err(malformed(
                3,
                format!("the private key is unusable ({me_err}) and there is no {PRIV_KEY}"),
            ))
        }
        (None, None) => {
            return Err(malformed(
                3,
                format!("the private key is missing and there is no {PRIV_KEY}"),
            ))
        }
    };
    Ok(keypair)
}

/// Saves the identity: `me.info` first (ID and key together), then `priv.key`, each
/// atomically and owner-only. Cut between the two, the new `me.info` is read with its own
/// key (see the module's documentation).
pub fn save(dir: &Path, identity: &Identity) -> Result<(), IdentityError> {
    let key = identity
        .keypair
        .to_base64()
        .map_err(IdentityError::Encode)?;
    let mut me = zeroize::Zeroizing::new(String::with_capacity(key.len() + 160));
    me.push_str(identity.name.as_str());
    me.push('\n');
    me.push_str(&identity.client_id.to_hex());
    me.push('\n');
    me.push_str(&key);
    me.push('\n');
    let me_path = dir.join(ME_INFO);
    write_atomic(&me_path, me.as_bytes()).map_err(|source| IdentityError::Write {
        path: me_path,
        source,
    })?;
    let priv_path = dir.join(PRIV_KEY);
    write_atomic(&priv_path, key.as_bytes()).map_err(|source| IdentityError::Write {
        path: priv_path,
        source,
    })
}

const TEMPORARY_SUFFIX: &str = ".tmp";

/// If `name` is a [`write_atomic`] temporary (`.<file>.<random>.tmp`), the file it was
/// written for: a killed run leaves one behind, holding what it was writing.
pub fn temporary_of(name: &str) -> Option<&str> {
    let (base, random) = name
        .strip_prefix('.')?
        .strip_suffix(TEMPORARY_SUFFIX)?
        .rsplit_once('.')?;
    let random_ok = !random.is_empty() && random.bytes().all(|b| b.is_ascii_alphanumeric());
    (random_ok && !base.is_empty()).then_some(base)
}

/// Replaces `path` with `contents` atomically: a temporary file in the same folder
/// (owner read/write only), written and fsynced, renamed over `path`, then the folder
/// fsynced so the rename itself is durable.
pub fn write_atomic(path: &Path, contents: &[u8]) -> io::Result<()> {
    #[cfg(test)]
    write_hook::before_write(path)?;
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_owned(),
        _ => PathBuf::from("."),
    };
    let base = path.file_name().and_then(|n| n.to_str()).unwrap_or("file");
    let prefix = format!(".{base}.");
    let mut builder = tempfile::Builder::new();
    builder.prefix(&prefix).suffix(TEMPORARY_SUFFIX);
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        builder.permissions(std::fs::Permissions::from_mode(0o600));
    }
    let mut temp = builder.tempfile_in(&dir)?;
    temp.write_all(contents)?;
    temp.as_file().sync_all()?;
    temp.persist(path).map_err(|e| e.error)?;
    sync_dir(&dir);
    Ok(())
}

/// Makes a rename or removal in `dir` durable. Best effort: not every platform can open a
/// folder.
pub(crate) fn sync_dir(dir: &Path) {
    #[cfg(test)]
    synced::record(dir);
    #[cfg(unix)]
    if let Ok(handle) = std::fs::File::open(dir) {
        let _ = handle.sync_all();
    }
    #[cfg(not(unix))]
    let _ = dir;
}

/// Tests see which folders [`sync_dir`] was asked to make durable.
#[cfg(test)]
pub(crate) mod synced {
    use std::cell::RefCell;
    use std::path::{Path, PathBuf};

    thread_local! {
        static SYNCED: RefCell<Vec<PathBuf>> = const { RefCell::new(Vec::new()) };
    }

    pub(super) fn record(dir: &Path) {
        SYNCED.with_borrow_mut(|synced| synced.push(dir.to_owned()));
    }

    /// The folders synced on this thread since the last call.
    pub(crate) fn take() -> Vec<PathBuf> {
        SYNCED.with_borrow_mut(std::mem::take)
    }
}

/// Tests stop or pause a save before one of its writes, as a killed run would be.
#[cfg(test)]
pub(crate) mod write_hook {
    use std::cell::RefCell;
    use std::io;
    use std::path::Path;

    type Hook = Box<dyn FnMut(&Path) -> io::Result<()>>;

    thread_local! {
        static HOOK: RefCell<Option<Hook>> = const { RefCell::new(None) };
    }

    /// Until the returned value is dropped, [`super::write_atomic`] on this thread calls
    /// `hook` with the file first, and fails with its error without writing anything.
    pub(crate) fn install(hook: impl FnMut(&Path) -> io::Result<()> + 'static) -> Installed {
        HOOK.with_borrow_mut(|slot| *slot = Some(Box::new(hook)));
        Installed
    }

    /// A save killed after `writes_done` of its writes, until the returned value is
    /// dropped: those go ahead, every later one on this thread fails without writing.
    pub(crate) fn kill_after(writes_done: usize) -> Installed {
        let mut writes = 0;
        install(move |path| {
            writes += 1;
            match writes > writes_done {
                true => Err(io::Error::other(format!(
                    "killed before {}",
                    path.display()
                ))),
                false => Ok(()),
            }
        })
    }

    /// Removes the hook when dropped.
    #[derive(Debug)]
    pub(crate) struct Installed;

    impl Drop for Installed {
        fn drop(&mut self) {
            HOOK.with_borrow_mut(|slot| *slot = None);
        }
    }

    pub(super) fn before_write(path: &Path) -> io::Result<()> {
        HOOK.with_borrow_mut(|slot| slot.as_mut().map_or(Ok(()), |hook| hook(path)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_support::{key_text, other_key_text};

    fn pair() -> RsaKeyPair {
        RsaKeyPair::from_base64(key_text()).unwrap()
    }

    const ID: &str = "00112233445566778899aabbccddeeff";
    const OTHER_ID: &str = "ffeeddccbbaa99887766554433221100";

    fn identity(id: &str, key: &str) -> Identity {
        Identity {
            name: Name::new("alice").unwrap(),
            client_id: ClientId::from_hex(id).unwrap(),
            keypair: RsaKeyPair::from_base64(key).unwrap(),
        }
    }

    /// The key saved with `id`'s registration.
    fn key_of(id: &str) -> Vec<u8> {
        let key = if id == ID {
            key_text()
        } else {
            other_key_text()
        };
        RsaKeyPair::from_base64(key).unwrap().public_key_der()
    }

    /// A replacement of ID's identity by OTHER_ID's, cut before each of its writes in turn
    /// (as a kill would leave the folder): the next load always pairs an ID with its key.
    #[test]
    fn a_save_cut_before_any_write_loads_an_id_with_its_own_key() {
        for writes_done in 0..=2 {
            let dir = tempfile::tempdir().unwrap();
            save(dir.path(), &identity(ID, key_text())).unwrap();
            let hook = write_hook::kill_after(writes_done);
            let saved = save(dir.path(), &identity(OTHER_ID, other_key_text()));
            drop(hook);
            assert_eq!(saved.is_ok(), writes_done == 2, "{saved:?}");
            let loaded = load(dir.path()).unwrap().unwrap().identity;
            let id = loaded.client_id.to_hex();
            assert!(
                loaded.keypair.public_key_der() == key_of(&id),
                "cut after {writes_done} writes: client {id} loaded with another key"
            );
        }
    }

    /// Whichever of the two files a cut save left new, me.info's key is used: it is the
    /// one saved with its ID.
    #[test]
    fn the_key_in_me_info_wins_when_priv_key_differs() {
        let layouts = [
            // A save (in the old order) cut after priv.key: the old me.info, a new key.
            (ID, key_text(), other_key_text()),
            // A save cut after me.info: the new me.info, the old key.
            (OTHER_ID, other_key_text(), key_text()),
        ];
        for (id, me_key, priv_key) in layouts {
            let dir = tempfile::tempdir().unwrap();
            std::fs::write(dir.path().join(ME_INFO), format!("alice\n{id}\n{me_key}\n")).unwrap();
            std::fs::write(dir.path().join(PRIV_KEY), priv_key).unwrap();
            let loaded = load(dir.path()).unwrap().unwrap();
            assert_eq!(loaded.identity.client_id.to_hex(), id);
            assert!(
                loaded.identity.keypair.public_key_der() == key_of(id),
                "client {id} loaded with priv.key's key"
            );
            assert_eq!(loaded.warnings.len(), 1, "{:?}", loaded.warnings);
            assert!(
                loaded.warnings[0].contains("using the key in me.info"),
                "{:?}",
                loaded.warnings
            );
        }
    }

    #[test]
    fn an_unusable_key_in_me_info_falls_back_to_priv_key_with_a_warning() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(ME_INFO), format!("alice\n{ID}\nAAAA\n")).unwrap();
        std::fs::write(dir.path().join(PRIV_KEY), key_text()).unwrap();
        let loaded = load(dir.path()).unwrap().unwrap();
        assert_eq!(loaded.identity.keypair.public_key_der(), key_of(ID));
        assert_eq!(loaded.warnings.len(), 1, "{:?}", loaded.warnings);
        assert!(
            loaded.warnings[0].contains("line 3 is unusable"),
            "{:?}",
            loaded.warnings
        );
    }

    /// priv.key is only the fallback (rule C7): one that cannot be read (here a folder;
    /// another user's file alike) leaves me.info's key in use, with a warning.
    #[test]
    fn an_unreadable_priv_key_leaves_me_info_s_key_in_use() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join(ME_INFO),
            format!("alice\n{ID}\n{}\n", key_text()),
        )
        .unwrap();
        std::fs::create_dir(dir.path().join(PRIV_KEY)).unwrap();
        let loaded = load(dir.path()).unwrap().unwrap();
        assert_eq!(loaded.identity.keypair.public_key_der(), key_of(ID));
        assert_eq!(loaded.warnings.len(), 1, "{:?}", loaded.warnings);
        assert!(
            loaded.warnings[0].contains("cannot be read"),
            "{:?}",
            loaded.warnings
        );
        // Without a key in me.info, the unreadable priv.key is the error.
        std::fs::write(dir.path().join(ME_INFO), format!("alice\n{ID}\n")).unwrap();
        let Err(error) = load(dir.path()) else {
            panic!("loaded without a usable key")
        };
        let error = error.to_string();
        assert!(error.contains("cannot be read"), "{error}");
    }

    #[test]
    fn save_then_load_round_trips_with_owner_only_files() {
        let dir = tempfile::tempdir().unwrap();
        let identity = Identity {
            name: Name::new("alice").unwrap(),
            client_id: ClientId::from_hex(ID).unwrap(),
            keypair: pair(),
        };
        save(dir.path(), &identity).unwrap();
        let me = std::fs::read_to_string(dir.path().join(ME_INFO)).unwrap();
        let lines: Vec<&str> = me.lines().collect();
        assert_eq!(lines, vec!["alice", ID, key_text()]);
        let priv_text = std::fs::read_to_string(dir.path().join(PRIV_KEY)).unwrap();
        assert_eq!(priv_text, key_text());
        #[cfg(unix)]
        for file in [ME_INFO, PRIV_KEY] {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(dir.path().join(file))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600, "{file}");
        }
        // No temporary files left behind.
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names.len(), 2, "{names:?}");

        let loaded = load(dir.path()).unwrap().unwrap();
        assert!(loaded.warnings.is_empty());
        assert_eq!(loaded.identity.name, identity.name);
        assert_eq!(loaded.identity.client_id, identity.client_id);
        assert_eq!(
            loaded.identity.keypair.public_key_der(),
            identity.keypair.public_key_der()
        );
    }

    #[test]
    fn atomic_write_replaces_a_world_readable_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x");
        std::fs::write(&path, b"old").unwrap();
        write_atomic(&path, b"new").unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"new");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
    }

    #[test]
    fn missing_me_info_means_not_registered() {
        let dir = tempfile::tempdir().unwrap();
        // A priv.key alone (left by another client, or by an older version of this one
        // killed between its two writes) is not an identity.
        std::fs::write(dir.path().join(PRIV_KEY), key_text()).unwrap();
        assert!(load(dir.path()).unwrap().is_none());
    }

    #[test]
    fn tolerant_forms_are_read() {
        let der = pair().to_pkcs8_der().unwrap();
        // base64 over several lines with PEM armour and CRLF, in me.info, no priv.key.
        let wrapped: Vec<String> = key_text()
            .as_bytes()
            .chunks(64)
            .map(|c| String::from_utf8(c.to_vec()).unwrap())
            .collect();
        let me = format!(
            "alice\r\n{}\r\n-----BEGIN PRIVATE KEY-----\r\n{}\r\n-----END PRIVATE KEY-----\r\n",
            ID.to_uppercase(),
            wrapped.join("\r\n")
        );
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(ME_INFO), &me).unwrap();
        let loaded = load(dir.path()).unwrap().unwrap();
        assert_eq!(loaded.identity.client_id.to_hex(), ID);
        assert_eq!(
            loaded.identity.keypair.public_key_der(),
            pair().public_key_der()
        );

        // priv.key as raw DER, me.info with only two lines.
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(ME_INFO), format!("alice\n{ID}\n")).unwrap();
        std::fs::write(dir.path().join(PRIV_KEY), der.as_slice()).unwrap();
        let loaded = load(dir.path()).unwrap().unwrap();
        assert_eq!(
            loaded.identity.keypair.public_key_der(),
            pair().public_key_der()
        );
        assert!(loaded.warnings.is_empty());

        // priv.key as multi-line base64.
        std::fs::write(dir.path().join(PRIV_KEY), wrapped.join("\n")).unwrap();
        assert!(load(dir.path()).unwrap().is_some());

        // A broken priv.key with a good key in me.info: falls back, with a warning.
        std::fs::write(
            dir.path().join(ME_INFO),
            format!("alice\n{ID}\n{}\n", key_text()),
        )
        .unwrap();
        std::fs::write(dir.path().join(PRIV_KEY), b"garbage!").unwrap();
        let loaded = load(dir.path()).unwrap().unwrap();
        assert_eq!(loaded.warnings.len(), 1, "{:?}", loaded.warnings);
    }

    #[test]
    fn malformed_me_info_names_the_line() {
        let cases: Vec<(String, usize)> = vec![
            (String::new(), 1),
            ("\n".into(), 1),
            ("alice\n".into(), 2),
            ("alice\nnot-hex\n".into(), 2),
            (format!("alice\n{ID}\n"), 3),
            (format!("alice\n{ID}\n!!!not base64!!!\n"), 3),
            (format!("bad\u{7}name\n{ID}\n{}\n", key_text()), 1),
        ];
        for (content, line) in cases {
            let dir = tempfile::tempdir().unwrap();
            std::fs::write(dir.path().join(ME_INFO), &content).unwrap();
            match load(dir.path()) {
                Err(e @ IdentityError::Malformed { .. }) => {
                    let text = e.to_string();
                    assert!(
                        text.contains(&format!("line {line}")),
                        "{content:?}: {text}"
                    );
                    assert!(text.contains("(keep them)"), "{text}");
                    assert!(e.is_bad_input());
                }
                other => panic!("{content:?}: expected Malformed, got {other:?}"),
            }
        }
        // Both keys broken.
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(ME_INFO), format!("alice\n{ID}\nAAAA\n")).unwrap();
        std::fs::write(dir.path().join(PRIV_KEY), b"AAAA").unwrap();
        assert!(matches!(
            load(dir.path()),
            Err(IdentityError::BadKey { .. })
        ));
    }
}
