//! `sfc-client`: the command line ([`sfc_client::cli`]) over the `sfc_client` library.

use std::process::ExitCode;

use clap::Parser;
use sfc_client::{exit, run, Cli, Config, Reporter};

fn main() -> ExitCode {
    let cli = Cli::parse();
    let reporter = Reporter::new(cli.verbosity(), true);
    let result = Config::load(&cli)
        .map_err(sfc_client::ClientError::from)
        .and_then(|config| run(&config, &reporter));
    match result {
        Ok(summary) => {
            if summary.stored.len() > 1 {
                reporter.info(format!("all {} files stored", summary.stored.len()));
            }
            ExitCode::from(exit::OK)
        }
        Err(e) => {
            let text = e.to_string();
            if text.starts_with("fatal:") {
                reporter.error(text);
            } else {
                reporter.error(format!("error: {text}"));
            }
            ExitCode::from(e.exit_code())
        }
    }
}
