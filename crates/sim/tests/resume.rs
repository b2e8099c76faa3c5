//! The simulator reaches a snapshot transfer that broke off and resumed
//! (protocol 15): with parts drawn small (`snapshot_part`, half the seeds),
//! a late joiner's snapshot goes in many parts, and a transport reset or a
//! lost link between two leaves the receiver holding some; the next session
//! sends the rest. Every run must still converge.

use starling_sim::report::sweep;
use starling_sim::Scenario;
use std::path::PathBuf;

#[test]
fn a_late_joiners_snapshot_transfer_breaks_off_and_resumes() {
    let file = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../simulations/swarm-late-join.toml");
    let sc = Scenario::load(&file).unwrap();
    let threads = std::thread::available_parallelism().map_or(2, |n| n.get());
    let (reports, _) = sweep(&sc, SEEDS, threads, &|_| {});
    let mut small_parts = 0;
    let mut resumed = 0;
    for r in &reports {
        assert!(r.result.is_ok(), "seed {}: {:?}", r.seed, r.result);
        small_parts += usize::from(r.snapshot_part < starling_sync::SNAPSHOT_SEND_PART);
        resumed += r.snapshots.resumed;
        // A resumed transfer is one the late joiner had begun: it installs
        // a snapshot in the end.
        assert!(
            r.snapshots.resumed == 0 || r.snapshots.into_empty + r.snapshots.into_non_empty > 0,
            "seed {}: resumed, never installed",
            r.seed
        );
    }
    eprintln!("{} runs, {small_parts} with small parts, {resumed} transfers resumed", reports.len());
    assert!(small_parts > 0 && small_parts < reports.len(), "part sizes are drawn from the seed");
    assert!(resumed > 0, "no transfer resumed in {} runs", reports.len());
}

/// A late joiner that loses power again and again while its snapshot
/// comes in (`late-join-crash`): the parts it had spooled survive each
/// crash, its first link to that peer after the restart offers them, and
/// the sender sends the rest; every run converges.
#[test]
fn a_joiner_crashing_mid_snapshot_offers_the_parts_it_kept() {
    let file = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../simulations/late-join-crash.toml");
    let sc = Scenario::load(&file).unwrap();
    let threads = std::thread::available_parallelism().map_or(2, |n| n.get());
    let (reports, _) = sweep(&sc, 200_100..200_124, threads, &|_| {});
    let mut total = starling_sim::world::Snapshots::default();
    for r in &reports {
        assert!(r.result.is_ok(), "seed {}: {:?}", r.seed, r.result);
        total = total + r.snapshots;
    }
    eprintln!("{} runs: {total:?}", reports.len());
    assert!(total.offered_after_restart > 0, "no spool survived a crash to be offered");
    assert!(total.resumed > 0, "no transfer resumed");
}

/// Seeds apart from the long sweeps' ranges.
const SEEDS: std::ops::Range<u64> = 200_000..200_040;
