//! `sfc-server`: serve, or show what the database holds. See `sfc-server --help`.

use clap::Parser;
use sfc_server::admin;
use sfc_server::cli::{log_filter, Cli, Command};
use std::io::IsTerminal;
use std::process::ExitCode;
use tracing_subscriber::EnvFilter;

/// Exit code for a command line that cannot be used (clap's own errors use it too).
const USAGE: u8 = 2;

fn init_logging(filter: &str) {
    let filter = EnvFilter::try_new(filter).unwrap_or_else(|_| EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .with_target(false)
        .init();
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // The admin views print to stdout; their log shows only what went wrong.
    let default = if cli.command.is_some() {
        "warn"
    } else {
        "info"
    };
    let rust_log = std::env::var("RUST_LOG").ok();
    match log_filter(cli.log_level.as_deref(), rust_log.as_deref(), default) {
        Ok(filter) => init_logging(&filter),
        Err(message) => {
            eprintln!("sfc-server: {message}");
            return ExitCode::from(USAGE);
        }
    }
    let result = match &cli.command {
        Some(Command::Clients { json }) => admin::clients_in_store(
            &cli.data_dir,
            &cli.database_choice(),
            &cli.store.clone().unwrap_or_default(),
        )
        .and_then(|views| admin::render_clients(&views, *json))
        .map(|text| print!("{text}")),
        Some(Command::Files { json }) => admin::files_in_store(
            &cli.data_dir,
            &cli.database_choice(),
            &cli.store.clone().unwrap_or_default(),
        )
        .and_then(|views| admin::render_files(&views, *json))
        .map(|text| print!("{text}")),
        Some(Command::TlsInit { names, force }) => {
            sfc_server::tls::tls_init(&cli.data_dir, names, *force)
                .map(|made| print!("{}", made.report()))
        }
        None => serve(&cli),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        // Once, on stderr where the log goes too.
        Err(error) => {
            eprintln!("sfc-server: error: {error:#}");
            ExitCode::FAILURE
        }
    }
}

fn serve(cli: &Cli) -> anyhow::Result<()> {
    let config = cli.server_config()?;
    sfc_server::raise_fd_limit(config.max_connections);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("sfc-server-worker")
        .build()?;
    runtime.block_on(async {
        let signals = sfc_server::shutdown_signal()?;
        sfc_server::run(config, signals).await
    })?;
    // Blocking tasks still running after the grace period are not waited for long.
    runtime.shutdown_timeout(std::time::Duration::from_secs(2));
    Ok(())
}
