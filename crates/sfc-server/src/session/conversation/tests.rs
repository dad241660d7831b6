//! The conversation alone, on in-memory storage, with time and the per-address policy
//! in the test's hands.

use super::*;
use crate::net::entropy::OsEntropy;
use crate::session::tests::encrypt;
use crate::session::uploads::FLUSH_AT;
use crate::session::{BackgroundWrite, Limits, LogLine};
use crate::storage::testing::MemoryStorage;
use crate::storage::Timestamp;
use sfc_proto::{FilePacketHeader, Name, RequestBody};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

const TIMEOUT: Duration = Duration::from_secs(10);
const PEER: IpAddr = IpAddr::V4(std::net::Ipv4Addr::LOCALHOST);

/// Registrations refused when `refuse_registrations`; failures beyond `failures_allowed`
/// exhaust the budget. Counts what it is asked.
#[derive(Debug, Default)]
struct Policy {
    refuse_registrations: bool,
    failures_allowed: usize,
    failures: AtomicUsize,
}

impl PeerPolicy for Policy {
    fn allow_registration(&self, _peer: IpAddr, _now: Instant) -> bool {
        !self.refuse_registrations
    }
    fn record_failure(&self, _peer: IpAddr, _now: Instant) -> bool {
        self.failures.fetch_add(1, Ordering::SeqCst) < self.failures_allowed
    }
    fn address_allowed(&self, _client: &ClientId, _peer: IpAddr) -> bool {
        true
    }
    fn pin(&self, _client: ClientId, _peer: IpAddr) -> Option<IpAddr> {
        None
    }
}

struct Setup {
    storage: MemoryStorage,
    core: Arc<Core>,
    policy: Arc<Policy>,
    conversation: Conversation,
    start: Instant,
}

fn setup(policy: Policy) -> Setup {
    setup_with(policy, 1 << 20, 1 << 20)
}

/// [`setup`] with other limits on the file size and on all batches.
fn setup_with(policy: Policy, max_file_size: u64, batch_budget: usize) -> Setup {
    let storage = MemoryStorage::new();
    let limits = Limits {
        max_file_size,
        upload_timeout: Duration::from_secs(600),
        batch_budget,
        request_timeout: TIMEOUT,
        max_uploads: 0,
        max_uploads_per_address: 0,
    };
    let core = Core::new(
        Box::new(storage.meta()),
        Box::new(storage.blobs()),
        limits,
        Box::new(OsEntropy),
    );
    let policy = Arc::new(policy);
    let start = Instant::now();
    let core = Arc::new(core);
    let conversation = Conversation::new(
        Arc::clone(&core),
        Arc::clone(&policy) as Arc<dyn PeerPolicy>,
        PEER,
        at(start, 0),
    );
    Setup {
        storage,
        core,
        policy,
        conversation,
        start,
    }
}

fn at(start: Instant, secs: u64) -> Now {
    Now {
        wall: Timestamp(1_700_000_000_000),
        mono: start + Duration::from_secs(secs),
    }
}

/// Every action until none is left, jobs run inline.
fn drain(conversation: &mut Conversation, now: Now) -> Vec<Action> {
    let mut actions = Vec::new();
    while let Some(action) = conversation.poll_action() {
        match action {
            Action::Run(job) => conversation.job_done(job.run(), now),
            Action::Write(write) => write.run(),
            other => actions.push(other),
        }
    }
    actions
}

fn name(s: &str) -> Name {
    Name::new(s).unwrap()
}

/// The header of a one-packet file of `content_len` bytes of an unknown client, at `now`.
fn start_unknown_clients_packet(s: &mut Setup, content_len: u32, now: Now) {
    let packet = FilePacketHeader {
        content_size: content_len,
        orig_file_size: content_len - 1,
        packet_number: 1,
        total_packets: 1,
        file_name: name("f"),
    };
    let header = RequestHeader::new(ClientId([7; 16]), RequestCode::SendFile, 267 + content_len);
    s.conversation.handle(
        Event::Decoded(RequestEvent::FilePacket {
            header,
            packet,
            content_len,
        }),
        now,
    );
}

#[test]
fn a_request_has_a_deadline_from_its_first_byte_until_its_reply() {
    let mut s = setup(Policy::default());
    assert_eq!(s.conversation.deadline(), None);
    let t1 = at(s.start, 1);
    s.conversation.handle(Event::RequestStarted, t1);
    assert_eq!(s.conversation.deadline(), Some(t1.mono + TIMEOUT));
    let request = Request::new(ClientId::ZERO, RequestBody::Register { name: name("ann") });
    s.conversation
        .handle(Event::Decoded(RequestEvent::Request(request)), t1);
    let actions = drain(&mut s.conversation, at(s.start, 2));
    assert!(
        matches!(
            actions.as_slice(),
            [
                Action::Log(LogLine::Request(RequestLog { code: 825, .. })),
                Action::Send(Response::Registered { .. })
            ]
        ),
        "{actions:?}"
    );
    assert_eq!(s.conversation.deadline(), None);
    assert_eq!(s.storage.clients().len(), 1);
}

#[test]
fn file_content_renews_the_deadline_every_64_kib() {
    let mut s = setup(Policy {
        failures_allowed: 10,
        ..Policy::default()
    });
    let content_len = 3 * CONTENT_PROGRESS_CHUNK as u32;
    let t0 = at(s.start, 0);
    start_unknown_clients_packet(&mut s, content_len, t0);
    // An unknown client: the upload is refused, its content still has to arrive.
    assert!(drain(&mut s.conversation, t0).is_empty());
    assert!(s.conversation.expects_content());
    let piece = vec![0u8; CONTENT_PROGRESS_CHUNK as usize / 2];
    let t3 = at(s.start, 3);
    assert_eq!(
        s.conversation
            .handle(Event::Decoded(RequestEvent::Content(&piece)), t3),
        piece.len()
    );
    assert_eq!(
        s.conversation.deadline(),
        Some(t0.mono + TIMEOUT),
        "not yet"
    );
    let t5 = at(s.start, 5);
    s.conversation
        .handle(Event::Decoded(RequestEvent::Content(&piece)), t5);
    assert_eq!(s.conversation.deadline(), Some(t5.mono + TIMEOUT));
    s.conversation
        .handle(Event::Decoded(RequestEvent::FilePacketEnd), t5);
    let actions = drain(&mut s.conversation, t5);
    assert!(
        matches!(
            actions.as_slice(),
            [Action::Log(_), Action::Send(Response::ServerError)]
        ),
        "{actions:?}"
    );
    assert_eq!(s.conversation.deadline(), None);
    assert!(!s.conversation.expects_content());
}

/// The job that starts an upload (a database lookup, the temporary file) may wait for the
/// store or the blocking pool: the content's deadline runs from when it is done, as after
/// a flush, not from the packet's header (it would have passed when reading resumes).
#[test]
fn the_deadline_runs_from_the_end_of_the_job_that_starts_an_upload() {
    let mut s = setup(Policy {
        failures_allowed: 10,
        ..Policy::default()
    });
    let content_len = 1000;
    let t0 = at(s.start, 0);
    start_unknown_clients_packet(&mut s, content_len, t0);
    assert_eq!(s.conversation.deadline(), Some(t0.mono + TIMEOUT));
    // The job ends after the whole time-out.
    let late = at(s.start, TIMEOUT.as_secs() + 2);
    assert!(drain(&mut s.conversation, late).is_empty());
    assert!(s.conversation.expects_content());
    assert_eq!(s.conversation.deadline(), Some(late.mono + TIMEOUT));
}

#[test]
fn the_failure_that_exhausts_the_budget_is_answered_then_the_connection_closed() {
    let mut s = setup(Policy {
        failures_allowed: 1,
        ..Policy::default()
    });
    let now = at(s.start, 0);
    let verdict = || {
        Request::new(
            ClientId([9; 16]),
            RequestBody::ChecksumOk {
                file_name: name("f"),
            },
        )
    };
    s.conversation
        .handle(Event::Decoded(RequestEvent::Request(verdict())), now);
    let actions = drain(&mut s.conversation, now);
    assert!(
        matches!(
            actions.as_slice(),
            [Action::Log(_), Action::Send(Response::ServerError)]
        ),
        "within the budget: {actions:?}"
    );
    s.conversation
        .handle(Event::Decoded(RequestEvent::Request(verdict())), now);
    let actions = drain(&mut s.conversation, now);
    assert!(
        matches!(
            actions.as_slice(),
            [
                Action::Log(LogLine::Request(_)),
                Action::Send(Response::ServerError),
                Action::Log(LogLine::FailureBudgetSpent),
                Action::Close(CloseReason::AfterError)
            ]
        ),
        "{actions:?}"
    );
    assert_eq!(s.policy.failures.load(Ordering::SeqCst), 2);
}

#[test]
fn a_reply_that_could_not_be_written_is_not_counted_as_a_failure() {
    let mut s = setup(Policy::default());
    let now = at(s.start, 0);
    let request = Request::new(
        ClientId([9; 16]),
        RequestBody::ChecksumFailed {
            file_name: name("f"),
        },
    );
    s.conversation
        .handle(Event::Decoded(RequestEvent::Request(request)), now);
    // The driver stops at the reply it cannot write.
    loop {
        match s.conversation.poll_action() {
            Some(Action::Run(job)) => s.conversation.job_done(job.run(), now),
            Some(Action::Write(write)) => write.run(),
            Some(Action::Send(_)) => break,
            Some(_) => {}
            None => panic!("no reply"),
        }
    }
    assert_eq!(s.policy.failures.load(Ordering::SeqCst), 0);
    // Nor when the driver then closes (the failure would be left for the close).
    close_like_the_driver(&mut s);
    assert_eq!(s.policy.failures.load(Ordering::SeqCst), 0);
}

#[test]
fn registrations_beyond_the_rate_limit_get_1607_without_storage_work() {
    let mut s = setup(Policy {
        refuse_registrations: true,
        failures_allowed: 10,
        ..Policy::default()
    });
    let now = at(s.start, 0);
    let request = Request::new(ClientId::ZERO, RequestBody::Register { name: name("bo") });
    s.conversation
        .handle(Event::Decoded(RequestEvent::Request(request)), now);
    let mut jobs = 0;
    let mut replies = Vec::new();
    while let Some(action) = s.conversation.poll_action() {
        match action {
            Action::Run(_) => jobs += 1,
            Action::Send(reply) => replies.push(reply),
            _ => {}
        }
    }
    assert_eq!(jobs, 0);
    assert_eq!(replies, [Response::ServerError]);
    assert!(s.storage.clients().is_empty());
}

#[test]
fn lost_framing_is_answered_1607_and_closes() {
    let mut s = setup(Policy {
        failures_allowed: 10,
        ..Policy::default()
    });
    let now = at(s.start, 0);
    s.conversation
        .handle(Event::Malformed(DecodeError::UnknownRequestCode(4242)), now);
    let actions = drain(&mut s.conversation, now);
    assert!(
        matches!(
            actions.as_slice(),
            [
                Action::Log(LogLine::Request(RequestLog { code: 4242, .. })),
                Action::SendAndClose(Response::ServerError, CloseReason::FramingLost)
            ]
        ),
        "{actions:?}"
    );
    assert_eq!(s.policy.failures.load(Ordering::SeqCst), 1);
}

/// Rule S12 (issue 12 item 3): a client that swaps packet_number and total_packets sends
/// "N of 1", "N of 2", …, "N of N": one 1607, one failure counted, one line logged with
/// the file; the rest dropped quietly, also the last one (valid in itself). A packet 1
/// afterwards is a new transfer again.
#[test]
fn a_refused_transfer_is_answered_and_counted_once_whatever_its_packets_say() {
    let mut s = setup(Policy {
        failures_allowed: 1000,
        ..Policy::default()
    });
    let now = at(s.start, 0);
    let client = ClientId([5; 16]);
    // A first request on the connection (unknown client: 1607, one failure).
    let verdict = Request::new(
        client,
        RequestBody::ChecksumOk {
            file_name: name("x"),
        },
    );
    s.conversation
        .handle(Event::Decoded(RequestEvent::Request(verdict)), now);
    drain(&mut s.conversation, now);
    assert_eq!(s.policy.failures.load(Ordering::SeqCst), 1);

    const N: u16 = 40;
    let header = RequestHeader::new(client, RequestCode::SendFile, 267 + 16);
    let fields = |total: u16| FilePacketHeader {
        content_size: u32::from(N) * 16,
        orig_file_size: u32::from(N) * 16 - 1,
        packet_number: N,
        total_packets: total,
        file_name: name("swapped.bin"),
    };
    let mut replies = 0;
    let mut logged = Vec::new();
    for total in 1..=N {
        s.conversation.handle(Event::RequestStarted, now);
        let packet = fields(total);
        if let Err(error) = packet.check(16) {
            s.conversation.handle(
                Event::Decoded(RequestEvent::Invalid {
                    header,
                    error: error.into(),
                    packet: Some(packet),
                }),
                now,
            );
        } else {
            s.conversation.handle(
                Event::Decoded(RequestEvent::FilePacket {
                    header,
                    packet,
                    content_len: 16,
                }),
                now,
            );
            s.conversation
                .handle(Event::Decoded(RequestEvent::Content(&[0u8; 16])), now);
            s.conversation
                .handle(Event::Decoded(RequestEvent::FilePacketEnd), now);
        }
        for action in drain(&mut s.conversation, now) {
            match action {
                Action::Send(reply) => {
                    assert_eq!(reply, Response::ServerError);
                    replies += 1;
                }
                Action::Log(LogLine::Request(line)) if line.reply.is_some() => logged.push(line),
                Action::Close(_) | Action::SendAndClose(..) => panic!("closed"),
                _ => {}
            }
        }
    }
    assert_eq!(replies, 1, "one 1607 for the whole transfer");
    assert_eq!(logged.len(), 1, "{logged:?}");
    assert_eq!(
        logged[0].file.as_ref().map(Name::as_str),
        Some("swapped.bin")
    );
    assert_eq!(
        s.policy.failures.load(Ordering::SeqCst),
        2,
        "one failure more"
    );

    // A packet 1 starts a new transfer: answered (1607 here: the client is unknown).
    let first = FilePacketHeader {
        packet_number: 1,
        total_packets: 1,
        ..fields(1)
    };
    s.conversation.handle(
        Event::Decoded(RequestEvent::FilePacket {
            header,
            packet: first,
            content_len: 16,
        }),
        now,
    );
    s.conversation
        .handle(Event::Decoded(RequestEvent::Content(&[0u8; 16])), now);
    s.conversation
        .handle(Event::Decoded(RequestEvent::FilePacketEnd), now);
    let actions = drain(&mut s.conversation, now);
    assert!(
        actions
            .iter()
            .any(|a| matches!(a, Action::Send(Response::ServerError))),
        "{actions:?}"
    );
}

// Write-behind (`session::uploads`): a full batch goes to a background write and the
// conversation goes on decrypting into the second buffer.

/// A conversation whose files may be large, with `batch_budget` for all batches.
fn setup_large(batch_budget: usize) -> Setup {
    let policy = Policy {
        failures_allowed: 10,
        ..Policy::default()
    };
    setup_with(policy, 16 << 20, batch_budget)
}

/// The reply to one request, jobs and writes run inline.
fn ask(s: &mut Setup, id: ClientId, body: RequestBody) -> Response {
    let now = at(s.start, 0);
    s.conversation.handle(Event::RequestStarted, now);
    let request = Request::new(id, body);
    s.conversation
        .handle(Event::Decoded(RequestEvent::Request(request)), now);
    drain(&mut s.conversation, now)
        .into_iter()
        .find_map(|action| match action {
            Action::Send(reply) => Some(reply),
            _ => None,
        })
        .expect("a reply")
}

/// Registers `user` on this connection and exchanges keys: its ID and AES key.
fn enroll(s: &mut Setup, user: &str) -> (ClientId, sfc_crypto::AesKey) {
    static KEY: std::sync::OnceLock<sfc_crypto::RsaKeyPair> = std::sync::OnceLock::new();
    let keys = KEY.get_or_init(|| sfc_crypto::RsaKeyPair::generate().unwrap());
    let Response::Registered { client_id } = ask(
        s,
        ClientId::ZERO,
        RequestBody::Register { name: name(user) },
    ) else {
        panic!("not registered")
    };
    let body = RequestBody::SendPublicKey {
        name: name(user),
        public_key: keys.public_key_der(),
    };
    let Response::PublicKeyAccepted { wrapped_key, .. } = ask(s, client_id, body) else {
        panic!("no key")
    };
    (client_id, keys.unwrap_aes_key(&wrapped_key).unwrap())
}

/// Bytes that differ from one position to the next (a misplaced batch shows).
fn pattern(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i * 7 + i / 4093) as u8).collect()
}

/// Carries out the conversation's actions: storage jobs inline; background writes inline,
/// or held until `release` (a slow disk), counting what it sees.
#[derive(Default)]
struct Driver {
    hold_writes: bool,
    /// Held writes finish before a storage job runs (as the blocking pool would go on
    /// with them meanwhile); otherwise they wait for `release`.
    release_before_jobs: bool,
    held: Vec<BackgroundWrite>,
    writes: usize,
    flush_jobs: usize,
    replies: Vec<Response>,
}

impl Driver {
    /// A driver that keeps background writes until `release` (a slow disk).
    fn holding_writes() -> Self {
        Driver {
            hold_writes: true,
            ..Driver::default()
        }
    }

    fn carry_out(&mut self, s: &mut Setup) {
        let now = at(s.start, 0);
        while let Some(action) = s.conversation.poll_action() {
            match action {
                Action::Run(job) => {
                    if self.release_before_jobs {
                        self.release();
                    }
                    self.flush_jobs += usize::from(job.kind() == "write");
                    s.conversation.job_done(job.run(), now);
                }
                Action::Write(write) if self.hold_writes => {
                    self.writes += 1;
                    self.held.push(write);
                }
                Action::Write(write) => {
                    self.writes += 1;
                    write.run();
                }
                Action::Send(reply) => self.replies.push(reply),
                _ => {}
            }
        }
    }

    fn release(&mut self) {
        for write in self.held.drain(..) {
            write.run();
        }
    }
}

/// Sends `data` as `file` in packets of `packet` ciphertext bytes, content in 64 KiB
/// pieces (what the socket layer reads at once); only the packets in `packets` (by index).
#[allow(clippy::too_many_arguments)]
fn send_file(
    s: &mut Setup,
    driver: &mut Driver,
    id: ClientId,
    key: &sfc_crypto::AesKey,
    file: &str,
    data: &[u8],
    packet: usize,
    packets: std::ops::Range<usize>,
) {
    let cipher = encrypt(key, data);
    let chunks: Vec<&[u8]> = cipher.chunks(packet).collect();
    let total = chunks.len() as u16;
    let now = at(s.start, 0);
    for (i, chunk) in chunks.iter().enumerate() {
        if !packets.contains(&i) {
            continue;
        }
        let header = RequestHeader::new(id, RequestCode::SendFile, 267 + chunk.len() as u32);
        let fields = FilePacketHeader {
            content_size: cipher.len() as u32,
            orig_file_size: data.len() as u32,
            packet_number: i as u16 + 1,
            total_packets: total,
            file_name: name(file),
        };
        s.conversation.handle(Event::RequestStarted, now);
        s.conversation.handle(
            Event::Decoded(RequestEvent::FilePacket {
                header,
                packet: fields,
                content_len: chunk.len() as u32,
            }),
            now,
        );
        driver.carry_out(s);
        for piece in chunk.chunks(64 * 1024) {
            let mut taken = s
                .conversation
                .handle(Event::Decoded(RequestEvent::Content(piece)), now);
            driver.carry_out(s);
            while taken < piece.len() {
                taken += s
                    .conversation
                    .handle(Event::MoreContent(&piece[taken..]), now);
                driver.carry_out(s);
            }
        }
        s.conversation
            .handle(Event::Decoded(RequestEvent::FilePacketEnd), now);
        driver.carry_out(s);
    }
}

const MIB: usize = 1 << 20;
const ALL: std::ops::Range<usize> = 0..usize::MAX;
/// Packets holding one flush point each (a little more than a batch).
const PACKET: usize = FLUSH_AT + FLUSH_AT / 8;

#[test]
fn full_batches_are_written_behind_while_decrypting_goes_on() {
    let mut s = setup_large(16 * MIB);
    let (id, key) = enroll(&mut s, "writer");
    let data = pattern(3 * MIB + 12_345);
    let mut driver = Driver::default();
    send_file(
        &mut s,
        &mut driver,
        id,
        &key,
        "big.bin",
        &data,
        256 * 1024,
        ALL,
    );
    assert_eq!(
        driver.replies,
        [Response::FileReceived {
            client_id: id,
            content_size: encrypt(&key, &data).len() as u32,
            file_name: name("big.bin"),
            cksum: sfc_crypto::cksum(&data),
        }]
    );
    assert_eq!(s.storage.stored().into_values().collect::<Vec<_>>(), [data]);
    // Every full batch went behind (3 MiB in batches of FLUSH_AT), none waited for.
    assert_eq!(driver.writes, 3 * MIB / FLUSH_AT);
    assert_eq!(driver.flush_jobs, 0);
    assert_eq!(s.storage.temp_count(), 0);
}

#[test]
fn stored_uploads_leave_their_batch_buffers_to_the_next_ones() {
    let mut s = setup_large(16 * MIB);
    let (id, key) = enroll(&mut s, "again");
    let mut driver = Driver::default();
    assert_eq!(s.core.pooled_batches(), 0);
    for (n, file) in ["one.bin", "two.bin", "three.bin"].into_iter().enumerate() {
        let data = pattern(3 * MIB + n);
        send_file(&mut s, &mut driver, id, &key, file, &data, 256 * 1024, ALL);
        // Batch and spare back in the pool; taken again by the next upload, so the
        // pool does not grow (and nothing was allocated anew).
        assert_eq!(s.core.pooled_batches(), 2, "after {file}");
        assert_eq!(s.core.batch_bytes(), 0);
    }
    assert_eq!(driver.replies.len(), 3);
    assert_eq!(s.storage.stored().len(), 3);
}

#[test]
fn a_batch_full_before_the_previous_write_is_done_waits_for_it_in_a_flush_job() {
    let mut s = setup_large(16 * MIB);
    let (id, key) = enroll(&mut s, "slow-disk");
    // Six batches: behind, waited for, behind, waited for, behind; the sixth is written
    // by the end-of-file job (the decryptor keeps the last block until then).
    let data = pattern(6 * FLUSH_AT);
    let mut driver = Driver {
        release_before_jobs: true,
        ..Driver::holding_writes()
    };
    send_file(
        &mut s,
        &mut driver,
        id,
        &key,
        "slow.bin",
        &data,
        300_000,
        ALL,
    );
    assert!(
        matches!(driver.replies.as_slice(), [Response::FileReceived { cksum, .. }] if *cksum == sfc_crypto::cksum(&data)),
        "{:?}",
        driver.replies
    );
    assert_eq!(s.storage.stored().into_values().collect::<Vec<_>>(), [data]);
    // Write-behind, flush job (the write still held), write-behind, …: alternately.
    assert!(driver.flush_jobs >= 2, "{}", driver.flush_jobs);
    assert_eq!(driver.writes, driver.flush_jobs + 1);
}

#[test]
fn a_background_write_that_fails_abandons_the_upload_with_1607_and_keeps_nothing() {
    let mut s = setup_large(16 * MIB);
    let (id, key) = enroll(&mut s, "full-disk");
    let old = pattern(1000);
    let mut driver = Driver::default();
    send_file(&mut s, &mut driver, id, &key, "f.bin", &old, 4096, ALL);
    assert!(matches!(
        driver.replies.as_slice(),
        [Response::FileReceived { .. }]
    ));

    // A new version: its first background write finds the disk full.
    let mut driver = Driver::holding_writes();
    let new = pattern(4 * PACKET);
    send_file(&mut s, &mut driver, id, &key, "f.bin", &new, PACKET, 0..1);
    assert_eq!((driver.writes, driver.replies.len()), (1, 0));
    s.storage.faults().disk_full.store(true, Ordering::SeqCst);
    driver.release();
    // Packet 2 finds the failure when its batch is full; 3 and 4 are swallowed (S12).
    send_file(&mut s, &mut driver, id, &key, "f.bin", &new, PACKET, 1..4);
    assert_eq!(driver.replies, [Response::ServerError]);
    s.storage.faults().heal();
    assert_eq!(s.storage.stored().into_values().collect::<Vec<_>>(), [old]);
    assert_eq!(s.storage.temp_count(), 0);
}

#[test]
fn an_upload_dropped_with_its_write_in_flight_leaves_no_temporary_file() {
    let mut s = setup_large(16 * MIB);
    let (id, key) = enroll(&mut s, "gone");
    let data = pattern(2 * PACKET);
    let mut driver = Driver::holding_writes();
    // Packet 1 of 3 on a connection that served requests before: parked, no reply,
    // and dropped when the connection ends (rule S10), its write still in flight.
    send_file(
        &mut s,
        &mut driver,
        id,
        &key,
        "gone.bin",
        &data,
        PACKET,
        0..1,
    );
    assert_eq!((driver.writes, driver.replies.len()), (1, 0));
    s.conversation.handle(Event::Closed, at(s.start, 0));
    driver.carry_out(&mut s);
    assert_eq!(
        s.storage.temp_count(),
        1,
        "the write in flight holds the file"
    );
    assert_eq!(
        s.core.pooled_batches(),
        1,
        "the spare went back to the pool"
    );
    driver.release();
    assert_eq!(s.storage.temp_count(), 0);
    assert!(s.storage.stored().is_empty());
    assert_eq!(
        s.core.pooled_batches(),
        2,
        "the written batch went back to the pool when its upload was gone"
    );
    assert_eq!(s.core.batch_bytes(), 0);
}

#[test]
fn without_budget_for_a_second_buffer_batches_are_written_in_flush_jobs() {
    // Room for one batch (and the floor of another upload), not for two.
    let mut s = setup_large(FLUSH_AT + MIB / 4);
    let (id, key) = enroll(&mut s, "tight");
    let data = pattern(2 * MIB + 12_345);
    let mut driver = Driver::default();
    send_file(
        &mut s,
        &mut driver,
        id,
        &key,
        "t.bin",
        &data,
        128 * 1024,
        ALL,
    );
    assert!(matches!(
        driver.replies.as_slice(),
        [Response::FileReceived { .. }]
    ));
    assert_eq!(s.storage.stored().into_values().collect::<Vec<_>>(), [data]);
    assert_eq!(driver.writes, 0);
    assert_eq!(driver.flush_jobs, 2 * MIB / FLUSH_AT);
}

// Sizes and time for 828s that are not received (rule S13, `--request-timeout`).

/// An 828 of client 7 with `content_len` content bytes whose fixed part does not decode to
/// a packet (packet_number 0), as the decoder reports it.
fn invalid_packet(content_len: u32) -> RequestEvent<'static> {
    let packet = FilePacketHeader {
        content_size: content_len,
        orig_file_size: content_len.saturating_sub(1),
        packet_number: 0,
        total_packets: 1,
        file_name: name("bad.bin"),
    };
    let header = RequestHeader::new(
        ClientId([7; 16]),
        RequestCode::SendFile,
        content_len.saturating_add(267),
    );
    let error = packet.check(content_len).unwrap_err().into();
    RequestEvent::Invalid {
        header,
        error,
        packet: Some(packet),
    }
}

#[test]
fn an_invalid_packet_s_content_is_held_to_the_request_deadline() {
    let mut s = setup(Policy {
        failures_allowed: 10,
        ..Policy::default()
    });
    let t0 = at(s.start, 0);
    s.conversation.handle(Event::RequestStarted, t0);
    let content_len = 2 * CONTENT_PROGRESS_CHUNK as u32 + 10;
    s.conversation
        .handle(Event::Decoded(invalid_packet(content_len)), t0);
    let actions = drain(&mut s.conversation, t0);
    assert!(
        matches!(
            actions.as_slice(),
            [Action::Log(_), Action::Send(Response::ServerError)]
        ),
        "answered before its content: {actions:?}"
    );
    // The reply does not end the deadline: the content still has to arrive.
    assert_eq!(s.conversation.deadline(), Some(t0.mono + TIMEOUT));
    assert!(s.conversation.expects_content());
    let piece = vec![0u8; CONTENT_PROGRESS_CHUNK as usize / 2];
    let t3 = at(s.start, 3);
    assert_eq!(
        s.conversation
            .handle(Event::Decoded(RequestEvent::Content(&piece)), t3),
        piece.len()
    );
    assert_eq!(s.conversation.deadline(), Some(t0.mono + TIMEOUT));
    let t5 = at(s.start, 5);
    for _ in 0..3 {
        s.conversation
            .handle(Event::Decoded(RequestEvent::Content(&piece)), t5);
    }
    assert_eq!(
        s.conversation.deadline(),
        Some(t5.mono + TIMEOUT),
        "renewed"
    );
    // Its last byte ends the request (the decoder is at a boundary after it).
    s.conversation
        .handle(Event::Decoded(RequestEvent::Content(&[0u8; 10])), t5);
    assert_eq!(s.conversation.deadline(), None);
    assert!(!s.conversation.expects_content());
    assert!(drain(&mut s.conversation, t5).is_empty());
    assert_eq!(s.policy.failures.load(Ordering::SeqCst), 1);
}

/// An invalid request ends a streaming upload's turn as a valid one does: the connection
/// no longer counts as mid-transfer (a shutdown closes it at once) nor keeps its large
/// read buffer.
#[test]
fn an_invalid_request_after_an_intermediate_packet_ends_the_streaming() {
    let mut s = setup(Policy::default());
    let a = enroll(&mut s, "ann");
    let mut driver = park_uploads(&mut s, &[a]);
    assert!(s.conversation.in_transfer() && s.conversation.expects_content());
    let now = at(s.start, 0);
    s.conversation.handle(Event::RequestStarted, now);
    s.conversation
        .handle(Event::Decoded(invalid_packet(16)), now);
    driver.carry_out(&mut s);
    s.conversation
        .handle(Event::Decoded(RequestEvent::Content(&[0u8; 16])), now);
    driver.carry_out(&mut s);
    assert_eq!(driver.replies, [Response::ServerError]);
    assert!(
        !s.conversation.in_transfer(),
        "still taken for mid-transfer"
    );
    assert!(!s.conversation.expects_content());
}

#[test]
fn an_invalid_packet_beyond_the_largest_file_is_refused_and_closed_unread() {
    let mut s = setup_with(
        Policy {
            failures_allowed: 10,
            ..Policy::default()
        },
        1000,
        1 << 20,
    );
    let now = at(s.start, 0);
    s.conversation.handle(Event::RequestStarted, now);
    s.conversation
        .handle(Event::Decoded(invalid_packet(u32::MAX - 267)), now);
    let actions = drain(&mut s.conversation, now);
    assert!(
        matches!(
            actions.as_slice(),
            [
                Action::Log(LogLine::Request(RequestLog { code: 828, .. })),
                Action::SendAndClose(Response::ServerError, CloseReason::AfterError)
            ]
        ),
        "{actions:?}"
    );
}

#[test]
fn a_packet_of_a_refused_transfer_beyond_the_largest_file_is_refused_and_closed_unread() {
    let mut s = setup_with(
        Policy {
            failures_allowed: 10,
            ..Policy::default()
        },
        1000,
        1 << 20,
    );
    let (id, _) = enroll(&mut s, "swallowed");
    let now = at(s.start, 0);
    let packet = |number: u16, content_len: u32| {
        let header = RequestHeader::new(id, RequestCode::SendFile, 267 + content_len);
        let fields = FilePacketHeader {
            content_size: content_len,
            orig_file_size: 100,
            packet_number: number,
            total_packets: 3,
            file_name: name("f.bin"),
        };
        Event::Decoded(RequestEvent::FilePacket {
            header,
            packet: fields,
            content_len,
        })
    };
    // Packet 2 without an upload: refused (1607), the transfer's next packets swallowed.
    s.conversation.handle(Event::RequestStarted, now);
    s.conversation.handle(packet(2, 16), now);
    s.conversation
        .handle(Event::Decoded(RequestEvent::Content(&[0u8; 16])), now);
    s.conversation
        .handle(Event::Decoded(RequestEvent::FilePacketEnd), now);
    let actions = drain(&mut s.conversation, now);
    assert!(
        actions
            .iter()
            .any(|a| matches!(a, Action::Send(Response::ServerError))),
        "{actions:?}"
    );
    // Packet 3, of 4 GiB: not swallowed but refused without reading it.
    s.conversation.handle(Event::RequestStarted, now);
    s.conversation.handle(packet(3, u32::MAX - 267), now);
    let actions = drain(&mut s.conversation, now);
    assert!(
        matches!(
            actions.as_slice(),
            [
                Action::Log(LogLine::Request(_)),
                Action::SendAndClose(Response::ServerError, CloseReason::AfterError)
            ]
        ),
        "{actions:?}"
    );
}

// Uploads that end with their connection (rule S10).

/// Packet 1 of 2 of `file` for each client, in turn, on a connection that served
/// requests before: each upload parked, without a reply.
fn park_uploads(s: &mut Setup, clients: &[(ClientId, sfc_crypto::AesKey)]) -> Driver {
    let mut driver = Driver::default();
    let data = pattern(6000);
    for (id, key) in clients {
        send_file(s, &mut driver, *id, key, "p.bin", &data, 4096, 0..1);
    }
    assert_eq!(driver.replies, [], "no reply to intermediate packets");
    assert_eq!(s.core.uploads_in_progress(), clients.len());
    driver
}

#[test]
fn every_upload_parked_on_a_kept_connection_ends_with_it() {
    let mut s = setup(Policy::default());
    let a = enroll(&mut s, "ann");
    let b = enroll(&mut s, "bob");
    let mut driver = park_uploads(&mut s, &[a, b]);
    s.conversation.handle(Event::Closed, at(s.start, 0));
    driver.carry_out(&mut s);
    assert_eq!(s.core.uploads_in_progress(), 0);
    assert_eq!(s.storage.temp_count(), 0);
}

/// Packet 1 drops what its client left unfinished even when it is refused itself (here:
/// a file above the size limit), so the parked upload does not outlive its connection.
#[test]
fn a_refused_packet_1_still_ends_the_upload_it_follows() {
    let mut s = setup(Policy::default());
    let a = enroll(&mut s, "ann");
    let mut driver = park_uploads(&mut s, std::slice::from_ref(&a));
    send_file(
        &mut s,
        &mut driver,
        a.0,
        &a.1,
        "big.bin",
        &pattern(2 * MIB),
        4096,
        0..1,
    );
    assert_eq!(
        driver.replies,
        [Response::ServerError],
        "the large file is refused"
    );
    assert_eq!(
        s.core.uploads_in_progress(),
        0,
        "the parked upload was kept"
    );
    s.conversation.handle(Event::Closed, at(s.start, 0));
    driver.carry_out(&mut s);
    assert_eq!(s.core.uploads_in_progress(), 0);
    assert_eq!(s.storage.temp_count(), 0);
}

#[test]
fn a_connection_cut_mid_packet_also_ends_the_uploads_it_parked() {
    let mut s = setup(Policy::default());
    let a = enroll(&mut s, "ann");
    let b = enroll(&mut s, "bob");
    let mut driver = park_uploads(&mut s, &[a]);
    // B's packet 1 of 2, cut after some of its content.
    let now = at(s.start, 0);
    let cipher = encrypt(&b.1, &pattern(6000));
    let header = RequestHeader::new(b.0, RequestCode::SendFile, 267 + 4096);
    let fields = FilePacketHeader {
        content_size: cipher.len() as u32,
        orig_file_size: 6000,
        packet_number: 1,
        total_packets: 2,
        file_name: name("p.bin"),
    };
    s.conversation.handle(Event::RequestStarted, now);
    s.conversation.handle(
        Event::Decoded(RequestEvent::FilePacket {
            header,
            packet: fields,
            content_len: 4096,
        }),
        now,
    );
    driver.carry_out(&mut s);
    s.conversation
        .handle(Event::Decoded(RequestEvent::Content(&cipher[..1000])), now);
    driver.carry_out(&mut s);
    assert_eq!(s.core.uploads_in_progress(), 2);
    s.conversation.handle(Event::Closed, now);
    driver.carry_out(&mut s);
    assert_eq!(s.core.uploads_in_progress(), 0);
    assert_eq!(s.storage.temp_count(), 0);
}

/// Plays the driver's close after it stopped at a reply it could not write: handles
/// [`Event::Closed`] and carries out what follows until the end or a close.
fn close_like_the_driver(s: &mut Setup) {
    let now = at(s.start, 0);
    s.conversation.handle(Event::Closed, now);
    while let Some(action) = s.conversation.poll_action() {
        match action {
            Action::Run(job) => s.conversation.job_done(job.run(), now),
            Action::Write(write) => write.run(),
            Action::Close(_) | Action::SendAndClose(..) => return,
            // The connection is gone: every reply fails.
            Action::Send(_) => return,
            Action::Log(_) => {}
        }
    }
}

#[test]
fn a_failed_reply_is_not_counted_when_the_driver_closes_nor_stops_the_cleanup() {
    // No failure allowed: were the unwritten reply's failure counted at the close, it
    // would close before the parked upload is dropped.
    let mut s = setup(Policy::default());
    let a = enroll(&mut s, "ann");
    park_uploads(&mut s, std::slice::from_ref(&a));
    let now = at(s.start, 0);
    let request = Request::new(
        a.0,
        RequestBody::ChecksumOk {
            file_name: name("never.bin"),
        },
    );
    s.conversation
        .handle(Event::Decoded(RequestEvent::Request(request)), now);
    loop {
        match s.conversation.poll_action() {
            Some(Action::Run(job)) => s.conversation.job_done(job.run(), now),
            Some(Action::Write(write)) => write.run(),
            Some(Action::Send(reply)) => {
                assert_eq!(reply, Response::ServerError);
                break;
            }
            Some(_) => {}
            None => panic!("no reply"),
        }
    }
    close_like_the_driver(&mut s);
    assert_eq!(s.policy.failures.load(Ordering::SeqCst), 0);
    assert_eq!(s.core.uploads_in_progress(), 0);
    assert_eq!(s.storage.temp_count(), 0);
}
