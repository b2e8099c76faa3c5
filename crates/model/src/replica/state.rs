//! A replica's state as a stream of snapshot parts (see [`crate::snapshot`]):
//! written a page at a time, and installed a page at a time by merging each
//! mailbox's messages, in UID order, with the slots this replica holds.

use super::*;
use crate::snapshot::{ClaimKind, Pager, Part, SnapClaim, SnapHead, SnapMailboxHead, SnapMessage, SNAPSHOT_VERSION};

/// Placed messages read from the backend at a time, exporting or merging.
const PAGE: usize = 4096;

/// An install in progress: [`Replica::import_begin`], then every part in
/// order ([`Replica::import_part`]), then [`Replica::import_end`].
///
/// What it holds grows only with what a replica that held messages before
/// loses or gains by the snapshot ([`Import::held`]): a replica installing
/// into empty mailboxes places each message at its UID as it comes and
/// keeps nothing of it.
#[derive(Debug)]
pub struct Import {
    /// The snapshot reflects exactly the ops this replica applied: nothing
    /// to do.
    same: bool,
    vv: VersionVector,
    account: Option<AccountDoc>,
    /// Ops waiting for their causal past that the snapshot lacks.
    waiting: Vec<Op>,
    /// Mailboxes begun, by index.
    seen: BTreeSet<u32>,
    /// The mailbox being merged.
    cur: Option<Current>,
    /// Slots removed, with where they were: their location and envelope go
    /// at the end, unless the snapshot placed the message elsewhere.
    left: Vec<(Packed, MsgLoc)>,
    /// Messages new at their place, for settling at the end.
    dirty: Dirty,
}

impl Import {
    /// Per-message entries held until the end: slots removed and messages
    /// waiting for settling.
    pub fn held(&self) -> usize {
        self.left.len() + self.dirty.values().map(|(_, m)| m.len()).sum::<usize>()
    }
}

/// The mailbox being merged.
#[derive(Debug)]
struct Current {
    i: u32,
    uid_next: u32,
    /// The snapshot's spent UIDs here, ascending.
    dead: Vec<(u32, u32)>,
    /// The last UID imported (0: none yet).
    last: u32,
    /// This replica's slots not merged yet: a page read ahead, then the
    /// ones from `from` unless `done`.
    old: VecDeque<Slot>,
    from: u32,
    done: bool,
    /// Nothing was placed or claimed here before: a message goes straight
    /// to its UID (what settling would decide, with nothing else claiming
    /// it and no client shown it).
    empty: bool,
    /// UIDNEXT this replica announced here (its clients saw UIDs below).
    announced_me: u32,
}

/// A replica's state as of one moment, to export as a streamed snapshot
/// ([`Replica::export_view`]): its small in-memory part copied, its
/// per-message part read through any [`StateReads`] that shows the same
/// moment — the replica's own backend, or a store's read transaction begun
/// with the view, so that the replica goes on while the parts are written.
#[derive(Clone, Debug)]
pub struct ExportView {
    head: SnapHead,
    replica_ids: Vec<ReplicaId>,
    keywords: Vec<Keyword>,
    /// Per mailbox (by index) its head, but for the spent UIDs, which
    /// [`ExportView::parts`] reads.
    mailboxes: Vec<SnapMailboxHead>,
}

impl<B: Backend> Replica<B> {
    /// This replica's state now, to export ([`ExportView::parts`]).
    pub fn export_view(&mut self) -> ExportView {
        let ids = &self.replica_ids;
        ExportView {
            head: SnapHead { version: SNAPSHOT_VERSION, vv: self.vv.clone(), account: self.account.save() },
            replica_ids: ids.clone(),
            keywords: self.keywords.clone(),
            mailboxes: self
                .mailboxes
                .iter()
                .map(|m| SnapMailboxHead {
                    id: m.id,
                    uid_next: m.uid_next,
                    announced: m.announced.iter().map(|(r, n)| (ids[*r as usize], *n)).collect(),
                    dead: Vec::new(),
                })
                .collect(),
        }
    }
}

impl ExportView {
    /// What the streamed snapshot begins with.
    pub fn head(&self) -> &SnapHead {
        &self.head
    }

    /// The state after [`ExportView::head`], read from `reads` (which must
    /// show the moment the view was taken), as parts of at most `page`
    /// messages or claims and about [`PART_BYTES`] encoded, handed to
    /// `sink` one at a time. Reads a page of the backend at a time, however
    /// large a mailbox or its claim sets. Ops waiting for their causal past
    /// are not part of it.
    pub fn parts<E: From<StorageError>>(
        &self,
        reads: &impl StateReads,
        page: usize,
        mut sink: impl FnMut(Part) -> Result<(), E>,
    ) -> Result<(), E> {
        let page = page.max(1);
        for (i, head) in self.mailboxes.iter().enumerate() {
            let i = i as u32;
            let head = SnapMailboxHead { dead: reads.dead_in(i)?, ..head.clone() };
            sink(Part::Mailbox(head))?;
            let mut messages = Pager::new(page);
            let mut from = 0;
            loop {
                let slots = reads.slots_from(i, from, PAGE)?;
                let Some(last) = slots.last() else { break };
                let next = if slots.len() == PAGE { last.uid.checked_add(1) } else { None };
                for s in slots {
                    let envelope = reads.envelope(s.id)?;
                    if let Some(part) = messages.push(self.message(s, envelope)) {
                        sink(Part::Messages(part))?;
                    }
                }
                match next {
                    Some(n) => from = n,
                    None => break,
                }
            }
            if let Some(part) = messages.take() {
                sink(Part::Messages(part))?;
            }
            for kind in [ClaimKind::Side, ClaimKind::Retracted, ClaimKind::Pinned, ClaimKind::Forced] {
                let mut claims = Pager::new(page);
                let mut after = None;
                loop {
                    let keys = reads.claims_in(i, kind, after, PAGE)?;
                    let full = keys.len() == PAGE;
                    after = keys.last().copied();
                    for k in keys {
                        if let Some(part) = claims.push(self.claim(k)) {
                            sink(Part::Claims(kind, part))?;
                        }
                    }
                    if !full {
                        break;
                    }
                }
                if let Some(part) = claims.take() {
                    sink(Part::Claims(kind, part))?;
                }
            }
        }
        Ok(())
    }

    fn unpack(&self, p: Packed) -> Dot {
        unpack_with(&self.replica_ids, p)
    }

    fn message(&self, s: Slot, envelope: Option<Envelope>) -> SnapMessage {
        SnapMessage {
            id: MessageId(self.unpack(s.id)),
            uid: s.uid,
            claimant: self.replica_ids[s.claimant as usize],
            loc: ((s.loc >> 16) as u32, self.replica_ids[(s.loc & 0xffff) as usize]),
            flags: s.flags.iter().map(|e| (self.keywords[e.kw as usize].clone(), self.unpack(e.dot()))).collect(),
            envelope,
        }
    }

    fn claim(&self, k: ClaimKey) -> SnapClaim {
        SnapClaim {
            uid: k.uid,
            message: MessageId(self.unpack(k.message)),
            claimant: self.replica_ids[k.claimant as usize],
        }
    }
}

impl<B: Backend> Replica<B> {
    /// Begins installing a streamed snapshot. It must hold every op this
    /// replica applied (its version dominates ours; [`InstallError::Older`]
    /// otherwise, and nothing changes): an empty replica takes any, one with
    /// changes of its own takes one whose source has them. Its state is
    /// then what applying the ops we lack would give, so it replaces ours by
    /// difference, through the backend calls an op makes, merging each
    /// mailbox's messages in UID order with the slots held here: a message
    /// at the same UID keeps its slot (updated if its flags or claim
    /// changed); one gone or moved leaves its slot (the backend records the
    /// VANISHED UID and raises MODSEQ); one new at its place goes straight
    /// to its UID in a mailbox where nothing was placed or claimed before,
    /// and elsewhere arrives unplaced with its claim on the side and is
    /// placed by settling at the end, as an op's would be (so U1 holds for
    /// what this replica's clients were shown). Claim sets only grow but
    /// side claims, which the snapshot's replace; a message live here that
    /// the snapshot does not place is expunged (its append is within the
    /// snapshot's version), so it leaves. Ops waiting for their causal past
    /// stay waiting (or are applied, if the snapshot completed it).
    /// Afterwards the replica continues with the ops after the snapshot's
    /// version.
    ///
    /// On `Err` from any step other than [`InstallError::Older`] and
    /// [`InstallError::Version`] here, the replica may be half changed: the
    /// caller drops it and reopens it, as after a failed [`Replica::apply`]
    /// (the store's transaction is not committed).
    pub fn import_begin(&mut self, head: SnapHead) -> Result<Import, InstallError> {
        if head.version != SNAPSHOT_VERSION {
            return Err(InstallError::Version(head.version));
        }
        if !head.vv.dominates(&self.vv) {
            return Err(InstallError::Older);
        }
        // The same ops give the same state.
        let same = head.vv == self.vv;
        let account = if same { None } else { Some(AccountDoc::load(self.me, &head.account)?) };
        let waiting = if same {
            Vec::new()
        } else {
            self.pending.ops().chain(&self.ready).filter(|o| !head.vv.contains(o.dot)).cloned().collect()
        };
        Ok(Import {
            same,
            vv: head.vv,
            account,
            waiting,
            seen: BTreeSet::new(),
            cur: None,
            left: Vec::new(),
            dirty: Dirty::new(),
        })
    }

    /// The next part of the snapshot [`Replica::import_begin`] began.
    pub fn import_part(&mut self, import: &mut Import, part: Part) -> Result<(), InstallError> {
        if import.same {
            return Ok(());
        }
        match part {
            Part::Mailbox(head) => {
                self.finish_mailbox(import)?;
                self.begin_mailbox(import, head)
            }
            Part::Messages(messages) => {
                let mut cur = import.cur.take().ok_or_else(|| invalid_part("messages before any mailbox"))?;
                for m in messages {
                    self.import_message(import, &mut cur, m)?;
                }
                import.cur = Some(cur);
                Ok(())
            }
            Part::Claims(kind, claims) => {
                let i = import.cur.as_ref().ok_or_else(|| invalid_part("claims before any mailbox"))?.i;
                for c in claims {
                    let key = ClaimKey {
                        uid: c.uid,
                        message: self.packed(c.message.0).map_err(invalid)?,
                        claimant: self.intern(c.claimant).map_err(invalid)?,
                    };
                    match kind {
                        ClaimKind::Side => {
                            self.backend.add_side(
                                i,
                                key.uid,
                                Claim { message: key.message, claimant: key.claimant },
                            )?;
                            // An own claim the snapshot shows losing is
                            // withdrawn now, as applying the ops would have
                            // done (settling the UID decides it). Left, the
                            // replica withdrew it at the UID's next change,
                            // or never: with burying on or off, different
                            // ops (`install_withdraws_lost_claims`).
                            if key.claimant == 0 {
                                import.dirty.entry(i).or_default().0.insert(key.uid);
                            }
                        }
                        ClaimKind::Retracted => self.backend.add_retracted(i, key)?,
                        ClaimKind::Pinned => self.backend.add_pinned(i, key)?,
                        ClaimKind::Forced => self.backend.add_forced(i, key)?,
                    }
                }
                Ok(())
            }
        }
    }

    /// Ends the install: mailboxes the snapshot did not list are emptied,
    /// what left is forgotten, new messages are settled, and the ops the
    /// snapshot completed the causal past of are applied.
    pub fn import_end(&mut self, mut import: Import) -> Result<(), InstallError> {
        if import.same {
            return Ok(());
        }
        self.finish_mailbox(&mut import)?;
        // A mailbox of this replica the snapshot does not list holds
        // nothing in it.
        for i in 0..self.mailboxes.len() as u32 {
            if !import.seen.contains(&i) {
                let meta = &self.mailboxes[i as usize];
                let head =
                    SnapMailboxHead { id: meta.id, uid_next: meta.uid_next, announced: Vec::new(), dead: Vec::new() };
                self.begin_mailbox(&mut import, head)?;
                self.finish_mailbox(&mut import)?;
            }
        }
        // A message that left and was not placed again is expunged.
        for (id, was) in std::mem::take(&mut import.left) {
            if self.backend.loc(id)? == Some(was) {
                self.backend.remove_loc(id)?;
                self.backend.remove_envelope(id)?;
            }
        }
        let Import { vv, account, waiting, mut dirty, .. } = import;
        self.account = account.expect("a snapshot not the same has its document");
        self.account_dirty = true;
        self.counter = self.counter.max(vv.get(self.me));
        // No own op depends on the snapshot yet: the next one must name all
        // of it (found by the simulator: a flag change made right after a
        // join carried no deps and was dropped by a peer that lacked the
        // message).
        self.deps_base = VersionVector::new();
        self.vv = vv;
        let (pending, ready) = CausalBuffer::rebuild(waiting, &self.vv);
        self.pending = pending;
        self.ready = ready.into();
        self.refresh_tree(&mut dirty)?;
        self.settle(dirty)?;
        // The follow-ups settling decided, then the ops the snapshot
        // completed the causal past of.
        self.drain()?;
        Ok(())
    }

    fn begin_mailbox(&mut self, import: &mut Import, head: SnapMailboxHead) -> Result<(), InstallError> {
        let i = self.mailbox(head.id);
        if !import.seen.insert(i) {
            return Err(InstallError::Invalid(format!("mailbox {:?} listed twice", head.id)));
        }
        let mut after = 0;
        for &(start, end) in &head.dead {
            if start == 0 || start >= end || end > head.uid_next || start < after {
                return Err(InstallError::Invalid(format!(
                    "spent UIDs {start}..{end} outside 1..UIDNEXT or out of order"
                )));
            }
            after = end;
        }
        // Side claims come and go (one may become a placed message's own):
        // the snapshot's replace these. `take_side` takes one claim of the
        // message at the UID, not a given claimant's: take them all.
        // A page at a time, from the first each time: the page before is gone.
        let mut empty = self.mailboxes[i as usize].unplaced.is_empty() && self.backend.slot_count(i)? == 0;
        loop {
            let side = self.backend.claims_in(i, ClaimKind::Side, None, PAGE)?;
            if side.is_empty() {
                break;
            }
            empty = false;
            for k in side {
                while self.backend.take_side(i, k.uid, k.message)?.is_some() {}
            }
        }
        // Spent UIDs only grow. (Nothing to settle for them: a claim at a
        // spent UID names nothing, as the buried claims made it.)
        for &(start, end) in &head.dead {
            self.backend.add_dead(i, start, end)?;
        }
        for (r, n) in &head.announced {
            let r = self.intern(*r).map_err(invalid)?;
            let a = self.mailboxes[i as usize].announced.entry(r).or_insert(0);
            *a = (*a).max(*n);
        }
        let meta = &mut self.mailboxes[i as usize];
        meta.uid_next = meta.uid_next.max(head.uid_next);
        import.cur = Some(Current {
            i,
            uid_next: head.uid_next,
            dead: head.dead,
            last: 0,
            old: VecDeque::new(),
            from: 0,
            done: empty,
            empty,
            announced_me: self.announced(i, 0),
        });
        Ok(())
    }

    /// The next slot of this replica in the mailbox being merged.
    fn peek_old<'c>(&self, cur: &'c mut Current) -> Result<Option<&'c Slot>, StorageError> {
        if cur.old.is_empty() && !cur.done {
            let page = self.backend.slots_from(cur.i, cur.from, PAGE)?;
            match page.last().map(|s| s.uid.checked_add(1)) {
                Some(Some(next)) if page.len() == PAGE => cur.from = next,
                _ => cur.done = true,
            }
            cur.old.extend(page);
        }
        Ok(cur.old.front())
    }

    /// Removes this replica's slots of the mailbox being merged below `to`.
    fn leave_below(&mut self, import: &mut Import, cur: &mut Current, to: u32) -> Result<(), StorageError> {
        while self.peek_old(cur)?.is_some_and(|s| s.uid < to) {
            let old = cur.old.pop_front().expect("peeked");
            self.backend.remove_slot(cur.i, old.uid)?;
            import.left.push((old.id, MsgLoc { mailbox: cur.i, uid: old.uid }));
        }
        Ok(())
    }

    fn finish_mailbox(&mut self, import: &mut Import) -> Result<(), InstallError> {
        // Every UID is below u32::MAX (UIDNEXT is at most that).
        if let Some(mut cur) = import.cur.take() {
            self.leave_below(import, &mut cur, u32::MAX)?;
        }
        Ok(())
    }

    fn import_message(&mut self, import: &mut Import, cur: &mut Current, m: SnapMessage) -> Result<(), InstallError> {
        if m.uid == 0 || m.uid >= cur.uid_next {
            return Err(InstallError::Invalid(format!("UID {} of {:?} outside 1..UIDNEXT", m.uid, m.id)));
        }
        if m.uid <= cur.last {
            return Err(InstallError::Invalid(format!(
                "UID {} after UID {}: not in order, or two messages",
                m.uid, cur.last
            )));
        }
        cur.last = m.uid;
        let at = cur.dead.partition_point(|(_, end)| *end <= m.uid);
        if cur.dead.get(at).is_some_and(|(start, _)| *start <= m.uid) {
            return Err(InstallError::Invalid(format!("a message placed at spent UID {}", m.uid)));
        }
        let id = self.packed(m.id.0).map_err(invalid)?;
        let mut flags = FlagSet::new();
        for (k, d) in &m.flags {
            let kw = self.keyword(k);
            flags.push(FlagEntry::new(kw, self.packed(*d).map_err(invalid)?));
        }
        let claimant = self.intern(m.claimant).map_err(invalid)?;
        let loc = ((m.loc.0 as u64) << 16) | self.intern(m.loc.1).map_err(invalid)? as u64;
        let mut slot = Slot { id, loc, uid: m.uid, claimant, flags };
        let twice = || InstallError::Invalid(format!("{:?} placed twice", m.id));

        // Merge with this replica's slots: those below leave, the one at
        // the UID stays if it is the same message.
        self.leave_below(import, cur, m.uid)?;
        if self.peek_old(cur)?.is_some_and(|s| s.uid == m.uid) {
            let old = cur.old.pop_front().expect("peeked");
            if old.id == id {
                if self.backend.loc(id)? != Some(MsgLoc { mailbox: cur.i, uid: m.uid }) {
                    return Err(twice());
                }
                if slot != old {
                    self.backend.update_slot(cur.i, &slot)?;
                }
                if let Some(e) = m.envelope {
                    self.backend.set_envelope(id, e)?;
                }
                return Ok(());
            }
            self.backend.remove_slot(cur.i, old.uid)?;
            import.left.push((old.id, MsgLoc { mailbox: cur.i, uid: old.uid }));
        }

        // New at this place. Where is it now? Nowhere; or at its old place
        // in a mailbox not merged yet, or further on in this one, or at one
        // it left: fine. Placed by this install already: the snapshot
        // names it twice.
        if let Some(l) = self.backend.loc(id)? {
            let unmerged = !import.seen.contains(&l.mailbox) || (l.mailbox == cur.i && l.uid > m.uid);
            let ok = l.uid != 0 && (unmerged || self.backend.slot(l.mailbox, l.uid)?.is_none_or(|s| s.id != id));
            if !ok {
                return Err(twice());
            }
        }
        if cur.empty && m.uid >= cur.announced_me {
            self.backend.set_loc(id, MsgLoc { mailbox: cur.i, uid: m.uid })?;
            self.backend.insert_slot(cur.i, slot)?;
        } else {
            // As an op's would: unplaced, its claim on the side, for
            // settling to place it (where this replica's clients were shown
            // UIDs above that claim, U1 forces a new one).
            self.backend.add_side(cur.i, m.uid, Claim { message: id, claimant })?;
            slot.uid = 0;
            self.backend.set_loc(id, MsgLoc { mailbox: cur.i, uid: 0 })?;
            self.mailboxes[cur.i as usize].unplaced.insert(id, slot);
            import.dirty.entry(cur.i).or_default().1.insert(id);
        }
        if let Some(e) = m.envelope {
            self.backend.set_envelope(id, e)?;
        }
        Ok(())
    }
}

fn invalid(e: ApplyError) -> InstallError {
    InstallError::Invalid(e.to_string())
}

fn invalid_part(what: &str) -> InstallError {
    InstallError::Invalid(what.to_string())
}
