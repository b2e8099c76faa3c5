//! Named scenarios of concurrent mail: each states what a user sees.

use starling_model::testkit::{Cluster, Rng};
use starling_model::{Keyword, INBOX};

fn sync(c: &mut Cluster) {
    c.heal();
    c.deliver_all(&mut Rng::new(7));
    c.check_step().unwrap();
    c.check_converged().unwrap();
}

/// Mail arrives on A and is read there; B is cut off, gets mail, a client
/// reads it; A and B meet. Both UIDs were shown, so both messages move, and
/// no UID ever names two messages.
#[test]
fn both_sides_shown_both_move() {
    let mut c = Cluster::new(2);
    for _ in 0..3 {
        c.append(0, INBOX, vec![]);
    }
    sync(&mut c);
    c.look(0, INBOX);
    c.look(1, INBOX);
    c.partition(&[0, 1]);
    let a = c.append(0, INBOX, vec![]).unwrap();
    c.look(0, INBOX);
    let b = c.append(1, INBOX, vec![]).unwrap();
    c.look(1, INBOX);
    assert_eq!(c.replicas[0].uid_of(a).unwrap().1, 4);
    assert_eq!(c.replicas[1].uid_of(b).unwrap().1, 4);
    c.check_step().unwrap();
    sync(&mut c);
    let ua = c.replicas[0].uid_of(a).unwrap().1;
    let ub = c.replicas[0].uid_of(b).unwrap().1;
    assert!(ua > 4 && ub > 4 && ua != ub, "both moved: {ua} {ub}");
    // UID 4 names nothing now, on both.
    for r in &c.replicas {
        assert!(r.view(INBOX).iter().all(|(u, _, _)| *u != 4));
    }
    assert_eq!(c.churned().len(), 2);
}

/// B got mail while cut off but no client saw it: no UID visible on A changes.
#[test]
fn unseen_side_yields_silently() {
    let mut c = Cluster::new(2);
    for _ in 0..3 {
        c.append(0, INBOX, vec![]);
    }
    sync(&mut c);
    c.look(0, INBOX);
    c.partition(&[0, 1]);
    let a = c.append(0, INBOX, vec![]).unwrap();
    c.look(0, INBOX);
    let b1 = c.append(1, INBOX, vec![]).unwrap();
    let b2 = c.append(1, INBOX, vec![]).unwrap();
    sync(&mut c);
    assert_eq!(c.replicas[0].uid_of(a).unwrap().1, 4, "A's shown UID kept");
    assert_eq!(c.replicas[1].uid_of(a).unwrap().1, 4);
    let u1 = c.replicas[0].uid_of(b1).unwrap().1;
    let u2 = c.replicas[0].uid_of(b2).unwrap().1;
    assert!(u1 > 4 && u2 > u1);
    assert!(c.churned().is_empty());
}

/// Appends that were not concurrent are never renumbered.
#[test]
fn sequential_appends_keep_uids() {
    let mut c = Cluster::new(3);
    let mut ids = Vec::new();
    for round in 0..9 {
        let i = round % 3;
        ids.push((c.append(i, INBOX, vec![]).unwrap(), round as u32 + 1));
        c.look(i, INBOX);
        sync(&mut c);
    }
    for r in &c.replicas {
        for (m, uid) in &ids {
            assert_eq!(r.uid_of(*m).unwrap().1, *uid);
        }
    }
}

/// A message seen on A; C receives it after announcing a higher UIDNEXT of
/// its own mailbox state: C must show it above what it announced (U1).
#[test]
fn late_arrival_above_announced_uidnext() {
    let mut c = Cluster::new(3);
    c.set_link(0, 2, false);
    c.set_link(1, 2, false);
    let a = c.append(0, INBOX, vec![]).unwrap();
    c.append(2, INBOX, vec![]).unwrap();
    c.append(2, INBOX, vec![]).unwrap();
    c.look(2, INBOX); // C announced UIDNEXT 3
    c.look(0, INBOX);
    sync(&mut c);
    // A's message (UID 1) collided with C's first (UID 1), both shown: both moved.
    let (_, ua) = c.replicas[2].uid_of(a).unwrap();
    assert!(ua >= 3);
}

#[test]
fn concurrent_add_and_remove_of_a_keyword_keeps_it() {
    let mut c = Cluster::new(2);
    let m = c.append(0, INBOX, vec![Keyword::Seen]).unwrap();
    sync(&mut c);
    c.partition(&[0, 1]);
    c.client(0, |r| r.store_flags(m, &[], &[Keyword::Seen]).unwrap());
    c.client(1, |r| r.store_flags(m, &[Keyword::Seen], &[]).unwrap()); // already present: no op
    c.client(1, |r| r.store_flags(m, &[], &[Keyword::Seen]).unwrap());
    c.client(1, |r| r.store_flags(m, &[Keyword::Seen, Keyword::Flagged], &[]).unwrap());
    sync(&mut c);
    let f = c.replicas[0].flags(m).unwrap();
    assert!(f.contains(&Keyword::Seen) && f.contains(&Keyword::Flagged));
}

#[test]
fn delta_not_final_state() {
    // A sets +\Seen, B sets -\Flagged concurrently: both apply (a final-state
    // merge would have to pick one list).
    let mut c = Cluster::new(2);
    let m = c.append(0, INBOX, vec![Keyword::Flagged]).unwrap();
    sync(&mut c);
    c.partition(&[0, 1]);
    c.client(0, |r| r.store_flags(m, &[Keyword::Seen], &[]).unwrap());
    c.client(1, |r| r.store_flags(m, &[], &[Keyword::Flagged]).unwrap());
    sync(&mut c);
    assert_eq!(c.replicas[1].flags(m).unwrap(), [Keyword::Seen].into());
}

#[test]
fn expunge_wins_over_concurrent_flag_change_and_move() {
    let mut c = Cluster::new(3);
    let work = c.client(0, |r| r.create_mailbox("Work", None, None).unwrap());
    let m = c.append(0, INBOX, vec![]).unwrap();
    sync(&mut c);
    c.partition(&[0, 1, 2]);
    c.client(0, |r| r.expunge(&[m]).unwrap());
    c.client(1, |r| r.store_flags(m, &[Keyword::Flagged], &[]).unwrap());
    c.client(2, |r| r.move_message(m, work).unwrap());
    sync(&mut c);
    for r in &c.replicas {
        assert!(r.is_expunged(m));
        assert_eq!(r.message_count(), 0);
    }
}

#[test]
fn concurrent_moves_one_winner_never_duplicated() {
    let mut c = Cluster::new(3);
    let x = c.client(0, |r| r.create_mailbox("X", None, None).unwrap());
    let y = c.client(0, |r| r.create_mailbox("Y", None, None).unwrap());
    let m = c.append(0, INBOX, vec![Keyword::Seen]).unwrap();
    sync(&mut c);
    c.partition(&[0, 1, 2]);
    c.client(1, |r| r.move_message(m, x).unwrap());
    c.client(2, |r| r.move_message(m, y).unwrap());
    c.client(0, |r| r.store_flags(m, &[Keyword::Answered], &[]).unwrap());
    sync(&mut c);
    let (mb, _) = c.replicas[0].uid_of(m).unwrap();
    assert!(mb == x || mb == y);
    assert_eq!(c.replicas[0].message_count(), 1);
    // The flag change concurrent with the moves followed the message.
    assert!(c.replicas[0].flags(m).unwrap().contains(&Keyword::Answered));
}

#[test]
fn copy_is_a_new_instance_with_flags_at_that_moment() {
    let mut c = Cluster::new(2);
    let x = c.client(0, |r| r.create_mailbox("X", None, None).unwrap());
    let m = c.append(0, INBOX, vec![Keyword::Seen]).unwrap();
    let copy = c.client(0, |r| r.copy_message(m, x).unwrap());
    c.client(0, |r| r.store_flags(m, &[Keyword::Flagged], &[]).unwrap());
    sync(&mut c);
    assert_ne!(m, copy);
    assert_eq!(c.replicas[1].flags(copy).unwrap(), [Keyword::Seen].into());
    assert_eq!(c.replicas[1].uid_of(copy).unwrap().0, x);
}

#[test]
fn delete_never_loses_a_concurrently_added_message() {
    let mut c = Cluster::new(2);
    let x = c.client(0, |r| r.create_mailbox("X", None, None).unwrap());
    let old = c.append(0, x, vec![]).unwrap();
    sync(&mut c);
    c.partition(&[0, 1]);
    c.client(0, |r| r.delete_mailbox(x).unwrap());
    let new = c.append(1, x, vec![]).unwrap();
    sync(&mut c);
    for r in &c.replicas {
        assert!(r.is_expunged(old));
        assert_eq!(r.uid_of(new).unwrap().0, x);
        assert_eq!(r.mailbox_by_name("X"), Some(x), "mailbox reappears");
    }
}

#[test]
fn same_name_creates_show_one_mailbox_with_both_messages() {
    let mut c = Cluster::new(2);
    c.partition(&[0, 1]);
    let xa = c.client(0, |r| r.create_mailbox("Work", None, None).unwrap());
    let xb = c.client(1, |r| r.create_mailbox("Work", None, None).unwrap());
    let ma = c.append(0, xa, vec![]).unwrap();
    let mb = c.append(1, xb, vec![]).unwrap();
    sync(&mut c);
    let canonical = c.replicas[0].mailbox_by_name("Work").unwrap();
    for r in &c.replicas {
        assert_eq!(r.uid_of(ma).unwrap().0, canonical);
        assert_eq!(r.uid_of(mb).unwrap().0, canonical);
        assert_eq!(r.tree().by_name.len(), 2); // INBOX and Work
    }
}

#[test]
fn duplicated_and_reordered_delivery_is_harmless() {
    let mut c = Cluster::new(2);
    let ops: Vec<_> = (0..5)
        .map(|_| {
            let m = c.append(0, INBOX, vec![]).unwrap();
            c.client(0, |r| r.store_flags(m, &[Keyword::Seen], &[]).unwrap());
            m
        })
        .collect();
    // Deliver newest first, each twice.
    for k in (0..10).rev() {
        c.deliver(0, 1, k, true);
    }
    c.deliver_all(&mut Rng::new(1));
    c.check_converged().unwrap();
    assert_eq!(c.replicas[1].message_count(), ops.len());
}

#[test]
fn reopened_replica_continues_where_it_stopped() {
    let mut c = Cluster::new(2);
    let work = c.client(0, |r| r.create_mailbox("Work", None, None).unwrap());
    let m = c.append(0, work, vec![Keyword::Seen]).unwrap();
    c.look(0, work);
    sync(&mut c);
    let r = std::mem::replace(&mut c.replicas[0], starling_model::Replica::new(starling_model::ReplicaId(5)));
    let (id, dump) = (r.id(), r.dump());
    let mut r = r;
    let header = r.header();
    let account = r.save_account();
    let reopened = starling_model::Replica::open(id, r.into_backend(), &header, &account).unwrap();
    assert_eq!(reopened.dump(), dump);
    assert!(starling_model::Replica::open(
        starling_model::ReplicaId(9),
        starling_model::MemBackend::new(true),
        &header,
        &account
    )
    .is_err());
    assert!(starling_model::Replica::open(id, starling_model::MemBackend::new(true), b"junk", &account).is_err());
    c.replicas[0] = reopened;
    // It keeps making ops with fresh dots, and the peer accepts them.
    c.client(0, |r| r.store_flags(m, &[Keyword::Flagged], &[]).unwrap());
    sync(&mut c);
    assert!(c.replicas[1].flags(m).unwrap().contains(&Keyword::Flagged));
}

#[test]
fn op_waits_for_its_causal_past() {
    let mut a = starling_model::Replica::new(starling_model::ReplicaId(1));
    let m = a.append(INBOX, starling_model::BlobId::of(b"x"), 1, 0, vec![]).unwrap();
    a.store_flags(m, &[Keyword::Seen], &[]).unwrap();
    let ops = a.take_outbox();
    let mut b = starling_model::Replica::new(starling_model::ReplicaId(2));
    b.apply(ops[1].clone()).unwrap();
    assert_eq!(b.pending_len(), 1);
    assert_eq!(b.message_count(), 0);
    b.apply(ops[0].clone()).unwrap();
    assert_eq!(b.pending_len(), 0);
    assert_eq!(b.flags(m).unwrap(), [Keyword::Seen].into());
}

/// A new replica catches up by state (no history), then continues by ops
/// both ways.
#[test]
fn new_replica_catches_up_by_snapshot() {
    use starling_model::{Replica, ReplicaId};
    let mut c = Cluster::new(3);
    let work = c.client(0, |r| r.create_mailbox("Work", None, None).unwrap());
    c.partition(&[0, 1, 2]);
    let mut ms = Vec::new();
    for i in 0..12 {
        let m = c.append(i % 3, if i % 2 == 0 { INBOX } else { work }, vec![Keyword::Seen]);
        if let Some(m) = m {
            ms.push((i % 3, m));
        }
        if i % 4 == 0 {
            c.look(i % 3, INBOX);
        }
    }
    sync(&mut c);
    let (r, m) = ms[2];
    c.client(r, |rep| rep.store_flags(m, &[Keyword::Flagged], &[Keyword::Seen]).unwrap());
    c.client(0, |rep| rep.expunge(&[ms[0].1]).unwrap());
    sync(&mut c);

    let snap = c.replicas[0].export_state().unwrap();
    let mut fresh = Replica::new(ReplicaId(77));
    fresh.import_state(snap.clone()).unwrap();
    assert_eq!(fresh.dump(), c.replicas[0].dump());
    assert!(fresh.is_expunged(ms[0].1));
    // Installing the same state again changes nothing.
    fresh.import_state(snap).unwrap();
    assert_eq!(fresh.dump(), c.replicas[0].dump());

    // Onwards by ops, both ways.
    let before = c.replicas[0].version().clone();
    let (_, m5) = ms[5];
    c.client(1, |rep| rep.store_flags(m5, &[Keyword::Answered], &[]).unwrap());
    c.append(2, work, vec![]);
    sync(&mut c);
    let newer: Vec<_> =
        c.checker.history.iter().filter(|(op, _)| !before.contains(op.dot)).map(|(op, _)| op.clone()).collect();
    for op in newer {
        fresh.apply(op).unwrap();
    }
    assert_eq!(fresh.pending_len(), 0);
    let _ = fresh.take_outbox();
    assert_eq!(fresh.dump(), c.replicas[0].dump());
    fresh.store_flags(m5, &[Keyword::Draft], &[]).unwrap();
    for op in fresh.take_outbox() {
        c.replicas[0].apply(op).unwrap();
    }
    assert!(c.replicas[0].flags(m5).unwrap().contains(&Keyword::Draft));
}

/// Found by the simulator: the first op of a replica that joined by snapshot
/// must depend on everything the snapshot held, or a peer that lacks the
/// message drops the change instead of waiting for it.
#[test]
fn first_op_after_a_snapshot_depends_on_the_snapshot() {
    use starling_model::{Replica, ReplicaId};
    let mut c = Cluster::new(2);
    c.partition(&[0, 1]);
    let m = c.append(0, INBOX, vec![]).unwrap();
    let mut fresh = Replica::new(ReplicaId(77));
    fresh.import_state(c.replicas[0].export_state().unwrap()).unwrap();
    fresh.store_flags(m, &[Keyword::Answered], &[]).unwrap();
    let ops = fresh.take_outbox();
    assert!(ops[0].deps.contains(&starling_model::Dot::new(c.replicas[0].id(), 1)), "{:?}", ops[0]);
    // Replica 1 gets the flag change before the message: it waits, then applies.
    for op in ops {
        c.replicas[1].apply(op).unwrap();
    }
    assert_eq!(c.replicas[1].pending_len(), 1);
    c.heal();
    let mut rng = starling_model::testkit::Rng::new(1);
    c.deliver_all(&mut rng);
    assert_eq!(c.replicas[1].flags(m).unwrap(), [Keyword::Answered].into_iter().collect());
}

/// A keyword both replicas show; A adds it again while B, cut off, removes
/// it. The re-add is an add like any other, so it wins (add-wins for every
/// add, `docs/semantics.md`).
#[test]
fn readd_of_a_shown_keyword_wins_over_concurrent_remove() {
    let mut c = Cluster::new(2);
    let kw = Keyword::parse("$Kw").unwrap();
    let m = c.append(0, INBOX, vec![kw.clone()]).unwrap();
    sync(&mut c);
    assert!(c.replicas[1].flags(m).unwrap().contains(&kw));
    c.partition(&[0, 1]);
    c.client(0, |r| r.store_flags(m, std::slice::from_ref(&kw), &[])).unwrap();
    c.client(1, |r| r.store_flags(m, &[], std::slice::from_ref(&kw))).unwrap();
    sync(&mut c);
    for r in &c.replicas {
        assert!(r.flags(m).unwrap().contains(&kw), "the re-add lost to the concurrent remove");
    }
}

/// Issue 16's observation: after a partition, a message moved to F1 and
/// shown there as UID 6 (nothing else ever shown at F1/6) came back as
/// UID 16. A moves one message into F1 and its client looks; B, cut off,
/// moves ten into F1 and no client of B looks at F1. B's claims were never
/// shown, so they yield: A's message keeps UID 6 (U4).
#[test]
fn a_move_shown_on_one_side_keeps_its_uid_against_unshown_moves() {
    let mut c = Cluster::new(2);
    let f1 = c.client(0, |r| r.create_mailbox("F1", None, None)).unwrap();
    for _ in 0..5 {
        c.append(0, f1, vec![]);
    }
    let inbox: Vec<_> = (0..11).map(|_| c.append(0, INBOX, vec![]).unwrap()).collect();
    sync(&mut c);
    c.look(0, f1);
    c.look(1, f1);
    c.partition(&[0, 1]);
    c.client(0, |r| r.move_message(inbox[0], f1)).unwrap();
    c.look(0, f1);
    assert_eq!(c.replicas[0].uid_of(inbox[0]).unwrap().1, 6);
    for m in &inbox[1..] {
        c.client(1, |r| r.move_message(*m, f1)).unwrap();
    }
    sync(&mut c);
    for r in &c.replicas {
        assert_eq!(r.uid_of(inbox[0]).unwrap().1, 6, "the shown UID moved");
    }
    assert!(c.churned().is_empty(), "{:?}", c.churned());
}

/// A shows three messages and then a fourth (two announces); B, cut off,
/// took two messages nobody saw. When A's ops reach B (in any order the
/// causal buffer allows) before B's reach A, B must end with A's shown
/// UIDs: B's own unseen mail yields. (Seen end to end: B's claims made
/// while it held A's appends but not yet A's announce were not all taken
/// back, and a shown UID moved.)
#[test]
fn shown_uids_survive_when_their_announce_arrives_after_the_appends() {
    for seed in 0..128 {
        // Either replica id may be the one that showed.
        let (a, b) = if seed % 2 == 0 { (0, 1) } else { (1, 0) };
        let mut c = Cluster::new(2);
        c.partition(&[0, 1]);
        let theirs: Vec<_> = (0..2).map(|_| c.append(b, INBOX, vec![]).unwrap()).collect();
        let shown: Vec<_> = (0..3).map(|_| c.append(a, INBOX, vec![]).unwrap()).collect();
        c.look(a, INBOX);
        let last = c.append(a, INBOX, vec![]).unwrap();
        c.look(a, INBOX);
        c.heal();
        let mut rng = Rng::new(seed);
        while c.deliver(a, b, rng.below(1 << 20), false) {}
        let b = &c.replicas[b];
        for (i, m) in shown.iter().chain([&last]).enumerate() {
            assert_eq!(b.uid_of(*m).unwrap().1, i as u32 + 1, "seed {seed}: A's shown UID moved on B\n{}", b.dump());
        }
        sync(&mut c);
        for r in &c.replicas {
            for (i, m) in shown.iter().chain([&last]).enumerate() {
                assert_eq!(r.uid_of(*m).unwrap().1, i as u32 + 1, "seed {seed}: after the heal\n{}", r.dump());
            }
            assert!(theirs.iter().all(|m| r.uid_of(*m).unwrap().1 > 4));
        }
        assert!(c.churned().is_empty(), "seed {seed}: {:?}", c.churned());
    }
}

/// `a_move_shown_on_one_side_keeps_its_uid_against_unshown_moves` with the
/// sides' replica ids the other way round (the showing side has the higher
/// id, so its move loses UID ties until its announce arrives).
#[test]
fn a_move_shown_on_the_higher_replica_keeps_its_uid_against_unshown_moves() {
    let mut c = Cluster::new(2);
    let f1 = c.client(1, |r| r.create_mailbox("F1", None, None)).unwrap();
    for _ in 0..5 {
        c.append(1, f1, vec![]);
    }
    let inbox: Vec<_> = (0..11).map(|_| c.append(1, INBOX, vec![]).unwrap()).collect();
    sync(&mut c);
    c.look(0, f1);
    c.look(1, f1);
    c.partition(&[0, 1]);
    c.client(1, |r| r.move_message(inbox[0], f1)).unwrap();
    c.look(1, f1);
    assert_eq!(c.replicas[1].uid_of(inbox[0]).unwrap().1, 6);
    for m in &inbox[1..] {
        c.client(0, |r| r.move_message(*m, f1)).unwrap();
    }
    sync(&mut c);
    for r in &c.replicas {
        assert_eq!(r.uid_of(inbox[0]).unwrap().1, 6, "the shown UID moved\n{}", r.dump());
    }
    assert!(c.churned().is_empty(), "{:?}", c.churned());
}

/// A deletion of the account reaches every replica and wins over changes
/// made concurrently elsewhere (a password change, a delivery): the key is
/// never put back, so no order of merges undoes it.
#[test]
fn an_account_deletion_reaches_every_replica_and_wins_over_concurrent_changes() {
    let mut c = Cluster::new(3);
    c.append(0, INBOX, vec![]);
    sync(&mut c);
    assert!(c.replicas.iter().all(|r| !r.tree().deleted));
    c.partition(&[0, 1, 2]);
    c.client(0, |r| r.delete_account()).unwrap();
    c.client(1, |r| r.set_password("$argon2id$v=19$m=8,t=1,p=1$c2FsdHNhbHQ$aGFzaA")).unwrap();
    c.append(2, INBOX, vec![]);
    assert!(c.replicas[0].tree().deleted && !c.replicas[1].tree().deleted);
    sync(&mut c);
    for r in &c.replicas {
        assert!(r.tree().deleted, "replica {:?} still has the account", r.id());
        assert!(r.tree().password.is_some(), "the concurrent password change merged too");
    }
}

/// A placement reaches every replica; concurrent changes of it settle on
/// one value everywhere, and a later change (made after seeing the others)
/// replaces it; an empty one clears it.
#[test]
fn a_placement_reaches_every_replica_and_concurrent_ones_settle_on_one() {
    let mut c = Cluster::new(3);
    c.client(0, |r| r.set_placement("replicas=2")).unwrap();
    sync(&mut c);
    assert!(c.replicas.iter().all(|r| r.tree().placement.as_deref() == Some("replicas=2")));
    c.partition(&[0, 1, 2]);
    c.client(1, |r| r.set_placement("replicas=3")).unwrap();
    c.client(2, |r| r.set_placement("nodes=a,b")).unwrap();
    sync(&mut c);
    let settled = c.replicas[0].tree().placement.clone();
    assert!(matches!(settled.as_deref(), Some("replicas=3") | Some("nodes=a,b")), "{settled:?}");
    assert!(c.replicas.iter().all(|r| r.tree().placement == settled), "replicas disagree");
    c.client(0, |r| r.set_placement("")).unwrap();
    sync(&mut c);
    assert!(c.replicas.iter().all(|r| r.tree().placement.is_none()), "cleared everywhere");
}

/// A quota reaches every replica (the account document carries it), and a
/// later change, unlimited included, replaces it everywhere.
#[test]
fn a_quota_reaches_every_replica() {
    use starling_model::Quota;
    let mut c = Cluster::new(3);
    assert!(c.replicas.iter().all(|r| r.tree().quota.is_unlimited()));
    let q = Quota { storage_kb: Some(10), messages: Some(3) };
    c.client(0, |r| r.set_quota(&q)).unwrap();
    sync(&mut c);
    assert!(c.replicas.iter().all(|r| r.tree().quota == q), "every replica has it");
    let only_messages = Quota { storage_kb: None, messages: Some(5) };
    c.client(2, |r| r.set_quota(&only_messages)).unwrap();
    sync(&mut c);
    assert!(c.replicas.iter().all(|r| r.tree().quota == only_messages));
    c.client(1, |r| r.set_quota(&Quota::default())).unwrap();
    sync(&mut c);
    assert!(c.replicas.iter().all(|r| r.tree().quota.is_unlimited()), "cleared everywhere");
    // The stored form reads back, and bad forms do not read.
    assert_eq!(Quota::parse(&q.encode()), Some(q));
    assert_eq!(Quota::parse(""), Some(Quota::default()));
    assert_eq!(Quota::parse("storage-kb=x"), None);
    assert_eq!(Quota::parse("messages=1,messages=2"), None);
    // The limits: STORAGE in KiB, MESSAGE in messages, either one refuses.
    assert!(q.allows((2, 9 * 1024), (1, 1024)));
    assert!(!q.allows((3, 0), (1, 1)));
    assert!(!q.allows((0, 10 * 1024), (1, 1)));
    assert!(q.allows((9, 99 * 1024), (0, 0)), "nothing added is never refused");
}

/// Issue 13, the state merge: a replica cut off from its peer makes changes
/// of its own, shown to its client, while the peer goes on (and, in a real
/// node, compacts its log past what the replica has). A snapshot of the peer
/// that lacks the replica's changes is refused, leaving it as it was; once
/// the peer holds them, the replica installs the peer's state: it then
/// equals the peer, its own changes are in it, and no UID its client was
/// shown names another message.
#[test]
fn a_replica_with_changes_of_its_own_installs_a_snapshot_that_holds_them() {
    use starling_model::snapshot::InstallError;
    let mut c = Cluster::new(2);
    let ms: Vec<_> = (0..6).map(|_| c.append(0, INBOX, vec![]).unwrap()).collect();
    sync(&mut c);
    c.look(0, INBOX);
    c.look(1, INBOX);
    c.partition(&[0, 1]);
    c.client(0, |r| r.store_flags(ms[0], &[Keyword::Flagged], &[]).unwrap());
    c.client(0, |r| r.expunge(&[ms[1]]).unwrap());
    for _ in 0..3 {
        c.append(0, INBOX, vec![]);
    }
    c.look(0, INBOX);
    let own = c.append(1, INBOX, vec![Keyword::Seen]).unwrap();
    c.client(1, |r| r.store_flags(ms[2], &[Keyword::Answered], &[]).unwrap());
    c.look(1, INBOX);
    c.check_step().unwrap();

    let before = c.replicas[1].dump();
    let lacking = c.replicas[0].export_state().unwrap();
    assert!(matches!(c.replicas[1].import_state(lacking), Err(InstallError::Older)));
    assert_eq!(c.replicas[1].dump(), before, "a refused snapshot changes nothing");

    // Replica 1's changes reach 0 (one way only), then 0's state reaches 1.
    c.set_link(0, 1, true);
    while c.deliver(1, 0, 0, false) {}
    let snap = c.replicas[0].export_state().unwrap();
    c.replicas[1].import_state(snap.clone()).unwrap();
    assert_eq!(c.replicas[1].dump(), c.replicas[0].dump());
    assert_eq!(c.replicas[1].flags(own).unwrap().into_iter().collect::<Vec<_>>(), vec![Keyword::Seen]);
    assert!(c.replicas[1].flags(ms[2]).unwrap().contains(&Keyword::Answered));
    assert!(c.replicas[1].is_expunged(ms[1]));
    c.check_step().unwrap();
    // The same snapshot again changes nothing.
    c.replicas[1].import_state(snap).unwrap();
    assert_eq!(c.replicas[1].dump(), c.replicas[0].dump());
    // Onwards by ops, both ways (what 0 queued for 1 is already in its state).
    c.client(1, |r| r.store_flags(own, &[Keyword::Draft], &[]).unwrap());
    c.append(0, INBOX, vec![]);
    sync(&mut c);
    assert!(c.replicas[0].flags(own).unwrap().contains(&Keyword::Draft));
}

/// A message shown and then expunged spends its UID for good: its claims
/// are dropped, a mark stays, and a message another replica placed at
/// that UID while cut off never takes it (U2) — on the replica that
/// dropped the claims and on the one that still had them when the other
/// message came, alike.
#[test]
fn a_shown_expunged_message_spends_its_uid_and_its_claims_go() {
    spent_uid_history().unwrap();
}

fn spent_uid_history() -> Result<(), String> {
    use starling_model::backend::Backend;
    let mut c = Cluster::new(2);
    c.partition(&[0, 1]);
    let e = c.append(0, INBOX, vec![]).unwrap();
    c.look(0, INBOX);
    assert_eq!(c.replicas[0].uid_of(e).unwrap().1, 1);
    c.replicas[0].expunge(&[e]).unwrap();
    c.check_step()?;
    let idx = c.replicas[0].mailbox_index(INBOX).unwrap();
    let a = c.replicas[0].backend();
    assert!(a.side_at(idx, 1).unwrap().is_empty(), "the expunged message's claim is gone");
    // Meanwhile B placed its own message at UID 1 (no client saw it).
    let x = c.append(1, INBOX, vec![]).unwrap();
    assert_eq!(c.replicas[1].uid_of(x).unwrap().1, 1);
    c.heal();
    c.deliver_all(&mut Rng::new(7));
    c.check_step()?;
    c.check_converged()?;
    for r in &c.replicas {
        let (_, u) = r.uid_of(x).unwrap();
        if u <= 1 {
            return Err(format!("the other message left UID 1? it is at {u}"));
        }
        assert!(r.view(INBOX).iter().all(|(u, _, _)| *u != 1));
        let i = r.mailbox_index(INBOX).unwrap();
        assert!(r.backend().is_dead(i, 1).unwrap(), "spent on every replica");
        let pe = r.packed_message(e);
        assert!(r.backend().side_at(i, 1).unwrap().iter().all(|cl| Some(cl.message) != pe), "no claim of it left");
    }
    Ok(())
}

/// A withdrawn claim of an expunged message is dropped, and a pin of it
/// arriving later spends its UID (pin-spends): B's message E lost UID 1 to
/// A's X at B, so B withdrew that claim and E went to 2, then B expunged E.
/// C had shown E at UID 1 before (its announce pins B's claim). A gets B's
/// ops first and drops the withdrawn claim; C's pin then reaches A, and X,
/// which A showed nobody, moves off UID 1 as it would if the claim were
/// still there. Returns every replica's dump after each step, for the
/// comparison with the same history keeping withdrawn claims.
fn late_pin_history(options: starling_model::ReplicaOptions) -> Result<Vec<String>, String> {
    use starling_model::backend::{Backend, StateReads};
    use starling_model::snapshot::ClaimKind;
    let drop = options.drop_withdrawn;
    let mut c = Cluster::with_options(3, options);
    let mut dumps = Vec::new();
    let mut step = |c: &mut Cluster| -> Result<(), String> {
        c.check_step()?;
        dumps.push(c.dumps());
        Ok(())
    };
    c.partition(&[0, 1, 2]);
    let x = c.append(0, INBOX, vec![]).unwrap();
    let e = c.append(1, INBOX, vec![]).unwrap();
    step(&mut c)?;
    c.flush(1, 2);
    c.look(2, INBOX);
    assert_eq!(c.replicas[2].uid_of(e), Some((INBOX, 1)), "C showed E at 1");
    step(&mut c)?;
    c.flush(0, 1);
    assert_eq!(c.replicas[1].uid_of(x), Some((INBOX, 1)), "A's X wins UID 1 at B (nobody showed either there)");
    assert_eq!(c.replicas[1].uid_of(e), Some((INBOX, 2)));
    c.client(1, |r| r.expunge(&[e])).unwrap();
    step(&mut c)?;
    c.flush(1, 0);
    let a = &c.replicas[0];
    let idx = a.mailbox_index(INBOX).unwrap();
    let pe = a.packed_message(e).unwrap();
    let held = a.backend().side_at(idx, 1).unwrap().iter().any(|cl| cl.message == pe);
    assert_eq!(held, !drop, "A holds E's withdrawn claim at 1 only when it keeps withdrawn claims");
    let marked = a
        .backend()
        .claims_in(idx, ClaimKind::Retracted, None, usize::MAX)
        .unwrap()
        .iter()
        .any(|k| k.uid == 1 && k.message == pe);
    assert_eq!(marked, !drop, "its withdrawal mark goes with it");
    assert!(
        a.backend().claims_in(idx, ClaimKind::Pinned, None, usize::MAX).unwrap().is_empty(),
        "nothing pinned at A yet"
    );
    assert_eq!(a.uid_of(x), Some((INBOX, 1)), "X still at 1 at A before the pin");
    assert!(!a.backend().is_dead(idx, 1).unwrap());
    step(&mut c)?;
    // C's announce (pinning B's claim of E at 1) reaches A now.
    c.flush(2, 0);
    let a = &c.replicas[0];
    if !a.backend().is_dead(idx, 1).unwrap() {
        return Err("the late pin did not spend UID 1 at A".into());
    }
    if a.uid_of(x).is_none_or(|(_, u)| u <= 1) {
        return Err(format!("X did not move off UID 1 at A: {:?}", a.uid_of(x)));
    }
    assert!(a.backend().side_at(idx, 1).unwrap().iter().all(|cl| cl.message != pe), "no claim of E at 1 left");
    assert!(
        a.backend().claims_in(idx, ClaimKind::Pinned, None, usize::MAX).unwrap().iter().all(|k| k.message != pe),
        "no pin of E kept"
    );
    step(&mut c)?;
    c.heal();
    c.deliver_all(&mut Rng::new(7));
    c.check_converged()?;
    for r in &c.replicas {
        let i = r.mailbox_index(INBOX).unwrap();
        assert!(r.backend().is_dead(i, 1).unwrap(), "UID 1 spent on every replica");
        assert!(r.uid_of(x).is_some_and(|(_, u)| u > 1), "X moved off UID 1 everywhere");
    }
    step(&mut c)?;
    Ok(dumps)
}

#[test]
fn a_late_pin_of_a_dropped_withdrawn_claim_spends_its_uid() {
    let dropping = late_pin_history(starling_model::ReplicaOptions::default()).unwrap();
    let keeping =
        late_pin_history(starling_model::ReplicaOptions { drop_withdrawn: false, ..Default::default() }).unwrap();
    assert_eq!(dropping, keeping, "dropping withdrawn claims changes what clients see");
}
