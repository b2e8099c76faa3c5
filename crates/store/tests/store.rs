//! The store on a real redb file: one apply path, reopen, reads, op log,
//! compaction, bad files.

use proptest::prelude::*;
use starling_model::testkit::workload_keywords;
use starling_model::{Keyword, Op, Replica, ReplicaId, VersionVector, INBOX};
use starling_store::{OpenError, Store, StoreError, StoreOptions};

const NODE: ReplicaId = ReplicaId(0xabcdef);

fn open(dir: &tempfile::TempDir) -> Store {
    Store::open(&dir.path().join("store.redb"), NODE, StoreOptions::default()).unwrap()
}

fn message(n: usize) -> Vec<u8> {
    format!("From: a@example.org\r\nSubject: m{n}\r\n\r\nbody {n}\r\n").into_bytes()
}

#[test]
fn append_reopen_read() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir);
    store.add_account("alice").unwrap();
    let ids = store
        .write("alice", |b| {
            let mut ids = Vec::new();
            for n in 0..10 {
                ids.push(b.append(INBOX, &message(n), 1_700_000_000 + n as i64, vec![Keyword::Seen])?);
            }
            b.replica().store_flags(ids[3], &[Keyword::Flagged], &[Keyword::Seen])?;
            b.replica().expunge(&[ids[5]])?;
            Ok(ids)
        })
        .unwrap();
    let dump = store.dump("alice").unwrap();
    let version = store.version("alice").unwrap();
    drop(store);

    let store = open(&dir);
    assert_eq!(store.accounts(), vec!["alice".to_string()]);
    assert_eq!(store.dump("alice").unwrap(), dump);
    let r = store.read("alice").unwrap();
    let status = r.status(INBOX).unwrap();
    assert_eq!(status.messages, 9);
    assert_eq!(status.uid_next, 11);
    let msgs = r.messages(INBOX, 1, 100).unwrap();
    assert_eq!(msgs.len(), 9);
    assert_eq!(msgs[3].flags, vec![Keyword::Flagged]);
    assert_eq!(r.vanished_since(INBOX, 0).unwrap(), Some(vec![6]));
    // Changed after the last append: the flag change only.
    let last_append = msgs.iter().find(|m| m.uid == 10).unwrap().modseq;
    let changed = r.changed_since(INBOX, last_append, 100).unwrap();
    assert_eq!(changed.iter().map(|m| m.uid).collect::<Vec<_>>(), vec![4], "the flag change is recent: {changed:?}");
    assert!(status.highest_modseq > changed[0].modseq, "the expunge came after it");
    let env = r.envelope(ids[2]).unwrap().unwrap();
    assert_eq!(r.body(env.blob).unwrap(), message(2));
    assert_eq!(r.body_range(env.blob, 6, 13).unwrap(), b"a@example.org");
    // The op log holds everything; a peer with nothing gets it all, in order.
    let ops = store.ops_since("alice", &VersionVector::new()).unwrap();
    let mut fresh = Replica::new(ReplicaId(2));
    for op in ops {
        fresh.apply(op).unwrap();
    }
    assert_eq!(fresh.version(), &version);
    assert_eq!(fresh.view(INBOX).len(), 9);
}

#[test]
fn peer_ops_and_local_ops_share_one_path() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir);
    store.add_account("bob").unwrap();
    let mut peer = Replica::new(ReplicaId(7));
    let m = peer.append(INBOX, starling_model::BlobId::of(b"x"), 1, 0, vec![]).unwrap();
    peer.store_flags(m, &[Keyword::Answered], &[]).unwrap();
    let ops: Vec<Op> = peer.take_outbox();
    // Delivered out of order: the second waits for the first, across commits.
    store.write("bob", |b| b.apply([ops[1].clone()])).unwrap();
    assert!(store.read("bob").unwrap().messages(INBOX, 1, 10).unwrap().is_empty());
    drop(store);
    let store = open(&dir);
    store.write("bob", |b| b.apply([ops[0].clone()])).unwrap();
    let msgs = store.read("bob").unwrap().messages(INBOX, 1, 10).unwrap();
    assert_eq!(msgs.len(), 1);
    assert_eq!(msgs[0].flags, vec![Keyword::Answered]);
}

#[test]
fn failed_batch_commits_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir);
    store.add_account("carol").unwrap();
    store.write("carol", |b| b.append(INBOX, &message(1), 0, vec![]).map(|_| ())).unwrap();
    let before = store.dump("carol").unwrap();
    let err = store.write("carol", |b| {
        b.append(INBOX, &message(2), 0, vec![])?;
        Err::<(), _>(StoreError::Storage("caller gave up".into()))
    });
    assert!(err.is_err());
    assert_eq!(store.dump("carol").unwrap(), before);
    // And the replica keeps working with the right counters.
    store.write("carol", |b| b.append(INBOX, &message(3), 0, vec![]).map(|_| ())).unwrap();
    assert_eq!(store.read("carol").unwrap().status(INBOX).unwrap().messages, 2);
}

#[test]
fn compaction_and_catch_up_boundary() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir);
    store.add_account("dave").unwrap();
    for n in 0..5 {
        store.write("dave", |b| b.append(INBOX, &message(n), 0, vec![]).map(|_| ())).unwrap();
    }
    let all = store.version("dave").unwrap();
    let mut half = VersionVector::new();
    half.observe(starling_model::Dot::new(NODE, 3));
    assert_eq!(store.compact("dave", &half).unwrap(), 3);
    // Five appends and the op naming the account's incarnation.
    assert_eq!(store.ops_since("dave", &half).unwrap().len(), 3);
    assert!(matches!(store.ops_since("dave", &VersionVector::new()), Err(StoreError::Compacted)));
    assert!(store.ops_since("dave", &all).unwrap().is_empty());
    // State is untouched by compaction.
    assert_eq!(store.read("dave").unwrap().status(INBOX).unwrap().messages, 5);
}

#[test]
fn bad_files_give_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    let garbage = dir.path().join("garbage");
    std::fs::write(&garbage, vec![0x5a; 10_000]).unwrap();
    let e = Store::open(&garbage, NODE, StoreOptions::default()).err().unwrap();
    assert!(matches!(e, OpenError::NotAStore { .. }), "{e}");
    // A redb database of someone else.
    let foreign = dir.path().join("foreign.redb");
    {
        let db = redb::Database::create(&foreign).unwrap();
        let w = db.begin_write().unwrap();
        w.open_table(redb::TableDefinition::<&str, u64>::new("theirs")).unwrap().insert("x", 1).unwrap();
        w.commit().unwrap();
    }
    let e = Store::open(&foreign, NODE, StoreOptions::default()).err().unwrap();
    assert!(matches!(e, OpenError::Foreign(_)), "{e}");
    // Ours, but another node's.
    let ours = dir.path().join("ours.redb");
    drop(Store::open(&ours, NODE, StoreOptions::default()).unwrap());
    let e = Store::open(&ours, ReplicaId(1), StoreOptions::default()).err().unwrap();
    assert!(matches!(e, OpenError::WrongNode { .. }), "{e}");
    // A store whose middle was overwritten by something else: with
    // verification it is refused with a clear error, at every damage offset.
    let mut detected = 0;
    // (1 = the start of the file, where redb's header is: always detected.)
    for (k, frac) in [1usize, 3, 2, 4].into_iter().enumerate() {
        let damaged = dir.path().join(format!("damaged{k}.redb"));
        {
            let s = Store::open(&damaged, NODE, StoreOptions::default()).unwrap();
            s.add_account("x").unwrap();
            for n in 0..50 {
                s.write("x", |b| b.append(INBOX, &message(n), 0, vec![]).map(|_| ())).unwrap();
            }
        }
        let mut bytes = std::fs::read(&damaged).unwrap();
        let n = bytes.len();
        let start = if frac == 1 { 0 } else { n / frac };
        for b in &mut bytes[start..(start + 4096).min(n)] {
            *b ^= 0xa5;
        }
        std::fs::write(&damaged, bytes).unwrap();
        let verified = StoreOptions { verify: true, ..StoreOptions::default() };
        match Store::open(&damaged, NODE, verified) {
            Err(e) => {
                assert!(matches!(e, OpenError::NotAStore { .. }), "{e}");
                detected += 1;
            }
            // Repaired (redb keeps the previous commit) or the damage hit free
            // space: everything it holds reads without a panic.
            Ok(s) => {
                let r = s.read("x").unwrap();
                for m in r.messages(INBOX, 1, 100).unwrap() {
                    let env = r.envelope(m.message).unwrap().unwrap();
                    r.body(env.blob).unwrap();
                }
            }
        }
        // A plain open never panics either: it fails or opens.
        let _ = Store::open(&damaged, NODE, StoreOptions::default());
    }
    assert!(detected > 0, "damage to the header was not reported");
}

#[test]
fn large_attachment_stored_apart_and_reassembled() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(
        &dir.path().join("s.redb"),
        NODE,
        StoreOptions { part_threshold: 64 * 1024, ..StoreOptions::default() },
    )
    .unwrap();
    store.add_account("e").unwrap();
    let payload: String = (0..3000).map(|i| format!("{:076}\r\n", i)).collect();
    let raw = format!(
        "Subject: big\r\nMIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=b\r\n\r\n--b\r\n\
         Content-Type: text/plain\r\n\r\nhi\r\n--b\r\nContent-Type: application/pdf\r\nContent-Transfer-Encoding: base64\r\n\r\n{payload}--b--\r\n"
    )
    .into_bytes();
    let m = store.write("e", |b| b.append(INBOX, &raw, 0, vec![])).unwrap();
    // The same body again is deduplicated.
    store.write("e", |b| b.append(INBOX, &raw, 0, vec![]).map(|_| ())).unwrap();
    let r = store.read("e").unwrap();
    let env = r.envelope(m).unwrap().unwrap();
    assert_eq!(r.body(env.blob).unwrap(), raw);
    assert_eq!(r.body_range(env.blob, 100, 50_000).unwrap(), raw[100..50_100]);
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(24))]

    /// The store-backed replica and the in-memory one, fed the same local
    /// changes, show the same thing: the redb backend keeps the model's rules.
    #[test]
    fn redb_backend_matches_memory_backend(steps in prop::collection::vec((0u8..5, any::<u16>(), 0usize..5), 1..60)) {
        let dir = tempfile::tempdir().unwrap();
        let store = open(&dir);
        store.add_account_as("p", 0x5eed).unwrap();
        let mut mem = Replica::new(NODE);
        let kws = workload_keywords();
        let mut first = true;
        let mut n = 0;
        for (kind, pick, k) in steps {
            let view = mem.view(INBOX);
            let target = (!view.is_empty()).then(|| view[pick as usize % view.len()].1);
            match (kind, target) {
                (0, _) | (_, None) => {
                    n += 1;
                    let raw = message(n);
                    let blob = starling_model::BlobId::of(&raw);
                    mem.append(INBOX, blob, raw.len() as u64, 0, vec![kws[k].clone()]).unwrap();
                    store.write("p", |b| b.append(INBOX, &raw, 0, vec![kws[k].clone()]).map(|_| ())).unwrap();
                    if std::mem::take(&mut first) {
                        // The store names the incarnation with the first change.
                        mem.set_incarnation(0x5eed).unwrap();
                    }
                }
                (1, Some(m)) => {
                    mem.store_flags(m, &[kws[k].clone()], &[]).unwrap();
                    store.write("p", |b| Ok(b.replica().store_flags(m, &[kws[k].clone()], &[])?)).unwrap();
                }
                (2, Some(m)) => {
                    mem.store_flags(m, &[], &[kws[k].clone()]).unwrap();
                    store.write("p", |b| Ok(b.replica().store_flags(m, &[], &[kws[k].clone()])?)).unwrap();
                }
                (3, Some(m)) => {
                    mem.expunge(&[m]).unwrap();
                    store.write("p", |b| Ok(b.replica().expunge(&[m])?)).unwrap();
                }
                (_, Some(_)) => {
                    mem.announce(INBOX).unwrap();
                    store.write("p", |b| Ok(b.replica().announce(INBOX)?)).unwrap();
                }
            }
        }
        prop_assert_eq!(store.dump("p").unwrap(), mem.dump());
        let r = store.read("p").unwrap();
        prop_assert_eq!(r.status(INBOX).unwrap().messages as usize, mem.view(INBOX).len());
    }
}

/// A new node joins after the log was compacted: it catches up by state
/// (never by history), then by ops.
#[test]
fn catch_up_by_snapshot_after_compaction() {
    let dir = tempfile::tempdir().unwrap();
    let a = Store::open(&dir.path().join("a.redb"), NODE, StoreOptions::default()).unwrap();
    a.add_account("u").unwrap();
    let ids = a
        .write("u", |b| {
            let work = b.replica().create_mailbox("Work", None, None)?;
            let mut ids = Vec::new();
            for n in 0..30 {
                ids.push(b.append(
                    if n % 3 == 0 { work } else { INBOX },
                    &message(n),
                    n as i64,
                    vec![Keyword::Seen],
                )?);
            }
            b.replica().store_flags(ids[4], &[Keyword::Flagged], &[Keyword::Seen])?;
            b.replica().expunge(&[ids[7]])?;
            b.replica().announce(INBOX)?;
            Ok(ids)
        })
        .unwrap();
    let all = a.version("u").unwrap();
    a.compact("u", &all).unwrap();
    let b = Store::open(&dir.path().join("b.redb"), ReplicaId(0xb), StoreOptions::default()).unwrap();
    b.add_account("u").unwrap();
    assert!(matches!(a.ops_since("u", &b.version("u").unwrap()), Err(StoreError::Compacted)));
    let snap = a.snapshot("u").unwrap();
    b.install_snapshot("u", &snap).unwrap();
    assert_eq!(b.dump("u").unwrap(), a.dump("u").unwrap());
    b.install_snapshot("u", &snap).unwrap();
    assert_eq!(b.dump("u").unwrap(), a.dump("u").unwrap(), "the same state again changes nothing");
    assert!(b.install_snapshot("u", b"garbage").is_err());
    // Metadata and the message list come over; bodies are fetched by blob id
    // (sync issue), so here only the envelope is checked.
    let r = b.read("u").unwrap();
    assert_eq!(r.status(INBOX).unwrap().messages, a.read("u").unwrap().status(INBOX).unwrap().messages);
    assert!(r.envelope(ids[1]).unwrap().is_some());
    drop(r);
    // Then ops, both ways.
    a.write("u", |w| Ok(w.replica().store_flags(ids[1], &[Keyword::Answered], &[])?)).unwrap();
    let ops = a.ops_since("u", &b.version("u").unwrap()).unwrap();
    assert_eq!(ops.len(), 1);
    b.write("u", |w| w.apply(ops)).unwrap();
    b.write("u", |w| Ok(w.replica().store_flags(ids[2], &[Keyword::Draft], &[])?)).unwrap();
    let back = b.ops_since("u", &a.version("u").unwrap()).unwrap();
    a.write("u", |w| w.apply(back)).unwrap();
    assert_eq!(b.dump("u").unwrap(), a.dump("u").unwrap());
    // Reopened, b still continues from the snapshot's point.
    drop(b);
    let b = Store::open(&dir.path().join("b.redb"), ReplicaId(0xb), StoreOptions::default()).unwrap();
    assert_eq!(b.dump("u").unwrap(), a.dump("u").unwrap());
    // The installed envelopes count in the index of body references.
    assert!(b.check_blob_refs().unwrap().is_empty());
    assert_eq!(b.blob_accounts(a.read("u").unwrap().envelope(ids[1]).unwrap().unwrap().blob).unwrap(), vec!["u"]);
}

/// Issue 13, the state merge: b was away while a went on and compacted its
/// log past b; meanwhile b's client made changes there. a's snapshot lacking
/// them is refused and changes nothing; once a has them, b installs a's
/// state: equal to a, its own changes in it, HIGHESTMODSEQ not down, the
/// expunge reported as VANISHED, and b's log still able to serve every op
/// above its floor.
#[test]
fn a_store_with_changes_of_its_own_installs_a_snapshot_that_holds_them() {
    let dir = tempfile::tempdir().unwrap();
    let a = Store::open(&dir.path().join("a.redb"), NODE, StoreOptions::default()).unwrap();
    let b = Store::open(&dir.path().join("b.redb"), ReplicaId(0xb), StoreOptions::default()).unwrap();
    a.add_account("u").unwrap();
    b.add_account("u").unwrap();
    let ids = a
        .write("u", |w| (0..20).map(|n| w.append(INBOX, &message(n), n as i64, vec![])).collect::<Result<Vec<_>, _>>())
        .unwrap();
    let ops = a.ops_since("u", &b.version("u").unwrap()).unwrap();
    b.write("u", |w| w.apply(ops)).unwrap();
    b.write("u", |w| Ok(w.replica().announce(INBOX)?)).unwrap();
    let back = b.ops_since("u", &a.version("u").unwrap()).unwrap();
    a.write("u", |w| w.apply(back)).unwrap();
    let shown = b.read("u").unwrap().status(INBOX).unwrap();
    let uid5 =
        b.read("u").unwrap().messages(INBOX, 1, usize::MAX).unwrap().iter().find(|m| m.message == ids[5]).unwrap().uid;

    // Apart: a goes on and compacts; b's client makes changes.
    a.write("u", |w| {
        w.replica().store_flags(ids[3], &[Keyword::Flagged], &[])?;
        w.replica().expunge(&[ids[5]])?;
        for n in 100..110 {
            w.append(INBOX, &message(n), 0, vec![])?;
        }
        Ok(())
    })
    .unwrap();
    let all = a.version("u").unwrap();
    a.compact("u", &all).unwrap();
    let own = b
        .write("u", |w| {
            w.replica().store_flags(ids[4], &[Keyword::Answered], &[])?;
            w.append(INBOX, &message(200), 0, vec![Keyword::Seen])
        })
        .unwrap();
    b.write("u", |w| Ok(w.replica().announce(INBOX)?)).unwrap();
    assert!(matches!(a.ops_since("u", &b.version("u").unwrap()), Err(StoreError::Compacted)));

    let before = b.dump("u").unwrap();
    let lacking = a.snapshot("u").unwrap();
    assert!(matches!(b.install_snapshot("u", &lacking), Err(StoreError::SnapshotOlder)));
    assert_eq!(b.dump("u").unwrap(), before, "a refused snapshot changes nothing");

    let mine = b.ops_since("u", &a.version("u").unwrap()).unwrap();
    a.write("u", |w| w.apply(mine)).unwrap();
    b.install_snapshot("u", &a.snapshot("u").unwrap()).unwrap();
    // b may have made follow-ups of its own (U1); a takes them, then both agree.
    let follow = b.ops_since("u", &a.version("u").unwrap()).unwrap();
    a.write("u", |w| w.apply(follow)).unwrap();
    assert_eq!(b.dump("u").unwrap(), a.dump("u").unwrap());
    let r = b.read("u").unwrap();
    let now = r.status(INBOX).unwrap();
    assert!(now.highest_modseq > shown.highest_modseq, "{now:?} after {shown:?}");
    assert!(now.uid_next >= shown.uid_next);
    assert_eq!(r.vanished_since(INBOX, shown.highest_modseq).unwrap(), Some(vec![uid5]), "the expunge, and only it");
    assert!(r.envelope(own).unwrap().is_some());
    drop(r);
    // b's log reaches from its floor to its version without a gap.
    let floor = b.floor("u").unwrap();
    let version = b.version("u").unwrap();
    let chunk = b.ops_chunk("u", &floor, 1 << 20, usize::MAX).unwrap();
    assert_eq!(chunk.len() as u64, version.lacking_in(&floor));
    // Onwards by ops, and after a reopen.
    b.write("u", |w| Ok(w.replica().store_flags(ids[6], &[Keyword::Draft], &[])?)).unwrap();
    let ops = b.ops_since("u", &a.version("u").unwrap()).unwrap();
    a.write("u", |w| w.apply(ops)).unwrap();
    drop(b);
    let b = Store::open(&dir.path().join("b.redb"), ReplicaId(0xb), StoreOptions::default()).unwrap();
    assert_eq!(b.dump("u").unwrap(), a.dump("u").unwrap());
    assert!(b.check_blob_refs().unwrap().is_empty());
}

/// The op log by mailbox: a partial peer subscribed to one mailbox gets that
/// mailbox's ops and the account document's, and compaction cleans the index.
#[test]
fn op_log_restricted_to_a_mailbox() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir);
    store.add_account("u").unwrap();
    let (work, w_msg, i_msg) = store
        .write("u", |b| {
            let work = b.replica().create_mailbox("Work", None, None)?;
            let w = b.append(work, &message(1), 0, vec![])?;
            let i = b.append(INBOX, &message(2), 0, vec![])?;
            Ok((work, w, i))
        })
        .unwrap();
    store.write("u", |b| Ok(b.replica().store_flags(w_msg, &[Keyword::Seen], &[])?)).unwrap();
    store.write("u", |b| Ok(b.replica().store_flags(i_msg, &[Keyword::Seen], &[])?)).unwrap();
    let none = VersionVector::new();
    let ops = store.ops_since_in("u", &none, &[work]).unwrap();
    let kinds: Vec<&str> = ops
        .iter()
        .map(|o| match &o.body {
            starling_model::OpBody::Account { .. } => "account",
            starling_model::OpBody::Append(a) if a.mailbox == work => "append-work",
            starling_model::OpBody::Flags { message, .. } if *message == w_msg => "flags-work",
            _ => "other",
        })
        .collect();
    // Account ops (the mailbox's creation, the incarnation) go to every mailbox.
    assert_eq!(kinds, vec!["account", "append-work", "account", "flags-work"]);
    assert_eq!(store.ops_since_in("u", &none, &[INBOX]).unwrap().len(), 4);
    let all = store.version("u").unwrap();
    store.compact("u", &all).unwrap();
    assert!(matches!(store.ops_since_in("u", &none, &[work]), Err(StoreError::Compacted)));
    assert!(store.ops_since_in("u", &all, &[work]).unwrap().is_empty());
}

/// The replica whose ops [`peer_log`] makes.
const LOG_PEER: ReplicaId = ReplicaId(0x77);

/// `n` ops of one peer in INBOX: an append, then flag changes of it.
fn peer_log(n: u64) -> Vec<Op> {
    let mut peer = Replica::new(LOG_PEER);
    let m = peer.append(INBOX, starling_model::BlobId::of(b"m"), 1, 0, vec![]).unwrap();
    for k in 1..n {
        let kw = if k % 2 == 0 { Keyword::Seen } else { Keyword::Flagged };
        peer.store_flags(m, &[kw], &[]).unwrap();
    }
    let ops = peer.take_outbox();
    assert_eq!(ops.last().unwrap().dot.counter, n);
    ops
}

/// The version holding [`LOG_PEER`]'s first `n` ops.
fn log_at(n: u64) -> VersionVector {
    let mut v = VersionVector::new();
    v.observe(starling_model::Dot::new(LOG_PEER, n));
    v
}

/// The segmented log: reads starting inside a segment return exactly the ops
/// asked for; compaction drops only whole segments and the floor says so.
#[test]
fn segmented_log_reads_and_compacts_exactly() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir);
    store.add_account("u").unwrap();
    store.write("u", |b| b.apply(peer_log(1200))).unwrap();
    let at = log_at;
    let got = store.ops_since("u", &at(700)).unwrap();
    assert_eq!(got.len(), 500);
    assert_eq!(got.first().unwrap().dot.counter, 701);
    assert_eq!(got.last().unwrap().dot.counter, 1200);
    // Segments hold 512 ops: asking to drop up to 700 drops the first only.
    assert_eq!(store.compact("u", &at(700)).unwrap(), 512);
    assert!(matches!(store.ops_since("u", &at(500)), Err(StoreError::Compacted)));
    assert_eq!(store.ops_since("u", &at(600)).unwrap().len(), 600);
    assert_eq!(store.ops_since_in("u", &at(1100), &[INBOX]).unwrap().len(), 100);
}

/// A log far longer than one compaction page (256 segments of 512 ops):
/// compaction goes page by page to the end and stops at the first segment
/// not wholly held.
#[test]
fn a_long_log_is_compacted_page_by_page() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(&dir);
    store.add_account("u").unwrap();
    const SEGMENTS: u64 = 300;
    let total = SEGMENTS * 512 + 100;
    for batch in peer_log(total).chunks(512 * 40) {
        store.write("u", |b| b.apply(batch.to_vec())).unwrap();
    }
    let at = log_at;
    // Held up to the middle of the last whole segment's successor: every
    // whole segment goes, the rest stays.
    assert_eq!(store.compact("u", &at(SEGMENTS * 512 + 50)).unwrap(), SEGMENTS * 512);
    assert_eq!(store.floor("u").unwrap(), at(SEGMENTS * 512));
    assert!(matches!(store.ops_since("u", &at(SEGMENTS * 512 - 1)), Err(StoreError::Compacted)));
    assert_eq!(store.ops_since("u", &at(SEGMENTS * 512)).unwrap().len(), 100);
    assert_eq!(store.compact("u", &at(total)).unwrap(), 100);
}

/// A node that has applied a peer's messages but never stored any body yet
/// reports every one of them missing (it once reported none: the body table
/// did not exist yet).
#[test]
fn bodies_are_missing_before_the_first_body_arrives() {
    let dir = tempfile::tempdir().unwrap();
    let a = Store::open(&dir.path().join("a.redb"), ReplicaId(1), StoreOptions::default()).unwrap();
    let b = Store::open(&dir.path().join("b.redb"), ReplicaId(2), StoreOptions::default()).unwrap();
    a.add_account("u").unwrap();
    b.add_account("u").unwrap();
    a.write("u", |w| {
        w.append(INBOX, b"Subject: 1\r\n\r\none\r\n", 1, vec![])?;
        w.append(INBOX, b"Subject: 2\r\n\r\ntwo\r\n", 2, vec![])?;
        Ok(())
    })
    .unwrap();
    let ops = a.ops_since("u", &Default::default()).unwrap();
    b.write("u", |w| w.apply(ops)).unwrap();
    assert_eq!(b.missing_blobs("u").unwrap().len(), 2);
    b.put_blob(b"Subject: 1\r\n\r\none\r\n").unwrap();
    assert_eq!(b.missing_blobs("u").unwrap().len(), 1);
}

/// A message nested 60,000 levels deep (message/rfc822 in message/rfc822 …)
/// around a leaf above the part threshold: the store keeps it whole and
/// byte-exact instead of overflowing the stack in the MIME parser (one such
/// LMTP delivery crashed the node, and again at every retry).
#[test]
fn deeply_nested_message_is_stored_whole_without_overflowing() {
    let handle = std::thread::Builder::new()
        .stack_size(2 << 20)
        .spawn(|| {
            let mut raw = Vec::new();
            for _ in 0..60_000 {
                raw.extend_from_slice(b"Content-Type: message/rfc822\r\n\r\n");
            }
            raw.extend_from_slice(b"Content-Type: application/octet-stream\r\n\r\n");
            raw.extend(std::iter::repeat_n(b'x', 300 * 1024));
            let (record, parts) = starling_store::blob::split(&raw, starling_store::PART_THRESHOLD_DEFAULT);
            assert!(parts.is_empty(), "too deep to split: kept whole");
            assert_eq!(record.len, raw.len() as u64);
        })
        .unwrap();
    handle.join().expect("no stack overflow (an overflow aborts the process instead)");
}

/// A message with one base64 attachment of `n` bytes (a large MIME part).
fn with_attachment(n: usize) -> Vec<u8> {
    let mut m = b"From: a@example.org\r\nSubject: big\r\nMIME-Version: 1.0\r\n\
Content-Type: multipart/mixed; boundary=\"b\"\r\n\r\n--b\r\nContent-Type: text/plain\r\n\r\nhi\r\n\
--b\r\nContent-Type: application/octet-stream\r\nContent-Transfer-Encoding: base64\r\n\r\n"
        .to_vec();
    let mut x = 1u32;
    for i in 0..n {
        x = x.wrapping_mul(1_103_515_245).wrapping_add(12345);
        m.push(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"[(x >> 16) as usize % 64]);
        if i % 76 == 75 {
            m.extend_from_slice(b"\r\n");
        }
    }
    m.extend_from_slice(b"\r\n--b--\r\n");
    m
}

/// Bodies travel between stores in stored form, large parts and all, and
/// are kept as they came (not compressed again); a receiver with a smaller
/// part threshold splits a body that came whole. Every way, the receiver
/// holds the same bytes. Bodies are only shipped for the accounts asked
/// about.
#[test]
fn bodies_ship_in_stored_form_and_arrive_whole() {
    use starling_model::BlobId;
    let dir = tempfile::tempdir().unwrap();
    let small = StoreOptions { part_threshold: 4096, ..StoreOptions::default() };
    let a = Store::open(&dir.path().join("a.redb"), ReplicaId(1), StoreOptions::default()).unwrap();
    let b = Store::open(&dir.path().join("b.redb"), ReplicaId(2), small).unwrap();
    for s in [&a, &b] {
        s.add_account("u").unwrap();
    }
    let (plain, mid, big) = (message(1), with_attachment(100_000), with_attachment(400_000));
    for m in [&plain, &mid, &big] {
        a.write("u", |w| w.append(INBOX, m, 0, vec![])).unwrap();
    }
    let ship = |s: &Store, m: &[u8]| s.shipped_for(&["u"], BlobId::of(m)).unwrap().expect("u's body");
    assert_eq!(a.shipped_for(&["other"], BlobId::of(&plain)).unwrap(), None);
    let bodies: Vec<_> = [&plain, &mid, &big].iter().map(|m| (BlobId::of(m), ship(&a, m))).collect();
    b.put_shipped(&["u"], bodies).unwrap();
    for m in [&plain, &mid, &big] {
        assert_eq!(b.blob(BlobId::of(m)).unwrap().as_deref(), Some(m.as_slice()));
    }
    assert_eq!(b.shipped_for(&["u"], BlobId::of(&plain)).unwrap(), None, "no message of B names it yet");
    for m in [&plain, &mid, &big] {
        b.write("u", |w| w.append(INBOX, m, 0, vec![])).unwrap();
    }
    // Kept as they came: B ships the very records A stored…
    assert_eq!(ship(&b, &plain), ship(&a, &plain));
    assert_eq!(ship(&b, &big), ship(&a, &big), "the body and its large part");
    // …except `mid`, whole at A and split at B (its threshold is smaller).
    assert_ne!(ship(&b, &mid), ship(&a, &mid));
}

/// A record shipped in stored form that does not hash to its id, or does
/// not decode, is refused with a typed error, and nothing of the call is
/// stored (not even the good bodies beside it).
#[test]
fn a_bad_stored_record_is_refused_and_nothing_is_stored() {
    use starling_model::BlobId;
    use starling_store::Shipped;
    let dir = tempfile::tempdir().unwrap();
    let a = Store::open(&dir.path().join("a.redb"), ReplicaId(1), StoreOptions::default()).unwrap();
    let b = Store::open(&dir.path().join("b.redb"), ReplicaId(2), StoreOptions::default()).unwrap();
    a.add_account("u").unwrap();
    let (m1, m2, big, big2) = (message(1), message(2), with_attachment(400_000), with_attachment(300_000));
    for m in [&m1, &m2, &big, &big2] {
        a.write("u", |w| w.append(INBOX, m, 0, vec![])).unwrap();
    }
    let packed = |m: &[u8]| match a.shipped_for(&["u"], BlobId::of(m)).unwrap() {
        Some(Shipped::Packed(p)) => p,
        other => panic!("packed: {other:?}"),
    };
    let p2 = packed(&m2);
    // The shipped form: part count, each part (length, bytes), the record.
    let (pb, pb2) = (packed(&big), packed(&big2));
    assert_eq!((pb[0], pb2[0]), (1, 1), "one large part each");
    let part_len = |p: &[u8]| {
        let (mut n, mut shift, mut i) = (0usize, 0, 1);
        loop {
            n |= ((p[i] & 0x7f) as usize) << shift;
            shift += 7;
            i += 1;
            if p[i - 1] & 0x80 == 0 {
                return (i, n);
            }
        }
    };
    let (at, n) = part_len(&pb);
    let mut without_part = vec![0u8];
    without_part.extend_from_slice(&pb[at + n..]);
    // A record that declares a 1 GiB part (and a part of 4 bytes): refused
    // before anything is decompressed to that size.
    let record = starling_store::blob::BodyRecord {
        len: 1 << 30,
        pieces: vec![starling_store::blob::Piece::Part { id: BlobId([3; 32]), len: 1 << 30 }],
    };
    let record = starling_store::blob::pack(&postcard::to_stdvec(&record).unwrap());
    let huge = starling_store::blob::encode_shipped(&record, &[b"\0abc".as_slice()]);
    let (at2, n2) = part_len(&pb2);
    let mut other_part = pb[..1].to_vec();
    other_part.extend_from_slice(&pb2[1..at2 + n2]);
    other_part.extend_from_slice(&pb[at + n..]);
    let good = (BlobId::of(&m1), Shipped::Raw(m1.clone()));
    for (bad, what) in [
        ((BlobId::of(&m1), Shipped::Packed(p2.clone())), "another body's record"),
        ((BlobId::of(&m2), Shipped::Packed(b"\x01garbage".to_vec())), "not a record"),
        ((BlobId::of(&m2), Shipped::Packed(Vec::new())), "empty"),
        ((BlobId::of(&big), Shipped::Packed(without_part.clone())), "a part left out"),
        ((BlobId::of(&big), Shipped::Packed(other_part.clone())), "another body's part"),
        ((BlobId::of(&big), Shipped::Packed(huge.clone())), "declares 1 GiB"),
    ] {
        let id = bad.0;
        match b.put_shipped(&["u"], vec![good.clone(), bad]) {
            Err(StoreError::BadBody { blob, .. }) => assert_eq!(blob, id, "{what}"),
            other => panic!("{what}: {other:?}"),
        }
        assert_eq!(b.blob(BlobId::of(&m1)).unwrap(), None, "{what}: nothing stored");
    }
}

fn inbox_validity(store: &Store) -> u32 {
    store.read("alice").unwrap().status(INBOX).unwrap().uid_validity
}

/// Issue 16: UIDVALIDITY is unique per account incarnation, INBOX included.
/// An account made again (same node id, a fresh file: a restore, an import
/// into a fresh account) shows new UIDVALIDITYs; one account's replicas
/// agree on one; and the value a client sees before the first change is
/// the one it keeps seeing after it.
#[test]
fn uidvalidity_is_per_account_incarnation() {
    let (d1, d2, d3) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let first = open(&d1);
    first.add_account("alice").unwrap();
    let again = open(&d2);
    again.add_account("alice").unwrap();
    let v1 = inbox_validity(&first);
    assert_ne!(v1, inbox_validity(&again), "the same account made twice shares INBOX's UIDVALIDITY");
    // Stable across the first change, a reopen, and more changes.
    first.write("alice", |b| b.append(INBOX, &message(1), 1_700_000_000, vec![])).unwrap();
    assert_eq!(inbox_validity(&first), v1);
    drop(first);
    let first = open(&d1);
    assert_eq!(inbox_validity(&first), v1);
    let work = first.write("alice", |b| Ok(b.replica().create_mailbox("Work", None, None)?)).unwrap();
    // A replica that hears of the account before changing it adopts its
    // incarnation: every mailbox shows the creator's UIDVALIDITY.
    let peer = Store::open(&d3.path().join("store.redb"), ReplicaId(0x1234), StoreOptions::default()).unwrap();
    peer.add_account("alice").unwrap();
    let ops = first.ops_since("alice", &VersionVector::new()).unwrap();
    peer.write("alice", |b| b.apply(ops)).unwrap();
    peer.write("alice", |b| b.append(INBOX, &message(2), 1_700_000_001, vec![])).unwrap();
    assert_eq!(inbox_validity(&peer), v1);
    let (a, b) = (first.read("alice").unwrap(), peer.read("alice").unwrap());
    assert_eq!(a.status(work).unwrap().uid_validity, b.status(work).unwrap().uid_validity);
    // And it writes no incarnation of its own: the creator takes its ops
    // without its UIDVALIDITYs changing.
    let ops = peer.ops_since("alice", &first.version("alice").unwrap()).unwrap();
    first.write("alice", |b| b.apply(ops)).unwrap();
    assert_eq!(inbox_validity(&first), v1);
    assert_eq!(first.dump("alice").unwrap(), peer.dump("alice").unwrap());
}

/// Two nodes that each made the account and took mail before they met agree
/// on one incarnation once they have exchanged everything.
#[test]
fn accounts_made_apart_agree_on_one_incarnation() {
    let (d1, d2) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let a = open(&d1);
    let b = Store::open(&d2.path().join("store.redb"), ReplicaId(0x1234), StoreOptions::default()).unwrap();
    for s in [&a, &b] {
        s.add_account("alice").unwrap();
        s.write("alice", |x| x.append(INBOX, &message(3), 1_700_000_000, vec![])).unwrap();
    }
    assert_ne!(inbox_validity(&a), inbox_validity(&b));
    let to_b = a.ops_since("alice", &b.version("alice").unwrap()).unwrap();
    let to_a = b.ops_since("alice", &a.version("alice").unwrap()).unwrap();
    a.write("alice", |x| x.apply(to_a)).unwrap();
    b.write("alice", |x| x.apply(to_b)).unwrap();
    assert_eq!(inbox_validity(&a), inbox_validity(&b));
    assert_eq!(a.dump("alice").unwrap(), b.dump("alice").unwrap());
}

/// Issue 16: the commit itself tells (IDLE sessions, peers), whoever wrote:
/// once per committed write, never for a failed one, never before the
/// change is visible.
#[test]
fn every_commit_and_only_a_commit_calls_the_hook() {
    use std::sync::{Arc, Mutex};
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(open(&dir));
    store.add_account("alice").unwrap();
    let heard: Arc<Mutex<Vec<(String, u64)>>> = Arc::default();
    let (h, s) = (heard.clone(), Arc::downgrade(&store));
    store.on_commit(move |account| {
        // What the hook's listener reads already shows the change.
        let n = s.upgrade().unwrap().read(account).unwrap().status(INBOX).unwrap().messages;
        h.lock().unwrap().push((account.to_string(), n));
    });
    store.write("alice", |b| b.append(INBOX, &message(1), 0, vec![]).map(|_| ())).unwrap();
    let failed: Result<(), StoreError> = store.write("alice", |b| {
        b.append(INBOX, &message(2), 0, vec![])?;
        Err(StoreError::Storage("refused".into()))
    });
    assert!(failed.is_err());
    let ops = store.ops_since("alice", &VersionVector::new()).unwrap();
    let other = Store::open(&dir.path().join("other.redb"), ReplicaId(0x77), StoreOptions::default()).unwrap();
    other.add_account("alice").unwrap();
    other.write("alice", |b| b.apply(ops)).unwrap();
    assert_eq!(*heard.lock().unwrap(), vec![("alice".to_string(), 1)]);
}

/// The store-backed form of the model scenario
/// `shown_uids_survive_when_their_announce_arrives_after_the_appends`: A
/// shows three messages, then a fourth; C took two nobody saw; A's ops
/// reach C in one batch, then C's reach A. A's shown UIDs stay on both.
#[test]
fn shown_uids_survive_a_heal_through_the_store() {
    let dir = tempfile::tempdir().unwrap();
    let a = Store::open(&dir.path().join("a.redb"), ReplicaId(0x9ff4), StoreOptions::default()).unwrap();
    let c = Store::open(&dir.path().join("c.redb"), ReplicaId(0x2e9e), StoreOptions::default()).unwrap();
    a.add_account("u").unwrap();
    c.add_account("u").unwrap();
    let mut theirs = Vec::new();
    for i in 0..2 {
        theirs.push(c.write("u", |b| b.append(INBOX, &message(100 + i), 1, vec![Keyword::Seen])).unwrap());
    }
    let mut shown = Vec::new();
    for i in 0..3 {
        shown.push(a.write("u", |b| b.append(INBOX, &message(i), 1, vec![])).unwrap());
    }
    a.write("u", |b| Ok(b.replica().announce(INBOX)?)).unwrap();
    shown.push(a.write("u", |b| b.append(INBOX, &message(3), 2, vec![])).unwrap());
    a.write("u", |b| Ok(b.replica().announce(INBOX)?)).unwrap();
    let uids = |s: &Store| -> Vec<u32> {
        let r = s.read("u").unwrap();
        let all = r.messages(INBOX, 1, usize::MAX).unwrap();
        shown.iter().map(|m| all.iter().find(|x| x.message == *m).map_or(0, |x| x.uid)).collect()
    };
    assert_eq!(uids(&a), [1, 2, 3, 4]);
    let from_a = a.ops_since("u", &VersionVector::new()).unwrap();
    c.write("u", |b| b.apply(from_a)).unwrap();
    assert_eq!(uids(&c), [1, 2, 3, 4], "A's shown UIDs on C\n{}", c.dump("u").unwrap());
    let from_c = c.ops_since("u", &a.version("u").unwrap()).unwrap();
    a.write("u", |b| b.apply(from_c)).unwrap();
    let from_c = c.ops_since("u", &VersionVector::new()).unwrap();
    a.write("u", |b| b.apply(from_c)).unwrap();
    assert_eq!(uids(&a), [1, 2, 3, 4], "A's shown UIDs on A\n{}", a.dump("u").unwrap());
}
