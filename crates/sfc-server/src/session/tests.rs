use super::uploads::{BATCH_CAPACITY, MIN_BATCH};
use super::*;
use crate::net::entropy::OsEntropy;
use crate::storage::fs::LocalBlobStore;
use crate::storage::sqlite::SqliteStore;
use sfc_crypto::{CbcEncryptor, RsaKeyPair};
use sfc_proto::{
    FilePacketHeader, Name, Request, RequestBody, RequestCode, RequestHeader, ResponseCode,
};
use zeroize::Zeroize;

/// The limits of a server with the default configuration.
fn default_limits() -> Limits {
    crate::ServerConfig::new(".").session_limits()
}

struct Harness {
    core: Core,
    _dir: tempfile::TempDir,
    root: std::path::PathBuf,
}

fn harness() -> Harness {
    harness_with(default_limits())
}

fn harness_with(limits: Limits) -> Harness {
    harness_over(
        limits,
        Box::new(SqliteStore::open_in_memory().unwrap()),
        |root| Box::new(LocalBlobStore::new(root)),
    )
}

/// A core on `meta` and the blob store `blobs` makes for a temporary folder.
fn harness_over(
    limits: Limits,
    meta: Box<dyn crate::storage::MetaStore>,
    blobs: impl FnOnce(&std::path::Path) -> Box<dyn crate::storage::BlobStore>,
) -> Harness {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().to_path_buf();
    let core = Core::new(meta, blobs(&root), limits, Box::new(OsEntropy));
    Harness {
        core,
        _dir: dir,
        root,
    }
}

/// A harness whose stores (SQLite in memory, the folder) fail as the switches say.
fn harness_with_faults() -> (Harness, std::sync::Arc<crate::storage::testing::Faults>) {
    use crate::storage::testing::{Faults, FaultyBlobs, FaultyMeta};
    use std::sync::Arc;
    let faults = Arc::new(Faults::default());
    let meta = FaultyMeta::new(SqliteStore::open_in_memory().unwrap(), Arc::clone(&faults));
    let switch = Arc::clone(&faults);
    let h = harness_over(default_limits(), Box::new(meta), move |root| {
        Box::new(FaultyBlobs::new(LocalBlobStore::new(root), switch))
    });
    (h, faults)
}

fn now() -> Now {
    Now {
        wall: Timestamp::now(),
        mono: Instant::now(),
    }
}

fn ctx(first: bool) -> Ctx {
    Ctx::new(first, now())
}

fn name(s: &str) -> Name {
    Name::new(s).unwrap()
}

fn request(id: ClientId, body: RequestBody) -> Request {
    Request::new(id, body)
}

fn keypair() -> &'static RsaKeyPair {
    static KEY: std::sync::OnceLock<RsaKeyPair> = std::sync::OnceLock::new();
    KEY.get_or_init(|| RsaKeyPair::generate().unwrap())
}

/// Registers `user` and returns its ID and AES key.
fn enroll(h: &Harness, user: &str) -> (ClientId, AesKey) {
    let out = h.core.handle_request(
        &ctx(false),
        request(ClientId::ZERO, RequestBody::Register { name: name(user) }),
    );
    let Some(Response::Registered { client_id }) = out.reply else {
        panic!("{out:?}")
    };
    let out = h.core.handle_request(
        &ctx(false),
        request(
            client_id,
            RequestBody::SendPublicKey {
                name: name(user),
                public_key: keypair().public_key_der(),
            },
        ),
    );
    let Some(Response::PublicKeyAccepted { wrapped_key, .. }) = out.reply else {
        panic!("{out:?}")
    };
    (client_id, keypair().unwrap_aes_key(&wrapped_key).unwrap())
}

/// An 826 of `user` with the test key.
fn key_body(user: &str) -> RequestBody {
    RequestBody::SendPublicKey {
        name: name(user),
        public_key: keypair().public_key_der(),
    }
}

/// Key pinning serialises one client's 826s, not everyone's: while one client's key
/// store is held (a slow database), another client's 826 is answered.
#[test]
fn an_826_held_in_the_store_does_not_hold_other_clients_826s() {
    let (h, faults) = harness_with_faults();
    let register = |user: &str| {
        let out = h.core.handle_request(
            &ctx(false),
            request(ClientId::ZERO, RequestBody::Register { name: name(user) }),
        );
        let Some(Response::Registered { client_id }) = out.reply else {
            panic!("{out:?}")
        };
        client_id
    };
    let (slow, other) = (register("slow"), register("other"));
    faults.keys_gate.hold_next();
    let core = &h.core;
    std::thread::scope(|scope| {
        let held =
            scope.spawn(move || core.handle_request(&ctx(false), request(slow, key_body("slow"))));
        assert!(faults.keys_gate.wait_arrived(Duration::from_secs(10)));
        let (tx, rx) = std::sync::mpsc::channel();
        scope.spawn(move || {
            let out = core.handle_request(&ctx(false), request(other, key_body("other")));
            tx.send(out).unwrap();
        });
        let answered = rx.recv_timeout(Duration::from_secs(5));
        faults.keys_gate.open();
        let out = answered.expect("the other client's 826 is answered meanwhile");
        assert!(
            matches!(out.reply, Some(Response::PublicKeyAccepted { .. })),
            "{out:?}"
        );
        let out = held.join().unwrap();
        assert!(
            matches!(out.reply, Some(Response::PublicKeyAccepted { .. })),
            "{out:?}"
        );
    });
}

/// `data` encrypted as a client would (also for the conversation's tests).
pub(super) fn encrypt(key: &AesKey, data: &[u8]) -> Vec<u8> {
    let mut enc = CbcEncryptor::new(key).unwrap();
    let mut out = Vec::new();
    enc.update(data, &mut out).unwrap();
    enc.finish(&mut out).unwrap();
    out
}

fn packets(file: &str, data: &[u8], cipher: &[u8], size: usize) -> Vec<RequestBody> {
    let chunks: Vec<&[u8]> = if cipher.is_empty() {
        vec![&[]]
    } else {
        cipher.chunks(size).collect()
    };
    let total = chunks.len() as u16;
    chunks
        .iter()
        .enumerate()
        .map(|(i, chunk)| RequestBody::SendFile {
            packet: FilePacketHeader {
                content_size: cipher.len() as u32,
                orig_file_size: data.len() as u32,
                packet_number: i as u16 + 1,
                total_packets: total,
                file_name: name(file),
            },
            content: chunk.to_vec(),
        })
        .collect()
}

#[test]
fn parked_batches_stay_within_the_budget_and_are_returned() {
    // Room for two full batches; a third upload gets the floor.
    let h = harness_with(Limits {
        batch_budget: 2 * BATCH_CAPACITY,
        ..default_limits()
    });
    let files: Vec<_> = ["a", "b", "c"]
        .iter()
        .enumerate()
        .map(|(n, user)| {
            let (id, key) = enroll(&h, user);
            let data: Vec<u8> = (0..3_000_000u32)
                .map(|i| (i * 7 + n as u32) as u8)
                .collect();
            let cipher = encrypt(&key, &data);
            (id, data.clone(), packets("f.bin", &data, &cipher, 65_536))
        })
        .collect();
    // Packet 1 of each: the uploads park, each keeping its batch.
    let mut held = Vec::new();
    for (id, _, bodies) in &files {
        let out = h
            .core
            .handle_request(&ctx(false), request(*id, bodies[0].clone()));
        assert_eq!(out, Outcome::silent());
        held.push(h.core.batch_bytes());
    }
    assert_eq!(
        held,
        [
            BATCH_CAPACITY,
            2 * BATCH_CAPACITY,
            2 * BATCH_CAPACITY + MIN_BATCH
        ]
    );
    // Every upload completes correctly, the one on the floor batch too.
    for (id, data, bodies) in &files {
        let mut last = None;
        for body in &bodies[1..] {
            last = h
                .core
                .handle_request(&ctx(false), request(*id, body.clone()))
                .reply;
            assert!(h.core.batch_bytes() <= 2 * BATCH_CAPACITY + MIN_BATCH);
        }
        let Some(Response::FileReceived { cksum, .. }) = last else {
            panic!("{last:?}")
        };
        assert_eq!(cksum, sfc_crypto::cksum(data));
        let stored = h.root.join("files").join(id.to_hex()).join("f.bin");
        assert!(std::fs::read(stored).unwrap() == *data);
    }
    assert_eq!(
        h.core.batch_bytes(),
        0,
        "finished uploads return their batches"
    );
    // An abandoned upload returns its batch too.
    let (id, _, bodies) = &files[0];
    h.core
        .handle_request(&ctx(false), request(*id, bodies[0].clone()));
    assert_eq!(h.core.batch_bytes(), BATCH_CAPACITY);
    h.core
        .handle_request(&ctx(false), request(*id, bodies[5].clone()));
    assert_eq!(h.core.uploads_in_progress(), 0);
    assert_eq!(h.core.batch_bytes(), 0);
    // A client that opens a connection per packet holds no batch between packets.
    h.core
        .handle_request(&ctx(true), request(*id, bodies[0].clone()));
    assert_eq!(h.core.uploads_in_progress(), 1);
    assert_eq!(h.core.batch_bytes(), 0);
}

#[test]
fn upload_over_many_packets_then_verify() {
    let h = harness();
    let (id, key) = enroll(&h, "alice");
    let data: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
    let cipher = encrypt(&key, &data);
    let bodies = packets("dir/x.bin", &data, &cipher, 7_000);
    let n = bodies.len();
    for (i, body) in bodies.into_iter().enumerate() {
        let out = h.core.handle_request(&ctx(false), request(id, body));
        if i + 1 < n {
            assert_eq!(out, Outcome::silent());
            assert_eq!(h.core.uploads_in_progress(), 1);
        } else {
            assert_eq!(
                out.reply,
                Some(Response::FileReceived {
                    client_id: id,
                    content_size: cipher.len() as u32,
                    file_name: name("dir/x.bin"),
                    cksum: sfc_crypto::cksum(&data),
                })
            );
        }
    }
    assert_eq!(h.core.uploads_in_progress(), 0);
    let stored = h.root.join("files").join(id.to_hex()).join("dir%2Fx.bin");
    assert_eq!(std::fs::read(stored).unwrap(), data);
    let out = h.core.handle_request(
        &ctx(false),
        request(
            id,
            RequestBody::ChecksumOk {
                file_name: name("dir/x.bin"),
            },
        ),
    );
    assert_eq!(
        out.reply,
        Some(Response::Ack {
            client_id: Some(id)
        })
    );
    assert!(h.core.meta().files().unwrap()[0].verified);
}

/// Rule S10 through `handle_request` as on a connection: a packet 1 while the client's
/// upload is parked starts the upload again; it is not an out-of-order packet.
#[test]
fn packet_1_again_starts_the_upload_again() {
    let h = harness();
    let (id, key) = enroll(&h, "dora");
    let data: Vec<u8> = (0..100u8).collect();
    let cipher = encrypt(&key, &data);
    let bodies = packets("f", &data, &cipher, 48);
    assert_eq!(bodies.len(), 3);
    for body in [&bodies[0], &bodies[0], &bodies[1]] {
        let out = h
            .core
            .handle_request(&ctx(false), request(id, body.clone()));
        assert_eq!(out, Outcome::silent());
        assert_eq!(h.core.uploads_in_progress(), 1);
    }
    let out = h
        .core
        .handle_request(&ctx(false), request(id, bodies[2].clone()));
    assert_eq!(out.code().map(ResponseCode::as_u16), Some(1603), "{out:?}");
    assert_eq!(h.core.uploads_in_progress(), 0);
    let stored = h.root.join("files").join(id.to_hex()).join("f");
    assert_eq!(std::fs::read(stored).unwrap(), data);
}

#[test]
fn out_of_order_packet_abandons_the_upload() {
    let h = harness();
    let (id, key) = enroll(&h, "bob");
    let data = vec![7u8; 100];
    let cipher = encrypt(&key, &data);
    let mut bodies = packets("f", &data, &cipher, 16).into_iter();
    let first = bodies.next().unwrap();
    bodies.next();
    let third = bodies.next().unwrap();
    assert_eq!(
        h.core
            .handle_request(&ctx(true), request(id, first))
            .code()
            .map(ResponseCode::as_u16),
        Some(1603)
    );
    let out = h.core.handle_request(&ctx(false), request(id, third));
    assert_eq!(out.code().map(ResponseCode::as_u16), Some(1607), "{out:?}");
    assert_eq!(h.core.uploads_in_progress(), 0);
    let dir = h.root.join("files").join(id.to_hex());
    assert_eq!(
        std::fs::read_dir(dir).unwrap().count(),
        0,
        "temp file removed"
    );
}

#[test]
fn a_dropped_lease_frees_the_slot_and_the_temp_file() {
    let h = harness();
    let (id, key) = enroll(&h, "carol");
    let data = vec![1u8; 40];
    let cipher = encrypt(&key, &data);
    let RequestBody::SendFile { packet, content } = packets("f", &data, &cipher, 48).remove(0)
    else {
        unreachable!()
    };
    let header = RequestHeader::new(id, RequestCode::SendFile, 267 + 48);
    let mut lease = h
        .core
        .start_packet(&ctx(false), &header, &packet, 48)
        .unwrap();
    lease.push(&content[..10]).unwrap();
    // A second connection cannot take it while it is checked out.
    let busy = h.core.start_packet(&ctx(false), &header, &packet, 48);
    assert_eq!(
        busy.unwrap_err().code().map(ResponseCode::as_u16),
        Some(1607)
    );
    drop(lease);
    assert_eq!(h.core.uploads_in_progress(), 0);
    let dir = h.root.join("files").join(id.to_hex());
    assert_eq!(std::fs::read_dir(dir).unwrap().count(), 0);
}

/// While a client is removed its slot is held: a packet of its upload gets 1607 rather
/// than storing into a client being removed, and a new upload cannot start; the parked
/// upload goes to the remover. The removal is refused (`Busy`) while a packet of the
/// client's upload is being received. Deleting one file or a 902 holds nothing of the
/// sort: they wait only for a store of the same name (`NameLocks`).
#[test]
fn removing_a_client_holds_its_upload_slot() {
    let h = harness();
    let (id, key) = enroll(&h, "dora");
    let data: Vec<u8> = (0..20_000u32).map(|i| (i % 251) as u8).collect();
    let cipher = encrypt(&key, &data);
    let bodies = packets("f", &data, &cipher, 7_000);
    assert_eq!(bodies.len(), 3);
    let send = |body: &RequestBody| {
        h.core
            .handle_request(&ctx(false), request(id, body.clone()))
    };
    assert_eq!(send(&bodies[0]), Outcome::silent());

    let (hold, parked) = h.core.registry.hold_for_removal(&id).unwrap();
    assert!(parked.is_some(), "the parked upload goes to the remover");
    assert!(
        h.core.registry.hold_for_removal(&id).is_none(),
        "one hold at a time"
    );
    for body in &bodies[..2] {
        assert_eq!(send(body).code().map(ResponseCode::as_u16), Some(1607));
    }
    assert_eq!(h.core.uploads_in_progress(), 0, "a hold is no upload");
    drop((hold, parked));
    assert_eq!(send(&bodies[0]), Outcome::silent());
    assert_eq!(send(&bodies[1]), Outcome::silent());

    // A packet being received: removing the client is refused; deleting a file is not.
    let RequestBody::SendFile { packet, content } = &bodies[2] else {
        unreachable!()
    };
    let header = RequestHeader::new(id, RequestCode::SendFile, 267 + content.len() as u32);
    let lease = h
        .core
        .start_packet(&ctx(false), &header, packet, content.len() as u32)
        .unwrap();
    assert!(matches!(
        h.core.admin_remove_client(&id).unwrap(),
        Removal::Busy
    ));
    assert!(matches!(
        h.core.admin_remove_file(&id, "other").unwrap(),
        Removal::NotFound
    ));
    drop(lease);

    // Removed with a parked upload: its temporary file goes with the client's folder.
    assert_eq!(send(&bodies[0]), Outcome::silent());
    assert!(matches!(
        h.core.admin_remove_client(&id).unwrap(),
        Removal::Removed(_)
    ));
    assert_eq!(h.core.uploads_in_progress(), 0);
    assert!(!h.root.join("files").join(id.to_hex()).exists());
}

#[test]
fn unknown_clients_and_missing_keys_get_1607() {
    let h = harness();
    let data = [1u8; 3];
    let key = AesKey::random();
    let cipher = encrypt(&key, &data);
    let body = packets("f", &data, &cipher, 16).remove(0);
    let out = h
        .core
        .handle_request(&ctx(false), request(ClientId([9; 16]), body.clone()));
    assert_eq!(out.code().map(ResponseCode::as_u16), Some(1607));
    let out = h.core.handle_request(
        &ctx(false),
        request(ClientId::ZERO, RequestBody::Register { name: name("dave") }),
    );
    let Some(Response::Registered { client_id }) = out.reply else {
        panic!()
    };
    let out = h.core.handle_request(&ctx(false), request(client_id, body));
    assert_eq!(out.code().map(ResponseCode::as_u16), Some(1607));
    assert!(out.detail.unwrap().contains("no AES key"));
    // Reconnect without a public key on record: 1606 with the ID.
    let out = h.core.handle_request(
        &ctx(false),
        request(client_id, RequestBody::Reconnect { name: name("dave") }),
    );
    assert_eq!(
        out.reply,
        Some(Response::ReconnectRejected {
            client_id: Some(client_id)
        })
    );
}

#[test]
fn every_packet_time_reaches_last_seen() {
    let h = harness();
    let (id, key) = enroll(&h, "frank");
    let data: Vec<u8> = (0..50_000u32).map(|i| (i % 249) as u8).collect();
    let cipher = encrypt(&key, &data);
    let bodies = packets("t.bin", &data, &cipher, 5_000);
    let n = bodies.len() as i64;
    let start = Timestamp::now().0 + 60_000;
    // Two packets per millisecond (the clock is read once per socket read), then the
    // last packets each at a later time: the latest time of all must be recorded.
    for (i, body) in bodies.into_iter().enumerate() {
        let i = i as i64;
        let at = if i < n - 2 {
            start + i / 2
        } else {
            start + 1_000 * i
        };
        let c = Ctx {
            now: Timestamp(at),
            ..ctx(false)
        };
        h.core.handle_request(&c, request(id, body));
        if i == 3 {
            h.core.flush_last_seen().unwrap();
            let seen = h.core.meta().client(&id).unwrap().unwrap().last_seen;
            assert_eq!(seen, Some(Timestamp(start + 1).to_string()));
        }
    }
    h.core.flush_last_seen().unwrap();
    let record = h.core.meta().client(&id).unwrap().unwrap();
    assert_eq!(
        record.last_seen,
        Some(Timestamp(start + 1_000 * (n - 1)).to_string())
    );
}

/// The admin's delete of a file is not the client's doing: its `LastSeen` stays.
#[test]
fn an_admin_delete_leaves_last_seen_alone() {
    let h = harness();
    let (id, key) = enroll(&h, "fred");
    store(&h, id, &key, "f", b"content");
    h.core.flush_last_seen().unwrap();
    let before = h.core.meta().client(&id).unwrap().unwrap().last_seen;
    assert!(before.is_some());
    // Later than anything the client did, in the timestamps' millisecond resolution.
    std::thread::sleep(std::time::Duration::from_millis(5));
    assert!(matches!(
        h.core.admin_remove_file(&id, "f").unwrap(),
        super::Removal::Removed(_)
    ));
    h.core.flush_last_seen().unwrap();
    let after = h.core.meta().client(&id).unwrap().unwrap().last_seen;
    assert_eq!(after, before);
    assert!(h.core.meta().files().unwrap().is_empty());
}

#[test]
fn last_seen_is_noted_in_memory_and_flushed() {
    let h = harness();
    let (id, _) = enroll(&h, "erin");
    let later = Timestamp(Timestamp::now().0 + 60_000);
    let c = Ctx {
        now: later,
        ..ctx(true)
    };
    let out = h.core.handle_request(
        &c,
        request(
            id,
            RequestBody::ChecksumRetry {
                file_name: name("f"),
            },
        ),
    );
    assert_eq!(
        out.reply,
        Some(Response::Ack {
            client_id: Some(id)
        })
    );
    let silent = h.core.handle_request(
        &ctx(false),
        request(
            id,
            RequestBody::ChecksumRetry {
                file_name: name("f"),
            },
        ),
    );
    assert_eq!(silent.reply, None);
    assert_eq!(h.core.flush_last_seen().unwrap(), 1);
    let record = h.core.meta().client(&id).unwrap().unwrap();
    assert_eq!(record.last_seen, Some(later.to_string()));
}

#[test]
fn aes_key_bytes_read_from_the_store_are_wiped() {
    let h = harness();
    let (id, key) = enroll(&h, "wiped");
    let mut record = h.core.known_client(id).unwrap();
    assert_eq!(record.aes_key.as_deref(), Some(&key.as_bytes()[..]));
    record.zeroize();
    // zeroize overwrites the Vec's whole buffer with zeros, then empties it.
    assert_eq!(record.aes_key.as_deref(), Some(&[][..]));
}

/// Stores `data` as `label` in one packet; asserts the 1603.
fn store(h: &Harness, id: ClientId, key: &AesKey, label: &str, data: &[u8]) {
    let cipher = encrypt(key, data);
    let mut bodies = packets(label, data, &cipher, cipher.len().max(1));
    let out = h
        .core
        .handle_request(&ctx(false), request(id, bodies.remove(0)));
    assert!(
        matches!(out.reply, Some(Response::FileReceived { .. })),
        "{out:?}"
    );
}

/// A file's row whose commit's outcome the store cannot learn (one still waiting for a
/// synchronous standby may land later) undoes nothing: the new file stays for the row
/// that may name it, and the client gets 1607. (Taken for a plain failure, the new file
/// was removed, and a commit landing later named a missing file.)
#[test]
fn a_row_whose_commit_may_still_land_keeps_its_file() {
    use std::sync::atomic::Ordering;
    let (h, faults) = harness_with_faults();
    let (id, key) = enroll(&h, "sync-standby");
    faults.file_commits_uncertain.store(true, Ordering::SeqCst);
    let data = b"waiting for the standby";
    let cipher = encrypt(&key, data);
    let mut bodies = packets("f.bin", data, &cipher, cipher.len());
    let out = h
        .core
        .handle_request(&ctx(false), request(id, bodies.remove(0)));
    assert_eq!(out.reply, Some(Response::ServerError));
    let stored = h.root.join("files").join(id.to_hex()).join("f.bin");
    assert_eq!(std::fs::read(stored).unwrap(), data);
}

/// A stored file whose removal fails after its row went (a 902) is removed by a later
/// retry once the store works again; one whose label is stored again meanwhile (in a
/// folder, at the same path) is left alone, and so is the retry list.
#[test]
fn failed_removals_are_retried_and_never_remove_a_file_stored_again() {
    use std::sync::atomic::Ordering;
    let (h, faults) = harness_with_faults();
    let (id, key) = enroll(&h, "rita");
    store(&h, id, &key, "a.bin", b"first");
    store(&h, id, &key, "b.bin", b"second");
    let folder = h.root.join("files").join(id.to_hex());
    faults.remove_fails.store(true, Ordering::SeqCst);
    for label in ["a.bin", "b.bin"] {
        let out = h.core.handle_request(
            &ctx(false),
            request(
                id,
                RequestBody::ChecksumFailed {
                    file_name: name(label),
                },
            ),
        );
        assert_eq!(
            out.reply,
            Some(Response::Ack {
                client_id: Some(id)
            })
        );
        assert!(folder.join(label).exists(), "{label} could not be removed");
    }
    assert_eq!(h.core.retry_removals(), (0, 2), "the store still fails");
    faults.remove_fails.store(false, Ordering::SeqCst);
    store(&h, id, &key, "b.bin", b"stored again");
    assert_eq!(h.core.retry_removals(), (1, 0));
    assert!(!folder.join("a.bin").exists());
    assert_eq!(
        std::fs::read(folder.join("b.bin")).unwrap(),
        b"stored again"
    );
    assert_eq!(h.core.retry_removals(), (0, 0));
}

/// A new version whose move into place could be neither made durable nor undone (the
/// folder's fsync, then the rename back, failed) is in place though the client gets
/// 1607: the row, made unverified before the move, stays unverified. (Before, it was
/// marked verified again, as if the confirmed version were still there.)
#[test]
fn a_version_left_in_place_by_a_failed_undo_keeps_its_row_unverified() {
    use std::sync::atomic::Ordering;
    let (h, faults) = harness_with_faults();
    let (id, key) = enroll(&h, "vera");
    store(&h, id, &key, "a.bin", b"confirmed");
    let ok = request(
        id,
        RequestBody::ChecksumOk {
            file_name: name("a.bin"),
        },
    );
    assert!(h.core.handle_request(&ctx(false), ok).reply.is_some());
    assert!(
        h.core
            .meta_store()
            .file(&id, "a.bin")
            .unwrap()
            .unwrap()
            .verified
    );

    faults.persist_left_in_place.store(true, Ordering::SeqCst);
    let cipher = encrypt(&key, b"unconfirmed");
    let mut bodies = packets("a.bin", b"unconfirmed", &cipher, cipher.len());
    let out = h
        .core
        .handle_request(&ctx(false), request(id, bodies.remove(0)));
    assert!(matches!(out.reply, Some(Response::ServerError)), "{out:?}");
    let row = h.core.meta_store().file(&id, "a.bin").unwrap().unwrap();
    assert!(
        !row.verified,
        "the row names content the client never confirmed"
    );
    assert_eq!(
        std::fs::read(h.root.join(&row.path)).unwrap(),
        b"unconfirmed"
    );
}

/// Stores `labels` for a new client and has their removals fail (902s while every
/// removal fails), so that they wait for a retry in this order.
fn pending_removals(
    h: &Harness,
    faults: &crate::storage::testing::Faults,
    user: &str,
    labels: &[&str],
) -> ClientId {
    use std::sync::atomic::Ordering;
    let (id, key) = enroll(h, user);
    for label in labels {
        store(h, id, &key, label, label.as_bytes());
    }
    faults.remove_fails.store(true, Ordering::SeqCst);
    for label in labels {
        let request = request(
            id,
            RequestBody::ChecksumFailed {
                file_name: name(label),
            },
        );
        assert!(h.core.handle_request(&ctx(false), request).reply.is_some());
    }
    faults.remove_fails.store(false, Ordering::SeqCst);
    id
}

/// A file whose removal keeps failing does not keep the files after it from their retry:
/// the next retry tries them first. (Before, it went back at the head of the list, every
/// retry stopped at it, and nothing after it was ever retried.)
#[test]
fn a_removal_that_keeps_failing_does_not_keep_the_others_from_their_retry() {
    let (h, faults) = harness_with_faults();
    let id = pending_removals(&h, &faults, "sam", &["a.bin", "b.bin", "c.bin"]);
    let folder = h.root.join("files").join(id.to_hex());
    *faults.remove_fails_at.lock().unwrap() = Some(format!("files/{}/a.bin", id.to_hex()));
    assert_eq!(
        h.core.retry_removals(),
        (0, 3),
        "stops at the first failure"
    );
    assert_eq!(h.core.retry_removals(), (2, 1), "the others' turn");
    assert!(!folder.join("b.bin").exists() && !folder.join("c.bin").exists());
    assert!(folder.join("a.bin").exists());
    *faults.remove_fails_at.lock().unwrap() = None;
    assert_eq!(h.core.retry_removals(), (1, 0));
}

/// The database keeps a record of each removal until it is done (so that a restart
/// finishes it): a removal that fails stays recorded until a retry removes the file; a
/// 902 or a client removal whose files go at once leaves nothing recorded.
#[test]
fn the_database_records_a_removal_until_it_is_done() {
    let (h, faults) = harness_with_faults();
    let recorded = || h.core.meta_store().pending_removals().unwrap();
    let id = pending_removals(&h, &faults, "vic", &["a.bin", "b.bin"]);
    let path = |id: ClientId, label: &str| format!("files/{}/{label}", id.to_hex());
    assert_eq!(recorded(), vec![path(id, "a.bin"), path(id, "b.bin")]);
    assert_eq!(h.core.retry_removals(), (2, 0));
    assert_eq!(recorded(), Vec::<String>::new());
    let (id, key) = enroll(&h, "wes");
    for label in ["c.bin", "d.bin", "e.bin"] {
        store(&h, id, &key, label, label.as_bytes());
    }
    let request = request(
        id,
        RequestBody::ChecksumFailed {
            file_name: name("c.bin"),
        },
    );
    assert!(h.core.handle_request(&ctx(false), request).reply.is_some());
    assert!(!h.root.join(path(id, "c.bin")).exists());
    assert_eq!(recorded(), Vec::<String>::new());
    assert!(matches!(
        h.core.admin_remove_client(&id).unwrap(),
        Removal::Removed(files) if files.len() == 2
    ));
    assert_eq!(recorded(), Vec::<String>::new());
}

/// A removal that cannot succeed (here a directory where the file was) is given up, not
/// retried for ever ahead of the others.
#[test]
fn a_removal_that_cannot_succeed_is_given_up() {
    let (h, faults) = harness_with_faults();
    let id = pending_removals(&h, &faults, "tom", &["a.bin", "b.bin"]);
    let folder = h.root.join("files").join(id.to_hex());
    std::fs::remove_file(folder.join("a.bin")).unwrap();
    std::fs::create_dir(folder.join("a.bin")).unwrap();
    assert_eq!(h.core.retry_removals(), (1, 0));
    assert!(folder.join("a.bin").is_dir(), "what is there is left alone");
    assert!(!folder.join("b.bin").exists());
}

/// While the database fails, a retry asks it once, not once per pending file (each
/// failure as slow as the database's time-out, under a file name's lock), and keeps
/// every file.
#[test]
fn a_retry_stops_at_the_first_failed_lookup() {
    use std::sync::atomic::Ordering;
    let (h, faults) = harness_with_faults();
    pending_removals(&h, &faults, "una", &["a.bin", "b.bin", "c.bin"]);
    faults.db_down.store(true, Ordering::SeqCst);
    let before = faults.file_lookups.load(Ordering::SeqCst);
    assert_eq!(h.core.retry_removals(), (0, 3));
    assert_eq!(faults.file_lookups.load(Ordering::SeqCst) - before, 1);
    faults.db_down.store(false, Ordering::SeqCst);
    assert_eq!(h.core.retry_removals(), (3, 0));
}

/// A retried removal that empties the folder of a client still registered leaves the
/// folder (an upload of that client may be creating its temporary file there).
#[test]
fn a_retried_removal_keeps_a_registered_client_s_folder() {
    use std::sync::atomic::Ordering;
    let (h, faults) = harness_with_faults();
    let (id, key) = enroll(&h, "rosa");
    store(&h, id, &key, "a.bin", b"only");
    faults.remove_fails.store(true, Ordering::SeqCst);
    assert!(h.core.admin_remove_file(&id, "a.bin").is_err());
    faults.remove_fails.store(false, Ordering::SeqCst);
    assert_eq!(h.core.retry_removals(), (1, 0));
    let folder = h.root.join("files").join(id.to_hex());
    assert!(!folder.join("a.bin").exists());
    assert!(folder.is_dir(), "the registered client keeps its folder");
}

/// A removal whose commit happened with only its answer lost (PostgreSQL), by a 902 or
/// the admin's delete: the error is reported, and the file, which no row names any more,
/// goes at the next retry instead of staying with no row. A removal that failed before
/// it happened leaves the file to its row.
#[test]
fn a_file_whose_row_removal_was_reported_failed_goes_once_no_row_names_it() {
    let (h, faults) = harness_with_faults();
    let (id, key) = enroll(&h, "lost-removals");
    for label in ["a.bin", "b.bin", "c.bin"] {
        store(&h, id, &key, label, label.as_bytes());
    }
    let folder = h.root.join("files").join(id.to_hex());

    faults.lose_file_commit_answers(false);
    assert!(h.core.admin_remove_file(&id, "a.bin").is_err());
    let out = h.core.handle_request(
        &ctx(false),
        request(
            id,
            RequestBody::ChecksumFailed {
                file_name: name("b.bin"),
            },
        ),
    );
    assert_eq!(out.reply, Some(Response::ServerError), "{out:?}");
    faults.db_recovers();
    assert!(folder.join("a.bin").exists() && folder.join("b.bin").exists());
    assert_eq!(h.core.retry_removals(), (2, 0));
    assert!(!folder.join("a.bin").exists() && !folder.join("b.bin").exists());

    // A client's removal, the same way: its files go at the retry.
    store(&h, id, &key, "d.bin", b"d");
    faults.lose_file_commit_answers(false);
    assert!(h.core.admin_remove_client(&id).is_err());
    faults.db_recovers();
    assert!(folder.join("c.bin").exists() && folder.join("d.bin").exists());
    assert_eq!(h.core.retry_removals(), (2, 0));
    assert!(!folder.join("c.bin").exists() && !folder.join("d.bin").exists());

    // Failed before it happened: the row and its file stay; the retries look for a
    // while (the removal might become visible late), then give up.
    let (id, key) = enroll(&h, "lost-removals-2");
    store(&h, id, &key, "c.bin", b"c.bin");
    let folder = h.root.join("files").join(id.to_hex());
    faults.db_fails_after(0);
    assert!(h.core.admin_remove_file(&id, "c.bin").is_err());
    faults.db_recovers();
    for _ in 0..super::removals::ROW_RECHECKS {
        assert_eq!(h.core.retry_removals(), (0, 1));
    }
    assert_eq!(h.core.retry_removals(), (0, 0));
    assert_eq!(std::fs::read(folder.join("c.bin")).unwrap(), b"c.bin");
    assert!(h.core.meta_store().file(&id, "c.bin").unwrap().is_some());
    faults.db_fails_after(0);
    assert!(h.core.admin_remove_client(&id).is_err());
    faults.db_recovers();
    assert_eq!(h.core.retry_removals(), (0, 1));
    assert_eq!(std::fs::read(folder.join("c.bin")).unwrap(), b"c.bin");
    assert!(h.core.meta_store().client(&id).unwrap().is_some());
    // ... and one that becomes visible only after a retry looked: the next retry takes
    // the file.
    assert_eq!(
        h.core
            .meta_store()
            .remove_client(&id)
            .unwrap()
            .map(|f| f.len()),
        Some(1)
    );
    assert_eq!(h.core.retry_removals(), (1, 0));
    assert!(!folder.join("c.bin").exists());
}

/// Removing a client whose files cannot be removed (the store failing): every file is
/// kept for the retry, not only the first, and goes once the store works again.
#[test]
fn a_removed_client_s_files_that_could_not_be_removed_are_all_retried() {
    use std::sync::atomic::Ordering;
    let (h, faults) = harness_with_faults();
    let (id, key) = enroll(&h, "ursula");
    for label in ["a.bin", "b.bin", "c.bin"] {
        store(&h, id, &key, label, label.as_bytes());
    }
    faults.remove_fails.store(true, Ordering::SeqCst);
    assert!(h.core.admin_remove_client(&id).is_err());
    assert_eq!(h.core.retry_removals(), (0, 3), "the store still fails");
    faults.remove_fails.store(false, Ordering::SeqCst);
    assert_eq!(h.core.retry_removals(), (3, 0));
    let folder = h.root.join("files").join(id.to_hex());
    for label in ["a.bin", "b.bin", "c.bin"] {
        assert!(!folder.join(label).exists(), "{label}");
    }
    assert!(
        !folder.exists(),
        "the removed client's emptied folder goes too"
    );
}

/// At the `--max-uploads` cap, an upload that has waited for its next packet longer than
/// a request may take makes room for a newcomer (the one waiting longest); younger ones
/// do not. Uploads started and left (packet 1, then nothing) would otherwise hold every
/// place until the upload time-out.
#[test]
fn at_the_upload_cap_the_upload_idle_longest_makes_room() {
    let limits = Limits {
        max_uploads: 2,
        ..default_limits()
    };
    let wait = limits.request_timeout.as_secs();
    let h = harness_with(limits);
    let start = Instant::now();
    let at = |secs: u64| {
        Ctx::new(
            true,
            Now {
                wall: Timestamp::now(),
                mono: start + Duration::from_secs(secs),
            },
        )
    };
    let data = vec![7u8; 5000];
    let mut clients = Vec::new();
    for user in ["a", "b", "c"] {
        let (id, key) = enroll(&h, user);
        let cipher = encrypt(&key, &data);
        clients.push((id, packets("f.bin", &data, &cipher, 2000)));
    }
    let send = |n: usize, packet: usize, secs: u64| {
        let (id, bodies) = &clients[n];
        h.core
            .handle_request(&at(secs), request(*id, bodies[packet].clone()))
            .reply
    };
    let received = |n: usize| {
        Some(Response::PacketReceived {
            client_id: clients[n].0,
        })
    };
    // a and b start, each on a connection of its own, and wait for their next packets.
    assert_eq!(send(0, 0, 0), received(0));
    assert_eq!(send(1, 0, 1), received(1));
    // c, at once: neither has waited long enough to make room.
    assert_eq!(send(2, 0, 2), Some(Response::ServerError));
    assert_eq!(h.core.uploads_in_progress(), 2);
    // Later: both have, a longest; it makes room and c starts.
    assert_eq!(send(2, 0, wait + 2), received(2));
    assert_eq!(h.core.uploads_in_progress(), 2);
    // a's next packet finds its upload gone; b goes on.
    assert_eq!(send(0, 1, wait + 3), Some(Response::ServerError));
    assert_eq!(send(1, 1, wait + 3), received(1));
}
