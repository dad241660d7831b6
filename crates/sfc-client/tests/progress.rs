//! The progress bar: drawn on standard error when it is a terminal, never with `--quiet`,
//! never when standard error is a pipe. A terminal is given to the real binary with
//! util-linux `script`, which runs a command under a pseudo-terminal.
#![cfg(test)]

mod common;

use std::process::Command;

use common::{make_file, run_client, tempdir, write_transfer_info, Behaviour, Double};

/// Whether util-linux `script` is here. CI installs it (.ci/run): there, its absence
/// fails the test instead of skipping it.
fn script_available() -> bool {
    if Command::new("script").arg("--version").output().is_ok() {
        return true;
    }
    assert!(
        std::env::var_os("CI").is_none(),
        "util-linux `script` is not installed: the progress-bar tests cannot run"
    );
    eprintln!("skipped: util-linux `script` is not installed");
    false
}

/// Runs the client under a pseudo-terminal; returns exit code and everything it drew.
fn run_under_terminal(dir: &std::path::Path, args: &str) -> Option<(i32, String)> {
    if !script_available() {
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
    // A server that reads at a measured pace, so that the bar is drawn while data moves.
    let double = Double::start(Behaviour {
        read_pause: Some(std::time::Duration::from_millis(3)),
        ..Behaviour::default()
    });
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

/// Runs `command` (a shell command line) under a pseudo-terminal of `columns` columns;
/// returns exit code and everything drawn.
fn run_in_terminal_of(dir: &std::path::Path, columns: u16, command: &str) -> Option<(i32, String)> {
    if !script_available() {
        return None;
    }
    let line = format!("stty cols {columns} rows 24; {command}");
    let output = Command::new("script")
        .args(["-qefc", &line, "/dev/null"])
        .current_dir(dir)
        .env("TERM", "xterm")
        .output()
        .expect("run script");
    let code = output.status.code().unwrap_or(-1);
    Some((code, String::from_utf8_lossy(&output.stdout).into_owned()))
}

/// The screen output as the lines a terminal shows, without escape sequences.
fn drawn_lines(screen: &str) -> Vec<String> {
    let mut lines = Vec::new();
    let mut current = String::new();
    let mut chars = screen.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\u{1b}' => {
                // CSI: ESC [ parameters final-letter.
                if chars.peek() == Some(&'[') {
                    chars.next();
                    for c in chars.by_ref() {
                        if c.is_ascii_alphabetic() {
                            break;
                        }
                    }
                }
            }
            '\r' | '\n' => lines.push(std::mem::take(&mut current)),
            c => current.push(c),
        }
    }
    lines.push(current);
    lines
}

/// Issue 13 item 13: in a terminal of 60 columns no line of the bar wraps; the bar says
/// "file k of n" and the name, says when it waits for the server's checksum, and never
/// shows "ETA 0s".
#[test]
fn the_bar_fits_a_narrow_terminal_and_says_what_it_waits_for() {
    let double = Double::start(Behaviour {
        final_reply_delay: Some(std::time::Duration::from_millis(1200)),
        ..Behaviour::default()
    });
    let dir = tempdir();
    write_transfer_info(dir.path(), &double.address(), "narrow", "one.bin");
    make_file(&dir.path().join("one.bin"), 1000, 1);
    make_file(
        &dir.path().join("second-file-with-a-long-name.bin"),
        16 << 20,
        2,
    );
    let command = format!(
        "exec {} --timeout 20 one.bin second-file-with-a-long-name.bin",
        env!("CARGO_BIN_EXE_sfc-client")
    );
    let Some((code, screen)) = run_in_terminal_of(dir.path(), 60, &command) else {
        return;
    };
    assert_eq!(code, 0, "{screen}");
    // The bar's lines (results and messages are ordinary lines and may wrap).
    for line in drawn_lines(&screen)
        .iter()
        .filter(|l| l.contains(" of 2: "))
    {
        assert!(
            line.chars().count() <= 60,
            "{} columns: {line:?}",
            line.chars().count()
        );
    }
    assert!(screen.contains("file 2 of 2"), "{screen}");
    assert!(screen.contains("second-file"), "{screen}");
    assert!(
        screen.contains("waiting for the server's checksum"),
        "{screen}"
    );
    assert!(!screen.contains("ETA 0s"), "{screen}");
}

/// Issue 13 item 13: Ctrl-C clears the bar and leaves one line saying which file was cut
/// off and where; the exit code is 130, as shells report an interrupted program.
#[test]
fn ctrl_c_clears_the_bar_with_one_line() {
    let double = Double::start(Behaviour {
        stall_after_content: Some(1 << 20),
        ..Behaviour::default()
    });
    let dir = tempdir();
    write_transfer_info(dir.path(), &double.address(), "impatient", "big.bin");
    make_file(&dir.path().join("big.bin"), 16 << 20, 3);
    let pid_file = dir.path().join("pid");
    let command = format!(
        "echo $$ > {}; exec {} --timeout 20",
        pid_file.display(),
        env!("CARGO_BIN_EXE_sfc-client")
    );
    let dir_path = dir.path().to_owned();
    let runner = std::thread::spawn(move || run_in_terminal_of(&dir_path, 100, &command));
    // Wait until the upload is under way and stuck (not a timing assertion: only a
    // wait), then for the bar to be drawn.
    let mut waited = 0;
    while !double.state().stalled && waited < 600 {
        std::thread::sleep(std::time::Duration::from_millis(50));
        waited += 1;
    }
    std::thread::sleep(std::time::Duration::from_millis(600));
    let pid = std::fs::read_to_string(&pid_file).unwrap_or_default();
    if pid.trim().is_empty() {
        // `script` is missing: nothing ran.
        assert!(runner.join().unwrap().is_none());
        return;
    }
    let killed = Command::new("kill")
        .args(["-INT", pid.trim()])
        .status()
        .unwrap();
    assert!(killed.success(), "{:?}", runner.join().unwrap());
    let (code, screen) = runner.join().unwrap().unwrap();
    assert_eq!(code, 130, "{screen}");
    let lines: Vec<String> = drawn_lines(&screen)
        .into_iter()
        .filter(|l| !l.trim().is_empty())
        .collect();
    let last = lines.last().cloned().unwrap_or_default();
    assert!(last.starts_with("interrupted: big.bin at "), "{screen}");
    assert!(last.contains("not stored"), "{screen}");
}
