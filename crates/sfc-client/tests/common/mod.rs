//! Shared helpers for the integration tests: running the real client binary, and a small
//! threaded test server ("double") whose behaviour can be bent into the shapes of other
//! servers of the protocol (the original one that closes after every reply, one that sends
//! a stray 1604 after 901, wrong checksums, 1606 without payload, 1607).
#![cfg(test)]
#![allow(dead_code)]

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use sfc_crypto::{AesKey, CbcDecryptor, PublicKey};
use sfc_proto::limits::RESPONSE_HEADER_LEN;
use sfc_proto::{
    ClientId, FilePacketHeader, Name, Request, RequestBody, RequestDecoder, RequestEvent,
    RequestHeader, Response,
};

/// Output of one run of the client binary.
#[derive(Debug)]
pub struct ClientRun {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl ClientRun {
    pub fn assert_code(&self, code: i32) -> &Self {
        assert_eq!(
            self.code, code,
            "exit code {} (expected {code})\n--- stdout\n{}\n--- stderr\n{}",
            self.code, self.stdout, self.stderr
        );
        self
    }
}

/// Runs the real `sfc-client` binary in `dir` with `args`.
pub fn run_client(dir: &Path, args: &[&str]) -> ClientRun {
    run_client_env(dir, args, &[])
}

/// Runs the real `sfc-client` binary in `dir` with `args` and extra environment variables.
pub fn run_client_env(dir: &Path, args: &[&str], env: &[(&str, &Path)]) -> ClientRun {
    let mut command = Command::new(env!("CARGO_BIN_EXE_sfc-client"));
    command.current_dir(dir);
    for (key, value) in env {
        command.env(key, value);
    }
    if !args.contains(&"--timeout") {
        // Fail fast instead of hanging for the default minute.
        command.args(["--timeout", "20"]);
    }
    let output = command.args(args).output().expect("run sfc-client");
    ClientRun {
        code: output.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    }
}

/// Writes `transfer.info` in `dir`.
pub fn write_transfer_info(dir: &Path, server: &str, name: &str, file: &str) {
    std::fs::write(
        dir.join("transfer.info"),
        format!("{server}\n{name}\n{file}\n"),
    )
    .unwrap();
}

/// Deterministic test content of `len` bytes.
pub fn content(len: usize, seed: u8) -> Vec<u8> {
    let mut state = u32::from(seed).wrapping_mul(2_654_435_761).wrapping_add(1);
    (0..len)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 17;
            state ^= state << 5;
            state as u8
        })
        .collect()
}

/// Writes a file of deterministic content and returns its bytes.
pub fn make_file(path: &Path, len: usize, seed: u8) -> Vec<u8> {
    let data = content(len, seed);
    std::fs::write(path, &data).unwrap();
    data
}

/// A sparse file of `len` bytes, for tests where only the size matters (no page of it is
/// written).
pub fn make_sparse_file(path: &Path, len: u64) {
    std::fs::File::create(path).unwrap().set_len(len).unwrap();
}

/// Our real server, in-process: data in `data`, a free loopback port, 2 workers, then
/// `tweak` (TLS, a file-size limit, …).
pub fn start_server_with(
    data: &Path,
    tweak: impl FnOnce(&mut sfc_server::ServerConfig),
) -> sfc_server::RunningServer {
    let mut config = sfc_server::ServerConfig::new(data);
    config.bind = "127.0.0.1:0".parse().unwrap();
    config.worker_threads = Some(2);
    tweak(&mut config);
    sfc_server::RunningServer::start(config).expect("start the server")
}

/// The refused-file tests' limit: files over this many bytes get 1607 at their first
/// packet (rule S13).
pub const REFUSING_MAX_FILE_SIZE: u64 = 1000;

/// me.info fields: (name, client id hex).
pub fn read_me_info(dir: &Path) -> (String, String) {
    let text = std::fs::read_to_string(dir.join("me.info")).unwrap();
    let mut lines = text.lines();
    let name = lines.next().unwrap().to_owned();
    let id = lines.next().unwrap().to_owned();
    let key = lines.next().unwrap();
    assert!(!key.is_empty());
    assert!(lines.next().is_none(), "me.info has exactly 3 lines");
    (name, id)
}

// ---------------------------------------------------------------------------------------
// A relay that cuts registrations short.

/// Where a [`RegistrationCutter`] cuts a connection at its first request other than 825.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Cut {
    /// Before passing it on: the server never sees it.
    BeforeForwarding,
    /// After passing it on: the server handles it, its reply is lost.
    AfterForwarding,
}

/// A relay in front of a server (ours, in-process) that passes 825 and its reply and cuts
/// every connection at its first other request: a network that fails between the 1600
/// and the 1602. After [`RegistrationCutter::stop_cutting`] it passes everything: the
/// same server at the same address, reachable again. Stops when dropped.
pub struct RegistrationCutter {
    pub addr: SocketAddr,
    cutting: Arc<AtomicBool>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl RegistrationCutter {
    pub fn start(server: SocketAddr, cut: Cut) -> RegistrationCutter {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let addr = listener.local_addr().unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let cutting = Arc::new(AtomicBool::new(true));
        let thread = {
            let stop = Arc::clone(&stop);
            let cutting = Arc::clone(&cutting);
            std::thread::spawn(move || {
                let mut relays = Vec::new();
                while !stop.load(Ordering::SeqCst) {
                    match listener.accept() {
                        Ok((client, _)) => {
                            let cut = cutting.load(Ordering::SeqCst).then_some(cut);
                            relays.push(std::thread::spawn(move || relay(client, server, cut)));
                        }
                        Err(_) => std::thread::sleep(Duration::from_millis(5)),
                    }
                }
                for relay in relays {
                    let _ = relay.join();
                }
            })
        };
        RegistrationCutter {
            addr,
            cutting,
            stop,
            thread: Some(thread),
        }
    }

    pub fn address(&self) -> String {
        self.addr.to_string()
    }

    /// Connections from now on pass every request and reply.
    pub fn stop_cutting(&self) {
        self.cutting.store(false, Ordering::SeqCst);
    }
}

impl Drop for RegistrationCutter {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Relays one connection request by request; with a `cut`, until its first request other
/// than 825, then closes both sides as `cut` says.
fn relay(mut client: TcpStream, server: SocketAddr, cut: Option<Cut>) {
    use sfc_proto::{RequestCode, RequestHeader, ResponseHeader};

    client.set_nonblocking(false).unwrap();
    let Ok(mut upstream) = TcpStream::connect(server) else {
        return;
    };
    for stream in [&client, &upstream] {
        stream
            .set_read_timeout(Some(Duration::from_secs(30)))
            .unwrap();
    }
    loop {
        let mut head = [0u8; 23];
        if client.read_exact(&mut head).is_err() {
            return;
        }
        let Ok(header) = RequestHeader::decode(&head) else {
            return;
        };
        let mut payload = vec![0u8; header.payload_size as usize];
        if client.read_exact(&mut payload).is_err() {
            return;
        }
        let passed = cut.is_none() || header.code == RequestCode::Register;
        if !passed && cut == Some(Cut::BeforeForwarding) {
            return;
        }
        if upstream.write_all(&head).is_err() || upstream.write_all(&payload).is_err() {
            return;
        }
        let mut reply_head = [0u8; 7];
        if upstream.read_exact(&mut reply_head).is_err() {
            return;
        }
        let Ok(reply_header) = ResponseHeader::decode(&reply_head) else {
            return;
        };
        let mut reply = vec![0u8; reply_header.payload_size as usize];
        if upstream.read_exact(&mut reply).is_err() || !passed {
            return;
        }
        if client.write_all(&reply_head).is_err() || client.write_all(&reply).is_err() {
            return;
        }
    }
}

// ---------------------------------------------------------------------------------------
// The test double.

/// How the double deviates from a plain persistent-connection server.
#[derive(Clone, Debug, Default)]
pub struct Behaviour {
    /// Close the connection after every reply (the original server).
    pub close_after_reply: bool,
    /// With `close_after_reply`: wait this long between a reply and the close (a busy
    /// server, a slow link), so that the client has already sent its next request.
    pub close_after_reply_delay: Option<Duration>,
    /// Reply to every intermediate packet (1603 with the ID only) and every 901 (1604),
    /// whatever the connection has carried before.
    pub answer_every_packet: bool,
    /// Send a 1604 after 901 even on a connection that carried requests before.
    pub ack_after_901: bool,
    /// The first N final 1603 replies carry a wrong checksum.
    pub wrong_checksums: u32,
    /// Answer 827 with a 1606 that has no payload.
    pub reject_reconnect_without_payload: bool,
    /// Answer the first `n` requests with this code with 1607 (for 828: the last packet).
    pub server_errors: Vec<(u16, u32)>,
    /// Close the connection after every 1607 (rule S9 allows it).
    pub close_after_error: bool,
    /// From the first 901 on, answer the next N final packets with 1607 (a resend the
    /// server cannot store).
    pub errors_after_901: u32,
    /// Close the connection after every final 1603: a server whose idle time-out ends the
    /// connection while the client checks the file before its 900.
    pub close_after_file: bool,
    /// After each 1604, close the connection once the next request starts to arrive,
    /// without answering it: a server restarted between two files.
    pub close_on_the_request_after_an_ack: bool,
    /// Answer the first N intermediate packets with 1607, drop that upload and answer
    /// every later packet of it with 1607 too, on any connection (as some servers do).
    pub intermediate_errors: u32,
    /// Die (stop listening, then drop every connection) once this many bytes of file
    /// content have arrived: a server that crashes in the middle of an upload.
    pub die_after_content: Option<usize>,
    /// Drop one connection (the first to get there; the double goes on serving) once
    /// this many bytes of file content have arrived on it: a network failure, or a
    /// balancer that drops a connection, in the middle of an upload.
    pub cut_once_after_content: Option<usize>,
    /// Append 1000 bytes to this file when the first file packet arrives: a file that
    /// grows while the client sends it.
    pub grow_file: Option<PathBuf>,
    /// Rewrite this file in place when the first file packet arrives (same size, other
    /// bytes) and set its modification time back: a change the times cannot show (a
    /// write within the filesystem's time tick of the one before).
    pub rewrite_keeping_time: Option<PathBuf>,
    /// Remove this file before the final 1603 of a file: a source deleted (or rotated
    /// away) once the client has read it whole.
    pub remove_before_final_reply: Option<PathBuf>,
    /// Close the connection instead of sending the final 1603 (after any strays): a
    /// server that dies storing every file.
    pub close_instead_of_final_reply: bool,
    /// Wait this long before the final 1603 of a file (a server busy checksumming).
    pub final_reply_delay: Option<Duration>,
    /// Stop reading (hold the connection, say nothing) once this many bytes of file
    /// content have arrived, until the double is dropped.
    pub stall_after_content: Option<usize>,
    /// Pause after every read from a connection (a slow link).
    pub read_pause: Option<Duration>,
    /// Write the final 1603 of a file one byte at a time, this long before each byte (a
    /// server that trickles its reply).
    pub trickle_final_reply: Option<Duration>,
    /// Before the final 1603 of a file, send this many stray 1603s (packet received), one
    /// after each pause.
    pub strays_before_final_reply: Option<(u32, Duration)>,
    /// Close the connection without a reply to the first N 826s, and without taking their
    /// key: a network that fails between the 1600 and the 1602.
    pub unanswered_public_keys: u32,
    /// Hold the connection without a reply to the first N 826s (until the double is
    /// dropped), without taking their key: a 1602 that never comes.
    pub held_public_keys: u32,
    /// Hold the connection without a reply to the first N 827s (until the double is
    /// dropped).
    pub held_reconnects: u32,
}

/// One request the double received.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Logged {
    /// Index of the connection it came on.
    pub connection: usize,
    /// Request code.
    pub code: u16,
}

#[derive(Default)]
struct ClientRecord {
    name: String,
    public_key: Option<PublicKey>,
    aes: Option<AesKey>,
}

/// What the double saw and stored.
#[derive(Default)]
pub struct State {
    pub log: Vec<Logged>,
    pub connections: usize,
    /// Plaintext of every file whose last packet arrived, by label (latest wins).
    pub stored: HashMap<String, Vec<u8>>,
    /// Labels confirmed with 900.
    pub verified: Vec<String>,
    /// Labels given up with 902.
    pub failed: Vec<String>,
    /// Packets per final reply: (label, packets in that send).
    pub sends: Vec<(String, u16)>,
    /// True once a connection stalled (`stall_after_content`).
    pub stalled: bool,
    /// True once a connection was dropped (`cut_once_after_content`).
    pub cut: bool,
    clients: HashMap<ClientId, ClientRecord>,
    uploads: HashMap<ClientId, Vec<u8>>,
    wrong_left: u32,
    errors_left: HashMap<u16, u32>,
    intermediate_errors_left: u32,
    unanswered_keys_left: u32,
    held_keys_left: u32,
    held_reconnects_left: u32,
    broken: std::collections::HashSet<ClientId>,
}

impl State {
    /// Request codes received, in order.
    pub fn codes(&self) -> Vec<u16> {
        self.log.iter().map(|l| l.code).collect()
    }

    /// How many requests with `code` arrived.
    pub fn count(&self, code: u16) -> usize {
        self.log.iter().filter(|l| l.code == code).count()
    }

    /// The registered clients: (name, has a public key), sorted.
    pub fn clients(&self) -> Vec<(String, bool)> {
        let mut clients: Vec<(String, bool)> = self
            .clients
            .values()
            .map(|c| (c.name.clone(), c.public_key.is_some()))
            .collect();
        clients.sort();
        clients
    }

    /// Forgets every client: a server whose database was replaced, or restored from a
    /// backup older than the registrations.
    pub fn forget_clients(&mut self) {
        self.clients.clear();
    }

    /// Answers the next `times` requests with `code` with 1607.
    pub fn refuse(&mut self, code: u16, times: u32) {
        *self.errors_left.entry(code).or_default() += times;
    }
}

/// What [`handle`] does with a request.
enum Handled {
    /// Sends this reply, if any.
    Reply(Option<Vec<u8>>),
    /// Closes the connection without a reply.
    Close,
    /// Holds the connection without a reply until the double stops.
    Hold,
}

/// A running double; stops (and joins its threads) when dropped.
pub struct Double {
    pub addr: SocketAddr,
    pub state: Arc<Mutex<State>>,
    stop: Arc<AtomicBool>,
    /// Set once the listener is closed.
    dead: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Double {
    pub fn start(behaviour: Behaviour) -> Double {
        Self::start_on("127.0.0.1:0".parse().unwrap(), behaviour)
    }

    /// A double on a given address (e.g. the address of one that was stopped: the same
    /// server, restarted).
    pub fn start_on(addr: SocketAddr, behaviour: Behaviour) -> Double {
        let listener = TcpListener::bind(addr).unwrap();
        listener.set_nonblocking(true).unwrap();
        let addr = listener.local_addr().unwrap();
        let state = Arc::new(Mutex::new(State {
            wrong_left: behaviour.wrong_checksums,
            errors_left: behaviour.server_errors.iter().copied().collect(),
            intermediate_errors_left: behaviour.intermediate_errors,
            unanswered_keys_left: behaviour.unanswered_public_keys,
            held_keys_left: behaviour.held_public_keys,
            held_reconnects_left: behaviour.held_reconnects,
            ..State::default()
        }));
        let stop = Arc::new(AtomicBool::new(false));
        let dead = Arc::new(AtomicBool::new(false));
        let thread = {
            let state = Arc::clone(&state);
            let stop = Arc::clone(&stop);
            let dead = Arc::clone(&dead);
            std::thread::spawn(move || {
                let mut workers = Vec::new();
                while !stop.load(Ordering::SeqCst) {
                    match listener.accept() {
                        Ok((stream, _)) => {
                            let index = {
                                let mut s = state.lock().unwrap();
                                s.connections += 1;
                                s.connections - 1
                            };
                            let state = Arc::clone(&state);
                            let behaviour = behaviour.clone();
                            let stop = Arc::clone(&stop);
                            let dead = Arc::clone(&dead);
                            workers.push(std::thread::spawn(move || {
                                serve(stream, index, &state, &behaviour, (&stop, &dead))
                            }));
                        }
                        Err(_) => std::thread::sleep(Duration::from_millis(5)),
                    }
                }
                drop(listener);
                dead.store(true, Ordering::SeqCst);
                for w in workers {
                    let _ = w.join();
                }
            })
        };
        Double {
            addr,
            state,
            stop,
            dead,
            thread: Some(thread),
        }
    }

    pub fn address(&self) -> String {
        self.addr.to_string()
    }

    pub fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap()
    }
}

impl Drop for Double {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn new_client_id() -> ClientId {
    let random = AesKey::random();
    let mut id = [0u8; 16];
    id.copy_from_slice(&random.as_bytes()[..16]);
    ClientId(id)
}

fn serve(
    mut stream: TcpStream,
    index: usize,
    state: &Mutex<State>,
    behaviour: &Behaviour,
    (stop, dead): (&AtomicBool, &AtomicBool),
) {
    let mut content_seen = 0usize;
    stream.set_nonblocking(false).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_millis(100)))
        .unwrap();
    let mut decoder = RequestDecoder::new();
    let mut buf = vec![0u8; 1 << 16];
    let mut first = true;
    let mut packet: Option<(RequestHeader, FilePacketHeader)> = None;
    let mut content = Vec::new();
    let mut acked = false;
    loop {
        if let Some(pause) = behaviour.read_pause {
            std::thread::sleep(pause);
        }
        let n = match stream.read(&mut buf) {
            Ok(0) => return,
            Ok(n) => n,
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                if stop.load(Ordering::SeqCst) {
                    return;
                }
                continue;
            }
            Err(_) => return,
        };
        if acked {
            return;
        }
        let mut input = &buf[..n];
        // The end of a packet is reported by one more call once its content is complete,
        // even when no input is left.
        while !input.is_empty() || (packet.is_some() && decoder.bytes_needed() == 0) {
            let Ok((used, event)) = decoder.decode(input) else {
                let _ = stream.write_all(&Response::ServerError.encode());
                return;
            };
            input = &input[used..];
            let reply: Option<Vec<u8>> = match event {
                None => continue,
                Some(RequestEvent::Request(request)) => {
                    let handled = handle(state, behaviour, index, first, &request);
                    first = false;
                    match handled {
                        Handled::Reply(reply) => reply,
                        Handled::Close => return,
                        Handled::Hold => {
                            while !stop.load(Ordering::SeqCst) {
                                std::thread::sleep(Duration::from_millis(10));
                            }
                            return;
                        }
                    }
                }
                Some(RequestEvent::FilePacket {
                    header,
                    packet: fixed,
                    ..
                }) => {
                    packet = Some((header, fixed));
                    content.clear();
                    continue;
                }
                Some(RequestEvent::Content(piece)) => {
                    content.extend_from_slice(piece);
                    content_seen += piece.len();
                    if behaviour
                        .stall_after_content
                        .is_some_and(|n| content_seen >= n)
                    {
                        state.lock().unwrap().stalled = true;
                        while !stop.load(Ordering::SeqCst) {
                            std::thread::sleep(Duration::from_millis(10));
                        }
                        return;
                    }
                    if behaviour
                        .cut_once_after_content
                        .is_some_and(|n| content_seen >= n)
                        && !std::mem::replace(&mut state.lock().unwrap().cut, true)
                    {
                        return;
                    }
                    if behaviour
                        .die_after_content
                        .is_some_and(|n| content_seen >= n)
                    {
                        // Crash: no more connections are taken, then this one drops.
                        stop.store(true, Ordering::SeqCst);
                        while !dead.load(Ordering::SeqCst) {
                            std::thread::sleep(Duration::from_millis(1));
                        }
                        return;
                    }
                    continue;
                }
                Some(RequestEvent::FilePacketEnd) => {
                    let (header, fixed) = packet.take().unwrap();
                    let r =
                        handle_packet(state, behaviour, index, first, &header, &fixed, &content);
                    first = false;
                    r
                }
                Some(RequestEvent::Invalid { .. }) => {
                    first = false;
                    Some(Response::ServerError.encode())
                }
            };
            if let Some(bytes) = reply {
                if !write_reply(&mut stream, &bytes, behaviour, stop) {
                    return;
                }
                let code = bytes.get(1..3);
                let is_error = code == Some(&1607u16.to_le_bytes()[..]);
                let is_final_1603 = code == Some(&1603u16.to_le_bytes()[..])
                    && bytes.len() > RESPONSE_HEADER_LEN + 16;
                acked = behaviour.close_on_the_request_after_an_ack
                    && code == Some(&1604u16.to_le_bytes()[..]);
                if behaviour.close_after_reply
                    || (behaviour.close_after_error && is_error)
                    || (behaviour.close_after_file && is_final_1603)
                {
                    // Like the original server: whatever else the client sent is dropped.
                    let _ = stream.flush();
                    if let Some(delay) = behaviour.close_after_reply_delay {
                        std::thread::sleep(delay);
                    }
                    return;
                }
            }
        }
    }
}

/// Writes one reply; the final 1603 of a file as `behaviour` says (trickled, or after
/// paced strays). False once the client has gone or the double is stopping.
fn write_reply(
    stream: &mut TcpStream,
    bytes: &[u8],
    behaviour: &Behaviour,
    stop: &AtomicBool,
) -> bool {
    // Only the final 1603 carries more than the client ID.
    let final_reply = bytes.get(1..3) == Some(&1603u16.to_le_bytes()[..]) && bytes.len() > 7 + 16;
    if !final_reply {
        return stream.write_all(bytes).is_ok();
    }
    let mut paced = |piece: &[u8], pause: Duration| {
        std::thread::sleep(pause);
        !stop.load(Ordering::SeqCst) && stream.write_all(piece).is_ok()
    };
    if let Some((count, pause)) = behaviour.strays_before_final_reply {
        let client_id = ClientId(bytes[7..23].try_into().unwrap());
        let stray = Response::PacketReceived { client_id }.encode();
        if !(0..count).all(|_| paced(&stray, pause)) {
            return false;
        }
    }
    if behaviour.close_instead_of_final_reply {
        return false;
    }
    match behaviour.trickle_final_reply {
        Some(pause) => bytes.chunks(1).all(|byte| paced(byte, pause)),
        None => stream.write_all(bytes).is_ok(),
    }
}

fn take_error(state: &mut State, code: u16) -> bool {
    match state.errors_left.get_mut(&code) {
        Some(n) if *n > 0 => {
            *n -= 1;
            true
        }
        _ => false,
    }
}

fn handle(
    state: &Mutex<State>,
    behaviour: &Behaviour,
    index: usize,
    first: bool,
    request: &Request,
) -> Handled {
    let mut s = state.lock().unwrap();
    let code = request.body.code().as_u16();
    s.log.push(Logged {
        connection: index,
        code,
    });
    if take_error(&mut s, code) {
        return Handled::Reply(Some(Response::ServerError.encode()));
    }
    let id = request.client_id;
    let reply = match &request.body {
        RequestBody::Register { name } => {
            if s.clients.values().any(|c| c.name == name.as_str()) {
                Response::RegistrationFailed
            } else {
                let client_id = new_client_id();
                s.clients.insert(
                    client_id,
                    ClientRecord {
                        name: name.as_str().to_owned(),
                        ..ClientRecord::default()
                    },
                );
                Response::Registered { client_id }
            }
        }
        RequestBody::SendPublicKey { .. } if s.unanswered_keys_left > 0 => {
            s.unanswered_keys_left -= 1;
            return Handled::Close;
        }
        RequestBody::SendPublicKey { .. } if s.held_keys_left > 0 => {
            s.held_keys_left -= 1;
            return Handled::Hold;
        }
        RequestBody::SendPublicKey { public_key, .. } => {
            let Some(record) = s.clients.get_mut(&id) else {
                return Handled::Reply(Some(Response::ServerError.encode()));
            };
            let key = PublicKey::from_spki_der(public_key).unwrap();
            let aes = AesKey::random();
            let wrapped_key = key.wrap_aes_key(&aes).unwrap();
            record.public_key = Some(key);
            record.aes = Some(aes);
            Response::PublicKeyAccepted {
                client_id: id,
                wrapped_key,
            }
        }
        RequestBody::Reconnect { .. } if s.held_reconnects_left > 0 => {
            s.held_reconnects_left -= 1;
            return Handled::Hold;
        }
        RequestBody::Reconnect { .. } => {
            if behaviour.reject_reconnect_without_payload {
                // 1606 with payload_size 0 (rule C5).
                return Handled::Reply(Some(vec![3, 0x46, 0x06, 0, 0, 0, 0]));
            }
            match s.clients.get_mut(&id) {
                Some(record) if record.public_key.is_some() => {
                    let aes = AesKey::random();
                    let wrapped_key = record
                        .public_key
                        .as_ref()
                        .unwrap()
                        .wrap_aes_key(&aes)
                        .unwrap();
                    record.aes = Some(aes);
                    Response::ReconnectAccepted {
                        client_id: id,
                        wrapped_key,
                    }
                }
                _ => Response::ReconnectRejected {
                    client_id: Some(id),
                },
            }
        }
        RequestBody::ChecksumOk { file_name } => {
            s.verified.push(file_name.as_str().to_owned());
            Response::Ack {
                client_id: Some(id),
            }
        }
        RequestBody::ChecksumRetry { .. } => {
            if behaviour.errors_after_901 > 0 {
                s.errors_left
                    .entry(828)
                    .or_insert(behaviour.errors_after_901);
            }
            if behaviour.answer_every_packet || behaviour.ack_after_901 || first {
                Response::Ack {
                    client_id: Some(id),
                }
            } else {
                return Handled::Reply(None);
            }
        }
        RequestBody::ChecksumFailed { file_name } => {
            s.failed.push(file_name.as_str().to_owned());
            Response::Ack {
                client_id: Some(id),
            }
        }
        RequestBody::SendFile { .. } => Response::ServerError,
    };
    Handled::Reply(Some(reply.encode()))
}

#[allow(clippy::too_many_arguments)]
fn handle_packet(
    state: &Mutex<State>,
    behaviour: &Behaviour,
    index: usize,
    first: bool,
    header: &RequestHeader,
    packet: &FilePacketHeader,
    content: &[u8],
) -> Option<Vec<u8>> {
    let mut s = state.lock().unwrap();
    s.log.push(Logged {
        connection: index,
        code: 828,
    });
    let id = header.client_id;
    if packet.packet_number == 1 {
        s.broken.remove(&id);
        if let Some(path) = &behaviour.grow_file {
            let mut file = std::fs::OpenOptions::new().append(true).open(path).unwrap();
            file.write_all(&[0u8; 1000]).unwrap();
        }
        if let Some(path) = &behaviour.rewrite_keeping_time {
            let modified = std::fs::metadata(path).unwrap().modified().unwrap();
            let mut bytes = std::fs::read(path).unwrap();
            bytes.iter_mut().for_each(|b| *b = !*b);
            std::fs::write(path, &bytes).unwrap();
            let file = std::fs::OpenOptions::new().write(true).open(path).unwrap();
            file.set_modified(modified).unwrap();
        }
    }
    if packet.packet_number < packet.total_packets && s.intermediate_errors_left > 0 {
        s.intermediate_errors_left -= 1;
        s.broken.insert(id);
    }
    if s.broken.contains(&id) {
        s.uploads.remove(&id);
        return Some(Response::ServerError.encode());
    }
    let upload = s.uploads.entry(id).or_default();
    if packet.packet_number == 1 {
        upload.clear();
    }
    upload.extend_from_slice(content);
    if packet.packet_number < packet.total_packets {
        return (behaviour.answer_every_packet || first)
            .then(|| Response::PacketReceived { client_id: id }.encode());
    }
    if let Some(path) = &behaviour.remove_before_final_reply {
        let _ = std::fs::remove_file(path);
    }
    if let Some(delay) = behaviour.final_reply_delay {
        drop(s);
        std::thread::sleep(delay);
        s = state.lock().unwrap();
    }
    let ciphertext = s.uploads.remove(&id).unwrap_or_default();
    if take_error(&mut s, 828) {
        return Some(Response::ServerError.encode());
    }
    let Some(aes) = s.clients.get(&id).and_then(|c| c.aes.clone()) else {
        return Some(Response::ServerError.encode());
    };
    let mut plain = Vec::new();
    let mut decryptor = CbcDecryptor::new(&aes).unwrap();
    if decryptor.update(&ciphertext, &mut plain).is_err() || decryptor.finish(&mut plain).is_err() {
        return Some(Response::ServerError.encode());
    }
    let mut cksum = sfc_crypto::cksum(&plain);
    if s.wrong_left > 0 {
        s.wrong_left -= 1;
        cksum ^= 0x5a5a;
    }
    let label = packet.file_name.as_str().to_owned();
    s.sends.push((label.clone(), packet.total_packets));
    s.stored.insert(label, plain);
    Some(
        Response::FileReceived {
            client_id: id,
            content_size: u32::try_from(ciphertext.len()).unwrap(),
            file_name: Name::new(packet.file_name.as_str()).unwrap(),
            cksum,
        }
        .encode(),
    )
}

/// Path of a file name inside `dir` as a string (for arguments).
pub fn arg(path: &Path) -> String {
    path.to_str().unwrap().to_owned()
}

/// A fresh temporary folder.
pub fn tempdir() -> tempfile::TempDir {
    tempfile::tempdir().unwrap()
}

/// `dir/name`.
pub fn at(dir: &Path, name: &str) -> PathBuf {
    dir.join(name)
}
