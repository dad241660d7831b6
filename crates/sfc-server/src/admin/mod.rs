//! Admin views: `sfc-server clients` and `sfc-server files` print what the database
//! holds, as a table or as JSON (`--json`). They open `defensive.db` beside a running
//! server safely (WAL: readers do not block the writer), or the `--database`
//! PostgreSQL, and never create or migrate it.
//!
//! The same types are the admin HTTP API's (`/api/v1/…`, served by `net/admin_http`),
//! so the command line's `--json` and the API cannot drift apart.

/// The admin HTTP listener's constants (`--admin-listen`): its API routes and OpenAPI
/// document, page sizes, the session cookie, the failed-login limit and the connections
/// one address may hold open.
pub use crate::net::admin_http::{
    API_ROUTES, BLOCKED_VERDICT_DELAY, COOKIE, DEFAULT_PAGE, LOGIN_FAILURES_PER_MINUTE,
    MAX_CONNECTIONS_PER_ADDRESS, MAX_PAGE, OPENAPI,
};

use crate::config::{Database, Store};
use crate::storage::setup::{open_existing_blobs, open_existing_meta};
use crate::storage::{BlobStore, FileRecord, MetaStore};
use serde::Serialize;
use sfc_proto::ClientId;
use std::collections::HashMap;
use std::path::Path;

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
    /// SHA-256 of the public key as the client sent it (DER), 64 hex digits; None: no key.
    pub key_fingerprint: Option<String>,
    /// An AES key has been issued.
    pub has_aes_key: bool,
    /// Number of stored files.
    pub files: usize,
    /// Bytes of its stored files (those found in the store).
    pub bytes: u64,
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

/// An upload in progress, as the socket layer saw it.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct UploadView {
    /// The client's ID, 32 hex digits.
    pub client_id: String,
    /// The client's name, when known.
    pub client_name: Option<String>,
    /// Address of the connection that sent the latest packet.
    pub peer: String,
    /// The file's label.
    pub file_name: String,
    /// Packets received whole.
    pub packets_received: u16,
    /// Packets the file is sent in.
    pub total_packets: u16,
    /// Encrypted content bytes received.
    pub bytes_received: u64,
    /// The file's plaintext size.
    pub file_size: u32,
    /// Seconds since the first packet.
    pub seconds: f64,
    /// Average rate since the first packet.
    pub bytes_per_second: u64,
}

/// A failure the operator may want to see (newest first in [`LiveView`]).
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct FailureView {
    /// When (UTC).
    pub at: String,
    /// What kind: "828 → 1607", "checksum mismatch (901, retrying)", "rate limit", …
    pub kind: String,
    /// The remote address, when there was one.
    pub peer: Option<String>,
    /// The client, when known.
    pub client_id: Option<String>,
    /// Why.
    pub detail: String,
}

/// The server's live state.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct LiveView {
    /// Protocol connections open now.
    pub connections_open: u64,
    /// Protocol connections accepted since start.
    pub connections_accepted: u64,
    /// Uploads in progress.
    pub uploads: Vec<UploadView>,
    /// The last failures, newest first.
    pub failures: Vec<FailureView>,
}

/// Totals for the dashboard and `/api/v1/stats`.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct StatsView {
    /// Registered clients.
    pub clients: usize,
    /// Stored files.
    pub files: usize,
    /// Bytes of the stored files.
    pub bytes_stored: u64,
    /// Protocol connections open now.
    pub connections_open: u64,
    /// Uploads in progress.
    pub uploads_in_progress: usize,
    /// The server's version.
    pub version: String,
}

/// SHA-256 of a DER public key, lowercase hex.
pub fn key_fingerprint(der: &[u8]) -> String {
    use sha2::Digest;
    sha2::Sha256::digest(der)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// The clients in `meta`, by name, with the sizes of their files in `blobs`.
pub fn client_views(
    meta: &dyn MetaStore,
    blobs: &dyn BlobStore,
) -> anyhow::Result<Vec<ClientView>> {
    client_views_reusing(meta, blobs, &KnownSizes::default()).map(|(views, _)| views)
}

/// Sizes read by an earlier pass over the files, by path, for a store whose paths are
/// immutable ([`BlobStore::paths_are_immutable`]): a later pass asks the store only for
/// the files stored since.
#[derive(Debug, Default)]
pub struct KnownSizes(HashMap<String, u64>);

/// [`client_views`], asking the store only for sizes `known` does not hold when its
/// paths are immutable; with the sizes of exactly the files of this pass, for the next.
pub fn client_views_reusing(
    meta: &dyn MetaStore,
    blobs: &dyn BlobStore,
    known: &KnownSizes,
) -> anyhow::Result<(Vec<ClientView>, KnownSizes)> {
    let reuse = blobs.paths_are_immutable();
    let mut sizes = HashMap::new();
    let mut counts: HashMap<_, (usize, u64)> = HashMap::new();
    for file in meta.files()? {
        let entry = counts.entry(file.client_id).or_default();
        entry.0 += 1;
        if let Some(&size) = known.0.get(&file.path).filter(|_| reuse) {
            entry.1 += size;
            sizes.insert(file.path, size);
            continue;
        }
        let sized = current_size(meta, blobs, &file.client_id, &file.file_name, &file.path);
        if let Some((size, row)) = sized {
            entry.1 += size;
            if reuse {
                sizes.insert(row.map_or(file.path, |row| row.path), size);
            }
        }
    }
    let views = meta
        .clients()?
        .iter()
        .map(|c| view_of(c, counts.get(&c.id).copied().unwrap_or((0, 0))))
        .collect();
    Ok((views, KnownSizes(sizes)))
}

/// One client of `meta` (`None`: no such client), with the sizes of its files in `blobs`.
pub fn client_view(
    meta: &dyn MetaStore,
    blobs: &dyn BlobStore,
    id: &ClientId,
) -> anyhow::Result<Option<ClientView>> {
    let Some(client) = meta.client(id)? else {
        return Ok(None);
    };
    let mut files = unsized_file_views(meta, Some(id))?;
    fill_sizes(meta, blobs, &mut files);
    let bytes = files.iter().filter_map(|f| f.size).sum();
    Ok(Some(view_of(&client, (files.len(), bytes))))
}

fn view_of(c: &crate::storage::ClientRecord, (files, bytes): (usize, u64)) -> ClientView {
    ClientView {
        public_key_bits: c
            .public_key
            .as_ref()
            .map(|der| sfc_crypto::PublicKey::from_spki_der(der).map_or(0, |key| key.bits())),
        key_fingerprint: c.public_key.as_deref().map(key_fingerprint),
        has_aes_key: c.aes_key.is_some(),
        files,
        bytes,
        name: c.name.clone(),
        id: c.id.to_hex(),
        last_seen: c.last_seen.clone(),
    }
}

/// The files in `meta` (all, or one client's), by owner name and file name, with their
/// size in `blobs`.
pub fn file_views(
    meta: &dyn MetaStore,
    blobs: &dyn BlobStore,
    only: Option<&ClientId>,
) -> anyhow::Result<Vec<FileView>> {
    let mut views = unsized_file_views(meta, only)?;
    fill_sizes(meta, blobs, &mut views);
    Ok(views)
}

/// Asks `blobs` for the size of each of `views` (one query per file: an S3 `HEAD`); a size
/// it cannot tell stays `None` (shown as missing). A view whose file was replaced since
/// its row was read shows the version its row names now ([`current_size`]).
pub fn fill_sizes(meta: &dyn MetaStore, blobs: &dyn BlobStore, views: &mut [FileView]) {
    for view in views {
        let Ok(id) = ClientId::from_hex(&view.client_id) else {
            continue;
        };
        view.size = match current_size(meta, blobs, &id, &view.file_name, &view.path) {
            Some((size, Some(row))) => {
                view.path = row.path;
                view.verified = row.verified;
                Some(size)
            }
            Some((size, None)) => Some(size),
            None => None,
        };
    }
}

/// What a download found under a client's file name.
pub enum StoredContent {
    /// The content, and its length.
    Found(Box<dyn std::io::Read + Send>, u64),
    /// The client has no file of that name.
    NoSuchFile,
    /// The row names content the store does not have.
    Missing,
}

impl std::fmt::Debug for StoredContent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StoredContent::Found(_, size) => write!(f, "Found({size} bytes)"),
            StoredContent::NoSuchFile => f.write_str("NoSuchFile"),
            StoredContent::Missing => f.write_str("Missing"),
        }
    }
}

/// Opens the content of the client's `file_name`, once: the length is that of the
/// content read even if an upload of the same name replaces the file meanwhile. When
/// the version the row named is gone by the time it is opened (in S3 every version has a
/// key of its own and the replaced one is removed once the row names the new one), the
/// row is read again and the version it names now is opened: a download racing a new
/// upload gets one version or the other, never a false "missing".
pub fn open_stored(
    meta: &dyn MetaStore,
    blobs: &dyn BlobStore,
    id: &ClientId,
    file_name: &str,
) -> anyhow::Result<StoredContent> {
    let mut gone: Option<String> = None;
    // Three versions in a row replaced while being opened: the store is that busy with
    // this name, or the row really names missing content.
    for _ in 0..3 {
        let Some(record) = meta.file(id, file_name)? else {
            return Ok(StoredContent::NoSuchFile);
        };
        if gone.as_deref() == Some(record.path.as_str()) {
            return Ok(StoredContent::Missing);
        }
        match blobs.open(&record.path) {
            Ok((reader, size)) => return Ok(StoredContent::Found(reader, size)),
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
                gone = Some(record.path);
            }
            Err(error) => return Err(error.into()),
        }
    }
    Ok(StoredContent::Missing)
}

/// The size of the file stored at `path`, the client's `file_name` as a row read earlier
/// named it. When nothing is there any more because the file was replaced meanwhile (in
/// S3 every version has a key of its own and the replaced one is removed once the row
/// names the new one), the size of the version the row names now, with that row; `None`
/// when the store cannot tell (the file is missing).
fn current_size(
    meta: &dyn MetaStore,
    blobs: &dyn BlobStore,
    id: &ClientId,
    file_name: &str,
    path: &str,
) -> Option<(u64, Option<FileRecord>)> {
    match blobs.size(path) {
        Ok(size) => Some((size, None)),
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
            let row = meta.file(id, file_name).ok()??;
            if row.path == path {
                return None;
            }
            let size = blobs.size(&row.path).ok()?;
            Some((size, Some(row)))
        }
        Err(_) => None,
    }
}

/// [`file_views`] without the sizes (`None`), for a caller that shows only some of them.
pub fn unsized_file_views(
    meta: &dyn MetaStore,
    only: Option<&ClientId>,
) -> anyhow::Result<Vec<FileView>> {
    let names: HashMap<_, _> = meta
        .clients()?
        .into_iter()
        .map(|c| (c.id, c.name.clone()))
        .collect();
    let files = match only {
        Some(id) => meta.files_of(id)?,
        None => meta.files()?,
    };
    let mut views: Vec<FileView> = files
        .into_iter()
        .map(|f| FileView {
            client_id: f.client_id.to_hex(),
            client_name: names.get(&f.client_id).cloned(),
            size: None,
            file_name: f.file_name,
            path: f.path,
            verified: f.verified,
        })
        .collect();
    views.sort_by(|a, b| (&a.client_name, &a.file_name).cmp(&(&b.client_name, &b.file_name)));
    Ok(views)
}

/// The clients in the database of `data_dir`, by name.
pub fn clients(data_dir: &Path) -> anyhow::Result<Vec<ClientView>> {
    clients_in(data_dir, &Database::Sqlite)
}

/// The clients in `database` (SQLite: the one in `data_dir`), by name.
pub fn clients_in(data_dir: &Path, database: &Database) -> anyhow::Result<Vec<ClientView>> {
    clients_in_store(data_dir, database, &Store::DataDir)
}

/// The clients in `database`, with the bytes of their files in `files_store` (`--store`).
pub fn clients_in_store(
    data_dir: &Path,
    database: &Database,
    files_store: &Store,
) -> anyhow::Result<Vec<ClientView>> {
    let store = open_existing_meta(data_dir, database)?;
    let blobs = open_existing_blobs(data_dir, files_store)?;
    let views = client_views(store.as_ref(), blobs.as_ref())?;
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
    let blobs = open_existing_blobs(data_dir, files_store)?;
    let views = file_views(store.as_ref(), blobs.as_ref(), None)?;
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

    /// A mistyped `--store` folder is an error, and nothing is created there.
    #[test]
    fn the_views_of_a_store_folder_that_is_not_there_create_nothing() {
        let dir = tempfile::tempdir().unwrap();
        SqliteStore::open(&dir.path().join(DB_FILE))
            .unwrap()
            .close()
            .unwrap();
        let missing = dir.path().join("mistyped");
        let store = Store::Folder(missing.clone());
        let error = files_in_store(dir.path(), &Database::Sqlite, &store).unwrap_err();
        assert!(format!("{error:#}").contains("--store"), "{error:#}");
        assert!(clients_in_store(dir.path(), &Database::Sqlite, &store).is_err());
        assert!(!missing.exists(), "the views created the folder");
    }
    use crate::storage::sqlite::SqliteStore;
    use crate::storage::{FileRecord, MetaStore, Timestamp};
    use sfc_proto::ClientId;

    /// Stores `content` as version `version` of the client's `label` at a path of its own
    /// (as S3 does), commits its row and removes the version it replaced; returns its
    /// path.
    fn store_version(
        meta: &dyn MetaStore,
        blobs: &dyn crate::storage::BlobStore,
        id: ClientId,
        label: &str,
        version: u32,
        content: &[u8],
    ) -> String {
        let mut temp = blobs
            .create_temp(&id, &format!("{label}~v{version}"))
            .unwrap();
        temp.write_all(content).unwrap();
        let row = FileRecord {
            client_id: id,
            file_name: label.into(),
            path: temp.persist().unwrap(),
            verified: false,
        };
        if let Some(old) = meta.put_file(&row, Timestamp(1)).unwrap() {
            blobs.remove(&old).unwrap();
        }
        row.path
    }

    /// A file replaced between the reading of its row and the size query (in S3 a new
    /// version has a key of its own and the replaced one is removed): its view shows the
    /// version the row names now, not a missing file, and the client's bytes count it.
    #[test]
    fn a_file_replaced_while_its_view_is_made_shows_its_new_version() {
        use crate::storage::testing::MemoryStorage;
        use crate::storage::BlobStore;
        let storage = MemoryStorage::new();
        let (meta, blobs) = (storage.meta(), storage.blobs());
        let id = ClientId([0x33; 16]);
        meta.insert_client(&id, "carol", Timestamp(0)).unwrap();
        let store =
            |version, content: &[u8]| store_version(&meta, &blobs, id, "f.bin", version, content);
        store(1, b"first");
        let mut views = unsized_file_views(&meta, None).unwrap();
        let newer = store(2, b"the second version");
        fill_sizes(&meta, &blobs, &mut views);
        assert_eq!(views[0].size, Some(18));
        assert_eq!(views[0].path, newer);
        assert_eq!(client_views(&meta, &blobs).unwrap()[0].bytes, 18);
        // A file really missing stays missing.
        blobs.remove(&newer).unwrap();
        fill_sizes(&meta, &blobs, &mut views);
        assert_eq!(views[0].size, None);
    }

    /// A download whose version is replaced (and removed) between reading the row and
    /// opening the content gets the new version, not a false "missing".
    #[test]
    fn a_download_racing_a_new_version_gets_the_new_one() {
        use crate::storage::testing::{Faults, FaultyBlobs, MemoryStorage};
        use std::io::Read;
        let storage = MemoryStorage::new();
        let meta = storage.meta();
        let faults = std::sync::Arc::new(Faults::default());
        let blobs = FaultyBlobs::new(storage.blobs(), std::sync::Arc::clone(&faults));
        let id = ClientId([0x55; 16]);
        meta.insert_client(&id, "erin", Timestamp(0)).unwrap();
        let store =
            |version, content: &[u8]| store_version(&meta, &blobs, id, "f.bin", version, content);
        let read = |found: StoredContent| match found {
            StoredContent::Found(mut reader, size) => {
                let mut content = Vec::new();
                reader.read_to_end(&mut content).unwrap();
                assert_eq!(size, content.len() as u64);
                content
            }
            StoredContent::NoSuchFile => panic!("no such file"),
            StoredContent::Missing => panic!("missing"),
        };
        store(1, b"first");
        faults.open_gate.hold_next();
        let newer = std::thread::scope(|scope| {
            let download = scope.spawn(|| open_stored(&meta, &blobs, &id, "f.bin").unwrap());
            assert!(faults
                .open_gate
                .wait_arrived(std::time::Duration::from_secs(20)));
            let newer = store(2, b"the second version");
            faults.open_gate.open();
            assert_eq!(read(download.join().unwrap()), b"the second version");
            newer
        });
        // Content really missing stays missing; an unknown name is no such file.
        blobs.remove(&newer).unwrap();
        assert!(matches!(
            open_stored(&meta, &blobs, &id, "f.bin").unwrap(),
            StoredContent::Missing
        ));
        assert!(matches!(
            open_stored(&meta, &blobs, &id, "g.bin").unwrap(),
            StoredContent::NoSuchFile
        ));
    }

    /// With immutable paths a pass asks the store only for the sizes of files stored
    /// since the pass whose sizes it is given, and hands on the sizes of exactly its own
    /// files.
    #[test]
    fn a_pass_over_immutable_paths_asks_only_for_new_files() {
        use crate::storage::testing::{Faults, FaultyBlobs, MemoryStorage};
        use std::sync::atomic::Ordering;
        let storage = MemoryStorage::new();
        let meta = storage.meta();
        // The test gives every version a name of its own, as S3 does.
        let faults = std::sync::Arc::new(Faults::default());
        faults.paths_immutable.store(true, Ordering::SeqCst);
        let blobs = FaultyBlobs::new(storage.blobs(), std::sync::Arc::clone(&faults));
        let id = ClientId([0x44; 16]);
        meta.insert_client(&id, "dora", Timestamp(0)).unwrap();
        let store = |label: &str, version, content: &[u8]| {
            store_version(&meta, &blobs, id, label, version, content);
        };
        store("f.bin", 1, b"first");
        store("g.bin", 1, b"other");
        let (views, known) = client_views_reusing(&meta, &blobs, &KnownSizes::default()).unwrap();
        assert_eq!(views[0].bytes, 10);
        assert_eq!(faults.size_queries.load(Ordering::SeqCst), 2);
        store("f.bin", 2, b"the second version");
        let (views, known) = client_views_reusing(&meta, &blobs, &known).unwrap();
        assert_eq!(views[0].bytes, 23);
        assert_eq!(
            faults.size_queries.load(Ordering::SeqCst),
            3,
            "one new file"
        );
        assert_eq!(known.0.len(), 2, "{known:?}");
        // A store whose paths change asks every time (the memory store itself).
        let (_, again) = client_views_reusing(&meta, &storage.blobs(), &known).unwrap();
        assert!(again.0.is_empty());
    }

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
