use super::*;
use std::sync::Arc;

fn id(n: u8) -> ClientId {
    ClientId([n; 16])
}

#[test]
fn removing_a_client_removes_its_rows_and_frees_its_name() {
    let store = SqliteStore::open_in_memory().unwrap();
    crate::storage::testing::check_remove_client(&store);
}

#[test]
fn removals_are_recorded_with_their_rows() {
    let store = SqliteStore::open_in_memory().unwrap();
    crate::storage::testing::check_pending_removals(&store);
}

#[test]
fn the_store_keeps_the_contract_of_defensive_db() {
    let store = SqliteStore::open_in_memory().unwrap();
    assert_eq!(store.schema_version().unwrap(), SCHEMA_VERSION);
    crate::storage::testing::check_contract(&store);
    store.close().unwrap();
    assert!(matches!(store.client(&id(1)), Err(StoreError::Closed)));
}

/// An ID with file rows but no client row (an adopted database: `files` has no foreign
/// key in defensive.db) is removed with its file rows, which are returned so that their
/// files go too; before, "no such client" was answered with the rows already deleted.
#[test]
fn removing_an_id_with_file_rows_but_no_client_returns_the_rows() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("defensive.db");
    let store = SqliteStore::open(&path).unwrap();
    let orphan = id(7);
    let path_name = format!("files/{}/left.bin", orphan.to_hex());
    rusqlite::Connection::open(&path)
        .unwrap()
        .execute(
            "INSERT INTO files (ID, FileName, PathName, Verified) VALUES (?1, 'left.bin', ?2, 1)",
            params![&orphan.0[..], path_name],
        )
        .unwrap();
    let removed = store.remove_client(&orphan).unwrap().unwrap();
    assert_eq!(removed.len(), 1);
    assert_eq!(removed[0].path, path_name);
    assert!(store.files().unwrap().is_empty());
    assert_eq!(store.remove_client(&orphan).unwrap(), None);
}

#[test]
fn the_set_up_id_is_recorded_once_and_survives_a_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("defensive.db");
    {
        let store = SqliteStore::open(&path).unwrap();
        crate::storage::testing::check_setup_id(&store);
        store.close().unwrap();
    }
    let store = SqliteStore::open(&path).unwrap();
    assert_eq!(store.setup_id().unwrap().as_deref(), Some("first-1"));
    // Not a schema change: older servers keep opening the database.
    assert_eq!(store.schema_version().unwrap(), SCHEMA_VERSION);
}

/// A database adopted from another implementation (its own tables, `user_version` 0) is
/// used only when it has the keys the statements rely on.
#[test]
fn an_adopted_database_without_the_keys_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let schema = |clients_name: &str, files_key: &str| {
        format!(
            "CREATE TABLE clients (ID BLOB PRIMARY KEY, Name TEXT {clients_name}, \
             PublicKey BLOB, LastSeen TEXT, AESKey BLOB);
             CREATE TABLE files (ID BLOB, FileName TEXT, PathName TEXT, Verified INTEGER{files_key});"
        )
    };
    for (n, (sql, missing)) in [
        (schema("", ", PRIMARY KEY (ID, FileName)"), "(Name)"),
        (schema("UNIQUE", ""), "(FileName, ID)"),
        (
            "CREATE TABLE clients (ID BLOB PRIMARY KEY, Name TEXT UNIQUE);".to_owned(),
            "PublicKey, LastSeen, AESKey",
        ),
    ]
    .into_iter()
    .enumerate()
    {
        let path = dir.path().join(format!("adopted-{n}.db"));
        rusqlite::Connection::open(&path)
            .unwrap()
            .execute_batch(&sql)
            .unwrap();
        let error = SqliteStore::open(&path).unwrap_err().to_string();
        assert!(error.contains(missing), "{missing}: {error}");
        let error = SqliteStore::open_existing(&path).unwrap_err().to_string();
        assert!(error.contains(missing), "{missing}: {error}");
    }
    // With the keys (a unique index made apart from the table counts too), it is used.
    let path = dir.path().join("adopted-ok.db");
    rusqlite::Connection::open(&path)
        .unwrap()
        .execute_batch(&format!(
            "{} CREATE UNIQUE INDEX by_name ON clients (Name);",
            schema("", ", PRIMARY KEY (FileName, ID)")
        ))
        .unwrap();
    let store = SqliteStore::open(&path).unwrap();
    store.insert_client(&id(1), "ann", Timestamp(0)).unwrap();
    assert!(matches!(
        store.insert_client(&id(2), "ann", Timestamp(0)),
        Ok(Inserted::NameTaken)
    ));
}

#[test]
fn file_database_uses_wal_and_refuses_newer_schemas() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("defensive.db");
    {
        let store = SqliteStore::open(&path).unwrap();
        let mode: String = store
            .write(|c| c.query_row("PRAGMA journal_mode", [], |r| r.get(0)))
            .unwrap();
        assert_eq!(mode, "wal");
        let sync: i64 = store
            .write(|c| c.query_row("PRAGMA synchronous", [], |r| r.get(0)))
            .unwrap();
        assert_eq!(sync, 2, "synchronous=FULL");
        store.insert_client(&id(1), "a", Timestamp(0)).unwrap();
        store.close().unwrap();
    }
    // Reopening keeps the data and does not migrate again.
    let store = SqliteStore::open(&path).unwrap();
    assert_eq!(store.clients().unwrap().len(), 1);
    store
        .write(|c| c.pragma_update(None, "user_version", SCHEMA_VERSION + 1))
        .unwrap();
    store.close().unwrap();
    let error = SqliteStore::open(&path).unwrap_err();
    assert!(error.to_string().contains("schema version"), "{error}");
    // The admin views too.
    let error = SqliteStore::open_existing(&path).unwrap_err();
    assert!(error.to_string().contains("schema version"), "{error}");
}

#[test]
fn concurrent_writes_share_one_transaction_and_all_survive() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("defensive.db");
    let store = Arc::new(SqliteStore::open(&path).unwrap());
    let stats = store.group_commit_stats().unwrap();
    let release = hold_writer(&store);
    let writers: Vec<_> = (0..64u8)
        .map(|n| {
            let store = Arc::clone(&store);
            std::thread::spawn(move || {
                store.insert_client(&id(n), &format!("client-{n}"), Timestamp(0))
            })
        })
        .collect();
    wait_for_queue(&stats, 65);
    release.send(()).unwrap();
    for writer in writers {
        assert_eq!(writer.join().unwrap().unwrap(), Inserted::Ok);
    }
    // The held transaction, then all 64 writes in one more.
    assert_eq!((stats.transactions(), stats.writes()), (2, 65));
    store.close().unwrap();
    let store = SqliteStore::open(&path).unwrap();
    assert_eq!(store.clients().unwrap().len(), 64);
}

#[test]
fn a_failing_write_is_undone_alone_within_its_group() {
    let store = Arc::new(SqliteStore::open_in_memory().unwrap());
    let stats = store.group_commit_stats().unwrap();
    let release = hold_writer(&store);
    let queue = |n: u8, name: &'static str, s: &Arc<SqliteStore>| {
        let store = Arc::clone(s);
        let handle = std::thread::spawn(move || store.insert_client(&id(n), name, Timestamp(0)));
        wait_for_queue(&stats, 1 + u64::from(n));
        handle
    };
    let first = queue(1, "alice", &store);
    let taken = queue(2, "alice", &store);
    let other = queue(3, "bob", &store);
    release.send(()).unwrap();
    assert_eq!(first.join().unwrap().unwrap(), Inserted::Ok);
    assert_eq!(taken.join().unwrap().unwrap(), Inserted::NameTaken);
    assert_eq!(other.join().unwrap().unwrap(), Inserted::Ok);
    assert_eq!(
        stats.transactions(),
        2,
        "the three writes shared a transaction"
    );
    let names: Vec<_> = store
        .clients()
        .unwrap()
        .into_iter()
        .map(|c| c.name)
        .collect();
    assert_eq!(names, ["alice", "bob"]);
}

#[test]
fn a_transaction_lost_midway_fails_every_write_of_its_group() {
    let store = Arc::new(SqliteStore::open_in_memory().unwrap());
    let stats = store.group_commit_stats().unwrap();
    let release = hold_writer(&store);
    let s = Arc::clone(&store);
    let before = std::thread::spawn(move || s.insert_client(&id(1), "alice", Timestamp(0)));
    wait_for_queue(&stats, 2);
    // What SQLite does on an I/O error or a full disk: the whole transaction is gone.
    let s = Arc::clone(&store);
    let lost = std::thread::spawn(move || s.write(|c| c.execute_batch("ROLLBACK")));
    wait_for_queue(&stats, 3);
    let s = Arc::clone(&store);
    let after = std::thread::spawn(move || s.insert_client(&id(2), "bob", Timestamp(0)));
    wait_for_queue(&stats, 4);
    release.send(()).unwrap();
    assert!(before.join().unwrap().is_err(), "its row was rolled back");
    assert!(lost.join().unwrap().is_err());
    assert!(after.join().unwrap().is_err(), "it never ran");
    assert!(store.clients().unwrap().is_empty());
    // The writer goes on with the next group.
    assert_eq!(
        store.insert_client(&id(3), "carol", Timestamp(0)).unwrap(),
        Inserted::Ok
    );
    store.close().unwrap();
    assert!(matches!(
        store.insert_client(&id(4), "dave", Timestamp(0)),
        Err(StoreError::Closed)
    ));
}

/// Occupies the writer thread until the returned sender is used, so that the writes
/// queued meanwhile form the next group.
fn hold_writer(store: &Arc<SqliteStore>) -> std::sync::mpsc::Sender<()> {
    let (release, released) = std::sync::mpsc::channel::<()>();
    let (started, running) = std::sync::mpsc::channel::<()>();
    let store = Arc::clone(store);
    std::thread::spawn(move || {
        store.write(move |_| {
            let _ = started.send(());
            let _ = released.recv();
            Ok(())
        })
    });
    running.recv().unwrap();
    release
}

fn wait_for_queue(stats: &GroupStats, submitted: u64) {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while stats.submitted() < submitted {
        assert!(std::time::Instant::now() < deadline, "writes never queued");
        std::thread::sleep(Duration::from_millis(1));
    }
}

#[test]
fn columns_are_exactly_the_specified_ones() {
    let store = SqliteStore::open_in_memory().unwrap();
    let columns = |table: &str| -> Vec<String> {
        store
            .write({
                let sql = format!("PRAGMA table_info({table})");
                move |c| {
                    let mut s = c.prepare(&sql)?;
                    let names = s.query_map([], |r| r.get::<_, String>(1))?;
                    names.collect()
                }
            })
            .unwrap()
    };
    assert_eq!(
        columns("clients"),
        ["ID", "Name", "PublicKey", "LastSeen", "AESKey"]
    );
    assert_eq!(columns("files"), ["ID", "FileName", "PathName", "Verified"]);
}
