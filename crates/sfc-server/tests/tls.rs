//! Opt-in TLS (`--tls-cert`/`--tls-key`): the unchanged protocol inside TLS, with a test
//! CA and a server certificate for 127.0.0.1/localhost made at test time (rcgen).
#![cfg(test)]

mod common;

use common::*;
use rustls::pki_types::{CertificateDer, ServerName};
use sfc_proto::{ClientId, Request, Response, ResponseHeader};
use sfc_server::tls::TlsFiles;
use sfc_server::{RunningServer, ServerConfig};
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// A CA and a server certificate it signed, as PEM files in `dir`.
struct TestPki {
    ca_der: CertificateDer<'static>,
    files: TlsFiles,
}

fn make_ca(common_name: &str) -> rcgen::CertifiedIssuer<'static, rcgen::KeyPair> {
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, common_name);
    params.key_usages = vec![
        rcgen::KeyUsagePurpose::KeyCertSign,
        rcgen::KeyUsagePurpose::CrlSign,
    ];
    rcgen::CertifiedIssuer::self_signed(params, rcgen::KeyPair::generate().unwrap()).unwrap()
}

fn make_pki(dir: &Path) -> TestPki {
    let ca = make_ca("SecureFileComm test CA");
    let key = rcgen::KeyPair::generate().unwrap();
    let mut params =
        rcgen::CertificateParams::new(vec!["127.0.0.1".to_string(), "localhost".to_string()])
            .unwrap();
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "sfc-server test");
    let cert = params.signed_by(&key, &ca).unwrap();
    let files = TlsFiles {
        cert: dir.join("server.crt"),
        key: dir.join("server.key"),
    };
    std::fs::write(&files.cert, cert.pem()).unwrap();
    std::fs::write(&files.key, key.serialize_pem()).unwrap();
    TestPki {
        ca_der: ca.der().clone(),
        files,
    }
}

fn start_tls_server(dir: &Path, files: &TlsFiles, tweak: fn(&mut ServerConfig)) -> RunningServer {
    init_logging();
    let mut config = config_for(&dir.join("data"));
    config.tls = Some(files.clone());
    tweak(&mut config);
    RunningServer::start(config).unwrap()
}

fn client_config(ca: &CertificateDer<'static>) -> Arc<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(ca.clone()).unwrap();
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    Arc::new(
        rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth(),
    )
}

/// A blocking TLS test client.
struct TlsConn {
    stream: rustls::StreamOwned<rustls::ClientConnection, TcpStream>,
}

impl TlsConn {
    /// Connects and completes the handshake (or returns its error).
    fn connect(addr: SocketAddr, config: Arc<rustls::ClientConfig>) -> std::io::Result<Self> {
        Self::handshake(TcpStream::connect(addr)?, addr, config, b"")
    }

    /// [`TlsConn::connect`] from the local address `local`.
    fn connect_from(
        local: std::net::IpAddr,
        addr: SocketAddr,
        config: Arc<rustls::ClientConfig>,
    ) -> std::io::Result<Self> {
        Self::handshake(tcp_from(local, addr)?, addr, config, b"")
    }

    /// Connects, writes `prefix` and the ClientHello in one write (a balancer's PROXY
    /// header and what follows it), and completes the handshake.
    fn connect_after(
        addr: SocketAddr,
        config: Arc<rustls::ClientConfig>,
        prefix: &[u8],
    ) -> std::io::Result<Self> {
        Self::handshake(TcpStream::connect(addr)?, addr, config, prefix)
    }

    /// The handshake on `tcp`, its ClientHello written after `prefix` in one write.
    fn handshake(
        mut tcp: TcpStream,
        addr: SocketAddr,
        config: Arc<rustls::ClientConfig>,
        prefix: &[u8],
    ) -> std::io::Result<Self> {
        tcp.set_read_timeout(Some(Duration::from_secs(30)))?;
        let name = ServerName::IpAddress(addr.ip().into());
        let mut conn =
            rustls::ClientConnection::new(config, name).map_err(std::io::Error::other)?;
        let mut first = prefix.to_vec();
        while conn.wants_write() {
            conn.write_tls(&mut first)?;
        }
        tcp.write_all(&first)?;
        let mut stream = rustls::StreamOwned::new(conn, tcp);
        while stream.conn.is_handshaking() {
            stream.conn.complete_io(&mut stream.sock)?;
        }
        Ok(TlsConn { stream })
    }

    fn send_raw(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).unwrap();
        self.stream.flush().unwrap();
    }

    fn recv(&mut self) -> Response {
        let mut head = [0u8; 7];
        self.stream.read_exact(&mut head).unwrap();
        let header = ResponseHeader::decode(&head).unwrap();
        let mut payload = vec![0u8; header.payload_size as usize];
        self.stream.read_exact(&mut payload).unwrap();
        Response::decode_payload(&header, &payload).unwrap()
    }

    fn call(&mut self, request: &Request) -> Response {
        self.send_raw(&request.encode());
        self.recv()
    }
}

fn enroll_tls(conn: &mut TlsConn, user: &str) -> (ClientId, sfc_crypto::AesKey) {
    let Response::Registered { client_id } = conn.call(&register_request(user)) else {
        panic!("registration of {user} failed")
    };
    let Response::PublicKeyAccepted { wrapped_key, .. } = conn.call(&key_request(client_id, user))
    else {
        panic!("826 for {user}")
    };
    (client_id, keypair().unwrap_aes_key(&wrapped_key).unwrap())
}

/// The whole protocol over TLS: registration, key exchange, a file in one packet and one
/// in many, 900; the files are stored byte for byte.
#[test]
fn upload_over_tls_works() {
    let dir = tempfile::tempdir().unwrap();
    let pki = make_pki(dir.path());
    let server = start_tls_server(dir.path(), &pki.files, |_| {});
    let mut conn = TlsConn::connect(server.addr(), client_config(&pki.ca_der)).unwrap();
    let (id, key) = enroll_tls(&mut conn, "tina");
    for (file, len, packet) in [
        ("small.txt", 1000usize, 4096usize),
        ("big.bin", 300_000, 2048),
    ] {
        let plain = data(len, len as u32);
        let cipher = encrypt(&key, &plain);
        for bytes in packets(id, file, plain.len(), &cipher, packet, ContentSize::Whole) {
            conn.send_raw(&bytes);
        }
        assert_received(&conn.recv(), id, file, &plain);
        assert_eq!(
            conn.call(&file_name_request(id, 900, file)),
            Response::Ack {
                client_id: Some(id)
            }
        );
        let stored = dir.path().join("data/files").join(id.to_hex()).join(file);
        assert_eq!(std::fs::read(stored).unwrap(), plain);
    }
    server.stop();
}

/// A client that does not trust the server's certificate (another CA: what a
/// man-in-the-middle's certificate looks like to it) refuses the handshake; the server
/// goes on serving clients that do trust it.
/// Behind a balancer (`--proxy-protocol`), TLS follows the PROXY header: the server reads
/// exactly the header, even when the ClientHello comes in the same segment, and the
/// client's address is the header's.
#[test]
fn tls_after_a_proxy_header() {
    let dir = tempfile::tempdir().unwrap();
    let pki = make_pki(dir.path());
    let server = start_tls_server(dir.path(), &pki.files, |config| {
        config.proxy_protocol = Some(sfc_server::ProxySources::parse("127.0.0.1").unwrap());
        config.max_connections_per_address = 1;
    });
    let header = format!(
        "PROXY TCP4 127.0.0.9 127.0.0.1 40000 {}\r\n",
        server.addr().port()
    );
    let config = client_config(&pki.ca_der);
    let mut conn =
        TlsConn::connect_after(server.addr(), Arc::clone(&config), header.as_bytes()).unwrap();
    enroll_tls(&mut conn, "proxied");
    // 127.0.0.9 has its one connection: a second one is closed during the handshake.
    assert!(TlsConn::connect_after(server.addr(), config, header.as_bytes()).is_err());
}

/// A balancer's health check (a PROXY header for its own connection, then the close,
/// as HAProxy's `check` sends with `send-proxy`) and a bare TCP check are no failed
/// handshakes: they cost the address nothing, so the balancer is never banned.
#[test]
fn health_checks_that_close_at_once_are_no_failed_handshakes() {
    let dir = tempfile::tempdir().unwrap();
    let pki = make_pki(dir.path());
    let server = start_tls_server(dir.path(), &pki.files, |config| {
        config.proxy_protocol = Some(sfc_server::ProxySources::parse("127.0.0.1").unwrap());
        config.failure_limit = sfc_server::RateLimit::new(1, 2);
    });
    let local = b"PROXY UNKNOWN\r\n";
    for _ in 0..6 {
        let mut check = std::net::TcpStream::connect(server.addr()).unwrap();
        check.write_all(local).unwrap();
        drop(check);
    }
    // Each check's task runs on its own: give them time to end.
    std::thread::sleep(Duration::from_millis(500));
    // The balancer's own address is still served.
    let config = client_config(&pki.ca_der);
    let mut conn = TlsConn::connect_after(server.addr(), config, local).unwrap();
    enroll_tls(&mut conn, "after-checks");
    server.stop();
}

#[test]
fn a_client_that_does_not_trust_the_certificate_refuses_to_talk() {
    let dir = tempfile::tempdir().unwrap();
    let pki = make_pki(dir.path());
    let server = start_tls_server(dir.path(), &pki.files, |_| {});
    let stranger = make_ca("someone else");
    let error = TlsConn::connect(server.addr(), client_config(stranger.der()))
        .err()
        .expect("the handshake fails");
    let text = format!("{error}");
    assert!(
        text.contains("UnknownIssuer") || text.contains("invalid peer certificate"),
        "{text}"
    );
    let mut conn = TlsConn::connect(server.addr(), client_config(&pki.ca_der)).unwrap();
    enroll_tls(&mut conn, "trusting");
    server.stop();
}

/// A plain client against a TLS server gets a prompt close (after rustls's alert), not a
/// hang and nothing that parses as a reply.
#[test]
fn a_plain_client_is_closed_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let pki = make_pki(dir.path());
    let server = start_tls_server(dir.path(), &pki.files, |_| {});
    let mut plain = Conn::connect(server.addr());
    let started = Instant::now();
    plain.send(&register_request("plain"));
    let mut received = Vec::new();
    plain
        .stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut buf = [0u8; 512];
    loop {
        match plain.stream.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => received.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => break,
            Err(e) => panic!("no close within 10 s: {e}"),
        }
    }
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "closed promptly"
    );
    if let Some(first) = received.first() {
        assert_eq!(
            *first, 0x15,
            "a TLS alert record, if anything: {received:?}"
        );
    }
    server.stop();
}

/// A connection that never completes the handshake is closed at the request timeout.
#[test]
fn a_stalled_handshake_is_closed_at_the_request_timeout() {
    let dir = tempfile::tempdir().unwrap();
    let pki = make_pki(dir.path());
    let server = start_tls_server(dir.path(), &pki.files, |c| {
        c.request_timeout = Duration::from_secs(1);
        c.idle_timeout = Duration::from_secs(30);
    });
    let mut silent = Conn::connect(server.addr());
    let started = Instant::now();
    assert!(silent.closed_within(Duration::from_secs(10)));
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_millis(900) && waited < Duration::from_secs(5),
        "{waited:?}"
    );
    server.stop();
}

/// A graceful shutdown does not wait for connections that have not begun a request: a
/// silent TLS handshake, and (behind a balancer) a silent wait for the PROXY header, are
/// cut at once, not at their `--request-timeout`.
#[test]
fn shutdown_cuts_silent_handshakes_and_proxy_header_waits() {
    for behind_balancer in [false, true] {
        let dir = tempfile::tempdir().unwrap();
        let pki = make_pki(dir.path());
        let tweak: fn(&mut ServerConfig) = if behind_balancer {
            |c| {
                c.request_timeout = Duration::from_secs(30);
                c.shutdown_grace = Duration::from_secs(20);
                c.proxy_protocol = Some(sfc_server::ProxySources::parse("127.0.0.1").unwrap());
            }
        } else {
            |c| {
                c.request_timeout = Duration::from_secs(30);
                c.shutdown_grace = Duration::from_secs(20);
            }
        };
        let server = start_tls_server(dir.path(), &pki.files, tweak);
        let mut silent = Conn::connect(server.addr());
        // Accepted by now (nothing tells from outside: if it were not, the test would
        // pass without showing anything, never fail).
        std::thread::sleep(Duration::from_millis(300));
        let started = Instant::now();
        server.stop();
        let took = started.elapsed();
        assert!(
            took < Duration::from_secs(5),
            "behind a balancer: {behind_balancer}; stopped after {took:?}"
        );
        assert!(silent.closed_within(Duration::from_secs(2)));
    }
}

/// Missing or unusable certificate/key files stop the server at start-up, naming them.
#[test]
fn bad_certificate_or_key_files_stop_the_server_at_start_up() {
    let dir = tempfile::tempdir().unwrap();
    let pki = make_pki(dir.path());
    let garbage = dir.path().join("garbage.pem");
    std::fs::write(&garbage, "not a pem file\n").unwrap();
    let other = make_pki(&{
        let d = dir.path().join("other");
        std::fs::create_dir(&d).unwrap();
        d
    });
    let cases = [
        (
            dir.path().join("missing.crt"),
            pki.files.key.clone(),
            "missing.crt",
        ),
        (garbage.clone(), pki.files.key.clone(), "garbage.pem"),
        (pki.files.cert.clone(), garbage.clone(), "garbage.pem"),
        (
            pki.files.cert.clone(),
            other.files.key.clone(),
            "server.key",
        ),
    ];
    for (cert, key, named) in cases {
        let mut config = config_for(&dir.path().join("data"));
        config.tls = Some(TlsFiles { cert, key });
        let error = RunningServer::start(config).expect_err("refused");
        let text = format!("{error:#}");
        assert!(text.contains(named), "{text}");
    }
}

/// A relay that forwards a connection to `target` and records every byte in both
/// directions (what a passive eavesdropper on the path sees).
fn recording_relay(target: SocketAddr) -> (SocketAddr, Arc<std::sync::Mutex<Vec<u8>>>) {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
    let record = Arc::clone(&seen);
    std::thread::spawn(move || {
        let Ok((client, _)) = listener.accept() else {
            return;
        };
        let server = TcpStream::connect(target).unwrap();
        let pipe =
            |mut from: TcpStream, mut to: TcpStream, seen: Arc<std::sync::Mutex<Vec<u8>>>| {
                std::thread::spawn(move || {
                    let mut buf = [0u8; 16 * 1024];
                    while let Ok(n) = from.read(&mut buf) {
                        if n == 0 || to.write_all(&buf[..n]).is_err() {
                            break;
                        }
                        seen.lock().unwrap().extend_from_slice(&buf[..n]);
                    }
                    let _ = to.shutdown(std::net::Shutdown::Write);
                })
            };
        let up = pipe(
            client.try_clone().unwrap(),
            server.try_clone().unwrap(),
            Arc::clone(&record),
        );
        let down = pipe(server, client, record);
        let _ = up.join();
        let _ = down.join();
    });
    (addr, seen)
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

/// What TLS hides from a passive eavesdropper: with plain TCP the user name, the client
/// ID, the file name and the checksum are on the wire; inside TLS none of them is.
#[test]
fn tls_hides_names_ids_and_checksums_from_an_eavesdropper() {
    let dir = tempfile::tempdir().unwrap();
    let pki = make_pki(dir.path());
    let plain_server = TestServer::start();
    let tls_server = start_tls_server(dir.path(), &pki.files, |_| {});
    let plain_text = data(4000, 11);
    let cksum = sfc_crypto::cksum(&plain_text).to_le_bytes();

    // Plain TCP through the relay.
    let (relay, seen) = recording_relay(plain_server.addr);
    let mut conn = Conn::connect(relay);
    let (id, key) = enroll(&mut conn, "eve-watches-plain");
    let reply = upload(&mut conn, id, &key, "diary.txt", &plain_text, 4096);
    assert_received(&reply, id, "diary.txt", &plain_text);
    drop(conn);
    std::thread::sleep(Duration::from_millis(100));
    let wire = seen.lock().unwrap().clone();
    assert!(
        contains(&wire, b"eve-watches-plain"),
        "plain: the name is visible"
    );
    assert!(contains(&wire, &id.0), "plain: the client ID is visible");
    assert!(
        contains(&wire, b"diary.txt"),
        "plain: the file name is visible"
    );
    assert!(contains(&wire, &cksum), "plain: the checksum is visible");

    // The same inside TLS.
    let (relay, seen) = recording_relay(tls_server.addr());
    let mut conn = TlsConn::connect(relay, client_config(&pki.ca_der)).unwrap();
    let (id, key) = enroll_tls(&mut conn, "eve-watches-tls");
    let cipher = encrypt(&key, &plain_text);
    for bytes in packets(
        id,
        "diary.txt",
        plain_text.len(),
        &cipher,
        4096,
        ContentSize::Whole,
    ) {
        conn.send_raw(&bytes);
    }
    assert_received(&conn.recv(), id, "diary.txt", &plain_text);
    drop(conn);
    std::thread::sleep(Duration::from_millis(100));
    let wire = seen.lock().unwrap().clone();
    assert!(wire.len() > cipher.len(), "the relay saw the traffic");
    assert!(!contains(&wire, b"eve-watches-tls"));
    assert!(!contains(&wire, &id.0));
    assert!(!contains(&wire, b"diary.txt"));
    assert!(!contains(&wire, &cksum));
    assert!(
        !contains(&wire, &cipher[..64]),
        "not even the CBC ciphertext"
    );
    tls_server.stop();
}

/// Issue 13 item 10 (server side): `sfc-server tls-init` writes an owner-only key and a
/// self-signed certificate into the data folder and prints the SHA-256 fingerprint of
/// the certificate in both forms; the server then serves TLS with those files, and the
/// certificate it presents has exactly that fingerprint.
#[test]
fn tls_init_makes_files_the_server_serves_and_prints_their_fingerprint() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let out = std::process::Command::new(common::process::SERVER_BIN)
        .args(["tls-init", "--data-dir", data.to_str().unwrap()])
        .args(["--name", "sfc.example", "--name", "10.9.8.7"])
        .env_remove("RUST_LOG")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let files = TlsFiles {
        cert: data.join(sfc_server::tls::CERT_FILE),
        key: data.join(sfc_server::tls::KEY_FILE),
    };
    for path in [&files.cert, &files.key] {
        let mode = std::fs::metadata(path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "{}", path.display());
    }
    assert!(
        stdout.contains("--tls-cert") && stdout.contains("--tls-key"),
        "{stdout}"
    );

    let server = start_tls_server(dir.path(), &files, |_| {});
    let cert_pem = std::fs::read(&files.cert).unwrap();
    let cert_der = {
        use rustls::pki_types::pem::PemObject;
        CertificateDer::from_pem_slice(&cert_pem).unwrap()
    };
    // The self-signed certificate is its own trust anchor here (a client pinning the
    // fingerprint needs none).
    let mut conn = TlsConn::connect(server.addr(), client_config(&cert_der)).unwrap();
    let presented = conn.stream.conn.peer_certificates().unwrap()[0].clone();
    let fingerprint = sfc_server::tls::fingerprint(presented.as_ref());
    assert_eq!(fingerprint.len(), 64);
    assert!(
        stdout.contains(&fingerprint),
        "{fingerprint} not in:\n{stdout}"
    );
    let colons: Vec<String> = fingerprint
        .as_bytes()
        .chunks(2)
        .map(|pair| String::from_utf8(pair.to_vec()).unwrap())
        .collect();
    assert!(stdout.contains(&colons.join(":")), "{stdout}");
    // The names asked for are in the certificate too.
    let der = presented.as_ref();
    assert!(der.windows(11).any(|w| w == b"sfc.example"));
    assert!(der.windows(4).any(|w| w == [10, 9, 8, 7]));
    let (id, _) = enroll_tls(&mut conn, "tls-init");
    assert_ne!(id, ClientId::ZERO);

    // A second tls-init does not replace the files without --force.
    let again = std::process::Command::new(common::process::SERVER_BIN)
        .args(["tls-init", "--data-dir", data.to_str().unwrap()])
        .env_remove("RUST_LOG")
        .output()
        .unwrap();
    assert!(!again.status.success());
    assert!(String::from_utf8_lossy(&again.stderr).contains("--force"));
}

/// One HTTP/1.1 request over a TLS connection; the whole response as text.
fn https_get(addr: SocketAddr, config: Arc<rustls::ClientConfig>, request: &str) -> String {
    let mut conn = TlsConn::connect(addr, config).unwrap();
    conn.send_raw(request.as_bytes());
    let mut response = Vec::new();
    let _ = conn.stream.read_to_end(&mut response);
    String::from_utf8_lossy(&response).into_owned()
}

/// `--admin-tls-cert/--admin-tls-key`: the admin listener speaks HTTPS with the same
/// certificate loading code, sets `Secure` on its session cookie, and may then listen
/// off loopback without `--admin-insecure`.
#[test]
fn the_admin_listener_serves_https_with_a_secure_cookie() {
    let dir = tempfile::tempdir().unwrap();
    let pki = make_pki(dir.path());
    let mut config = config_for(&dir.path().join("data"));
    let mut admin = sfc_server::AdminConfig::new(
        "127.0.0.1:0".parse().unwrap(),
        dir.path().join("admin.token"),
    );
    admin.tls = Some(pki.files.clone());
    // Off loopback, TLS is enough (no --admin-insecure).
    let mut public = admin.clone();
    public.listen = "0.0.0.0:0".parse().unwrap();
    assert!(public.check().is_ok());
    config.admin = Some(admin);
    let server = RunningServer::start(config).unwrap();
    let addr = server.admin_addr().unwrap();
    let token = std::fs::read_to_string(dir.path().join("admin.token")).unwrap();
    let client = client_config(&pki.ca_der);
    // Clients that connect and send nothing do not hold up the others' handshakes (one
    // after the other they would take the 10 s handshake time-out each: 40 s, beyond this
    // test client's 30 s read time-out).
    let silent: Vec<TcpStream> = (0..4).map(|_| TcpStream::connect(addr).unwrap()).collect();
    let health = https_get(
        addr,
        client.clone(),
        "GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n",
    );
    assert!(health.starts_with("HTTP/1.1 200"), "{health}");
    drop(silent);
    let body = format!("token={}", token.trim());
    let login = https_get(
        addr,
        client,
        &format!(
            "POST /login HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\
             Content-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        ),
    );
    assert!(login.starts_with("HTTP/1.1 303"), "{login}");
    let cookie = login
        .lines()
        .find(|l| l.to_ascii_lowercase().starts_with("set-cookie:"))
        .unwrap();
    assert!(cookie.contains("; Secure"), "{cookie}");
    assert!(cookie.contains("HttpOnly") && cookie.contains("SameSite=Strict"));
    // Plain HTTP to the TLS port gets no HTTP answer.
    let mut plain = TcpStream::connect(addr).unwrap();
    plain
        .set_read_timeout(Some(Duration::from_secs(15)))
        .unwrap();
    plain
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .unwrap();
    let mut answer = Vec::new();
    let _ = plain.read_to_end(&mut answer);
    assert!(!answer.starts_with(b"HTTP/1.1 200"));
    server.stop();
}

/// An HTTPS admin listener on 127.0.0.1.
fn start_https_admin(dir: &Path, pki: &TestPki) -> RunningServer {
    start_https_admin_with(dir, pki, |_| {})
}

/// An HTTPS admin listener on 127.0.0.1, its configuration changed by `tweak`.
fn start_https_admin_with(
    dir: &Path,
    pki: &TestPki,
    tweak: fn(&mut sfc_server::AdminConfig),
) -> RunningServer {
    let mut config = config_for(&dir.join("data"));
    let mut admin =
        sfc_server::AdminConfig::new("127.0.0.1:0".parse().unwrap(), dir.join("admin.token"));
    admin.tls = Some(pki.files.clone());
    tweak(&mut admin);
    config.admin = Some(admin);
    RunningServer::start(config).unwrap()
}

/// One address that opens many connections and never sends a ClientHello cannot take
/// every TLS handshake slot (64) or connection slot: another address still gets through
/// at once (each handshake it tries has a 10 s time-out; the test client's is 30 s).
#[test]
fn silent_connections_from_one_address_do_not_lock_others_out_of_the_https_admin() {
    sfc_server::raise_fd_limit(1024);
    let dir = tempfile::tempdir().unwrap();
    let pki = make_pki(dir.path());
    let server = start_https_admin(dir.path(), &pki);
    let addr = server.admin_addr().unwrap();
    let silent = silent_from(addr, 2..=2, 100);
    let health = healthz_over_tls(addr, client_config(&pki.ca_der));
    assert!(health.starts_with("HTTP/1.1 200"), "{health}");
    drop(silent);
    server.stop();
}

/// `each` connections from each address 127.0.0.`hosts`, silent (no TLS handshake).
fn silent_from(
    addr: SocketAddr,
    hosts: std::ops::RangeInclusive<u8>,
    each: usize,
) -> Vec<TcpStream> {
    hosts
        .flat_map(|n| (0..each).map(move |_| n))
        .map(|n| tcp_from([127, 0, 0, n].into(), addr).unwrap())
        .collect()
}

/// `GET /healthz` over a new TLS connection from 127.0.0.1: the whole answer.
fn healthz_over_tls(addr: SocketAddr, config: Arc<rustls::ClientConfig>) -> String {
    https_get(
        addr,
        config,
        "GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n",
    )
}

/// Silent connections from 8 addresses take every handshake place (8 each, 64 in all):
/// a newcomer from another address is served all the same, the handshake under way
/// longest making room for it.
#[test]
fn silent_handshakes_from_many_addresses_do_not_lock_the_operator_out() {
    sfc_server::raise_fd_limit(1024);
    let dir = tempfile::tempdir().unwrap();
    let pki = make_pki(dir.path());
    let server = start_https_admin(dir.path(), &pki);
    let addr = server.admin_addr().unwrap();
    let silent = silent_from(addr, 2..=9, 8);
    // The listener has taken them all.
    std::thread::sleep(Duration::from_millis(500));
    // The operator, from 127.0.0.1.
    let health = healthz_over_tls(addr, client_config(&pki.ca_der));
    assert!(health.starts_with("HTTP/1.1 200"), "{health}");
    drop(silent);
    server.stop();
}

/// A full listener (192 idle connections past their handshakes, 64 silent handshakes)
/// makes room for a newcomer with one victim: the handshake under way longest. No idle
/// connection is closed as well (the aborted handshake no longer counts).
#[test]
fn a_newcomer_to_a_full_https_admin_costs_one_handshake_only() {
    sfc_server::raise_fd_limit(2048);
    let dir = tempfile::tempdir().unwrap();
    let pki = make_pki(dir.path());
    let server = start_https_admin(dir.path(), &pki);
    let addr = server.admin_addr().unwrap();
    let config = client_config(&pki.ca_der);
    let idle: Vec<TlsConn> = (2..=7)
        .flat_map(|n| (0..32).map(move |_| n))
        .map(|n| TlsConn::connect_from([127, 0, 0, n].into(), addr, Arc::clone(&config)).unwrap())
        .collect();
    let silent = silent_from(addr, 8..=15, 8);
    std::thread::sleep(Duration::from_millis(500));
    let health = healthz_over_tls(addr, Arc::clone(&config));
    assert!(health.starts_with("HTTP/1.1 200"), "{health}");
    // Every idle connection is still open: reading its socket finds, past what the
    // server sent after the handshake (session tickets), nothing yet, not the end.
    let closed = idle
        .iter()
        .filter(|conn| {
            let socket = &conn.stream.sock;
            socket.set_nonblocking(true).unwrap();
            loop {
                match (&*socket).read(&mut [0u8; 4096]) {
                    Ok(0) => return true,
                    Ok(_) => continue,
                    Err(error) => return error.kind() != std::io::ErrorKind::WouldBlock,
                }
            }
        })
        .count();
    assert_eq!(closed, 0, "idle connections closed for the newcomer");
    drop((idle, silent));
    server.stop();
}

/// After the TLS handshake, half a request line and then nothing: the server closes the
/// connection at the request-head time-out (20 s; the test allows 40 s).
#[test]
fn a_stalled_request_head_after_the_tls_handshake_is_closed() {
    let dir = tempfile::tempdir().unwrap();
    let pki = make_pki(dir.path());
    let server = start_https_admin(dir.path(), &pki);
    let addr = server.admin_addr().unwrap();
    let mut conn = TlsConn::connect(addr, client_config(&pki.ca_der)).unwrap();
    conn.send_raw(b"GET /healthz HTTP/1.1\r\n");
    conn.stream
        .sock
        .set_read_timeout(Some(Duration::from_secs(40)))
        .unwrap();
    let mut answer = Vec::new();
    if let Err(error) = conn.stream.read_to_end(&mut answer) {
        assert!(
            !matches!(
                error.kind(),
                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
            ),
            "still open after 40 s"
        );
    }
    server.stop();
}

/// `--admin-send-timeout` over HTTPS: a download whose client stops reading is cut at the
/// limit (2 s here), as over plain HTTP; TLS's own buffering does not hide the stall.
#[test]
fn a_download_the_client_stops_reading_is_cut_over_https() {
    let dir = tempfile::tempdir().unwrap();
    let pki = make_pki(dir.path());
    let server = start_https_admin_with(dir.path(), &pki, |admin| {
        admin.send_timeout = Duration::from_secs(2);
    });
    let mut conn = Conn::connect(server.addr());
    let (id, key) = enroll(&mut conn, "tls-reader");
    // Far more than the socket buffers of both ends on loopback hold.
    let plain = data(24 << 20, 5);
    let reply = upload(&mut conn, id, &key, "big.bin", &plain, 1 << 20);
    assert_received(&reply, id, "big.bin", &plain);
    let token = std::fs::read_to_string(dir.path().join("admin.token")).unwrap();
    let mut https =
        TlsConn::connect(server.admin_addr().unwrap(), client_config(&pki.ca_der)).unwrap();
    https.send_raw(
        format!(
            "GET /api/v1/clients/{id}/file?name=big.bin HTTP/1.1\r\nHost: 127.0.0.1\r\n\
             Authorization: Bearer {}\r\nConnection: close\r\n\r\n",
            token.trim()
        )
        .as_bytes(),
    );
    std::thread::sleep(Duration::from_secs(6));
    // What arrives until the server closes (a close without close_notify is an error
    // here: the server cut the connection).
    let mut received = Vec::new();
    let mut buf = vec![0u8; 1 << 16];
    loop {
        match https.stream.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => received.extend_from_slice(&buf[..n]),
            Err(error)
                if matches!(
                    error.kind(),
                    std::io::ErrorKind::UnexpectedEof | std::io::ErrorKind::ConnectionReset
                ) =>
            {
                break
            }
            Err(error) => panic!("after {} bytes: {error}", received.len()),
        }
    }
    assert!(received.starts_with(b"HTTP/1.1 200"), "no response head");
    assert!(
        received.len() < plain.len(),
        "the whole file went to a client that stopped reading"
    );
    server.stop();
}
