//! Withdrawn claims of expunged messages dropped, and a late pin spending
//! their UID (`docs/semantics.md`, "Withdrawn claims of expunged messages
//! are dropped"), through the store's redb tables: the same apply path as
//! the model's in-memory backend, kept across a reopen.

use starling_model::{MessageId, ReplicaId, INBOX};
use starling_store::{Store, StoreOptions};

fn message(n: usize) -> Vec<u8> {
    format!("From: a@example.org\r\nSubject: m{n}\r\n\r\nbody {n}\r\n").into_bytes()
}

fn rows(s: &Store, table: &str) -> u64 {
    s.table_sizes().unwrap().iter().find(|t| t.name == table).map_or(0, |t| t.rows)
}

fn uid(s: &Store, m: MessageId) -> Option<u32> {
    s.read("u").unwrap().messages(INBOX, 1, usize::MAX).unwrap().iter().find(|x| x.message == m).map(|x| x.uid)
}

/// Gives `to` every op `from` has that `to` lacks.
fn sync(from: &Store, to: &Store) {
    let ops = from.ops_since("u", &to.version("u").unwrap()).unwrap();
    to.write("u", |b| b.apply(ops)).unwrap();
}

/// B's message E loses UID 1 to A's X at B (A's id is lower, nobody showed
/// either there), so B withdraws that claim and E moves to 2; B expunges E.
/// C had shown E at 1 (its announce pins B's claim). A gets B's ops and
/// drops the withdrawn claim; then C's pin reaches A and spends UID 1, and
/// X, shown to nobody, moves off it.
#[test]
fn a_late_pin_of_a_dropped_withdrawn_claim_spends_its_uid_in_the_store() {
    let dir = tempfile::tempdir().unwrap();
    let path = |n: &str| dir.path().join(n);
    let open = |n: &str, id: u64| Store::open(&path(n), ReplicaId(id), StoreOptions::default()).unwrap();
    let (a, b, c) = (open("a.redb", 0x1001), open("b.redb", 0x2002), open("c.redb", 0x3003));
    for s in [&a, &b, &c] {
        s.add_account("u").unwrap();
    }
    let x = a.write("u", |w| w.append(INBOX, &message(1), 1, vec![])).unwrap();
    let e = b.write("u", |w| w.append(INBOX, &message(2), 1, vec![])).unwrap();
    sync(&b, &c);
    c.write("u", |w| Ok(w.replica().announce(INBOX)?)).unwrap();
    assert_eq!(uid(&c, e), Some(1), "C showed E at 1");
    sync(&a, &b);
    assert_eq!((uid(&b, x), uid(&b, e)), (Some(1), Some(2)), "B withdrew E's claim at 1");
    b.write("u", |w| Ok(w.replica().expunge(&[e])?)).unwrap();
    assert_eq!(rows(&b, "retracted"), 0, "B dropped the withdrawn claim of E with its mark");
    sync(&b, &a);
    assert_eq!(rows(&a, "retracted"), 0, "A dropped it too");
    assert_eq!(uid(&a, x), Some(1));
    assert_eq!(a.spent_uids("u").unwrap(), 0);
    sync(&c, &a);
    assert_eq!(a.spent_uids("u").unwrap(), 1, "the late pin spent UID 1");
    assert!(uid(&a, x).is_some_and(|u| u > 1), "X moved off UID 1: {:?}", uid(&a, x));
    assert_eq!(rows(&a, "pinned"), 0, "no pin of a claim that is gone is kept");
    drop(a);
    let a = open("a.redb", 0x1001);
    assert_eq!(a.spent_uids("u").unwrap(), 1, "kept across a reopen");
    for _ in 0..2 {
        for (s, t) in [(&a, &b), (&a, &c), (&b, &c), (&b, &a), (&c, &a), (&c, &b)] {
            sync(s, t);
        }
    }
    for s in [&a, &b, &c] {
        assert_eq!(s.spent_uids("u").unwrap(), 1);
        assert!(uid(s, x).is_some_and(|u| u > 1));
        assert_eq!(uid(s, x), uid(&a, x), "one UID for X everywhere");
    }
}
