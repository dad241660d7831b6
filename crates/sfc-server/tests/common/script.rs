//! A sans-IO driver of the server's session: the real per-connection
//! [`Conversation`]s over one [`Core`] on in-memory storage with fault injection, for
//! fuzzing and property tests. The driver only does what `net::connection` does (decode
//! bytes, pass events, carry out the actions, run jobs inline); every protocol rule is the
//! production code's.
//!
//! The input bytes are a script: each op byte picks an action (register, send a key,
//! reconnect, upload a file well-formed or broken in one of many ways, 900/901/902, feed
//! raw or half-structured bytes through a connection's `RequestDecoder` into a
//! [`Conversation`], close a connection, switch storage faults on and
//! off, crash the "machine" after N durable operations and restart, expire uploads, flush
//! LastSeen) and the following bytes its parameters. Missing bytes read as zeros, so every
//! input is a valid script and the fuzzer can grow structure byte by byte.
//!
//! After every op the invariants are checked (a violation panics):
//! - every reply is one the request's code allows, encodes and decodes back to itself,
//!   and names the requesting client;
//! - every `files` row belongs to a registered client, names the path derived from its
//!   label inside that client's folder, and that file exists;
//! - without a crash: the file holds exactly the content the last 1603 for that label
//!   acknowledged (a failed replacement never loses the stored version), a verified row
//!   was confirmed by 900 after that 1603, and no file exists without a row;
//! - temporary files = uploads in progress (nothing leaks), at most one per client.
//!
//! Shared by `fuzz/fuzz_targets/session.rs` and `tests/properties.rs` (`#[path]`).
#![allow(dead_code)]

use sfc_crypto::{AesKey, CbcEncryptor, RsaKeyPair};
use sfc_proto::{
    ClientId, FilePacketHeader, Name, Request, RequestBody, RequestDecoder, RequestEvent, Response,
};
use sfc_server::testing::session::{
    Action, Conversation, Core, Ctx, Event, Limits, LogLine, Now, Outcome,
};
use sfc_server::testing::{disk_name, CountingEntropy, MemoryStorage, OpenDoors};
use sfc_server::Timestamp;
use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr};
use std::sync::atomic::Ordering;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

/// Largest plaintext file the simulated server accepts.
pub const MAX_FILE: u64 = 64 * 1024;
/// Ops per script at most (keeps every execution short).
pub const MAX_OPS: usize = 64;
/// Simulated connections.
const CONNS: usize = 2;
/// Most packets per simulated file.
const MAX_PACKETS: usize = 48;
/// Most reads per simulated stream of bytes.
const MAX_READS: usize = 96;

const NAMES: [&str; 4] = ["alice", "bob", "carol", "dave"];

fn labels() -> &'static [Name] {
    static LABELS: OnceLock<Vec<Name>> = OnceLock::new();
    LABELS.get_or_init(|| {
        let long = "l".repeat(254);
        [
            "f.bin",
            "..",
            "dir/x.bin",
            "C:\\x",
            "CON",
            ".",
            "F.BIN",
            &long,
        ]
        .iter()
        .filter_map(|s| Name::new(s).ok())
        .collect()
    })
}

fn keypair() -> &'static RsaKeyPair {
    static KEY: OnceLock<RsaKeyPair> = OnceLock::new();
    KEY.get_or_init(|| RsaKeyPair::generate().unwrap())
}

/// A fixed key that no client is ever given.
fn junk_key() -> AesKey {
    AesKey::from_bytes(&[0x5a; 32]).unwrap()
}

/// Reads script bytes; missing bytes are zeros.
struct Input<'a> {
    data: &'a [u8],
}

impl<'a> Input<'a> {
    fn u8(&mut self) -> u8 {
        match self.data.split_first() {
            Some((&b, rest)) => {
                self.data = rest;
                b
            }
            None => 0,
        }
    }
    fn u16(&mut self) -> u16 {
        u16::from_le_bytes([self.u8(), self.u8()])
    }
    fn u32(&mut self) -> u32 {
        u32::from_le_bytes([self.u8(), self.u8(), self.u8(), self.u8()])
    }
    fn bool(&mut self) -> bool {
        self.u8() & 1 == 1
    }
    fn bytes(&mut self, n: usize) -> &'a [u8] {
        let n = n.min(self.data.len());
        let (head, rest) = self.data.split_at(n);
        self.data = rest;
        head
    }
    fn is_empty(&self) -> bool {
        self.data.is_empty()
    }
}

/// What the model knows about one (client, label).
#[derive(Clone, Copy, Debug)]
struct Expect {
    /// cksum of the content the last 1603 acknowledged; None when a crash may have
    /// changed it since.
    cksum: Option<u32>,
    /// A 900 was acknowledged after that 1603.
    confirmed: bool,
}

/// A simulated connection: what `net::connection` holds (the decoder and the
/// conversation), plus what the model needs to know about the request in progress.
#[derive(Default)]
struct VConn {
    decoder: RequestDecoder,
    conversation: Option<Conversation>,
    /// The client and file label of the request in progress, and whether it was invalid.
    client: ClientId,
    label: Option<Name>,
    invalid: bool,
    /// A request has been answered on this connection.
    used: bool,
    /// The client whose transfer was refused (1607 to an 828) by the last request on this
    /// connection: its further packets here, even contradictory ones, may be dropped
    /// without a reply (docs/PROTOCOL.md, rule S12).
    refused: Option<ClientId>,
}

/// The peer address of every simulated connection.
const PEER: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);

/// Counts of what a script did.
#[derive(Debug, Default, Clone)]
pub struct Stats {
    /// Replies by code (0: no reply).
    pub replies: BTreeMap<u16, usize>,
    /// Simulated crashes and restarts.
    pub restarts: usize,
}

/// The simulated server and the model of what it must hold.
pub struct Sim {
    storage: MemoryStorage,
    core: Arc<Core>,
    entropy: Arc<CountingEntropy>,
    /// Simulated time: advances a millisecond per op.
    tick: u64,
    start: Instant,
    ids: Vec<ClientId>,
    conns: [VConn; CONNS],
    expect: BTreeMap<(ClientId, String), Expect>,
    /// A crash was armed at some point: files without rows may exist.
    crashed_once: bool,
    /// A crash is armed (until the restart): stored contents may change without a reply.
    crash_armed: bool,
    pub stats: Stats,
}

fn limits() -> Limits {
    Limits {
        max_file_size: MAX_FILE,
        upload_timeout: Duration::ZERO,
        // Small, so that scripts run uploads on granted batches and on the floor.
        batch_budget: 40 * 1024,
        request_timeout: Duration::from_secs(10),
        max_uploads: 0,
        max_uploads_per_address: 0,
    }
}

fn encrypt(key: &AesKey, plain: &[u8]) -> Vec<u8> {
    let mut encryptor = CbcEncryptor::new(key).unwrap();
    let mut out = Vec::with_capacity(plain.len() + 16);
    encryptor.update(plain, &mut out).unwrap();
    encryptor.finish(&mut out).unwrap();
    out
}

/// A file as packets, possibly broken in one of several ways.
fn file_packets(
    key: &AesKey,
    label: &Name,
    plain: &[u8],
    packet_size: usize,
    per_packet: bool,
    mutation: u8,
) -> Vec<(FilePacketHeader, Vec<u8>)> {
    let key = if mutation == 12 {
        junk_key()
    } else {
        key.clone()
    };
    let cipher = encrypt(&key, plain);
    // At most MAX_PACKETS packets: tiny packets are legitimate but slow the fuzzer down.
    let packet_size = packet_size.max(cipher.len().div_ceil(MAX_PACKETS)).max(1);
    let chunks: Vec<Vec<u8>> = cipher.chunks(packet_size).map(<[u8]>::to_vec).collect();
    let total = u16::try_from(chunks.len()).unwrap_or(u16::MAX);
    let mut packets: Vec<(FilePacketHeader, Vec<u8>)> = chunks
        .into_iter()
        .enumerate()
        .map(|(i, chunk)| {
            let header = FilePacketHeader {
                content_size: if per_packet {
                    chunk.len() as u32
                } else {
                    cipher.len() as u32
                },
                orig_file_size: plain.len() as u32,
                packet_number: u16::try_from(i + 1).unwrap_or(u16::MAX),
                total_packets: total,
                file_name: label.clone(),
            };
            (header, chunk)
        })
        .collect();
    let n = packets.len();
    match mutation {
        6 => {
            for (header, _) in &mut packets {
                header.orig_file_size = header.orig_file_size.wrapping_add(1);
            }
        }
        7 if n > 1 => {
            packets.remove(n / 2);
        }
        8 => {
            let first = packets[0].clone();
            packets.insert(1, first);
        }
        9 => {
            if let Some((header, _)) = packets.last_mut() {
                header.total_packets = header.total_packets.wrapping_add(1);
            }
        }
        10 => {
            if let Some((header, content)) = packets.last_mut() {
                content.pop();
                header.content_size = content.len() as u32;
            }
        }
        11 => packets.truncate(n.div_ceil(2).max(1)),
        13 => {
            if let Some((header, _)) = packets.last_mut() {
                header.file_name = Name::new("renamed").unwrap();
            }
        }
        _ => {}
    }
    packets
}

/// What the model knows of a request when its reply comes.
#[derive(Clone, Copy)]
struct Seen {
    /// The first request on its connection.
    first: bool,
    /// The decoder refused it.
    invalid: bool,
    /// It follows a refused transfer of the same client on the same connection.
    refused: bool,
}

fn allowed(code: u16, reply: Option<u16>, seen: Seen) -> bool {
    let Seen {
        first,
        invalid,
        refused,
    } = seen;
    if invalid {
        return match code {
            825 => reply == Some(1601),
            // The rest of a refused transfer is dropped quietly (rule S12).
            828 if refused && !first => reply.is_none() || reply == Some(1607),
            _ => reply == Some(1607),
        };
    }
    match reply {
        None => !first && (code == 828 || code == 901),
        Some(1607) => true,
        Some(reply) => matches!(
            (code, reply),
            (825, 1600 | 1601) | (826, 1602) | (827, 1605 | 1606) | (828, 1603) | (900..=902, 1604)
        ),
    }
}

impl Default for Sim {
    fn default() -> Self {
        Self::new()
    }
}

impl Sim {
    pub fn new() -> Self {
        let storage = MemoryStorage::new();
        let entropy = Arc::new(CountingEntropy::default());
        let core = Core::new(
            Box::new(storage.meta()),
            Box::new(storage.blobs()),
            limits(),
            Box::new(Arc::clone(&entropy)),
        );
        Sim {
            storage,
            core: Arc::new(core),
            entropy,
            tick: 0,
            start: Instant::now(),
            ids: Vec::new(),
            conns: Default::default(),
            expect: BTreeMap::new(),
            crashed_once: false,
            crash_armed: false,
            stats: Stats::default(),
        }
    }

    /// Runs a whole script, checking the invariants after every op.
    pub fn run(data: &[u8]) -> Stats {
        let mut sim = Sim::new();
        let mut input = Input { data };
        for _ in 0..MAX_OPS {
            if input.is_empty() {
                break;
            }
            sim.tick += 1;
            sim.step(&mut input);
            sim.check();
        }
        // Closing every connection abandons what they hold; nothing may leak.
        sim.close_all();
        sim.check();
        sim.stats
    }

    fn pick_id(&self, input: &mut Input<'_>) -> ClientId {
        let b = input.u8();
        match (self.ids.len(), b) {
            (n, 0..=223) if n > 0 => self.ids[usize::from(b) % n],
            (_, 224..=239) => ClientId::ZERO,
            _ => ClientId([b; 16]),
        }
    }

    fn pick_label(input: &mut Input<'_>) -> Name {
        let all = labels();
        all[usize::from(input.u8()) % all.len()].clone()
    }

    fn key_of(&self, id: &ClientId) -> AesKey {
        self.storage
            .clients()
            .into_iter()
            .find(|c| c.id == *id)
            .and_then(|c| c.aes_key)
            .and_then(|k| AesKey::from_bytes(&k).ok())
            .unwrap_or_else(junk_key)
    }

    fn name_of(&self, id: &ClientId) -> Name {
        self.storage
            .clients()
            .into_iter()
            .find(|c| c.id == *id)
            .and_then(|c| Name::new(&c.name).ok())
            .unwrap_or_else(|| Name::new("nobody").unwrap())
    }

    fn step(&mut self, input: &mut Input<'_>) {
        match input.u8() % 16 {
            0 => {
                let name = NAMES[usize::from(input.u8()) % NAMES.len()];
                let first = input.bool();
                let request = Request::new(
                    ClientId::ZERO,
                    RequestBody::Register {
                        name: Name::new(name).unwrap(),
                    },
                );
                self.direct(request, first);
            }
            1 => {
                let id = self.pick_id(input);
                let variant = input.u8() % 5;
                let first = input.bool();
                let mut name = self.name_of(&id);
                let public_key = match variant {
                    2 => {
                        let len = usize::from(input.u8()).max(1);
                        input.bytes(len).to_vec()
                    }
                    3 => {
                        name = Name::new("mallory").unwrap();
                        keypair().public_key_der()
                    }
                    4 => {
                        let mut der = keypair().public_key_der();
                        der.truncate(100);
                        der
                    }
                    _ => keypair().public_key_der(),
                };
                let public_key = if public_key.is_empty() {
                    vec![0]
                } else {
                    public_key
                };
                self.direct(
                    Request::new(id, RequestBody::SendPublicKey { name, public_key }),
                    first,
                );
            }
            2 => {
                let id = self.pick_id(input);
                let name = if input.u8().is_multiple_of(4) {
                    Name::new("mallory").unwrap()
                } else {
                    self.name_of(&id)
                };
                let first = input.bool();
                self.direct(Request::new(id, RequestBody::Reconnect { name }), first);
            }
            3 | 15 => {
                let id = self.pick_id(input);
                let (label, plain, packet_size, per_packet, mutation) = Self::file_params(input);
                let first = input.bool();
                let key = self.key_of(&id);
                for (packet, content) in
                    file_packets(&key, &label, &plain, packet_size, per_packet, mutation)
                {
                    let body = RequestBody::SendFile { packet, content };
                    self.direct(Request::new(id, body), first);
                }
            }
            code @ 4..=6 => {
                let id = self.pick_id(input);
                let file_name = Self::pick_label(input);
                let first = input.bool();
                let body = match code {
                    4 => RequestBody::ChecksumOk { file_name },
                    5 => RequestBody::ChecksumRetry { file_name },
                    _ => RequestBody::ChecksumFailed { file_name },
                };
                self.direct(Request::new(id, body), first);
            }
            7 => {
                let k = usize::from(input.u8()) % CONNS;
                let id = self.pick_id(input);
                let (label, plain, packet_size, per_packet, mutation) = Self::file_params(input);
                let chunk = 1 + usize::from(input.u16() % 8192);
                let cut = input.u8();
                let key = self.key_of(&id);
                let mut bytes = Vec::new();
                for (packet, content) in
                    file_packets(&key, &label, &plain, packet_size, per_packet, mutation)
                {
                    bytes.extend_from_slice(&packet.encode_prefix(id, content.len() as u32));
                    bytes.extend_from_slice(&content);
                }
                if cut < 200 {
                    bytes.truncate(bytes.len() * usize::from(cut) / 200);
                }
                let chunk = chunk.max(bytes.len().div_ceil(MAX_READS));
                for piece in bytes.chunks(chunk) {
                    self.feed(k, piece);
                }
            }
            8 => {
                let k = usize::from(input.u8()) % CONNS;
                let id = self.pick_id(input);
                let version = input.u8();
                let code = match input.u8() % 10 {
                    0 => 825,
                    1 => 826,
                    2 => 827,
                    3 | 4 => 828,
                    5 => 900,
                    6 => 901,
                    7 => 902,
                    8 => 829,
                    _ => input.u16(),
                };
                let payload_size = match input.u8() % 4 {
                    0 => match code {
                        826 => 255 + 160,
                        828 => 267 + u32::from(input.u8()),
                        _ => 255,
                    },
                    1 => u32::from(input.u16()),
                    2 => u32::from(input.u8()),
                    _ => input.u32(),
                };
                let mut bytes = id.0.to_vec();
                bytes.push(version);
                bytes.extend_from_slice(&code.to_le_bytes());
                bytes.extend_from_slice(&payload_size.to_le_bytes());
                let body = usize::try_from(payload_size)
                    .unwrap_or(usize::MAX)
                    .min(1500);
                bytes.extend_from_slice(input.bytes(body));
                self.feed(k, &bytes);
            }
            9 => {
                let k = usize::from(input.u8()) % CONNS;
                let len = usize::from(input.u8());
                let bytes = input.bytes(len).to_vec();
                self.feed(k, &bytes);
            }
            10 => {
                let k = usize::from(input.u8()) % CONNS;
                self.close(k);
            }
            11 => match input.u8() % 6 {
                0 => self.storage.faults().db_down.store(true, Ordering::SeqCst),
                1 => self
                    .storage
                    .faults()
                    .disk_full
                    .store(true, Ordering::SeqCst),
                2 => {
                    self.storage.faults().db_recovers();
                    self.storage
                        .faults()
                        .disk_full
                        .store(false, Ordering::SeqCst);
                }
                5 => self
                    .storage
                    .faults()
                    .db_fails_after(u64::from(input.u8() % 4)),
                3 => {
                    let n = u64::from(input.u8() % 6);
                    self.storage.faults().crash_after(n);
                    self.crash_armed = true;
                    self.crashed_once = true;
                    for expect in self.expect.values_mut() {
                        expect.cksum = None;
                    }
                }
                _ => self.storage.faults().db_down.store(false, Ordering::SeqCst),
            },
            12 => self.restart(),
            13 => {
                self.core.expire_uploads(self.now().mono);
            }
            _ => {
                let _ = self.core.flush_last_seen();
            }
        }
    }

    fn file_params(input: &mut Input<'_>) -> (Name, Vec<u8>, usize, bool, u8) {
        let label = Self::pick_label(input);
        let len = usize::from(input.u16() % 3000);
        let seed = input.u8();
        let plain: Vec<u8> = (0..len)
            .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
            .collect();
        let packet_size = 1 + usize::from(input.u16() % 2048);
        let per_packet = input.bool();
        let mutation = input.u8() % 16;
        (label, plain, packet_size, per_packet, mutation)
    }

    /// The simulated time.
    fn now(&self) -> Now {
        Now {
            wall: Timestamp(1_700_000_000_000 + self.tick as i64),
            mono: self.start + Duration::from_millis(self.tick),
        }
    }

    /// A crash and restart: connections and uploads in memory are gone, temporary files
    /// are removed at start-up, the stores come back healthy.
    fn restart(&mut self) {
        self.close_all();
        self.storage.restart();
        let core = Core::new(
            Box::new(self.storage.meta()),
            Box::new(self.storage.blobs()),
            limits(),
            Box::new(Arc::clone(&self.entropy)),
        );
        self.core = Arc::new(core);
        self.crash_armed = false;
        self.stats.restarts += 1;
    }

    /// A whole request handed to the core (`Core::handle_request`), as the first request
    /// on a connection or not.
    fn direct(&mut self, request: Request, first: bool) {
        let code = request.body.code().as_u16();
        let id = request.client_id;
        let label = label_of(&request.body);
        let outcome = self
            .core
            .handle_request(&Ctx::new(first, self.now()), request);
        let seen = Seen {
            first,
            invalid: false,
            refused: false,
        };
        self.observe(code, id, label.as_ref(), &outcome, seen);
    }

    /// Connection `k` ends: its conversation abandons what it holds.
    fn close(&mut self, k: usize) {
        let mut conn = std::mem::take(&mut self.conns[k]);
        if let Some(mut conversation) = conn.conversation.take() {
            conversation.handle(Event::Closed, self.now());
            self.carry_out(&mut conversation, &mut conn);
        }
    }

    fn close_all(&mut self) {
        for k in 0..CONNS {
            self.close(k);
        }
    }

    /// Bytes arriving on simulated connection `k`, driven like `net::connection` does.
    fn feed(&mut self, k: usize, bytes: &[u8]) {
        let mut conn = std::mem::take(&mut self.conns[k]);
        let mut conversation = conn.conversation.take().unwrap_or_else(|| {
            Conversation::new(
                Arc::clone(&self.core),
                Arc::new(OpenDoors),
                PEER,
                self.now(),
            )
        });
        let mut input = bytes;
        let mut open = true;
        while open {
            let pending = conn.decoder.bytes_needed() == 0 && !conn.decoder.at_boundary();
            if input.is_empty() && !pending {
                break;
            }
            if conn.decoder.at_boundary() {
                conversation.handle(Event::RequestStarted, self.now());
            }
            match conn.decoder.decode(input) {
                Ok((used, event)) => {
                    input = input.get(used..).unwrap_or_default();
                    match event {
                        Some(event) => open = self.on_event(&mut conversation, &mut conn, event),
                        None if used == 0 => break,
                        None => {}
                    }
                }
                Err(error) => {
                    // Framing lost: 1607 and the connection is closed.
                    conversation.handle(Event::Malformed(error), self.now());
                    let mut replied = false;
                    while let Some(action) = conversation.poll_action() {
                        match action {
                            Action::SendAndClose(Response::ServerError, _) => replied = true,
                            Action::Log(_) => {}
                            other => panic!("framing lost, then {other:?}"),
                        }
                    }
                    assert!(replied, "framing lost without a 1607");
                    self.stats.replies.entry(1607).or_default();
                    open = false;
                }
            }
        }
        if open {
            conn.conversation = Some(conversation);
        } else {
            conversation.handle(Event::Closed, self.now());
            self.carry_out(&mut conversation, &mut conn);
            conn = VConn::default();
        }
        self.conns[k] = conn;
    }

    /// Passes one decoded event; returns false when the conversation closed.
    fn on_event(
        &mut self,
        conversation: &mut Conversation,
        conn: &mut VConn,
        event: RequestEvent<'_>,
    ) -> bool {
        match &event {
            RequestEvent::Request(request) => {
                conn.client = request.client_id;
                conn.label = label_of(&request.body);
                conn.invalid = false;
            }
            RequestEvent::Invalid { header, .. } => {
                conn.client = header.client_id;
                conn.label = None;
                conn.invalid = true;
            }
            RequestEvent::FilePacket { header, packet, .. } => {
                conn.client = header.client_id;
                conn.label = Some(packet.file_name.clone());
                conn.invalid = false;
            }
            RequestEvent::Content(_) | RequestEvent::FilePacketEnd => {}
        }
        if let RequestEvent::Content(piece) = event {
            let now = self.now();
            let mut taken = conversation.handle(Event::Decoded(RequestEvent::Content(piece)), now);
            let mut open = self.carry_out(conversation, conn);
            while let Some(rest) = piece.get(taken..).filter(|rest| !rest.is_empty()) {
                taken += conversation.handle(Event::MoreContent(rest), now);
                open &= self.carry_out(conversation, conn);
            }
            return open;
        }
        conversation.handle(Event::Decoded(event), self.now());
        self.carry_out(conversation, conn)
    }

    /// Carries out the conversation's actions (jobs run inline) and checks the reply of
    /// a request that ended; returns false when the conversation closed.
    fn carry_out(&mut self, conversation: &mut Conversation, conn: &mut VConn) -> bool {
        let mut open = true;
        let mut logged = None;
        let mut reply = None;
        while let Some(action) = conversation.poll_action() {
            match action {
                Action::Send(response) => reply = Some(response),
                Action::SendAndClose(response, _) => {
                    reply = Some(response);
                    open = false;
                }
                Action::Run(job) => conversation.job_done(job.run(), self.now()),
                Action::Write(write) => write.run(),
                Action::Log(LogLine::Request(line)) => logged = Some(line),
                Action::Log(_) => {}
                Action::Close(_) => open = false,
            }
        }
        let Some(line) = logged else {
            return open;
        };
        let first = !conn.used;
        conn.used = true;
        let outcome = Outcome {
            reply,
            detail: line.detail,
            cause: line.cause,
        };
        let label = conn.label.clone();
        let refused = conn.refused == Some(conn.client);
        conn.refused = (line.code == 828
            && (outcome.code() == Some(sfc_proto::ResponseCode::ServerError)
                || (refused && outcome.reply.is_none())))
        .then_some(conn.client);
        let seen = Seen {
            first,
            invalid: conn.invalid,
            refused,
        };
        self.observe(line.code, conn.client, label.as_ref(), &outcome, seen);
        open
    }

    /// Checks a reply and updates the model.
    fn observe(
        &mut self,
        code: u16,
        id: ClientId,
        label: Option<&Name>,
        outcome: &Outcome,
        seen: Seen,
    ) {
        let reply_code = outcome.code().map(sfc_proto::ResponseCode::as_u16);
        *self
            .stats
            .replies
            .entry(reply_code.unwrap_or(0))
            .or_default() += 1;
        assert!(
            allowed(code, reply_code, seen),
            "request {code} (first on its connection: {}, invalid: {}) got {outcome:?}",
            seen.first,
            seen.invalid
        );
        let Some(reply) = &outcome.reply else {
            return;
        };
        let bytes = reply.encode();
        assert_eq!(
            Response::decode(&bytes).as_ref(),
            Ok(reply),
            "reply does not decode back to itself"
        );
        match reply {
            Response::Registered { client_id } => {
                assert!(!self.ids.contains(client_id), "an ID was issued twice");
                self.ids.push(*client_id);
            }
            Response::PublicKeyAccepted { client_id, .. }
            | Response::ReconnectAccepted { client_id, .. }
            | Response::PacketReceived { client_id } => {
                assert_eq!(*client_id, id, "reply for another client");
            }
            Response::Ack { client_id } | Response::ReconnectRejected { client_id } => {
                assert_eq!(*client_id, Some(id), "reply for another client");
            }
            Response::FileReceived {
                client_id,
                file_name,
                cksum,
                ..
            } => {
                assert_eq!(*client_id, id, "1603 for another client");
                assert_eq!(Some(file_name), label, "1603 for another file");
                let cksum = (!self.crash_armed).then_some(*cksum);
                self.expect.insert(
                    (id, file_name.as_str().to_owned()),
                    Expect {
                        cksum,
                        confirmed: false,
                    },
                );
            }
            Response::RegistrationFailed | Response::ServerError => {}
        }
        if let (Response::Ack { .. }, Some(label)) = (reply, label) {
            let key = (id, label.as_str().to_owned());
            match code {
                900 => {
                    if let Some(expect) = self.expect.get_mut(&key) {
                        expect.confirmed = true;
                    }
                }
                902 => {
                    self.expect.remove(&key);
                }
                _ => {}
            }
        }
    }

    /// The invariants of the module documentation.
    fn check(&self) {
        let clients: BTreeSet<ClientId> = self.storage.clients().iter().map(|c| c.id).collect();
        let stored = self.storage.stored();
        let files = self.storage.files();
        let mut named = BTreeSet::new();
        for row in &files {
            assert!(
                clients.contains(&row.client_id),
                "row of an unknown client: {row:?}"
            );
            let path = format!(
                "files/{}/{}",
                row.client_id.to_hex(),
                disk_name(&row.file_name)
            );
            assert_eq!(row.path, path, "row path not derived from its label");
            let Some(content) = stored.get(&row.path) else {
                panic!("row names a missing file: {row:?}");
            };
            named.insert(row.path.clone());
            match self.expect.get(&(row.client_id, row.file_name.clone())) {
                Some(expect) => {
                    if let Some(cksum) = expect.cksum {
                        assert_eq!(
                            sfc_crypto::cksum(content),
                            cksum,
                            "{row:?} does not hold the content its last 1603 acknowledged"
                        );
                        assert!(
                            !row.verified || expect.confirmed,
                            "{row:?} is verified but no 900 confirmed its content"
                        );
                    }
                }
                None => assert!(self.crashed_once, "a row without a 1603: {row:?}"),
            }
        }
        if !self.crashed_once {
            for key in self.expect.keys() {
                assert!(
                    files
                        .iter()
                        .any(|f| f.client_id == key.0 && f.file_name == key.1),
                    "the file {key:?} acknowledged with 1603 was lost"
                );
            }
            let orphans: Vec<_> = stored.keys().filter(|p| !named.contains(*p)).collect();
            assert!(orphans.is_empty(), "files without a row: {orphans:?}");
        }
        let uploads = self.core.uploads_in_progress();
        let temps = self.storage.temp_count();
        if self.crash_armed {
            // A replaced version whose undo the crash stopped stays as a temporary file
            // until the restart.
            assert!(temps >= uploads, "an upload lost its temporary file");
        } else {
            assert_eq!(
                temps, uploads,
                "temporary files leaked (or an upload lost its file)"
            );
        }
        assert!(uploads <= clients.len(), "more uploads than clients");
    }
}

/// Hand-written scripts that reach the deep states (also the fuzzer's seed corpus).
pub fn seeds() -> Vec<(&'static str, Vec<u8>)> {
    // Op helpers, mirroring `Sim::step`.
    let register = |name: u8| vec![0, name, 0];
    let key = |who: u8| vec![1, who, 0, 0];
    let upload = |who: u8, label: u8, len: u16, packet: u16, mutation: u8| {
        let mut op = vec![3, who, label];
        op.extend_from_slice(&len.to_le_bytes());
        op.push(7);
        op.extend_from_slice(&(packet - 1).to_le_bytes());
        op.extend_from_slice(&[0, mutation, 0]);
        op
    };
    let stream = |conn: u8, who: u8, label: u8, len: u16, chunk: u16, cut: u8| {
        let mut op = vec![7, conn, who, label];
        op.extend_from_slice(&len.to_le_bytes());
        op.push(9);
        op.extend_from_slice(&255u16.to_le_bytes());
        op.extend_from_slice(&[0, 0]);
        op.extend_from_slice(&(chunk - 1).to_le_bytes());
        op.push(cut);
        op
    };
    let checksum = |code: u8, who: u8, label: u8| vec![code, who, label, 0];
    let concat = |ops: &[Vec<u8>]| ops.concat();
    vec![
        (
            "happy_path",
            concat(&[
                register(0),
                key(0),
                upload(0, 0, 1000, 256, 0),
                checksum(4, 0, 0),
            ]),
        ),
        (
            "streamed_upload",
            concat(&[
                register(1),
                key(0),
                stream(0, 0, 2, 2500, 700, 255),
                checksum(4, 0, 2),
            ]),
        ),
        (
            "resend_then_give_up",
            concat(&[
                register(2),
                key(0),
                upload(0, 1, 100, 64, 0),
                checksum(5, 0, 1),
                upload(0, 1, 100, 64, 0),
                checksum(6, 0, 1),
            ]),
        ),
        (
            "replace_verified_with_database_down",
            concat(&[
                register(0),
                key(0),
                upload(0, 0, 500, 128, 0),
                checksum(4, 0, 0),
                vec![11, 0],
                upload(0, 0, 600, 128, 0),
                vec![11, 2],
                vec![11, 5, 1],
                upload(0, 0, 700, 128, 0),
                vec![11, 2],
                checksum(4, 0, 0),
                vec![11, 1],
                upload(0, 0, 800, 128, 0),
                vec![11, 2],
                upload(0, 0, 900, 128, 0),
            ]),
        ),
        (
            "crash_mid_replacement",
            concat(&[
                register(0),
                key(0),
                upload(0, 3, 500, 100, 0),
                checksum(4, 0, 3),
                vec![11, 3, 2],
                upload(0, 3, 800, 100, 0),
                vec![12],
                vec![2, 0, 1, 0],
                upload(0, 3, 900, 100, 0),
            ]),
        ),
        (
            "broken_uploads",
            concat(&[
                register(3),
                key(0),
                upload(0, 4, 300, 32, 6),
                upload(0, 4, 300, 32, 7),
                upload(0, 4, 300, 32, 8),
                upload(0, 4, 300, 32, 9),
                upload(0, 4, 300, 32, 10),
                upload(0, 4, 300, 32, 12),
                upload(0, 4, 300, 32, 13),
                upload(0, 5, 300, 32, 11),
                vec![13],
            ]),
        ),
        (
            "two_connections_one_client",
            concat(&[
                register(0),
                key(0),
                stream(0, 0, 0, 3000, 500, 100),
                stream(1, 0, 0, 3000, 500, 255),
                vec![10, 0],
                stream(1, 0, 0, 3000, 500, 255),
            ]),
        ),
        (
            "raw_requests",
            concat(&[
                register(0),
                key(0),
                vec![8, 0, 0, 3, 0, 0],
                vec![0; 255],
                vec![8, 1, 0, 1, 9, 1, 0xff, 0xff],
                vec![9, 0, 23],
                vec![0xff; 23],
            ]),
        ),
    ]
}

/// The file label a request names, if any.
fn label_of(body: &RequestBody) -> Option<Name> {
    match body {
        RequestBody::SendFile { packet, .. } => Some(packet.file_name.clone()),
        RequestBody::ChecksumOk { file_name }
        | RequestBody::ChecksumRetry { file_name }
        | RequestBody::ChecksumFailed { file_name } => Some(file_name.clone()),
        _ => None,
    }
}
