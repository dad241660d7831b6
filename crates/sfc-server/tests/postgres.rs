//! The PostgreSQL metadata store against a real PostgreSQL (Debian's packages; see
//! `common/postgres.rs`): the store's contract and constraints, migrations, two server
//! processes (nodes) racing on one database, PostgreSQL restarted under a running
//! server, and the admin views. The end-to-end flows run on PostgreSQL too:
//! `SFC_TEST_DATABASE=postgres cargo test -p sfc-server --test e2e` (.ci/run does).
//!
//! Without PostgreSQL these tests print how to get it and pass, unless `CI` is set.
#![cfg(test)]

mod common;

use common::postgres::{self, PgCluster};
use common::process::{ServerProcess, SERVER_BIN};
use common::*;
use sfc_proto::{ClientId, Request, RequestBody, Response};
use sfc_server::config::PostgresUrl;
use sfc_server::{MetaStore, PostgresStore, StoreError};
use std::process::Command;
use std::sync::{Arc, Barrier};
use std::time::Duration;

fn id(n: u8) -> ClientId {
    ClientId([n; 16])
}

/// A fresh database on the shared cluster, as a URL; `None`: PostgreSQL is missing and
/// this is not CI (the test returns).
fn fresh_url(test: &str) -> Option<(&'static PgCluster, PostgresUrl, String)> {
    let cluster = postgres::shared(test)?;
    let name = cluster.create_database();
    let url = PostgresUrl::parse(&cluster.url(&name)).unwrap();
    Some((cluster, url, name))
}

#[test]
fn removing_a_client_removes_its_rows_and_frees_its_name() {
    let Some((_cluster, url, _db)) = fresh_url("remove client") else {
        return;
    };
    let store = PostgresStore::open(&url).unwrap();
    sfc_server::testing::check_remove_client(&store);
    store.close().unwrap();
}

/// The store's time-outs hold whatever else the URL's `options` set; a time-out set
/// there wins. (Any `options` used to drop both, and with them the bounds the commit and
/// recovery's grace period rely on.)
#[test]
fn the_urls_options_keep_the_stores_time_outs() {
    let Some((cluster, _url, name)) = fresh_url("url options") else {
        return;
    };
    let with = |options: &str| {
        let url = format!("{}?options={options}", cluster.url(&name));
        PostgresStore::open(&PostgresUrl::parse(&url).unwrap()).unwrap()
    };
    let time_outs = |store: &PostgresStore| {
        [
            store.setting("statement_timeout").unwrap(),
            store
                .setting("idle_in_transaction_session_timeout")
                .unwrap(),
        ]
    };
    let store = with("-c%20search_path%3Dpublic");
    assert_eq!(store.setting("search_path").unwrap(), "public");
    assert_eq!(time_outs(&store), ["30s", "5s"]);
    store.close().unwrap();
    let store = with("-c%20statement_timeout%3D45s");
    assert_eq!(time_outs(&store), ["45s", "5s"]);
    store.close().unwrap();
}

/// A `connect_timeout` in the URL above the default 5 s lengthens the wait for a new
/// connection, as the docs say: through a relay that answers after 6 s, a URL giving 9 s
/// connects. (The pool cut every new connection at 5 s whatever the URL said.)
#[test]
fn a_longer_connect_timeout_in_the_url_is_waited_for() {
    let Some((cluster, _url, name)) = fresh_url("connect timeout") else {
        return;
    };
    let real = cluster.url(&name);
    let (credentials, rest) = real.split_once('@').unwrap();
    let (upstream, database) = rest.split_once('/').unwrap();
    let relay = slow_relay(upstream.parse().unwrap(), Duration::from_secs(6));
    let url = format!("{credentials}@{relay}/{database}?connect_timeout=9");
    let started = std::time::Instant::now();
    let store = PostgresStore::open(&PostgresUrl::parse(&url).unwrap())
        .expect("connected within the URL's connect_timeout");
    assert!(started.elapsed() >= Duration::from_secs(6));
    assert_eq!(store.setting("statement_timeout").unwrap(), "30s");
    store.close().unwrap();
}

/// A TCP relay on 127.0.0.1 to `upstream` that holds each connection `delay` before it
/// relays anything (a slow link, a busy connection pooler); its address.
fn slow_relay(upstream: std::net::SocketAddr, delay: Duration) -> std::net::SocketAddr {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for client in listener.incoming() {
            let Ok(client) = client else { return };
            std::thread::spawn(move || {
                std::thread::sleep(delay);
                let Ok(server) = std::net::TcpStream::connect(upstream) else {
                    return;
                };
                let (mut from_client, mut to_server) =
                    (client.try_clone().unwrap(), server.try_clone().unwrap());
                std::thread::spawn(move || {
                    let _ = std::io::copy(&mut from_client, &mut to_server);
                    let _ = to_server.shutdown(std::net::Shutdown::Write);
                });
                let (mut from_server, mut to_client) = (server, client);
                let _ = std::io::copy(&mut from_server, &mut to_client);
                let _ = to_client.shutdown(std::net::Shutdown::Write);
            });
        }
    });
    addr
}

#[test]
fn removals_are_recorded_with_their_rows() {
    let Some((_cluster, url, _db)) = fresh_url("pending removals") else {
        return;
    };
    let store = PostgresStore::open(&url).unwrap();
    sfc_server::testing::check_pending_removals(&store);
    store.close().unwrap();
}

#[test]
fn the_store_keeps_the_contract_of_defensive_db() {
    let Some((cluster, url, db)) = fresh_url("store contract") else {
        return;
    };
    let store = PostgresStore::open(&url).unwrap();
    assert_eq!(store.schema_version().unwrap(), 1);
    // The store names its connections (set with its other connection settings).
    assert_eq!(
        cluster.psql(
            &db,
            &format!(
                "SELECT count(*) > 0 FROM pg_stat_activity
                 WHERE datname = '{db}' AND application_name = 'sfc-server'"
            )
        ),
        "t"
    );
    sfc_server::testing::check_contract(&store);

    // Exactly the columns of defensive.db (PostgreSQL folds the names to lower case).
    let columns = |table: &str| {
        cluster.psql(
            &db,
            &format!(
                "SELECT string_agg(column_name, ',' ORDER BY ordinal_position)
                 FROM information_schema.columns WHERE table_name = '{table}'"
            ),
        )
    };
    assert_eq!(columns("clients"), "id,name,publickey,lastseen,aeskey");
    assert_eq!(columns("files"), "id,filename,pathname,verified");

    store.close().unwrap();
    assert!(matches!(store.client(&id(1)), Err(StoreError::Closed)));
    drop(store);

    // Reopening keeps the data and does not migrate again; a newer schema is refused.
    let store = PostgresStore::open(&url).unwrap();
    assert_eq!(store.clients().unwrap().len(), 2);
    assert_eq!(
        cluster.psql(&db, "SELECT count(*) FROM schema_version"),
        "1"
    );
    cluster.psql(&db, "INSERT INTO schema_version (version) VALUES (99)");
    let error = PostgresStore::open(&url).unwrap_err();
    assert!(error.to_string().contains("schema version 99"), "{error}");
    let error = PostgresStore::open_existing(&url).unwrap_err();
    assert!(error.to_string().contains("schema version 99"), "{error}");
}

#[test]
fn servers_starting_together_migrate_once_and_admin_views_never_migrate() {
    let Some((cluster, url, db)) = fresh_url("concurrent migrations") else {
        return;
    };
    // The admin views on an empty database: an error, and nothing created.
    let error = PostgresStore::open_existing(&url).unwrap_err();
    assert!(
        error.to_string().contains("no sfc-server tables"),
        "{error}"
    );
    assert_eq!(
        cluster.psql(
            &db,
            "SELECT count(*) FROM pg_tables WHERE schemaname = 'public'"
        ),
        "0"
    );
    let barrier = Arc::new(Barrier::new(4));
    let openers: Vec<_> = (0..4)
        .map(|_| {
            let (url, barrier) = (url.clone(), Arc::clone(&barrier));
            std::thread::spawn(move || {
                barrier.wait();
                PostgresStore::open(&url).map(|store| store.schema_version())
            })
        })
        .collect();
    for opener in openers {
        assert_eq!(opener.join().unwrap().unwrap().unwrap(), 1);
    }
    assert_eq!(
        cluster.psql(
            &db,
            "SELECT string_agg(version::text, ',') FROM schema_version"
        ),
        "1"
    );
}

#[test]
fn a_database_in_another_encoding_is_refused() {
    let Some(cluster) = postgres::shared("encoding") else {
        return;
    };
    cluster.psql(
        "postgres",
        &format!(
            "CREATE DATABASE sfc_latin1 OWNER {} ENCODING 'LATIN1' TEMPLATE template0",
            postgres::USER
        ),
    );
    let url = PostgresUrl::parse(&cluster.url("sfc_latin1")).unwrap();
    let error = PostgresStore::open(&url).unwrap_err();
    assert!(error.to_string().contains("needs UTF8"), "{error}");
}

/// A server process ("node") on `database` with its own data folder.
struct Node {
    _dir: tempfile::TempDir,
    process: ServerProcess,
    addr: std::net::SocketAddr,
}

impl Node {
    fn start(url: &str) -> Self {
        Self::start_with(url, &[])
    }

    fn start_with(url: &str, args: &[&str]) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let mut command = Command::new(SERVER_BIN);
        command
            .args(["--data-dir", dir.path().to_str().unwrap()])
            .args(["--port", "0", "--bind", "127.0.0.1"])
            .args(args)
            // The password stays off the command line.
            .env("SFC_DATABASE_URL", url);
        let mut process = ServerProcess::spawn(command);
        let addr = process.listening_addr();
        Node {
            _dir: dir,
            process,
            addr,
        }
    }

    fn data_dir(&self) -> &std::path::Path {
        self._dir.path()
    }
}

/// Sends `request` on both connections at the same moment; returns both replies.
fn race(
    a: &mut Conn,
    b: &mut Conn,
    request_a: &Request,
    request_b: &Request,
) -> (Response, Response) {
    let barrier = Arc::new(Barrier::new(2));
    std::thread::scope(|scope| {
        let first = {
            let barrier = Arc::clone(&barrier);
            scope.spawn(move || {
                barrier.wait();
                a.call(request_a)
            })
        };
        let second = {
            let barrier = Arc::clone(&barrier);
            scope.spawn(move || {
                barrier.wait();
                b.call(request_b)
            })
        };
        (first.join().unwrap(), second.join().unwrap())
    })
}

#[test]
fn two_nodes_racing_for_one_name_give_exactly_one_winner_every_time() {
    let Some((cluster, _, db)) = fresh_url("name race") else {
        return;
    };
    let url = cluster.url(&db);
    let mut nodes = [Node::start(&url), Node::start(&url)];
    // The second found the tables made by the first, quietly (no PostgreSQL NOTICE).
    let notices = nodes[1]
        .process
        .lines_containing("already exists", Duration::ZERO);
    assert!(notices.is_empty(), "{notices:?}");
    assert!(nodes[1].process.wait_for("database ready").is_some());
    let mut a = Conn::connect(nodes[0].addr);
    let mut b = Conn::connect(nodes[1].addr);
    for round in 0..100 {
        let request = register_request(&format!("racer-{round}"));
        let (first, second) = race(&mut a, &mut b, &request, &request);
        let winners = [&first, &second]
            .iter()
            .filter(|r| matches!(r, Response::Registered { .. }))
            .count();
        let losers = [&first, &second]
            .iter()
            .filter(|r| matches!(r, Response::RegistrationFailed))
            .count();
        assert_eq!(
            (winners, losers),
            (1, 1),
            "round {round}: {first:?} / {second:?}"
        );
    }
    let store = PostgresStore::open_existing(&PostgresUrl::parse(&url).unwrap()).unwrap();
    assert_eq!(store.clients().unwrap().len(), 100);
}

#[test]
fn two_nodes_racing_on_one_client_keep_one_key_and_whole_file_rows() {
    let Some((cluster, _, db)) = fresh_url("file race") else {
        return;
    };
    let url = cluster.url(&db);
    let nodes = [Node::start(&url), Node::start(&url)];
    let mut a = Conn::connect(nodes[0].addr);
    let mut b = Conn::connect(nodes[1].addr);

    // Key pinning across nodes: two first keys at once, exactly one is kept.
    let other_key = sfc_crypto::RsaKeyPair::generate().unwrap();
    for round in 0..10 {
        let user = format!("pinned-{round}");
        let Response::Registered { client_id } = a.call(&register_request(&user)) else {
            panic!("registration")
        };
        let theirs = Request::new(
            client_id,
            RequestBody::SendPublicKey {
                name: name(&user),
                public_key: other_key.public_key_der(),
            },
        );
        let (mine, other) = race(&mut a, &mut b, &key_request(client_id, &user), &theirs);
        let accepted = [&mine, &other]
            .iter()
            .filter(|r| matches!(r, Response::PublicKeyAccepted { .. }))
            .count();
        assert_eq!(accepted, 1, "round {round}: {mine:?} / {other:?}");
        assert!(
            matches!(mine, Response::ServerError) || matches!(other, Response::ServerError),
            "round {round}: {mine:?} / {other:?}"
        );
        let store = PostgresStore::open_existing(&PostgresUrl::parse(&url).unwrap()).unwrap();
        let kept = store
            .client(&client_id)
            .unwrap()
            .unwrap()
            .public_key
            .unwrap();
        let winner = if matches!(mine, Response::PublicKeyAccepted { .. }) {
            keypair().public_key_der()
        } else {
            other_key.public_key_der()
        };
        assert_eq!(kept, winner, "round {round}");
    }

    // One client uploading one file name through both nodes at once, 20 times: every
    // upload is acknowledged, and there is always exactly one whole row.
    let (client, key) = enroll(&mut a, "uploader");
    let store = PostgresStore::open_existing(&PostgresUrl::parse(&url).unwrap()).unwrap();
    for round in 0..20u32 {
        let plain_a = data(3_000 + round as usize, round);
        let plain_b = data(5_000 + round as usize, round + 1_000);
        let send =
            |conn: &mut Conn, plain: &[u8]| upload(conn, client, &key, "same.bin", plain, 1024);
        let (reply_a, reply_b) = std::thread::scope(|scope| {
            let barrier = Arc::new(Barrier::new(2));
            let (ba, bb) = (Arc::clone(&barrier), Arc::clone(&barrier));
            let (a, b) = (&mut a, &mut b);
            let (pa, pb) = (&plain_a, &plain_b);
            let first = scope.spawn(move || {
                ba.wait();
                send(a, pa)
            });
            let second = scope.spawn(move || {
                bb.wait();
                send(b, pb)
            });
            (first.join().unwrap(), second.join().unwrap())
        });
        assert_received(&reply_a, client, "same.bin", &plain_a);
        assert_received(&reply_b, client, "same.bin", &plain_b);
        let rows = store.files().unwrap();
        assert_eq!(rows.len(), 1, "round {round}: {rows:?}");
        assert_eq!(rows[0].file_name, "same.bin");
        assert_eq!(rows[0].path, format!("files/{}/same.bin", client.to_hex()));
        assert!(!rows[0].verified);
    }
    // 900 on one node racing 902 on the other: never a verified row left behind by the
    // removal, and the 902 is always acknowledged.
    for round in 0..20u32 {
        let plain = data(100, round);
        assert_received(
            &upload(&mut a, client, &key, "judged.bin", &plain, 1024),
            client,
            "judged.bin",
            &plain,
        );
        let (ok, failed) = race(
            &mut a,
            &mut b,
            &file_name_request(client, 900, "judged.bin"),
            &file_name_request(client, 902, "judged.bin"),
        );
        assert!(matches!(failed, Response::Ack { .. }), "{failed:?}");
        assert!(
            matches!(ok, Response::Ack { .. } | Response::ServerError),
            "{ok:?}"
        );
        assert_eq!(
            store.file(&client, "judged.bin").unwrap(),
            None,
            "round {round}"
        );
    }
}

/// Two nodes flushing LastSeen for the same clients at the same moment lock their rows in
/// one order (by ID): neither waits for the other in a cycle, which PostgreSQL would break
/// by failing one flush with a deadlock error after `deadlock_timeout`.
#[test]
fn two_nodes_flushing_last_seen_for_the_same_clients_never_deadlock() {
    let Some((cluster, url, db)) = fresh_url("touch race") else {
        return;
    };
    let nodes = [
        PostgresStore::open(&url).unwrap(),
        PostgresStore::open_existing(&url).unwrap(),
    ];
    let clients: Vec<ClientId> = (1..=256u128).map(|n| ClientId(n.to_be_bytes())).collect();
    let start = sfc_server::Timestamp::now();
    for (n, client) in clients.iter().enumerate() {
        nodes[0]
            .insert_client(client, &format!("toucher-{n}"), start)
            .unwrap();
    }
    // A table of many clients, as a busy site's: the planner then finds the touched rows
    // by index in the order they are given, not by one scan of the table in its order.
    cluster.psql(
        &db,
        "INSERT INTO clients (ID, Name) SELECT decode(lpad(to_hex(g), 32, '0'), 'hex'), \
         'bulk-' || g FROM generate_series(100000, 150000) AS g; ANALYZE clients;",
    );
    // Each flush orders its rows at random (before the fix: a deadlock in a few rounds).
    const ROUNDS: i64 = 100;
    let barrier = Barrier::new(2);
    // Both threads meet at the barrier every round, failures noted (not panicked on, which
    // would leave the other thread waiting there).
    let failures = std::sync::Mutex::new(Vec::new());
    std::thread::scope(|scope| {
        for node in &nodes {
            let (barrier, clients, failures) = (&barrier, &clients, &failures);
            scope.spawn(move || {
                for round in 1..=ROUNDS {
                    let at = sfc_server::Timestamp(start.0 + round);
                    let seen: Vec<_> = clients.iter().map(|client| (*client, at)).collect();
                    barrier.wait();
                    if let Err(error) = node.touch(&seen) {
                        failures
                            .lock()
                            .unwrap()
                            .push(format!("round {round}: {error}"));
                    }
                }
            });
        }
    });
    let failures = failures.into_inner().unwrap();
    assert!(failures.is_empty(), "{failures:#?}");
    let last = sfc_server::Timestamp(start.0 + ROUNDS).to_string();
    for client in &clients {
        let record = nodes[0].client(client).unwrap().unwrap();
        assert_eq!(record.last_seen.as_deref(), Some(last.as_str()));
    }
}

#[test]
fn postgres_restarted_mid_run_gives_1607_meanwhile_and_the_server_reconnects() {
    if !postgres::available("postgres restart") {
        return;
    }
    // Its own cluster: stopping the shared one would disturb the other tests.
    let cluster = PgCluster::start();
    let database = cluster.fresh();
    let server = TestServer::start_on(tempfile::tempdir().unwrap(), database, |_| {});
    let mut conn = server.connect();
    let (client, key) = enroll(&mut conn, "steady");
    let before = data(2_000, 1);
    assert_received(
        &upload(&mut conn, client, &key, "before.bin", &before, 1024),
        client,
        "before.bin",
        &before,
    );

    cluster.stop();
    // Every request that needs the database gets 1607, on fresh and open connections.
    assert_eq!(
        server.connect().call(&register_request("newcomer")),
        Response::ServerError
    );
    let reconnect = Request::new(
        client,
        RequestBody::Reconnect {
            name: name("steady"),
        },
    );
    assert_eq!(server.connect().call(&reconnect), Response::ServerError);
    let during = data(1_500, 2);
    assert_eq!(
        upload(&mut conn, client, &key, "during.bin", &during, 1024),
        Response::ServerError
    );
    // Nothing recorded, nothing left in the folder (no temporary file either).
    assert_eq!(server.stored_names(client), ["before.bin"]);
    assert_eq!(
        conn.call(&file_name_request(client, 900, "before.bin")),
        Response::ServerError
    );

    cluster.start_again();
    cluster.wait_ready();
    // The pool reconnects by itself (no restart of the server), and the connections the
    // restart closed are never used again: the very first request succeeds.
    assert!(
        matches!(
            server.connect().call(&register_request("newcomer")),
            Response::Registered { .. }
        ),
        "the server did not reconnect to PostgreSQL"
    );
    let mut conn = server.connect();
    let Response::ReconnectAccepted { wrapped_key, .. } = conn.call(&reconnect) else {
        panic!("827 after the restart")
    };
    let key = keypair().unwrap_aes_key(&wrapped_key).unwrap();
    assert_received(
        &upload(&mut conn, client, &key, "during.bin", &during, 1024),
        client,
        "during.bin",
        &during,
    );
    for file in ["before.bin", "during.bin"] {
        assert_eq!(
            conn.call(&file_name_request(client, 900, file)),
            Response::Ack {
                client_id: Some(client)
            }
        );
    }
    let files = server.db().files().unwrap();
    assert_eq!(
        files
            .iter()
            .map(|f| (f.file_name.as_str(), f.verified))
            .collect::<Vec<_>>(),
        [("before.bin", true), ("during.bin", true)]
    );
    assert_eq!(server.db().clients().unwrap().len(), 2);
    drop(server);
}

#[test]
fn admin_views_read_postgres_and_a_client_of_one_node_is_served_by_another() {
    let Some((cluster, _, db)) = fresh_url("admin views") else {
        return;
    };
    let url = cluster.url(&db);
    let nodes = [Node::start(&url), Node::start(&url)];
    let mut a = Conn::connect(nodes[0].addr);
    let (client, _) = enroll(&mut a, "admin-view");
    // Registered through node A, reconnected and uploading through node B.
    let mut b = Conn::connect(nodes[1].addr);
    let reconnect = Request::new(
        client,
        RequestBody::Reconnect {
            name: name("admin-view"),
        },
    );
    let Response::ReconnectAccepted { wrapped_key, .. } = b.call(&reconnect) else {
        panic!("827 through the other node")
    };
    let key = keypair().unwrap_aes_key(&wrapped_key).unwrap();
    let plain = data(4_321, 3);
    assert_received(
        &upload(&mut b, client, &key, "b.bin", &plain, 1024),
        client,
        "b.bin",
        &plain,
    );
    assert!(matches!(
        b.call(&file_name_request(client, 900, "b.bin")),
        Response::Ack { .. }
    ));
    let dir_b = nodes[1].data_dir().to_str().unwrap().to_owned();
    let admin = |args: &[&str], env: Option<&str>| {
        let mut command = Command::new(SERVER_BIN);
        command.args(args).env_remove("SFC_DATABASE_URL");
        if let Some(value) = env {
            command.env("SFC_DATABASE_URL", value);
        }
        let out = command.output().unwrap();
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    };
    // From the environment variable.
    let clients: serde_json::Value =
        serde_json::from_str(&admin(&["clients", "--json"], Some(&url))).unwrap();
    let clients = clients.as_array().unwrap();
    assert_eq!(clients.len(), 1);
    assert_eq!(clients[0]["name"], "admin-view");
    assert_eq!(clients[0]["id"], client.to_hex());
    assert_eq!(clients[0]["files"], 1);
    assert_eq!(clients[0]["public_key_bits"], 1024);
    // The flag wins over the environment variable.
    let bogus = "postgres://nobody:s3cret-bogus@127.0.0.1:1/none";
    let files: serde_json::Value = serde_json::from_str(&admin(
        &["files", "--json", "--data-dir", &dir_b, "--database", &url],
        Some(bogus),
    ))
    .unwrap();
    let files = files.as_array().unwrap();
    assert_eq!(files.len(), 1);
    assert_eq!(files[0]["file_name"], "b.bin");
    assert_eq!(files[0]["client_name"], "admin-view");
    assert_eq!(files[0]["verified"], true);
    assert_eq!(files[0]["size"], 4_321);
    let table = admin(&["clients", "--database", &url], None);
    assert!(table.contains("admin-view"), "{table}");
    assert!(admin(&["files", "--database", &url], None).contains("b.bin"));
    // A wrong URL is a clear error that does not show the password.
    let out = Command::new(SERVER_BIN)
        .args(["clients", "--database", bogus])
        .env_remove("SFC_DATABASE_URL")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("postgres://nobody@127.0.0.1:1/none"),
        "{stderr}"
    );
    assert!(!stderr.contains("s3cret-bogus"), "{stderr}");
    assert!(
        stderr.contains("Connection refused"),
        "the cause is shown: {stderr}"
    );
    // Both nodes stop cleanly.
    for mut node in nodes {
        assert!(node.process.terminate().success());
    }
}

#[test]
fn a_node_keeps_at_most_database_pool_connections() {
    let Some((cluster, _, db)) = fresh_url("pool size") else {
        return;
    };
    let node = Node::start_with(&cluster.url(&db), &["--database-pool", "2"]);
    let addr = node.addr;
    let clients: Vec<_> = (0..24)
        .map(|n| {
            std::thread::spawn(move || {
                Conn::connect(addr).call(&register_request(&format!("pooled-{n}")))
            })
        })
        .collect();
    for client in clients {
        assert!(matches!(
            client.join().unwrap(),
            Response::Registered { .. }
        ));
    }
    let open: u32 = cluster
        .psql(
            &db,
            &format!(
                "SELECT count(*) FROM pg_stat_activity
                 WHERE datname = '{db}' AND application_name = 'sfc-server'"
            ),
        )
        .parse()
        .unwrap();
    assert!((1..=2).contains(&open), "{open} connections");
}

#[test]
fn servers_starting_together_record_one_set_up_id_without_a_schema_change() {
    let Some((cluster, url, db)) = fresh_url("set-up id") else {
        return;
    };
    sfc_server::testing::check_setup_id(&PostgresStore::open(&url).unwrap());
    let fresh = fresh_url("set-up id race").unwrap().1;
    let barrier = Arc::new(Barrier::new(4));
    let recorders: Vec<_> = (0..4)
        .map(|n| {
            let (url, barrier) = (fresh.clone(), Arc::clone(&barrier));
            std::thread::spawn(move || {
                let store = PostgresStore::open(&url).unwrap();
                barrier.wait();
                store.record_setup_id(&format!("server-{n}")).unwrap()
            })
        })
        .collect();
    let recorded: Vec<String> = recorders.into_iter().map(|r| r.join().unwrap()).collect();
    assert!(recorded.iter().all(|id| *id == recorded[0]), "{recorded:?}");
    // An additive table: the schema version older servers check is unchanged.
    assert_eq!(
        cluster.psql(
            &db,
            "SELECT string_agg(version::text, ',') FROM schema_version"
        ),
        "1"
    );
}

/// Nodes storing one file at once, again and again, the row deleted now and then: every
/// store learns the path it replaced, so the versions form one chain. Each version but
/// the last is reported replaced exactly once (its node removes it), the last is the
/// row's, and no version is lost track of (an object no row names, never removed) nor
/// reported twice (removed under a row naming it). Covers the update, the insert, and
/// an insert that meets a row another node inserted meanwhile.
#[test]
fn nodes_storing_one_file_at_once_each_learn_the_version_they_replaced() {
    let Some((_cluster, url, _db)) = fresh_url("put_file race") else {
        return;
    };
    let nodes: Vec<PostgresStore> = (0..4).map(|_| PostgresStore::open(&url).unwrap()).collect();
    let client = id(0x42);
    let now = sfc_server::Timestamp::now();
    nodes[0].insert_client(&client, "racer", now).unwrap();
    const ROUNDS: usize = 50;
    let barrier = Barrier::new(nodes.len());
    // Per round: the paths stored, what each store reported replaced, and the row's
    // path once all are done.
    let outcomes = std::sync::Mutex::new(Vec::new());
    let rows = std::sync::Mutex::new(Vec::new());
    std::thread::scope(|scope| {
        for (n, node) in nodes.iter().enumerate() {
            let (barrier, outcomes, rows) = (&barrier, &outcomes, &rows);
            scope.spawn(move || {
                for round in 0..ROUNDS {
                    let row = sfc_server::FileRecord {
                        client_id: client,
                        file_name: "same.bin".into(),
                        path: format!("files/{}/same.bin~v{round}-{n}", client.to_hex()),
                        verified: false,
                    };
                    barrier.wait();
                    let replaced = node.put_file(&row, now);
                    outcomes.lock().unwrap().push((round, row.path, replaced));
                    barrier.wait();
                    if n == 0 {
                        let row = node.file(&client, "same.bin").unwrap().unwrap();
                        rows.lock().unwrap().push(row.path);
                        // Every third round starts from no row: the inserts race.
                        if round % 3 == 2 {
                            node.remove_file(&client, "same.bin", None).unwrap();
                        }
                    }
                }
            });
        }
    });
    let outcomes = outcomes.into_inner().unwrap();
    let rows = rows.into_inner().unwrap();
    assert_eq!(rows.len(), ROUNDS);
    let mut before: Option<String> = None;
    for (round, row) in rows.iter().enumerate() {
        let of_round: Vec<_> = outcomes.iter().filter(|(r, ..)| *r == round).collect();
        let mut unreported: std::collections::BTreeSet<String> =
            of_round.iter().map(|(_, path, _)| path.clone()).collect();
        if let Some(path) = &before {
            unreported.insert(path.clone());
        }
        for (_, path, replaced) in &of_round {
            match replaced {
                Ok(Some(old)) => assert!(
                    unreported.remove(old),
                    "round {round}: {path} reports {old}, replaced already or never stored"
                ),
                Ok(None) => {}
                Err(error) => panic!("round {round}: {path}: {error}"),
            }
        }
        assert_eq!(
            unreported.into_iter().collect::<Vec<_>>(),
            std::slice::from_ref(row),
            "round {round}: exactly the row's version is left unreported"
        );
        before = (round % 3 != 2).then(|| row.clone());
    }
}

/// A store on a fresh database whose connections go through a relay that can cut
/// them (`common::cutting_relay`), and the relay; `None`: PostgreSQL is missing and this
/// is not CI.
fn store_behind_a_relay(
    test: &str,
) -> Option<(common::cutting_relay::CuttingRelay, PostgresStore)> {
    let (cluster, _url, db) = fresh_url(test)?;
    Some(store_behind_a_relay_on(cluster, &db))
}

/// [`store_behind_a_relay`] on database `db` of `cluster`.
fn store_behind_a_relay_on(
    cluster: &PgCluster,
    db: &str,
) -> (common::cutting_relay::CuttingRelay, PostgresStore) {
    let relay = common::cutting_relay::CuttingRelay::start(
        format!("127.0.0.1:{}", cluster.port).parse().unwrap(),
    );
    let through_relay = cluster.url(db).replace(
        &format!(":{}/", cluster.port),
        &format!(":{}/", relay.port()),
    );
    let store = PostgresStore::open(&PostgresUrl::parse(&through_relay).unwrap()).unwrap();
    (relay, store)
}

/// The record of a stored file, version `n` of `f.bin`, for the put_file tests.
fn version_of_f(client: ClientId, n: u32) -> sfc_server::FileRecord {
    sfc_server::FileRecord {
        client_id: client,
        file_name: "f.bin".into(),
        path: format!("files/{}/f.bin~v{n:032x}", client.to_hex()),
        verified: false,
    }
}

/// Storing a file's row runs in a transaction whose outcome the store settles: a
/// statement whose answer is lost (before the commit was sent) rolled back and runs
/// again on a new connection, naming the path it replaced; a commit whose answer is lost
/// is asked after (it happened: success, with the replaced path); a commit lost on its
/// way is an error, and the row is as it was. (Before, the statement was autocommitted:
/// a lost answer was an error although the row had changed, and the caller had to
/// guess.)
#[test]
fn a_file_row_whose_answer_is_lost_is_settled() {
    let Some((relay, store)) = store_behind_a_relay("put_file answer lost") else {
        return;
    };
    let client = id(0x43);
    let now = sfc_server::Timestamp::now();
    store.insert_client(&client, "lost-answer", now).unwrap();
    let version = |n| version_of_f(client, n);
    assert_eq!(store.put_file(&version(1), now).unwrap(), None);

    // The update's answer names the path it replaced: lose it.
    relay.cut_at(version(1).path.as_bytes());
    let result = store.put_file(&version(2), now);
    assert_eq!(relay.cuts(), 1, "the answer was not cut");
    assert_eq!(result.unwrap(), Some(version(1).path));
    assert_eq!(store.file(&client, "f.bin").unwrap(), Some(version(2)));

    relay.cut_at(b"COMMIT");
    let result = store.put_file(&version(3), now);
    assert_eq!(relay.cuts(), 2, "the commit's answer was not cut");
    assert_eq!(result.unwrap(), Some(version(2).path));
    assert_eq!(store.file(&client, "f.bin").unwrap(), Some(version(3)));

    relay.cut_request_at(b"COMMIT");
    let result = store.put_file(&version(4), now);
    assert_eq!(relay.cuts(), 3, "the commit was not cut");
    assert!(result.is_err(), "{result:?}");
    assert_eq!(store.file(&client, "f.bin").unwrap(), Some(version(3)));
    // The pool took the cut connections out: the next store works.
    assert_eq!(
        store.put_file(&version(5), now).unwrap(),
        Some(version(3).path)
    );
}

/// A lost commit is settled by asking PostgreSQL about its transaction's ID. An ID left
/// unused by a crash (or by a fail-over to a standby that never got the commit) may be
/// handed to another transaction after the restart, and PostgreSQL then says
/// "committed". Such an answer is checked against the row: the caller hears that the row
/// was not written, and the row keeps the version it named. (The caller used to be told
/// the file was stored, replacing the live version, which it then removed.)
#[test]
fn a_lost_commit_settled_by_a_reused_transaction_id_is_not_taken_for_stored() {
    let Some((cluster, _url, db)) = fresh_url("reused transaction id") else {
        return;
    };
    let (relay, store) = store_behind_a_relay_on(cluster, &db);
    let client = id(0x47);
    let now = sfc_server::Timestamp::now();
    store.insert_client(&client, "reused-id", now).unwrap();
    let version = |n| version_of_f(client, n);
    assert_eq!(store.put_file(&version(1), now).unwrap(), None);
    // Another transaction, committed: the ID the lost commit's is taken for.
    let other = cluster.psql(&db, "SELECT pg_current_xact_id()");
    store.settle_next_by(&other);
    // The commit never reaches PostgreSQL: the transaction rolls back.
    relay.cut_request_at(b"COMMIT");
    let result = store.put_file(&version(2), now);
    assert_eq!(relay.cuts(), 1, "the commit was not cut");
    let error = result.expect_err("not stored").to_string();
    assert!(
        error.contains(&format!("transaction {other} committed")),
        "{error}"
    );
    assert_eq!(store.file(&client, "f.bin").unwrap(), Some(version(1)));
    // A lost commit that did happen is still taken for stored, by its own ID.
    relay.cut_at(b"COMMIT");
    assert_eq!(
        store.put_file(&version(3), now).unwrap(),
        Some(version(1).path)
    );
    assert_eq!(relay.cuts(), 2, "the commit's answer was not cut");
    assert_eq!(store.file(&client, "f.bin").unwrap(), Some(version(3)));
}

/// A statement or a commit whose path stops moving without closing (a stuck proxy; TCP's
/// own time-outs see nothing, since the relay's kernel acknowledges everything) fails
/// after the store's answer wait instead of hanging for ever; the stuck connection is
/// dropped, the next request works, and a commit's outcome is asked on another
/// connection (here: never sent, so rolled back; the row keeps the version it named).
#[test]
fn a_stuck_connection_fails_in_time_and_is_dropped() {
    let Some((relay, store)) = store_behind_a_relay("stuck connection") else {
        return;
    };
    let store = Arc::new(store);
    store.set_answer_wait(Duration::from_secs(2));
    let client = id(0x48);
    let now = sfc_server::Timestamp::now();
    store.insert_client(&client, "stuck", now).unwrap();
    let version = move |n| version_of_f(client, n);
    assert_eq!(store.put_file(&version(1), now).unwrap(), None);
    // In a thread, so that a hang fails the test instead of holding it for ever.
    let in_time = |work: Box<dyn FnOnce() -> String + Send>| {
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || tx.send(work()).unwrap());
        rx.recv_timeout(Duration::from_secs(60))
            .expect("answered in time")
    };
    relay.freeze_request_at(b"FROM files");
    let reader = Arc::clone(&store);
    let read = in_time(Box::new(move || {
        format!("{:?}", reader.file(&client, "f.bin"))
    }));
    assert_eq!(relay.cuts(), 1, "the statement was not frozen");
    assert!(read.contains("no answer from PostgreSQL"), "{read}");
    assert_eq!(store.file(&client, "f.bin").unwrap(), Some(version(1)));
    relay.freeze_request_at(b"COMMIT");
    let writer = Arc::clone(&store);
    let stored = in_time(Box::new(move || {
        format!("{:?}", writer.put_file(&version(2), now))
    }));
    assert_eq!(relay.cuts(), 2, "the commit was not frozen");
    assert!(stored.starts_with("Err("), "{stored}");
    assert_eq!(store.file(&client, "f.bin").unwrap(), Some(version(1)));
    assert_eq!(
        store.put_file(&version(3), now).unwrap(),
        Some(version(1).path)
    );
}

/// A row's update whose connection breaks while it waits for the row's lock (another
/// server's transaction holds it) never commits behind the caller's back: the caller
/// hears either that it is stored, or that it is not and never will be (it then removes
/// the new file). Autocommitted, the statement committed when the lock came free, after
/// the caller had been told it failed: a row naming a file that was then removed.
#[test]
fn a_file_row_whose_connection_breaks_while_it_waits_never_commits_late() {
    let Some((cluster, _url, db)) = fresh_url("put_file late commit") else {
        return;
    };
    let relay = common::cutting_relay::CuttingRelay::start(
        format!("127.0.0.1:{}", cluster.port).parse().unwrap(),
    );
    let through_relay = cluster.url(&db).replace(
        &format!(":{}/", cluster.port),
        &format!(":{}/", relay.port()),
    );
    let store = std::sync::Arc::new(
        PostgresStore::open(&PostgresUrl::parse(&through_relay).unwrap()).unwrap(),
    );
    let client = id(0x49);
    let now = sfc_server::Timestamp::now();
    store.insert_client(&client, "late-commit", now).unwrap();
    assert_eq!(store.put_file(&version_of_f(client, 1), now).unwrap(), None);

    // Another session locks the row.
    let mut locker = cluster.psql_session(&db);
    let mut input = locker.stdin.take().unwrap();
    let mut output = std::io::BufReader::new(locker.stdout.take().unwrap());
    use std::io::{BufRead, Write};
    writeln!(
        input,
        "BEGIN; SELECT 'locked' FROM files WHERE FileName = 'f.bin' FOR UPDATE;"
    )
    .unwrap();
    let mut line = String::new();
    output.read_line(&mut line).unwrap();
    assert_eq!(line.trim(), "locked");

    let storing = {
        let store = std::sync::Arc::clone(&store);
        std::thread::spawn(move || store.put_file(&version_of_f(client, 2), now))
    };
    let waiting = "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock'";
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while cluster.psql(&db, waiting) != "1" {
        assert!(
            std::time::Instant::now() < deadline,
            "the update never waited for the lock"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    relay.cut_now();
    // Let the store see the cut (and, now, run its transaction again, which waits too).
    std::thread::sleep(Duration::from_millis(300));
    writeln!(input, "COMMIT;").unwrap();
    drop(input);
    assert!(locker.wait().unwrap().success());
    let result = storing.join().unwrap();
    // Whatever the cut backend does once it has the lock, it has done it by now.
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while cluster.psql(
        &db,
        "SELECT count(*) FROM pg_stat_activity WHERE state = 'active' AND pid <> pg_backend_pid() AND query LIKE '%replaced%'",
    ) != "0"
    {
        assert!(
            std::time::Instant::now() < deadline,
            "the cut update never ended"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    std::thread::sleep(Duration::from_millis(200));
    let row = store.file(&client, "f.bin").unwrap().unwrap();
    match result {
        Ok(replaced) => {
            assert_eq!(replaced, Some(version_of_f(client, 1).path));
            assert_eq!(row, version_of_f(client, 2));
        }
        Err(error) => assert_eq!(
            row,
            version_of_f(client, 1),
            "reported as failed ({error}), yet the row changed"
        ),
    }
}

/// ... but a connection found closed before the statement was sent (here: cut while the
/// statement is being prepared, its first use on that connection) is replaced and the
/// statement sent on the new one: nothing can have run twice.
#[test]
fn a_file_row_whose_connection_closes_before_it_is_sent_is_written_on_another() {
    let Some((relay, store)) = store_behind_a_relay("put_file unsent") else {
        return;
    };
    let client = id(0x44);
    let now = sfc_server::Timestamp::now();
    store.insert_client(&client, "unsent", now).unwrap();
    // The preparation's answer describes the row it returns: a column `pathname`.
    relay.cut_at(b"pathname");
    let row = sfc_server::FileRecord {
        client_id: client,
        file_name: "f.bin".into(),
        path: format!("files/{}/f.bin", client.to_hex()),
        verified: false,
    };
    assert_eq!(store.put_file(&row, now).unwrap(), None);
    assert_eq!(relay.cuts(), 1, "the preparation was not cut");
    assert_eq!(store.file(&client, "f.bin").unwrap(), Some(row));
}

/// A client with two stored files behind a relay, for the removal tests: the store, the
/// relay, the client and its two rows.
fn two_files_behind_a_relay(
    test: &str,
    client: ClientId,
) -> Option<(
    common::cutting_relay::CuttingRelay,
    PostgresStore,
    Vec<sfc_server::FileRecord>,
)> {
    let (relay, store) = store_behind_a_relay(test)?;
    let now = sfc_server::Timestamp::now();
    store.insert_client(&client, test, now).unwrap();
    let rows: Vec<_> = ["a.bin", "b.bin"]
        .into_iter()
        .map(|name| sfc_server::FileRecord {
            client_id: client,
            file_name: name.into(),
            path: format!("files/{}/{name}", client.to_hex()),
            verified: true,
        })
        .collect();
    for row in &rows {
        assert_eq!(store.put_file(row, now).unwrap(), None);
    }
    Some((relay, store, rows))
}

/// A removal whose commit happened with its answer lost still says what it removed (its
/// path was read before the commit), so that the file goes too. (Run again on a new
/// connection, as before, it found no row, reported "no such file", and the file stayed
/// with no row naming it.)
#[test]
fn a_removal_whose_commit_answer_is_lost_names_what_it_removed() {
    let client = id(0x45);
    let Some((relay, store, rows)) = two_files_behind_a_relay("removal commit lost", client) else {
        return;
    };
    let now = sfc_server::Timestamp::now();
    relay.cut_at(b"COMMIT");
    let removed = store.remove_file(&client, "a.bin", Some(now));
    assert_eq!(relay.cuts(), 1, "the commit's answer was not cut");
    assert_eq!(removed.unwrap(), Some(rows[0].clone()));
    assert_eq!(store.file(&client, "a.bin").unwrap(), None);

    relay.cut_at(b"COMMIT");
    let removed = store.remove_client(&client);
    assert_eq!(relay.cuts(), 2, "the commit's answer was not cut");
    assert_eq!(removed.unwrap(), Some(vec![rows[1].clone()]));
    assert_eq!(store.client(&client).unwrap(), None);
    assert!(store.files().unwrap().is_empty());
}

/// A removal whose commit never reached PostgreSQL (rolled back when the connection
/// closed) is an error, and the rows stay: the caller must not remove files rows still
/// name. The next attempt removes them.
#[test]
fn a_removal_whose_commit_is_lost_on_the_way_is_an_error_and_removes_nothing() {
    let client = id(0x46);
    let Some((relay, store, rows)) = two_files_behind_a_relay("removal commit unsent", client)
    else {
        return;
    };
    relay.cut_request_at(b"COMMIT");
    let removed = store.remove_file(&client, "a.bin", None);
    assert_eq!(relay.cuts(), 1, "the commit was not cut");
    assert!(removed.is_err(), "{removed:?}");
    assert_eq!(store.file(&client, "a.bin").unwrap(), Some(rows[0].clone()));

    relay.cut_request_at(b"COMMIT");
    let removed = store.remove_client(&client);
    assert_eq!(relay.cuts(), 2, "the commit was not cut");
    assert!(removed.is_err(), "{removed:?}");
    assert!(store.client(&client).unwrap().is_some());
    assert_eq!(store.files().unwrap(), rows);

    assert_eq!(
        store.remove_file(&client, "a.bin", None).unwrap(),
        Some(rows[0].clone())
    );
    assert_eq!(
        store.remove_client(&client).unwrap(),
        Some(vec![rows[1].clone()])
    );
}

/// A removal whose statement's answer is lost before the commit was sent rolled back:
/// it runs again on a new connection, and removes the row.
#[test]
fn a_removal_whose_statement_answer_is_lost_runs_again_on_another_connection() {
    let client = id(0x47);
    let Some((relay, store, rows)) = two_files_behind_a_relay("removal answer lost", client) else {
        return;
    };
    // The DELETE's answer carries the removed row's path.
    relay.cut_at(rows[0].path.as_bytes());
    let removed = store.remove_file(&client, "a.bin", None);
    assert_eq!(relay.cuts(), 1, "the answer was not cut");
    assert_eq!(removed.unwrap(), Some(rows[0].clone()));
    assert_eq!(store.file(&client, "a.bin").unwrap(), None);
}

/// A server that vanishes between a removal's statement and its commit (here: its
/// connection's commit never arrives, and PostgreSQL's side stays open) leaves a
/// transaction holding the row's lock. PostgreSQL ends it after the idle-in-transaction
/// time-out the store sets, so the next removal of that row, on another connection, goes
/// through instead of waiting out the statement time-out (30 s) and failing.
#[test]
fn a_removal_stranded_before_its_commit_does_not_keep_its_row_locked() {
    let client = id(0x48);
    let Some((relay, store, rows)) = two_files_behind_a_relay("removal stranded", client) else {
        return;
    };
    relay.strand_request_at(b"COMMIT");
    let removed = store.remove_file(&client, "a.bin", None);
    assert_eq!(relay.cuts(), 1, "the commit was not cut");
    assert!(removed.is_err(), "{removed:?}");
    assert_eq!(
        store.remove_file(&client, "a.bin", None).unwrap(),
        Some(rows[0].clone())
    );
}
