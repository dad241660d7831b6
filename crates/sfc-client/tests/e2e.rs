//! End to end: the real client binary in temporary folders against our real server,
//! started in-process. Stored files are found through defensive.db's PathName and
//! compared byte for byte with the originals.
#![cfg(test)]

mod common;

use std::path::{Path, PathBuf};

use common::{
    make_file, make_sparse_file, read_me_info, run_client, run_client_env, start_server_with,
    tempdir, write_transfer_info, Cut, RegistrationCutter, REFUSING_MAX_FILE_SIZE,
};
use sfc_server::RunningServer;

fn start_server(data: &Path) -> RunningServer {
    start_server_with(data, |_| {})
}

/// A row of the server's `files` table.
#[derive(Debug)]
struct StoredFile {
    owner: String,
    name: String,
    path: PathBuf,
    verified: bool,
}

fn stored_files(data: &Path) -> Vec<StoredFile> {
    let db = rusqlite::Connection::open_with_flags(
        data.join("defensive.db"),
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
    )
    .unwrap();
    let mut statement = db
        .prepare("SELECT lower(hex(ID)), FileName, PathName, Verified FROM files ORDER BY FileName")
        .unwrap();
    statement
        .query_map([], |row| {
            Ok(StoredFile {
                owner: row.get(0)?,
                name: row.get(1)?,
                path: data.join(row.get::<_, String>(2)?),
                verified: row.get::<_, i64>(3)? != 0,
            })
        })
        .unwrap()
        .map(Result::unwrap)
        .collect()
}

fn find<'a>(files: &'a [StoredFile], name: &str) -> &'a StoredFile {
    files
        .iter()
        .find(|f| f.name == name)
        .unwrap_or_else(|| panic!("{name} not in {files:?}"))
}

#[cfg(unix)]
fn mode(path: &Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

#[test]
fn first_run_registers_and_later_runs_reconnect() {
    let data = tempdir();
    let server = start_server(data.path());
    let dir = tempdir();
    write_transfer_info(dir.path(), &server.addr().to_string(), "alice", "data.bin");
    let original = make_file(&dir.path().join("data.bin"), 1000, 1);

    let run = run_client(dir.path(), &["-v"]);
    run.assert_code(0);
    assert!(run.stderr.contains("-> 825 (register)"), "{}", run.stderr);
    assert!(
        run.stderr.contains("-> 826 (send public key)"),
        "{}",
        run.stderr
    );
    assert!(run.stdout.contains("checksum"), "{}", run.stdout);
    let (name, id) = read_me_info(dir.path());
    assert_eq!(name, "alice");
    assert_eq!(id.len(), 32);
    assert!(id
        .chars()
        .all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase()));
    #[cfg(unix)]
    {
        assert_eq!(mode(&dir.path().join("me.info")), 0o600);
        assert_eq!(mode(&dir.path().join("priv.key")), 0o600);
    }
    let me_before = std::fs::read(dir.path().join("me.info")).unwrap();
    let key_before = std::fs::read(dir.path().join("priv.key")).unwrap();

    // Second run: reconnect with the saved identity, no new keys, a changed file.
    let changed = make_file(&dir.path().join("data.bin"), 3000, 2);
    let run = run_client(dir.path(), &["-v"]);
    run.assert_code(0);
    assert!(run.stderr.contains("-> 827 (reconnect)"), "{}", run.stderr);
    assert!(
        run.stderr.contains("<- 1605 (reconnect accepted)"),
        "{}",
        run.stderr
    );
    assert!(!run.stderr.contains("-> 825"), "{}", run.stderr);
    assert_eq!(
        std::fs::read(dir.path().join("me.info")).unwrap(),
        me_before
    );
    assert_eq!(
        std::fs::read(dir.path().join("priv.key")).unwrap(),
        key_before
    );

    server.stop();
    let files = stored_files(data.path());
    let stored = find(&files, "data.bin");
    assert_eq!(stored.owner, id);
    assert!(stored.verified);
    assert_eq!(std::fs::read(&stored.path).unwrap(), changed);
    assert_ne!(changed, original);
}

/// Stops `server` and starts it again at the same address with a new, empty database.
fn restart_without_database(server: RunningServer, data: &Path) -> RunningServer {
    let address = server.addr();
    server.stop();
    for suffix in ["", "-wal", "-shm", "-journal"] {
        let _ = std::fs::remove_file(data.join(format!("defensive.db{suffix}")));
    }
    // The operator starts over on purpose: the server refuses a new database beside
    // files of another one until their set-up ID goes too.
    std::fs::remove_file(data.join("sfc-setup-id")).unwrap();
    start_server_with(data, |config| config.bind = address)
}

#[test]
fn a_server_that_lost_its_database_gets_a_new_registration() {
    let data = tempdir();
    let server = start_server(data.path());
    let dir = tempdir();
    write_transfer_info(dir.path(), &server.addr().to_string(), "bob", "data.bin");
    let original = make_file(&dir.path().join("data.bin"), 500, 3);
    run_client(dir.path(), &[]).assert_code(0);
    let (_, old_id) = read_me_info(dir.path());
    let server = restart_without_database(server, data.path());
    let run = run_client(dir.path(), &["--server", &server.addr().to_string(), "-v"]);
    run.assert_code(0);
    assert!(
        run.stderr.contains("<- 1606 (reconnect rejected)"),
        "{}",
        run.stderr
    );
    assert!(run.stdout.contains("registering again"), "{}", run.stdout);
    let (name, new_id) = read_me_info(dir.path());
    assert_eq!(name, "bob");
    assert_ne!(new_id, old_id);
    // Issue 13 item 2: the replaced identity is kept.
    let backup = std::fs::read_to_string(dir.path().join(format!("me.info.{old_id}.bak"))).unwrap();
    assert!(backup.contains(&old_id), "{backup}");
    assert!(dir.path().join(format!("priv.key.{old_id}.bak")).exists());
    server.stop();

    let files = stored_files(data.path());
    let stored = find(&files, "data.bin");
    assert_eq!(stored.owner, new_id);
    assert!(stored.verified);
    assert_eq!(std::fs::read(&stored.path).unwrap(), original);
}

#[test]
fn files_of_edge_sizes_in_one_session() {
    let data = tempdir();
    let server = start_server(data.path());
    let dir = tempdir();
    write_transfer_info(
        dir.path(),
        &server.addr().to_string(),
        "carol",
        "unused.bin",
    );
    let sizes = [0usize, 1, 16, 17, 1 << 20];
    let mut originals = Vec::new();
    let mut args = Vec::new();
    for (i, size) in sizes.iter().enumerate() {
        let name = format!("f{size}.bin");
        originals.push((
            name.clone(),
            make_file(&dir.path().join(&name), *size, i as u8),
        ));
        args.push(name);
    }
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let run = run_client(dir.path(), &args);
    run.assert_code(0);
    assert!(run.stdout.contains("all 5 files stored"), "{}", run.stdout);
    server.stop();

    let files = stored_files(data.path());
    assert_eq!(files.len(), sizes.len());
    for (name, original) in &originals {
        let stored = find(&files, name);
        assert!(stored.verified, "{name}");
        assert_eq!(&std::fs::read(&stored.path).unwrap(), original, "{name}");
    }
}

#[test]
fn a_50_mib_file_arrives_intact() {
    let data = tempdir();
    let server = start_server(data.path());
    let dir = tempdir();
    write_transfer_info(dir.path(), &server.addr().to_string(), "dave", "big.bin");
    let original = make_file(&dir.path().join("big.bin"), 50 << 20, 5);
    let run = run_client(dir.path(), &[]);
    run.assert_code(0);
    server.stop();
    let files = stored_files(data.path());
    let stored = find(&files, "big.bin");
    assert!(stored.verified);
    assert!(
        std::fs::read(&stored.path).unwrap() == original,
        "content differs"
    );
}

#[test]
fn name_taken_on_our_server() {
    let data = tempdir();
    let server = start_server(data.path());
    let first = tempdir();
    let second = tempdir();
    for dir in [&first, &second] {
        write_transfer_info(dir.path(), &server.addr().to_string(), "erin", "x.bin");
        make_file(&dir.path().join("x.bin"), 10, 1);
    }
    run_client(first.path(), &[]).assert_code(0);
    let run = run_client(second.path(), &[]);
    run.assert_code(3);
    assert!(run.stderr.contains("already taken"), "{}", run.stderr);
    assert!(!second.path().join("me.info").exists());
    server.stop();
}

#[test]
fn server_down_is_reported_with_its_address() {
    let data = tempdir();
    let server = start_server(data.path());
    let address = server.addr().to_string();
    server.stop();
    let dir = tempdir();
    write_transfer_info(dir.path(), &address, "frank", "x.bin");
    make_file(&dir.path().join("x.bin"), 10, 1);
    let run = run_client(dir.path(), &["--connect-timeout", "2"]);
    run.assert_code(5);
    assert!(run.stderr.contains(&address), "{}", run.stderr);
    assert!(run.stderr.contains("connection refused"), "{}", run.stderr);
}

/// The original client's style against our server: a new connection for every request
/// and a reply to each intermediate packet (rule S2), then a reconnect in the same
/// style.
#[test]
fn one_connection_per_request_works_with_our_server() {
    let data = tempdir();
    let server = start_server(data.path());
    let dir = tempdir();
    write_transfer_info(dir.path(), &server.addr().to_string(), "grace", "p.bin");
    let original = make_file(&dir.path().join("p.bin"), 40_000, 6);
    let args = ["--connection-per-request", "--packet-size", "4000", "-vv"];
    let run = run_client(dir.path(), &args);
    run.assert_code(0);
    // 40016 B of ciphertext in 11 packets; every one but the last answered by a short 1603.
    assert_eq!(
        run.stderr.matches("-> 828 packet").count(),
        11,
        "{}",
        run.stderr
    );
    assert_eq!(
        run.stderr
            .matches("<- 1603 (file received), payload 16 B")
            .count(),
        10,
        "{}",
        run.stderr
    );
    let run = run_client(dir.path(), &args);
    run.assert_code(0);
    assert!(run.stderr.contains("-> 827"), "{}", run.stderr);
    server.stop();
    let files = stored_files(data.path());
    let stored = find(&files, "p.bin");
    assert!(stored.verified);
    assert_eq!(std::fs::read(&stored.path).unwrap(), original);
}

/// me.info and priv.key as other clients write them (rule C7): the key over several
/// lines in me.info, priv.key as raw DER. The client reconnects with them.
#[test]
fn identity_files_written_by_other_clients_are_accepted() {
    let data = tempdir();
    let server = start_server(data.path());
    let dir = tempdir();
    write_transfer_info(dir.path(), &server.addr().to_string(), "heidi", "x.bin");
    make_file(&dir.path().join("x.bin"), 100, 1);
    run_client(dir.path(), &[]).assert_code(0);

    let key_text = std::fs::read_to_string(dir.path().join("priv.key")).unwrap();
    let pair = sfc_crypto::RsaKeyPair::from_base64(&key_text).unwrap();
    std::fs::write(
        dir.path().join("priv.key"),
        pair.to_pkcs8_der().unwrap().as_slice(),
    )
    .unwrap();
    let (name, id) = read_me_info(dir.path());
    let wrapped: Vec<&str> = key_text
        .as_bytes()
        .chunks(64)
        .map(|c| std::str::from_utf8(c).unwrap())
        .collect();
    std::fs::write(
        dir.path().join("me.info"),
        format!(
            "{name}\r\n{}\r\n{}\r\n",
            id.to_uppercase(),
            wrapped.join("\r\n")
        ),
    )
    .unwrap();
    let run = run_client(dir.path(), &["-v"]);
    run.assert_code(0);
    assert!(run.stderr.contains("<- 1605"), "{}", run.stderr);
    assert!(!run.stderr.contains("warning"), "{}", run.stderr);
    server.stop();
}

fn client_names(data: &Path) -> Vec<String> {
    let db = rusqlite::Connection::open_with_flags(
        data.join("defensive.db"),
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
    )
    .unwrap();
    let mut statement = db
        .prepare("SELECT Name FROM clients ORDER BY Name")
        .unwrap();
    statement
        .query_map([], |row| row.get(0))
        .unwrap()
        .map(Result::unwrap)
        .collect()
}

/// Issue 13 item 1: a folder where me.info cannot be written is found out before 825 is
/// sent, so the name is not registered (and lost) on the server; after `mkdir` the same
/// command works.
#[test]
fn an_identity_that_cannot_be_saved_is_not_registered() {
    let data = tempdir();
    let server = start_server(data.path());
    let cwd = tempdir();
    make_file(&cwd.path().join("f.txt"), 10, 1);
    let address = server.addr().to_string();
    let args = ["-d", "nonexist", "-s", &address, "-n", "sam", "f.txt"];
    let run = run_client(cwd.path(), &args);
    run.assert_code(1);
    assert!(run.stderr.contains("nonexist"), "{}", run.stderr);
    assert!(
        client_names(data.path()).is_empty(),
        "a name was registered"
    );

    std::fs::create_dir(cwd.path().join("nonexist")).unwrap();
    run_client(cwd.path(), &args).assert_code(0);
    assert_eq!(client_names(data.path()), vec!["sam"]);
    server.stop();
}

/// Issue 13 item 1: when saving fails after the server registered us (here priv.key is a
/// folder, so it cannot be replaced), the error names the identity and where its key was
/// put instead, so nothing is lost.
#[test]
fn an_identity_that_fails_to_save_is_printed_with_a_fallback_key_file() {
    let data = tempdir();
    let server = start_server(data.path());
    let dir = tempdir();
    let temp = tempdir();
    write_transfer_info(dir.path(), &server.addr().to_string(), "tess", "x.bin");
    make_file(&dir.path().join("x.bin"), 10, 1);
    std::fs::create_dir(dir.path().join("priv.key")).unwrap();
    let run = run_client_env(dir.path(), &[], &[("TMPDIR", temp.path())]);
    run.assert_code(1);
    server.stop();
    let db = rusqlite::Connection::open(data.path().join("defensive.db")).unwrap();
    let id: String = db
        .query_row("SELECT lower(hex(ID)) FROM clients", [], |r| r.get(0))
        .unwrap();
    assert!(run.stderr.contains(&id), "{}", run.stderr);
    assert!(run.stderr.contains("\"tess\""), "{}", run.stderr);
    let key_file = temp.path().join(format!("sfc-client-tess-{id}.key"));
    assert!(
        run.stderr.contains(&key_file.display().to_string()),
        "{}",
        run.stderr
    );
    let key = std::fs::read_to_string(&key_file).unwrap();
    assert!(sfc_crypto::RsaKeyPair::from_base64(&key).is_ok());
}

/// When the fallback key file cannot be written either (the temp folder is a file here),
/// the private key is printed once, to standard error only: the error's message, which
/// `--json` copies into every file's reason, never carries it.
#[test]
fn an_identity_with_nowhere_to_go_prints_its_key_once_and_only_on_stderr() {
    let data = tempdir();
    let server = start_server(data.path());
    let dir = tempdir();
    let temp = tempdir();
    let not_a_folder = temp.path().join("not-a-folder");
    std::fs::write(&not_a_folder, b"").unwrap();
    write_transfer_info(dir.path(), &server.addr().to_string(), "tilda", "x.bin");
    make_file(&dir.path().join("x.bin"), 10, 1);
    std::fs::create_dir(dir.path().join("priv.key")).unwrap();
    let run = run_client_env(dir.path(), &["--json"], &[("TMPDIR", &not_a_folder)]);
    run.assert_code(1);
    server.stop();
    let keys: Vec<&str> = run
        .stderr
        .lines()
        .filter(|line| sfc_crypto::RsaKeyPair::from_base64(line.trim()).is_ok())
        .collect();
    assert_eq!(keys.len(), 1, "{}", run.stderr);
    assert!(!run.stdout.contains(keys[0].trim()), "{}", run.stdout);
    assert!(run.stdout.contains("x.bin"), "{}", run.stdout);
}

/// The server's clients: (name, client ID hex, has a public key).
fn clients(data: &Path) -> Vec<(String, String, bool)> {
    let db = rusqlite::Connection::open_with_flags(
        data.join("defensive.db"),
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
    )
    .unwrap();
    let mut statement = db
        .prepare("SELECT Name, lower(hex(ID)), PublicKey IS NOT NULL FROM clients ORDER BY Name")
        .unwrap();
    statement
        .query_map([], |row| Ok((row.get(0)?, row.get(1)?, row.get(2)?)))
        .unwrap()
        .map(Result::unwrap)
        .collect()
}

/// Rule C10: the network fails after the server registered us (1600) and before its
/// 1602, with the 826 lost on the way or its reply lost on the way back. The identity is
/// saved all the same and the error names it; the next run sends the public key again
/// (826, not 825 or 827), our server takes it (a client with no key yet, or the same key
/// again: rules S15, S16), and the file is stored. The server has one client of that
/// name, with the ID and key the client saved.
#[test]
fn a_registration_cut_before_its_1602_is_finished_by_the_next_run() {
    for cut in [Cut::BeforeForwarding, Cut::AfterForwarding] {
        let data = tempdir();
        let server = start_server(data.path());
        let cutter = RegistrationCutter::start(server.addr(), cut);
        let dir = tempdir();
        let original = make_file(&dir.path().join("f.bin"), 700, 5);
        let address = cutter.address();
        let args = ["-s", &address, "-n", "vera", "f.bin", "-v"];

        let run = run_client(dir.path(), &args);
        run.assert_code(5);
        let (name, id) = read_me_info(dir.path());
        assert_eq!(name, "vera");
        assert!(run.stderr.contains(&id), "{cut:?}: {}", run.stderr);
        assert!(
            run.stderr
                .contains("the next run sends its public key (826) again"),
            "{cut:?}: {}",
            run.stderr
        );
        let key_on_server = cut == Cut::AfterForwarding;
        assert_eq!(
            clients(data.path()),
            vec![("vera".to_owned(), id.clone(), key_on_server)],
            "{cut:?}"
        );

        cutter.stop_cutting();
        let run = run_client(dir.path(), &args);
        run.assert_code(0);
        assert!(
            run.stderr.contains("-> 826 (send public key)"),
            "{}",
            run.stderr
        );
        assert!(!run.stderr.contains("-> 825"), "{cut:?}: {}", run.stderr);
        assert!(!run.stderr.contains("-> 827"), "{cut:?}: {}", run.stderr);
        assert!(
            run.stdout.contains("finished the registration"),
            "{cut:?}: {}",
            run.stdout
        );
        assert_eq!(read_me_info(dir.path()), ("vera".to_owned(), id.clone()));
        assert!(!dir.path().join("me.pending").exists(), "{cut:?}");

        // Finished: from now on a reconnect.
        let run = run_client(dir.path(), &args);
        run.assert_code(0);
        assert!(run.stderr.contains("<- 1605"), "{cut:?}: {}", run.stderr);
        drop(cutter);
        server.stop();
        assert_eq!(
            clients(data.path()),
            vec![("vera".to_owned(), id.clone(), true)],
            "{cut:?}"
        );
        let files = stored_files(data.path());
        let stored = find(&files, "f.bin");
        assert_eq!(stored.owner, id, "{cut:?}");
        assert!(stored.verified, "{cut:?}");
        assert_eq!(std::fs::read(&stored.path).unwrap(), original, "{cut:?}");
    }
}

/// A registration cut before its 1602, then a server that lost its database: our server
/// answers the saved key's 826 with 1607 (an unknown client, rule S15) and the 827 with
/// 1606, so the client registers again instead of failing on every run.
#[test]
fn an_unfinished_registration_with_a_server_that_lost_its_database_registers_again() {
    let data = tempdir();
    let server = start_server(data.path());
    let cutter = RegistrationCutter::start(server.addr(), Cut::BeforeForwarding);
    let dir = tempdir();
    let original = make_file(&dir.path().join("f.bin"), 700, 5);
    let address = cutter.address();
    let args = ["-s", &address, "-n", "wren", "f.bin", "-v"];
    run_client(dir.path(), &args).assert_code(5);
    let (_, old_id) = read_me_info(dir.path());
    cutter.stop_cutting();
    let server = restart_without_database(server, data.path());

    let run = run_client(dir.path(), &args);
    run.assert_code(0);
    assert!(run.stderr.contains("<- 1606"), "{}", run.stderr);
    assert!(
        run.stdout
            .contains(&format!("refused the public key of client {old_id}")),
        "{}",
        run.stdout
    );
    let (name, new_id) = read_me_info(dir.path());
    assert_eq!(name, "wren");
    assert_ne!(new_id, old_id);
    assert!(!dir.path().join("me.pending").exists());
    drop(cutter);
    server.stop();
    assert_eq!(
        clients(data.path()),
        vec![("wren".to_owned(), new_id.clone(), true)]
    );
    let files = stored_files(data.path());
    let stored = find(&files, "f.bin");
    assert_eq!(stored.owner, new_id);
    assert_eq!(std::fs::read(&stored.path).unwrap(), original);
}

/// Issue 13 item 2: an identity belongs to the server that issued it. A run against a
/// second server registers there without touching me.info, and the first server still
/// knows us afterwards.
#[test]
fn a_second_server_does_not_replace_the_first_servers_identity() {
    let (data_a, data_b) = (tempdir(), tempdir());
    let (a, b) = (start_server(data_a.path()), start_server(data_b.path()));
    let (a_addr, b_addr) = (a.addr().to_string(), b.addr().to_string());
    let dir = tempdir();
    make_file(&dir.path().join("h.txt"), 10, 1);
    run_client(dir.path(), &["-s", &a_addr, "-n", "frank", "h.txt"]).assert_code(0);
    let me_a = std::fs::read(dir.path().join("me.info")).unwrap();

    let run = run_client(dir.path(), &["-s", &b_addr, "-n", "frank", "h.txt"]);
    run.assert_code(0);
    assert!(run.stdout.contains("registered with"), "{}", run.stdout);
    assert_eq!(std::fs::read(dir.path().join("me.info")).unwrap(), me_a);

    let run = run_client(dir.path(), &["-s", &a_addr, "h.txt", "-v"]);
    run.assert_code(0);
    assert!(run.stderr.contains("<- 1605"), "{}", run.stderr);
    let run = run_client(dir.path(), &["-s", &b_addr, "h.txt", "-v"]);
    run.assert_code(0);
    assert!(run.stderr.contains("<- 1605"), "{}", run.stderr);
    a.stop();
    b.stop();
    assert_eq!(client_names(data_a.path()), vec!["frank"]);
    assert_eq!(client_names(data_b.path()), vec!["frank"]);
}

/// Issue 13 item 11: `-r DIR` sends every regular file below DIR, each stored under its
/// path below DIR; symbolic links are left out (with a warning) unless
/// `--follow-symlinks`.
#[test]
fn a_folder_is_sent_with_its_relative_paths_as_names() {
    let data = tempdir();
    let server = start_server(data.path());
    let dir = tempdir();
    let tree = dir.path().join("tree");
    std::fs::create_dir_all(tree.join("sub/deeper")).unwrap();
    let a = make_file(&tree.join("a.txt"), 100, 1);
    let b = make_file(&tree.join("sub/b.txt"), 2000, 2);
    let c = make_file(&tree.join("sub/deeper/c.txt"), 0, 3);
    #[cfg(unix)]
    std::os::unix::fs::symlink(tree.join("a.txt"), tree.join("link.txt")).unwrap();
    let address = server.addr().to_string();
    let run = run_client(dir.path(), &["-s", &address, "-n", "rita", "-r", "tree"]);
    run.assert_code(0);
    #[cfg(unix)]
    assert!(run.stderr.contains("link.txt"), "{}", run.stderr);
    let run = run_client(dir.path(), &["-s", &address, "tree"]);
    run.assert_code(2);
    assert!(run.stderr.contains("-r"), "{}", run.stderr);
    #[cfg(unix)]
    run_client(
        dir.path(),
        &[
            "-s",
            &address,
            "-r",
            "--follow-symlinks",
            "tree/sub",
            "tree/link.txt",
        ],
    )
    .assert_code(0);
    server.stop();
    let files = stored_files(data.path());
    for (name, original) in [("a.txt", &a), ("sub/b.txt", &b), ("sub/deeper/c.txt", &c)] {
        let stored = find(&files, name);
        assert!(stored.verified, "{name}");
        assert_eq!(&std::fs::read(&stored.path).unwrap(), original, "{name}");
    }
    #[cfg(unix)]
    {
        assert_eq!(&std::fs::read(&find(&files, "link.txt").path).unwrap(), &a);
        assert!(files.iter().any(|f| f.name == "deeper/c.txt"));
    }
}

/// Issue 13 item 5: one file the server refuses (larger than its --max-file-size) does not
/// stop the batch: the next file is sent, the run ends with a summary naming the failure
/// and its reason, and a non-zero exit code. The retries of the refused file wait longer
/// each time.
#[test]
fn a_refused_file_does_not_stop_the_batch() {
    let (data, server, dir, stored) = refused_file_batch(|path| {
        make_file(path, 5000, 2);
    });
    let address = server.addr().to_string();
    let args = [
        "-s", &address, "-n", "uma", "s1.bin", "big.bin", "s2.bin", "-v",
    ];
    let run = run_client(dir.path(), &args);
    run.assert_code(3);
    assert!(
        run.stderr.contains("summary: 2 of 3 files stored"),
        "{}",
        run.stderr
    );
    assert!(
        run.stderr.contains("failed big.bin: fatal: the server"),
        "{}",
        run.stderr
    );
    assert!(run.stderr.contains("1607"), "{}", run.stderr);
    for pause in [
        "retrying in 250 ms",
        "retrying in 500 ms",
        "retrying in 1 s",
    ] {
        assert!(run.stderr.contains(pause), "{pause}: {}", run.stderr);
    }
    server.stop();
    stored.check(data.path());
}

/// A refused file too large for the socket buffers: the server answers its first packet
/// with 1607 and closes without reading the rest (rule S13), so the client's write fails
/// while the refusal waits in its receive buffer. That is a 1607 like any other (at most
/// 3 retries, rule C8), not a server that closes after each reply: the next file is still
/// sent in the persistent style (its 828 and 900 on one connection).
#[test]
fn a_refused_file_larger_than_the_socket_buffers_is_a_server_error() {
    // It outgrows the socket buffers.
    let (data, server, dir, stored) = refused_file_batch(|path| {
        make_sparse_file(path, 20_000_000);
    });
    let address = server.addr().to_string();
    let args = [
        "-s", &address, "-n", "uma", "s1.bin", "big.bin", "s2.bin", "-vv",
    ];
    let run = run_client(dir.path(), &args);
    run.assert_code(3);
    let stderr = &run.stderr;
    // -vv traces every packet: show only the lines about requests and connections.
    let outline: String = stderr
        .lines()
        .filter(|l| !l.contains("-> 828 packet "))
        .take(200)
        .map(|l| format!("{l}\n"))
        .collect();
    assert!(stderr.contains("summary: 2 of 3 files stored"), "{outline}");
    assert!(
        stderr.contains("failed big.bin: fatal: the server"),
        "{outline}"
    );
    assert!(!stderr.contains("one connection per request"), "{outline}");
    // Each send of big.bin announces its 20,000,016 bytes of ciphertext once.
    let big_sends: Vec<usize> = stderr
        .match_indices("20000016 B ciphertext")
        .map(|(at, _)| at)
        .collect();
    assert!(big_sends.len() == 4, "{} sends\n{outline}", big_sends.len());
    let after_big = &stderr[*big_sends.last().unwrap()..];
    assert_eq!(after_big.matches("connected to").count(), 1, "{outline}");
    server.stop();
    stored.check(data.path());
}

/// The same with one connection per request and a packet larger than the socket buffers
/// (16 MiB, the largest `--packet-size`): the 1607 that arrived before the server closed
/// on the unread rest is the reply to that packet (rule S13), so big.bin is retried 3
/// times and given up like any refused file, and the batch goes on.
#[test]
fn a_refused_packet_larger_than_the_socket_buffers_is_a_server_error_per_request() {
    let (data, server, dir, stored) = refused_file_batch(|path| {
        make_sparse_file(path, 20_000_000);
    });
    let address = server.addr().to_string();
    let args = [
        "-s",
        &address,
        "-n",
        "uma",
        "--connection-per-request",
        "--packet-size",
        "16777216",
        "s1.bin",
        "big.bin",
        "s2.bin",
        "-v",
    ];
    let run = run_client(dir.path(), &args);
    run.assert_code(3);
    let stderr = &run.stderr;
    assert!(stderr.contains("summary: 2 of 3 files stored"), "{stderr}");
    assert!(
        stderr.contains("failed big.bin: fatal: the server"),
        "{stderr}"
    );
    assert!(
        stderr.contains("with 1607 (general server error) 4 times"),
        "{stderr}"
    );
    server.stop();
    stored.check(data.path());
}

/// The refused-file tests' batch: s1.bin, big.bin (made by `make_big`, over the server's
/// limit) and s2.bin in a client folder, and a server that refuses files over
/// [`REFUSING_MAX_FILE_SIZE`]. Returns the server's data folder, the server, the client
/// folder and the two files that must be stored.
fn refused_file_batch(
    make_big: impl FnOnce(&Path),
) -> (
    tempfile::TempDir,
    RunningServer,
    tempfile::TempDir,
    StoredPair,
) {
    let data = tempdir();
    let server = start_server_with(data.path(), |config| {
        config.max_file_size = REFUSING_MAX_FILE_SIZE;
    });
    let dir = tempdir();
    let s1 = make_file(&dir.path().join("s1.bin"), 500, 1);
    make_big(&dir.path().join("big.bin"));
    let s2 = make_file(&dir.path().join("s2.bin"), 600, 3);
    (data, server, dir, StoredPair { s1, s2 })
}

/// The two small files of [`refused_file_batch`].
struct StoredPair {
    s1: Vec<u8>,
    s2: Vec<u8>,
}

impl StoredPair {
    /// Both stored byte for byte, big.bin not at all.
    fn check(&self, data: &Path) {
        let files = stored_files(data);
        assert_eq!(
            std::fs::read(&find(&files, "s1.bin").path).unwrap(),
            self.s1
        );
        assert_eq!(
            std::fs::read(&find(&files, "s2.bin").path).unwrap(),
            self.s2
        );
        assert!(files.iter().all(|f| f.name != "big.bin"));
    }
}

/// Issue 13 item 12: `--json` prints one object per file and a total on standard output
/// (messages go to standard error); the exit code is unchanged.
#[test]
fn json_summary_for_scripts() {
    let data = tempdir();
    let server = start_server(data.path());
    let dir = tempdir();
    make_file(&dir.path().join("a.bin"), 12, 1);
    make_file(&dir.path().join("b.bin"), 3000, 2);
    let address = server.addr().to_string();
    let run = run_client(
        dir.path(),
        &["-s", &address, "-n", "jay", "--json", "a.bin", "b.bin"],
    );
    run.assert_code(0);
    server.stop();
    let lines: Vec<serde_json::Value> = run
        .stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{l:?}: {e}")))
        .collect();
    assert_eq!(lines.len(), 3, "{}", run.stdout);
    let files = stored_files(data.path());
    for (line, name, size) in [(&lines[0], "a.bin", 12), (&lines[1], "b.bin", 3000)] {
        assert_eq!(line["name"], name);
        assert_eq!(line["size"], size);
        assert_eq!(line["status"], "stored");
        assert!(line["reason"].is_null());
        assert!(line["seconds"].as_f64().unwrap() >= 0.0);
        let content = std::fs::read(&find(&files, name).path).unwrap();
        assert_eq!(line["cksum"], u64::from(sfc_crypto::cksum(&content)));
    }
    let total = &lines[2]["total"];
    assert_eq!(total["files"], 2);
    assert_eq!(total["stored"], 2);
    assert_eq!(total["failed"], 0);
    assert_eq!(total["bytes"], 3012);
    assert_eq!(total["exit_code"], 0);
    assert!(run.stderr.contains("registered with"), "{}", run.stderr);
}

/// Issue 13 item 9: a server that closes the connection because of its per-address cap
/// is not mistaken for a TLS server: the message says the connection was closed and why
/// that may be, without suggesting --tls; exit 5.
#[test]
fn a_refused_connection_is_not_taken_for_tls() {
    let data = tempdir();
    let server = start_server_with(data.path(), |config| {
        config.max_connections_per_address = 1;
    });
    // This connection takes the one place 127.0.0.1 has: answered, so the server has
    // counted it.
    let mut holder = std::net::TcpStream::connect(server.addr()).unwrap();
    let register = sfc_proto::Request::new(
        sfc_proto::ClientId([0; 16]),
        sfc_proto::RequestBody::Register {
            name: sfc_proto::Name::new("holder").unwrap(),
        },
    );
    std::io::Write::write_all(&mut holder, &register.encode()).unwrap();
    let mut header = [0u8; sfc_proto::limits::RESPONSE_HEADER_LEN];
    std::io::Read::read_exact(&mut holder, &mut header).unwrap();
    let dir = tempdir();
    write_transfer_info(dir.path(), &server.addr().to_string(), "vic", "x.bin");
    make_file(&dir.path().join("x.bin"), 10, 1);
    let run = run_client(dir.path(), &[]);
    run.assert_code(5);
    assert!(run.stderr.contains("the connection"), "{}", run.stderr);
    assert!(run.stderr.contains("too many at once"), "{}", run.stderr);
    assert!(!run.stderr.contains("--tls"), "{}", run.stderr);
    drop(holder);
    server.stop();
}

/// Holds the lock a run of the client takes on its folder, as another run would.
fn hold_folder_lock(dir: &Path) -> std::fs::File {
    let lock = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(false)
        .open(dir.join(".sfc-client.lock"))
        .unwrap();
    lock.try_lock().unwrap();
    lock
}

/// Two runs in one folder at once could mix alice's me.info with bob's priv.key, or lose
/// one identity without a backup. A run refuses a folder that another run holds, before it
/// sends anything, and leaves its files as they are: in a folder without an identity
/// (nothing registered) and in one with an identity (me.info and priv.key untouched).
#[test]
fn a_folder_in_use_by_another_run_is_refused() {
    let data = tempdir();
    let server = start_server(data.path());
    let address = server.addr().to_string();
    let dir = tempdir();
    make_file(&dir.path().join("x.bin"), 100, 1);
    let args = ["-s", &address, "-n", "alice", "x.bin"];

    let lock = hold_folder_lock(dir.path());
    let run = run_client(dir.path(), &args);
    run.assert_code(2);
    assert!(
        run.stderr
            .contains("another sfc-client run is using the folder"),
        "{}",
        run.stderr
    );
    // The folder as the client sees it (its current folder, symbolic links resolved).
    let shown = std::fs::canonicalize(dir.path()).unwrap();
    assert!(
        run.stderr.contains(&shown.display().to_string()),
        "{}",
        run.stderr
    );
    assert!(!dir.path().join("me.info").exists());
    assert!(!dir.path().join("priv.key").exists());
    drop(lock);

    run_client(dir.path(), &args).assert_code(0);
    let me_before = std::fs::read(dir.path().join("me.info")).unwrap();
    let key_before = std::fs::read(dir.path().join("priv.key")).unwrap();
    let lock = hold_folder_lock(dir.path());
    let run = run_client(dir.path(), &["-n", "bob", "-s", &address, "x.bin"]);
    run.assert_code(2);
    assert!(
        run.stderr
            .contains("another sfc-client run is using the folder"),
        "{}",
        run.stderr
    );
    drop(lock);
    assert_eq!(
        std::fs::read(dir.path().join("me.info")).unwrap(),
        me_before
    );
    assert_eq!(
        std::fs::read(dir.path().join("priv.key")).unwrap(),
        key_before
    );
    server.stop();
    assert_eq!(client_names(data.path()), vec!["alice"]);
}

/// A run holds the folder's lock only while it runs: runs one after the other in one
/// folder all work, and the lock file stays (owner-only) for the next run.
#[test]
fn runs_one_after_another_share_a_folder() {
    let data = tempdir();
    let server = start_server(data.path());
    let dir = tempdir();
    write_transfer_info(dir.path(), &server.addr().to_string(), "carol", "x.bin");
    make_file(&dir.path().join("x.bin"), 100, 1);
    run_client(dir.path(), &[]).assert_code(0);
    let lock_file = dir.path().join(".sfc-client.lock");
    assert!(lock_file.is_file());
    #[cfg(unix)]
    assert_eq!(mode(&lock_file), 0o600);
    // Released when the run ended: this process can take it, and then the client cannot.
    let lock = hold_folder_lock(dir.path());
    run_client(dir.path(), &[]).assert_code(2);
    drop(lock);
    let run = run_client(dir.path(), &["-v"]);
    run.assert_code(0);
    assert!(run.stderr.contains("<- 1605"), "{}", run.stderr);
    run_client(dir.path(), &[]).assert_code(0);
    assert!(lock_file.is_file());
    server.stop();
    assert_eq!(client_names(data.path()), vec!["carol"]);
}

/// A folder the client may read but not write: a run that only reconnects works as it did
/// before the folder lock (the lock file cannot be created there), and a registration is
/// still refused before anything is sent.
#[cfg(unix)]
#[test]
fn a_read_only_folder_still_serves_a_reconnect() {
    use std::os::unix::fs::PermissionsExt;
    let data = tempdir();
    let server = start_server(data.path());
    let address = server.addr().to_string();
    let dir = tempdir();
    let client = dir.path().join("client");
    std::fs::create_dir(&client).unwrap();
    make_file(&client.join("x.bin"), 100, 1);
    run_client(&client, &["-s", &address, "-n", "dave", "x.bin"]).assert_code(0);
    // As a folder written by an older client: no lock file yet.
    let _ = std::fs::remove_file(client.join(".sfc-client.lock"));
    std::fs::set_permissions(&client, std::fs::Permissions::from_mode(0o500)).unwrap();
    // Root writes anyway; then there is nothing to check.
    let read_only = std::fs::File::create(client.join("probe")).is_err();
    let reconnect = run_client(&client, &["-s", &address, "x.bin", "-v"]);
    let fresh = dir.path().join("fresh");
    std::fs::create_dir(&fresh).unwrap();
    std::fs::set_permissions(&fresh, std::fs::Permissions::from_mode(0o500)).unwrap();
    make_file(&dir.path().join("y.bin"), 10, 1);
    let register = run_client(
        dir.path(),
        &["-d", "fresh", "-s", &address, "-n", "erin", "y.bin"],
    );
    for folder in [&client, &fresh] {
        std::fs::set_permissions(folder, std::fs::Permissions::from_mode(0o700)).unwrap();
    }
    reconnect.assert_code(0);
    assert!(reconnect.stderr.contains("<- 1605"), "{}", reconnect.stderr);
    server.stop();
    if read_only {
        register.assert_code(1);
        assert!(register.stderr.contains("fresh"), "{}", register.stderr);
        assert_eq!(client_names(data.path()), vec!["dave"]);
    }
}

/// The race of the review: runs with different names started together in a folder
/// without me.info. With the lock, one of them registers and the others reconnect as
/// that user or refuse the folder; the identity left behind is whole.
#[test]
fn runs_started_together_leave_one_whole_identity() {
    let data = tempdir();
    let server = start_server(data.path());
    let address = server.addr().to_string();
    let dir = tempdir();
    make_file(&dir.path().join("x.bin"), 100, 1);
    let runs: Vec<_> = ["alice", "bob", "carol", "dave"]
        .into_iter()
        .map(|name| {
            let (folder, address) = (dir.path().to_owned(), address.clone());
            std::thread::spawn(move || {
                run_client(&folder, &["-s", &address, "-n", name, "x.bin", "-v"])
            })
        })
        .collect();
    let runs: Vec<_> = runs.into_iter().map(|run| run.join().unwrap()).collect();
    for run in &runs {
        assert!(
            [0, 2].contains(&run.code),
            "exit code {}\n{}",
            run.code,
            run.stderr
        );
    }
    let registered = runs
        .iter()
        .filter(|run| run.stderr.contains("-> 825"))
        .count();
    assert_eq!(registered, 1);
    let (name, _) = read_me_info(dir.path());
    let run = run_client(dir.path(), &["-s", &address, "x.bin", "-v"]);
    run.assert_code(0);
    assert!(run.stderr.contains("<- 1605"), "{}", run.stderr);
    assert!(!run.stderr.contains("warning"), "{}", run.stderr);
    server.stop();
    assert_eq!(client_names(data.path()), vec![name]);
}

/// A closed standard output (`sfc-client a b | head -1` after head has gone) does not stop
/// the batch: every file is still stored and confirmed, and the exit code is the batch's.
/// (Before, the first result line panicked: exit 101, the files after it never sent.)
#[test]
fn a_closed_standard_output_does_not_stop_the_batch() {
    let data = tempdir();
    let server = start_server(data.path());
    let dir = tempdir();
    write_transfer_info(dir.path(), &server.addr().to_string(), "pipe", "unused.bin");
    let originals: Vec<_> = (0..3u8)
        .map(|i| {
            let name = format!("p{i}.bin");
            let content = make_file(&dir.path().join(&name), 1000 + usize::from(i), i);
            (name, content)
        })
        .collect();
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_sfc-client"))
        .current_dir(dir.path())
        .args(["--timeout", "20", "p0.bin", "p1.bin", "p2.bin"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // The reader goes before the client writes anything.
    drop(child.stdout.take());
    let output = child.wait_with_output().unwrap();
    assert_eq!(
        output.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    server.stop();
    let files = stored_files(data.path());
    for (name, original) in &originals {
        let stored = find(&files, name);
        assert!(stored.verified, "{name}");
        assert_eq!(&std::fs::read(&stored.path).unwrap(), original, "{name}");
    }
}
