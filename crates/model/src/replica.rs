//! One replica's state of one account, and the one function that changes it.
//!
//! [`Replica::apply`] is the only way in for an op, whether this replica made
//! it (an IMAP command, a delivery) or a peer did. It buffers an op until its
//! causal past has been applied, applies it, then *settles* the UID view: a
//! message whose UID was lost or would break U1 here gets a new claim, and an
//! own unexposed claim that lost a conflict is withdrawn. Settling may create
//! ops; they go through `apply` like any other and are queued for peers
//! ([`Replica::take_outbox`]).
//!
//! The state is packed for memory (see `docs/semantics.md`): replica ids are
//! interned to 16-bit indices, dots packed into a `u64`, and each mailbox's
//! messages kept in one vector sorted by UID, which is also IMAP's sequence
//! number order.

use crate::account::{AccountDoc, AccountError, MailboxTree, SpecialUse, INBOX};
use crate::ids::{BlobId, Dot, MailboxId, MessageId, ReplicaId, VersionVector, COUNTER_MAX};
use crate::keyword::Keyword;
use crate::op::{Append, Op, OpBody, Pin};
use smallvec::SmallVec;
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};

/// Most ops held back waiting for their causal past. Past it, [`Replica::apply`]
/// refuses ops and the peer must catch up by state.
pub const PENDING_MAX: usize = 100_000;

/// Why an op could not be applied.
#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    /// More distinct replicas than a packed dot can index.
    #[error("too many replicas in one account (max 65535)")]
    TooManyReplicas,
    /// A counter beyond 48 bits, or zero.
    #[error("op counter out of range in {0:?}")]
    CounterOutOfRange(Dot),
    /// A UID of 0.
    #[error("invalid UID 0 in op {0:?}")]
    InvalidUid(Dot),
    /// The causal buffer is full.
    #[error("causal buffer full ({PENDING_MAX} ops waiting)")]
    PendingFull,
    /// A malformed account-document change.
    #[error(transparent)]
    Account(#[from] AccountError),
}

/// Why a local (client) operation was refused.
#[derive(Debug, thiserror::Error)]
pub enum LocalError {
    /// The message is not here (never was, expunged, or in another account).
    #[error("no such message {0:?}")]
    NoSuchMessage(MessageId),
    /// The mailbox is not here or not visible.
    #[error("no such mailbox {0:?}")]
    NoSuchMailbox(MailboxId),
    /// The mailbox's UID space is used up (UIDNEXT would pass 2^32 − 1).
    #[error("UID space of {0:?} exhausted")]
    UidsExhausted(MailboxId),
    /// Account document refused the change.
    #[error(transparent)]
    Account(#[from] AccountError),
    /// Applying the op failed.
    #[error(transparent)]
    Apply(#[from] ApplyError),
}

/// Dot packed with an interned replica index: index << 48 | counter.
type Packed = u64;

fn pack(idx: u16, counter: u64) -> Packed {
    ((idx as u64) << 48) | counter
}

fn packed_idx(p: Packed) -> u16 {
    (p >> 48) as u16
}

/// One keyword add that is live on a message: keyword index and packed dot.
/// Three `u32`s so that two fit inline in 24 bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct FlagEntry {
    kw: u32,
    dot_hi: u32,
    dot_lo: u32,
}

impl FlagEntry {
    fn new(kw: u32, dot: Packed) -> Self {
        FlagEntry {
            kw,
            dot_hi: (dot >> 32) as u32,
            dot_lo: dot as u32,
        }
    }
    fn dot(&self) -> Packed {
        ((self.dot_hi as u64) << 32) | self.dot_lo as u64
    }
}

type FlagSet = SmallVec<[FlagEntry; 2]>;

/// A message in a mailbox: its displayed UID and replicated state.
#[derive(Clone, Debug)]
struct Slot {
    id: Packed,
    /// Location version: move sequence << 16 | mover's replica index.
    loc: u64,
    uid: u32,
    /// Author of the claim that gives `uid` (other claims live in `side`).
    claimant: u16,
    flags: FlagSet,
}

/// Where a message is: mailbox index and displayed UID (0 while unplaced).
#[derive(Clone, Copy, Debug)]
struct MsgLoc {
    mailbox: u32,
    uid: u32,
}

/// Immutable attributes, kept apart from the CRDT state.
#[derive(Clone, Copy, Debug)]
struct Envelope {
    blob: BlobId,
    size: u64,
    internal_date: i64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
struct ClaimKey {
    uid: u32,
    message: Packed,
    claimant: u16,
}

#[derive(Clone, Copy, Debug)]
struct Claim {
    message: Packed,
    claimant: u16,
}

#[derive(Debug)]
struct MailboxState {
    id: MailboxId,
    /// Placed messages, sorted by UID.
    slots: Vec<Slot>,
    /// Messages that arrived or lost their UID and await settling.
    unplaced: HashMap<Packed, Slot>,
    /// 1 + the highest UID ever claimed or announced here.
    uid_next: u32,
    /// Per replica, the highest UIDNEXT it announced (its claims below are exposed).
    announced: HashMap<u16, u32>,
    /// Claims other than each placed message's primary one.
    side: BTreeMap<u32, SmallVec<[Claim; 2]>>,
    side_by_msg: HashMap<Packed, SmallVec<[u32; 2]>>,
    retracted: HashSet<ClaimKey>,
    pinned: HashSet<ClaimKey>,
}

impl MailboxState {
    fn new(id: MailboxId) -> Self {
        MailboxState {
            id,
            slots: Vec::new(),
            unplaced: HashMap::new(),
            uid_next: 1,
            announced: HashMap::new(),
            side: BTreeMap::new(),
            side_by_msg: HashMap::new(),
            retracted: HashSet::new(),
            pinned: HashSet::new(),
        }
    }

    fn position(&self, uid: u32) -> Result<usize, usize> {
        self.slots.binary_search_by_key(&uid, |s| s.uid)
    }

    fn add_side(&mut self, uid: u32, claim: Claim) {
        let list = self.side.entry(uid).or_default();
        if list
            .iter()
            .any(|c| c.message == claim.message && c.claimant == claim.claimant)
        {
            return;
        }
        list.push(claim);
        let uids = self.side_by_msg.entry(claim.message).or_default();
        if !uids.contains(&uid) {
            uids.push(uid);
        }
    }

    fn take_side(&mut self, uid: u32, message: Packed) -> Option<u16> {
        let list = self.side.get_mut(&uid)?;
        let pos = list.iter().position(|c| c.message == message)?;
        let claim = list.remove(pos);
        if list.is_empty() {
            self.side.remove(&uid);
        }
        if !self
            .side
            .get(&uid)
            .is_some_and(|l| l.iter().any(|c| c.message == message))
        {
            if let Some(uids) = self.side_by_msg.get_mut(&message) {
                uids.retain(|u| *u != uid);
                if uids.is_empty() {
                    self.side_by_msg.remove(&message);
                }
            }
        }
        Some(claim.claimant)
    }

    /// Removes a message's slot; its primary claim stays on record in `side`.
    fn unplace(&mut self, message: Packed, uid: u32) -> Option<Slot> {
        if let Some(s) = self.unplaced.remove(&message) {
            return Some(s);
        }
        let pos = self.position(uid).ok()?;
        debug_assert_eq!(self.slots[pos].id, message);
        let slot = self.slots.remove(pos);
        self.add_side(
            slot.uid,
            Claim {
                message,
                claimant: slot.claimant,
            },
        );
        Some(slot)
    }

    fn slot_mut(&mut self, message: Packed, uid: u32) -> Option<&mut Slot> {
        if uid == 0 {
            return self.unplaced.get_mut(&message);
        }
        let pos = self.position(uid).ok()?;
        Some(&mut self.slots[pos])
    }
}

/// What one replica shows for a mailbox: `(uid, message, keywords)` by UID.
pub type MailboxView = Vec<(u32, MessageId, BTreeSet<Keyword>)>;

/// One replica of one account.
pub struct Replica {
    me: ReplicaId,
    counter: u64,
    vv: VersionVector,
    /// `vv` as of this replica's last op: what the next op's deps are relative to.
    deps_base: VersionVector,
    replica_ids: Vec<ReplicaId>,
    replica_idx: HashMap<ReplicaId, u16>,
    keywords: Vec<Keyword>,
    keyword_idx: HashMap<Keyword, u32>,
    messages: HashMap<Packed, MsgLoc>,
    envelopes: Option<HashMap<Packed, Envelope>>,
    tombstones: HashSet<Packed>,
    mailboxes: Vec<MailboxState>,
    mailbox_idx: HashMap<MailboxId, u32>,
    account: AccountDoc,
    tree: MailboxTree,
    pending: BTreeMap<Dot, Op>,
    outbox: Vec<Op>,
}

impl std::fmt::Debug for Replica {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Replica")
            .field("me", &self.me)
            .field("vv", &self.vv)
            .finish_non_exhaustive()
    }
}

/// Options for a replica.
#[derive(Clone, Copy, Debug)]
pub struct ReplicaOptions {
    /// Keep blob id, size and date of each message in memory. The store keeps
    /// them on disk; the memory benchmark turns this off to measure the CRDT
    /// state alone.
    pub keep_envelopes: bool,
}

impl Default for ReplicaOptions {
    fn default() -> Self {
        ReplicaOptions {
            keep_envelopes: true,
        }
    }
}

/// A follow-up decided while settling, turned into an op afterwards.
enum FollowUp {
    Claim {
        mailbox: MailboxId,
        message: MessageId,
        uid: Option<u32>,
        retract: Option<u32>,
    },
    Move {
        message: MessageId,
        to: MailboxId,
    },
}

impl Replica {
    /// A fresh replica with nothing applied.
    pub fn new(me: ReplicaId) -> Self {
        Self::with_options(me, ReplicaOptions::default())
    }

    /// A fresh replica with options.
    pub fn with_options(me: ReplicaId, options: ReplicaOptions) -> Self {
        let account = AccountDoc::new(me);
        let tree = account.tree(|_| false);
        let mut r = Replica {
            me,
            counter: 0,
            vv: VersionVector::new(),
            deps_base: VersionVector::new(),
            replica_ids: Vec::new(),
            replica_idx: HashMap::new(),
            keywords: Vec::new(),
            keyword_idx: HashMap::new(),
            messages: HashMap::new(),
            envelopes: options.keep_envelopes.then(HashMap::new),
            tombstones: HashSet::new(),
            mailboxes: Vec::new(),
            mailbox_idx: HashMap::new(),
            account,
            tree,
            pending: BTreeMap::new(),
            outbox: Vec::new(),
        };
        r.intern(me).expect("first replica");
        r.mailbox(INBOX);
        r
    }

    /// This replica's id.
    pub fn id(&self) -> ReplicaId {
        self.me
    }

    /// Everything applied so far.
    pub fn version(&self) -> &VersionVector {
        &self.vv
    }

    /// Ops waiting for their causal past.
    pub fn pending_len(&self) -> usize {
        self.pending.len()
    }

    /// Ops this replica created (client changes and settling) since the last
    /// call, in order, for its peers.
    pub fn take_outbox(&mut self) -> Vec<Op> {
        std::mem::take(&mut self.outbox)
    }

    fn intern(&mut self, r: ReplicaId) -> Result<u16, ApplyError> {
        if let Some(i) = self.replica_idx.get(&r) {
            return Ok(*i);
        }
        let i = u16::try_from(self.replica_ids.len()).map_err(|_| ApplyError::TooManyReplicas)?;
        self.replica_ids.push(r);
        self.replica_idx.insert(r, i);
        Ok(i)
    }

    fn packed(&mut self, d: Dot) -> Result<Packed, ApplyError> {
        if d.counter == 0 || d.counter > COUNTER_MAX {
            return Err(ApplyError::CounterOutOfRange(d));
        }
        Ok(pack(self.intern(d.replica)?, d.counter))
    }

    /// The packed form of a dot already interned (None if never seen).
    fn lookup(&self, d: Dot) -> Option<Packed> {
        Some(pack(*self.replica_idx.get(&d.replica)?, d.counter))
    }

    fn unpack(&self, p: Packed) -> Dot {
        Dot::new(self.replica_ids[packed_idx(p) as usize], p & COUNTER_MAX)
    }

    fn keyword(&mut self, kw: &Keyword) -> u32 {
        if let Some(i) = self.keyword_idx.get(kw) {
            return *i;
        }
        let i = self.keywords.len() as u32;
        self.keywords.push(kw.clone());
        self.keyword_idx.insert(kw.clone(), i);
        i
    }

    fn mailbox(&mut self, id: MailboxId) -> u32 {
        if let Some(i) = self.mailbox_idx.get(&id) {
            return *i;
        }
        let i = self.mailboxes.len() as u32;
        self.mailboxes.push(MailboxState::new(id));
        self.mailbox_idx.insert(id, i);
        i
    }

    // ---------------------------------------------------------------- apply

    /// Applies an op from anywhere. An op already applied is ignored; one whose
    /// causal past is incomplete waits and is applied when it completes. Ops
    /// created while settling are applied too and queued in the outbox.
    pub fn apply(&mut self, op: Op) -> Result<(), ApplyError> {
        if self.vv.contains(op.dot) || self.pending.contains_key(&op.dot) {
            return Ok(());
        }
        if op.dot.counter == 0 || op.dot.counter > COUNTER_MAX {
            return Err(ApplyError::CounterOutOfRange(op.dot));
        }
        if !self.ready(&op) {
            if self.pending.len() >= PENDING_MAX {
                return Err(ApplyError::PendingFull);
            }
            self.pending.insert(op.dot, op);
            return Ok(());
        }
        self.apply_ready(op)?;
        // Each applied op may make waiting ones ready.
        loop {
            let ready: Vec<Dot> = self
                .pending
                .values()
                .filter(|o| self.ready(o))
                .map(|o| o.dot)
                .collect();
            if ready.is_empty() {
                break;
            }
            for d in ready {
                if let Some(op) = self.pending.remove(&d) {
                    if self.ready(&op) {
                        self.apply_ready(op)?;
                    } else {
                        self.pending.insert(d, op);
                    }
                }
            }
        }
        Ok(())
    }

    fn ready(&self, op: &Op) -> bool {
        self.vv.get(op.dot.replica) + 1 == op.dot.counter
            && op.deps.iter().all(|d| self.vv.contains(*d))
    }

    fn apply_ready(&mut self, op: Op) -> Result<(), ApplyError> {
        let mut dirty: BTreeMap<u32, (BTreeSet<u32>, BTreeSet<Packed>)> = BTreeMap::new();
        self.apply_body(&op, &mut dirty)?;
        // A deleted mailbox is visible exactly while it holds messages.
        let deleted_touched = dirty.keys().any(|i| {
            let id = self.mailboxes[*i as usize].id;
            self.tree.entries.get(&id).is_some_and(|e| e.deleted)
        });
        if deleted_touched {
            self.refresh_tree(&mut dirty);
        }
        self.vv.observe(op.dot);
        if op.dot.replica == self.me {
            self.counter = self.counter.max(op.dot.counter);
        }
        self.settle(dirty)
    }

    fn apply_body(
        &mut self,
        op: &Op,
        dirty: &mut BTreeMap<u32, (BTreeSet<u32>, BTreeSet<Packed>)>,
    ) -> Result<(), ApplyError> {
        let author = self.intern(op.dot.replica)?;
        let op_dot = self.packed(op.dot)?;
        match &op.body {
            OpBody::Append(a) => self.apply_new_message(op, op_dot, author, a, 0, dirty)?,
            OpBody::Copy { append, .. } => {
                self.apply_new_message(op, op_dot, author, append, 0, dirty)?
            }
            OpBody::Flags {
                message,
                add,
                remove,
            } => {
                let Some(m) = self.lookup(message.0) else {
                    return Ok(());
                };
                let Some(loc) = self.messages.get(&m).copied() else {
                    return Ok(());
                };
                let add: Vec<u32> = add.iter().map(|k| self.keyword(k)).collect();
                let remove: Vec<(u32, Packed)> = remove
                    .iter()
                    .filter_map(|(k, d)| Some((*self.keyword_idx.get(k)?, self.lookup(*d)?)))
                    .collect();
                let mb = &mut self.mailboxes[loc.mailbox as usize];
                if let Some(slot) = mb.slot_mut(m, loc.uid) {
                    slot.flags.retain(|e| !remove.contains(&(e.kw, e.dot())));
                    for kw in add {
                        if !slot.flags.iter().any(|e| e.kw == kw && e.dot() == op_dot) {
                            slot.flags.push(FlagEntry::new(kw, op_dot));
                        }
                    }
                }
            }
            OpBody::Move {
                message,
                to,
                seq,
                uid,
            } => {
                if *uid == 0 {
                    return Err(ApplyError::InvalidUid(op.dot));
                }
                let m = self.packed(message.0)?;
                let to_idx = self.mailbox(*to);
                self.note_claim(to_idx, *uid, m, author, dirty);
                let Some(loc) = self.messages.get(&m).copied() else {
                    return Ok(());
                };
                let new_loc = ((*seq as u64) << 16) | author as u64;
                let current = {
                    let mb = &mut self.mailboxes[loc.mailbox as usize];
                    mb.slot_mut(m, loc.uid).map(|s| s.loc)
                };
                let Some(current) = current else {
                    return Ok(());
                };
                if self.loc_key(new_loc) <= self.loc_key(current)
                    || loc.mailbox == to_idx && new_loc == current
                {
                    return Ok(());
                }
                let mut slot = self.mailboxes[loc.mailbox as usize]
                    .unplace(m, loc.uid)
                    .expect("located slot");
                slot.loc = new_loc;
                if loc.mailbox != to_idx {
                    dirty.entry(loc.mailbox).or_default();
                }
                self.mailboxes[to_idx as usize].unplaced.insert(m, slot);
                self.messages.insert(
                    m,
                    MsgLoc {
                        mailbox: to_idx,
                        uid: 0,
                    },
                );
                dirty.entry(to_idx).or_default().1.insert(m);
            }
            OpBody::Expunge { messages } => {
                for message in messages {
                    let m = self.packed(message.0)?;
                    self.tombstones.insert(m);
                    if let Some(loc) = self.messages.remove(&m) {
                        self.mailboxes[loc.mailbox as usize].unplace(m, loc.uid);
                        dirty.entry(loc.mailbox).or_default();
                    }
                    if let Some(e) = self.envelopes.as_mut() {
                        e.remove(&m);
                    }
                }
            }
            OpBody::Claim {
                mailbox,
                message,
                uid,
                retract,
            } => {
                let m = self.packed(message.0)?;
                let idx = self.mailbox(*mailbox);
                if let Some(u) = uid {
                    if *u == 0 {
                        return Err(ApplyError::InvalidUid(op.dot));
                    }
                    self.note_claim(idx, *u, m, author, dirty);
                }
                if let Some(r) = retract {
                    let mb = &mut self.mailboxes[idx as usize];
                    mb.retracted.insert(ClaimKey {
                        uid: *r,
                        message: m,
                        claimant: author,
                    });
                    dirty.entry(idx).or_default().0.insert(*r);
                }
            }
            OpBody::Announce {
                mailbox,
                uid_next,
                pins,
            } => {
                let idx = self.mailbox(*mailbox);
                let mut keys = Vec::with_capacity(pins.len());
                for p in pins {
                    let message = self.packed(p.message.0)?;
                    keys.push(ClaimKey {
                        uid: p.uid,
                        message,
                        claimant: self.intern(p.claimant)?,
                    });
                }
                let mb = &mut self.mailboxes[idx as usize];
                let d = dirty.entry(idx).or_default();
                let before = mb.announced.get(&author).copied().unwrap_or(1);
                if *uid_next > before {
                    mb.announced.insert(author, *uid_next);
                    // Exposure only matters where claims compete, i.e. in `side`.
                    d.0.extend(mb.side.range(before..*uid_next).map(|(u, _)| *u));
                }
                mb.uid_next = mb.uid_next.max(*uid_next);
                for k in keys {
                    d.0.insert(k.uid);
                    mb.pinned.insert(k);
                }
            }
            OpBody::Account { change } => {
                self.account.apply_change(change)?;
                self.refresh_tree(dirty);
            }
        }
        Ok(())
    }

    fn apply_new_message(
        &mut self,
        op: &Op,
        m: Packed,
        author: u16,
        a: &Append,
        seq: u32,
        dirty: &mut BTreeMap<u32, (BTreeSet<u32>, BTreeSet<Packed>)>,
    ) -> Result<(), ApplyError> {
        if a.uid == 0 {
            return Err(ApplyError::InvalidUid(op.dot));
        }
        let idx = self.mailbox(a.mailbox);
        self.note_claim(idx, a.uid, m, author, dirty);
        if self.tombstones.contains(&m) {
            return Ok(());
        }
        let flags = a
            .flags
            .iter()
            .map(|k| FlagEntry::new(self.keyword(k), m))
            .collect();
        let slot = Slot {
            id: m,
            loc: ((seq as u64) << 16) | author as u64,
            uid: 0,
            claimant: author,
            flags,
        };
        self.mailboxes[idx as usize].unplaced.insert(m, slot);
        self.messages.insert(
            m,
            MsgLoc {
                mailbox: idx,
                uid: 0,
            },
        );
        if let Some(e) = self.envelopes.as_mut() {
            e.insert(
                m,
                Envelope {
                    blob: a.blob,
                    size: a.size,
                    internal_date: a.internal_date,
                },
            );
        }
        dirty.entry(idx).or_default().1.insert(m);
        Ok(())
    }

    fn note_claim(
        &mut self,
        mailbox: u32,
        uid: u32,
        message: Packed,
        claimant: u16,
        dirty: &mut BTreeMap<u32, (BTreeSet<u32>, BTreeSet<Packed>)>,
    ) {
        let mb = &mut self.mailboxes[mailbox as usize];
        mb.add_side(uid, Claim { message, claimant });
        mb.uid_next = mb.uid_next.max(uid.saturating_add(1));
        dirty.entry(mailbox).or_default().0.insert(uid);
    }

    /// Orders location versions: move sequence, then the mover's replica id.
    fn loc_key(&self, loc: u64) -> (u64, ReplicaId) {
        (loc >> 16, self.replica_ids[(loc & 0xffff) as usize])
    }

    fn refresh_tree(&mut self, dirty: &mut BTreeMap<u32, (BTreeSet<u32>, BTreeSet<Packed>)>) {
        let occupied: HashSet<MailboxId> = self
            .mailboxes
            .iter()
            .filter(|m| !m.slots.is_empty() || !m.unplaced.is_empty())
            .map(|m| m.id)
            .collect();
        self.tree = self.account.tree(|id| occupied.contains(&id));
        let ids: Vec<MailboxId> = self.tree.entries.keys().copied().collect();
        for id in ids {
            self.mailbox(id);
        }
        for from in self.tree.merged_into.keys() {
            if let Some(i) = self.mailbox_idx.get(from) {
                dirty.entry(*i).or_default();
            }
        }
    }

    // --------------------------------------------------------------- settle

    /// Resolution of one UID: which message it names, if any.
    fn resolve(&self, mb: &MailboxState, uid: u32) -> Option<Packed> {
        let mut claims: SmallVec<[(Packed, u16); 4]> = SmallVec::new();
        if let Ok(pos) = mb.position(uid) {
            claims.push((mb.slots[pos].id, mb.slots[pos].claimant));
        }
        if let Some(side) = mb.side.get(&uid) {
            claims.extend(side.iter().map(|c| (c.message, c.claimant)));
        }
        let mut effective: SmallVec<[(Packed, u16, bool); 4]> = SmallVec::new();
        for (message, claimant) in claims {
            let key = ClaimKey {
                uid,
                message,
                claimant,
            };
            let pinned = mb.pinned.contains(&key);
            let retracted = mb.retracted.contains(&key);
            if retracted && !pinned {
                continue;
            }
            let exposed = pinned || uid < mb.announced.get(&claimant).copied().unwrap_or(1);
            effective.push((message, claimant, exposed));
        }
        let first = effective.first()?.0;
        if effective.iter().all(|c| c.0 == first) {
            return Some(first);
        }
        let mut exposed: SmallVec<[Packed; 2]> =
            effective.iter().filter(|c| c.2).map(|c| c.0).collect();
        exposed.sort_unstable();
        exposed.dedup();
        match exposed.len() {
            1 => Some(exposed[0]),
            // Nobody showed any of them: a deterministic winner, no wall clock.
            0 => effective
                .iter()
                .min_by_key(|c| (self.replica_ids[c.1 as usize], self.unpack(c.0)))
                .map(|c| c.0),
            // Shown as different messages: neither replica knows which one a
            // client cached, so the UID names nothing any more.
            _ => None,
        }
    }

    fn settle(
        &mut self,
        mut dirty: BTreeMap<u32, (BTreeSet<u32>, BTreeSet<Packed>)>,
    ) -> Result<(), ApplyError> {
        let me = 0u16;
        let mut follow = Vec::new();
        while let Some((idx, (uids, mut msgs))) = dirty.pop_first() {
            let mb = &self.mailboxes[idx as usize];
            for u in &uids {
                if let Ok(pos) = mb.position(*u) {
                    msgs.insert(mb.slots[pos].id);
                }
                if let Some(side) = mb.side.get(u) {
                    msgs.extend(side.iter().map(|c| c.message));
                }
            }
            msgs.extend(mb.unplaced.keys().copied());
            // Messages of a mailbox merged into another go there.
            if let Some(to) = self.tree.merged_into.get(&mb.id) {
                for s in mb.slots.iter().chain(mb.unplaced.values()) {
                    follow.push(FollowUp::Move {
                        message: MessageId(self.unpack(s.id)),
                        to: *to,
                    });
                }
                msgs.clear();
            }
            let announced_me = mb.announced.get(&me).copied().unwrap_or(1);
            let mut moves: Vec<(Packed, u32, u32)> = Vec::new();
            let mut ordered: Vec<Packed> = msgs.into_iter().collect();
            ordered.sort_by_key(|m| self.unpack(*m));
            for m in ordered {
                let Some(loc) = self.messages.get(&m).copied() else {
                    continue;
                };
                if loc.mailbox != idx {
                    continue;
                }
                let mut mine: SmallVec<[u32; 4]> = mb
                    .side_by_msg
                    .get(&m)
                    .cloned()
                    .unwrap_or_default()
                    .into_iter()
                    .collect();
                if loc.uid != 0 {
                    mine.push(loc.uid);
                }
                let best = mine
                    .iter()
                    .copied()
                    .filter(|u| self.resolve(mb, *u) == Some(m))
                    .max();
                // Own claims that lost and that no client has seen are withdrawn.
                let mut retracts: SmallVec<[u32; 2]> = SmallVec::new();
                for u in &mine {
                    let key = ClaimKey {
                        uid: *u,
                        message: m,
                        claimant: me,
                    };
                    let own = (loc.uid == *u
                        && mb.position(*u).is_ok_and(|p| mb.slots[p].claimant == me))
                        || mb
                            .side
                            .get(u)
                            .is_some_and(|l| l.iter().any(|c| c.message == m && c.claimant == me));
                    if own
                        && !mb.retracted.contains(&key)
                        && !mb.pinned.contains(&key)
                        && *u >= announced_me
                        && self.resolve(mb, *u) != Some(m)
                    {
                        retracts.push(*u);
                    }
                }
                let message = MessageId(self.unpack(m));
                let target = match best {
                    Some(b) if b == loc.uid => None,
                    Some(b) if b >= announced_me => Some(b),
                    _ => {
                        let mut r = retracts.drain(..);
                        follow.push(FollowUp::Claim {
                            mailbox: mb.id,
                            message,
                            uid: Some(0),
                            retract: r.next(),
                        });
                        retracts = r.collect();
                        if loc.uid != 0 {
                            moves.push((m, loc.uid, 0));
                        }
                        None
                    }
                };
                for r in retracts {
                    follow.push(FollowUp::Claim {
                        mailbox: mb.id,
                        message,
                        uid: None,
                        retract: Some(r),
                    });
                }
                if let Some(b) = target {
                    moves.push((m, loc.uid, b));
                }
            }
            // Unplace everything that moves first, so targets are free.
            let mb = &mut self.mailboxes[idx as usize];
            let mut slots = Vec::with_capacity(moves.len());
            for (m, from, to) in moves {
                let slot = mb.unplace(m, from).expect("slot of located message");
                slots.push((slot, to));
            }
            for (mut slot, to) in slots {
                if to == 0 {
                    self.messages.insert(
                        slot.id,
                        MsgLoc {
                            mailbox: idx,
                            uid: 0,
                        },
                    );
                    mb.unplaced.insert(slot.id, slot);
                    continue;
                }
                slot.claimant = mb.take_side(to, slot.id).expect("winning claim exists");
                slot.uid = to;
                let pos = mb.position(to).expect_err("resolved UID names one message");
                self.messages.insert(
                    slot.id,
                    MsgLoc {
                        mailbox: idx,
                        uid: to,
                    },
                );
                mb.slots.insert(pos, slot);
            }
        }
        for f in follow {
            let body = match f {
                FollowUp::Claim {
                    mailbox,
                    message,
                    uid,
                    retract,
                } => {
                    let uid = match uid {
                        Some(_) => Some(
                            self.next_uid(mailbox)
                                .map_err(|_| ApplyError::InvalidUid(message.0))?,
                        ),
                        None => None,
                    };
                    OpBody::Claim {
                        mailbox,
                        message,
                        uid,
                        retract,
                    }
                }
                FollowUp::Move { message, to } => {
                    let Some(body) = self.move_body(message, to) else {
                        continue;
                    };
                    body
                }
            };
            // A new claim is moot if an earlier follow-up already placed the
            // message (or moved or expunged it); its withdrawal still stands.
            let body = match body {
                OpBody::Claim {
                    mailbox,
                    message,
                    uid: Some(u),
                    retract,
                } => {
                    let placed = self
                        .lookup(message.0)
                        .and_then(|m| self.messages.get(&m))
                        .is_none_or(|loc| {
                            self.mailboxes[loc.mailbox as usize].id != mailbox || loc.uid != 0
                        });
                    match (placed, retract) {
                        (false, _) => OpBody::Claim {
                            mailbox,
                            message,
                            uid: Some(u),
                            retract,
                        },
                        (true, Some(r)) => OpBody::Claim {
                            mailbox,
                            message,
                            uid: None,
                            retract: Some(r),
                        },
                        (true, None) => continue,
                    }
                }
                other => other,
            };
            self.emit(body)?;
        }
        Ok(())
    }

    // ----------------------------------------------------------- local ops

    fn emit(&mut self, body: OpBody) -> Result<Dot, ApplyError> {
        let dot = Dot::new(self.me, self.counter + 1);
        let mut deps = Vec::new();
        for (r, c) in self.vv.iter() {
            if r != self.me && c > self.deps_base.get(r) {
                deps.push(Dot::new(r, c));
            }
        }
        for d in &deps {
            self.deps_base.observe(*d);
        }
        let op = Op { dot, deps, body };
        self.outbox.push(op.clone());
        self.apply(op)?;
        Ok(dot)
    }

    fn next_uid(&self, mailbox: MailboxId) -> Result<u32, LocalError> {
        let idx = self
            .mailbox_idx
            .get(&mailbox)
            .ok_or(LocalError::NoSuchMailbox(mailbox))?;
        let n = self.mailboxes[*idx as usize].uid_next;
        if n == u32::MAX {
            return Err(LocalError::UidsExhausted(mailbox));
        }
        Ok(n)
    }

    fn visible(&self, mailbox: MailboxId) -> bool {
        self.tree.by_name.values().any(|id| *id == mailbox)
    }

    /// The canonical mailbox for `mailbox` (itself unless merged by name).
    fn canonical(&self, mailbox: MailboxId) -> MailboxId {
        self.tree
            .merged_into
            .get(&mailbox)
            .copied()
            .unwrap_or(mailbox)
    }

    /// Appends a message (IMAP APPEND, LMTP delivery, import).
    pub fn append(
        &mut self,
        mailbox: MailboxId,
        blob: BlobId,
        size: u64,
        internal_date: i64,
        flags: Vec<Keyword>,
    ) -> Result<MessageId, LocalError> {
        let mailbox = self.canonical(mailbox);
        if !self.visible(mailbox) {
            return Err(LocalError::NoSuchMailbox(mailbox));
        }
        let uid = self.next_uid(mailbox)?;
        let dot = self.emit(OpBody::Append(Append {
            mailbox,
            blob,
            size,
            internal_date,
            uid,
            flags,
        }))?;
        Ok(MessageId(dot))
    }

    fn located(&self, message: MessageId) -> Result<(Packed, MsgLoc), LocalError> {
        let m = self
            .lookup(message.0)
            .ok_or(LocalError::NoSuchMessage(message))?;
        let loc = self
            .messages
            .get(&m)
            .copied()
            .ok_or(LocalError::NoSuchMessage(message))?;
        Ok((m, loc))
    }

    fn slot(&self, m: Packed, loc: MsgLoc) -> &Slot {
        let mb = &self.mailboxes[loc.mailbox as usize];
        match mb.position(loc.uid) {
            Ok(p) if loc.uid != 0 => &mb.slots[p],
            _ => &mb.unplaced[&m],
        }
    }

    /// Keywords of a message.
    pub fn flags(&self, message: MessageId) -> Result<BTreeSet<Keyword>, LocalError> {
        let (m, loc) = self.located(message)?;
        Ok(self
            .slot(m, loc)
            .flags
            .iter()
            .map(|e| self.keywords[e.kw as usize].clone())
            .collect())
    }

    /// `STORE +FLAGS/-FLAGS`: one op with the adds and the observed removes.
    /// Changes that change nothing are dropped (no op is made for them).
    pub fn store_flags(
        &mut self,
        message: MessageId,
        add: &[Keyword],
        remove: &[Keyword],
    ) -> Result<(), LocalError> {
        let (m, loc) = self.located(message)?;
        let slot = self.slot(m, loc);
        let present = |k: &Keyword| {
            self.keyword_idx
                .get(k)
                .is_some_and(|i| slot.flags.iter().any(|e| e.kw == *i))
        };
        let add: Vec<Keyword> = add
            .iter()
            .filter(|k| !present(k) && !remove.contains(k))
            .cloned()
            .collect();
        let mut removed = Vec::new();
        for k in remove {
            if let Some(i) = self.keyword_idx.get(k) {
                removed.extend(
                    slot.flags
                        .iter()
                        .filter(|e| e.kw == *i)
                        .map(|e| (k.clone(), self.unpack(e.dot()))),
                );
            }
        }
        if add.is_empty() && removed.is_empty() {
            return Ok(());
        }
        self.emit(OpBody::Flags {
            message,
            add,
            remove: removed,
        })?;
        Ok(())
    }

    fn move_body(&self, message: MessageId, to: MailboxId) -> Option<OpBody> {
        let (m, loc) = self.located(message).ok()?;
        if self.mailboxes[loc.mailbox as usize].id == to {
            return None;
        }
        let seq = (self.slot(m, loc).loc >> 16) as u32 + 1;
        let uid = self.next_uid(to).ok()?;
        Some(OpBody::Move {
            message,
            to,
            seq,
            uid,
        })
    }

    /// IMAP MOVE.
    pub fn move_message(&mut self, message: MessageId, to: MailboxId) -> Result<(), LocalError> {
        let to = self.canonical(to);
        if !self.visible(to) {
            return Err(LocalError::NoSuchMailbox(to));
        }
        self.mailbox(to);
        self.located(message)?;
        if let Some(body) = self.move_body(message, to) {
            self.emit(body)?;
        }
        Ok(())
    }

    /// IMAP COPY: a new instance with the source's keywords.
    pub fn copy_message(
        &mut self,
        message: MessageId,
        to: MailboxId,
    ) -> Result<MessageId, LocalError> {
        let to = self.canonical(to);
        if !self.visible(to) {
            return Err(LocalError::NoSuchMailbox(to));
        }
        self.mailbox(to);
        let flags = self.flags(message)?.into_iter().collect();
        let (m, _) = self.located(message)?;
        let env = self
            .envelopes
            .as_ref()
            .and_then(|e| e.get(&m).copied())
            .ok_or(LocalError::NoSuchMessage(message))?;
        let uid = self.next_uid(to)?;
        let append = Append {
            mailbox: to,
            blob: env.blob,
            size: env.size,
            internal_date: env.internal_date,
            uid,
            flags,
        };
        let dot = self.emit(OpBody::Copy {
            source: message,
            append,
        })?;
        Ok(MessageId(dot))
    }

    /// IMAP EXPUNGE of some messages. Unknown ids are refused.
    pub fn expunge(&mut self, messages: &[MessageId]) -> Result<(), LocalError> {
        for m in messages {
            self.located(*m)?;
        }
        if !messages.is_empty() {
            self.emit(OpBody::Expunge {
                messages: messages.to_vec(),
            })?;
        }
        Ok(())
    }

    /// A client was shown this mailbox's current state (SELECT, NOOP, IDLE
    /// update, STATUS UIDNEXT). Makes an op only if UIDNEXT moved since the
    /// last announce.
    pub fn announce(&mut self, mailbox: MailboxId) -> Result<(), LocalError> {
        let idx = *self
            .mailbox_idx
            .get(&mailbox)
            .ok_or(LocalError::NoSuchMailbox(mailbox))?;
        let mb = &self.mailboxes[idx as usize];
        let before = mb.announced.get(&0).copied().unwrap_or(1);
        if mb.uid_next <= before {
            return Ok(());
        }
        let start = mb.position(before).unwrap_or_else(|p| p);
        let mut pins = Vec::new();
        for s in &mb.slots[start..] {
            let key = ClaimKey {
                uid: s.uid,
                message: s.id,
                claimant: s.claimant,
            };
            let exposed = mb.pinned.contains(&key)
                || s.uid < mb.announced.get(&s.claimant).copied().unwrap_or(1);
            if s.claimant != 0 && !exposed {
                pins.push(Pin {
                    uid: s.uid,
                    message: MessageId(self.unpack(s.id)),
                    claimant: self.replica_ids[s.claimant as usize],
                });
            }
        }
        let uid_next = mb.uid_next;
        self.emit(OpBody::Announce {
            mailbox,
            uid_next,
            pins,
        })?;
        Ok(())
    }

    /// UIDNEXT of a mailbox as this replica would announce it.
    pub fn uid_next(&self, mailbox: MailboxId) -> Option<u32> {
        self.mailbox_idx
            .get(&mailbox)
            .map(|i| self.mailboxes[*i as usize].uid_next)
    }

    /// The UIDNEXT this replica last announced for a mailbox (1 if never).
    pub fn announced_uid_next(&self, mailbox: MailboxId) -> u32 {
        self.mailbox_idx
            .get(&mailbox)
            .and_then(|i| self.mailboxes[*i as usize].announced.get(&0).copied())
            .unwrap_or(1)
    }

    /// What a client of this replica sees in a mailbox, by UID.
    pub fn view(&self, mailbox: MailboxId) -> MailboxView {
        let Some(i) = self.mailbox_idx.get(&mailbox) else {
            return Vec::new();
        };
        let mb = &self.mailboxes[*i as usize];
        debug_assert!(
            mb.unplaced.is_empty(),
            "settled state has no unplaced message"
        );
        mb.slots
            .iter()
            .map(|s| {
                let kws = s
                    .flags
                    .iter()
                    .map(|e| self.keywords[e.kw as usize].clone())
                    .collect();
                (s.uid, MessageId(self.unpack(s.id)), kws)
            })
            .collect()
    }

    /// The UID a message shows in its mailbox, with the mailbox.
    pub fn uid_of(&self, message: MessageId) -> Option<(MailboxId, u32)> {
        let (_, loc) = self.located(message).ok()?;
        (loc.uid != 0).then(|| (self.mailboxes[loc.mailbox as usize].id, loc.uid))
    }

    /// Whether a message was expunged here.
    pub fn is_expunged(&self, message: MessageId) -> bool {
        self.lookup(message.0)
            .is_some_and(|m| self.tombstones.contains(&m))
    }

    /// Number of live messages.
    pub fn message_count(&self) -> usize {
        self.messages.len()
    }

    // ------------------------------------------------------------ mailboxes

    /// The mailbox tree clients see.
    pub fn tree(&self) -> &MailboxTree {
        &self.tree
    }

    /// Finds a visible mailbox by full name (`INBOX` case-insensitively).
    pub fn mailbox_by_name(&self, name: &str) -> Option<MailboxId> {
        if name.eq_ignore_ascii_case("INBOX") {
            return Some(INBOX);
        }
        self.tree.by_name.get(name).copied()
    }

    fn account_op(&mut self, change: Vec<u8>) -> Result<Dot, LocalError> {
        Ok(self.emit(OpBody::Account { change })?)
    }

    /// CREATE. The new mailbox's id is the dot of the op that creates it.
    pub fn create_mailbox(
        &mut self,
        name: &str,
        parent: Option<MailboxId>,
        special_use: Option<SpecialUse>,
    ) -> Result<MailboxId, LocalError> {
        let id = MailboxId(Dot::new(self.me, self.counter + 1));
        let change = self.account.create(id, name, parent, special_use)?;
        self.mailbox(id);
        let dot = self.account_op(change)?;
        debug_assert_eq!(dot, id.0);
        Ok(id)
    }

    /// RENAME (and re-parent).
    pub fn rename_mailbox(
        &mut self,
        id: MailboxId,
        name: &str,
        parent: Option<MailboxId>,
    ) -> Result<(), LocalError> {
        let change = self.account.rename(id, name, parent)?;
        self.account_op(change)?;
        Ok(())
    }

    /// SUBSCRIBE / UNSUBSCRIBE.
    pub fn subscribe(&mut self, id: MailboxId, on: bool) -> Result<(), LocalError> {
        let fresh = Dot::new(self.me, self.counter + 1);
        let change = self.account.set_subscribed(id, on, fresh)?;
        self.account_op(change)?;
        Ok(())
    }

    /// DELETE: expunges the messages this replica sees in it, then marks it
    /// deleted. Messages added concurrently elsewhere survive and keep the
    /// mailbox visible.
    pub fn delete_mailbox(&mut self, id: MailboxId) -> Result<(), LocalError> {
        let observed: Vec<MessageId> = self.view(id).into_iter().map(|(_, m, _)| m).collect();
        let fresh = Dot::new(self.me, self.counter + 1 + !observed.is_empty() as u64);
        let change = self.account.delete(id, fresh)?;
        self.expunge(&observed)?;
        self.account_op(change)?;
        Ok(())
    }

    /// A canonical text dump of everything a client can see: mailboxes by
    /// name with UIDVALIDITY and UIDNEXT, messages by UID with their id and
    /// keywords. Converged replicas give identical dumps.
    pub fn dump(&self) -> String {
        use std::fmt::Write;
        let mut out = String::new();
        for (name, id) in &self.tree.by_name {
            let e = &self.tree.entries[id];
            let _ = writeln!(
                out,
                "mailbox {name:?} uidvalidity={} uidnext={} subscribed={} special={:?}",
                id.uid_validity(),
                self.uid_next(*id).unwrap_or(1),
                e.subscribed,
                e.special_use
            );
            for (uid, m, kws) in self.view(*id) {
                let kws: Vec<String> = kws.iter().map(|k| k.to_string()).collect();
                let _ = writeln!(out, "  {uid} {:?} ({})", m.0, kws.join(" "));
            }
        }
        out
    }
}
