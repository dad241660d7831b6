//! The `sfc-server` binary: start-up log line, port.info, SIGTERM, admin views, --help.
#![cfg(test)]

mod common;

use common::process::{listening_addr, ServerProcess, SERVER_BIN};
use common::*;
use sfc_proto::Response;
use std::process::Command;

const BIN: &str = SERVER_BIN;

#[test]
fn serves_then_stops_on_sigterm_and_the_admin_views_show_the_state() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().to_str().unwrap();
    let mut server = ServerProcess::start(&["--data-dir", d, "--port", "0", "--bind", "127.0.0.1"]);
    let line = server.wait_for("listening on").expect("a listening line");
    let addr = listening_addr(&line);
    assert_eq!(addr.ip().to_string(), "127.0.0.1");
    assert_ne!(addr.port(), 0, "the real port is logged");

    let mut conn = Conn::connect(addr);
    let (id, key) = enroll(&mut conn, "cli-user");
    let plain = data(1234, 5);
    assert_received(
        &upload(&mut conn, id, &key, "dir/a.txt", &plain, 2048),
        id,
        "dir/a.txt",
        &plain,
    );
    assert_eq!(
        conn.call(&file_name_request(id, 900, "dir/a.txt")),
        Response::Ack {
            client_id: Some(id)
        }
    );
    // One log line per request, with peer, client, code, sizes, outcome and duration.
    let request_line = server.wait_for("code=826").unwrap();
    for field in [
        "peer=127.0.0.1:",
        &format!("client={}", id.short()),
        "payload=415",
        "reply=1602",
        "ms=",
    ] {
        assert!(request_line.contains(field), "{field} in {request_line}");
    }
    drop(conn);

    let status = server.terminate();
    assert!(status.success(), "{status:?}");
    assert!(server.wait_for("SIGTERM received").is_some());
    assert!(server.wait_for("database closed").is_some());

    let out = Command::new(BIN)
        .args(["clients", "--json", "--data-dir", d])
        .output()
        .unwrap();
    assert!(out.status.success());
    let clients: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(clients[0]["name"], "cli-user");
    assert_eq!(clients[0]["id"], id.to_hex());
    assert_eq!(clients[0]["files"], 1);
    assert!(clients[0]["last_seen"].as_str().unwrap().starts_with("20"));

    let out = Command::new(BIN)
        .args(["--data-dir", d, "files"])
        .output()
        .unwrap();
    assert!(out.status.success());
    let table = String::from_utf8(out.stdout).unwrap();
    let row = table.lines().find(|l| l.contains("dir/a.txt")).unwrap();
    assert!(
        row.contains("cli-user") && row.contains("1234") && row.contains("yes"),
        "{table}"
    );

    let out = Command::new(BIN)
        .args(["files", "--json", "--data-dir", d])
        .output()
        .unwrap();
    let files: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(files[0]["file_name"], "dir/a.txt");
    assert_eq!(files[0]["size"], 1234);
    assert_eq!(files[0]["verified"], true);
}

/// `port.info` gives the port. (A bad one falls back to 1256 with a warning:
/// `config::tests::port_info_variants`; not run here, where it would bind a fixed port.)
#[test]
fn port_info_is_read() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().to_str().unwrap();
    // A free port for port.info.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    std::fs::write(dir.path().join("port.info"), format!("{port}\n")).unwrap();
    let mut server = ServerProcess::start(&["--data-dir", d, "--bind", "127.0.0.1"]);
    let line = server.wait_for("listening on").expect("listening");
    assert_eq!(listening_addr(&line).port(), port);
    assert!(server.terminate().success());
}

#[test]
fn help_documents_every_option_and_the_defaults() {
    let out = Command::new(BIN).arg("--help").output().unwrap();
    assert!(out.status.success());
    let help = String::from_utf8(out.stdout).unwrap();
    for option in [
        "--data-dir",
        "--port",
        "--bind",
        "--log-level",
        "--max-file-size",
        "--max-connections",
        "--idle-timeout",
        "--request-timeout",
        "--shutdown-grace",
        "--upload-timeout",
        "--upload-buffers",
        "clients",
        "files",
        "[default: 4294967279]",
        "[default: 16384]",
        "[default: 256]",
        "[default: 30]",
        "[default: 10]",
        "[default: 0.0.0.0]",
    ] {
        assert!(
            help.contains(option),
            "{option} missing from --help:\n{help}"
        );
    }
    let out = Command::new(BIN)
        .args(["files", "--help"])
        .output()
        .unwrap();
    assert!(String::from_utf8(out.stdout).unwrap().contains("--json"));
    let out = Command::new(BIN)
        .args(["clients", "--data-dir", "/nonexistent/sfc"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("no database"));
}

#[test]
fn a_second_server_on_the_same_data_folder_refuses_to_start() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().to_str().unwrap();
    let args = ["--data-dir", d, "--port", "0", "--bind", "127.0.0.1"];
    let mut first = ServerProcess::start(&args);
    let addr = first.listening_addr();
    // An upload in progress on the first server: its temporary file is what a second
    // server's start-up cleanup would have removed.
    let mut conn = Conn::connect(addr);
    let (id, key) = enroll(&mut conn, "first-user");
    let plain = data(10_000, 3);
    let cipher = encrypt(&key, &plain);
    let packets = packets(
        id,
        "big.bin",
        plain.len(),
        &cipher,
        2048,
        ContentSize::Whole,
    );
    conn.send_raw(&packets[0]);

    let out = Command::new(BIN).args(args).output().unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("is in use by another sfc-server")
            && stderr.contains(&first.child.id().to_string()),
        "{stderr}"
    );

    // The first server and its upload are untouched.
    for packet in &packets[1..] {
        conn.send_raw(packet);
    }
    assert_received(&conn.recv(), id, "big.bin", &plain);
    drop(conn);
    assert!(first.terminate().success());

    // Once it has stopped, the folder is free again.
    let mut second = ServerProcess::start(&args);
    second.listening_addr();
    assert!(second.terminate().success());
}

/// Issue 12 item 11: `-h` is one short line per option, in a user's words; the protocol's
/// internals (request codes, table names) are for `--help`.
#[test]
fn short_help_is_one_line_per_option_in_a_users_words() {
    let out = Command::new(BIN).arg("-h").output().unwrap();
    assert!(out.status.success());
    let help = String::from_utf8(out.stdout).unwrap();
    for line in help.lines() {
        assert!(line.len() <= 110, "a long line in -h: {line}");
        for internal in [
            "825", "826", "827", "828", "1607", "RUST_LOG", "SPKI", "tracing",
        ] {
            assert!(!line.contains(internal), "{internal:?} in -h: {line}");
        }
    }
    assert!(help.contains("--database <URL>"), "{help}");
}

/// An invalid --database or SFC_DATABASE_URL is a usage error (exit 2, as clap's own)
/// whose message names the URL without its password: the journal keeps stderr.
#[test]
fn an_invalid_database_url_is_a_usage_error_that_does_not_print_the_password() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().to_str().unwrap();
    for url in [
        "postgres://sfc:s3cret@db/sfc?sslmode=require",
        "postgres://sfc:s3cret@db/sfc?sslmode=verify-full",
        "postgres://sfc:s3cret@db:notaport/sfc",
        "postgresql://db/sfc?password=s3cret&sslmode=require",
    ] {
        let from_env = Command::new(BIN)
            .args(["--data-dir", d, "--port", "0"])
            .env("SFC_DATABASE_URL", url)
            .output()
            .unwrap();
        let from_flag = Command::new(BIN)
            .args(["--data-dir", d, "--port", "0", "--database", url])
            .env_remove("SFC_DATABASE_URL")
            .output()
            .unwrap();
        // An admin view reads it too.
        let admin_view = Command::new(BIN)
            .args(["files", "--data-dir", d])
            .env("SFC_DATABASE_URL", url)
            .output()
            .unwrap();
        for (source, out) in [
            ("SFC_DATABASE_URL", from_env),
            ("--database", from_flag),
            ("files", admin_view),
        ] {
            let stderr = String::from_utf8_lossy(&out.stderr);
            assert_eq!(out.status.code(), Some(2), "{source} {url}: {stderr}");
            assert!(!stderr.contains("s3cret"), "{source} {url}: {stderr}");
            assert!(
                stderr.contains("invalid value 'postgres")
                    && stderr.contains("for '--database <URL>'")
                    && (stderr.contains("sslmode") || stderr.contains("port")),
                "{source} {url}: {stderr}"
            );
        }
    }
    let out = Command::new(BIN)
        .args(["--data-dir", d, "--port", "0"])
        .env(
            "SFC_DATABASE_URL",
            "postgres://sfc:s3cret@db/sfc?sslmode=require",
        )
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("'postgres://sfc@db/sfc?sslmode=require'")
            && stderr.contains("(from SFC_DATABASE_URL)")
            && stderr.contains("does not speak TLS to PostgreSQL"),
        "{stderr}"
    );
}

/// The largest --idle-timeout and --request-timeout are armed on every connection (added
/// to the clock): a connection with them is served as usual.
#[test]
fn the_largest_time_outs_serve_a_connection() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().to_str().unwrap();
    let max = sfc_server::config::MAX_IDLE_TIMEOUT_SECS.to_string();
    let max_request = sfc_server::config::MAX_REQUEST_TIMEOUT_SECS.to_string();
    let mut server = ServerProcess::start_local(
        d,
        &["--idle-timeout", &max, "--request-timeout", &max_request],
    );
    let mut conn = Conn::connect(server.listening_addr());
    let (id, _key) = enroll(&mut conn, "patient-user");
    assert!(server.wait_for("code=826").is_some());
    drop(conn);
    assert!(server.terminate().success());
    let out = Command::new(BIN)
        .args(["clients", "--json", "--data-dir", d])
        .output()
        .unwrap();
    let clients: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(clients[0]["id"], id.to_hex());
    // One more is a usage error, not a server whose every connection panics (a server
    // that starts anyway is stopped when `server` is dropped).
    for option in ["--idle-timeout", "--request-timeout"] {
        let mut server = ServerProcess::start_local(d, &[option, "86401"]);
        assert!(server.wait_for("is not in 1..=86400").is_some(), "{option}");
        assert_eq!(server.child.wait().unwrap().code(), Some(2));
    }
}
