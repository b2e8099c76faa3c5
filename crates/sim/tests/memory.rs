//! Per-node memory: blocks are charged to the node (or disk) that
//! allocated them until freed, wherever they are freed, and a run reports
//! each node's peak. This test binary installs the counting allocator, as
//! `starling-sim` does.

use starling_sim::memory::{begin_run, charge, live, peaks, Metered, Owner};
use starling_sim::{run, Scenario};

#[global_allocator]
static ALLOCATOR: Metered = Metered;

const MIB: usize = 1 << 20;

#[test]
fn a_block_is_its_allocators_until_freed_wherever_it_is_freed() {
    begin_run();
    let block = {
        let _three = charge(Owner::Node(3));
        vec![7u8; MIB]
    };
    assert_eq!(live(Owner::Node(3)), Some(MIB as i64));
    {
        // Another node frees it (a frame delivered and dropped): still node 3's.
        let _five = charge(Owner::Node(5));
        drop(block);
    }
    assert_eq!(live(Owner::Node(3)), Some(0));
    assert_eq!(live(Owner::Node(5)), Some(0));
    // Not charged to anyone while the world runs.
    let unowned = vec![1u8; MIB];
    assert_eq!(live(Owner::Node(3)), Some(0));
    drop(unowned);
    let p = peaks(6).expect("measured");
    assert_eq!(p.len(), 6);
    assert_eq!(p[3].heap, MIB as u64);
    assert_eq!((p[5].heap, p[0].heap, p[3].disk), (0, 0, 0));
}

#[test]
fn a_grown_block_stays_its_first_owners_and_marks_nest() {
    begin_run();
    let mut v: Vec<u8> = {
        let _one = charge(Owner::Node(1));
        Vec::with_capacity(16)
    };
    {
        let _two = charge(Owner::Node(2));
        v.resize(4 * MIB, 0);
        {
            let _disk = charge(Owner::Disk(2));
            let image = vec![0u8; MIB];
            assert_eq!(live(Owner::Disk(2)), Some(MIB as i64));
            drop(image);
        }
        // Back to node 2 after the disk's mark ends.
        let small = vec![0u8; 1000];
        assert_eq!(live(Owner::Node(2)), Some(1000));
        drop(small);
    }
    assert!(v.capacity() >= 4 * MIB);
    assert_eq!(live(Owner::Node(1)), Some(v.capacity() as i64));
    assert_eq!(live(Owner::Node(2)), Some(0));
    v.shrink_to(MIB);
    assert_eq!(live(Owner::Node(1)), Some(v.capacity() as i64));
    drop(v);
    let p = peaks(3).expect("measured");
    assert!(p[1].heap >= 4 * MIB as u64, "{p:?}");
    assert_eq!(p[2].disk, MIB as u64);
    assert_eq!(live(Owner::Node(1)), Some(0));
}

#[test]
fn a_new_run_forgets_blocks_of_the_last() {
    begin_run();
    let kept = {
        let _zero = charge(Owner::Node(0));
        vec![0u8; MIB]
    };
    begin_run();
    assert_eq!(live(Owner::Node(0)), Some(0));
    drop(kept);
    assert_eq!(live(Owner::Node(0)), Some(0), "a block of the last run freed in this one is not counted");
    assert_eq!(peaks(1).expect("measured")[0].heap, 0);
}

#[test]
fn a_run_reports_every_nodes_peak_and_a_large_body_shows_in_it() {
    // Three nodes; half the deliveries are 1.1-1.6 MB.
    let sc = Scenario::parse(
        "name = 'memory'\nnodes = 3\nhours = 1\n[network]\ndelay_ms = [1, 30]\n\
         [workload]\nactions_per_node_hour = 30\nbig_body = 0.5\n\
         [workload.mix]\ndeliver = 1.0\nappend = 0.0\nflags = 0.0\nmoves = 0.0\ncopy = 0.0\nexpunge = 0.0\n\
         create = 0.0\nrename = 0.0\ndelete = 0.0\nselect = 0.0\n",
    )
    .unwrap();
    let r = run(&sc, 11);
    assert!(r.result.is_ok(), "{:?}", r.result);
    assert_eq!(r.memory.len(), 3, "{:?}", r.memory);
    for (i, p) in r.memory.iter().enumerate() {
        assert!(p.heap > 0 && p.disk > 0, "node {i}: {p:?}");
        // The disk image holds the file and what was last synced of it.
        assert!(p.disk >= r.disk_max as u64 / 2, "node {i}: {p:?}, largest store {}", r.disk_max);
    }
    // A node that took a large message held it whole at least once.
    let heap = r.memory.iter().map(|p| p.heap).max().unwrap();
    assert!(heap >= 1_100_000, "{:?}", r.memory);
    // And the largest disk image holds the largest store.
    assert!(r.memory.iter().map(|p| p.disk).max().unwrap() >= r.disk_max as u64);
}
