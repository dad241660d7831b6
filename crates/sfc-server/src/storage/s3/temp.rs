//! The object being received: content buffered up to a part, the multipart upload and
//! its marker, completion, and the abort when it is dropped unpersisted.

use super::persisted::S3Persisted;
use super::{delete_quietly, s3_err, Shared, PARTS_IN_FLIGHT, PART_SIZE};
use crate::storage::{Persisted, TempBlob};
use object_store::multipart::{MultipartStore, PartId};
use object_store::path::Path as Key;
use object_store::{MultipartId, ObjectStore, PutPayload};
use std::collections::VecDeque;
use std::fmt;
use std::io;
use std::sync::Arc;
use tokio::task::JoinHandle;

/// A multipart upload in progress.
struct Upload {
    id: MultipartId,
    /// Parts sent, in order.
    parts: Vec<PartId>,
    /// Parts being sent, oldest first.
    in_flight: VecDeque<JoinHandle<Result<PartId, object_store::Error>>>,
    /// Keeps the marker young until the upload is completed or dropped.
    keeper: MarkerKeeper,
}

/// Rewrites an upload's marker every quarter of the grace period, whether or not content
/// arrives: a client may pause for up to the upload time-out between packets, many
/// times, and small packets may take long to fill a part; rewriting only when content
/// is written let another server's recovery take a slow, live upload for an abandoned
/// one and abort it.
struct MarkerKeeper {
    task: JoinHandle<()>,
    /// Set (under its lock) when the upload no longer needs the marker; a rewrite holds
    /// the lock, so none lands after [`MarkerKeeper::stop`].
    stopped: Arc<tokio::sync::Mutex<bool>>,
}

/// How often a live upload's marker is rewritten: a quarter of the grace period, but at
/// most a quarter of the default one, so that a server started with a longer
/// `--upload-timeout` than the others does not leave its markers looking abandoned to
/// theirs (they judge a marker by their own grace period).
fn marker_rewrite_interval(grace: std::time::Duration) -> std::time::Duration {
    (grace.min(crate::config::DEFAULT_RECOVERY_MIN_AGE) / 4)
        .max(std::time::Duration::from_millis(10))
}

impl MarkerKeeper {
    fn start(shared: &Shared, marker: Key, id: MultipartId) -> Self {
        let stopped = Arc::new(tokio::sync::Mutex::new(false));
        let every = marker_rewrite_interval(shared.grace);
        let (s3, flag) = (shared.s3.clone(), Arc::clone(&stopped));
        let task = shared.handle.spawn(async move {
            let mut ticker = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
            loop {
                ticker.tick().await;
                let stopped = flag.lock().await;
                if *stopped {
                    return;
                }
                if let Err(error) = s3.put(&marker, id.clone().into()).await {
                    tracing::warn!(%error, "cannot rewrite an upload marker");
                }
            }
        });
        MarkerKeeper { task, stopped }
    }

    /// Ends the rewrites; a rewrite under way finishes first, and none starts after.
    async fn stop(&self) {
        *self.stopped.lock().await = true;
        self.task.abort();
    }
}

/// An object being received (see the module docs).
pub(super) struct S3Temp {
    shared: Arc<Shared>,
    key: Key,
    rel_path: String,
    marker: Key,
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
    /// An empty object to be stored at `key` (`rel_path`, a key no other upload writes),
    /// with the key of its marker.
    pub(super) fn new(shared: Arc<Shared>, key: Key, rel_path: String, marker: Key) -> Self {
        S3Temp {
            shared,
            key,
            rel_path,
            marker,
            buffer: Vec::new(),
            upload: None,
        }
    }

    /// Sends the full buffer as the next part, starting the multipart upload first if
    /// needed, and waits while more than [`PARTS_IN_FLIGHT`] parts are on their way.
    fn send_part(&mut self) -> io::Result<()> {
        let shared = Arc::clone(&self.shared);
        let upload = match self.upload.as_mut() {
            Some(upload) => upload,
            None => {
                let id = shared.run(async {
                    let id = shared.s3.create_multipart(&self.key).await?;
                    if let Err(error) = shared.s3.put(&self.marker, id.clone().into()).await {
                        // Without its marker nothing would ever abort it (uploads cannot
                        // be listed): now, best effort.
                        let _ = shared.s3.abort_multipart(&self.key, &id).await;
                        return Err(error);
                    }
                    Ok(id)
                })?;
                let keeper = MarkerKeeper::start(&shared, self.marker.clone(), id.clone());
                self.upload.insert(Upload {
                    id,
                    parts: Vec::new(),
                    in_flight: VecDeque::new(),
                    keeper,
                })
            }
        };
        let data = shared.parts.payload(std::mem::take(&mut self.buffer));
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
        Ok(())
    }

    /// Stops the marker's periodic rewrites and rewrites it once now, so that it is young
    /// for the completion and the commit of the row after it (which delete it).
    fn mark_for_completion(&mut self) -> io::Result<()> {
        let Some(upload) = self.upload.as_mut() else {
            return Ok(());
        };
        let shared = &self.shared;
        shared.run(async {
            upload.keeper.stop().await;
            shared
                .s3
                .put(&self.marker, upload.id.clone().into())
                .await?;
            Ok(())
        })
    }

    /// Makes the object complete at its key: the last part and the completion, or one
    /// `PUT` for a small file. On failure the key is deleted (best effort): a completion
    /// may have happened with only its answer lost, and the key is this upload's alone,
    /// so deleting it touches nothing else; what is left, recovery removes once old.
    fn complete(&mut self) -> io::Result<()> {
        let result = self.try_complete();
        if result.is_err() {
            let shared = &self.shared;
            if let Err(error) = shared.run(shared.delete_quietly(&self.key)) {
                tracing::warn!(%error, key = %self.key, "cannot delete an upload that failed to complete (recovery removes it)");
            }
        }
        result
    }

    fn try_complete(&mut self) -> io::Result<()> {
        if self.upload.is_none() {
            let data = PutPayload::from(std::mem::take(&mut self.buffer));
            let shared = &self.shared;
            shared.run(shared.s3.put(&self.key, data))?;
            return Ok(());
        }
        if !self.buffer.is_empty() {
            self.send_part()?;
        }
        self.mark_for_completion()?;
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
    pub(super) fn unmark(shared: &Shared, marker: &Key) {
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
    fn path(&self) -> &str {
        &self.rel_path
    }

    fn write_all(&mut self, mut bytes: &[u8]) -> io::Result<()> {
        while !bytes.is_empty() {
            let room = PART_SIZE.saturating_sub(self.buffer.len());
            let (now, later) = bytes.split_at(room.min(bytes.len()));
            // The first part grows as Vec does (doubling), so that a small file holds a
            // small buffer; once a part has gone, the file is large and each further
            // part takes a whole part buffer from the pool (parts.rs).
            let needed = self.buffer.len() + now.len();
            if needed > self.buffer.capacity() {
                if self.upload.is_some() && self.buffer.is_empty() {
                    self.buffer = self.shared.parts.take();
                } else {
                    let want = needed.max(self.buffer.capacity() * 2).min(PART_SIZE);
                    self.buffer.reserve_exact(want - self.buffer.len());
                }
            }
            self.buffer.extend_from_slice(now);
            bytes = later;
            if self.buffer.len() >= PART_SIZE {
                self.send_part()?;
            }
        }
        Ok(())
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
        // The key is new: nothing is replaced, so nothing needs keeping for an undo.
        let marker = self.upload.as_ref().map(|_| self.marker.clone());
        self.complete()?;
        Ok(Box::new(S3Persisted {
            shared: Arc::clone(&self.shared),
            key: self.key.clone(),
            rel_path: std::mem::take(&mut self.rel_path),
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
                // From here the marker only ages: kept if the abort fails, recovery
                // aborts the upload once the marker is old.
                upload.keeper.stop().await;
                match s3.abort_multipart(&key, &upload.id).await {
                    // NoSuchUpload: nothing left to abort (a completion whose answer was
                    // lost did complete): the marker has nothing more to protect.
                    Ok(()) | Err(object_store::Error::NotFound { .. }) => {}
                    // Kept with its marker: recovery aborts it later.
                    Err(error) => return Err(error),
                }
                delete_quietly(&s3, &marker).await
            });
    }
}

#[cfg(test)]
mod tests {
    use super::marker_rewrite_interval;
    use std::time::Duration;

    /// A server with a long upload time-out still rewrites its markers often enough for
    /// servers on the default grace period (15 min), which take a marker older than twice
    /// theirs for an abandoned upload.
    #[test]
    fn markers_are_rewritten_within_the_default_grace_period() {
        assert_eq!(
            marker_rewrite_interval(Duration::from_secs(2 * 3600)),
            Duration::from_secs(225)
        );
        assert_eq!(
            marker_rewrite_interval(Duration::from_secs(15 * 60)),
            Duration::from_secs(225)
        );
        assert_eq!(
            marker_rewrite_interval(Duration::from_secs(4)),
            Duration::from_secs(1)
        );
        assert_eq!(
            marker_rewrite_interval(Duration::ZERO),
            Duration::from_millis(10)
        );
    }
}
