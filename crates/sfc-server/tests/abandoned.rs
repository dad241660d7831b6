//! Issue 12 item 4: abandoned uploads must not hold server resources.
//!
//! Many clients each register, exchange a key, send the first packets of a multi-packet
//! upload and close their connection (a client killed mid-upload). The real `sfc-server`
//! binary must then be back within a few descriptors and a few MiB of its idle figures,
//! with no temporary file left: an upload whose connection carried more than one request
//! is not continued on another connection, so it is dropped when its connection ends,
//! not kept for `--upload-timeout`.
//!
//! A connection-per-request client may continue its upload on a new connection, so its
//! upload stays (until `--upload-timeout`), but holds no file descriptor and no batch
//! buffer between packets. Beyond `--max-uploads` / `--max-uploads-per-address`, a new
//! upload is refused with 1607 and a log line.
//!
//! `SFC_ABANDONED_CLIENTS` sets the number of clients (default 2,000; a fifth of that
//! for the connection-per-request style), spread over loopback source addresses
//! 127.0.12.x, at most 200 per address: within the default registration burst (300),
//! connections (256) and uploads in progress (256) per address.
#![cfg(test)]

mod common;

use common::process::ServerProcess;
use common::{files_under, is_upload_temp, key_request, register_request, tcp_from, Conn};
use sfc_proto::{ClientId, FilePacketHeader, Name, Response};
use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

/// Packets of the upload each client starts: 6 of 16 packets of 16 KiB (as in the report).
const PACKET: usize = 16 * 1024;
const TOTAL_PACKETS: u16 = 16;
const SENT_PACKETS: u16 = 6;
/// Clients per source address (registration burst 300 and 256 connections per address by
/// default).
const CLIENTS_PER_ADDRESS: usize = 200;
/// Client threads (the machine has 2 cores; the server needs them too).
const WORKERS: usize = 8;
/// "Within a few": descriptors, MiB of RSS and temporary files above idle.
const FD_MARGIN: usize = 8;
const RSS_MARGIN_KIB: u64 = 16 * 1024;
const TEMP_MARGIN: usize = 0;
/// How long the server may take to release what the closed connections held.
const SETTLE: Duration = Duration::from_secs(10);

#[derive(Clone, Copy, Debug)]
struct Figures {
    fds: usize,
    rss_kib: u64,
    temps: usize,
}

impl Figures {
    fn of(pid: u32, data_dir: &Path) -> Self {
        let fds = std::fs::read_dir(format!("/proc/{pid}/fd"))
            .expect("read /proc/PID/fd")
            .count();
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("status");
        let rss_kib = status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
            .expect("VmRSS in /proc/PID/status");
        Figures {
            fds,
            rss_kib,
            temps: temp_files(data_dir),
        }
    }

    /// Within the margins of `idle`, with `parked` uploads waiting (temporary files).
    fn within(&self, idle: &Figures, parked: usize) -> bool {
        self.fds <= idle.fds + FD_MARGIN
            && self.rss_kib <= idle.rss_kib + RSS_MARGIN_KIB
            && self.temps <= idle.temps + parked + TEMP_MARGIN
    }
}

/// Temporary upload files: names starting with '.' in the client folders (an encoded
/// stored name never starts with '.'; see storage/fs.rs).
fn temp_files(data_dir: &Path) -> usize {
    files_under(&data_dir.join("files"))
        .iter()
        .filter(|path| is_upload_temp(path))
        .count()
}

fn source_address(client: usize) -> IpAddr {
    IpAddr::from([127, 0, 12, (client / CLIENTS_PER_ADDRESS + 1) as u8])
}

/// How the clients send their requests.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Style {
    /// All on one connection (its upload ends with the connection).
    KeepsConnection,
    /// Each request on a new connection, reading each reply (its upload stays parked).
    ConnectionPerRequest,
}

fn connect_from(local: IpAddr, server: SocketAddr) -> Conn {
    let stream = tcp_from(local, server).expect("connect");
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    stream.set_nodelay(true).unwrap();
    Conn { stream }
}

/// Registers and sends the public key (the AES key is not unwrapped: the packets below
/// are never decrypted as a whole, their content can be anything).
fn enroll_quickly(conn: &mut Conn, user: &str) -> ClientId {
    let Response::Registered { client_id } = conn.call(&register_request(user)) else {
        panic!("registration of {user} refused")
    };
    let reply = conn.call(&key_request(client_id, user));
    assert!(
        matches!(reply, Response::PublicKeyAccepted { .. }),
        "826 of {user}: {reply:?}"
    );
    client_id
}

/// Packet `number` of the upload each client starts (any content: never decrypted whole).
fn upload_packet(id: ClientId, number: u16) -> Vec<u8> {
    let encrypted = PACKET * usize::from(TOTAL_PACKETS);
    let packet = FilePacketHeader {
        content_size: encrypted as u32,
        orig_file_size: (encrypted - 16) as u32,
        packet_number: number,
        total_packets: TOTAL_PACKETS,
        file_name: Name::new("abandoned.bin").unwrap(),
    };
    let mut bytes = packet.encode_prefix(id, PACKET as u32).to_vec();
    bytes.extend_from_slice(&[0x5a_u8; PACKET]);
    bytes
}

/// A connection-per-request client: registers and sends its key, each on a new
/// connection.
fn enroll_per_request(local: IpAddr, server: SocketAddr, user: &str) -> ClientId {
    let Response::Registered { client_id } =
        connect_from(local, server).call(&register_request(user))
    else {
        panic!("registration of {user} refused")
    };
    let reply = connect_from(local, server).call(&key_request(client_id, user));
    assert!(
        matches!(reply, Response::PublicKeyAccepted { .. }),
        "826 of {user}: {reply:?}"
    );
    client_id
}

/// Sends packet `number` on a connection of its own and returns the reply.
fn packet_on_its_own_connection(
    local: IpAddr,
    server: SocketAddr,
    id: ClientId,
    number: u16,
) -> Response {
    let mut conn = connect_from(local, server);
    conn.send_raw(&upload_packet(id, number));
    conn.recv()
}

/// One client: register, key, the first SENT_PACKETS packets, then close.
fn abandon_an_upload(server: SocketAddr, client: usize, style: Style) {
    let local = source_address(client);
    let user = format!("abandoner-{client}");
    if style == Style::ConnectionPerRequest {
        let id = enroll_per_request(local, server, &user);
        for number in 1..=SENT_PACKETS {
            let reply = packet_on_its_own_connection(local, server, id, number);
            assert_eq!(
                reply,
                Response::PacketReceived { client_id: id },
                "client {client}, packet {number}"
            );
        }
        return;
    }
    let mut conn = connect_from(local, server);
    let id = enroll_quickly(&mut conn, &user);
    for number in 1..=SENT_PACKETS {
        conn.send_raw(&upload_packet(id, number));
    }
    // No reply is due for intermediate packets on this connection; a 1607 would mean
    // the server refused the upload and the test measures nothing.
    assert!(
        conn.silent_for(Duration::from_millis(20)),
        "client {client}: the server replied to an intermediate packet"
    );
}

/// A complete short session (registers, uploads a small file in one packet): wakes
/// what a server starts lazily (database, thread pools) before the idle figures.
fn warm_up(server: SocketAddr, round: usize) {
    let mut conn = connect_from(source_address(0), server);
    let (id, key) = common::enroll(&mut conn, &format!("warm-up-{round}"));
    let plain = common::data(1000, round as u32);
    let reply = common::upload(&mut conn, id, &key, "warm.bin", &plain, 4096);
    common::assert_received(&reply, id, "warm.bin", &plain);
}

/// The server binary on `data_dir` (127.0.0.1, a free port, `extra` options), warmed up
/// ([`warm_up`]): it, its address and its process ID.
fn warmed_up(data_dir: &Path, extra: &[&str]) -> (ServerProcess, SocketAddr, u32) {
    let mut server = ServerProcess::start_local(data_dir.to_str().unwrap(), extra);
    let addr = server.listening_addr();
    let pid = server.child.id();
    for round in 0..3 {
        warm_up(addr, round);
    }
    (server, addr, pid)
}

fn clients(divisor: usize) -> usize {
    std::env::var("SFC_ABANDONED_CLIENTS")
        .ok()
        .map(|v| v.parse().expect("SFC_ABANDONED_CLIENTS is a number"))
        .unwrap_or(2_000)
        / divisor
}

#[test]
fn abandoned_uploads_leave_the_server_near_idle() {
    abandon_uploads(clients(1), Style::KeepsConnection);
}

#[test]
fn parked_uploads_of_connection_per_request_clients_hold_no_descriptor_nor_buffer() {
    abandon_uploads(clients(5), Style::ConnectionPerRequest);
}

fn abandon_uploads(clients: usize, style: Style) {
    assert!(
        clients.div_ceil(CLIENTS_PER_ADDRESS) < 255,
        "too many clients for one /24 of loopback addresses"
    );
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("data");
    // --upload-timeout at its default, spelled out: the timeout must not be what frees
    // the abandoned uploads.
    let (mut server, addr, pid) = warmed_up(&data_dir, &["--upload-timeout", "600"]);
    std::thread::sleep(Duration::from_millis(500));
    let idle = Figures::of(pid, &data_dir);
    eprintln!("idle: {idle:?}");

    let started = Instant::now();
    let next = AtomicUsize::new(0);
    std::thread::scope(|scope| {
        for _ in 0..WORKERS {
            scope.spawn(|| loop {
                let client = next.fetch_add(1, Ordering::Relaxed);
                if client >= clients {
                    break;
                }
                abandon_an_upload(addr, client, style);
            });
        }
    });
    eprintln!(
        "{clients} clients from {} addresses abandoned {SENT_PACKETS} of {TOTAL_PACKETS} \
         packets in {:?}",
        clients.div_ceil(CLIENTS_PER_ADDRESS),
        started.elapsed()
    );

    // A connection-per-request client may still send its next packet: its upload waits
    // for --upload-timeout, a temporary file but no descriptor.
    let parked = match style {
        Style::KeepsConnection => 0,
        Style::ConnectionPerRequest => clients,
    };
    let settle_until = Instant::now() + SETTLE;
    let mut after = Figures::of(pid, &data_dir);
    while !after.within(&idle, parked) && Instant::now() < settle_until {
        std::thread::sleep(Duration::from_millis(200));
        after = Figures::of(pid, &data_dir);
    }
    eprintln!("after (settled up to {SETTLE:?}): {after:?}");

    // The server still serves.
    warm_up(addr, 99);
    assert!(
        server.child.try_wait().unwrap().is_none(),
        "the server is still running"
    );
    assert!(
        after.within(&idle, parked),
        "after {clients} abandoned uploads ({style:?}, {parked} may wait): {} open \
         descriptors, {} temporary files, {} KiB RSS; idle: {} descriptors, {} temporary \
         files, {} KiB (margins: {FD_MARGIN} descriptors, {TEMP_MARGIN} temporary files, \
         {RSS_MARGIN_KIB} KiB)",
        after.fds,
        after.temps,
        after.rss_kib,
        idle.fds,
        idle.temps,
        idle.rss_kib
    );
    let status = server.terminate();
    assert!(status.success(), "sfc-server exit status {status}");
}

/// A silent connection holds no read buffer, also after a packet that leaves its upload
/// expecting more: one client starts its upload again and again (each packet 1 drops the
/// one before), each time on a new connection that then stays open and silent. Those
/// connections must cost what idle ones do (a few KiB each), not a 64 KiB read buffer
/// each (800 of them: 54 MiB).
#[test]
fn connections_silent_after_an_intermediate_packet_hold_no_read_buffer() {
    const CONNECTIONS: usize = 800;
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("data");
    let (mut server, addr, pid) = warmed_up(&data_dir, &[]);
    let id = enroll_per_request(source_address(0), addr, "restarter");
    // Once, so that the upload's own buffers are in the idle figures.
    assert_eq!(
        packet_on_its_own_connection(source_address(0), addr, id, 1),
        Response::PacketReceived { client_id: id }
    );
    std::thread::sleep(Duration::from_millis(500));
    let idle = Figures::of(pid, &data_dir);
    eprintln!("idle: {idle:?}");

    // In batches, each left to go silent (the server keeps a connection's buffer for
    // the next packet 200 ms): at most one batch's buffers exist at once.
    let mut held: Vec<Conn> = Vec::with_capacity(CONNECTIONS);
    for i in 0..CONNECTIONS {
        let mut conn = connect_from(source_address(i), addr);
        conn.send_raw(&upload_packet(id, 1));
        assert_eq!(
            conn.recv(),
            Response::PacketReceived { client_id: id },
            "{i}"
        );
        held.push(conn);
        if i % 50 == 49 {
            std::thread::sleep(Duration::from_millis(300));
        }
    }
    std::thread::sleep(Duration::from_millis(500));
    let after = Figures::of(pid, &data_dir);
    eprintln!("with {CONNECTIONS} silent connections: {after:?}");
    assert!(
        after.rss_kib <= idle.rss_kib + RSS_MARGIN_KIB,
        "{CONNECTIONS} silent connections: {} KiB RSS, idle {} KiB (margin {RSS_MARGIN_KIB} KiB)",
        after.rss_kib,
        idle.rss_kib
    );
    drop(held);
    let status = server.terminate();
    assert!(status.success(), "sfc-server exit status {status}");
}

#[test]
fn uploads_beyond_the_caps_are_refused_with_1607_and_logged() {
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("data");
    let mut server = ServerProcess::start(&[
        "--data-dir",
        data_dir.to_str().unwrap(),
        "--bind",
        "127.0.0.1",
        "--port",
        "0",
        "--max-uploads",
        "5",
        "--max-uploads-per-address",
        "3",
    ]);
    let addr = server.listening_addr();
    let start = |local: IpAddr, user: &str| {
        let id = enroll_per_request(local, addr, user);
        (id, packet_on_its_own_connection(local, addr, id, 1))
    };
    let first = IpAddr::from([127, 0, 13, 1]);
    let second = IpAddr::from([127, 0, 13, 2]);
    for n in 0..3 {
        let (id, reply) = start(first, &format!("a{n}"));
        assert_eq!(reply, Response::PacketReceived { client_id: id }, "a{n}");
    }
    let (_, reply) = start(first, "a3");
    assert_eq!(
        reply,
        Response::ServerError,
        "a 4th upload from one address"
    );
    assert!(server
        .wait_for("upload refused: --max-uploads-per-address")
        .is_some());
    let mut second_ids = Vec::new();
    for n in 0..2 {
        let (id, reply) = start(second, &format!("b{n}"));
        assert_eq!(reply, Response::PacketReceived { client_id: id }, "b{n}");
        second_ids.push(id);
    }
    let (_, reply) = start(second, "b2");
    assert_eq!(reply, Response::ServerError, "a 6th upload in all");
    assert!(server
        .wait_for("upload refused: --max-uploads uploads in progress")
        .is_some());
    // Uploads under way go on, and the address's own ones are not affected by the cap.
    let id = second_ids.first().copied().unwrap();
    assert_eq!(
        packet_on_its_own_connection(second, addr, id, 2),
        Response::PacketReceived { client_id: id }
    );
    let status = server.terminate();
    assert!(status.success(), "sfc-server exit status {status}");
}
