//! `sfc-client`: the command line ([`sfc_client::Cli`]) over the `sfc_client` library.

use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::Parser;
use sfc_client::{exit, report_error, run, Cli, ClientError, Config, Reporter, Session, Summary};

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

fn main() -> ExitCode {
    let cli = Cli::parse();
    let mut reporter = Reporter::new(cli.verbosity(), true);
    if cli.json {
        reporter = reporter.with_results_on_stderr();
    }
    let on_interrupt = reporter.clone();
    // Ctrl-C: the bar is cleared and one line says where the run stopped. If the handler
    // cannot be installed, Ctrl-C still ends the run (the default), just less tidily.
    let _ = ctrlc::set_handler(move || {
        // First wait for a save of the identity in progress, and keep one from starting:
        // an exit in its middle could leave me.info, priv.key and me.server disagreeing.
        // The handler runs on ctrlc's own thread, so the save it waits for goes on.
        let no_save_running = Session::hold_identity_saves_within(IDENTITY_SAVE_WAIT);
        on_interrupt.interrupted();
        if no_save_running.is_none() {
            on_interrupt.error(save_cut_short());
        }
        std::process::exit(i32::from(exit::INTERRUPTED));
    });
    let started = Instant::now();
    let config = match Config::load(&cli) {
        Ok(config) => config,
        Err(e) => {
            let error = ClientError::from(e);
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
            println!("{}", file.to_json());
        }
        println!("{}", summary.total_json(started.elapsed()));
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
