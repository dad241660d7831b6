//! File packets in a conversation: starting or continuing an upload, taking content,
//! the flush jobs, and the end of a packet (rule S2's short 1603, swallowing the
//! rest of a refused transfer).

use super::super::io::{Done, JobKind};
use super::{Conversation, Current, Step, Waiting, ADDRESS_REFUSED};
use crate::session::{Action, CloseReason, Core, Ctx, Lease, Outcome};
use sfc_proto::{
    encrypted_size, FilePacketHeader, RequestCode, RequestHeader, Response, ResponseCode,
};
use std::sync::Arc;

impl Conversation {
    pub(super) fn on_file_packet(
        &mut self,
        header: RequestHeader,
        packet: FilePacketHeader,
        content_len: u32,
    ) {
        self.renew_deadline();
        self.progress = 0;
        self.version = header.version;
        self.verdict_due = false;
        let id = header.client_id;
        let (number, total) = (packet.packet_number, packet.total_packets);
        self.file = Some(packet.file_name.clone());
        let mut current = Current {
            header,
            file_name: packet.file_name.clone(),
            number,
            total,
            lease: None,
            reject: None,
            swallow: false,
        };
        // Not even the rest of a refused transfer is read beyond every limit (rule S13).
        if self.refuse_oversized(&current.header, Some((number, total)), content_len) {
            return;
        }
        if self.refused == Some(id) && number != 1 {
            current.swallow = true;
            self.current = Some(current);
            return;
        }
        self.refused = None;
        self.start_or_continue(&mut current, packet, content_len);
        self.current = Some(current);
    }

    /// Refuses a packet (valid or not; `numbers`: its packet number and total, if they
    /// decoded) whose content is beyond every limit and closes the connection: do not
    /// read gigabytes to skip them. Returns whether it was refused.
    pub(super) fn refuse_oversized(
        &mut self,
        header: &RequestHeader,
        numbers: Option<(u16, u16)>,
        content_len: u32,
    ) -> bool {
        let max_content = encrypted_size(self.core.limits().max_file_size);
        if u64::from(content_len) <= max_content {
            return false;
        }
        let outcome = Outcome::error(format!(
            "packet of {content_len} content bytes exceeds the largest file ({max_content} encrypted bytes)"
        ));
        let payload = u64::from(header.payload_size);
        self.log(
            RequestCode::SendFile.as_u16(),
            Some(header.client_id),
            payload,
            &outcome,
            numbers.map(|(number, total)| (number, total, false)),
        );
        self.steps.push_back(Step::CountFailure { close: false });
        self.act(Action::SendAndClose(
            Response::ServerError,
            CloseReason::AfterError,
        ));
        true
    }

    /// Continues the client's parked upload (a mutex operation) or runs the job that
    /// starts a new one (database read, file creation); a refusal goes into `current`.
    fn start_or_continue(
        &mut self,
        current: &mut Current,
        packet: FilePacketHeader,
        content_len: u32,
    ) {
        let id = current.header.client_id;
        let number = current.number;
        let ctx = self.ctx();
        // Continuing a parked upload is a mutex operation; only a new upload (database
        // read, file creation) is a job.
        // Packet 1 always starts a new upload (rule S10): the job drops what the client
        // left unfinished.
        let checkout = if !self.address_allowed(&id) {
            Err(Outcome::error(ADDRESS_REFUSED))
        } else if number == 1 {
            Ok(None)
        } else {
            self.core.checkout(id)
        };
        match checkout {
            Ok(Some(mut lease)) => match Core::continue_packet(&mut lease, &packet, content_len) {
                Ok(()) => {
                    self.core.touch_upload(&mut lease, ctx.now);
                    current.lease = Some(lease);
                }
                Err(reason) => {
                    current.reject = Some(Outcome::error(format!("upload abandoned: {reason}")));
                    self.run(JobKind::Drop(lease), Waiting::Drop);
                }
            },
            Ok(None) => {
                let ctx = Ctx {
                    peer: Some(self.peer),
                    ..ctx
                };
                let job =
                    JobKind::BeginUpload(Arc::clone(&self.core), ctx, id, packet, content_len);
                self.run(job, Waiting::Begin);
            }
            Err(outcome) => current.reject = Some(outcome),
        }
    }

    /// Decrypts content into the current upload; stops for a flush job when the batch
    /// is full. Returns the bytes taken.
    pub(super) fn receive(&mut self, piece: &[u8]) -> usize {
        let Some(current) = self.current.as_mut() else {
            // An invalid 828's content: dropped.
            self.skipped(piece.len());
            return piece.len();
        };
        let mut used = 0;
        while used < piece.len() {
            let Some(lease) = current.lease.as_mut() else {
                return piece.len(); // refused packet: its content is skipped
            };
            let failure = match lease.push(piece.get(used..).unwrap_or_default()) {
                Ok(taken) => {
                    used += taken;
                    if !lease.needs_flush() {
                        continue;
                    }
                    match lease.write_behind() {
                        Ok(Some(write)) => {
                            // (`steps` directly: `current` borrows another field.)
                            self.steps.push_back(Step::Act(Action::Write(write)));
                            continue;
                        }
                        Ok(None) => {
                            // The previous write is still in flight (or no budget for a
                            // second buffer): wait for it on a blocking thread.
                            if let Some(lease) = current.lease.take() {
                                self.run(JobKind::Flush(lease), Waiting::Flush);
                            }
                            return used;
                        }
                        Err(error) => Outcome::write_failed(&error),
                    }
                }
                Err(error) => Outcome::error(format!("upload abandoned: {error}")),
            };
            // The upload is abandoned: the rest of its content is skipped.
            current.reject = Some(failure);
            if let Some(lease) = current.lease.take() {
                self.run(JobKind::Drop(lease), Waiting::Drop);
            }
            return piece.len();
        }
        used
    }

    pub(super) fn flushed(&mut self, done: Done) {
        let failure = match done {
            Done::Flushed(lease, Err(error)) => {
                self.run(JobKind::Drop(lease), Waiting::Drop);
                Outcome::write_failed(&error)
            }
            Done::Flushed(lease, Ok(())) => {
                if let Some(current) = self.current.as_mut() {
                    current.lease = Some(lease);
                }
                self.renew_deadline();
                return;
            }
            Done::Panicked(reason) => Outcome::error(reason),
            _ => Outcome::error("internal error: unexpected job result"),
        };
        if let Some(current) = self.current.as_mut() {
            current.reject = Some(failure);
        }
    }

    pub(super) fn on_packet_end(&mut self) {
        let Some(current) = self.current.take() else {
            return;
        };
        let Current {
            header,
            file_name,
            number,
            total,
            lease,
            reject,
            swallow,
        } = current;
        let payload = u64::from(header.payload_size);
        let id = header.client_id;
        if swallow {
            let outcome = Outcome::dropped("dropped: the rest of a refused transfer");
            self.end_request(
                RequestCode::SendFile.as_u16(),
                Some(id),
                payload,
                outcome,
                Some((number, total, true)),
            );
            return;
        }
        self.ending = lease.as_ref().and_then(Lease::serial);
        // Kept until the reply: finish_packet needs the packet's numbers.
        self.current = Some(Current {
            header,
            file_name,
            number,
            total,
            lease: None,
            reject: None,
            swallow: false,
        });
        let ctx = self.ctx();
        let outcome = match (lease, reject) {
            (_, Some(reject)) => reject,
            (Some(lease), None) if Core::end_packet_blocks(&ctx, &lease) => {
                let job = JobKind::EndPacket(Arc::clone(&self.core), ctx, lease);
                self.run(job, Waiting::EndPacket);
                return;
            }
            (Some(lease), None) => self.core.end_packet(&ctx, lease),
            (None, None) => Outcome::error("upload lost"),
        };
        self.finish_packet(outcome);
    }

    pub(super) fn finish_packet(&mut self, outcome: Outcome) {
        let Some(Current {
            header,
            number,
            total,
            ..
        }) = self.current.take()
        else {
            return;
        };
        let refused = outcome.code() == Some(ResponseCode::ServerError);
        let id = header.client_id;
        if refused && !self.first {
            self.refused = Some(id);
        }
        let intermediate = number < total && !refused;
        self.verdict_due = !self.first
            && !intermediate
            && matches!(outcome.reply, Some(Response::FileReceived { .. }));
        let ending = self.ending.take();
        // One entry per client: this packet's upload replaces (or ended) the earlier one.
        self.parked.retain(|p| p.client != id);
        if let (true, false, Some(serial)) = (intermediate, self.first, ending) {
            self.remember_parked(id, serial);
        }
        self.streaming = intermediate;
        let payload = u64::from(header.payload_size);
        let packet = Some((number, total, intermediate));
        self.end_request(
            RequestCode::SendFile.as_u16(),
            Some(header.client_id),
            payload,
            outcome,
            packet,
        );
    }
}
