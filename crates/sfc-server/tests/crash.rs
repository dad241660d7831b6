//! Crash tests: the real `sfc-server` binary is killed with SIGKILL in the middle of an
//! upload, in the middle of many concurrent uploads (new files and replacements of
//! confirmed ones), and between a 1603 and its 900; then restarted on the same data
//! folder. After every restart:
//!
//! - no temporary file of the dead process is left (removed at start-up);
//! - every row of `files` names a file that exists and holds one complete version the
//!   client sent for that label (size and cksum), so no partial file is ever shown as
//!   stored; a Verified row holds a version the client confirmed with 900;
//! - every file under a final name is a complete version the client sent;
//! - every file acknowledged with 1603 is still there;
//! - every registered client reconnects (827 → 1605, the AES key unwraps) and a new
//!   upload works.
//!
//! And, sans-IO over the in-memory store, a crash at every single durable step of an
//! upload (new file and replacement of a confirmed one) leaves a consistent store.
#![cfg(test)]

mod common;

use common::process::ServerProcess;
use common::*;
use sfc_crypto::AesKey;
use sfc_proto::{ClientId, Request, RequestBody, Response};
use sfc_server::MetaStore;
use sfc_server::SqliteStore;
use std::collections::BTreeMap;
use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// The binary; `kill` sends SIGKILL (the process's own drop reaps it otherwise).
struct Proc {
    process: ServerProcess,
    addr: SocketAddr,
}

impl Proc {
    fn start(dir: &Path) -> Self {
        let mut process = ServerProcess::start(&[
            "--data-dir",
            dir.to_str().unwrap(),
            "--bind",
            "127.0.0.1",
            "--port",
            "0",
            "--log-level",
            "info",
        ]);
        let addr = process.listening_addr();
        Proc { process, addr }
    }

    fn connect(&self) -> Conn {
        Conn::connect(self.addr)
    }

    /// SIGKILL, and reap.
    fn kill(mut self) {
        self.process.child.kill().unwrap();
        self.process.child.wait().unwrap();
    }
}

/// What the clients sent and were told, to check the store against.
#[derive(Default)]
struct Record {
    /// Every version sent for (client hex, label), complete or not.
    sent: BTreeMap<(String, String), Vec<Vec<u8>>>,
    /// The version each 1603 acknowledged (the last one).
    acked: BTreeMap<(String, String), Vec<u8>>,
    /// Versions a 900 was sent for.
    confirming: BTreeMap<(String, String), Vec<Vec<u8>>>,
    /// Clients and their names.
    clients: BTreeMap<String, String>,
    /// 1603s with a checksum that does not match what was sent.
    wrong_checksums: usize,
}

impl Record {
    fn key(id: ClientId, label: &str) -> (String, String) {
        (id.to_hex(), label.to_owned())
    }
}

type Shared = Arc<Mutex<Record>>;

/// One upload on `conn`, never panicking on a dead server: the reply, or None.
fn try_upload(
    conn: &mut Conn,
    id: ClientId,
    key: &AesKey,
    label: &str,
    plain: &[u8],
) -> Option<Response> {
    let cipher = encrypt(key, plain);
    let all = packets(
        id,
        label,
        plain.len(),
        &cipher,
        64 * 1024,
        ContentSize::Whole,
    );
    for packet in all {
        conn.stream.write_all(&packet).ok()?;
    }
    conn.try_recv()
}

/// A client that uploads versions of its files and confirms them until the server dies
/// (whatever the test client does when the connection dies under it is fine).
fn busy_client(addr: SocketAddr, user: String, record: Shared, seed: u32) {
    let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        busy_client_until_killed(addr, user, record, seed)
    }));
}

fn busy_client_until_killed(addr: SocketAddr, user: String, record: Shared, seed: u32) {
    let mut conn = Conn::connect(addr);
    let (id, key) = enroll(&mut conn, &user);
    record.lock().unwrap().clients.insert(id.to_hex(), user);
    for round in 0u32.. {
        let label = ["a.bin", "b.bin", "dir/c.bin"][(round % 3) as usize];
        let len =
            1_000 + ((seed.wrapping_mul(7919).wrapping_add(round * 104_729)) % 300_000) as usize;
        let plain = data(len, seed * 1000 + round);
        let k = Record::key(id, label);
        record
            .lock()
            .unwrap()
            .sent
            .entry(k.clone())
            .or_default()
            .push(plain.clone());
        match try_upload(&mut conn, id, &key, label, &plain) {
            Some(Response::FileReceived { cksum, .. }) => {
                if cksum != sfc_crypto::cksum(&plain) {
                    record.lock().unwrap().wrong_checksums += 1;
                }
                record
                    .lock()
                    .unwrap()
                    .acked
                    .insert(k.clone(), plain.clone());
            }
            _ => return,
        }
        if round % 2 == 0 {
            record
                .lock()
                .unwrap()
                .confirming
                .entry(k)
                .or_default()
                .push(plain);
            let request = file_name_request(id, 900, label).encode();
            if conn.stream.write_all(&request).is_err() || conn.try_recv().is_none() {
                return;
            }
        }
    }
}

fn db(dir: &Path) -> SqliteStore {
    SqliteStore::open_existing(&dir.join("defensive.db")).unwrap()
}

fn temp_files(dir: &Path) -> Vec<PathBuf> {
    files_under(&dir.join("files"))
        .into_iter()
        .filter(|path| is_upload_temp(path))
        .collect()
}

/// The checks of the module documentation, against a restarted server.
fn check_after_restart(dir: &Path, server: &Proc, record: &mut Record) {
    assert_eq!(
        temp_files(dir),
        Vec::<PathBuf>::new(),
        "temporary files left"
    );
    let rows = db(dir).files().unwrap();
    for row in &rows {
        let k = (row.client_id.to_hex(), row.file_name.clone());
        let content = std::fs::read(dir.join(&row.path))
            .unwrap_or_else(|e| panic!("{row:?} names a missing file: {e}"));
        let versions = record.sent.get(&k).map(Vec::as_slice).unwrap_or_default();
        assert!(
            versions.contains(&content),
            "{row:?} holds {} bytes that are no complete version the client sent",
            content.len()
        );
        if row.verified {
            let confirmed = record
                .confirming
                .get(&k)
                .map(Vec::as_slice)
                .unwrap_or_default();
            assert!(
                confirmed.contains(&content),
                "{row:?} is verified but holds a version no 900 was sent for"
            );
        }
    }
    for path in files_under(&dir.join("files")) {
        let hex = path
            .parent()
            .unwrap()
            .file_name()
            .unwrap()
            .to_string_lossy()
            .into_owned();
        let content = std::fs::read(&path).unwrap();
        let complete = record
            .sent
            .iter()
            .filter(|((h, _), _)| *h == hex)
            .any(|(_, versions)| versions.contains(&content));
        assert!(
            complete,
            "{} is not a complete version of a file",
            path.display()
        );
        assert!(
            rows.iter().any(|row| dir.join(&row.path) == path),
            "{} is stored but no row names it (start-up removes such files)",
            path.display()
        );
    }
    for k in record.acked.keys() {
        assert!(
            rows.iter()
                .any(|r| r.client_id.to_hex() == k.0 && r.file_name == k.1),
            "the file {k:?} acknowledged with 1603 was lost"
        );
    }
    // Every registered client reconnects and can upload again.
    for client in db(dir).clients().unwrap() {
        let mut conn = server.connect();
        let reply = conn.call(&Request::new(
            client.id,
            RequestBody::Reconnect {
                name: name(&client.name),
            },
        ));
        let Response::ReconnectAccepted { wrapped_key, .. } = reply else {
            panic!("{} cannot reconnect: {reply:?}", client.name);
        };
        let key = keypair().unwrap_aes_key(&wrapped_key).unwrap();
        let plain = data(5_000, 77);
        let k = Record::key(client.id, "after-restart.bin");
        record
            .sent
            .entry(k.clone())
            .or_default()
            .push(plain.clone());
        let reply = upload(
            &mut conn,
            client.id,
            &key,
            "after-restart.bin",
            &plain,
            2048,
        );
        assert_received(&reply, client.id, "after-restart.bin", &plain);
        record.acked.insert(k, plain);
    }
}

#[test]
fn sigkill_mid_upload_leaves_no_partial_file_and_temp_files_are_removed_at_start_up() {
    keypair();
    let dir = tempfile::tempdir().unwrap();
    let server = Proc::start(dir.path());
    let mut conn = server.connect();
    let (id, key) = enroll(&mut conn, "victim");
    let mut record = Record::default();
    record.clients.insert(id.to_hex(), "victim".into());
    // A confirmed earlier version of the file, then a large replacement cut short.
    let v1 = data(50_000, 1);
    record
        .sent
        .insert(Record::key(id, "big.bin"), vec![v1.clone()]);
    assert_received(
        &upload(&mut conn, id, &key, "big.bin", &v1, 8192),
        id,
        "big.bin",
        &v1,
    );
    assert!(matches!(
        conn.call(&file_name_request(id, 900, "big.bin")),
        Response::Ack { .. }
    ));
    record.acked.insert(Record::key(id, "big.bin"), v1.clone());
    record
        .confirming
        .insert(Record::key(id, "big.bin"), vec![v1.clone()]);
    let v2 = data(3_000_000, 2);
    record
        .sent
        .get_mut(&Record::key(id, "big.bin"))
        .unwrap()
        .push(v2.clone());
    let cipher = encrypt(&key, &v2);
    let all = packets(
        id,
        "big.bin",
        v2.len(),
        &cipher,
        100_000,
        ContentSize::Whole,
    );
    for packet in &all[..15] {
        conn.send_raw(packet);
    }
    conn.send_raw(&all[15][..50_000]);
    assert!(eventually(Duration::from_secs(10), || {
        temp_files(dir.path())
            .iter()
            .any(|p| std::fs::metadata(p).map(|m| m.len()).unwrap_or(0) > 1_000_000)
    }));
    server.kill();
    assert_eq!(
        temp_files(dir.path()).len(),
        1,
        "the dead process left its temporary file"
    );

    let server = Proc::start(dir.path());
    check_after_restart(dir.path(), &server, &mut record);
    // The confirmed version is untouched.
    let row = db(dir.path()).file(&id, "big.bin").unwrap().unwrap();
    assert!(row.verified);
    assert_eq!(std::fs::read(dir.path().join(&row.path)).unwrap(), v1);
}

#[test]
fn sigkill_during_many_concurrent_uploads() {
    keypair();
    let dir = tempfile::tempdir().unwrap();
    let record: Shared = Arc::default();
    for (round, delay_ms) in [250u64, 700, 1500].into_iter().enumerate() {
        let server = Proc::start(dir.path());
        let threads: Vec<_> = (0..6)
            .map(|i| {
                let record = Arc::clone(&record);
                let addr = server.addr;
                let user = format!("busy-{round}-{i}");
                std::thread::spawn(move || busy_client(addr, user, record, (round * 10 + i) as u32))
            })
            .collect();
        std::thread::sleep(Duration::from_millis(delay_ms));
        server.kill();
        for thread in threads {
            thread.join().unwrap();
        }
        eprintln!(
            "round {round}: killed after {delay_ms} ms with {} upload(s) in flight; {} file(s) acknowledged so far",
            temp_files(dir.path()).len(),
            record.lock().unwrap().acked.len()
        );
        let server = Proc::start(dir.path());
        let mut record = record.lock().unwrap();
        check_after_restart(dir.path(), &server, &mut record);
        drop(record);
        drop(server);
    }
    let record = record.lock().unwrap();
    assert!(
        !record.acked.is_empty(),
        "uploads completed before the kills"
    );
    assert_eq!(record.wrong_checksums, 0);
}

#[test]
fn sigkill_between_1603_and_900() {
    keypair();
    let dir = tempfile::tempdir().unwrap();
    let server = Proc::start(dir.path());
    let mut conn = server.connect();
    let (id, key) = enroll(&mut conn, "unconfirmed");
    let mut record = Record::default();
    // A new file, and a replacement of a confirmed file, both acknowledged, neither
    // confirmed.
    let v1 = data(10_000, 1);
    let v2 = data(20_000, 2);
    let fresh = data(30_000, 3);
    record
        .sent
        .insert(Record::key(id, "r.bin"), vec![v1.clone(), v2.clone()]);
    record
        .sent
        .insert(Record::key(id, "n.bin"), vec![fresh.clone()]);
    record
        .confirming
        .insert(Record::key(id, "r.bin"), vec![v1.clone()]);
    assert_received(
        &upload(&mut conn, id, &key, "r.bin", &v1, 4096),
        id,
        "r.bin",
        &v1,
    );
    assert!(matches!(
        conn.call(&file_name_request(id, 900, "r.bin")),
        Response::Ack { .. }
    ));
    assert_received(
        &upload(&mut conn, id, &key, "r.bin", &v2, 4096),
        id,
        "r.bin",
        &v2,
    );
    assert_received(
        &upload(&mut conn, id, &key, "n.bin", &fresh, 4096),
        id,
        "n.bin",
        &fresh,
    );
    record.acked.insert(Record::key(id, "r.bin"), v2.clone());
    record.acked.insert(Record::key(id, "n.bin"), fresh.clone());
    server.kill();

    let server = Proc::start(dir.path());
    for (label, content) in [("r.bin", &v2), ("n.bin", &fresh)] {
        let row = db(dir.path()).file(&id, label).unwrap().unwrap();
        assert!(!row.verified, "{label} was never confirmed");
        assert_eq!(&std::fs::read(dir.path().join(&row.path)).unwrap(), content);
    }
    // The client comes back and confirms.
    let mut conn = server.connect();
    let reply = conn.call(&Request::new(
        id,
        RequestBody::Reconnect {
            name: name("unconfirmed"),
        },
    ));
    assert!(
        matches!(reply, Response::ReconnectAccepted { .. }),
        "{reply:?}"
    );
    for label in ["r.bin", "n.bin"] {
        assert_eq!(
            conn.call(&file_name_request(id, 900, label)),
            Response::Ack {
                client_id: Some(id)
            }
        );
        record
            .confirming
            .entry(Record::key(id, label))
            .or_default()
            .push(if label == "r.bin" {
                v2.clone()
            } else {
                fresh.clone()
            });
    }
    assert!(db(dir.path()).files().unwrap().iter().all(|f| f.verified));
    check_after_restart(dir.path(), &server, &mut record);
}

// ----- every crash point, sans-IO --------------------------------------------------------

mod every_step {
    use super::*;
    use sfc_proto::FilePacketHeader;
    use sfc_proto::ResponseCode;
    use sfc_server::testing::session::{Core, Ctx, Now};
    use sfc_server::testing::{MemoryStorage, OsEntropy};
    use sfc_server::{ServerConfig, Timestamp};
    use std::time::Instant;

    fn ctx() -> Ctx {
        let now = Now {
            wall: Timestamp::now(),
            mono: Instant::now(),
        };
        Ctx::new(false, now)
    }

    fn new_core(storage: &MemoryStorage) -> Core {
        Core::new(
            Box::new(storage.meta()),
            Box::new(storage.blobs()),
            ServerConfig::new(".").session_limits(),
            Box::new(OsEntropy),
        )
    }

    fn enroll(core: &Core) -> (ClientId, AesKey) {
        let out = core.handle_request(&ctx(), register_request("crashy"));
        let Some(Response::Registered { client_id }) = out.reply else {
            panic!("{out:?}")
        };
        let out = core.handle_request(&ctx(), key_request(client_id, "crashy"));
        let Some(Response::PublicKeyAccepted { wrapped_key, .. }) = out.reply else {
            panic!("{out:?}")
        };
        (client_id, keypair().unwrap_aes_key(&wrapped_key).unwrap())
    }

    fn send(core: &Core, id: ClientId, key: &AesKey, label: &str, plain: &[u8]) -> Option<u16> {
        let cipher = encrypt(key, plain);
        let chunks: Vec<&[u8]> = cipher.chunks(700).collect();
        let mut last = None;
        for (i, chunk) in chunks.iter().enumerate() {
            let packet = FilePacketHeader {
                content_size: cipher.len() as u32,
                orig_file_size: plain.len() as u32,
                packet_number: i as u16 + 1,
                total_packets: chunks.len() as u16,
                file_name: name(label),
            };
            let body = RequestBody::SendFile {
                packet,
                content: chunk.to_vec(),
            };
            last = core
                .handle_request(&ctx(), Request::new(id, body))
                .code()
                .map(ResponseCode::as_u16);
        }
        last
    }

    /// Crashes after `n` durable steps of an upload; returns whether it was acknowledged.
    fn crash_at(n: u64, replace: bool) -> bool {
        let storage = MemoryStorage::new();
        let core = new_core(&storage);
        let (id, key) = enroll(&core);
        let v1 = data(3_000, 1);
        let v2 = data(5_000, 2);
        if replace {
            assert_eq!(send(&core, id, &key, "f", &v1), Some(1603));
            let ok = core.handle_request(&ctx(), file_name_request(id, 900, "f"));
            assert_eq!(ok.code().map(ResponseCode::as_u16), Some(1604));
        }
        storage.faults().crash_after(n);
        let acked = send(&core, id, &key, "f", &v2) == Some(1603);
        drop(core);
        storage.restart();
        // What the server does at start-up, before it serves anyone.
        sfc_server::recover(
            &|| Ok(storage.files()),
            storage.clients().len(),
            &storage.blobs(),
        )
        .unwrap();
        let core = new_core(&storage);
        let stored = storage.stored();
        let rows = storage.files();
        match rows.as_slice() {
            [] => assert!(!replace && !acked, "crash at {n}: the row is gone"),
            [row] => {
                let content = stored
                    .get(&row.path)
                    .unwrap_or_else(|| panic!("crash at {n}: {row:?} names a missing file"));
                if replace {
                    assert!(
                        *content == v1 || *content == v2,
                        "crash at {n}: partial file"
                    );
                    assert!(!row.verified || *content == v1, "crash at {n}: verified v2");
                } else {
                    assert_eq!(*content, v2, "crash at {n}: partial file");
                }
                if acked {
                    assert_eq!(*content, v2, "crash at {n}: acknowledged v2 lost");
                }
            }
            more => panic!("crash at {n}: {more:?}"),
        }
        for (path, content) in &stored {
            assert!(
                *content == v1 || *content == v2,
                "crash at {n}: {path} is a partial file"
            );
            assert!(
                rows.iter().any(|row| row.path == *path),
                "crash at {n}: {path} is stored but no row names it"
            );
        }
        assert_eq!(storage.temp_count(), 0);
        // The client is still there and can store the file again.
        let out = core.handle_request(
            &ctx(),
            Request::new(
                id,
                RequestBody::Reconnect {
                    name: name("crashy"),
                },
            ),
        );
        let Some(Response::ReconnectAccepted { wrapped_key, .. }) = out.reply else {
            panic!("crash at {n}: {out:?}")
        };
        let key = keypair().unwrap_aes_key(&wrapped_key).unwrap();
        assert_eq!(send(&core, id, &key, "f", &v1), Some(1603), "crash at {n}");
        acked
    }

    #[test]
    fn a_crash_at_every_durable_step_of_an_upload_leaves_a_consistent_store() {
        for replace in [false, true] {
            let mut n = 0;
            // Stop once the upload completes within the budget.
            while !crash_at(n, replace) {
                n += 1;
                assert!(n < 20, "the upload never completes");
            }
            eprintln!("replace: {replace}: crashed at each of {n} durable steps");
        }
    }
}
