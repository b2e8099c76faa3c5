//! An expunged message keeps no row of its own: "expunged" is "its append
//! is within the replica's version and it is not live" (`docs/semantics.md`,
//! "Expunged messages"). Expunge still wins over every concurrent change
//! arriving later, across a reopen and across the format upgrade that drops
//! the old per-message tombstone rows.

use redb::ReadableDatabase;
use starling_model::{Keyword, MessageId, ReplicaId, INBOX};
use starling_store::{Store, StoreOptions};
use std::path::Path;

fn message(n: usize) -> Vec<u8> {
    format!("From: a@example.org\r\nSubject: m{n}\r\n\r\nbody {n}\r\n").into_bytes()
}

fn open(path: &Path, id: u64) -> Store {
    Store::open(path, ReplicaId(id), StoreOptions::default()).unwrap()
}

fn table_rows(s: &Store, table: &str) -> Option<u64> {
    s.table_sizes().unwrap().iter().find(|t| t.name == table).map(|t| t.rows)
}

fn live(s: &Store) -> Vec<MessageId> {
    s.read("u").unwrap().messages(INBOX, 1, usize::MAX).unwrap().into_iter().map(|m| m.message).collect()
}

/// Gives `to` every op `from` has that `to` lacks.
fn sync(from: &Store, to: &Store) {
    let ops = from.ops_since("u", &to.version("u").unwrap()).unwrap();
    to.write("u", |b| b.apply(ops)).unwrap();
}

fn expunged(s: &Store, m: MessageId) -> bool {
    s.write("u", |b| Ok(b.replica().is_expunged(m))).unwrap()
}

const N: usize = 500;

/// Stores A (at `a.redb`) and B in `dir`, account `u`: `n` messages
/// appended at A, and B holding them too.
fn a_and_b(dir: &Path, n: usize) -> (Store, Store, Vec<MessageId>) {
    let (a, b) = (open(&dir.join("a.redb"), 0x1001), open(&dir.join("b.redb"), 0x2002));
    for s in [&a, &b] {
        s.add_account("u").unwrap();
    }
    let ids: Vec<MessageId> = a
        .write("u", |w| (0..n).map(|i| w.append(INBOX, &message(i), i as i64, vec![])).collect::<Result<_, _>>())
        .unwrap();
    sync(&a, &b);
    (a, b, ids)
}

/// `s`'s client adds `flag` to each of `ids` (and looks first, if `look`).
fn flag_all(s: &Store, ids: &[MessageId], flag: &str, look: bool) {
    let flag = Keyword::parse(flag).unwrap();
    s.write("u", |w| {
        if look {
            w.replica().announce(INBOX)?;
        }
        for m in ids {
            w.replica().store_flags(*m, std::slice::from_ref(&flag), &[])?;
        }
        Ok(())
    })
    .unwrap();
}

/// A holds N messages that B has too; B's client looks at them (an
/// announce) and flags them, A's expunges them, each before seeing the
/// other's changes. A keeps no row per expunged message, and B's flags,
/// arriving after the expunge (and after a reopen), bring nothing back.
#[test]
fn an_expunge_keeps_no_row_per_message_and_still_wins_after_a_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let pa = dir.path().join("a.redb");
    let (a, b, ids) = a_and_b(dir.path(), N);
    flag_all(&b, &ids, "\\Flagged", true);
    a.write("u", |w| Ok(w.replica().expunge(&ids)?)).unwrap();
    assert!(live(&a).is_empty());
    assert!(ids.iter().all(|m| expunged(&a, *m)));
    assert_eq!(table_rows(&a, "tombstones").unwrap_or(0), 0, "no row per expunged message");

    drop(a);
    let a = open(&pa, 0x1001);
    assert!(ids.iter().all(|m| expunged(&a, *m)), "expunged after a reopen");
    sync(&b, &a);
    assert!(live(&a).is_empty(), "B's concurrent flags bring nothing back");
    sync(&a, &b);
    assert!(live(&b).is_empty(), "the expunge wins at B");
    assert!(ids.iter().all(|m| expunged(&b, *m)));
    assert_eq!(a.spent_uids("u").unwrap(), N as u64, "B showed every UID: each is spent");
    assert_eq!(b.spent_uids("u").unwrap(), N as u64);
    assert_eq!(a.version("u").unwrap(), b.version("u").unwrap());
}

/// A store written before format 11 kept a row per expunged message in
/// `tombstones`. Opening it drops that table; what it said still holds.
#[test]
fn the_tombstone_rows_of_an_older_store_go_at_open() {
    let dir = tempfile::tempdir().unwrap();
    let pa = dir.path().join("a.redb");
    let (a, b, ids) = a_and_b(dir.path(), 20);
    flag_all(&b, &ids, "\\Seen", false);
    a.write("u", |w| Ok(w.replica().expunge(&ids[..10])?)).unwrap();
    drop(a);
    {
        // What format 10 left: a row per expunged message, and its mark.
        let db = redb::Database::open(&pa).unwrap();
        let w = db.begin_write().unwrap();
        {
            let mut t = w.open_table(redb::TableDefinition::<(u32, u64), ()>::new("tombstones")).unwrap();
            for i in 0..10u64 {
                t.insert((1, i), ()).unwrap();
            }
            w.open_table(redb::TableDefinition::<&str, &[u8]>::new("meta"))
                .unwrap()
                .insert("version", [10u8].as_slice())
                .unwrap();
        }
        w.commit().unwrap();
    }
    let a = open(&pa, 0x1001);
    assert_eq!(table_rows(&a, "tombstones"), None, "the table is gone");
    assert_eq!(live(&a), ids[10..].to_vec());
    assert!(ids[..10].iter().all(|m| expunged(&a, *m)));
    assert!(ids[10..].iter().all(|m| !expunged(&a, *m)));
    sync(&b, &a);
    assert_eq!(live(&a), ids[10..].to_vec(), "B's flags on the expunged ten bring nothing back");
    drop(a);
    let db = redb::Database::open(&pa).unwrap();
    let r = db.begin_read().unwrap();
    let meta = r.open_table(redb::TableDefinition::<&str, &[u8]>::new("meta")).unwrap();
    assert_eq!(meta.get("version").unwrap().unwrap().value(), [11u8].as_slice());
}

/// Power cuts spread over the open that drops an older store's tombstone
/// rows: after each, the file is either format 10 with its rows or format
/// 11 without the table (one transaction), and the next open gives the
/// same live and expunged messages.
#[test]
fn a_power_cut_while_the_tombstones_go_leaves_either_format() {
    use starling_store::memdisk::MemDisk;
    let node = ReplicaId(7);
    let disk = MemDisk::new();
    let (n, gone) = (2_000usize, 1_500usize);
    let ids: Vec<MessageId> = {
        let store = Store::open_on(disk.backend(), "mem", node, StoreOptions::default()).unwrap();
        store.add_account("u").unwrap();
        let ids: Vec<MessageId> = store
            .write("u", |w| (0..n).map(|i| w.append(INBOX, &message(i), i as i64, vec![])).collect::<Result<_, _>>())
            .unwrap();
        store.write("u", |w| Ok(w.replica().expunge(&ids[..gone])?)).unwrap();
        ids
    };
    let tombstones = redb::TableDefinition::<(u32, u64), ()>::new("tombstones");
    let meta = redb::TableDefinition::<&str, &[u8]>::new("meta");
    {
        let db = redb::Database::builder().create_with_backend(disk.backend()).unwrap();
        let w = db.begin_write().unwrap();
        {
            let mut t = w.open_table(tombstones).unwrap();
            for i in 0..gone as u64 {
                t.insert((1, i), ()).unwrap();
            }
            w.open_table(meta).unwrap().insert("version", [10u8].as_slice()).unwrap();
        }
        w.commit().unwrap();
    }
    let image = disk.durable_copy();
    let whole = {
        let d = image.durable_copy();
        drop(Store::open_on(d.backend(), "mem", node, StoreOptions::default()).unwrap());
        d.ops()
    };
    let state = |d: &MemDisk| {
        let db = redb::Database::builder().create_with_backend(d.backend()).unwrap();
        let r = db.begin_read().unwrap();
        let version = r.open_table(meta).unwrap().get("version").unwrap().unwrap().value()[0];
        let rows = match r.open_table(tombstones) {
            Ok(t) => Some(redb::ReadableTableMetadata::len(&t).unwrap()),
            Err(redb::TableError::TableDoesNotExist(_)) => None,
            Err(e) => panic!("{e}"),
        };
        (version, rows)
    };
    let mut seen = std::collections::BTreeSet::new();
    for k in 1..=16u64 {
        let cut = whole * k / 17;
        let d = image.durable_copy();
        d.fail_after(Some(cut));
        let opened = Store::open_on(d.backend(), "mem", node, StoreOptions::default());
        drop(opened);
        d.crash();
        d.fail_after(None);
        let after = state(&d);
        assert!(matches!(after, (10, Some(r)) if r == gone as u64) || after == (11, None), "cut {cut}: {after:?}");
        seen.insert(after.0);
        let store = Store::open_on(d.backend(), "mem", node, StoreOptions::default()).unwrap();
        assert_eq!(live(&store), ids[gone..].to_vec(), "cut {cut}");
        for m in [ids[0], ids[gone / 2], ids[gone - 1]] {
            assert!(expunged(&store, m), "cut {cut}");
        }
        assert!(!expunged(&store, ids[gone]), "cut {cut}");
        drop(store);
        assert_eq!(state(&d), (11, None), "cut {cut}");
    }
    assert_eq!(seen.len(), 2, "cuts landed on both sides of the upgrade: {seen:?}");
}

/// How long the open that drops an older store's tombstone rows takes
/// (not a check: `TOMBSTONE_ROWS` rows, default 3,000,000). Run with
/// `cargo test --release -p starling-store --test expunged bench -- --ignored --nocapture`.
#[test]
#[ignore]
fn bench_dropping_tombstone_rows_at_open() {
    let rows: u64 = std::env::var("TOMBSTONE_ROWS").ok().and_then(|v| v.parse().ok()).unwrap_or(3_000_000);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("a.redb");
    drop(open(&path, 0x1001));
    {
        let db = redb::Database::open(&path).unwrap();
        let w = db.begin_write().unwrap();
        {
            let mut t = w.open_table(redb::TableDefinition::<(u32, u64), ()>::new("tombstones")).unwrap();
            for i in 0..rows {
                t.insert((1, i.wrapping_mul(0x9e37_79b9_7f4a_7c15) >> 16), ()).unwrap();
            }
            w.open_table(redb::TableDefinition::<&str, &[u8]>::new("meta"))
                .unwrap()
                .insert("version", [10u8].as_slice())
                .unwrap();
        }
        w.commit().unwrap();
    }
    let len = std::fs::metadata(&path).unwrap().len();
    let t = std::time::Instant::now();
    let a = open(&path, 0x1001);
    let took = t.elapsed();
    assert_eq!(table_rows(&a, "tombstones"), None);
    println!("{rows} tombstone rows, file {:.1} MB: dropped at open in {took:?}", len as f64 / 1e6);
}
