//! Snapshots as streams on real redb files: written to and installed from
//! any reader, a record at a time; a snapshot cut short, damaged, too large
//! in a record or out of order is refused and changes nothing.

use starling_model::{BlobId, Keyword, Replica, ReplicaId, INBOX};
use starling_store::{Store, StoreError, StoreOptions, RECORD_BYTES_MAX};
use std::io::Write;

fn store(dir: &tempfile::TempDir, name: &str, node: u64) -> Store {
    let s = Store::open(&dir.path().join(name), ReplicaId(node), StoreOptions::default()).unwrap();
    s.add_account("u").unwrap();
    s
}

/// A source of `n` messages in two mailboxes (some flagged, some expunged),
/// its log compacted to half of it so the snapshot carries a tail.
fn source(dir: &tempfile::TempDir, n: u64) -> (Store, starling_model::VersionVector) {
    let a = store(dir, "a.redb", 0xa);
    let mut peer = Replica::new(ReplicaId(0x77));
    let work = peer.create_mailbox("Work", None, None).unwrap();
    let mut ms = Vec::new();
    for i in 0..n {
        let mb = if i.is_multiple_of(3) { work } else { INBOX };
        ms.push(peer.append(mb, BlobId::of(&i.to_le_bytes()), 1000, i as i64, vec![]).unwrap());
    }
    a.write("u", |b| b.apply(peer.take_outbox())).unwrap();
    let half = a.version("u").unwrap();
    a.compact("u", &half).unwrap();
    for m in ms.iter().step_by(7) {
        peer.store_flags(*m, &[Keyword::Flagged], &[]).unwrap();
    }
    peer.expunge(&ms[..n as usize / 10]).unwrap();
    a.write("u", |b| b.apply(peer.take_outbox())).unwrap();
    (a, half)
}

#[test]
fn a_snapshot_written_to_a_file_installs_from_it() {
    let dir = tempfile::tempdir().unwrap();
    let (a, half) = source(&dir, 12_000);
    let path = dir.path().join("snap");
    a.write_snapshot("u", std::io::BufWriter::new(std::fs::File::create(&path).unwrap())).unwrap();
    assert_eq!(std::fs::read(&path).unwrap(), a.snapshot("u").unwrap(), "the same bytes either way");
    let b = store(&dir, "b.redb", 0xb);
    b.install_snapshot_from("u", std::io::BufReader::new(std::fs::File::open(&path).unwrap())).unwrap();
    assert_eq!(b.dump("u").unwrap(), a.dump("u").unwrap());
    assert_eq!(b.version("u").unwrap(), a.version("u").unwrap());
    // The tail came along: B serves what A serves, a node at A's floor
    // gets the ops above it, one below is told to catch up by state.
    let above = b.ops_since("u", &half).unwrap();
    assert!(above.len() > 12_000 / 7, "{} ops above the floor", above.len());
    assert_eq!(above, a.ops_since("u", &half).unwrap());
    assert!(matches!(b.ops_since("u", &Default::default()), Err(StoreError::Compacted)));
}

/// Every way a snapshot can be wrong, against a store that already holds
/// an older state: each is refused with `StoreError::Snapshot` and the
/// store is as it was.
#[test]
fn a_bad_snapshot_is_refused_and_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let (a, _) = source(&dir, 3_000);
    let b = store(&dir, "b.redb", 0xb);
    let good = a.snapshot("u").unwrap();
    let before = b.dump("u").unwrap();
    let refused = |bytes: &[u8], why: &str| {
        match b.install_snapshot("u", bytes) {
            Err(StoreError::Snapshot(w)) => assert!(w.contains(why), "{w:?} lacks {why:?}"),
            other => panic!("not refused ({why}): {other:?}"),
        }
        assert_eq!(b.dump("u").unwrap(), before, "{why}: nothing changed");
    };
    // Cut anywhere: the stream ends early.
    for cut in [1, 2, good.len() / 3, good.len() / 2, good.len() - 1] {
        refused(&good[..cut], "truncated");
    }
    // An older format.
    let mut old = good.clone();
    old[0] = 1;
    refused(&old, "format 1");
    // A record longer than any the writer makes: refused before allocating.
    let mut huge = vec![2u8];
    let mut z = zstd::stream::write::Encoder::new(&mut huge, 1).unwrap();
    z.write_all(&(RECORD_BYTES_MAX as u32 + 1).to_le_bytes()).unwrap();
    z.finish().unwrap();
    refused(&huge, "a record of");
    // Damaged bytes inside the compressed stream.
    let mut damaged = good.clone();
    let mid = damaged.len() / 2;
    for b in &mut damaged[mid..mid + 64] {
        *b ^= 0x5a;
    }
    match b.install_snapshot("u", &damaged) {
        Err(StoreError::Snapshot(_)) => {}
        other => panic!("damage not refused: {other:?}"),
    }
    assert_eq!(b.dump("u").unwrap(), before);
    // And the good one still installs.
    b.install_snapshot("u", &good).unwrap();
    assert_eq!(b.dump("u").unwrap(), a.dump("u").unwrap());
}
