//! The durability protocol: a finished upload is checked, moved into place and
//! recorded so that nothing already stored is lost and every row names a complete file.

use super::error::FinishError;
use super::uploads::Upload;
use super::{Core, Ctx, Outcome};
use crate::storage::{FileRecord, MetaStore, StoreError};
use sfc_proto::{ClientId, Response};

/// "stored as PATH: SIZE bytes in SECS s (RATE)": the whole file's size, the time since
/// its packet 1 and the rate.
fn stored_line(path: &str, size: u32, took: std::time::Duration) -> String {
    let secs = took.as_secs_f64();
    let rate = if secs > 0.0 {
        let mib = f64::from(size) / secs / f64::from(1u32 << 20);
        format!("{mib:.1} MiB/s")
    } else {
        "-".into()
    };
    format!("stored as {path}: {size} bytes in {secs:.2} s ({rate})")
}

impl Core {
    pub(super) fn finish(&self, ctx: &Ctx, upload: Box<Upload>) -> Outcome {
        let Upload {
            client_id,
            token,
            file_name,
            orig_file_size,
            encrypted_size,
            received,
            mut plaintext,
            decryptor,
            mut cksum,
            temp,
            mut batch,
            filled,
            started,
            behind,
            ..
        } = *upload;
        batch.truncate(filled);
        let result = (|| -> Result<(u32, String), FinishError> {
            if received != encrypted_size {
                return Err(FinishError::WrongLength {
                    received,
                    orig: orig_file_size,
                    encrypted: encrypted_size,
                });
            }
            let start = batch.len();
            decryptor
                .finish(&mut batch)
                .map_err(FinishError::Decryption)?;
            let tail = batch.get(start..).unwrap_or_default();
            cksum.update(tail);
            plaintext += tail.len() as u64;
            if plaintext != u64::from(orig_file_size) {
                return Err(FinishError::PlaintextLength {
                    plaintext,
                    orig: orig_file_size,
                });
            }
            // `end_packet` waited for the write in flight: the file is back.
            let mut temp = temp
                .ok_or_else(super::uploads::temp_lost)
                .map_err(FinishError::Write)?;
            temp.write_all(&batch).map_err(FinishError::Write)?;
            // Not while a removal of this name runs (see `NameLocks`).
            let _name = self.names.lock(client_id, file_name.as_str());
            let path = self.store_upload(ctx, client_id, file_name.as_str(), temp)?;
            Ok((cksum.finish(), path))
        })();
        self.registry.release(&client_id, token);
        // Batch and spare go back to the pool here, as they are dropped.
        drop((batch, behind));
        match result {
            Ok((crc, path)) => Outcome::reply(Response::FileReceived {
                client_id,
                content_size: u32::try_from(received).unwrap_or(u32::MAX),
                file_name,
                cksum: crc,
            })
            .with_detail(stored_line(
                &path,
                orig_file_size,
                ctx.at.saturating_duration_since(started),
            )),
            Err(reason) if reason.is_storage() => {
                Outcome::storage_error(format!("upload abandoned: {reason}"))
            }
            Err(reason) => Outcome::error(format!("upload abandoned: {reason}")),
        }
    }

    /// Moves a complete upload into place and records it so that nothing already stored
    /// is lost and every row always names a complete file:
    ///
    /// 1. an existing verified row whose file the new version is about to replace in
    ///    place (the local folder: one path per label) is first committed as unverified
    ///    (it is about to name content the client has not confirmed). A store that writes
    ///    every upload to a path of its own (S3) leaves the row true until step 3
    ///    replaces it, so it is left alone;
    /// 2. the file is moved into place, keeping the version it replaces in place
    ///    ([`crate::storage::TempBlob::persist_undoable`]); if that fails, a row step 1
    ///    changed is restored (its file is untouched) and the client gets 1607; unless
    ///    the new version was left in place ([`crate::storage::LeftInPlace`]: the move
    ///    could be neither made durable nor undone), when the row stays unverified;
    /// 3. the row is committed with Verified = 0. If that fails, the database is asked
    ///    whether the commit happened after all (only its answer lost): if so, the
    ///    upload is stored. Otherwise the move is undone (the replaced version put back,
    ///    or the new file removed) and a row step 1 changed restored (only if the undo
    ///    worked) as far as the database allows, unless the database cannot answer and
    ///    no earlier row names the new path: then the file stays, since a committed row
    ///    may name it. The client gets 1607;
    /// 4. the file the replaced row named, if it was at another path, is removed: the
    ///    path the commit reports, which is another server's version when one replaced
    ///    the row since it was read here.
    ///
    /// A crash between any two steps leaves every row naming a complete file (the old or
    /// the new version; unverified if it changed) and at worst a complete file without a
    /// row: a new file's, or in S3 the new version (before the commit) or the replaced one
    /// (after it), which start-up recovery removes. The kept version is a temporary file,
    /// removed at start-up.
    fn store_upload(
        &self,
        ctx: &Ctx,
        client_id: ClientId,
        file_name: &str,
        temp: Box<dyn crate::storage::TempBlob>,
    ) -> Result<String, FinishError> {
        let existing = self
            .meta
            .file(&client_id, file_name)
            .map_err(FinishError::Lookup)?;
        // The verified row step 1 makes unverified, to restore if the version stays.
        let unverified = existing
            .as_ref()
            .filter(|old| old.verified && old.path == temp.path());
        if let Some(old) = unverified {
            let row = FileRecord {
                verified: false,
                ..old.clone()
            };
            self.meta
                .put_file(&row, ctx.now)
                .map_err(FinishError::Record)?;
        }
        let persisted = match temp.persist_undoable() {
            Ok(persisted) => persisted,
            Err(error) => {
                // The stored version is untouched, so as verified as before; unless the
                // new one was left in place (the row stays unverified, as it now is).
                if !crate::storage::left_in_place(&error) {
                    self.restore_verified(unverified, ctx);
                }
                return Err(FinishError::Store(error));
            }
        };
        let record = FileRecord {
            client_id,
            file_name: file_name.to_owned(),
            path: persisted.path().to_owned(),
            verified: false,
        };
        let replaced = match self.meta.put_file(&record, ctx.now) {
            Ok(replaced) => replaced,
            Err(error) => {
                // The row as it was before this commit.
                let before = existing.as_ref().map(|old| FileRecord {
                    verified: old.verified && unverified.is_none(),
                    ..old.clone()
                });
                // A failed commit may have happened, only its answer lost (a connection
                // to PostgreSQL that broke after COMMIT): ask before undoing. Unless the
                // store says it cannot be known yet (a commit still waiting, say): what
                // the row shows now does not settle it, as when it cannot be read.
                let row_now = if matches!(error, StoreError::Uncertain(_)) {
                    Err(())
                } else {
                    self.meta.file(&client_id, file_name).map_err(drop)
                };
                match row_now {
                    Ok(row)
                        if row.as_ref() == Some(&record) && before.as_ref() != Some(&record) =>
                    {
                        tracing::warn!(%error, path = %record.path, "the commit reported as failed had happened: the file is stored");
                        // What it replaced is unknown: the row read before is the best guess.
                        existing.as_ref().map(|old| old.path.clone())
                    }
                    Err(_) if before.as_ref().is_none_or(|old| old.path != record.path) => {
                        // Undoing could remove the file a committed row names; leaving it
                        // costs at most an unrecorded file, which start-up removes (unless
                        // it finds more than a crash leaves: then it costs its space).
                        drop(persisted);
                        return Err(FinishError::RecordUncertain { error });
                    }
                    _ => {
                        let undo = persisted.undo();
                        // Not undone: the file holds the new, unconfirmed version.
                        if undo.is_ok() {
                            self.restore_verified(unverified, ctx);
                        }
                        return Err(FinishError::RecordAfterMove { error, undo });
                    }
                }
            }
        };
        if let Err(error) = persisted.keep() {
            tracing::warn!(path = %record.path, %error, "cannot remove the replaced version (removed at next start-up)");
        }
        if let Some(old_path) = replaced.filter(|old_path| *old_path != record.path) {
            if let Err(error) = self.remove_unnamed(&client_id, file_name, &old_path) {
                tracing::warn!(path = %old_path, %error, "cannot remove the file's earlier path (retried later)");
            }
        }
        Ok(record.path)
    }

    /// Puts back the verified row that step 1 committed as unverified, when its file was
    /// not replaced after all. Best effort: the store has just failed.
    fn restore_verified(&self, unverified: Option<&FileRecord>, ctx: &Ctx) {
        if let Some(old) = unverified {
            let _ = self.meta.put_file(old, ctx.now);
        }
    }
}
