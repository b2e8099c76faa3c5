//! Claim lists longer than the export's page (4,096 keys) on real redb
//! files: a snapshot pages through them from a read transaction and carries
//! every claim, and an install into a replica holding more than a page of
//! side claims of its own replaces them page by page.

use starling_model::snapshot::{SnapMailbox, StateSnapshot};
use starling_model::{BlobId, Keyword, Replica, ReplicaId, INBOX};
use starling_store::{Store, StoreOptions};

fn store(dir: &tempfile::TempDir, name: &str, node: u64) -> Store {
    let s = Store::open(&dir.path().join(name), ReplicaId(node), StoreOptions::default()).unwrap();
    s.add_account("u").unwrap();
    s
}

fn state(s: &Store) -> StateSnapshot {
    s.inspect("u", |r| r.export_state()).unwrap().unwrap()
}

/// Exchanges ops between two stores until both hold the same.
fn exchange(a: &Store, b: &Store) {
    for _ in 0..8 {
        let (va, vb) = (a.version("u").unwrap(), b.version("u").unwrap());
        if va == vb {
            return;
        }
        let to_b = a.ops_since("u", &vb).unwrap();
        let to_a = b.ops_since("u", &va).unwrap();
        b.write("u", |w| w.apply(to_b)).unwrap();
        a.write("u", |w| w.apply(to_a)).unwrap();
    }
    panic!("no convergence in 8 rounds");
}

#[test]
fn claim_lists_longer_than_a_page_travel_whole_and_are_replaced_page_by_page() {
    let dir = tempfile::tempdir().unwrap();
    // Two devices append 2,500 messages each to INBOX while apart, and
    // their clients see them: every UID up to 2,500 is claimed twice,
    // shown as different messages on each side.
    let n = 2_500u64;
    let (mut p, mut q) = (Replica::new(ReplicaId(0x71)), Replica::new(ReplicaId(0x72)));
    let mut first = None;
    for i in 0..n {
        let m = p.append(INBOX, BlobId::of(&[b"p".as_slice(), &i.to_le_bytes()].concat()), 10, 0, vec![]).unwrap();
        first.get_or_insert(m);
        q.append(INBOX, BlobId::of(&[b"q".as_slice(), &i.to_le_bytes()].concat()), 10, 0, vec![]).unwrap();
    }
    p.announce(INBOX).unwrap();
    q.announce(INBOX).unwrap();
    let (from_p, from_q) = (p.take_outbox(), q.take_outbox());

    // Two replicas take both histories and renumber; they exchange their
    // own claims until they agree.
    let c = store(&dir, "c.redb", 0xc);
    let e = store(&dir, "e.redb", 0xe);
    for s in [&c, &e] {
        s.write("u", |w| w.apply(from_p.clone())).unwrap();
        s.write("u", |w| w.apply(from_q.clone())).unwrap();
    }
    exchange(&c, &e);
    let inbox = |s: &StateSnapshot| s.mailboxes.iter().find(|m| m.id == INBOX).unwrap().clone();
    let at_c = inbox(&state(&c));
    assert_eq!(at_c.messages.len() as u64, 2 * n, "every message placed once");
    assert!(at_c.side.len() > 4_096, "{} side claims: more than a page", at_c.side.len());
    // (Which of two claims of one message at one UID is the placed one
    // and which the side one may differ between replicas: compare all.)
    let claims = |m: &SnapMailbox| {
        let mut all: Vec<_> = m.messages.iter().map(|x| (x.uid, x.id, x.claimant)).collect();
        all.extend(m.side.iter().map(|x| (x.uid, x.message, x.claimant)));
        all.sort();
        all
    };
    assert!(claims(&inbox(&state(&e))) == claims(&at_c), "the same claims on both");
    // Into an empty store: every claim arrives.
    let d = store(&dir, "d.redb", 0xd);
    d.install_snapshot("u", &c.snapshot("u").unwrap()).unwrap();
    assert_eq!(d.version("u").unwrap(), c.version("u").unwrap());
    assert!(inbox(&state(&d)) == at_c, "placed messages and every claim list, whole");

    // Into a store holding those claims too (E, one change behind C): its
    // side claims are taken out page by page and C's put in their place.
    p.store_flags(first.unwrap(), &[Keyword::Flagged], &[]).unwrap();
    c.write("u", |w| w.apply(p.take_outbox())).unwrap();
    e.install_snapshot("u", &c.snapshot("u").unwrap()).unwrap();
    assert_eq!(e.version("u").unwrap(), c.version("u").unwrap(), "the install made no op of its own");
    assert!(inbox(&state(&e)) == inbox(&state(&c)), "E holds C's claims, as C holds them");
    assert_eq!(e.dump("u").unwrap(), c.dump("u").unwrap());
}
