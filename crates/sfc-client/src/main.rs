//! `sfc-client`: the command line ([`sfc_client::Cli`]) over the `sfc_client` library.

use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use clap::Parser;
use sfc_client::{
    exit, report_error, run, say, Cli, ClientError, Config, Reporter, Session, Stream, Summary,
};

/// How long Ctrl-C waits for an identity save in progress. A save takes milliseconds; one
/// still running after this is hung (an fsync on an unreachable network mount, say), and
/// waiting on would leave Ctrl-C, and every later one, doing nothing.
const IDENTITY_SAVE_WAIT: Duration = Duration::from_secs(10);

/// Said when Ctrl-C ends the run without the save it waited for.
fn save_cut_short() -> String {
    format!(
        "the identity save in progress did not finish within {} s (a hung disk or network \
         mount?); the run ends without it, so me.info, priv.key and me.pending (in --dir, or in \
         servers/<address>/ below it) may not be written in full: once the folder responds \
         again, check that me.info has its three lines (name, client ID, key) and priv.key the \
         same key, and whether me.pending names that client ID (a registration the next run \
         finishes)",
        IDENTITY_SAVE_WAIT.as_secs()
    )
}

/// Said when a second Ctrl-C ends the run while the first waits for a save.
fn forced() -> String {
    "a second Ctrl-C: the run ends without waiting for the identity save in progress, if \
     there is one; me.info, priv.key and me.pending may not be written in full: check that \
     me.info has its three lines (name, client ID, key) and priv.key the same key"
        .to_owned()
}

/// Taken by whichever Ctrl-C ends the run, for its lines and the exit: the other never
/// gets it (the process ends first), so their lines cannot mix.
static ENDING: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// One Ctrl-C: the first runs `first` on a thread of its own (the signal handler's
/// thread stays free for the next one); any later one runs `again` at once, so that a
/// second Ctrl-C is never stuck behind the first's wait.
fn on_ctrl_c(seen: &AtomicBool, first: impl FnOnce() + Send + 'static, again: impl FnOnce()) {
    if seen.swap(true, Ordering::SeqCst) {
        again();
    } else if std::thread::Builder::new()
        .name("ctrl-c".into())
        .spawn(first)
        .is_err()
    {
        // No thread to wait on: end as a second Ctrl-C would.
        again();
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let mut reporter = Reporter::new(cli.verbosity(), true);
    if cli.json {
        reporter = reporter.with_results_on_stderr();
    }
    let on_interrupt = reporter.clone();
    // Ctrl-C: the bar is cleared and one line says where the run stopped. If the handler
    // cannot be installed, Ctrl-C still ends the run (the default), just less tidily.
    let seen = AtomicBool::new(false);
    let _ = ctrlc::set_handler(move || {
        let reporter = on_interrupt.clone();
        let first = move || {
            // First wait for a save of the identity in progress, and keep one from
            // starting: an exit in its middle could leave me.info, priv.key and
            // me.server disagreeing. Another thread than the run's: the save goes on.
            let no_save_running = Session::hold_identity_saves_within(IDENTITY_SAVE_WAIT);
            let _ending = ENDING.lock();
            reporter.interrupted();
            if no_save_running.is_none() {
                reporter.error(save_cut_short());
            }
            std::process::exit(i32::from(exit::INTERRUPTED));
        };
        let again = || {
            // The first is printing its lines and exiting (or stuck writing them: a
            // paused terminal): end now, without lines of our own.
            let Ok(_ending) = ENDING.try_lock() else {
                std::process::exit(i32::from(exit::INTERRUPTED));
            };
            on_interrupt.interrupted();
            on_interrupt.error(forced());
            std::process::exit(i32::from(exit::INTERRUPTED));
        };
        on_ctrl_c(&seen, first, again);
    });
    let started = Instant::now();
    let config = match Config::load(&cli) {
        Ok(config) => config,
        Err(e) => {
            let error = ClientError::from(e);
            if cli.json {
                // Scripts get their line whatever went wrong.
                let total = Summary::refused_json(&error, started.elapsed());
                say(Stream::Out, &total.to_string());
            }
            report_error(&reporter, &error);
            return ExitCode::from(error.exit_code());
        }
    };
    let (summary, error) = match run(&config, &reporter) {
        Ok(summary) => (summary, None),
        Err(error) => (Summary::not_tried(&config.files, &error), Some(error)),
    };
    if cli.json {
        for file in &summary.files {
            say(Stream::Out, &file.to_json().to_string());
        }
        say(
            Stream::Out,
            &summary.total_json(started.elapsed()).to_string(),
        );
    }
    if let Some(error) = error {
        report_error(&reporter, &error);
        return ExitCode::from(error.exit_code());
    }
    for line in summary.human() {
        if summary.all_stored() {
            reporter.info(line);
        } else {
            reporter.error(line);
        }
    }
    ExitCode::from(summary.exit_code())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc;

    /// The first Ctrl-C's wait runs elsewhere; a second one is answered while it still
    /// waits.
    #[test]
    fn a_second_ctrl_c_does_not_wait_for_the_first() {
        let seen = AtomicBool::new(false);
        let (release, released) = mpsc::channel::<()>();
        let (done, first_done) = mpsc::channel();
        let first = move || {
            // Bounded: run where it should not be, it fails the test below, not hangs it.
            let _ = released.recv_timeout(std::time::Duration::from_secs(5));
            let _ = done.send(());
        };
        let mut again_ran = false;
        on_ctrl_c(&seen, first, || panic!("the first Ctrl-C is not a second"));
        on_ctrl_c(
            &seen,
            || panic!("a first Ctrl-C again"),
            || again_ran = true,
        );
        assert!(again_ran);
        assert!(first_done.try_recv().is_err(), "the first is still waiting");
        release.send(()).unwrap();
        first_done
            .recv_timeout(std::time::Duration::from_secs(10))
            .unwrap();
    }
}
