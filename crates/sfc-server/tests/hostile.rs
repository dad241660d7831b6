//! The hostile-input catalogue: one table of named cases, each a hostile or broken input
//! sent to the real server (in-process, on 127.0.0.1, in a temporary folder), with its
//! expected answer. Every case then goes through the same after-check:
//!
//! 1. **nothing changed that should not have**: a snapshot taken before the case (every
//!    file and folder under the test's root folder, which holds the data folder, with
//!    size and cksum; `/etc/passwd`; the `clients` rows without `LastSeen`; the `files`
//!    rows) must equal, after the case, the snapshot before plus exactly the changes the
//!    case declares (a file stored under its derived name in its client's folder, a new
//!    client, a new key) — temporary files included, so an abandoned upload must have
//!    cleaned up;
//! 2. **the server still serves**: a fresh client registers, sends its key, uploads a file
//!    in two packets, gets the right checksum and confirms it.
//!
//! Decisions the catalogue pins down:
//! - version byte: any value is accepted, logged, and answered with version 3 (docs/PROTOCOL.md
//!   rule S5; some clients send 1 or 2);
//! - a file name that looks like a path (`..`, `/etc/passwd`, `a\b`, `C:x`, `CON`, 254
//!   bytes of `../`) is a label: stored with the label kept in `files.FileName`, under a
//!   derived single-component name inside the client's folder; empty names, NUL inside,
//!   255 bytes without NUL, non-ASCII and control characters are refused (1601 for an
//!   825, 1607 otherwise);
//! - 901 and 902 for a file that was never stored are acknowledged (1604): the client is
//!   giving up on it anyway; 900 for it is 1607;
//! - a registration flood is served (each 825 answered 1600, or 1607 where a rate limit
//!   applies), and exactly the answered registrations exist afterwards.
//!
//! The server here runs with `request_timeout` 2 s, `upload_timeout` 3 s and
//! `max_file_size` 1 MiB so that timeouts and size limits show within seconds.
#![cfg(test)]

mod common;

use common::*;
use sfc_crypto::AesKey;
use sfc_proto::{
    ClientId, FilePacketHeader, Request, RequestBody, RequestCode, RequestHeader, Response,
};
use sfc_server::testing::disk_name;
use sfc_server::MetaStore;
use sfc_server::SqliteStore;
use sfc_server::{RunningServer, ServerConfig};
use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

const REQUEST_TIMEOUT: Duration = Duration::from_secs(2);
const UPLOAD_TIMEOUT: Duration = Duration::from_secs(3);
const MAX_FILE_SIZE: u64 = 1024 * 1024;
/// Longest wait for the server to settle after a case (an abandoned parked upload
/// expires within the upload timeout plus one housekeeping tick).
const SETTLE: Duration = Duration::from_secs(8);

// ----- the server under test ------------------------------------------------------------

struct Env {
    root: tempfile::TempDir,
    data: PathBuf,
    server: Option<RunningServer>,
    addr: std::net::SocketAddr,
}

impl Env {
    fn start() -> Self {
        Self::start_with(|_| {})
    }

    /// [`Env::start`] with the configuration changed by `tweak`.
    fn start_with(tweak: fn(&mut ServerConfig)) -> Self {
        init_logging();
        keypair(); // before any connection: key generation is slow in debug builds
        let root = tempfile::tempdir().unwrap();
        let data = root.path().join("data");
        let mut config: ServerConfig = config_for(&data);
        config.request_timeout = REQUEST_TIMEOUT;
        config.idle_timeout = Duration::from_secs(10);
        config.upload_timeout = UPLOAD_TIMEOUT;
        config.flush_interval = Duration::from_millis(200);
        config.max_file_size = MAX_FILE_SIZE;
        tweak(&mut config);
        let server = RunningServer::start(config).unwrap();
        let addr = server.addr();
        Env {
            root,
            data,
            server: Some(server),
            addr,
        }
    }

    fn connect(&self) -> Conn {
        Conn::connect(self.addr)
    }

    fn db(&self) -> SqliteStore {
        SqliteStore::open_existing(&self.data.join("defensive.db")).unwrap()
    }

    fn client_dir(&self, id: ClientId) -> PathBuf {
        self.data.join("files").join(id.to_hex())
    }
}

impl Drop for Env {
    fn drop(&mut self) {
        if let Some(server) = self.server.take() {
            server.stop();
        }
    }
}

// ----- snapshots ----------------------------------------------------------------------------

#[derive(Clone, Debug, PartialEq, Eq)]
struct ClientRow {
    name: String,
    public_key: Option<Vec<u8>>,
    aes_key: Option<Vec<u8>>,
}

/// What must not change unless a case says so.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Snapshot {
    /// Every file (size, cksum) and unexpected folder under the root folder, and
    /// /etc/passwd.
    tree: BTreeMap<String, (u64, u32)>,
    /// `clients` by ID (hex), without LastSeen.
    clients: BTreeMap<String, ClientRow>,
    /// `files` by (ID hex, FileName): (PathName, Verified).
    files: BTreeMap<(String, String), (String, bool)>,
}

fn is_client_folder(rel: &str) -> bool {
    rel == "data/files"
        || rel
            .strip_prefix("data/files/")
            .is_some_and(|hex| hex.len() == 32 && hex.bytes().all(|b| b.is_ascii_hexdigit()))
}

fn walk(root: &Path, dir: &Path, out: &mut BTreeMap<String, (u64, u32)>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        let rel = path
            .strip_prefix(root)
            .unwrap()
            .to_string_lossy()
            .into_owned();
        if rel.starts_with("data/defensive.db") {
            continue; // compared through its rows
        }
        let Ok(kind) = entry.file_type() else {
            continue;
        };
        if kind.is_dir() {
            if !is_client_folder(&rel) {
                out.insert(format!("{rel}/"), (0, 0));
            }
            walk(root, &path, out);
        } else {
            // A temporary file may vanish between listing and reading.
            if let Ok(bytes) = std::fs::read(&path) {
                out.insert(rel, (bytes.len() as u64, sfc_crypto::cksum(&bytes)));
            }
        }
    }
}

fn snapshot(env: &Env) -> Snapshot {
    let mut tree = BTreeMap::new();
    walk(env.root.path(), env.root.path(), &mut tree);
    if let Ok(passwd) = std::fs::read("/etc/passwd") {
        tree.insert(
            "/etc/passwd".into(),
            (passwd.len() as u64, sfc_crypto::cksum(&passwd)),
        );
    }
    let db = env.db();
    let clients = db
        .clients()
        .unwrap()
        .into_iter()
        .map(|c| {
            (
                c.id.to_hex(),
                ClientRow {
                    name: c.name,
                    public_key: c.public_key,
                    aes_key: c.aes_key,
                },
            )
        })
        .collect();
    let files = db
        .files()
        .unwrap()
        .into_iter()
        .map(|f| ((f.client_id.to_hex(), f.file_name), (f.path, f.verified)))
        .collect();
    Snapshot {
        tree,
        clients,
        files,
    }
}

/// Readable differences between two snapshots.
fn diff(expected: &Snapshot, actual: &Snapshot) -> String {
    fn side<K: Ord + std::fmt::Debug, V: PartialEq + std::fmt::Debug>(
        what: &str,
        expected: &BTreeMap<K, V>,
        actual: &BTreeMap<K, V>,
        out: &mut Vec<String>,
    ) {
        for (k, v) in expected {
            match actual.get(k) {
                None => out.push(format!("{what} missing: {k:?}")),
                Some(a) if a != v => out.push(format!("{what} changed: {k:?}: {v:?} -> {a:?}")),
                _ => {}
            }
        }
        for k in actual.keys().filter(|k| !expected.contains_key(k)) {
            out.push(format!("{what} unexpected: {k:?}"));
        }
    }
    let mut out = Vec::new();
    side("file/folder", &expected.tree, &actual.tree, &mut out);
    side("clients row", &expected.clients, &actual.clients, &mut out);
    side("files row", &expected.files, &actual.files, &mut out);
    out.join("\n    ")
}

// ----- what a case sends and sees -------------------------------------------------------

/// The content every case stores when it stores a file.
fn plain() -> Vec<u8> {
    data(777, 42)
}

/// A client the case acts as (or against).
struct Fixture {
    id: ClientId,
    user: String,
    key: Option<AesKey>,
}

impl Fixture {
    fn key(&self) -> &AesKey {
        self.key.as_ref().expect("an enrolled fixture")
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Setup {
    /// No client.
    None,
    /// A registered client without keys.
    Registered,
    /// The shared registered client with keys.
    Enrolled,
}

/// A client a case created.
#[derive(Debug)]
struct NewClient {
    id: ClientId,
    name: String,
    public_key: Option<Vec<u8>>,
    aes_key: Option<Vec<u8>>,
}

/// What a case saw, and the changes it made on purpose.
#[derive(Debug, Default)]
struct Seen {
    /// Reply codes in order of arrival.
    replies: Vec<u16>,
    /// The server closed the connection (or the client hung up first).
    closed: bool,
    /// Clients the case registered.
    new_clients: Vec<NewClient>,
    /// Files the case stored ([`plain`] under a label).
    stored: Vec<(ClientId, String)>,
    /// A public key the case gave a client.
    new_key: Option<(ClientId, Vec<u8>)>,
    /// Why the case was skipped.
    skipped: Option<String>,
}

/// The expected answer.
#[derive(Clone, Copy, Debug)]
enum Expect {
    /// Exactly these replies; the connection stays usable.
    Open(&'static [u16]),
    /// Exactly these replies (maybe none), then the server closes the connection.
    Closed(&'static [u16]),
    /// The client hangs up; nothing is due.
    HungUp,
    /// At least one reply, each one of these.
    Each(&'static [u16]),
}

/// The changes a case is allowed to make.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Effect {
    Nothing,
    /// Files stored (listed in [`Seen::stored`]).
    Stored,
    /// Clients registered (in [`Seen::new_clients`]), maybe with files.
    NewClients,
    /// A public key accepted ([`Seen::new_key`]).
    NewKey,
}

impl Seen {
    fn read(&mut self, conn: &mut Conn, n: usize) {
        for _ in 0..n {
            match conn.try_recv() {
                Some(response) => self.replies.push(response.code().as_u16()),
                None => {
                    self.closed = true;
                    return;
                }
            }
        }
    }

    /// Reads `n` replies, then proves the connection is still in sync with a request
    /// that has a known answer (an 825 with an empty name: 1601).
    fn open(mut self, conn: &mut Conn, n: usize) -> Self {
        self.read(conn, n);
        if self.closed {
            return self;
        }
        let probe = with_raw_name(register_request("x").encode(), b"");
        if conn.stream.write_all(&probe).is_err() {
            self.closed = true;
            return self;
        }
        match conn.try_recv() {
            Some(Response::RegistrationFailed) => {}
            Some(other) => self.replies.push(other.code().as_u16()),
            None => self.closed = true,
        }
        self
    }

    /// Reads `n` replies, then expects the server to close within `wait`.
    fn closed(mut self, conn: &mut Conn, n: usize, wait: Duration) -> Self {
        self.read(conn, n);
        if !self.closed {
            self.closed = conn.closed_within(wait);
        }
        self
    }

    fn hung_up(conn: Conn) -> Self {
        drop(conn);
        Seen {
            closed: true,
            ..Seen::default()
        }
    }
}

fn raw_header(id: ClientId, code: u16, payload_size: u32) -> Vec<u8> {
    let mut bytes = RequestHeader::new(id, RequestCode::Register, payload_size)
        .encode()
        .to_vec();
    bytes[17..19].copy_from_slice(&code.to_le_bytes());
    bytes
}

fn packet(id: ClientId, header: &FilePacketHeader, content: &[u8]) -> Vec<u8> {
    let mut bytes = header.encode_prefix(id, content.len() as u32).to_vec();
    bytes.extend_from_slice(content);
    bytes
}

/// A connection that has carried one request already (persistent-connection style: no
/// replies for intermediate packets, one reply per file).
fn used_conn(env: &Env, fx: &Fixture) -> Conn {
    let mut conn = env.connect();
    let reply = conn.call(&file_name_request(fx.id, 902, "sync"));
    assert_eq!(reply.code().as_u16(), 1604, "sync request");
    conn
}

/// The fixture's packets for `label` (content [`plain`]).
fn fx_packets(fx: &Fixture, label: &str, size: usize) -> Vec<Vec<u8>> {
    let plain = plain();
    let cipher = encrypt(fx.key(), &plain);
    packets(fx.id, label, plain.len(), &cipher, size, ContentSize::Whole)
}

/// One 828 per call with the header fields given (content encrypted with the fixture's
/// key), on a used connection; expects `expect_n` replies.
fn send_packets(env: &Env, fx: &Fixture, list: &[Vec<u8>], expect_n: usize) -> Seen {
    let mut conn = used_conn(env, fx);
    for bytes in list {
        conn.send_raw(bytes);
    }
    Seen::default().open(&mut conn, expect_n)
}

fn store_label(env: &Env, fx: &Fixture, label: &str) -> Seen {
    let mut conn = used_conn(env, fx);
    let reply = upload(&mut conn, fx.id, fx.key(), label, &plain(), 300);
    let mut seen = Seen::default();
    seen.replies.push(reply.code().as_u16());
    if let Response::FileReceived {
        file_name, cksum, ..
    } = &reply
    {
        assert_eq!(file_name.as_str(), label, "the label is echoed as sent");
        assert_eq!(*cksum, sfc_crypto::cksum(&plain()));
        seen.stored.push((fx.id, label.to_owned()));
        // The stored file is a single name inside the client's folder.
        let row = env.db().file(&fx.id, label).unwrap().unwrap();
        let expected = format!("files/{}/{}", fx.id.to_hex(), disk_name(label));
        assert_eq!(row.path, expected);
        assert_eq!(std::fs::read(env.data.join(&row.path)).unwrap(), plain());
    }
    seen.open(&mut conn, 0)
}

fn register_raw_name(env: &Env, raw: &[u8]) -> Seen {
    let mut conn = env.connect();
    conn.send_raw(&with_raw_name(register_request("x").encode(), raw));
    Seen::default().open(&mut conn, 1)
}

fn label_raw(env: &Env, fx: &Fixture, raw: &[u8]) -> Seen {
    let first = fx_packets(fx, "placeholder", 4096).remove(0);
    send_packets(env, fx, &[with_raw_name(first, raw)], 1)
}

fn send_key(env: &Env, fx: &Fixture, der: &[u8]) -> Seen {
    let request = Request::new(
        fx.id,
        RequestBody::SendPublicKey {
            name: name(&fx.user),
            public_key: der.to_vec(),
        },
    );
    let mut conn = env.connect();
    conn.send(&request);
    let mut seen = Seen::default();
    if der.len() + 255 > 1279 {
        // Beyond the 826 payload limit: framing is lost.
        return seen.closed(&mut conn, 1, Duration::from_secs(2));
    }
    seen.read(&mut conn, 1);
    if seen.replies == [1602] {
        seen.new_key = Some((fx.id, der.to_vec()));
    }
    seen.open(&mut conn, 0)
}

/// DER of an RSA SubjectPublicKeyInfo with a made-up odd modulus of `bits` bits.
fn rsa_spki(bits: usize, exponent: &[u8]) -> Vec<u8> {
    fn tlv(tag: u8, body: &[u8]) -> Vec<u8> {
        let n = body.len();
        let mut out = vec![tag];
        match n {
            0..=127 => out.push(n as u8),
            128..=255 => out.extend_from_slice(&[0x81, n as u8]),
            _ => out.extend_from_slice(&[0x82, (n >> 8) as u8, n as u8]),
        }
        out.extend_from_slice(body);
        out
    }
    let len = bits.div_ceil(8);
    let mut modulus = vec![0xa5u8; len];
    let top = bits - (len - 1) * 8; // bits used in the first byte
    modulus[0] = (0xffu16 >> (8 - top)) as u8 | (1 << (top - 1));
    modulus[len - 1] |= 1;
    let mut n = vec![0u8];
    n.extend_from_slice(&modulus);
    let key = tlv(0x30, &[tlv(0x02, &n), tlv(0x02, exponent)].concat());
    let algorithm = tlv(
        0x30,
        &[
            vec![
                0x06, 0x09, 0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x01,
            ],
            vec![0x05, 0x00],
        ]
        .concat(),
    );
    let bit_string = tlv(0x03, &[&[0u8][..], &key].concat());
    tlv(0x30, &[algorithm, bit_string].concat())
}

/// Temporary (upload in progress) files in a client's folder.
fn temp_files(env: &Env, id: ClientId) -> usize {
    std::fs::read_dir(env.client_dir(id))
        .map(|d| {
            d.flatten()
                .filter(|e| e.file_name().to_string_lossy().starts_with(".upload-"))
                .count()
        })
        .unwrap_or(0)
}

/// A file header for the fixture's [`plain`] content, to be modified by a case.
fn plain_header(label: &str, number: u16, total: u16) -> FilePacketHeader {
    let len = plain().len();
    FilePacketHeader {
        content_size: sfc_proto::encrypted_size(len as u64) as u32,
        orig_file_size: len as u32,
        packet_number: number,
        total_packets: total,
        file_name: name(label),
    }
}

// ----- the cases ------------------------------------------------------------------------------

type Run = fn(&Env, &Fixture) -> Seen;

struct Case {
    name: &'static str,
    setup: Setup,
    expect: Expect,
    effect: Effect,
    run: Run,
}

const fn case(name: &'static str, setup: Setup, expect: Expect, effect: Effect, run: Run) -> Case {
    Case {
        name,
        setup,
        expect,
        effect,
        run,
    }
}

use Effect::{NewClients, NewKey, Nothing, Stored};
use Expect::{Closed, Each, HungUp, Open};
use Setup::{Enrolled, Registered};

fn cases() -> Vec<Case> {
    vec![
        // --- framing and the transport ---
        case(
            "truncated header, then silence until the request timeout",
            Setup::None,
            Closed(&[]),
            Nothing,
            |env, _| {
                let mut conn = env.connect();
                conn.send_raw(&register_request("tr").encode()[..10]);
                Seen::default().closed(&mut conn, 0, REQUEST_TIMEOUT * 3)
            },
        ),
        case(
            "connection closed mid-header",
            Setup::None,
            HungUp,
            Nothing,
            |env, _| {
                let mut conn = env.connect();
                conn.send_raw(&register_request("mh").encode()[..12]);
                Seen::hung_up(conn)
            },
        ),
        case(
            "connection closed mid-payload",
            Setup::None,
            HungUp,
            Nothing,
            |env, _| {
                let mut conn = env.connect();
                conn.send_raw(&register_request("mp").encode()[..100]);
                Seen::hung_up(conn)
            },
        ),
        case(
            "connection closed mid-packet (upload abandoned, temp removed)",
            Enrolled,
            HungUp,
            Nothing,
            |env, fx| {
                let mut conn = used_conn(env, fx);
                let big = data(200_000, 1);
                let cipher = encrypt(fx.key(), &big);
                let all = packets(
                    fx.id,
                    "cut.bin",
                    big.len(),
                    &cipher,
                    100_000,
                    ContentSize::Whole,
                );
                conn.send_raw(&all[0]);
                conn.send_raw(&all[1][..50_000]);
                assert!(eventually(Duration::from_secs(5), || temp_files(
                    env, fx.id
                ) == 1));
                Seen::hung_up(conn)
            },
        ),
        case(
            "payload_size larger than what is sent (small request)",
            Setup::None,
            Closed(&[]),
            Nothing,
            |env, _| {
                let mut conn = env.connect();
                conn.send_raw(&register_request("short").encode()[..23 + 100]);
                Seen::default().closed(&mut conn, 0, REQUEST_TIMEOUT * 3)
            },
        ),
        case(
            "payload_size larger than what is sent (file packet)",
            Enrolled,
            Closed(&[]),
            Nothing,
            |env, fx| {
                let mut conn = used_conn(env, fx);
                let bytes = &fx_packets(fx, "short.bin", 4096)[0];
                conn.send_raw(&bytes[..bytes.len() - 100]);
                Seen::default().closed(&mut conn, 0, REQUEST_TIMEOUT * 3)
            },
        ),
        case(
            "payload_size of 4 GiB on an 825",
            Setup::None,
            Closed(&[1607]),
            Nothing,
            |env, _| {
                let mut conn = env.connect();
                conn.send_raw(&raw_header(ClientId::ZERO, 825, u32::MAX));
                Seen::default().closed(&mut conn, 1, Duration::from_secs(2))
            },
        ),
        case(
            "payload_size of 4 GiB on an 828 (beyond --max-file-size)",
            Enrolled,
            Closed(&[1607]),
            Nothing,
            |env, fx| {
                let mut conn = used_conn(env, fx);
                let content_len = u32::MAX - 267;
                let mut header = plain_header("huge.bin", 1, 1);
                header.content_size = content_len;
                conn.send_raw(&header.encode_prefix(fx.id, content_len));
                conn.send_raw(&[0u8; 4096]);
                Seen::default().closed(&mut conn, 1, Duration::from_secs(2))
            },
        ),
        case(
            "payload_size 254 on an 825",
            Setup::None,
            Closed(&[1607]),
            Nothing,
            |env, _| {
                let mut conn = env.connect();
                conn.send_raw(&raw_header(ClientId::ZERO, 825, 254));
                conn.send_raw(&[b'a'; 254]);
                Seen::default().closed(&mut conn, 1, Duration::from_secs(2))
            },
        ),
        case(
            "payload_size 256 on an 825",
            Setup::None,
            Closed(&[1607]),
            Nothing,
            |env, _| {
                let mut conn = env.connect();
                conn.send_raw(&raw_header(ClientId::ZERO, 825, 256));
                conn.send_raw(&[b'a'; 256]);
                Seen::default().closed(&mut conn, 1, Duration::from_secs(2))
            },
        ),
        case(
            "payload_size 0 on a 900",
            Registered,
            Closed(&[1607]),
            Nothing,
            |env, fx| {
                let mut conn = env.connect();
                conn.send_raw(&raw_header(fx.id, 900, 0));
                Seen::default().closed(&mut conn, 1, Duration::from_secs(2))
            },
        ),
        case(
            "payload_size 255 on an 826 (no key at all)",
            Registered,
            Closed(&[1607]),
            Nothing,
            |env, fx| {
                let mut conn = env.connect();
                conn.send_raw(&raw_header(fx.id, 826, 255));
                conn.send_raw(&name(&fx.user).encode_field());
                Seen::default().closed(&mut conn, 1, Duration::from_secs(2))
            },
        ),
        case(
            "payload_size 266 on an 828 (shorter than its fixed part)",
            Enrolled,
            Closed(&[1607]),
            Nothing,
            |env, fx| {
                let mut conn = env.connect();
                conn.send_raw(&raw_header(fx.id, 828, 266));
                conn.send_raw(&[0u8; 266]);
                Seen::default().closed(&mut conn, 1, Duration::from_secs(2))
            },
        ),
        case(
            "unknown request code 829",
            Setup::None,
            Closed(&[1607]),
            Nothing,
            |env, _| {
                let mut conn = env.connect();
                conn.send_raw(&raw_header(ClientId::ZERO, 829, 255));
                conn.send_raw(&[0u8; 255]);
                Seen::default().closed(&mut conn, 1, Duration::from_secs(2))
            },
        ),
        case(
            "all-zero header (code 0)",
            Setup::None,
            Closed(&[1607]),
            Nothing,
            |env, _| {
                let mut conn = env.connect();
                conn.send_raw(&[0u8; 23]);
                Seen::default().closed(&mut conn, 1, Duration::from_secs(2))
            },
        ),
        case(
            "an HTTP request instead of the protocol",
            Setup::None,
            Closed(&[1607]),
            Nothing,
            |env, _| {
                let mut conn = env.connect();
                conn.send_raw(b"GET /../../etc/passwd HTTP/1.1\r\nHost: x\r\n\r\n");
                Seen::default().closed(&mut conn, 1, Duration::from_secs(2))
            },
        ),
        case(
            "valid 825, then an unknown-client 900, then garbage, pipelined",
            Setup::None,
            Closed(&[1600, 1607, 1607]),
            NewClients,
            |env, _| {
                let mut conn = env.connect();
                let mut bytes = register_request("pipelined").encode();
                bytes
                    .extend_from_slice(&file_name_request(ClientId([0x66; 16]), 900, "f").encode());
                bytes.extend_from_slice(&[0xee; 40]);
                conn.send_raw(&bytes);
                let mut seen = Seen::default();
                let Response::Registered { client_id } = conn.recv() else {
                    panic!("825")
                };
                seen.replies.push(1600);
                seen.new_clients.push(NewClient {
                    id: client_id,
                    name: "pipelined".into(),
                    public_key: None,
                    aes_key: None,
                });
                seen.closed(&mut conn, 2, Duration::from_secs(2))
            },
        ),
        // --- the version byte: any is accepted, logged, and answered with version 3 ---
        case(
            "version byte 0",
            Setup::None,
            Open(&[1600]),
            NewClients,
            |env, _| register_version(env, 0),
        ),
        case(
            "version byte 1",
            Setup::None,
            Open(&[1600]),
            NewClients,
            |env, _| register_version(env, 1),
        ),
        case(
            "version byte 2",
            Setup::None,
            Open(&[1600]),
            NewClients,
            |env, _| register_version(env, 2),
        ),
        case(
            "version byte 255",
            Setup::None,
            Open(&[1600]),
            NewClients,
            |env, _| register_version(env, 255),
        ),
        // --- user names ---
        case(
            "825 with an empty name",
            Setup::None,
            Open(&[1601]),
            Nothing,
            |env, _| register_raw_name(env, b""),
        ),
        case(
            "825 with 255 name bytes and no NUL",
            Setup::None,
            Open(&[1601]),
            Nothing,
            |env, _| register_raw_name(env, &[b'n'; 255]),
        ),
        case(
            "825 with a NUL inside the name",
            Setup::None,
            Open(&[1601]),
            Nothing,
            |env, _| register_raw_name(env, b"ev\0il"),
        ),
        case(
            "825 with a non-ASCII name",
            Setup::None,
            Open(&[1601]),
            Nothing,
            |env, _| register_raw_name(env, "zoë".as_bytes()),
        ),
        case(
            "825 with control characters in the name",
            Setup::None,
            Open(&[1601]),
            Nothing,
            |env, _| register_raw_name(env, b"bell\x07\x1b[31m"),
        ),
        case(
            "825 with a name already taken",
            Registered,
            Open(&[1601]),
            Nothing,
            |env, fx| {
                let mut conn = env.connect();
                conn.send(&register_request(&fx.user));
                Seen::default().open(&mut conn, 1)
            },
        ),
        // --- file names: labels stored safely inside the client's folder, or refused ---
        case(
            "file name ..",
            Enrolled,
            Open(&[1603]),
            Stored,
            |env, fx| store_label(env, fx, ".."),
        ),
        case("file name .", Enrolled, Open(&[1603]), Stored, |env, fx| {
            store_label(env, fx, ".")
        }),
        case(
            "file name ../x",
            Enrolled,
            Open(&[1603]),
            Stored,
            |env, fx| store_label(env, fx, "../x"),
        ),
        case(
            "file name /etc/passwd",
            Enrolled,
            Open(&[1603]),
            Stored,
            |env, fx| store_label(env, fx, "/etc/passwd"),
        ),
        case(
            "file name a/b",
            Enrolled,
            Open(&[1603]),
            Stored,
            |env, fx| store_label(env, fx, "a/b"),
        ),
        case(
            "file name a\\b",
            Enrolled,
            Open(&[1603]),
            Stored,
            |env, fx| store_label(env, fx, "a\\b"),
        ),
        case(
            "file name C:x",
            Enrolled,
            Open(&[1603]),
            Stored,
            |env, fx| store_label(env, fx, "C:x"),
        ),
        case(
            "file name CON",
            Enrolled,
            Open(&[1603]),
            Stored,
            |env, fx| store_label(env, fx, "CON"),
        ),
        case(
            "file name of 254 bytes (../ repeated)",
            Enrolled,
            Open(&[1603]),
            Stored,
            |env, fx| {
                let label = format!("{}..", "../".repeat(84));
                assert_eq!(label.len(), 254);
                store_label(env, fx, &label)
            },
        ),
        case(
            "file name with a NUL inside",
            Enrolled,
            Open(&[1607]),
            Nothing,
            |env, fx| label_raw(env, fx, b"a\0b.bin"),
        ),
        case(
            "file name empty",
            Enrolled,
            Open(&[1607]),
            Nothing,
            |env, fx| label_raw(env, fx, b""),
        ),
        case(
            "file name of 255 bytes without NUL",
            Enrolled,
            Open(&[1607]),
            Nothing,
            |env, fx| label_raw(env, fx, &[b'f'; 255]),
        ),
        case(
            "file name with a newline",
            Enrolled,
            Open(&[1607]),
            Nothing,
            |env, fx| label_raw(env, fx, b"a\nb"),
        ),
        case(
            "file name non-ASCII",
            Enrolled,
            Open(&[1607]),
            Nothing,
            |env, fx| label_raw(env, fx, "naïve.txt".as_bytes()),
        ),
        // --- public keys (826 from a registered client without a key) ---
        case(
            "826 with garbage for a key",
            Registered,
            Open(&[1607]),
            Nothing,
            |env, fx| send_key(env, fx, &[0x30; 160]),
        ),
        case(
            "826 with a 512-bit key",
            Registered,
            Open(&[1607]),
            Nothing,
            |env, fx| send_key(env, fx, &rsa_spki(512, &[17])),
        ),
        case(
            "826 with a 162-byte key (1024 bits, e = 65537): accepted",
            Registered,
            Open(&[1602]),
            NewKey,
            |env, fx| {
                let der = rsa_spki(1024, &[1, 0, 1]);
                assert_eq!(der.len(), 162);
                send_key(env, fx, &der)
            },
        ),
        case(
            "826 with a 5000-bit key",
            Registered,
            Open(&[1607]),
            Nothing,
            |env, fx| send_key(env, fx, &rsa_spki(5000, &[17])),
        ),
        case(
            "826 with an 8192-bit key (beyond the field limit)",
            Registered,
            Closed(&[1607]),
            Nothing,
            |env, fx| send_key(env, fx, &rsa_spki(8192, &[1, 0, 1])),
        ),
        case(
            "826 with another client's name",
            Registered,
            Open(&[1607]),
            Nothing,
            |env, fx| {
                let mut conn = env.connect();
                conn.send(&key_request(fx.id, "someone-else"));
                Seen::default().open(&mut conn, 1)
            },
        ),
        // --- unknown clients and the wrong order ---
        case(
            "826 for an unknown client ID",
            Setup::None,
            Open(&[1607]),
            Nothing,
            |env, _| {
                let mut conn = env.connect();
                conn.send(&key_request(ClientId([0x42; 16]), "ghost"));
                Seen::default().open(&mut conn, 1)
            },
        ),
        case(
            "827 for an unknown client ID",
            Setup::None,
            Open(&[1606]),
            Nothing,
            |env, _| {
                let mut conn = env.connect();
                conn.send(&Request::new(
                    ClientId([0x43; 16]),
                    RequestBody::Reconnect {
                        name: name("ghost"),
                    },
                ));
                Seen::default().open(&mut conn, 1)
            },
        ),
        case(
            "827 for a client without a public key",
            Registered,
            Open(&[1606]),
            Nothing,
            |env, fx| {
                let mut conn = env.connect();
                conn.send(&Request::new(
                    fx.id,
                    RequestBody::Reconnect {
                        name: name(&fx.user),
                    },
                ));
                Seen::default().open(&mut conn, 1)
            },
        ),
        case(
            "828 for an unknown client ID",
            Setup::None,
            Open(&[1607]),
            Nothing,
            |env, _| {
                let key = AesKey::random();
                let cipher = encrypt(&key, &plain());
                let mut conn = env.connect();
                conn.send_raw(
                    &packets(
                        ClientId([0x44; 16]),
                        "f",
                        plain().len(),
                        &cipher,
                        4096,
                        ContentSize::Whole,
                    )[0],
                );
                Seen::default().open(&mut conn, 1)
            },
        ),
        case(
            "828 before any key exchange",
            Registered,
            Open(&[1607]),
            Nothing,
            |env, fx| {
                let key = AesKey::random();
                let cipher = encrypt(&key, &plain());
                send_packets(
                    env,
                    fx,
                    &[
                        packets(fx.id, "f", plain().len(), &cipher, 4096, ContentSize::Whole)
                            .remove(0),
                    ],
                    1,
                )
            },
        ),
        // --- packets ---
        case(
            "packet_number 0",
            Enrolled,
            Open(&[1607]),
            Nothing,
            |env, fx| {
                let cipher = encrypt(fx.key(), &plain());
                send_packets(
                    env,
                    fx,
                    &[packet(fx.id, &plain_header("p0", 0, 1), &cipher)],
                    1,
                )
            },
        ),
        case(
            "packet_number above total_packets",
            Enrolled,
            Open(&[1607]),
            Nothing,
            |env, fx| {
                let cipher = encrypt(fx.key(), &plain());
                send_packets(
                    env,
                    fx,
                    &[packet(fx.id, &plain_header("p9", 9, 1), &cipher)],
                    1,
                )
            },
        ),
        case(
            // (A repeated packet 1 starts the upload over: rule S10.)
            "packet repeated",
            Enrolled,
            Open(&[1607]),
            Nothing,
            |env, fx| {
                let p = fx_packets(fx, "rep.bin", 300);
                send_packets(
                    env,
                    fx,
                    &[p[0].clone(), p[1].clone(), p[1].clone(), p[2].clone()],
                    1,
                )
            },
        ),
        case(
            "packet skipped",
            Enrolled,
            Open(&[1607]),
            Nothing,
            |env, fx| {
                let p = fx_packets(fx, "skip.bin", 300);
                send_packets(env, fx, &[p[0].clone(), p[2].clone()], 1)
            },
        ),
        case(
            "total_packets 0",
            Enrolled,
            Open(&[1607]),
            Nothing,
            |env, fx| {
                let cipher = encrypt(fx.key(), &plain());
                send_packets(
                    env,
                    fx,
                    &[packet(fx.id, &plain_header("t0", 1, 0), &cipher)],
                    1,
                )
            },
        ),
        case(
            "total_packets changing between packets",
            Enrolled,
            Open(&[1607]),
            Nothing,
            |env, fx| {
                let cipher = encrypt(fx.key(), &plain());
                let first = packet(fx.id, &plain_header("tc", 1, 3), &cipher[..256]);
                let second = packet(fx.id, &plain_header("tc", 2, 2), &cipher[256..]);
                send_packets(env, fx, &[first, second], 1)
            },
        ),
        case(
            // (Zeros there are padding, rule S11; anything else is refused.)
            "content larger than content_size, not zero padding",
            Enrolled,
            Open(&[1607]),
            Nothing,
            |env, fx| {
                let mut cipher = encrypt(fx.key(), &plain());
                cipher.extend_from_slice(&[0u8; 31]);
                cipher.push(1);
                send_packets(
                    env,
                    fx,
                    &[packet(fx.id, &plain_header("big", 1, 1), &cipher)],
                    1,
                )
            },
        ),
        case(
            "orig_file_size inconsistent with content_size",
            Enrolled,
            Open(&[1607]),
            Nothing,
            |env, fx| {
                let cipher = encrypt(fx.key(), &plain());
                let mut header = plain_header("inc", 1, 1);
                header.orig_file_size = 5;
                send_packets(env, fx, &[packet(fx.id, &header, &cipher)], 1)
            },
        ),
        case(
            "ciphertext not a multiple of 16",
            Enrolled,
            Open(&[1607]),
            Nothing,
            |env, fx| {
                let cipher = encrypt(fx.key(), &plain());
                let short = &cipher[..cipher.len() - 5];
                let mut header = plain_header("odd", 1, 1);
                header.content_size = short.len() as u32; // per-packet style
                send_packets(env, fx, &[packet(fx.id, &header, short)], 1)
            },
        ),
        case(
            "bad padding",
            Enrolled,
            Open(&[1607]),
            Nothing,
            |env, fx| {
                let mut cipher = encrypt(fx.key(), &plain());
                let last = cipher.len() - 1;
                cipher[last] ^= 0x5a;
                send_packets(
                    env,
                    fx,
                    &[packet(fx.id, &plain_header("pad", 1, 1), &cipher)],
                    1,
                )
            },
        ),
        case(
            "plaintext length is not orig_file_size",
            Enrolled,
            Open(&[1607]),
            Nothing,
            |env, fx| {
                // 777 and 770 bytes encrypt to the same 784 bytes.
                let cipher = encrypt(fx.key(), &plain());
                let mut header = plain_header("len", 1, 1);
                header.orig_file_size = 770;
                send_packets(env, fx, &[packet(fx.id, &header, &cipher)], 1)
            },
        ),
        case(
            "file encrypted with another key",
            Enrolled,
            Open(&[1607]),
            Nothing,
            |env, fx| {
                let cipher = encrypt(&AesKey::random(), &data(5000, 3));
                send_packets(
                    env,
                    fx,
                    &packets(fx.id, "wk", 5000, &cipher, 1024, ContentSize::Whole),
                    1,
                )
            },
        ),
        case(
            "file larger than --max-file-size",
            Enrolled,
            Open(&[1607]),
            Nothing,
            |env, fx| {
                let mut header = plain_header("huge", 1, 1000);
                header.orig_file_size = 2 * MAX_FILE_SIZE as u32;
                header.content_size = sfc_proto::encrypted_size(2 * MAX_FILE_SIZE) as u32;
                send_packets(env, fx, &[packet(fx.id, &header, &[0u8; 4096])], 1)
            },
        ),
        case(
            "upload stopped midway (parked, expires, temp removed)",
            Enrolled,
            Open(&[]),
            Nothing,
            |env, fx| {
                let p = fx_packets(fx, "parked.bin", 300);
                send_packets(env, fx, &p[..1], 0)
            },
        ),
        // --- 900/901/902 for a file never uploaded ---
        case(
            "900 for a file never uploaded",
            Enrolled,
            Open(&[1607]),
            Nothing,
            |env, fx| {
                let mut conn = env.connect();
                conn.send(&file_name_request(fx.id, 900, "never.bin"));
                Seen::default().open(&mut conn, 1)
            },
        ),
        case(
            "901 for a file never uploaded",
            Enrolled,
            Open(&[1604]),
            Nothing,
            |env, fx| {
                let mut conn = env.connect();
                conn.send(&file_name_request(fx.id, 901, "never.bin"));
                Seen::default().open(&mut conn, 1)
            },
        ),
        case(
            "902 for a file never uploaded",
            Enrolled,
            Open(&[1604]),
            Nothing,
            |env, fx| {
                let mut conn = env.connect();
                conn.send(&file_name_request(fx.id, 902, "never.bin"));
                Seen::default().open(&mut conn, 1)
            },
        ),
        case(
            "900 from an unknown client",
            Setup::None,
            Open(&[1607]),
            Nothing,
            |env, _| {
                let mut conn = env.connect();
                conn.send(&file_name_request(ClientId([0x45; 16]), 900, "f"));
                Seen::default().open(&mut conn, 1)
            },
        ),
        // --- concurrency ---
        case(
            "two uploads of the same file by the same client at once",
            Enrolled,
            Open(&[1607, 1603]),
            Stored,
            |env, fx| {
                let big = data(300_000, 9);
                let cipher = encrypt(fx.key(), &big);
                let all = one_packet(fx.id, "same.bin", big.len(), &cipher);
                let mut a = used_conn(env, fx);
                a.send_raw(&all[..100_000]);
                assert!(eventually(Duration::from_secs(5), || temp_files(
                    env, fx.id
                ) == 1));
                let mut seen = Seen::default();
                let mut b = env.connect();
                b.send_raw(&all);
                seen.read(&mut b, 1);
                a.send_raw(&all[100_000..]);
                let reply = a.recv();
                seen.replies.push(reply.code().as_u16());
                if reply.code().as_u16() == 1603 {
                    assert_received(&reply, fx.id, "same.bin", &big);
                    // Recorded as stored; its content is `big`, so replace it by `plain`.
                    assert_received(
                        &upload(&mut a, fx.id, fx.key(), "same.bin", &plain(), 4096),
                        fx.id,
                        "same.bin",
                        &plain(),
                    );
                    seen.stored.push((fx.id, "same.bin".into()));
                }
                seen.open(&mut a, 0)
            },
        ),
        case(
            "two clients upload files of the same name",
            Enrolled,
            Open(&[1603, 1603]),
            NewClients,
            |env, fx| {
                let mut conn = used_conn(env, fx);
                let (other, other_key) = enroll(&mut conn, "same-name-twin");
                let mut seen = Seen::default();
                seen.new_clients.push(NewClient {
                    id: other,
                    name: "same-name-twin".into(),
                    public_key: Some(keypair().public_key_der()),
                    aes_key: Some(other_key.as_bytes().to_vec()),
                });
                for (id, key) in [(fx.id, fx.key()), (other, &other_key)] {
                    let reply = upload(&mut conn, id, key, "shared.bin", &plain(), 500);
                    seen.replies.push(reply.code().as_u16());
                    seen.stored.push((id, "shared.bin".into()));
                }
                seen.open(&mut conn, 0)
            },
        ),
        // --- resources ---
        case(
            "slow loris: one byte per second until the request timeout",
            Setup::None,
            Closed(&[]),
            Nothing,
            |env, _| {
                let mut conn = env.connect();
                let bytes = register_request("loris").encode();
                let started = Instant::now();
                for byte in &bytes {
                    if conn.stream.write_all(&[*byte]).is_err()
                        || conn.closed_within(Duration::from_secs(1))
                    {
                        let elapsed = started.elapsed();
                        assert!(
                            elapsed < REQUEST_TIMEOUT + Duration::from_secs(3),
                            "{elapsed:?}"
                        );
                        return Seen {
                            closed: true,
                            ..Seen::default()
                        };
                    }
                }
                Seen::default()
            },
        ),
        case(
            "5,000 connections from 20 addresses opened and held",
            Setup::None,
            Open(&[]),
            NewClients,
            |env, _| hold_connections(env, 5_000),
        ),
        case(
            "registration flood: 150 registrations from 10 threads",
            Setup::None,
            Each(&[1600, 1607]),
            NewClients,
            |env, _| {
                let addr = env.addr;
                let threads: Vec<_> = (0..10)
                    .map(|t| {
                        std::thread::spawn(move || {
                            (0..15)
                                .map(|i| {
                                    let user = format!("flood-{t}-{i}");
                                    let mut conn = Conn::connect(addr);
                                    conn.send(&register_request(&user));
                                    (user, conn.try_recv())
                                })
                                .collect::<Vec<_>>()
                        })
                    })
                    .collect();
                let mut seen = Seen::default();
                for thread in threads {
                    for (user, reply) in thread.join().unwrap() {
                        let code = reply.as_ref().map_or(0, |r| r.code().as_u16());
                        seen.replies.push(code);
                        if let Some(Response::Registered { client_id }) = reply {
                            seen.new_clients.push(NewClient {
                                id: client_id,
                                name: user,
                                public_key: None,
                                aes_key: None,
                            });
                        }
                    }
                }
                seen
            },
        ),
    ]
}

fn register_version(env: &Env, version: u8) -> Seen {
    let user = format!("version-{version}");
    let mut bytes = register_request(&user).encode();
    bytes[16] = version;
    let mut conn = env.connect();
    conn.send_raw(&bytes);
    let mut seen = Seen::default();
    // `Conn::try_recv` asserts the reply's version byte is 3.
    match conn.try_recv() {
        Some(Response::Registered { client_id }) => {
            seen.replies.push(1600);
            seen.new_clients.push(NewClient {
                id: client_id,
                name: user,
                public_key: None,
                aes_key: None,
            });
        }
        Some(other) => seen.replies.push(other.code().as_u16()),
        None => seen.closed = true,
    }
    seen.open(&mut conn, 0)
}

/// Soft limit on open files, from /proc/self/limits.
fn open_file_limit() -> Option<u64> {
    let limits = std::fs::read_to_string("/proc/self/limits").ok()?;
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    line.split_whitespace().nth(3)?.parse().ok()
}

fn hold_connections(env: &Env, count: usize) -> Seen {
    // Both ends live in this process: two descriptors per connection.
    sfc_server::raise_fd_limit(2 * count);
    let needed = 2 * count as u64 + 500;
    match open_file_limit() {
        Some(limit) if limit >= needed => {}
        limit => {
            // CI raises it (or runs as root, where raise_fd_limit can): not a skip there.
            assert!(
                std::env::var_os("CI").is_none(),
                "the open-file limit ({limit:?}) is below {needed}"
            );
            return Seen {
                skipped: Some(format!(
                    "SKIPPED: the open-file limit ({limit:?}) is below {needed}; raise `ulimit -Hn`"
                )),
                ..Seen::default()
            };
        }
    }
    let started = Instant::now();
    let mut held = Vec::with_capacity(count);
    // From 127.0.1.1, 127.0.1.2, …: 250 per address, within the default
    // --max-connections-per-address (one address alone is capped; see tests/security.rs).
    for i in 0..count {
        let local = std::net::IpAddr::from([127, 0, 1, (i / 250 + 1) as u8]);
        match tcp_from(local, env.addr) {
            Ok(stream) => held.push(stream),
            Err(error) => panic!("connection {i} failed: {error}"),
        }
    }
    eprintln!("    {count} connections opened in {:?}", started.elapsed());
    // While they are held, a normal client is served.
    let mut seen = Seen::default();
    let mut conn = env.connect();
    let (id, key) = enroll(&mut conn, "during-the-5000");
    let reply = upload(&mut conn, id, &key, "held.bin", &plain(), 400);
    assert_received(&reply, id, "held.bin", &plain());
    seen.new_clients.push(NewClient {
        id,
        name: "during-the-5000".into(),
        public_key: Some(keypair().public_key_der()),
        aes_key: Some(key.as_bytes().to_vec()),
    });
    seen.stored.push((id, "held.bin".into()));
    // The held connections are still open (none was dropped to make room).
    for stream in held.iter().step_by(count / 20) {
        stream.set_nonblocking(true).unwrap();
        let mut byte = [0u8; 1];
        let state = stream.peek(&mut byte);
        assert!(
            matches!(&state, Err(e) if e.kind() == std::io::ErrorKind::WouldBlock),
            "a held connection is no longer open: {state:?}"
        );
    }
    drop(held);
    seen.open(&mut conn, 0)
}

// ----- the runner ---------------------------------------------------------------------------

fn setup(env: &Env, user: String, kind: Setup) -> Option<Fixture> {
    let mut conn = env.connect();
    match kind {
        Setup::None => None,
        Setup::Registered => {
            let Response::Registered { client_id } = conn.call(&register_request(&user)) else {
                panic!("fixture registration");
            };
            Some(Fixture {
                id: client_id,
                user,
                key: None,
            })
        }
        Setup::Enrolled => {
            let (id, key) = enroll(&mut conn, &user);
            Some(Fixture {
                id,
                user,
                key: Some(key),
            })
        }
    }
}

fn expected_after(before: &Snapshot, seen: &Seen, after: &Snapshot) -> Snapshot {
    let mut expected = before.clone();
    for client in &seen.new_clients {
        expected.clients.insert(
            client.id.to_hex(),
            ClientRow {
                name: client.name.clone(),
                public_key: client.public_key.clone(),
                aes_key: client.aes_key.clone(),
            },
        );
    }
    let content = plain();
    for (id, label) in &seen.stored {
        let path = format!("files/{}/{}", id.to_hex(), disk_name(label));
        expected
            .files
            .insert((id.to_hex(), label.clone()), (path.clone(), false));
        expected.tree.insert(
            format!("data/{path}"),
            (content.len() as u64, sfc_crypto::cksum(&content)),
        );
    }
    if let Some((id, der)) = &seen.new_key {
        let hex = id.to_hex();
        if let Some(row) = expected.clients.get_mut(&hex) {
            row.public_key = Some(der.clone());
            // A fresh AES key: whatever it is, it must be there and have changed. None,
            // or the key from before, is expected as a key no row can hold, so that the
            // comparison with `after` fails.
            let fresh = after.clients.get(&hex).and_then(|r| r.aes_key.clone());
            row.aes_key = match fresh {
                Some(key) if row.aes_key.as_ref() != Some(&key) => Some(key),
                _ => Some(b"a fresh AES key was recorded".to_vec()),
            };
        }
    }
    expected
}

fn check_expect(expect: Expect, seen: &Seen) -> Result<(), String> {
    let ok = match expect {
        Open(codes) => seen.replies == codes && !seen.closed,
        Closed(codes) => seen.replies == codes && seen.closed,
        HungUp => seen.replies.is_empty(),
        Each(codes) => !seen.replies.is_empty() && seen.replies.iter().all(|c| codes.contains(c)),
    };
    if ok {
        Ok(())
    } else {
        Err(format!(
            "expected {expect:?}, got replies {:?}, closed: {}",
            seen.replies, seen.closed
        ))
    }
}

fn check_effect(effect: Effect, seen: &Seen) -> Result<(), String> {
    let kinds = (
        !seen.stored.is_empty(),
        !seen.new_clients.is_empty(),
        seen.new_key.is_some(),
    );
    let ok = match effect {
        Nothing => kinds == (false, false, false),
        Stored => kinds == (true, false, false),
        NewClients => kinds.1 && !kinds.2,
        NewKey => kinds == (false, false, true),
    };
    if ok {
        Ok(())
    } else {
        Err(format!(
            "declared effect {effect:?}, but the case made {kinds:?} (stored, clients, key)"
        ))
    }
}

/// A fresh client registers, exchanges keys, uploads a file in two packets and confirms it.
fn healthy(env: &Env, index: usize) -> Result<(), String> {
    let user = format!("healthy-{index}");
    let mut conn = env.connect();
    let (id, key) = enroll(&mut conn, &user);
    let content = data(3000, index as u32);
    let reply = upload(&mut conn, id, &key, "ok.bin", &content, 2048);
    let expected = Response::FileReceived {
        client_id: id,
        content_size: sfc_proto::encrypted_size(content.len() as u64) as u32,
        file_name: name("ok.bin"),
        cksum: sfc_crypto::cksum(&content),
    };
    if reply != expected {
        return Err(format!("upload after the case: {reply:?}"));
    }
    match conn.call(&file_name_request(id, 900, "ok.bin")) {
        Response::Ack { .. } => Ok(()),
        other => Err(format!("900 after the case: {other:?}")),
    }
}

fn panic_message(error: Box<dyn std::any::Any + Send>) -> String {
    error
        .downcast_ref::<String>()
        .cloned()
        .or_else(|| error.downcast_ref::<&str>().map(|s| s.to_string()))
        .unwrap_or_else(|| "panic".into())
}

#[test]
fn hostile_input_catalogue() {
    let env = Env::start();
    let cases = cases();
    assert!(cases.len() >= 40, "the catalogue has {} cases", cases.len());
    // One enrolled client serves every case that needs one (its files accumulate under
    // distinct labels); registered-only fixtures are fresh per case. This keeps the
    // registrations of the whole run well below a per-address registration limit.
    let enrolled = setup(&env, "fx-enrolled".into(), Setup::Enrolled).unwrap();
    let mut failures = Vec::new();
    let started = Instant::now();
    for (index, case) in cases.iter().enumerate() {
        let case_started = Instant::now();
        let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(
            || -> Result<Option<String>, String> {
                let fixture = match case.setup {
                    Setup::Enrolled => None,
                    other => setup(&env, format!("fx-{index}"), other),
                };
                let fallback = Fixture {
                    id: ClientId::ZERO,
                    user: String::new(),
                    key: None,
                };
                let fx = match case.setup {
                    Setup::Enrolled => &enrolled,
                    _ => fixture.as_ref().unwrap_or(&fallback),
                };
                let before = snapshot(&env);
                let seen = (case.run)(&env, fx);
                if let Some(skipped) = seen.skipped {
                    return Ok(Some(skipped));
                }
                check_expect(case.expect, &seen)?;
                check_effect(case.effect, &seen)?;
                let mut after = snapshot(&env);
                let mut expected = expected_after(&before, &seen, &after);
                let settled = eventually(SETTLE, || {
                    after = snapshot(&env);
                    expected = expected_after(&before, &seen, &after);
                    after == expected
                });
                if !settled {
                    return Err(format!("storage changed:\n    {}", diff(&expected, &after)));
                }
                healthy(&env, index)?;
                Ok(None)
            },
        ));
        let outcome = match result {
            Ok(Ok(None)) => Ok("ok".to_string()),
            Ok(Ok(Some(skipped))) => Ok(skipped),
            Ok(Err(error)) => Err(error),
            Err(panic) => Err(format!("panicked: {}", panic_message(panic))),
        };
        let ms = case_started.elapsed().as_millis();
        match outcome {
            Ok(note) => eprintln!("{index:>2} {note:<4} {:<70} {ms:>6} ms", case.name),
            Err(error) => {
                eprintln!("{index:>2} FAIL {:<70} {ms:>6} ms\n    {error}", case.name);
                failures.push(format!("{}: {error}", case.name));
            }
        }
    }
    eprintln!("{} cases in {:?}", cases.len(), started.elapsed());
    assert!(
        failures.is_empty(),
        "{} case(s) failed:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

// ----- 828s that are not received: size and time limits still apply (rule S13) ----------

/// The header and fixed part of an 828 whose fields do not decode to a packet
/// (packet_number 0), announcing `content_len` content bytes.
fn invalid_packet_prefix(id: ClientId, content_len: u32) -> Vec<u8> {
    let mut header = plain_header("bad.bin", 0, 1);
    header.content_size = content_len;
    header.encode_prefix(id, content_len).to_vec()
}

#[test]
fn an_invalid_828_trickled_a_byte_at_a_time_is_closed_at_the_request_timeout() {
    let env = Env::start_with(|c| {
        c.request_timeout = Duration::from_secs(1);
        c.idle_timeout = Duration::from_secs(3);
    });
    let mut conn = env.connect();
    conn.send_raw(&invalid_packet_prefix(ClientId([3; 16]), 1_000_000));
    assert_eq!(conn.recv(), Response::ServerError);
    // A byte every 500 ms keeps the idle timeout away, not the request deadline: the
    // content must come at 64 KiB per request timeout.
    let started = Instant::now();
    let mut closed = false;
    while started.elapsed() < Duration::from_secs(15) {
        if conn.stream.write_all(&[0]).is_err() || conn.closed_within(Duration::from_millis(500)) {
            closed = true;
            break;
        }
    }
    assert!(closed, "still open after {:?}", started.elapsed());
}

#[test]
fn an_invalid_828_beyond_max_file_size_gets_1607_and_a_close_without_being_read() {
    let env = Env::start_with(|c| c.max_file_size = 1000);
    let fx = setup(&env, "big-invalid".into(), Setup::Enrolled).unwrap();
    let mut conn = used_conn(&env, &fx);
    conn.send_raw(&invalid_packet_prefix(fx.id, u32::MAX - 267));
    conn.send_raw(&[0u8; 4096]);
    assert_eq!(conn.recv(), Response::ServerError);
    assert!(conn.closed_within(Duration::from_secs(5)), "still open");
}

#[test]
fn a_swallowed_828_beyond_max_file_size_gets_1607_and_a_close_without_being_read() {
    let env = Env::start_with(|c| c.max_file_size = 1000);
    let fx = setup(&env, "big-swallowed".into(), Setup::Enrolled).unwrap();
    let mut conn = used_conn(&env, &fx);
    // Packet 2 with no upload: refused, and the transfer's next packets swallowed (S12).
    let mut header = plain_header("s.bin", 2, 3);
    header.content_size = 16;
    conn.send_raw(&packet(fx.id, &header, &[0u8; 16]));
    assert_eq!(conn.recv(), Response::ServerError);
    // Its packet 3 of 4 GiB is not read to be swallowed.
    let content_len = u32::MAX - 267;
    let mut header = plain_header("s.bin", 3, 3);
    header.content_size = content_len;
    conn.send_raw(&header.encode_prefix(fx.id, content_len));
    conn.send_raw(&[0u8; 4096]);
    conn.stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    assert_eq!(conn.try_recv(), Some(Response::ServerError));
    assert!(conn.closed_within(Duration::from_secs(5)), "still open");
}
