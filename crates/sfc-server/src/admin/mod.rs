//! Admin views: `sfc-server clients` and `sfc-server files` print what the database
//! holds, as a table or as JSON (`--json`). They open `defensive.db` beside a running
//! server safely (WAL: readers do not block the writer), or the `--database`
//! PostgreSQL, and never create or migrate it.

use crate::config::{Database, Store};
use crate::storage::setup::{open_blobs, open_existing_meta};
use serde::Serialize;
use std::collections::HashMap;
use std::path::Path;
use std::time::Duration;

/// One registered client.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct ClientView {
    /// Registered user name.
    pub name: String,
    /// Client ID, 32 hex digits.
    pub id: String,
    /// Time of the latest request (UTC), if any.
    pub last_seen: Option<String>,
    /// Size of the RSA key on record in bits (None: no key; 0: unparseable).
    pub public_key_bits: Option<usize>,
    /// An AES key has been issued.
    pub has_aes_key: bool,
    /// Number of stored files.
    pub files: usize,
}

/// One stored file.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct FileView {
    /// Owner's client ID, 32 hex digits.
    pub client_id: String,
    /// Owner's name (None if the client row is missing).
    pub client_name: Option<String>,
    /// The file name as the client sent it.
    pub file_name: String,
    /// Path relative to the data folder.
    pub path: String,
    /// Size on disk in bytes (None: the file is missing).
    pub size: Option<u64>,
    /// The client confirmed the checksum (900).
    pub verified: bool,
}

/// The clients in the database of `data_dir`, by name.
pub fn clients(data_dir: &Path) -> anyhow::Result<Vec<ClientView>> {
    clients_in(data_dir, &Database::Sqlite)
}

/// The clients in `database` (SQLite: the one in `data_dir`), by name.
pub fn clients_in(data_dir: &Path, database: &Database) -> anyhow::Result<Vec<ClientView>> {
    let store = open_existing_meta(data_dir, database)?;
    let files = store.files()?;
    let mut counts: HashMap<_, usize> = HashMap::new();
    for file in &files {
        *counts.entry(file.client_id).or_default() += 1;
    }
    let views = store
        .clients()?
        .into_iter()
        .map(|c| ClientView {
            public_key_bits: c
                .public_key
                .as_ref()
                .map(|der| sfc_crypto::PublicKey::from_spki_der(der).map_or(0, |key| key.bits())),
            has_aes_key: c.aes_key.is_some(),
            files: counts.get(&c.id).copied().unwrap_or(0),
            name: c.name,
            id: c.id.to_hex(),
            last_seen: c.last_seen,
        })
        .collect();
    store.close()?;
    Ok(views)
}

/// The files in the database of `data_dir`, with their size on disk.
pub fn files(data_dir: &Path) -> anyhow::Result<Vec<FileView>> {
    files_in(data_dir, &Database::Sqlite)
}

/// The files in `database` (SQLite: the one in `data_dir`), with their size in the
/// data folder.
pub fn files_in(data_dir: &Path, database: &Database) -> anyhow::Result<Vec<FileView>> {
    files_in_store(data_dir, database, &Store::DataDir)
}

/// The files in `database`, with their size in `store` (`--store`).
pub fn files_in_store(
    data_dir: &Path,
    database: &Database,
    files_store: &Store,
) -> anyhow::Result<Vec<FileView>> {
    let store = open_existing_meta(data_dir, database)?;
    let names: HashMap<_, _> = store
        .clients()?
        .into_iter()
        .map(|c| (c.id, c.name))
        .collect();
    // Recovery never runs here, so the grace period does not matter.
    let blobs = open_blobs(data_dir, files_store, Duration::MAX)?;
    let mut views: Vec<FileView> = store
        .files()?
        .into_iter()
        .map(|f| FileView {
            client_id: f.client_id.to_hex(),
            client_name: names.get(&f.client_id).cloned(),
            size: blobs.size(&f.path).ok(),
            file_name: f.file_name,
            path: f.path,
            verified: f.verified,
        })
        .collect();
    views.sort_by(|a, b| (&a.client_name, &a.file_name).cmp(&(&b.client_name, &b.file_name)));
    store.close()?;
    Ok(views)
}

fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for row in rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let line = |cells: Vec<String>| -> String {
        let mut out = String::new();
        for (i, (cell, width)) in cells.iter().zip(&widths).enumerate() {
            if i + 1 == cells.len() {
                out.push_str(cell);
            } else {
                out.push_str(&format!("{cell:<width$}  "));
            }
        }
        out.trim_end().to_string()
    };
    let mut out = line(header.iter().map(|h| h.to_string()).collect());
    out.push('\n');
    for row in rows {
        out.push_str(&line(row.clone()));
        out.push('\n');
    }
    out
}

/// Renders the clients as a table or JSON.
pub fn render_clients(views: &[ClientView], json: bool) -> anyhow::Result<String> {
    if json {
        return Ok(serde_json::to_string_pretty(views)? + "\n");
    }
    let rows: Vec<Vec<String>> = views
        .iter()
        .map(|c| {
            vec![
                c.name.clone(),
                c.id.clone(),
                c.last_seen.clone().unwrap_or_else(|| "-".into()),
                match c.public_key_bits {
                    None => "-".into(),
                    Some(0) => "invalid".into(),
                    Some(bits) => format!("RSA-{bits}"),
                },
                if c.has_aes_key { "yes" } else { "no" }.into(),
                c.files.to_string(),
            ]
        })
        .collect();
    let mut out = table(
        &[
            "NAME",
            "ID",
            "LAST SEEN (UTC)",
            "PUBLIC KEY",
            "AES KEY",
            "FILES",
        ],
        &rows,
    );
    out.push_str(&format!("{} client(s)\n", views.len()));
    Ok(out)
}

/// Renders the files as a table or JSON.
pub fn render_files(views: &[FileView], json: bool) -> anyhow::Result<String> {
    if json {
        return Ok(serde_json::to_string_pretty(views)? + "\n");
    }
    let rows: Vec<Vec<String>> = views
        .iter()
        .map(|f| {
            vec![
                f.client_name.clone().unwrap_or_else(|| "?".into()),
                f.client_id.get(..8).unwrap_or_default().to_string(),
                f.file_name.clone(),
                f.size.map_or_else(|| "missing".into(), |s| s.to_string()),
                if f.verified { "yes" } else { "no" }.into(),
                f.path.clone(),
            ]
        })
        .collect();
    let mut out = table(&["CLIENT", "ID", "FILE", "SIZE", "VERIFIED", "PATH"], &rows);
    out.push_str(&format!("{} file(s)\n", views.len()));
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::DB_FILE;
    use crate::storage::sqlite::SqliteStore;
    use crate::storage::{FileRecord, MetaStore, Timestamp};
    use sfc_proto::ClientId;

    #[test]
    fn views_show_the_database() {
        let dir = tempfile::tempdir().unwrap();
        assert!(clients(dir.path()).is_err());
        let store = SqliteStore::open(&dir.path().join(DB_FILE)).unwrap();
        let id = ClientId([0x11; 16]);
        store.insert_client(&id, "alice", Timestamp(0)).unwrap();
        store
            .set_keys(&id, Some(&[0; 10]), &[1; 32], Timestamp(1))
            .unwrap();
        store
            .insert_client(&ClientId([0x22; 16]), "bob", Timestamp(0))
            .unwrap();
        store
            .put_file(
                &FileRecord {
                    client_id: id,
                    file_name: "a b.txt".into(),
                    path: format!("files/{}/a%20b.txt", id.to_hex()),
                    verified: true,
                },
                Timestamp(2),
            )
            .unwrap();
        let client_views = clients(dir.path()).unwrap();
        assert_eq!(client_views.len(), 2);
        assert_eq!(client_views[0].name, "alice");
        assert_eq!(client_views[0].files, 1);
        assert_eq!(client_views[0].public_key_bits, Some(0));
        assert_eq!(client_views[1].public_key_bits, None);
        let text = render_clients(&client_views, false).unwrap();
        assert!(text.starts_with("NAME"), "{text}");
        assert!(text.contains(&id.to_hex()), "{text}");
        assert!(text.contains("2 client(s)"));
        let json: serde_json::Value =
            serde_json::from_str(&render_clients(&client_views, true).unwrap()).unwrap();
        assert_eq!(json[1]["name"], "bob");

        let file_views = files(dir.path()).unwrap();
        assert_eq!(file_views[0].size, None);
        std::fs::create_dir_all(dir.path().join("files").join(id.to_hex())).unwrap();
        std::fs::write(dir.path().join(&file_views[0].path), b"12345").unwrap();
        let file_views = files(dir.path()).unwrap();
        assert_eq!(file_views[0].size, Some(5));
        let text = render_files(&file_views, false).unwrap();
        assert!(text.contains("a b.txt") && text.contains("yes"), "{text}");
        let json: serde_json::Value =
            serde_json::from_str(&render_files(&file_views, true).unwrap()).unwrap();
        assert_eq!(json[0]["verified"], true);
        assert_eq!(json[0]["size"], 5);
    }
}
