//! Property tests: random histories over 3–5 replicas with random delivery
//! order, duplication, delay and partitions. After every step U1 and U2 hold
//! at every replica; after full exchange the replicas are identical (U3),
//! keywords match the add-wins reference, expunged messages stay gone, and
//! every other message is in exactly one mailbox.

use proptest::prelude::*;
use starling_model::testkit::{workload_keywords, Cluster, Rng};
use starling_model::ReplicaOptions;

mod history;
use history::*;

proptest! {
    // PROPTEST_CASES overrides the count for longer hunts.
    #![proptest_config(ProptestConfig::with_cases(
        std::env::var("PROPTEST_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(300)
    ))]

    #[test]
    fn random_histories_keep_invariants(n in 3usize..=5, actions in prop::collection::vec(action(), 1..160)) {
        if let Err(e) = run(n, &actions) {
            prop_assert!(false, "{}", e);
        }
    }

    /// Burying the claims of shown expunged messages (`Replica::bury`)
    /// changes nothing any replica decides or shows, at any step: the same
    /// history with it off makes the same ops and the same dumps all along;
    /// so does dropping the withdrawn, unpinned claims of expunged messages
    /// with the pin-spends rule (`Replica::drop_withdrawn`), against burying
    /// alone. (The mutations `BuryWithoutMark`, `PinSpendsIgnored`,
    /// `DropUnwithdrawn` and `DropLive` make it fail:
    /// `tests/bury_mutation.rs`.)
    #[test]
    fn burying_changes_nothing_a_client_sees(n in 2usize..=4, actions in prop::collection::vec(action(), 1..160)) {
        let keep_withdrawn = ReplicaOptions { drop_withdrawn: false, ..Default::default() };
        let none = ReplicaOptions { bury: false, drop_withdrawn: false, ..Default::default() };
        if let Err(e) = same_traces(n, &actions, ReplicaOptions::default(), keep_withdrawn) {
            prop_assert!(false, "dropping withdrawn claims: {}", e);
        }
        if let Err(e) = same_traces(n, &actions, keep_withdrawn, none) {
            prop_assert!(false, "burying: {}", e);
        }
    }
}

/// The final exchange itself, in every delivery order we try, converges to the
/// same state (commutativity of the whole merge, not only of flags).
#[test]
fn delivery_order_does_not_matter() {
    let mut rng = Rng::new(42);
    for _ in 0..40 {
        let n = 3 + rng.below(3);
        let mut base = Cluster::new(n);
        base.partition(&(0..n).collect::<Vec<_>>());
        for _ in 0..30 {
            let r = rng.below(n);
            let m = base.append(r, starling_model::INBOX, vec![]);
            if rng.chance(0.3) {
                base.look(r, starling_model::INBOX);
            }
            if let (Some(m), true) = (m, rng.chance(0.5)) {
                let k = workload_keywords()[rng.below(5)].clone();
                base.client(r, |rep| rep.store_flags(m, &[k], &[]).unwrap());
            }
        }
        let history: Vec<_> = base.checker.history.iter().map(|(op, _)| op.clone()).collect();
        // Replay the same ops into fresh replicas in two different orders.
        let mut dumps = Vec::new();
        for order_seed in [1u64, 2] {
            let mut order = history.clone();
            let mut r2 = Rng::new(order_seed);
            for i in (1..order.len()).rev() {
                order.swap(i, r2.below(i + 1));
            }
            let mut fresh = starling_model::Replica::new(starling_model::ReplicaId(999));
            for op in order {
                fresh.apply(op).unwrap();
            }
            assert_eq!(fresh.pending_len(), 0);
            let _ = fresh.take_outbox();
            // This replica makes claims of its own while it settles, so UIDs
            // may differ by order; where each message is and its keywords may not.
            let mut d = std::collections::BTreeSet::new();
            for (name, mb) in &fresh.tree().by_name.clone() {
                for (_, m, k) in fresh.view(*mb) {
                    d.insert(format!("{name} {m:?} {k:?}"));
                }
            }
            dumps.push(d);
        }
        assert_eq!(dumps[0], dumps[1]);
    }
}

/// One keyword on one message, added (often when already shown) and removed
/// at random replicas with random delivery and partitions. The reference is
/// the clients' intent, not the ops: every add is an event, and a remove
/// takes away only the adds its replica had seen — its own earlier ones, and
/// others' whose op it had applied. An add that wrote no op is seen by nobody
/// else, so a concurrent remove must not take it away.
mod redundant_adds {
    use super::*;
    use starling_model::{Dot, Keyword, INBOX};

    #[derive(Clone, Debug)]
    enum Step {
        Add(u8),
        Remove(u8),
        Deliver { from: u8, to: u8, pick: u16 },
        Partition(u8),
        Heal,
    }

    fn step() -> impl Strategy<Value = Step> {
        prop_oneof![
            3 => any::<u8>().prop_map(Step::Add),
            2 => any::<u8>().prop_map(Step::Remove),
            6 => (any::<u8>(), any::<u8>(), any::<u16>()).prop_map(|(from, to, pick)| Step::Deliver { from, to, pick }),
            1 => any::<u8>().prop_map(Step::Partition),
            1 => Just(Step::Heal),
        ]
    }

    /// An add by a client: where, when (per replica), and its op's dot if it wrote one.
    struct Add {
        replica: usize,
        at: usize,
        dot: Option<Dot>,
        removed: bool,
    }

    fn run(n: usize, steps: &[Step]) -> Result<(), String> {
        let mut c = Cluster::new(n);
        let kw = Keyword::parse("$Kw").unwrap();
        let m = c.append(0, INBOX, vec![kw.clone()]).unwrap();
        let first = Dot { replica: c.replicas[0].id(), counter: c.replicas[0].version().get(c.replicas[0].id()) };
        let mut adds = vec![Add { replica: 0, at: 0, dot: Some(first), removed: false }];
        let mut clock = vec![1usize; n];
        for s in steps {
            match *s {
                Step::Add(r) | Step::Remove(r) => {
                    let r = r as usize % n;
                    if c.replicas[r].flags(m).is_err() {
                        continue; // not here yet
                    }
                    let before = c.replicas[r].version().get(c.replicas[r].id());
                    let add = matches!(s, Step::Add(_));
                    let (a, rm): (&[Keyword], &[Keyword]) =
                        if add { (std::slice::from_ref(&kw), &[]) } else { (&[], std::slice::from_ref(&kw)) };
                    c.client(r, |rep| rep.store_flags(m, a, rm)).map_err(|e| e.to_string())?;
                    let after = c.replicas[r].version().get(c.replicas[r].id());
                    if add {
                        let dot = (after > before).then(|| Dot { replica: c.replicas[r].id(), counter: after });
                        adds.push(Add { replica: r, at: clock[r], dot, removed: false });
                    } else {
                        let seen = c.replicas[r].version().clone();
                        for a in adds.iter_mut() {
                            if (a.replica == r && a.at < clock[r]) || a.dot.is_some_and(|d| seen.contains(d)) {
                                a.removed = true;
                            }
                        }
                    }
                    clock[r] += 1;
                }
                Step::Deliver { from, to, pick } => {
                    let (from, to) = (from as usize % n, to as usize % n);
                    if from != to {
                        c.deliver(from, to, pick as usize, false);
                    }
                }
                Step::Partition(seed) => {
                    let groups: Vec<usize> = (0..n).map(|i| (seed as usize >> i) & 1).collect();
                    c.partition(&groups);
                }
                Step::Heal => c.heal(),
            }
        }
        c.heal();
        c.deliver_all(&mut Rng::new(steps.len() as u64));
        c.check_converged()?;
        let want = adds.iter().any(|a| !a.removed);
        for (i, r) in c.replicas.iter().enumerate() {
            let got = r.flags(m).map_err(|e| e.to_string())?.contains(&kw);
            if got != want {
                return Err(format!("replica {i}: keyword present {got}, the clients' adds and removes say {want}"));
            }
        }
        Ok(())
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(
            std::env::var("PROPTEST_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(300)
        ))]

        #[test]
        fn every_add_wins_over_removes_that_did_not_see_it(n in 2usize..=4, steps in prop::collection::vec(step(), 1..80)) {
            if let Err(e) = run(n, &steps) {
                prop_assert!(false, "{}", e);
            }
        }
    }
}
