//! Sending a file within the session and handling the server's replies to it: the
//! checksum verdict (900/901/902), 1607 retries, and the switch to one connection per
//! request when the server turns out to close after each reply (rule C1).

use std::io;

use sfc_proto::{ClientId, Name, Request, RequestBody, RequestCode, Response};

use super::{retry_after_server_error, Session, MAX_RESENDS};
use crate::config::FileToSend;
use crate::connection::{file_reply_allowance, unexpected, Connection, Failure, Mode};
use crate::error::ClientError;
use crate::progress::{human_bytes, Reporter, Verbosity};
use crate::upload::packets::PacketSource;
use crate::upload::pipeline::{write_paced, write_pipelined, PipeError};
use crate::upload::{self, trace_packet, OpenSend, SendParams, Uploader};

/// How one file ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FileResult {
    /// Checksums matched, 900 acknowledged.
    Stored {
        /// The agreed checksum.
        cksum: u32,
        /// How many times the file was sent.
        sends: u32,
    },
    /// Checksums never matched; 902 was sent.
    ChecksumMismatch {
        /// How many times the file was sent.
        sends: u32,
    },
}

impl Session {
    /// Sends one file until the checksums agree or the resends are used up.
    pub fn send_file(
        &mut self,
        file: &FileToSend,
        packet_size: upload::PacketSizing,
    ) -> Result<FileResult, ClientError> {
        // Measure again: the plan must describe the bytes we are about to read.
        let before = Snapshot::take(file)?;
        let plan = plan_as_now(file, before.len, packet_size)?;
        let label = file.label.as_str();
        for send in 1..=MAX_RESENDS + 1 {
            let (server_cksum, our_cksum) = match self.send_once(file, plan, send) {
                Ok(checksums) => checksums,
                Err(error) => {
                    if send > 1 {
                        self.drop_unverified_copy(file, &error);
                    }
                    return Err(error);
                }
            };
            if server_cksum == our_cksum {
                return self.confirm_stored(file, &before, our_cksum, send);
            }
            self.reporter.warn(format!(
                "{label}: checksum mismatch (ours {our_cksum}, the server's {server_cksum}); {}",
                if send <= MAX_RESENDS {
                    format!("sending it again (resend {send} of {MAX_RESENDS})")
                } else {
                    "giving up".to_owned()
                }
            ));
        }
        self.send_verdict(file, false)?;
        Ok(FileResult::ChecksumMismatch {
            sends: MAX_RESENDS + 1,
        })
    }

    /// Sends the file once (send number `send`, from 1) with its progress bar; returns
    /// the server's checksum and ours.
    fn send_once(
        &mut self,
        file: &FileToSend,
        plan: upload::Plan,
        send: u32,
    ) -> Result<(u32, u32), ClientError> {
        let label = file.label.as_str();
        let bar_label = if send == 1 {
            label.to_owned()
        } else {
            format!("{label} (resend {}/{MAX_RESENDS})", send - 1)
        };
        self.reporter
            .start_bar(u64::from(plan.encrypted_size), &bar_label);
        let params = SendParams {
            file,
            plan,
            client_id: self.client_id,
            key: &self.key,
            announce_resend: send > 1,
        };
        let result = send_with_retries(&mut self.conn, &self.reporter, &mut self.uploader, &params);
        self.reporter.finish_bar();
        result
    }

    /// 900 (`confirmed`: the server keeps the file as verified) or 902 (it drops it), and
    /// its 1604.
    fn send_verdict(&mut self, file: &FileToSend, confirmed: bool) -> Result<(), ClientError> {
        let file_name = file.label.clone();
        let body = if confirmed {
            RequestBody::ChecksumOk { file_name }
        } else {
            RequestBody::ChecksumFailed { file_name }
        };
        self.expect_ack(&Request::new(self.client_id, body))
    }

    /// A resend failed (1607s, or the file changed): the server still holds the earlier
    /// send's copy, whose checksum was wrong, unverified. As for any file that fails, it
    /// is told to drop it (902), when the connection is still of use (not after a
    /// network or protocol error, which end the batch); a failed 902 is only a warning,
    /// the error reported stays the resend's.
    fn drop_unverified_copy(&mut self, file: &FileToSend, error: &ClientError) {
        if !matches!(
            error,
            ClientError::ServerErrors { .. } | ClientError::File { .. }
        ) {
            return;
        }
        self.drop_copy_or_warn(file, "its unverified copy");
    }

    /// 902 for a file that failed, whose own failure is what gets reported: a 902 that
    /// fails too is only a warning, and the connection, which may be out of step whatever
    /// the reply was, is closed (the next request opens a new one).
    fn drop_copy_or_warn(&mut self, file: &FileToSend, copy: &str) {
        if let Err(dropped) = self.send_verdict(file, false) {
            self.conn.close();
            self.reporter.warn(format!(
                "{}: could not tell the server to drop {copy} (902): {dropped}",
                file.label.as_str()
            ));
        }
    }

    /// The checksums agree: the check that the file did not change meanwhile, then 900.
    fn confirm_stored(
        &mut self,
        file: &FileToSend,
        before: &Snapshot,
        cksum: u32,
        send: u32,
    ) -> Result<FileResult, ClientError> {
        // The server has exactly what was read. If the file changed meanwhile, that is a
        // mix of before and after, not the file: 902 has the server drop it rather than
        // keep it as confirmed (the checksums agree all the same).
        if let Err(changed) = before
            .unchanged(file)
            .and_then(|()| before.same_content(file, cksum))
        {
            // The change is what the user must hear about, even if the 902 fails too.
            self.drop_copy_or_warn(file, "the copy");
            return Err(changed);
        }
        self.send_verdict(file, true)?;
        self.reporter.info(format!(
            "{}: stored on {} ({}), checksum {cksum} confirmed{}",
            file.label.as_str(),
            self.conn.server(),
            human_bytes(before.len),
            if send > 1 {
                format!(" after {send} sends")
            } else {
                String::new()
            }
        ));
        Ok(FileResult::Stored { cksum, sends: send })
    }
}

/// The packet plan for the file's size now (`size`): the one made when the batch was
/// checked, unless the file has changed size since.
fn plan_as_now(
    file: &FileToSend,
    size: u64,
    packet_size: upload::PacketSizing,
) -> Result<upload::Plan, ClientError> {
    if size == file.size {
        return Ok(file.plan);
    }
    upload::plan(size, packet_size).map_err(|reason| ClientError::File {
        path: file.path.clone(),
        reason,
    })
}

/// How close to the snapshot a modification time must be for a write after it to be
/// possibly invisible: filesystems keep times in ticks (a few ms on ext4 before Linux
/// 6.13, 2 s on FAT), and a write in the tick of the one the snapshot saw leaves the
/// time as it was.
const RACY_WINDOW: std::time::Duration = std::time::Duration::from_secs(2);

/// A file's size and modification time, to notice a file that changes while it is sent,
/// and when they were read; on Unix also which file it is (device and inode) and its
/// change time, which every write and every change of the times sets: a file replaced
/// by a copy that keeps its size and time (`cp -p`, `rsync -t`), or rewritten and its time
/// set back (`touch -r`), shows there.
#[derive(Clone, Copy, Debug)]
struct Snapshot {
    len: u64,
    modified: Option<std::time::SystemTime>,
    identity: Option<FileIdentity>,
    taken: std::time::SystemTime,
}

/// Device, inode and change time (seconds, nanoseconds) of a file.
type FileIdentity = (u64, u64, i64, i64);

#[cfg(unix)]
fn file_identity(metadata: &std::fs::Metadata) -> Option<FileIdentity> {
    use std::os::unix::fs::MetadataExt;
    Some((
        metadata.dev(),
        metadata.ino(),
        metadata.ctime(),
        metadata.ctime_nsec(),
    ))
}

#[cfg(not(unix))]
fn file_identity(_metadata: &std::fs::Metadata) -> Option<FileIdentity> {
    None
}

/// Why a file cannot be looked at any more.
enum Unreadable {
    /// Its metadata cannot be read (removed, say).
    Gone(io::Error),
    /// Something else now has its path.
    NotRegular,
}

impl Snapshot {
    fn take(file: &FileToSend) -> Result<Snapshot, ClientError> {
        Snapshot::look(file).map_err(|why| ClientError::File {
            path: file.path.clone(),
            reason: match why {
                Unreadable::Gone(e) => format!("cannot be read: {e}"),
                Unreadable::NotRegular => "is no longer a regular file".to_owned(),
            },
        })
    }

    fn look(file: &FileToSend) -> Result<Snapshot, Unreadable> {
        let taken = std::time::SystemTime::now();
        let metadata = std::fs::metadata(&file.path).map_err(Unreadable::Gone)?;
        // Checked when the batch was made; replaced since by something else (a FIFO, whose
        // open would wait for a writer with no time limit): not sent.
        if !metadata.is_file() {
            return Err(Unreadable::NotRegular);
        }
        Ok(Snapshot {
            len: metadata.len(),
            modified: metadata.modified().ok(),
            identity: file_identity(&metadata),
            taken,
        })
    }

    /// Whether a change after this snapshot could have kept the modification time: the
    /// file was modified within [`RACY_WINDOW`] of the snapshot (or its time is unknown).
    fn racy(&self) -> bool {
        // A time at the end of the range (`touch -d @9223372036854775807`) is racy too.
        self.modified.is_none_or(|modified| {
            modified
                .checked_add(RACY_WINDOW)
                .is_none_or(|end| end >= self.taken)
        })
    }

    /// For a [`Self::racy`] snapshot only (a file written just before it was sent): reads
    /// the file again and compares its cksum with the one the server confirmed, so that a
    /// write the times cannot show is not confirmed (git's "racily clean" entries).
    fn same_content(&self, file: &FileToSend, confirmed: u32) -> Result<(), ClientError> {
        if !self.racy() {
            return Ok(());
        }
        let read_error = |e: std::io::Error| ClientError::File {
            path: file.path.clone(),
            reason: format!("cannot be read again: {e}"),
        };
        let reader = std::fs::File::open(&file.path).map_err(read_error)?;
        let mut sum = sfc_crypto::Cksum::new();
        std::io::copy(
            &mut std::io::BufReader::with_capacity(64 * 1024, reader),
            &mut sum,
        )
        .map_err(read_error)?;
        if sum.finish() == confirmed {
            return Ok(());
        }
        Err(self.changed(
            file,
            "its content changed, its size and time did not".to_owned(),
        ))
    }

    /// An error when the file is no longer as it was when this snapshot was taken.
    fn unchanged(&self, file: &FileToSend) -> Result<(), ClientError> {
        // Gone or replaced by something else since: whether it changed while it was read
        // cannot be told, so it counts as changed (and the message says 902 was sent).
        let now = Snapshot::look(file).map_err(|why| {
            let how = match why {
                Unreadable::Gone(e) => format!("it can no longer be read: {e}"),
                Unreadable::NotRegular => "it is no longer a regular file".to_owned(),
            };
            self.changed(file, how)
        })?;
        if (now.len, now.modified, now.identity) == (self.len, self.modified, self.identity) {
            return Ok(());
        }
        let how = if now.len != self.len {
            format!("its size went from {} to {} bytes", self.len, now.len)
        } else if now.modified != self.modified {
            "it was modified".to_owned()
        } else {
            "it was replaced or written to, its size and time kept".to_owned()
        };
        Err(self.changed(file, how))
    }

    /// The error for a file that changed while it was sent (`how`).
    fn changed(&self, file: &FileToSend, how: String) -> ClientError {
        ClientError::File {
            path: file.path.clone(),
            reason: format!(
                "changed while it was being sent ({how}): the {} bytes the server received are \
                 not the file as it was or is now, so it was told to drop them (902); send it \
                 again once it no longer changes",
                self.len
            ),
        }
    }
}

/// One send of the file, repeated on 1607 (at most 3 retries) and once more on a new
/// connection if the one it was sent on was closed: in the same style if the server had
/// kept that connection for several replies (an idle time-out or a restart, rule C1);
/// otherwise in the same style too the first time, and in per-request mode if the send
/// is cut again on a connection that carried at most one reply (the server closes after
/// each reply). A send streams up to the whole file before it reads a reply, so one cut
/// (a network failure, a balancer dropping a connection) is no proof of that style, and
/// switching on it would cost every later packet of the run a connection.
fn send_with_retries(
    conn: &mut Connection,
    reporter: &Reporter,
    uploader: &mut Uploader,
    params: &SendParams<'_>,
) -> Result<(u32, u32), ClientError> {
    let mut server_errors = 0;
    let mut cut_after_one_reply = false;
    loop {
        match send_once(uploader, conn, reporter, params, cut_after_one_reply) {
            Ok(Outcome::Received {
                server_cksum,
                our_cksum,
            }) => return Ok((server_cksum, our_cksum)),
            Ok(Outcome::ServerError { request }) => {
                server_errors += 1;
                let what = format!("{request} for {}", params.file.label);
                if !retry_after_server_error(reporter, server_errors, &what) {
                    return Err(ClientError::ServerErrors {
                        server: conn.server().to_owned(),
                        request: what,
                        attempts: server_errors,
                    });
                }
                reporter.set_progress(0);
            }
            Err(AttemptError::Gone { sent }) => {
                // Closed without a reply to this send: the original server does that when
                // it closed after its previous reply, a server that died does it too.
                // Only one that takes a new connection is treated as the former, only if
                // it had not kept the lost connection for several replies, and only the
                // second time.
                let kept = conn.kept_for_several_replies();
                conn.close();
                if kept {
                    conn.report_kept_connection_closed();
                    // No longer a cut after one reply: a close on the next, fresh,
                    // connection is a failure again (or every send could be cut for ever).
                    cut_after_one_reply = false;
                }
                if let Err(e) = conn.prepare() {
                    return Err(interrupted(ClientError::Network(e), params, sent));
                }
                if !kept && cut_after_one_reply {
                    conn.switch_to_per_request();
                } else if !kept {
                    cut_after_one_reply = true;
                    reporter.detail(
                        Verbosity::Verbose,
                        format!(
                            "   the connection was closed during the send of {} ({sent} bytes \
                             sent); sending it again on a new one",
                            params.file.label
                        ),
                    );
                }
                reporter.set_progress(0);
            }
            Err(AttemptError::Fatal(e)) => return Err(e),
        }
    }
}

/// Names the file and how far its upload got in a network error that ended it.
fn interrupted(error: ClientError, params: &SendParams<'_>, sent: u64) -> ClientError {
    let ClientError::Network(mut network) = error else {
        return error;
    };
    let total = u64::from(params.plan.encrypted_size);
    network.during = format!(
        "{} (the upload of {} was interrupted at {} %, {} of {} sent)",
        network.during,
        params.file.label,
        (sent * 100).checked_div(total).unwrap_or(0),
        human_bytes(sent),
        human_bytes(total)
    );
    ClientError::Network(network)
}

/// What the server said about one complete send.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// The final 1603: the server's checksum, and ours.
    Received {
        /// The server's cksum of the decrypted file.
        server_cksum: u32,
        /// Our cksum of what we read.
        our_cksum: u32,
    },
    /// 1607 to a request of this send.
    ServerError {
        /// The request answered with 1607, e.g. `828 (file packet)`.
        request: String,
    },
}

/// Why a send did not complete.
#[derive(Debug)]
pub enum AttemptError {
    /// In persistent mode, the connection was closed without a reply to this send, maybe
    /// by a server that closes after each reply: the caller reconnects, switches to
    /// per-request mode and sends again.
    Gone {
        /// Ciphertext bytes handed to the connection before it was found closed.
        sent: u64,
    },
    /// Anything else: reported to the user.
    Fatal(ClientError),
}

impl From<ClientError> for AttemptError {
    fn from(e: ClientError) -> Self {
        AttemptError::Fatal(e)
    }
}

/// Sends the file once (with a 901 first when `announce_resend`) and returns the
/// server's verdict.
/// `after_cut`: the send before this one was cut on a connection that had carried at
/// most one reply. A close without a reply on this one, fresh as it is, is then taken for
/// a second such cut (a server that closes after each reply, late) rather than a failure.
fn send_once(
    uploader: &mut Uploader,
    conn: &mut Connection,
    reporter: &Reporter,
    params: &SendParams<'_>,
    after_cut: bool,
) -> Result<Outcome, AttemptError> {
    let fresh = conn.prepare().map_err(ClientError::from)? && !after_cut;
    let resend = params.announce_resend.then(|| {
        Request::new(
            params.client_id,
            RequestBody::ChecksumRetry {
                file_name: params.file.label.clone(),
            },
        )
        .encode()
    });
    reporter.detail(
        Verbosity::Verbose,
        format!(
            "-> {} x {} packet(s) of up to {} B content, {} B ciphertext of {} B",
            RequestCode::SendFile.described(),
            params.plan.total_packets,
            params.plan.packet_content,
            params.plan.encrypted_size,
            params.plan.orig_size
        ),
    );
    let OpenSend {
        mut source,
        out,
        spare,
    } = uploader.open(params)?;
    let result = match conn.mode() {
        Mode::Persistent => send_persistent(
            conn,
            reporter,
            &mut source,
            (out, spare),
            resend.as_deref(),
            fresh,
        ),
        Mode::PerRequest => send_per_request(conn, reporter, &mut source, out, resend.as_deref()),
    };
    result.map_err(|error| match error {
        AttemptError::Gone { .. } => AttemptError::Gone { sent: source.sent },
        AttemptError::Fatal(e) => AttemptError::Fatal(interrupted(e, params, source.sent)),
    })
}

fn send_persistent(
    conn: &mut Connection,
    reporter: &Reporter,
    source: &mut PacketSource<'_>,
    (out, spare): (&mut Vec<u8>, &mut Vec<u8>),
    resend: Option<&[u8]>,
    fresh: bool,
) -> Result<Outcome, AttemptError> {
    let what = RequestCode::SendFile.described().to_string();
    let on_failure = |conn: &mut Connection, failure: Failure, what: &str| match failure {
        Failure::Gone { .. } if !fresh => AttemptError::Gone { sent: 0 },
        other => AttemptError::Fatal(conn.error(other, what)),
    };
    if let Some(bytes) = resend {
        // No reply expected on a connection that has carried requests (rule S2);
        // a stray 1604 some servers send anyway is skipped below (rule C5).
        conn.log_request(bytes);
    }
    let pace = conn.pace();
    let timeout = conn.io_timeout();
    let Some(stream) = conn.stream_mut() else {
        return Err(on_failure(
            conn,
            Failure::Gone {
                phase: "sending",
                error: io::Error::from(io::ErrorKind::NotConnected),
            },
            &what,
        ));
    };
    let written = match pace {
        Some(pause) => write_paced(stream, reporter, source, out, resend, (pause, timeout)),
        None => write_pipelined(stream, reporter, source, (out, spare), resend, timeout),
    };
    match written {
        Ok(()) => reporter.waiting_for_checksum(),
        Err(PipeError::Source(e)) => {
            // The stream carries a partial request now: it cannot be used again.
            conn.close();
            return Err(AttemptError::Fatal(e));
        }
        Err(PipeError::Write(error)) => {
            if conn.refusal_before_close().is_some() {
                return Ok(Outcome::ServerError { request: what });
            }
            let failure = conn.write_failed(error);
            return Err(on_failure(conn, failure, &what));
        }
    }
    await_checksum(conn, reporter, source, &what).map_err(|error| match error {
        ReplyError::Io(failure) => on_failure(conn, failure, &what),
        ReplyError::Fatal(e) => AttemptError::Fatal(e),
    })
}

/// Why waiting for the checksum failed: the connection, or a reply we cannot accept.
enum ReplyError {
    Io(Failure),
    Fatal(ClientError),
}

/// Reads the replies after a pipelined send until the final 1603; skips strays (1604
/// after 901, 1603 for intermediate packets from a server that answers them anyway), but
/// not forever.
fn await_checksum(
    conn: &mut Connection,
    reporter: &Reporter,
    source: &PacketSource<'_>,
    what: &str,
) -> Result<Outcome, ReplyError> {
    let our_cksum = source.checksum();
    let mut strays = 0u32;
    let stray_limit = u32::from(source.plan.total_packets) + 2;
    conn.allow_for_replies(file_reply_allowance(
        conn.io_timeout(),
        source.plan.encrypted_size,
    ));
    loop {
        let response = match conn.read_reply() {
            Ok(r) => r,
            Err(failure) => return Err(ReplyError::Io(failure)),
        };
        conn.replied(&response);
        match response {
            Response::FileReceived {
                client_id,
                content_size,
                file_name,
                cksum,
            } => {
                check_received(conn, reporter, source, client_id, content_size, &file_name);
                return Ok(Outcome::Received {
                    server_cksum: cksum,
                    our_cksum,
                });
            }
            Response::PacketReceived { .. } | Response::Ack { .. } if strays < stray_limit => {
                strays += 1;
                reporter.detail(
                    Verbosity::Verbose,
                    format!(
                        "   skipped a stray {} while waiting for the file's checksum",
                        response.code().described()
                    ),
                );
            }
            Response::ServerError => {
                // A server may have answered an intermediate packet with this 1607 and
                // queued more replies (one per later packet) behind it: they would be
                // taken for replies to the retry. Drop the connection with them; the
                // retry starts on a fresh one (state lives per client ID, not connection).
                conn.close();
                return Ok(Outcome::ServerError {
                    request: what.to_owned(),
                });
            }
            other => {
                return Err(ReplyError::Fatal(unexpected(
                    conn,
                    RequestCode::SendFile,
                    &other,
                    "1603 (file received)",
                )))
            }
        }
    }
}

fn send_per_request(
    conn: &mut Connection,
    reporter: &Reporter,
    source: &mut PacketSource<'_>,
    out: &mut Vec<u8>,
    resend: Option<&[u8]>,
) -> Result<Outcome, AttemptError> {
    if let Some(bytes) = resend {
        match conn.round_trip(bytes)? {
            Response::Ack { .. } => {}
            Response::ServerError => {
                return Ok(Outcome::ServerError {
                    request: RequestCode::ChecksumRetry.described().to_string(),
                })
            }
            other => {
                return Err(AttemptError::Fatal(unexpected(
                    conn,
                    RequestCode::ChecksumRetry,
                    &other,
                    "1604 (acknowledged)",
                )))
            }
        }
    }
    let total = source.plan.total_packets;
    loop {
        out.clear();
        let Some(info) = source.next_into(out)? else {
            return Err(AttemptError::Fatal(ClientError::Internal(
                "the file ended before its last packet".to_owned(),
            )));
        };
        trace_packet(reporter, &info, total);
        if info.last {
            reporter.waiting_for_checksum();
        }
        let response = if info.last {
            let allowance = file_reply_allowance(conn.io_timeout(), source.plan.encrypted_size);
            conn.round_trip_allowing(out, allowance)?
        } else {
            conn.round_trip(out)?
        };
        reporter.set_progress(source.sent);
        match (info.last, response) {
            (
                true,
                Response::FileReceived {
                    client_id,
                    content_size,
                    file_name,
                    cksum,
                },
            ) => {
                check_received(conn, reporter, source, client_id, content_size, &file_name);
                return Ok(Outcome::Received {
                    server_cksum: cksum,
                    our_cksum: source.checksum(),
                });
            }
            (false, Response::PacketReceived { .. } | Response::FileReceived { .. }) => {}
            (_, Response::ServerError) => {
                return Ok(Outcome::ServerError {
                    request: RequestCode::SendFile.described().to_string(),
                })
            }
            (last, other) => {
                return Err(AttemptError::Fatal(unexpected(
                    conn,
                    RequestCode::SendFile,
                    &other,
                    if last {
                        "1603 (file received) with the checksum"
                    } else {
                        "1603 (packet received)"
                    },
                )))
            }
        }
    }
}

fn check_received(
    conn: &Connection,
    reporter: &Reporter,
    source: &PacketSource<'_>,
    client_id: ClientId,
    content_size: u32,
    file_name: &Name,
) {
    if content_size != source.plan.encrypted_size {
        reporter.detail(
            Verbosity::Verbose,
            format!(
                "   note: {} reports {content_size} B received, we sent {} B",
                conn.server(),
                source.plan.encrypted_size
            ),
        );
    }
    if file_name != &source.header.file_name {
        reporter.detail(
            Verbosity::Verbose,
            format!("   note: the server names the file {file_name:?}"),
        );
    }
    if client_id != source.client_id {
        reporter.detail(
            Verbosity::Verbose,
            format!("   note: the server's reply carries client ID {client_id}"),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, SystemTime};

    #[test]
    fn only_a_file_modified_just_before_its_snapshot_is_racy() {
        let taken = SystemTime::now();
        let at = |ago: u64| Snapshot {
            len: 1,
            modified: Some(taken - Duration::from_secs(ago)),
            identity: None,
            taken,
        };
        assert!(at(0).racy());
        assert!(at(1).racy());
        assert!(!at(10).racy());
        let unknown = Snapshot {
            modified: None,
            ..at(10)
        };
        assert!(unknown.racy());
        // The last second a file system may hold: no overflow (it was a panic, exit 101).
        let last = SystemTime::UNIX_EPOCH + Duration::from_secs(i64::MAX as u64);
        let far = Snapshot {
            modified: Some(last),
            ..at(10)
        };
        assert!(far.racy());
    }

    /// A file rewritten with its size and modification time kept (as `touch -r` or
    /// `cp -p` leave it), long after it was last written (so not read again as a racy
    /// one), is seen as changed: its change time moved. So is a file replaced by a copy
    /// with the same size and time.
    #[cfg(unix)]
    #[test]
    fn a_rewrite_that_keeps_size_and_time_is_seen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("data.bin");
        std::fs::write(&path, b"content").unwrap();
        let old = SystemTime::now() - Duration::from_secs(3600);
        let set_old = |path: &std::path::Path| {
            std::fs::OpenOptions::new()
                .write(true)
                .open(path)
                .unwrap()
                .set_modified(old)
                .unwrap();
        };
        set_old(&path);
        let file = crate::files::check_file(&path, crate::upload::PacketSizing::default()).unwrap();
        let before = Snapshot::take(&file).unwrap();
        assert!(!before.racy());
        assert!(before.unchanged(&file).is_ok());
        // The change time has a tick of its own: make sure the rewrite lands on another.
        std::thread::sleep(Duration::from_millis(20));
        std::fs::write(&path, b"CONTENT").unwrap();
        set_old(&path);
        let changed = before.unchanged(&file).unwrap_err().to_string();
        assert!(changed.contains("its size and time kept"), "{changed}");
        // A copy put in its place, size and time as they were.
        let copy = dir.path().join("copy.bin");
        std::fs::write(&copy, b"content").unwrap();
        set_old(&copy);
        let again = Snapshot::take(&file).unwrap();
        std::fs::rename(&copy, &path).unwrap();
        assert!(again.unchanged(&file).is_err());
    }

    /// A file checked for the batch and replaced by a FIFO before its send is refused
    /// at its snapshot, not opened (which would wait for a writer for ever).
    #[cfg(unix)]
    #[test]
    fn a_file_replaced_by_a_fifo_is_not_sent() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("data.bin");
        std::fs::write(&path, b"content").unwrap();
        let file = crate::files::check_file(&path, crate::upload::PacketSizing::default()).unwrap();
        std::fs::remove_file(&path).unwrap();
        let made = std::process::Command::new("mkfifo")
            .arg(&path)
            .status()
            .unwrap();
        assert!(made.success());
        let Err(ClientError::File { reason, .. }) = Snapshot::take(&file) else {
            panic!("a FIFO is snapshotted as a file")
        };
        assert!(reason.contains("no longer a regular file"), "{reason}");
    }
}
