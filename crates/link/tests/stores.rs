//! Sessions driving real stores (redb files): three nodes, one stopped while
//! the others change things, then restarted; mail delivered on two nodes
//! while they exchange; a new node joining after the log was compacted.

use starling_link::PeerLink;
use starling_model::{Keyword, ReplicaId, VersionVector, INBOX};
use starling_store::{Store, StoreOptions};
use starling_sync::BodyPolicy;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

const ACCOUNT: &str = "alice";

struct Node {
    id: ReplicaId,
    path: PathBuf,
    store: Option<Store>,
    /// Links by peer index.
    links: BTreeMap<usize, PeerLink>,
    /// Which bodies this node fetches eagerly.
    policy: BodyPolicy,
}

impl Node {
    fn new(dir: &Path, i: usize) -> Node {
        let id = ReplicaId(0x100 + i as u64);
        let path = dir.join(format!("n{i}.redb"));
        let store = Store::open(&path, id, StoreOptions::default()).unwrap();
        store.add_account(ACCOUNT).unwrap();
        Node { id, path, store: Some(store), links: BTreeMap::new(), policy: BodyPolicy::full() }
    }
    fn store(&self) -> &Store {
        self.store.as_ref().expect("running")
    }
    fn stop(&mut self) {
        self.store = None;
        self.links.clear();
    }
    fn start(&mut self) {
        self.store = Some(Store::open(&self.path, self.id, StoreOptions::default()).unwrap());
    }
    /// Tells every link (but `except`) that the account changed here.
    fn changed_except(&mut self, except: Option<usize>) {
        let store = self.store.as_ref().unwrap();
        for (p, l) in self.links.iter_mut() {
            if Some(*p) != except {
                l.local_changed(store, ACCOUNT).unwrap();
            }
        }
    }
    fn changed(&mut self) {
        self.changed_except(None);
    }
    fn append(&mut self, n: usize) {
        let raw = format!("Subject: {n}\r\n\r\nbody {n}\r\n");
        self.store().write(ACCOUNT, |b| b.append(INBOX, raw.as_bytes(), n as i64, vec![]).map(|_| ())).unwrap();
        self.changed();
    }
    /// Appends `n` small messages in one transaction, without telling the
    /// links (they find them when they connect).
    fn append_many(&self, n: usize) {
        self.store()
            .write(ACCOUNT, |b| {
                for i in 0..n {
                    b.append(INBOX, format!("Subject: {i}\r\n\r\nbody {i}\r\n").as_bytes(), i as i64, vec![])?;
                }
                Ok(())
            })
            .unwrap();
    }
    /// Hands frames that came together from `peer` to its link (as the
    /// node does: their bodies in one transaction); relays what it
    /// committed.
    fn receive(&mut self, peer: usize, frames: &[Vec<u8>]) {
        let Some(link) = self.links.get_mut(&peer) else { return };
        let progress = link.handle_frames(self.store.as_ref().unwrap(), frames).unwrap();
        if !progress.committed.is_empty() {
            self.changed_except(Some(peer));
        }
    }
}

fn connect(nodes: &mut [Node], i: usize, j: usize) {
    let (a, b) = (nodes[i].id, nodes[j].id);
    let acct = [ACCOUNT.to_string()];
    let li = PeerLink::new(nodes[i].store(), a, Some(b), &acct, nodes[i].policy.clone()).unwrap();
    let lj = PeerLink::new(nodes[j].store(), b, Some(a), &acct, nodes[j].policy.clone()).unwrap();
    nodes[i].links.insert(j, li);
    nodes[j].links.insert(i, lj);
}

/// One step: every frame in flight moves one hop (each receiver answers at
/// once). Returns whether anything happened.
fn step(nodes: &mut [Node]) -> bool {
    let mut busy = false;
    for i in 0..nodes.len() {
        let peers: Vec<usize> = nodes[i].links.keys().copied().collect();
        for p in peers {
            let mut frames = Vec::new();
            let l = nodes[i].links.get_mut(&p).unwrap();
            while let Some(f) = l.poll_transmit().or_else(|| l.poll_transmit_blob()) {
                frames.push(f);
            }
            if !frames.is_empty() {
                busy = true;
                nodes[p].receive(i, &frames);
            }
        }
    }
    busy
}

fn settle(nodes: &mut [Node]) {
    for _ in 0..10_000 {
        if !step(nodes) {
            return;
        }
    }
    panic!("did not quiesce");
}

#[test]
fn three_nodes_one_stopped_then_restarted_converge() {
    let dir = tempfile::tempdir().unwrap();
    let mut nodes: Vec<Node> = (0..3).map(|i| Node::new(dir.path(), i)).collect();
    for (i, j) in [(0, 1), (1, 2), (0, 2)] {
        connect(&mut nodes, i, j);
    }
    for n in 0..5 {
        nodes[n % 3].append(n);
    }
    settle(&mut nodes);
    // C stops; A and B keep changing things.
    nodes[2].stop();
    for s in nodes.iter_mut().take(2) {
        s.links.remove(&2);
    }
    for n in 5..15 {
        nodes[n % 2].append(n);
        if n % 4 == 0 {
            settle(&mut nodes);
        }
    }
    let r = nodes[0].store().read(ACCOUNT).unwrap();
    let first = r.messages(INBOX, 1, 1).unwrap()[0].message;
    drop(r);
    nodes[0].store().write(ACCOUNT, |b| Ok(b.replica().store_flags(first, &[Keyword::Flagged], &[])?)).unwrap();
    nodes[0].changed();
    settle(&mut nodes);
    // C restarts from its file and reconnects.
    nodes[2].start();
    nodes[2].append(99);
    connect(&mut nodes, 0, 2);
    connect(&mut nodes, 1, 2);
    settle(&mut nodes);
    let dumps: Vec<String> = nodes.iter().map(|n| n.store().dump(ACCOUNT).unwrap()).collect();
    assert_eq!(dumps[0], dumps[1]);
    assert_eq!(dumps[0], dumps[2]);
    assert_eq!(nodes[2].store().read(ACCOUNT).unwrap().status(INBOX).unwrap().messages, 16);
    assert!(dumps[0].contains("\\Flagged"));
    // Bodies followed the metadata to every node.
    for n in &nodes {
        assert!(n.store().missing_blobs(ACCOUNT).unwrap().is_empty());
    }
}

#[test]
fn delivery_on_both_while_exchanging_no_duplicate_nothing_lost() {
    let dir = tempfile::tempdir().unwrap();
    let mut nodes: Vec<Node> = (0..2).map(|i| Node::new(dir.path(), i)).collect();
    connect(&mut nodes, 0, 1);
    // Interleave deliveries on both with single protocol steps.
    for n in 0..300 {
        nodes[n % 2].append(n);
        if n % 3 == 0 {
            step(&mut nodes);
        }
    }
    settle(&mut nodes);
    for node in &nodes {
        assert_eq!(node.store().read(ACCOUNT).unwrap().status(INBOX).unwrap().messages, 300);
    }
    assert_eq!(nodes[0].store().dump(ACCOUNT).unwrap(), nodes[1].store().dump(ACCOUNT).unwrap());
}

#[test]
fn new_node_after_compaction_catches_up_by_snapshot() {
    let dir = tempfile::tempdir().unwrap();
    let mut nodes: Vec<Node> = (0..2).map(|i| Node::new(dir.path(), i)).collect();
    connect(&mut nodes, 0, 1);
    for n in 0..40 {
        nodes[n % 2].append(n);
    }
    settle(&mut nodes);
    // Both hold everything: the log can go.
    let all = nodes[0].store().version(ACCOUNT).unwrap();
    nodes[0].store().compact(ACCOUNT, &all).unwrap();
    nodes.push(Node::new(dir.path(), 2));
    connect(&mut nodes, 0, 2);
    settle(&mut nodes);
    assert_eq!(nodes[2].store().dump(ACCOUNT).unwrap(), nodes[0].store().dump(ACCOUNT).unwrap());
    assert!(nodes[2].store().missing_blobs(ACCOUNT).unwrap().is_empty(), "bodies fetched after the snapshot");
    // And then ops flow normally.
    nodes[2].append(100);
    settle(&mut nodes);
    let v: VersionVector = nodes[0].store().version(ACCOUNT).unwrap();
    assert!(v.contains(starling_model::Dot::new(nodes[2].id, 1)));
}

/// dsync's default mode once exited 0 leaving replicas 200 messages apart
/// after equal numbers of changes on both sides; here equal counts are just
/// more ops, never mistaken for "in sync".
#[test]
fn equal_numbers_of_changes_on_both_sides_are_never_skipped() {
    let dir = tempfile::tempdir().unwrap();
    let mut nodes: Vec<Node> = (0..2).map(|i| Node::new(dir.path(), i)).collect();
    connect(&mut nodes, 0, 1);
    settle(&mut nodes);
    // Both take 200 messages and 50 flag changes while not exchanging.
    nodes[0].links.clear();
    nodes[1].links.clear();
    for n in 0..200 {
        nodes[0].append(1000 + n);
        nodes[1].append(2000 + n);
    }
    for node in &nodes {
        let r = node.store().read(ACCOUNT).unwrap();
        let ids: Vec<_> = r.messages(INBOX, 1, 50).unwrap().into_iter().map(|m| m.message).collect();
        drop(r);
        node.store()
            .write(ACCOUNT, |b| {
                for m in &ids {
                    b.replica().store_flags(*m, &[Keyword::Seen], &[])?;
                }
                Ok(())
            })
            .unwrap();
    }
    connect(&mut nodes, 0, 1);
    settle(&mut nodes);
    for node in &nodes {
        assert_eq!(node.store().read(ACCOUNT).unwrap().status(INBOX).unwrap().messages, 400);
    }
    assert_eq!(nodes[0].store().dump(ACCOUNT).unwrap(), nodes[1].store().dump(ACCOUNT).unwrap());
}

/// A partial peer: INBOX bodies up to 1 MiB come eagerly; it still holds all
/// metadata, and gets a large attachment (or any other body) on demand.
#[test]
fn partial_peer_takes_small_inbox_bodies_and_the_rest_on_demand() {
    let dir = tempfile::tempdir().unwrap();
    let mut nodes: Vec<Node> = (0..2).map(|i| Node::new(dir.path(), i)).collect();
    nodes[1].policy =
        BodyPolicy { mailboxes: Some(vec!["INBOX".into()]), size_max: Some(1 << 20), ..BodyPolicy::full() };
    let big = {
        let mut m = b"Subject: big\r\nMIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=b\r\n\r\n--b\r\nContent-Type: text/plain\r\n\r\nsee attached\r\n--b\r\nContent-Type: application/pdf\r\nContent-Transfer-Encoding: base64\r\n\r\n".to_vec();
        let mut x = 1u32;
        while m.len() < 2_500_000 {
            x = x.wrapping_mul(1_103_515_245).wrapping_add(12_345);
            m.push(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"[(x >> 16) as usize % 64]);
            if m.len() % 78 == 76 {
                m.extend_from_slice(b"\r\n");
            }
        }
        m.extend_from_slice(b"\r\n--b--\r\n");
        m
    };
    let big_id = starling_model::BlobId::of(&big);
    nodes[0]
        .store()
        .write(ACCOUNT, |b| {
            let work = b.replica().create_mailbox("Work", None, None)?;
            b.append(INBOX, b"Subject: small\r\n\r\nhi\r\n", 1, vec![])?;
            b.append(INBOX, &big, 2, vec![])?;
            b.append(work, b"Subject: work\r\n\r\nreport\r\n", 3, vec![])?;
            Ok(())
        })
        .unwrap();
    connect(&mut nodes, 0, 1);
    settle(&mut nodes);
    // All metadata, identical; only the small INBOX body.
    assert_eq!(nodes[1].store().dump(ACCOUNT).unwrap(), nodes[0].store().dump(ACCOUNT).unwrap());
    let missing = nodes[1].store().missing_blobs(ACCOUNT).unwrap();
    assert_eq!(missing.len(), 2, "the large INBOX body and the Work body are left out");
    assert!(missing.contains(&big_id));
    // A client opens the attachment: fetched on demand, byte-exact.
    nodes[1].links.get_mut(&0).unwrap().fetch_bodies([(big_id, 0)]);
    settle(&mut nodes);
    assert_eq!(nodes[1].store().blob(big_id).unwrap().unwrap(), big);
    assert_eq!(nodes[1].store().missing_blobs(ACCOUNT).unwrap().len(), 1);
}

use starling_model::testkit::incompressible as noise;

/// Two nodes pinned for alice; node 0 also holds bob's account, with one
/// message only bob may read. Returns the nodes and that message.
fn bob_has_a_secret(dir: &Path) -> (Vec<Node>, Vec<u8>) {
    let nodes: Vec<Node> = (0..2).map(|i| Node::new(dir, i)).collect();
    nodes[0].store().add_account("bob").unwrap();
    let secret = b"Subject: for bob only\r\n\r\nthe merger is off\r\n".to_vec();
    nodes[0].store().write("bob", |b| b.append(INBOX, &secret, 1, vec![]).map(|_| ())).unwrap();
    (nodes, secret)
}

/// A peer pinned for alice asks for the id of a body in bob's INBOX: it is
/// answered as absent, never sent (issue 14, item 5).
#[test]
fn a_peer_gets_no_body_of_an_account_it_is_not_pinned_for() {
    let dir = tempfile::tempdir().unwrap();
    let (mut nodes, secret) = bob_has_a_secret(dir.path());
    let secret_id = starling_model::BlobId::of(&secret);
    nodes[0].append(1);
    connect(&mut nodes, 0, 1);
    settle(&mut nodes);
    // Node 1 (alice's peer) knows bob's body id somehow and asks for it.
    nodes[1].links.get_mut(&0).unwrap().fetch_bodies([(secret_id, 0)]);
    settle(&mut nodes);
    assert_eq!(nodes[1].store().blob(secret_id).unwrap(), None, "bob's body went to alice's peer");
    // Alice's own bodies still flow.
    assert!(nodes[1].store().missing_blobs(ACCOUNT).unwrap().is_empty());
}

/// A body damaged on disk is asked of a peer again and replaced by a good
/// copy (issue 14, item 8: self-healing).
#[test]
fn a_damaged_body_is_fetched_again_from_a_peer() {
    let dir = tempfile::tempdir().unwrap();
    let mut nodes: Vec<Node> = (0..2).map(|i| Node::new(dir.path(), i)).collect();
    let payload = noise(64 * 1024, 7);
    let mut raw = b"Subject: noise\r\n\r\n".to_vec();
    raw.extend_from_slice(&payload);
    let id = starling_model::BlobId::of(&raw);
    nodes[0].store().write(ACCOUNT, |b| b.append(INBOX, &raw, 1, vec![]).map(|_| ())).unwrap();
    connect(&mut nodes, 0, 1);
    settle(&mut nodes);
    assert_eq!(nodes[1].store().blob(id).unwrap().unwrap(), raw);
    // Damage node 1's copy while it is stopped.
    nodes[1].stop();
    let path = nodes[1].path.clone();
    let mut bytes = std::fs::read(&path).unwrap();
    let needle = &payload[1000..1064];
    let at = bytes.windows(needle.len()).position(|w| w == needle).expect("stored verbatim");
    bytes[at + 10] ^= 0x20;
    std::fs::write(&path, bytes).unwrap();
    nodes[1].start();
    assert!(nodes[1].store().blob(id).unwrap_err().is_damage(), "the damage is seen");
    // On the next connection the link asks for it again; the good copy replaces it.
    connect(&mut nodes, 0, 1);
    settle(&mut nodes);
    assert_eq!(nodes[1].store().blob(id).unwrap().unwrap(), raw, "healed from the peer");
    assert!(nodes[1].store().corrupt_blobs().is_empty());
}

/// A peer pinned for alice makes a message in alice's account that names
/// the id of a body in bob's INBOX, without having its bytes (issue 14:
/// cross-account by append). Alice's message does not read as bob's body
/// here, and the peer cannot fetch it through alice's account; it stays
/// missing until some peer sends the bytes — proof of having them.
#[test]
fn a_message_from_a_peer_naming_another_accounts_body_gets_it_only_with_the_bytes() {
    let dir = tempfile::tempdir().unwrap();
    let (mut nodes, secret) = bob_has_a_secret(dir.path());
    let secret_id = starling_model::BlobId::of(&secret);
    connect(&mut nodes, 0, 1);
    settle(&mut nodes);
    // Node 1 forges an append in alice's account naming bob's body.
    nodes[1]
        .store()
        .write(ACCOUNT, |b| Ok(b.replica().append(INBOX, secret_id, secret.len() as u64, 1, vec![]).map(|_| ())?))
        .unwrap();
    nodes[1].changed();
    settle(&mut nodes);
    let r = nodes[0].store().read(ACCOUNT).unwrap();
    assert_eq!(r.messages(INBOX, 1, usize::MAX).unwrap().len(), 1, "the message itself is applied");
    assert!(
        matches!(r.body(secret_id), Err(starling_store::StoreError::MissingBlob(_))),
        "alice's message does not read as bob's body"
    );
    assert_eq!(nodes[0].store().missing_blobs(ACCOUNT).unwrap(), vec![secret_id], "missing for alice");
    nodes[1].links.get_mut(&0).unwrap().fetch_bodies([(secret_id, 0)]);
    settle(&mut nodes);
    assert_eq!(nodes[1].store().blob(secret_id).unwrap(), None, "bob's body went to alice's peer");
    // Bob's own message is untouched.
    assert_eq!(nodes[0].store().read("bob").unwrap().body(secret_id).unwrap(), secret);

    // A peer that has the bytes proves it by sending them: a message of
    // alice's with a body bob also has (the same mail to both) reads whole.
    let shared = b"Subject: to everyone\r\n\r\nlunch at noon\r\n".to_vec();
    let shared_id = starling_model::BlobId::of(&shared);
    nodes[0].store().write("bob", |b| b.append(INBOX, &shared, 2, vec![]).map(|_| ())).unwrap();
    nodes[1].store().write(ACCOUNT, |b| b.append(INBOX, &shared, 2, vec![]).map(|_| ())).unwrap();
    nodes[1].changed();
    settle(&mut nodes);
    assert_eq!(nodes[0].store().read(ACCOUNT).unwrap().body(shared_id).unwrap(), shared);
    assert_eq!(nodes[0].store().missing_blobs(ACCOUNT).unwrap(), vec![secret_id], "only the forged one");
    assert_eq!(nodes[0].store().check_blob_refs().unwrap(), Vec::<String>::new());
}

/// A node lacking more bodies than a page asks for them a page at a time
/// ([`PeerLink::set_want_page`], [`starling_link::WANT_PAGE`] by default):
/// what its link holds of the missing list does not grow with the
/// account, the pages follow one another to the last body, and a partial
/// policy's pages hold only what it wants.
#[test]
fn missing_bodies_are_asked_a_page_at_a_time() {
    const PAGE: usize = 1_000;
    let window = starling_sync::BLOB_WINDOW_COUNT;
    let dir = tempfile::tempdir().unwrap();
    let mut nodes: Vec<Node> = (0..2).map(|i| Node::new(dir.path(), i)).collect();
    let n = 3 * (PAGE + window);
    nodes[0].append_many(n);
    // The metadata first, no body (a policy that takes none eagerly).
    nodes[1].policy = BodyPolicy { size_max: Some(0), ..BodyPolicy::full() };
    connect(&mut nodes, 0, 1);
    settle(&mut nodes);
    assert_eq!(nodes[1].store().missing_count(ACCOUNT).unwrap(), n as u64);

    // The pages of the store cover the missing list once, in order.
    let all = nodes[1].store().missing_sizes(ACCOUNT).unwrap();
    let (mut paged, mut after) = (Vec::new(), None);
    loop {
        let page = nodes[1].store().missing_page(ACCOUNT, after, PAGE).unwrap();
        assert!(page.bodies.len() <= PAGE);
        after = page.bodies.last().map(|b| b.0);
        paged.extend(page.bodies);
        if !page.more {
            break;
        }
    }
    assert_eq!(paged, all);

    // Reconnect wanting the newer half (a partial policy), then everything.
    let half = (n / 2) as i64;
    for policy in [BodyPolicy { received_since: Some(half), ..BodyPolicy::full() }, BodyPolicy::full()] {
        for node in nodes.iter_mut() {
            node.links.clear();
        }
        nodes[1].policy = policy;
        connect(&mut nodes, 0, 1);
        nodes[1].links.get_mut(&0).unwrap().set_want_page(PAGE);
        let mut most = 0;
        for _ in 0..10_000 {
            if !step(&mut nodes) {
                break;
            }
            let q = nodes[1].links[&0].session().queue_sizes();
            most = most.max(q.blobs_queued + q.blobs_in_flight);
        }
        assert!(most <= PAGE + window, "the link held {most} missing ids at once");
        let left = nodes[1].store().missing_count(ACCOUNT).unwrap();
        assert_eq!(left, if nodes[1].policy == BodyPolicy::full() { 0 } else { half as u64 });
    }
    assert_eq!(nodes[1].store().dump(ACCOUNT).unwrap(), nodes[0].store().dump(ACCOUNT).unwrap());
}

/// A node away when the account was deleted, back after its peer purged
/// it: the peer tells it, it takes the deletion (and passes it on to its
/// other peers as an op), and counts the peer as holding it. The purged
/// name is kept across a restart and is not made again.
#[test]
fn a_node_back_after_the_purge_learns_the_account_was_deleted() {
    let dir = tempfile::tempdir().unwrap();
    let mut nodes: Vec<Node> = (0..3).map(|i| Node::new(dir.path(), i)).collect();
    // 2 syncs with 0 only; 0 and 1 sync.
    connect(&mut nodes, 0, 1);
    connect(&mut nodes, 0, 2);
    for n in 0..4 {
        nodes[n % 3].append(n);
    }
    settle(&mut nodes);
    nodes[2].stop();
    nodes[0].links.remove(&2);
    nodes[2].start();
    // Away, 2 takes more mail.
    nodes[2].append(10);
    // Meanwhile the account is deleted on 0, 1 takes the deletion, and 0
    // purges its copy.
    nodes[0].store().delete_account(ACCOUNT).unwrap();
    nodes[0].changed();
    settle(&mut nodes);
    assert!(nodes[1].store().is_deleted(ACCOUNT).unwrap());
    assert!(!nodes[2].store().is_deleted(ACCOUNT).unwrap());
    nodes[0].links.clear();
    nodes[1].links.clear();
    nodes[0].store().forget_account(ACCOUNT).unwrap();
    assert!(nodes[0].store().was_purged(ACCOUNT).unwrap());
    // Kept across a restart; the name is not made again.
    nodes[0].stop();
    nodes[0].start();
    assert!(nodes[0].store().was_purged(ACCOUNT).unwrap());
    assert!(matches!(
        nodes[0].store().add_account(ACCOUNT),
        Err(starling_store::StoreError::AccountPurged(a)) if a == ACCOUNT
    ));
    // 2 comes back and connects to 0, which still lists it for the account.
    connect(&mut nodes, 0, 2);
    settle(&mut nodes);
    let two = nodes[2].store();
    assert!(two.is_deleted(ACCOUNT).unwrap(), "the returning node took the deletion");
    assert_eq!(two.purged_by(ACCOUNT), vec![nodes[0].id]);
    assert!(two.credential(ACCOUNT).unwrap().is_none(), "nobody logs in to it");
    assert!(nodes[0].store().accounts().is_empty(), "nothing made again on 0");
    // A node that never deleted nor purged it tells nobody: 1 and 2 share it.
    connect(&mut nodes, 1, 2);
    settle(&mut nodes);
    assert_eq!(nodes[1].store().dump(ACCOUNT).unwrap(), nodes[2].store().dump(ACCOUNT).unwrap());
    assert!(nodes[1].store().purged_by(ACCOUNT).is_empty());
    // Told again once purged here too (a session that began before): nothing to do.
    nodes[2].links.clear();
    nodes[2].store().forget_account(ACCOUNT).unwrap();
    assert!(!nodes[2].store().peer_purged(ACCOUNT, nodes[0].id).unwrap());
}

/// Bodies that arrive free room in the receiver's window; the requests for
/// the next ones are handed over before the arrived ones are stored, so the
/// node sends them while it commits (the sender is not left idle for every
/// commit).
#[test]
fn the_next_bodies_are_asked_for_before_the_arrived_ones_are_stored() {
    use starling_sync::Frame;
    let window = starling_sync::BLOB_WINDOW_COUNT;
    let n = window + 500;
    let dir = tempfile::tempdir().unwrap();
    let mut nodes: Vec<Node> = (0..2).map(|i| Node::new(dir.path(), i)).collect();
    nodes[0].append_many(n);
    connect(&mut nodes, 0, 1);
    let (mut asked_early, mut asked_late) = (0, 0);
    for _ in 0..10_000 {
        // A to B, as the node hands them over.
        let mut frames = Vec::new();
        let l = nodes[0].links.get_mut(&1).unwrap();
        while let Some(f) = l.poll_transmit().or_else(|| l.poll_transmit_blob()) {
            frames.push(f);
        }
        let arrived: Vec<starling_model::BlobId> = frames
            .iter()
            .filter_map(|f| match Frame::decode(f) {
                Ok(Frame::Blob { id, .. }) => Some(id),
                _ => None,
            })
            .collect();
        let b = &mut nodes[1];
        let store = b.store.as_ref().unwrap();
        let mut back = Vec::new();
        b.links
            .get_mut(&0)
            .unwrap()
            .handle_frames_sending_first(store, &frames, |s| {
                while let Some(f) = s.poll_transmit() {
                    if matches!(Frame::decode(&f), Ok(Frame::WantBlobs { .. })) {
                        // Handed over while the bodies that made room are
                        // not stored yet.
                        assert!(arrived.iter().all(|&id| store.lacks(ACCOUNT, id).unwrap()));
                        asked_early += 1;
                    }
                    back.push(f);
                }
            })
            .unwrap();
        let l = b.links.get_mut(&0).unwrap();
        while let Some(f) = l.poll_transmit() {
            asked_late += usize::from(!arrived.is_empty() && matches!(Frame::decode(&f), Ok(Frame::WantBlobs { .. })));
            back.push(f);
        }
        if frames.is_empty() && back.is_empty() {
            break;
        }
        nodes[0].receive(1, &back);
    }
    assert_eq!(nodes[1].store().missing_count(ACCOUNT).unwrap(), 0);
    // The first window is asked for after the ops; the rest as bodies arrive.
    assert!(asked_early >= 1, "no request left before a commit");
    assert_eq!(asked_late, 0, "requests made room for by arrived bodies waited for their commit");
    assert_eq!(nodes[1].store().dump(ACCOUNT).unwrap(), nodes[0].store().dump(ACCOUNT).unwrap());
}

/// Gives `node` `n` live messages from another replica (metadata only), its
/// log compacted to all of them; returns their version.
fn compacted_source(node: &Node, n: u64) -> VersionVector {
    use starling_model::{BlobId, Replica};
    let mut peer = Replica::new(ReplicaId(0x77));
    for i in 0..n {
        peer.append(INBOX, BlobId::of(&i.to_le_bytes()), 1000, i as i64, vec![]).unwrap();
        if (i + 1) % 50_000 == 0 || i + 1 == n {
            let ops = peer.take_outbox();
            node.store().write(ACCOUNT, |b| b.apply(ops)).unwrap();
        }
    }
    let all = node.store().version(ACCOUNT).unwrap();
    node.store().compact(ACCOUNT, &all).unwrap();
    all
}

/// A snapshot of several wire parts (over 16 MiB: 450,000 live messages,
/// metadata only): the receiving link spools each part into its store as it
/// comes, installs once the last is in, and leaves no part behind.
#[test]
fn a_snapshot_of_several_parts_is_spooled_then_installed_once_whole() {
    let dir = tempfile::tempdir().unwrap();
    let mut nodes: Vec<Node> = (0..2).map(|i| Node::new(dir.path(), i)).collect();
    // Metadata only: the receiver fetches no body.
    nodes[1].policy = BodyPolicy { size_max: Some(0), ..BodyPolicy::default() };
    let all = compacted_source(&nodes[0], 450_000);
    let size = nodes[0].store().snapshot(ACCOUNT).unwrap().len();
    assert!(size > starling_sync::SNAPSHOT_PART_BYTES, "a snapshot of {size} bytes is one part");

    connect(&mut nodes, 0, 1);
    let from = nodes[0].id.0;
    let (mut spooled_most, mut installs, mut queued_most, mut in_flight_most) = (0u64, 0, 0usize, 0u64);
    for _ in 0..10_000 {
        let mut busy = false;
        // 0 → 1 a frame at a time, to see the spool between parts.
        loop {
            let l = nodes[0].links.get_mut(&1).unwrap();
            let q = l.session().queue_sizes();
            (queued_most, in_flight_most) =
                (queued_most.max(q.transmit_bytes), in_flight_most.max(q.snapshot_in_flight));
            let Some(f) = l.poll_transmit().or_else(|| l.poll_transmit_blob()) else { break };
            busy = true;
            let before = nodes[1].store().version(ACCOUNT).unwrap();
            nodes[1].receive(0, &[f]);
            spooled_most = spooled_most.max(nodes[1].store().spooled_bytes(ACCOUNT, from).unwrap());
            installs += (nodes[1].store().version(ACCOUNT).unwrap() != before) as usize;
        }
        let l = nodes[1].links.get_mut(&0).unwrap();
        let mut back = Vec::new();
        while let Some(f) = l.poll_transmit().or_else(|| l.poll_transmit_blob()) {
            back.push(f);
        }
        if !back.is_empty() {
            busy = true;
            nodes[0].receive(1, &back);
        }
        if !busy {
            break;
        }
    }
    assert!(spooled_most >= starling_sync::SNAPSHOT_PART_BYTES as u64, "a whole part waited on disk: {spooled_most}");
    assert_eq!(installs, 1, "installed once, when the last part came");
    // The sender reads parts as the receiver takes them: it holds at most
    // the window of the snapshot (beside other metadata: its requests for
    // bodies), not the snapshot.
    let window = starling_sync::SNAPSHOT_WINDOW_BYTES;
    assert!(in_flight_most <= window && in_flight_most > window / 2, "{in_flight_most} snapshot bytes in flight");
    assert!(
        queued_most <= window as usize + (1 << 20),
        "the sender queued {queued_most} bytes of a {size}-byte snapshot"
    );
    assert_eq!(nodes[1].store().spooled_bytes(ACCOUNT, from).unwrap(), 0, "no part left");
    assert_eq!(nodes[1].store().version(ACCOUNT).unwrap(), all);
    assert_eq!(nodes[1].store().dump(ACCOUNT).unwrap(), nodes[0].store().dump(ACCOUNT).unwrap());
}

/// A message moved into a mailbox whose bodies a partial replica fetches:
/// its body is asked for at once, judged by the moved message alone —
/// not by scanning every message whose body the replica left out, which
/// at a million messages would be a scan per move.
#[test]
fn a_move_into_a_wanted_mailbox_fetches_that_body_without_a_scan() {
    let dir = tempfile::tempdir().unwrap();
    let mut nodes: Vec<Node> = (0..2).map(|i| Node::new(dir.path(), i)).collect();
    nodes[1].policy = BodyPolicy { mailboxes: Some(vec!["Archive".into()]), ..BodyPolicy::full() };
    let (archive, moved) = nodes[0]
        .store()
        .write(ACCOUNT, |b| {
            let archive = b.replica().create_mailbox("Archive", None, None)?;
            let mut first = None;
            for i in 0..300 {
                let m = b.append(INBOX, format!("Subject: {i}\r\n\r\nbody {i}\r\n").as_bytes(), i, vec![])?;
                first.get_or_insert(m);
            }
            Ok((archive, first.unwrap()))
        })
        .unwrap();
    connect(&mut nodes, 0, 1);
    settle(&mut nodes);
    assert_eq!(nodes[1].store().missing_blobs(ACCOUNT).unwrap().len(), 300, "INBOX bodies left out");
    let scans = nodes[1].store().missing_scans();

    nodes[0].store().write(ACCOUNT, |b| Ok(b.replica().move_message(moved, archive)?)).unwrap();
    nodes[0].changed();
    settle(&mut nodes);
    assert_eq!(nodes[1].store().dump(ACCOUNT).unwrap(), nodes[0].store().dump(ACCOUNT).unwrap());
    let body = nodes[1].store().read(ACCOUNT).unwrap().envelope(moved).unwrap().unwrap().blob;
    assert!(!nodes[1].store().lacks(ACCOUNT, body).unwrap(), "the moved message's body came");
    assert_eq!(nodes[1].store().missing_blobs(ACCOUNT).unwrap().len(), 299);
    assert_eq!(nodes[1].store().missing_scans(), scans, "judged by the moved message, no scan");
}

/// Moves frames both ways between nodes 0 and 1, 0 → 1 one at a time,
/// until `stop` says so or nothing moves; returns the snapshot parts 0 sent
/// (offset, length).
fn pump_parts(nodes: &mut [Node], stop: &dyn Fn(&Node) -> bool) -> Vec<(u64, u64)> {
    use starling_sync::Frame;
    let mut parts = Vec::new();
    for _ in 0..10_000 {
        let mut busy = false;
        loop {
            let l = nodes[0].links.get_mut(&1).unwrap();
            let Some(f) = l.poll_transmit().or_else(|| l.poll_transmit_blob()) else { break };
            busy = true;
            if let Ok(Frame::Snapshot { offset, bytes, .. }) = Frame::decode(&f) {
                parts.push((offset, bytes.len() as u64));
            }
            nodes[1].receive(0, &[f]);
            if stop(&nodes[1]) {
                return parts;
            }
        }
        let l = nodes[1].links.get_mut(&0).unwrap();
        let back: Vec<Vec<u8>> = std::iter::from_fn(|| l.poll_transmit().or_else(|| l.poll_transmit_blob())).collect();
        if !back.is_empty() {
            busy = true;
            nodes[0].receive(1, &back);
        }
        if !busy {
            break;
        }
    }
    parts
}

/// A snapshot transfer that breaks off resumes from what the receiver
/// spooled: the next session's receiver offers it, the sender sends only
/// the rest of the same copy, and the whole installs.
#[test]
fn a_broken_snapshot_transfer_resumes_from_the_spooled_parts() {
    let dir = tempfile::tempdir().unwrap();
    let mut nodes: Vec<Node> = (0..2).map(|i| Node::new(dir.path(), i)).collect();
    nodes[1].policy = BodyPolicy { size_max: Some(0), ..BodyPolicy::default() };
    let all = compacted_source(&nodes[0], 250_000);
    let from = nodes[0].id.0;

    connect(&mut nodes, 0, 1);
    let part = starling_sync::SNAPSHOT_SEND_PART as u64;
    let first = pump_parts(&mut nodes, &|n: &Node| n.store().spooled_bytes(ACCOUNT, from).unwrap() >= part);
    // The connection breaks with one part spooled.
    nodes[0].links.clear();
    nodes[1].links.clear();
    let (_, total, got) = nodes[1].store().spool_held(ACCOUNT, from).unwrap().expect("a part held");
    assert_eq!(got, part, "one part spooled");
    assert!(total > 2 * part, "a snapshot of {total} bytes: several parts");
    assert_eq!(first.first(), Some(&(0, part)));

    connect(&mut nodes, 0, 1);
    rest_sent_and_installed(&mut nodes, (got, total), &all);
}

/// Pumps a session in which node 1 holds `got` bytes of node 0's snapshot
/// of `total`: the parts sent begin there and add up to the rest, and node
/// 1 installs it (at `all`), its spool gone.
fn rest_sent_and_installed(nodes: &mut [Node], (got, total): (u64, u64), all: &VersionVector) {
    let second = pump_parts(nodes, &|_: &Node| false);
    assert_eq!(second.first().map(|p| p.0), Some(got), "the next session began where the spool ends");
    assert_eq!(second.iter().map(|p| p.1).sum::<u64>(), total - got, "only the rest was sent");
    let from = nodes[0].id.0;
    assert_eq!(nodes[1].store().spool_held(ACCOUNT, from).unwrap(), None, "the spool went with the install");
    assert_eq!(&nodes[1].store().version(ACCOUNT).unwrap(), all);
    assert_eq!(nodes[1].store().dump(ACCOUNT).unwrap(), nodes[0].store().dump(ACCOUNT).unwrap());
}

/// Part size of the restart tests: a 20,000-message snapshot in several.
const PART: u64 = 64 << 10;

/// Two nodes: node 0 holds 20,000 messages, its log compacted
/// ([`compacted_source`], returned as its version); node 1, empty and
/// fetching no body, catches up by snapshot.
fn snapshot_pair(dir: &Path) -> (Vec<Node>, VersionVector) {
    let mut nodes: Vec<Node> = (0..2).map(|i| Node::new(dir, i)).collect();
    nodes[1].policy = BodyPolicy { size_max: Some(0), ..BodyPolicy::default() };
    let all = compacted_source(&nodes[0], 20_000);
    (nodes, all)
}

/// Links node 0 to node 1, node 0 sending snapshots in parts of [`PART`].
fn link_in_parts(nodes: &mut [Node]) {
    connect(nodes, 0, 1);
    nodes[0].links.get_mut(&1).unwrap().set_snapshot_part(PART as usize);
}

/// Node 0 begins sending node 1 its snapshot ([`link_in_parts`]), pumped
/// until node 1 spooled three parts; the parts sent (offset, length).
fn three_parts_spooled(nodes: &mut [Node]) -> Vec<(u64, u64)> {
    let from = nodes[0].id.0;
    link_in_parts(nodes);
    pump_parts(nodes, &|n: &Node| n.store().spooled_bytes(ACCOUNT, from).unwrap() >= 3 * PART)
}

/// The receiver of a snapshot is stopped mid-transfer (its store closed)
/// and started again: the parts it spooled are still there, its next link
/// offers them, and the sender, which kept its copy, sends only the rest.
/// Parts of 64 KiB (`PeerLink::set_snapshot_part`) make a 20,000-message
/// snapshot travel in several.
#[test]
fn a_receiver_restarted_mid_snapshot_gets_only_the_rest() {
    let dir = tempfile::tempdir().unwrap();
    let (mut nodes, all) = snapshot_pair(dir.path());
    let from = nodes[0].id.0;
    let first = three_parts_spooled(&mut nodes);
    nodes[0].links.clear();
    nodes[1].stop();
    nodes[1].start();
    let (_, total, got) = nodes[1].store().spool_held(ACCOUNT, from).unwrap().expect("parts held over the restart");
    assert_eq!(got, 3 * PART, "three parts spooled");
    assert!(total > 6 * PART, "a snapshot of {total} bytes");
    assert_eq!(first.iter().map(|p| p.1).max(), Some(PART));
    assert!(nodes[1].store().version(ACCOUNT).unwrap().is_empty(), "nothing installed yet");

    link_in_parts(&mut nodes);
    rest_sent_and_installed(&mut nodes, (got, total), &all);
}

/// The receiver of a snapshot held every part but was killed during the
/// install (one transaction, rolled back: the spool is whole, nothing
/// installed). Its next link installs the spool before it says what it
/// holds, so the sender sends no snapshot again.
#[test]
fn a_receiver_killed_during_the_install_installs_at_the_next_link_without_a_resend() {
    let dir = tempfile::tempdir().unwrap();
    let (mut nodes, all) = snapshot_pair(dir.path());
    let from = nodes[0].id.0;
    // What a kill during the install leaves: every part spooled.
    let snapshot = nodes[0].store().snapshot(ACCOUNT).unwrap();
    let total = snapshot.len() as u64;
    for (i, part) in snapshot.chunks(PART as usize).enumerate() {
        nodes[1].store().spool_snapshot_part(ACCOUNT, from, (9, total), i as u64 * PART, part).unwrap();
    }
    nodes[1].stop();
    nodes[1].start();
    assert_eq!(nodes[1].store().spool_held(ACCOUNT, from).unwrap(), Some((9, total, total)));
    assert!(nodes[1].store().version(ACCOUNT).unwrap().is_empty(), "nothing installed yet");

    connect(&mut nodes, 0, 1);
    assert_eq!(nodes[1].links[&0].installed(), &[(ACCOUNT.to_string(), true)]);
    assert_eq!(nodes[1].store().spool_held(ACCOUNT, from).unwrap(), None, "the spool went with the install");
    assert_eq!(&nodes[1].store().version(ACCOUNT).unwrap(), &all);
    let parts = pump_parts(&mut nodes, &|_: &Node| false);
    assert_eq!(parts, Vec::new(), "snapshot parts sent again");
    assert_eq!(nodes[1].store().dump(ACCOUNT).unwrap(), nodes[0].store().dump(ACCOUNT).unwrap());
    // A link whose spool lacks nothing and holds no whole snapshot installs nothing.
    nodes[0].links.clear();
    nodes[1].links.clear();
    connect(&mut nodes, 0, 1);
    assert!(nodes[1].links[&0].installed().is_empty());
}

/// The *sender* of a snapshot is stopped mid-transfer (its store closed,
/// its process gone) and started again: the copy it was sending is still
/// on disk, so when the receiver offers the parts it holds, the sender
/// sends only the rest of that same copy.
#[test]
fn a_sender_restarted_mid_snapshot_sends_only_the_rest() {
    let dir = tempfile::tempdir().unwrap();
    let (mut nodes, all) = snapshot_pair(dir.path());
    let from = nodes[0].id.0;
    three_parts_spooled(&mut nodes);
    nodes[1].links.clear();
    let kept = nodes[0].store().snapshots_kept();
    nodes[0].stop();
    nodes[0].start();
    assert_eq!(nodes[0].store().snapshots_kept(), kept, "the copy being sent, kept over the restart");
    let (_, total, got) = nodes[1].store().spool_held(ACCOUNT, from).unwrap().expect("parts held");
    assert_eq!(got, 3 * PART);

    link_in_parts(&mut nodes);
    rest_sent_and_installed(&mut nodes, (got, total), &all);
    assert_eq!(nodes[0].store().snapshots_kept(), Vec::new(), "taken whole: the copy goes");
}
