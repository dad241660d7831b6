//! The shared [`Core`]: the stores, the upload registry, LastSeen notes, and the
//! handlers of the requests that are not file packets.

use super::changes::CountingChanges;
use super::name_locks::{KeyLocks, NameLocks};
use super::uploads::{BatchBudget, Progress, Registry};
use super::{Ctx, Entropy, Limits, Outcome};
use crate::storage::fs::DataDirLock;
use crate::storage::{BlobStore, ClientRecord, Inserted, MetaStore, StoreError, Timestamp};
use sfc_crypto::PublicKey;
use sfc_proto::{
    ClientId, DecodeError, Name, Request, RequestBody, RequestCode, RequestHeader, Response,
};
use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Instant;
use zeroize::Zeroizing;

/// The server's protocol logic and shared state; see the module documentation.
#[derive(Debug)]
pub struct Core {
    pub(super) meta: CountingChanges,
    pub(super) blobs: Box<dyn BlobStore>,
    pub(super) registry: Arc<Registry>,
    pub(super) seen: Mutex<HashMap<ClientId, Timestamp>>,
    /// File names being stored or removed (see [`NameLocks`]).
    pub(super) names: NameLocks,
    /// Stored files whose removal failed, for a retry.
    pub(super) removals: super::removals::PendingRemovals,
    pub(super) limits: Limits,
    /// Client IDs and AES keys.
    pub(super) entropy: Box<dyn Entropy>,
    /// Serialises each client's 826s, so that its key-pinning check and key store are one
    /// step (other clients' 826s do not wait).
    pub(super) pins: KeyLocks<ClientId>,
    /// The data folder's lock, released when the last handle on the core goes: a storage
    /// job that outlives the shutdown's grace period (a file being moved into place, its
    /// row committed or undone) holds the core, so no second server takes the folder and
    /// cleans it up under that job. Last, so it goes after the stores are dropped.
    folder_lock: Option<DataDirLock>,
}

/// What [`Core::admin_remove_client`] or [`Core::admin_remove_file`] did.
#[derive(Debug)]
pub enum Removal<T> {
    /// Removed: the client's files, or the file.
    Removed(T),
    /// There is no such client, or no such file.
    NotFound,
    /// A packet of the client's upload is being received or stored; nothing was changed.
    Busy,
}

/// A client record whose AES key bytes are wiped when it is dropped.
type Wiped = Zeroizing<ClientRecord>;

fn store_error(what: &str, error: StoreError) -> Outcome {
    Outcome::storage_error(format!("{what}: {error}"))
}

/// How long closing waits for the blob store's background work (the aborts of the
/// uploads cut by the shutdown).
const BLOBS_CLOSE_WAIT: std::time::Duration = std::time::Duration::from_secs(10);

impl Core {
    /// A core over the given stores, making client IDs and AES keys with `entropy`.
    pub fn new(
        meta: Box<dyn MetaStore>,
        blobs: Box<dyn BlobStore>,
        limits: Limits,
        entropy: Box<dyn Entropy>,
    ) -> Self {
        Core {
            entropy,
            meta: CountingChanges::new(meta),
            blobs,
            registry: Arc::new(Registry {
                budget: BatchBudget {
                    limit: limits.batch_budget,
                    ..BatchBudget::default()
                },
                max_uploads: limits.max_uploads,
                max_uploads_per_address: limits.max_uploads_per_address,
                ..Registry::default()
            }),
            seen: Mutex::default(),
            names: NameLocks::default(),
            removals: Default::default(),
            pins: KeyLocks::default(),
            limits,
            folder_lock: None,
        }
    }

    /// Holds `lock` for as long as the core lives (see `folder_lock`).
    pub fn holding_folder(mut self, lock: Option<DataDirLock>) -> Self {
        self.folder_lock = lock;
        self
    }

    #[cfg(any(test, feature = "testing"))]
    /// The metadata store.
    pub fn meta(&self) -> &dyn MetaStore {
        &self.meta
    }

    #[cfg(any(test, feature = "testing"))]
    /// The blob store.
    pub fn blobs(&self) -> &dyn BlobStore {
        self.blobs.as_ref()
    }

    #[cfg(any(test, feature = "testing"))]
    /// Bytes of batch buffers the uploads in progress hold ([`Limits::batch_budget`]).
    pub fn batch_bytes(&self) -> usize {
        self.registry
            .budget
            .in_use
            .load(std::sync::atomic::Ordering::Acquire)
    }

    #[cfg(any(test, feature = "testing"))]
    /// Batch buffers kept for the next uploads ([`super::uploads::POOLED_BATCHES`]).
    pub fn pooled_batches(&self) -> usize {
        self.registry.pooled.len()
    }

    #[cfg(any(test, feature = "testing"))]
    /// Number of uploads in progress (parked or checked out).
    pub fn uploads_in_progress(&self) -> usize {
        self.registry.count()
    }

    /// Notes a request of a known client for `LastSeen` (persisted by
    /// [`Core::flush_last_seen`]).
    pub fn touch(&self, id: ClientId, now: Timestamp) {
        let mut seen = self.seen.lock().unwrap_or_else(PoisonError::into_inner);
        let entry = seen.entry(id).or_insert(now);
        *entry = (*entry).max(now);
    }

    /// Persists the LastSeen times noted in memory, in one transaction.
    pub fn flush_last_seen(&self) -> Result<usize, StoreError> {
        let pending: Vec<(ClientId, Timestamp)> = {
            let mut seen = self.seen.lock().unwrap_or_else(PoisonError::into_inner);
            seen.drain().collect()
        };
        if pending.is_empty() {
            return Ok(0);
        }
        match self.meta.touch(&pending) {
            Ok(()) => Ok(pending.len()),
            Err(error) => {
                // Keep them for the next attempt.
                for (id, now) in pending {
                    self.touch(id, now);
                }
                Err(error)
            }
        }
    }

    /// The limits this core enforces.
    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    /// Abandons parked uploads idle for longer than the upload timeout at `now`; returns
    /// how many.
    pub fn expire_uploads(&self, now: Instant) -> usize {
        let expired = self.registry.expire(now, self.limits.upload_timeout);
        let count = expired.len();
        for upload in expired {
            tracing::info!(client = %upload.client_id.short(), file = upload.file_name.as_str(), "upload abandoned: no packet within the upload timeout");
        }
        count
    }

    /// Drops the client's parked upload if it is still the one with this serial (blocking:
    /// removes its temporary file); returns its file name.
    pub(super) fn drop_parked(&self, id: &ClientId, serial: u64) -> Option<Name> {
        let upload = self.registry.remove_parked_serial(id, serial)?;
        Some(upload.file_name.clone())
    }

    /// Every upload in progress (client, file, packets received of total, parked or
    /// receiving a packet), for the shutdown's log.
    pub fn uploads_in_progress_now(&self) -> Vec<(ClientId, Progress)> {
        let mut uploads = self.registry.in_progress();
        uploads.sort_by_key(|(id, _)| *id.as_bytes());
        uploads
    }

    /// Flushes LastSeen, drops parked uploads, lets the blob store finish aborting them,
    /// and closes the metadata store.
    pub fn close(&self) -> Result<(), StoreError> {
        let flushed = self.flush_last_seen();
        drop(self.registry.drain_parked());
        // The uploads just dropped (and those of the connections closed before) abort
        // their multipart uploads in the background: let that finish.
        if !self.blobs.close(BLOBS_CLOSE_WAIT) {
            tracing::warn!(
                wait_secs = BLOBS_CLOSE_WAIT.as_secs(),
                "the store did not finish aborting the uploads cut by the shutdown; their \
                 parts stay until a later recovery removes them"
            );
        }
        let closed = self.meta.close();
        flushed.and(closed)
    }

    // ----- the operator's actions (admin HTTP) -----------------------------------------

    /// The metadata store, for the admin's read-only views.
    pub fn meta_store(&self) -> &dyn MetaStore {
        &self.meta
    }

    /// How many changes to the tables this server has made (or attempted) so far: a
    /// view computed when it was `n` is current if it still is (changes made by other
    /// servers on a shared database aside).
    pub fn changes(&self) -> u64 {
        self.meta.count()
    }

    /// The blob store, for the admin's read-only views and downloads.
    pub fn blob_store(&self) -> &dyn BlobStore {
        self.blobs.as_ref()
    }

    /// Deletes one stored file (the row first, then the file, as for a 902), holding its
    /// name so that no upload of the same name is stored in between (which this would
    /// then delete). An upload in progress is left alone: if it finishes, the client has
    /// sent the file again. `NotFound`: no such file. The client's `LastSeen` stays: it
    /// did nothing.
    pub fn admin_remove_file(
        &self,
        id: &ClientId,
        file_name: &str,
    ) -> Result<Removal<crate::storage::FileRecord>, StoreError> {
        let _name = self.names.lock(*id, file_name);
        let Some(removed) = self.remove_row(id, file_name, None)? else {
            return Ok(Removal::NotFound);
        };
        self.remove_unnamed(id, file_name, &removed.path)?;
        Ok(Removal::Removed(removed))
    }

    /// Removes a client, its rows and its stored files, so that its name can be
    /// registered again; abandons its parked upload. Refused (`Busy`) while one of its
    /// packets is being received or stored, and its slot held until done: an upload
    /// would otherwise finish into a client that no longer exists.
    pub fn admin_remove_client(
        &self,
        id: &ClientId,
    ) -> Result<Removal<Vec<crate::storage::FileRecord>>, StoreError> {
        let Some((_hold, parked)) = self.registry.hold_for_removal(id) else {
            return Ok(Removal::Busy);
        };
        // Abandoned now: its temporary file goes before the client's folder does.
        drop(parked);
        self.seen
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(id);
        let Some(files) = self.remove_client_rows(id)? else {
            return Ok(Removal::NotFound);
        };
        // Every file is tried (a failure is kept for housekeeping's retry); the first
        // failure is reported. The removals done are forgotten in one commit.
        let mut failed = Ok(());
        let mut done = Vec::new();
        for file in &files {
            match self.remove_stored(id, &file.file_name, &file.path) {
                Ok(()) => done.push(file.path.clone()),
                Err(error) => failed = failed.and(Err(error)),
            }
        }
        self.forget_removals(&done);
        failed?;
        self.blobs.remove_client(id)?;
        Ok(Removal::Removed(files))
    }

    // ----- whole requests -------------------------------------------------------------

    /// Handles a whole request of any code. An 828 given whole (with its content in
    /// memory) goes through the same streaming path as on a connection.
    pub fn handle_request(&self, ctx: &Ctx, request: Request) -> Outcome {
        let id = request.client_id;
        match request.body {
            RequestBody::Register { name } => self.register(ctx, &name),
            RequestBody::SendPublicKey { name, public_key } => {
                self.send_public_key(ctx, id, &name, &public_key)
            }
            RequestBody::Reconnect { name } => self.reconnect(ctx, id, &name),
            RequestBody::SendFile { packet, content } => {
                self.whole_packet(ctx, id, request.version, &packet, &content)
            }
            RequestBody::ChecksumOk { file_name } => self.checksum_ok(ctx, id, &file_name),
            RequestBody::ChecksumRetry { file_name } => self.checksum_retry(ctx, id, &file_name),
            RequestBody::ChecksumFailed { file_name } => self.checksum_failed(ctx, id, &file_name),
        }
    }

    /// Handles a request whose framing was fine but whose payload was not
    /// ([`sfc_proto::RequestEvent::Invalid`]). An invalid 825 name gets 1601; an invalid
    /// 828 abandons the client's parked upload; everything else gets 1607.
    pub fn handle_invalid(&self, header: &RequestHeader, error: &DecodeError) -> Outcome {
        match header.code {
            RequestCode::Register => Outcome::reply(Response::RegistrationFailed)
                .with_detail(format!("invalid registration: {error}")),
            RequestCode::SendFile => {
                let abandoned = self.registry.remove_parked(&header.client_id).is_some();
                let note = if abandoned { ", upload abandoned" } else { "" };
                // DecodeError::Packet says "invalid file packet" itself.
                let reason = match error {
                    DecodeError::Packet(reason) => reason.to_string(),
                    other => other.to_string(),
                };
                Outcome::error(format!("invalid file packet{note}: {reason}"))
            }
            _ => Outcome::error(format!("invalid request: {error}")),
        }
    }

    fn register(&self, ctx: &Ctx, name: &Name) -> Outcome {
        let id = self.entropy.client_id();
        match self.meta.insert_client(&id, name.as_str(), ctx.now) {
            Ok(Inserted::Ok) => Outcome::reply(Response::Registered { client_id: id }),
            Ok(Inserted::NameTaken) => Outcome::reply(Response::RegistrationFailed)
                .with_detail(format!("name \"{name}\" is taken")),
            Err(error) => store_error("cannot register", error),
        }
    }

    pub(super) fn known_client(&self, id: ClientId) -> Result<Wiped, Outcome> {
        match self.meta.client(&id) {
            Ok(Some(record)) => Ok(Zeroizing::new(record)),
            Ok(None) => Err(Outcome::error(format!("unknown client {id}"))),
            Err(error) => Err(store_error("cannot look up the client", error)),
        }
    }

    /// Handles an 826. Key pinning: once a client has a public key on record, only that key is
    /// accepted again (the same key: a fresh AES key, as always); a different key is
    /// refused with 1607 and logged, so that someone who learnt the client ID (it travels
    /// in clear) cannot replace the key and receive the client's next AES keys.
    fn send_public_key(&self, ctx: &Ctx, id: ClientId, name: &Name, der: &[u8]) -> Outcome {
        let _pinning = self.pins.lock_key(id);
        let record = match self.known_client(id) {
            Ok(record) => record,
            Err(outcome) => return outcome,
        };
        if record.name != name.as_str() {
            return Outcome::error(format!(
                "name \"{name}\" does not match the client's registered name"
            ));
        }
        let key = match PublicKey::from_spki_der(der) {
            Ok(key) => key,
            Err(error) => return Outcome::error(format!("unusable public key: {error}")),
        };
        if let Some(pinned) = record.public_key.as_deref() {
            let same =
                PublicKey::from_spki_der(pinned).is_ok_and(|p| p.spki_der() == key.spki_der());
            if !same {
                tracing::warn!(
                    client = %id.short(),
                    name = name.as_str(),
                    "826 refused: a public key other than the one on record (key pinning)"
                );
                return Outcome::error(
                    "public key refused: the client has another key on record (key pinning); \
                     a new key needs a new registration",
                );
            }
        }
        // The key on record stays as it came the first time (rule S6); the same key sent
        // again (perhaps zero-padded) only gets a new AES key. The store pins it too.
        let store = record.public_key.is_none().then_some(der);
        self.issue_key(ctx, id, &key, store, |client_id, wrapped_key| {
            Response::PublicKeyAccepted {
                client_id,
                wrapped_key,
            }
        })
    }

    fn issue_key(
        &self,
        ctx: &Ctx,
        id: ClientId,
        key: &PublicKey,
        store_public_key: Option<&[u8]>,
        reply: impl FnOnce(ClientId, Vec<u8>) -> Response,
    ) -> Outcome {
        let aes = self.entropy.aes_key();
        let wrapped = match key.wrap_aes_key(&aes) {
            Ok(wrapped) => wrapped,
            Err(error) => return Outcome::error(format!("cannot wrap the AES key: {error}")),
        };
        if let Err(error) = self
            .meta
            .set_keys(&id, store_public_key, aes.as_bytes(), ctx.now)
        {
            return store_error("cannot store the keys", error);
        }
        // The new AES key ends what the client left unfinished: it can never complete.
        self.drop_unfinished(&id, "the client exchanged a new key");
        Outcome::reply(reply(id, wrapped))
    }

    fn reconnect(&self, ctx: &Ctx, id: ClientId, name: &Name) -> Outcome {
        let reject = |why: String| {
            Outcome::reply(Response::ReconnectRejected {
                client_id: Some(id),
            })
            .with_detail(why)
        };
        let record = match self.meta.client(&id) {
            Ok(Some(record)) => Zeroizing::new(record),
            Ok(None) => return reject(format!("unknown client {id}")),
            Err(error) => return store_error("cannot look up the client", error),
        };
        if record.name != name.as_str() {
            return reject(format!(
                "name \"{name}\" does not match the client's registered name"
            ));
        }
        let Some(der) = record.public_key.as_deref() else {
            return reject("no public key on record".into());
        };
        let key = match PublicKey::from_spki_der(der) {
            Ok(key) => key,
            Err(error) => return reject(format!("the public key on record is unusable: {error}")),
        };
        self.issue_key(ctx, id, &key, None, |client_id, wrapped_key| {
            Response::ReconnectAccepted {
                client_id,
                wrapped_key,
            }
        })
    }

    fn checksum_ok(&self, ctx: &Ctx, id: ClientId, file_name: &Name) -> Outcome {
        if let Err(outcome) = self.known_client(id) {
            return outcome;
        }
        match self.meta.set_verified(&id, file_name.as_str(), ctx.now) {
            Ok(true) => Outcome::reply(Response::Ack {
                client_id: Some(id),
            }),
            Ok(false) => Outcome::error(format!("no stored file \"{file_name}\" to mark verified")),
            Err(error) => store_error("cannot mark the file verified", error),
        }
    }

    fn checksum_retry(&self, ctx: &Ctx, id: ClientId, file_name: &Name) -> Outcome {
        if let Err(outcome) = self.known_client(id) {
            return outcome;
        }
        self.touch(id, ctx.now);
        // The file stays, unverified, until the resend replaces it.
        let _ = file_name;
        if ctx.first_on_connection {
            Outcome::reply(Response::Ack {
                client_id: Some(id),
            })
        } else {
            Outcome::silent()
        }
    }

    fn checksum_failed(&self, ctx: &Ctx, id: ClientId, file_name: &Name) -> Outcome {
        if let Err(outcome) = self.known_client(id) {
            return outcome;
        }
        // As for the admin's delete: no upload of this name is stored between the
        // removal of the row and of the file.
        let _name = self.names.lock(id, file_name.as_str());
        let removed = match self.remove_row(&id, file_name.as_str(), Some(ctx.now)) {
            Ok(removed) => removed,
            Err(error) => return store_error("cannot remove the file record", error),
        };
        let ack = Outcome::reply(Response::Ack {
            client_id: Some(id),
        });
        match removed {
            // Row first, then the file: a crash in between leaves an orphan file, never a
            // row naming a missing file.
            Some(record) => match self.remove_unnamed(&id, &record.file_name, &record.path) {
                Ok(()) => ack,
                Err(error) => ack.with_detail(format!(
                    "row removed but the file {} could not be: {error}",
                    record.path
                )),
            },
            None => ack.with_detail(format!("no stored file \"{file_name}\"; nothing to remove")),
        }
    }
}
