//! `starling sim`: runs scenario files for a seed or a range of seeds,
//! prints failing seeds with the command that reproduces each, writes a
//! markdown report and, on request, the plots.

use crate::report::{line_chart, markdown, summarize, sweep, Summary};
use crate::{run, Scenario};
use std::path::{Path, PathBuf};

/// Arguments of `starling sim`.
#[derive(Debug, clap::Args)]
pub struct SimArgs {
    /// Scenario files (default: every `*.toml` in `simulations/`).
    pub scenarios: Vec<PathBuf>,
    /// Run this one seed (and print its trace hash).
    #[arg(long, conflicts_with = "seeds")]
    pub seed: Option<u64>,
    /// Run a range of seeds, `FIRST..END` (END excluded).
    #[arg(long, default_value = "0..20", value_parser = parse_range)]
    pub seeds: std::ops::Range<u64>,
    /// Parallel runs (each run is single-threaded and deterministic).
    #[arg(long)]
    pub threads: Option<usize>,
    /// Write the summary table (markdown) to this file.
    #[arg(long)]
    pub report: Option<PathBuf>,
    /// Also run the parameter sweeps and write their plots (SVG) and data
    /// into this directory.
    #[arg(long)]
    pub plots: Option<PathBuf>,
    /// Also run the cluster-size sweep (3 to 50 nodes, full mesh against a
    /// bounded fan-out; churn and a partition) and write its plots and
    /// table into this directory.
    #[arg(long)]
    pub cluster_plots: Option<PathBuf>,
}

fn parse_range(s: &str) -> Result<std::ops::Range<u64>, String> {
    let (a, b) = s.split_once("..").ok_or("expected FIRST..END, e.g. 0..500")?;
    let a: u64 = a.parse().map_err(|_| format!("{a:?} is not a number"))?;
    let b: u64 = b.parse().map_err(|_| format!("{b:?} is not a number"))?;
    if a >= b {
        return Err("the range is empty".into());
    }
    Ok(a..b)
}

fn default_scenarios() -> Result<Vec<PathBuf>, String> {
    crate::scenario::files_in(Path::new("simulations"))
        .map_err(|e| format!("{e} (name scenario files, or run from the project root)"))
}

/// Runs the command; `Ok(false)` when some seed failed.
pub fn main(args: SimArgs) -> Result<bool, String> {
    // The cluster sweep alone, unless scenario files are named too.
    let files = if !args.scenarios.is_empty() {
        args.scenarios.clone()
    } else if args.cluster_plots.is_some() {
        Vec::new()
    } else {
        default_scenarios()?
    };
    let threads = args.threads.unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
    let mut all_ok = true;
    let mut summaries = Vec::new();
    for file in &files {
        let sc = Scenario::load(file).map_err(|e| e.to_string())?;
        if let Some(seed) = args.seed {
            let t = std::time::Instant::now();
            let r = run(&sc, seed);
            println!(
                "{} seed {seed}: {} in {:.2} s (trace {})",
                sc.name,
                match &r.result {
                    Ok(()) => "ok".to_string(),
                    Err(e) => format!("FAILED\n{e}"),
                },
                t.elapsed().as_secs_f64(),
                r.trace
            );
            println!("{r:#?}");
            all_ok &= r.result.is_ok();
            continue;
        }
        let shown = file.display().to_string();
        let each = |r: &crate::RunReport| {
            if let Err(e) = &r.result {
                eprintln!(
                    "FAILED {} seed {}: {}\n  reproduce: starling sim {shown} --seed {}",
                    r.scenario, r.seed, e, r.seed
                );
            }
        };
        let (reports, wall) = sweep(&sc, args.seeds.clone(), threads, &each);
        let s = summarize(&sc.name, &reports, wall);
        println!(
            "{}: {} seeds, {} failed, {:.1} s wall, {:.0} client actions/s, {:.0} ops/s",
            s.scenario,
            s.seeds,
            s.failures.len(),
            s.wall_secs,
            s.actions as f64 / s.wall_secs.max(1e-9),
            s.ops as f64 / s.wall_secs.max(1e-9)
        );
        all_ok &= s.failures.is_empty();
        summaries.push(s);
    }
    if !summaries.is_empty() {
        let table = markdown(&summaries);
        println!("\n{table}");
        if let Some(path) = &args.report {
            std::fs::write(path, &table).map_err(|e| format!("{}: {e}", path.display()))?;
        }
    }
    if let Some(dir) = &args.cluster_plots {
        all_ok &= cluster_plots(dir, args.seeds.clone(), threads)?;
    }
    if let Some(dir) = &args.plots {
        all_ok &= plots(dir, args.seeds.clone(), threads)?;
    }
    Ok(all_ok)
}

fn split_scenario(nodes: usize, split_hours: f64) -> Scenario {
    let half: Vec<String> = (0..nodes / 2).map(|i| i.to_string()).collect();
    let rest: Vec<String> = (nodes / 2..nodes).map(|i| i.to_string()).collect();
    Scenario::parse(&format!(
        "name = 'split-{nodes}-nodes-{split_hours}h'\nnodes = {nodes}\nhours = {}\n\
         [network]\ndelay_ms = [1, 40]\n[workload]\nactions_per_node_hour = 20\n\
         [[events]]\nat_hours = 0.25\ndo = 'partition'\ngroups = [[{}], [{}]]\n",
        0.25 + split_hours,
        half.join(","),
        rest.join(",")
    ))
    .expect("built-in scenario")
}

/// Sessions per node in the bounded topology of the cluster sweep.
pub const SWEEP_FANOUT: usize = 6;

/// `nodes` nodes (full mesh with `fanout` 0) for an hour of mail: one node
/// down at a time for 8 minutes in every 10 for most of it, and the cluster
/// split in halves for its second half (the link back when clients stop).
pub fn cluster_scenario(nodes: usize, fanout: usize) -> Scenario {
    let half: Vec<String> = (0..nodes / 2).map(|i| i.to_string()).collect();
    let rest: Vec<String> = (nodes / 2..nodes).map(|i| i.to_string()).collect();
    Scenario::parse(&format!(
        "name = 'cluster-{nodes}-nodes-{}'\nnodes = {nodes}\nhours = 1\nfanout = {fanout}\n\
         [network]\ndelay_ms = [1, 40]\nloss = 0.01\n[workload]\nactions_per_node_hour = 10\n\
         [[events]]\nat_hours = 0.1\ndo = 'rolling_crashes'\nevery_minutes = 10\ndown_minutes = 8\nuntil_hours = 0.9\n\
         [[events]]\nat_hours = 0.5\ndo = 'partition'\ngroups = [[{}], [{}]]\n",
        if fanout == 0 { "mesh".to_string() } else { format!("fanout-{fanout}") },
        half.join(","),
        rest.join(",")
    ))
    .expect("built-in scenario")
}

/// The cluster-size sweep: convergence after the heal, and frame bytes per
/// op, against the node count, full mesh against a fan-out of
/// [`SWEEP_FANOUT`].
fn cluster_plots(dir: &Path, seeds: std::ops::Range<u64>, threads: usize) -> Result<bool, String> {
    std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let mut ok = true;
    let mut rows = Vec::new();
    let (mut conv, mut cost) = (Vec::new(), Vec::new());
    for fanout in [0, SWEEP_FANOUT] {
        let (mut c, mut b) = (Vec::new(), Vec::new());
        for nodes in [3, 7, 20, 50] {
            let sc = cluster_scenario(nodes, fanout);
            let (reports, wall) = sweep(&sc, seeds.clone(), threads, &|_| {});
            let s = summarize(&sc.name, &reports, wall);
            ok &= s.failures.is_empty();
            c.push((nodes as f64, s.converge_ms.0 as f64 / 1000.0));
            b.push((nodes as f64, s.bytes as f64 / (s.ops.max(1) as f64 / s.seeds.max(1) as f64)));
            println!("{}: {} failed, {:.0} s wall", sc.name, s.failures.len(), s.wall_secs);
            rows.push(s);
        }
        let name = if fanout == 0 { "full mesh".to_string() } else { format!("fan-out {fanout}") };
        conv.push((name.clone(), c));
        cost.push((name, b));
    }
    line_chart(
        &dir.join("cluster-convergence-vs-nodes.svg"),
        "Convergence after the heal (churn, then a split in halves)",
        "nodes",
        "median simulated seconds",
        &conv,
    )?;
    line_chart(
        &dir.join("cluster-bytes-per-change-vs-nodes.svg"),
        "Frame bytes sent per op authored",
        "nodes",
        "bytes per op (median run)",
        &cost,
    )?;
    let mut table = markdown(&rows);
    table.push_str("\n| topology | nodes | frame bytes per op (median run) |\n|---|---|---|\n");
    for (name, pts) in &cost {
        for (n, b) in pts {
            table.push_str(&format!("| {name} | {n} | {b:.0} |\n"));
        }
    }
    std::fs::write(dir.join("cluster-sweep.md"), &table).map_err(|e| e.to_string())?;
    println!("\nCluster sweep ({} seeds each):\n\n{table}", seeds.end - seeds.start);
    Ok(ok)
}

/// The parameter sweeps behind the plots: UID churn against partition
/// length, convergence against node count.
fn plots(dir: &Path, seeds: std::ops::Range<u64>, threads: usize) -> Result<bool, String> {
    std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let mut ok = true;
    let mut rows: Vec<Summary> = Vec::new();
    let mut ours = Vec::new();
    let mut dsync = Vec::new();
    for hours in [0.25, 1.0, 2.0, 4.0, 8.0] {
        let sc = split_scenario(4, hours);
        let (reports, wall) = sweep(&sc, seeds.clone(), threads, &|_| {});
        let s = summarize(&sc.name, &reports, wall);
        ok &= s.failures.is_empty();
        ours.push((hours, s.churn_per_1000.0));
        dsync.push((hours, s.churn_per_1000.1));
        rows.push(s);
    }
    line_chart(
        &dir.join("churn-vs-partition.svg"),
        "UID churn, 4 nodes split 2/2, both sides taking mail",
        "partition length (hours)",
        "renumbered per 1,000 appends",
        &[("Starling".into(), ours), ("dsync rule, same histories".into(), dsync)],
    )?;
    let mut conv = Vec::new();
    let mut frames = Vec::new();
    for nodes in [2, 3, 5, 8] {
        let sc = split_scenario(nodes, 2.0);
        let (reports, wall) = sweep(&sc, seeds.clone(), threads, &|_| {});
        let s = summarize(&sc.name, &reports, wall);
        ok &= s.failures.is_empty();
        conv.push((nodes as f64, s.converge_ms.0 as f64 / 1000.0));
        frames.push((nodes as f64, s.frames_after_heal as f64 / 100.0));
        rows.push(s);
    }
    line_chart(
        &dir.join("convergence-vs-nodes.svg"),
        "Convergence after a 2-hour split heals",
        "nodes",
        "simulated seconds / hundreds of frames",
        &[("median convergence (s)".into(), conv), ("median frames after heal (×100)".into(), frames)],
    )?;
    let table = markdown(&rows);
    std::fs::write(dir.join("sweeps.md"), &table).map_err(|e| e.to_string())?;
    println!("\nParameter sweeps ({} seeds each):\n\n{table}", seeds.end - seeds.start);
    Ok(ok)
}
