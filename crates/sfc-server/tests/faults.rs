//! Fault injection behind the storage traits: a full disk and a failing database must
//! give 1607 (logged), leave no temporary file, and not disturb later requests.

mod common;

use common::*;
use sfc_proto::{ClientId, Response};
use sfc_server::storage::fs::LocalBlobStore;
use sfc_server::storage::sqlite::SqliteStore;
use sfc_server::storage::{
    BlobStore, ClientRecord, FileRecord, Inserted, MetaStore, StoreError, TempBlob, Timestamp,
};
use sfc_server::{RunningServer, Storage};
use std::io;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

#[derive(Debug, Default)]
struct Switches {
    disk_full: AtomicBool,
    db_down: AtomicBool,
}

#[derive(Debug)]
struct FailingBlobs {
    inner: LocalBlobStore,
    switches: Arc<Switches>,
}

#[derive(Debug)]
struct FailingTemp {
    inner: Box<dyn TempBlob>,
    switches: Arc<Switches>,
}

fn enospc() -> io::Error {
    io::Error::from_raw_os_error(28) // ENOSPC: "No space left on device"
}

impl BlobStore for FailingBlobs {
    fn create_temp(&self, client: &ClientId, disk_name: &str) -> io::Result<Box<dyn TempBlob>> {
        Ok(Box::new(FailingTemp {
            inner: self.inner.create_temp(client, disk_name)?,
            switches: self.switches.clone(),
        }))
    }
    fn remove(&self, path: &str) -> io::Result<()> {
        self.inner.remove(path)
    }
    fn size(&self, path: &str) -> io::Result<u64> {
        self.inner.size(path)
    }
    fn remove_stale_temps(&self) -> io::Result<usize> {
        self.inner.remove_stale_temps()
    }
}

impl TempBlob for FailingTemp {
    fn write_all(&mut self, bytes: &[u8]) -> io::Result<()> {
        if self.switches.disk_full.load(Ordering::SeqCst) {
            return Err(enospc());
        }
        self.inner.write_all(bytes)
    }
    fn persist(self: Box<Self>) -> io::Result<String> {
        if self.switches.disk_full.load(Ordering::SeqCst) {
            return Err(enospc());
        }
        self.inner.persist()
    }
}

#[derive(Debug)]
struct FailingMeta {
    inner: SqliteStore,
    switches: Arc<Switches>,
}

impl FailingMeta {
    fn check(&self) -> Result<(), StoreError> {
        if self.switches.db_down.load(Ordering::SeqCst) {
            Err(StoreError::Database("disk I/O error (injected)".into()))
        } else {
            Ok(())
        }
    }
}

impl MetaStore for FailingMeta {
    fn client(&self, id: &ClientId) -> Result<Option<ClientRecord>, StoreError> {
        self.check()?;
        self.inner.client(id)
    }
    fn insert_client(
        &self,
        id: &ClientId,
        name: &str,
        now: Timestamp,
    ) -> Result<Inserted, StoreError> {
        self.check()?;
        self.inner.insert_client(id, name, now)
    }
    fn set_keys(
        &self,
        id: &ClientId,
        public_key: Option<&[u8]>,
        aes_key: &[u8],
        now: Timestamp,
    ) -> Result<(), StoreError> {
        self.check()?;
        self.inner.set_keys(id, public_key, aes_key, now)
    }
    fn put_file(&self, file: &FileRecord, now: Timestamp) -> Result<(), StoreError> {
        self.check()?;
        self.inner.put_file(file, now)
    }
    fn set_verified(
        &self,
        id: &ClientId,
        file_name: &str,
        now: Timestamp,
    ) -> Result<bool, StoreError> {
        self.check()?;
        self.inner.set_verified(id, file_name, now)
    }
    fn remove_file(
        &self,
        id: &ClientId,
        file_name: &str,
        now: Timestamp,
    ) -> Result<Option<FileRecord>, StoreError> {
        self.check()?;
        self.inner.remove_file(id, file_name, now)
    }
    fn touch(&self, seen: &[(ClientId, Timestamp)]) -> Result<(), StoreError> {
        self.check()?;
        self.inner.touch(seen)
    }
    fn clients(&self) -> Result<Vec<ClientRecord>, StoreError> {
        self.inner.clients()
    }
    fn files(&self) -> Result<Vec<FileRecord>, StoreError> {
        self.inner.files()
    }
    fn close(&self) -> Result<(), StoreError> {
        self.inner.close()
    }
}

fn start() -> (tempfile::TempDir, RunningServer, Arc<Switches>) {
    init_logging();
    let dir = tempfile::tempdir().unwrap();
    let switches = Arc::new(Switches::default());
    let storage = Storage {
        meta: Box::new(FailingMeta {
            inner: SqliteStore::open(&dir.path().join("defensive.db")).unwrap(),
            switches: switches.clone(),
        }),
        blobs: Box::new(FailingBlobs {
            inner: LocalBlobStore::new(dir.path()),
            switches: switches.clone(),
        }),
    };
    let server = RunningServer::start_with(config_for(dir.path()), storage).unwrap();
    (dir, server, switches)
}

fn entries(dir: &std::path::Path, id: ClientId) -> usize {
    std::fs::read_dir(dir.join("files").join(id.to_hex()))
        .map(|d| d.count())
        .unwrap_or(0)
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
    std::thread::sleep(std::time::Duration::from_millis(100));
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
    assert_eq!(
        conn.call(&file_name_request(id, 900, "g.bin")),
        Response::Ack {
            client_id: Some(id)
        }
    );
    server.stop();
}
