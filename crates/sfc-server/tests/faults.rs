//! Fault injection behind the storage traits: a full disk and a failing database must
//! give 1607 (logged), leave no temporary file, never lose a file already stored, and not
//! disturb later requests. One test makes the operating system itself refuse a write
//! (a file-size limit on the real binary).
#![cfg(test)]

mod common;

use common::*;
use sfc_proto::{ClientId, Response};
use sfc_server::testing::Faults;
use sfc_server::{MetaStore, RunningServer, SqliteStore, Storage};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

fn start() -> (tempfile::TempDir, RunningServer, Arc<Faults>) {
    init_logging();
    let dir = tempfile::tempdir().unwrap();
    let mut config = config_for(dir.path());
    config.admin = Some(sfc_server::AdminConfig::new(
        "127.0.0.1:0".parse().unwrap(),
        dir.path().join("admin.token"),
    ));
    let switches = Arc::new(Faults::default());
    let storage = faulty_local_storage(dir.path(), &switches);
    let server = RunningServer::start_with(config, storage).unwrap();
    (dir, server, switches)
}

/// The server's `/metrics` text, through its admin listener.
fn metrics(dir: &std::path::Path, server: &RunningServer) -> String {
    let admin = server.admin_addr().unwrap();
    let text = admin_request(admin, "GET", "/metrics", &dir.join("admin.token"));
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    text
}

fn entries(dir: &std::path::Path, id: ClientId) -> usize {
    std::fs::read_dir(dir.join("files").join(id.to_hex()))
        .map(|d| d.count())
        .unwrap_or(0)
}

/// The server's own failures (here a full disk) are answered 1607 but do not count
/// against the client's failure budget: a client retrying through an outage (rule C8: four
/// tries a request) is not banned for it, nor is everyone behind its address.
#[test]
fn the_servers_own_failures_do_not_spend_the_clients_failure_budget() {
    init_logging();
    let dir = tempfile::tempdir().unwrap();
    let mut config = config_for(dir.path());
    config.failure_limit = sfc_server::RateLimit::new(1, 3);
    let switches = Arc::new(Faults::default());
    let storage = faulty_local_storage(dir.path(), &switches);
    let server = RunningServer::start_with(config, storage).unwrap();
    let mut conn = Conn::connect(server.addr());
    let (id, key) = enroll(&mut conn, "outage");
    switches.disk_full.store(true, Ordering::SeqCst);
    let plain = data(1000, 2);
    for attempt in 0..8 {
        let reply = upload(&mut conn, id, &key, "f.bin", &plain, 500);
        assert_eq!(reply, Response::ServerError, "attempt {attempt}");
    }
    assert!(
        !conn.closed_within(Duration::from_millis(200)),
        "the connection was closed"
    );
    switches.disk_full.store(false, Ordering::SeqCst);
    let reply = upload(&mut conn, id, &key, "f.bin", &plain, 500);
    assert_received(&reply, id, "f.bin", &plain);
    // A new connection from the same address is served too.
    let mut again = Conn::connect(server.addr());
    assert_eq!(
        again.call(&file_name_request(id, 900, "f.bin")),
        Response::Ack {
            client_id: Some(id)
        }
    );
    // The client's own failures still count: beyond the budget its connection closes.
    for _ in 0..4 {
        again.call(&file_name_request(id, 900, "no-such-file"));
    }
    assert!(again.closed_within(Duration::from_secs(5)));
}

#[test]
fn disk_full_gives_1607_and_leaves_no_temporary_file() {
    let (dir, server, switches) = start();
    let mut conn = Conn::connect(server.addr());
    let (id, key) = enroll(&mut conn, "full");
    switches.disk_full.store(true, Ordering::SeqCst);
    // A small file fails at the final write, a large one mid-stream.
    for len in [100usize, 1_000_000] {
        let plain = data(len, 1);
        let reply = upload(&mut conn, id, &key, "f.bin", &plain, 50_000);
        assert_eq!(reply, Response::ServerError, "{len} bytes");
        assert_eq!(entries(dir.path(), id), 0);
    }
    // Both count as storage errors of 828 (by the refusal's kind, not its wording).
    let scraped = metrics(dir.path(), &server);
    assert!(
        scraped.contains("sfc_storage_errors_total{code=\"828\"} 2"),
        "{scraped}"
    );
    switches.disk_full.store(false, Ordering::SeqCst);
    let plain = data(1_000_000, 2);
    assert_received(
        &upload(&mut conn, id, &key, "f.bin", &plain, 50_000),
        id,
        "f.bin",
        &plain,
    );
    server.stop();
}

#[test]
fn database_failures_give_1607_and_the_server_recovers() {
    let (dir, server, switches) = start();
    let mut conn = Conn::connect(server.addr());
    let (id, key) = enroll(&mut conn, "dbfail");
    let plain = data(5000, 3);
    switches.db_down.store(true, Ordering::SeqCst);
    assert_eq!(
        conn.call(&register_request("newbie")),
        Response::ServerError
    );
    assert_eq!(conn.call(&key_request(id, "dbfail")), Response::ServerError);
    let reconnect = sfc_proto::Request::new(
        id,
        sfc_proto::RequestBody::Reconnect {
            name: name("dbfail"),
        },
    );
    assert_eq!(conn.call(&reconnect), Response::ServerError);
    assert_eq!(
        conn.call(&file_name_request(id, 900, "x")),
        Response::ServerError
    );
    // 828 cannot even find the client's key.
    assert_eq!(
        upload(&mut conn, id, &key, "f.bin", &plain, 1000),
        Response::ServerError
    );
    assert_eq!(entries(dir.path(), id), 0);
    // The database fails only at the final commit: no 1603 for an unrecorded file.
    switches.db_down.store(false, Ordering::SeqCst);
    let cipher = encrypt(&key, &plain);
    let all = packets(id, "g.bin", plain.len(), &cipher, 1000, ContentSize::Whole);
    for packet in &all[..all.len() - 1] {
        conn.send_raw(packet);
    }
    // Packet 1 (the one that reads the client's key) has been taken once its temporary
    // file is there; the later packets need no database.
    assert!(eventually(std::time::Duration::from_secs(10), || entries(
        dir.path(),
        id
    ) == 1));
    switches.db_down.store(true, Ordering::SeqCst);
    conn.send_raw(all.last().unwrap());
    assert_eq!(conn.recv(), Response::ServerError);
    // Back up: everything works again on the same connection.
    switches.db_down.store(false, Ordering::SeqCst);
    assert_received(
        &upload(&mut conn, id, &key, "g.bin", &plain, 1000),
        id,
        "g.bin",
        &plain,
    );
    confirm(&mut conn, id, "g.bin");
    server.stop();
}

/// Uploads `content` as `label` in 30,000-byte packets; the reply must be its 1603.
/// 900 for `label`: the checksum is confirmed (1604).
fn confirm(conn: &mut Conn, id: ClientId, label: &str) {
    assert_eq!(
        conn.call(&file_name_request(id, 900, label)),
        Response::Ack {
            client_id: Some(id)
        }
    );
}

fn stored(dir: &std::path::Path, id: ClientId, label: &str) -> Option<(Vec<u8>, bool)> {
    let db = SqliteStore::open_existing(&dir.join("defensive.db")).unwrap();
    let row = db.file(&id, label).unwrap()?;
    let content = std::fs::read(dir.join(&row.path)).unwrap();
    Some((content, row.verified))
}

fn file_names(dir: &std::path::Path, id: ClientId) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir.join("files").join(id.to_hex()))
        .map(|d| {
            d.map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}

/// The data-safety fix: when the commit after the rename fails, the stored version is put
/// back (and a new file removed); when the first commit (Verified = 0) fails, nothing
/// changes at all.
#[test]
fn a_failed_commit_never_loses_the_stored_file() {
    let (dir, server, switches) = start();
    let mut conn = Conn::connect(server.addr());
    let (id, key) = enroll(&mut conn, "keeper");
    let v1 = data(200_000, 1);
    let v2 = data(150_000, 2);
    store(&mut conn, id, &key, "f.bin", &v1);
    confirm(&mut conn, id, "f.bin");
    let budget = |n: Option<u64>| match n {
        Some(n) => switches.file_commits_fail_after(n),
        None => switches.db_recovers(),
    };

    // Replacement: the Verified = 0 commit fails: nothing changes.
    budget(Some(0));
    assert_eq!(
        upload(&mut conn, id, &key, "f.bin", &v2, 30_000),
        Response::ServerError
    );
    assert_eq!(stored(dir.path(), id, "f.bin"), Some((v1.clone(), true)));
    assert_eq!(file_names(dir.path(), id), ["f.bin"]);

    // Replacement: the commit after the rename fails: v1 is back, nothing else remains.
    budget(Some(1));
    assert_eq!(
        upload(&mut conn, id, &key, "f.bin", &v2, 30_000),
        Response::ServerError
    );
    let (content, verified) = stored(dir.path(), id, "f.bin").unwrap();
    assert_eq!(content, v1, "the stored version survived");
    assert!(
        !verified,
        "conservatively unverified: the database failed before it could be restored"
    );
    assert_eq!(file_names(dir.path(), id), ["f.bin"]);

    // A new file: the commit fails: the file is removed again.
    budget(Some(0));
    assert_eq!(
        upload(&mut conn, id, &key, "new.bin", &v2, 30_000),
        Response::ServerError
    );
    assert_eq!(stored(dir.path(), id, "new.bin"), None);
    assert_eq!(file_names(dir.path(), id), ["f.bin"]);

    // The database recovers: both go through.
    budget(None);
    store(&mut conn, id, &key, "f.bin", &v2);
    store(&mut conn, id, &key, "new.bin", &v1);
    assert_eq!(stored(dir.path(), id, "f.bin"), Some((v2.clone(), false)));
    assert_eq!(file_names(dir.path(), id), ["f.bin", "new.bin"]);
    server.stop();
}

/// A full disk while replacing a stored file: 1607, the stored version intact, no
/// temporary file; once space returns the replacement goes through.
#[test]
fn disk_full_while_replacing_keeps_the_stored_file() {
    let (dir, server, switches) = start();
    let mut conn = Conn::connect(server.addr());
    let (id, key) = enroll(&mut conn, "full-replace");
    let v1 = data(100_000, 1);
    store(&mut conn, id, &key, "f.bin", &v1);
    confirm(&mut conn, id, "f.bin");
    switches.disk_full.store(true, Ordering::SeqCst);
    for len in [10usize, 1_000_000] {
        let v2 = data(len, 2);
        assert_eq!(
            upload(&mut conn, id, &key, "f.bin", &v2, 30_000),
            Response::ServerError
        );
        assert_eq!(
            stored(dir.path(), id, "f.bin"),
            Some((v1.clone(), true)),
            "{len}"
        );
        assert_eq!(file_names(dir.path(), id), ["f.bin"]);
    }
    switches.disk_full.store(false, Ordering::SeqCst);
    let v3 = data(300_000, 3);
    store(&mut conn, id, &key, "f.bin", &v3);
    assert_eq!(stored(dir.path(), id, "f.bin"), Some((v3, false)));
    server.stop();
}

/// Moving the new version into place fails (an fsync or rename error, the disk still
/// writable): 1607, and the stored version keeps its row as it was, verified included
/// (step 1 had committed it as unverified before the move).
#[test]
fn a_failed_move_into_place_keeps_the_stored_file_verified() {
    let (dir, server, switches) = start();
    let mut conn = Conn::connect(server.addr());
    let (id, key) = enroll(&mut conn, "move-fails");
    let v1 = data(100_000, 1);
    store(&mut conn, id, &key, "f.bin", &v1);
    confirm(&mut conn, id, "f.bin");
    switches.persist_fails.store(true, Ordering::SeqCst);
    let v2 = data(50_000, 2);
    assert_eq!(
        upload(&mut conn, id, &key, "f.bin", &v2, 30_000),
        Response::ServerError
    );
    assert_eq!(stored(dir.path(), id, "f.bin"), Some((v1, true)));
    assert_eq!(file_names(dir.path(), id), ["f.bin"]);
    switches.persist_fails.store(false, Ordering::SeqCst);
    store(&mut conn, id, &key, "f.bin", &v2);
    assert_eq!(stored(dir.path(), id, "f.bin"), Some((v2, false)));
    server.stop();
}

/// The new version is left in place unconfirmed (the undo after a failed commit fails):
/// 1607, and the row stays unverified, since its file no longer holds the version the
/// client confirmed.
#[test]
fn a_version_left_in_place_unconfirmed_is_never_marked_verified() {
    let (dir, server, switches) = start();
    let mut conn = Conn::connect(server.addr());
    let (id, key) = enroll(&mut conn, "unconfirmed");
    let v1 = data(100_000, 1);
    store(&mut conn, id, &key, "f.bin", &v1);
    confirm(&mut conn, id, "f.bin");

    // The commit after the move fails (alone: the database could restore the row), and
    // so does the undo.
    let v2 = data(60_000, 2);
    switches.undo_fails.store(true, Ordering::SeqCst);
    switches.one_file_commit_fails_after(1);
    assert_eq!(
        upload(&mut conn, id, &key, "f.bin", &v2, 30_000),
        Response::ServerError
    );
    switches.undo_fails.store(false, Ordering::SeqCst);
    assert_eq!(stored(dir.path(), id, "f.bin"), Some((v2.clone(), false)));
    confirm(&mut conn, id, "f.bin");
    assert_eq!(stored(dir.path(), id, "f.bin"), Some((v2, true)));
    assert_eq!(file_names(dir.path(), id), ["f.bin"]);
    server.stop();
}

/// The admin deletes a file while its client sends it again: the delete stops between
/// the removal of the row and of the file (a gate), and the upload's last packet arrives
/// then. The two take turns on the name: the upload is stored after the delete is done,
/// so its row names its file; before, the delete removed the file the upload had just
/// stored and recorded (a row naming no file, after a 1603).
#[test]
fn a_delete_and_an_upload_of_the_same_name_take_turns() {
    let (dir, server, switches) = start();
    let mut conn = Conn::connect(server.addr());
    let (id, key) = enroll(&mut conn, "turns");
    let v1 = data(50_000, 1);
    store(&mut conn, id, &key, "f.bin", &v1);

    switches.remove_gate.hold_next();
    let token_file = dir.path().join("admin.token");
    let admin = server.admin_addr().unwrap();
    let deleter = std::thread::spawn(move || {
        let path = format!("/api/v1/clients/{id}/file?name=f.bin");
        admin_request(admin, "DELETE", &path, &token_file)
    });
    assert!(
        switches.remove_gate.wait_arrived(Duration::from_secs(20)),
        "the delete never reached the file"
    );
    let v2 = data(60_000, 2);
    let sent = v2.clone();
    let uploader = std::thread::spawn(move || {
        let reply = upload(&mut conn, id, &key, "f.bin", &sent, 30_000);
        (conn, reply)
    });
    // Time for the upload to reach its store (and wait for the name).
    std::thread::sleep(Duration::from_millis(500));
    switches.remove_gate.open();
    let answer = deleter.join().unwrap();
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    let (_conn, reply) = uploader.join().unwrap();
    assert_received(&reply, id, "f.bin", &v2);
    assert_eq!(stored(dir.path(), id, "f.bin"), Some((v2, false)));
    server.stop();
}

/// A commit that happened but was reported as failed (a connection to PostgreSQL that
/// broke after COMMIT): the server asks the database before undoing, so the file the
/// committed row names is never removed. Asked and answered: the upload is stored (1603).
/// The database down at once, so that it cannot be asked: 1607, and the file stays where
/// the committed row names it.
#[test]
fn a_commit_whose_answer_was_lost_never_leaves_a_row_without_its_file() {
    let (dir, server, switches) = start();
    let mut conn = Conn::connect(server.addr());
    let (id, key) = enroll(&mut conn, "lost-answer");
    let v1 = data(120_000, 1);
    let v2 = data(80_000, 2);

    switches.lose_file_commit_answers(false);
    store(&mut conn, id, &key, "a.bin", &v1);
    assert_eq!(stored(dir.path(), id, "a.bin"), Some((v1.clone(), false)));

    switches.lose_file_commit_answers(true);
    assert_eq!(
        upload(&mut conn, id, &key, "b.bin", &v2, 30_000),
        Response::ServerError
    );
    switches.db_recovers();
    assert_eq!(stored(dir.path(), id, "b.bin"), Some((v2.clone(), false)));
    assert_eq!(file_names(dir.path(), id), ["a.bin", "b.bin"]);
    // The client sends it again, as after any 1607: stored and confirmed.
    store(&mut conn, id, &key, "b.bin", &v2);
    confirm(&mut conn, id, "b.bin");
    assert_eq!(stored(dir.path(), id, "b.bin"), Some((v2, true)));
    server.stop();
}

/// A real write error from the operating system, not an injected one: the server binary
/// runs with a file-size limit (`ulimit -f`, SIGXFSZ ignored so that a write beyond it
/// fails with EFBIG instead of killing the process), as a filesystem that refuses to grow
/// a file would. A file beyond the limit gets 1607 and leaves nothing behind; the stored
/// file it would have replaced and the database are untouched; smaller files go on.
#[test]
fn a_real_write_error_from_the_os_gives_1607_and_keeps_what_is_stored() {
    use common::process::{ServerProcess, SERVER_BIN};
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("data");
    let mut command = std::process::Command::new("sh");
    command
        .arg("-c")
        // dash and bash count `ulimit -f` in 512- or 1024-byte blocks: 512 KiB or 1 MiB.
        .arg("ulimit -f 1024 && trap '' XFSZ && exec \"$0\" \"$@\"")
        .arg(SERVER_BIN)
        .args(["--bind", "127.0.0.1", "--port", "0", "--data-dir"])
        .arg(&data_dir);
    let mut server = ServerProcess::spawn(command);
    let addr = server.listening_addr();
    let limits = std::fs::read_to_string(format!("/proc/{}/limits", server.child.id())).unwrap();
    let max_file = limits
        .lines()
        .find(|line| line.starts_with("Max file size"))
        .and_then(|line| line.split_whitespace().nth(3)?.parse::<u64>().ok())
        .expect("a file-size limit");
    assert!((512 << 10..=1 << 20).contains(&max_file), "{max_file}");

    let mut conn = Conn::connect(addr);
    let (id, key) = enroll(&mut conn, "limited");
    let v1 = data(100_000, 1);
    store(&mut conn, id, &key, "f.bin", &v1);
    confirm(&mut conn, id, "f.bin");
    // Beyond the limit, as a new file and as a replacement.
    for label in ["big.bin", "f.bin"] {
        let big = data(3_000_000, 2);
        let reply = upload(&mut conn, id, &key, label, &big, 1_000_000);
        assert_eq!(reply, Response::ServerError, "{label}");
    }
    let logged = server
        .wait_for("File too large")
        .expect("the OS error is logged");
    assert!(
        logged.contains("reply=1607")
            && logged.contains("upload abandoned: cannot write the file: File too large"),
        "{logged}"
    );
    assert_eq!(
        file_names(&data_dir, id),
        ["f.bin"],
        "no temporary file is left"
    );
    assert_eq!(stored(&data_dir, id, "f.bin"), Some((v1, true)));
    // The server goes on, on the same connection.
    let v2 = data(200_000, 3);
    store(&mut conn, id, &key, "g.bin", &v2);
    assert!(server.terminate().success());
}

/// A file still being moved into place when the shutdown's grace period ends keeps the
/// data folder locked until that job is done: a second server taking the folder meanwhile
/// would clean it up (remove the file, or the backup an undo needs) under the job.
#[test]
fn the_data_folder_stays_locked_until_a_cut_storage_job_is_done() {
    use std::time::{Duration, Instant};
    init_logging();
    let dir = tempfile::tempdir().unwrap();
    let mut config = config_for(dir.path());
    config.shutdown_grace = Duration::from_millis(200);
    let switches = Arc::new(Faults::default());
    // The standard storage's lock, in front of stores with fault switches.
    let Storage { meta, blobs, lock } = Storage::open(&config).unwrap();
    drop((meta, blobs));
    let mut storage = faulty_local_storage(dir.path(), &switches);
    storage.lock = lock;
    assert!(
        lock_is_held(&config),
        "the running server's storage holds the lock"
    );
    let server = RunningServer::start_with(config.clone(), storage).unwrap();
    let mut conn = Conn::connect(server.addr());
    let (id, key) = enroll(&mut conn, "cut");
    let plain = data(5000, 4);
    let cipher = encrypt(&key, &plain);
    switches.persist_gate.hold_next();
    for packet in packets(
        id,
        "cut.bin",
        plain.len(),
        &cipher,
        5000,
        ContentSize::Whole,
    ) {
        conn.send_raw(&packet);
    }
    assert!(
        switches.persist_gate.wait_arrived(Duration::from_secs(20)),
        "the last packet's job moves the file into place"
    );

    // The grace period ends with the job still held; the server stops without it.
    server.stop();
    assert!(
        lock_is_held(&config),
        "a storage job of the stopped server still runs: the folder stays locked"
    );

    switches.persist_gate.open();
    let deadline = Instant::now() + Duration::from_secs(20);
    while lock_is_held(&config) {
        assert!(
            Instant::now() < deadline,
            "the lock is released once the job is done"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Whether opening the standard storage on `config`'s data folder is refused because
/// another server holds it.
fn lock_is_held(config: &sfc_server::ServerConfig) -> bool {
    match Storage::open(config) {
        Ok(_) => false,
        Err(error) => {
            let text = format!("{error:#}");
            assert!(text.contains("sfc-server.lock"), "{text}");
            true
        }
    }
}

/// A file whose removal fails after its row went (902) is removed by the server's
/// housekeeping once the store works again, not left until a restart.
#[test]
fn a_failed_removal_is_retried_by_the_running_server() {
    let (dir, server, switches) = start();
    let mut conn = Conn::connect(server.addr());
    let (id, key) = enroll(&mut conn, "retried");
    store(&mut conn, id, &key, "f.bin", &data(10_000, 1));
    switches.remove_fails.store(true, Ordering::SeqCst);
    assert_eq!(
        conn.call(&file_name_request(id, 902, "f.bin")),
        Response::Ack {
            client_id: Some(id)
        }
    );
    assert_eq!(entries(dir.path(), id), 1, "the removal failed");
    switches.remove_fails.store(false, Ordering::SeqCst);
    assert!(
        eventually(Duration::from_secs(20), || entries(dir.path(), id) == 0),
        "never retried"
    );
    server.stop();
}
