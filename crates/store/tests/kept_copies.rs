//! Snapshots a sender keeps to resume transfers, on real redb files: they
//! outlive the process (a restarted sender sends the rest of the same
//! copy), go when the peer took them whole, are bounded in number, and an
//! open deletes whatever a crash left half written.

use starling_model::{BlobId, Replica, ReplicaId, INBOX};
use starling_store::{Store, StoreOptions, SNAPSHOTS_KEPT};

fn open(dir: &std::path::Path, name: &str, node: u64) -> Store {
    Store::open(&dir.join(name), ReplicaId(node), StoreOptions::default()).unwrap()
}

/// A sender with `n` messages of account "u".
fn sender(dir: &std::path::Path, n: u64) -> Store {
    let a = open(dir, "a.redb", 0xa);
    a.add_account("u").unwrap();
    let mut peer = Replica::new(ReplicaId(0x77));
    for i in 0..n {
        peer.append(INBOX, BlobId::of(&i.to_le_bytes()), 1000, i as i64, vec![]).unwrap();
    }
    a.write("u", |b| b.apply(peer.take_outbox())).unwrap();
    a
}

/// The names in the sender's directory of kept copies.
fn files(dir: &std::path::Path) -> Vec<String> {
    let Ok(entries) = std::fs::read_dir(dir.join("a.redb.snapshots")) else { return Vec::new() };
    let mut names: Vec<String> = entries.map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    names.sort();
    names
}

#[test]
fn a_copy_being_sent_outlives_a_restart_and_goes_once_taken() {
    let dir = tempfile::tempdir().unwrap();
    let a = sender(dir.path(), 5_000);
    let out = a.snapshot_to_send("u", 7, None).unwrap();
    assert_eq!(out.from, 0);
    let len = out.copy.len();
    let bytes = out.copy.read_at(0, len as usize).unwrap();
    assert_eq!(a.snapshots_kept(), vec![(7, "u".to_string(), out.id, len)]);
    assert_eq!(files(dir.path()).len(), 2, "{:?}", files(dir.path()));
    drop((out, a));

    let a = open(dir.path(), "a.redb", 0xa);
    assert_eq!(a.snapshots_kept().len(), 1, "kept over the restart");
    let (_, _, id, kept_len) = a.snapshots_kept()[0].clone();
    assert_eq!(kept_len, len);
    let again = a.snapshot_to_send("u", 7, Some((id, len, 1000))).unwrap();
    assert_eq!((again.id, again.from), (id, 1000), "the rest of the same copy");
    assert_eq!(again.copy.read_at(0, len as usize).unwrap(), bytes);
    // It installs as the state it was made from.
    let b = open(dir.path(), "b.redb", 0xb);
    b.add_account("u").unwrap();
    b.install_snapshot_from("u", &bytes[..]).unwrap();
    assert_eq!(b.dump("u").unwrap(), a.dump("u").unwrap());

    // Another peer, or an offer naming no kept copy: a new copy, from 0.
    let other = a.snapshot_to_send("u", 8, Some((id, len, 1000))).unwrap();
    assert_eq!(other.from, 0);
    assert_ne!(other.id, id, "ids differ across a restart");
    a.snapshot_sent("u", 7);
    a.snapshot_sent("u", 8);
    assert_eq!(a.snapshots_kept(), Vec::new());
    assert_eq!(files(dir.path()), Vec::<String>::new(), "taken whole: the files go");
    drop((again, other, a));
    assert_eq!(open(dir.path(), "a.redb", 0xa).snapshots_kept(), Vec::new());
}

#[test]
fn at_most_the_bound_is_kept_and_an_open_deletes_what_a_crash_left() {
    let dir = tempfile::tempdir().unwrap();
    let a = sender(dir.path(), 500);
    let mut ids = Vec::new();
    for peer in 0..SNAPSHOTS_KEPT as u64 + 2 {
        ids.push(a.snapshot_to_send("u", peer, None).unwrap().id);
    }
    let kept: Vec<u64> = a.snapshots_kept().iter().map(|k| k.2).collect();
    assert_eq!(kept, ids[2..], "the newest {SNAPSHOTS_KEPT}");
    assert_eq!(files(dir.path()).len(), 2 * SNAPSHOTS_KEPT);
    drop(a);
    // What a crash may leave: a copy without its meta, temporary files,
    // a meta whose copy is short.
    let kdir = dir.path().join("a.redb.snapshots");
    let victim = files(dir.path()).into_iter().find(|f| f.ends_with(".snap")).unwrap();
    let f = std::fs::OpenOptions::new().write(true).open(kdir.join(&victim)).unwrap();
    f.set_len(10).unwrap();
    drop(f);
    std::fs::write(kdir.join("0000000000000063-0000000000000001.snap"), b"half a copy").unwrap();
    std::fs::write(kdir.join(".tmpAbC123"), b"being written").unwrap();

    let a = open(dir.path(), "a.redb", 0xa);
    assert_eq!(a.snapshots_kept().len(), SNAPSHOTS_KEPT - 1, "the short copy is not loaded");
    assert_eq!(files(dir.path()).len(), 2 * (SNAPSHOTS_KEPT - 1), "{:?}", files(dir.path()));
    assert!(files(dir.path()).iter().all(|f| !f.starts_with('.') && !f.starts_with("0000000000000063")));
    // Each copy loaded is whole.
    for (peer, _, id, len) in a.snapshots_kept() {
        let out = a.snapshot_to_send("u", peer, Some((id, len, 1))).unwrap();
        assert_eq!((out.id, out.from), (id, 1));
        let b =
            Store::open(&dir.path().join(format!("b{peer}.redb")), ReplicaId(0xb), StoreOptions::default()).unwrap();
        b.add_account("u").unwrap();
        b.install_snapshot_from("u", &out.copy.read_at(0, len as usize).unwrap()[..]).unwrap();
        assert_eq!(b.dump("u").unwrap(), a.dump("u").unwrap());
    }
}

#[test]
fn forgetting_an_account_deletes_its_kept_copies_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let a = sender(dir.path(), 500);
    a.add_account("v").unwrap();
    let u = a.snapshot_to_send("u", 7, None).unwrap();
    let v = a.snapshot_to_send("v", 7, None).unwrap();
    assert_eq!(files(dir.path()).len(), 4);
    a.forget_account("u").unwrap();
    // Only the other account's copy stays, in the list and on disk.
    assert_eq!(a.snapshots_kept(), vec![(7, "v".to_string(), v.id, v.copy.len())]);
    let names = files(dir.path());
    assert_eq!(names.len(), 2, "{names:?}");
    assert!(names.iter().all(|n| n.contains(&format!("{:016x}", v.id))), "{names:?}");
    // A session still sending it reads on.
    assert_eq!(u.copy.read_at(0, 16).unwrap().len(), 16);
    // Made again under the same name, the account gets no copy of the old one.
    a.add_account("u").unwrap();
    let again = a.snapshot_to_send("u", 7, Some((u.id, u.copy.len(), 100))).unwrap();
    assert_eq!(again.from, 0);
    assert_ne!(again.id, u.id);
}
