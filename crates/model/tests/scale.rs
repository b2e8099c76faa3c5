//! The model at the sizes real mailboxes reach: thousands of messages shown
//! on both sides of a partition, and long histories delivered out of order.
//! Each of these failed before: the heal recursed once per renumbered
//! message (stack overflow near 650 per side), and the causal buffer
//! rescanned every waiting op after each apply (quadratic).

use starling_model::{BlobId, Keyword, Op, Replica, ReplicaId, INBOX};
use std::collections::BTreeSet;

/// Applies every op of `from` that `to` lacks, until both are quiet.
fn exchange(a: &mut Replica, b: &mut Replica, log_a: &mut Vec<Op>, log_b: &mut Vec<Op>) {
    loop {
        let (na, nb) = (log_a.len(), log_b.len());
        for op in log_a.clone() {
            b.apply(op).unwrap();
        }
        log_b.extend(b.take_outbox());
        for op in log_b.clone() {
            a.apply(op).unwrap();
        }
        log_a.extend(a.take_outbox());
        if log_a.len() == na && log_b.len() == nb && a.version() == b.version() {
            return;
        }
    }
}

fn uids_distinct_and_below_next(r: &Replica) {
    let view = r.view(INBOX);
    let uids: BTreeSet<u32> = view.iter().map(|(u, _, _)| *u).collect();
    assert_eq!(uids.len(), view.len(), "a UID names two messages");
    let next = r.uid_next(INBOX).unwrap();
    assert!(uids.iter().all(|u| *u < next), "a UID at or above UIDNEXT");
}

/// 5,000 messages appended and shown on each side of a partition, then the
/// sides meet: every shown UID collides, so 10,000 messages are renumbered
/// in one heal. Runs on a thread with a small stack (256 KiB) so that any
/// recursion that grows with the number of messages fails here.
#[test]
fn heal_after_thousands_shown_per_side() {
    let handle = std::thread::Builder::new()
        .stack_size(256 << 10)
        .spawn(|| {
            const N: usize = 5_000;
            let (mut a, mut b) = (Replica::new(ReplicaId(1)), Replica::new(ReplicaId(2)));
            let mut ids = Vec::new();
            for (i, r) in [&mut a, &mut b].into_iter().enumerate() {
                for n in 0..N {
                    let body = format!("side {i} message {n}");
                    ids.push(r.append(INBOX, BlobId::of(body.as_bytes()), 10, 0, vec![Keyword::Seen]).unwrap());
                }
                r.announce(INBOX).unwrap();
            }
            let (mut log_a, mut log_b) = (a.take_outbox(), b.take_outbox());
            let shown: Vec<u32> = a.view(INBOX).iter().map(|(u, _, _)| *u).collect();
            assert_eq!(shown, (1..=N as u32).collect::<Vec<_>>());
            exchange(&mut a, &mut b, &mut log_a, &mut log_b);
            assert_eq!(a.dump(), b.dump());
            assert_eq!(a.view(INBOX).len(), 2 * N);
            for r in [&a, &b] {
                uids_distinct_and_below_next(r);
                // Every shown UID was shown as two different messages: none names anything now (U2).
                assert!(r.view(INBOX).iter().all(|(u, _, _)| *u > N as u32));
                for m in &ids {
                    assert!(r.uid_of(*m).is_some(), "message lost in the heal");
                }
            }
        })
        .unwrap();
    handle.join().expect("heal thread (a stack overflow aborts the process instead)");
}

/// A long two-writer history, causally interleaved, delivered to a new
/// replica with one writer's ops all first: nearly every op waits for the
/// other writer's, and all are released in one cascade.
#[test]
fn long_interleaved_history_delivered_out_of_order() {
    let (mut a, mut b) = (Replica::new(ReplicaId(1)), Replica::new(ReplicaId(2)));
    let m = a.append(INBOX, BlobId::of(b"m"), 1, 0, vec![]).unwrap();
    let mut log = a.take_outbox();
    for op in &log {
        b.apply(op.clone()).unwrap();
    }
    // Each side changes the flag after seeing the other's last change.
    const ROUNDS: usize = 40_000;
    for i in 0..ROUNDS {
        let (w, r) = if i % 2 == 0 { (&mut a, &mut b) } else { (&mut b, &mut a) };
        // A sets \Flagged, B clears it: every op is a real change.
        let (add, remove): (&[Keyword], &[Keyword]) =
            if i % 2 == 0 { (&[Keyword::Flagged], &[]) } else { (&[], &[Keyword::Flagged]) };
        w.store_flags(m, add, remove).unwrap();
        let out = w.take_outbox();
        for op in &out {
            r.apply(op.clone()).unwrap();
        }
        log.extend(out);
    }
    assert_eq!(a.dump(), b.dump());
    // The newcomer gets B's ops first (each waits for A's), then A's.
    let mut c = Replica::new(ReplicaId(3));
    let (from_b, from_a): (Vec<Op>, Vec<Op>) = log.into_iter().partition(|o| o.dot.replica == ReplicaId(2));
    for op in from_b {
        c.apply(op).unwrap();
    }
    assert_eq!(c.pending_len(), ROUNDS / 2);
    for op in from_a {
        c.apply(op).unwrap();
    }
    assert_eq!(c.pending_len(), 0);
    assert_eq!(c.version(), a.version());
    assert_eq!(c.dump(), a.dump());
}
