//! The checks that burying, and dropping withdrawn claims, change nothing
//! a client sees can fail: with one rule broken (switched on in this test
//! process only; the tests take turns through a lock), random histories
//! show a difference, or, for the rule random histories do not reach
//! (keeping a pinned claim), a directed one.

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
    let _guard = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    mutation::set(Some(m));
    let mut runner =
        TestRunner::new(Config { cases, failure_persistence: None, max_shrink_iters: 0, ..Config::default() });
    let strategy = (2usize..=4, prop::collection::vec(action(), 1..160));
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

/// "Expunged" is "within the version and not live"; a test that took "not
/// placed" for "not live" would bury the claims of a message between two
/// places.
#[test]
fn taking_a_message_between_places_for_expunged_is_caught() {
    assert!(
        caught(Mutation::ExpungedWhileUnplaced, 1000, ReplicaOptions::default(), keep_withdrawn()),
        "ExpungedWhileUnplaced went unnoticed"
    );
}

#[test]
fn dropping_withdrawn_claims_of_live_messages_is_caught() {
    assert!(caught(Mutation::DropLive, 1000, ReplicaOptions::default(), keep_withdrawn()), "DropLive went unnoticed");
}

/// A withdrawal arriving after the expunge, of a pinned claim in a mailbox
/// the message had left: the one case where `drop_withdrawn` meets a
/// pinned claim, which it must keep. B's E lost UID 1 of INBOX to A's X at
/// B (nobody had shown either there), so B withdrew that claim. Meanwhile
/// C had shown E at 1 (its announce pins B's claim), moved it to Work and
/// expunged it. A gets B's append, then C's ops (waiting for it), then
/// B's withdrawal; then D's Y, which claimed UID 1 too. The kept claim
/// keeps Y off UID 1 at A, where C's client saw E. Returns every
/// replica's dump after each step.
fn left_mailbox_pin_history(options: ReplicaOptions) -> Result<Vec<String>, String> {
    use starling_model::testkit::{Cluster, Rng};
    use starling_model::INBOX;
    let mut c = Cluster::with_options(4, options);
    let mut dumps = Vec::new();
    let mut step = |c: &mut Cluster| -> Result<(), String> {
        c.check_step()?;
        dumps.push(c.dumps());
        Ok(())
    };
    c.partition(&[0, 1, 2, 3]);
    let x = c.append(0, INBOX, vec![]).unwrap();
    let e = c.append(1, INBOX, vec![]).unwrap();
    let y = c.append(3, INBOX, vec![]).unwrap();
    step(&mut c)?;
    c.flush(1, 2);
    c.look(2, INBOX);
    if c.replicas[2].uid_of(e) != Some((INBOX, 1)) {
        return Err("C did not show E at 1".into());
    }
    let work = c.client(2, |r| r.create_mailbox("Work", None, None)).map_err(|e| e.to_string())?;
    c.client(2, |r| r.move_message(e, work)).map_err(|e| e.to_string())?;
    c.client(2, |r| r.expunge(&[e])).map_err(|e| e.to_string())?;
    step(&mut c)?;
    c.flush(0, 1);
    if c.replicas[1].uid_of(x) != Some((INBOX, 1)) {
        return Err(format!("X did not win UID 1 at B: {:?}", c.replicas[1].uid_of(x)));
    }
    step(&mut c)?;
    // C's ops wait at A for B's append and apply right behind it; B's
    // withdrawal comes after them.
    c.flush(2, 0);
    c.flush(1, 0);
    step(&mut c)?;
    c.flush(3, 0);
    c.look(0, INBOX);
    step(&mut c)?;
    if c.replicas[0].uid_of(y).is_some_and(|(_, u)| u <= 1) {
        return Err(format!("Y took UID 1 at A, where C showed E: {:?}", c.replicas[0].uid_of(y)));
    }
    c.heal();
    c.deliver_all(&mut Rng::new(7));
    c.check_converged()?;
    step(&mut c)?;
    Ok(dumps)
}

#[test]
fn dropping_pinned_claims_is_caught() {
    let keeping = left_mailbox_pin_history(keep_withdrawn()).expect("keeping withdrawn claims");
    let _guard = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let dropping = left_mailbox_pin_history(ReplicaOptions::default());
    assert_eq!(dropping.as_ref(), Ok(&keeping), "dropping withdrawn claims changes what clients see");
    mutation::set(Some(Mutation::DropPinned));
    let mutated = left_mailbox_pin_history(ReplicaOptions::default());
    mutation::set(None);
    assert_ne!(mutated.as_ref(), Ok(&keeping), "DropPinned went unnoticed");
}
