//! Forgetting an account (`Store::forget_account`): every other account
//! is left exactly as it was (its dump, its bodies, the body index), the
//! forgotten one leaves no row behind, freeing runs in bounded
//! transactions, a power cut at any disk operation leaves the account
//! whole or gone (finished at the next open), and a copy made again
//! after forgetting re-syncs from a peer and goes on without reusing an
//! op id of the forgotten copy.

mod common;

use proptest::prelude::*;
use starling_model::{BlobId, Keyword, MailboxId, MessageId, ReplicaId, INBOX};
use starling_store::memdisk::MemDisk;
use starling_store::{Store, StoreOptions, FORGET_ROWS_PER_TXN};
use std::collections::{BTreeMap, BTreeSet};

const ACCOUNTS: [&str; 3] = ["alice", "bob", "carol"];

fn body(n: usize) -> Vec<u8> {
    format!("From: x@example.org\r\nSubject: body {n}\r\n\r\n{}\r\n", "y".repeat(50 + n)).into_bytes()
}

/// A body with a large part stored apart (shared parts between bodies).
fn body_with_part(n: usize, part: usize) -> Vec<u8> {
    let attachment = format!("{part:04}").repeat(80_000);
    format!(
        "From: x@example.org\r\nSubject: parted {n}\r\nMIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=B\r\n\r\n--B\r\nContent-Type: text/plain\r\n\r\nhello {n}\r\n--B\r\nContent-Type: application/octet-stream\r\n\r\n{attachment}\r\n--B--\r\n"
    )
    .into_bytes()
}

fn raw(i: usize) -> Vec<u8> {
    if i % 4 == 3 {
        body_with_part(i, i % 2)
    } else {
        body(i)
    }
}

/// Live messages of an account with their body.
fn live(store: &Store, account: &str) -> Vec<(MessageId, MailboxId, BlobId)> {
    let r = store.read(account).unwrap();
    let mut out = Vec::new();
    for id in r.names().tree.by_name.values() {
        for m in r.messages(*id, 1, usize::MAX).unwrap() {
            out.push((m.message, *id, r.envelope(m.message).unwrap().unwrap().blob));
        }
    }
    out
}

/// Each account's dump and the bytes of every body it names that it can read.
fn picture(store: &Store, accounts: &[&str]) -> BTreeMap<String, (String, BTreeMap<BlobId, Vec<u8>>)> {
    let mut out = BTreeMap::new();
    for a in accounts {
        let reader = store.read(a).unwrap();
        let bodies =
            live(store, a).into_iter().filter_map(|(_, _, b)| Some((b, reader.body(b).ok()?.to_vec()))).collect();
        out.insert(a.to_string(), (store.dump(a).unwrap(), bodies));
    }
    out
}

/// Every index agrees with the messages and no row of a forgotten account is left.
fn consistent(store: &Store) {
    assert_eq!(store.check_blob_refs().unwrap(), Vec::<String>::new(), "body index");
    assert_eq!(store.check_forgotten().unwrap(), Vec::<String>::new(), "rows of forgotten accounts");
    assert_eq!(store.check_sort_keys().unwrap(), Vec::<String>::new(), "sort keys");
}

fn housekeep(store: &Store) -> starling_store::Housekept {
    store
        .housekeep(&starling_store::Housekeeping {
            now_ms: 1,
            horizon_ms: u64::MAX,
            peers: &[],
            alive: &[],
            compact_log: true,
            collect_bodies: true,
            batch: 64,
        })
        .unwrap()
}

/// Ops, then the bodies they name, from one store to another, as a link
/// pinned for `account` moves them.
fn sync(from: &Store, to: &Store, account: &str) {
    let ops = from.ops_since(account, &to.version(account).unwrap()).unwrap();
    to.write(account, |b| b.apply(ops)).unwrap();
    let shipped: Vec<_> = to
        .missing_blobs(account)
        .unwrap()
        .into_iter()
        .filter_map(|id| Some((id, from.shipped_for(&[account], id).unwrap()?)))
        .collect();
    to.put_shipped(&[account], shipped).unwrap();
}

/// Syncs both ways until both hold the same ops (settling a UID on one
/// side can make ops the other must get): at most 8 rounds.
fn converge(a: &Store, b: &Store, account: &str) {
    for _ in 0..8 {
        sync(a, b, account);
        sync(b, a, account);
        if a.version(account).unwrap() == b.version(account).unwrap() {
            return;
        }
    }
    panic!("no convergence in 8 rounds");
}

#[derive(Clone, Debug)]
enum Step {
    Append { account: usize, body: usize },
    Copy { account: usize, pick: usize },
    Move { account: usize, pick: usize },
    Flag { account: usize, pick: usize },
    Expunge { account: usize, pick: usize },
    Collect,
}

fn step() -> impl Strategy<Value = Step> {
    let a = 0usize..3;
    prop_oneof![
        4 => (a.clone(), 0usize..8).prop_map(|(account, body)| Step::Append { account, body }),
        2 => (a.clone(), any::<usize>()).prop_map(|(account, pick)| Step::Copy { account, pick }),
        1 => (a.clone(), any::<usize>()).prop_map(|(account, pick)| Step::Move { account, pick }),
        1 => (a.clone(), any::<usize>()).prop_map(|(account, pick)| Step::Flag { account, pick }),
        2 => (a, any::<usize>()).prop_map(|(account, pick)| Step::Expunge { account, pick }),
        1 => Just(Step::Collect),
    ]
}

fn run(store: &Store, boxes: &[MailboxId], s: &Step) {
    let pick = |account: usize, p: usize| {
        let l = live(store, ACCOUNTS[account]);
        (!l.is_empty()).then(|| l[p % l.len()].0)
    };
    match *s {
        Step::Append { account, body } => {
            store.write(ACCOUNTS[account], |b| b.append(INBOX, &raw(body), body as i64, vec![])).unwrap();
        }
        Step::Copy { account, pick: p } => {
            if let Some(m) = pick(account, p) {
                store.write(ACCOUNTS[account], |b| Ok(b.replica().copy_message(m, boxes[account])?)).unwrap();
            }
        }
        Step::Move { account, pick: p } => {
            if let Some(m) = pick(account, p) {
                store.write(ACCOUNTS[account], |b| Ok(b.replica().move_message(m, boxes[account])?)).unwrap();
            }
        }
        Step::Flag { account, pick: p } => {
            if let Some(m) = pick(account, p) {
                store.write(ACCOUNTS[account], |b| Ok(b.replica().store_flags(m, &[Keyword::Seen], &[])?)).unwrap();
            }
        }
        Step::Expunge { account, pick: p } => {
            if let Some(m) = pick(account, p) {
                store.write(ACCOUNTS[account], |b| Ok(b.replica().expunge(&[m])?)).unwrap();
            }
        }
        Step::Collect => {
            housekeep(store);
        }
    }
}

fn make_boxes(store: &Store) -> Vec<MailboxId> {
    ACCOUNTS.iter().map(|a| store.write(a, |b| Ok(b.replica().create_mailbox("Box", None, None)?)).unwrap()).collect()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(24))]

    /// Three accounts sharing bodies (and large parts), a random history,
    /// then one forgotten: every other account's dump and every body it
    /// names are exactly as before (and after a collection pass and a
    /// reopen), the indexes agree, and no row of the forgotten one is left.
    #[test]
    fn forgetting_one_account_leaves_the_others_exactly(
        steps in prop::collection::vec(step(), 1..40),
        victim in 0usize..3,
    ) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.redb");
        let store = Store::open(&path, ReplicaId(7), StoreOptions::default()).unwrap();
        for a in ACCOUNTS {
            store.add_account(a).unwrap();
        }
        let boxes = make_boxes(&store);
        for s in &steps {
            run(&store, &boxes, s);
        }
        let others: Vec<&str> = ACCOUNTS.iter().copied().filter(|a| *a != ACCOUNTS[victim]).collect();
        let before = picture(&store, &others);
        let victims_bodies: BTreeSet<BlobId> = live(&store, ACCOUNTS[victim]).into_iter().map(|(_, _, b)| b).collect();
        let forgot = store.forget_account(ACCOUNTS[victim]).unwrap();
        prop_assert!(!store.accounts().contains(&ACCOUNTS[victim].to_string()));
        prop_assert!(store.read(ACCOUNTS[victim]).is_err());
        prop_assert!(forgot.rows > 0);
        consistent(&store);
        prop_assert_eq!(&picture(&store, &others), &before);
        // The collector frees what only the victim named, nothing else.
        housekeep(&store);
        consistent(&store);
        prop_assert_eq!(&picture(&store, &others), &before);
        let others_bodies: BTreeSet<BlobId> =
            others.iter().flat_map(|a| live(&store, a)).map(|(_, _, b)| b).collect();
        for b in &victims_bodies {
            prop_assert_eq!(store.has_blob(*b).unwrap(), others_bodies.contains(b), "body {:?}", b);
        }
        drop(store);
        let store = Store::open(&path, ReplicaId(7), StoreOptions::default()).unwrap();
        consistent(&store);
        prop_assert_eq!(&picture(&store, &others), &before);
        drop(store);
        let report = starling_store::verify::verify_file(&path, ReplicaId(7), StoreOptions::default()).unwrap();
        prop_assert!(report.is_clean(), "{:?}", report.index);
        // The others go on; the name can be made again, empty.
        let store = Store::open(&path, ReplicaId(7), StoreOptions::default()).unwrap();
        store.add_account(ACCOUNTS[victim]).unwrap();
        prop_assert!(live(&store, ACCOUNTS[victim]).is_empty());
        run(&store, &boxes, &Step::Append { account: (victim + 1) % 3, body: 1 });
        consistent(&store);
    }
}

/// An account larger than one batch: freeing takes several transactions,
/// none over the bound, and leaves nothing.
#[test]
fn a_large_account_is_forgotten_in_bounded_transactions() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(&dir.path().join("s.redb"), ReplicaId(7), StoreOptions::default()).unwrap();
    store.add_account("big").unwrap();
    store.add_account("small").unwrap();
    for batch in 0..12 {
        store
            .write("big", |b| {
                for i in 0..500 {
                    b.append(INBOX, &body(batch * 500 + i), 0, vec![Keyword::Seen])?;
                }
                Ok(())
            })
            .unwrap();
    }
    store.write("small", |b| b.append(INBOX, &body(3), 0, vec![])).unwrap();
    let before = picture(&store, &["small"]);
    let forgot = store.forget_account("big").unwrap();
    let per_txn = FORGET_ROWS_PER_TXN as u64;
    eprintln!("{forgot:?}");
    // 6,000 messages: envelopes, locations, slots, change rows alone are
    // 24,000 rows.
    assert!(forgot.rows >= 24_000, "{forgot:?}");
    assert!(forgot.transactions > forgot.rows.div_ceil(per_txn + 6), "{forgot:?}");
    // Marker, then full batches; the last adds at most the six single rows.
    assert!(forgot.rows <= (forgot.transactions - 1) * per_txn + 6, "{forgot:?}");
    assert_eq!(forgot.bodies_released, 6_000 - 1, "all but the body small shares");
    consistent(&store);
    assert_eq!(picture(&store, &["small"]), before);
    // A pass collects at most 64 × 64 bodies.
    for _ in 0..3 {
        housekeep(&store);
    }
    assert_eq!(store.bodies_to_collect().unwrap(), BTreeMap::new());
    consistent(&store);
    assert_eq!(picture(&store, &["small"]), before);
}

/// The store the crash test starts from: alice and bob sharing bodies,
/// alice with mail only it names, copies, flags and expunges.
fn crash_image(node: ReplicaId) -> MemDisk {
    let disk = MemDisk::new();
    let store = Store::open_on(disk.backend(), "mem", node, StoreOptions::default()).unwrap();
    for a in ["alice", "bob"] {
        store.add_account(a).unwrap();
    }
    for a in ["alice", "bob"] {
        store
            .write(a, |b| {
                let boxed = b.replica().create_mailbox("Box", None, None)?;
                for i in 0..40 {
                    let n = if a == "alice" { i } else { i + 20 };
                    let m = b.append(INBOX, &raw(n), 0, vec![])?;
                    if i % 5 == 0 {
                        b.replica().copy_message(m, boxed)?;
                    }
                    if i % 7 == 0 {
                        b.replica().expunge(&[m])?;
                    }
                }
                Ok(())
            })
            .unwrap();
    }
    store.set_local_credential("alice", Some("$argon2id$x")).unwrap();
    housekeep(&store);
    drop(store);
    disk.crash();
    disk
}

/// A power cut at every disk operation of forgetting: the store reopens
/// with alice whole (cut before the marker committed) or gone (the open
/// finished the freeing), bob exactly as before, every index consistent;
/// a cut during that finishing at open is survived too.
#[test]
fn a_power_cut_at_any_point_of_forgetting() {
    let node = ReplicaId(11);
    let image = crash_image(node);
    let (alice_before, bob_before) = {
        let d = image.durable_copy();
        let s = Store::open_on(d.backend(), "mem", node, StoreOptions::default()).unwrap();
        consistent(&s);
        (picture(&s, &["alice"]), picture(&s, &["bob"]))
    };
    let (mut whole, mut gone, mut half) = (0, 0, None);
    let mut completed = None;
    for n in 0..10_000u64 {
        let d = image.durable_copy();
        let store = Store::open_on(d.backend(), "mem", node, StoreOptions::default()).unwrap();
        d.fail_after(Some(n));
        let outcome = store.forget_account("alice");
        drop(store);
        if outcome.is_ok() {
            completed = Some(n);
            break;
        }
        d.crash();
        d.fail_after(None);
        // What the cut left, before the reopen finishes it: kept once it
        // holds forgetting begun, for the cut during the finishing at open.
        let probe = d.durable_copy();
        let store = Store::open_on(d.backend(), "mem", node, StoreOptions::default())
            .unwrap_or_else(|e| panic!("reopen after a cut at disk op {n}: {e}"));
        consistent(&store);
        assert_eq!(picture(&store, &["bob"]), bob_before, "cut at disk op {n}: bob");
        if store.accounts().contains(&"alice".to_string()) {
            whole += 1;
            assert_eq!(picture(&store, &["alice"]), alice_before, "cut at disk op {n}: alice whole");
            assert!(store.credential("alice").unwrap().is_some());
            // And forgetting it goes through now.
            store.forget_account("alice").unwrap();
        } else {
            gone += 1;
            assert!(store.read("alice").is_err());
            if half.is_none() && pending_in(&probe, node) {
                half = Some(probe);
            }
        }
        consistent(&store);
        assert_eq!(picture(&store, &["bob"]), bob_before, "cut at disk op {n}: bob after");
        assert_eq!(store.accounts(), vec!["bob".to_string()]);
        assert_eq!(store.credential("alice").unwrap(), None);
    }
    eprintln!("forgetting: {whole} cuts left alice whole, {gone} gone, done after {completed:?} disk ops");
    assert!(completed.is_some(), "forgetting ran to its end within the bound");
    assert!(whole > 0 && gone > 0, "cuts landed before and after the marker ({whole} whole, {gone} gone)");
    // A cut during the finishing at open.
    let half = half.expect("an image with forgetting begun and not finished");
    let done = common::open_cut_at_each_disk_op(&half, node, 10_000, |store, n| {
        assert!(!store.accounts().contains(&"alice".to_string()), "cut at open op {n}");
        consistent(store);
        assert_eq!(picture(store, &["bob"]), bob_before, "cut at open op {n}: bob");
    });
    assert!(done.is_some());
}

/// A power cut at every disk operation of purging a deleted account: the
/// store reopens with the account whole and its name not recorded, or
/// gone and its name recorded as purged (the record is written by the
/// marker's transaction), never one without the other.
#[test]
fn a_power_cut_when_purging_a_deleted_account_keeps_its_name_exactly_when_gone() {
    let node = ReplicaId(12);
    let image = crash_image(node);
    {
        let store = Store::open_on(image.backend(), "mem", node, StoreOptions::default()).unwrap();
        store.delete_account("alice").unwrap();
    }
    image.crash();
    let (mut whole, mut gone) = (0, 0);
    let mut completed = None;
    for n in 0..10_000u64 {
        let d = image.durable_copy();
        let store = Store::open_on(d.backend(), "mem", node, StoreOptions::default()).unwrap();
        assert!(!store.was_purged("alice").unwrap());
        d.fail_after(Some(n));
        let outcome = store.forget_account("alice");
        drop(store);
        if outcome.is_ok() {
            completed = Some(n);
            break;
        }
        d.crash();
        d.fail_after(None);
        let store = Store::open_on(d.backend(), "mem", node, StoreOptions::default())
            .unwrap_or_else(|e| panic!("reopen after a cut at disk op {n}: {e}"));
        consistent(&store);
        if store.accounts().contains(&"alice".to_string()) {
            whole += 1;
            assert!(!store.was_purged("alice").unwrap(), "cut at disk op {n}: whole, not recorded");
            assert!(store.is_deleted("alice").unwrap());
        } else {
            gone += 1;
            assert!(store.was_purged("alice").unwrap(), "cut at disk op {n}: gone, recorded");
            assert!(matches!(store.add_account("alice"), Err(starling_store::StoreError::AccountPurged(_))));
        }
    }
    assert!(completed.is_some(), "purging ran to its end within the bound");
    assert!(whole > 0 && gone > 0, "cuts landed before and after the marker ({whole} whole, {gone} gone)");
}

/// Whether the durable image `disk` holds an account being forgotten
/// (read without finishing it: straight from the file).
fn pending_in(disk: &MemDisk, _node: ReplicaId) -> bool {
    let db = redb::Database::builder().create_with_backend(disk.durable_copy().backend()).unwrap();
    let r = redb::ReadableDatabase::begin_read(&db).unwrap();
    match r.open_table(redb::TableDefinition::<u32, &[u8]>::new("forgetting")) {
        Ok(t) => redb::ReadableTableMetadata::len(&t).unwrap() > 0,
        Err(_) => false,
    }
}

/// Node A forgets alice (whose changes node B holds), takes it again,
/// re-syncs it from B and goes on: A's new changes carry a fresh replica
/// id, so none is taken by B for one of the forgotten copy's, and both
/// converge with every message once.
#[test]
fn a_forgotten_account_comes_back_and_converges_without_reusing_an_op_id() {
    let dirs = [tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap()];
    let a_path = dirs[0].path().join("a.redb");
    let a = Store::open(&a_path, ReplicaId(1), StoreOptions::default()).unwrap();
    let b = Store::open(&dirs[1].path().join("b.redb"), ReplicaId(2), StoreOptions::default()).unwrap();
    a.add_account_as("alice", 77).unwrap();
    b.add_account_as("alice", 78).unwrap();
    // A's changes (B gets them), B's changes (A gets them).
    let mut made = Vec::new();
    for i in 0..5 {
        made.push(a.write("alice", |w| w.append(INBOX, &body(i), 0, vec![])).unwrap());
    }
    a.write("alice", |w| Ok(w.replica().store_flags(made[0], &[Keyword::Flagged], &[])?)).unwrap();
    a.write("alice", |w| Ok(w.replica().create_mailbox("Work", None, None)?)).unwrap();
    made.push(b.write("alice", |w| w.append(INBOX, &body(10), 0, vec![])).unwrap());
    sync(&a, &b, "alice");
    sync(&b, &a, "alice");
    // What A made while taking B's ops (UID settling) reaches B too: B
    // holds every op of A's copy (what `forget_if_safe` asks).
    sync(&a, &b, "alice");
    assert_eq!(a.dump("alice").unwrap(), b.dump("alice").unwrap());
    assert_eq!(a.version("alice").unwrap(), b.version("alice").unwrap());
    let old_counter = a.version("alice").unwrap().get(ReplicaId(1));
    assert!(old_counter >= 7);
    assert_eq!(a.replica_id("alice").unwrap(), ReplicaId(1));

    a.forget_account("alice").unwrap();
    assert!(a.accounts().is_empty());
    // Placed on A again (after a restart, too): a fresh identity.
    drop(a);
    let a = Store::open(&a_path, ReplicaId(1), StoreOptions::default()).unwrap();
    a.add_account_as("alice", 79).unwrap();
    let me = a.replica_id("alice").unwrap();
    assert_ne!(me, ReplicaId(1));
    assert_ne!(me, ReplicaId(2));
    drop(a);
    let a = Store::open(&a_path, ReplicaId(1), StoreOptions::default()).unwrap();
    assert_eq!(a.replica_id("alice").unwrap(), me, "the copy's id survives a reopen");
    // Mail delivered to the new copy before it re-synced: with the node's
    // own id this op would be numbered 1, an op B already holds.
    let early = a.write("alice", |w| w.append(INBOX, &body(30), 0, vec![])).unwrap();
    made.push(early);
    converge(&b, &a, "alice");
    assert_eq!(a.dump("alice").unwrap(), b.dump("alice").unwrap(), "re-synced");
    assert_eq!(a.missing_blobs("alice").unwrap(), Vec::<BlobId>::new(), "bodies came back");

    // New changes on both sides, then both ways.
    let new_a = a.write("alice", |w| w.append(INBOX, &body(20), 0, vec![])).unwrap();
    a.write("alice", |w| Ok(w.replica().store_flags(made[1], &[Keyword::Seen], &[])?)).unwrap();
    a.write("alice", |w| Ok(w.replica().create_mailbox("Later", None, None)?)).unwrap();
    let new_b = b.write("alice", |w| w.append(INBOX, &body(21), 0, vec![])).unwrap();
    converge(&a, &b, "alice");
    assert_eq!(a.dump("alice").unwrap(), b.dump("alice").unwrap(), "converged");
    assert_eq!(a.version("alice").unwrap(), b.version("alice").unwrap());
    // Every message once: the 6 before, the early one, one new on each side.
    let ids: Vec<MessageId> = live(&b, "alice").into_iter().map(|(m, _, _)| m).collect();
    let unique: BTreeSet<MessageId> = ids.iter().copied().collect();
    assert_eq!(ids.len(), unique.len(), "no message twice");
    for m in made.iter().chain([&new_a, &new_b]) {
        assert!(unique.contains(m), "message {m:?} kept");
    }
    assert_eq!(unique.len(), made.len() + 2);
    assert_eq!(new_a.0.replica, me, "A's new message is the new copy's");
    // The old copy's ops stay the node's own id's, below the old counter.
    assert_eq!(b.version("alice").unwrap().get(ReplicaId(1)), old_counter);
    let r = b.read("alice").unwrap();
    assert!(r.names().tree.by_name.contains_key("Later") && r.names().tree.by_name.contains_key("Work"));
    drop(r);
    for s in [&a, &b] {
        consistent(s);
    }
}

/// Peak resident memory of this process since the last reset (kB).
fn peak_rss_kb() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// The benchmark row of `docs/benchmarks.md`: an account of about
/// 300,000 ops and 20,000 messages forgotten, with time and peak memory
/// (run with `--ignored --nocapture`).
#[test]
#[ignore]
fn bench_forget_a_large_account() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("s.redb");
    let store = Store::open(&path, ReplicaId(7), StoreOptions::default()).unwrap();
    store.add_account("big").unwrap();
    store.add_account("other").unwrap();
    let t = std::time::Instant::now();
    let mut ids = Vec::new();
    for batch in 0..40u64 {
        store
            .write("big", |b| {
                for i in 0..500u64 {
                    let n = batch * 500 + i;
                    let raw = format!("Subject: m {n}\r\n\r\n{}\r\n", &common::noise(n)[..2000]);
                    ids.push(b.append(INBOX, raw.as_bytes(), n as i64, vec![])?);
                }
                Ok(())
            })
            .unwrap();
    }
    // 14 keyword changes per message: 280,000 more ops.
    for round in 0..14 {
        for chunk in ids.chunks(2_000) {
            store
                .write("big", |b| {
                    for m in chunk {
                        let k = if round % 2 == 0 { Keyword::Seen } else { Keyword::Flagged };
                        b.replica().store_flags(*m, &[k], &[])?;
                    }
                    Ok(())
                })
                .unwrap();
        }
    }
    store.write("other", |b| b.append(INBOX, b"Subject: o\r\n\r\nx\r\n", 0, vec![])).unwrap();
    let ops: u64 = store.version("big").unwrap().iter().map(|(_, c)| c).sum();
    let file_before = std::fs::metadata(&path).unwrap().len();
    eprintln!(
        "built {ops} ops, {} messages in {:.1} s; file {file_before} bytes",
        ids.len(),
        t.elapsed().as_secs_f64()
    );
    drop(ids);
    let _ = std::fs::write("/proc/self/clear_refs", "5");
    let rss_before = peak_rss_kb();
    let t = std::time::Instant::now();
    let forgot = store.forget_account("big").unwrap();
    let took = t.elapsed();
    let peak = peak_rss_kb();
    let t = std::time::Instant::now();
    let mut collected = 0;
    for _ in 0..8 {
        collected += housekeep(&store).collected.bodies;
    }
    let collect_took = t.elapsed();
    drop(store);
    let store = Store::open(
        &path,
        ReplicaId(7),
        StoreOptions { file_compact_free_percent: 25, file_compact_min_free: 0, ..StoreOptions::default() },
    )
    .unwrap();
    let file_after = std::fs::metadata(&path).unwrap().len();
    consistent(&store);
    eprintln!(
        "forget: {ops} ops, 20000 messages: {:.2} s, {} transactions, {} rows, {} bodies released; peak RSS {} MB (was {} MB before); collection of {collected} bodies {:.2} s; file {file_before} -> {file_after} bytes after compaction at open",
        took.as_secs_f64(),
        forgot.transactions,
        forgot.rows,
        forgot.bodies_released,
        peak / 1024,
        rss_before / 1024,
        collect_took.as_secs_f64()
    );
}
