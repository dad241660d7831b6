//! `sfc-bench`: measures the release `sfc-server` and `sfc-client` on this machine, each
//! figure beside a reference measured with a system tool in the same run (see
//! BENCHMARKS.md at the repository root).
//!
//! ```text
//! cargo run --release -p sfc-bench -- all      # builds the release binaries, runs (a)–(f)
//! ```
//!
//! Scenarios (letters of the performance issue): `tmpfs` (a: 1 GiB upload, data folder on
//! /dev/shm, against `openssl speed -evp aes-256-cbc`; c: peak RSS of both sides), `disk`
//! (b: the same with the data folder on disk, against `dd conv=fsync`), `flows` (d: 1,000
//! concurrent whole flows), `idle` (e: 10,000 idle connections and a normal client), `micro`
//! (f: AES decryption and cksum against `openssl speed -decrypt` and `cksum`), `s3` (g: the
//! upload of a with the files in S3, a SeaweedFS on this machine, beside a run of a; not
//! part of `all`, it needs `weed`), `balanced` (h: the flows of (d) through HAProxy to
//! three nodes, docs/DEPLOY.md's deployment; not part of `all`, it needs `haproxy`),
//! `floors` (what the kernel and the ciphers alone cost per GiB here, the floors of (a)'s
//! CPU per thread).
//!
//! `--admin` starts the servers with their admin HTTP listener on (and asks it for
//! /healthz and /metrics once); `--syscalls` counts each side's system calls in one more
//! upload of (a) and (b) with strace; the server's CPU per thread is always reported.
//!
//! The tool exits non-zero when a run fails (a transfer, a flow, a child process), never
//! because a figure misses its target.

mod admin;
mod balanced;
mod cli;
mod compare;
mod context;
mod floors;
mod flows;
mod idle;
mod micro;
mod procs;
mod reference;
mod report;
mod syscalls;
mod threads;
mod upload;
mod weed;

use anyhow::Result;
use clap::Parser;
use cli::{Cli, Scenario};
use context::RunContext;
use std::process::ExitCode;
use std::time::Instant;

fn main() -> ExitCode {
    let cli = Cli::parse();
    match real_main(cli) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(error) => {
            eprintln!("sfc-bench: {error:#}");
            ExitCode::from(2)
        }
    }
}

/// Runs the chosen scenarios and prints the report; `Ok(false)` when a run failed.
fn real_main(cli: Cli) -> Result<bool> {
    if cfg!(debug_assertions) {
        eprintln!("warning: sfc-bench is a debug build; run it with cargo run --release");
    }
    if !cli.no_build && cli.bin_dir.is_none() {
        context::build_binaries()?;
    }
    let scenario = cli.scenario;
    let mut ctx = RunContext::new(cli)?;
    let mut machine = reference::machine();
    if ctx.cli.admin {
        machine.push((
            "admin listener".into(),
            "on (--admin-listen 127.0.0.1:0) in every server of (a)–(e) and (g), each asked for /healthz and /metrics once after start-up".into(),
        ));
    }
    let started = Instant::now();
    run_scenarios(&mut ctx, scenario);
    ctx.remove_source();
    ctx.print_report(&machine, started);
    ctx.write_json(&machine)?;
    Ok(ctx.failures.is_empty())
}

/// Runs `scenario` (every one of `all` in turn); a failed scenario is recorded and the
/// others still run.
fn run_scenarios(ctx: &mut RunContext, scenario: Scenario) {
    let all = scenario == Scenario::All;
    if all || scenario == Scenario::Micro {
        step(ctx, "micro", &micro::run_micro);
    }
    if all || scenario == Scenario::Tmpfs {
        step(ctx, "tmpfs", &upload::run_tmpfs);
    }
    if all || scenario == Scenario::Floors {
        step(ctx, "floors", &floors::run_floors);
    }
    if all || scenario == Scenario::Disk {
        step(ctx, "disk", &upload::run_disk);
    }
    if all || scenario == Scenario::Flows {
        step(ctx, "flows", &|c| flows::run_flows(c, false));
        if ctx.cli.flows_on_disk || all {
            step(ctx, "flows on disk", &|c| flows::run_flows(c, true));
        }
    }
    if all || scenario == Scenario::Idle {
        step(ctx, "idle", &idle::run_idle);
    }
    if scenario == Scenario::S3 {
        step(ctx, "s3", &upload::run_s3);
    }
    if scenario == Scenario::Balanced {
        step(ctx, "balanced", &balanced::run_balanced);
    }
    if scenario == Scenario::Compare {
        step(ctx, "compare", &compare::run_compare);
    }
}

/// Runs one scenario, recording its failure instead of stopping.
fn step(ctx: &mut RunContext, name: &str, run: &dyn Fn(&mut RunContext) -> Result<()>) {
    if let Err(error) = run(ctx) {
        eprintln!("  {name} FAILED: {error:#}");
        ctx.failures.push(format!("{name}: {error:#}"));
    }
}
