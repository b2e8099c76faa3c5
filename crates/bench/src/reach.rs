//! One change reaching every node, full mesh against a bounded fan-out, on
//! the simulator's network (the real session and store code, simulated
//! links of a fixed delay): for N nodes, the time from the change until the
//! last node holds it, and the frame bytes it cost (the run with the change
//! minus the same seed's run without it, so the set-up's traffic cancels).
//! Two changes: a flag change on a message every node already holds (one
//! small op), and a delivery (an op and a 57-byte body).

use starling_sim::{Scenario, World};

#[derive(clap::Args)]
pub struct Args {
    /// Cluster sizes.
    #[arg(long, value_delimiter = ',', default_value = "3,7,20,50")]
    nodes: Vec<usize>,
    /// Sessions per node in the bounded topology.
    #[arg(long, default_value_t = 4)]
    fanout: usize,
    /// Seeds per setting (medians are printed).
    #[arg(long, default_value_t = 5)]
    seeds: u64,
    /// One-way delay of every simulated link, ms.
    #[arg(long, default_value_t = 10)]
    delay_ms: u64,
}

/// The change measured.
#[derive(Clone, Copy)]
enum Change {
    Flag,
    Delivery,
}

/// A quiet cluster (no client but the timeline's): a message delivered at
/// node 0 early on (for the flag change), then, with `change`, the change
/// at node 0 when the run's client time ends (the final heal, from which
/// the simulator measures convergence).
fn scenario(nodes: usize, fanout: usize, delay_ms: u64, kind: Change, change: bool) -> Scenario {
    let mut s = format!(
        "name = 'reach-{nodes}'\nnodes = {nodes}\nhours = 0.1\nfanout = {fanout}\nhousekeeping_minutes = 0\n\
         [network]\ndelay_ms = [{delay_ms}, {delay_ms}]\n[workload]\nactions_per_node_hour = 0.000001\n"
    );
    if matches!(kind, Change::Flag) {
        s.push_str("[[events]]\nat_hours = 0.02\ndo = 'deliver'\nnode = 0\nmessages = 1\n");
    }
    if change {
        s.push_str(match kind {
            Change::Flag => "[[events]]\nat_hours = 0.1\ndo = 'flag_all'\nnode = 0\nset = true\n",
            Change::Delivery => "[[events]]\nat_hours = 0.1\ndo = 'deliver'\nnode = 0\nmessages = 1\n",
        });
    }
    Scenario::parse(&s).expect("a built-in scenario")
}

/// (ms until every node holds it, bytes it cost) for one seed.
fn measure(nodes: usize, fanout: usize, delay_ms: u64, kind: Change, seed: u64) -> (u64, i64) {
    let run = |change| {
        let sc = scenario(nodes, fanout, delay_ms, kind, change);
        let r = World::new(&sc, seed).expect("a world").run();
        if let Err(e) = &r.result {
            panic!("{nodes} nodes, fan-out {fanout}, seed {seed}: {e}");
        }
        r
    };
    let (base, with) = (run(false), run(true));
    (with.converge_ms, with.bytes as i64 - base.bytes as i64)
}

fn median<T: Ord + Copy>(mut v: Vec<T>) -> T {
    v.sort();
    v[v.len() / 2]
}

pub fn run(args: Args) {
    println!(
        "| change | nodes | topology | time until every node holds it (median of {}) | frame bytes it cost (median) | bytes per node reached |",
        args.seeds
    );
    println!("|---|---|---|---|---|---|");
    for (kind, name) in [(Change::Flag, "flag change"), (Change::Delivery, "delivery (a 57-byte message)")] {
        for &n in &args.nodes {
            for fanout in [0, args.fanout] {
                if fanout != 0 && fanout + 1 >= n {
                    continue;
                }
                let runs: Vec<(u64, i64)> =
                    (0..args.seeds).map(|seed| measure(n, fanout, args.delay_ms, kind, seed)).collect();
                let ms = median(runs.iter().map(|r| r.0).collect());
                let bytes = median(runs.iter().map(|r| r.1).collect());
                let topology = if fanout == 0 { "full mesh".to_string() } else { format!("fan-out {fanout}") };
                println!(
                    "| {name} | {n} | {topology} | {ms} ms | {bytes} | {:.0} |",
                    bytes as f64 / (n - 1).max(1) as f64
                );
            }
        }
    }
}
