//! The conversation alone, on in-memory storage, with time and the per-address policy
//! in the test's hands.

use super::*;
use crate::net::entropy::OsEntropy;
use crate::session::{Limits, LogLine};
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
    policy: Arc<Policy>,
    conversation: Conversation,
    start: Instant,
}

fn setup(policy: Policy) -> Setup {
    let storage = MemoryStorage::new();
    let limits = Limits {
        max_file_size: 1 << 20,
        upload_timeout: Duration::from_secs(600),
        batch_budget: 1 << 20,
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
    let conversation = Conversation::new(
        Arc::new(core),
        Arc::clone(&policy) as Arc<dyn PeerPolicy>,
        PEER,
        at(start, 0),
    );
    Setup {
        storage,
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
            other => actions.push(other),
        }
    }
    actions
}

fn name(s: &str) -> Name {
    Name::new(s).unwrap()
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
    let packet = FilePacketHeader {
        content_size: content_len,
        orig_file_size: content_len - 1,
        packet_number: 1,
        total_packets: 1,
        file_name: name("f"),
    };
    let header = RequestHeader::new(ClientId([7; 16]), RequestCode::SendFile, 267 + content_len);
    let t0 = at(s.start, 0);
    s.conversation.handle(
        Event::Decoded(RequestEvent::FilePacket {
            header,
            packet,
            content_len,
        }),
        t0,
    );
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
            Some(Action::Send(_)) => break,
            Some(_) => {}
            None => panic!("no reply"),
        }
    }
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
