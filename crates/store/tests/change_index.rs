//! The IMAP change index on a real redb file stays bounded: CONDSTORE's
//! change rows by the live messages, QRESYNC's expunge rows by a number
//! per mailbox. Below what a mailbox still remembers, QRESYNC over-reports
//! (RFC 7162 allows it) and never under-reports.

use redb::ReadableTable;
use starling_model::{Keyword, MessageId, INBOX};
use starling_store::{Store, StoreOptions};

const NODE: starling_model::ReplicaId = starling_model::ReplicaId(0x5eed);

fn open(dir: &std::path::Path, kept: u32) -> Store {
    let options = StoreOptions { vanished_per_mailbox: kept, ..StoreOptions::default() };
    Store::open(&dir.join("s.redb"), NODE, options).unwrap()
}

fn message(n: usize) -> Vec<u8> {
    format!("From: a@example.org\r\nSubject: m{n}\r\n\r\nbody {n}\r\n").into_bytes()
}

fn append(store: &Store, n: usize) -> Vec<MessageId> {
    store
        .write("u", |b| (0..n).map(|i| b.append(INBOX, &message(i), 0, vec![])).collect::<Result<Vec<_>, _>>())
        .unwrap()
}

fn uid_of(store: &Store, m: MessageId) -> u32 {
    let r = store.read("u").unwrap();
    r.messages(INBOX, 1, usize::MAX).unwrap().into_iter().find(|i| i.message == m).unwrap().uid
}

fn highest(store: &Store) -> u64 {
    store.read("u").unwrap().status(INBOX).unwrap().highest_modseq
}

/// Every flag change used to add a row to the change index that nothing
/// removed (readers skipped the superseded ones): 10 messages changed 50
/// times each held 510 rows. One row per live message is all CHANGEDSINCE
/// needs.
#[test]
fn the_change_index_holds_one_row_per_live_message() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path(), 1_000);
    store.add_account("u").unwrap();
    let ids = append(&store, 10);
    let before = highest(&store);
    for round in 0..50 {
        store
            .write("u", |b| {
                for m in &ids {
                    let (add, remove): (&[_], &[_]) =
                        if round % 2 == 0 { (&[Keyword::Flagged], &[]) } else { (&[], &[Keyword::Flagged]) };
                    b.replica().store_flags(*m, add, remove)?;
                }
                Ok(())
            })
            .unwrap();
    }
    store.write("u", |b| Ok(b.replica().expunge(&ids[..3])?)).unwrap();
    let r = store.read("u").unwrap();
    assert_eq!(r.index_rows(INBOX).unwrap().changes, 7, "one change row per live message");
    assert_eq!(store.check_change_index().unwrap(), Vec::<String>::new());
    // CHANGEDSINCE still finds every message changed since.
    let changed = r.changed_since(INBOX, before, usize::MAX).unwrap();
    let mut uids: Vec<u32> = changed.iter().map(|m| m.uid).collect();
    uids.sort_unstable();
    assert_eq!(uids, (4..=10).collect::<Vec<u32>>());
}

/// A mailbox remembers its last `vanished_per_mailbox` expunges. A client
/// whose MODSEQ is older than them gets every UID of its known range that
/// names no message now (an over-report: never fewer than were expunged);
/// one within them gets exactly the expunges since.
#[test]
fn a_mailbox_remembers_a_bounded_number_of_expunges_and_over_reports_below_them() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path(), 5);
    store.add_account("u").unwrap();
    let ids = append(&store, 30);
    let uids: Vec<u32> = ids.iter().map(|m| uid_of(&store, *m)).collect();
    let old = highest(&store);
    // 20 expunges, one per write, every other message first.
    let order: Vec<usize> = (0..30).step_by(2).chain((1..30).step_by(2)).take(20).collect();
    let mut recent = 0;
    for (k, &i) in order.iter().enumerate() {
        if k == 17 {
            recent = highest(&store);
        }
        store.write("u", |b| Ok(b.replica().expunge(&[ids[i]])?)).unwrap();
    }
    let gone: Vec<u32> = order.iter().map(|&i| uids[i]).collect();
    check_remembered(&store, old, recent, &gone);
    drop(store);
    check_remembered(&open(dir.path(), 5), old, recent, &gone);
}

fn check_remembered(store: &Store, old: u64, recent: u64, gone: &[u32]) {
    {
        let r = store.read("u").unwrap();
        let rows = r.index_rows(INBOX).unwrap();
        assert!(rows.vanished <= 5, "{rows:?}");
        assert_eq!(store.check_change_index().unwrap(), Vec::<String>::new());
        assert_eq!(rows.changes, 10);
        assert_eq!(r.vanished_since(INBOX, old).unwrap(), None, "older than what the mailbox remembers");
        let answer = r.resync(INBOX, Some(old), &[(1, 30)]).unwrap();
        let reported: Vec<u32> = answer.vanished.iter().flat_map(|&(lo, hi)| lo..=hi).collect();
        for u in gone {
            assert!(reported.contains(u), "UID {u} expunged and not reported: {reported:?}");
        }
        let live: Vec<u32> = r.uids(INBOX).unwrap();
        assert!(reported.iter().all(|u| !live.contains(u)), "a live UID reported gone: {reported:?}");
        assert!(answer.changed.is_empty(), "no flag changed since: {:?}", answer.changed);
        // Within what it remembers: exactly the last three.
        let mut exact = r.vanished_since(INBOX, recent).unwrap().expect("remembered");
        exact.sort_unstable();
        let mut last3 = gone[17..].to_vec();
        last3.sort_unstable();
        assert_eq!(exact, last3);
        let within = r.resync(INBOX, Some(recent), &[(1, 30)]).unwrap();
        assert_eq!(within.vanished.iter().flat_map(|&(lo, hi)| lo..=hi).collect::<Vec<_>>(), last3);
    }
}

/// A store written before the bound (format 5) is brought within it at
/// open: superseded change rows go, each mailbox keeps its newest
/// expunge rows, and the answers stay right.
#[test]
fn a_format_5_store_is_brought_within_the_bounds_at_open() {
    let dir = tempfile::tempdir().unwrap();
    let (gone, old) = {
        let store = open(dir.path(), 1_000);
        store.add_account("u").unwrap();
        let ids = append(&store, 12);
        let uids: Vec<u32> = ids.iter().map(|m| uid_of(&store, *m)).collect();
        let old = highest(&store);
        for m in &ids[..8] {
            store.write("u", |b| Ok(b.replica().expunge(&[*m])?)).unwrap();
        }
        (uids[..8].to_vec(), old)
    };
    {
        // As format 5 left it: no counts, and a superseded change row
        // (an older MODSEQ of a live message).
        let db = redb::Database::open(dir.path().join("s.redb")).unwrap();
        let w = db.begin_write().unwrap();
        w.delete_table(redb::TableDefinition::<(u32, u32), (u64, u64)>::new("vanished_kept")).unwrap();
        {
            let mut changes = w.open_table(redb::TableDefinition::<(u32, u32, u64), u32>::new("changes")).unwrap();
            let (a, mb, _) = changes.first().unwrap().unwrap().0.value();
            changes.insert((a, mb, 1), 12).unwrap();
        }
        w.open_table(redb::TableDefinition::<&str, &[u8]>::new("meta"))
            .unwrap()
            .insert("version", [5u8].as_slice())
            .unwrap();
        w.commit().unwrap();
    }
    let store = open(dir.path(), 3);
    let r = store.read("u").unwrap();
    let rows = r.index_rows(INBOX).unwrap();
    assert_eq!((rows.changes, rows.vanished), (4, 3), "{rows:?}");
    assert_eq!(store.check_change_index().unwrap(), Vec::<String>::new());
    assert_eq!(r.vanished_since(INBOX, old).unwrap(), None);
    let reported: Vec<u32> =
        r.resync(INBOX, Some(old), &[(1, 12)]).unwrap().vanished.iter().flat_map(|&(lo, hi)| lo..=hi).collect();
    assert!(gone.iter().all(|u| reported.contains(u)), "{reported:?}");
}

/// The check finds an index that disagrees with the messages (what the
/// crash tests and the simulator rely on).
#[test]
fn the_check_finds_a_wrong_change_index() {
    let dir = tempfile::tempdir().unwrap();
    {
        let store = open(dir.path(), 2);
        store.add_account("u").unwrap();
        let ids = append(&store, 6);
        for m in &ids[..4] {
            store.write("u", |b| Ok(b.replica().expunge(&[*m])?)).unwrap();
        }
        assert_eq!(store.check_change_index().unwrap(), Vec::<String>::new());
    }
    {
        let db = redb::Database::open(dir.path().join("s.redb")).unwrap();
        let w = db.begin_write().unwrap();
        {
            let mut changes = w.open_table(redb::TableDefinition::<(u32, u32, u64), u32>::new("changes")).unwrap();
            let (a, mb, _) = changes.first().unwrap().unwrap().0.value();
            changes.insert((a, mb, 1), 40).unwrap();
            let mut kept = w.open_table(redb::TableDefinition::<(u32, u32), (u64, u64)>::new("vanished_kept")).unwrap();
            kept.insert((a, mb), (0, 7)).unwrap();
        }
        w.commit().unwrap();
    }
    let found = open(dir.path(), 2).check_change_index().unwrap();
    assert_eq!(found.len(), 2, "{found:?}");
    assert!(found[0].contains("names no message") && found[1].contains("counted 7"), "{found:?}");
}
