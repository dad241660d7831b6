//! The blob store in S3-compatible object storage (`--store s3://BUCKET/PREFIX`), which any
//! number of servers may share.
//!
//! Layout under the prefix (same relative paths as the local folder, so rows look alike):
//!
//! ```text
//! files/<client-id as 32 hex digits>/<names::disk_name(label)>   stored objects
//! files/<client-id>/.upload-<uuid>.old                          replaced version kept until its row commits
//! uploads/<client-id>/<disk name>/<uuid>                        marker of a multipart upload in progress
//! ```
//!
//! # Writing
//!
//! Content is buffered up to [`PART_SIZE`]. A file that ends before that is sent with
//! one `PUT` when persisted. A larger one goes into a multipart upload straight at its
//! final key: each full buffer becomes a part, sent while the next fills, at most
//! [`PARTS_IN_FLIGHT`] at a time, so an upload holds at most `(1 + PARTS_IN_FLIGHT) ×
//! PART_SIZE` bytes whatever the file's size. The parts stay invisible until the upload
//! is completed, which replaces the key atomically: a reader sees the old or the whole
//! new object, never a part of one.
//!
//! # Persisting and undo (the same guarantees as the local folder)
//!
//! [`TempBlob::persist_undoable`] first copies an existing object at the final key to a
//! backup key (a server-side copy; S3 copies up to 5 GiB in one request, more than the
//! protocol's largest file), then completes the upload (or `PUT`s the small file).
//! [`Persisted::keep`] deletes the backup once the row is committed; [`Persisted::undo`]
//! copies it back (or deletes the new object if it replaced nothing). A crash in between
//! leaves the new, complete object under the final key (its row unverified, see
//! `session::Core::store_upload`) and the backup, removed later by start-up recovery.
//!
//! # Start-up recovery on shared storage
//!
//! Other servers may be writing while one starts, so recovery only touches what is older
//! than the upload time-out (`grace`), judged by the object's `Last-Modified` against this
//! server's clock (keep clocks within a small fraction of the time-out of each other):
//! - a multipart upload is recorded by a marker object holding its upload ID, written
//!   when the upload starts and rewritten at least every quarter of `grace` while it
//!   goes on and just before it completes; it is deleted once the row is committed (or
//!   undone). A marker older than twice `grace` (packets may pause for one `grace`)
//!   belongs to an upload nobody finishes (its
//!   server crashed or gave up): the upload is aborted and the marker deleted
//!   ([`BlobStore::remove_stale_temps`]). `object_store` cannot list multipart uploads,
//!   hence the markers; a bucket lifecycle rule `AbortIncompleteMultipartUpload` is a
//!   good second net (docs/DEPLOY.md);
//! - backups older than `grace` are deleted;
//! - stored objects no row names are orphans ([`super::recover`]) only when older than
//!   `grace` and no live marker names them (some stores date a multipart object from the
//!   start of its upload, so a young marker protects an old-looking object until its row
//!   is committed).
//!
//! # Runtime
//!
//! `object_store` is async; the synchronous [`BlobStore`] methods run it on a small
//! private tokio runtime and wait (called from the server's blocking pool), as the
//! PostgreSQL store does. Requests are retried briefly ([`RETRY_TIMEOUT`]), so an object
//! store that is down fails the request (1607) within seconds instead of minutes.

use super::names::is_temp_name;
use super::setup::is_own_path;
use super::{BlobStore, Persisted, TempBlob};
use crate::config::S3Location;
use crate::storage::fs::FILES_DIR;
use crate::storage::names::TEMP_PREFIX;
use futures::TryStreamExt;
use object_store::aws::{AmazonS3, AmazonS3Builder, AmazonS3ConfigKey};
use object_store::multipart::{MultipartStore, PartId};
use object_store::path::Path as Key;
use object_store::{
    BackoffConfig, ClientConfigKey, MultipartId, ObjectMeta, ObjectStore, PutPayload, RetryConfig,
};
use sfc_proto::ClientId;
use std::collections::{HashSet, VecDeque};
use std::fmt;
use std::future::Future;
use std::io;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tokio::task::JoinHandle;

/// Size of one part of a multipart upload (S3 wants at least 5 MiB for all but the last).
pub const PART_SIZE: usize = 8 << 20;
/// Parts being sent at once per upload, besides the one filling.
pub const PARTS_IN_FLIGHT: usize = 1;
/// How long a request is retried before it fails.
pub const RETRY_TIMEOUT: Duration = Duration::from_secs(10);
/// Time to open a connection to the object store.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Folder of the multipart upload markers under the prefix.
pub const UPLOADS_DIR: &str = "uploads";

/// [`BlobStore`] in an S3 bucket.
pub struct S3BlobStore {
    shared: Arc<Shared>,
}

struct Shared {
    s3: AmazonS3,
    /// `PREFIX/` or empty.
    prefix: String,
    /// Age beyond which recovery judges objects abandoned (the upload time-out).
    grace: Duration,
    handle: tokio::runtime::Handle,
    /// Drives the requests; shut down (without blocking) when the store is dropped.
    runtime: Mutex<Option<tokio::runtime::Runtime>>,
    location: String,
}

impl Drop for Shared {
    fn drop(&mut self) {
        let runtime = self
            .runtime
            .get_mut()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        if let Some(runtime) = runtime {
            // May run on an async thread, where a blocking shutdown would panic.
            runtime.shutdown_background();
        }
    }
}

impl fmt::Debug for S3BlobStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("S3BlobStore")
            .field("location", &self.shared.location)
            .field("grace", &self.shared.grace)
            .finish_non_exhaustive()
    }
}

fn s3_err(error: object_store::Error) -> io::Error {
    let kind = match error {
        object_store::Error::NotFound { .. } => io::ErrorKind::NotFound,
        _ => io::ErrorKind::Other,
    };
    // The whole chain: "Generic S3 error: … connection refused" says what happened.
    let mut text = error.to_string();
    let mut source = std::error::Error::source(&error);
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    io::Error::new(kind, format!("object storage: {text}"))
}

fn millis_since_epoch(time: SystemTime) -> i64 {
    time.duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

impl S3BlobStore {
    /// A store in `location`, configured from the `AWS_*` environment variables
    /// (`AWS_ENDPOINT_URL`, `AWS_REGION`, `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`,
    /// `AWS_ALLOW_HTTP`, …). `grace` is the upload time-out (see the module docs).
    /// Checks that the bucket can be listed.
    pub fn open(location: &S3Location, grace: Duration) -> io::Result<Self> {
        let mut builder = AmazonS3Builder::from_env();
        for (key, value) in &location.settings {
            let key: AmazonS3ConfigKey = key.parse().map_err(|error| {
                io::Error::new(io::ErrorKind::InvalidInput, format!("{key:?}: {error}"))
            })?;
            builder = builder.with_config(key, value);
        }
        let store = Self::from_builder(builder, location, grace)?;
        store.check()?;
        Ok(store)
    }

    /// A store with explicit settings on top of `builder` (tests); no request is made.
    pub fn from_builder(
        builder: AmazonS3Builder,
        location: &S3Location,
        grace: Duration,
    ) -> io::Result<Self> {
        // Keeps the client options from the environment (AWS_ALLOW_HTTP, …).
        let connect_timeout = AmazonS3ConfigKey::Client(ClientConfigKey::ConnectTimeout);
        let builder = match builder.get_config_value(&connect_timeout) {
            Some(_) => builder,
            None => builder.with_config(connect_timeout, format!("{}s", CONNECT_TIMEOUT.as_secs())),
        };
        let s3 = builder
            .with_bucket_name(&location.bucket)
            .with_retry(RetryConfig {
                backoff: BackoffConfig {
                    init_backoff: Duration::from_millis(100),
                    max_backoff: Duration::from_secs(2),
                    base: 2.0,
                },
                max_retries: 4,
                retry_timeout: RETRY_TIMEOUT,
            })
            .build()
            .map_err(s3_err)?;
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("sfc-s3")
            .enable_all()
            .build()?;
        let prefix = if location.prefix.is_empty() {
            String::new()
        } else {
            format!("{}/", location.prefix)
        };
        Ok(S3BlobStore {
            shared: Arc::new(Shared {
                s3,
                prefix,
                grace,
                handle: runtime.handle().clone(),
                runtime: Mutex::new(Some(runtime)),
                location: location.to_string(),
            }),
        })
    }

    /// Lists the prefix once: a wrong endpoint, bucket or credentials stop the server at
    /// start-up with a clear message instead of failing every upload.
    fn check(&self) -> io::Result<()> {
        let shared = &self.shared;
        let prefix = shared.key(FILES_DIR)?;
        shared
            .run(async { shared.s3.list_with_delimiter(Some(&prefix)).await })
            .map_err(|error| {
                io::Error::new(
                    error.kind(),
                    format!("cannot list {}: {error}", shared.location),
                )
            })?;
        Ok(())
    }
}

impl Shared {
    /// Waits for `work` on the store's runtime (a blocking call: never on an async thread).
    fn run<T>(&self, work: impl Future<Output = Result<T, object_store::Error>>) -> io::Result<T> {
        self.handle.block_on(work).map_err(s3_err)
    }

    /// The key of `rel` (a `/`-separated path under the prefix).
    fn key(&self, rel: &str) -> io::Result<Key> {
        Key::parse(format!("{}{rel}", self.prefix)).map_err(|error| {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("{rel:?} is not a valid object key: {error}"),
            )
        })
    }

    /// The key of a stored file's row path, which must have the form this store writes
    /// (`files/<32 hex digits>/<name>`): a row adopted from elsewhere never names a key
    /// outside the client folders.
    fn stored_key(&self, path: &str) -> io::Result<Key> {
        if !is_own_path(path) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("stored path {path:?} is not files/<client id>/<name>"),
            ));
        }
        self.key(path)
    }

    /// `rel` of a key under the prefix.
    fn rel<'a>(&self, key: &'a Key) -> Option<&'a str> {
        key.as_ref().strip_prefix(self.prefix.as_str())
    }

    /// Every object under `rel/`.
    fn list(&self, rel: &str) -> io::Result<Vec<ObjectMeta>> {
        let prefix = self.key(rel)?;
        self.run(self.s3.list(Some(&prefix)).try_collect())
    }

    /// Whether an object last modified at `meta` is older than the grace period.
    fn is_old(&self, meta: &ObjectMeta) -> bool {
        self.is_older_than(meta, self.grace)
    }

    /// Whether a marker is older than twice the grace period: a live upload rewrites it
    /// at least every quarter of the period while packets arrive, and packets may pause
    /// for up to one period.
    fn is_abandoned(&self, marker: &ObjectMeta) -> bool {
        self.is_older_than(marker, self.grace.saturating_mul(2))
    }

    fn is_older_than(&self, meta: &ObjectMeta, limit: Duration) -> bool {
        let age = millis_since_epoch(SystemTime::now())
            .saturating_sub(meta.last_modified.timestamp_millis());
        u128::try_from(age).unwrap_or(0) > limit.as_millis()
    }

    /// Deletes an object; one that is already gone is fine.
    async fn delete_quietly(&self, key: &Key) -> Result<(), object_store::Error> {
        delete_quietly(&self.s3, key).await
    }

    /// Starts `work` on the runtime without waiting (from `Drop`, which may run anywhere).
    fn spawn_detached(
        &self,
        what: &'static str,
        work: impl Future<Output = Result<(), object_store::Error>> + Send + 'static,
    ) {
        self.handle.spawn(async move {
            if let Err(error) = work.await {
                tracing::warn!(%error, "{what} (recovery will retry)");
            }
        });
    }
}

impl BlobStore for S3BlobStore {
    fn create_temp(&self, client: &ClientId, disk_name: &str) -> io::Result<Box<dyn TempBlob>> {
        let hex = client.to_hex();
        let rel_path = format!("{FILES_DIR}/{hex}/{disk_name}");
        let key = self.shared.key(&rel_path)?;
        let marker = self.shared.key(&format!(
            "{UPLOADS_DIR}/{hex}/{disk_name}/{}",
            uuid::Uuid::new_v4().simple()
        ))?;
        let backup = self.shared.key(&format!(
            "{FILES_DIR}/{hex}/{TEMP_PREFIX}{}.old",
            uuid::Uuid::new_v4().simple()
        ))?;
        Ok(Box::new(S3Temp {
            shared: Arc::clone(&self.shared),
            key,
            rel_path,
            marker,
            backup,
            buffer: Vec::new(),
            upload: None,
        }))
    }

    fn remove(&self, path: &str) -> io::Result<()> {
        let key = self.shared.stored_key(path)?;
        self.shared.run(self.shared.delete_quietly(&key))
    }

    fn size(&self, path: &str) -> io::Result<u64> {
        let key = self.shared.stored_key(path)?;
        Ok(self.shared.run(self.shared.s3.head(&key))?.size)
    }

    fn remove_stale_temps(&self) -> io::Result<usize> {
        let shared = &self.shared;
        let mut removed = 0;
        for marker in shared.list(UPLOADS_DIR)? {
            if !shared.is_abandoned(&marker) {
                continue;
            }
            let Some((hex, name)) = shared.rel(&marker.location).and_then(marker_target) else {
                continue;
            };
            let key = shared.key(&format!("{FILES_DIR}/{hex}/{name}"))?;
            shared.run(async {
                let id = shared.s3.get(&marker.location).await?.bytes().await?;
                let id = String::from_utf8_lossy(&id).into_owned();
                match shared.s3.abort_multipart(&key, &id).await {
                    // Already completed or aborted: only the marker is left.
                    Ok(()) | Err(object_store::Error::NotFound { .. }) => {}
                    Err(error) => tracing::debug!(%error, "aborting an abandoned upload"),
                }
                shared.delete_quietly(&marker.location).await
            })?;
            removed += 1;
        }
        for object in shared.list(FILES_DIR)? {
            let is_backup = object.location.filename().is_some_and(is_temp_name);
            if is_backup && shared.is_old(&object) {
                shared.run(shared.delete_quietly(&object.location))?;
                removed += 1;
            }
        }
        Ok(removed)
    }

    fn stored_paths(&self) -> io::Result<Vec<String>> {
        let shared = &self.shared;
        // Markers first: an upload that starts after this listing makes a young object.
        let protected: HashSet<(String, String)> = shared
            .list(UPLOADS_DIR)?
            .iter()
            .filter(|marker| !shared.is_abandoned(marker))
            .filter_map(|marker| shared.rel(&marker.location).and_then(marker_target))
            .map(|(hex, name)| (hex.to_owned(), name.to_owned()))
            .collect();
        let mut paths = Vec::new();
        for object in shared.list(FILES_DIR)? {
            let Some(rel) = shared.rel(&object.location) else {
                continue;
            };
            let mut parts = rel.split('/');
            let (Some(_), Some(hex), Some(name), None) =
                (parts.next(), parts.next(), parts.next(), parts.next())
            else {
                continue;
            };
            let ours = ClientId::from_hex(hex).is_ok_and(|id| id.to_hex() == hex);
            if !ours || is_temp_name(name) || !shared.is_old(&object) {
                continue;
            }
            if protected.contains(&(hex.to_owned(), name.to_owned())) {
                continue;
            }
            paths.push(rel.to_owned());
        }
        paths.sort();
        Ok(paths)
    }
}

/// Deletes an object; one that is already gone is fine.
async fn delete_quietly(s3: &AmazonS3, key: &Key) -> Result<(), object_store::Error> {
    match s3.delete(key).await {
        Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
        Err(error) => Err(error),
    }
}

/// The client folder and name a marker `uploads/<hex>/<name>/<uuid>` stands for.
fn marker_target(rel: &str) -> Option<(&str, &str)> {
    let mut parts = rel.strip_prefix(UPLOADS_DIR)?.strip_prefix('/')?.split('/');
    match (parts.next(), parts.next(), parts.next(), parts.next()) {
        (Some(hex), Some(name), Some(_), None) => Some((hex, name)),
        _ => None,
    }
}

/// A multipart upload in progress.
struct Upload {
    id: MultipartId,
    /// Parts sent, in order.
    parts: Vec<PartId>,
    /// Parts being sent, oldest first.
    in_flight: VecDeque<JoinHandle<Result<PartId, object_store::Error>>>,
    /// When the marker was last written.
    marked: Instant,
}

/// An object being received (see the module docs).
struct S3Temp {
    shared: Arc<Shared>,
    key: Key,
    rel_path: String,
    marker: Key,
    backup: Key,
    /// Content not yet sent: less than one part.
    buffer: Vec<u8>,
    upload: Option<Upload>,
}

impl fmt::Debug for S3Temp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("S3Temp")
            .field("key", &self.key.as_ref())
            .field("buffered", &self.buffer.len())
            .field("parts", &self.upload.as_ref().map(|u| u.parts.len()))
            .finish_non_exhaustive()
    }
}

impl S3Temp {
    /// Sends the full buffer as the next part, starting the multipart upload first if
    /// needed, and waits while more than [`PARTS_IN_FLIGHT`] parts are on their way.
    fn send_part(&mut self) -> io::Result<()> {
        let shared = Arc::clone(&self.shared);
        let upload = match self.upload.as_mut() {
            Some(upload) => upload,
            None => {
                let id = shared.run(async {
                    let id = shared.s3.create_multipart(&self.key).await?;
                    shared.s3.put(&self.marker, id.clone().into()).await?;
                    Ok(id)
                })?;
                self.upload.insert(Upload {
                    id,
                    parts: Vec::new(),
                    in_flight: VecDeque::new(),
                    marked: Instant::now(),
                })
            }
        };
        let data = PutPayload::from(std::mem::take(&mut self.buffer));
        let index = upload.parts.len() + upload.in_flight.len();
        let (s3, key, id) = (shared.s3.clone(), self.key.clone(), upload.id.clone());
        upload.in_flight.push_back(
            shared
                .handle
                .spawn(async move { s3.put_part(&key, &id, index, data).await }),
        );
        while upload.in_flight.len() > PARTS_IN_FLIGHT {
            collect_part(&shared, upload)?;
        }
        self.refresh_marker(false)
    }

    /// Rewrites the marker when it is a quarter of the grace period old (or `now`), so
    /// that recovery elsewhere never takes a live upload for an abandoned one.
    fn refresh_marker(&mut self, now: bool) -> io::Result<()> {
        let Some(upload) = self.upload.as_mut() else {
            return Ok(());
        };
        if now || upload.marked.elapsed() >= self.shared.grace / 4 {
            let shared = &self.shared;
            shared.run(shared.s3.put(&self.marker, upload.id.clone().into()))?;
            upload.marked = Instant::now();
        }
        Ok(())
    }

    /// Makes the object complete at its key: the last part and the completion, or one
    /// `PUT` for a small file.
    fn complete(&mut self) -> io::Result<()> {
        if self.upload.is_none() {
            let data = PutPayload::from(std::mem::take(&mut self.buffer));
            let shared = &self.shared;
            shared.run(shared.s3.put(&self.key, data))?;
            return Ok(());
        }
        if !self.buffer.is_empty() {
            self.send_part()?;
        }
        self.refresh_marker(true)?;
        let shared = Arc::clone(&self.shared);
        let Some(mut upload) = self.upload.take() else {
            return Err(io::Error::other("upload already finished"));
        };
        let result = (|| {
            while !upload.in_flight.is_empty() {
                collect_part(&shared, &mut upload)?;
            }
            let parts = std::mem::take(&mut upload.parts);
            shared.run(shared.s3.complete_multipart(&self.key, &upload.id, parts))
        })();
        if let Err(error) = result {
            // Not completed: abort it (Drop does) and say why.
            self.upload = Some(upload);
            return Err(error);
        }
        Ok(())
    }

    /// Deletes the marker once the object needs no protection any more.
    fn unmark(shared: &Shared, marker: &Key) {
        if let Err(error) = shared.run(shared.delete_quietly(marker)) {
            tracing::warn!(%error, "cannot delete an upload marker (removed by a later recovery)");
        }
    }
}

/// Waits for the oldest part in flight and records its ID.
fn collect_part(shared: &Shared, upload: &mut Upload) -> io::Result<()> {
    let Some(task) = upload.in_flight.pop_front() else {
        return Ok(());
    };
    let part = shared
        .handle
        .block_on(task)
        .map_err(|error| io::Error::other(format!("part upload task failed: {error}")))?
        .map_err(s3_err)?;
    upload.parts.push(part);
    Ok(())
}

impl TempBlob for S3Temp {
    fn write_all(&mut self, mut bytes: &[u8]) -> io::Result<()> {
        while !bytes.is_empty() {
            let room = PART_SIZE.saturating_sub(self.buffer.len());
            let (now, later) = bytes.split_at(room.min(bytes.len()));
            // Grows as Vec does (doubling), but never beyond one part.
            let needed = self.buffer.len() + now.len();
            if needed > self.buffer.capacity() {
                let want = needed.max(self.buffer.capacity() * 2).min(PART_SIZE);
                self.buffer.reserve_exact(want - self.buffer.len());
            }
            self.buffer.extend_from_slice(now);
            bytes = later;
            if self.buffer.len() >= PART_SIZE {
                self.send_part()?;
            }
        }
        // A slow client: keep the marker young between parts too.
        self.refresh_marker(false)
    }

    fn persist(mut self: Box<Self>) -> io::Result<String> {
        let multipart = self.upload.is_some();
        self.complete()?;
        if multipart {
            Self::unmark(&self.shared, &self.marker);
        }
        Ok(std::mem::take(&mut self.rel_path))
    }

    fn persist_undoable(mut self: Box<Self>) -> io::Result<Box<dyn Persisted>> {
        let shared = Arc::clone(&self.shared);
        let backup = match shared.run(shared.s3.copy(&self.key, &self.backup)) {
            Ok(()) => Some(self.backup.clone()),
            Err(error) if error.kind() == io::ErrorKind::NotFound => None,
            Err(error) => return Err(error),
        };
        let marker = self.upload.as_ref().map(|_| self.marker.clone());
        if let Err(error) = self.complete() {
            if let Some(backup) = &backup {
                let _ = shared.run(shared.delete_quietly(backup));
            }
            return Err(error);
        }
        Ok(Box::new(S3Persisted {
            shared,
            key: self.key.clone(),
            rel_path: std::mem::take(&mut self.rel_path),
            backup,
            marker,
        }))
    }
}

impl Drop for S3Temp {
    fn drop(&mut self) {
        // Not persisted (or its completion failed): abort the multipart upload.
        let Some(upload) = self.upload.take() else {
            return;
        };
        for task in &upload.in_flight {
            task.abort();
        }
        // The task holds the client only: the store (and its runtime) is never dropped
        // on one of its own threads.
        let s3 = self.shared.s3.clone();
        let (key, marker) = (self.key.clone(), self.marker.clone());
        self.shared
            .spawn_detached("cannot abort an upload", async move {
                s3.abort_multipart(&key, &upload.id).await?;
                delete_quietly(&s3, &marker).await
            });
    }
}

/// An object completed at its key whose row is not committed yet (see [`Persisted`]).
struct S3Persisted {
    shared: Arc<Shared>,
    key: Key,
    rel_path: String,
    /// Copy of the replaced version.
    backup: Option<Key>,
    /// The marker protecting the object from recovery elsewhere, if multipart.
    marker: Option<Key>,
}

impl fmt::Debug for S3Persisted {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("S3Persisted")
            .field("key", &self.key.as_ref())
            .field(
                "backup",
                &self.backup.as_ref().map(|k| k.as_ref().to_owned()),
            )
            .finish_non_exhaustive()
    }
}

impl Persisted for S3Persisted {
    fn path(&self) -> &str {
        &self.rel_path
    }

    fn keep(self: Box<Self>) -> io::Result<()> {
        let shared = &self.shared;
        if let Some(marker) = &self.marker {
            S3Temp::unmark(shared, marker);
        }
        match &self.backup {
            Some(backup) => shared.run(shared.delete_quietly(backup)),
            None => Ok(()),
        }
    }

    fn undo(self: Box<Self>) -> io::Result<()> {
        let shared = &self.shared;
        shared.run(async {
            match &self.backup {
                Some(backup) => {
                    shared.s3.copy(backup, &self.key).await?;
                    shared.delete_quietly(backup).await
                }
                None => shared.delete_quietly(&self.key).await,
            }
        })?;
        if let Some(marker) = &self.marker {
            S3Temp::unmark(shared, marker);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn markers_name_their_target() {
        let hex = "ab".repeat(16);
        assert_eq!(
            marker_target(&format!("uploads/{hex}/a.bin/123")),
            Some((hex.as_str(), "a.bin"))
        );
        assert_eq!(marker_target(&format!("uploads/{hex}/a.bin")), None);
        assert_eq!(marker_target(&format!("files/{hex}/a.bin/1")), None);
        assert_eq!(marker_target(&format!("uploads/{hex}/a/b/1")), None);
    }
}
