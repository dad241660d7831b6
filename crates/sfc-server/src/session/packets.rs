//! File packets (828): starting, continuing and ending a packet of an upload.

use super::error::UploadError;
use super::uploads::{
    BatchGrant, Checkout, ClaimError, Counted, Lease, Progress, Upload, WriteBehind,
};
use super::{Core, Ctx, Outcome};
use sfc_crypto::{AesKey, CbcDecryptor, Cksum};
use sfc_proto::{
    encrypted_size, limits, ClientId, DecodeError, FilePacketHeader, RequestCode, RequestHeader,
    Response,
};
use std::sync::Arc;

impl Core {
    // ----- file packets ---------------------------------------------------------------

    pub(super) fn whole_packet(
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
                Err(error) => return Outcome::error(error.to_string()),
            };
            rest = rest.get(used..).unwrap_or_default();
            if lease.needs_flush() {
                if let Err(error) = lease.flush() {
                    return Outcome::storage_error(format!("cannot write the file: {error}"));
                }
            }
        }
        self.end_packet(ctx, lease)
    }

    /// Checks out the client's parked upload without blocking: `Ok(Some)` to continue it
    /// ([`Core::continue_packet`]), `Ok(None)` when there is none (start one with
    /// [`Core::begin_upload`]), `Err` (1607) when another connection is receiving a packet
    /// of it right now, or the client is being removed (the admin's delete of the client).
    pub fn checkout(&self, id: ClientId) -> Result<Option<Lease>, Outcome> {
        match self.registry.checkout(&id) {
            Checkout::Got(upload) => Ok(Some(Lease::new(upload, Arc::clone(&self.registry)))),
            Checkout::Vacant => Ok(None),
            Checkout::Busy => Err(Outcome::error(
                "another connection is sending a packet for this client, or its files are \
                 being removed",
            )),
        }
    }

    /// Starts receiving a packet: continues the client's parked upload, or starts a new
    /// one (packet 1, which always does: rule S10, as on a connection). On `Err` the
    /// upload (if any) has been abandoned and the outcome is a 1607. May block (database
    /// read, file creation).
    pub fn start_packet(
        &self,
        ctx: &Ctx,
        header: &RequestHeader,
        packet: &FilePacketHeader,
        content_len: u32,
    ) -> Result<Lease, Outcome> {
        if packet.packet_number == 1 {
            return self.begin_upload(ctx, header.client_id, packet, content_len);
        }
        match self.checkout(header.client_id)? {
            Some(mut lease) => match Self::continue_packet(&mut lease, packet, content_len) {
                Ok(()) => {
                    self.touch_upload(&mut lease, ctx.now);
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
        let mut lease = self.new_upload(ctx, id, packet)?;
        if let Err(reason) = Self::continue_packet(&mut lease, packet, content_len) {
            drop(lease);
            return Err(Outcome::error(format!("upload refused: {reason}")));
        }
        self.touch_upload(&mut lease, ctx.now);
        Ok(lease)
    }

    /// [`Core::touch`] for a packet of the lease's upload, unless an earlier packet of it
    /// already noted this time (with the clock read once per socket read, the packets
    /// of one read share it).
    pub fn touch_upload(&self, lease: &mut Lease, now: crate::storage::Timestamp) {
        if let Some(upload) = lease.upload.as_mut() {
            if now > upload.touched {
                upload.touched = now;
                self.touch(upload.client_id, now);
            }
        }
    }

    /// Checks that `packet` continues the lease's upload and expects its content. Pure:
    /// no I/O. On `Err` the caller drops the lease, which abandons the upload.
    pub fn continue_packet(
        lease: &mut Lease,
        packet: &FilePacketHeader,
        content_len: u32,
    ) -> Result<(), UploadError> {
        let upload = lease.upload.as_mut().ok_or(UploadError::Closed)?;
        if upload.packet_remaining != 0 {
            return Err(UploadError::PreviousIncomplete);
        }
        if u32::from(packet.packet_number) != upload.next_packet {
            return Err(UploadError::OutOfOrder {
                got: packet.packet_number,
                expected: upload.next_packet,
            });
        }
        if packet.total_packets != upload.total_packets {
            return Err(UploadError::TotalChanged {
                was: upload.total_packets,
                now: packet.total_packets,
            });
        }
        if packet.orig_file_size != upload.orig_file_size {
            return Err(UploadError::SizeChanged {
                was: upload.orig_file_size,
                now: packet.orig_file_size,
            });
        }
        if packet.file_name != upload.file_name {
            return Err(UploadError::NameChanged {
                was: upload.file_name.as_str().to_owned(),
                now: packet.file_name.as_str().to_owned(),
            });
        }
        packet.check(content_len)?;
        let after = upload.received + u64::from(content_len);
        // Beyond the encrypted size only as zero padding of the last packet, with
        // content_size the whole encrypted size (rule S11; `Lease::push` checks the zeros).
        let padded = packet.packet_number == packet.total_packets && packet.content_size_is_whole();
        if after > upload.encrypted_size && !padded {
            return Err(UploadError::TooMuchContent {
                encrypted: upload.encrypted_size,
                orig: upload.orig_file_size,
            });
        }
        upload.next_packet = u32::from(packet.packet_number) + 1;
        upload.packet_remaining = u64::from(content_len);
        Ok(())
    }

    /// Starts an upload with packet 1: what the client left unfinished is dropped, the
    /// packet and the client are checked, a slot is claimed and the temporary blob made.
    fn new_upload(
        &self,
        ctx: &Ctx,
        id: ClientId,
        packet: &FilePacketHeader,
    ) -> Result<Lease, Outcome> {
        // First, whether this packet is accepted or not (rule S10): the client has given
        // up what it left, and the connection that kept it forgets it after this packet.
        if packet.packet_number == 1 {
            self.drop_unfinished(&id, "the client started a new upload with packet 1");
        }
        self.check_first_packet(packet)?;
        let decryptor = self.client_decryptor(id)?;
        let (token, counted) = self.claim_upload(ctx, &id, packet)?;
        // The blob store chooses the name on disk.
        let temp = match self.blobs.create_temp_for(&id, packet.file_name.as_str()) {
            Ok(temp) => temp,
            Err(error) => {
                self.registry.release(&id, token);
                return Err(Outcome::storage_error(format!(
                    "cannot create a temporary file: {error}"
                )));
            }
        };
        let upload = Box::new(Upload {
            client_id: id,
            token,
            serial: self.registry.token(),
            _counted: counted,
            started: ctx.at,
            file_name: packet.file_name.clone(),
            total_packets: packet.total_packets,
            orig_file_size: packet.orig_file_size,
            encrypted_size: encrypted_size(u64::from(packet.orig_file_size)),
            next_packet: 1,
            received: 0,
            packet_remaining: 0,
            plaintext: 0,
            decryptor,
            cksum: Cksum::new(),
            temp: Some(temp),
            behind: WriteBehind::new(&self.registry),
            batch: self.registry.empty_batch(),
            filled: 0,
            grant: BatchGrant {
                bytes: 0,
                registry: Arc::clone(&self.registry),
            },
            touched: crate::storage::Timestamp(i64::MIN),
        });
        tracing::info!(
            client = %id.short(),
            file = packet.file_name.as_str(),
            size = packet.orig_file_size,
            packets = packet.total_packets,
            "upload started"
        );
        Ok(Lease::new(upload, Arc::clone(&self.registry)))
    }

    /// A new upload starts with packet 1 and a file within `--max-file-size`.
    fn check_first_packet(&self, packet: &FilePacketHeader) -> Result<(), Outcome> {
        if packet.packet_number != 1 {
            return Err(Outcome::error(format!(
                "packet {} of {} but no upload in progress (a file starts with packet 1)",
                packet.packet_number, packet.total_packets
            )));
        }
        let orig = u64::from(packet.orig_file_size);
        let max = self.limits.max_file_size;
        if orig > max {
            return Err(Outcome::error(format!(
                "file of {orig} bytes exceeds the limit of {max} bytes"
            )));
        }
        Ok(())
    }

    /// A decryptor with the AES key issued to the (known) client.
    fn client_decryptor(&self, id: ClientId) -> Result<CbcDecryptor, Outcome> {
        let record = self.known_client(id)?;
        let Some(key_bytes) = record.aes_key.as_deref() else {
            return Err(Outcome::error(
                "no AES key has been issued to this client (826 or 827 first)",
            ));
        };
        // The record's copy of the key is wiped when `record` drops (Wiped).
        let key = AesKey::from_bytes(key_bytes)
            .map_err(|e| Outcome::error(format!("the AES key on record is unusable: {e}")))?;
        CbcDecryptor::new(&key).map_err(|e| Outcome::error(format!("cannot start decryption: {e}")))
    }

    /// Packet 1 or a new AES key ends what the client left unfinished (rule S10): it is
    /// dropped (its temporary file removed) and logged with `why`.
    pub(super) fn drop_unfinished(&self, id: &ClientId, why: &str) {
        if let Some(old) = self.registry.remove_parked(id) {
            tracing::info!(
                client = %id.short(),
                file = old.file_name.as_str(),
                received = old.next_packet.saturating_sub(1),
                total = old.total_packets,
                "unfinished upload dropped: {why}"
            );
            drop(old);
        }
    }

    /// Claims the client's upload slot within the caps of uploads in progress.
    fn claim_upload(
        &self,
        ctx: &Ctx,
        id: &ClientId,
        packet: &FilePacketHeader,
    ) -> Result<(u64, Counted), Outcome> {
        let progress = Progress {
            file: packet.file_name.clone(),
            packets: 0,
            total: packet.total_packets,
            parked: false,
        };
        let mut claimed = self.registry.claim(id, ctx.peer, progress.clone());
        if matches!(claimed, Err(ClaimError::TooMany(_))) {
            // An upload idle for longer than a request may take makes room.
            if let Some(idle) = self
                .registry
                .evict_idlest(ctx.at, self.limits.request_timeout)
            {
                tracing::warn!(
                    client = %idle.client_id.short(),
                    file = idle.file_name.as_str(),
                    received = idle.next_packet.saturating_sub(1),
                    total = idle.total_packets,
                    "unfinished upload dropped for a new one: --max-uploads uploads in progress, \
                     this one the longest waiting for its next packet"
                );
                drop(idle);
                claimed = self.registry.claim(id, ctx.peer, progress);
            }
        }
        match claimed {
            Ok(claimed) => Ok(claimed),
            Err(ClaimError::Busy) => Err(Outcome::error(
                "another connection is sending a packet for this client",
            )),
            Err(ClaimError::TooMany(cap)) => {
                tracing::warn!(client = %id.short(), file = packet.file_name.as_str(), cap, "upload refused: --max-uploads uploads in progress");
                Err(Outcome::capacity_error(format!(
                    "upload refused: the server has {cap} uploads in progress, its limit (--max-uploads)"
                )))
            }
            Err(ClaimError::TooManyFromAddress(cap)) => {
                tracing::warn!(client = %id.short(), file = packet.file_name.as_str(), cap, "upload refused: --max-uploads-per-address uploads in progress from this address");
                // The address's own uploads fill it: counted, as the peer's doing.
                Err(Outcome::error(format!(
                    "upload refused: {cap} uploads in progress from this address, the limit (--max-uploads-per-address)"
                )))
            }
        }
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
            // The last batch goes after the write in flight.
            if let Some(Err(error)) = lease.upload.as_mut().map(|upload| upload.settle()) {
                return Outcome::write_failed(&error);
            }
            return match lease.take() {
                Some(upload) => self.finish(ctx, upload),
                None => Outcome::error("upload already closed"),
            };
        }
        if ctx.first_on_connection {
            if let Err(error) = lease.flush() {
                return Outcome::write_failed(&error);
            }
            // Between the packets of a connection-per-request client the upload holds
            // neither memory nor a file descriptor (the file is reopened by path).
            // (`flush` waited for the write in flight.)
            if let Some(upload) = lease.upload.as_mut() {
                upload.free_batches();
                let suspended = upload.temp.as_mut().map_or(Ok(()), |temp| temp.suspend());
                if let Err(error) = suspended {
                    return Outcome::storage_error(format!(
                        "upload abandoned: cannot close the file: {error}"
                    ));
                }
            }
        }
        match self.park(lease, ctx.at) {
            Ok(()) if ctx.first_on_connection => {
                Outcome::reply(Response::PacketReceived { client_id: id })
            }
            Ok(()) => Outcome::silent(),
            Err(error) => Outcome::error(error.to_string()),
        }
    }

    /// True when [`Core::end_packet`] will do blocking I/O for this lease.
    pub fn end_packet_blocks(ctx: &Ctx, lease: &Lease) -> bool {
        lease.is_last_packet() || ctx.first_on_connection
    }

    /// Puts an upload back in the registry between packets (no I/O; the batch of
    /// decrypted bytes stays with it). On `Err` the upload has been abandoned.
    fn park(&self, mut lease: Lease, since: std::time::Instant) -> Result<(), UploadError> {
        let Some(upload) = lease.take() else {
            return Ok(());
        };
        let id = upload.client_id;
        let token = upload.token;
        match self.registry.park(upload, since) {
            Ok(()) => Ok(()),
            Err(upload) => {
                self.registry.release(&id, token);
                drop(upload);
                Err(UploadError::SlotTaken)
            }
        }
    }
}
