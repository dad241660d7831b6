//! `sfc-server tls-init`: a private key and a self-signed certificate for `--tls-cert` /
//! `--tls-key`, written owner-only into the data folder, and the certificate's SHA-256
//! fingerprint for clients to pin (`sfc-client --tls-fingerprint`).
//!
//! The certificate names `localhost`, `127.0.0.1` and whatever names or IP addresses the
//! operator adds. Clients that pin the fingerprint need no certificate authority; one
//! that checks names against a CA should be given a CA-issued certificate instead.

use crate::storage::perms;
use anyhow::Context;
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};

/// File name of the certificate `tls-init` writes in the data folder.
pub const CERT_FILE: &str = "tls-cert.pem";
/// File name of the private key `tls-init` writes in the data folder.
pub const KEY_FILE: &str = "tls-key.pem";

/// What `tls-init` made.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsInit {
    /// The certificate (PEM).
    pub cert: PathBuf,
    /// The private key (PEM, PKCS#8).
    pub key: PathBuf,
    /// SHA-256 over the certificate's DER, lowercase hex without separators.
    pub fingerprint: String,
}

impl TlsInit {
    /// The fingerprint as colon-separated lowercase hex pairs.
    pub fn fingerprint_with_colons(&self) -> String {
        let pairs: Vec<&str> = (0..self.fingerprint.len())
            .step_by(2)
            .filter_map(|at| self.fingerprint.get(at..at + 2))
            .collect();
        pairs.join(":")
    }

    /// What the command prints: the files, how to serve with them, the fingerprint.
    pub fn report(&self) -> String {
        format!(
            "wrote {cert} (certificate) and {key} (private key, owner-only)\n\
             serve TLS with:\n  sfc-server --tls-cert {cert} --tls-key {key}\n\
             certificate SHA-256 fingerprint, for clients (--tls-fingerprint takes either form):\n  \
             {plain}\n  {colons}\n",
            cert = self.cert.display(),
            key = self.key.display(),
            plain = self.fingerprint,
            colons = self.fingerprint_with_colons(),
        )
    }
}

/// Lowercase hex of SHA-256 over `der`.
pub fn fingerprint(der: &[u8]) -> String {
    Sha256::digest(der)
        .iter()
        .map(|byte| format!("{byte:02x}"))
        .collect()
}

/// Makes a key and a self-signed certificate for `localhost`, `127.0.0.1` and `names`
/// (host names or IP addresses) in `data_dir` (created owner-only if missing). Existing
/// files are replaced only with `force`.
pub fn tls_init(data_dir: &Path, names: &[String], force: bool) -> anyhow::Result<TlsInit> {
    perms::create_private_dir_all(data_dir)
        .with_context(|| format!("cannot create the data folder {}", data_dir.display()))?;
    let cert_path = data_dir.join(CERT_FILE);
    let key_path = data_dir.join(KEY_FILE);
    for path in [&cert_path, &key_path] {
        if path.exists() && !force {
            anyhow::bail!(
                "{} exists; keep it, or run tls-init again with --force to replace it \
                 (clients that pinned the old fingerprint will refuse the new one)",
                path.display()
            );
        }
    }
    let mut subject_names = vec!["localhost".to_string(), "127.0.0.1".to_string()];
    for name in names {
        let name = name.trim();
        if name.is_empty() {
            anyhow::bail!("--name takes a host name or an IP address, not an empty text");
        }
        if !subject_names.iter().any(|n| n == name) {
            subject_names.push(name.to_string());
        }
    }
    let key = rcgen::KeyPair::generate().context("cannot generate a private key")?;
    let mut params = rcgen::CertificateParams::new(subject_names)
        .context("a --name is neither a valid host name nor an IP address")?;
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "sfc-server");
    // Valid from yesterday (clocks differ) for ten years.
    let now = time::OffsetDateTime::now_utc();
    params.not_before = now - time::Duration::days(1);
    params.not_after = now + time::Duration::days(3650);
    let cert = params
        .self_signed(&key)
        .context("cannot make the certificate")?;
    // Only now that both are made are the old ones replaced (a failure before leaves
    // them as they were): each written whole under a temporary name, then renamed.
    let key_aside = write_aside(&key_path, key.serialize_pem().as_bytes())?;
    let cert_aside = write_aside(&cert_path, cert.pem().as_bytes())?;
    for (aside, path) in [(&key_aside, &key_path), (&cert_aside, &cert_path)] {
        std::fs::rename(aside, path).with_context(|| format!("cannot write {}", path.display()))?;
    }
    // Best effort: the renames are durable once the folder is.
    let _ = crate::storage::fs::sync_dir(data_dir);
    Ok(TlsInit {
        cert: cert_path,
        key: key_path,
        fingerprint: fingerprint(cert.der()),
    })
}

/// Writes `bytes` to a new owner-only file beside `path` (fsynced); its path.
fn write_aside(path: &Path, bytes: &[u8]) -> anyhow::Result<PathBuf> {
    let name = path
        .file_name()
        .map_or_else(Default::default, |n| n.to_string_lossy());
    let aside = path.with_file_name(format!(".{name}.{}.tmp", uuid::Uuid::new_v4().simple()));
    if let Err(error) = perms::write_private_file(&aside, bytes) {
        let _ = std::fs::remove_file(&aside);
        return Err(error).with_context(|| format!("cannot write {}", aside.display()));
    }
    Ok(aside)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fingerprints_are_lowercase_hex_with_and_without_colons() {
        let made = TlsInit {
            cert: PathBuf::new(),
            key: PathBuf::new(),
            fingerprint: fingerprint(b"abc"),
        };
        assert_eq!(
            made.fingerprint,
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        assert!(made.fingerprint_with_colons().starts_with("ba:78:16:bf:"));
        assert_eq!(made.fingerprint_with_colons().len(), 64 + 31);
    }

    #[test]
    fn files_are_owner_only_and_not_replaced_without_force() {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        let first = tls_init(&data, &["sfc.example".into(), "10.1.2.3".into()], false).unwrap();
        #[cfg(unix)]
        for path in [&first.cert, &first.key] {
            assert_eq!(perms::mode_of(path), Some(0o600), "{}", path.display());
        }
        let error = tls_init(&data, &[], false).unwrap_err();
        assert!(format!("{error:#}").contains("--force"), "{error:#}");
        let second = tls_init(&data, &[], true).unwrap();
        assert_ne!(first.fingerprint, second.fingerprint);
        #[cfg(unix)]
        for path in [&second.cert, &second.key] {
            assert_eq!(perms::mode_of(path), Some(0o600), "{}", path.display());
        }
    }

    #[test]
    fn a_forced_run_that_fails_keeps_the_files_it_would_replace() {
        let dir = tempfile::tempdir().unwrap();
        let made = tls_init(dir.path(), &[], false).unwrap();
        let before = [&made.cert, &made.key].map(|path| std::fs::read(path).unwrap());
        for bad in ["", "bücher.example"] {
            assert!(
                tls_init(dir.path(), &[bad.into()], true).is_err(),
                "{bad:?}"
            );
        }
        let after = [&made.cert, &made.key].map(|path| std::fs::read(path).unwrap());
        assert!(before == after, "the key or the certificate changed");
        let mut names: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|entry| entry.unwrap().file_name().into_string().unwrap())
            .collect();
        names.sort();
        assert_eq!(names, [CERT_FILE, KEY_FILE], "nothing left aside");
    }
}
