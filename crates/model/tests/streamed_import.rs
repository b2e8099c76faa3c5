//! A snapshot installed as a stream of parts: an empty replica keeps
//! nothing per message while it installs, one that held messages merges
//! each mailbox page by page, and a stream that contradicts itself is
//! refused.

use starling_model::snapshot::{InstallError, Part, SnapHead};
use starling_model::{BlobId, Keyword, MailboxId, MessageId, Replica, ReplicaId, INBOX};

fn stream(r: &mut Replica, page: usize) -> (SnapHead, Vec<Part>) {
    let view = r.export_view();
    let mut parts = Vec::new();
    view.parts(r.backend(), page, |p| {
        parts.push(p);
        Ok::<(), starling_model::StorageError>(())
    })
    .unwrap();
    (view.head().clone(), parts)
}

fn append(r: &mut Replica, mailbox: MailboxId, i: u64) -> MessageId {
    let flags = if i.is_multiple_of(3) { vec![Keyword::Seen] } else { vec![] };
    r.append(mailbox, BlobId::of(&i.to_le_bytes()), 100 + i, i as i64, flags).unwrap()
}

/// Installs `head` and `parts` into `r`, checking after every part that the
/// install holds at most `held_max` per-message entries.
fn install(r: &mut Replica, head: SnapHead, parts: Vec<Part>, held_max: usize) -> Result<usize, InstallError> {
    let mut import = r.import_begin(head)?;
    let mut most = 0;
    for p in parts {
        r.import_part(&mut import, p)?;
        most = most.max(import.held());
        assert!(import.held() <= held_max, "held {} > {held_max}", import.held());
    }
    r.import_end(import)?;
    Ok(most)
}

/// A replica with `n` messages: every `every`-th in "Work", the others in
/// INBOX.
fn source(n: u64, every: u64) -> (Replica, MailboxId, Vec<MessageId>) {
    let mut a = Replica::new(ReplicaId(1));
    let work = a.create_mailbox("Work", None, None).unwrap();
    let ms = (0..n).map(|i| append(&mut a, if i.is_multiple_of(every) { work } else { INBOX }, i)).collect();
    (a, work, ms)
}

#[test]
fn an_empty_replica_installs_page_by_page_and_keeps_nothing_per_message() {
    let (mut a, _, ms) = source(20_000, 4);
    a.expunge(&ms[..2_000]).unwrap();
    for m in &ms[2_000..4_000] {
        a.store_flags(*m, &[Keyword::Flagged], &[]).unwrap();
    }
    a.announce(INBOX).unwrap();
    let (head, parts) = stream(&mut a, 500);
    assert!(parts.len() > 30, "{} parts", parts.len());

    let mut fresh = Replica::new(ReplicaId(2));
    let most = install(&mut fresh, head, parts, 0).unwrap();
    assert_eq!(most, 0);
    assert_eq!(fresh.dump(), a.dump());
    assert_eq!(fresh.message_count(), 18_000);
    assert!(fresh.is_expunged(ms[0]));
    assert_eq!(fresh.uid_of(ms[19_999]), a.uid_of(ms[19_999]));
}

#[test]
fn a_replica_that_held_messages_merges_moves_expunges_and_new_ones_page_by_page() {
    let (mut a, work, ms) = source(3_000, 2);
    let mut b = Replica::new(ReplicaId(2));
    b.import_state(a.export_state().unwrap()).unwrap();
    // B's clients look, and B takes mail of its own; A gets all of it.
    b.announce(INBOX).unwrap();
    b.announce(work).unwrap();
    let own: Vec<MessageId> = (0..50).map(|i| append(&mut b, INBOX, 10_000 + i)).collect();
    b.announce(INBOX).unwrap();
    for op in b.take_outbox() {
        a.apply(op).unwrap();
    }
    // A goes on: expunges, moves both ways, flags and new mail.
    a.expunge(&ms[..300]).unwrap();
    a.expunge(&own[..10]).unwrap();
    for m in &ms[300..600] {
        let to = if a.uid_of(*m).unwrap().0 == INBOX { work } else { INBOX };
        a.move_message(*m, to).unwrap();
    }
    for m in &ms[600..900] {
        a.store_flags(*m, &[Keyword::Answered], &[Keyword::Seen]).unwrap();
    }
    for i in 0..400u64 {
        append(&mut a, if i.is_multiple_of(2) { work } else { INBOX }, 20_000 + i);
    }
    let _ = a.take_outbox();
    let (head, parts) = stream(&mut a, 7);

    // What B loses or gains by the snapshot, not what it keeps.
    let changed = 300 + 10 + 2 * 300 + 400;
    let most = install(&mut b, head, parts, changed).unwrap();
    assert!(most > 0);
    let _ = b.take_outbox();
    assert_eq!(b.dump(), a.dump());
    assert!(b.is_expunged(ms[0]) && b.is_expunged(own[0]));
    assert!(b.flags(ms[600]).unwrap().contains(&Keyword::Answered));
}

/// Parts of a two-mailbox snapshot, for spoiling.
fn two_mailboxes() -> (Replica, SnapHead, Vec<Part>) {
    let (mut a, _, _) = source(20, 2);
    let (head, parts) = stream(&mut a, 4);
    (a, head, parts)
}

/// The stream with its first message named again at the end of the last
/// mailbox (whose UIDNEXT is raised to let the UID through).
fn named_twice(mut parts: Vec<Part>) -> Vec<Part> {
    let first = match parts.iter().find(|p| matches!(p, Part::Messages(_))).unwrap() {
        Part::Messages(m) => m[0].clone(),
        _ => unreachable!(),
    };
    let last = parts.iter().rposition(|p| matches!(p, Part::Messages(_))).unwrap();
    if let Part::Messages(m) = &mut parts[last] {
        let mut dup = first;
        dup.uid = m.last().unwrap().uid + 1;
        m.push(dup);
    }
    for p in parts.iter_mut() {
        if let Part::Mailbox(h) = p {
            h.uid_next += 1;
        }
    }
    parts
}

fn refused(head: SnapHead, parts: Vec<Part>) -> String {
    match install(&mut Replica::new(ReplicaId(2)), head, parts, usize::MAX) {
        Err(InstallError::Invalid(why)) => why,
        other => panic!("not refused: {other:?}"),
    }
}

#[test]
fn a_stream_that_contradicts_itself_is_refused() {
    let (_, head, parts) = two_mailboxes();
    // Messages before any mailbox.
    let first_messages = parts.iter().find(|p| matches!(p, Part::Messages(_))).unwrap().clone();
    assert!(refused(head.clone(), vec![first_messages]).contains("before any mailbox"));

    // UIDs out of order within a mailbox.
    let mut swapped = parts.clone();
    if let Some(Part::Messages(m)) = swapped.iter_mut().find(|p| matches!(p, Part::Messages(_))) {
        m.swap(0, 1);
    }
    assert!(refused(head.clone(), swapped).contains("not in order"));

    // One message placed in both mailboxes.
    assert!(refused(head.clone(), named_twice(parts.clone())).contains("placed twice"));

    // A mailbox listed twice.
    let mut again = parts.clone();
    again.push(parts[0].clone());
    assert!(refused(head.clone(), again).contains("listed twice"));

    // A message at a UID the mailbox says is spent.
    let mut spent = parts;
    if let Some(Part::Mailbox(h)) = spent.first_mut() {
        h.dead.push((1, 2));
    }
    assert!(refused(head, spent).contains("spent"));
}

/// A replica that held the messages before: a message the snapshot names
/// at its old place and again elsewhere is refused (a real move is not: see
/// above).
#[test]
fn a_replica_that_held_messages_refuses_a_message_named_twice() {
    let (mut a, head, parts) = two_mailboxes();
    let mut b = Replica::new(ReplicaId(2));
    install(&mut b, head, parts, usize::MAX).unwrap();
    append(&mut a, INBOX, 99);
    let (newer, parts) = stream(&mut a, 4);
    let got = install(&mut b, newer, named_twice(parts), usize::MAX);
    assert!(matches!(&got, Err(InstallError::Invalid(w)) if w.contains("placed twice")), "{got:?}");
}

/// Parts are cut by encoded size too: messages with many long keywords make
/// parts of fewer messages, each about `PART_BYTES` at most, and they
/// install like any other.
#[test]
fn parts_are_cut_by_size_as_well_as_by_count() {
    use starling_model::replica::PART_BYTES;
    let mut a = Replica::new(ReplicaId(1));
    let keywords: Vec<Keyword> = (0..40).map(|k| Keyword::parse(&format!("k{k:0>100}")).unwrap()).collect();
    for i in 0..400u64 {
        let m = append(&mut a, INBOX, i);
        a.store_flags(m, &keywords, &[]).unwrap();
    }
    let (head, parts) = stream(&mut a, 1024);
    let sizes: Vec<(usize, usize)> = parts
        .iter()
        .filter_map(|p| match p {
            Part::Messages(m) => Some((m.len(), postcard::to_stdvec(p).unwrap().len())),
            _ => None,
        })
        .collect();
    assert!(sizes.len() >= 2, "{sizes:?}");
    let one = sizes.iter().map(|(n, b)| b / n).max().unwrap();
    assert!(sizes.iter().all(|(_, b)| *b <= PART_BYTES + one), "{sizes:?}");
    assert_eq!(sizes.iter().map(|(n, _)| n).sum::<usize>(), 400);
    let mut fresh = Replica::new(ReplicaId(2));
    install(&mut fresh, head, parts, 0).unwrap();
    assert_eq!(fresh.dump(), a.dump());
}

/// The claim lists a snapshot exports are read a page at a time: paging
/// through more keys than a page, from any key, gives each once, in order;
/// side claims too, several of them at a UID.
#[test]
fn claim_lists_page_in_key_order() {
    use starling_model::backend::{Claim, ClaimKey, StateReads};
    use starling_model::snapshot::ClaimKind;
    use starling_model::{Backend, MemBackend};
    let mut b = MemBackend::new(false);
    let keys: Vec<ClaimKey> = (0..10_000u32)
        .map(|i| ClaimKey { uid: 1 + i / 3, message: u64::from(i * 7919 % 10_007), claimant: (i % 3) as u16 })
        .collect();
    for k in keys.iter().rev() {
        b.add_retracted(0, *k).unwrap();
        b.add_pinned(0, *k).unwrap();
        b.add_forced(0, *k).unwrap();
        b.add_side(0, k.uid, Claim { message: k.message, claimant: k.claimant }).unwrap();
    }
    let mut sorted = keys.clone();
    sorted.sort();
    sorted.dedup();
    for kind in [ClaimKind::Side, ClaimKind::Retracted, ClaimKind::Pinned, ClaimKind::Forced] {
        for limit in [1, 2, 4096, 9_999, 10_000, usize::MAX] {
            let (mut all, mut after) = (Vec::new(), None);
            loop {
                let page = b.claims_in(0, kind, after, limit).unwrap();
                assert!(page.len() <= limit);
                after = page.last().copied();
                all.extend(page);
                if after.is_none() || limit == usize::MAX {
                    break;
                }
            }
            assert_eq!(all, sorted, "{kind:?}: pages of {limit}");
        }
        assert!(b.claims_in(1, kind, None, 10).unwrap().is_empty(), "another mailbox holds none");
    }
}
