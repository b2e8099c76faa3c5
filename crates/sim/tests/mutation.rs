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
}
