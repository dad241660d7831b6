//! What the user sees: messages at three levels and an upload progress bar.
//!
//! - results (`info`) go to standard output unless `--quiet`;
//! - warnings and the required `server responded with an error` go to standard error
//!   (warnings are silenced by `--quiet`, errors never);
//! - `--verbose` adds each request and reply (code and sizes) on standard error; `-vv`
//!   adds every file packet;
//! - the progress bar ([`crate::bar`]: file k of n, bytes, rate, time left; then
//!   "waiting for the server's checksum") is drawn on standard error only when it is a
//!   terminal and `--quiet` is not given.

use std::io::IsTerminal;
use std::sync::{Arc, Mutex, PoisonError};

use crate::bar::BarState;

/// How much to say.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Verbosity {
    /// Errors only.
    Quiet,
    /// Results, warnings, errors.
    Normal,
    /// Also each request and reply.
    Verbose,
    /// Also every file packet.
    Trace,
}

/// The one place that writes to the terminal. Cheap to clone; shared by all parts.
#[derive(Clone, Debug)]
pub struct Reporter {
    verbosity: Verbosity,
    bars: bool,
    /// Results on standard error too (`--json` keeps standard output for JSON).
    info_on_stderr: bool,
    bar: Arc<Mutex<BarState>>,
    /// What a Ctrl-C now would leave unfinished, said by [`Reporter::interrupted`].
    interrupt_note: Arc<Mutex<Option<String>>>,
}

impl Reporter {
    /// A reporter; progress bars only if `progress` and standard error is a terminal.
    pub fn new(verbosity: Verbosity, progress: bool) -> Self {
        Reporter {
            verbosity,
            bars: progress && verbosity != Verbosity::Quiet && std::io::stderr().is_terminal(),
            info_on_stderr: false,
            bar: Arc::new(Mutex::new(BarState::default())),
            interrupt_note: Arc::new(Mutex::new(None)),
        }
    }

    /// The same reporter, with results on standard error (standard output is kept for
    /// machine-readable output).
    pub fn with_results_on_stderr(mut self) -> Self {
        self.info_on_stderr = true;
        self
    }

    /// A reporter that prints nothing but errors and draws no bar (for library users).
    pub fn quiet() -> Self {
        Self::new(Verbosity::Quiet, false)
    }

    /// The verbosity in force.
    pub fn verbosity(&self) -> Verbosity {
        self.verbosity
    }

    /// True when messages at `level` are shown.
    pub fn shows(&self, level: Verbosity) -> bool {
        self.verbosity >= level
    }

    fn state(&self) -> std::sync::MutexGuard<'_, BarState> {
        self.bar.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn with_bar_suspended(&self, print: impl FnOnce()) {
        let guard = self.state();
        match guard.bar() {
            Some(bar) => bar.suspend(print),
            None => print(),
        }
    }

    /// A result line on standard output (not with `--quiet`).
    pub fn info(&self, message: impl AsRef<str>) {
        if self.shows(Verbosity::Normal) {
            if self.info_on_stderr {
                self.with_bar_suspended(|| say(Stream::Err, message.as_ref()));
            } else {
                self.with_bar_suspended(|| say(Stream::Out, message.as_ref()));
            }
        }
    }

    /// A warning on standard error (not with `--quiet`).
    pub fn warn(&self, message: impl AsRef<str>) {
        if self.shows(Verbosity::Normal) {
            self.with_bar_suspended(|| say(Stream::Err, &format!("warning: {}", message.as_ref())));
        }
    }

    /// An error line on standard error, always shown.
    pub fn error(&self, message: impl AsRef<str>) {
        self.with_bar_suspended(|| say(Stream::Err, message.as_ref()));
    }

    /// A detail line on standard error when the verbosity is at least `level`.
    pub fn detail(&self, level: Verbosity, message: impl AsRef<str>) {
        if self.shows(level) {
            self.with_bar_suspended(|| say(Stream::Err, message.as_ref()));
        }
    }

    /// Notes that the next file is number `index` (from 1) of `count`, for the bar.
    pub fn set_file(&self, index: usize, count: usize) {
        self.state().set_file(index, count);
    }

    /// Starts a progress bar of `total` bytes labelled `label` (no-op without bars).
    pub fn start_bar(&self, total: u64, label: &str) {
        if self.bars {
            self.state().start(total, label);
        }
    }

    /// Sets the bar's position in bytes.
    pub fn set_progress(&self, position: u64) {
        if let Some(bar) = self.state().bar() {
            bar.set_position(position);
        }
    }

    /// All bytes of the file are out; the server's checksum is awaited.
    pub fn waiting_for_checksum(&self) {
        self.state().waiting();
    }

    /// Removes the bar.
    pub fn finish_bar(&self) {
        self.state().finish();
    }

    /// Sets (or with `None` clears) what a Ctrl-C from now on would leave unfinished
    /// outside of a file's upload, for [`Reporter::interrupted`] to say.
    pub fn set_interrupt_note(&self, note: Option<String>) {
        *self
            .interrupt_note
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = note;
    }

    /// Ctrl-C: removes the bar and says, on one line, which file was cut off where, or
    /// what else was left unfinished.
    pub fn interrupted(&self) {
        let line = self.state().interrupt();
        let note = self
            .interrupt_note
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        let line = match (line, note) {
            (Some(line), _) => line,
            (None, Some(note)) => format!("interrupted: {note}"),
            (None, None) => "interrupted".to_owned(),
        };
        say(Stream::Err, &line);
    }
}

/// Where a line goes.
#[derive(Debug, Clone, Copy)]
pub enum Stream {
    Out,
    Err,
}

/// Writes a line, ignoring a failure: standard output may be a pipe whose reader has
/// gone (`sfc-client a b c | head -1`), and the batch must go on and end with its own
/// exit code rather than panic (Rust ignores SIGPIPE, so `println!` would panic there).
pub fn say(to: Stream, line: &str) {
    use std::io::Write;
    let _ = match to {
        Stream::Out => writeln!(std::io::stdout().lock(), "{line}"),
        Stream::Err => writeln!(std::io::stderr().lock(), "{line}"),
    };
}

/// Human-readable byte count: `512 B`, `1.5 KiB`, `50.0 MiB`.
pub fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = n as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    match (unit, UNITS.get(unit)) {
        (0, _) => format!("{n} B"),
        (_, Some(u)) => format!("{value:.1} {u}"),
        (_, None) => format!("{n} B"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bytes_are_human_readable() {
        assert_eq!(human_bytes(0), "0 B");
        assert_eq!(human_bytes(1023), "1023 B");
        assert_eq!(human_bytes(1536), "1.5 KiB");
        assert_eq!(human_bytes(50 << 20), "50.0 MiB");
    }

    #[test]
    fn quiet_reporter_draws_no_bar() {
        let r = Reporter::quiet();
        r.start_bar(10, "x");
        r.set_progress(5);
        r.finish_bar();
        assert!(!r.shows(Verbosity::Normal));
        assert!(Reporter::new(Verbosity::Trace, false).shows(Verbosity::Verbose));
    }
}
