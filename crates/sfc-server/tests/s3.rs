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
use object_store::ObjectStore;
use sfc_proto::{ClientId, Response};
use sfc_server::config::{Database, Store};
use sfc_server::testing::{
    disk_name, split_version, unversioned, version_millis, versioned, Faults, FaultyBlobs,
};
use sfc_server::{recover, BlobStore, FileRecord, MetaStore, S3BlobStore};
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
    put_for(store, &CLIENT, name, content)
}

/// Starts an upload of `content` (over one part: a multipart upload, its marker written)
/// as `name` for `client` on `store`, and leaves it as a crash would: never finished,
/// never dropped.
fn abandon_multipart(store: &S3BlobStore, client: &ClientId, name: &str, content: &[u8]) {
    let mut upload = store.create_temp(client, name).unwrap();
    upload.write_all(content).unwrap();
    std::mem::forget(upload);
}

fn put_for(store: &S3BlobStore, client: &ClientId, name: &str, content: &[u8]) -> String {
    let mut temp = store.create_temp(client, name).unwrap();
    temp.write_all(content).unwrap();
    temp.persist().unwrap()
}

/// Asserts that `rel` is a version of the client's file stored as `disk_name`, dated
/// (recovery tells replaced versions by their dates) within the last ten minutes.
fn assert_version_of(rel: &str, disk_name: &str) {
    let folder = format!("files/{}/", hex());
    let name = rel.strip_prefix(&folder).unwrap_or_else(|| panic!("{rel}"));
    assert_ne!(name, disk_name, "not a version of its own");
    assert_eq!(unversioned(name), disk_name, "{rel}");
    let (_, version) = split_version(name).unwrap();
    let made = version_millis(version).unwrap_or_else(|| panic!("undated: {rel}"));
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;
    assert!(
        made <= now && now - made < 600_000,
        "{rel} made at {made}, now {now}"
    );
}

#[test]
fn small_and_multipart_objects_persist_at_keys_of_their_own_and_undo() {
    let Some(weed) = shared("small_and_multipart_objects_persist_at_keys_of_their_own") else {
        return;
    };
    let (store, prefix) = fresh_store(weed, Duration::from_secs(600));
    let objects = || weed.objects(&prefix);
    let small = data(1000, 1);
    // Three parts of 8 MiB, 8 MiB and the rest, written in odd-sized pieces.
    let large = data(17 << 20, 2);

    let rel = put(&store, "small.bin", &small);
    assert_version_of(&rel, "small.bin");
    let mut temp = store.create_temp(&CLIENT, "large.bin").unwrap();
    assert_version_of(temp.path(), "large.bin");
    for piece in large.chunks(1_000_003) {
        temp.write_all(piece).unwrap();
    }
    let promised = temp.path().to_owned();
    let large_rel = temp.persist().unwrap();
    assert_eq!(large_rel, promised, "stored where it said it would be");
    assert_eq!(
        objects(),
        [
            (large_rel.clone(), large.clone()),
            (rel.clone(), small.clone())
        ],
        "both complete, no marker or temporary object left"
    );
    assert_eq!(store.size(&large_rel).unwrap(), large.len() as u64);

    // Another version of a file goes to a key of its own: the stored one is never
    // touched. Undone, the new version is gone.
    let mut temp = store.create_temp(&CLIENT, "large.bin").unwrap();
    temp.write_all(&small).unwrap();
    let persisted = temp.persist_undoable().unwrap();
    assert_version_of(persisted.path(), "large.bin");
    assert_ne!(persisted.path(), large_rel);
    assert_eq!(objects().len(), 3);
    persisted.undo().unwrap();
    assert_eq!(
        objects(),
        [
            (large_rel.clone(), large.clone()),
            (rel.clone(), small.clone())
        ]
    );

    // A multipart version kept: both versions stay (removing the one its row named
    // before is the caller's step, after the commit), and its marker goes.
    let mut temp = store.create_temp(&CLIENT, "small.bin").unwrap();
    temp.write_all(&large).unwrap();
    let persisted = temp.persist_undoable().unwrap();
    let newer = persisted.path().to_owned();
    persisted.keep().unwrap();
    let mut expected = vec![
        (large_rel.clone(), large.clone()),
        (rel.clone(), small.clone()),
        (newer.clone(), large.clone()),
    ];
    expected.sort();
    assert_eq!(objects(), expected);
    store.remove(&rel).unwrap();

    // A new file undone: gone. A dropped upload: nothing at all.
    let mut temp = store.create_temp(&CLIENT, "new.bin").unwrap();
    temp.write_all(&small).unwrap();
    temp.persist_undoable().unwrap().undo().unwrap();
    let mut dropped = store.create_temp(&CLIENT, "dropped.bin").unwrap();
    dropped.write_all(&large).unwrap();
    drop(dropped);
    assert!(eventually(Duration::from_secs(10), || objects().len() == 2));

    store.remove(&newer).unwrap();
    store.remove(&newer).unwrap();
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

/// The longest labels, small and multipart: each version's key ends in a segment of at
/// most 255 bytes, as SeaweedFS requires (it keeps objects as files; a longer segment
/// was `KeyTooLongError`, or a failed completion for a multipart upload), and every
/// version of a label shares its disk name.
#[test]
fn objects_of_the_longest_labels_are_stored() {
    let Some(weed) = shared("objects_of_the_longest_labels_are_stored") else {
        return;
    };
    let (store, prefix) = fresh_store(weed, Duration::from_secs(600));
    let small = data(1000, 3);
    let large = data(9 << 20, 4);
    for (label, content) in [("x".repeat(254), &small), ("X".repeat(80), &large)] {
        let name = disk_name(&label);
        let rel = put(&store, &name, content);
        let stored = rel.rsplit('/').next().unwrap();
        assert!(stored.len() <= 255, "{stored}");
        assert_eq!(unversioned(stored), unversioned(&versioned(&name, 0)));
        assert_eq!(store.size(&rel).unwrap(), content.len() as u64);
    }
    assert_eq!(weed.objects(&prefix).len(), 2);
}

/// A store under a fresh prefix whose requests go through an [`AnswerLosingProxy`] in
/// front of the shared server; the proxy, the store and the prefix.
fn store_behind_proxy(weed: &Weed) -> (AnswerLosingProxy, S3BlobStore, String) {
    let (proxy, location) = behind_proxy(weed);
    let store = S3BlobStore::open(&location, Duration::from_secs(600)).unwrap();
    (proxy, store, location.prefix)
}

/// A fresh prefix on the shared server reached through an [`AnswerLosingProxy`].
fn behind_proxy(weed: &Weed) -> (AnswerLosingProxy, sfc_server::config::S3Location) {
    let Store::S3(mut location) = weed.fresh() else {
        unreachable!()
    };
    let proxy = AnswerLosingProxy::start(&weed.endpoint());
    for (key, value) in &mut location.settings {
        if key == "aws_endpoint" {
            *value = proxy.endpoint();
        }
    }
    (proxy, location)
}

/// The URL path that every version of the client's file `disk_name` starts with.
fn versions_of(prefix: &str, disk_name: &str) -> String {
    format!("/{BUCKET}/{prefix}/files/{}/{disk_name}~v", hex())
}

#[test]
fn a_new_version_whose_answer_is_lost_is_deleted_and_the_stored_one_kept() {
    let Some(weed) = shared("a_new_version_whose_answer_is_lost_is_deleted") else {
        return;
    };
    let (proxy, store, prefix) = store_behind_proxy(weed);
    let earlier = data(1000, 11);
    let rel = put(&store, "f.bin", &earlier);

    // The new version's PUT (small: no multipart) lands, but its answer never comes,
    // however often the client retries.
    proxy.lose_answers_to_plain_puts(&versions_of(&prefix, "f.bin"));
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

    // Read straight from SeaweedFS: the earlier version, untouched, and nothing else
    // (the new version landed, and was deleted).
    assert_eq!(weed.objects(&prefix), [(rel, earlier)]);
}

/// The same for a multipart upload: its completion lands but the answer is lost. The
/// new object is deleted, the stored one untouched, and the upload's marker goes too.
/// The upload is then aborted in the background; it completed, so S3 answers that abort
/// with `NoSuchUpload` (the proxy does, as SeaweedFS accepts it): nothing is left to
/// abort.
#[test]
fn a_multipart_version_whose_completion_answer_is_lost_is_deleted_and_the_stored_one_kept() {
    let Some(weed) = shared("a_multipart_version_whose_completion_answer_is_lost") else {
        return;
    };
    let (proxy, store, prefix) = store_behind_proxy(weed);
    let earlier = data(1000, 13);
    let rel = put(&store, "m.bin", &earlier);

    proxy.lose_answers_to_completions(&versions_of(&prefix, "m.bin"));
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
    assert_eq!(keys, [rel.as_str()], "no new object, no marker left");
    assert!(objects[0].1 == earlier, "the stored version is untouched");
    assert_eq!(proxy.answered(), 1, "the upload's abort found nothing");
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

/// A multipart upload dropped as the server stops (an upload the shutdown cut) is
/// aborted, its marker deleted, before the store goes: closing waits for that
/// background work, which the runtime's shutdown used to cut off, leaving the parts
/// stored (and, with SQLite, no sweep to remove them while the server runs).
#[test]
fn uploads_cut_by_the_shutdown_are_aborted_before_the_store_closes() {
    let Some(weed) = shared("uploads_cut_by_the_shutdown_are_aborted_before_the_store_closes")
    else {
        return;
    };
    let Store::S3(location) = weed.fresh() else {
        unreachable!()
    };
    let store = S3BlobStore::open(&location, Duration::from_secs(600)).unwrap();
    let mut cut = store.create_temp(&CLIENT, "cut.bin").unwrap();
    cut.write_all(&data((8 << 20) + 1, 6)).unwrap();
    let markers = || -> Vec<String> {
        weed.keys(&location.prefix)
            .into_iter()
            .filter(|key| key.starts_with("uploads/"))
            .collect()
    };
    assert_eq!(
        markers().len(),
        1,
        "a multipart upload under way has its marker"
    );
    drop(cut);
    assert!(
        store.close(Duration::from_secs(30)),
        "the abort did not finish"
    );
    drop(store);
    assert_eq!(markers(), Vec::<String>::new());
    // Nothing is left of the upload: no object, and its parts are gone with the abort.
    assert_eq!(weed.keys(&location.prefix), Vec::<String>::new());
}

/// The same through the server binary: SIGTERM in the middle of a multipart upload
/// aborts it before the process exits (the session's close waits for the store; the
/// process used to exit with the abort cut off, leaving the parts and the marker).
#[test]
fn a_graceful_stop_aborts_the_upload_it_cuts() {
    let Some(weed) = shared("a_graceful_stop_aborts_the_upload_it_cuts") else {
        return;
    };
    let prefix = format!("stop{}", std::process::id());
    let markers = || -> Vec<String> {
        weed.keys(&prefix)
            .into_iter()
            .filter(|key| key.starts_with("uploads/"))
            .collect()
    };
    let dir = tempfile::tempdir().unwrap();
    let mut server = s3_server_process(weed, dir.path(), &prefix);
    let mut conn = Conn::connect(server.listening_addr());
    let (id, key) = enroll(&mut conn, "stopped");
    let plain = data(12 << 20, 7);
    let cipher = encrypt(&key, &plain);
    let sent = packets(
        id,
        "cut.bin",
        plain.len(),
        &cipher,
        1 << 20,
        ContentSize::PerPacket,
    );
    for packet in &sent[..10] {
        conn.send_raw(packet);
    }
    assert!(
        eventually(Duration::from_secs(20), || markers().len() == 1),
        "the multipart upload did not start"
    );
    assert!(server.terminate().success());
    assert_eq!(markers(), Vec::<String>::new());
}

/// An abandoned multipart upload whose abort fails keeps its marker, the upload's only
/// record (uploads cannot be listed), so that a later start-up aborts it; a marker
/// another server starting at the same time removed first is left to it, and the rest of
/// this server's recovery goes on.
#[test]
fn an_abandoned_upload_is_forgotten_only_once_aborted() {
    let Some(weed) = shared("an_abandoned_upload_is_forgotten_only_once_aborted") else {
        return;
    };
    let grace = Duration::from_secs(2);
    let (proxy, location) = behind_proxy(weed);
    let prefix = location.prefix.clone();
    let crashed = S3BlobStore::open(&location, grace).unwrap();
    abandon_multipart(&crashed, &CLIENT, "abandoned.bin", &data((8 << 20) + 1, 5));
    let orphan = put(&crashed, "orphan.bin", b"never acknowledged");
    crashed.halt();
    let marker = || {
        weed.keys(&prefix)
            .into_iter()
            .find(|key| key.starts_with("uploads/"))
    };
    assert!(marker().is_some());
    std::thread::sleep(grace * 2 + Duration::from_millis(1500));
    let starting = S3BlobStore::open(&location, grace).unwrap();

    proxy.deny_aborts();
    let recovered = recover(&|| Ok(Vec::new()), 1, &starting).unwrap();
    assert_eq!(
        recovered.stale_temps, 0,
        "an upload not aborted was counted"
    );
    assert!(marker().is_some(), "the marker went with its abort refused");
    assert_eq!(proxy.answered(), 1);
    assert_eq!(recovered.orphans, [orphan], "the rest of recovery went on");

    // Another server took the marker between this one's listing and its read: not an
    // error that stops this one's recovery.
    proxy.stop_answering();
    proxy.answer_reads_with_not_found(&format!("/{BUCKET}/{prefix}/uploads/"));
    let recovered = recover(&|| Ok(Vec::new()), 1, &starting).unwrap();
    assert_eq!(recovered.stale_temps, 0);
    assert_eq!(proxy.answered(), 2);

    // A marker that cannot be read (here refused) is left for a later pass; the rest of
    // recovery goes on (one such marker used to end the pass, and a start-up, in error).
    let late_orphan = put(&starting, "late-orphan.bin", b"never acknowledged either");
    std::thread::sleep(grace + Duration::from_millis(500));
    proxy.stop_answering();
    proxy.deny_reads(&format!("/{BUCKET}/{prefix}/uploads/"));
    let recovered = recover(&|| Ok(Vec::new()), 1, &starting).unwrap();
    assert_eq!(recovered.stale_temps, 0);
    assert_eq!(proxy.answered(), 3);
    assert!(marker().is_some());
    assert_eq!(
        recovered.orphans,
        [late_orphan],
        "the rest of recovery went on"
    );

    proxy.stop_answering();
    let recovered = recover(&|| Ok(Vec::new()), 1, &starting).unwrap();
    assert_eq!(recovered.stale_temps, 1);
    assert_eq!(marker(), None);
}

/// A marker old in the listing but rewritten before recovery reads it (its upload came
/// back to life, or another server's keeper wrote it) is not taken for abandoned: the
/// upload is not aborted and the marker stays.
#[test]
fn a_marker_rewritten_after_the_listing_is_not_taken_for_abandoned() {
    let Some(weed) = shared("a_marker_rewritten_after_the_listing_is_not_taken_for_abandoned")
    else {
        return;
    };
    let grace = Duration::from_secs(2);
    let (proxy, location) = behind_proxy(weed);
    let prefix = location.prefix.clone();
    let paused = S3BlobStore::open(&location, grace).unwrap();
    abandon_multipart(&paused, &CLIENT, "revived.bin", &data((8 << 20) + 1, 7));
    paused.halt();
    let (marker, upload_id) = weed
        .objects(&prefix)
        .into_iter()
        .find(|(key, _)| key.starts_with("uploads/"))
        .unwrap();
    std::thread::sleep(grace * 2 + Duration::from_millis(1500));
    let client = weed.client();
    // `parse`, not `from`: the version's `~` stays as it is in the key.
    let key = Key::parse(format!("{prefix}/{marker}")).unwrap();
    let rewritten = upload_id.clone();
    proxy.before_forwarding("GET", &format!("/{prefix}/uploads/"), move || {
        block_on(client.put(&key, rewritten.into())).unwrap();
    });
    let starting = S3BlobStore::open(&location, grace).unwrap();

    let recovered = recover(&|| Ok(Vec::new()), 1, &starting).unwrap();
    assert_eq!(
        recovered.stale_temps, 0,
        "a live marker was taken for abandoned"
    );
    let seen = proxy.seen();
    assert!(!seen.iter().any(|r| r.contains("uploadId=")), "{seen:#?}");
    let left: Vec<String> = weed.objects(&prefix).into_iter().map(|(k, _)| k).collect();
    assert_eq!(left, std::slice::from_ref(&marker));
    // The upload still takes parts.
    let name = marker.split('/').nth(2).unwrap();
    let target = Key::parse(format!("{prefix}/files/{}/{name}", hex())).unwrap();
    let id = String::from_utf8(upload_id).unwrap();
    let part = block_on(
        weed.client()
            .put_part(&target, &id, 2, b"more".to_vec().into()),
    );
    assert!(part.is_ok(), "the upload was aborted: {part:?}");
}

/// An old object under `uploads/` far larger than any upload ID is not one of this
/// server's markers: recovery neither reads it nor aborts anything for it, and leaves it.
#[test]
fn an_object_too_large_to_be_a_marker_is_left_unread() {
    let Some(weed) = shared("an_object_too_large_to_be_a_marker_is_left_unread") else {
        return;
    };
    let grace = Duration::from_secs(2);
    let (proxy, location) = behind_proxy(weed);
    let prefix = location.prefix.clone();
    let rel = format!(
        "uploads/{}/big.bin/0b5c3a57-2f8e-4f7e-9a7d-3c1e2d4b5a69",
        hex()
    );
    let key = Key::from(format!("{prefix}/{rel}"));
    block_on(weed.client().put(&key, vec![b'x'; 1 << 20].into())).unwrap();
    std::thread::sleep(grace * 2 + Duration::from_millis(1500));
    let starting = S3BlobStore::open(&location, grace).unwrap();

    let recovered = recover(&|| Ok(Vec::new()), 1, &starting).unwrap();
    assert_eq!(recovered.stale_temps, 0);
    let seen = proxy.seen();
    assert!(
        !seen
            .iter()
            .any(|request| request.starts_with("GET ") && request.contains(&rel)),
        "{seen:#?}"
    );
    assert!(!seen.iter().any(|r| r.contains("uploadId=")), "{seen:#?}");
    let left: Vec<String> = weed.objects(&prefix).into_iter().map(|(k, _)| k).collect();
    assert_eq!(left, [rel]);
}

/// The start-up check of the bucket and credentials asks for one page of the listing,
/// however many client folders there are (before, it listed them all, page by page, into
/// memory); a bucket that does not exist stops the start with a clear message.
#[test]
fn the_start_up_check_asks_for_one_page() {
    let Some(weed) = shared("the_start_up_check_asks_for_one_page") else {
        return;
    };
    let (proxy, location) = behind_proxy(weed);
    let prefix = location.prefix.clone();
    let client = weed.client();
    // More client folders than one page of a listing holds (1,000).
    block_on(futures::future::try_join_all((0..1001u32).map(|n| {
        let key = Key::from(format!("{prefix}/files/{:032x}/f.bin", n + 1));
        let client = &client;
        async move { client.put(&key, b"x".to_vec().into()).await }
    })))
    .unwrap();
    S3BlobStore::open(&location, Duration::from_secs(600)).unwrap();
    let seen = proxy.seen();
    let listings = seen.iter().filter(|r| r.contains("list-type=2")).count();
    assert_eq!(listings, 1, "{seen:#?}");

    let mut missing = location.clone();
    missing.bucket = "no-such-bucket".to_owned();
    let Err(error) = S3BlobStore::open(&missing, Duration::from_secs(600)) else {
        panic!("a bucket that does not exist was accepted");
    };
    assert!(error.to_string().contains("cannot list"), "{error}");
}

/// A multipart upload whose marker cannot be written fails at once and is aborted: with
/// no marker, nothing would ever abort it later.
#[test]
fn an_upload_without_its_marker_is_aborted_at_once() {
    let Some(weed) = shared("an_upload_without_its_marker_is_aborted_at_once") else {
        return;
    };
    let (proxy, store, prefix) = store_behind_proxy(weed);
    proxy.deny_writes(&format!("/{BUCKET}/{prefix}/uploads/"));
    let mut temp = store.create_temp(&CLIENT, "big.bin").unwrap();
    let written = temp.write_all(&data((8 << 20) + 1, 6));
    assert!(written.is_err(), "a part went out without its marker");
    drop(temp);
    let seen = proxy.seen();
    let aborts = seen
        .iter()
        .filter(|request| request.starts_with("DELETE ") && request.contains("uploadId="))
        .count();
    assert_eq!(aborts, 1, "{seen:#?}");
    let parts = seen.iter().filter(|r| r.contains("partNumber=")).count();
    assert_eq!(parts, 0, "{seen:#?}");
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

    // Old: a recorded file and the version it replaced (its removal cut short), an
    // orphan, a new version of a crash between persist and commit, the backup an earlier
    // server kept of a replaced version (`.upload-….old`), and a multipart upload whose
    // server died (its temp never dropped; the crashed server's store is halted, so
    // nothing keeps the upload's marker young).
    let replaced = put(&store, "kept.bin", b"replaced");
    std::thread::sleep(Duration::from_millis(2)); // versions are dated to the millisecond
    let kept = put(&store, "kept.bin", b"recorded");
    assert_version_of(&kept, "kept.bin");
    let old_orphan = put(&store, "old-orphan.bin", b"never acknowledged");
    let crashed = S3BlobStore::open(&location, grace).unwrap();
    let mut replacement = crashed.create_temp(&CLIENT, "kept.bin").unwrap();
    replacement.write_all(b"never recorded").unwrap();
    let unrecorded = replacement.persist_undoable().unwrap().path().to_owned();
    let backup = Key::from(format!("{prefix}/files/{}/.upload-1234.old", hex()));
    block_on(weed.client().put(&backup, b"recorded".to_vec().into())).unwrap();
    abandon_multipart(&crashed, &CLIENT, "abandoned.bin", &part);
    crashed.halt();
    let markers: Vec<_> = weed
        .objects(&prefix)
        .into_iter()
        .filter(|(key, _)| key.starts_with("uploads/"))
        .collect();
    assert_eq!(markers.len(), 1, "{markers:?}");
    let upload_id = String::from_utf8(markers[0].1.clone()).unwrap();
    // uploads/<client>/<object's name>/<uuid>
    let abandoned_name = markers[0].0.split('/').nth(2).unwrap().to_owned();
    assert_eq!(unversioned(&abandoned_name), "abandoned.bin");

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
    let mut orphans = vec![old_orphan, unrecorded];
    orphans.sort();
    assert_eq!(recovered.orphans, orphans);
    assert_eq!(recovered.replaced, [replaced]);
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
    // `parse`, not `from`, which would escape the version's `~` (another key).
    let key = Key::parse(format!("{prefix}/files/{}/{abandoned_name}", hex())).unwrap();
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

/// The server binary on `dir`, on a free port of 127.0.0.1, storing in `weed`'s bucket
/// under `prefix`.
fn s3_server_process(weed: &Weed, dir: &std::path::Path, prefix: &str) -> process::ServerProcess {
    let mut command = std::process::Command::new(process::SERVER_BIN);
    command
        .args(["--data-dir", dir.to_str().unwrap()])
        .args(["--bind", "127.0.0.1:0", "--store"])
        .arg(format!("s3://{BUCKET}/{prefix}"))
        .env("AWS_ENDPOINT_URL", weed.endpoint())
        .env("AWS_ALLOW_HTTP", "true")
        .env("AWS_REGION", "us-east-1")
        .env("AWS_ACCESS_KEY_ID", common::s3::ACCESS_KEY)
        .env("AWS_SECRET_ACCESS_KEY", common::s3::SECRET_KEY);
    process::ServerProcess::spawn(command)
}

#[test]
fn a_64_mib_upload_keeps_the_server_s_memory_bounded() {
    let Some(weed) = shared("a_64_mib_upload_keeps_the_server_s_memory_bounded") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let mut server = s3_server_process(weed, dir.path(), "memory");
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
    let folder = format!("files/{}", id.to_hex());
    let names = common::s3::list(&location, &folder);
    let big: Vec<_> = names
        .iter()
        .filter(|name| unversioned(name) == "big.bin")
        .collect();
    assert_eq!(big.len(), 1, "{names:?}");
    let stored = common::s3::read(&location, &format!("{folder}/{}", big[0])).unwrap();
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
        |config| {
            config.upload_timeout = Duration::from_secs(4);
            config.recovery_min_age = Duration::ZERO;
        },
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

/// A running node of a cluster (PostgreSQL and S3) also cleans up, every
/// `--store-sweep-interval`, what a node that crashed and never came back left (a
/// multipart upload no server finishes, an object no row names), once old, as start-up
/// recovery does; its own multipart upload, paused between packets through those passes,
/// is left alone and completes; a removal the database recorded and nobody finished is
/// finished a pass later. With the database's set-up ID no longer the store's (a
/// database swapped under the running server), a pass still aborts abandoned uploads but
/// takes no stored object for unrecorded.
#[test]
fn a_running_node_cleans_up_what_a_crashed_node_left() {
    let test = "a_running_node_cleans_up_what_a_crashed_node_left";
    let Some(weed) = shared(test) else {
        return;
    };
    let Some(cluster) = common::postgres::shared(test) else {
        return;
    };
    init_logging();
    let store = weed.fresh();
    let Store::S3(location) = &store else {
        unreachable!()
    };
    let prefix = location.prefix.clone();
    let database_name = cluster.create_database();
    let url = sfc_server::config::PostgresUrl::parse(&cluster.url(&database_name)).unwrap();
    // The upload time-out is the grace period: markers are abandoned after twice that.
    let grace = Duration::from_secs(2);
    let server = TestServer::start_on_store(
        tempfile::tempdir().unwrap(),
        Database::Postgres(Box::new(url)),
        store.clone(),
        |config| {
            config.upload_timeout = Duration::from_secs(2);
            config.recovery_min_age = Duration::ZERO;
            config.store_sweep_interval = Duration::from_millis(300);
            config.admin = Some(sfc_server::AdminConfig::new(
                "127.0.0.1:0".parse().unwrap(),
                config.data_dir.join("admin.token"),
            ));
        },
    );
    let admin = server.server.as_ref().unwrap().admin_addr().unwrap();
    let metric = |name: &str| -> f64 {
        let answer = admin_request(admin, "GET", "/metrics", &server.root().join("admin.token"));
        answer
            .lines()
            .find_map(|line| line.strip_prefix(name)?.trim().parse().ok())
            .unwrap_or(0.0)
    };
    let mut conn = server.connect();
    let (id, key) = enroll(&mut conn, "sweeping");
    let kept = data(4000, 1);
    assert_received(
        &upload(&mut conn, id, &key, "kept.bin", &kept, 1000),
        id,
        "kept.bin",
        &kept,
    );
    let keys_with = |parts: &[&str]| {
        weed.keys(&prefix)
            .into_iter()
            .filter(|key| parts.iter().any(|part| key.contains(part)))
            .collect::<Vec<_>>()
    };
    // What a crashed node leaves, after this server started (its start-up cannot see it):
    // each looked for at once, long before it is old (SeaweedFS dates to the second).
    let crash = |abandoned_name: &str, orphan_name: &str| {
        let crashed = S3BlobStore::open(location, grace).unwrap();
        abandon_multipart(&crashed, &id, abandoned_name, &data((8 << 20) + 1, 5));
        put_for(&crashed, &id, orphan_name, b"never acknowledged");
        assert_eq!(keys_with(&[orphan_name]).len(), 1);
        crashed
    };
    let crashed = crash("abandoned.bin", "orphan.bin");
    // A removal the database recorded and nobody finished (recorded before the object is
    // written: never unrecorded).
    let mut pending = crashed.create_temp(&id, "pending.bin").unwrap();
    let pending_sql = format!(
        "INSERT INTO sfc_pending_removals (PathName) VALUES ('{}')",
        pending.path()
    );
    cluster.psql(&database_name, &pending_sql);
    pending.write_all(b"being removed").unwrap();
    pending.persist().unwrap();
    crashed.halt();
    // The abandoned upload's marker is judged after twice the grace period.
    assert_eq!(keys_with(&["uploads/"]).len(), 1);
    let leftovers = || keys_with(&["uploads/", "orphan.bin", "pending.bin"]);

    // This server's own multipart upload (its marker written once 8 MiB arrived), then
    // paused between packets (within the upload time-out) for longer than the crashed
    // node's marker takes to be abandoned.
    let plain = data(13 << 20, 6);
    let cipher = encrypt(&key, &plain);
    let started = Instant::now();
    for (i, packet) in packets(
        id,
        "paused.bin",
        plain.len(),
        &cipher,
        1 << 20,
        ContentSize::Whole,
    )
    .iter()
    .enumerate()
    {
        conn.send_raw(packet);
        if i >= 8 {
            std::thread::sleep(Duration::from_millis(1200));
        }
    }
    assert!(started.elapsed() > grace * 2 + Duration::from_secs(1));
    assert_received(&conn.recv(), id, "paused.bin", &plain);

    assert!(
        eventually(Duration::from_secs(15), || leftovers().is_empty()),
        "left: {:?}",
        leftovers()
    );
    assert_eq!(server.stored_names(id), ["kept.bin", "paused.bin"]);
    assert_eq!(server.stored(id, "kept.bin").unwrap(), kept);
    let records = "SELECT count(*) FROM sfc_pending_removals";
    assert_eq!(cluster.psql(&database_name, records), "0");
    // Seen in /metrics: passes, and what they removed (the recorded removal as one, not
    // as an unrecorded object). Counted at the end of a pass, after its removals.
    let counted = || {
        let removed =
            |kind: &str| metric(&format!("sfc_store_sweep_removed_total{{kind=\"{kind}\"}}"));
        (
            metric(r#"sfc_store_sweeps_total{outcome="done"}"#) >= 2.0,
            removed("uploads"),
            removed("unrecorded"),
            removed("recorded"),
        )
    };
    assert!(
        eventually(Duration::from_secs(5), || counted()
            == (true, 1.0, 1.0, 1.0)),
        "{:?}",
        counted()
    );
    assert_eq!(metric(r#"sfc_store_sweeps_total{outcome="failed"}"#), 0.0);
    assert_eq!(metric(r#"sfc_store_sweeps_total{outcome="limited"}"#), 0.0);
    assert_eq!(metric("sfc_store_sweep_left_total"), 0.0);

    // The database no longer the store's: abandoned uploads still go, objects stay.
    cluster.psql(&database_name, "UPDATE sfc_setup SET id = 'another set-up'");
    crash("abandoned-again.bin", "orphan-again.bin").halt();
    let markers = || keys_with(&["uploads/"]);
    assert_eq!(markers().len(), 1);
    assert!(
        eventually(Duration::from_secs(15), || markers().is_empty()),
        "left: {:?}",
        markers()
    );
    // The pass that aborted the upload (older than twice the grace period) found the
    // object old (older than the grace period) too, and left it.
    assert_eq!(keys_with(&["orphan-again.bin"]).len(), 1);
    assert!(metric(r#"sfc_store_sweeps_total{outcome="limited"}"#) >= 1.0);
    // And the dashboard's failures say why.
    let token = server.root().join("admin.token");
    let failures = admin_request(admin, "GET", "/api/v1/failures", &token);
    assert!(
        failures.contains("store clean-up")
            && failures.contains("limited: the database's set-up ID (another set-up)"),
        "{failures}"
    );
}

/// A server on S3 with a database of its own (SQLite) is the bucket prefix's only user
/// (the set-up ID pairs a prefix with one database), so it cleans up at start-up only:
/// an old object no row names stays while it serves, however short the interval.
#[test]
fn a_server_with_a_database_of_its_own_cleans_up_at_start_up_only() {
    let test = "a_server_with_a_database_of_its_own_cleans_up_at_start_up_only";
    if let Some(weed) = shared(test) {
        an_old_orphan_stays_while_serving(weed, Database::Sqlite, |config| {
            config.upload_timeout = Duration::from_secs(1);
            config.recovery_min_age = Duration::ZERO;
            config.store_sweep_interval = Duration::from_millis(200);
        });
    }
}

/// `--store-sweep-interval 0`: a cluster node cleans up at start-up only; an old object
/// no row names stays while it serves.
#[test]
fn a_zero_sweep_interval_cleans_up_at_start_up_only() {
    let test = "a_zero_sweep_interval_cleans_up_at_start_up_only";
    let (Some(weed), Some(cluster)) = (shared(test), common::postgres::shared(test)) else {
        return;
    };
    an_old_orphan_stays_while_serving(weed, cluster.fresh(), |config| {
        config.upload_timeout = Duration::from_secs(1);
        config.recovery_min_age = Duration::ZERO;
        config.store_sweep_interval = Duration::ZERO;
    });
}

/// A server on `database` and a fresh prefix, configured by `tweak` (which sets an upload
/// time-out of 1 s): an object no row names, stored after it started, is still there
/// once old, several seconds later.
fn an_old_orphan_stays_while_serving(
    weed: &Weed,
    database: Database,
    tweak: fn(&mut sfc_server::ServerConfig),
) {
    let store = weed.fresh();
    let Store::S3(location) = &store else {
        unreachable!()
    };
    let server =
        TestServer::start_on_store(tempfile::tempdir().unwrap(), database, store.clone(), tweak);
    let mut conn = server.connect();
    let (id, _key) = enroll(&mut conn, "not-swept");
    let left = S3BlobStore::open(location, Duration::from_secs(1)).unwrap();
    put_for(&left, &id, "orphan.bin", b"never acknowledged");
    // Old after 1 to 2 s (dated to the second); many intervals more.
    std::thread::sleep(Duration::from_millis(3000));
    assert_eq!(server.stored_names(id), ["orphan.bin"]);
}

/// A store of the server's own (a folder) is not cleaned while serving, whatever
/// `--store-sweep-interval`: its temporary files are the server's live uploads, which
/// start-up recovery's clean-up would remove. (Needs no S3 server.)
#[test]
fn a_folder_store_is_cleaned_at_start_up_only() {
    init_logging();
    let server = TestServer::start_on_store(
        tempfile::tempdir().unwrap(),
        test_database(),
        Store::DataDir,
        |config| config.store_sweep_interval = Duration::from_millis(100),
    );
    let mut conn = server.connect();
    let (id, key) = enroll(&mut conn, "folder");
    let plain = data(300_000, 7);
    let cipher = encrypt(&key, &plain);
    for packet in packets(
        id,
        "paused.bin",
        plain.len(),
        &cipher,
        100_000,
        ContentSize::Whole,
    ) {
        conn.send_raw(&packet);
        // Several sweep intervals while the upload's temporary file is on disk.
        std::thread::sleep(Duration::from_millis(600));
    }
    assert_received(&conn.recv(), id, "paused.bin", &plain);
    assert_eq!(server.stored(id, "paused.bin").unwrap(), plain);
}

/// An object is written before its row is committed, and the commit may take a while
/// (a row lock, a lost answer settled): with a short upload time-out a starting server
/// still leaves an unrecorded object alone until it is older than the longest commit.
#[test]
fn a_short_upload_timeout_does_not_shorten_what_recovery_leaves_alone() {
    let Some(weed) = shared("a_short_upload_timeout_does_not_shorten_what_recovery_leaves") else {
        return;
    };
    let store = weed.fresh();
    let Store::S3(location) = &store else {
        unreachable!()
    };
    let mut server = TestServer::start_on_store(
        tempfile::tempdir().unwrap(),
        test_database(),
        store.clone(),
        |config| config.upload_timeout = Duration::from_secs(1),
    );
    let mut conn = server.connect();
    let (id, _key) = enroll(&mut conn, "committing");
    drop(conn);
    server.stop();
    // Another node's object, its row's commit still waiting.
    let blobs = S3BlobStore::open(location, Duration::from_secs(600)).unwrap();
    let mut pending = blobs.create_temp(&id, "pending.bin").unwrap();
    pending.write_all(b"about to be recorded").unwrap();
    pending.persist().unwrap();
    std::thread::sleep(Duration::from_millis(2500));
    server.restart();
    assert_eq!(server.stored_names(id), ["pending.bin"]);
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

/// Two servers on one PostgreSQL database and one S3 prefix (what several nodes behind a
/// balancer share): the first a plain server, the second with a [`Faults`] switchboard
/// in front of its object store (gates that hold its next move into place or removal)
/// and its admin listener on. Servers share no lock, so only the database and the keys
/// they write keep them apart.
struct TwoNodes {
    location: sfc_server::config::S3Location,
    database: Database,
    first: TestServer,
    second: sfc_server::RunningServer,
    second_dir: tempfile::TempDir,
    faults: std::sync::Arc<Faults>,
}

impl TwoNodes {
    fn start(test: &str) -> Option<TwoNodes> {
        let weed = shared(test)?;
        let cluster = common::postgres::shared(test)?;
        init_logging();
        let store = weed.fresh();
        let Store::S3(location) = store.clone() else {
            unreachable!()
        };
        let database = cluster.fresh();
        let first = TestServer::start_on_store(
            tempfile::tempdir().unwrap(),
            database.clone(),
            store,
            |_| {},
        );
        let second_dir = tempfile::tempdir().unwrap();
        let mut config = config_for(second_dir.path());
        config.admin = Some(sfc_server::AdminConfig::new(
            "127.0.0.1:0".parse().unwrap(),
            second_dir.path().join("admin.token"),
        ));
        let faults = std::sync::Arc::new(Faults::default());
        let Database::Postgres(url) = &database else {
            unreachable!()
        };
        let storage = sfc_server::Storage {
            meta: Box::new(sfc_server::PostgresStore::open(url).unwrap()),
            blobs: Box::new(FaultyBlobs::new(
                S3BlobStore::open(&location, config.recovery_grace()).unwrap(),
                std::sync::Arc::clone(&faults),
            )),
            lock: None,
        };
        let second = sfc_server::RunningServer::start_with(config, storage).unwrap();
        Some(TwoNodes {
            location,
            database,
            first,
            second,
            second_dir,
            faults,
        })
    }

    /// The row of the client's file `name` and the content of the object it names.
    fn row_and_object(&self, id: ClientId, name: &str) -> Option<(FileRecord, Vec<u8>)> {
        let Database::Postgres(url) = &self.database else {
            unreachable!()
        };
        let meta = sfc_server::PostgresStore::open_existing(url).unwrap();
        let row = meta.file(&id, name).unwrap()?;
        let content = common::s3::read(&self.location, &row.path)
            .unwrap_or_else(|error| panic!("a row without its object ({error}): {row:?}"));
        Some((row, content))
    }

    /// Every object of the client's file `disk_name` (its versions).
    fn versions(&self, id: ClientId, disk_name: &str) -> Vec<String> {
        common::s3::list(&self.location, &format!("files/{}", id.to_hex()))
            .into_iter()
            .filter(|name| unversioned(name) == disk_name)
            .collect()
    }

    /// An admin `GET` of `path` on the second node: the HTTP answer, head and body.
    fn get_on_second(&self, path: &str) -> String {
        let admin = self.second.admin_addr().unwrap();
        admin_request(
            admin,
            "GET",
            path,
            &self.second_dir.path().join("admin.token"),
        )
    }

    /// Uploads `plain` as `name` on the second node, in a thread, and waits until the
    /// upload is held just before its move into place (the gate stays armed until the
    /// test opens it); joining the thread gives the reply.
    fn upload_on_second_held_before_its_move(
        &self,
        id: ClientId,
        key: &sfc_crypto::AesKey,
        name: &str,
        plain: &[u8],
    ) -> std::thread::JoinHandle<Response> {
        self.faults.persist_gate.hold_next();
        let (key, name, plain) = (key.clone(), name.to_owned(), plain.to_vec());
        let second = self.second.addr();
        let late = std::thread::spawn(move || {
            let mut conn = Conn::connect(second);
            // Not an upload first: a connection that starts with one is answered per
            // packet.
            conn.call(&register_request(&format!("other-{}", id.to_hex())));
            upload(&mut conn, id, &key, &name, &plain, 2000)
        });
        assert!(
            self.faults
                .persist_gate
                .wait_arrived(Duration::from_secs(20)),
            "the second node's upload never reached its move into place"
        );
        late
    }

    /// Sends an admin `DELETE` of the client's file to the second node, in a thread;
    /// joining it gives the HTTP answer.
    fn delete_on_second(&self, id: ClientId, name: &str) -> std::thread::JoinHandle<String> {
        let admin = self.second.admin_addr().unwrap();
        let token_file = self.second_dir.path().join("admin.token");
        let path = format!("/api/v1/clients/{id}/file?name={name}");
        std::thread::spawn(move || admin_request(admin, "DELETE", &path, &token_file))
    }
}

/// One node deletes a file (row first, then the object) while another stores the same
/// file again between the two steps. The delete removes the object its row named, which
/// is never the new version's: the new row names a complete object. (With one key per
/// file name, the delete removed the object the other node had just stored and recorded:
/// a row naming nothing, after a 1603.)
#[test]
fn a_delete_on_one_node_never_removes_the_version_another_node_just_stored() {
    let Some(nodes) = TwoNodes::start("a_delete_on_one_node_never_removes_the_version") else {
        return;
    };
    let mut conn = nodes.first.connect();
    let (id, key) = enroll(&mut conn, "two-nodes-delete");
    let v1 = data(5000, 1);
    store(&mut conn, id, &key, "f.bin", &v1);

    nodes.faults.remove_gate.hold_next();
    let deleter = nodes.delete_on_second(id, "f.bin");
    assert!(
        nodes
            .faults
            .remove_gate
            .wait_arrived(Duration::from_secs(20)),
        "the delete never reached the object"
    );
    // The row is gone, the object not yet: the first node stores the file again.
    let v2 = data(6000, 2);
    store(&mut conn, id, &key, "f.bin", &v2);
    nodes.faults.remove_gate.open();
    let answer = deleter.join().unwrap();
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");

    let (row, content) = nodes.row_and_object(id, "f.bin").expect("the new row");
    assert!(content == v2, "the row names another version: {row:?}");
    assert_eq!(
        nodes.versions(id, "f.bin"),
        [row.path.rsplit('/').next().unwrap()]
    );
}

/// Two nodes store the same file at once: the second reads the row, then waits (a gate
/// before its move into place) while the first stores its version; then the second
/// stores its own. The row names the second's version, and the first's, which the
/// second's commit replaced, is removed: the database says which version a commit
/// replaced, so no object is left that no row names. (Removing the version read before
/// the wait left the first's object behind.)
#[test]
fn two_nodes_storing_one_file_at_once_leave_one_version() {
    let Some(nodes) = TwoNodes::start("two_nodes_storing_one_file_at_once_leave_one_version")
    else {
        return;
    };
    let mut conn = nodes.first.connect();
    let (id, key) = enroll(&mut conn, "two-nodes-store");
    let v1 = data(5000, 1);
    store(&mut conn, id, &key, "f.bin", &v1);

    let v2 = data(7000, 2);
    let late = nodes.upload_on_second_held_before_its_move(id, &key, "f.bin", &v2);
    let v3 = data(8000, 3);
    store(&mut conn, id, &key, "f.bin", &v3);
    nodes.faults.persist_gate.open();
    assert_received(&late.join().unwrap(), id, "f.bin", &v2);

    let (row, content) = nodes.row_and_object(id, "f.bin").expect("the row");
    assert!(content == v2, "the row names another version: {row:?}");
    assert_eq!(
        nodes.versions(id, "f.bin"),
        [row.path.rsplit('/').next().unwrap()],
        "one version left"
    );
}

/// The same race, but the second node's move into place fails after the wait. The row
/// the first node committed meanwhile stays. (When the second node marked the verified
/// row it had read as unverified before its move, it put that row back after the
/// failure: a row naming the version the first node had replaced and removed.)
#[test]
fn a_failed_store_on_one_node_never_puts_back_a_row_another_node_replaced() {
    let Some(nodes) = TwoNodes::start("a_failed_store_on_one_node_never_puts_back_a_row") else {
        return;
    };
    let mut conn = nodes.first.connect();
    let (id, key) = enroll(&mut conn, "two-nodes-failed");
    let v1 = data(5000, 1);
    store(&mut conn, id, &key, "f.bin", &v1);
    assert_eq!(
        conn.call(&file_name_request(id, 900, "f.bin")),
        Response::Ack {
            client_id: Some(id)
        }
    );

    let late = nodes.upload_on_second_held_before_its_move(id, &key, "f.bin", &data(7000, 2));
    let v3 = data(8000, 3);
    store(&mut conn, id, &key, "f.bin", &v3);
    nodes
        .faults
        .persist_fails
        .store(true, std::sync::atomic::Ordering::SeqCst);
    nodes.faults.persist_gate.open();
    assert_eq!(late.join().unwrap(), Response::ServerError);

    let (row, content) = nodes.row_and_object(id, "f.bin").expect("the row");
    assert!(content == v3, "the row names another version: {row:?}");
    assert!(!row.verified, "v3 was never confirmed");
    assert_eq!(nodes.versions(id, "f.bin").len(), 1);
}

/// In S3 what a key holds never changes (a key per upload), so the admin overview (stats,
/// the client list) asks the store only for the sizes of files stored since its last
/// pass: one `HEAD` per new version, not one per file per pass.
#[test]
fn the_admin_overview_asks_s3_only_for_the_sizes_of_new_versions() {
    let Some(nodes) = TwoNodes::start("the_admin_overview_asks_s3_only_for_new_versions") else {
        return;
    };
    let mut conn = Conn::connect(nodes.second.addr());
    let (id, key) = enroll(&mut conn, "sized");
    let mut store = |name: &str, len: usize| {
        let plain = data(len, len as u32);
        assert_received(
            &upload(&mut conn, id, &key, name, &plain, 2000),
            id,
            name,
            &plain,
        );
    };
    store("a.bin", 1000);
    store("b.bin", 2000);
    store("c.bin", 3000);
    let size_queries = || {
        nodes
            .faults
            .size_queries
            .load(std::sync::atomic::Ordering::SeqCst)
    };
    // The client list: computed after this node's last change, so a pass each time.
    let bytes = || {
        let answer = nodes.get_on_second("/api/v1/clients");
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
        let body = answer.split_once("\r\n\r\n").unwrap().1;
        let page: serde_json::Value = serde_json::from_str(body).unwrap();
        page["items"][0]["bytes"].as_u64().unwrap()
    };
    let before = size_queries();
    assert_eq!(bytes(), 6000);
    assert_eq!(
        size_queries() - before,
        3,
        "the first pass sizes every file"
    );

    // A new file and a new version of another: two new keys.
    store("d.bin", 4000);
    store("a.bin", 500);
    let before = size_queries();
    assert_eq!(bytes(), 500 + 2000 + 3000 + 4000);
    assert_eq!(
        size_queries() - before,
        2,
        "only the new versions are sized"
    );
}

/// The admin's download of a file stored in S3: its very bytes, read back one ranged
/// `GET` at a time (4 MiB each: this file takes two), with its length announced; a file
/// whose object is gone is a 404.
#[test]
fn the_admin_downloads_a_file_stored_in_s3() {
    let Some(nodes) = TwoNodes::start("the_admin_downloads_a_file_stored_in_s3") else {
        return;
    };
    let mut conn = nodes.first.connect();
    let (id, key) = enroll(&mut conn, "downloads");
    // Text, so that the answer reads as a string.
    let plain: Vec<u8> = (0..(4 << 20) + 1234)
        .map(|i| b'a' + (i % 26) as u8)
        .collect();
    store(&mut conn, id, &key, "big.txt", &plain);
    let answer = nodes.get_on_second(&format!("/api/v1/clients/{id}/file?name=big.txt"));
    let (head, body) = answer.split_once("\r\n\r\n").unwrap();
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(
        head.to_ascii_lowercase()
            .contains(&format!("content-length: {}", plain.len())),
        "{head}"
    );
    assert!(body.as_bytes() == plain, "the downloaded bytes differ");

    store(&mut conn, id, &key, "gone.txt", b"soon gone");
    let (row, _) = nodes.row_and_object(id, "gone.txt").unwrap();
    common::s3::remove(&nodes.location, &row.path);
    assert!(common::s3::read(&nodes.location, &row.path).is_err());
    let answer = nodes.get_on_second(&format!("/api/v1/clients/{id}/file?name=gone.txt"));
    assert!(answer.starts_with("HTTP/1.1 404"), "{answer}");
}
