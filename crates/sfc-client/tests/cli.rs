//! The command line without a working server: bad input, network failures, --help.
#![cfg(test)]

mod common;

use std::net::TcpListener;
use std::time::{Duration, Instant};

use common::{make_file, run_client, tempdir, write_transfer_info};

/// A port with nothing listening on it.
fn dead_address() -> String {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    drop(listener);
    addr.to_string()
}

#[test]
fn malformed_transfer_info_lines_are_named() {
    let cases: &[(&str, &str, &str)] = &[
        ("", "line 1", "missing"),
        ("localhost\nalice\nf.bin\n", "line 1", "no port"),
        ("127.0.0.1:99999\nalice\nf.bin\n", "line 1", "out of range"),
        ("::1:80\nalice\nf.bin\n", "line 1", "brackets"),
        // No line 2 is left to me.info; without one the file line is missing first.
        ("127.0.0.1:1256\n", "line 3", "missing"),
        ("127.0.0.1:1256\n\nf.bin\n", "line 2", "empty"),
        (
            "127.0.0.1:1256\nthis name is far too long for the protocol rules of this project, \
             which allow at most one hundred characters\nf.bin\n",
            "line 2",
            "at most 100",
        ),
        ("127.0.0.1:1256\nalice\n", "line 3", "missing"),
        (
            "127.0.0.1:1256\nalice\nnot-there.bin\n",
            "line 3",
            "no such file",
        ),
    ];
    for (content, line, words) in cases {
        let dir = tempdir();
        make_file(&dir.path().join("f.bin"), 10, 1);
        std::fs::write(dir.path().join("transfer.info"), content).unwrap();
        let run = run_client(dir.path(), &[]);
        run.assert_code(2);
        assert!(
            run.stderr.contains(&format!("transfer.info {line}")) && run.stderr.contains(words),
            "{content:?}: expected {line} and {words:?} in {}",
            run.stderr
        );
        assert!(!dir.path().join("me.info").exists());
    }
}

/// With `--json` a batch that never starts (a file that is not there) still gets its
/// total line, with the exit code and why.
#[test]
fn a_refused_command_line_still_gets_its_json_total() {
    let dir = tempdir();
    let address = dead_address();
    let run = run_client(dir.path(), &["--json", "-s", &address, "absent.bin"]);
    run.assert_code(2);
    let lines: Vec<serde_json::Value> = run
        .stdout
        .lines()
        .map(|line| serde_json::from_str(line).unwrap())
        .collect();
    assert_eq!(lines.len(), 1, "{}", run.stdout);
    let total = &lines[0]["total"];
    assert_eq!(total["exit_code"], 2);
    assert_eq!(total["files"], 0);
    assert!(
        total["error"]
            .as_str()
            .is_some_and(|e| e.contains("absent.bin")),
        "{total}"
    );
}

#[test]
fn missing_transfer_info_says_what_to_do() {
    let dir = tempdir();
    let run = run_client(dir.path(), &[]);
    run.assert_code(2);
    assert!(run.stderr.contains("transfer.info"), "{}", run.stderr);
    assert!(run.stderr.contains("not found"), "{}", run.stderr);
}

#[test]
fn unreadable_files_are_bad_input() {
    let dir = tempdir();
    write_transfer_info(dir.path(), &dead_address(), "alice", "f.bin");
    std::fs::create_dir(dir.path().join("folder")).unwrap();
    let run = run_client(dir.path(), &["folder"]);
    run.assert_code(2);
    assert!(run.stderr.contains("is a directory"), "{}", run.stderr);

    let run = run_client(dir.path(), &["absent.bin"]);
    run.assert_code(2);
    assert!(run.stderr.contains("no such file"), "{}", run.stderr);

    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let locked = dir.path().join("locked.bin");
        make_file(&locked, 10, 1);
        std::fs::set_permissions(&locked, std::fs::Permissions::from_mode(0o000)).unwrap();
        // Root reads anything: only check where permissions apply.
        if std::fs::read(&locked).is_err() {
            let run = run_client(dir.path(), &["locked.bin"]);
            run.assert_code(2);
            assert!(run.stderr.contains("permission denied"), "{}", run.stderr);
        }
    }
}

#[test]
fn server_down_is_a_network_failure_naming_the_address() {
    let dir = tempdir();
    let address = dead_address();
    write_transfer_info(dir.path(), &address, "alice", "f.bin");
    make_file(&dir.path().join("f.bin"), 10, 1);
    let run = run_client(dir.path(), &[]);
    run.assert_code(5);
    assert!(run.stderr.contains(&address), "{}", run.stderr);
    assert!(run.stderr.contains("connection refused"), "{}", run.stderr);
    assert!(!dir.path().join("me.info").exists());
}

#[test]
fn a_silent_server_times_out_as_configured() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let address = listener.local_addr().unwrap().to_string();
    let (client_done, done) = std::sync::mpsc::channel::<()>();
    let holder = std::thread::spawn(move || {
        // Accept and say nothing until the client has given up (or for 30 s).
        let (stream, _) = listener.accept().unwrap();
        let _ = done.recv_timeout(Duration::from_secs(30));
        drop(stream);
    });
    let dir = tempdir();
    write_transfer_info(dir.path(), &address, "alice", "f.bin");
    make_file(&dir.path().join("f.bin"), 10, 1);
    let started = Instant::now();
    let run = run_client(dir.path(), &["--timeout", "0.5"]);
    let elapsed = started.elapsed();
    client_done.send(()).unwrap();
    run.assert_code(5);
    // Far less than the 30 s the server holds on; the RSA key made before the 825 takes
    // a second or two of it in a debug build.
    assert!(elapsed < Duration::from_secs(15), "{elapsed:?}");
    assert!(
        run.stderr.contains("no answer within 500 ms"),
        "{}",
        run.stderr
    );
    assert!(run.stderr.contains("825 (register)"), "{}", run.stderr);
    holder.join().unwrap();
}

/// `-r .` in the client's folder (the default --dir) plans neither its key nor its other
/// state, says what it left out, and still sends a same-named file in a subfolder.
#[test]
fn sending_the_client_folder_recursively_leaves_out_its_state() {
    let dir = tempdir();
    std::fs::create_dir_all(dir.path().join("servers/h_1")).unwrap();
    std::fs::create_dir(dir.path().join("sub")).unwrap();
    for file in [
        "priv.key",
        "me.server",
        ".sfc-client.lock",
        "priv.key.old.bak",
        "servers/h_1/priv.key",
        "report.txt",
        "sub/priv.key",
    ] {
        std::fs::write(dir.path().join(file), "x\n").unwrap();
    }
    let address = dead_address();
    let run = run_client(
        dir.path(),
        &["-s", &address, "-n", "bob", "-r", ".", "--json"],
    );
    run.assert_code(5);
    let names: Vec<String> = run
        .stdout
        .lines()
        .map(|line| serde_json::from_str::<serde_json::Value>(line).unwrap())
        .filter_map(|report| Some(report["name"].as_str()?.to_owned()))
        .collect();
    assert_eq!(names, ["report.txt", "sub/priv.key"], "{}", run.stdout);
    assert!(
        run.stderr.contains("5 of the client's own files not sent"),
        "{}",
        run.stderr
    );
}

#[test]
fn help_documents_options_defaults_and_exit_codes() {
    let dir = tempdir();
    let run = run_client(dir.path(), &["--help"]);
    run.assert_code(0);
    for needle in [
        "--server <HOST:PORT>",
        "--name <NAME>",
        "--dir <DIR>",
        "--packet-size <BYTES>",
        "--connect-timeout <SECONDS>",
        "--timeout <SECONDS>",
        "--quiet",
        "--verbose",
        "[default: 10]",
        "[default: 60]",
        "Exit codes:",
        "4  a file's checksum",
        "5  network failure",
    ] {
        assert!(run.stdout.contains(needle), "{needle:?} in\n{}", run.stdout);
    }
    let run = run_client(dir.path(), &["--packet-size", "0"]);
    run.assert_code(2);
    let run = run_client(dir.path(), &["--quiet", "--verbose"]);
    run.assert_code(2);
}
