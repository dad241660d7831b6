//! End-to-end tests: the real server on 127.0.0.1:0 in a temporary folder, driven by the
//! test client in `common`.
#![cfg(test)]

mod common;

use common::*;
use sfc_proto::{
    ClientId, FilePacketHeader, Request, RequestBody, RequestCode, RequestHeader, Response,
};
use std::time::{Duration, Instant};

#[test]
fn persistent_session_stores_files_of_every_small_size() {
    let server = TestServer::start();
    let mut conn = server.connect();
    let (id, key) = enroll(&mut conn, "alice");
    for (i, len) in [0usize, 1, 15, 16, 17, 100_000].into_iter().enumerate() {
        let file = format!("file-{len}.bin");
        let plain = data(len, i as u32);
        let reply = upload(&mut conn, id, &key, &file, &plain, 2048);
        assert_received(&reply, id, &file, &plain);
        assert_eq!(server.stored(id, &file).unwrap(), plain);
        assert_eq!(
            conn.call(&file_name_request(id, 900, &file)),
            Response::Ack {
                client_id: Some(id)
            }
        );
    }
    let files = server.db().files().unwrap();
    assert_eq!(files.len(), 6);
    assert!(files.iter().all(|f| f.verified && f.client_id == id));
    // In the client's folder, under its label (in S3, a version of it: a key per upload).
    let folder = format!("files/{}/", id.to_hex());
    for f in &files {
        let name = f.path.strip_prefix(&folder).expect(&f.path);
        let label = match server.on_s3() {
            true => sfc_server::testing::unversioned(name),
            false => name,
        };
        assert_eq!(label, f.file_name, "{}", f.path);
    }
    let client = server.db().client(&id).unwrap().unwrap();
    assert_eq!(client.name, "alice");
    assert_eq!(client.public_key.unwrap(), keypair().public_key_der());
    assert_eq!(client.aes_key.unwrap(), key.as_bytes().to_vec());
    assert!(client.last_seen.is_some());
}

#[test]
fn connection_per_request_gets_replies_for_intermediate_packets_and_901() {
    let server = TestServer::start();
    let call = |request: &[u8]| {
        let mut conn = server.connect();
        conn.send_raw(request);
        conn.recv()
    };
    let Response::Registered { client_id: id } = call(&register_request("bob").encode()) else {
        panic!()
    };
    let Response::PublicKeyAccepted { wrapped_key, .. } = call(&key_request(id, "bob").encode())
    else {
        panic!()
    };
    let key = keypair().unwrap_aes_key(&wrapped_key).unwrap();
    let plain = data(10_000, 7);
    let cipher = encrypt(&key, &plain);
    let send_file = |content: &[u8]| {
        let packets = packets(
            id,
            "report.txt",
            plain.len(),
            content,
            3000,
            ContentSize::Whole,
        );
        let n = packets.len();
        let mut last = None;
        for (i, packet) in packets.iter().enumerate() {
            let reply = call(packet);
            if i + 1 < n {
                assert_eq!(
                    reply,
                    Response::PacketReceived { client_id: id },
                    "packet {}",
                    i + 1
                );
            } else {
                last = Some(reply);
            }
        }
        last.unwrap()
    };
    // First send: pretend the checksum did not match.
    let reply = send_file(&cipher);
    assert_received(&reply, id, "report.txt", &plain);
    assert_eq!(
        call(&file_name_request(id, 901, "report.txt").encode()),
        Response::Ack {
            client_id: Some(id)
        }
    );
    let reply = send_file(&cipher);
    assert_received(&reply, id, "report.txt", &plain);
    assert_eq!(
        call(&file_name_request(id, 900, "report.txt").encode()),
        Response::Ack {
            client_id: Some(id)
        }
    );
    assert!(server.db().files().unwrap()[0].verified);
}

#[test]
fn persistent_connection_gets_no_reply_for_intermediate_packets_or_901() {
    let server = TestServer::start();
    let mut conn = server.connect();
    let (id, key) = enroll(&mut conn, "carol");
    let plain = data(20_000, 1);
    let cipher = encrypt(&key, &plain);
    let all = packets(id, "f.bin", plain.len(), &cipher, 4000, ContentSize::Whole);
    for packet in &all[..all.len() - 1] {
        conn.send_raw(packet);
    }
    assert!(
        conn.silent_for(Duration::from_millis(300)),
        "no reply between packets"
    );
    conn.send_raw(all.last().unwrap());
    assert_received(&conn.recv(), id, "f.bin", &plain);
    // 901 on a connection that has carried requests: silence, then the resend.
    conn.send(&file_name_request(id, 901, "f.bin"));
    assert!(
        conn.silent_for(Duration::from_millis(300)),
        "no reply to 901"
    );
    let reply = upload(&mut conn, id, &key, "f.bin", &plain, 4000);
    assert_received(&reply, id, "f.bin", &plain);
}

#[test]
fn a_client_pausing_between_packets_is_served() {
    keypair();
    let server = TestServer::start_with(|c| {
        c.idle_timeout = Duration::from_secs(2);
        c.request_timeout = Duration::from_secs(1);
    });
    let mut conn = server.connect();
    let (id, key) = enroll(&mut conn, "slow");
    let plain = data(5_000, 3);
    let cipher = encrypt(&key, &plain);
    for packet in packets(
        id,
        "slow.bin",
        plain.len(),
        &cipher,
        1024,
        ContentSize::Whole,
    ) {
        std::thread::sleep(Duration::from_millis(200));
        conn.send_raw(&packet);
    }
    assert_received(&conn.recv(), id, "slow.bin", &plain);
}

#[test]
fn left_padded_names_everywhere() {
    let server = TestServer::start();
    let mut conn = server.connect();
    conn.send_raw(&left_pad(register_request("lefty").encode()));
    let Response::Registered { client_id: id } = conn.recv() else {
        panic!()
    };
    conn.send_raw(&left_pad(key_request(id, "lefty").encode()));
    let Response::PublicKeyAccepted { .. } = conn.recv() else {
        panic!()
    };
    let reconnect = Request::new(
        id,
        RequestBody::Reconnect {
            name: name("lefty"),
        },
    );
    conn.send_raw(&left_pad(reconnect.encode()));
    let Response::ReconnectAccepted { wrapped_key, .. } = conn.recv() else {
        panic!()
    };
    let key = keypair().unwrap_aes_key(&wrapped_key).unwrap();
    let plain = data(5000, 9);
    let cipher = encrypt(&key, &plain);
    for packet in packets(
        id,
        "left.txt",
        plain.len(),
        &cipher,
        2048,
        ContentSize::Whole,
    ) {
        conn.send_raw(&left_pad(packet));
    }
    // The 1603 carries the name padded on the right.
    assert_received(&conn.recv(), id, "left.txt", &plain);
    conn.send_raw(&left_pad(file_name_request(id, 900, "left.txt").encode()));
    assert_eq!(
        conn.recv(),
        Response::Ack {
            client_id: Some(id)
        }
    );
}

#[test]
fn per_packet_content_size_is_accepted() {
    let server = TestServer::start();
    let mut conn = server.connect();
    let (id, key) = enroll(&mut conn, "dora");
    for len in [0usize, 17, 50_000] {
        let plain = data(len, len as u32);
        let cipher = encrypt(&key, &plain);
        for packet in packets(id, "pp.bin", len, &cipher, 1000, ContentSize::PerPacket) {
            conn.send_raw(&packet);
        }
        assert_received(&conn.recv(), id, "pp.bin", &plain);
    }
}

#[test]
fn twenty_megabytes_in_many_packets_and_in_one_huge_packet() {
    let server = TestServer::start();
    let mut conn = server.connect();
    let (id, key) = enroll(&mut conn, "big");
    let plain = data(20_000_000, 42);
    let cipher = encrypt(&key, &plain);
    let expected = sfc_crypto::cksum(&plain);
    let started = Instant::now();
    for packet in packets(
        id,
        "many.bin",
        plain.len(),
        &cipher,
        64 * 1024,
        ContentSize::Whole,
    ) {
        conn.send_raw(&packet);
    }
    let Response::FileReceived {
        cksum,
        content_size,
        ..
    } = conn.recv()
    else {
        panic!()
    };
    assert_eq!((cksum, content_size as usize), (expected, cipher.len()));
    let many = started.elapsed();
    let started = Instant::now();
    conn.send_raw(&one_packet(id, "one.bin", plain.len(), &cipher));
    let Response::FileReceived { cksum, .. } = conn.recv() else {
        panic!()
    };
    assert_eq!(cksum, expected);
    eprintln!(
        "20 MB: many packets {many:?}, one packet {:?}",
        started.elapsed()
    );
    for file in ["many.bin", "one.bin"] {
        let stored = server.stored(id, file).unwrap();
        assert!(stored == plain, "{file} stored intact");
    }
}

#[test]
fn checksum_retry_replaces_the_file_and_902_removes_it() {
    let server = TestServer::start();
    let mut conn = server.connect();
    let (id, key) = enroll(&mut conn, "erin");
    // 901: the file stays unverified until the resend replaces it.
    let v1 = data(3000, 1);
    assert_received(
        &upload(&mut conn, id, &key, "doc", &v1, 1000),
        id,
        "doc",
        &v1,
    );
    conn.send(&file_name_request(id, 901, "doc"));
    assert_eq!(server.stored(id, "doc").unwrap(), v1);
    assert!(!server.db().files().unwrap()[0].verified);
    let v2 = data(2000, 2);
    assert_received(
        &upload(&mut conn, id, &key, "doc", &v2, 1000),
        id,
        "doc",
        &v2,
    );
    assert_eq!(server.stored(id, "doc").unwrap(), v2);
    assert_eq!(
        conn.call(&file_name_request(id, 900, "doc")),
        Response::Ack {
            client_id: Some(id)
        }
    );
    // A verified file sent again is replaced and unverified again.
    assert_received(
        &upload(&mut conn, id, &key, "doc", &v1, 1000),
        id,
        "doc",
        &v1,
    );
    assert!(!server.db().files().unwrap()[0].verified);

    // Four sends with mismatches, then 902: file and row are removed.
    let doomed = data(5000, 5);
    for attempt in 0..4 {
        assert_received(
            &upload(&mut conn, id, &key, "doomed", &doomed, 1500),
            id,
            "doomed",
            &doomed,
        );
        if attempt < 3 {
            conn.send(&file_name_request(id, 901, "doomed"));
        }
    }
    assert!(server.stored_names(id).contains(&"doomed".to_owned()));
    assert_eq!(
        conn.call(&file_name_request(id, 902, "doomed")),
        Response::Ack {
            client_id: Some(id)
        }
    );
    assert!(!server.stored_names(id).contains(&"doomed".to_owned()));
    let files = server.db().files().unwrap();
    assert_eq!(files.len(), 1);
    assert_eq!(files[0].file_name, "doc");
}

#[test]
fn duplicate_and_invalid_registrations_get_1601() {
    let server = TestServer::start();
    let mut conn = server.connect();
    let Response::Registered { client_id } = conn.call(&register_request("frank")) else {
        panic!()
    };
    assert_ne!(client_id, ClientId::ZERO);
    // Garbage client ID on 825 is ignored; the name is what counts.
    let mut again = register_request("frank");
    again.client_id = ClientId(*b"1234567890123456");
    again.version = 1;
    assert_eq!(conn.call(&again), Response::RegistrationFailed);
    for raw in [
        &b""[..],
        b"bad\x01name",
        b"tab\tname",
        b"a\0b",
        b"\xc3\xa9t\xc3\xa9",
    ] {
        conn.send_raw(&with_raw_name(register_request("x").encode(), raw));
        assert_eq!(conn.recv(), Response::RegistrationFailed, "{raw:?}");
    }
    // The connection is still fine.
    let Response::Registered { client_id: other } = conn.call(&register_request("grace")) else {
        panic!()
    };
    assert_ne!(other, client_id);
    assert_eq!(server.db().clients().unwrap().len(), 2);
}

#[test]
fn reconnect_accepted_and_rejected() {
    let server = TestServer::start();
    let mut conn = server.connect();
    let (id, old_key) = enroll(&mut conn, "henry");
    let reconnect =
        |id: ClientId, user: &str| Request::new(id, RequestBody::Reconnect { name: name(user) });
    let Response::ReconnectAccepted {
        client_id,
        wrapped_key,
    } = conn.call(&reconnect(id, "henry"))
    else {
        panic!()
    };
    assert_eq!(client_id, id);
    let key = keypair().unwrap_aes_key(&wrapped_key).unwrap();
    assert_ne!(
        key.as_bytes(),
        old_key.as_bytes(),
        "a fresh AES key on every 827"
    );
    let plain = data(777, 1);
    assert_received(
        &upload(&mut conn, id, &key, "r.bin", &plain, 2048),
        id,
        "r.bin",
        &plain,
    );

    // Unknown ID, wrong name, no public key on record: 1606 with the client ID.
    let unknown = ClientId([0x5a; 16]);
    assert_eq!(
        conn.call(&reconnect(unknown, "henry")),
        Response::ReconnectRejected {
            client_id: Some(unknown)
        }
    );
    assert_eq!(
        conn.call(&reconnect(id, "not-henry")),
        Response::ReconnectRejected {
            client_id: Some(id)
        }
    );
    let Response::Registered { client_id: keyless } = conn.call(&register_request("ivy")) else {
        panic!()
    };
    assert_eq!(
        conn.call(&reconnect(keyless, "ivy")),
        Response::ReconnectRejected {
            client_id: Some(keyless)
        }
    );
    // The 1606 payload is exactly the 16-byte ID.
    conn.send(&reconnect(unknown, "x"));
    let mut raw = [0u8; 23];
    std::io::Read::read_exact(&mut conn.stream, &mut raw).unwrap();
    assert_eq!(&raw[..7], &[3, 0x46, 0x06, 16, 0, 0, 0]);
    assert_eq!(&raw[7..], &unknown.0);
}

#[test]
fn restart_keeps_clients_files_and_aes_keys() {
    let mut server = TestServer::start();
    let mut conn = server.connect();
    let (id, key) = enroll(&mut conn, "judy");
    let plain = data(12_345, 8);
    assert_received(
        &upload(&mut conn, id, &key, "kept.bin", &plain, 2048),
        id,
        "kept.bin",
        &plain,
    );
    conn.call(&file_name_request(id, 900, "kept.bin"));
    drop(conn);
    let old_addr = server.addr;
    server.restart();
    assert_ne!(server.addr, old_addr);

    // The AES key issued before the restart still works (it is in the database).
    let mut conn = server.connect();
    let again = data(999, 9);
    assert_received(
        &upload(&mut conn, id, &key, "after.bin", &again, 2048),
        id,
        "after.bin",
        &again,
    );
    // Reconnect works, and every stored file is still listed.
    let reconnect = Request::new(id, RequestBody::Reconnect { name: name("judy") });
    assert!(matches!(
        conn.call(&reconnect),
        Response::ReconnectAccepted { .. }
    ));
    let files =
        sfc_server::admin::files_in_store(server.root(), &server.database, &server.store).unwrap();
    let names: Vec<_> = files
        .iter()
        .map(|f| (f.file_name.as_str(), f.verified, f.size))
        .collect();
    assert_eq!(
        names,
        [
            ("after.bin", false, Some(999)),
            ("kept.bin", true, Some(12_345))
        ]
    );
    let clients = sfc_server::admin::clients_in(server.root(), &server.database).unwrap();
    assert_eq!(clients.len(), 1);
    assert_eq!(clients[0].id, id.to_hex());
    assert_eq!(clients[0].public_key_bits, Some(1024));
}

#[test]
fn two_hundred_clients_at_once() {
    let server = TestServer::start();
    let addr = server.addr;
    let barrier = std::sync::Arc::new(std::sync::Barrier::new(200));
    let threads: Vec<_> = (0..200)
        .map(|i| {
            let barrier = barrier.clone();
            std::thread::spawn(move || {
                let mut conn = Conn::connect(addr);
                barrier.wait();
                let user = format!("user{i}");
                let (id, key) = enroll(&mut conn, &user);
                let plain = data(4_000 + i, i as u32);
                let reply = upload(&mut conn, id, &key, "same-name.bin", &plain, 1024);
                assert_received(&reply, id, "same-name.bin", &plain);
                assert_eq!(
                    conn.call(&file_name_request(id, 900, "same-name.bin")),
                    Response::Ack {
                        client_id: Some(id)
                    }
                );
                id
            })
        })
        .collect();
    let mut ids: Vec<ClientId> = threads.into_iter().map(|t| t.join().unwrap()).collect();
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), 200);
    assert_eq!(server.db().clients().unwrap().len(), 200);
    let files = server.db().files().unwrap();
    assert_eq!(files.len(), 200);
    assert!(files.iter().all(|f| f.verified));
}

#[test]
fn labels_that_look_like_paths_stay_in_the_client_folder() {
    let server = TestServer::start();
    let mut conn = server.connect();
    let (id, key) = enroll(&mut conn, "paths");
    let labels = [
        "dir/x.bin",
        "/home/u/x.bin",
        "C:\\x\\y.bin",
        "../../escape.txt",
        "..",
        ".",
        ".hidden",
        "CON",
        "x.bin",
        "X.BIN",
        "a b%20c",
    ];
    for (i, label) in labels.iter().enumerate() {
        let plain = data(100 + i, i as u32);
        let reply = upload(&mut conn, id, &key, label, &plain, 2048);
        assert_received(&reply, id, label, &plain);
    }
    let files = server.db().files().unwrap();
    assert_eq!(files.len(), labels.len());
    let prefix = format!("files/{}/", id.to_hex());
    for file in &files {
        assert!(labels.contains(&file.file_name.as_str()));
        let rest = file.path.strip_prefix(&prefix).unwrap();
        assert!(
            !rest.contains('/') && !rest.starts_with('.'),
            "{}",
            file.path
        );
    }
    let on_disk = server.all_stored();
    let stored: Vec<_> = on_disk.iter().filter(|p| p.starts_with("files/")).collect();
    assert_eq!(stored.len(), labels.len(), "{on_disk:?}");
    assert!(stored.iter().all(|p| p.starts_with(&prefix)));
    // Nothing named after the escaping label outside the client folder, in the store or
    // beside the data folder.
    let outside: Vec<_> = on_disk
        .iter()
        .filter(|p| p.contains("escape") && !p.starts_with(&prefix))
        .collect();
    assert!(outside.is_empty(), "{outside:?}");
    for dir in [server.root(), server.root().parent().unwrap()] {
        assert!(!dir.join("escape.txt").exists(), "{}", dir.display());
    }
}

#[test]
fn slow_and_idle_connections_time_out() {
    keypair(); // generated before any connection: it takes longer than these timeouts
    let server = TestServer::start_with(|c| {
        c.idle_timeout = Duration::from_secs(1);
        c.request_timeout = Duration::from_secs(1);
    });
    // Idle: no byte at all.
    let started = Instant::now();
    let mut idle = server.connect();
    assert!(idle.closed_within(Duration::from_secs(5)));
    assert!(started.elapsed() >= Duration::from_millis(900));

    // Slow loris: one byte every 300 ms never completes a header in time.
    let mut slow = server.connect();
    let bytes = register_request("loris").encode();
    let started = Instant::now();
    let mut closed = false;
    for byte in bytes.iter().take(40) {
        if std::io::Write::write_all(&mut slow.stream, &[*byte]).is_err() {
            closed = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(300));
        if started.elapsed() > Duration::from_secs(4) {
            break;
        }
    }
    assert!(closed || slow.closed_within(Duration::from_secs(1)));
    assert!(started.elapsed() < Duration::from_secs(5));

    // Slow loris on file content: 100 bytes every 300 ms is far below 64 KiB per
    // request timeout; the connection is closed and the upload abandoned.
    let mut conn = server.connect();
    let (id, key) = enroll(&mut conn, "trickle");
    let plain = data(1_000_000, 1);
    let cipher = encrypt(&key, &plain);
    let packet = &one_packet(id, "t.bin", plain.len(), &cipher);
    let started = Instant::now();
    let mut sent = 0;
    for chunk in packet.chunks(100) {
        if std::io::Write::write_all(&mut conn.stream, chunk).is_err() {
            break;
        }
        sent += chunk.len();
        if sent > 1000 {
            std::thread::sleep(Duration::from_millis(300));
        }
        if started.elapsed() > Duration::from_secs(4) {
            break;
        }
    }
    assert!(started.elapsed() < Duration::from_secs(4), "closed in time");
    assert!(eventually(Duration::from_secs(2), || server
        .stored_names(id)
        .is_empty()));

    // Other clients are served meanwhile.
    let mut conn = server.connect();
    assert!(matches!(
        conn.call(&register_request("quick")),
        Response::Registered { .. }
    ));
}

#[test]
fn dropped_connection_mid_packet_abandons_the_upload() {
    let server = TestServer::start();
    let mut conn = server.connect();
    let (id, key) = enroll(&mut conn, "kim");
    let plain = data(100_000, 4);
    let cipher = encrypt(&key, &plain);
    let all = packets(
        id,
        "cut.bin",
        plain.len(),
        &cipher,
        40_000,
        ContentSize::Whole,
    );
    conn.send_raw(&all[0]);
    conn.send_raw(&all[1][..20_000]);
    server.wait_for_upload_start(id);
    drop(conn);
    // The temporary file goes away and the upload is gone: packet 3 gets 1607...
    assert!(eventually(Duration::from_secs(5), || server
        .stored_names(id)
        .is_empty()));
    let mut conn = server.connect();
    conn.call(&register_request("unrelated")); // first request on the connection
    conn.send_raw(&all[2]);
    assert_eq!(conn.recv(), Response::ServerError);
    // ...and the whole file sent again from packet 1 is stored.
    for packet in &all {
        conn.send_raw(packet);
    }
    assert_received(&conn.recv(), id, "cut.bin", &plain);
}

#[test]
fn a_closed_connection_between_packets_ends_the_upload_of_a_client_that_kept_it() {
    let server = TestServer::start();
    let mut conn = server.connect();
    let (id, key) = enroll(&mut conn, "liam");
    let plain = data(9_000, 4);
    let cipher = encrypt(&key, &plain);
    let all = packets(
        id,
        "split.bin",
        plain.len(),
        &cipher,
        4000,
        ContentSize::Whole,
    );
    conn.send_raw(&all[0]);
    // A request with a reply proves packet 1 was processed (requests are served in
    // order). Without it packet 2 could overtake packet 1 from another connection,
    // which is refused as a concurrent upload.
    assert!(matches!(
        conn.call(&register_request("sync")),
        Response::Registered { .. }
    ));
    // Half-close and wait for the server's end of the connection: the server closes it
    // only after dropping the connection's uploads, so packet 2 below cannot reach the
    // upload first, whatever the store (in S3 no local temporary file shows the drop).
    conn.stream.shutdown(std::net::Shutdown::Write).unwrap();
    let _ = std::io::Read::read_to_end(&mut conn.stream, &mut Vec::new());
    drop(conn);
    // Packet 1 came on a connection that had served requests before: the upload ends
    // with that connection (rule S10), its temporary file removed.
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while std::fs::read_dir(server.client_dir(id)).map_or(0, |d| d.count()) > 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "the temporary file stays"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let mut conn = server.connect();
    conn.call(&register_request("other"));
    conn.send_raw(&all[1]);
    assert_eq!(conn.recv(), Response::ServerError, "no upload in progress");
}

#[test]
fn temporary_and_unrecorded_files_are_removed_at_start_up() {
    use sfc_server::{FileRecord, Timestamp};
    if matches!(test_store(), sfc_server::config::Store::S3(_)) {
        // A local data folder's leftovers; tests/s3.rs covers recovery in S3.
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let hex = "ab".repeat(16);
    let client_dir = dir.path().join("files").join(&hex);
    std::fs::create_dir_all(&client_dir).unwrap();
    std::fs::write(client_dir.join(".upload-0123.tmp"), b"left over").unwrap();
    std::fs::write(client_dir.join("kept.bin"), b"stored").unwrap();
    std::fs::write(client_dir.join("orphan.bin"), b"never acknowledged").unwrap();
    std::fs::write(dir.path().join("files").join("NOTES"), b"an operator's").unwrap();
    let database = test_database();
    let db = open_meta(dir.path(), &database);
    let client = ClientId([0xab; 16]);
    db.insert_client(&client, "kept", Timestamp(0)).unwrap();
    let row = FileRecord {
        client_id: client,
        file_name: "kept.bin".into(),
        path: format!("files/{hex}/kept.bin"),
        verified: true,
    };
    db.put_file(&row, Timestamp(0)).unwrap();
    db.close().unwrap();
    let server = TestServer::start_on(dir, database, |_| {});
    // A data folder from before set-up IDs: its database has clients, so both get one.
    let kept_id = std::fs::read_to_string(
        client_dir
            .parent()
            .unwrap()
            .parent()
            .unwrap()
            .join("sfc-setup-id"),
    )
    .unwrap();
    assert_eq!(
        server.db().setup_id().unwrap().map(|id| format!("{id}\n")),
        Some(kept_id)
    );
    assert!(!client_dir.join(".upload-0123.tmp").exists());
    assert!(!client_dir.join("orphan.bin").exists());
    assert_eq!(
        std::fs::read(client_dir.join("kept.bin")).unwrap(),
        b"stored"
    );
    assert!(client_dir.parent().unwrap().join("NOTES").exists());
    drop(server);
}

#[test]
fn shutdown_closes_idle_connections_and_abandons_cut_uploads() {
    let mut server = TestServer::start();
    let mut conn = server.connect();
    let (id, key) = enroll(&mut conn, "mia");
    let plain = data(50_000, 4);
    let cipher = encrypt(&key, &plain);
    let all = one_packet(id, "cut.bin", plain.len(), &cipher);
    let idle = server.connect();
    conn.send_raw(&all[..10_000]);
    server.wait_for_upload_start(id);
    let started = Instant::now();
    server.stop();
    let took = started.elapsed();
    // The idle connection closes at once; the cut upload holds until the 2 s grace.
    assert!(took < Duration::from_secs(5), "{took:?}");
    assert!(server.stored_names(id).is_empty());
    drop(idle);
}

#[test]
fn last_seen_advances() {
    let server = TestServer::start_with(|c| c.flush_interval = Duration::from_millis(100));
    let mut conn = server.connect();
    let (id, _) = enroll(&mut conn, "nora");
    let first = server.db().client(&id).unwrap().unwrap().last_seen.unwrap();
    std::thread::sleep(Duration::from_millis(20));
    // 901 commits nothing itself: its time is noted in memory and flushed periodically.
    conn.send(&file_name_request(id, 901, "whatever"));
    assert!(eventually(Duration::from_secs(5), || {
        server.db().client(&id).unwrap().unwrap().last_seen.unwrap() > first
    }));
}

// ----- every 1607 -------------------------------------------------------------------

#[test]
fn requests_that_cannot_be_served_get_1607() {
    let server = TestServer::start_with(|c| c.max_file_size = 100_000);
    let mut conn = server.connect();
    let (id, key) = enroll(&mut conn, "olga");
    fn expect_1607_on(conn: &mut Conn, bytes: &[u8], what: &str) {
        conn.send_raw(bytes);
        assert_eq!(conn.recv(), Response::ServerError, "{what}");
    }
    macro_rules! expect_1607 {
        ($bytes:expr, $what:expr) => {
            expect_1607_on(&mut conn, $bytes, $what)
        };
    }
    let plain = data(5000, 1);
    let cipher = encrypt(&key, &plain);
    let file = |id: ClientId, size: usize| {
        packets(id, "f.bin", plain.len(), &cipher, size, ContentSize::Whole)
    };

    // Unknown client ID on every code that needs one.
    let stranger = ClientId([0x77; 16]);
    expect_1607!(&file(stranger, 8000)[0], "828 from an unknown client");
    expect_1607!(
        &key_request(stranger, "olga").encode(),
        "826 from an unknown client"
    );
    for code in [900, 901, 902] {
        expect_1607!(
            &file_name_request(stranger, code, "f.bin").encode(),
            "unknown client"
        );
    }
    // 826 with a name that is not the client's, or a key that is not RSA.
    expect_1607!(&key_request(id, "not-olga").encode(), "826 name mismatch");
    let bad_key = Request::new(
        id,
        RequestBody::SendPublicKey {
            name: name("olga"),
            public_key: vec![0x30; 160],
        },
    );
    expect_1607!(&bad_key.encode(), "826 garbage key");
    // 828 before any AES key.
    let mut other = server.connect();
    let Response::Registered { client_id: keyless } = other.call(&register_request("keyless"))
    else {
        panic!()
    };
    expect_1607!(&file(keyless, 8000)[0], "828 before an AES key");
    // 900 for a file that does not exist.
    expect_1607!(
        &file_name_request(id, 900, "never-sent").encode(),
        "900 unknown file"
    );

    // Packets out of order, skipped, or changing their totals, size or name. Each
    // refused transfer gets exactly one 1607: the rest of its packets are dropped
    // silently (the client reads one reply per file).
    let p = file(id, 1024); // 5 packets
    expect_1607!(&p[1], "starts with packet 2");
    for packet in &p[2..] {
        conn.send_raw(packet);
    }
    assert!(
        conn.silent_for(Duration::from_millis(200)),
        "rest of the refused transfer"
    );
    conn.send_raw(&p[0]);
    expect_1607!(&p[2], "skips packet 2");
    for packet in &p[3..] {
        conn.send_raw(packet);
    }
    assert!(conn.silent_for(Duration::from_millis(200)));
    // The upload is gone: packet 2 on its own (after another request) is refused too.
    conn.send(&file_name_request(id, 901, "f.bin"));
    expect_1607!(&p[1], "no upload any more after the abandon");
    conn.send(&file_name_request(id, 901, "f.bin"));
    type Change = fn(&mut FilePacketHeader);
    let variants: [(&str, Change); 3] = [
        ("total_packets changed", |h| h.total_packets += 1),
        ("orig_file_size changed", |h| {
            h.orig_file_size -= 1;
            h.content_size = 1024
        }),
        ("file name changed", |h| h.file_name = name("g.bin")),
    ];
    for (what, change) in variants {
        conn.send_raw(&p[0]);
        let mut header = FilePacketHeader {
            content_size: cipher.len() as u32,
            orig_file_size: plain.len() as u32,
            packet_number: 2,
            total_packets: 5,
            file_name: name("f.bin"),
        };
        change(&mut header);
        let mut bytes = header.encode_prefix(id, 1024).to_vec();
        bytes.extend_from_slice(&cipher[1024..2048]);
        expect_1607!(&bytes, what);
        for packet in &p[2..] {
            conn.send_raw(packet);
        }
        assert!(conn.silent_for(Duration::from_millis(100)), "{what}");
    }
    // On a connection-per-request connection every refused packet is answered.
    let mut single = server.connect();
    single.send_raw(&p[3]);
    assert_eq!(single.recv(), Response::ServerError);
    // Total bytes short of orig_file_size (per-packet content_size lets it through).
    let short = packets(
        id,
        "short.bin",
        5000,
        &cipher[..4000],
        1000,
        ContentSize::PerPacket,
    );
    for packet in &short[..3] {
        conn.send_raw(packet);
    }
    expect_1607!(&short[3], "fewer bytes than orig_file_size");
    // Encrypted with another key: bad padding or wrong length.
    let wrong = encrypt(&sfc_crypto::AesKey::random(), &plain);
    let wrong_packets = packets(
        id,
        "wrong.bin",
        plain.len(),
        &wrong,
        4096,
        ContentSize::Whole,
    );
    conn.send_raw(&wrong_packets[0]);
    expect_1607!(&wrong_packets[1], "wrong key");
    // Labels that are empty or contain control characters.
    expect_1607!(
        &with_raw_name(file(id, 8000)[0].clone(), b"bad\nname"),
        "control character"
    );
    expect_1607!(
        &with_raw_name(file(id, 8000)[0].clone(), b""),
        "empty label"
    );
    expect_1607!(
        &with_raw_name(file(id, 8000)[0].clone(), b"a\0b"),
        "NUL inside"
    );
    // Larger than --max-file-size.
    let big = vec![0u8; 200_000];
    let big_cipher = encrypt(&key, &big);
    conn.send_raw(
        &packets(
            id,
            "big.bin",
            big.len(),
            &big_cipher,
            60_000,
            ContentSize::Whole,
        )[0],
    );
    assert_eq!(conn.recv(), Response::ServerError, "too large");
    // None of this broke the connection, nor left temporary files.
    let reply = upload(&mut conn, id, &key, "f.bin", &plain, 1024);
    assert_received(&reply, id, "f.bin", &plain);
    assert_eq!(server.stored_names(id).len(), 1);
}

#[test]
fn a_second_concurrent_upload_for_the_same_client_gets_1607() {
    let server = TestServer::start();
    let mut a = server.connect();
    let (id, key) = enroll(&mut a, "pat");
    let plain = data(100_000, 2);
    let cipher = encrypt(&key, &plain);
    let huge = one_packet(id, "a.bin", plain.len(), &cipher);
    // Connection A is in the middle of its packet.
    a.send_raw(&huge[..50_000]);
    server.wait_for_upload_start(id);
    let mut b = server.connect();
    b.send_raw(&huge);
    assert_eq!(b.recv(), Response::ServerError);
    // A finishes undisturbed.
    a.send_raw(&huge[50_000..]);
    assert_received(&a.recv(), id, "a.bin", &plain);
}

#[test]
fn malformed_framing_gets_1607_and_close_and_the_server_goes_on() {
    let server = TestServer::start();
    // Unknown request code.
    let mut conn = server.connect();
    let mut bytes = RequestHeader::new(ClientId::ZERO, RequestCode::Register, 255)
        .encode()
        .to_vec();
    bytes[17..19].copy_from_slice(&4242u16.to_le_bytes());
    conn.send_raw(&bytes);
    assert_eq!(conn.recv(), Response::ServerError);
    assert!(conn.closed_within(Duration::from_secs(2)));
    // Payload size not allowed for the code (per-code payload limits).
    for (code, size) in [
        (RequestCode::Register, 10),
        (RequestCode::ChecksumOk, 300),
        (RequestCode::SendPublicKey, 5000),
        (RequestCode::SendFile, 100),
    ] {
        let mut conn = server.connect();
        conn.send_raw(&RequestHeader::new(ClientId::ZERO, code, size).encode());
        assert_eq!(conn.recv(), Response::ServerError, "{code} with {size}");
        assert!(conn.closed_within(Duration::from_secs(2)));
    }
    // Trailing garbage then close: never a crash.
    let mut conn = server.connect();
    conn.send_raw(&[0xff; 10]);
    drop(conn);
    let mut conn = server.connect();
    assert!(matches!(
        conn.call(&register_request("still-here")),
        Response::Registered { .. }
    ));
}

/// Rough end-to-end throughput on loopback (client and server share the 2 cores).
/// Run in release: `cargo test --release -p sfc-server --test e2e -- --ignored throughput --nocapture`.
#[test]
#[ignore]
fn throughput_on_loopback() {
    let server = TestServer::start();
    let mut conn = server.connect();
    let (id, key) = enroll(&mut conn, "bench");
    let plain = data(256 << 20, 1);
    let cipher = encrypt(&key, &plain);
    for packet_size in [8192usize, 64 * 1024, cipher.len()] {
        let all = packets(
            id,
            "bench.bin",
            plain.len(),
            &cipher,
            packet_size,
            ContentSize::Whole,
        );
        let wire: Vec<u8> = all.concat();
        let started = Instant::now();
        conn.send_raw(&wire);
        let reply = conn.recv();
        let secs = started.elapsed().as_secs_f64();
        assert!(matches!(reply, Response::FileReceived { .. }));
        eprintln!(
            "packets of {packet_size} bytes: {:.0} MB/s",
            plain.len() as f64 / secs / 1e6
        );
    }
}

/// Where the time of an upload goes: decryption and cksum alone, in the server's chunking.
#[test]
#[ignore]
fn throughput_of_the_crypto_alone() {
    let key = sfc_crypto::AesKey::random();
    let plain = data(256 << 20, 1);
    let cipher = encrypt(&key, &plain);
    let started = Instant::now();
    let mut decryptor = sfc_crypto::CbcDecryptor::new(&key).unwrap();
    let mut out = Vec::with_capacity(70_000);
    for chunk in cipher.chunks(64 * 1024) {
        out.clear();
        decryptor.update(chunk, &mut out).unwrap();
    }
    let decrypt = started.elapsed().as_secs_f64();
    let started = Instant::now();
    let mut cksum = sfc_crypto::Cksum::new();
    for chunk in plain.chunks(64 * 1024) {
        cksum.update(chunk);
    }
    let crc = started.elapsed().as_secs_f64();
    let mb = plain.len() as f64 / 1e6;
    eprintln!(
        "decrypt {:.0} MB/s, cksum {:.0} MB/s",
        mb / decrypt,
        mb / crc
    );
}

#[test]
fn store_file_url_keeps_files_in_another_folder() {
    init_logging();
    let folder = tempfile::tempdir().unwrap();
    let store = sfc_server::config::Store::Folder(folder.path().to_path_buf());
    let server =
        TestServer::start_on_store(tempfile::tempdir().unwrap(), test_database(), store, |_| {});
    let mut conn = server.connect();
    let (id, key) = enroll(&mut conn, "elsewhere");
    let plain = data(3000, 9);
    assert_received(
        &upload(&mut conn, id, &key, "f.bin", &plain, 1000),
        id,
        "f.bin",
        &plain,
    );
    let stored = folder.path().join("files").join(id.to_hex()).join("f.bin");
    assert_eq!(std::fs::read(stored).unwrap(), plain);
    assert!(
        !server.client_dir(id).exists(),
        "nothing in the data folder"
    );
    let files =
        sfc_server::admin::files_in_store(server.root(), &server.database, &server.store).unwrap();
    assert_eq!(files[0].size, Some(3000));
}
