//! `--timeout` bounds each whole reply, not each read: the real client binary against
//! doubles that keep a reply coming slowly, never late enough for a single read to time out.
//! The outcome (a time-out, exit 5) is asserted, and only a generous upper bound on the
//! time taken, far below what the slow reply would take in full.
#![cfg(test)]

mod common;

use std::time::{Duration, Instant};

use common::{make_file, run_client, tempdir, write_transfer_info, Behaviour, Double};

/// The final 1603 (286 bytes) one byte every 300 ms would take 86 s; with `--timeout 2`
/// the client gives up after about 2 s, saying which time-out ran out.
#[test]
fn a_trickled_checksum_reply_times_out_as_a_whole() {
    let double = Double::start(Behaviour {
        trickle_final_reply: Some(Duration::from_millis(300)),
        ..Behaviour::default()
    });
    let dir = tempdir();
    write_transfer_info(dir.path(), &double.address(), "slow", "data.bin");
    make_file(&dir.path().join("data.bin"), 1000, 1);
    let started = Instant::now();
    let run = run_client(dir.path(), &["--timeout", "2"]);
    let took = started.elapsed();
    run.assert_code(5);
    assert!(took < Duration::from_secs(10), "took {took:?}");
    for wanted in ["828 (file packet)", "not complete within 2 s", "--timeout"] {
        assert!(run.stderr.contains(wanted), "{wanted:?}: {}", run.stderr);
    }
}

/// Stray replies while the checksum is awaited share its deadline: 60 strays 0.5 s apart
/// (30 s in all, each well inside the 3 s time-out, and within the client's stray limit
/// for a 59-packet file) end in a time-out after about 3 s.
#[test]
fn stray_replies_do_not_extend_the_wait_for_the_checksum() {
    let double = Double::start(Behaviour {
        strays_before_final_reply: Some((60, Duration::from_millis(500))),
        ..Behaviour::default()
    });
    let dir = tempdir();
    write_transfer_info(dir.path(), &double.address(), "strays", "data.bin");
    make_file(&dir.path().join("data.bin"), 120_000, 2);
    let started = Instant::now();
    let run = run_client(dir.path(), &["--timeout", "3", "-v"]);
    let took = started.elapsed();
    run.assert_code(5);
    assert!(took < Duration::from_secs(20), "took {took:?}");
    for wanted in ["skipped a stray 1603", "within 3 s", "--timeout"] {
        assert!(run.stderr.contains(wanted), "{wanted:?}: {}", run.stderr);
    }
}

/// A server that stops reading in the middle of a streamed upload: the write that can
/// make no progress within `--timeout` ends the run (exit 5), and the message says the
/// server stopped taking the request and names `--timeout`, not a reply that never came.
#[test]
fn a_server_that_stops_reading_is_named_as_such() {
    let double = Double::start(Behaviour {
        stall_after_content: Some(1 << 20),
        ..Behaviour::default()
    });
    let dir = tempdir();
    write_transfer_info(dir.path(), &double.address(), "stalled", "big.bin");
    // Far more than the loopback socket buffers hold, even tuned ones (16–32 MiB).
    make_file(&dir.path().join("big.bin"), 96 << 20, 3);
    let run = run_client(dir.path(), &["--timeout", "1"]);
    run.assert_code(5);
    for wanted in ["stopped taking the request", "--timeout"] {
        assert!(run.stderr.contains(wanted), "{wanted:?}: {}", run.stderr);
    }
    assert!(!run.stderr.contains("no answer"), "{}", run.stderr);
}
