//! `compare`: two builds of sfc-server and sfc-client measured alternately on the same
//! host, the method of BENCHMARKS.md's "alternating builds" comparisons.
//!
//! A difference of a few hundredths of a second of CPU per GiB drowns in this kind of
//! machine's drift between two separate runs, so the builds take turns: per round, each
//! build runs (a) once (its own server on a tmpfs data folder, a warm-up upload, then
//! `--runs` measured uploads), the order alternating between rounds; the figures of all
//! rounds are pooled per build. The build under test is `--bin-dir` (or the one beside
//! sfc-bench), the other `--against`.

use crate::context::RunContext;
use crate::procs::Bins;
use crate::report::{Row, Spread};
use anyhow::{Context, Result};
use serde_json::json;

/// The pooled figures of one build.
#[derive(Debug, Default)]
struct Pooled {
    server_cpu: Vec<f64>,
    client_cpu: Vec<f64>,
    mbps: Vec<f64>,
    server_peak_over_idle_mib: Vec<f64>,
}

/// Runs the comparison; rows "compare" in the results table, one per build and figure.
pub fn run_compare(ctx: &mut RunContext) -> Result<()> {
    let against_dir = ctx
        .cli
        .against
        .clone()
        .context("compare needs --against DIR (the other build's sfc-server and sfc-client)")?;
    let against = Bins::in_dir(&against_dir)?;
    let mut builds = [
        (
            ctx.bins.server.display().to_string(),
            ctx.bins.clone(),
            Pooled::default(),
        ),
        (
            against.server.display().to_string(),
            against,
            Pooled::default(),
        ),
    ];
    eprintln!(
        "compare: {} rounds of {} uploads per build ...",
        ctx.cli.rounds, ctx.cli.runs
    );
    let source = ctx.source()?;
    let work = ctx.shm.join("compare");
    for round in 0..ctx.cli.rounds {
        // A over B, then B over A: neither build always runs on a host just warmed up.
        let mut order: Vec<_> = builds.iter_mut().collect();
        if round % 2 == 1 {
            order.reverse();
        }
        for (_, bins, figures) in order {
            let result = ctx.upload_with(bins, &source, &work, false, None, false)?;
            figures.server_cpu.extend(&result.server_cpu);
            figures.client_cpu.extend(&result.client_cpu);
            figures.mbps.extend(&result.mbps);
            figures.server_peak_over_idle_mib.extend(
                result
                    .server_peak_kb
                    .iter()
                    .map(|&peak| peak.saturating_sub(result.server_idle_kb) as f64 / 1024.0),
            );
        }
    }
    let mut json_builds = Vec::new();
    for (label, _, figures) in &builds {
        let server = Spread::of(&figures.server_cpu);
        let client = Spread::of(&figures.client_cpu);
        let rate = Spread::of(&figures.mbps);
        let peak = Spread::of(&figures.server_peak_over_idle_mib);
        ctx.rows.push(Row {
            id: "compare".into(),
            what: format!(
                "{label}: {} uploads of {}",
                server.n,
                crate::context::size_label(ctx.cli.size)
            ),
            ours: format!(
                "server CPU {} s; client CPU {} s; {} MB/s; server peak RSS idle + {} MiB",
                server.show(3),
                client.show(3),
                rate.show(0),
                peak.show(1),
            ),
            reference: "—".into(),
            ratio: None,
            target: "(reported)".into(),
            met: None,
        });
        json_builds.push(json!({
            "server": label, "server_cpu_s": server.json(), "client_cpu_s": client.json(),
            "mbps": rate.json(), "server_peak_over_idle_mib": peak.json(),
            "server_cpu_s_per_upload": figures.server_cpu,
        }));
    }
    ctx.notes.push(format!(
        "(compare) {} rounds, builds alternating (the first build first in even rounds); per round and build one server on tmpfs, a warm-up upload and {} measured uploads; median (min–max) of all measured uploads per build; CPU from /proc/PID/stat (server) and the client's rusage",
        ctx.cli.rounds, ctx.cli.runs
    ));
    ctx.json.insert(
        "compare".into(),
        json!({"rounds": ctx.cli.rounds, "runs_per_round": ctx.cli.runs, "builds": json_builds}),
    );
    Ok(())
}
