//! CPU time per server thread during an upload: `/proc/PID/task/TID/{stat,comm}` read
//! just before and just after the run, the difference grouped by thread name.
//!
//! A thread that ends during the run is lost (its last CPU reading died with it): only
//! counted. A thread that starts during the run counts whole.

use crate::procs::tasks;
use crate::report::Spread;
use serde_json::json;
use std::collections::BTreeMap;

/// One thread's reading.
#[derive(Debug, Clone, PartialEq)]
pub struct ThreadSample {
    /// Thread ID.
    pub tid: u32,
    /// `comm` (at most 15 bytes: the server's tokio threads, workers and blocking pool
    /// alike, are `sfc-server-work`).
    pub name: String,
    /// CPU seconds (user + system) so far.
    pub cpu: f64,
}

/// Reads every thread of `pid`.
pub fn sample(pid: u32) -> Vec<ThreadSample> {
    tasks(pid)
        .into_iter()
        .map(|(tid, dir, cpu)| {
            let name = std::fs::read_to_string(dir.join("comm")).unwrap_or_default();
            ThreadSample {
                tid,
                name: name.trim_end().to_string(),
                cpu,
            }
        })
        .collect()
}

/// CPU seconds of one group of threads over one run.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Group {
    /// Threads in the group at the end of the run.
    pub threads: usize,
    /// Their CPU seconds in the run.
    pub cpu: f64,
    /// The CPU seconds of the busiest of them.
    pub busiest: f64,
}

/// CPU seconds per group of threads over one run.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ThreadGroups {
    /// Label → group, in label order.
    pub groups: BTreeMap<String, Group>,
    /// Threads seen before the run and gone after it (their CPU in the run is lost).
    pub lost: usize,
}

/// The CPU each group of threads of process `pid` used between `before` and `after`:
/// grouped by name, the main thread (TID = PID) apart. tokio names its workers and its
/// blocking pool alike, and which pool thread runs a worker is decided by a race between
/// the threads it starts, so the two cannot be told apart from outside the process.
pub fn delta(pid: u32, before: &[ThreadSample], after: &[ThreadSample]) -> ThreadGroups {
    let mut result = ThreadGroups::default();
    for thread in after {
        let earlier = before
            .iter()
            .find(|b| b.tid == thread.tid)
            .map_or(0.0, |b| b.cpu);
        let label = if thread.tid == pid {
            format!("main ({})", thread.name)
        } else {
            thread.name.clone()
        };
        let cpu = (thread.cpu - earlier).max(0.0);
        let group = result.groups.entry(label).or_default();
        group.threads += 1;
        group.cpu += cpu;
        group.busiest = group.busiest.max(cpu);
    }
    result.lost = before
        .iter()
        .filter(|b| !after.iter().any(|a| a.tid == b.tid))
        .count();
    result
}

/// `label ×threads CPU s (busiest thread s)` per group over several runs, the busiest
/// group first (median CPU).
pub fn summary(runs: &[ThreadGroups]) -> String {
    let mut groups: Vec<(String, usize, Spread, Spread)> = labels(runs)
        .into_iter()
        .map(|label| {
            let pick = |part: fn(&Group) -> f64| {
                let values: Vec<f64> = runs
                    .iter()
                    .map(|r| r.groups.get(&label).map_or(0.0, part))
                    .collect();
                Spread::of(&values)
            };
            let threads = runs
                .iter()
                .filter_map(|r| r.groups.get(&label).map(|g| g.threads))
                .max()
                .unwrap_or(0);
            (label.clone(), threads, pick(|g| g.cpu), pick(|g| g.busiest))
        })
        .collect();
    groups.sort_by(|a, b| b.2.median.total_cmp(&a.2.median));
    let parts: Vec<String> = groups
        .iter()
        .map(|(label, threads, cpu, busiest)| {
            if *threads > 1 {
                format!(
                    "{label} ×{threads} {} (busiest thread {})",
                    cpu.show(2),
                    busiest.show(2)
                )
            } else {
                format!("{label} {}", cpu.show(2))
            }
        })
        .collect();
    let lost: usize = runs.iter().map(|r| r.lost).sum();
    format!(
        "{}; threads that ended during a run (their CPU lost): {lost}",
        parts.join(", ")
    )
}

/// Every label seen in `runs`.
fn labels(runs: &[ThreadGroups]) -> Vec<String> {
    let mut labels: Vec<String> = runs.iter().flat_map(|r| r.groups.keys().cloned()).collect();
    labels.sort();
    labels.dedup();
    labels
}

/// Per run: `{"groups": {label: {"threads": n, "cpu_s": s, "busiest_thread_cpu_s": s}},
/// "lost": n}`.
pub fn json(runs: &[ThreadGroups]) -> serde_json::Value {
    runs.iter()
        .map(|r| {
            let groups: serde_json::Map<String, serde_json::Value> = r
                .groups
                .iter()
                .map(|(label, g)| {
                    let figures = json!({
                        "threads": g.threads, "cpu_s": g.cpu, "busiest_thread_cpu_s": g.busiest,
                    });
                    (label.clone(), figures)
                })
                .collect();
            json!({"groups": groups, "lost": r.lost})
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::procs::stat_cpu_secs;

    /// An sfc-server (PID 14571) after start-up (`comm :: stat` of each thread)...
    const BEFORE: &str = "\
sfc-server :: 14571 (sfc-server) S 1 14565 29572 0 -1 4194304 772 0 0 0 0 0 0 0 20 0 6 0 1337475 382177280 4807 18446744073709551615 94754757188928 94754778996048 140726828519520 0 0 0 0 4100 17474 1 0 0 17 0 0 0 0 0 0 94754780263432 94754780302408 94754954420224 140726828526144 140726828526247 140726828526247 140726828527565 0
sfc-server-work :: 14573 (sfc-server-work) S 1 14565 29572 0 -1 4194368 11 0 0 0 0 0 0 0 20 0 6 0 1337475 382177280 4807 18446744073709551615 94754757188928 94754778996048 140726828519520 0 0 0 0 4100 17474 1 0 0 -1 1 0 0 0 0 0 94754780263432 94754780302408 94754954420224 140726828526144 140726828526247 140726828526247 140726828527565 0
sfc-server-work :: 14574 (sfc-server-work) S 1 14565 29572 0 -1 4194368 3 0 0 0 0 0 0 0 20 0 6 0 1337475 382177280 4807 18446744073709551615 94754757188928 94754778996048 140726828519520 0 0 0 0 4100 17474 1 0 0 -1 0 0 0 0 0 0 94754780263432 94754780302408 94754954420224 140726828526144 140726828526247 140726828526247 140726828527565 0
sfc-server-work :: 14575 (sfc-server-work) S 1 14565 29572 0 -1 4194368 101 0 0 0 0 0 0 0 20 0 6 0 1337475 382177280 4807 18446744073709551615 94754757188928 94754778996048 140726828519520 0 0 0 0 4100 17474 1 0 0 -1 1 0 0 0 0 0 94754780263432 94754780302408 94754954420224 140726828526144 140726828526247 140726828526247 140726828527565 0
sfc-db-writer :: 14576 (sfc-db-writer) S 1 14565 29572 0 -1 4194368 9 0 0 0 0 0 0 0 20 0 6 0 1337475 382177280 4807 18446744073709551615 94754757188928 94754778996048 140726828519520 0 0 0 0 4100 17474 1 0 0 -1 0 0 0 0 0 0 94754780263432 94754780302408 94754954420224 140726828526144 140726828526247 140726828526247 140726828527565 0
sfc-server-work :: 14577 (sfc-server-work) S 1 14565 29572 0 -1 4194368 36 0 0 0 0 0 0 0 20 0 6 0 1337475 382177280 4807 18446744073709551615 94754757188928 94754778996048 140726828519520 0 0 0 0 4100 17474 1 0 0 -1 1 0 0 0 0 0 94754780263432 94754780302408 94754954420224 140726828526144 140726828526247 140726828526247 140726828527565 0
";

    /// ... and after three uploads (the idle blocking-pool thread 14577 has ended).
    const AFTER: &str = "\
sfc-server :: 14571 (sfc-server) S 1 14565 29572 0 -1 4194304 779 0 0 0 0 0 0 0 20 0 5 0 1337475 382300160 6138 18446744073709551615 94754757188928 94754778996048 140726828519520 0 0 0 0 4100 17474 1 0 0 17 0 0 0 0 0 0 94754780263432 94754780302408 94754954420224 140726828526144 140726828526247 140726828526247 140726828527565 0
sfc-server-work :: 14573 (sfc-server-work) S 1 14565 29572 0 -1 4194368 601 0 0 0 160 8 0 0 20 0 5 0 1337475 382300160 6138 18446744073709551615 94754757188928 94754778996048 140726828519520 0 0 0 0 4100 17474 1 0 0 -1 1 0 0 0 0 0 94754780263432 94754780302408 94754954420224 140726828526144 140726828526247 140726828526247 140726828527565 0
sfc-server-work :: 14574 (sfc-server-work) S 1 14565 29572 0 -1 4194368 309 0 0 0 64 6 0 0 20 0 5 0 1337475 382300160 6138 18446744073709551615 94754757188928 94754778996048 140726828519520 0 0 0 0 4100 17474 1 0 0 -1 1 0 0 0 0 0 94754780263432 94754780302408 94754954420224 140726828526144 140726828526247 140726828526247 140726828527565 0
sfc-server-work :: 14575 (sfc-server-work) S 1 14565 29572 0 -1 4194368 124 0 0 0 1 9 0 0 20 0 5 0 1337475 382300160 6138 18446744073709551615 94754757188928 94754778996048 140726828519520 0 0 0 0 4100 17474 1 0 0 -1 1 0 0 0 0 0 94754780263432 94754780302408 94754954420224 140726828526144 140726828526247 140726828526247 140726828527565 0
sfc-db-writer :: 14576 (sfc-db-writer) S 1 14565 29572 0 -1 4194368 25 0 0 0 0 0 0 0 20 0 5 0 1337475 382300160 6138 18446744073709551615 94754757188928 94754778996048 140726828519520 0 0 0 0 4100 17474 1 0 0 -1 0 0 0 0 0 0 94754780263432 94754780302408 94754954420224 140726828526144 140726828526247 140726828526247 140726828527565 0
";

    /// The samples [`sample`] would read from `comm :: stat` lines.
    fn samples(text: &str) -> Vec<ThreadSample> {
        text.lines()
            .map(|line| {
                let (name, stat) = line.split_once(" :: ").unwrap();
                ThreadSample {
                    tid: stat.split(' ').next().unwrap().parse().unwrap(),
                    name: name.to_string(),
                    cpu: stat_cpu_secs(stat, false).unwrap(),
                }
            })
            .collect()
    }

    fn round(cpu: f64) -> f64 {
        (cpu * 100.0).round() / 100.0
    }

    #[test]
    fn threads_are_grouped_by_name_the_main_thread_apart() {
        let groups = delta(14571, &samples(BEFORE), &samples(AFTER));
        let tokio = groups.groups["sfc-server-work"];
        assert_eq!(tokio.threads, 3);
        // 14573: 168 ticks, 14574: 70, 14575: 10.
        assert_eq!((round(tokio.cpu), round(tokio.busiest)), (2.48, 1.68));
        assert_eq!(groups.groups["main (sfc-server)"].threads, 1);
        assert_eq!(groups.groups["main (sfc-server)"].cpu, 0.0);
        assert_eq!(groups.groups["sfc-db-writer"].threads, 1);
        assert_eq!(groups.groups.len(), 3);
        assert_eq!(groups.lost, 1);
        // A thread that started during the run (14575 here) counts whole.
        let mut without = samples(AFTER);
        without.retain(|t| t.tid != 14575);
        let started = delta(14571, &without, &samples(AFTER));
        assert_eq!(round(started.groups["sfc-server-work"].cpu), 0.1);
        assert_eq!(started.lost, 0);
    }

    #[test]
    fn the_summary_lists_the_busiest_group_first() {
        let before = samples(BEFORE);
        let after = samples(AFTER);
        let runs = vec![delta(14571, &before, &after), delta(14571, &after, &after)];
        assert_eq!(
            summary(&runs),
            "sfc-server-work ×3 1.24 (0.00–2.48) (busiest thread 0.84 (0.00–1.68)), main (sfc-server) 0.00, sfc-db-writer 0.00; threads that ended during a run (their CPU lost): 1"
        );
        let json = json(&runs);
        assert_eq!(json[0]["groups"]["sfc-server-work"]["threads"], 3);
        assert_eq!(json[0]["lost"], 1);
        assert_eq!(json[1]["groups"]["sfc-server-work"]["cpu_s"], 0.0);
    }
}
