//! Checks every store must pass, shared by the tests of each implementation (SQLite,
//! PostgreSQL, the local folder, memory), so that they cannot drift apart.

use crate::storage::{BlobStore, FileRecord, Inserted, MetaStore, Timestamp};
use sfc_proto::ClientId;
use std::io::Read;

/// [`MetaStore::remove_client`]: removes the client and only its file rows, in one step;
/// frees the name; says `None` for an unknown client. `meta` must be empty.
#[allow(clippy::unwrap_used, clippy::panic)] // a test helper: a failure is the report
pub fn check_remove_client(meta: &dyn MetaStore) {
    let (alice, bob) = (ClientId([0xa1; 16]), ClientId([0xb0; 16]));
    let t = Timestamp(1_000);
    assert_eq!(
        meta.insert_client(&alice, "alice", t).unwrap(),
        Inserted::Ok
    );
    assert_eq!(meta.insert_client(&bob, "bob", t).unwrap(), Inserted::Ok);
    let file = |owner: ClientId, name: &str| FileRecord {
        client_id: owner,
        file_name: name.into(),
        path: format!("files/{}/{name}", owner.to_hex()),
        verified: false,
    };
    for record in [
        file(alice, "b.txt"),
        file(alice, "a.txt"),
        file(alice, "B.txt"),
        file(bob, "a.txt"),
    ] {
        meta.put_file(&record, t).unwrap();
    }
    // One client's rows, by name (bytewise: "B" before "a").
    assert_eq!(
        meta.files_of(&alice).unwrap(),
        vec![
            file(alice, "B.txt"),
            file(alice, "a.txt"),
            file(alice, "b.txt")
        ]
    );
    assert_eq!(meta.files_of(&ClientId([0xee; 16])).unwrap(), vec![]);
    let removed = meta.remove_client(&alice).unwrap();
    assert_eq!(
        removed,
        Some(vec![
            file(alice, "B.txt"),
            file(alice, "a.txt"),
            file(alice, "b.txt")
        ])
    );
    assert_eq!(meta.files_of(&alice).unwrap(), vec![]);
    assert!(meta.client(&alice).unwrap().is_none());
    assert_eq!(meta.files().unwrap(), vec![file(bob, "a.txt")]);
    assert_eq!(meta.remove_client(&alice).unwrap(), None);
    // A client without files goes too, and the name is free again.
    let carol = ClientId([0xc0; 16]);
    assert_eq!(
        meta.insert_client(&carol, "carol", t).unwrap(),
        Inserted::Ok
    );
    assert_eq!(meta.remove_client(&carol).unwrap(), Some(vec![]));
    assert_eq!(
        meta.insert_client(&ClientId([0xa2; 16]), "alice", t)
            .unwrap(),
        Inserted::Ok
    );
    assert!(meta.client(&bob).unwrap().is_some());
}

/// Pending removals ([`MetaStore::pending_removals`]): a replaced path other than the
/// new one, a removed file's path and a removed client's files' paths are recorded with
/// the change; a path replaced by itself (a folder's new version) is not; forgetting
/// removes exactly the paths given. `meta` must be empty.
#[allow(clippy::unwrap_used, clippy::panic)] // a test helper: a failure is the report
pub fn check_pending_removals(meta: &dyn MetaStore) {
    let (dana, eve) = (ClientId([0xd0; 16]), ClientId([0xe0; 16]));
    let t = Timestamp(1_000);
    meta.insert_client(&dana, "dana", t).unwrap();
    meta.insert_client(&eve, "eve", t).unwrap();
    let path = |owner: ClientId, name: &str| format!("files/{}/{name}", owner.to_hex());
    let row = |owner: ClientId, name: &str, stored: &str| FileRecord {
        client_id: owner,
        file_name: name.into(),
        path: path(owner, stored),
        verified: false,
    };
    let pending = || meta.pending_removals().unwrap();
    assert_eq!(pending(), Vec::<String>::new());
    assert_eq!(meta.put_file(&row(dana, "a", "a~v1"), t).unwrap(), None);
    // The same path again: nothing to remove.
    assert_eq!(
        meta.put_file(&row(dana, "a", "a~v1"), t).unwrap(),
        Some(path(dana, "a~v1"))
    );
    assert_eq!(pending(), Vec::<String>::new());
    // A new path: the one it replaced is pending.
    assert_eq!(
        meta.put_file(&row(dana, "a", "a~v2"), t).unwrap(),
        Some(path(dana, "a~v1"))
    );
    assert_eq!(pending(), vec![path(dana, "a~v1")]);
    assert!(meta.remove_file(&dana, "a", None).unwrap().is_some());
    assert!(meta.remove_file(&dana, "none", Some(t)).unwrap().is_none());
    assert_eq!(pending(), vec![path(dana, "a~v1"), path(dana, "a~v2")]);
    meta.put_file(&row(eve, "y", "y"), t).unwrap();
    meta.put_file(&row(eve, "x", "x"), t).unwrap();
    assert_eq!(
        meta.remove_client(&eve).unwrap().map(|rows| rows.len()),
        Some(2)
    );
    assert_eq!(
        pending(),
        vec![
            path(dana, "a~v1"),
            path(dana, "a~v2"),
            path(eve, "x"),
            path(eve, "y")
        ]
    );
    // Recorded once however often (a folder's path removed, stored and removed again).
    meta.put_file(&row(dana, "a", "a~v2"), t).unwrap();
    meta.remove_file(&dana, "a", Some(t)).unwrap();
    assert_eq!(pending().len(), 4);
    meta.forget_removals(&[]).unwrap();
    meta.forget_removals(&[path(dana, "a~v1"), path(eve, "x"), "files/never".into()])
        .unwrap();
    assert_eq!(pending(), vec![path(dana, "a~v2"), path(eve, "y")]);
}

/// [`BlobStore::open`] gives back the bytes persisted and their size, the size of what
/// it opened even when the file is replaced meanwhile, and refuses missing or escaping
/// paths.
#[allow(clippy::unwrap_used, clippy::panic)] // a test helper: a failure is the report
pub fn check_open_reads_back(blobs: &dyn BlobStore) {
    let client = ClientId([0x5a; 16]);
    let content: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
    let mut temp = blobs.create_temp(&client, "big.bin").unwrap();
    temp.write_all(&content).unwrap();
    let path = temp.persist().unwrap();
    let (mut reader, size) = blobs.open(&path).unwrap();
    assert_eq!(size, content.len() as u64);
    // Replaced by a shorter version while being read: the reader and its size agree.
    let mut shorter = blobs.create_temp(&client, "big.bin").unwrap();
    shorter.write_all(b"short").unwrap();
    assert_eq!(shorter.persist().unwrap(), path);
    let mut back = Vec::new();
    reader.read_to_end(&mut back).unwrap();
    assert!(back == content, "read back {} bytes", back.len());
    let missing = format!("files/{}/missing", client.to_hex());
    assert!(blobs.open(&missing).is_err());
    assert!(blobs.open("../etc/passwd").is_err());
    assert!(blobs.open("/etc/passwd").is_err());
    blobs.remove(&path).unwrap();
    assert!(blobs.open(&path).is_err());
}

/// The contract of `defensive.db`'s two tables that every metadata store keeps: names are
/// unique (a taken name is [`Inserted::NameTaken`], a duplicate ID an error), the first
/// public key is pinned, `LastSeen` never goes backwards (and moves with the client's own
/// requests only), a file row needs its client, replacing a file is one row, names and
/// labels are text. `meta` must be empty.
#[allow(clippy::unwrap_used, clippy::panic)] // a test helper: a failure is the report
pub fn check_contract(meta: &dyn MetaStore) {
    let cid = |n: u8| ClientId([n; 16]);
    let t = Timestamp(1_000);
    assert_eq!(
        meta.insert_client(&cid(1), "alice", t).unwrap(),
        Inserted::Ok
    );
    // SQLSTATE 23505 on the name constraint: the same answer as SQLite's meta.
    assert_eq!(
        meta.insert_client(&cid(2), "alice", t).unwrap(),
        Inserted::NameTaken
    );
    // A duplicate ID is another constraint: an error, not "name taken".
    assert!(meta.insert_client(&cid(1), "bob", t).is_err());
    meta.set_keys(&cid(1), Some(&[1, 2, 3]), &[7; 32], Timestamp(2_000))
        .unwrap();
    meta.set_keys(&cid(1), None, &[8; 32], Timestamp(1_500))
        .unwrap();
    // The same key again is fine; another key is refused (pinning) and changes nothing.
    meta.set_keys(&cid(1), Some(&[1, 2, 3]), &[9; 32], Timestamp(1_600))
        .unwrap();
    let error = meta
        .set_keys(&cid(1), Some(&[4, 5, 6]), &[10; 32], t)
        .unwrap_err();
    assert!(error.to_string().contains("key pinning"), "{error}");
    assert!(meta.set_keys(&cid(9), None, &[8; 32], t).is_err());
    let alice = meta.client(&cid(1)).unwrap().unwrap();
    assert_eq!(alice.public_key.as_deref(), Some(&[1u8, 2, 3][..]));
    assert_eq!(alice.aes_key.as_deref(), Some(&[9u8; 32][..]));
    // LastSeen never goes backwards.
    assert_eq!(alice.last_seen.as_deref(), Some("1970-01-01 00:00:02.000"));
    assert!(meta.client(&cid(3)).unwrap().is_none());

    let file = FileRecord {
        client_id: cid(1),
        file_name: "a/b.txt".into(),
        path: "files/x/a%2Fb.txt".into(),
        verified: false,
    };
    assert_eq!(meta.put_file(&file, t).unwrap(), None, "nothing replaced");
    assert_eq!(meta.file(&cid(1), "a/b.txt").unwrap(), Some(file.clone()));
    assert_eq!(meta.file(&cid(1), "other").unwrap(), None);
    assert!(meta.set_verified(&cid(1), "a/b.txt", t).unwrap());
    assert!(!meta.set_verified(&cid(1), "nope", t).unwrap());
    assert!(meta.files().unwrap().iter().all(|f| f.verified));
    // Replacing: one row, the new path, unverified; the path replaced comes back.
    let replaced = FileRecord {
        path: "files/x/new".into(),
        ..file.clone()
    };
    assert_eq!(
        meta.put_file(&replaced, t).unwrap(),
        Some(file.path.clone())
    );
    assert_eq!(meta.files().unwrap(), std::slice::from_ref(&replaced));
    // An operator's removal (no `seen`) leaves LastSeen; the client's own (902) moves it.
    let seen_before = meta.client(&cid(1)).unwrap().unwrap().last_seen;
    assert_eq!(
        meta.remove_file(&cid(1), "a/b.txt", None).unwrap(),
        Some(replaced.clone())
    );
    assert_eq!(
        meta.client(&cid(1)).unwrap().unwrap().last_seen,
        seen_before
    );
    assert_eq!(
        meta.put_file(&replaced, t).unwrap(),
        None,
        "the row was removed"
    );
    assert_eq!(
        meta.remove_file(&cid(1), "a/b.txt", Some(Timestamp(3_000)))
            .unwrap(),
        Some(replaced)
    );
    assert_eq!(
        meta.client(&cid(1)).unwrap().unwrap().last_seen.as_deref(),
        Some("1970-01-01 00:00:03.000")
    );
    assert_eq!(meta.remove_file(&cid(1), "a/b.txt", Some(t)).unwrap(), None);
    // A file row needs its client (a foreign key, or a check in the same transaction
    // where the original's schema has none): a client removed meanwhile leaves no orphan.
    let orphan = FileRecord {
        client_id: cid(7),
        ..file.clone()
    };
    assert!(meta.put_file(&orphan, t).is_err());
    assert!(meta.file(&cid(7), "a/b.txt").unwrap().is_none());
    // Several notes for one client in one batch: the latest wins; unknown IDs are ignored.
    meta.touch(&[
        (cid(1), Timestamp(5_000)),
        (cid(1), Timestamp(4_000)),
        (cid(2), Timestamp(5_000)),
    ])
    .unwrap();
    let alice = meta.client(&cid(1)).unwrap().unwrap();
    assert_eq!(alice.last_seen.as_deref(), Some("1970-01-01 00:00:05.000"));
    assert_eq!(meta.clients().unwrap().len(), 1);
    // Names and labels are text: non-ASCII survives.
    assert_eq!(meta.insert_client(&cid(4), "zoë", t).unwrap(), Inserted::Ok);
    assert_eq!(meta.client(&cid(4)).unwrap().unwrap().name, "zoë");
}

/// [`MetaStore::setup_id`] and [`MetaStore::record_setup_id`]: none at first; the first
/// recorded stays, whatever is proposed later. `meta` must have no set-up ID yet.
#[allow(clippy::unwrap_used, clippy::panic)] // a test helper: a failure is the report
pub fn check_setup_id(meta: &dyn MetaStore) {
    assert_eq!(meta.setup_id().unwrap(), None);
    assert_eq!(meta.record_setup_id("first-1").unwrap(), "first-1");
    assert_eq!(meta.record_setup_id("second-2").unwrap(), "first-1");
    assert_eq!(meta.setup_id().unwrap().as_deref(), Some("first-1"));
}

/// [`BlobStore::setup_id`] and [`BlobStore::keep_setup_id`]: none at first, then the first
/// kept, never replaced; the ID is neither a stored file nor a temporary one (recovery
/// leaves it). `blobs` must be empty.
#[allow(clippy::unwrap_used, clippy::panic)] // a test helper: a failure is the report
pub fn check_blob_setup_id(blobs: &dyn BlobStore) {
    assert_eq!(blobs.setup_id().unwrap(), None);
    assert_eq!(blobs.keep_setup_id("first-1").unwrap(), "first-1");
    assert_eq!(blobs.setup_id().unwrap().as_deref(), Some("first-1"));
    assert_eq!(blobs.keep_setup_id("second-2").unwrap(), "first-1");
    assert_eq!(blobs.setup_id().unwrap().as_deref(), Some("first-1"));
    assert_eq!(blobs.stored_paths().unwrap(), Vec::<String>::new());
    assert_eq!(blobs.remove_stale_temps().unwrap(), 0);
    assert_eq!(blobs.setup_id().unwrap().as_deref(), Some("first-1"));
}
