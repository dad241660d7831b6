//! Opt-in TLS end to end: the real client binary (`--tls`, `--tls-ca`) against our real
//! server in-process with `tls` set, using a test CA and server certificates made at test
//! time (rcgen). Also the mismatches: a certificate the client does not trust, one for
//! another name, a plain client against a TLS server and a TLS client against a plain one.
#![cfg(test)]

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::{
    make_file, make_sparse_file, read_me_info, run_client, start_server_with, tempdir,
    write_transfer_info, ClientRun, REFUSING_MAX_FILE_SIZE,
};
use sfc_server::tls::TlsFiles;
use sfc_server::RunningServer;

fn make_ca(dir: &Path, file: &str) -> rcgen::CertifiedIssuer<'static, rcgen::KeyPair> {
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, format!("test CA {file}"));
    params.key_usages = vec![
        rcgen::KeyUsagePurpose::KeyCertSign,
        rcgen::KeyUsagePurpose::CrlSign,
    ];
    let ca =
        rcgen::CertifiedIssuer::self_signed(params, rcgen::KeyPair::generate().unwrap()).unwrap();
    std::fs::write(dir.join(file), ca.pem()).unwrap();
    ca
}

/// A server certificate for `names`, signed by `ca`, as PEM files `<stem>.crt/.key`.
fn make_server_cert(
    dir: &Path,
    stem: &str,
    ca: &rcgen::CertifiedIssuer<'static, rcgen::KeyPair>,
    names: &[&str],
) -> TlsFiles {
    let key = rcgen::KeyPair::generate().unwrap();
    let params =
        rcgen::CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())
            .unwrap();
    let cert = params.signed_by(&key, ca).unwrap();
    let files = TlsFiles {
        cert: dir.join(format!("{stem}.crt")),
        key: dir.join(format!("{stem}.key")),
    };
    std::fs::write(&files.cert, cert.pem()).unwrap();
    std::fs::write(&files.key, key.serialize_pem()).unwrap();
    files
}

fn start_server(data: &Path, tls: Option<TlsFiles>) -> RunningServer {
    start_server_with(data, |config| config.tls = tls)
}

/// (file name, verified, content) of the server's stored files.
fn stored(data: &Path) -> Vec<(String, bool, Vec<u8>)> {
    let db = rusqlite::Connection::open_with_flags(
        data.join("defensive.db"),
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
    )
    .unwrap();
    let mut statement = db
        .prepare("SELECT FileName, Verified, PathName FROM files ORDER BY FileName")
        .unwrap();
    statement
        .query_map([], |row| {
            Ok((
                row.get::<_, String>(0)?,
                row.get::<_, i64>(1)? != 0,
                std::fs::read(data.join(row.get::<_, String>(2)?)).unwrap(),
            ))
        })
        .unwrap()
        .map(Result::unwrap)
        .collect()
}

fn client_count(data: &Path) -> i64 {
    let db = rusqlite::Connection::open_with_flags(
        data.join("defensive.db"),
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
    )
    .unwrap();
    db.query_row("SELECT count(*) FROM clients", [], |row| row.get(0))
        .unwrap()
}

fn assert_refused(run: &ClientRun, expected_code: i32, needles: &[&str], dir: &Path) {
    run.assert_code(expected_code);
    for needle in needles {
        assert!(
            run.stderr.contains(needle),
            "stderr lacks {needle:?}:\n{}",
            run.stderr
        );
    }
    assert!(!dir.join("me.info").exists(), "nothing was registered");
}

/// Registration, key exchange and uploads (a small file and a 1 MiB one, pipelined
/// writes) over TLS with the test CA; then a reconnect run addressing the server by the
/// host name `localhost` (checked against the certificate's DNS name).
#[test]
fn upload_over_tls_with_the_test_ca() {
    let pki = tempdir();
    let ca = make_ca(pki.path(), "ca.pem");
    let files = make_server_cert(pki.path(), "server", &ca, &["127.0.0.1", "localhost"]);
    let data = tempdir();
    let server = start_server(data.path(), Some(files));
    let dir = tempdir();
    write_transfer_info(dir.path(), &server.addr().to_string(), "tls-user", "a.bin");
    let small = make_file(&dir.path().join("a.bin"), 1000, 1);
    let big = make_file(&dir.path().join("b.bin"), 1 << 20, 2);
    let ca_file = pki.path().join("ca.pem");
    let ca_arg = ca_file.to_str().unwrap();

    let run = run_client(
        dir.path(),
        &["--tls", "--tls-ca", ca_arg, "-v", "a.bin", "b.bin"],
    );
    run.assert_code(0);
    assert!(run.stderr.contains("-> 825 (register)"), "{}", run.stderr);
    let (name, _) = read_me_info(dir.path());
    assert_eq!(name, "tls-user");

    let by_name = format!("localhost:{}", server.addr().port());
    let changed = make_file(&dir.path().join("a.bin"), 5000, 3);
    let run = run_client(
        dir.path(),
        &["--tls", "--tls-ca", ca_arg, "--server", &by_name, "-v"],
    );
    run.assert_code(0);
    assert!(run.stderr.contains("-> 827 (reconnect)"), "{}", run.stderr);

    server.stop();
    let files = stored(data.path());
    assert_eq!(
        files,
        vec![
            ("a.bin".to_string(), true, changed),
            ("b.bin".to_string(), true, big),
        ]
    );
    drop(small);
}

/// Over TLS too, a file the server refuses unread (1607 and a close, rule S13) while the
/// client is still writing it is a server error retried 3 times, not a server that closes
/// after each reply: the refusal is taken from the records that arrived before the close
/// (see e2e's `a_refused_file_larger_than_the_socket_buffers_is_a_server_error`).
#[test]
fn a_refused_file_larger_than_the_socket_buffers_is_a_server_error_over_tls() {
    let pki = tempdir();
    let ca = make_ca(pki.path(), "ca.pem");
    let files = make_server_cert(pki.path(), "server", &ca, &["127.0.0.1"]);
    let data = tempdir();
    let server = start_server_with(data.path(), |config| {
        config.tls = Some(files);
        config.max_file_size = REFUSING_MAX_FILE_SIZE;
    });
    let dir = tempdir();
    make_sparse_file(&dir.path().join("big.bin"), 20_000_000);
    let small = make_file(&dir.path().join("s.bin"), 600, 1);
    let run = refused_four_times_over_tls(
        dir.path(),
        &pki.path().join("ca.pem"),
        server.addr(),
        &["-n", "tls-refused", "-v", "big.bin", "s.bin"],
    );
    assert_eq!(
        run.stderr.matches("20000016 B ciphertext").count(),
        4,
        "{}",
        run.stderr
    );
    assert!(
        !run.stderr.contains("one connection per request"),
        "{}",
        run.stderr
    );
    server.stop();
    assert_eq!(
        stored(data.path()),
        vec![("s.bin".to_string(), true, small)]
    );
}

/// Over TLS too, a refusal early in a long upload (the server swallows the rest of it,
/// rule S12, and keeps the connection) stops the send once its record has arrived,
/// instead of streaming the whole file on each of the four tries. Before, all of it went
/// out every time (only a plain connection's refusal was looked for).
#[test]
fn a_refusal_early_in_a_long_upload_stops_the_send_over_tls() {
    use std::sync::atomic::Ordering;
    let pki = tempdir();
    let ca = make_ca(pki.path(), "ca.pem");
    let files = make_server_cert(pki.path(), "server", &ca, &["127.0.0.1"]);
    let data = tempdir();
    let mut config = sfc_server::ServerConfig::new(data.path());
    config.bind = "127.0.0.1:0".parse().unwrap();
    config.worker_threads = Some(2);
    config.tls = Some(files);
    config.admin = Some(sfc_server::AdminConfig::new(
        "127.0.0.1:0".parse().unwrap(),
        data.path().join("admin.token"),
    ));
    let storage = sfc_server::testing::MemoryStorage::new();
    let server = RunningServer::start_with(config, storage.storage()).unwrap();
    // Every upload's first write fails: 1607 early in the file, the rest swallowed.
    storage.faults().disk_full.store(true, Ordering::SeqCst);
    let dir = tempdir();
    let size = 48 << 20;
    make_sparse_file(&dir.path().join("big.bin"), size);
    refused_four_times_over_tls(
        dir.path(),
        &pki.path().join("ca.pem"),
        server.addr(),
        &["-n", "tls-early", "--packet-size", "65536", "big.bin"],
    );
    let received = received_bytes(&server, &data.path().join("admin.token"));
    server.stop();
    // Four tries in all: each stopped long before its end.
    assert!(
        received < size,
        "{received} bytes received for 4 tries of a {size}-byte file"
    );
}

/// Runs the client in `dir` against the TLS server at `server` (trusted through
/// `ca_file`) with `args`, and asserts that it failed for a file refused with 1607 on
/// each of its four tries (exit 3).
fn refused_four_times_over_tls(
    dir: &Path,
    ca_file: &Path,
    server: std::net::SocketAddr,
    args: &[&str],
) -> ClientRun {
    let address = server.to_string();
    let tls = [
        "--tls",
        "--tls-ca",
        ca_file.to_str().unwrap(),
        "-s",
        &address,
    ];
    let run = run_client(dir, &[&tls[..], args].concat());
    run.assert_code(3);
    assert!(
        run.stderr
            .contains("with 1607 (general server error) 4 times"),
        "{}",
        run.stderr
    );
    run
}

/// `sfc_received_bytes_total` from the server's admin listener.
fn received_bytes(server: &RunningServer, token_file: &Path) -> u64 {
    use std::io::{Read, Write};
    let token = std::fs::read_to_string(token_file).unwrap();
    let mut http = std::net::TcpStream::connect(server.admin_addr().unwrap()).unwrap();
    write!(
        http,
        "GET /metrics HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bearer {}\r\n\
         Connection: close\r\n\r\n",
        token.trim()
    )
    .unwrap();
    let mut answer = String::new();
    http.read_to_string(&mut answer).unwrap();
    answer
        .lines()
        .find_map(|line| line.strip_prefix("sfc_received_bytes_total ")?.parse().ok())
        .unwrap_or_else(|| panic!("no sfc_received_bytes_total in {answer}"))
}

/// A man-in-the-middle presents a certificate the client does not trust (issued by
/// another CA): the client refuses before sending a single protocol byte, exits 5 with a
/// clear message, and the server registers nobody. The system's roots do not vouch for
/// it either.
#[test]
fn a_client_that_does_not_trust_the_certificate_refuses_to_talk() {
    let pki = tempdir();
    let real_ca = make_ca(pki.path(), "real-ca.pem");
    make_ca(pki.path(), "other-ca.pem");
    let files = make_server_cert(pki.path(), "server", &real_ca, &["127.0.0.1"]);
    let data = tempdir();
    let server = start_server(data.path(), Some(files));
    let dir = tempdir();
    write_transfer_info(dir.path(), &server.addr().to_string(), "careful", "a.bin");
    make_file(&dir.path().join("a.bin"), 100, 1);

    let other = pki.path().join("other-ca.pem");
    let run = run_client(dir.path(), &["--tls", "--tls-ca", other.to_str().unwrap()]);
    assert_refused(
        &run,
        5,
        &["setting up TLS", "certificate is not trusted", "--tls-ca"],
        dir.path(),
    );

    // Without --tls-ca: the system's roots (if the system has any) do not know the test CA.
    let run = run_client(dir.path(), &["--tls"]);
    assert!(run.code == 5 || run.code == 2, "{run:?}");
    assert!(!dir.path().join("me.info").exists());

    server.stop();
    assert_eq!(client_count(data.path()), 0, "the server registered nobody");
}

/// A certificate from the trusted CA but for another name is refused too.
#[test]
fn a_certificate_for_another_name_is_refused() {
    let pki = tempdir();
    let ca = make_ca(pki.path(), "ca.pem");
    let files = make_server_cert(pki.path(), "elsewhere", &ca, &["files.example.org"]);
    let data = tempdir();
    let server = start_server(data.path(), Some(files));
    let dir = tempdir();
    write_transfer_info(dir.path(), &server.addr().to_string(), "careful", "a.bin");
    make_file(&dir.path().join("a.bin"), 100, 1);
    let ca_file = pki.path().join("ca.pem");
    let run = run_client(
        dir.path(),
        &["--tls", "--tls-ca", ca_file.to_str().unwrap()],
    );
    assert_refused(&run, 5, &["NotValidForName", "127.0.0.1"], dir.path());
    server.stop();
}

/// A plain client against a TLS server fails fast (no hang) and its message says the
/// connection was closed and suggests --tls.
#[test]
fn a_plain_client_against_a_tls_server_fails_fast_and_suggests_tls() {
    let pki = tempdir();
    let ca = make_ca(pki.path(), "ca.pem");
    let files = make_server_cert(pki.path(), "server", &ca, &["127.0.0.1"]);
    let data = tempdir();
    let server = start_server(data.path(), Some(files));
    let dir = tempdir();
    write_transfer_info(dir.path(), &server.addr().to_string(), "plain", "a.bin");
    make_file(&dir.path().join("a.bin"), 100, 1);
    let started = Instant::now();
    let run = run_client(dir.path(), &["--timeout", "30"]);
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "failed fast: {:?}",
        started.elapsed()
    );
    assert_refused(&run, 5, &["closed the connection", "--tls"], dir.path());
    server.stop();
}

/// A TLS client against a plain server says the server does not speak TLS.
#[test]
fn a_tls_client_against_a_plain_server_says_so() {
    let pki = tempdir();
    make_ca(pki.path(), "ca.pem");
    let data = tempdir();
    let server = start_server(data.path(), None);
    let dir = tempdir();
    write_transfer_info(dir.path(), &server.addr().to_string(), "tls", "a.bin");
    make_file(&dir.path().join("a.bin"), 100, 1);
    let ca_file = pki.path().join("ca.pem");
    let started = Instant::now();
    let run = run_client(
        dir.path(),
        &["--tls", "--tls-ca", ca_file.to_str().unwrap()],
    );
    assert!(started.elapsed() < Duration::from_secs(10));
    assert_refused(&run, 5, &["does not seem to speak TLS"], dir.path());
    server.stop();
}

/// --tls-ca that cannot be used is bad input (exit 2), and --tls-ca needs --tls.
#[test]
fn unusable_tls_options_are_bad_input() {
    let dir = tempdir();
    write_transfer_info(dir.path(), "127.0.0.1:9", "x", "a.bin");
    make_file(&dir.path().join("a.bin"), 10, 1);
    std::fs::write(dir.path().join("junk.pem"), "junk\n").unwrap();
    let run = run_client(dir.path(), &["--tls", "--tls-ca", "missing.pem"]);
    run.assert_code(2);
    assert!(
        run.stderr.contains("--tls-ca: cannot read"),
        "{}",
        run.stderr
    );
    let run = run_client(dir.path(), &["--tls", "--tls-ca", "junk.pem"]);
    run.assert_code(2);
    assert!(
        run.stderr.contains("holds no certificate"),
        "{}",
        run.stderr
    );
    let run = run_client(dir.path(), &["--tls-ca", "junk.pem"]);
    run.assert_code(2);
}

/// A certificate made the way most people make one for a private server: self-signed and
/// marked as a CA, for localhost and 127.0.0.1, as `openssl req -x509 -newkey rsa:2048
/// -nodes -subj /CN=localhost -addext subjectAltName=DNS:localhost,IP:127.0.0.1` makes
/// it. Returns the files and the certificate's DER.
fn make_self_signed(dir: &Path, stem: &str) -> (TlsFiles, Vec<u8>) {
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_RSA_SHA256)
        .or_else(|_| rcgen::KeyPair::generate())
        .unwrap();
    let mut params = rcgen::CertificateParams::default();
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "localhost");
    params.subject_alt_names = vec![
        rcgen::SanType::DnsName("localhost".try_into().unwrap()),
        rcgen::SanType::IpAddress("127.0.0.1".parse().unwrap()),
    ];
    // openssl's v3_ca: basicConstraints=critical,CA:TRUE.
    params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let cert = params.self_signed(&key).unwrap();
    let files = TlsFiles {
        cert: dir.join(format!("{stem}.crt")),
        key: dir.join(format!("{stem}.key")),
    };
    std::fs::write(&files.cert, cert.pem()).unwrap();
    std::fs::write(&files.key, key.serialize_pem()).unwrap();
    (files, cert.der().to_vec())
}

/// Issue 13 item 10: a self-signed certificate given with --tls-ca is accepted as it is
/// (pinning), where it used to be refused ("CaUsedAsEndEntity").
#[test]
fn a_self_signed_certificate_given_with_tls_ca_is_pinned() {
    let pki = tempdir();
    let (files, _) = make_self_signed(pki.path(), "self");
    let cert = files.cert.clone();
    let data = tempdir();
    let server = start_server(data.path(), Some(files));
    let dir = tempdir();
    write_transfer_info(dir.path(), &server.addr().to_string(), "pinner", "a.bin");
    let content = make_file(&dir.path().join("a.bin"), 3000, 1);
    let run = run_client(dir.path(), &["--tls", "--tls-ca", cert.to_str().unwrap()]);
    run.assert_code(0);
    server.stop();
    assert_eq!(
        stored(data.path()),
        vec![("a.bin".to_string(), true, content)]
    );
}

/// Issue 13 item 10: --tls-fingerprint accepts the server certificate with that SHA-256
/// fingerprint (as openssl prints it, or SSH-style base64), and refuses any other with a
/// message that shows the fingerprint it saw.
#[test]
fn a_server_certificate_is_accepted_by_its_fingerprint() {
    let pki = tempdir();
    let (files, der) = make_self_signed(pki.path(), "self");
    let data = tempdir();
    let server = start_server(data.path(), Some(files));
    let dir = tempdir();
    write_transfer_info(dir.path(), &server.addr().to_string(), "fp", "a.bin");
    make_file(&dir.path().join("a.bin"), 100, 1);
    let fingerprint = sfc_client::Fingerprint::of(&der);
    // openssl x509 -noout -fingerprint -sha256: "sha256 Fingerprint=AB:CD:...".
    let openssl = format!(
        "sha256 Fingerprint={}",
        fingerprint.to_string().trim_start_matches("SHA256:")
    );
    run_client(dir.path(), &["--tls", "--tls-fingerprint", &openssl]).assert_code(0);

    let wrong = sfc_client::Fingerprint::of(b"another certificate").to_string();
    let run = run_client(dir.path(), &["--tls", "--tls-fingerprint", &wrong]);
    run.assert_code(5);
    assert!(
        run.stderr.contains(&fingerprint.to_string()),
        "{}",
        run.stderr
    );
    let run = run_client(dir.path(), &["--tls", "--tls-fingerprint", "nonsense"]);
    run.assert_code(2);
    server.stop();
}
