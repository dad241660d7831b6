//! The blob store in S3-compatible object storage (`--store s3://BUCKET/PREFIX`), which any
//! number of servers may share.
//!
//! Layout under the prefix (the local folder's relative paths, with a version added to
//! each file's name):
//!
//! ```text
//! files/<client-id as 32 hex digits>/<disk name>~v<32 hex digits>   stored objects
//! uploads/<client-id>/<stored object's name>/<uuid>                 marker of a multipart upload in progress
//! sfc-setup-id                                                      the set-up ID (storage::pairing)
//! ```
//!
//! The disk name is `names::disk_name(label)`; the version (`names::versioned`) is new
//! for every upload: a UUIDv7, so that recovery can tell a version a later one replaced
//! (`names::version_millis`). Rows written by earlier versions of the server name objects without
//! one, which stay readable and removable.
//!
//! # Writing
//!
//! Content is buffered up to [`PART_SIZE`]. A file that ends before that is sent with
//! one `PUT` when persisted. A larger one goes into a multipart upload straight at its
//! final key: each full buffer becomes a part, sent while the next fills, at most
//! [`PARTS_IN_FLIGHT`] at a time, so an upload holds at most `(1 + PARTS_IN_FLIGHT) ×
//! PART_SIZE` bytes whatever the file's size. The parts stay invisible until the upload
//! is completed.
//!
//! # One key per upload: nothing is ever overwritten
//!
//! Servers sharing the bucket serialise nothing between them: two may store the same
//! client's file at once, or one delete it while another stores it. So no upload writes
//! a key another upload or a row may name. Replacing a file is: complete the new
//! version at its own key, commit the row naming it, then delete the key the row named
//! before (`session::Core::store_upload`; the database says which). Undo
//! ([`crate::storage::Persisted::undo`], the row could not be committed) deletes the new key only; a
//! failed completion deletes it too (it may have happened with only its answer lost). A
//! delete removes the row, then the key that row named. Whatever the interleaving, a
//! row names a complete object and no server removes an object it did not read from a
//! row or write itself; at worst a key is left that no row names (a crash between the
//! completion and the commit, or between the commit and the removal of the version it
//! replaced), which start-up recovery removes once old.
//!
//! # Start-up recovery on shared storage
//!
//! Running servers on PostgreSQL repeat it every `--store-sweep-interval`
//! ([`crate::storage::setup::sweep_shared_store`]): it judges by age and markers alone,
//! so a server's own uploads in progress are spared as another server's are.
//!
//! Other servers may be writing while one starts, so recovery only touches what is older
//! than `grace` (the upload time-out, at least the longest commit of a row:
//! [`crate::config::ServerConfig::recovery_grace`]), judged by the object's `Last-Modified` against this
//! server's clock (keep clocks within a small fraction of the time-out of each other):
//! - a multipart upload is recorded by a marker object holding its upload ID, written
//!   when the upload starts and rewritten every quarter of `grace` by a task of its own
//!   while the upload lives (whether or not content arrives: a client may pause between
//!   small packets many times), and just before it completes; it is deleted once the row
//!   is committed (or undone). A marker older than twice `grace` (packets may pause for one `grace`)
//!   belongs to an upload nobody finishes (its
//!   server crashed or gave up): the upload is aborted and the marker deleted
//!   ([`BlobStore::remove_stale_temps`]). `object_store` cannot list multipart uploads,
//!   hence the markers; a bucket lifecycle rule `AbortIncompleteMultipartUpload` is a
//!   good second net (docs/DEPLOY.md);
//! - temporary objects older than `grace` are deleted (the `.upload-*.old` backups of
//!   replaced versions that servers before one-key-per-upload kept);
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

mod parts;
mod persisted;
mod read;
mod recovery;
mod temp;

use super::setup::is_own_path;
use super::{BlobStore, TempBlob};
use crate::config::S3Location;
use crate::storage::fs::FILES_DIR;
use crate::storage::names;
use crate::storage::pairing::{already_kept, damaged, kept, parse_kept, SETUP_ID_PATH};
use futures::TryStreamExt;
use object_store::aws::{AmazonS3, AmazonS3Builder, AmazonS3ConfigKey};
use object_store::path::Path as Key;
use object_store::{BackoffConfig, ClientConfigKey, ObjectMeta, ObjectStore, RetryConfig};
use sfc_proto::ClientId;
use std::fmt;
use std::future::Future;
use std::io;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use temp::S3Temp;

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
    /// Part buffers for the next parts (their own `Arc`: the payloads holding them are
    /// dropped on the runtime's threads, where `Shared` itself must never be).
    parts: Arc<parts::PartPool>,
    /// The background tasks under way ([`Shared::spawn_detached`]), for
    /// [`BlobStore::close`] to wait for.
    detached: tokio_util::task::TaskTracker,
}

impl Shared {
    /// Stops the runtime without waiting for its tasks: requests under way end where they
    /// are.
    fn stop_runtime(&self) {
        let runtime = self
            .runtime
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        if let Some(runtime) = runtime {
            // May run on an async thread, where a blocking shutdown would panic.
            runtime.shutdown_background();
        }
    }
}

impl Drop for Shared {
    fn drop(&mut self) {
        self.stop_runtime();
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
        object_store::Error::AlreadyExists { .. } => io::ErrorKind::AlreadyExists,
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
    /// Stops the store's runtime as a crash of the process would: requests and background
    /// tasks (the rewrites of upload markers) end where they are and nothing is cleaned
    /// up. For tests that leave work behind for another server's recovery.
    #[cfg(feature = "testing")]
    pub fn halt(&self) {
        self.shared.stop_runtime();
    }

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
                parts: Arc::default(),
                detached: tokio_util::task::TaskTracker::new(),
            }),
        })
    }

    /// Asks for the first page of the prefix's listing: a wrong endpoint, bucket or
    /// credentials stop the server at start-up with a clear message instead of failing
    /// every upload. (One request, however many objects there are.)
    fn check(&self) -> io::Result<()> {
        let shared = &self.shared;
        let prefix = shared.key(FILES_DIR)?;
        shared
            .run(async { shared.s3.list(Some(&prefix)).try_next().await })
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

    /// Lists the objects under `rel/` page by page, keeping only what `keep` makes of each:
    /// a bucket of millions of objects is never held whole in memory (a listed object
    /// takes some 200 bytes).
    fn list_kept<T>(
        &self,
        rel: &str,
        mut keep: impl FnMut(ObjectMeta) -> Option<T>,
    ) -> io::Result<Vec<T>> {
        let prefix = self.key(rel)?;
        self.run(async {
            let mut kept = Vec::new();
            let mut listing = self.s3.list(Some(&prefix));
            while let Some(meta) = listing.try_next().await? {
                kept.extend(keep(meta));
            }
            Ok(kept)
        })
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
        // Tracked however the task ends (a panic in `work` too).
        self.detached.spawn_on(
            async move {
                if let Err(error) = work.await {
                    tracing::warn!(%error, "{what} (recovery will retry)");
                }
            },
            &self.handle,
        );
    }

    /// Waits up to `within` for the background tasks under way; false if some still
    /// run then. A blocking call, never on one of the runtime's threads.
    fn finish_detached(&self, within: Duration) -> bool {
        // Closed, the tracker's wait ends once no task is left (tasks spawned later are
        // still tracked, and still run).
        self.detached.close();
        self.handle.block_on(async {
            tokio::time::timeout(within, self.detached.wait())
                .await
                .is_ok()
        })
    }
}
impl BlobStore for S3BlobStore {
    /// The object is stored under a version of `disk_name` of its own
    /// ([`names::versioned`]): see the module docs.
    fn create_temp(&self, client: &ClientId, disk_name: &str) -> io::Result<Box<dyn TempBlob>> {
        let hex = client.to_hex();
        let version = uuid::Uuid::now_v7();
        let name = names::versioned(disk_name, version.as_u128());
        let rel_path = format!("{FILES_DIR}/{hex}/{name}");
        let key = self.shared.key(&rel_path)?;
        let marker = self
            .shared
            .key(&format!("{UPLOADS_DIR}/{hex}/{name}/{}", version.simple()))?;
        Ok(Box::new(S3Temp::new(
            Arc::clone(&self.shared),
            key,
            rel_path,
            marker,
        )))
    }

    fn remove(&self, path: &str) -> io::Result<()> {
        let key = self.shared.stored_key(path)?;
        self.shared.run(self.shared.delete_quietly(&key))
    }

    fn size(&self, path: &str) -> io::Result<u64> {
        let key = self.shared.stored_key(path)?;
        Ok(self.shared.run(self.shared.s3.head(&key))?.size)
    }

    /// The object's size from a `HEAD`, then its content one range at a time
    /// ([`read::ObjectReader`]).
    fn open(&self, path: &str) -> io::Result<(Box<dyn io::Read + Send>, u64)> {
        let key = self.shared.stored_key(path)?;
        let size = self.shared.run(self.shared.s3.head(&key))?.size;
        let reader = read::ObjectReader::new(Arc::clone(&self.shared), key, size);
        Ok((Box::new(reader), size))
    }

    /// Every upload has a key of its own ([`names::versioned`]): what a key holds never
    /// changes. (Keys written by servers before that layout are replaced in place only by
    /// such servers, which a cluster does not run beside this one: docs/DEPLOY.md.)
    fn paths_are_immutable(&self) -> bool {
        true
    }

    /// Waits for the aborts of the multipart uploads dropped last (at shutdown, those in
    /// progress), which the runtime's shutdown would otherwise cut off.
    fn close(&self, within: Duration) -> bool {
        self.shared.finish_detached(within)
    }

    /// Any number of servers may share the bucket (see the module docs).
    fn is_shared(&self) -> bool {
        true
    }

    fn remove_stale_temps(&self) -> io::Result<usize> {
        self.shared.remove_stale_temps()
    }

    fn stored_paths(&self) -> io::Result<Vec<String>> {
        self.shared.stored_paths()
    }

    fn setup_id(&self) -> io::Result<Option<String>> {
        let shared = &self.shared;
        let key = shared.key(SETUP_ID_PATH)?;
        let read = shared.run(async {
            let object = shared.s3.get(&key).await?;
            // A few bytes; a large object is not an ID (and is not read).
            if object.meta.size > 128 {
                return Ok(None);
            }
            object.bytes().await.map(Some)
        });
        match read {
            Ok(Some(bytes)) => parse_kept(&bytes).map(Some),
            Ok(None) => Err(damaged()),
            Err(error) if error.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(error) => Err(error),
        }
    }

    fn keep_setup_id(&self, id: &str) -> io::Result<String> {
        let shared = &self.shared;
        let key = shared.key(SETUP_ID_PATH)?;
        // Created only if absent (If-None-Match: *), whole in one PUT.
        let create = object_store::PutOptions::from(object_store::PutMode::Create);
        match shared.run(shared.s3.put_opts(&key, kept(id).into(), create)) {
            Ok(_) => Ok(id.to_owned()),
            Err(error) if error.kind() == io::ErrorKind::AlreadyExists => {
                already_kept(self.setup_id())
            }
            Err(error) => Err(error),
        }
    }
}

/// Deletes an object; one that is already gone is fine.
async fn delete_quietly(s3: &AmazonS3, key: &Key) -> Result<(), object_store::Error> {
    match s3.delete(key).await {
        Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
        Err(error) => Err(error),
    }
}
