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
//! Per-message state lives behind a [`Backend`] (memory here, redb in the
//! store); the small rest — version vector, interning tables, mailbox
//! counters, account document, ops waiting for their causal past — lives here
//! and is saved with [`Replica::header`] and [`Replica::save_account`].

use crate::account::{AccountDoc, AccountError, MailboxTree, SpecialUse, INBOX};
use crate::backend::{
    Backend, Claim, ClaimKey, Envelope, FlagEntry, FlagSet, MemBackend, MsgLoc, Packed, Slot, StateReads, StorageError,
};
use crate::causal::{blocker, CausalBuffer};
use crate::ids::{BlobId, Dot, MailboxId, MessageId, ReplicaId, VersionVector, COUNTER_MAX};
use crate::keyword::Keyword;
use crate::op::{Append, Op, OpBody, Pin};
use crate::snapshot::{InstallError, StateSnapshot};
use serde::{Deserialize, Serialize};
use smallvec::SmallVec;
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet, VecDeque};

mod state;
pub use crate::snapshot::PART_BYTES;
pub use state::{ExportView, Import};

/// Most ops held back waiting for their causal past. Past it, [`Replica::apply`]
/// refuses ops and the peer must catch up by state.
pub const PENDING_MAX: usize = 100_000;

/// Most new UID claims settling makes for one message while applying one op
/// and what it sets off. One is the rule's need (a fresh claim sits above
/// every claim this replica knows, so it is the message's best); past this
/// the UID rule is looping, and [`Replica::apply`] fails instead of spinning.
pub const CLAIMS_PER_CASCADE_MAX: u8 = 8;

/// Most announce ops one [`Replica::announce`] makes: each can place
/// messages at or above the UIDNEXT it announced, which the next one
/// covers. The rule needs two; past the bound the announce fails rather
/// than spin, like a cascade ([`CLAIMS_PER_CASCADE_MAX`]).
pub const ANNOUNCE_ROUNDS_MAX: usize = 8;

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
    /// Settling one op claimed a UID for one message too often: a livelock
    /// in the UID rule (a bug), stopped instead of spinning.
    #[error("settling claimed a UID for {0:?} more than {CLAIMS_PER_CASCADE_MAX} times in one cascade")]
    Cascade(MessageId),
    /// A mailbox's UID space is used up.
    #[error("UID space of {0:?} exhausted")]
    UidsExhausted(MailboxId),
    /// A malformed account-document change.
    #[error(transparent)]
    Account(#[from] AccountError),
    /// The backend failed; the caller must abandon the transaction.
    #[error(transparent)]
    Storage(#[from] StorageError),
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
    /// Account document refused the change.
    #[error(transparent)]
    Account(#[from] AccountError),
    /// Applying the op failed.
    #[error(transparent)]
    Apply(#[from] ApplyError),
    /// An announce still left messages at or above the UIDNEXT it announced
    /// after [`ANNOUNCE_ROUNDS_MAX`] rounds (a livelock in the UID rule).
    #[error("announcing {0:?} still left messages above its UIDNEXT after {ANNOUNCE_ROUNDS_MAX} rounds")]
    AnnounceRounds(MailboxId),
}

impl From<StorageError> for LocalError {
    fn from(e: StorageError) -> Self {
        LocalError::Apply(ApplyError::Storage(e))
    }
}

/// Why a saved replica could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    /// The header is not one this code wrote.
    #[error("replica header unreadable: {0}")]
    Header(String),
    /// The header names another replica.
    #[error("header is of replica {found:?}, expected {expected:?}")]
    WrongReplica {
        /// Asked for.
        expected: ReplicaId,
        /// Found.
        found: ReplicaId,
    },
    /// The account document is unreadable.
    #[error(transparent)]
    Account(#[from] AccountError),
}

fn pack(idx: u16, counter: u64) -> Packed {
    ((idx as u64) << 48) | counter
}

fn packed_idx(p: Packed) -> u16 {
    (p >> 48) as u16
}

/// A packed id as a dot, with the replica table that interned it.
fn unpack_with(replica_ids: &[ReplicaId], p: Packed) -> Dot {
    Dot::new(replica_ids[packed_idx(p) as usize], p & COUNTER_MAX)
}

/// Small per-mailbox state, kept in memory.
#[derive(Clone, Debug, Serialize, Deserialize)]
struct MailboxMeta {
    id: MailboxId,
    /// 1 + the highest UID ever claimed or announced here.
    uid_next: u32,
    /// Per replica, the highest UIDNEXT it announced (its claims below are exposed).
    announced: BTreeMap<u16, u32>,
    /// Messages that arrived or lost their UID, until settled (never saved:
    /// every apply ends with nothing unplaced).
    #[serde(skip)]
    unplaced: HashMap<Packed, Slot>,
}

/// What [`Replica::header`] saves.
#[derive(Serialize, Deserialize)]
struct Header {
    version: u8,
    me: ReplicaId,
    counter: u64,
    vv: VersionVector,
    deps_base: VersionVector,
    replica_ids: Vec<ReplicaId>,
    keywords: Vec<Keyword>,
    mailboxes: Vec<MailboxMeta>,
    pending: Vec<Op>,
    /// Deleted mailboxes shown because they hold messages (the tree is
    /// rebuilt from this on open, without reading per-message state).
    occupied_deleted: Vec<MailboxId>,
}

const HEADER_VERSION: u8 = 1;

/// The small tables a reader needs to turn stored rows into ids and
/// keywords, copied out of a replica.
#[derive(Clone, Debug)]
pub struct Names {
    /// Replica ids by interned index.
    pub replica_ids: Vec<ReplicaId>,
    /// Keywords by interned index.
    pub keywords: Vec<Keyword>,
    /// Mailboxes by index, with their UIDNEXT.
    pub mailboxes: Vec<(MailboxId, u32)>,
    /// The tree clients see.
    pub tree: MailboxTree,
}

impl Names {
    /// A packed id as a message id.
    pub fn message(&self, p: Packed) -> MessageId {
        MessageId(unpack_with(&self.replica_ids, p))
    }
    /// Index of a mailbox.
    pub fn mailbox_index(&self, id: MailboxId) -> Option<u32> {
        self.mailboxes.iter().position(|(m, _)| *m == id).map(|i| i as u32)
    }
    /// Packed form of a message id.
    pub fn packed(&self, m: MessageId) -> Option<Packed> {
        let i = self.replica_ids.iter().position(|r| *r == m.0.replica)?;
        Some(pack(i as u16, m.0.counter))
    }
}

/// An op as applied, with the mailboxes whose state it touched (what a
/// partial peer subscribed to those mailboxes needs).
#[derive(Clone, Debug)]
pub struct AppliedOp {
    /// The op.
    pub op: Op,
    /// Mailboxes it touched; empty for account-document changes.
    pub mailboxes: SmallVec<[MailboxId; 2]>,
}

/// What one replica shows for a mailbox: `(uid, message, keywords)` by UID.
pub type MailboxView = Vec<(u32, MessageId, BTreeSet<Keyword>)>;

/// Options for an in-memory replica.
#[derive(Clone, Copy, Debug)]
pub struct ReplicaOptions {
    /// Keep blob id, size and date of each message in memory (COPY needs
    /// them). The memory benchmark turns this off to measure the CRDT alone.
    pub keep_envelopes: bool,
    /// Spend the UIDs of shown expunged messages and drop their claims
    /// (`bury`). Off only to check that it changes nothing a client sees.
    pub bury: bool,
    /// Also drop the withdrawn, unpinned claims of expunged messages, a
    /// later pin of one spending its UID (`drop_withdrawn`; only with
    /// `bury`). Off only to check that it changes nothing a client sees.
    pub drop_withdrawn: bool,
}

impl Default for ReplicaOptions {
    fn default() -> Self {
        ReplicaOptions { keep_envelopes: true, bury: true, drop_withdrawn: true }
    }
}

/// A follow-up decided while settling, turned into an op afterwards.
#[derive(Debug)]
enum FollowUp {
    /// A claim (`uid: Some(0)` is a fresh one at UIDNEXT, decided when it is
    /// made; `forced`: one U1 forces, `OpBody::Forced`) and/or a withdrawal.
    Claim {
        mailbox: MailboxId,
        message: MessageId,
        uid: Option<u32>,
        retract: Option<u32>,
        forced: bool,
    },
    Move {
        message: MessageId,
        to: MailboxId,
    },
}

/// A decision already queued in a cascade (see [`Replica::apply`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum Queued {
    /// A new claim for a message in a mailbox (by index).
    Claim(u32, Packed),
    /// A move of a message out of a merged mailbox.
    Move(Packed),
    /// Every message of a merged mailbox (by index) has a move queued.
    Merged(u32),
}

/// Mailboxes, UIDs and messages an op touched, to settle afterwards.
type Dirty = BTreeMap<u32, (BTreeSet<u32>, BTreeSet<Packed>)>;

/// One replica of one account.
pub struct Replica<B: Backend = MemBackend> {
    me: ReplicaId,
    counter: u64,
    vv: VersionVector,
    /// `vv` as of this replica's last op: what the next op's deps are relative to.
    deps_base: VersionVector,
    replica_ids: Vec<ReplicaId>,
    replica_idx: HashMap<ReplicaId, u16>,
    keywords: Vec<Keyword>,
    keyword_idx: HashMap<Keyword, u32>,
    mailboxes: Vec<MailboxMeta>,
    mailbox_idx: HashMap<MailboxId, u32>,
    account: AccountDoc,
    account_dirty: bool,
    tree: MailboxTree,
    pending: CausalBuffer,
    /// Ops released from the buffer, to apply next (empty between calls).
    ready: VecDeque<Op>,
    /// Follow-ups decided by settling, to turn into ops (empty between calls).
    followups: VecDeque<FollowUp>,
    /// What `followups` holds, so that a cascade queues each decision once.
    queued: HashSet<Queued>,
    /// Claims in `queued`, per mailbox index.
    claims_queued: HashMap<u32, usize>,
    /// The queued claim being applied now (taken off `queued` so that its
    /// message is settled), by mailbox index and message.
    claiming: Option<(u32, Packed)>,
    /// New claims per message in the current cascade ([`CLAIMS_PER_CASCADE_MAX`]).
    cascade: HashMap<Packed, u8>,
    outbox: Vec<Op>,
    /// Ops applied since the last [`Replica::take_applied`], when recording.
    applied: Option<Vec<AppliedOp>>,
    /// [`ReplicaOptions::bury`].
    bury: bool,
    /// [`ReplicaOptions::drop_withdrawn`] (and `bury`).
    drop_withdrawn: bool,
    backend: B,
}

impl<B: Backend> std::fmt::Debug for Replica<B> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Replica").field("me", &self.me).field("vv", &self.vv).finish_non_exhaustive()
    }
}

impl Replica<MemBackend> {
    /// A fresh in-memory replica.
    pub fn new(me: ReplicaId) -> Self {
        Self::with_options(me, ReplicaOptions::default())
    }

    /// A fresh in-memory replica with options.
    pub fn with_options(me: ReplicaId, options: ReplicaOptions) -> Self {
        let mut r = Replica::create(me, MemBackend::new(options.keep_envelopes));
        r.bury = options.bury;
        r.drop_withdrawn = options.bury && options.drop_withdrawn;
        r
    }
}

impl<B: Backend> Replica<B> {
    /// A fresh replica over an empty backend.
    pub fn create(me: ReplicaId, backend: B) -> Self {
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
            mailboxes: Vec::new(),
            mailbox_idx: HashMap::new(),
            account,
            account_dirty: true,
            tree,
            pending: CausalBuffer::default(),
            ready: VecDeque::new(),
            followups: VecDeque::new(),
            queued: HashSet::new(),
            claims_queued: HashMap::new(),
            claiming: None,
            cascade: HashMap::new(),
            outbox: Vec::new(),
            applied: None,
            bury: true,
            drop_withdrawn: true,
            backend,
        };
        r.intern(me).expect("first replica");
        r.mailbox(INBOX);
        r
    }

    /// Reopens a replica from a saved header and account document over the
    /// backend that holds its per-message state.
    pub fn open(me: ReplicaId, backend: B, header: &[u8], account: &[u8]) -> Result<Self, OpenError> {
        let h: Header = postcard::from_bytes(header).map_err(|e| OpenError::Header(e.to_string()))?;
        if h.version != HEADER_VERSION {
            return Err(OpenError::Header(format!("unknown header version {}", h.version)));
        }
        if h.me != me {
            return Err(OpenError::WrongReplica { expected: me, found: h.me });
        }
        let account = AccountDoc::load(me, account)?;
        let mut r = Replica::create(me, backend);
        r.account = account;
        r.account_dirty = false;
        r.counter = h.counter;
        r.vv = h.vv;
        r.deps_base = h.deps_base;
        r.replica_idx = h.replica_ids.iter().enumerate().map(|(i, id)| (*id, i as u16)).collect();
        r.replica_ids = h.replica_ids;
        r.keyword_idx = h.keywords.iter().enumerate().map(|(i, k)| (k.clone(), i as u32)).collect();
        r.keywords = h.keywords;
        r.mailbox_idx = h.mailboxes.iter().enumerate().map(|(i, m)| (m.id, i as u32)).collect();
        r.mailboxes = h.mailboxes;
        let (pending, ready) = CausalBuffer::rebuild(h.pending, &r.vv);
        r.pending = pending;
        r.ready = ready.into();
        let occupied: HashSet<MailboxId> = h.occupied_deleted.into_iter().collect();
        r.tree = r.account.tree(|id| occupied.contains(&id));
        Ok(r)
    }

    /// The small state, for the store to save with each commit.
    pub fn header(&self) -> Vec<u8> {
        let h = Header {
            version: HEADER_VERSION,
            me: self.me,
            counter: self.counter,
            vv: self.vv.clone(),
            deps_base: self.deps_base.clone(),
            replica_ids: self.replica_ids.clone(),
            keywords: self.keywords.clone(),
            mailboxes: self.mailboxes.clone(),
            pending: self.pending.ops().chain(&self.ready).cloned().collect(),
            occupied_deleted: self
                .tree
                .entries
                .values()
                .filter(|e| {
                    e.deleted
                        && (self.tree.by_name.values().any(|id| *id == e.id)
                            || self.tree.merged_into.contains_key(&e.id))
                })
                .map(|e| e.id)
                .collect(),
        };
        postcard::to_stdvec(&h).expect("in-memory encoding")
    }

    /// Whether the account document changed since it was last saved.
    pub fn account_changed(&self) -> bool {
        self.account_dirty
    }

    /// The account document, saved; clears [`Self::account_changed`].
    pub fn save_account(&mut self) -> Vec<u8> {
        self.account_dirty = false;
        self.account.save()
    }

    /// The backend (for reads the model does not offer).
    pub fn backend(&self) -> &B {
        &self.backend
    }

    /// The backend, mutably: for the store to swap the transaction under it.
    pub fn backend_mut(&mut self) -> &mut B {
        &mut self.backend
    }

    /// Gives up the replica, keeping its backend (to reopen it, in tests).
    pub fn into_backend(self) -> B {
        self.backend
    }

    /// Moves this replica's state onto another backend, returning the old one.
    /// The store runs each write transaction on a backend borrowed from it.
    pub fn swap_backend<C: Backend>(self, backend: C) -> (Replica<C>, B) {
        let Replica {
            me,
            counter,
            vv,
            deps_base,
            replica_ids,
            replica_idx,
            keywords,
            keyword_idx,
            mailboxes,
            mailbox_idx,
            account,
            account_dirty,
            tree,
            pending,
            ready,
            followups,
            queued,
            claims_queued,
            claiming,
            cascade,
            outbox,
            applied,
            bury,
            drop_withdrawn,
            backend: old,
        } = self;
        let r = Replica {
            me,
            counter,
            vv,
            deps_base,
            replica_ids,
            replica_idx,
            keywords,
            keyword_idx,
            mailboxes,
            mailbox_idx,
            account,
            account_dirty,
            tree,
            pending,
            ready,
            followups,
            queued,
            claims_queued,
            claiming,
            cascade,
            outbox,
            applied,
            bury,
            drop_withdrawn,
            backend,
        };
        (r, old)
    }

    /// A copy of the small tables, for readers.
    pub fn names(&self) -> Names {
        Names {
            replica_ids: self.replica_ids.clone(),
            keywords: self.keywords.clone(),
            mailboxes: self.mailboxes.iter().map(|m| (m.id, m.uid_next)).collect(),
            tree: self.tree.clone(),
        }
    }

    /// The replicated state as a portable snapshot (see [`crate::snapshot`]),
    /// collected in one value ([`Replica::export_view`] streams it).
    /// Ops waiting for their causal past are not part of it.
    pub fn export_state(&mut self) -> Result<StateSnapshot, StorageError> {
        let view = self.export_view();
        let mut parts = Vec::new();
        view.parts(&self.backend, usize::MAX, |p| {
            parts.push(p);
            Ok::<(), StorageError>(())
        })?;
        Ok(StateSnapshot::from_parts(view.head().clone(), parts).expect("parts made here begin with a mailbox"))
    }

    /// Installs a snapshot collected in one value: [`Replica::import_begin`]
    /// with its parts.
    pub fn import_state(&mut self, snapshot: StateSnapshot) -> Result<(), InstallError> {
        let (head, parts) = snapshot.into_parts(usize::MAX);
        let mut import = self.import_begin(head)?;
        for part in parts {
            self.import_part(&mut import, part)?;
        }
        self.import_end(import)
    }

    /// Starts recording every op applied (for the store's op log).
    pub fn record_applied(&mut self) {
        self.applied.get_or_insert_with(Vec::new);
    }

    /// Ops applied since the last call, in the order applied (causal order).
    pub fn take_applied(&mut self) -> Vec<AppliedOp> {
        self.applied.as_mut().map(std::mem::take).unwrap_or_default()
    }

    /// Unpacks a packed message id of this replica's tables.
    pub fn message_id(&self, packed: Packed) -> MessageId {
        MessageId(self.unpack(packed))
    }

    /// The packed form of a message id, if this replica has interned its replica.
    pub fn packed_message(&self, message: MessageId) -> Option<Packed> {
        self.lookup(message.0)
    }

    /// The mailbox id at an index of this replica's mailbox table.
    pub fn mailbox_at(&self, index: u32) -> Option<MailboxId> {
        self.mailboxes.get(index as usize).map(|m| m.id)
    }

    /// Keyword at an index of this replica's keyword table.
    pub fn keyword_at(&self, index: u32) -> Option<&Keyword> {
        self.keywords.get(index as usize)
    }

    /// The index of a keyword, if interned.
    pub fn keyword_index(&self, k: &Keyword) -> Option<u32> {
        self.keyword_idx.get(k).copied()
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
        self.pending.len() + self.ready.len()
    }

    /// Whether this replica made ops since the last [`Self::take_outbox`].
    pub fn has_outbox(&self) -> bool {
        !self.outbox.is_empty()
    }

    /// The account's incarnation (0 if none): see [`AccountDoc::set_incarnation`].
    pub fn incarnation(&self) -> u64 {
        self.tree.incarnation
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
        unpack_with(&self.replica_ids, p)
    }

    /// Whether a message was expunged here: its append (the op it is named
    /// by) is within this replica's version, and it is not live. Every op
    /// that names a message was made by a replica that held it, so it comes
    /// after the append causally, and the causal buffer applies it after
    /// the append: at that point "not live" can only mean "expunged". That
    /// is why an expunge keeps no row of its own (a tombstone), and why
    /// nothing of it needs collecting (`docs/semantics.md`, "Expunged
    /// messages"). An id beyond the version names no message yet (a
    /// malformed op): not expunged, as an unknown id was before.
    fn expunged(&self, m: Packed) -> Result<bool, StorageError> {
        let d = self.unpack(m);
        let loc = self.backend.loc(m)?;
        if crate::mutation::active(crate::mutation::Mutation::ExpungedWhileUnplaced) {
            return Ok(d.counter <= self.vv.get(d.replica) && loc.is_none_or(|l| l.uid == 0));
        }
        Ok(d.counter <= self.vv.get(d.replica) && loc.is_none())
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
        self.mailboxes.push(MailboxMeta { id, uid_next: 1, announced: BTreeMap::new(), unplaced: HashMap::new() });
        self.mailbox_idx.insert(id, i);
        i
    }

    /// The mailbox index of `id`, if this replica knows it.
    pub fn mailbox_index(&self, id: MailboxId) -> Option<u32> {
        self.mailbox_idx.get(&id).copied()
    }

    fn announced(&self, mb: u32, replica: u16) -> u32 {
        self.mailboxes[mb as usize].announced.get(&replica).copied().unwrap_or(1)
    }

    /// A message's slot, placed or not.
    fn get_slot(&self, m: Packed, loc: MsgLoc) -> Result<Option<Slot>, StorageError> {
        if loc.uid == 0 {
            return Ok(self.mailboxes[loc.mailbox as usize].unplaced.get(&m).cloned());
        }
        self.backend.slot(loc.mailbox, loc.uid)
    }

    /// Takes a message out of its place; its primary claim stays on record.
    fn unplace(&mut self, mb: u32, m: Packed, uid: u32) -> Result<Option<Slot>, StorageError> {
        if let Some(s) = self.mailboxes[mb as usize].unplaced.remove(&m) {
            return Ok(Some(s));
        }
        let Some(slot) = self.backend.remove_slot(mb, uid)? else {
            return Ok(None);
        };
        debug_assert_eq!(slot.id, m);
        self.backend.add_side(mb, slot.uid, Claim { message: m, claimant: slot.claimant })?;
        Ok(Some(slot))
    }

    // ---------------------------------------------------------------- apply

    /// Applies an op from anywhere. An op already applied is ignored; one whose
    /// causal past is incomplete waits and is applied when it completes. Ops
    /// created while settling are applied too and queued in the outbox.
    ///
    /// On `Err(Storage)` the in-memory part may be ahead of the backend: the
    /// caller must drop this replica and reopen it from what was committed.
    pub fn apply(&mut self, op: Op) -> Result<(), ApplyError> {
        assert!(self.followups.is_empty(), "apply is not re-entered");
        if self.vv.contains(op.dot) || self.pending.contains(op.dot) {
            return Ok(());
        }
        if op.dot.counter == 0 || op.dot.counter > COUNTER_MAX {
            return Err(ApplyError::CounterOutOfRange(op.dot));
        }
        if let Some(missing) = blocker(&self.vv, &op) {
            if self.pending.len() >= PENDING_MAX {
                return Err(ApplyError::PendingFull);
            }
            self.pending.insert(op, missing);
            // Ops found ready when the replica was opened go now.
            return if self.ready.is_empty() { Ok(()) } else { self.drain() };
        }
        let result = self.apply_ready(op).and_then(|()| self.drain());
        if result.is_err() {
            // The caller drops or reloads the replica; leave no work behind.
            self.followups.clear();
            self.queued.clear();
            self.claims_queued.clear();
            self.cascade.clear();
            self.ready.clear();
        }
        result
    }

    /// Works through what applying an op set off, without recursion: the
    /// follow-ups settling decided (each becomes an op of this replica,
    /// applied and settled in turn), then the waiting ops it released. Each
    /// step runs at the same stack depth, however many messages a heal
    /// renumbers or however many ops one op releases.
    fn drain(&mut self) -> Result<(), ApplyError> {
        loop {
            if let Some(f) = self.followups.pop_front() {
                match &f {
                    FollowUp::Claim { mailbox, message, uid: Some(_), .. } => {
                        let m = self.lookup(message.0).expect("queued message is interned");
                        let idx = self.mailbox(*mailbox);
                        if self.queued.remove(&Queued::Claim(idx, m)) {
                            *self.claims_queued.get_mut(&idx).expect("counted") -= 1;
                            self.claiming = Some((idx, m));
                        }
                        let n = self.cascade.entry(m).or_default();
                        *n += 1;
                        if *n > CLAIMS_PER_CASCADE_MAX {
                            return Err(ApplyError::Cascade(*message));
                        }
                    }
                    FollowUp::Move { message, .. } => {
                        let m = self.lookup(message.0).expect("queued message is interned");
                        self.queued.remove(&Queued::Move(m));
                    }
                    FollowUp::Claim { .. } => {}
                }
                let applied = match self.followup_body(f) {
                    Ok(Some(body)) => {
                        let op = self.new_op(body);
                        self.apply_ready(op)
                    }
                    Ok(None) => Ok(()),
                    Err(e) => Err(e),
                };
                self.claiming = None;
                applied?;
                continue;
            }
            if self.followups.is_empty() {
                self.queued.clear();
                self.claims_queued.clear();
                self.cascade.clear();
            }
            match self.ready.pop_front() {
                // Already applied (it also came again after the replica was opened).
                Some(op) if self.vv.contains(op.dot) => {}
                Some(op) => self.apply_ready(op)?,
                None => return Ok(()),
            }
        }
    }

    fn apply_ready(&mut self, op: Op) -> Result<(), ApplyError> {
        assert!(blocker(&self.vv, &op).is_none(), "op applied before its causal past");
        let mut dirty = Dirty::new();
        self.apply_body(&op, &mut dirty)?;
        // A deleted mailbox is visible exactly while it holds messages.
        let deleted_touched = dirty.keys().any(|i| {
            let id = self.mailboxes[*i as usize].id;
            self.tree.entries.get(&id).is_some_and(|e| e.deleted)
        });
        if deleted_touched {
            self.refresh_tree(&mut dirty)?;
        }
        self.vv.observe(op.dot);
        if op.dot.replica == self.me {
            self.counter = self.counter.max(op.dot.counter);
        }
        if !self.pending.is_empty() {
            let released = self.pending.release(op.dot, &self.vv);
            self.ready.extend(released);
        }
        if let Some(applied) = &mut self.applied {
            let mailboxes = dirty.keys().map(|i| self.mailboxes[*i as usize].id).collect();
            applied.push(AppliedOp { op, mailboxes });
        }
        self.settle(dirty)
    }

    fn apply_body(&mut self, op: &Op, dirty: &mut Dirty) -> Result<(), ApplyError> {
        let author = self.intern(op.dot.replica)?;
        let op_dot = self.packed(op.dot)?;
        match &op.body {
            OpBody::Append(a) => self.apply_new_message(op, op_dot, author, a, dirty)?,
            OpBody::Copy { append, .. } => self.apply_new_message(op, op_dot, author, append, dirty)?,
            OpBody::Flags { message, add, remove } => {
                let Some(m) = self.lookup(message.0) else {
                    return Ok(());
                };
                let Some(loc) = self.backend.loc(m)? else {
                    return Ok(());
                };
                let add: Vec<u32> = add.iter().map(|k| self.keyword(k)).collect();
                let remove: Vec<(u32, Packed)> =
                    remove.iter().filter_map(|(k, d)| Some((*self.keyword_idx.get(k)?, self.lookup(*d)?))).collect();
                let Some(mut slot) = self.get_slot(m, loc)? else {
                    return Ok(());
                };
                let before = slot.flags.clone();
                if crate::mutation::active(crate::mutation::Mutation::RemoveWins) {
                    slot.flags.retain(|e| !remove.iter().any(|(k, _)| *k == e.kw));
                } else {
                    slot.flags.retain(|e| !remove.contains(&(e.kw, e.dot())));
                }
                for kw in add {
                    if !slot.flags.iter().any(|e| e.kw == kw && e.dot() == op_dot) {
                        slot.flags.push(FlagEntry::new(kw, op_dot));
                    }
                }
                dirty.entry(loc.mailbox).or_default();
                if slot.flags == before {
                    return Ok(());
                }
                if loc.uid == 0 {
                    self.mailboxes[loc.mailbox as usize].unplaced.insert(m, slot);
                } else {
                    self.backend.update_slot(loc.mailbox, &slot)?;
                }
            }
            OpBody::Move { message, to, seq, uid } => {
                if *uid == 0 {
                    return Err(ApplyError::InvalidUid(op.dot));
                }
                let m = self.packed(message.0)?;
                let to_idx = self.mailbox(*to);
                self.note_claim(to_idx, *uid, m, author, dirty)?;
                let Some(loc) = self.backend.loc(m)? else {
                    return Ok(());
                };
                let Some(current) = self.get_slot(m, loc)?.map(|s| s.loc) else {
                    return Ok(());
                };
                let new_loc = ((*seq as u64) << 16) | author as u64;
                let by_arrival = crate::mutation::active(crate::mutation::Mutation::MoveByArrival);
                if self.loc_key(new_loc) <= self.loc_key(current) && !by_arrival {
                    return Ok(());
                }
                let mut slot = self.unplace(loc.mailbox, m, loc.uid)?.expect("located slot");
                slot.loc = new_loc;
                slot.uid = 0;
                dirty.entry(loc.mailbox).or_default();
                self.mailboxes[to_idx as usize].unplaced.insert(m, slot);
                self.backend.set_loc(m, MsgLoc { mailbox: to_idx, uid: 0 })?;
                dirty.entry(to_idx).or_default().1.insert(m);
            }
            OpBody::Expunge { messages } => {
                for message in messages {
                    let m = self.packed(message.0)?;
                    // Leaving its place is all an expunge records: from
                    // now on the message is `expunged`.
                    if let Some(loc) = self.backend.loc(m)? {
                        self.unplace(loc.mailbox, m, loc.uid)?;
                        self.backend.remove_loc(m)?;
                        let d = dirty.entry(loc.mailbox).or_default();
                        // Its shown claims spend their UIDs now (its claims
                        // in mailboxes it left stay).
                        // Its claims there that were withdrawn and not
                        // pinned go too (see `drop_withdrawn`).
                        for u in self.backend.side_uids_of(loc.mailbox, m)? {
                            if self.bury(loc.mailbox, u, false)? {
                                d.0.insert(u);
                            } else {
                                self.drop_withdrawn(loc.mailbox, u, m)?;
                            }
                        }
                    }
                    self.backend.remove_envelope(m)?;
                }
            }
            OpBody::Claim { mailbox, message, uid, retract } => {
                self.apply_claim(op.dot, author, *mailbox, *message, (*uid, false), *retract, dirty)?
            }
            OpBody::Forced { mailbox, message, uid, retract } => {
                self.apply_claim(op.dot, author, *mailbox, *message, (Some(*uid), true), *retract, dirty)?
            }
            OpBody::Announce { mailbox, uid_next, pins } => {
                let idx = self.mailbox(*mailbox);
                let mut keys = Vec::with_capacity(pins.len());
                for p in pins {
                    let message = self.packed(p.message.0)?;
                    keys.push(ClaimKey { uid: p.uid, message, claimant: self.intern(p.claimant)? });
                }
                let before = self.announced(idx, author);
                let mut shown = Vec::new();
                if *uid_next > before {
                    self.mailboxes[idx as usize].announced.insert(author, *uid_next);
                    // Exposure only matters where claims compete, i.e. at side claims.
                    shown = self.backend.side_uids_in(idx, before, *uid_next)?;
                    dirty.entry(idx).or_default().0.extend(shown.iter().copied());
                }
                let meta = &mut self.mailboxes[idx as usize];
                meta.uid_next = meta.uid_next.max(*uid_next);
                let mut spend = Vec::new();
                for k in keys {
                    dirty.entry(idx).or_default().0.insert(k.uid);
                    if self.expunged(k.message)? {
                        // A pin of a buried claim (its UID spent) would be
                        // kept for nothing.
                        if self.backend.is_dead(idx, k.uid)? {
                            continue;
                        }
                        // Pin-spends: a pin of a claim of an expunged
                        // message that is no longer held (dropped withdrawn,
                        // `drop_withdrawn`) spends its UID, as burying the
                        // pinned claim would have.
                        if self.drop_withdrawn
                            && !self.holds(idx, k)?
                            && !crate::mutation::active(crate::mutation::Mutation::PinSpendsIgnored)
                        {
                            spend.push(k.uid);
                            continue;
                        }
                    }
                    self.backend.add_pinned(idx, k)?;
                    shown.push(k.uid);
                }
                // Claims of expunged messages shown now spend their UIDs.
                for u in shown {
                    self.bury(idx, u, false)?;
                }
                for u in spend {
                    self.bury(idx, u, true)?;
                }
            }
            OpBody::Account { change } => {
                self.account.apply_change(change)?;
                self.account_dirty = true;
                self.refresh_tree(dirty)?;
            }
        }
        Ok(())
    }

    /// A claim (`forced`: one U1 forced on its author) and/or a withdrawal.
    #[allow(clippy::too_many_arguments)]
    fn apply_claim(
        &mut self,
        dot: Dot,
        author: u16,
        mailbox: MailboxId,
        message: MessageId,
        (uid, forced): (Option<u32>, bool),
        retract: Option<u32>,
        dirty: &mut Dirty,
    ) -> Result<(), ApplyError> {
        let m = self.packed(message.0)?;
        let idx = self.mailbox(mailbox);
        if let Some(u) = uid {
            if u == 0 {
                return Err(ApplyError::InvalidUid(dot));
            }
            if forced {
                self.backend.add_forced(idx, ClaimKey { uid: u, message: m, claimant: author })?;
            }
            self.note_claim(idx, u, m, author, dirty)?;
        }
        if let Some(r) = retract {
            let key = ClaimKey { uid: r, message: m, claimant: author };
            dirty.entry(idx).or_default().0.insert(r);
            let expunged = self.expunged(m)?;
            // A withdrawal of a buried claim (a pin of it arrived first)
            // would be kept for nothing: its UID is spent.
            if self.drop_withdrawn && expunged && self.backend.is_dead(idx, r)? && !self.holds(idx, key)? {
                return Ok(());
            }
            self.backend.add_retracted(idx, key)?;
            if expunged || crate::mutation::active(crate::mutation::Mutation::DropLive) {
                self.drop_withdrawn(idx, r, m)?;
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
        dirty: &mut Dirty,
    ) -> Result<(), ApplyError> {
        if a.uid == 0 {
            return Err(ApplyError::InvalidUid(op.dot));
        }
        let idx = self.mailbox(a.mailbox);
        self.note_claim(idx, a.uid, m, author, dirty)?;
        let flags = a.flags.iter().map(|k| FlagEntry::new(self.keyword(k), m)).collect();
        let slot = Slot { id: m, loc: author as u64, uid: 0, claimant: author, flags };
        self.mailboxes[idx as usize].unplaced.insert(m, slot);
        self.backend.set_loc(m, MsgLoc { mailbox: idx, uid: 0 })?;
        self.backend.set_envelope(m, Envelope { blob: a.blob, size: a.size, internal_date: a.internal_date })?;
        dirty.entry(idx).or_default().1.insert(m);
        Ok(())
    }

    fn note_claim(
        &mut self,
        mailbox: u32,
        uid: u32,
        message: Packed,
        claimant: u16,
        dirty: &mut Dirty,
    ) -> Result<(), StorageError> {
        self.backend.add_side(mailbox, uid, Claim { message, claimant })?;
        let meta = &mut self.mailboxes[mailbox as usize];
        meta.uid_next = meta.uid_next.max(uid.saturating_add(1));
        dirty.entry(mailbox).or_default().0.insert(uid);
        Ok(())
    }

    /// Orders location versions: move sequence, then the mover's replica id.
    fn loc_key(&self, loc: u64) -> (u64, ReplicaId) {
        (loc >> 16, self.replica_ids[(loc & 0xffff) as usize])
    }

    fn refresh_tree(&mut self, dirty: &mut Dirty) -> Result<(), StorageError> {
        let mut occupied = HashSet::new();
        for (i, m) in self.mailboxes.iter().enumerate() {
            if !m.unplaced.is_empty() || self.backend.slot_count(i as u32)? > 0 {
                occupied.insert(m.id);
            }
        }
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
        Ok(())
    }

    // --------------------------------------------------------------- settle

    /// Resolution of one UID: which message it names, if any.
    fn resolve(&self, mb: u32, uid: u32) -> Result<Option<Packed>, StorageError> {
        // A shown claim of an expunged message was there (see `bury`).
        if self.backend.is_dead(mb, uid)? {
            return Ok(None);
        }
        let mut claims: SmallVec<[Claim; 4]> = SmallVec::new();
        if let Some(s) = self.backend.slot(mb, uid)? {
            claims.push(Claim { message: s.id, claimant: s.claimant });
        }
        claims.extend(self.backend.side_at(mb, uid)?);
        let mut effective: SmallVec<[(Packed, u16, bool); 4]> = SmallVec::new();
        for c in claims {
            let key = ClaimKey { uid, message: c.message, claimant: c.claimant };
            let pinned = self.backend.is_pinned(mb, key)?;
            if !pinned && self.backend.is_retracted(mb, key)? {
                continue;
            }
            let exposed = pinned || uid < self.announced(mb, c.claimant);
            effective.push((c.message, c.claimant, exposed));
        }
        let Some(first) = effective.first().map(|c| c.0) else {
            return Ok(None);
        };
        if effective.iter().all(|c| c.0 == first) {
            return Ok(Some(first));
        }
        let mut exposed: SmallVec<[Packed; 2]> = effective.iter().filter(|c| c.2).map(|c| c.0).collect();
        exposed.sort_unstable();
        exposed.dedup();
        Ok(match exposed.len() {
            1 => Some(exposed[0]),
            // Nobody showed any of them: a deterministic winner, no wall clock.
            0 => effective.iter().min_by_key(|c| (self.replica_ids[c.1 as usize], self.unpack(c.0))).map(|c| c.0),
            // Shown as different messages: neither replica knows which one a
            // client cached, so the UID names nothing any more.
            _ => None,
        })
    }

    /// Spends `uid` for good once an expunged message's claim there is in
    /// effect and shown (pinned, or its claimant announced past it), and
    /// drops the claims of expunged messages there. Such a claim makes the
    /// UID name no live message whatever arrives later: it is the only
    /// shown claim (and names nothing live) or one of several shown ones
    /// (and the UID names nothing). Both facts only grow: a pin is never
    /// taken back, and a claimant withdraws only claims it has not
    /// announced past, before it announces past them (its ops arrive in
    /// order). So a spent mark in place of the claims decides every later
    /// resolution of the UID as they would, on every replica, whether or
    /// not it has buried them yet; no stability or horizon is needed.
    /// Their withdrawal, pin and forced marks go with them. Returns whether
    /// the UID is spent now.
    ///
    /// `pinned_gone`: a pin arrived for a claim of an expunged message here
    /// that `drop_withdrawn` dropped; the UID is spent as if that claim
    /// were held and pinned (pin-spends).
    fn bury(&mut self, mb: u32, uid: u32, pinned_gone: bool) -> Result<bool, StorageError> {
        if !self.bury || uid == u32::MAX {
            return Ok(false);
        }
        let claims = self.backend.side_at(mb, uid)?;
        let mut spent = pinned_gone;
        let mut gone: SmallVec<[Packed; 2]> = SmallVec::new();
        for c in &claims {
            if !self.expunged(c.message)? {
                continue;
            }
            gone.push(c.message);
            let key = ClaimKey { uid, message: c.message, claimant: c.claimant };
            spent = spent
                || self.backend.is_pinned(mb, key)?
                || (!self.backend.is_retracted(mb, key)? && uid < self.announced(mb, c.claimant));
        }
        if !spent {
            return Ok(false);
        }
        if !crate::mutation::active(crate::mutation::Mutation::BuryWithoutMark) {
            self.backend.add_dead(mb, uid, uid + 1)?;
        }
        for c in claims.iter().filter(|c| gone.contains(&c.message)) {
            self.backend.forget_marks(mb, ClaimKey { uid, message: c.message, claimant: c.claimant })?;
        }
        gone.sort_unstable();
        gone.dedup();
        for m in gone {
            // Each call takes one claim of `m` at the UID.
            for _ in 0..claims.len() {
                if self.backend.take_side(mb, uid, m)?.is_none() {
                    break;
                }
            }
        }
        Ok(true)
    }

    /// Whether the claim `key` is on record (on the side or placed).
    fn holds(&self, mb: u32, key: ClaimKey) -> Result<bool, StorageError> {
        Ok(self.backend.slot(mb, key.uid)?.is_some_and(|s| s.id == key.message && s.claimant == key.claimant)
            || self
                .backend
                .side_at(mb, key.uid)?
                .iter()
                .any(|c| c.message == key.message && c.claimant == key.claimant))
    }

    /// Drops the claims of the expunged message `m` at `uid`, with their
    /// marks, when every one of them is withdrawn and none is pinned (the
    /// caller knows `m` is expunged). Such a claim is not in effect:
    /// resolution, `kept` and `bury` pass over it, the announce that
    /// exposes claims does not revive a withdrawn one, and only live
    /// messages settle. Only a pin can revive it, and the pin is only made
    /// by a replica that showed the claim (it holds the claim op, so the
    /// pin arrives after it here): that pin then spends the UID, which is
    /// what burying the pinned claim would do (pin-spends, in `apply_body`).
    /// The claim itself never comes again: its op is applied once, its
    /// claimant never claims that UID again, and a snapshot installed here
    /// holds every op this replica applied, so it has the claim dropped,
    /// buried or withdrawn (then it comes back with its mark, as it was).
    /// Not at `u32::MAX`, which `bury` cannot spend.
    fn drop_withdrawn(&mut self, mb: u32, uid: u32, m: Packed) -> Result<(), StorageError> {
        if !self.drop_withdrawn || uid == u32::MAX {
            return Ok(());
        }
        let claims: SmallVec<[Claim; 2]> =
            self.backend.side_at(mb, uid)?.into_iter().filter(|c| c.message == m).collect();
        for c in &claims {
            let key = ClaimKey { uid, message: m, claimant: c.claimant };
            if self.backend.is_pinned(mb, key)? && !crate::mutation::active(crate::mutation::Mutation::DropPinned) {
                return Ok(());
            }
            if !self.backend.is_retracted(mb, key)?
                && !crate::mutation::active(crate::mutation::Mutation::DropUnwithdrawn)
            {
                return Ok(());
            }
        }
        for c in &claims {
            self.backend.forget_marks(mb, ClaimKey { uid, message: m, claimant: c.claimant })?;
        }
        // Each call takes one claim of `m` at the UID.
        for _ in 0..claims.len() {
            if self.backend.take_side(mb, uid, m)?.is_none() {
                break;
            }
        }
        Ok(())
    }

    /// Whether `m` has an own claim at `uid` that may still be withdrawn.
    fn own_withdrawable(&self, mb: u32, uid: u32, m: Packed, loc: MsgLoc) -> Result<bool, StorageError> {
        let key = ClaimKey { uid, message: m, claimant: 0 };
        let own = (loc.uid == uid && self.backend.slot(mb, uid)?.is_some_and(|s| s.claimant == 0))
            || self.backend.side_at(mb, uid)?.iter().any(|c| c.message == m && c.claimant == 0);
        Ok(own
            && uid >= self.announced(mb, 0)
            && !self.backend.is_retracted(mb, key)?
            && !self.backend.is_pinned(mb, key)?)
    }

    /// Whether `m`'s claim at `uid` must be kept in preference to its
    /// unexposed ones: a client may have seen it there (a pin, or its
    /// claimant announced past it) or U1 forced it.
    fn kept(&self, mb: u32, uid: u32, m: Packed) -> Result<bool, StorageError> {
        let mut claimants: SmallVec<[u16; 2]> = SmallVec::new();
        if let Some(s) = self.backend.slot(mb, uid)?.filter(|s| s.id == m) {
            claimants.push(s.claimant);
        }
        claimants.extend(self.backend.side_at(mb, uid)?.iter().filter(|c| c.message == m).map(|c| c.claimant));
        for claimant in claimants {
            let key = ClaimKey { uid, message: m, claimant };
            if self.backend.is_pinned(mb, key)? {
                return Ok(true);
            }
            if !self.backend.is_retracted(mb, key)?
                && ((self.backend.is_forced(mb, key)?
                    && !crate::mutation::active(crate::mutation::Mutation::ForcedAsPlain))
                    || uid < self.announced(mb, claimant))
            {
                return Ok(true);
            }
        }
        Ok(false)
    }

    fn settle(&mut self, mut dirty: Dirty) -> Result<(), ApplyError> {
        let mut follow = Vec::new();
        while let Some((idx, (uids, mut msgs))) = dirty.pop_first() {
            for u in &uids {
                if let Some(s) = self.backend.slot(idx, *u)? {
                    msgs.insert(s.id);
                }
                msgs.extend(self.backend.side_at(idx, *u)?.iter().map(|c| c.message));
            }
            let meta = &self.mailboxes[idx as usize];
            // Unplaced messages need a place; in a cascade they all have a
            // claim queued already (each decides at its turn), or are the
            // one whose claim is being applied, so the scan, which would
            // make a heal quadratic, is skipped then. (Counting the claim
            // in hand too: without it, every claim of a cascade rescanned
            // the mailbox's unplaced messages — 10-15% of a heal of 5,000
            // shown messages per side.)
            let in_hand = match self.claiming {
                Some((i, m))
                    if i == idx && meta.unplaced.contains_key(&m) && !self.queued.contains(&Queued::Claim(idx, m)) =>
                {
                    1
                }
                _ => 0,
            };
            if self.claims_queued.get(&idx).copied().unwrap_or(0) + in_hand < meta.unplaced.len() {
                msgs.extend(meta.unplaced.keys().copied());
            }
            // Messages of a mailbox merged into another go there (once per
            // cascade: the moves already queued cover every message in it).
            if let Some(to) = self.tree.merged_into.get(&meta.id).copied() {
                if self.queued.insert(Queued::Merged(idx)) {
                    for s in self.backend.slots_from(idx, 0, usize::MAX)?.iter().chain(meta.unplaced.values()) {
                        follow.push(FollowUp::Move { message: MessageId(self.unpack(s.id)), to });
                    }
                }
                msgs.clear();
            }
            let mailbox_id = meta.id;
            let announced_me = self.announced(idx, 0);
            let mut moves: Vec<(Packed, u32, u32)> = Vec::new();
            let mut ordered: Vec<Packed> = msgs.into_iter().collect();
            ordered.sort_by_key(|m| self.unpack(*m));
            for m in ordered {
                // A claim already queued for it decides when its turn comes.
                if self.queued.contains(&Queued::Claim(idx, m)) {
                    continue;
                }
                let Some(loc) = self.backend.loc(m)? else {
                    continue;
                };
                if loc.mailbox != idx {
                    continue;
                }
                let mut mine: SmallVec<[u32; 4]> = self.backend.side_uids_of(idx, m)?.into_iter().collect();
                if loc.uid != 0 {
                    mine.push(loc.uid);
                }
                // The UIDs that name `m`; the highest one a client may have
                // seen it at (or that U1 forced) wins over the others.
                let mut retracts: SmallVec<[u32; 2]> = SmallVec::new();
                let (mut best, mut best_kept) = (None, None);
                for u in &mine {
                    if self.resolve(idx, *u)? == Some(m) {
                        best = best.max(Some(*u));
                        if self.kept(idx, *u, m)? {
                            best_kept = best_kept.max(Some(*u));
                        }
                    } else if self.own_withdrawable(idx, *u, m, loc)? {
                        // Own claims that lost and that no client has seen are withdrawn.
                        retracts.push(*u);
                    }
                }
                let best = best_kept.or(best);
                let message = MessageId(self.unpack(m));
                match best {
                    Some(b) if b == loc.uid => {}
                    Some(b) if b >= announced_me => moves.push((m, loc.uid, b)),
                    _ => {
                        let retract = if retracts.is_empty() { None } else { Some(retracts.remove(0)) };
                        // A UID that names it but lies below what this
                        // replica showed: U1 forces a new one, which every
                        // replica must then prefer.
                        let forced = best.is_some();
                        follow.push(FollowUp::Claim { mailbox: mailbox_id, message, uid: Some(0), retract, forced });
                        if loc.uid != 0 {
                            moves.push((m, loc.uid, 0));
                        }
                    }
                }
                for r in retracts {
                    follow.push(FollowUp::Claim {
                        mailbox: mailbox_id,
                        message,
                        uid: None,
                        retract: Some(r),
                        forced: false,
                    });
                }
            }
            // Unplace everything that moves first, so targets are free.
            let mut slots = Vec::with_capacity(moves.len());
            for (m, from, to) in moves {
                let slot = self.unplace(idx, m, from)?.expect("slot of located message");
                slots.push((slot, to));
            }
            for (mut slot, to) in slots {
                if to == 0 {
                    slot.uid = 0;
                    self.backend.set_loc(slot.id, MsgLoc { mailbox: idx, uid: 0 })?;
                    self.mailboxes[idx as usize].unplaced.insert(slot.id, slot);
                    continue;
                }
                slot.claimant = self.backend.take_side(idx, to, slot.id)?.expect("winning claim exists");
                slot.uid = to;
                self.backend.set_loc(slot.id, MsgLoc { mailbox: idx, uid: to })?;
                self.backend.insert_slot(idx, slot)?;
            }
        }
        for f in follow {
            let key = match &f {
                FollowUp::Claim { mailbox, message, uid: Some(_), .. } => {
                    Some(Queued::Claim(self.mailbox(*mailbox), self.lookup(message.0).expect("settled message")))
                }
                FollowUp::Move { message, .. } => Some(Queued::Move(self.lookup(message.0).expect("settled message"))),
                FollowUp::Claim { .. } => None,
            };
            if key.is_none_or(|k| self.queued.insert(k)) {
                if let Some(Queued::Claim(idx, _)) = key {
                    *self.claims_queued.entry(idx).or_default() += 1;
                }
                self.followups.push_back(f);
            }
        }
        Ok(())
    }

    /// The op a queued follow-up becomes now, if it still has work to do.
    fn followup_body(&mut self, f: FollowUp) -> Result<Option<OpBody>, ApplyError> {
        let body = match f {
            FollowUp::Claim { mailbox, message, uid, retract, forced } => {
                let uid = match uid {
                    Some(_) => Some(self.next_uid(mailbox)?),
                    None => None,
                };
                match uid {
                    Some(uid) if forced => OpBody::Forced { mailbox, message, uid, retract },
                    _ => OpBody::Claim { mailbox, message, uid, retract },
                }
            }
            FollowUp::Move { message, to } => match self.move_body(message, to)? {
                Some(body) => body,
                None => return Ok(None),
            },
        };
        // A new claim is moot if an earlier follow-up already placed the
        // message (or moved or expunged it); its withdrawal still stands.
        let (mailbox, message, retract) = match &body {
            OpBody::Claim { mailbox, message, uid: Some(_), retract }
            | OpBody::Forced { mailbox, message, retract, .. } => (*mailbox, *message, *retract),
            _ => return Ok(Some(body)),
        };
        let loc = match self.lookup(message.0) {
            Some(m) => self.backend.loc(m)?,
            None => None,
        };
        let placed = loc.is_none_or(|l| self.mailboxes[l.mailbox as usize].id != mailbox || l.uid != 0);
        Ok(match (placed, retract) {
            (false, _) => Some(body),
            (true, Some(r)) => Some(OpBody::Claim { mailbox, message, uid: None, retract: Some(r) }),
            (true, None) => None,
        })
    }

    // ----------------------------------------------------------- local ops

    /// A new op of this replica (queued for peers), not applied yet.
    fn new_op(&mut self, body: OpBody) -> Op {
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
        // Reserved now: the next one is made before this one is applied.
        self.counter = dot.counter;
        let op = Op { dot, deps, body };
        self.outbox.push(op.clone());
        op
    }

    /// Makes a local change: a new op, applied like any other.
    fn emit(&mut self, body: OpBody) -> Result<Dot, ApplyError> {
        let op = self.new_op(body);
        let dot = op.dot;
        self.apply(op)?;
        Ok(dot)
    }

    fn next_uid(&mut self, mailbox: MailboxId) -> Result<u32, ApplyError> {
        let idx = self.mailbox(mailbox);
        let n = self.mailboxes[idx as usize].uid_next;
        if n == u32::MAX {
            return Err(ApplyError::UidsExhausted(mailbox));
        }
        Ok(n)
    }

    fn visible(&self, mailbox: MailboxId) -> bool {
        self.tree.by_name.values().any(|id| *id == mailbox)
    }

    /// The canonical mailbox for `mailbox` (itself unless merged by name).
    fn canonical(&self, mailbox: MailboxId) -> MailboxId {
        self.tree.merged_into.get(&mailbox).copied().unwrap_or(mailbox)
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
        let dot = self.emit(OpBody::Append(Append { mailbox, blob, size, internal_date, uid, flags }))?;
        Ok(MessageId(dot))
    }

    fn located(&self, message: MessageId) -> Result<(Packed, MsgLoc), LocalError> {
        let m = self.lookup(message.0).ok_or(LocalError::NoSuchMessage(message))?;
        let loc = self.backend.loc(m)?.ok_or(LocalError::NoSuchMessage(message))?;
        Ok((m, loc))
    }

    fn located_slot(&self, message: MessageId) -> Result<(MsgLoc, Slot), LocalError> {
        let (m, loc) = self.located(message)?;
        let slot = self.get_slot(m, loc)?.ok_or(LocalError::NoSuchMessage(message))?;
        Ok((loc, slot))
    }

    fn keyword_set(&self, flags: &FlagSet) -> BTreeSet<Keyword> {
        flags.iter().map(|e| self.keywords[e.kw as usize].clone()).collect()
    }

    /// Keywords of a message.
    pub fn flags(&self, message: MessageId) -> Result<BTreeSet<Keyword>, LocalError> {
        let (_, slot) = self.located_slot(message)?;
        Ok(self.keyword_set(&slot.flags))
    }

    /// `STORE +FLAGS/-FLAGS`: one op with the adds and the observed removes.
    ///
    /// Every add is an add event with a fresh dot, including an add of a
    /// keyword the message already shows: otherwise a concurrent remove on
    /// another replica, which saw only the older dots, would take the
    /// keyword away although this client just set it (add wins for every
    /// add). A re-add also removes the dots it replaces, so the state keeps
    /// one dot per keyword and replica however often clients re-add. Only a
    /// remove of keywords the message does not show makes no op.
    pub fn store_flags(&mut self, message: MessageId, add: &[Keyword], remove: &[Keyword]) -> Result<(), LocalError> {
        let (_, slot) = self.located_slot(message)?;
        let add: Vec<Keyword> = add.iter().filter(|k| !remove.contains(k)).cloned().collect();
        let mut removed = Vec::new();
        for k in remove.iter().chain(&add) {
            if let Some(i) = self.keyword_idx.get(k) {
                removed.extend(slot.flags.iter().filter(|e| e.kw == *i).map(|e| (k.clone(), self.unpack(e.dot()))));
            }
        }
        if add.is_empty() && removed.is_empty() {
            return Ok(());
        }
        self.emit(OpBody::Flags { message, add, remove: removed })?;
        Ok(())
    }

    fn move_body(&mut self, message: MessageId, to: MailboxId) -> Result<Option<OpBody>, ApplyError> {
        let Ok((loc, slot)) = self.located_slot(message) else {
            return Ok(None);
        };
        if self.mailboxes[loc.mailbox as usize].id == to {
            return Ok(None);
        }
        let seq = (slot.loc >> 16) as u32 + 1;
        let uid = self.next_uid(to)?;
        Ok(Some(OpBody::Move { message, to, seq, uid }))
    }

    /// IMAP MOVE.
    pub fn move_message(&mut self, message: MessageId, to: MailboxId) -> Result<(), LocalError> {
        let to = self.canonical(to);
        if !self.visible(to) {
            return Err(LocalError::NoSuchMailbox(to));
        }
        self.located(message)?;
        if let Some(body) = self.move_body(message, to)? {
            self.emit(body)?;
        }
        Ok(())
    }

    /// IMAP COPY: a new instance with the source's keywords.
    pub fn copy_message(&mut self, message: MessageId, to: MailboxId) -> Result<MessageId, LocalError> {
        let to = self.canonical(to);
        if !self.visible(to) {
            return Err(LocalError::NoSuchMailbox(to));
        }
        let (m, _) = self.located(message)?;
        let flags = self.flags(message)?.into_iter().collect();
        let env = self.backend.envelope(m)?.ok_or(LocalError::NoSuchMessage(message))?;
        let uid = self.next_uid(to)?;
        let append =
            Append { mailbox: to, blob: env.blob, size: env.size, internal_date: env.internal_date, uid, flags };
        let dot = self.emit(OpBody::Copy { source: message, append })?;
        Ok(MessageId(dot))
    }

    /// IMAP EXPUNGE of some messages. Unknown ids are refused.
    pub fn expunge(&mut self, messages: &[MessageId]) -> Result<(), LocalError> {
        for m in messages {
            self.located(*m)?;
        }
        if !messages.is_empty() {
            self.emit(OpBody::Expunge { messages: messages.to_vec() })?;
        }
        Ok(())
    }

    /// A client was shown this mailbox's current state (SELECT, NOOP, IDLE
    /// update, STATUS UIDNEXT). Makes an op only if UIDNEXT moved since the
    /// last announce. Only messages placed since then are looked at.
    ///
    /// A client is shown every message placed, so the announce must reach
    /// past all of them. Applying it can place some at or above the UIDNEXT
    /// it announced: it exposes claims, a message whose claim then loses
    /// gets a fresh one, which U1 forces at UIDNEXT. So it announces again
    /// until nothing placed lies at or above what it announced (one more
    /// round in practice: nothing else claims above UIDNEXT meanwhile); at
    /// most [`ANNOUNCE_ROUNDS_MAX`] rounds.
    pub fn announce(&mut self, mailbox: MailboxId) -> Result<(), LocalError> {
        let idx = self.mailbox_index(mailbox).ok_or(LocalError::NoSuchMailbox(mailbox))?;
        for _ in 0..ANNOUNCE_ROUNDS_MAX {
            if self.mailboxes[idx as usize].uid_next <= self.announced(idx, 0) {
                return Ok(());
            }
            self.announce_once(mailbox, idx)?;
        }
        Err(LocalError::AnnounceRounds(mailbox))
    }

    fn announce_once(&mut self, mailbox: MailboxId, idx: u32) -> Result<(), LocalError> {
        let before = self.announced(idx, 0);
        let uid_next = self.mailboxes[idx as usize].uid_next;
        if uid_next <= before {
            return Ok(());
        }
        // The announce exposes every own claim below `uid_next`: first
        // withdraw those naming a live message that is not shown there (a
        // message that has a claim a client may have seen, or one U1 forced,
        // shows that instead), so no claim is exposed that no client saw.
        let mut stale = Vec::new();
        for uid in self.backend.side_uids_in(idx, before, uid_next)? {
            for c in self.backend.side_at(idx, uid)? {
                let key = ClaimKey { uid, message: c.message, claimant: 0 };
                if c.claimant == 0
                    && self.backend.loc(c.message)?.is_some_and(|l| l.mailbox != idx || l.uid != uid)
                    && !self.backend.is_retracted(idx, key)?
                    && !self.backend.is_pinned(idx, key)?
                {
                    stale.push((uid, MessageId(self.unpack(c.message))));
                }
            }
        }
        for (uid, message) in stale {
            self.emit(OpBody::Claim { mailbox, message, uid: None, retract: Some(uid) })?;
        }
        let uid_next = self.mailboxes[idx as usize].uid_next;
        let mut pins = Vec::new();
        for s in self.backend.slots_from(idx, before, usize::MAX)? {
            let key = ClaimKey { uid: s.uid, message: s.id, claimant: s.claimant };
            let exposed = self.backend.is_pinned(idx, key)? || s.uid < self.announced(idx, s.claimant);
            if s.claimant != 0 && !exposed {
                let claimant = self.replica_ids[s.claimant as usize];
                pins.push(Pin { uid: s.uid, message: MessageId(self.unpack(s.id)), claimant });
            }
        }
        self.emit(OpBody::Announce { mailbox, uid_next, pins })?;
        Ok(())
    }

    /// UIDNEXT of a mailbox as this replica would announce it.
    pub fn uid_next(&self, mailbox: MailboxId) -> Option<u32> {
        self.mailbox_index(mailbox).map(|i| self.mailboxes[i as usize].uid_next)
    }

    /// The UIDNEXT this replica last announced for a mailbox (1 if never).
    pub fn announced_uid_next(&self, mailbox: MailboxId) -> u32 {
        self.mailbox_index(mailbox).map_or(1, |i| self.announced(i, 0))
    }

    /// What a client of this replica sees in a mailbox, by UID.
    pub fn view(&self, mailbox: MailboxId) -> MailboxView {
        self.view_from(mailbox, 1, usize::MAX).unwrap_or_default()
    }

    /// Part of a mailbox's view: messages with UID ≥ `from`, at most `limit`.
    pub fn view_from(&self, mailbox: MailboxId, from: u32, limit: usize) -> Result<MailboxView, StorageError> {
        let Some(i) = self.mailbox_index(mailbox) else {
            return Ok(Vec::new());
        };
        debug_assert!(self.mailboxes[i as usize].unplaced.is_empty(), "settled state has no unplaced message");
        Ok(self
            .backend
            .slots_from(i, from, limit)?
            .into_iter()
            .map(|s| (s.uid, MessageId(self.unpack(s.id)), self.keyword_set(&s.flags)))
            .collect())
    }

    /// Whether a message is live here: false only if it is expunged or
    /// unknown (a storage error answers true, so the change that follows
    /// reports it).
    pub fn is_live(&self, message: MessageId) -> bool {
        !matches!(self.located(message), Err(LocalError::NoSuchMessage(_)))
    }

    /// The UID a message shows in its mailbox, with the mailbox.
    pub fn uid_of(&self, message: MessageId) -> Option<(MailboxId, u32)> {
        let (_, loc) = self.located(message).ok()?;
        (loc.uid != 0).then(|| (self.mailboxes[loc.mailbox as usize].id, loc.uid))
    }

    /// Immutable attributes of a live message.
    pub fn envelope(&self, message: MessageId) -> Result<Option<Envelope>, StorageError> {
        match self.lookup(message.0) {
            Some(m) => self.backend.envelope(m),
            None => Ok(None),
        }
    }

    /// Whether a message was expunged here.
    pub fn is_expunged(&self, message: MessageId) -> bool {
        self.lookup(message.0).is_some_and(|m| self.expunged(m).unwrap_or(false))
    }

    /// Number of live messages.
    pub fn message_count(&self) -> usize {
        self.backend.message_count().unwrap_or(0) as usize
    }

    /// Number of messages in a mailbox.
    pub fn mailbox_len(&self, mailbox: MailboxId) -> Result<u64, StorageError> {
        match self.mailbox_index(mailbox) {
            Some(i) => self.backend.slot_count(i),
            None => Ok(0),
        }
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

    /// Names this incarnation of the account ([`AccountDoc::set_incarnation`]).
    pub fn set_incarnation(&mut self, incarnation: u64) -> Result<(), LocalError> {
        let change = self.account.set_incarnation(incarnation);
        self.account_op(change)?;
        Ok(())
    }

    /// Sets the account's password hash (a PHC string) on every replica of
    /// the account ([`crate::account::AccountDoc::set_password`]).
    pub fn set_password(&mut self, hash: &str) -> Result<(), LocalError> {
        let change = self.account.set_password(hash);
        self.account_op(change)?;
        Ok(())
    }

    /// Sets which nodes replicate the account, on every replica of it
    /// ([`crate::account::AccountDoc::set_placement`]).
    pub fn set_placement(&mut self, placement: &str) -> Result<(), LocalError> {
        let change = self.account.set_placement(placement);
        self.account_op(change)?;
        Ok(())
    }

    /// Sets the account's quota, on every replica of it
    /// ([`crate::account::AccountDoc::set_quota`]).
    pub fn set_quota(&mut self, quota: &crate::account::Quota) -> Result<(), LocalError> {
        let change = self.account.set_quota(quota);
        self.account_op(change)?;
        Ok(())
    }

    /// Deletes the account on every replica it reaches
    /// ([`AccountDoc::delete_account`]).
    pub fn delete_account(&mut self) -> Result<(), LocalError> {
        let change = self.account.delete_account();
        self.account_op(change)?;
        Ok(())
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
    pub fn rename_mailbox(&mut self, id: MailboxId, name: &str, parent: Option<MailboxId>) -> Result<(), LocalError> {
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
                id.uid_validity(self.tree.incarnation),
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
