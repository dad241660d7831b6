//! `sfc-server`: serve, or show what the database holds. See `sfc-server --help`.

use clap::Parser;
use sfc_server::admin;
use sfc_server::cli::{Cli, Command};
use std::io::IsTerminal;
use std::process::ExitCode;
use tracing_subscriber::EnvFilter;

fn init_logging(level: Option<&str>) {
    let filter = match level {
        Some(level) => EnvFilter::try_new(level).ok(),
        None => EnvFilter::try_from_default_env().ok(),
    }
    .unwrap_or_else(|| EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .with_target(false)
        .init();
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(cli.log_level.as_deref());
    let result = match &cli.command {
        Some(Command::Clients { json }) => admin::clients_in(&cli.data_dir, &cli.database_choice())
            .and_then(|views| admin::render_clients(&views, *json))
            .map(|text| print!("{text}")),
        Some(Command::Files { json }) => admin::files_in_store(
            &cli.data_dir,
            &cli.database_choice(),
            &cli.store.clone().unwrap_or_default(),
        )
        .and_then(|views| admin::render_files(&views, *json))
        .map(|text| print!("{text}")),
        None => serve(&cli),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            tracing::error!("{error:#}");
            eprintln!("sfc-server: {error:#}");
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
