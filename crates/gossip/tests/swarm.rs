//! The membership protocol on the simulated network: safety and liveness
//! checked apart, at the cluster sizes the issue asks for, and swarm
//! testing (faults and sizes drawn from each seed).

use starling_gossip::sim::{run, Plan};
use std::time::Duration;

#[test]
fn fifty_nodes_joining_one_by_one_all_know_each_other() {
    let r = run(&Plan::quiet(50, 7));
    assert!(r.violations.is_empty(), "{:?}", r.violations);
    let t = r.converged_after.expect("converged");
    assert!(t < Duration::from_secs(30), "{t:?}");
}

#[test]
fn crashes_are_detected_a_partition_heals_and_nodes_gone_for_good_are_dropped() {
    let mut p = Plan::quiet(20, 3);
    p.crash = 0.02;
    p.restart = 0.1;
    p.partition = Some(Duration::from_secs(30));
    p.faults_until = Duration::from_secs(90);
    p.until = Duration::from_secs(330);
    p.gone = vec![4, 11];
    let r = run(&p);
    assert!(r.violations.is_empty(), "{:?}", r.violations);
    assert!(r.crashes > 0 && r.partitions > 0, "the faults happened: {r:?}");
    // Convergence means every live node lists exactly the live others:
    // the two gone nodes dropped everywhere.
    assert!(r.converged_after.is_some(), "no convergence after the faults: {r:?}");
}

#[test]
fn swarm_seeds_are_safe_and_converge_once_the_faults_stop() {
    let seeds: u64 = std::env::var("GOSSIP_SEEDS").ok().and_then(|s| s.parse().ok()).unwrap_or(24);
    let first: u64 = std::env::var("GOSSIP_FIRST").ok().and_then(|s| s.parse().ok()).unwrap_or(0);
    for seed in first..first + seeds {
        let p = Plan::swarm(seed, 30);
        let r = run(&p);
        assert!(r.violations.is_empty(), "seed {seed} ({p:?}): {:?}", r.violations);
        assert!(r.converged_after.is_some(), "seed {seed} did not converge: {p:?} {r:?}");
    }
}
