//! Cluster membership by gossip on the simulated network (`starling-gossip`'s
//! `sim`): for N nodes joining one by one, the time until everyone lists
//! everyone, and the traffic it costs; then the same under faults (swarm
//! seeds) with the time to agree again once they stop.

use starling_gossip::sim::{run as simulate, Plan};
use std::time::Duration;

#[derive(clap::Args)]
pub struct Args {
    /// Cluster sizes.
    #[arg(long, value_delimiter = ',', default_value = "3,7,20,50")]
    nodes: Vec<usize>,
    /// Seeds per size (the median and the worst are printed).
    #[arg(long, default_value_t = 5)]
    seeds: u64,
    /// Swarm seeds (faults and sizes drawn from each, up to the largest size).
    #[arg(long, default_value_t = 200)]
    swarm: u64,
}

fn secs(d: Duration) -> String {
    format!("{:.1} s", d.as_secs_f64())
}

pub fn run(args: Args) {
    println!("| nodes | converged after the last join (median / worst of {}) | datagrams per node per second | bytes per node per second |", args.seeds);
    println!("|---|---|---|---|");
    for &n in &args.nodes {
        let mut times = Vec::new();
        let (mut dgrams, mut bytes, mut node_secs) = (0u64, 0u64, 0f64);
        for seed in 0..args.seeds {
            let plan = Plan::quiet(n, seed);
            let r = simulate(&plan);
            assert!(r.violations.is_empty(), "{:?}", r.violations);
            times.push(r.converged_after.expect("converged"));
            dgrams += r.datagrams;
            bytes += r.bytes;
            node_secs += n as f64 * plan.until.as_secs_f64();
        }
        times.sort();
        println!(
            "| {n} | {} / {} | {:.1} | {:.0} |",
            secs(times[times.len() / 2]),
            secs(*times.last().expect("a seed")),
            dgrams as f64 / node_secs,
            bytes as f64 / node_secs
        );
    }
    let largest = args.nodes.iter().copied().max().unwrap_or(50);
    let mut after = Vec::new();
    let (mut crashes, mut restarts, mut partitions, mut worst_queue) = (0, 0, 0, 0);
    for seed in 0..args.swarm {
        let plan = Plan::swarm(seed, largest);
        let r = simulate(&plan);
        assert!(r.violations.is_empty(), "seed {seed}: {:?}", r.violations);
        after.push(r.converged_after.unwrap_or_else(|| panic!("seed {seed} did not converge: {plan:?}")));
        crashes += r.crashes;
        restarts += r.restarts;
        partitions += r.partitions;
        worst_queue = worst_queue.max(r.max_out_queue);
    }
    after.sort();
    println!();
    println!(
        "swarm: {} seeds (2..={largest} nodes, delay, loss up to 20%, crashes, restarts, partitions drawn from each): \
         {crashes} crashes, {restarts} restarts, {partitions} partitions; all safe, all converged; \
         agreement again after the last fault: median {}, worst {}; largest outgoing queue {worst_queue} datagrams",
        args.swarm,
        secs(after[after.len() / 2]),
        secs(*after.last().expect("a seed"))
    );
}
