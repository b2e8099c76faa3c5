//! The session state machine: handshake, incremental exchange, live push,
//! refusal of wrong peers and unauthorized accounts, hostile frames.

use proptest::prelude::*;
use starling_model::{BlobId, Keyword, Op, Replica, ReplicaId, VersionVector, INBOX};
use starling_sync::{BlobEncoding, Event, Frame, Session, SessionError, Shipped, BLOB_SEND_BUFFER, RETRY_FIRST};

struct Peer {
    replica: Replica,
    log: Vec<Op>,
    session: Session,
}

impl Peer {
    fn new(id: u64, other: u64, accounts: &[&str]) -> Peer {
        let replica = Replica::new(ReplicaId(id));
        let session = Session::new(
            ReplicaId(id),
            Some(ReplicaId(other)),
            accounts.iter().map(|a| (a.to_string(), VersionVector::new())),
        );
        Peer { replica, log: Vec::new(), session }
    }

    fn local(&mut self, f: impl FnOnce(&mut Replica)) {
        f(&mut self.replica);
        self.log.extend(self.replica.take_outbox());
        self.session.local_changed("a", self.replica.version().clone());
    }

    /// Answers events; returns how many there were.
    fn drive(&mut self) -> usize {
        let mut n = 0;
        while let Some(ev) = self.session.poll_event() {
            n += 1;
            match ev {
                Event::NeedOps { account, since, ops_max, .. } => {
                    // The log is in causal order: its first `ops_max` ops the peer lacks are a chunk.
                    let ops: Vec<Op> =
                        self.log.iter().filter(|o| !since.contains(o.dot)).take(ops_max).cloned().collect();
                    self.session.send_ops(&account, &ops);
                }
                Event::Ops { account, ops } => {
                    for op in ops {
                        self.log.push(op.clone());
                        self.replica.apply(op).unwrap();
                    }
                    self.log.extend(self.replica.take_outbox());
                    self.session.applied(&account, self.replica.version().clone());
                }
                Event::Probed { account, probe } => {
                    self.session.answer_probe(&account, self.replica.version().clone(), probe);
                }
                _ => {}
            }
        }
        n
    }
}

/// Moves frames both ways until nothing moves; returns round trips used.
fn run(a: &mut Peer, b: &mut Peer) -> usize {
    let mut rounds = 0;
    loop {
        let mut moved = a.drive() + b.drive();
        while let Some(f) = a.session.poll_transmit().or_else(|| a.session.poll_transmit_blob()) {
            moved += 1;
            let _ = b.session.handle_frame(&f);
        }
        while let Some(f) = b.session.poll_transmit().or_else(|| b.session.poll_transmit_blob()) {
            moved += 1;
            let _ = a.session.handle_frame(&f);
        }
        if moved == 0 {
            return rounds;
        }
        rounds += 1;
    }
}

#[test]
fn converges_both_ways_and_noop_costs_little() {
    let mut a = Peer::new(1, 2, &["a"]);
    let mut b = Peer::new(2, 1, &["a"]);
    for i in 0..50u32 {
        a.local(|r| {
            r.append(INBOX, BlobId::of(&i.to_be_bytes()), 10, 0, vec![Keyword::Seen]).unwrap();
        });
    }
    b.local(|r| {
        r.append(INBOX, BlobId::of(b"b"), 10, 0, vec![]).unwrap();
    });
    run(&mut a, &mut b);
    assert_eq!(a.replica.dump(), b.replica.dump());
    assert_eq!(b.replica.message_count(), 51);

    // A fresh session between replicas that agree: hello and have, nothing else.
    let mut a2 = Session::new(ReplicaId(1), Some(ReplicaId(2)), [("a".to_string(), a.replica.version().clone())]);
    let mut b2 = Session::new(ReplicaId(2), Some(ReplicaId(1)), [("a".to_string(), b.replica.version().clone())]);
    let mut frames = 0;
    for _ in 0..3 {
        while let Some(f) = a2.poll_transmit() {
            frames += 1;
            b2.handle_frame(&f).unwrap();
        }
        while let Some(f) = b2.poll_transmit() {
            frames += 1;
            a2.handle_frame(&f).unwrap();
        }
    }
    let events: Vec<Event> =
        std::iter::from_fn(|| a2.poll_event()).chain(std::iter::from_fn(|| b2.poll_event())).collect();
    assert!(events.iter().all(|e| matches!(e, Event::Open { .. })), "{events:?}");
    assert_eq!(frames, 4);
    let total = a2.bytes().0 + b2.bytes().0;
    assert!(total < 200, "no-op exchange took {total} bytes");
}

#[test]
fn a_change_is_pushed_within_one_round_trip() {
    let mut a = Peer::new(1, 2, &["a"]);
    let mut b = Peer::new(2, 1, &["a"]);
    let mut m = None;
    a.local(|r| m = Some(r.append(INBOX, BlobId::of(b"x"), 1, 0, vec![]).unwrap()));
    run(&mut a, &mut b);
    let m = m.unwrap();
    a.local(|r| r.store_flags(m, &[Keyword::Flagged], &[]).unwrap());
    // One drive on A (answers NeedOps) and one frame across: B has it.
    a.drive();
    let frame = a.session.poll_transmit().expect("pushed without waiting");
    b.session.handle_frame(&frame).unwrap();
    b.drive();
    assert!(b.replica.flags(m).unwrap().contains(&Keyword::Flagged));
}

#[test]
fn the_first_ops_answer_the_peers_opening() {
    // B holds what A lacks. A's opening flight (hello and have) is all B
    // needs: B's first flight back already carries the ops, so they reach
    // A one round trip after A opened, not two.
    let mut a = Peer::new(1, 2, &["a"]);
    let mut b = Peer::new(2, 1, &["a"]);
    b.local(|r| {
        r.append(INBOX, BlobId::of(b"b"), 10, 0, vec![]).unwrap();
    });
    while let Some(f) = a.session.poll_transmit() {
        b.session.handle_frame(&f).unwrap();
    }
    b.drive();
    let flight: Vec<Frame> =
        std::iter::from_fn(|| b.session.poll_transmit()).map(|f| Frame::decode(&f).unwrap()).collect();
    assert!(flight.iter().any(|f| matches!(f, Frame::Ops { .. })), "{flight:?}");
    for f in &flight {
        a.session.handle_frame(&f.encode()).unwrap();
    }
    a.drive();
    assert_eq!(a.replica.message_count(), 1);
}

#[test]
fn wrong_peer_is_refused() {
    let mut a = Session::new(ReplicaId(1), Some(ReplicaId(2)), [("a".to_string(), VersionVector::new())]);
    let mut mallory = Session::new(ReplicaId(66), None, [("a".to_string(), VersionVector::new())]);
    let hello = mallory.poll_transmit().unwrap();
    assert_eq!(a.handle_frame(&hello), Err(SessionError::WrongPeer(ReplicaId(66))));
    assert!(a.is_closed());
    // Behind our own hello and have.
    let refusal = std::iter::from_fn(|| a.poll_transmit()).last().unwrap();
    assert!(matches!(Frame::decode(&refusal), Ok(Frame::Refused { .. })));
    assert!(matches!(mallory.handle_frame(&refusal), Err(SessionError::Refused(_))));
}

#[test]
fn peer_cannot_touch_an_account_it_is_not_authorized_for() {
    // A syncs only "a" with this peer; the peer also claims "b".
    let pair = || {
        let a = Session::new(ReplicaId(1), Some(ReplicaId(2)), [("a".to_string(), VersionVector::new())]);
        let b = Session::new(
            ReplicaId(2),
            Some(ReplicaId(1)),
            [("a".to_string(), VersionVector::new()), ("b".to_string(), VersionVector::new())],
        );
        (a, b)
    };
    let (mut a, mut b) = pair();
    a.handle_frame(&b.poll_transmit().unwrap()).unwrap();
    let ev = a.poll_event().unwrap();
    assert_eq!(ev, Event::Open { peer: ReplicaId(2), accounts: vec!["a".to_string()] });
    // Its opening haves (of "a" and of "b", which it named) are taken;
    // another `Have` of "b" is not.
    while let Some(f) = b.poll_transmit() {
        a.handle_frame(&f).unwrap();
    }
    let have = Frame::Have { account: "b".into(), vv: VersionVector::new(), chunks: 0, probe: 0 }.encode();
    assert_eq!(a.handle_frame(&have), Err(SessionError::Unauthorized("b".into())));
    // Nor, in a new session, a forged Ops frame of "b".
    let (mut a, mut b) = pair();
    a.handle_frame(&b.poll_transmit().unwrap()).unwrap();
    assert!(matches!(a.poll_event(), Some(Event::Open { .. })));
    // A forged Ops frame for "b" closes the session without any Ops event.
    let forged = Frame::Ops { account: "b".into(), batch: starling_model::codec::encode(&[], true) }.encode();
    assert_eq!(a.handle_frame(&forged), Err(SessionError::Unauthorized("b".into())));
    assert!(std::iter::from_fn(|| a.poll_event()).all(|e| matches!(e, Event::Closed { .. })));
    let have = Frame::Have { account: "b".into(), vv: VersionVector::new(), chunks: 0, probe: 0 }.encode();
    assert!(a.handle_frame(&have).is_err());
}

fn open_pair() -> (Session, Vec<Vec<u8>>) {
    let mut a = Session::new(ReplicaId(1), Some(ReplicaId(2)), [("a".to_string(), VersionVector::new())]);
    let mut b = Session::new(ReplicaId(2), Some(ReplicaId(1)), [("a".to_string(), VersionVector::new())]);
    a.handle_frame(&b.poll_transmit().unwrap()).unwrap();
    while a.poll_event().is_some() {}
    // Valid frames to mutate: a Have and an Ops batch.
    let mut r = Replica::new(ReplicaId(2));
    r.append(INBOX, BlobId::of(b"z"), 1, 0, vec![Keyword::Seen]).unwrap();
    let ops = r.take_outbox();
    let samples = vec![
        Frame::Have { account: "a".into(), vv: r.version().clone(), chunks: 0, probe: 0 }.encode(),
        Frame::Ops { account: "a".into(), batch: starling_model::codec::encode(&ops, true) }.encode(),
    ];
    (a, samples)
}

/// After a refused frame: the session is closed and the only event is `Closed`.
fn refused_cleanly(s: &mut Session, result: Result<(), SessionError>) -> bool {
    let events: Vec<Event> = std::iter::from_fn(|| s.poll_event()).collect();
    match result {
        Ok(()) => true,
        Err(_) => s.is_closed() && events.iter().all(|e| matches!(e, Event::Closed { .. })),
    }
}

proptest! {
    /// Random and mutated frames never panic; a frame that is refused acts
    /// on nothing (no ops or snapshot reach the driver) and closes the session.
    #[test]
    fn hostile_frames_change_nothing(
        random in prop::collection::vec(any::<u8>(), 0..300),
        which in 0usize..2,
        flips in prop::collection::vec((any::<usize>(), any::<u8>()), 1..6),
    ) {
        let (mut a, samples) = open_pair();
        let r = a.handle_frame(&random);
        prop_assert!(refused_cleanly(&mut a, r));
        let (mut a2, _) = open_pair();
        let mut f = samples[which].clone();
        for (i, x) in flips {
            let n = f.len();
            f[i % n] ^= x;
        }
        let r = a2.handle_frame(&f);
        prop_assert!(refused_cleanly(&mut a2, r));
    }
}

#[test]
fn bodies_are_asked_for_checked_and_refused_when_forged() {
    let (mut a, _) = open_pair();
    while a.poll_transmit().is_some() {} // hello and have
    let body = b"Subject: x\r\n\r\nhello\r\n".to_vec();
    let id = BlobId::of(&body);
    a.want_blobs([(id, 30), (id, 30)]);
    let want = a.poll_transmit().expect("one request");
    assert!(matches!(Frame::decode(&want), Ok(Frame::WantBlobs { ids }) if ids == vec![id]));
    assert!(a.poll_transmit().is_none(), "asked once");
    a.handle_frame(&Frame::Blob { id, encoding: BlobEncoding::Raw, bytes: body.clone() }.encode()).unwrap();
    assert_eq!(a.poll_event(), Some(Event::Blob { id, body: Shipped::Raw(body.clone()) }));
    // Not asked for (any more): refused.
    assert!(a.handle_frame(&Frame::Blob { id, encoding: BlobEncoding::Raw, bytes: body.clone() }.encode()).is_err());
    // A body that does not hash to its id: refused, nothing stored.
    let (mut b, _) = open_pair();
    b.want_blobs([(id, 30)]);
    let forged = Frame::Blob { id, encoding: BlobEncoding::Raw, bytes: b"something else".to_vec() }.encode();
    assert!(matches!(b.handle_frame(&forged), Err(SessionError::Malformed(_))));
    assert!(std::iter::from_fn(|| b.poll_event()).all(|e| matches!(e, Event::Closed { .. })));
    // A stored record goes up as it came: the driver's store checks it,
    // and the driver ends the session if it does not match.
    let (mut c, _) = open_pair();
    while c.poll_transmit().is_some() {}
    c.want_blobs([(id, 30)]);
    c.handle_frame(&Frame::Blob { id, encoding: BlobEncoding::Packed, bytes: b"opaque".to_vec() }.encode()).unwrap();
    assert_eq!(c.poll_event(), Some(Event::Blob { id, body: Shipped::Packed(b"opaque".to_vec()) }));
    assert!(matches!(c.malformed("body does not match".into()), SessionError::Malformed(_)));
    assert!(c.is_closed());
    let refused =
        std::iter::from_fn(|| c.poll_transmit()).any(|f| matches!(Frame::decode(&f), Ok(Frame::Refused { .. })));
    assert!(refused, "the peer is told why");
}

/// Protocol 3 sent `zstd: bool` where protocol 4 sends the encoding: the
/// first two encodings keep those bytes (postcard: a bool and a variant
/// index below 128 are one byte each).
#[test]
fn body_encodings_keep_the_bytes_of_the_old_flag() {
    let id = BlobId([1; 32]);
    let raw = Frame::Blob { id, encoding: BlobEncoding::Raw, bytes: vec![9] }.encode();
    let zstd = Frame::Blob { id, encoding: BlobEncoding::Zstd, bytes: vec![9] }.encode();
    let at = raw.len() - 3;
    assert_eq!((raw[at], zstd[at]), (0, 1));
    assert_eq!(raw[..at], zstd[..at]);
}

#[test]
fn bodies_leave_on_their_own_channel() {
    let (mut a, _) = open_pair();
    while a.poll_transmit().is_some() {}
    let body = vec![7u8; 5 << 20];
    a.send_blob(BlobId::of(&body), Some(Shipped::Raw(body.clone())));
    a.local_changed("a", VersionVector::new());
    assert!(a.poll_transmit().is_none(), "metadata channel holds no body");
    let f = a.poll_transmit_blob().expect("body frame");
    // Compressible bodies travel compressed and come out whole.
    let Ok(Frame::Blob { encoding: BlobEncoding::Zstd, bytes, .. }) = Frame::decode(&f) else {
        panic!("a compressed body frame")
    };
    assert!(bytes.len() < body.len() / 100);
    let (mut b, _) = open_pair();
    while b.poll_transmit().is_some() {}
    b.want_blobs([(BlobId::of(&body), body.len() as u64)]);
    b.handle_frame(&f).unwrap();
    assert!(std::iter::from_fn(|| b.poll_event())
        .any(|e| e == Event::Blob { id: BlobId::of(&body), body: Shipped::Raw(body.clone()) }));
}

/// A sender reads bodies for the peer in runs, not one per body frame
/// that leaves: once its send buffer is full, it asks the driver for more
/// only after half of it has gone. Asked after every frame, a sender of
/// 10,000 bodies woke its store reader 10,000 times (each a thread handoff
/// in the node) and ran at a third of the receiver's pace.
#[test]
fn bodies_are_read_in_runs_once_half_the_send_buffer_has_gone() {
    let (mut a, _) = open_pair();
    while a.poll_transmit().is_some() {}
    // 64 KiB bodies that do not compress.
    let mut seed = 1u64;
    let bodies: std::collections::HashMap<BlobId, Vec<u8>> = (0..400)
        .map(|_| {
            let body: Vec<u8> = (0..64 << 10)
                .map(|_| {
                    seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                    (seed >> 56) as u8
                })
                .collect();
            (BlobId::of(&body), body)
        })
        .collect();
    let ids: Vec<BlobId> = bodies.keys().copied().collect();
    a.handle_frame(&Frame::WantBlobs { ids }.encode()).unwrap();
    // The driver: reads what the session asks for while it may.
    let read = |a: &mut Session| {
        let mut reads = 0;
        while let Some(ev) = a.poll_event() {
            let Event::BlobsWanted { ids } = ev else { continue };
            reads += 1;
            let mut ids = ids.into_iter();
            while a.may_send_blob() {
                let Some(id) = ids.next() else { break };
                a.send_blob(id, Some(Shipped::Raw(bodies[&id].clone())));
            }
            a.unread_blobs(ids.collect());
        }
        reads
    };
    assert!(read(&mut a) > 0);
    assert!(!a.may_send_blob(), "the send buffer is full");
    // Frames leave; the next run starts only once about half is gone.
    let mut gone = 0;
    while !a.has_work() {
        gone += a.poll_transmit_blob().expect("a body frame").len();
    }
    let frame = (64 << 10) + 128;
    assert!(gone + frame >= BLOB_SEND_BUFFER / 2 && gone <= BLOB_SEND_BUFFER / 2 + 2 * frame, "{gone} bytes gone");
    assert!(read(&mut a) > 0);
    assert!(!a.may_send_blob(), "the run filled the buffer again");
}

#[test]
fn body_policy_mailboxes_take_names_patterns_and_special_use() {
    use starling_sync::{mailbox_matches, BodyPolicy};
    assert!(mailbox_matches("INBOX", "inbox"));
    assert!(mailbox_matches("Work/*", "Work/2026/Q1"));
    assert!(mailbox_matches("Work/%", "Work/2026"));
    assert!(!mailbox_matches("Work/%", "Work/2026/Q1"));
    assert!(mailbox_matches("*", "INBOX"));
    assert!(!mailbox_matches("Work", "Workshop"));
    let mut r = starling_model::Replica::new(starling_model::ReplicaId(1));
    r.create_mailbox("Sent Items", None, Some(starling_model::SpecialUse::Sent)).unwrap();
    r.create_mailbox("Lists", None, None).unwrap();
    let p = BodyPolicy { mailboxes: Some(vec!["\\Sent".into(), "INBOX".into()]), ..BodyPolicy::full() };
    let resolved = p.resolved(r.tree());
    assert!(resolved.wants_body(Some("Sent Items"), 1, 10, 0));
    assert!(resolved.wants_body(Some("INBOX"), 1, 10, 0));
    assert!(!resolved.wants_body(Some("Lists"), 1, 10, 0));
    // A UID window: only the newest messages.
    let recent = BodyPolicy { uids: Some((1000, u32::MAX)), ..BodyPolicy::full() };
    assert!(recent.wants_body(Some("INBOX"), 1000, 10, 0) && recent.wants_body(Some("INBOX"), 0, 10, 0));
    assert!(!recent.wants_body(Some("INBOX"), 999, 10, 0));
}

/// A retry armed before the handshake (another link's peer lacked a body)
/// is dropped when due: nothing to sweep yet, and no timer left that would
/// fire again and again at the same instant.
#[test]
fn a_retry_timer_before_the_handshake_expires_quietly() {
    let mut a = Session::new(ReplicaId(1), Some(ReplicaId(2)), [("a".to_string(), VersionVector::new())]);
    let t0 = std::time::Instant::now();
    a.arm_retry(t0);
    let due = a.poll_timeout().expect("armed");
    assert!(due > t0);
    a.handle_timeout(due);
    assert_eq!(a.poll_timeout(), None);
    assert!(std::iter::from_fn(|| a.poll_event()).all(|e| !matches!(e, Event::RetryBodies)));
}

/// After the handshake the same timer asks the driver to sweep, and a
/// sweep that still finds bodies missing waits longer before the next.
#[test]
fn a_retry_timer_sweeps_and_backs_off() {
    let (mut a, _) = open_pair();
    let t0 = std::time::Instant::now();
    a.arm_retry(t0);
    let first = a.poll_timeout().unwrap() - t0;
    a.handle_timeout(t0 + first);
    assert!(std::iter::from_fn(|| a.poll_event()).any(|e| e == Event::RetryBodies));
    a.bodies_swept(true);
    let second = a.poll_timeout().unwrap() - (t0 + first);
    assert!(second >= first * 2, "{second:?} after {first:?}");
}

/// A snapshot larger than one frame travels in parts and arrives whole
/// (the year-of-mail benchmark's snapshot was 318 bytes per message: one
/// 64 MiB frame capped a joinable account near 200,000 messages). The
/// sender's driver is asked for a part at a time, only within the window of
/// what the receiver took: it never holds more of it than the window, and
/// the account's next ops wait until the last part was taken.
#[test]
fn a_snapshot_larger_than_a_frame_travels_in_parts_within_the_window() {
    use starling_sync::{FRAME_BYTES_MAX, SNAPSHOT_SEND_PART, SNAPSHOT_WINDOW_BYTES};
    let (mut a, _) = open_pair();
    let mut b = Session::new(ReplicaId(2), Some(ReplicaId(1)), [("a".to_string(), VersionVector::new())]);
    while b.poll_transmit().is_some() {}
    while let Some(f) = a.poll_transmit() {
        b.handle_frame(&f).unwrap();
    }
    while b.poll_event().is_some() {}
    while b.poll_transmit().is_some() {}
    let snapshot = starling_model::testkit::incompressible(FRAME_BYTES_MAX + 3 * 1024 * 1024, 7);
    b.send_snapshot("a", 1, snapshot.len() as u64, &VersionVector::new(), 0);
    // b's own change, made while the snapshot goes out: its ops follow it.
    let mut later = VersionVector::new();
    later.observe(starling_model::Dot { replica: ReplicaId(2), counter: 1 });
    b.local_changed("a", later);
    let (mut got, mut lasts, mut reads, mut most_in_flight) = (Vec::new(), 0, 0, 0);
    let mut ops_asked_at = None;
    for round in 0..1000 {
        let mut moved = false;
        while let Some(ev) = b.poll_event() {
            match ev {
                Event::SnapshotRead { account, offset, len } => {
                    assert!(len <= SNAPSHOT_SEND_PART);
                    reads += 1;
                    let part = snapshot[offset as usize..offset as usize + len].to_vec();
                    b.send_snapshot_part(&account, offset, part);
                }
                Event::NeedOps { .. } => {
                    ops_asked_at.get_or_insert(round);
                    assert!(lasts == 1, "ops asked for before the snapshot was taken");
                }
                _ => {}
            }
            most_in_flight = most_in_flight.max(b.queue_sizes().snapshot_in_flight);
        }
        while let Some(f) = b.poll_transmit() {
            moved = true;
            assert!(f.len() <= FRAME_BYTES_MAX);
            a.handle_frame(&f).unwrap();
            while let Some(ev) = a.poll_event() {
                if let Event::SnapshotPart { offset, bytes, last, .. } = ev {
                    assert_eq!(offset, got.len() as u64, "parts in order");
                    got.extend_from_slice(&bytes);
                    lasts += last as usize;
                    assert_eq!(last, got.len() == snapshot.len(), "the last part is the one that completes it");
                    a.snapshot_taken("a", got.len() as u64);
                }
            }
        }
        while let Some(f) = a.poll_transmit() {
            moved = true;
            b.handle_frame(&f).unwrap();
        }
        if !moved && !b.has_work() {
            break;
        }
    }
    assert_eq!(lasts, 1, "one snapshot");
    assert!(got == snapshot, "the parts add up to the snapshot");
    assert_eq!(reads, snapshot.len().div_ceil(SNAPSHOT_SEND_PART));
    assert!(most_in_flight <= SNAPSHOT_WINDOW_BYTES, "{most_in_flight} bytes in flight");
    assert!(most_in_flight > SNAPSHOT_WINDOW_BYTES / 2, "the window was used: {most_in_flight}");
    assert_eq!(b.queue_sizes().snapshot_in_flight, 0, "every part acknowledged");
    assert!(ops_asked_at.is_some(), "the ops after the snapshot were asked for once it was taken");
}

/// A peer acknowledging snapshot bytes it was not sent is refused.
#[test]
fn snapshot_acknowledgements_must_match_what_was_sent() {
    let got = |got: u64| Frame::SnapshotGot { account: "a".into(), got }.encode();
    // Nothing sent.
    let (mut a, _) = open_pair();
    let r = a.handle_frame(&got(1));
    assert!(r.is_err() && refused_cleanly(&mut a, r), "an acknowledgement of no snapshot");
    // More than was sent, then the same twice.
    for acks in [vec![got(101)], vec![got(1), got(1)]] {
        let (mut a, _) = open_pair();
        a.send_snapshot("a", 1, 100, &VersionVector::new(), 0);
        let Some(Event::SnapshotRead { offset, len, .. }) = std::iter::from_fn(|| a.poll_event()).last() else {
            panic!("no read asked")
        };
        assert_eq!((offset, len), (0, 100));
        a.send_snapshot_part("a", 0, vec![0; 100]);
        let (last, before) = acks.split_last().unwrap();
        let mut ok = true;
        for f in before {
            ok &= a.handle_frame(f).is_ok();
        }
        let r = a.handle_frame(last);
        assert!(ok && r.is_err() && refused_cleanly(&mut a, r), "acknowledged more than was sent, or twice");
    }
}

/// Parts that do not add up are refused: a declared total over the bound,
/// a total that changes, a part past the total. Parts before the bad one
/// reached the driver (it spools them); none completed a snapshot.
#[test]
fn snapshot_parts_that_do_not_add_up_are_refused() {
    use starling_sync::SNAPSHOT_WIRE_MAX;
    let part_of = |id: u64, total: u64, offset: u64, n: usize| {
        Frame::Snapshot { account: "a".into(), id, total, offset, bytes: vec![1; n] }.encode()
    };
    let part = |total: u64, offset: u64, n: usize| part_of(1, total, offset, n);
    let cases: Vec<Vec<Vec<u8>>> = vec![
        vec![part(SNAPSHOT_WIRE_MAX + 1, 0, 10)],
        vec![part(100, 0, 10), part(200, 10, 10)],
        vec![part(15, 0, 10), part(15, 10, 10)],
        vec![part(10, 0, 0)],
        // A sender that ignores the window: parts past it unacknowledged.
        vec![part(40 << 20, 0, 16 << 20), part(40 << 20, 16 << 20, 1)],
        // Parts out of place: a gap, a first part not at 0 (nothing held),
        // another snapshot's part mid-way.
        vec![part(100, 0, 10), part(100, 20, 10)],
        vec![part(100, 10, 10)],
        vec![part(100, 0, 10), part_of(2, 100, 10, 10)],
    ];
    for frames in cases {
        let (mut a, _) = open_pair();
        let mut result = Ok(());
        for f in &frames {
            result = a.handle_frame(f);
            if result.is_err() {
                break;
            }
        }
        assert!(result.is_err(), "accepted");
        assert!(a.is_closed());
        let events: Vec<Event> = std::iter::from_fn(|| a.poll_event()).collect();
        assert!(
            events.iter().all(|e| matches!(e, Event::Closed { .. } | Event::SnapshotPart { last: false, .. })),
            "a snapshot completed: {events:?}"
        );
        assert_eq!(events.len(), frames.len(), "each part before the bad one, then the close");
    }
}

/// A probe is answered with the peer's version as of its arrival, even when
/// the peer's session had not been told of a change yet, and what that
/// version holds follows it; an answer to a probe never asked is refused.
#[test]
fn a_probe_is_answered_with_the_version_as_of_its_arrival() {
    let mut a = Peer::new(1, 2, &["a"]);
    let mut b = Peer::new(2, 1, &["a"]);
    run(&mut a, &mut b);
    // A change at b that b's session has not heard of yet.
    b.replica.append(INBOX, BlobId([7; 32]), 10, 1, vec![]).unwrap();
    b.log.extend(b.replica.take_outbox());
    a.session.probe("a", 1);
    a.session.probe("a", 1);
    run(&mut a, &mut b);
    assert_eq!(a.session.probe_answered("a"), 1);
    assert_eq!(a.session.peer_has("a"), Some(b.replica.version()));
    assert_eq!(a.replica.version(), b.replica.version(), "what the answer names arrives");

    let (mut s, _) = open_pair();
    let forged = Frame::Have { account: "a".into(), vv: VersionVector::new(), chunks: 0, probe: 5 }.encode();
    let r = s.handle_frame(&forged);
    assert!(refused_cleanly(&mut s, r), "an answer to a probe never sent");
}

/// However many probes a peer sends before the answer, one `Have` answers
/// them, naming the latest: a peer cannot make the session queue more.
#[test]
fn probes_before_the_answer_share_one() {
    let (mut s, _) = open_pair();
    for probe in 1..=1000 {
        s.handle_frame(&Frame::Probe { account: "a".into(), probe }.encode()).unwrap();
    }
    let mut asked = Vec::new();
    while let Some(ev) = s.poll_event() {
        if let Event::Probed { account, probe } = ev {
            asked.push((account, probe));
        }
    }
    assert_eq!(asked, [("a".to_string(), 1)]);
    while s.poll_transmit().is_some() {}
    s.answer_probe("a", VersionVector::new(), 1);
    let haves: Vec<Frame> = std::iter::from_fn(|| s.poll_transmit()).map(|f| Frame::decode(&f).unwrap()).collect();
    assert!(matches!(haves.as_slice(), [Frame::Have { probe: 1000, .. }]), "{haves:?}");
}

/// A node that answered "not here" for a body tells the peer once the
/// body arrives (from another peer): the peer sweeps at once, from the
/// shortest wait, instead of after its backed-off timer. Nothing is said
/// for bodies it never refused, and only one `Arrived` waits in the queue.
#[test]
fn a_body_refused_then_stored_is_announced_and_the_peer_sweeps_at_once() {
    let (mut a, _) = open_pair(); // a answers; its peer is the requester below.
    while a.poll_transmit().is_some() {}
    let (x, y) = (BlobId::of(b"x"), BlobId::of(b"y"));
    a.send_blob(x, None);
    let no = a.poll_transmit().unwrap();
    assert!(matches!(Frame::decode(&no), Ok(Frame::NoBlob { id }) if id == x));
    a.bodies_here(&[y]);
    assert!(a.poll_transmit().is_none(), "y was never refused");
    a.bodies_here(&[x, y]);
    a.bodies_here(&[x]);
    let arrived = a.poll_transmit().expect("told");
    assert!(matches!(Frame::decode(&arrived), Ok(Frame::Arrived { ids }) if ids == vec![x]));
    assert!(a.poll_transmit().is_none(), "told once");

    // The requester: it asked for x and was told no: it waits to sweep.
    let (mut r, _) = open_pair();
    let t0 = std::time::Instant::now();
    r.want_blobs([(x, 10)]);
    r.handle_timeout(t0);
    r.handle_frame(&no).unwrap();
    let waiting = r.poll_timeout().unwrap();
    assert!(waiting >= t0 + RETRY_FIRST, "waits: {:?}", waiting - t0);
    while r.poll_event().is_some() {}
    r.handle_frame(&arrived).unwrap();
    assert_eq!(r.poll_timeout(), Some(t0), "a sweep is due now");
    r.handle_timeout(t0);
    assert!(std::iter::from_fn(|| r.poll_event()).any(|e| e == Event::RetryBodies));
}

/// A node that purged a deleted account tells a peer still naming it, once
/// per session; `Deleted` of an account the receiver did not name, of one
/// both share, or a second time, closes the session with nothing done.
#[test]
fn a_peer_naming_a_purged_account_is_told_it_was_deleted() {
    let pair = |purged: &[&str]| {
        // A purged "gone"; it still syncs "kept" with B.
        let mut a = Session::new(ReplicaId(1), Some(ReplicaId(2)), [("kept".to_string(), VersionVector::new())]);
        a.purged(purged.iter().map(|s| s.to_string()));
        let b = Session::new(
            ReplicaId(2),
            Some(ReplicaId(1)),
            ["kept", "gone", "other"].map(|a| (a.to_string(), VersionVector::new())),
        );
        (a, b)
    };
    let deleted = |account: &str| Frame::Deleted { account: account.into() }.encode();
    // "kept" is A's own: naming it as purged changes nothing.
    let (mut a, mut b) = pair(&["gone", "kept"]);
    while let Some(f) = b.poll_transmit() {
        a.handle_frame(&f).unwrap();
    }
    let told: Vec<Frame> = std::iter::from_fn(|| a.poll_transmit()).map(|f| Frame::decode(&f).unwrap()).collect();
    let names: Vec<&str> = told
        .iter()
        .filter_map(|f| match f {
            Frame::Deleted { account } => Some(account.as_str()),
            _ => None,
        })
        .collect();
    assert_eq!(names, vec!["gone"], "only the purged account the peer named, once");
    for f in &told {
        b.handle_frame(&f.encode()).unwrap();
    }
    let events: Vec<Event> = std::iter::from_fn(|| b.poll_event()).collect();
    assert!(events.contains(&Event::Deleted { account: "gone".into() }), "{events:?}");
    // Said again: refused.
    assert_eq!(b.handle_frame(&deleted("gone")), Err(SessionError::Unauthorized("gone".into())));
    assert!(b.is_closed());
    // Of an account both share, or one the receiver did not name: refused.
    for bad in ["kept", "nobody"] {
        let (mut a, mut b) = pair(&[]);
        a.handle_frame(&b.poll_transmit().unwrap()).unwrap();
        b.handle_frame(&a.poll_transmit().unwrap()).unwrap();
        while b.poll_event().is_some() {}
        assert_eq!(b.handle_frame(&deleted(bad)), Err(SessionError::Unauthorized(bad.into())));
        assert!(std::iter::from_fn(|| b.poll_event()).all(|e| matches!(e, Event::Closed { .. })));
    }
    // Nothing purged: nothing told.
    let (mut a, mut b) = pair(&[]);
    while let Some(f) = b.poll_transmit() {
        a.handle_frame(&f).unwrap();
    }
    assert!(std::iter::from_fn(|| a.poll_transmit()).all(|f| !matches!(Frame::decode(&f), Ok(Frame::Deleted { .. }))));
}

/// A snapshot transfer that broke off resumes: the receiver offers what
/// it kept (right behind its `Hello`, so the sender hears it before the
/// `Have` that makes it send), the sender sends the rest from there under
/// the same name, and the receiver takes parts from that offset on. A
/// sender without that copy begins another one from 0, which the receiver
/// takes too; an offer of nothing, or of all, is not sent.
#[test]
fn a_snapshot_transfer_resumes_where_the_receiver_holds_it() {
    let snapshot = starling_model::testkit::incompressible(10 * 1024 * 1024, 9);
    let total = snapshot.len() as u64;
    let held = 3 * 1024 * 1024 + 17;
    for resume in [true, false] {
        let acct = || [("a".to_string(), VersionVector::new())];
        let mut sender = Session::new(ReplicaId(1), Some(ReplicaId(2)), acct());
        let mut receiver = Session::new(ReplicaId(2), Some(ReplicaId(1)), acct());
        receiver.offer_snapshot("a", 0, 5, 5); // all of it: nothing to offer
        receiver.offer_snapshot("a", 77, total, held);
        let first: Vec<Vec<u8>> = std::iter::from_fn(|| receiver.poll_transmit()).collect();
        let kinds: Vec<&str> = first
            .iter()
            .map(|f| match Frame::decode(f).unwrap() {
                Frame::Hello { .. } => "hello",
                Frame::SnapshotHeld { id: 77, got, .. } if got == held => "held",
                Frame::Have { .. } => "have",
                other => panic!("unexpected {other:?}"),
            })
            .collect();
        assert_eq!(kinds, ["hello", "held", "have"], "one offer, behind the hello");
        for f in &first {
            sender.handle_frame(f).unwrap();
        }
        let offered: Vec<Event> = std::iter::from_fn(|| sender.poll_event()).collect();
        assert!(offered
            .iter()
            .any(|e| matches!(e, Event::SnapshotHeld { id: 77, total: t, got, .. } if *t == total && *got == held)));
        let from = if resume { held } else { 0 };
        sender.send_snapshot("a", if resume { 77 } else { 78 }, total, &VersionVector::new(), from);
        let (mut arrived, mut sent, mut done) = (Vec::new(), 0u64, false);
        for _ in 0..1000 {
            let mut moved = false;
            while let Some(ev) = sender.poll_event() {
                match ev {
                    Event::SnapshotRead { account, offset, len } => {
                        sent += len as u64;
                        sender.send_snapshot_part(&account, offset, snapshot[offset as usize..][..len].to_vec());
                    }
                    Event::SnapshotSent { .. } => done = true,
                    _ => {}
                }
            }
            while let Some(f) = sender.poll_transmit() {
                moved = true;
                receiver.handle_frame(&f).unwrap();
                while let Some(ev) = receiver.poll_event() {
                    if let Event::SnapshotPart { offset, bytes, id, .. } = ev {
                        assert_eq!(id, if resume { 77 } else { 78 });
                        if arrived.is_empty() {
                            assert_eq!(offset, from, "the first part begins where asked");
                        }
                        arrived.push((offset, bytes.len() as u64));
                        receiver.snapshot_taken("a", offset + bytes.len() as u64);
                    }
                }
            }
            while let Some(f) = receiver.poll_transmit() {
                moved = true;
                sender.handle_frame(&f).unwrap();
            }
            if !moved {
                break;
            }
        }
        assert!(done, "the sender heard the last part was taken");
        assert_eq!(sent, total - from, "only the rest was sent");
        let mut at = from;
        for (offset, len) in arrived {
            assert_eq!(offset, at, "parts in order, without a gap");
            at += len;
        }
        assert_eq!(at, total);
    }
    // An offer the sender cannot take is refused as malformed.
    let (mut a, _) = open_pair();
    let r = a.handle_frame(&Frame::SnapshotHeld { account: "a".into(), id: 1, total: 10, got: 10 }.encode());
    assert!(r.is_err() && refused_cleanly(&mut a, r), "holding all of it");
}

/// A session set to smaller parts sends its snapshot in parts of that size
/// with a window of four of them (the simulator draws such sizes so that its
/// small snapshots travel in several parts); a size below the least is
/// raised to it.
#[test]
fn a_snapshot_in_smaller_parts_keeps_a_window_of_four_parts() {
    use starling_sync::{SNAPSHOT_SEND_PART_MIN, SNAPSHOT_WINDOW_PARTS};
    for (asked, part) in [(1_000usize, 1_000usize), (1, SNAPSHOT_SEND_PART_MIN)] {
        let (mut a, _) = open_pair();
        let mut b = Session::new(ReplicaId(2), Some(ReplicaId(1)), [("a".to_string(), VersionVector::new())]);
        b.set_snapshot_part(asked);
        while b.poll_transmit().is_some() {}
        while let Some(f) = a.poll_transmit() {
            b.handle_frame(&f).unwrap();
        }
        while b.poll_event().is_some() {}
        while b.poll_transmit().is_some() {}
        let snapshot = starling_model::testkit::incompressible(50_000, 3);
        b.send_snapshot("a", 1, snapshot.len() as u64, &VersionVector::new(), 0);
        let (mut got, mut reads, mut most_in_flight) = (Vec::new(), 0, 0);
        for _ in 0..10_000 {
            let mut moved = false;
            while let Some(ev) = b.poll_event() {
                if let Event::SnapshotRead { account, offset, len } = ev {
                    assert!(len == part || offset as usize + len == snapshot.len(), "a part of {len} bytes");
                    reads += 1;
                    b.send_snapshot_part(&account, offset, snapshot[offset as usize..offset as usize + len].to_vec());
                }
                most_in_flight = most_in_flight.max(b.queue_sizes().snapshot_in_flight);
            }
            while let Some(f) = b.poll_transmit() {
                moved = true;
                a.handle_frame(&f).unwrap();
                while let Some(ev) = a.poll_event() {
                    if let Event::SnapshotPart { offset, bytes, .. } = ev {
                        assert_eq!(offset, got.len() as u64);
                        got.extend_from_slice(&bytes);
                        a.snapshot_taken("a", got.len() as u64);
                    }
                }
            }
            while let Some(f) = a.poll_transmit() {
                moved = true;
                b.handle_frame(&f).unwrap();
            }
            if !moved && !b.has_work() {
                break;
            }
        }
        assert!(got == snapshot, "the parts add up to the snapshot ({part}-byte parts)");
        assert_eq!(reads, snapshot.len().div_ceil(part));
        assert_eq!(most_in_flight, (SNAPSHOT_WINDOW_PARTS * part) as u64, "the window is four parts, and was filled");
        assert_eq!(b.queue_sizes().snapshot_in_flight, 0);
    }
}
