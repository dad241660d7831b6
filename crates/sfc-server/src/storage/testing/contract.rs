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
        file(bob, "a.txt"),
    ] {
        meta.put_file(&record, t).unwrap();
    }
    let removed = meta.remove_client(&alice).unwrap();
    assert_eq!(
        removed,
        Some(vec![file(alice, "a.txt"), file(alice, "b.txt")])
    );
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

/// [`BlobStore::open`] gives back the bytes persisted, and refuses missing or escaping
/// paths.
#[allow(clippy::unwrap_used, clippy::panic)] // a test helper: a failure is the report
pub fn check_open_reads_back(blobs: &dyn BlobStore) {
    let client = ClientId([0x5a; 16]);
    let content: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
    let mut temp = blobs.create_temp(&client, "big.bin").unwrap();
    temp.write_all(&content).unwrap();
    let path = temp.persist().unwrap();
    let mut back = Vec::new();
    blobs.open(&path).unwrap().read_to_end(&mut back).unwrap();
    assert!(back == content, "read back {} bytes", back.len());
    let missing = format!("files/{}/missing", client.to_hex());
    assert!(blobs.open(&missing).is_err());
    assert!(blobs.open("../etc/passwd").is_err());
    assert!(blobs.open("/etc/passwd").is_err());
    blobs.remove(&path).unwrap();
    assert!(blobs.open(&path).is_err());
}
