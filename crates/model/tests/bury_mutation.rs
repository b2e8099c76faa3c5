//! The checks that burying, and dropping withdrawn claims, change nothing
//! a client sees can fail: with one rule broken (switched on in this test
//! process only; the tests take turns through a lock), random histories
//! show a difference.

#![cfg(feature = "mutations")]

#[allow(dead_code)]
mod history;

use history::*;
use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};
use starling_model::mutation::{self, Mutation};
use starling_model::ReplicaOptions;
use std::sync::Mutex;

static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

/// Whether `m` makes `a` and `b` differ within `cases` random histories.
fn caught(m: Mutation, cases: u32, a: ReplicaOptions, b: ReplicaOptions) -> bool {
    caught_in(m, cases, a, b, (2usize..=4, prop::collection::vec(action(), 1..160)))
}

/// [`caught`], over histories drawn from `strategy` (replicas, actions).
fn caught_in(
    m: Mutation,
    cases: u32,
    a: ReplicaOptions,
    b: ReplicaOptions,
    strategy: impl Strategy<Value = (usize, Vec<Action>)>,
) -> bool {
    let _guard = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    mutation::set(Some(m));
    let mut runner =
        TestRunner::new(Config { cases, failure_persistence: None, max_shrink_iters: 0, ..Config::default() });
    let result = runner.run(&strategy, |(n, actions)| {
        prop_assert!(same_traces(n, &actions, a, b).is_ok());
        Ok(())
    });
    mutation::set(None);
    result.is_err()
}

fn keep_withdrawn() -> ReplicaOptions {
    ReplicaOptions { drop_withdrawn: false, ..Default::default() }
}

#[test]
fn burying_without_the_mark_is_caught() {
    let none = ReplicaOptions { bury: false, drop_withdrawn: false, ..Default::default() };
    assert!(caught(Mutation::BuryWithoutMark, 300, keep_withdrawn(), none), "BuryWithoutMark went unnoticed");
}

#[test]
fn a_late_pin_that_spends_nothing_is_caught() {
    assert!(
        caught(Mutation::PinSpendsIgnored, 1000, ReplicaOptions::default(), keep_withdrawn()),
        "PinSpendsIgnored went unnoticed"
    );
}

#[test]
fn dropping_claims_not_withdrawn_is_caught() {
    assert!(
        caught(Mutation::DropUnwithdrawn, 300, ReplicaOptions::default(), keep_withdrawn()),
        "DropUnwithdrawn went unnoticed"
    );
}

#[test]
fn dropping_withdrawn_claims_of_live_messages_is_caught() {
    assert!(caught(Mutation::DropLive, 1000, ReplicaOptions::default(), keep_withdrawn()), "DropLive went unnoticed");
}

/// Rarely reachable: a pinned claim of an expunged message is buried as
/// soon as both are known, except in a mailbox the message had left; found
/// within 3,000 histories locally (about 8 minutes), so not run by default.
#[test]
#[ignore = "long: cargo test --release -p starling-model --features mutations -- --ignored"]
fn dropping_pinned_claims_is_caught() {
    assert!(
        caught(Mutation::DropPinned, 3000, ReplicaOptions::default(), keep_withdrawn()),
        "DropPinned went unnoticed"
    );
}

#[test]
#[ignore]
fn zz_measure() {
    use std::sync::atomic::{AtomicUsize, Ordering};
    let w: Vec<u32> = std::env::var("W").unwrap().split(',').map(|x| x.parse().unwrap()).collect();
    let len: usize = std::env::var("LEN").map(|v| v.parse().unwrap()).unwrap_or(80);
    let nmax: usize = std::env::var("NMAX").map(|v| v.parse().unwrap()).unwrap_or(3);
    let strat = prop_oneof![
        w[0] => (any::<u8>(), any::<u8>(), any::<u8>()).prop_map(|(r, mb, flags)| Action::Append { r, mb, flags }),
        w[1] => (any::<u8>(), any::<u16>(), any::<u8>()).prop_map(|(r, msg, mb)| Action::Move { r, msg, mb }),
        w[2] => (any::<u8>(), any::<u16>()).prop_map(|(r, msg)| Action::Expunge { r, msg }),
        w[3] => (any::<u8>(), any::<u8>()).prop_map(|(r, mb)| Action::Look { r, mb }),
        w[4] => (any::<u8>(), any::<u8>(), any::<u16>(), prop::bool::weighted(0.1)).prop_map(|(from, to, pick, dup)| Action::Deliver { from, to, pick, dup }),
        w[5] => any::<u8>().prop_map(|seed| Action::Partition { seed }),
        w[6] => Just(Action::Heal),
        w[7] => (any::<u8>(), any::<u8>()).prop_map(|(r, name)| Action::Create { r, name }),
        w[8] => (any::<u8>(), any::<u16>(), any::<u8>()).prop_map(|(r, msg, mb)| Action::Copy { r, msg, mb }),
    ];
    let count = AtomicUsize::new(0);
    let _guard = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    mutation::set(Some(Mutation::DropPinned));
    let mut runner =
        TestRunner::new(Config { cases: 5000, failure_persistence: None, max_shrink_iters: 0, ..Config::default() });
    let t = std::time::Instant::now();
    let result = runner.run(&(2usize..=nmax, prop::collection::vec(strat, 1..len)), |(n, actions)| {
        count.fetch_add(1, Ordering::Relaxed);
        prop_assert!(same_traces(n, &actions, ReplicaOptions::default(), keep_withdrawn()).is_ok());
        Ok(())
    });
    mutation::set(None);
    eprintln!("caught={} after {} cases in {:?}", result.is_err(), count.load(Ordering::Relaxed), t.elapsed());
}
