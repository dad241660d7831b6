//! The protocol port accepts connections only once the server is ready: during start-up
//! recovery (which can take minutes on a large S3 prefix) a connection is refused, so a
//! health check (HAProxy's connect check) does not mark the node up early and route
//! clients to a server that cannot answer them yet.
#![cfg(test)]

mod common;

use common::*;
use sfc_proto::ClientId;
use sfc_proto::Response;
use sfc_server::testing::MemoryStorage;
use sfc_server::{
    ClientRecord, FileRecord, Inserted, MetaStore, RunningServer, Storage, StoreError, Timestamp,
};
use std::net::{SocketAddr, TcpStream};
use std::sync::mpsc;
use std::sync::Mutex;
use std::time::Duration;

/// A metadata store whose first `files()` (read by recovery at start-up) reports that it
/// started, then waits until the test lets it go on: a recovery that takes its time.
#[derive(Debug)]
struct SlowRecovery<M> {
    inner: M,
    /// Taken by the first `files()`: where to report, and the gate to wait on.
    hold: Mutex<Option<(mpsc::Sender<()>, mpsc::Receiver<()>)>>,
}

impl<M: MetaStore> MetaStore for SlowRecovery<M> {
    fn client(&self, id: &ClientId) -> Result<Option<ClientRecord>, StoreError> {
        self.inner.client(id)
    }
    fn insert_client(
        &self,
        id: &ClientId,
        name: &str,
        now: Timestamp,
    ) -> Result<Inserted, StoreError> {
        self.inner.insert_client(id, name, now)
    }
    fn set_keys(
        &self,
        id: &ClientId,
        public_key: Option<&[u8]>,
        aes_key: &[u8],
        now: Timestamp,
    ) -> Result<(), StoreError> {
        self.inner.set_keys(id, public_key, aes_key, now)
    }
    fn put_file(&self, file: &FileRecord, now: Timestamp) -> Result<(), StoreError> {
        self.inner.put_file(file, now)
    }
    fn set_verified(
        &self,
        id: &ClientId,
        file_name: &str,
        now: Timestamp,
    ) -> Result<bool, StoreError> {
        self.inner.set_verified(id, file_name, now)
    }
    fn file(&self, id: &ClientId, file_name: &str) -> Result<Option<FileRecord>, StoreError> {
        self.inner.file(id, file_name)
    }
    fn remove_file(
        &self,
        id: &ClientId,
        file_name: &str,
        seen: Option<Timestamp>,
    ) -> Result<Option<FileRecord>, StoreError> {
        self.inner.remove_file(id, file_name, seen)
    }
    fn remove_client(&self, id: &ClientId) -> Result<Option<Vec<FileRecord>>, StoreError> {
        self.inner.remove_client(id)
    }
    fn touch(&self, seen: &[(ClientId, Timestamp)]) -> Result<(), StoreError> {
        self.inner.touch(seen)
    }
    fn clients(&self) -> Result<Vec<ClientRecord>, StoreError> {
        self.inner.clients()
    }
    fn files(&self) -> Result<Vec<FileRecord>, StoreError> {
        let hold = self.hold.lock().unwrap().take();
        if let Some((started, gate)) = hold {
            let _ = started.send(());
            let _ = gate.recv();
        }
        self.inner.files()
    }
    fn close(&self) -> Result<(), StoreError> {
        self.inner.close()
    }
}

/// A port free on 127.0.0.1 a moment ago: the server's address must be known before
/// `start_with` returns (it returns only once the server is ready).
fn free_addr() -> SocketAddr {
    let probe = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    probe.local_addr().unwrap()
}

#[test]
fn the_port_refuses_connections_until_recovery_is_over() {
    init_logging();
    let dir = tempfile::tempdir().unwrap();
    let mut config = config_for(dir.path());
    config.bind = free_addr();
    let addr = config.bind;
    let (started_tx, started) = mpsc::channel();
    let (go_on, gate) = mpsc::channel();
    let memory = MemoryStorage::new();
    let storage = Storage {
        meta: Box::new(SlowRecovery {
            inner: memory.meta(),
            hold: Mutex::new(Some((started_tx, gate))),
        }),
        blobs: Box::new(memory.blobs()),
        lock: None,
    };
    let starting = std::thread::spawn(move || RunningServer::start_with(config, storage));

    started
        .recv_timeout(Duration::from_secs(20))
        .expect("recovery reads the files");
    // The port is bound (a second server could not take it) but not listening: the
    // kernel answers with a reset, not a completed handshake.
    for _ in 0..3 {
        match TcpStream::connect_timeout(&addr, Duration::from_secs(2)) {
            Err(error) => assert_eq!(
                error.kind(),
                std::io::ErrorKind::ConnectionRefused,
                "{error}"
            ),
            Ok(_) => panic!("a connection was accepted during recovery"),
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(!starting.is_finished(), "the server waits for recovery");

    go_on.send(()).unwrap();
    let server = starting.join().unwrap().unwrap();
    assert_eq!(server.addr(), addr);
    // Ready: connections are accepted and served.
    let mut conn = Conn::connect(addr);
    assert!(matches!(
        conn.call(&register_request("alice")),
        Response::Registered { .. }
    ));
    server.stop();
}

/// Port 0 still reports the port the system picked (read from the bound socket, before
/// it listens).
#[test]
fn port_zero_reports_the_port_picked() {
    init_logging();
    let dir = tempfile::tempdir().unwrap();
    let config = config_for(dir.path());
    assert_eq!(config.bind.port(), 0);
    let server = RunningServer::start_with(config, MemoryStorage::new().storage()).unwrap();
    let addr = server.addr();
    assert_ne!(addr.port(), 0);
    let mut conn = Conn::connect(addr);
    assert!(matches!(
        conn.call(&register_request("bob")),
        Response::Registered { .. }
    ));
    server.stop();
}
