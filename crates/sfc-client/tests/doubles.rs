//! The real client binary against test doubles: the server behaviours our own server never
//! shows (docs/PROTOCOL.md, rules C1, C4, C5, C6 and C8).
#![cfg(test)]

mod common;

use std::collections::HashSet;

use common::{
    make_file, read_me_info, run_client, tempdir, write_transfer_info, Behaviour, Double,
};

const SERVER_ERROR: &str = "server responded with an error";

/// A client folder registered with `double` as `name` by a first run (a 1000-byte
/// `data.bin`), for runs that reconnect (827).
fn registered(double: &Double, name: &str) -> tempfile::TempDir {
    let dir = tempdir();
    setup(dir.path(), double, name, 1000);
    run_client(dir.path(), &[]).assert_code(0);
    dir
}

/// transfer.info pointing at `double`, a file `data.bin` of `len` bytes; returns its bytes.
fn setup(dir: &std::path::Path, double: &Double, name: &str, len: usize) -> Vec<u8> {
    write_transfer_info(dir, &double.address(), name, "data.bin");
    make_file(&dir.join("data.bin"), len, 7)
}

#[test]
fn original_server_that_closes_after_every_reply() {
    let double = Double::start(Behaviour {
        close_after_reply: true,
        answer_every_packet: true,
        wrong_checksums: 1,
        ..Behaviour::default()
    });
    let dir = tempdir();
    let data = setup(dir.path(), &double, "orig", 5000);
    let run = run_client(dir.path(), &["--packet-size", "1000", "-v"]);
    run.assert_code(0);
    assert!(
        run.stderr.contains("one connection per request"),
        "{}",
        run.stderr
    );
    {
        let s = double.state();
        assert_eq!(s.stored["data.bin"], data);
        assert_eq!(s.verified, vec!["data.bin"]);
        // Two sends of 6 packets (5008 B ciphertext / 1000), a 901 between them.
        assert_eq!(s.count(828), 12);
        assert_eq!(s.count(901), 1);
        // Every connection carried exactly one request (each was closed after its reply).
        let mut seen = HashSet::new();
        for logged in &s.log {
            assert!(seen.insert(logged.connection), "{:?}", s.log);
        }
        assert_eq!(
            &s.codes()[..3],
            &[825, 826, 828],
            "826 was sent again on a new connection"
        );
    }

    // A second run reconnects (827) in the same style, with a second file.
    make_file(&dir.path().join("more.bin"), 3000, 9);
    let run = run_client(dir.path(), &["data.bin", "more.bin"]);
    run.assert_code(0);
    let s = double.state();
    assert!(s.codes().contains(&827));
    assert_eq!(s.stored["more.bin"].len(), 3000);
    assert_eq!(s.verified, vec!["data.bin", "data.bin", "more.bin"]);
}

#[test]
fn stray_1604_after_901_is_skipped() {
    let double = Double::start(Behaviour {
        ack_after_901: true,
        wrong_checksums: 2,
        ..Behaviour::default()
    });
    let dir = tempdir();
    let data = setup(dir.path(), &double, "stray", 10_000);
    let run = run_client(dir.path(), &["-v"]);
    run.assert_code(0);
    assert!(
        run.stderr.contains("skipped a stray 1604"),
        "{}",
        run.stderr
    );
    let s = double.state();
    assert_eq!(s.connections, 1, "one persistent connection");
    assert_eq!(s.count(901), 2);
    assert_eq!(s.count(900), 1);
    assert_eq!(s.stored["data.bin"], data);
}

fn wrong_checksums(n: u32) -> (Double, common::ClientRun) {
    let double = Double::start(Behaviour {
        wrong_checksums: n,
        ..Behaviour::default()
    });
    let dir = tempdir();
    setup(dir.path(), &double, "mismatch", 4096);
    let run = run_client(dir.path(), &[]);
    (double, run)
}

#[test]
fn wrong_checksum_once_is_fixed_by_one_resend() {
    let (double, run) = wrong_checksums(1);
    run.assert_code(0);
    assert!(run.stderr.contains("checksum mismatch"), "{}", run.stderr);
    let s = double.state();
    assert_eq!(s.sends.len(), 2);
    assert_eq!(s.count(901), 1);
    assert_eq!(s.count(902), 0);
    assert_eq!(s.verified, vec!["data.bin"]);
    // 901 comes between the two sends, 900 last.
    let codes: Vec<u16> = s.codes().into_iter().filter(|c| *c != 828).collect();
    assert_eq!(codes, vec![825, 826, 901, 900]);
}

#[test]
fn wrong_checksum_three_times_succeeds_on_the_last_resend() {
    let (double, run) = wrong_checksums(3);
    run.assert_code(0);
    assert!(run.stdout.contains("after 4 sends"), "{}", run.stdout);
    let s = double.state();
    assert_eq!(s.sends.len(), 4);
    assert_eq!(s.count(901), 3);
    assert_eq!(s.count(902), 0);
    assert_eq!(s.count(900), 1);
}

#[test]
fn wrong_checksum_four_times_gives_up_with_902() {
    let (double, run) = wrong_checksums(4);
    run.assert_code(4);
    assert!(run.stderr.contains("902"), "{}", run.stderr);
    let s = double.state();
    assert_eq!(s.sends.len(), 4, "at most 3 resends");
    assert_eq!(s.count(901), 3);
    assert_eq!(s.count(902), 1);
    assert_eq!(s.count(900), 0);
    assert_eq!(s.failed, vec!["data.bin"]);
}

#[test]
fn a_failed_file_does_not_stop_the_next_one() {
    let double = Double::start(Behaviour {
        wrong_checksums: 4,
        ..Behaviour::default()
    });
    let dir = tempdir();
    setup(dir.path(), &double, "two", 100);
    make_file(&dir.path().join("second.bin"), 200, 3);
    let run = run_client(dir.path(), &["data.bin", "second.bin"]);
    run.assert_code(4);
    let s = double.state();
    assert_eq!(s.failed, vec!["data.bin"]);
    assert_eq!(s.verified, vec!["second.bin"]);
}

#[test]
fn reconnect_rejected_with_a_1606_without_payload_registers_again() {
    // First run against a normal double gives us an identity.
    let first = Double::start(Behaviour::default());
    let dir = tempdir();
    setup(dir.path(), &first, "phoenix", 100);
    run_client(dir.path(), &[]).assert_code(0);
    let (_, old_id) = read_me_info(dir.path());
    let old_key = std::fs::read_to_string(dir.path().join("priv.key")).unwrap();

    // The same server (same address), now rejecting the reconnect.
    let address = first.addr;
    drop(first);
    let second = Double::start_on(
        address,
        Behaviour {
            reject_reconnect_without_payload: true,
            ..Behaviour::default()
        },
    );
    let run = run_client(dir.path(), &["--server", &second.address()]);
    run.assert_code(0);
    assert!(run.stdout.contains("1606"), "{}", run.stdout);
    let s = second.state();
    assert_eq!(s.codes(), vec![827, 825, 826, 828, 900]);
    let (name, new_id) = read_me_info(dir.path());
    assert_eq!(name, "phoenix");
    assert_ne!(new_id, old_id, "a new client ID");
    assert_ne!(
        std::fs::read_to_string(dir.path().join("priv.key")).unwrap(),
        old_key,
        "new keys"
    );
}

#[test]
fn server_error_is_retried_and_reported() {
    let double = Double::start(Behaviour {
        server_errors: vec![(826, 2), (828, 1)],
        ..Behaviour::default()
    });
    let dir = tempdir();
    let data = setup(dir.path(), &double, "retry", 3000);
    // Retries that succeed are reported at -v only (issue 13 item 8).
    let run = run_client(dir.path(), &["-v"]);
    run.assert_code(0);
    assert_eq!(
        run.stderr.matches(SERVER_ERROR).count(),
        3,
        "{}",
        run.stderr
    );
    let s = double.state();
    assert_eq!(s.count(826), 3);
    assert_eq!(s.sends.len(), 1, "first send answered 1607, second stored");
    assert_eq!(s.stored["data.bin"], data);
}

#[test]
fn server_error_four_times_is_fatal() {
    let double = Double::start(Behaviour {
        server_errors: vec![(826, 100)],
        ..Behaviour::default()
    });
    let dir = tempdir();
    setup(dir.path(), &double, "doomed", 10);
    let run = run_client(dir.path(), &[]);
    run.assert_code(3);
    assert_eq!(
        run.stderr.matches(SERVER_ERROR).count(),
        4,
        "{}",
        run.stderr
    );
    assert!(run.stderr.contains("fatal"), "{}", run.stderr);
    assert!(
        run.stderr.contains("826 (send public key)"),
        "{}",
        run.stderr
    );
    assert!(run.stderr.contains(&double.address()), "{}", run.stderr);
    assert!(run.stderr.contains("retried 3 times"), "{}", run.stderr);
    assert_eq!(double.state().count(826), 4);
    // Registered (1600) before the 826s: saved, and named, for the next run to finish.
    let (_, id) = read_me_info(dir.path());
    assert!(run.stderr.contains(&id), "{}", run.stderr);
    assert!(
        run.stderr
            .contains("the next run sends its public key (826) again"),
        "{}",
        run.stderr
    );
}

/// The first 826 after the 1600 gets no 1602: the connection closes without one (the 826
/// is sent once more on a new connection, rule C1, and closed too), or the server holds
/// it until `--timeout`. The identity is saved (rule C10) and the error names it; the
/// next run against the same server sends 826 with the saved key (no 825, no 827) and
/// stores the file; the server has one client of that name, with a key.
#[test]
fn a_registration_without_its_1602_is_finished_by_the_next_run() {
    let cases = [
        (
            Behaviour {
                unanswered_public_keys: 2,
                ..Behaviour::default()
            },
            "closed the connection without replying",
        ),
        (
            Behaviour {
                held_public_keys: 1,
                ..Behaviour::default()
            },
            "no answer within 1 s",
        ),
    ];
    for (behaviour, failure) in cases {
        let double = Double::start(behaviour);
        let dir = tempdir();
        let data = setup(dir.path(), &double, "wanda", 300);
        let run = run_client(dir.path(), &["--timeout", "1"]);
        run.assert_code(5);
        let (name, id) = read_me_info(dir.path());
        assert_eq!(name, "wanda");
        assert!(run.stderr.contains(failure), "{}", run.stderr);
        assert!(run.stderr.contains(&id), "{}", run.stderr);
        assert!(
            run.stderr
                .contains("the next run sends its public key (826) again"),
            "{}",
            run.stderr
        );
        assert_eq!(double.state().clients(), vec![("wanda".to_owned(), false)]);
        let first_run = double.state().log.len();

        let run = run_client(dir.path(), &[]);
        run.assert_code(0);
        assert!(
            run.stdout.contains("finished the registration"),
            "{}",
            run.stdout
        );
        let s = double.state();
        assert_eq!(s.codes()[first_run..], [826, 828, 900]);
        assert_eq!(s.clients(), vec![("wanda".to_owned(), true)]);
        assert_eq!(s.stored["data.bin"], data);
        assert!(!dir.path().join("me.pending").exists());
    }
}

/// Ctrl-C while the 1602 is awaited: the identity saved after the 1600 stays, the line
/// Ctrl-C leaves names it and what the next run does, and the next run finishes the
/// registration.
#[cfg(unix)]
#[test]
fn ctrl_c_before_the_1602_leaves_a_registration_the_next_run_finishes() {
    let double = Double::start(Behaviour {
        held_public_keys: 1,
        ..Behaviour::default()
    });
    let dir = tempdir();
    let data = setup(dir.path(), &double, "xena", 300);
    // The 826 is held once the identity has been saved.
    let line = interrupted_while_held(dir.path(), &double, 826);
    let (_, id) = read_me_info(dir.path());
    assert!(
        line.starts_with(&format!(
            "interrupted: the registration of client ID {id} is saved in me.info"
        )),
        "{line}"
    );
    assert!(
        line.contains("the next run sends its public key (826) again"),
        "{line}"
    );

    run_client(dir.path(), &[]).assert_code(0);
    let s = double.state();
    assert_eq!(s.codes(), vec![825, 826, 826, 828, 900]);
    assert_eq!(s.clients(), vec![("xena".to_owned(), true)]);
    assert_eq!(s.stored["data.bin"], data);
}

/// A registration left unfinished, then a server that no longer knows the client (its
/// database replaced): the saved key's 826 gets 1607 on every run, so the client asks
/// with 827, gets 1606 and registers again as a new client, the old identity kept as a
/// backup.
#[test]
fn an_unfinished_registration_with_a_server_that_forgot_the_client_registers_again() {
    let double = Double::start(Behaviour {
        unanswered_public_keys: 2,
        ..Behaviour::default()
    });
    let dir = tempdir();
    let data = setup(dir.path(), &double, "yara", 300);
    run_client(dir.path(), &[]).assert_code(5);
    let (_, old_id) = read_me_info(dir.path());
    assert!(dir.path().join("me.pending").exists());
    double.state().forget_clients();
    let first_run = double.state().log.len();

    let run = run_client(dir.path(), &["-v"]);
    run.assert_code(0);
    assert!(
        run.stdout.contains(&format!(
            "refused the public key of client {old_id} and answers 827"
        )),
        "{}",
        run.stdout
    );
    let s = double.state();
    assert_eq!(
        s.codes()[first_run..],
        [826, 826, 826, 826, 827, 825, 826, 828, 900]
    );
    assert_eq!(s.clients(), vec![("yara".to_owned(), true)]);
    assert_eq!(s.stored["data.bin"], data);
    let (name, new_id) = read_me_info(dir.path());
    assert_eq!(name, "yara");
    assert_ne!(new_id, old_id);
    assert!(!dir.path().join("me.pending").exists());
    assert!(dir.path().join(format!("me.info.{old_id}.bak")).exists());
}

/// The saved key's 826 refused (1607) by a server that still has the client, with no key
/// on record: its 827 gets 1606 too, but the saved name is still this client's (1601),
/// so nothing is replaced, also when another name is configured now (registering it
/// would leave a second client), and the next run sends the key again, which succeeds.
#[test]
fn an_unfinished_registration_refused_by_a_server_in_trouble_is_kept() {
    let double = Double::start(Behaviour {
        unanswered_public_keys: 2,
        ..Behaviour::default()
    });
    let dir = tempdir();
    let data = setup(dir.path(), &double, "zoe", 300);
    run_client(dir.path(), &[]).assert_code(5);
    let (_, id) = read_me_info(dir.path());
    double.state().refuse(826, 4);
    let first_run = double.state().log.len();

    let run = run_client(dir.path(), &["--name", "zed"]);
    run.assert_code(3);
    for wanted in [
        format!("(client ID {id}) is saved in me.info but not finished"),
        format!("if the server no longer knows client {id}"),
    ] {
        assert!(run.stderr.contains(&wanted), "{wanted}: {}", run.stderr);
    }
    assert!(
        !run.stderr.contains("Choose another name"),
        "{}",
        run.stderr
    );
    assert_eq!(double.state().clients(), vec![("zoe".to_owned(), false)]);
    assert_eq!(
        double.state().codes()[first_run..],
        [826, 826, 826, 826, 827, 825]
    );
    assert_eq!(read_me_info(dir.path()).1, id);
    assert!(dir.path().join("me.pending").exists());

    run_client(dir.path(), &[]).assert_code(0);
    let s = double.state();
    assert_eq!(s.clients(), vec![("zoe".to_owned(), true)]);
    assert_eq!(s.stored["data.bin"], data);
    assert!(!dir.path().join("me.pending").exists());
}

/// Ctrl-C while the 827 after a refused saved key is awaited: the line Ctrl-C leaves still
/// says that the registration is saved and what the next run does.
#[cfg(unix)]
#[test]
fn ctrl_c_while_asking_after_a_refused_key_names_the_unfinished_registration() {
    let double = Double::start(Behaviour {
        unanswered_public_keys: 2,
        held_reconnects: 1,
        ..Behaviour::default()
    });
    let dir = tempdir();
    setup(dir.path(), &double, "una", 300);
    run_client(dir.path(), &[]).assert_code(5);
    let (_, id) = read_me_info(dir.path());
    double.state().refuse(826, 4);
    let line = interrupted_while_held(dir.path(), &double, 827);
    assert!(
        line.starts_with(&format!(
            "interrupted: the registration of client ID {id} is saved in me.info"
        )),
        "{line}"
    );
    assert!(dir.path().join("me.pending").exists());
}

/// Runs the client in `dir`, sends it SIGINT once the double has received a request
/// with `code` (which the double holds unanswered), and returns the last line of its
/// standard error, having checked that it exited with 130.
#[cfg(unix)]
fn interrupted_while_held(dir: &std::path::Path, double: &Double, code: u16) -> String {
    use std::process::{Command, Stdio};

    let child = Command::new(env!("CARGO_BIN_EXE_sfc-client"))
        .current_dir(dir)
        .args(["--timeout", "20"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Only a wait, for the request to be held.
    let mut waited = 0;
    while double.state().count(code) == 0 && waited < 600 {
        std::thread::sleep(std::time::Duration::from_millis(50));
        waited += 1;
    }
    let killed = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    let output = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(130), "{stderr}");
    stderr.lines().last().unwrap_or_default().to_owned()
}

/// A server that refuses a second 826 from a client whose key it has (other servers
/// than ours may): the saved key's 826 gets 1607, the 827 gets 1605, and the
/// registration counts as finished.
#[test]
fn an_unfinished_registration_whose_key_the_server_has_reconnects() {
    let double = Double::start(Behaviour::default());
    let dir = tempdir();
    let data = setup(dir.path(), &double, "ada", 300);
    run_client(dir.path(), &[]).assert_code(0);
    let (_, id) = read_me_info(dir.path());
    // The mark's removal was lost (a crash before it reached the disk).
    std::fs::write(dir.path().join("me.pending"), &id).unwrap();
    double.state().refuse(826, 4);
    let first_run = double.state().log.len();

    let run = run_client(dir.path(), &[]);
    run.assert_code(0);
    assert!(run.stdout.contains("reconnected to"), "{}", run.stdout);
    let s = double.state();
    assert_eq!(s.codes()[first_run..], [826, 826, 826, 826, 827, 828, 900]);
    assert_eq!(s.clients(), vec![("ada".to_owned(), true)]);
    assert_eq!(s.stored["data.bin"], data);
    assert_eq!(read_me_info(dir.path()).1, id);
    assert!(!dir.path().join("me.pending").exists());
}

#[test]
fn name_taken_is_reported_with_its_own_exit_code() {
    let double = Double::start(Behaviour::default());
    let first = tempdir();
    setup(first.path(), &double, "alice", 10);
    run_client(first.path(), &[]).assert_code(0);

    // A different client asks for the same name.
    let second = tempdir();
    setup(second.path(), &double, "alice", 10);
    let run = run_client(second.path(), &[]);
    run.assert_code(3);
    assert!(run.stderr.contains("already taken"), "{}", run.stderr);

    // A client the server does not know (1606) re-registers under a taken name.
    let third = tempdir();
    setup(third.path(), &double, "alice", 10);
    let me = std::fs::read_to_string(first.path().join("me.info")).unwrap();
    let mut lines: Vec<&str> = me.lines().collect();
    lines[1] = "0123456789abcdef0123456789abcdef";
    std::fs::write(third.path().join("me.info"), lines.join("\n")).unwrap();
    let run = run_client(third.path(), &[]);
    run.assert_code(3);
    assert!(run.stderr.contains("registering again"), "{}", run.stderr);
    assert!(run.stderr.contains("already taken"), "{}", run.stderr);
}

#[test]
fn too_large_file_is_refused_before_connecting() {
    let double = Double::start(Behaviour::default());
    let dir = tempdir();
    setup(dir.path(), &double, "big", 10);
    let big = std::fs::File::create(dir.path().join("huge.bin")).unwrap();
    // Sparse: no disk space used.
    big.set_len(u64::from(u32::MAX) - 15).unwrap();
    let run = run_client(dir.path(), &["data.bin", "huge.bin"]);
    run.assert_code(2);
    assert!(run.stderr.contains("32 bits"), "{}", run.stderr);
    assert_eq!(double.state().connections, 0, "nothing was sent");
}

#[test]
fn impossible_packet_size_is_refused_before_connecting() {
    let double = Double::start(Behaviour::default());
    let dir = tempdir();
    setup(dir.path(), &double, "tiny", 2_000_000);
    let run = run_client(dir.path(), &["--packet-size", "16"]);
    run.assert_code(2);
    assert!(run.stderr.contains("65535"), "{}", run.stderr);
    assert_eq!(double.state().connections, 0);
}

#[test]
fn verbose_shows_requests_and_replies_and_quiet_shows_nothing() {
    let double = Double::start(Behaviour::default());
    let dir = tempdir();
    setup(dir.path(), &double, "chatty", 5000);
    let run = run_client(dir.path(), &["-vv"]);
    run.assert_code(0);
    for needle in [
        "-> 825 (register), payload 255 B",
        "<- 1600 (registered), payload 16 B",
        "-> 826 (send public key), payload 415 B",
        "<- 1602 (public key accepted), payload 144 B",
        "-> 828 packet 3/3",
        "<- 1603 (file received), payload 279 B",
        "-> 900 (checksum correct)",
        "<- 1604 (acknowledged)",
    ] {
        assert!(run.stderr.contains(needle), "{needle:?} in\n{}", run.stderr);
    }
    // Default packet size: 5008 B of ciphertext in 3 packets of at most 2048.
    assert_eq!(double.state().sends, vec![("data.bin".to_owned(), 3)]);

    let run = run_client(dir.path(), &["--quiet"]);
    run.assert_code(0);
    assert_eq!(run.stdout, "");
    assert_eq!(run.stderr, "");
}

#[test]
fn several_files_in_one_session_on_one_connection() {
    let double = Double::start(Behaviour::default());
    let dir = tempdir();
    setup(dir.path(), &double, "batch", 1);
    let a = make_file(&dir.path().join("a.bin"), 0, 1);
    let b = make_file(&dir.path().join("b.bin"), 17, 2);
    let c = make_file(&dir.path().join("c.bin"), 70_000, 3);
    let run = run_client(dir.path(), &["a.bin", "b.bin", "c.bin"]);
    run.assert_code(0);
    assert!(run.stdout.contains("all 3 files stored"), "{}", run.stdout);
    let s = double.state();
    assert_eq!(s.connections, 1);
    assert_eq!(s.stored["a.bin"], a);
    assert_eq!(s.stored["b.bin"], b);
    assert_eq!(s.stored["c.bin"], c);
    assert_eq!(s.verified, vec!["a.bin", "b.bin", "c.bin"]);
}

#[test]
fn dir_flag_holds_the_state_files_and_resolves_line_3() {
    let double = Double::start(Behaviour::default());
    let cwd = tempdir();
    let state = cwd.path().join("state");
    std::fs::create_dir_all(state.join("sub")).unwrap();
    write_transfer_info(&state, &double.address(), "ivan", "sub/payload.bin");
    let data = make_file(&state.join("sub/payload.bin"), 777, 4);
    let run = run_client(cwd.path(), &["--dir", "state"]);
    run.assert_code(0);
    assert!(state.join("me.info").exists() && state.join("priv.key").exists());
    assert!(!cwd.path().join("me.info").exists());
    assert_eq!(double.state().stored["payload.bin"], data);
}

/// 1607 for an intermediate packet on a persistent connection, followed by a 1607 for each
/// later packet of that send: the queued replies must not be taken for replies to the
/// retry (the client drops that connection and retries on a fresh one).
#[test]
fn server_errors_for_intermediate_packets_do_not_desynchronise() {
    let double = Double::start(Behaviour {
        intermediate_errors: 1,
        ..Behaviour::default()
    });
    let dir = tempdir();
    let data = setup(dir.path(), &double, "desync", 5000);
    let run = run_client(dir.path(), &["-v"]);
    run.assert_code(0);
    assert_eq!(
        run.stderr.matches(SERVER_ERROR).count(),
        1,
        "{}",
        run.stderr
    );
    let s = double.state();
    assert_eq!(s.stored["data.bin"], data);
    assert_eq!(s.verified, vec!["data.bin"]);
    assert_eq!(s.count(828), 6, "3 packets, sent twice");
    assert_eq!(s.connections, 2);
}

/// A refusal early in a long upload (the server drops the rest unread, rule S12) stops
/// the send once it has arrived, instead of streaming the whole file first; the retry on
/// a new connection stores it. Before, all of it went out, on every retry.
#[test]
fn a_refusal_early_in_a_long_upload_stops_the_send() {
    let double = Double::start(Behaviour {
        intermediate_errors: 1,
        read_pause: Some(std::time::Duration::from_millis(1)),
        ..Behaviour::default()
    });
    let dir = tempdir();
    let data = setup(dir.path(), &double, "early", 48 << 20);
    let run = run_client(dir.path(), &["--packet-size", "65536"]);
    run.assert_code(0);
    let s = double.state();
    assert_eq!(s.stored["data.bin"], data);
    let total = (48 << 20) / 65536 + 1;
    let first_send = s
        .log
        .iter()
        .filter(|l| l.connection == 0 && l.code == 828)
        .count();
    assert!(
        first_send < total / 2,
        "{first_send} of {total} packets sent after the refusal of the first"
    );
    assert_eq!(s.connections, 2);
}

/// A server that closes the connection after a 1607: the client reconnects and keeps one
/// persistent connection (it does not mistake this for the close-after-every-reply style).
#[test]
fn a_close_after_a_server_error_keeps_the_persistent_style() {
    let double = Double::start(Behaviour {
        server_errors: vec![(826, 1)],
        close_after_error: true,
        ..Behaviour::default()
    });
    let dir = tempdir();
    let data = setup(dir.path(), &double, "resilient", 5000);
    let run = run_client(dir.path(), &["-v"]);
    run.assert_code(0);
    assert!(
        !run.stderr.contains("one connection per request"),
        "{}",
        run.stderr
    );
    let s = double.state();
    assert_eq!(s.stored["data.bin"], data);
    assert_eq!(s.connections, 2);
    let after: Vec<usize> = s.log[2..].iter().map(|l| l.connection).collect();
    assert!(after.iter().all(|c| *c == 1), "{:?}", s.log);
}

/// Sends three files of 6 packets each (5000 B, `--packet-size 1000`) to a double with
/// `behaviour`, checks that all were stored and that the client never switched to one
/// connection per request, and returns the client's run and the double.
fn three_files_stay_persistent(behaviour: Behaviour, user: &str) -> (common::ClientRun, Double) {
    let double = Double::start(behaviour);
    let dir = tempdir();
    write_transfer_info(dir.path(), &double.address(), user, "a.bin");
    let files = ["a.bin", "b.bin", "c.bin"];
    let data: Vec<Vec<u8>> = files
        .iter()
        .zip(1u8..)
        .map(|(name, seed)| make_file(&dir.path().join(name), 5000, seed))
        .collect();
    let run = run_client(
        dir.path(),
        &[&["--packet-size", "1000", "-v"][..], &files].concat(),
    );
    run.assert_code(0);
    assert!(
        !run.stderr.contains("one connection per request"),
        "{}",
        run.stderr
    );
    {
        let s = double.state();
        for (name, bytes) in files.iter().zip(&data) {
            assert_eq!(&s.stored[*name], bytes, "{name}");
        }
        assert_eq!(s.verified, files);
        assert_eq!(s.count(828), 18, "{:?}", s.log);
    }
    (run, double)
}

/// A server that closes a connection it kept for several replies (here after each file's
/// 1603, as an idle time-out would while the client checks the file before its 900): the
/// client reconnects and keeps one connection per stretch, packets unanswered. It used to
/// take any close after a normal reply for the original server's style and send every
/// later packet on a connection of its own.
#[test]
fn a_close_after_several_replies_keeps_the_persistent_style() {
    let (run, double) = three_files_stay_persistent(
        Behaviour {
            close_after_file: true,
            ..Behaviour::default()
        },
        "idle",
    );
    assert!(
        run.stderr.contains("an idle time-out or a restart"),
        "{}",
        run.stderr
    );
    // Each file's packets on one connection: 825, 826 and a.bin on the first; 900 and
    // the next file on each of the two after it; the last 900 on a fourth.
    let s = double.state();
    assert_eq!(s.connections, 4, "{:?}", s.log);
}

/// The same close found only by sending a file (the server restarted between two files):
/// the file is sent again on a new connection, still persistent.
#[test]
fn a_file_sent_on_a_connection_closed_after_several_replies_keeps_the_style() {
    let (_, double) = three_files_stay_persistent(
        Behaviour {
            close_on_the_request_after_an_ack: true,
            ..Behaviour::default()
        },
        "restart",
    );
    // 825, 826, a.bin, 900; b.bin, 900; c.bin, 900: the first packet of b.bin and c.bin
    // each ended a connection.
    let s = double.state();
    assert_eq!(s.connections, 3, "{:?}", s.log);
}

/// Issue 13 item 7: `--packet-size 1` to `7` used to pass validation and fail after
/// connecting with an internal error; a packet smaller than an AES block now works.
#[test]
fn packets_smaller_than_an_aes_block_work() {
    let double = Double::start(Behaviour::default());
    let dir = tempdir();
    let data = setup(dir.path(), &double, "tinypackets", 40);
    for size in ["1", "7", "9"] {
        let run = run_client(dir.path(), &["--packet-size", size]);
        run.assert_code(0);
        assert_eq!(
            double.state().stored["data.bin"],
            data,
            "--packet-size {size}"
        );
    }
    // 48 B of ciphertext: 48 packets of 1 B.
    assert_eq!(double.state().sends[0], ("data.bin".to_owned(), 48));
}

/// Issue 13 item 3: two files with the same base name would be stored under one name, the
/// second replacing the first. The batch is refused before anything is sent, naming both.
#[test]
fn two_files_with_the_same_name_are_refused_before_sending() {
    let double = Double::start(Behaviour::default());
    let dir = tempdir();
    setup(dir.path(), &double, "same", 10);
    for sub in ["x", "y"] {
        std::fs::create_dir(dir.path().join(sub)).unwrap();
        make_file(&dir.path().join(sub).join("same.txt"), 10, 1);
    }
    let run = run_client(dir.path(), &["x/same.txt", "y/same.txt"]);
    run.assert_code(2);
    assert!(run.stderr.contains("x/same.txt"), "{}", run.stderr);
    assert!(run.stderr.contains("y/same.txt"), "{}", run.stderr);
    assert!(run.stderr.contains("--as"), "{}", run.stderr);
    assert_eq!(double.state().connections, 0, "nothing was sent");
}

/// Issue 13 item 3: `--as NAME` chooses the name stored on the server (one file only).
#[test]
fn as_chooses_the_stored_name() {
    let double = Double::start(Behaviour::default());
    let dir = tempdir();
    let data = setup(dir.path(), &double, "renamer", 100);
    let run = run_client(dir.path(), &["data.bin", "--as", "reports/2026.bin"]);
    run.assert_code(0);
    assert_eq!(double.state().stored["reports/2026.bin"], data);
    assert!(!double.state().stored.contains_key("data.bin"));

    make_file(&dir.path().join("other.bin"), 10, 1);
    let run = run_client(dir.path(), &["data.bin", "other.bin", "--as", "x"]);
    run.assert_code(2);
    assert!(run.stderr.contains("--as"), "{}", run.stderr);
}

/// Issue 13 item 6: a server that dies in the middle of an upload. The error names the
/// file and how far it got, and the client does not claim that the server closes the
/// connection after each reply (no reply came).
#[test]
fn a_server_that_dies_mid_upload_is_reported_with_the_file_and_progress() {
    let double = Double::start(Behaviour {
        die_after_content: Some(3 << 20),
        ..Behaviour::default()
    });
    let dir = tempdir();
    setup(dir.path(), &double, "crash", 20 << 20);
    let run = run_client(dir.path(), &["-v"]);
    run.assert_code(5);
    assert!(run.stderr.contains("data.bin"), "{}", run.stderr);
    assert!(run.stderr.contains("interrupted at"), "{}", run.stderr);
    assert!(
        !run.stderr.contains("one connection per request"),
        "{}",
        run.stderr
    );
}

/// A connection cut in the middle of the first file after a reconnect (827, one reply on
/// it) is not taken for a server that closes after each reply: the file is sent again on
/// a new connection in the same style, and so is the next one. (It used to switch the
/// rest of the run to one connection per request: a 1 GiB file's 65,535 packets, each on
/// a connection of its own.)
#[test]
fn a_cut_during_the_first_file_after_a_reconnect_keeps_one_connection() {
    let double = Double::start(Behaviour {
        cut_once_after_content: Some(1 << 20),
        ..Behaviour::default()
    });
    // Registered by a first run whose small file gets nowhere near the cut.
    let dir = registered(&double, "cut");
    let big = make_file(&dir.path().join("big.bin"), 3 << 20, 3);
    let next = make_file(&dir.path().join("next.bin"), 100_000, 4);
    let run = run_client(dir.path(), &["-v", "big.bin", "next.bin"]);
    run.assert_code(0);
    assert!(
        !run.stderr.contains("one connection per request"),
        "{}",
        run.stderr
    );
    assert!(
        run.stderr.contains("sending it again on a new one"),
        "{}",
        run.stderr
    );
    let s = double.state();
    assert!(s.cut, "the connection was not cut");
    assert_eq!(s.stored["big.bin"], big);
    assert_eq!(s.stored["next.bin"], next);
    // The second run: its 827 and the cut send on one connection, then everything else
    // (the whole file again, its 900, the next file) on one more.
    let second_run: Vec<usize> = s
        .log
        .iter()
        .skip_while(|l| l.code != 827)
        .map(|l| l.connection)
        .collect();
    let last = *second_run.last().unwrap();
    let first = second_run[0];
    assert_eq!(last, first + 1, "{:?}", s.log);
    assert_eq!(s.connections, last + 1, "{:?}", s.log);
}

/// After a first cut (one reply on its connection), sends cut again and again on
/// connections that carried two stray replies each are not retried for ever: the cut of
/// a connection kept for several replies ends the "cut after one reply" allowance, and
/// the next fresh connection's close is the failure it always was.
#[test]
fn sends_cut_after_stray_replies_every_time_end_in_an_error() {
    let double = Double::start(Behaviour {
        cut_once_after_content: Some(100_000),
        strays_before_final_reply: Some((2, std::time::Duration::ZERO)),
        close_instead_of_final_reply: true,
        ..Behaviour::default()
    });
    let dir = tempdir();
    // Registered by a first run (whose small file fails: no final reply ever comes).
    setup(dir.path(), &double, "dying", 1000);
    run_client(dir.path(), &[]);
    assert!(dir.path().join("me.info").exists());
    make_file(&dir.path().join("big.bin"), 300_000, 8);
    let run = run_client(dir.path(), &["-v", "big.bin"]);
    run.assert_code(5);
    assert!(double.state().cut, "the first send was not cut");
    // The run's connections: the cut one, one kept for two replies, one fresh; no more.
    let s = double.state();
    let first_of_run = s.log.iter().find(|l| l.code == 827).unwrap().connection;
    assert_eq!(s.connections - first_of_run, 3, "{:?}", s.log);
}

/// A server that closes after each reply, whose close comes only after the client has
/// started streaming a file on the connection: the first cut sends the file again in the
/// same style, the second (on a connection that carried no reply) switches to one
/// connection per request, and the file is stored.
#[test]
fn a_late_close_after_each_reply_is_recognised_at_the_second_cut() {
    let double = Double::start(Behaviour {
        close_after_reply: true,
        close_after_reply_delay: Some(std::time::Duration::from_secs(1)),
        answer_every_packet: true,
        ..Behaviour::default()
    });
    // Registered first; the second run's 827 has its connection to itself.
    let dir = registered(&double, "late");
    let data = make_file(&dir.path().join("data.bin"), 200_000, 5);
    let run = run_client(dir.path(), &["--packet-size", "1000", "-v"]);
    run.assert_code(0);
    assert!(
        run.stderr.contains("sending it again on a new one"),
        "{}",
        run.stderr
    );
    assert!(
        run.stderr.contains("one connection per request"),
        "{}",
        run.stderr
    );
    let s = double.state();
    assert_eq!(s.stored["data.bin"], data);
    assert_eq!(s.verified, vec!["data.bin", "data.bin"]);
}

/// Issue 13 item 8: a 1607 followed by a retry that succeeds alarms no one: without -v
/// (and with -q) nothing is printed about it; failures are always reported.
#[test]
fn a_retry_that_succeeds_is_reported_only_with_verbose() {
    for args in [&[][..], &["-q"]] {
        let double = Double::start(Behaviour {
            server_errors: vec![(828, 1)],
            ..Behaviour::default()
        });
        let dir = tempdir();
        let data = setup(dir.path(), &double, "calm", 3000);
        let run = run_client(dir.path(), args);
        run.assert_code(0);
        assert!(
            !run.stderr.contains(SERVER_ERROR),
            "{args:?}: {}",
            run.stderr
        );
        assert_eq!(double.state().stored["data.bin"], data);
        // 3016 B of ciphertext in 2 packets, sent twice.
        assert_eq!(double.state().count(828), 4, "the first send was retried");
    }
}

/// Issue 13 item 12: with failures, `--json` still gives one object per file (failed with
/// its reason, skipped) and the exit code of the first failure.
#[test]
fn json_reports_failures_with_their_reasons() {
    let double = Double::start(Behaviour {
        wrong_checksums: 4,
        ..Behaviour::default()
    });
    let dir = tempdir();
    setup(dir.path(), &double, "jsonfail", 100);
    make_file(&dir.path().join("second.bin"), 200, 3);
    let run = run_client(dir.path(), &["--json", "data.bin", "second.bin"]);
    run.assert_code(4);
    let lines: Vec<serde_json::Value> = run
        .stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines[0]["status"], "failed");
    assert!(
        lines[0]["reason"].as_str().unwrap().contains("checksum"),
        "{}",
        run.stdout
    );
    assert!(lines[0]["cksum"].is_null());
    assert_eq!(lines[1]["status"], "stored");
    assert_eq!(lines[2]["total"]["failed"], 1);
    assert_eq!(lines[2]["total"]["exit_code"], 4);

    // Nothing tried: every file is reported as skipped, with the reason.
    let run = run_client(
        dir.path(),
        &["--json", "-s", "127.0.0.1:1", "data.bin", "second.bin"],
    );
    run.assert_code(5);
    let lines: Vec<serde_json::Value> = run
        .stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 3, "{}", run.stdout);
    assert_eq!(lines[0]["status"], "skipped");
    assert_eq!(lines[2]["total"]["exit_code"], 5);
}

/// Issue 13 item 4: a file that grows while it is sent is not reported as stored: the
/// server has the bytes read meanwhile, which are not the file as it is now. It is not
/// confirmed either: 902, not 900, so the server does not keep it as verified.
#[test]
fn a_file_that_changes_while_it_is_sent_is_reported() {
    let dir = tempdir();
    let double = Double::start(Behaviour {
        grow_file: Some(dir.path().join("data.bin")),
        ..Behaviour::default()
    });
    setup(dir.path(), &double, "grower", 5000);
    make_file(&dir.path().join("next.bin"), 100, 2);
    let run = run_client(dir.path(), &["data.bin", "next.bin"]);
    run.assert_code(2);
    assert!(
        run.stderr.contains("changed while it was being sent"),
        "{}",
        run.stderr
    );
    assert!(run.stderr.contains("5000 to 6000 bytes"), "{}", run.stderr);
    assert!(!run.stdout.contains("data.bin: stored"), "{}", run.stdout);
    assert_eq!(double.state().verified, ["next.bin"]);
    assert_eq!(double.state().failed, ["data.bin"]);
    assert_eq!(double.state().stored["next.bin"].len(), 100);
}

/// A file removed once it was read whole cannot be checked against what was read: it
/// counts as changed, the server is told to drop its copy (902), and the message says so
/// (it said only that the file could not be read).
#[test]
fn a_file_removed_after_it_was_read_is_dropped_and_the_902_reported() {
    let dir = tempdir();
    let double = Double::start(Behaviour {
        remove_before_final_reply: Some(dir.path().join("data.bin")),
        ..Behaviour::default()
    });
    setup(dir.path(), &double, "rotated", 5000);
    let run = run_client(dir.path(), &[]);
    run.assert_code(2);
    for wanted in ["it can no longer be read", "told to drop them (902)"] {
        assert!(run.stderr.contains(wanted), "{wanted}: {}", run.stderr);
    }
    assert_eq!(double.state().failed, ["data.bin"]);
}

/// The 902 for a file that changed while it was sent is refused (1607 after the
/// retries): a warning, and the change stays the error reported; the connection, which
/// may be out of step, is closed, and the next file goes on a new one.
#[test]
fn a_refused_902_for_a_changed_file_is_a_warning_and_ends_the_connection() {
    let dir = tempdir();
    let double = Double::start(Behaviour {
        grow_file: Some(dir.path().join("data.bin")),
        server_errors: vec![(902, 4)],
        ..Behaviour::default()
    });
    setup(dir.path(), &double, "grower2", 5000);
    make_file(&dir.path().join("next.bin"), 100, 2);
    let run = run_client(dir.path(), &["data.bin", "next.bin"]);
    run.assert_code(2);
    for wanted in [
        "changed while it was being sent",
        "could not tell the server to drop the copy (902)",
    ] {
        assert!(run.stderr.contains(wanted), "{wanted}: {}", run.stderr);
    }
    let s = double.state();
    assert_eq!(s.count(902), 4);
    assert!(s.failed.is_empty());
    assert_eq!(s.verified, ["next.bin"]);
    let connection_of = |code: u16| {
        s.log
            .iter()
            .filter(|logged| logged.code == code)
            .map(|logged| logged.connection)
            .collect::<Vec<_>>()
    };
    let refused = connection_of(902);
    let confirmed = connection_of(900);
    assert!(
        confirmed.iter().all(|c| refused.iter().all(|r| c > r)),
        "the next file went on the connection of the refused 902: {:?}",
        s.log
    );
}

/// The same change found during a resend (the first send's checksum was wrong): the
/// server holds the first send's copy, unverified, and is told to drop it (902) as for
/// any file that failed.
#[test]
fn a_file_that_changes_before_its_resend_is_dropped_with_902() {
    let dir = tempdir();
    let double = Double::start(Behaviour {
        grow_file: Some(dir.path().join("data.bin")),
        wrong_checksums: 1,
        ..Behaviour::default()
    });
    setup(dir.path(), &double, "regrower", 5000);
    make_file(&dir.path().join("next.bin"), 100, 2);
    let run = run_client(dir.path(), &["data.bin", "next.bin"]);
    run.assert_code(2);
    assert!(run.stderr.contains("changed"), "{}", run.stderr);
    assert_eq!(double.state().count(901), 1, "{}", run.stderr);
    assert_eq!(double.state().failed, ["data.bin"], "{}", run.stderr);
    assert_eq!(double.state().verified, ["next.bin"]);
}

/// A resend the server refuses (1607, four times): the server still holds the first
/// send's copy, whose checksum was wrong; the client tells it to drop it (902) as for any
/// failed file. Before, that copy stayed, unverified.
#[test]
fn a_resend_that_fails_drops_the_earlier_copy_with_902() {
    let double = Double::start(Behaviour {
        wrong_checksums: 1,
        errors_after_901: 4,
        ..Behaviour::default()
    });
    let dir = tempdir();
    setup(dir.path(), &double, "refused", 3000);
    make_file(&dir.path().join("next.bin"), 100, 2);
    let run = run_client(dir.path(), &["data.bin", "next.bin"]);
    run.assert_code(3);
    assert!(run.stderr.contains(SERVER_ERROR), "{}", run.stderr);
    let s = double.state();
    assert_eq!(s.failed, ["data.bin"], "{}", run.stderr);
    assert_eq!(s.verified, ["next.bin"]);
}

/// A file rewritten while it is sent, same size, with its time set back (what a write
/// within the filesystem's time tick of the one before looks like) is not confirmed: on
/// Unix its change time shows it; elsewhere a file written just before it was sent is
/// read again after the 1603 and its cksum compared. Either way 902 is sent.
#[test]
fn a_change_the_file_times_cannot_show_is_caught_for_a_file_just_written() {
    let dir = tempdir();
    let double = Double::start(Behaviour {
        rewrite_keeping_time: Some(dir.path().join("data.bin")),
        ..Behaviour::default()
    });
    setup(dir.path(), &double, "racy", 5000);
    // "Just written" whatever the registration before the send takes on a loaded machine:
    // a time ahead of the clock (as a skewed clock leaves) is within the window too.
    std::fs::File::options()
        .write(true)
        .open(dir.path().join("data.bin"))
        .unwrap()
        .set_modified(std::time::SystemTime::now() + std::time::Duration::from_secs(600))
        .unwrap();
    let run = run_client(dir.path(), &["data.bin"]);
    run.assert_code(2);
    let seen = if cfg!(unix) {
        "it was replaced or written to, its size and time kept"
    } else {
        "its content changed, its size and time did not"
    };
    assert!(run.stderr.contains(seen), "{}", run.stderr);
    assert_eq!(double.state().failed, ["data.bin"]);
    assert!(double.state().verified.is_empty());
}

/// Issue 13 item 14: `--pace MS` sends each packet with its own write (with a pause after
/// it) and, without --packet-size, packets of 1024 bytes that fit one TCP segment. The
/// servers it is for are exercised in interop/test_client_pace.py.
#[test]
fn pace_sends_small_packets_one_by_one() {
    let double = Double::start(Behaviour::default());
    let dir = tempdir();
    let data = setup(dir.path(), &double, "pacer", 5000);
    let run = run_client(dir.path(), &["--pace", "2", "-vv"]);
    run.assert_code(0);
    // 5008 B of ciphertext in packets of 1024.
    assert_eq!(double.state().sends, vec![("data.bin".to_owned(), 5)]);
    assert_eq!(double.state().stored["data.bin"], data);
    assert!(run.stderr.contains("content 1024 B"), "{}", run.stderr);
}
