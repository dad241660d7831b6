//! What an operator sees of the real `sfc-server` binary (issue 12, items 6-10): refused
//! connections in the log, an invalid log filter, start-up errors, a failed start that
//! leaves nothing behind, and log lines that say what happened (no Rust debug formatting,
//! no noise, no error printed twice).
#![cfg(test)]

mod common;

use common::process::{ServerProcess, SERVER_BIN};
use common::*;
use sfc_proto::Response;
use std::path::Path;
use std::process::{Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// Runs the binary for at most `patience`; returns its exit status (`None`: still
/// running, then killed) and its stderr.
fn run_briefly(
    args: &[&str],
    rust_log: Option<&str>,
    patience: Duration,
) -> (Option<ExitStatus>, String) {
    let mut command = Command::new(SERVER_BIN);
    command
        .args(args)
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    if let Some(filter) = rust_log {
        command.env("RUST_LOG", filter);
    }
    let mut child = command.spawn().expect("spawn sfc-server");
    let deadline = Instant::now() + patience;
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break Some(status);
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut stderr = String::new();
    if let Some(mut pipe) = child.stderr.take() {
        let _ = std::io::Read::read_to_string(&mut pipe, &mut stderr);
    }
    (status, stderr)
}

fn entries(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default()
}

/// Item 7: a log filter that would silence the server is refused at start-up, exit 2.
#[test]
fn an_invalid_log_filter_is_refused_with_exit_code_2() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().join("data");
    let d = d.to_str().unwrap();
    let base = ["--data-dir", d, "--port", "0", "--bind", "127.0.0.1"];
    let cases: [(&[&str], Option<&str>, &str); 4] = [
        (&["--log-level", "bogus"], None, "--log-level"),
        (&["--log-level", "sfc_server=["], None, "--log-level"),
        (&[], Some("bogus"), "RUST_LOG"),
        (&["files"], Some("sfc_server=["), "RUST_LOG"),
    ];
    for (extra, rust_log, source) in cases {
        let args: Vec<&str> = base.iter().chain(extra).copied().collect();
        let (status, stderr) = run_briefly(&args, rust_log, Duration::from_secs(5));
        let status = status.unwrap_or_else(|| panic!("{args:?} {rust_log:?}: still running"));
        assert_eq!(status.code(), Some(2), "{args:?} {rust_log:?}: {stderr}");
        assert!(
            stderr.contains("invalid log filter") && stderr.contains(source),
            "{args:?} {rust_log:?}: {stderr}"
        );
        assert!(
            !Path::new(d).exists(),
            "nothing is created: {:?}",
            entries(Path::new(d))
        );
    }
}

/// Item 9: a port that is taken stops the server before it creates anything.
#[test]
fn a_busy_port_leaves_no_files_behind() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port().to_string();
    let dir = tempfile::tempdir().unwrap();
    // An existing, empty data folder; and one that does not exist yet.
    for data in [dir.path().to_path_buf(), dir.path().join("new")] {
        let d = data.to_str().unwrap();
        let (status, stderr) = run_briefly(
            &["--data-dir", d, "--port", &port, "--bind", "127.0.0.1"],
            None,
            Duration::from_secs(10),
        );
        assert!(!status.expect("the server stops").success(), "{stderr}");
        assert!(stderr.contains("cannot listen on"), "{stderr}");
        assert!(
            entries(&data).is_empty(),
            "left behind: {:?}",
            entries(&data)
        );
    }
}

/// Item 10: one line for a fatal error; no log noise from the admin views.
#[test]
fn fatal_errors_are_printed_once_and_admin_views_are_quiet() {
    let (status, stderr) = run_briefly(
        &["clients", "--data-dir", "/nonexistent/sfc"],
        None,
        Duration::from_secs(10),
    );
    assert!(!status.unwrap().success());
    assert_eq!(stderr.matches("no database").count(), 1, "{stderr}");

    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().to_str().unwrap();
    let mut server = ServerProcess::start(&["--data-dir", d, "--port", "0", "--bind", "127.0.0.1"]);
    let addr = server.listening_addr();
    let mut conn = Conn::connect(addr);
    enroll(&mut conn, "quiet");
    drop(conn);
    assert!(server.terminate().success());
    for view in ["clients", "files"] {
        let out = Command::new(SERVER_BIN)
            .args([view, "--data-dir", d])
            .env_remove("RUST_LOG")
            .output()
            .unwrap();
        assert!(out.status.success());
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(
            stderr.is_empty(),
            "sfc-server {view} wrote to stderr: {stderr}"
        );
    }
}

/// Item 10: the log says what happened in words: a taken name without Rust's debug
/// formatting, an upload's start (client, file, size, packets), the "stored" line with
/// the file's size, duration and rate, and the file of an upload cut mid-packet.
#[test]
fn log_lines_name_the_file_and_carry_no_debug_formatting() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().to_str().unwrap();
    let mut server = ServerProcess::start(&["--data-dir", d, "--port", "0", "--bind", "127.0.0.1"]);
    let addr = server.listening_addr();
    let mut conn = Conn::connect(addr);
    let (id, key) = enroll(&mut conn, "nina");
    assert!(matches!(
        conn.call(&register_request("nina")),
        Response::RegistrationFailed
    ));
    let taken = server.wait_for("is taken").expect("the refusal is logged");
    assert!(
        taken.contains(r#"name \"nina\" is taken"#) || taken.contains(r#"name "nina" is taken"#),
        "{taken}"
    );
    assert!(!taken.contains("Name("), "{taken}");

    let plain = data(50_000, 9);
    let reply = upload(&mut conn, id, &key, "report.pdf", &plain, 4096);
    assert_received(&reply, id, "report.pdf", &plain);
    let started = server
        .wait_for("upload started")
        .expect("an upload-started line");
    let client = format!("client={}", id.short());
    for field in [
        client.as_str(),
        "file=\"report.pdf\"",
        "size=50000",
        "packets=13",
    ] {
        assert!(started.contains(field), "{field} in {started}");
    }
    let stored = server.wait_for("stored as").expect("a stored line");
    assert!(stored.contains("50000 bytes in "), "{stored}");
    assert!(
        stored.contains("MiB/s") || stored.contains("(-)"),
        "{stored}"
    );

    // A packet cut short: its file is named.
    let cipher = encrypt(&key, &plain);
    let first = &packets(
        id,
        "cut.bin",
        plain.len(),
        &cipher,
        4096,
        ContentSize::Whole,
    )[0];
    conn.send_raw(&first[..first.len() - 100]);
    drop(conn);
    let cut = server
        .wait_for("connection ended mid-packet")
        .expect("logged");
    assert!(cut.contains("file=\"cut.bin\""), "{cut}");
    assert!(server.terminate().success());
}

/// Item 10: a port.info that says 0 is not silently a random port.
#[test]
fn port_info_with_0_is_a_warning() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().to_str().unwrap();
    std::fs::write(dir.path().join("port.info"), "0\n").unwrap();
    let mut server = ServerProcess::start(&["--data-dir", d, "--bind", "127.0.0.1"]);
    let warning = server
        .wait_for("port.info")
        .expect("a line about port.info");
    assert!(
        warning.contains("WARN") && warning.contains("says 0"),
        "{warning}"
    );
    server.listening_addr();
    assert!(server.terminate().success());
}

/// Item 6: connections refused by --max-connections-per-address are logged at WARN,
/// one line per address and interval, with the count.
#[test]
fn refused_connections_are_logged_once_per_address_with_a_count() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().to_str().unwrap();
    let mut server = ServerProcess::start_local(d, &["--max-connections-per-address", "1"]);
    let addr = server.listening_addr();
    let mut held = Conn::connect(addr);
    enroll(&mut held, "holder");
    for _ in 0..5 {
        let mut refused = Conn::connect(addr);
        assert!(
            refused.closed_within(Duration::from_secs(5)),
            "closed at once"
        );
    }
    let lines = server.lines_containing("too many open connections", Duration::from_millis(500));
    assert_eq!(lines.len(), 1, "one line per interval: {lines:#?}");
    assert!(
        lines[0].contains("WARN")
            && lines[0].contains("refused=1")
            && lines[0].contains("127.0.0.1"),
        "{}",
        lines[0]
    );
    drop(held);
    assert!(server.terminate().success());
    // The 4 held back are not lost when the flood stops: reported at the latest when the
    // server stops (otherwise after the interval).
    let lines = server.lines_containing("too many open connections", Duration::from_millis(500));
    assert_eq!(lines.len(), 2, "{lines:#?}");
    assert!(lines[1].contains("refused=4"), "{}", lines[1]);
}

/// A file name is the client's text: in a log line it is quoted, so that one such as
/// `a.bin peer=10.9.9.9:1` cannot add a field a log parser would take for the server's.
#[test]
fn file_names_in_log_lines_are_quoted() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().to_str().unwrap();
    let mut server = ServerProcess::start_local(d, &[]);
    let addr = server.listening_addr();
    let mut conn = Conn::connect(addr);
    let (id, key) = enroll(&mut conn, "quoter");
    let name = "a.bin peer=10.9.9.9:1 client=00000000";
    let plain = data(10_000, 1);
    let cipher = encrypt(&key, &plain);
    let packets = packets(id, name, plain.len(), &cipher, 4096, ContentSize::Whole);
    conn.send_raw(&packets[0][..packets[0].len() / 2]);
    drop(conn);
    let line = server
        .wait_for("upload abandoned: connection ended mid-packet")
        .expect("no log line for the abandoned upload");
    assert!(line.contains(&format!("file=\"{name}\"")), "{line}");
    assert!(server.terminate().success());
}

/// Item 8: a start-up error names the file and what was being done. Reproduces the
/// report: a data folder whose files/ belongs to root, the server run as `nobody`.
/// Needs root (to make the files and drop to `nobody` with setpriv); skipped otherwise,
/// except under CI.
#[test]
fn a_start_up_error_names_the_file_and_the_operation() {
    use std::os::unix::fs::{chown, PermissionsExt};
    let is_root = Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|out| String::from_utf8_lossy(&out.stdout).trim() == "0");
    let setpriv = Path::new("/usr/bin/setpriv");
    if !is_root || !setpriv.exists() {
        // `.ci/run` runs as root (it installs packages), and util-linux has setpriv.
        assert!(
            std::env::var_os("CI").is_none(),
            "CI is set, but this test needs root and /usr/bin/setpriv"
        );
        eprintln!("skipped: needs root and setpriv");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    // A copy `nobody` can run wherever the checkout is (under /root, say).
    let server_bin = dir.path().join("sfc-server");
    std::fs::copy(SERVER_BIN, &server_bin).unwrap();
    std::fs::set_permissions(&server_bin, std::fs::Permissions::from_mode(0o755)).unwrap();
    let data = dir.path().join("data");
    std::fs::create_dir(&data).unwrap();
    std::fs::set_permissions(&data, std::fs::Permissions::from_mode(0o777)).unwrap();
    let files = data.join("files");
    std::fs::create_dir(&files).unwrap();
    std::fs::set_permissions(&files, std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::write(data.join("defensive.db"), b"").unwrap();
    chown(data.join("defensive.db"), Some(65534), Some(65534)).unwrap();
    let out = Command::new(setpriv)
        .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
        .arg(&server_bin)
        .args([
            "--data-dir",
            data.to_str().unwrap(),
            "--port",
            "0",
            "--bind",
            "127.0.0.1",
        ])
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    let error = stderr
        .lines()
        .find(|l| l.contains("error"))
        .unwrap_or_else(|| panic!("no error line: {stderr}"));
    assert!(
        error.contains(files.to_str().unwrap()) && error.contains("chmod"),
        "the error names neither the file nor the operation: {error}"
    );
}

/// `--store file://FOLDER` names a folder only one server may use: start-up removes every
/// stored file there that none of its rows names. A second server with its own data
/// folder but the first one's store folder refuses to start, and the first one's
/// acknowledged file is still there.
#[test]
fn a_store_folder_in_use_by_another_server_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (first_dir, second_dir) = (dir.path().join("a"), dir.path().join("b"));
    let first_args = [
        "--data-dir",
        first_dir.to_str().unwrap(),
        "--port",
        "0",
        "--bind",
        "127.0.0.1",
    ];
    let mut first = ServerProcess::start(&first_args);
    let mut conn = Conn::connect(first.listening_addr());
    let (id, key) = enroll(&mut conn, "keeper");
    let plain = data(20_000, 5);
    assert_received(
        &upload(&mut conn, id, &key, "kept.bin", &plain, 4096),
        id,
        "kept.bin",
        &plain,
    );
    let stored = first_dir.join("files").join(id.to_hex()).join("kept.bin");
    assert!(stored.exists());

    let store = format!("file://{}", first_dir.display());
    let second_args = [
        "--data-dir",
        second_dir.to_str().unwrap(),
        "--store",
        store.as_str(),
        "--port",
        "0",
        "--bind",
        "127.0.0.1",
    ];
    let (status, stderr) = run_briefly(&second_args, None, Duration::from_secs(20));
    assert!(status.is_some_and(|s| !s.success()), "{stderr}");
    assert!(
        stderr.contains("is in use by another sfc-server"),
        "{stderr}"
    );
    assert_eq!(std::fs::read(&stored).unwrap(), plain);
    drop(conn);
    assert!(first.terminate().success());
}

/// The options of a server on `data_dir` (and the store folder `store`, if any) on a
/// free port of 127.0.0.1.
fn local_args(data_dir: &Path, store: Option<&Path>) -> Vec<String> {
    let mut args = vec!["--data-dir".to_owned(), data_dir.display().to_string()];
    if let Some(store) = store {
        args.extend(["--store".to_owned(), format!("file://{}", store.display())]);
    }
    args.extend(["--port", "0", "--bind", "127.0.0.1"].map(String::from));
    args
}

/// The set-up ID: once its own server has stopped (the folder lock no longer tells), a
/// store folder is refused to a server whose database is new or belongs to another
/// set-up, and nothing in it is removed; its own server starts on it again.
#[test]
fn a_store_folder_of_another_set_up_is_refused_after_its_server_stopped() {
    let dir = tempfile::tempdir().unwrap();
    let (first_dir, store_dir, other_dir, new_dir) = (
        dir.path().join("a"),
        dir.path().join("store"),
        dir.path().join("b"),
        dir.path().join("c"),
    );
    let first_args = local_args(&first_dir, Some(&store_dir));
    let first_args: Vec<&str> = first_args.iter().map(String::as_str).collect();
    let mut first = ServerProcess::start(&first_args);
    assert!(first.wait_for("new set-up").is_some());
    let mut conn = Conn::connect(first.listening_addr());
    let (id, key) = enroll(&mut conn, "keeper");
    let plain = data(20_000, 6);
    assert_received(
        &upload(&mut conn, id, &key, "kept.bin", &plain, 4096),
        id,
        "kept.bin",
        &plain,
    );
    drop(conn);
    assert!(first.terminate().success());
    let stored = store_dir.join("files").join(id.to_hex()).join("kept.bin");

    // Another set-up: a server that ran on its own folder before.
    let other_args = local_args(&other_dir, None);
    let other_args: Vec<&str> = other_args.iter().map(String::as_str).collect();
    let mut other = ServerProcess::start(&other_args);
    other.listening_addr();
    assert!(other.terminate().success());

    for (data_dir, expected) in [
        (&new_dir, "but the database has no set-up ID"),
        (&other_dir, "belong to different set-ups"),
    ] {
        let args = local_args(data_dir, Some(&store_dir));
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let (status, stderr) = run_briefly(&args, None, Duration::from_secs(20));
        assert!(status.is_some_and(|s| !s.success()), "{stderr}");
        let location = store_dir.join("sfc-setup-id");
        assert!(
            stderr.contains(expected) && stderr.contains(&location.display().to_string()),
            "{stderr}"
        );
        assert_eq!(std::fs::read(&stored).unwrap(), plain);
    }

    // A damaged ID is an error too, not "no ID" (which would let the store be taken).
    let id_file = store_dir.join("sfc-setup-id");
    let kept_id = std::fs::read(&id_file).unwrap();
    std::fs::write(&id_file, b"garbage!\n").unwrap();
    let (status, stderr) = run_briefly(&first_args, None, Duration::from_secs(20));
    assert!(status.is_some_and(|s| !s.success()), "{stderr}");
    assert!(stderr.contains("does not hold a set-up ID"), "{stderr}");
    std::fs::write(&id_file, kept_id).unwrap();

    let mut first = ServerProcess::start(&first_args);
    let mut conn = Conn::connect(first.listening_addr());
    assert!(matches!(
        conn.call(&file_name_request(id, 900, "kept.bin")),
        sfc_proto::Response::Ack { .. }
    ));
    drop(conn);
    assert!(first.terminate().success());
    assert_eq!(std::fs::read(&stored).unwrap(), plain);
}
