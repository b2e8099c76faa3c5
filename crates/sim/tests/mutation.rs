//! The checker can fail: with a merge rule broken on purpose (the model's
//! `mutations` feature, switched on at run time in this test process only),
//! the simulator reports failing seeds; with the rule intact, the same seeds
//! pass.

use starling_model::mutation::{self, Mutation};
use starling_sim::{run, Scenario};

/// Two nodes split while their clients flag, unflag and move the same few
/// messages (add-wins and remove-wins differ only when one side removes a
/// keyword the other removed and added again).
fn scenario() -> Scenario {
    Scenario::parse(
        "name = 'contended'\nnodes = 2\nhours = 4\n\
         [workload]\nactions_per_node_hour = 60\n\
         [workload.mix]\ndeliver = 3\nappend = 0\nflags = 70\nmoves = 15\ncopy = 0\nexpunge = 0\n\
         create = 1\nrename = 0\ndelete = 0\nselect = 5\n\
         [[events]]\nat_hours = 0.5\ndo = 'partition'\ngroups = [[0], [1]]\n",
    )
    .unwrap()
}

fn failures(sc: &Scenario, seeds: std::ops::Range<u64>) -> Vec<(u64, String)> {
    seeds.filter_map(|s| run(sc, s).result.err().map(|e| (s, e))).collect()
}

/// Three nodes, one cut off for a while, clients delivering, copying and
/// expunging, housekeeping every 10 simulated minutes.
fn housekeeping_scenario() -> Scenario {
    Scenario::parse(
        "name = 'housekeeping'\nnodes = 3\nhours = 4\nhousekeeping_minutes = 10\n\
         [workload]\nactions_per_node_hour = 60\n\
         [workload.mix]\ndeliver = 30\nappend = 5\nflags = 20\nmoves = 5\ncopy = 20\nexpunge = 30\n\
         create = 1\nrename = 0\ndelete = 0\nselect = 5\n\
         [[events]]\nat_hours = 0.5\ndo = 'isolate'\nnode = 2\n\
         [[events]]\nat_hours = 2\ndo = 'heal'\n",
    )
    .unwrap()
}

// One test function: the switch is process-wide, so the cases run in turn.
#[test]
fn broken_merge_rules_are_caught_and_intact_ones_pass() {
    let sc = scenario();
    mutation::set(None);
    assert_eq!(failures(&sc, 0..4), vec![], "intact rules");
    // Either rule makes replicas apply the same ops to different states.
    for m in [Mutation::RemoveWins, Mutation::MoveByArrival] {
        mutation::set(Some(m));
        let f = failures(&sc, 0..4);
        mutation::set(None);
        assert!(!f.is_empty(), "{m:?} went unnoticed");
        assert!(f.iter().all(|(_, e)| e.starts_with("U3") || e.starts_with("flags of")), "{m:?}: {:?}", f[0]);
    }
    // Housekeeping: intact, it compacts and collects and every check
    // holds; compacting past a peer, or collecting a body still named, is
    // caught by the checks after each pass.
    let sc = housekeeping_scenario();
    let intact_housekeeping: Vec<_> = (0..4).map(|s| run(&sc, s)).collect();
    let intact = &intact_housekeeping;
    assert!(intact.iter().all(|r| r.result.is_ok()), "intact housekeeping: {:?}", intact[0].result);
    assert!(intact.iter().map(|r| r.ops_compacted).sum::<u64>() > 0, "the logs were compacted");
    assert!(intact.iter().map(|r| r.bodies_collected).sum::<u64>() > 0, "bodies were collected");
    for (m, says) in
        [(Mutation::CompactPastPeers, "compacted ops node"), (Mutation::KeepCandidate, "after housekeeping")]
    {
        mutation::set(Some(m));
        let f = failures(&sc, 0..4);
        mutation::set(None);
        assert!(!f.is_empty(), "{m:?} went unnoticed");
        assert!(f.iter().any(|(_, e)| e.contains(says)), "{m:?}: {:?}", f[0]);
    }
    // A replica that takes another replica's MODSEQ for its own answers the
    // roaming QRESYNC client short.
    let sc = scenario();
    let intact: Vec<_> = (0..4).map(|s| run(&sc, s)).collect();
    assert!(intact.iter().map(|r| r.roam.1).sum::<u64>() > 0, "the roaming client changed replicas");
    mutation::set(Some(Mutation::PlaceEveryModseq));
    let f = failures(&sc, 0..4);
    mutation::set(None);
    assert!(!f.is_empty(), "PlaceEveryModseq went unnoticed");
    assert!(f.iter().any(|(_, e)| e.contains("roaming client")), "PlaceEveryModseq: {:?}", f[0]);
    // A mailbox that forgets old expunges without raising its floor
    // answers a client older than them short.
    let sc = housekeeping_scenario();
    let forgotten: u64 = intact_housekeeping.iter().map(|r| r.roam_forgotten).sum();
    assert!(forgotten > 0, "no resync came from below what a node remembers");
    mutation::set(Some(Mutation::ForgetWithoutFloor));
    let f = failures(&sc, 0..4);
    mutation::set(None);
    assert!(f.iter().any(|(_, e)| e.contains("roaming client under-reported")), "ForgetWithoutFloor: {f:?}");
    // A claim U1 forced that counts as a plain one: a replica keeps
    // preferring a UID below what it showed and claims again and again.
    let sc = housekeeping_scenario();
    mutation::set(Some(Mutation::ForcedAsPlain));
    let f = failures(&sc, 0..4);
    mutation::set(None);
    assert!(!f.is_empty(), "ForcedAsPlain went unnoticed");
    assert!(f.iter().any(|(_, e)| e.contains("in one cascade")), "ForcedAsPlain: {:?}", f[0]);
    // Exposure after one peer (three nodes, each cut off in turn): intact,
    // a UID the roaming client was shown never names another message at a
    // later held look; at k = 0 the same histories do reuse UIDs (so the
    // check has something to catch); and without the catch-up before a
    // look, k = 1 alone is caught.
    let dir = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../simulations");
    let sc = Scenario::load(&dir.join("failover-k1.toml")).unwrap();
    let intact: Vec<_> = (0..6).map(|s| run(&sc, s)).collect();
    assert!(intact.iter().all(|r| r.result.is_ok()), "intact k = 1: {:?}", intact.iter().find(|r| r.result.is_err()));
    assert!(intact.iter().map(|r| r.roam.0).sum::<u64>() > 20, "the roaming client looked");
    let mut k0 = sc.clone();
    k0.durability_peers = 0;
    let reused: u64 = (0..6).map(|s| run(&k0, s).roam.2).sum();
    assert!(reused > 0, "at k = 0 the roaming client met no reused UID");
    mutation::set(Some(Mutation::CatchUpSkipped));
    let f = failures(&sc, 0..6);
    mutation::set(None);
    assert!(f.iter().any(|(_, e)| e.contains("a look caught up with")), "CatchUpSkipped: {f:?}");
}
