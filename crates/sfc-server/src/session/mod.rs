//! The protocol logic: what the server answers to what, and its effects on storage.
//!
//! Plain synchronous functions over [`MetaStore`] and [`BlobStore`]; no sockets, no
//! async. [`crate::net::connection`] drives it from a TCP stream, and anything else (a fuzzer,
//! a unit test) can drive it with arbitrary request sequences through
//! [`Core::handle_request`], or piece by piece like a connection does.
//!
//! # State
//!
//! Everything that must outlive a connection is keyed by client ID, never by connection
//! (PROTOCOL.md server rule 1): client records and AES keys live in the metadata store;
//! the upload in progress lives in an in-memory registry, at most one per client.
//!
//! An upload ([`Upload`]: CBC decryptor, running cksum, temporary file, expected next
//! packet, totals, batch of decrypted bytes not yet written) is *parked* in the registry
//! between packets, and *checked out* as a [`Lease`] only by the connection that is
//! receiving one of its packets. Parking and checking out are a mutex operation, no I/O,
//! so a client may send each packet on whichever connection it likes. A packet for a
//! client whose upload is checked out by another connection (two packets at once) is
//! refused with 1607. A lease that is dropped without being parked or finished
//! (connection lost mid-packet, task aborted) abandons the upload: its registry slot is
//! freed and its temporary file removed. Parked uploads that see no packet for
//! [`Limits::upload_timeout`] expire ([`Core::expire_uploads`]).
//!
//! # Packets
//!
//! Packets must come in order 1..=N with constant `total_packets`, `orig_file_size` and
//! file name; each packet's `content_size` is either the whole encrypted size or its own
//! content length (checked by [`FilePacketHeader::check`]). Anything else abandons the
//! upload and answers 1607. Content is decrypted as it arrives (one CBC stream across
//! packets), checksummed, and collected in a batch of [`FLUSH_AT`] bytes before each
//! write, so memory per upload is bounded whatever the file or packet size. After the
//! last packet: total ciphertext = `16 * (orig_file_size / 16 + 1)`, valid padding,
//! plaintext length = `orig_file_size`; then fsync, rename, directory fsync, `files` row
//! committed with Verified = 0, and only then 1603.
//!
//! # Replies the specification leaves open (server rule 2)
//!
//! An intermediate packet is answered with a short 1603 and a 901 with 1604 only when
//! the request is the first on its connection ([`Ctx::first_on_connection`]).
//!
//! # LastSeen
//!
//! Requests that commit anyway (825, 826, 827, 900, 902, the last packet) advance
//! `LastSeen` in the same transaction. Others (901, intermediate packets) only note the
//! time in memory; [`Core::flush_last_seen`] persists those notes in one transaction
//! (the listener calls it periodically and at shutdown), so there is never a commit per
//! packet.

use crate::storage::names;
use crate::storage::{BlobStore, FileRecord, Inserted, MetaStore, StoreError, Timestamp};
use sfc_crypto::{AesKey, CbcDecryptor, Cksum, PublicKey};
use sfc_proto::{
    encrypted_size, limits, ClientId, DecodeError, FilePacketHeader, Name, Request, RequestBody,
    RequestCode, RequestHeader, Response,
};
use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

/// Plaintext collected before one write to the temporary file. Each write is one hop to
/// the blocking pool (two thread wake-ups); at 64 KiB those hops were the largest cost of
/// a large upload (see BENCHMARKS.md), at 1 MiB they are negligible.
pub const FLUSH_AT: usize = 1024 * 1024;
/// Capacity of the batch buffer: a little above [`FLUSH_AT`] so that decrypting never
/// reallocates it; smaller for a file whose rest is smaller ([`Lease::new`]).
const BATCH_CAPACITY: usize = FLUSH_AT + 64;
/// Room kept free in the batch for the decryptor's output beyond its input (at most
/// one held-back block).
const BATCH_SLACK: usize = 32;
/// Batch an upload always gets, whatever [`Limits::batch_budget`] has left: enough to
/// take a default 2,048-byte packet whole (more writes, same result).
pub const MIN_BATCH: usize = 16 * 1024;
/// Default of [`Limits::batch_budget`].
pub const DEFAULT_BATCH_BUDGET: usize = 256 << 20;

/// Limits the session enforces.
#[derive(Clone, Debug)]
pub struct Limits {
    /// Largest plaintext file accepted (`orig_file_size`), at most
    /// [`limits::MAX_ORIG_FILE_SIZE`].
    pub max_file_size: u64,
    /// A parked upload that receives no packet for this long is abandoned.
    pub upload_timeout: Duration,
    /// Bytes of batch buffers (decrypted content not yet written) all uploads may hold
    /// together. An upload parked between two packets keeps its batch, so without a
    /// bound many clients that each send a packet and stop could pin [`FLUSH_AT`] bytes
    /// apiece. Beyond it an upload gets [`MIN_BATCH`] bytes (more, smaller writes).
    pub batch_budget: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_file_size: u64::from(limits::MAX_ORIG_FILE_SIZE),
            upload_timeout: Duration::from_secs(600),
            batch_budget: DEFAULT_BATCH_BUDGET,
        }
    }
}

/// The bytes of batch buffers handed out, against [`Limits::batch_budget`].
#[derive(Debug, Default)]
struct BatchBudget {
    in_use: AtomicUsize,
    limit: usize,
}

impl BatchBudget {
    /// Grants up to `wanted` bytes (possibly 0) from what is left.
    fn grant(&self, wanted: usize) -> usize {
        let mut granted = 0;
        // `fetch_update` retries on contention; the closure never fails.
        let _ = self
            .in_use
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |in_use| {
                granted = wanted.min(self.limit.saturating_sub(in_use));
                Some(in_use + granted)
            });
        granted
    }

    /// Counts bytes handed out beyond the budget ([`MIN_BATCH`]).
    fn force(&self, bytes: usize) {
        self.in_use.fetch_add(bytes, Ordering::AcqRel);
    }

    fn give_back(&self, bytes: usize) {
        self.in_use.fetch_sub(bytes, Ordering::AcqRel);
    }
}

/// The part of the budget an upload's batch holds; returned when the upload ends
/// (dropped with it) or frees its batch.
struct BatchGrant {
    bytes: usize,
    registry: Arc<Registry>,
}

impl BatchGrant {
    fn release(&mut self) {
        self.registry
            .budget
            .give_back(std::mem::take(&mut self.bytes));
    }
}

impl Drop for BatchGrant {
    fn drop(&mut self) {
        self.release();
    }
}

/// What the session needs to know about the request besides its bytes.
#[derive(Clone, Copy, Debug)]
pub struct Ctx {
    /// This is the first request on its connection (server rule 2).
    pub first_on_connection: bool,
    /// When the request arrived.
    pub now: Timestamp,
}

/// The session's decision: the reply to send, if any, and why (for the log).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    /// The reply; `None` for requests answered with silence (rule 2).
    pub reply: Option<Response>,
    /// The reason for a refusal or an error, or a note worth logging.
    pub detail: Option<String>,
}

impl Outcome {
    fn reply(response: Response) -> Self {
        Outcome {
            reply: Some(response),
            detail: None,
        }
    }

    fn silent() -> Self {
        Outcome {
            reply: None,
            detail: None,
        }
    }

    /// A 1607 with its reason.
    pub fn error(detail: impl Into<String>) -> Self {
        Outcome {
            reply: Some(Response::ServerError),
            detail: Some(detail.into()),
        }
    }

    fn with_detail(mut self, detail: impl Into<String>) -> Self {
        self.detail = Some(detail.into());
        self
    }

    /// The reply's code, for the log.
    pub fn code(&self) -> Option<u16> {
        self.reply.as_ref().map(|r| r.code().as_u16())
    }
}

/// An upload in progress; see the module documentation.
pub struct Upload {
    client_id: ClientId,
    token: u64,
    file_name: Name,
    total_packets: u16,
    orig_file_size: u32,
    encrypted_size: u64,
    /// Number of the packet expected next (u32: may be total_packets + 1).
    next_packet: u32,
    /// Ciphertext bytes received so far, all packets.
    received: u64,
    /// Content bytes the current packet still has to deliver.
    packet_remaining: u64,
    /// Plaintext bytes produced so far.
    plaintext: u64,
    decryptor: CbcDecryptor,
    cksum: Cksum,
    temp: Box<dyn crate::storage::TempBlob>,
    /// `batch[..filled]`: decrypted bytes not yet written. The rest is scratch space that
    /// the decryptor writes into (`update_into`): zero-filled once when it grows, never
    /// again per packet. Freed between the packets of a connection-per-request client.
    batch: Vec<u8>,
    /// See `batch`.
    filled: usize,
    /// The batch's share of [`Limits::batch_budget`].
    grant: BatchGrant,
}

impl fmt::Debug for Upload {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Upload")
            .field("client_id", &self.client_id)
            .field("file_name", &self.file_name)
            .field("next_packet", &self.next_packet)
            .field("total_packets", &self.total_packets)
            .field("received", &self.received)
            .field("encrypted_size", &self.encrypted_size)
            .finish_non_exhaustive()
    }
}

enum Slot {
    Parked { upload: Box<Upload>, since: Instant },
    CheckedOut { token: u64 },
}

/// Uploads in progress, one per client ID.
#[derive(Default)]
struct Registry {
    slots: Mutex<HashMap<ClientId, Slot>>,
    next_token: AtomicU64,
    budget: BatchBudget,
}

impl fmt::Debug for Registry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Registry")
            .field("uploads", &self.lock().len())
            .finish()
    }
}

enum Checkout {
    Got(Box<Upload>),
    Busy,
    Vacant,
}

impl Registry {
    fn lock(&self) -> MutexGuard<'_, HashMap<ClientId, Slot>> {
        self.slots.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn token(&self) -> u64 {
        self.next_token.fetch_add(1, Ordering::Relaxed)
    }

    fn checkout(&self, id: &ClientId) -> Checkout {
        let mut slots = self.lock();
        match slots.get(id) {
            None => Checkout::Vacant,
            Some(Slot::CheckedOut { .. }) => Checkout::Busy,
            Some(Slot::Parked { .. }) => {
                let token = self.token();
                match slots.insert(*id, Slot::CheckedOut { token }) {
                    Some(Slot::Parked { mut upload, .. }) => {
                        upload.token = token;
                        Checkout::Got(upload)
                    }
                    // Unreachable in practice: the slot was Parked under the same lock.
                    _ => {
                        slots.remove(id);
                        Checkout::Vacant
                    }
                }
            }
        }
    }

    /// Claims a vacant slot for a new upload.
    fn claim(&self, id: &ClientId) -> Option<u64> {
        let mut slots = self.lock();
        if slots.contains_key(id) {
            return None;
        }
        let token = self.token();
        slots.insert(*id, Slot::CheckedOut { token });
        Some(token)
    }

    /// Frees the slot if it is still checked out with this token.
    fn release(&self, id: &ClientId, token: u64) {
        let mut slots = self.lock();
        if matches!(slots.get(id), Some(Slot::CheckedOut { token: t }) if *t == token) {
            slots.remove(id);
        }
    }

    /// Parks an upload in its slot; returns it if the slot is no longer its own.
    fn park(&self, upload: Box<Upload>) -> Result<(), Box<Upload>> {
        let mut slots = self.lock();
        let id = upload.client_id;
        if matches!(slots.get(&id), Some(Slot::CheckedOut { token }) if *token == upload.token) {
            slots.insert(
                id,
                Slot::Parked {
                    upload,
                    since: Instant::now(),
                },
            );
            Ok(())
        } else {
            Err(upload)
        }
    }

    fn remove_parked(&self, id: &ClientId) -> Option<Box<Upload>> {
        let mut slots = self.lock();
        if matches!(slots.get(id), Some(Slot::Parked { .. })) {
            if let Some(Slot::Parked { upload, .. }) = slots.remove(id) {
                return Some(upload);
            }
        }
        None
    }

    #[allow(clippy::vec_box)] // the uploads are boxed in the map already; no re-boxing
    fn expire(&self, older_than: Duration) -> Vec<Box<Upload>> {
        let mut slots = self.lock();
        let expired: Vec<ClientId> = slots
            .iter()
            .filter_map(|(id, slot)| match slot {
                Slot::Parked { since, .. } if since.elapsed() >= older_than => Some(*id),
                _ => None,
            })
            .collect();
        expired
            .iter()
            .filter_map(|id| match slots.remove(id) {
                Some(Slot::Parked { upload, .. }) => Some(upload),
                _ => None,
            })
            .collect()
    }

    #[allow(clippy::vec_box)]
    fn drain_parked(&self) -> Vec<Box<Upload>> {
        let mut slots = self.lock();
        let parked: Vec<ClientId> = slots
            .iter()
            .filter(|(_, slot)| matches!(slot, Slot::Parked { .. }))
            .map(|(id, _)| *id)
            .collect();
        parked
            .iter()
            .filter_map(|id| match slots.remove(id) {
                Some(Slot::Parked { upload, .. }) => Some(upload),
                _ => None,
            })
            .collect()
    }
}

/// An upload checked out by the connection receiving one of its packets.
///
/// Dropping a lease that was neither parked nor finished abandons the upload (slot freed,
/// temporary file removed).
pub struct Lease {
    upload: Option<Box<Upload>>,
    registry: Arc<Registry>,
}

impl fmt::Debug for Lease {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("Lease").field(&self.upload).finish()
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        if let Some(upload) = self.upload.take() {
            self.registry.release(&upload.client_id, upload.token);
        }
    }
}

/// Ciphertext bytes the batch can take now (see [`BATCH_SLACK`]).
fn upload_room(upload: &Upload) -> usize {
    upload
        .batch
        .capacity()
        .min(BATCH_CAPACITY)
        .saturating_sub(upload.filled + BATCH_SLACK)
}

impl Lease {
    fn new(mut upload: Box<Upload>, registry: Arc<Registry>) -> Self {
        // Never drops bytes: a parked batch keeps its content and capacity. No more than
        // the rest of the file needs, so small uploads hold small batches; no more than
        // the budget allows, beyond the floor of MIN_BATCH.
        let rest = upload.encrypted_size.saturating_sub(upload.received);
        let wanted = usize::try_from(rest)
            .unwrap_or(usize::MAX)
            .saturating_add(upload.filled + 2 * BATCH_SLACK)
            .min(BATCH_CAPACITY);
        let held = upload.grant.bytes;
        if wanted > held {
            let mut extra = registry.budget.grant(wanted - held);
            let floor = wanted.min(MIN_BATCH);
            if held + extra < floor {
                registry.budget.force(floor - held - extra);
                extra = floor - held;
            }
            upload.grant.bytes += extra;
        }
        let capacity = upload.grant.bytes.max(upload.batch.capacity());
        let len = upload.batch.len();
        upload.batch.reserve_exact(capacity.saturating_sub(len));
        Lease {
            upload: Some(upload),
            registry,
        }
    }

    /// The client whose upload this is.
    pub fn client_id(&self) -> Option<ClientId> {
        self.upload.as_ref().map(|u| u.client_id)
    }

    /// The current packet is the file's last one.
    pub fn is_last_packet(&self) -> bool {
        self.upload
            .as_ref()
            .is_some_and(|u| u.next_packet > u32::from(u.total_packets))
    }

    /// Content bytes the current packet still has to deliver.
    pub fn packet_remaining(&self) -> u64 {
        self.upload.as_ref().map_or(0, |u| u.packet_remaining)
    }

    /// Decrypts and checksums as much of `content` as the batch buffer holds; returns
    /// the bytes consumed. When it returns less than `content.len()`,
    /// [`Lease::needs_flush`] is true: call [`Lease::flush`] and go on.
    pub fn push(&mut self, content: &[u8]) -> Result<usize, String> {
        let upload = self
            .upload
            .as_mut()
            .ok_or_else(|| "upload already closed".to_string())?;
        if content.is_empty() {
            return Ok(0);
        }
        if upload.packet_remaining == 0 {
            return Err("more content than the packet announced".into());
        }
        // Room so that the decryptor's output (input + at most one held-back block)
        // never exceeds the buffer's capacity.
        let room = upload_room(upload);
        let take = content
            .len()
            .min(room)
            .min(usize::try_from(upload.packet_remaining).unwrap_or(usize::MAX));
        let input = content.get(..take).unwrap_or_default();
        let start = upload.filled;
        let end = start + take + BATCH_SLACK;
        if upload.batch.len() < end {
            // Within the reserved capacity: no reallocation, and only the new part is
            // zero-filled.
            upload.batch.resize(end, 0);
        }
        let out = upload.batch.get_mut(start..).unwrap_or_default();
        let written = upload
            .decryptor
            .update_into(input, out)
            .map_err(|e| format!("decryption failed: {e}"))?;
        let produced = upload.batch.get(start..start + written).unwrap_or_default();
        upload.cksum.update(produced);
        upload.filled += written;
        upload.plaintext += written as u64;
        upload.received += take as u64;
        upload.packet_remaining -= take as u64;
        Ok(take)
    }

    /// The batch is full enough to be written.
    pub fn needs_flush(&self) -> bool {
        self.upload
            .as_ref()
            .is_some_and(|u| u.filled >= FLUSH_AT || upload_room(u) == 0)
    }

    /// Writes the batch to the temporary file (blocking).
    pub fn flush(&mut self) -> std::io::Result<()> {
        match self.upload.as_mut() {
            Some(upload) => {
                if upload.filled > 0 {
                    let bytes = upload.batch.get(..upload.filled).unwrap_or_default();
                    upload.temp.write_all(bytes)?;
                    upload.filled = 0;
                }
                Ok(())
            }
            None => Ok(()),
        }
    }

    fn take(&mut self) -> Option<Box<Upload>> {
        self.upload.take()
    }
}

/// The server's protocol logic and shared state; see the module documentation.
#[derive(Debug)]
pub struct Core {
    meta: Box<dyn MetaStore>,
    blobs: Box<dyn BlobStore>,
    registry: Arc<Registry>,
    seen: Mutex<HashMap<ClientId, Timestamp>>,
    limits: Limits,
    /// Serialises 826s, so that the key-pinning check and the key store are one step.
    pin_lock: Mutex<()>,
}

/// A client record read from the metadata store whose AES key bytes are wiped
/// (zeroize) when it is dropped; read through `Deref`.
struct Wiped(crate::storage::ClientRecord);

impl Wiped {
    fn wipe(&mut self) {
        if let Some(key) = self.0.aes_key.as_mut() {
            zeroize::Zeroize::zeroize(key);
        }
    }
}

impl Drop for Wiped {
    fn drop(&mut self) {
        self.wipe();
    }
}

impl std::ops::Deref for Wiped {
    type Target = crate::storage::ClientRecord;

    fn deref(&self) -> &Self::Target {
        &self.0
    }
}

fn store_error(what: &str, error: StoreError) -> Outcome {
    Outcome::error(format!("{what}: {error}"))
}

impl Core {
    /// A core over the given stores.
    pub fn new(meta: Box<dyn MetaStore>, blobs: Box<dyn BlobStore>, limits: Limits) -> Self {
        Core {
            meta,
            blobs,
            registry: Arc::new(Registry {
                budget: BatchBudget {
                    limit: limits.batch_budget,
                    ..BatchBudget::default()
                },
                ..Registry::default()
            }),
            seen: Mutex::default(),
            pin_lock: Mutex::new(()),
            limits,
        }
    }

    /// The metadata store.
    pub fn meta(&self) -> &dyn MetaStore {
        self.meta.as_ref()
    }

    /// The blob store.
    pub fn blobs(&self) -> &dyn BlobStore {
        self.blobs.as_ref()
    }

    /// Bytes of batch buffers the uploads in progress hold ([`Limits::batch_budget`]).
    pub fn batch_bytes(&self) -> usize {
        self.registry.budget.in_use.load(Ordering::Acquire)
    }

    /// Number of uploads in progress (parked or checked out).
    pub fn uploads_in_progress(&self) -> usize {
        self.registry.lock().len()
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

    /// Abandons parked uploads idle for longer than the upload timeout; returns how many.
    pub fn expire_uploads(&self) -> usize {
        let expired = self.registry.expire(self.limits.upload_timeout);
        let count = expired.len();
        for upload in expired {
            tracing::info!(client = %upload.client_id.short(), file = %upload.file_name, "upload abandoned: no packet within the upload timeout");
        }
        count
    }

    /// Flushes LastSeen, drops parked uploads and closes the metadata store.
    pub fn close(&self) -> Result<(), StoreError> {
        let flushed = self.flush_last_seen();
        drop(self.registry.drain_parked());
        let closed = self.meta.close();
        flushed.and(closed)
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
                Outcome::error(format!("invalid file packet{note}: {error}"))
            }
            _ => Outcome::error(format!("invalid request: {error}")),
        }
    }

    fn register(&self, ctx: &Ctx, name: &Name) -> Outcome {
        let id = ClientId(*uuid::Uuid::new_v4().as_bytes());
        match self.meta.insert_client(&id, name.as_str(), ctx.now) {
            Ok(Inserted::Ok) => Outcome::reply(Response::Registered { client_id: id }),
            Ok(Inserted::NameTaken) => Outcome::reply(Response::RegistrationFailed)
                .with_detail(format!("name {name:?} is taken")),
            Err(error) => store_error("cannot register", error),
        }
    }

    fn known_client(&self, id: ClientId) -> Result<Wiped, Outcome> {
        match self.meta.client(&id) {
            Ok(Some(record)) => Ok(Wiped(record)),
            Ok(None) => Err(Outcome::error(format!("unknown client {id}"))),
            Err(error) => Err(store_error("cannot look up the client", error)),
        }
    }

    /// Handles an 826. Key pinning: once a client has a public key on record, only that key is
    /// accepted again (the same key: a fresh AES key, as always); a different key is
    /// refused with 1607 and logged, so that someone who learnt the client ID (it travels
    /// in clear) cannot replace the key and receive the client's next AES keys.
    fn send_public_key(&self, ctx: &Ctx, id: ClientId, name: &Name, der: &[u8]) -> Outcome {
        let _pinning = self.pin_lock.lock().unwrap_or_else(PoisonError::into_inner);
        let record = match self.known_client(id) {
            Ok(record) => record,
            Err(outcome) => return outcome,
        };
        if record.name != name.as_str() {
            return Outcome::error(format!(
                "name {name:?} does not match the client's registered name"
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
        self.issue_key(ctx, id, &key, Some(der), |client_id, wrapped_key| {
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
        let aes = AesKey::random();
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
            Ok(Some(record)) => Wiped(record),
            Ok(None) => return reject(format!("unknown client {id}")),
            Err(error) => return store_error("cannot look up the client", error),
        };
        if record.name != name.as_str() {
            return reject(format!(
                "name {name:?} does not match the client's registered name"
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
            Ok(false) => Outcome::error(format!("no stored file {file_name:?} to mark verified")),
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
        let removed = match self.meta.remove_file(&id, file_name.as_str(), ctx.now) {
            Ok(removed) => removed,
            Err(error) => return store_error("cannot remove the file record", error),
        };
        let ack = Outcome::reply(Response::Ack {
            client_id: Some(id),
        });
        match removed {
            // Row first, then the file: a crash in between leaves an orphan file, never a
            // row naming a missing file.
            Some(record) => match self.blobs.remove(&record.path) {
                Ok(()) => ack,
                Err(error) => ack.with_detail(format!(
                    "row removed but the file {} could not be: {error}",
                    record.path
                )),
            },
            None => ack.with_detail(format!("no stored file {file_name:?}; nothing to remove")),
        }
    }

    // ----- file packets ---------------------------------------------------------------

    fn whole_packet(
        &self,
        ctx: &Ctx,
        id: ClientId,
        version: u8,
        packet: &FilePacketHeader,
        content: &[u8],
    ) -> Outcome {
        let Ok(content_len) = u32::try_from(content.len()) else {
            return Outcome::error("packet content does not fit a request");
        };
        let header = RequestHeader {
            client_id: id,
            version,
            code: RequestCode::SendFile,
            payload_size: content_len.saturating_add(limits::FILE_PACKET_FIXED_LEN as u32),
        };
        if let Err(error) = packet.check(content_len) {
            return self.handle_invalid(&header, &DecodeError::Packet(error));
        }
        let mut lease = match self.start_packet(ctx, &header, packet, content_len) {
            Ok(lease) => lease,
            Err(outcome) => return outcome,
        };
        let mut rest = content;
        while !rest.is_empty() {
            let used = match lease.push(rest) {
                Ok(used) => used,
                Err(error) => return Outcome::error(error),
            };
            rest = rest.get(used..).unwrap_or_default();
            if lease.needs_flush() {
                if let Err(error) = lease.flush() {
                    return Outcome::error(format!("cannot write the file: {error}"));
                }
            }
        }
        self.end_packet(ctx, lease)
    }

    /// Checks out the client's parked upload without blocking: `Ok(Some)` to continue it
    /// ([`Core::continue_packet`]), `Ok(None)` when there is none (start one with
    /// [`Core::begin_upload`]), `Err` (1607) when another connection is receiving a packet
    /// of it right now.
    pub fn checkout(&self, id: ClientId) -> Result<Option<Lease>, Outcome> {
        match self.registry.checkout(&id) {
            Checkout::Got(upload) => Ok(Some(Lease::new(upload, Arc::clone(&self.registry)))),
            Checkout::Vacant => Ok(None),
            Checkout::Busy => Err(Outcome::error(
                "another connection is sending a packet for this client",
            )),
        }
    }

    /// Starts receiving a packet: continues the client's parked upload, or starts a new
    /// one (packet 1 only). On `Err` the upload (if any) has been abandoned and the
    /// outcome is a 1607. May block (database read, file creation).
    pub fn start_packet(
        &self,
        ctx: &Ctx,
        header: &RequestHeader,
        packet: &FilePacketHeader,
        content_len: u32,
    ) -> Result<Lease, Outcome> {
        match self.checkout(header.client_id)? {
            Some(mut lease) => match Self::continue_packet(&mut lease, packet, content_len) {
                Ok(()) => {
                    self.touch(header.client_id, ctx.now);
                    Ok(lease)
                }
                Err(reason) => {
                    drop(lease);
                    Err(Outcome::error(format!("upload abandoned: {reason}")))
                }
            },
            None => self.begin_upload(ctx, header.client_id, packet, content_len),
        }
    }

    /// Starts a new upload with its first packet (blocking: database read, file
    /// creation). On `Err` nothing is left behind.
    pub fn begin_upload(
        &self,
        ctx: &Ctx,
        id: ClientId,
        packet: &FilePacketHeader,
        content_len: u32,
    ) -> Result<Lease, Outcome> {
        let mut lease = self.new_upload(id, packet)?;
        if let Err(reason) = Self::continue_packet(&mut lease, packet, content_len) {
            drop(lease);
            return Err(Outcome::error(format!("upload refused: {reason}")));
        }
        self.touch(id, ctx.now);
        Ok(lease)
    }

    /// Checks that `packet` continues the lease's upload and expects its content. Pure:
    /// no I/O. On `Err` the caller drops the lease, which abandons the upload.
    pub fn continue_packet(
        lease: &mut Lease,
        packet: &FilePacketHeader,
        content_len: u32,
    ) -> Result<(), String> {
        let upload = lease
            .upload
            .as_mut()
            .ok_or_else(|| "upload already closed".to_string())?;
        if upload.packet_remaining != 0 {
            return Err("the previous packet was not complete".into());
        }
        if u32::from(packet.packet_number) != upload.next_packet {
            return Err(format!(
                "packet {} arrived where packet {} was expected",
                packet.packet_number, upload.next_packet
            ));
        }
        if packet.total_packets != upload.total_packets {
            return Err(format!(
                "total_packets changed from {} to {}",
                upload.total_packets, packet.total_packets
            ));
        }
        if packet.orig_file_size != upload.orig_file_size {
            return Err(format!(
                "orig_file_size changed from {} to {}",
                upload.orig_file_size, packet.orig_file_size
            ));
        }
        if packet.file_name != upload.file_name {
            return Err(format!(
                "file name changed from {:?} to {:?}",
                upload.file_name.as_str(),
                packet.file_name.as_str()
            ));
        }
        packet.check(content_len).map_err(|e| e.to_string())?;
        let after = upload.received + u64::from(content_len);
        if after > upload.encrypted_size {
            return Err(format!(
                "packets carry more than the {} encrypted bytes of a {}-byte file",
                upload.encrypted_size, upload.orig_file_size
            ));
        }
        upload.next_packet = u32::from(packet.packet_number) + 1;
        upload.packet_remaining = u64::from(content_len);
        Ok(())
    }

    fn new_upload(&self, id: ClientId, packet: &FilePacketHeader) -> Result<Lease, Outcome> {
        if packet.packet_number != 1 {
            return Err(Outcome::error(format!(
                "packet {} of {} but no upload in progress (a file starts with packet 1)",
                packet.packet_number, packet.total_packets
            )));
        }
        let orig = u64::from(packet.orig_file_size);
        let max = self
            .limits
            .max_file_size
            .min(u64::from(limits::MAX_ORIG_FILE_SIZE));
        if orig > max {
            return Err(Outcome::error(format!(
                "file of {orig} bytes exceeds the limit of {max} bytes"
            )));
        }
        let record = self.known_client(id)?;
        let Some(key_bytes) = record.aes_key.as_deref() else {
            return Err(Outcome::error(
                "no AES key has been issued to this client (826 or 827 first)",
            ));
        };
        // The record's copy of the key is wiped when `record` drops (Wiped).
        let key = AesKey::from_bytes(key_bytes)
            .map_err(|e| Outcome::error(format!("the AES key on record is unusable: {e}")))?;
        let decryptor = CbcDecryptor::new(&key)
            .map_err(|e| Outcome::error(format!("cannot start decryption: {e}")))?;
        let Some(token) = self.registry.claim(&id) else {
            return Err(Outcome::error(
                "another connection is sending a packet for this client",
            ));
        };
        let disk_name = names::disk_name(packet.file_name.as_str());
        let temp = match self.blobs.create_temp(&id, &disk_name) {
            Ok(temp) => temp,
            Err(error) => {
                self.registry.release(&id, token);
                return Err(Outcome::error(format!(
                    "cannot create a temporary file: {error}"
                )));
            }
        };
        let upload = Box::new(Upload {
            client_id: id,
            token,
            file_name: packet.file_name.clone(),
            total_packets: packet.total_packets,
            orig_file_size: packet.orig_file_size,
            encrypted_size: encrypted_size(orig),
            next_packet: 1,
            received: 0,
            packet_remaining: 0,
            plaintext: 0,
            decryptor,
            cksum: Cksum::new(),
            temp,
            batch: Vec::new(),
            filled: 0,
            grant: BatchGrant {
                bytes: 0,
                registry: Arc::clone(&self.registry),
            },
        });
        Ok(Lease::new(upload, Arc::clone(&self.registry)))
    }

    /// Ends the packet whose content has all been pushed. The last packet finishes the
    /// upload (1603 or 1607). An intermediate packet parks the upload for the next packet,
    /// on any connection; if it was the first request on its connection (a client that
    /// opens a connection per request and waits for each reply) the decrypted batch is
    /// written first and a short 1603 answers it, otherwise there is no reply.
    ///
    /// Blocks (write, fsync, rename, commit) for the last packet and for the first request
    /// on a connection; [`Core::end_packet_blocks`] tells beforehand.
    pub fn end_packet(&self, ctx: &Ctx, mut lease: Lease) -> Outcome {
        if lease.packet_remaining() != 0 {
            drop(lease);
            return Outcome::error("packet ended before its content");
        }
        let Some(id) = lease.client_id() else {
            return Outcome::error("upload already closed");
        };
        if lease.is_last_packet() {
            return match lease.take() {
                Some(upload) => self.finish(ctx, upload),
                None => Outcome::error("upload already closed"),
            };
        }
        if ctx.first_on_connection {
            if let Err(error) = lease.flush() {
                return Outcome::error(format!("upload abandoned: cannot write the file: {error}"));
            }
            if let Some(upload) = lease.upload.as_mut() {
                upload.batch = Vec::new();
                upload.filled = 0;
                upload.grant.release();
            }
        }
        match self.park(lease) {
            Ok(()) if ctx.first_on_connection => {
                Outcome::reply(Response::PacketReceived { client_id: id })
            }
            Ok(()) => Outcome::silent(),
            Err(error) => Outcome::error(error),
        }
    }

    /// True when [`Core::end_packet`] will do blocking I/O for this lease.
    pub fn end_packet_blocks(ctx: &Ctx, lease: &Lease) -> bool {
        lease.is_last_packet() || ctx.first_on_connection
    }

    fn finish(&self, ctx: &Ctx, upload: Box<Upload>) -> Outcome {
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
            mut temp,
            mut batch,
            filled,
            ..
        } = *upload;
        batch.truncate(filled);
        let result = (|| -> Result<(u32, String), String> {
            if received != encrypted_size {
                return Err(format!(
                    "received {received} encrypted bytes; a {orig_file_size}-byte file has {encrypted_size}"
                ));
            }
            let start = batch.len();
            decryptor
                .finish(&mut batch)
                .map_err(|e| format!("cannot decrypt the file: {e}"))?;
            let tail = batch.get(start..).unwrap_or_default();
            cksum.update(tail);
            plaintext += tail.len() as u64;
            if plaintext != u64::from(orig_file_size) {
                return Err(format!(
                    "decrypted {plaintext} bytes but orig_file_size is {orig_file_size}"
                ));
            }
            temp.write_all(&batch)
                .map_err(|e| format!("cannot write the file: {e}"))?;
            let path = self.store_upload(ctx, client_id, file_name.as_str(), temp)?;
            Ok((cksum.finish(), path))
        })();
        self.registry.release(&client_id, token);
        match result {
            Ok((crc, path)) => Outcome::reply(Response::FileReceived {
                client_id,
                content_size: u32::try_from(received).unwrap_or(u32::MAX),
                file_name,
                cksum: crc,
            })
            .with_detail(format!("stored as {path}")),
            Err(reason) => Outcome::error(format!("upload abandoned: {reason}")),
        }
    }

    /// Moves a complete upload into place and records it so that nothing already stored
    /// is lost and every row always names a complete file:
    ///
    /// 1. an existing row that is verified is first committed as unverified (it is about
    ///    to name content the client has not confirmed);
    /// 2. the file is moved into place, keeping the version it replaces
    ///    ([`crate::storage::TempBlob::persist_undoable`]);
    /// 3. the row is committed with Verified = 0. If that fails, the replaced version is
    ///    put back (a new file is removed) and the old row restored as far as the
    ///    database allows; the client gets 1607.
    ///
    /// A crash between any two steps leaves every row naming a complete file (the old or
    /// the new version; unverified if it changed) and, for a new file, at worst a complete
    /// file without a row. The kept version is a temporary file, removed at start-up.
    fn store_upload(
        &self,
        ctx: &Ctx,
        client_id: ClientId,
        file_name: &str,
        temp: Box<dyn crate::storage::TempBlob>,
    ) -> Result<String, String> {
        let existing = self
            .meta
            .file(&client_id, file_name)
            .map_err(|e| format!("cannot look up the file: {e}"))?;
        if let Some(old) = existing.as_ref().filter(|old| old.verified) {
            let unverified = FileRecord {
                verified: false,
                ..old.clone()
            };
            self.meta
                .put_file(&unverified, ctx.now)
                .map_err(|e| format!("cannot record the file: {e}"))?;
        }
        let persisted = temp
            .persist_undoable()
            .map_err(|e| format!("cannot store the file: {e}"))?;
        let record = FileRecord {
            client_id,
            file_name: file_name.to_owned(),
            path: persisted.path().to_owned(),
            verified: false,
        };
        if let Err(error) = self.meta.put_file(&record, ctx.now) {
            let mut reason = format!("cannot record the file: {error}");
            match persisted.undo() {
                Ok(()) => reason.push_str("; the earlier state is restored"),
                Err(undo) => {
                    reason.push_str(&format!("; cannot restore the earlier state: {undo}"))
                }
            }
            if let Some(old) = existing.filter(|old| old.verified) {
                // Best effort: the database has just failed.
                let _ = self.meta.put_file(&old, ctx.now);
            }
            return Err(reason);
        }
        if let Err(error) = persisted.keep() {
            tracing::warn!(path = %record.path, %error, "cannot remove the replaced version (removed at next start-up)");
        }
        if let Some(old) = existing.filter(|old| old.path != record.path) {
            if let Err(error) = self.blobs.remove(&old.path) {
                tracing::warn!(path = %old.path, %error, "cannot remove the file's earlier path");
            }
        }
        Ok(record.path)
    }

    /// Puts an upload back in the registry between packets (no I/O; the batch of
    /// decrypted bytes stays with it). On `Err` the upload has been abandoned.
    fn park(&self, mut lease: Lease) -> Result<(), String> {
        let Some(upload) = lease.take() else {
            return Ok(());
        };
        let id = upload.client_id;
        let token = upload.token;
        match self.registry.park(upload) {
            Ok(()) => Ok(()),
            Err(upload) => {
                self.registry.release(&id, token);
                drop(upload);
                Err("upload abandoned: its slot was taken".into())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::fs::LocalBlobStore;
    use crate::storage::sqlite::SqliteStore;
    use sfc_crypto::{CbcEncryptor, RsaKeyPair};

    struct Harness {
        core: Core,
        _dir: tempfile::TempDir,
        root: std::path::PathBuf,
    }

    fn harness() -> Harness {
        harness_with(Limits::default())
    }

    fn harness_with(limits: Limits) -> Harness {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().to_path_buf();
        let core = Core::new(
            Box::new(SqliteStore::open_in_memory().unwrap()),
            Box::new(LocalBlobStore::new(&root)),
            limits,
        );
        Harness {
            core,
            _dir: dir,
            root,
        }
    }

    fn ctx(first: bool) -> Ctx {
        Ctx {
            first_on_connection: first,
            now: Timestamp::now(),
        }
    }

    fn name(s: &str) -> Name {
        Name::new(s).unwrap()
    }

    fn request(id: ClientId, body: RequestBody) -> Request {
        Request::new(id, body)
    }

    fn keypair() -> &'static RsaKeyPair {
        static KEY: std::sync::OnceLock<RsaKeyPair> = std::sync::OnceLock::new();
        KEY.get_or_init(|| RsaKeyPair::generate().unwrap())
    }

    /// Registers `user` and returns its ID and AES key.
    fn enroll(h: &Harness, user: &str) -> (ClientId, AesKey) {
        let out = h.core.handle_request(
            &ctx(false),
            request(ClientId::ZERO, RequestBody::Register { name: name(user) }),
        );
        let Some(Response::Registered { client_id }) = out.reply else {
            panic!("{out:?}")
        };
        let out = h.core.handle_request(
            &ctx(false),
            request(
                client_id,
                RequestBody::SendPublicKey {
                    name: name(user),
                    public_key: keypair().public_key_der(),
                },
            ),
        );
        let Some(Response::PublicKeyAccepted { wrapped_key, .. }) = out.reply else {
            panic!("{out:?}")
        };
        (client_id, keypair().unwrap_aes_key(&wrapped_key).unwrap())
    }

    fn encrypt(key: &AesKey, data: &[u8]) -> Vec<u8> {
        let mut enc = CbcEncryptor::new(key).unwrap();
        let mut out = Vec::new();
        enc.update(data, &mut out).unwrap();
        enc.finish(&mut out).unwrap();
        out
    }

    fn packets(file: &str, data: &[u8], cipher: &[u8], size: usize) -> Vec<RequestBody> {
        let chunks: Vec<&[u8]> = if cipher.is_empty() {
            vec![&[]]
        } else {
            cipher.chunks(size).collect()
        };
        let total = chunks.len() as u16;
        chunks
            .iter()
            .enumerate()
            .map(|(i, chunk)| RequestBody::SendFile {
                packet: FilePacketHeader {
                    content_size: cipher.len() as u32,
                    orig_file_size: data.len() as u32,
                    packet_number: i as u16 + 1,
                    total_packets: total,
                    file_name: name(file),
                },
                content: chunk.to_vec(),
            })
            .collect()
    }

    #[test]
    fn parked_batches_stay_within_the_budget_and_are_returned() {
        // Room for two full batches; a third upload gets the floor.
        let h = harness_with(Limits {
            batch_budget: 2 * BATCH_CAPACITY,
            ..Limits::default()
        });
        let files: Vec<_> = ["a", "b", "c"]
            .iter()
            .enumerate()
            .map(|(n, user)| {
                let (id, key) = enroll(&h, user);
                let data: Vec<u8> = (0..3_000_000u32)
                    .map(|i| (i * 7 + n as u32) as u8)
                    .collect();
                let cipher = encrypt(&key, &data);
                (id, data.clone(), packets("f.bin", &data, &cipher, 65_536))
            })
            .collect();
        // Packet 1 of each: the uploads park, each keeping its batch.
        let mut held = Vec::new();
        for (id, _, bodies) in &files {
            let out = h
                .core
                .handle_request(&ctx(false), request(*id, bodies[0].clone()));
            assert_eq!(out, Outcome::silent());
            held.push(h.core.batch_bytes());
        }
        assert_eq!(
            held,
            [
                BATCH_CAPACITY,
                2 * BATCH_CAPACITY,
                2 * BATCH_CAPACITY + MIN_BATCH
            ]
        );
        // Every upload completes correctly, the one on the floor batch too.
        for (id, data, bodies) in &files {
            let mut last = None;
            for body in &bodies[1..] {
                last = h
                    .core
                    .handle_request(&ctx(false), request(*id, body.clone()))
                    .reply;
                assert!(h.core.batch_bytes() <= 2 * BATCH_CAPACITY + MIN_BATCH);
            }
            let Some(Response::FileReceived { cksum, .. }) = last else {
                panic!("{last:?}")
            };
            assert_eq!(cksum, sfc_crypto::cksum(data));
            let stored = h.root.join("files").join(id.to_hex()).join("f.bin");
            assert!(std::fs::read(stored).unwrap() == *data);
        }
        assert_eq!(
            h.core.batch_bytes(),
            0,
            "finished uploads return their batches"
        );
        // An abandoned upload returns its batch too.
        let (id, _, bodies) = &files[0];
        h.core
            .handle_request(&ctx(false), request(*id, bodies[0].clone()));
        assert_eq!(h.core.batch_bytes(), BATCH_CAPACITY);
        h.core
            .handle_request(&ctx(false), request(*id, bodies[5].clone()));
        assert_eq!(h.core.uploads_in_progress(), 0);
        assert_eq!(h.core.batch_bytes(), 0);
        // A client that opens a connection per packet holds no batch between packets.
        h.core
            .handle_request(&ctx(true), request(*id, bodies[0].clone()));
        assert_eq!(h.core.uploads_in_progress(), 1);
        assert_eq!(h.core.batch_bytes(), 0);
    }

    #[test]
    fn upload_over_many_packets_then_verify() {
        let h = harness();
        let (id, key) = enroll(&h, "alice");
        let data: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
        let cipher = encrypt(&key, &data);
        let bodies = packets("dir/x.bin", &data, &cipher, 7_000);
        let n = bodies.len();
        for (i, body) in bodies.into_iter().enumerate() {
            let out = h.core.handle_request(&ctx(false), request(id, body));
            if i + 1 < n {
                assert_eq!(out, Outcome::silent());
                assert_eq!(h.core.uploads_in_progress(), 1);
            } else {
                assert_eq!(
                    out.reply,
                    Some(Response::FileReceived {
                        client_id: id,
                        content_size: cipher.len() as u32,
                        file_name: name("dir/x.bin"),
                        cksum: sfc_crypto::cksum(&data),
                    })
                );
            }
        }
        assert_eq!(h.core.uploads_in_progress(), 0);
        let stored = h.root.join("files").join(id.to_hex()).join("dir%2Fx.bin");
        assert_eq!(std::fs::read(stored).unwrap(), data);
        let out = h.core.handle_request(
            &ctx(false),
            request(
                id,
                RequestBody::ChecksumOk {
                    file_name: name("dir/x.bin"),
                },
            ),
        );
        assert_eq!(
            out.reply,
            Some(Response::Ack {
                client_id: Some(id)
            })
        );
        assert!(h.core.meta().files().unwrap()[0].verified);
    }

    #[test]
    fn out_of_order_packet_abandons_the_upload() {
        let h = harness();
        let (id, key) = enroll(&h, "bob");
        let data = vec![7u8; 100];
        let cipher = encrypt(&key, &data);
        let mut bodies = packets("f", &data, &cipher, 16).into_iter();
        let first = bodies.next().unwrap();
        bodies.next();
        let third = bodies.next().unwrap();
        assert_eq!(
            h.core.handle_request(&ctx(true), request(id, first)).code(),
            Some(1603)
        );
        let out = h.core.handle_request(&ctx(false), request(id, third));
        assert_eq!(out.code(), Some(1607), "{out:?}");
        assert_eq!(h.core.uploads_in_progress(), 0);
        let dir = h.root.join("files").join(id.to_hex());
        assert_eq!(
            std::fs::read_dir(dir).unwrap().count(),
            0,
            "temp file removed"
        );
    }

    #[test]
    fn a_dropped_lease_frees_the_slot_and_the_temp_file() {
        let h = harness();
        let (id, key) = enroll(&h, "carol");
        let data = vec![1u8; 40];
        let cipher = encrypt(&key, &data);
        let RequestBody::SendFile { packet, content } = packets("f", &data, &cipher, 48).remove(0)
        else {
            unreachable!()
        };
        let header = RequestHeader::new(id, RequestCode::SendFile, 267 + 48);
        let mut lease = h
            .core
            .start_packet(&ctx(false), &header, &packet, 48)
            .unwrap();
        lease.push(&content[..10]).unwrap();
        // A second connection cannot take it while it is checked out.
        let busy = h.core.start_packet(&ctx(false), &header, &packet, 48);
        assert_eq!(busy.unwrap_err().code(), Some(1607));
        drop(lease);
        assert_eq!(h.core.uploads_in_progress(), 0);
        let dir = h.root.join("files").join(id.to_hex());
        assert_eq!(std::fs::read_dir(dir).unwrap().count(), 0);
    }

    #[test]
    fn unknown_clients_and_missing_keys_get_1607() {
        let h = harness();
        let data = [1u8; 3];
        let key = AesKey::random();
        let cipher = encrypt(&key, &data);
        let body = packets("f", &data, &cipher, 16).remove(0);
        let out = h
            .core
            .handle_request(&ctx(false), request(ClientId([9; 16]), body.clone()));
        assert_eq!(out.code(), Some(1607));
        let out = h.core.handle_request(
            &ctx(false),
            request(ClientId::ZERO, RequestBody::Register { name: name("dave") }),
        );
        let Some(Response::Registered { client_id }) = out.reply else {
            panic!()
        };
        let out = h.core.handle_request(&ctx(false), request(client_id, body));
        assert_eq!(out.code(), Some(1607));
        assert!(out.detail.unwrap().contains("no AES key"));
        // Reconnect without a public key on record: 1606 with the ID.
        let out = h.core.handle_request(
            &ctx(false),
            request(client_id, RequestBody::Reconnect { name: name("dave") }),
        );
        assert_eq!(
            out.reply,
            Some(Response::ReconnectRejected {
                client_id: Some(client_id)
            })
        );
    }

    #[test]
    fn last_seen_is_noted_in_memory_and_flushed() {
        let h = harness();
        let (id, _) = enroll(&h, "erin");
        let later = Timestamp(Timestamp::now().0 + 60_000);
        let c = Ctx {
            first_on_connection: true,
            now: later,
        };
        let out = h.core.handle_request(
            &c,
            request(
                id,
                RequestBody::ChecksumRetry {
                    file_name: name("f"),
                },
            ),
        );
        assert_eq!(
            out.reply,
            Some(Response::Ack {
                client_id: Some(id)
            })
        );
        let silent = h.core.handle_request(
            &ctx(false),
            request(
                id,
                RequestBody::ChecksumRetry {
                    file_name: name("f"),
                },
            ),
        );
        assert_eq!(silent.reply, None);
        assert_eq!(h.core.flush_last_seen().unwrap(), 1);
        let record = h.core.meta().client(&id).unwrap().unwrap();
        assert_eq!(record.last_seen, Some(later.to_string()));
    }

    #[test]
    fn aes_key_bytes_read_from_the_store_are_wiped() {
        let h = harness();
        let (id, key) = enroll(&h, "wiped");
        let mut record = h.core.known_client(id).unwrap();
        assert_eq!(record.aes_key.as_deref(), Some(&key.as_bytes()[..]));
        record.wipe();
        // zeroize overwrites the Vec's whole buffer with zeros, then empties it.
        assert_eq!(record.aes_key.as_deref(), Some(&[][..]));
    }
}
