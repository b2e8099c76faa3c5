//! Long-lived stores: expunged mail's bodies are collected once every peer
//! holds the expunge, never while a message names them; the op log is
//! compacted to what every peer acknowledged; what peers acknowledged
//! survives a restart; a store of the previous format gets its candidates
//! at open.

use starling_model::{BlobId, ReplicaId, VersionVector, INBOX};
use starling_store::{Housekeeping, Housekept, Store, StoreError, StoreOptions};

/// A message with a large attachment (stored as a part of its own).
fn with_attachment(tag: &str, attachment: &[u8]) -> Vec<u8> {
    let hex: String = attachment.iter().map(|b| format!("{b:02x}")).collect();
    let mut wrapped = String::new();
    for chunk in hex.as_bytes().chunks(76) {
        wrapped.push_str(std::str::from_utf8(chunk).unwrap());
        wrapped.push_str("\r\n");
    }
    format!(
        "From: a@example.org\r\nSubject: {tag}\r\nMIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=\"b\"\r\n\r\n\
         --b\r\nContent-Type: text/plain\r\n\r\n{tag}\r\n--b\r\nContent-Type: text/plain\r\n\r\n{wrapped}--b--\r\n"
    )
    .into_bytes()
}

fn small(n: usize) -> Vec<u8> {
    format!("From: x@example.org\r\nSubject: small {n}\r\n\r\nbody {n}\r\n").into_bytes()
}

fn open(dir: &std::path::Path) -> Store {
    // A small part threshold, so the attachments below are parts.
    let options = StoreOptions { part_threshold: 4096, ..Default::default() };
    Store::open(&dir.join("s.redb"), ReplicaId(1), options).unwrap()
}

fn plan<'a>(peers: &'a [(ReplicaId, Vec<String>)], now_ms: u64, horizon_ms: u64) -> Housekeeping<'a> {
    Housekeeping { now_ms, horizon_ms, peers, alive: &[], compact_log: true, collect_bodies: true, batch: 16 }
}

fn housekeep(store: &Store) -> Housekept {
    store.housekeep(&plan(&[], 0, u64::MAX)).unwrap()
}

fn clean(store: &Store) {
    assert_eq!(store.check_blob_refs().unwrap(), Vec::<String>::new());
}

#[test]
fn an_expunged_body_and_its_parts_are_collected() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    store.add_account("u").unwrap();
    let raw = with_attachment("one", &starling_model::testkit::incompressible(32 * 1024, 1));
    let id = BlobId::of(&raw);
    let m = store.write("u", |b| b.append(INBOX, &raw, 0, vec![])).unwrap();
    assert_eq!(store.usage("u").unwrap(), (1, raw.len() as u64));
    assert_eq!(housekeep(&store).collected.bodies, 0, "a live message's body stays");
    assert_eq!(store.blob(id).unwrap().as_deref(), Some(raw.as_slice()));
    store.write("u", |b| Ok(b.replica().expunge(&[m])?)).unwrap();
    assert_eq!(store.usage("u").unwrap(), (0, 0));
    assert_eq!(store.bodies_to_collect().unwrap().get("u"), Some(&1));
    clean(&store);
    let kept = housekeep(&store);
    assert_eq!((kept.collected.bodies, kept.collected.parts), (1, 1));
    assert!(kept.collected.bytes > 32 * 1024, "the attachment's bytes were freed: {:?}", kept.collected);
    assert_eq!(store.blob(id).unwrap(), None);
    assert!(store.bodies_to_collect().unwrap().is_empty());
    clean(&store);
    // The same bytes appended again are stored again, whole.
    store.write("u", |b| b.append(INBOX, &raw, 0, vec![])).unwrap();
    assert_eq!(store.blob(id).unwrap().as_deref(), Some(raw.as_slice()));
    clean(&store);
}

#[test]
fn a_body_stays_while_any_copy_or_account_names_it() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    store.add_account("alice").unwrap();
    store.add_account("bob").unwrap();
    let raw = small(1);
    let id = BlobId::of(&raw);
    let m = store.write("alice", |b| b.append(INBOX, &raw, 0, vec![])).unwrap();
    let copy = store.write("alice", |b| Ok(b.replica().copy_message(m, INBOX)?)).unwrap();
    let mb = store.write("bob", |b| b.append(INBOX, &raw, 0, vec![])).unwrap();
    store.write("alice", |b| Ok(b.replica().expunge(&[m])?)).unwrap();
    housekeep(&store);
    assert!(store.read("alice").unwrap().body(id).is_ok(), "a copy is left");
    store.write("alice", |b| Ok(b.replica().expunge(&[copy])?)).unwrap();
    let kept = housekeep(&store);
    assert_eq!(kept.collected.bodies, 0, "bob still names it");
    assert_eq!(kept.collected.settled, 1, "alice's stable release is done with");
    assert!(store.read("bob").unwrap().body(id).is_ok());
    clean(&store);
    store.write("bob", |b| Ok(b.replica().expunge(&[mb])?)).unwrap();
    assert_eq!(housekeep(&store).collected.bodies, 1);
    assert_eq!(store.blob(id).unwrap(), None);
    clean(&store);
}

#[test]
fn a_part_shared_by_two_bodies_goes_with_the_last() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    store.add_account("u").unwrap();
    let attachment = starling_model::testkit::incompressible(16 * 1024, 2);
    let (a, b) = (with_attachment("first", &attachment), with_attachment("second", &attachment));
    let ma = store.write("u", |w| w.append(INBOX, &a, 0, vec![])).unwrap();
    let mb = store.write("u", |w| w.append(INBOX, &b, 0, vec![])).unwrap();
    store.write("u", |w| Ok(w.replica().expunge(&[ma])?)).unwrap();
    let kept = housekeep(&store);
    assert_eq!((kept.collected.bodies, kept.collected.parts), (1, 0), "the part is still named");
    assert_eq!(store.read("u").unwrap().body(BlobId::of(&b)).unwrap(), b, "the other body reads whole");
    clean(&store);
    store.write("u", |w| Ok(w.replica().expunge(&[mb])?)).unwrap();
    let kept = housekeep(&store);
    assert_eq!((kept.collected.bodies, kept.collected.parts), (1, 1));
    clean(&store);
}

/// A peer that has not acknowledged the expunge holds the body back; once
/// it has, or once it is past the horizon, the body goes. The log
/// compacts to what the peer holds, never past it.
#[test]
fn collection_and_compaction_wait_for_every_peer() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    store.add_account("u").unwrap();
    let peer = ReplicaId(2);
    let peers = vec![(peer, vec!["u".to_string()])];
    let raw = small(2);
    let m = store.write("u", |b| b.append(INBOX, &raw, 0, vec![])).unwrap();
    let before_expunge = store.version("u").unwrap();
    store.write("u", |b| Ok(b.replica().expunge(&[m])?)).unwrap();
    // Never heard from: first listed now, holds everything back.
    let kept = store.housekeep(&plan(&peers, 1_000, 60_000)).unwrap();
    assert_eq!(kept.collected.bodies, 0);
    assert_eq!(kept.accounts[0].ops_dropped, 0);
    assert_eq!(kept.accounts[0].stable, VersionVector::new());
    // It has the append, not the expunge.
    store.note_ack("u", peer, &before_expunge);
    let kept = store.housekeep(&plan(&peers, 2_000, 60_000)).unwrap();
    assert_eq!(kept.collected.bodies, 0, "the peer lacks the expunge");
    assert_eq!(kept.accounts[0].stable, before_expunge);
    assert_eq!(kept.accounts[0].oldest_peer, Some((peer, 1)));
    assert!(store.blob(BlobId::of(&raw)).unwrap().is_some());
    // The log keeps what the peer lacks, and can still serve it.
    assert!(store.ops_chunk("u", &before_expunge, 100, 1 << 20).unwrap().len() == 1);
    // It acknowledges everything: the body goes.
    store.note_ack("u", peer, &store.version("u").unwrap());
    let kept = store.housekeep(&plan(&peers, 3_000, 60_000)).unwrap();
    assert_eq!(kept.collected.bodies, 1);
    clean(&store);

    // Another expunge; the peer then stays silent past the horizon.
    let m = store.write("u", |b| b.append(INBOX, &small(3), 0, vec![])).unwrap();
    store.write("u", |b| Ok(b.replica().expunge(&[m])?)).unwrap();
    let kept = store.housekeep(&plan(&peers, 60_000, 60_000)).unwrap();
    assert_eq!(kept.collected.bodies, 0, "within the horizon it still counts");
    let kept = store.housekeep(&plan(&peers, 63_001, 60_000)).unwrap();
    assert_eq!(kept.accounts[0].past_horizon, vec![peer]);
    assert_eq!(kept.collected.bodies, 1, "past the horizon it no longer holds anything back");
    // Coming back below the floor, it is told to catch up by state.
    assert!(matches!(store.ops_chunk("u", &before_expunge, 100, 1 << 20), Err(StoreError::Compacted)));
    clean(&store);
}

/// Acknowledgements are written down by housekeeping and read back after a
/// restart; a peer no longer pinned is forgotten.
#[test]
fn acknowledgements_survive_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let peers = vec![(ReplicaId(2), vec!["u".to_string()]), (ReplicaId(3), vec!["u".to_string()])];
    let vv = {
        let store = open(dir.path());
        store.add_account("u").unwrap();
        store.write("u", |b| b.append(INBOX, &small(1), 0, vec![])).unwrap();
        let vv = store.version("u").unwrap();
        store.note_ack("u", ReplicaId(2), &vv);
        store.housekeep(&plan(&peers, 5, u64::MAX)).unwrap();
        vv
    };
    let store = open(dir.path());
    let acks = store.peer_acks("u").unwrap();
    assert_eq!(acks.len(), 2);
    assert_eq!(acks[0].0, ReplicaId(2));
    assert_eq!((&acks[0].1.vv, acks[0].1.seen_ms), (&vv, 5));
    assert_eq!((acks[1].1.vv.clone(), acks[1].1.seen_ms), (VersionVector::new(), 5), "listed, never heard");
    // Peer 3 unpinned: forgotten, and peer 2 alone decides.
    let kept = store.housekeep(&plan(&peers[..1], 10, u64::MAX)).unwrap();
    assert_eq!(store.peer_acks("u").unwrap().len(), 1);
    assert_eq!(kept.accounts[0].stable, vv);
    assert_eq!(store.floor("u").unwrap(), vv, "the log compacted to what peer 2 holds");
}

/// A body stored while no message names it (it arrived after its message
/// was expunged) is collected; one a message names is not.
#[test]
fn a_body_nothing_names_is_collected() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    store.add_account("u").unwrap();
    let (stray, kept_raw) = (small(7), small(8));
    store.put_blobs(&[&stray, &kept_raw]).unwrap();
    store.write("u", |b| b.append(INBOX, &kept_raw, 0, vec![])).unwrap();
    clean(&store);
    assert_eq!(housekeep(&store).collected.bodies, 1);
    assert_eq!(store.blob(BlobId::of(&stray)).unwrap(), None);
    assert!(store.blob(BlobId::of(&kept_raw)).unwrap().is_some());
    clean(&store);
}

/// Collection is bounded per transaction and goes on where it stopped.
#[test]
fn collection_runs_in_bounded_batches() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    store.add_account("u").unwrap();
    let ids: Vec<_> = (0..40).map(|i| store.write("u", |b| b.append(INBOX, &small(i), 0, vec![])).unwrap()).collect();
    store.write("u", |b| Ok(b.replica().expunge(&ids)?)).unwrap();
    let stable = [("u".to_string(), store.version("u").unwrap())].into_iter().collect();
    let first = store.collect_bodies(&stable, 16).unwrap();
    assert_eq!((first.bodies, first.more), (16, true));
    let second = store.collect_bodies(&stable, 16).unwrap();
    assert_eq!((second.bodies, second.more), (16, true));
    let third = store.collect_bodies(&stable, 16).unwrap();
    assert_eq!((third.bodies, third.more), (8, false));
    clean(&store);
}

/// A format-4 store (before collection existed) gets its candidates at
/// open: a body expunged before the upgrade is collected after it.
#[test]
fn a_format_4_store_gets_its_candidates_at_open() {
    let dir = tempfile::tempdir().unwrap();
    let raw = with_attachment("old", &starling_model::testkit::incompressible(8 * 1024, 3));
    {
        let store = open(dir.path());
        store.add_account("u").unwrap();
        let m = store.write("u", |b| b.append(INBOX, &raw, 0, vec![])).unwrap();
        store.write("u", |b| b.append(INBOX, &small(1), 0, vec![])).unwrap();
        store.write("u", |b| Ok(b.replica().expunge(&[m])?)).unwrap();
    }
    {
        let db = redb::Database::open(dir.path().join("s.redb")).unwrap();
        let w = db.begin_write().unwrap();
        w.delete_table(redb::TableDefinition::<([u8; 32], u32), &[u8]>::new("bodies_unreferenced")).unwrap();
        w.delete_table(redb::TableDefinition::<&[u8; 32], u64>::new("part_refs")).unwrap();
        w.delete_table(redb::TableDefinition::<u32, u64>::new("account_bytes")).unwrap();
        w.open_table(redb::TableDefinition::<&str, &[u8]>::new("meta"))
            .unwrap()
            .insert("version", [4u8].as_slice())
            .unwrap();
        w.commit().unwrap();
    }
    let store = open(dir.path());
    clean(&store);
    assert_eq!(store.usage("u").unwrap(), (1, small(1).len() as u64));
    let kept = housekeep(&store);
    assert_eq!((kept.collected.bodies, kept.collected.parts), (1, 1));
    assert_eq!(store.blob(BlobId::of(&raw)).unwrap(), None);
    clean(&store);
}

/// A long-running node's memory does not grow with its history: the local
/// ops a write makes are in the log, and the replica keeps no other copy.
/// (Reproduction: the year-of-mail benchmark's RSS grew by 28 MB per ten
/// days; every local op stayed in the replica's outbox, never taken.)
#[test]
fn local_ops_are_not_kept_in_memory_after_their_commit() {
    let dir = tempfile::tempdir().unwrap();
    let store = open(dir.path());
    store.add_account("u").unwrap();
    let m = store.write("u", |b| b.append(INBOX, &small(1), 0, vec![])).unwrap();
    let kw = [starling_model::Keyword::Seen];
    for i in 0..200 {
        let (add, remove): (&[_], &[_]) = if i % 2 == 0 { (&kw, &[]) } else { (&[], &kw) };
        store.write("u", |b| Ok(b.replica().store_flags(m, add, remove)?)).unwrap();
    }
    assert!(store.version("u").unwrap().iter().map(|(_, c)| c).sum::<u64>() > 200, "every write made an op");
    let held = store.inspect("u", |r| r.take_outbox().len()).unwrap();
    assert_eq!(held, 0, "ops kept in memory after they were committed");
}
