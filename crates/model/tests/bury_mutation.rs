//! The check that burying changes nothing a client sees can fail: with the
//! spent mark left out (`Mutation::BuryWithoutMark`, switched on in this
//! test process only), random histories show a difference.

#![cfg(feature = "mutations")]

#[allow(dead_code)]
mod history;

use history::*;
use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};
use starling_model::mutation::{self, Mutation};
use starling_model::ReplicaOptions;

#[test]
fn burying_without_the_mark_is_caught() {
    mutation::set(Some(Mutation::BuryWithoutMark));
    let mut runner = TestRunner::new(Config { cases: 300, failure_persistence: None, ..Config::default() });
    let strategy = (2usize..=4, prop::collection::vec(action(), 1..160));
    let result = runner.run(&strategy, |(n, actions)| {
        let (mut on, mut off) = (Vec::new(), Vec::new());
        let _ = run_with(n, &actions, ReplicaOptions::default(), &mut on);
        let _ = run_with(n, &actions, ReplicaOptions { bury: false, ..Default::default() }, &mut off);
        prop_assert_eq!(on, off);
        Ok(())
    });
    mutation::set(None);
    assert!(result.is_err(), "BuryWithoutMark went unnoticed in 300 histories");
}
