//! Issue 12 item 5: SIGTERM is graceful for uploads. The real binary, two clients that
//! keep their connections, each in the middle of an upload: after SIGTERM the server
//! accepts no new connection, lets the upload that goes on finish (its packets, the 1603
//! and the client's 900), cuts the one that stalls when `--shutdown-grace` is over, and
//! says at INFO what was running and what was cut.
#![cfg(test)]

mod common;

use common::process::{ServerProcess, SERVER_BIN};
use common::*;
use sfc_proto::Response;
use std::process::Command;
use std::time::{Duration, Instant};

const GRACE_SECS: u64 = 4;

/// A client "stalling" whose upload of stalling.bin sent 3 of its 10 packets, then
/// nothing more: its connection.
fn stalled_upload(addr: std::net::SocketAddr) -> Conn {
    let mut stalling = Conn::connect(addr);
    let (id, key) = enroll(&mut stalling, "stalling");
    let plain = data(40_000, 2);
    let sent = packets(
        id,
        "stalling.bin",
        plain.len(),
        &encrypt(&key, &plain),
        4096,
        ContentSize::Whole,
    );
    for packet in &sent[..3] {
        stalling.send_raw(packet);
    }
    stalling
}

/// Waits until the server has taken packet `number` of `total` (its debug line).
fn wait_for_packet(server: &mut ServerProcess, number: usize, total: usize) {
    let needle = format!("packet=\"{number}/{total}\"");
    assert!(
        server.wait_for(&needle).is_some(),
        "the server took packet {number}/{total}"
    );
}

#[test]
fn sigterm_lets_running_uploads_finish_within_the_grace_and_cuts_the_rest() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().to_str().unwrap();
    let grace = GRACE_SECS.to_string();
    let mut server =
        ServerProcess::start_local(d, &["--shutdown-grace", &grace, "--log-level", "debug"]);
    let addr = server.listening_addr();

    // Finishing: 64 packets, half of them sent before SIGTERM.
    let mut finishing = Conn::connect(addr);
    let (id_f, key_f) = enroll(&mut finishing, "finishing");
    let plain_f = data(256 * 1024, 1);
    let packets_f = packets(
        id_f,
        "finishing.bin",
        plain_f.len(),
        &encrypt(&key_f, &plain_f),
        4096,
        ContentSize::Whole,
    );
    let mut stalling = stalled_upload(addr);
    let half = packets_f.len() / 2;
    for packet in &packets_f[..half] {
        finishing.send_raw(packet);
    }
    // Both uploads are under way: no reply is due for intermediate packets, so their
    // debug lines tell when the server has taken them.
    wait_for_packet(&mut server, half, packets_f.len());
    wait_for_packet(&mut server, 3, 10);

    let signalled = Instant::now();
    sfc_testkit::send_signal(server.child.id(), sfc_testkit::Signal::Terminate).unwrap();
    assert!(server.wait_for("shutting down").is_some());

    // No new connections.
    let refused = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(2))
        .map(|stream| {
            let mut conn = Conn { stream };
            conn.closed_within(Duration::from_secs(2))
        })
        .unwrap_or(true);
    assert!(refused, "a new connection after SIGTERM is not served");

    // The running upload finishes, and its 900 is answered.
    for packet in &packets_f[half..] {
        finishing.send_raw(packet);
    }
    assert_received(&finishing.recv(), id_f, "finishing.bin", &plain_f);
    assert_eq!(
        finishing.call(&file_name_request(id_f, 900, "finishing.bin")),
        Response::Ack {
            client_id: Some(id_f)
        }
    );
    // Then the connection is closed: the server is shutting down.
    assert!(finishing.closed_within(Duration::from_secs(2)));

    // The stalled one is cut when the grace is over; the server then exits.
    let status = loop {
        if let Some(status) = server.child.try_wait().unwrap() {
            break status;
        }
        assert!(
            signalled.elapsed() < Duration::from_secs(GRACE_SECS + 10),
            "the server did not stop"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(status.success(), "{status}");
    assert!(
        signalled.elapsed() >= Duration::from_secs(GRACE_SECS - 1),
        "the stalled upload had the grace period"
    );
    assert!(stalling.closed_within(Duration::from_secs(2)));

    let running = server.lines_containing("shutting down: upload in progress", Duration::ZERO);
    assert!(
        running.iter().any(|l| l.contains("file=\"finishing.bin\""))
            && running.iter().any(|l| l.contains("file=\"stalling.bin\"")),
        "what was running: {running:#?}"
    );
    // The process has exited, but the thread reading its stderr may not have passed on
    // the last lines yet: wait until it has (the pipe is closed).
    let cut = server.lines_containing("upload cut by the shutdown", Duration::from_secs(1));
    assert_eq!(cut.len(), 1, "{cut:#?}");
    assert!(
        cut[0].contains("file=\"stalling.bin\"") && cut[0].contains("packets=3/10"),
        "{}",
        cut[0]
    );
    assert!(cut[0].contains("INFO"), "{}", cut[0]);

    let out = Command::new(SERVER_BIN)
        .args(["files", "--json", "--data-dir", d])
        .env_remove("RUST_LOG")
        .output()
        .unwrap();
    let files: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let files = files.as_array().unwrap();
    assert_eq!(files.len(), 1, "{files:?}");
    assert_eq!(files[0]["file_name"], "finishing.bin");
    assert_eq!(files[0]["verified"], true);
}

/// One grace period for everything: an admin request that does not finish (a login
/// whose body never comes) and a stalled protocol upload are waited for together, so
/// the server stops about one `--shutdown-grace` after SIGTERM, not two (the admin
/// listener's full grace, then the connections' full grace).
#[test]
fn a_slow_admin_request_and_a_stalled_upload_share_one_grace_period() {
    use std::io::Write;
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().to_str().unwrap();
    let grace = GRACE_SECS.to_string();
    let mut server = ServerProcess::start_local(
        d,
        &[
            "--admin-listen",
            "127.0.0.1:0",
            "--shutdown-grace",
            &grace,
            "--log-level",
            "debug",
        ],
    );
    let addr = server.listening_addr();
    let admin_line = server
        .wait_for("admin listener on http://")
        .expect("the admin listener starts");
    let admin: std::net::SocketAddr = admin_line
        .split("http://")
        .nth(1)
        .and_then(|rest| rest.split('/').next())
        .and_then(|addr| addr.parse().ok())
        .expect("the admin address");

    let mut stalling = stalled_upload(addr);
    // An admin request in flight: the login form's head, and only part of its body.
    let mut login = std::net::TcpStream::connect(admin).unwrap();
    write!(
        login,
        "POST /login HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/x-www-form-urlencoded\r\nContent-Length: 100\r\n\r\ntoken="
    )
    .unwrap();
    wait_for_packet(&mut server, 3, 10);
    // The login's head has been read when its body's time-out starts: not visible from
    // outside, hence a moment's pause (the upload is what the grace period is measured by).
    std::thread::sleep(Duration::from_millis(500));

    let signalled = Instant::now();
    let status = server
        .terminate_within(Duration::from_secs(3 * GRACE_SECS))
        .expect("the server stops");
    let took = signalled.elapsed();
    assert!(status.success(), "{status}");
    assert!(
        took >= Duration::from_secs(GRACE_SECS - 1),
        "the stalled upload had the grace period: {took:?}"
    );
    assert!(
        took < Duration::from_secs(GRACE_SECS) + Duration::from_millis(2500),
        "one grace period, not two: {took:?}"
    );
    let cut = server.lines_containing("upload cut by the shutdown", Duration::from_secs(1));
    assert!(
        cut.iter().any(|l| l.contains("file=\"stalling.bin\"")),
        "{cut:#?}"
    );
    assert!(stalling.closed_within(Duration::from_secs(2)));
}

/// A second SIGTERM during the shutdown ends the process at once (exit status 130), not
/// after the grace period; the stalled upload's temporary file is removed by the next
/// start, which serves as before.
#[test]
fn a_second_sigterm_ends_the_shutdown_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().to_str().unwrap();
    let mut server =
        ServerProcess::start_local(d, &["--shutdown-grace", "60", "--log-level", "debug"]);
    let addr = server.listening_addr();
    let _stalling = stalled_upload(addr);
    wait_for_packet(&mut server, 3, 10);
    let pid = server.child.id();
    sfc_testkit::send_signal(pid, sfc_testkit::Signal::Terminate).unwrap();
    assert!(server.wait_for("shutting down").is_some());
    let signalled = Instant::now();
    sfc_testkit::send_signal(pid, sfc_testkit::Signal::Terminate).unwrap();
    let status = loop {
        if let Some(status) = server.child.try_wait().unwrap() {
            break status;
        }
        assert!(
            signalled.elapsed() < Duration::from_secs(20),
            "the second SIGTERM did not end the process"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(status.code(), Some(130), "{status}");
    assert!(!server
        .lines_containing("second signal received", Duration::from_secs(1))
        .is_empty());

    let mut again = ServerProcess::start_local(d, &[]);
    let addr = again.listening_addr();
    let mut conn = Conn::connect(addr);
    let (id, key) = enroll(&mut conn, "after");
    let plain = data(5000, 9);
    assert_received(
        &upload(&mut conn, id, &key, "after.bin", &plain, 4096),
        id,
        "after.bin",
        &plain,
    );
    let temporaries: Vec<_> = files_under(&dir.path().join("files"))
        .into_iter()
        .filter(|path| is_upload_temp(path))
        .collect();
    assert!(temporaries.is_empty(), "{temporaries:?}");
    assert!(again.terminate().success());
}
