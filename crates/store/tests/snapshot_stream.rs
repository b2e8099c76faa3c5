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

/// The copy a sender reads parts from: the same bytes as the snapshot in
/// memory, its version the state's, read back in any parts; it lives in a
/// file beside the store's that no directory lists, so nothing of it is
/// left once it is dropped (or the process dies).
#[test]
fn a_snapshot_copy_is_read_back_in_parts_and_leaves_no_file() {
    let dir = tempfile::tempdir().unwrap();
    let (a, _) = source(&dir, 12_000);
    let listed = || {
        let mut names: Vec<_> = std::fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
        names.sort();
        names
    };
    let before = listed();
    let whole = a.snapshot("u").unwrap();
    let copy = a.snapshot_copy("u").unwrap();
    assert_eq!(listed(), before, "no file of the copy is listed");
    assert_eq!(copy.len(), whole.len() as u64);
    assert_eq!(copy.covers(), &a.version("u").unwrap());
    for part in [1, 4096, 1 << 20, whole.len()] {
        let mut read = Vec::new();
        while (read.len() as u64) < copy.len() {
            let len = part.min(whole.len() - read.len());
            read.extend(copy.read_at(read.len() as u64, len).unwrap());
        }
        assert!(read == whole, "read back in parts of {part}");
    }
    // A later change is not in the copy made before it.
    let mut peer = Replica::new(ReplicaId(0x78));
    peer.append(INBOX, BlobId::of(b"later"), 10, 1, vec![]).unwrap();
    a.write("u", |b| b.apply(peer.take_outbox())).unwrap();
    assert_ne!(copy.covers(), &a.version("u").unwrap());
    let b = store(&dir, "b.redb", 0xb);
    b.install_snapshot("u", &copy.read_at(0, copy.len() as usize).unwrap()).unwrap();
    assert_eq!(&b.version("u").unwrap(), copy.covers());
    drop(copy);
    assert_eq!(listed().len(), before.len() + 1, "only b.redb is new");
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

/// Spools `snap` into `b` from peer `spool` in parts of `part` bytes.
fn spool(b: &Store, spool: u64, snap: &[u8], part: usize) {
    for (i, p) in snap.chunks(part).enumerate() {
        b.spool_snapshot_part("u", spool, (1, snap.len() as u64), (i * part) as u64, p).unwrap();
    }
}

fn spool_rows(s: &Store) -> u64 {
    s.table_sizes().unwrap().iter().find(|t| t.name == "snapshot_spool").map_or(0, |t| t.rows)
}

#[test]
fn a_spooled_snapshot_installs_and_its_parts_go_with_the_install() {
    let dir = tempfile::tempdir().unwrap();
    let (a, _) = source(&dir, 6_000);
    let snap = a.snapshot("u").unwrap();
    let b = store(&dir, "b.redb", 0xb);
    // Two connected peers' spools side by side; the first one broken off
    // and begun again from offset 0.
    let _up = (b.link_up(ReplicaId(1)), b.link_up(ReplicaId(2)));
    spool(&b, 1, &snap[..snap.len() / 2], 4096);
    spool(&b, 2, &snap, 10_000);
    spool(&b, 1, &snap, 4096);
    assert_eq!(b.spooled_bytes("u", 1).unwrap(), snap.len() as u64);
    assert_eq!(b.spooled_bytes("u", 2).unwrap(), snap.len() as u64);
    b.install_spooled_snapshot("u", 1).unwrap();
    assert_eq!(b.dump("u").unwrap(), a.dump("u").unwrap());
    assert_eq!(b.spooled_bytes("u", 1).unwrap(), 0, "the install took its parts");
    assert_eq!(b.spooled_bytes("u", 2).unwrap(), snap.len() as u64, "the other peer's stay");
    // The second one holds nothing new: a no-op, and its parts go too.
    b.install_spooled_snapshot("u", 2).unwrap();
    assert_eq!(b.dump("u").unwrap(), a.dump("u").unwrap());
    assert_eq!(spool_rows(&b), 0);

    // A spool cut short fails to install, changes nothing and is dropped.
    let c = store(&dir, "c.redb", 0xc);
    let before = c.dump("u").unwrap();
    spool(&c, 1, &snap[..snap.len() - 100], 4096);
    assert!(matches!(c.install_spooled_snapshot("u", 1), Err(StoreError::Snapshot(_))));
    assert_eq!(c.dump("u").unwrap(), before);
    assert_eq!(spool_rows(&c), 0);
    // A new snapshot drops the parts of peers with no link open (a session
    // that broke off) and keeps those of peers still connected.
    let up6 = c.link_up(ReplicaId(6));
    spool(&c, 5, &snap[..snap.len() / 2], 4096);
    spool(&c, 6, &snap[..snap.len() / 2], 4096);
    spool(&c, 7, &snap[..4096], 4096);
    assert_eq!(c.spooled_bytes("u", 5).unwrap(), 0, "no link to 5: dropped");
    assert_eq!(c.spooled_bytes("u", 6).unwrap(), (snap.len() / 2) as u64, "6 is connected: kept");
    // Parts a broken session left stay over a restart, for the peer to
    // send the rest; the rest installs.
    let third = snap.len() / 3;
    for (i, p) in snap[..third].chunks(4096).enumerate() {
        c.spool_snapshot_part("u", 3, (1, snap.len() as u64), (i * 4096) as u64, p).unwrap();
    }
    assert_eq!(c.spool_held("u", 3).unwrap(), Some((1, snap.len() as u64, third as u64)));
    drop((up6, c));
    let c = Store::open(&dir.path().join("c.redb"), ReplicaId(0xc), StoreOptions::default()).unwrap();
    assert_eq!(c.spool_held("u", 3).unwrap(), Some((1, snap.len() as u64, third as u64)), "kept over the restart");
    // Status lists every spool of the account: 6's too (7's went when 3's
    // began, 7 having no link open).
    let spools = c.spools("u").unwrap();
    assert!(spools.contains(&(3, 1, snap.len() as u64, third as u64)), "{spools:?}");
    assert_eq!(spools.iter().map(|s| s.0).collect::<Vec<_>>(), [3, 6]);
    assert_eq!(c.dump("u").unwrap(), before);
    for (i, p) in snap[third..].chunks(4096).enumerate() {
        c.spool_snapshot_part("u", 3, (1, snap.len() as u64), (third + i * 4096) as u64, p).unwrap();
    }
    c.install_spooled_snapshot("u", 3).unwrap();
    assert_eq!(c.dump("u").unwrap(), a.dump("u").unwrap());
    assert_eq!(c.spool_held("u", 3).unwrap(), None);
    // Forgetting the account drops its spools (6's, still here).
    assert!(spool_rows(&c) > 0);
    c.forget_account("u").unwrap();
    assert_eq!(spool_rows(&c), 0, "the forgotten account's spools went with it");
}

/// Power cuts while parts are spooled and while they are installed: after
/// each, the store reopens with either its old state or the whole
/// snapshot's, and a spool whose head says what its parts hold; the
/// transfer then goes on from there (as the peer would send the rest) and
/// installs.
#[test]
fn a_power_cut_while_a_snapshot_is_spooled_or_installed_leaves_old_or_new() {
    use starling_store::memdisk::MemDisk;
    let dir = tempfile::tempdir().unwrap();
    let (a, _) = source(&dir, 3_000);
    let snap = a.snapshot("u").unwrap();
    let node = ReplicaId(0xb);
    let disk = MemDisk::new();
    let before = {
        let b = Store::open_on(disk.backend(), "mem", node, StoreOptions::default()).unwrap();
        b.add_account("u").unwrap();
        b.dump("u").unwrap()
    };
    let image = disk.durable_copy();
    // Spools from where the spool ends (0 if nothing is held), then
    // installs (if `install`).
    let spool_and = |d: &MemDisk, install: bool| -> Result<(), StoreError> {
        let b = Store::open_on(d.backend(), "mem", node, StoreOptions::default())
            .map_err(|e| StoreError::Io(e.to_string()))?;
        let from = b.spool_held("u", 9)?.map_or(0, |h| h.2) as usize;
        for (i, p) in snap[from..].chunks(8192).enumerate() {
            b.spool_snapshot_part("u", 9, (1, snap.len() as u64), (from + i * 8192) as u64, p)?;
        }
        if install {
            b.install_spooled_snapshot("u", 9)?;
        }
        Ok(())
    };
    let run = |d: &MemDisk| spool_and(d, true);
    // Disk operations to spool every part, and to install too: half the
    // cuts land in each.
    let (spooled, whole) = {
        let d = image.durable_copy();
        spool_and(&d, false).unwrap();
        let spooled = d.ops();
        let d = image.durable_copy();
        run(&d).unwrap();
        (spooled, d.ops())
    };
    assert!(spooled < whole);
    let after = a.dump("u").unwrap();
    let (mut old, mut new, mut resumed) = (0, 0, 0);
    for k in 1..=24u64 {
        // The last one at the end: the install's commit is its last few.
        let cut = if k <= 12 { spooled * k / 13 } else { spooled + (whole - spooled) * (k - 12) / 12 };
        let d = image.durable_copy();
        d.fail_after(Some(cut));
        let _ = run(&d);
        d.crash();
        d.fail_after(None);
        let b = Store::open_on(d.backend(), "mem", node, StoreOptions::default()).unwrap();
        let dump = b.dump("u").unwrap();
        let held = b.spool_held("u", 9).unwrap();
        assert_eq!(held.map_or(0, |h| h.2), b.spooled_bytes("u", 9).unwrap(), "cut {cut}: the head says what is held");
        if dump == before {
            old += 1;
            resumed += u64::from(held.is_some());
            drop(b);
            run(&d).unwrap();
            let b = Store::open_on(d.backend(), "mem", node, StoreOptions::default()).unwrap();
            assert_eq!(b.dump("u").unwrap(), after, "cut {cut}: the transfer went on and installed");
            assert_eq!(spool_rows(&b), 0);
        } else {
            assert_eq!(dump, after, "cut {cut}: neither the old state nor the snapshot's");
            assert_eq!(spool_rows(&b), 0, "cut {cut}: the install took its parts");
            new += 1;
        }
    }
    assert!(old > 0 && new > 0, "cuts on both sides: {old} old, {new} new");
    assert!(resumed > 0, "some cuts left parts to go on from");
    eprintln!("{old} cuts before the install ({resumed} with parts held), {new} after");
}
