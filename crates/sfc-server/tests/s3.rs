//! The S3 blob store (`--store s3://…`) against a real S3 server: SeaweedFS started by
//! the tests (tests/common/s3.rs). The end-to-end flows run on it too, with
//! `SFC_TEST_STORE=s3` (see .ci/run).
//!
//! Without SeaweedFS these tests print how to get it and pass, except in CI, where they
//! fail.
#![cfg(test)]

mod common;

use common::s3::{block_on, shared, Weed, BUCKET};
use common::s3_proxy::AnswerLosingProxy;
use common::*;
use object_store::multipart::MultipartStore;
use object_store::path::Path as Key;
use sfc_proto::{ClientId, Response};
use sfc_server::config::Store;
use sfc_server::{recover, BlobStore, FileRecord, S3BlobStore};
use std::time::{Duration, Instant};

const CLIENT: ClientId = ClientId([0x5a; 16]);

fn hex() -> String {
    CLIENT.to_hex()
}

/// A store under a fresh prefix of the shared server, and that prefix.
fn fresh_store(weed: &Weed, grace: Duration) -> (S3BlobStore, String) {
    let Store::S3(location) = weed.fresh() else {
        unreachable!()
    };
    let store = S3BlobStore::open(&location, grace).unwrap();
    (store, location.prefix)
}

fn put(store: &S3BlobStore, name: &str, content: &[u8]) -> String {
    let mut temp = store.create_temp(&CLIENT, name).unwrap();
    temp.write_all(content).unwrap();
    temp.persist().unwrap()
}

#[test]
fn small_and_multipart_objects_persist_replace_and_undo() {
    let Some(weed) = shared("small_and_multipart_objects_persist_replace_and_undo") else {
        return;
    };
    let (store, prefix) = fresh_store(weed, Duration::from_secs(600));
    let objects = || weed.objects(&prefix);
    let small = data(1000, 1);
    // Three parts of 8 MiB, 8 MiB and the rest, written in odd-sized pieces.
    let large = data(17 << 20, 2);

    let rel = put(&store, "small.bin", &small);
    assert_eq!(rel, format!("files/{}/small.bin", hex()));
    let mut temp = store.create_temp(&CLIENT, "large.bin").unwrap();
    for piece in large.chunks(1_000_003) {
        temp.write_all(piece).unwrap();
    }
    let large_rel = temp.persist().unwrap();
    assert_eq!(
        objects(),
        [
            (large_rel.clone(), large.clone()),
            (rel.clone(), small.clone())
        ],
        "both complete, no marker or temporary object left"
    );
    assert_eq!(store.size(&large_rel).unwrap(), large.len() as u64);

    // A replacement undone: the earlier version is back, nothing else left.
    let mut temp = store.create_temp(&CLIENT, "large.bin").unwrap();
    temp.write_all(&small).unwrap();
    let persisted = temp.persist_undoable().unwrap();
    assert_eq!(persisted.path(), large_rel);
    assert_eq!(objects().len(), 3, "the replaced version is kept meanwhile");
    persisted.undo().unwrap();
    assert_eq!(
        objects(),
        [
            (large_rel.clone(), large.clone()),
            (rel.clone(), small.clone())
        ]
    );

    // A multipart replacement kept: the new version stays and the backup goes.
    let mut temp = store.create_temp(&CLIENT, "small.bin").unwrap();
    temp.write_all(&large).unwrap();
    temp.persist_undoable().unwrap().keep().unwrap();
    assert_eq!(
        objects(),
        [
            (large_rel.clone(), large.clone()),
            (rel.clone(), large.clone())
        ]
    );

    // A new file undone: gone. A dropped upload: nothing at all.
    let mut temp = store.create_temp(&CLIENT, "new.bin").unwrap();
    temp.write_all(&small).unwrap();
    temp.persist_undoable().unwrap().undo().unwrap();
    let mut dropped = store.create_temp(&CLIENT, "dropped.bin").unwrap();
    dropped.write_all(&large).unwrap();
    drop(dropped);
    assert!(eventually(Duration::from_secs(10), || objects().len() == 2));

    store.remove(&rel).unwrap();
    store.remove(&rel).unwrap();
    assert_eq!(objects(), [(large_rel, large)]);
    for outside in [
        "files/../../x",
        "/srv/other/theirs",
        "uploads/x/y/z",
        "files/x/y",
    ] {
        assert!(store.remove(outside).is_err(), "{outside}");
    }
}

/// A store under a fresh prefix whose requests go through an [`AnswerLosingProxy`] in
/// front of the shared server; the proxy, the store and the prefix.
fn store_behind_proxy(weed: &Weed) -> (AnswerLosingProxy, S3BlobStore, String) {
    let Store::S3(mut location) = weed.fresh() else {
        unreachable!()
    };
    let proxy = AnswerLosingProxy::start(&weed.endpoint());
    for (key, value) in &mut location.settings {
        if key == "aws_endpoint" {
            *value = proxy.endpoint();
        }
    }
    let store = S3BlobStore::open(&location, Duration::from_secs(600)).unwrap();
    (proxy, store, location.prefix)
}

#[test]
fn a_replacement_whose_answer_is_lost_puts_the_earlier_version_back() {
    let Some(weed) = shared("a_replacement_whose_answer_is_lost_puts_the_earlier_version_back")
    else {
        return;
    };
    let (proxy, store, prefix) = store_behind_proxy(weed);
    let earlier = data(1000, 11);
    let rel = put(&store, "f.bin", &earlier);

    // The new version's PUT (small: no multipart) lands, but its answer never comes,
    // however often the client retries.
    proxy.lose_answers_to_plain_puts(&format!("/{BUCKET}/{prefix}/{rel}"));
    let newer = data(1500, 12);
    let mut temp = store.create_temp(&CLIENT, "f.bin").unwrap();
    temp.write_all(&newer).unwrap();
    let started = Instant::now();
    let result = temp.persist_undoable();
    proxy.disarm();
    eprintln!("persist_undoable returned after {:?}", started.elapsed());
    let Err(error) = result else {
        panic!("persisted although every answer was lost: {result:?}")
    };
    eprintln!("its error: {error}");
    assert!(proxy.answers_lost() >= 1, "no answer was lost");
    assert_eq!(proxy.problems(), Vec::<String>::new());

    // Read straight from SeaweedFS: the row still describes the earlier version.
    let objects = weed.objects(&prefix);
    let keys: Vec<&str> = objects.iter().map(|(key, _)| key.as_str()).collect();
    assert_eq!(keys, [rel.as_str()], "only the object, no backup left");
    let held = &objects[0].1;
    assert!(
        *held == earlier,
        "the key holds {}, not the earlier version its row describes",
        if *held == newer {
            "the new version"
        } else {
            "something else"
        }
    );
}

/// The same for a multipart upload: its completion lands but the answer is lost. The
/// earlier version is put back, and neither the backup nor the upload's marker is left.
/// The upload is then aborted in the background; it completed, so S3 answers that abort
/// with `NoSuchUpload` (the proxy does, as SeaweedFS accepts it): nothing is left to
/// abort, and the marker goes too.
#[test]
fn a_multipart_replacement_whose_completion_answer_is_lost_puts_the_earlier_version_back() {
    let Some(weed) = shared("a_multipart_replacement_whose_completion_answer_is_lost") else {
        return;
    };
    let (proxy, store, prefix) = store_behind_proxy(weed);
    let earlier = data(1000, 13);
    let rel = put(&store, "m.bin", &earlier);

    proxy.lose_answers_to_completions(&format!("/{BUCKET}/{prefix}/{rel}"));
    proxy.answer_aborts_with_no_such_upload();
    let newer = data(17 << 20, 14);
    let mut temp = store.create_temp(&CLIENT, "m.bin").unwrap();
    for piece in newer.chunks(1 << 20) {
        temp.write_all(piece).unwrap();
    }
    let result = temp.persist_undoable();
    proxy.disarm();
    assert!(result.is_err(), "persisted although every answer was lost");
    assert!(proxy.answers_lost() >= 1, "no answer was lost");
    assert_eq!(proxy.problems(), Vec::<String>::new());

    // The upload's clean-up runs in the background: wait for it.
    let deadline = Instant::now() + Duration::from_secs(20);
    let objects = loop {
        let objects = weed.objects(&prefix);
        if objects.len() == 1 || Instant::now() > deadline {
            break objects;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let keys: Vec<&str> = objects.iter().map(|(key, _)| key.as_str()).collect();
    assert_eq!(keys, [rel.as_str()], "no backup, no marker left");
    assert!(objects[0].1 == earlier, "the earlier version is back");
    assert_eq!(
        proxy.aborts_answered(),
        1,
        "the upload's abort found nothing"
    );
}

/// A live multipart upload whose client pauses for longer than the grace period, with no
/// content written meanwhile (small packets that do not fill a part), keeps its marker
/// young: another server's start-up recovery leaves it alone, and it completes.
#[test]
fn a_paused_upload_keeps_its_marker_young() {
    let Some(weed) = shared("a_paused_upload_keeps_its_marker_young") else {
        return;
    };
    let grace = Duration::from_secs(2);
    let Store::S3(location) = weed.fresh() else {
        unreachable!()
    };
    let store = S3BlobStore::open(&location, grace).unwrap();
    let other_server = S3BlobStore::open(&location, grace).unwrap();
    let part = data((8 << 20) + 1, 4);
    let mut paused = store.create_temp(&CLIENT, "paused.bin").unwrap();
    paused.write_all(&part).unwrap();
    // Markers are abandoned after twice the grace period.
    std::thread::sleep(grace * 2 + Duration::from_millis(1500));
    let recovered = recover(&|| Ok(Vec::new()), 1, &other_server).unwrap();
    assert_eq!(
        recovered.stale_temps, 0,
        "the live upload was taken for abandoned"
    );
    paused.write_all(b"end").unwrap();
    let rel = paused.persist().unwrap();
    let mut expected = part;
    expected.extend_from_slice(b"end");
    let content = weed
        .objects(&location.prefix)
        .into_iter()
        .find(|(key, _)| *key == rel)
        .map(|(_, content)| content);
    assert!(content == Some(expected), "the completed object differs");
}

#[test]
fn recovery_spares_young_work_and_clears_old_leftovers() {
    let Some(weed) = shared("recovery_spares_young_work_and_clears_old_leftovers") else {
        return;
    };
    let grace = Duration::from_secs(2);
    let Store::S3(location) = weed.fresh() else {
        unreachable!()
    };
    let store = S3BlobStore::open(&location, grace).unwrap();
    let prefix = location.prefix.clone();
    let part = data((8 << 20) + 1, 3);

    // Old: a recorded file, an orphan, a backup of a crash between persist and commit,
    // and a multipart upload whose server died (its temp never dropped; the crashed
    // server's store is halted, so nothing keeps the upload's marker young).
    let kept = put(&store, "kept.bin", b"recorded");
    let old_orphan = put(&store, "old-orphan.bin", b"never acknowledged");
    let crashed = S3BlobStore::open(&location, grace).unwrap();
    let mut replacement = crashed.create_temp(&CLIENT, "kept.bin").unwrap();
    replacement.write_all(b"recorded").unwrap();
    std::mem::forget(replacement.persist_undoable().unwrap());
    let mut abandoned = crashed.create_temp(&CLIENT, "abandoned.bin").unwrap();
    abandoned.write_all(&part).unwrap();
    std::mem::forget(abandoned);
    crashed.halt();
    let markers: Vec<_> = weed
        .objects(&prefix)
        .into_iter()
        .filter(|(key, _)| key.starts_with("uploads/"))
        .collect();
    assert_eq!(markers.len(), 1, "{markers:?}");
    let upload_id = String::from_utf8(markers[0].1.clone()).unwrap();

    // Markers are abandoned after twice the grace period, objects after one.
    std::thread::sleep(grace * 2 + Duration::from_millis(1500));

    // Young: an orphan that may be another server's upload about to be recorded, and a
    // live multipart upload.
    let young_orphan = put(&store, "young-orphan.bin", b"another node's");
    let mut live = store.create_temp(&CLIENT, "live.bin").unwrap();
    live.write_all(&part).unwrap();

    let rows = [FileRecord {
        client_id: CLIENT,
        file_name: "kept.bin".into(),
        path: kept.clone(),
        verified: true,
    }];
    let recovered = recover(&|| Ok(rows.to_vec()), 1, &store).unwrap();
    assert_eq!(
        recovered.stale_temps, 2,
        "the abandoned upload and the backup"
    );
    assert_eq!(recovered.orphans, [old_orphan]);
    let left: Vec<String> = weed
        .objects(&prefix)
        .into_iter()
        .map(|(key, _)| key)
        .collect();
    assert_eq!(left.len(), 3, "{left:?}");
    assert!(
        left.contains(&kept) && left.contains(&young_orphan),
        "{left:?}"
    );
    assert!(
        left.iter().any(|key| key.starts_with("uploads/")),
        "live marker"
    );

    // The abandoned upload was aborted: it takes no more parts.
    let client = weed.client();
    let key = Key::from(format!("{prefix}/files/{}/abandoned.bin", hex()));
    let late = block_on(client.put_part(&key, &upload_id, 1, b"late".to_vec().into()));
    assert!(late.is_err(), "the upload still takes parts");

    // The live upload finishes untouched.
    live.write_all(b"end").unwrap();
    let live_rel = live.persist().unwrap();
    let mut expected = part.clone();
    expected.extend_from_slice(b"end");
    let content = weed
        .objects(&prefix)
        .into_iter()
        .find(|(key, _)| *key == live_rel)
        .unwrap()
        .1;
    assert!(content == expected);
}

#[test]
fn a_stopped_object_store_gets_1607_records_nothing_and_service_resumes() {
    if !common::s3::available(
        "a_stopped_object_store_gets_1607_records_nothing_and_service_resumes",
    ) {
        return;
    }
    let mut weed = Weed::start();
    let store = Store::S3(weed.location("stop"));
    let server =
        TestServer::start_on_store(tempfile::tempdir().unwrap(), test_database(), store, |_| {});
    let mut conn = server.connect();
    let (id, key) = enroll(&mut conn, "stopper");
    let before = data(5000, 4);
    assert_received(
        &upload(&mut conn, id, &key, "before.bin", &before, 1000),
        id,
        "before.bin",
        &before,
    );

    weed.stop();
    let during = data(3000, 5);
    let reply = upload(&mut conn, id, &key, "during.bin", &during, 1000);
    assert!(matches!(reply, Response::ServerError), "S3 down: {reply:?}");
    let files = server.db().files().unwrap();
    assert_eq!(files.len(), 1, "nothing recorded: {files:?}");

    weed.resume();
    assert_received(
        &upload(&mut conn, id, &key, "during.bin", &during, 1000),
        id,
        "during.bin",
        &during,
    );
    assert_eq!(server.stored(id, "during.bin").unwrap(), during);
    assert_eq!(server.stored(id, "before.bin").unwrap(), before);
    assert_eq!(server.db().files().unwrap().len(), 2);

    // Stopped for good, weed leaves nothing behind in /tmp (the tests stay hermetic).
    let sockets = weed.tmp_sockets();
    let made: Vec<_> = sockets.iter().filter(|socket| socket.exists()).collect();
    assert!(
        made.len() >= 2,
        "weed makes its gRPC sockets in /tmp: {made:?}"
    );
    drop(server);
    drop(weed);
    let left: Vec<_> = sockets.iter().filter(|socket| socket.exists()).collect();
    assert!(left.is_empty(), "left behind: {left:?}");
}

/// Peak resident memory of a process in KiB (`VmHWM`).
fn peak_rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmHWM:"))
        .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

#[test]
fn a_64_mib_upload_keeps_the_server_s_memory_bounded() {
    let Some(weed) = shared("a_64_mib_upload_keeps_the_server_s_memory_bounded") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let mut command = std::process::Command::new(process::SERVER_BIN);
    command
        .args(["--data-dir", dir.path().to_str().unwrap()])
        .args(["--bind", "127.0.0.1:0", "--store", "s3://sfc-test/memory"])
        .env("AWS_ENDPOINT_URL", weed.endpoint())
        .env("AWS_ALLOW_HTTP", "true")
        .env("AWS_REGION", "us-east-1")
        .env("AWS_ACCESS_KEY_ID", common::s3::ACCESS_KEY)
        .env("AWS_SECRET_ACCESS_KEY", common::s3::SECRET_KEY);
    let mut server = process::ServerProcess::spawn(command);
    let addr = server.listening_addr();
    let pid = server.child.id();
    let mut conn = Conn::connect(addr);
    let (id, key) = enroll(&mut conn, "big");
    // Warm up every path (a small multipart upload) before the baseline.
    let warm = data(9 << 20, 6);
    assert_received(
        &upload(&mut conn, id, &key, "warm.bin", &warm, 1 << 20),
        id,
        "warm.bin",
        &warm,
    );
    let baseline = peak_rss_kib(pid);
    let plain = data(64 << 20, 7);
    assert_received(
        &upload(&mut conn, id, &key, "big.bin", &plain, 1 << 20),
        id,
        "big.bin",
        &plain,
    );
    let growth_mib = peak_rss_kib(pid).saturating_sub(baseline) / 1024;
    eprintln!(
        "peak RSS {} MiB before, grew {growth_mib} MiB on a 64 MiB upload",
        baseline / 1024
    );
    // Two 8 MiB parts at most, plus the session's decrypted batches and the HTTP
    // client's buffers; a store holding the file would grow by 64 MiB or more.
    assert!(
        growth_mib < 32,
        "the server's peak memory grew {growth_mib} MiB on a 64 MiB upload"
    );
    let Store::S3(mut location) = weed.fresh() else {
        unreachable!()
    };
    location.prefix = "memory".into();
    let stored = common::s3::read(&location, &format!("files/{}/big.bin", id.to_hex())).unwrap();
    assert!(stored == plain, "stored intact");
}

#[test]
fn a_server_starting_removes_old_orphan_objects_and_keeps_young_ones() {
    let Some(weed) = shared("a_server_starting_removes_old_orphan_objects_and_keeps_young_ones")
    else {
        return;
    };
    let store = weed.fresh();
    let Store::S3(location) = &store else {
        unreachable!()
    };
    let prefix = location.prefix.clone();
    // The upload time-out is the grace period of start-up recovery.
    let mut server = TestServer::start_on_store(
        tempfile::tempdir().unwrap(),
        test_database(),
        store.clone(),
        // Long enough that the young object stays young while the server restarts on a
        // loaded machine; short enough to wait out for the old one.
        |config| config.upload_timeout = Duration::from_secs(4),
    );
    let mut conn = server.connect();
    let (id, key) = enroll(&mut conn, "recovering");
    let plain = data(4000, 8);
    assert_received(
        &upload(&mut conn, id, &key, "kept.bin", &plain, 1000),
        id,
        "kept.bin",
        &plain,
    );
    drop(conn);
    server.stop();
    // What a crashed node leaves: a complete object whose row was never committed.
    let blobs = S3BlobStore::open(location, Duration::from_secs(4)).unwrap();
    let mut orphan = blobs.create_temp(&id, "old-orphan.bin").unwrap();
    orphan.write_all(b"never acknowledged").unwrap();
    orphan.persist().unwrap();
    std::thread::sleep(Duration::from_millis(4500));
    // Another live node's object whose row is about to be committed.
    let mut young = blobs.create_temp(&id, "young.bin").unwrap();
    young.write_all(b"another node's").unwrap();
    young.persist().unwrap();

    server.restart();
    let names = server.stored_names(id);
    assert_eq!(names, ["kept.bin", "young.bin"], "under {prefix}");
    assert_eq!(server.stored(id, "kept.bin").unwrap(), plain);
}

#[test]
fn the_set_up_id_is_one_object_beside_the_client_folders() {
    let Some(weed) = shared("the_set_up_id_is_one_object_beside_the_client_folders") else {
        return;
    };
    let (store, prefix) = fresh_store(weed, Duration::from_secs(600));
    sfc_server::testing::check_blob_setup_id(&store);
    assert_eq!(
        weed.objects(&prefix),
        [("sfc-setup-id".to_owned(), b"first-1\n".to_vec())]
    );
}
