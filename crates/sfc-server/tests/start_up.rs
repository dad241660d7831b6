//! The protocol port accepts connections only once the server is ready: during start-up
//! recovery (which can take minutes on a large S3 prefix) a connection is refused, so a
//! health check (HAProxy's connect check) does not mark the node up early and route
//! clients to a server that cannot answer them yet.
#![cfg(test)]

mod common;

use common::*;
use sfc_proto::Response;
use sfc_server::testing::{Faults, FaultyMeta, MemoryStorage};
use sfc_server::{RunningServer, Storage};
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::time::Duration;

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
    // Recovery reads the files, and takes its time: the listing waits at the gate.
    let faults = Arc::new(Faults::default());
    faults.listing_gate.hold_next();
    let memory = MemoryStorage::new();
    let storage = Storage {
        meta: Box::new(FaultyMeta::new(memory.meta(), Arc::clone(&faults))),
        blobs: Box::new(memory.blobs()),
        lock: None,
    };
    let starting = std::thread::spawn(move || RunningServer::start_with(config, storage));

    assert!(
        faults.listing_gate.wait_arrived(Duration::from_secs(20)),
        "recovery reads the files"
    );
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

    faults.listing_gate.open();
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
