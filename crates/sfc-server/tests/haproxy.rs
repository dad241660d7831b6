//! Several servers behind one TCP balancer (issue 14, item 3): the PROXY protocol
//! (`--proxy-protocol --proxy-from`) spoken by hand to a server, then the real HAProxy
//! (Debian's) with the documented `docs/deploy/haproxy.cfg` in front of `sfc-server`
//! processes: the client's real address reaches the node, and three nodes on one
//! PostgreSQL serve 300 concurrent clients, and lose only the clients of a node killed
//! mid-run, which succeed when they try again.
//!
//! The files store of the three-node tests is a parameter ([`FileStore`]): one S3 bucket
//! (SeaweedFS) shared by the nodes, the deployment of docs/DEPLOY.md, when SeaweedFS is
//! installed (in CI it must be); otherwise each node's own folder, which also works
//! because a client keeps reaching one node within a run (persistent connections, or
//! `balance source`).
#![cfg(test)]

mod common;

use common::haproxy::{self, Haproxy, Setup};
use common::process::{ServerProcess, SERVER_BIN};
use common::s3;
use common::*;
use sfc_crypto::AesKey;
use sfc_proto::{ClientId, Request, RequestBody, Response, ResponseHeader};
use sfc_server::config::{S3Location, Store};
use sfc_server::{MetaStore, ProxySources};
use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::Command;
use std::sync::{Arc, Barrier};
use std::time::Duration;

// ---------------------------------------------------------------------------------------
// PROXY headers by hand, to a server in this process.

fn v2_header(source: SocketAddr, destination: SocketAddr) -> Vec<u8> {
    let (IpAddr::V4(s), IpAddr::V4(d)) = (source.ip(), destination.ip()) else {
        panic!("IPv4 only here")
    };
    let mut bytes = b"\r\n\r\n\0\r\nQUIT\n".to_vec();
    bytes.extend_from_slice(&[0x21, 0x11, 0, 12]);
    bytes.extend_from_slice(&s.octets());
    bytes.extend_from_slice(&d.octets());
    bytes.extend_from_slice(&source.port().to_be_bytes());
    bytes.extend_from_slice(&destination.port().to_be_bytes());
    bytes
}

fn v1_header(source: SocketAddr, destination: SocketAddr) -> Vec<u8> {
    format!(
        "PROXY TCP4 {} {} {} {}\r\n",
        source.ip(),
        destination.ip(),
        source.port(),
        destination.port()
    )
    .into_bytes()
}

fn ip(text: &str) -> IpAddr {
    text.parse().unwrap()
}

/// A connection from `from` to `server` that starts with `header`.
fn conn_with_header(from: IpAddr, server: SocketAddr, header: &[u8]) -> Conn {
    let stream = tcp_from(from, server).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    let mut conn = Conn { stream };
    conn.send_raw(header);
    conn
}

fn behind_a_balancer(config: &mut sfc_server::ServerConfig) {
    config.proxy_protocol = Some(ProxySources::parse("127.0.0.1").unwrap());
    config.max_connections_per_address = 1;
    config.request_timeout = Duration::from_secs(1);
}

#[test]
fn v1_and_v2_headers_from_a_trusted_balancer_name_the_client() {
    let server = TestServer::start_with(behind_a_balancer);
    let balancer = ip("127.0.0.1");
    let client = |last: u8| SocketAddr::from(([127, 0, 0, last], 40_000));
    // Every connection comes from 127.0.0.1; the cap of one connection per address
    // applies to the addresses in the headers.
    let mut first = conn_with_header(balancer, server.addr, &v2_header(client(5), server.addr));
    enroll(&mut first, "alice");
    let mut same_client =
        conn_with_header(balancer, server.addr, &v1_header(client(5), server.addr));
    assert!(
        same_client.closed_within(Duration::from_secs(5)),
        "a second connection of 127.0.0.5 is over its cap"
    );
    let mut other = conn_with_header(balancer, server.addr, &v1_header(client(6), server.addr));
    enroll(&mut other, "bob");
    // The header and the first request in one write: nothing after the header is lost.
    let together = [
        v2_header(client(7), server.addr),
        register_request("carol").encode(),
    ]
    .concat();
    let mut third = conn_with_header(balancer, server.addr, &together);
    assert!(matches!(third.recv(), Response::Registered { .. }));
    // A LOCAL header (a health check) is the balancer's own connection.
    let mut local = b"\r\n\r\n\0\r\nQUIT\n".to_vec();
    local.extend_from_slice(&[0x20, 0x00, 0, 0]);
    let mut check = conn_with_header(balancer, server.addr, &local);
    assert!(matches!(
        check.call(&register_request("dave")),
        Response::Registered { .. }
    ));
}

#[test]
fn untrusted_sources_missing_and_bad_headers_are_refused() {
    let server = TestServer::start_with(behind_a_balancer);
    let balancer = ip("127.0.0.1");
    let client = SocketAddr::from(([127, 0, 0, 5], 40_000));
    let refused = |from: IpAddr, bytes: &[u8], what: &str| {
        let mut conn = conn_with_header(from, server.addr, bytes);
        // Refused before any reply: the connection ends with no byte sent back.
        let mut buf = Vec::new();
        let read = conn.stream.read_to_end(&mut buf);
        assert!(
            buf.is_empty() && (read.is_ok() || conn.closed_within(Duration::from_secs(5))),
            "{what}: refused without a reply"
        );
    };
    refused(
        ip("127.0.0.2"),
        &v2_header(client, server.addr),
        "a header from an untrusted address",
    );
    refused(
        ip("127.0.0.2"),
        &register_request("x").encode(),
        "a plain request from an untrusted address",
    );
    refused(
        balancer,
        &register_request("y").encode(),
        "no header from the balancer",
    );
    refused(balancer, b"GET / HTTP/1.0\r\n\r\n", "garbage");
    refused(
        balancer,
        b"PROXY TCP4 1.2.3.4 5.6.7.8 1 99999\r\n",
        "a bad v1 port",
    );
    let mut long = b"\r\n\r\n\0\r\nQUIT\n".to_vec();
    long.extend_from_slice(&[0x21, 0x11, 0xff, 0xff]);
    refused(balancer, &long, "an oversize v2 header");
    // Half a header, then silence: refused at the request time-out (1 s here).
    refused(balancer, b"PROXY TCP4 1.2.3.4", "an unfinished header");
    // The server goes on serving good connections.
    let mut good = conn_with_header(balancer, server.addr, &v2_header(client, server.addr));
    enroll(&mut good, "erin");
}

// ---------------------------------------------------------------------------------------
// Real HAProxy in front of sfc-server processes.

/// Where the nodes keep received files.
#[derive(Clone, Debug)]
enum FileStore {
    /// Each node its own `--data-dir` (a client must keep reaching the same node).
    NodeFolders,
    /// One S3 location for all nodes (`--store s3://…`, the AWS_* variables).
    S3 {
        endpoint: String,
        location: S3Location,
    },
}

impl FileStore {
    /// S3 on the test binary's SeaweedFS when there is one (always in CI), else the
    /// nodes' folders.
    fn for_test(test: &str) -> FileStore {
        match s3::shared(test) {
            Some(weed) => {
                let Store::S3(location) = weed.fresh() else {
                    panic!("a fresh S3 location")
                };
                FileStore::S3 {
                    endpoint: weed.endpoint(),
                    location,
                }
            }
            None => FileStore::NodeFolders,
        }
    }
}

/// An `sfc-server` process behind the balancer.
struct Node {
    process: ServerProcess,
    dir: tempfile::TempDir,
    addr: SocketAddr,
}

impl Node {
    fn start(database_url: Option<&str>, store: &FileStore, extra: &[&str]) -> Node {
        let dir = tempfile::tempdir().unwrap();
        let mut command = Command::new(SERVER_BIN);
        command
            .arg("--data-dir")
            .arg(dir.path())
            .args(["--bind", "127.0.0.1", "--port", "0"])
            .args(["--proxy-protocol", "--proxy-from", "127.0.0.1"])
            .args(extra);
        match store {
            FileStore::NodeFolders => {}
            FileStore::S3 { endpoint, location } => {
                command
                    .arg("--store")
                    .arg(format!("s3://{}/{}", location.bucket, location.prefix))
                    .env("AWS_ENDPOINT_URL", endpoint)
                    .env("AWS_ALLOW_HTTP", "true")
                    .env("AWS_REGION", "us-east-1")
                    .env("AWS_ACCESS_KEY_ID", s3::ACCESS_KEY)
                    .env("AWS_SECRET_ACCESS_KEY", s3::SECRET_KEY);
            }
        }
        match database_url {
            Some(url) => command.env("SFC_DATABASE_URL", url),
            None => command.env_remove("SFC_DATABASE_URL"),
        };
        let mut process = ServerProcess::spawn(command);
        let addr = process.listening_addr();
        Node { process, dir, addr }
    }

    fn kill(&mut self) {
        let _ = self.process.child.kill();
        let _ = self.process.child.wait();
    }

    /// The stored file at a row's path in this node's folder, if it has it.
    fn object(&self, path: &str) -> Option<Vec<u8>> {
        std::fs::read(self.dir.path().join(path)).ok()
    }
}

fn nodes_setup(nodes: &[Node], balance: Option<&'static str>) -> Setup {
    Setup {
        nodes: nodes.iter().map(|n| n.addr).collect(),
        balance,
        proxy_v1: false,
    }
}

/// The n-th test client machine: 127.1.x.y.
fn client_ip(n: usize) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(127, 1, (n / 250) as u8, (n % 250 + 1) as u8))
}

/// Each refusal leaves a line in the node's log that says why, with the address.
#[test]
fn refusals_are_logged() {
    init_logging();
    let mut node = Node::start(None, &FileStore::NodeFolders, &["--request-timeout", "1"]);
    let mut untrusted = conn_with_header(
        ip("127.0.0.2"),
        node.addr,
        &v2_header(SocketAddr::from(([127, 0, 0, 5], 1)), node.addr),
    );
    assert!(untrusted.closed_within(Duration::from_secs(5)));
    let line = node
        .process
        .wait_for("not from a --proxy-from address")
        .expect("a log line for an untrusted source");
    assert!(line.contains("127.0.0.2"), "{line}");
    // A flood of them: one line per address and interval, not one per connection.
    for _ in 0..5 {
        let mut again = conn_with_header(ip("127.0.0.2"), node.addr, b"");
        assert!(again.closed_within(Duration::from_secs(5)));
    }
    let lines = node.process.lines_containing(
        "not from a --proxy-from address",
        Duration::from_millis(500),
    );
    assert_eq!(lines.len(), 1, "{lines:#?}");
    for (bytes, reason) in [
        (&b"GET / HTTP/1.0\r\n\r\n"[..], "no PROXY header"),
        (
            b"PROXY TCP4 1.2.3.4 5.6.7.8 1 99999\r\n",
            "malformed PROXY v1 line",
        ),
        (b"PROXY TCP4 1.2.3.4", "no complete PROXY header within"),
    ] {
        let mut conn = conn_with_header(ip("127.0.0.1"), node.addr, bytes);
        assert!(conn.closed_within(Duration::from_secs(5)), "{reason}");
        let line = node
            .process
            .wait_for(reason)
            .unwrap_or_else(|| panic!("a log line saying {reason:?}"));
        assert!(
            line.contains("connection refused: bad PROXY header"),
            "{line}"
        );
    }
}

#[test]
fn haproxy_passes_the_client_address_v2_and_v1() {
    if !haproxy::available("haproxy_passes_the_client_address_v2_and_v1") {
        return;
    }
    init_logging();
    for proxy_v1 in [false, true] {
        let mut node = Node::start(
            None,
            &FileStore::NodeFolders,
            &["--max-connections-per-address", "2"],
        );
        let balancer = Haproxy::start(&Setup {
            proxy_v1,
            ..nodes_setup(std::slice::from_ref(&node), None)
        });
        let from = ip("127.0.0.5");
        let connect = |from: IpAddr| {
            let stream = tcp_from(from, balancer.addr).unwrap();
            stream
                .set_read_timeout(Some(Duration::from_secs(10)))
                .unwrap();
            Conn { stream }
        };
        let mut first = connect(from);
        enroll(&mut first, "alice");
        let line = node
            .process
            .wait_for("peer=127.0.0.5")
            .unwrap_or_else(|| panic!("the node logs the client's address (v1: {proxy_v1})"));
        assert!(line.contains("request"), "{line}");
        // The per-address cap (2) counts 127.0.0.5's connections, not HAProxy's.
        let mut second = connect(from);
        enroll(&mut second, "bob");
        let mut third = connect(from);
        assert!(
            third.closed_within(Duration::from_secs(5)),
            "a third connection from 127.0.0.5 is over the cap"
        );
        let mut other = connect(ip("127.0.0.6"));
        enroll(&mut other, "carol");
    }
}

/// What went wrong for a client (the text is read through `Debug`, in failure messages).
#[derive(Debug)]
#[allow(dead_code)]
enum Failure {
    /// The connection failed or closed without a reply: try again later.
    Network(String),
    /// A well-formed refusal (e.g. a packet that continues an upload held by a node that
    /// is gone): the client sends the file again.
    Refused(String),
    /// A malformed or impossible reply: a bug.
    Protocol(String),
}

impl From<std::io::Error> for Failure {
    fn from(error: std::io::Error) -> Self {
        Failure::Network(error.to_string())
    }
}

/// A client of the three-node tests: one connection for everything, or one per request
/// (the original C++ client), from its own address.
struct Client {
    number: usize,
    server: SocketAddr,
    per_request: bool,
    conn: Option<TcpStream>,
    id: Option<ClientId>,
    key: Option<AesKey>,
    /// Files it stores, one after the other.
    files: usize,
    /// Files it has stored and verified.
    done: usize,
    /// Where it waits once, in the middle of its second file ([`Pause`]).
    pause: Option<Pause>,
}

/// All clients stop in the middle of an upload, the test does something, they go on.
#[derive(Clone)]
struct Pause {
    reached: Arc<Barrier>,
    resume: Arc<Barrier>,
}

impl Pause {
    fn new(clients: usize) -> Self {
        Pause {
            reached: Arc::new(Barrier::new(clients + 1)),
            resume: Arc::new(Barrier::new(clients + 1)),
        }
    }

    fn wait(&self) {
        self.reached.wait();
        self.resume.wait();
    }
}

const PACKET: usize = 2_000;

fn file_of(client: usize, file: usize) -> (String, Vec<u8>) {
    let seed = (client * 16 + file) as u32;
    (
        format!("file-{file}.bin"),
        data(3_000 + client % 7 * 500, seed),
    )
}

impl Client {
    fn new(number: usize, server: SocketAddr, per_request: bool) -> Self {
        Client {
            number,
            server,
            per_request,
            conn: None,
            id: None,
            key: None,
            files: 1,
            done: 0,
            pause: None,
        }
    }

    fn name(&self) -> String {
        format!("client-{}", self.number)
    }

    fn stream(&mut self) -> Result<&mut TcpStream, Failure> {
        if self.per_request || self.conn.is_none() {
            let stream = tcp_from(client_ip(self.number), self.server)?;
            stream.set_read_timeout(Some(Duration::from_secs(30)))?;
            stream.set_nodelay(true)?;
            self.conn = Some(stream);
        }
        self.conn
            .as_mut()
            .ok_or_else(|| Failure::Network("no connection".into()))
    }

    fn send(&mut self, bytes: &[u8]) -> Result<(), Failure> {
        self.stream()?.write_all(bytes)?;
        Ok(())
    }

    fn recv(&mut self) -> Result<Response, Failure> {
        let stream = self
            .conn
            .as_mut()
            .ok_or_else(|| Failure::Network("no connection".into()))?;
        let mut head = [0u8; 7];
        stream.read_exact(&mut head)?;
        let header = ResponseHeader::decode(&head)
            .map_err(|e| Failure::Protocol(format!("bad reply header: {e:?}")))?;
        let mut payload = vec![0u8; header.payload_size as usize];
        stream.read_exact(&mut payload)?;
        Response::decode_payload(&header, &payload)
            .map_err(|e| Failure::Protocol(format!("bad reply: {e:?}")))
    }

    fn call(&mut self, request: &Request) -> Result<Response, Failure> {
        self.send(&request.encode())?;
        self.recv()
    }

    /// Registers (or, known already, reconnects), stores and verifies its files.
    fn run(&mut self) -> Result<(), Failure> {
        let name = self.name();
        let key = match self.id {
            None => {
                let client_id = match self.call(&register_request(&name))? {
                    Response::Registered { client_id } => client_id,
                    other => return Err(refused("825", other)),
                };
                self.id = Some(client_id);
                match self.call(&key_request(client_id, &name))? {
                    Response::PublicKeyAccepted { wrapped_key, .. } => wrapped_key,
                    other => return Err(refused("826", other)),
                }
            }
            Some(id) => {
                let reconnect = Request::new(
                    id,
                    RequestBody::Reconnect {
                        name: common::name(&name),
                    },
                );
                match self.call(&reconnect)? {
                    Response::ReconnectAccepted { wrapped_key, .. } => wrapped_key,
                    // Its 826 never arrived (the node died before): send the key now.
                    Response::ReconnectRejected { .. } => {
                        match self.call(&key_request(id, &name))? {
                            Response::PublicKeyAccepted { wrapped_key, .. } => wrapped_key,
                            other => return Err(refused("826 again", other)),
                        }
                    }
                    other => return Err(refused("827", other)),
                }
            }
        };
        let key = keypair()
            .unwrap_aes_key(&key)
            .map_err(|e| Failure::Protocol(format!("key: {e:?}")))?;
        self.key = Some(key.clone());
        let id = self.id.ok_or_else(|| Failure::Protocol("no ID".into()))?;
        while self.done < self.files {
            let (file, plain) = file_of(self.number, self.done);
            let cipher = encrypt(&key, &plain);
            let all = packets(id, &file, plain.len(), &cipher, PACKET, ContentSize::Whole);
            let count = all.len();
            let mut last = None;
            for (i, packet) in all.iter().enumerate() {
                if i == 1 && self.done == 1 {
                    if let Some(pause) = self.pause.take() {
                        pause.wait();
                    }
                }
                if i + 1 < count && !self.per_request {
                    self.send(packet)?;
                    continue;
                }
                let reply = self.call_raw(packet)?;
                if i + 1 < count {
                    if reply != (Response::PacketReceived { client_id: id }) {
                        return Err(refused(&format!("packet {}", i + 1), reply));
                    }
                } else {
                    last = Some(reply);
                }
            }
            match last {
                Some(Response::FileReceived { cksum, .. })
                    if cksum == sfc_crypto::cksum(&plain) => {}
                Some(Response::FileReceived { cksum, .. }) => {
                    return Err(Failure::Protocol(format!(
                        "1603 for {file}: wrong cksum {cksum}"
                    )))
                }
                Some(other) => return Err(refused("1603", other)),
                None => return Err(Failure::Protocol("no packets".into())),
            }
            match self.call(&file_name_request(id, 900, &file))? {
                Response::Ack { .. } => self.done += 1,
                other => return Err(refused("900", other)),
            }
        }
        Ok(())
    }

    fn call_raw(&mut self, bytes: &[u8]) -> Result<Response, Failure> {
        self.send(bytes)?;
        self.recv()
    }
}

fn refused(what: &str, reply: Response) -> Failure {
    match reply {
        Response::ServerError
        | Response::RegistrationFailed
        | Response::ReconnectRejected { .. } => Failure::Refused(format!("{what}: {reply:?}")),
        other => Failure::Protocol(format!("{what}: {other:?}")),
    }
}

/// Runs every client on its own thread, all starting together; each returns itself and
/// its result. A client that ends before its pause still takes its turn at it.
fn run_all(clients: Vec<Client>) -> Vec<(Client, Result<(), Failure>)> {
    let start = Arc::new(Barrier::new(clients.len()));
    let threads: Vec<_> = clients
        .into_iter()
        .map(|mut client| {
            let start = Arc::clone(&start);
            std::thread::Builder::new()
                .stack_size(1 << 20)
                .spawn(move || {
                    start.wait();
                    let result = client.run();
                    if let Some(pause) = client.pause.take() {
                        pause.wait();
                    }
                    client.conn = None;
                    (client, result)
                })
                .unwrap()
        })
        .collect();
    threads.into_iter().map(|t| t.join().unwrap()).collect()
}

/// Every row names a stored object; every verified row's object has the content its
/// client sent; every client that finished has its files verified.
/// `finished`: the clients that ended well, with the number of files each stored.
fn check_rows(database_url: &str, store: &FileStore, nodes: &[Node], finished: &[(usize, usize)]) {
    let url = sfc_server::config::PostgresUrl::parse(database_url).unwrap();
    let meta = sfc_server::PostgresStore::open_existing(&url).unwrap();
    let names: HashMap<ClientId, usize> = meta
        .clients()
        .unwrap()
        .into_iter()
        .map(|c| (c.id, c.name.trim_start_matches("client-").parse().unwrap()))
        .collect();
    let rows = meta.files().unwrap();
    for row in &rows {
        let copies: Vec<Vec<u8>> = match store {
            FileStore::NodeFolders => nodes.iter().filter_map(|n| n.object(&row.path)).collect(),
            FileStore::S3 { location, .. } => {
                s3::read(location, &row.path).ok().into_iter().collect()
            }
        };
        assert!(!copies.is_empty(), "a row without an object: {row:?}");
        if row.verified {
            let number = names[&row.client_id];
            let file: usize = row.file_name["file-".len()..row.file_name.len() - ".bin".len()]
                .parse()
                .unwrap();
            let (_, plain) = file_of(number, file);
            assert!(
                copies.contains(&plain),
                "a verified row without its content: {row:?}"
            );
        }
    }
    for (number, files) in finished {
        let verified = rows
            .iter()
            .filter(|row| names.get(&row.client_id) == Some(number) && row.verified)
            .count();
        assert_eq!(verified, *files, "client {number}'s files");
    }
}

/// Three nodes on one database. A small pool each: a new PostgreSQL connection costs a
/// SCRAM handshake, slow in a debug build on a busy machine, and a few connections serve
/// hundreds of clients (a statement takes milliseconds).
fn three_nodes(url: &str, store: &FileStore) -> Vec<Node> {
    (0..3)
        .map(|_| Node::start(Some(url), store, &["--database-pool", "4"]))
        .collect()
}

/// The three-node tests run one at a time: each alone loads two cores enough.
fn one_at_a_time() -> std::sync::MutexGuard<'static, ()> {
    static LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());
    LOCK.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

#[test]
fn three_nodes_on_postgres_serve_300_concurrent_clients() {
    let test = "three_nodes_on_postgres_serve_300_concurrent_clients";
    if !haproxy::available(test) {
        return;
    }
    let Some(cluster) = postgres::shared(test) else {
        return;
    };
    let _alone = one_at_a_time();
    let url = cluster.url(&cluster.create_database());
    let store = FileStore::for_test(test);
    eprintln!("{test}: files in {store:?}");
    let mut nodes = three_nodes(&url, &store);
    // Persistent clients through round robin, per-request clients through source
    // affinity: two balancers over the same nodes, at the same time.
    let roundrobin = Haproxy::start(&nodes_setup(&nodes, Some("roundrobin")));
    let source = Haproxy::start(&nodes_setup(&nodes, None));
    let clients: Vec<Client> = (0..300)
        .map(|n| {
            if n % 2 == 0 {
                Client::new(n, roundrobin.addr, false)
            } else {
                Client::new(n, source.addr, true)
            }
        })
        .collect();
    let results = run_all(clients);
    let failed: Vec<String> = results
        .iter()
        .filter_map(|(c, r)| r.as_ref().err().map(|e| format!("{}: {e:?}", c.number)))
        .collect();
    if !failed.is_empty() {
        let why: Vec<Option<String>> = nodes
            .iter_mut()
            .map(|node| node.process.wait_for("request refused"))
            .collect();
        panic!("failed clients: {failed:?}; the nodes said: {why:?}");
    }
    let finished: Vec<(usize, usize)> = results.iter().map(|(c, _)| (c.number, c.files)).collect();
    check_rows(&url, &store, &nodes, &finished);
    // Every node served some of them (the balancers spread the clients).
    for node in &mut nodes {
        assert!(
            node.process.wait_for("reply=1603").is_some(),
            "node {} stored nothing",
            node.addr
        );
    }
}

#[test]
fn a_node_killed_mid_run_loses_only_its_clients_who_succeed_on_rerun() {
    let test = "a_node_killed_mid_run_loses_only_its_clients_who_succeed_on_rerun";
    if !haproxy::available(test) {
        return;
    }
    let Some(cluster) = postgres::shared(test) else {
        return;
    };
    let _alone = one_at_a_time();
    let url = cluster.url(&cluster.create_database());
    let store = FileStore::for_test(test);
    eprintln!("{test}: files in {store:?}");
    let mut nodes = three_nodes(&url, &store);
    let balancer = Haproxy::start(&nodes_setup(&nodes, None));
    let pause = Pause::new(90);
    let clients: Vec<Client> = (0..90)
        .map(|n| {
            let mut client = Client::new(1000 + n, balancer.addr, n % 2 == 1);
            // The pause is in the middle of the second file.
            client.files = 2;
            client.pause = Some(pause.clone());
            client
        })
        .collect();
    // Every client stops after the first packet of its second file; node 2 is killed;
    // they go on.
    let pausing = pause.clone();
    let running = std::thread::spawn(move || run_all(clients));
    pausing.reached.wait();
    nodes[1].kill();
    pausing.resume.wait();
    let results = running.join().unwrap();
    // Which clients node 2 served, from HAProxy's log (one line per connection).
    let log = balancer.log();
    let on_killed_node = |number: usize| {
        let from = format!(">{}:", client_ip(number));
        log.lines()
            .any(|line| line.contains(&from) && line.contains("sfc_nodes/node2 "))
    };
    let mut again = Vec::new();
    let mut finished = Vec::new();
    for (client, result) in results {
        match result {
            Ok(()) => finished.push((client.number, client.files)),
            // A connection to the killed node breaks: a network error. A per-request
            // client's next packet reaches another node, which does not have its upload:
            // a refusal (1607), and it sends the file again.
            Err(Failure::Network(_)) if on_killed_node(client.number) => again.push(client),
            Err(Failure::Refused(_)) if client.per_request && on_killed_node(client.number) => {
                again.push(client)
            }
            Err(error) => panic!(
                "client {}: {error:?}\nHAProxy's log:\n{}",
                client.number,
                log.lines().take(20).collect::<Vec<_>>().join("\n")
            ),
        }
    }
    assert!(
        again.iter().any(|client| !client.per_request),
        "persistent clients on the killed node lost their connection"
    );
    assert!(!finished.is_empty(), "the other nodes' clients finished");
    // HAProxy takes the node out after two failed checks (1 s apart). Until then a
    // connection to it goes to another node after a retry, a different one each time,
    // which a per-request client's upload does not survive: the clients try again once
    // it is out, as a client that retries after a few seconds would.
    assert!(
        eventually(Duration::from_secs(15), || balancer
            .log()
            .contains("Server sfc_nodes/node2 is DOWN")),
        "HAProxy takes the killed node out:\n{}",
        balancer.log()
    );
    let results = run_all(again);
    for (client, result) in &results {
        assert!(
            result.is_ok(),
            "client {} on rerun: {result:?}",
            client.number
        );
        finished.push((client.number, client.files));
    }
    check_rows(&url, &store, &nodes, &finished);
}

/// The excerpt docs/DEPLOY.md quotes is in the file the tests run, line for line.
#[test]
fn the_deployment_doc_quotes_the_tested_config() {
    let doc = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs/DEPLOY.md"),
    )
    .unwrap();
    let config = std::fs::read_to_string(haproxy::template_path()).unwrap();
    let config: Vec<&str> = config.lines().map(str::trim).collect();
    let excerpt = doc
        .split("```haproxy")
        .nth(1)
        .and_then(|rest| rest.split("```").next())
        .expect("a ```haproxy block in docs/DEPLOY.md");
    let mut from = 0;
    for line in excerpt.lines().map(str::trim).filter(|l| !l.is_empty()) {
        let at = config[from..]
            .iter()
            .position(|c| *c == line)
            .unwrap_or_else(|| panic!("docs/DEPLOY.md quotes {line:?}, not in docs/deploy/haproxy.cfg (in this order)"));
        from += at + 1;
    }
}

#[test]
fn the_documented_config_is_valid_haproxy() {
    if !haproxy::available("the_documented_config_is_valid_haproxy") {
        return;
    }
    let config = std::fs::read_to_string(haproxy::template_path()).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path: PathBuf = dir.path().join("haproxy.cfg");
    std::fs::write(&path, &config).unwrap();
    let status = Command::new(haproxy::binary().unwrap())
        .args(["-c", "-q", "-f"])
        .arg(&path)
        .status()
        .unwrap();
    assert!(
        status.success(),
        "haproxy -c accepts docs/deploy/haproxy.cfg"
    );
}
