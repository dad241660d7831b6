//! The progress bar: drawn on standard error when it is a terminal, never with `--quiet`,
//! never when standard error is a pipe. A terminal is given to the real binary with
//! util-linux `script`, which runs a command under a pseudo-terminal.
#![cfg(test)]

mod common;

use std::process::Command;

use common::{make_file, run_client, tempdir, write_transfer_info, Behaviour, Double};

/// Runs the client under a pseudo-terminal; returns exit code and everything it drew.
fn run_under_terminal(dir: &std::path::Path, args: &str) -> Option<(i32, String)> {
    if Command::new("script").arg("--version").output().is_err() {
        eprintln!("skipped: util-linux `script` is not installed");
        return None;
    }
    let command = format!("{} --timeout 20 {args}", env!("CARGO_BIN_EXE_sfc-client"));
    let output = Command::new("script")
        .args(["-qefc", &command, "/dev/null"])
        .current_dir(dir)
        .env("COLUMNS", "120")
        .env("TERM", "xterm")
        .output()
        .expect("run script");
    let code = output.status.code().unwrap_or(-1);
    Some((code, String::from_utf8_lossy(&output.stdout).into_owned()))
}

#[test]
fn a_terminal_gets_a_progress_bar_with_bytes_rate_and_eta() {
    let double = Double::start(Behaviour::default());
    let dir = tempdir();
    write_transfer_info(dir.path(), &double.address(), "bar", "big.bin");
    let original = make_file(&dir.path().join("big.bin"), 24 << 20, 3);

    let Some((code, screen)) = run_under_terminal(dir.path(), "") else {
        return;
    };
    assert_eq!(code, 0, "{screen}");
    assert!(screen.contains("ETA"), "no ETA drawn:\n{screen}");
    assert!(screen.contains("/s"), "no rate drawn:\n{screen}");
    assert!(screen.contains("MiB"), "no byte counts drawn:\n{screen}");
    assert_eq!(double.state().stored.get("big.bin"), Some(&original));
}

#[test]
fn quiet_or_a_pipe_draws_no_bar() {
    let double = Double::start(Behaviour::default());
    let dir = tempdir();
    write_transfer_info(dir.path(), &double.address(), "nobar", "big.bin");
    make_file(&dir.path().join("big.bin"), 8 << 20, 4);

    if let Some((code, screen)) = run_under_terminal(dir.path(), "--quiet") {
        assert_eq!(code, 0, "{screen}");
        assert!(!screen.contains("ETA"), "bar drawn with --quiet:\n{screen}");
    }
    // Standard error is a pipe here.
    let run = run_client(dir.path(), &[]);
    run.assert_code(0);
    assert!(!run.stderr.contains("ETA"), "{}", run.stderr);
}
