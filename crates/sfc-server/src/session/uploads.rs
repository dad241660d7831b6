//! Uploads in progress: the registry (one per client ID, parked between packets or
//! checked out as a [`Lease`]), each upload's decryptor, checksum and batch buffers, and
//! the memory budget of all batches ([`super::Limits::batch_budget`]).
//!
//! Write-behind: a full batch is handed to a blocking thread as a [`BackgroundWrite`]
//! together with the temporary file, and the connection goes on decrypting into a second
//! buffer meanwhile, without waiting. The written buffer and the file come back through
//! a channel the upload keeps ([`WriteBehind`]), so the upload can be parked between
//! packets and checked out by another connection while its write is in flight: whoever
//! holds it next collects the result. Nothing waits for a write unless the next batch is
//! full before it is done, the packet is the file's last, or the upload is suspended.

use super::error::UploadError;
use crate::buffer_pool::{BufferPool, Pooled};
use sfc_crypto::{CbcDecryptor, Cksum};
use sfc_proto::{ClientId, Name};
use std::collections::HashMap;
use std::fmt;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

/// Plaintext collected before one write to the temporary file. Each write is one hand-off
/// to the blocking pool; at 64 KiB, when the connection also waited for each one, those
/// hops were the largest cost of a large upload (see BENCHMARKS.md). A streaming upload
/// holds two batches of this size with write-behind (one written while the other fills);
/// 512 KiB batches, to keep the pair at 1 MiB, lost most of write-behind's gain.
pub const FLUSH_AT: usize = 1024 * 1024;
/// Capacity of the batch buffer: a little above [`FLUSH_AT`] so that decrypting never
/// reallocates it; smaller for a file whose rest is smaller ([`Lease::new`]).
pub(super) const BATCH_CAPACITY: usize = FLUSH_AT + 64;
/// Room kept free in the batch for the decryptor's output beyond its input (at most
/// one held-back block).
pub(super) const BATCH_SLACK: usize = 32;
/// Batch an upload always gets, whatever [`super::Limits::batch_budget`] has left: enough to
/// take a default 2,048-byte packet whole (more writes, same result).
pub const MIN_BATCH: usize = 16 * 1024;
/// Full-size batch buffers kept for the next uploads when theirs end (at most this many,
/// [`FLUSH_AT`] each): reused instead of freed and allocated again. Allocating 1 MiB per
/// upload on whichever worker thread ran it made glibc's per-thread arenas keep ~1 MiB
/// more after each upload (the server's RSS rose upload after upload; BENCHMARKS.md,
/// "Fourth round").
pub const POOLED_BATCHES: usize = 8;
/// A batch buffer: back in the registry's pool when dropped, however the upload ends.
pub(super) type Batch = Pooled<BATCH_CAPACITY, POOLED_BATCHES>;
/// The bytes of batch buffers handed out, against [`super::Limits::batch_budget`].
#[derive(Debug, Default)]
pub(super) struct BatchBudget {
    pub(super) in_use: AtomicUsize,
    pub(super) limit: usize,
}

impl BatchBudget {
    /// Grants up to `wanted` bytes (possibly 0) from what is left.
    pub(super) fn grant(&self, wanted: usize) -> usize {
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
    pub(super) fn force(&self, bytes: usize) {
        self.in_use.fetch_add(bytes, Ordering::AcqRel);
    }

    pub(super) fn give_back(&self, bytes: usize) {
        self.in_use.fetch_sub(bytes, Ordering::AcqRel);
    }
}

/// The part of the budget an upload's batch holds; returned when the upload ends
/// (dropped with it) or frees its batch.
pub(super) struct BatchGrant {
    pub(super) bytes: usize,
    pub(super) registry: Arc<Registry>,
}

impl BatchGrant {
    pub(super) fn release(&mut self) {
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

/// An upload in progress; see the module documentation.
pub struct Upload {
    pub(super) client_id: ClientId,
    pub(super) token: u64,
    /// Stays the same for the life of the upload (the token changes at each checkout).
    pub(super) serial: u64,
    /// Counts the upload against the caps of uploads in progress while it lives.
    pub(super) _counted: Counted,
    /// When its packet 1 arrived (for the "stored" line's duration and rate).
    pub(super) started: Instant,
    pub(super) file_name: Name,
    pub(super) total_packets: u16,
    pub(super) orig_file_size: u32,
    pub(super) encrypted_size: u64,
    /// Number of the packet expected next (u32: may be total_packets + 1).
    pub(super) next_packet: u32,
    /// Ciphertext bytes received so far, all packets.
    pub(super) received: u64,
    /// Content bytes the current packet still has to deliver.
    pub(super) packet_remaining: u64,
    /// Plaintext bytes produced so far.
    pub(super) plaintext: u64,
    pub(super) decryptor: CbcDecryptor,
    pub(super) cksum: Cksum,
    /// The temporary file; `None` exactly while a write is in flight (it travels with the
    /// [`BackgroundWrite`] and comes back through [`WriteBehind`]).
    pub(super) temp: Option<Box<dyn crate::storage::TempBlob>>,
    /// The write in flight, if any, and the second batch buffer.
    pub(super) behind: WriteBehind,
    /// `batch[..filled]`: decrypted bytes not yet written. The rest is scratch space that
    /// the decryptor writes into (`update_into`): zero-filled once when it grows, never
    /// again per packet. Given back between the packets of a connection-per-request client.
    pub(super) batch: Batch,
    /// See `batch`.
    pub(super) filled: usize,
    /// The batch's share of [`super::Limits::batch_budget`].
    pub(super) grant: BatchGrant,
    /// The latest time given to [`super::Core::touch`] for this upload: packets within
    /// the same millisecond note it once (a lock and a map lookup saved per packet).
    pub(super) touched: crate::storage::Timestamp,
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

/// What a [`BackgroundWrite`] sends back: the file, the buffer it wrote (the next spare
/// batch) and the result.
type Written = (
    Box<dyn crate::storage::TempBlob>,
    Batch,
    std::io::Result<()>,
);

/// The temporary file is neither with the upload nor with a write in flight (a bug).
pub(super) fn temp_lost() -> std::io::Error {
    std::io::Error::other("the temporary file was lost")
}

/// Write-behind state of an upload (module documentation).
pub(super) struct WriteBehind {
    /// The result of the write in flight, when one is.
    in_flight: Option<std::sync::mpsc::Receiver<Written>>,
    /// The second batch buffer: decrypted into while the first is written.
    spare: Batch,
    /// The spare's share of [`super::Limits::batch_budget`] (0 until the first
    /// write-behind, given back with the batch's).
    grant: Option<BatchGrant>,
}

impl WriteBehind {
    /// No write in flight, no spare buffer yet.
    pub(super) fn new(registry: &Registry) -> Self {
        WriteBehind {
            in_flight: None,
            spare: registry.empty_batch(),
            grant: None,
        }
    }
}

/// One batch written to an upload's temporary file off the connection's task: run it on
/// a blocking thread ([`BackgroundWrite::run`]); nobody waits for it unless they must.
pub struct BackgroundWrite {
    temp: Box<dyn crate::storage::TempBlob>,
    batch: Batch,
    filled: usize,
    done: std::sync::mpsc::SyncSender<Written>,
}

impl fmt::Debug for BackgroundWrite {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BackgroundWrite")
            .field("bytes", &self.filled)
            .finish_non_exhaustive()
    }
}

impl BackgroundWrite {
    /// Writes the batch (blocking) and hands file, buffer and result back to the
    /// upload. When the upload is gone meanwhile, the file is dropped here (removed).
    pub fn run(self) {
        let BackgroundWrite {
            mut temp,
            batch,
            filled,
            done,
        } = self;
        let result = temp.write_all(batch.get(..filled).unwrap_or_default());
        // The receiver is gone when the upload was abandoned: the file goes with it, the
        // buffer back to the pool.
        let _ = done.send((temp, batch, result));
    }
}

impl Upload {
    /// Takes back the file and the spare buffer from the write in flight, waiting for
    /// it when `wait` (blocking). `Ok(false)`: still in flight (only when not `wait`).
    /// A job that waits here cannot starve the write it waits for of a blocking thread:
    /// the write was spawned before the job, and tokio's pool starts tasks in order.
    fn collect(&mut self, wait: bool) -> std::io::Result<bool> {
        let Some(in_flight) = self.behind.in_flight.as_ref() else {
            return Ok(true);
        };
        let received = if wait {
            in_flight.recv().ok()
        } else {
            match in_flight.try_recv() {
                Ok(written) => Some(written),
                Err(std::sync::mpsc::TryRecvError::Empty) => return Ok(false),
                Err(std::sync::mpsc::TryRecvError::Disconnected) => None,
            }
        };
        self.behind.in_flight = None;
        let Some((temp, spare, result)) = received else {
            return Err(std::io::Error::other("the background write was lost"));
        };
        self.temp = Some(temp);
        self.behind.spare = spare;
        result.map(|()| true)
    }

    /// Waits for the write in flight, if any (blocking), and takes the file back.
    pub(super) fn settle(&mut self) -> std::io::Result<()> {
        self.collect(true)?;
        if self.temp.is_none() {
            return Err(temp_lost());
        }
        Ok(())
    }

    /// Gives both batch buffers back to the registry's pool, and their budget (between
    /// the packets of a connection-per-request client). Call with no write in flight.
    pub(super) fn free_batches(&mut self) {
        self.batch.give_back();
        self.behind.spare.give_back();
        self.filled = 0;
        self.grant.release();
        self.behind.grant = None;
    }
}

pub(super) enum Slot {
    Parked {
        upload: Box<Upload>,
        since: Instant,
    },
    CheckedOut {
        token: u64,
        /// Where the upload stood when it was checked out (for the shutdown's log).
        progress: Progress,
    },
    /// Held while the client is removed ([`Registry::hold_for_removal`]): no upload can
    /// start, and no packet be received or stored, meanwhile.
    Held,
}

/// How far an upload in progress is, for the log.
#[derive(Clone, Debug)]
pub struct Progress {
    /// Its file.
    pub file: Name,
    /// Packets received whole.
    pub packets: u32,
    /// Its total_packets.
    pub total: u16,
    /// Parked between packets (else a connection is receiving one of its packets).
    pub parked: bool,
}

impl Upload {
    fn progress(&self, parked: bool) -> Progress {
        Progress {
            file: self.file_name.clone(),
            packets: self.next_packet.saturating_sub(1),
            total: self.total_packets,
            parked,
        }
    }
}

/// The registry's map. Its keys are IDs the server issued at random (a slot is claimed
/// only for a known client), never chosen by a peer, so a fast seeded hash serves, not
/// SipHash: the map is looked up twice per file packet (BENCHMARKS.md, "CPU per GiB").
pub(super) type Slots = HashMap<ClientId, Slot, foldhash::fast::RandomState>;

/// Uploads in progress, one per client ID.
#[derive(Default)]
pub(super) struct Registry {
    pub(super) slots: Mutex<Slots>,
    pub(super) next_token: AtomicU64,
    pub(super) budget: BatchBudget,
    /// Full-size batch buffers of ended uploads, for the next ones ([`POOLED_BATCHES`]).
    pub(super) pooled: Arc<BufferPool<BATCH_CAPACITY, POOLED_BATCHES>>,
    /// Uploads in progress per peer address (those started with one), counted as every
    /// per-address limit counts: IPv6 by its /64.
    pub(super) per_address: Mutex<HashMap<IpAddr, usize>>,
    /// Caps of uploads in progress: all clients, and per address (0: no cap).
    pub(super) max_uploads: usize,
    pub(super) max_uploads_per_address: usize,
}

/// Why a new upload could not have a slot.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum ClaimError {
    /// Another connection holds the client's slot.
    Busy,
    /// `--max-uploads` uploads are in progress.
    TooMany(usize),
    /// `--max-uploads-per-address` uploads are in progress from this address.
    TooManyFromAddress(usize),
}

/// One upload counted against the per-address cap; uncounted when dropped.
pub(super) struct Counted {
    peer: Option<IpAddr>,
    registry: Arc<Registry>,
}

impl Drop for Counted {
    fn drop(&mut self) {
        if let Some(peer) = self.peer {
            let mut counts = self
                .registry
                .per_address
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            if let Some(count) = counts.get_mut(&peer) {
                *count = count.saturating_sub(1);
                if *count == 0 {
                    counts.remove(&peer);
                }
            }
        }
    }
}

impl fmt::Debug for Registry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Registry")
            .field("uploads", &self.lock().len())
            .finish()
    }
}

pub(super) enum Checkout {
    Got(Box<Upload>),
    Busy,
    Vacant,
}

impl Registry {
    pub(super) fn lock(&self) -> MutexGuard<'_, Slots> {
        self.slots.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Whether `id` has an upload in progress (parked, checked out, or held for its
    /// client's removal).
    pub(super) fn has_upload(&self, id: &ClientId) -> bool {
        self.lock().contains_key(id)
    }

    /// A full-size batch buffer from the pool, or a new empty one. Not cleared: its
    /// stale bytes are scratch space, as in the upload (see `write_behind`).
    pub(super) fn batch_buffer(&self) -> Batch {
        Batch::take(&self.pooled)
    }

    /// An empty batch buffer (nothing allocated yet).
    pub(super) fn empty_batch(&self) -> Batch {
        Batch::empty(&self.pooled)
    }

    pub(super) fn token(&self) -> u64 {
        self.next_token.fetch_add(1, Ordering::Relaxed)
    }

    /// Checks out the client's parked upload: one lookup in the map (once per packet).
    pub(super) fn checkout(&self, id: &ClientId) -> Checkout {
        let mut slots = self.lock();
        let Some(slot) = slots.get_mut(id) else {
            return Checkout::Vacant;
        };
        let progress = match slot {
            Slot::CheckedOut { .. } | Slot::Held => return Checkout::Busy,
            Slot::Parked { upload, .. } => upload.progress(false),
        };
        let token = self.token();
        match std::mem::replace(slot, Slot::CheckedOut { token, progress }) {
            Slot::Parked { mut upload, .. } => {
                upload.token = token;
                Checkout::Got(upload)
            }
            // Unreachable: the slot was Parked under the same lock.
            Slot::CheckedOut { .. } | Slot::Held => Checkout::Busy,
        }
    }

    /// Claims a vacant slot for a new upload from `peer`, within the caps of uploads
    /// in progress. The [`Counted`] must live as long as the upload.
    pub(super) fn claim(
        self: &Arc<Self>,
        id: &ClientId,
        peer: Option<IpAddr>,
        progress: Progress,
    ) -> Result<(u64, Counted), ClaimError> {
        // One /64 is one address, as for the connection cap and the rate limits.
        let peer = peer.map(crate::net::rate_limit::key_of);
        let mut slots = self.lock();
        if slots.contains_key(id) {
            return Err(ClaimError::Busy);
        }
        if self.max_uploads > 0 && uploads(&slots) >= self.max_uploads {
            return Err(ClaimError::TooMany(self.max_uploads));
        }
        if let Some(peer) = peer {
            let mut counts = self
                .per_address
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            let count = counts.entry(peer).or_insert(0);
            if self.max_uploads_per_address > 0 && *count >= self.max_uploads_per_address {
                return Err(ClaimError::TooManyFromAddress(self.max_uploads_per_address));
            }
            *count += 1;
        }
        let token = self.token();
        slots.insert(*id, Slot::CheckedOut { token, progress });
        let counted = Counted {
            peer,
            registry: Arc::clone(self),
        };
        Ok((token, counted))
    }

    /// Frees the slot if it is still checked out with this token.
    pub(super) fn release(&self, id: &ClientId, token: u64) {
        let mut slots = self.lock();
        if matches!(slots.get(id), Some(Slot::CheckedOut { token: t, .. }) if *t == token) {
            slots.remove(id);
        }
    }

    /// Parks an upload in its slot; returns it if the slot is no longer its own. One
    /// lookup in the map (once per packet).
    pub(super) fn park(&self, upload: Box<Upload>, since: Instant) -> Result<(), Box<Upload>> {
        let mut slots = self.lock();
        let Some(slot) = slots.get_mut(&upload.client_id) else {
            return Err(upload);
        };
        if !matches!(slot, Slot::CheckedOut { token, .. } if *token == upload.token) {
            return Err(upload);
        }
        *slot = Slot::Parked { upload, since };
        Ok(())
    }

    /// How many uploads are in progress.
    #[cfg(any(test, feature = "testing"))]
    pub(super) fn count(&self) -> usize {
        uploads(&self.lock())
    }

    /// Every upload in progress and how far it is.
    pub(super) fn in_progress(&self) -> Vec<(ClientId, Progress)> {
        self.lock()
            .iter()
            .filter_map(|(id, slot)| match slot {
                Slot::Parked { upload, .. } => Some((*id, upload.progress(true))),
                Slot::CheckedOut { progress, .. } => Some((*id, progress.clone())),
                Slot::Held => None,
            })
            .collect()
    }

    /// Removes the client's parked upload if it is the one with this serial.
    pub(super) fn remove_parked_serial(&self, id: &ClientId, serial: u64) -> Option<Box<Upload>> {
        let mut slots = self.lock();
        if matches!(slots.get(id), Some(Slot::Parked { upload, .. }) if upload.serial == serial) {
            if let Some(Slot::Parked { upload, .. }) = slots.remove(id) {
                return Some(upload);
            }
        }
        None
    }

    /// Holds the client's slot while the client is removed (the admin's delete): until
    /// the hold is dropped, a packet of its upload gets 1607 as a second concurrent
    /// upload does, so that no upload stores into a client being removed. Gives the
    /// parked upload, if any, to the remover (who drops it: abandoned). `None` while a
    /// packet of its upload is being received or stored (or another hold is on).
    pub(super) fn hold_for_removal(
        self: &Arc<Self>,
        id: &ClientId,
    ) -> Option<(RemovalHold, Option<Box<Upload>>)> {
        let mut slots = self.lock();
        let parked = match slots.insert(*id, Slot::Held) {
            None => None,
            Some(Slot::Parked { upload, .. }) => Some(upload),
            Some(busy) => {
                slots.insert(*id, busy);
                return None;
            }
        };
        let hold = RemovalHold {
            registry: Arc::clone(self),
            id: *id,
        };
        Some((hold, parked))
    }

    pub(super) fn remove_parked(&self, id: &ClientId) -> Option<Box<Upload>> {
        let mut slots = self.lock();
        if matches!(slots.get(id), Some(Slot::Parked { .. })) {
            if let Some(Slot::Parked { upload, .. }) = slots.remove(id) {
                return Some(upload);
            }
        }
        None
    }

    #[allow(clippy::vec_box)] // the uploads are boxed in the map already; no re-boxing
    pub(super) fn expire(&self, now: Instant, older_than: Duration) -> Vec<Box<Upload>> {
        let mut slots = self.lock();
        let expired: Vec<ClientId> = parked_for(&slots, now, older_than)
            .map(|(_, id)| id)
            .collect();
        expired
            .iter()
            .filter_map(|id| match slots.remove(id) {
                Some(Slot::Parked { upload, .. }) => Some(upload),
                _ => None,
            })
            .collect()
    }

    /// Takes out the upload parked longest, if it has waited for its next packet at least
    /// `idle_for`: at the `--max-uploads` cap, room for a newcomer. Otherwise uploads
    /// started and left (packet 1 of a file, on a connection then closed) would hold
    /// every place until the upload time-out, for the price of one packet each.
    pub(super) fn evict_idlest(&self, now: Instant, idle_for: Duration) -> Option<Box<Upload>> {
        let mut slots = self.lock();
        let (_, idlest) = parked_for(&slots, now, idle_for).min()?;
        match slots.remove(&idlest) {
            Some(Slot::Parked { upload, .. }) => Some(upload),
            _ => None,
        }
    }

    #[allow(clippy::vec_box)]
    pub(super) fn drain_parked(&self) -> Vec<Box<Upload>> {
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

/// The uploads among `slots` parked for at least `at_least` by `now`: when each was
/// parked, and its client.
fn parked_for(
    slots: &Slots,
    now: Instant,
    at_least: Duration,
) -> impl Iterator<Item = (Instant, ClientId)> + '_ {
    slots.iter().filter_map(move |(id, slot)| match slot {
        Slot::Parked { since, .. } if now.saturating_duration_since(*since) >= at_least => {
            Some((*since, *id))
        }
        _ => None,
    })
}

/// The uploads among `slots` (a removal's hold is none).
fn uploads(slots: &Slots) -> usize {
    slots
        .values()
        .filter(|slot| !matches!(slot, Slot::Held))
        .count()
}

/// A client's slot held while the client is removed ([`Registry::hold_for_removal`]);
/// dropping it frees the slot. Only one hold per client exists at a time, and nothing
/// else replaces a held slot, so the slot is this hold's own.
pub(super) struct RemovalHold {
    registry: Arc<Registry>,
    id: ClientId,
}

impl Drop for RemovalHold {
    fn drop(&mut self) {
        let mut slots = self.registry.lock();
        if matches!(slots.get(&self.id), Some(Slot::Held)) {
            slots.remove(&self.id);
        }
    }
}

/// An upload checked out by the connection receiving one of its packets.
///
/// Dropping a lease that was neither parked nor finished abandons the upload (slot freed,
/// temporary file removed).
pub struct Lease {
    pub(super) upload: Option<Box<Upload>>,
    pub(super) registry: Arc<Registry>,
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
pub(super) fn upload_room(upload: &Upload) -> usize {
    upload
        .batch
        .capacity()
        .min(BATCH_CAPACITY)
        .saturating_sub(upload.filled + BATCH_SLACK)
}

impl Lease {
    pub(super) fn new(mut upload: Box<Upload>, registry: Arc<Registry>) -> Self {
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
        if upload.batch.capacity() == 0 && upload.grant.bytes >= BATCH_CAPACITY {
            upload.batch = registry.batch_buffer();
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

    /// The upload's serial number (the same for all its packets).
    pub fn serial(&self) -> Option<u64> {
        self.upload.as_ref().map(|u| u.serial)
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
    pub fn push(&mut self, content: &[u8]) -> Result<usize, UploadError> {
        let upload = self.upload.as_mut().ok_or(UploadError::Closed)?;
        if content.is_empty() {
            return Ok(0);
        }
        if upload.packet_remaining == 0 {
            return Err(UploadError::MoreThanAnnounced);
        }
        let cipher_left = upload.encrypted_size.saturating_sub(upload.received);
        if cipher_left == 0 {
            // Zero padding after the file's last encrypted byte (rule S11): checked,
            // never decrypted.
            let take = content
                .len()
                .min(usize::try_from(upload.packet_remaining).unwrap_or(usize::MAX));
            let padding = content.get(..take).unwrap_or_default();
            if padding.iter().any(|&byte| byte != 0) {
                return Err(UploadError::NonZeroPadding {
                    encrypted: upload.encrypted_size,
                });
            }
            upload.packet_remaining -= take as u64;
            return Ok(take);
        }
        // Room so that the decryptor's output (input + at most one held-back block)
        // never exceeds the buffer's capacity.
        let room = upload_room(upload);
        let take = content
            .len()
            .min(room)
            .min(usize::try_from(upload.packet_remaining).unwrap_or(usize::MAX))
            .min(usize::try_from(cipher_left).unwrap_or(usize::MAX));
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
            .map_err(UploadError::Decryption)?;
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

    /// Hands the full batch to a [`BackgroundWrite`] and goes on with the spare buffer,
    /// without blocking. `Ok(None)` when that cannot be done now: the previous write is
    /// still in flight, or the budget has no room for a second buffer; then
    /// [`Lease::flush`] (blocking) does it. `Err`: the previous write failed.
    pub fn write_behind(&mut self) -> std::io::Result<Option<BackgroundWrite>> {
        let Some(upload) = self.upload.as_mut() else {
            return Ok(None);
        };
        if upload.filled == 0 || !upload.collect(false)? {
            return Ok(None);
        }
        // The spare is granted as much as the batch holds; without room in the budget
        // for it, the batch is written the old way (blocking) instead.
        let capacity = upload.batch.capacity();
        let held = upload.behind.grant.as_ref().map_or(0, |grant| grant.bytes);
        if held < capacity {
            let extra = self.registry.budget.grant(capacity - held);
            if extra < capacity - held {
                self.registry.budget.give_back(extra);
                return Ok(None);
            }
            match upload.behind.grant.as_mut() {
                Some(grant) => grant.bytes += extra,
                None => {
                    upload.behind.grant = Some(BatchGrant {
                        bytes: extra,
                        registry: Arc::clone(&self.registry),
                    })
                }
            }
        }
        let Some(temp) = upload.temp.take() else {
            return Ok(None);
        };
        // Not cleared: the spare's stale bytes are scratch space like the batch's (the
        // decryptor writes before anything reads), so it is zero-filled only once.
        let mut next = std::mem::replace(&mut upload.behind.spare, self.registry.empty_batch());
        if next.capacity() == 0 && capacity >= BATCH_CAPACITY {
            next = self.registry.batch_buffer();
        }
        let len = next.len();
        next.reserve_exact(capacity.saturating_sub(len));
        let batch = std::mem::replace(&mut upload.batch, next);
        let filled = std::mem::take(&mut upload.filled);
        let (done, in_flight) = std::sync::mpsc::sync_channel(1);
        upload.behind.in_flight = Some(in_flight);
        Ok(Some(BackgroundWrite {
            temp,
            batch,
            filled,
            done,
        }))
    }

    /// Writes the batch to the temporary file after the write in flight, if any
    /// (blocking).
    pub fn flush(&mut self) -> std::io::Result<()> {
        match self.upload.as_mut() {
            Some(upload) => {
                upload.settle()?;
                if upload.filled > 0 {
                    let bytes = upload.batch.get(..upload.filled).unwrap_or_default();
                    let temp = upload.temp.as_mut().ok_or_else(temp_lost)?;
                    temp.write_all(bytes)?;
                    upload.filled = 0;
                }
                Ok(())
            }
            None => Ok(()),
        }
    }

    pub(super) fn take(&mut self) -> Option<Box<Upload>> {
        self.upload.take()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn progress() -> Progress {
        Progress {
            file: Name::new("f.bin").unwrap(),
            packets: 0,
            total: 2,
            parked: false,
        }
    }

    /// `--max-uploads-per-address 0`: no cap (behind a proxy every client has its address).
    #[test]
    fn a_per_address_cap_of_0_is_no_cap() {
        let registry = Arc::new(Registry::default());
        assert_eq!(registry.max_uploads_per_address, 0);
        let peer = Some("10.0.0.1".parse::<IpAddr>().unwrap());
        let claims: Vec<_> = (0..300u16)
            .map(|n| {
                let mut id = [0u8; 16];
                id[..2].copy_from_slice(&n.to_le_bytes());
                registry.claim(&ClientId(id), peer, progress())
            })
            .collect();
        assert!(claims.iter().all(Result::is_ok));
    }

    /// `--max-uploads-per-address` counts an IPv6 /64 as one address, as the connection
    /// cap and the rate limits do: rotating addresses within it gains nothing.
    #[test]
    fn the_per_address_cap_counts_an_ipv6_64_as_one_address() {
        let registry = Arc::new(Registry {
            max_uploads_per_address: 1,
            ..Registry::default()
        });
        let peer = |text: &str| Some(text.parse::<IpAddr>().unwrap());
        let first = registry
            .claim(&ClientId([1; 16]), peer("2001:db8:0:1::1"), progress())
            .unwrap();
        let same_64 = registry.claim(&ClientId([2; 16]), peer("2001:db8:0:1::2"), progress());
        assert!(matches!(same_64, Err(ClaimError::TooManyFromAddress(1))));
        let other_64 = registry.claim(&ClientId([3; 16]), peer("2001:db8:0:2::1"), progress());
        assert!(other_64.is_ok());
        // The first upload ends: its /64 may start another.
        registry.release(&ClientId([1; 16]), first.0);
        drop(first);
        assert!(registry
            .claim(&ClientId([2; 16]), peer("2001:db8:0:1::2"), progress())
            .is_ok());
    }
}
