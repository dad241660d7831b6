//! Recovery on shared storage (at start-up, and while serving with PostgreSQL): abandoned multipart uploads (found through their
//! markers), old backups, and the stored objects recovery may judge (see the module docs
//! of `storage::s3`).

use super::{s3_err, Shared, UPLOADS_DIR};
use crate::storage::fs::FILES_DIR;
use crate::storage::names::is_temp_name;
use object_store::multipart::MultipartStore;
use object_store::ObjectStore;
use sfc_proto::ClientId;
use std::collections::HashSet;
use std::io;

/// The most bytes a marker holds: an upload ID (AWS's are about 150 characters). A larger
/// object under `uploads/` is none of this server's markers, and is never read whole into
/// memory.
const MAX_MARKER_LEN: u64 = 4096;

impl Shared {
    /// Aborts abandoned multipart uploads (deleting their markers) and deletes old
    /// backups; returns how many it removed.
    pub(super) fn remove_stale_temps(&self) -> io::Result<usize> {
        let shared = self;
        let mut removed = 0;
        let abandoned = shared.list_kept(UPLOADS_DIR, |marker| {
            Some(marker).filter(|marker| shared.is_abandoned(marker))
        })?;
        for marker in abandoned {
            if marker.size > MAX_MARKER_LEN {
                tracing::warn!(
                    object = %marker.location,
                    size = marker.size,
                    "an object under uploads/ too large to be an upload marker is left alone"
                );
                continue;
            }
            let Some((hex, name)) = shared.rel(&marker.location).and_then(marker_target) else {
                continue;
            };
            let key = shared.key(&format!("{FILES_DIR}/{hex}/{name}"))?;
            let aborted = shared.run(async {
                let got = match shared.s3.get(&marker.location).await {
                    Ok(got) => got,
                    // Another server starting at the same time took it first.
                    Err(object_store::Error::NotFound { .. }) => return Ok(false),
                    Err(error) => return Err(error),
                };
                // Rewritten since the listing (a live upload's keeper, or its completion
                // about to commit): not abandoned after all.
                if !shared.is_abandoned(&got.meta) || got.meta.size > MAX_MARKER_LEN {
                    return Ok(false);
                }
                let id = got.bytes().await?;
                let id = String::from_utf8_lossy(&id).into_owned();
                match shared.s3.abort_multipart(&key, &id).await {
                    // Already completed or aborted: only the marker is left.
                    Ok(()) | Err(object_store::Error::NotFound { .. }) => {}
                    Err(error) => {
                        // The marker is the upload's only record (uploads cannot be
                        // listed): kept, the next pass (a start, or a running
                        // node's clean-up) tries again.
                        tracing::warn!(
                            marker = %marker.location,
                            error = %s3_err(error),
                            "could not abort an abandoned multipart upload; its parts stay \
                             stored until a later pass aborts it (or the bucket's \
                             lifecycle rule does)"
                        );
                        return Ok(false);
                    }
                }
                shared.delete_quietly(&marker.location).await.map(|()| true)
            });
            // One marker that cannot be read or deleted (a 403, a store failing for a
            // while) is left for a later pass; the others, and the rest of recovery, go on.
            match aborted {
                Ok(aborted) => removed += usize::from(aborted),
                Err(error) => tracing::warn!(
                    marker = %marker.location,
                    %error,
                    "cannot clear an abandoned upload's marker; a later pass tries again"
                ),
            }
        }
        let old_backups = shared.list_kept(FILES_DIR, |object| {
            let is_backup = object.location.filename().is_some_and(is_temp_name);
            (is_backup && shared.is_old(&object)).then_some(object.location)
        })?;
        for backup in old_backups {
            match shared.run(shared.delete_quietly(&backup)) {
                Ok(()) => removed += 1,
                Err(error) => tracing::warn!(
                    object = %backup,
                    %error,
                    "cannot delete an old backup; a later pass tries again"
                ),
            }
        }
        Ok(removed)
    }

    /// Stored objects that recovery may judge: old enough and named by no live marker.
    pub(super) fn stored_paths(&self) -> io::Result<Vec<String>> {
        let shared = self;
        // Markers first: an upload that starts after this listing makes a young object.
        let protected: HashSet<(String, String)> = shared
            .list_kept(UPLOADS_DIR, |marker| {
                if shared.is_abandoned(&marker) {
                    return None;
                }
                let (hex, name) = shared.rel(&marker.location).and_then(marker_target)?;
                Some((hex.to_owned(), name.to_owned()))
            })?
            .into_iter()
            .collect();
        let mut paths = shared.list_kept(FILES_DIR, |object| {
            let rel = shared.rel(&object.location)?;
            let mut parts = rel.split('/');
            let (Some(_), Some(hex), Some(name), None) =
                (parts.next(), parts.next(), parts.next(), parts.next())
            else {
                return None;
            };
            let ours = ClientId::from_hex(hex).is_ok_and(|id| id.to_hex() == hex);
            if !ours || is_temp_name(name) || !shared.is_old(&object) {
                return None;
            }
            if protected.contains(&(hex.to_owned(), name.to_owned())) {
                return None;
            }
            Some(rel.to_owned())
        })?;
        paths.sort();
        Ok(paths)
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
