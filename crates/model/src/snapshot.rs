//! State snapshots: the catch-up for a peer that is new, or further behind
//! than any op log reaches. A snapshot is the whole replicated state of an
//! account in portable form (real replica ids, not interned indices), taken
//! at a point described by its version vector. A fresh replica installs it and
//! then continues with the ops after that vector, like any other peer.
//!
//! A snapshot travels and installs as a stream of [`Part`]s: a
//! [`SnapHead`], then per mailbox its [`SnapMailboxHead`] followed by pages
//! of its messages (by UID) and of its claims. A replica writes it a page at
//! a time ([`crate::ExportView::parts`]) and installs it a page at a
//! time ([`crate::Replica::import_begin`]), so neither holds a whole
//! account's messages in memory; [`StateSnapshot`] is the same content
//! collected in one value, for tests.
//!
//! A replica that is behind *and* has changes of its own first sends those
//! ops to the snapshot's source (its own log still holds them: no peer has
//! acknowledged them, so nobody compacted them), then installs a snapshot
//! taken after the source applied them. Such a snapshot holds every op the
//! replica applied (its version vector dominates the replica's), so its
//! state is the state the replica would reach by applying the ops it lacks:
//! installing it replaces the replica's state by difference (messages gone,
//! moved, renumbered or reflagged, each through the same backend calls an op
//! would make, so MODSEQ and VANISHED follow). A snapshot that lacks any op
//! the replica applied is refused and changes nothing.

use crate::backend::Envelope;
use crate::ids::{Dot, MailboxId, MessageId, ReplicaId, VersionVector};
use crate::keyword::Keyword;
use serde::{Deserialize, Serialize};

/// Encoded bytes a part of messages, claims or log tail goes up to before
/// the next starts (a message with many keywords makes a page of few).
pub const PART_BYTES: usize = 1 << 20;

/// Gathers items (messages, claims, logged ops) into parts of at most
/// `page` items and about [`PART_BYTES`] encoded bytes.
pub struct Pager<T> {
    page: usize,
    items: Vec<T>,
    bytes: usize,
}

impl<T: Serialize> Pager<T> {
    /// An empty pager of parts of at most `page` items.
    pub fn new(page: usize) -> Self {
        Pager { page, items: Vec::new(), bytes: 0 }
    }

    /// Adds an item; returns a full part when there is one.
    pub fn push(&mut self, item: T) -> Option<Vec<T>> {
        self.bytes += postcard::experimental::serialized_size(&item).unwrap_or(0);
        self.items.push(item);
        if self.items.len() >= self.page || self.bytes >= PART_BYTES {
            return self.take();
        }
        None
    }

    /// What is left, if anything.
    pub fn take(&mut self) -> Option<Vec<T>> {
        self.bytes = 0;
        (!self.items.is_empty()).then(|| std::mem::take(&mut self.items))
    }
}

/// Format version written by this code.
pub const SNAPSHOT_VERSION: u8 = 4;

/// The replicated state of one account.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct StateSnapshot {
    /// [`SNAPSHOT_VERSION`].
    pub version: u8,
    /// The ops the state reflects.
    pub vv: VersionVector,
    /// The automerge account document, saved.
    pub account: Vec<u8>,
    /// Mailboxes with their messages and claims. A message within `vv`
    /// that is in none of them is expunged (version 3 also listed those).
    pub mailboxes: Vec<SnapMailbox>,
}

/// What a streamed snapshot starts with.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SnapHead {
    /// [`SNAPSHOT_VERSION`].
    pub version: u8,
    /// The ops the state reflects.
    pub vv: VersionVector,
    /// The automerge account document, saved.
    pub account: Vec<u8>,
}

/// A mailbox's own fields, which come before its messages and claims.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SnapMailboxHead {
    /// Its id.
    pub id: MailboxId,
    /// UIDNEXT.
    pub uid_next: u32,
    /// Highest UIDNEXT each replica announced.
    pub announced: Vec<(ReplicaId, u32)>,
    /// Spent UIDs (ranges `start..end`, ascending).
    pub dead: Vec<(u32, u32)>,
}

/// Which claim set a page of claims belongs to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ClaimKind {
    /// Claims other than the placed messages' own.
    Side,
    /// Withdrawn claims.
    Retracted,
    /// Pinned claims.
    Pinned,
    /// Claims U1 forced.
    Forced,
}

/// One piece of a streamed snapshot after its [`SnapHead`]. `Messages` and
/// `Claims` belong to the mailbox of the last `Mailbox`; a mailbox's
/// messages come in ascending UID order, across its pages.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum Part {
    /// A mailbox begins.
    Mailbox(SnapMailboxHead),
    /// A page of its placed messages.
    Messages(Vec<SnapMessage>),
    /// A page of one of its claim sets.
    Claims(ClaimKind, Vec<SnapClaim>),
}

impl StateSnapshot {
    /// The snapshot as a stream: its head and its parts, `page` messages
    /// or claims per part at most.
    pub fn into_parts(self, page: usize) -> (SnapHead, Vec<Part>) {
        let page = page.max(1);
        let mut parts = Vec::new();
        for mb in self.mailboxes {
            parts.push(Part::Mailbox(SnapMailboxHead {
                id: mb.id,
                uid_next: mb.uid_next,
                announced: mb.announced,
                dead: mb.dead,
            }));
            parts.extend(mb.messages.chunks(page).map(|c| Part::Messages(c.to_vec())));
            for (kind, list) in [
                (ClaimKind::Side, mb.side),
                (ClaimKind::Retracted, mb.retracted),
                (ClaimKind::Pinned, mb.pinned),
                (ClaimKind::Forced, mb.forced),
            ] {
                parts.extend(list.chunks(page).map(|c| Part::Claims(kind, c.to_vec())));
            }
        }
        (SnapHead { version: self.version, vv: self.vv, account: self.account }, parts)
    }

    /// The snapshot a stream describes (parts before any `Mailbox` are
    /// refused).
    pub fn from_parts(head: SnapHead, parts: impl IntoIterator<Item = Part>) -> Result<Self, InstallError> {
        let mut mailboxes: Vec<SnapMailbox> = Vec::new();
        fn last(m: &mut [SnapMailbox]) -> Result<&mut SnapMailbox, InstallError> {
            m.last_mut().ok_or_else(|| InstallError::Invalid("a part before any mailbox".into()))
        }
        for part in parts {
            match part {
                Part::Mailbox(h) => mailboxes.push(SnapMailbox {
                    id: h.id,
                    uid_next: h.uid_next,
                    announced: h.announced,
                    messages: Vec::new(),
                    side: Vec::new(),
                    retracted: Vec::new(),
                    pinned: Vec::new(),
                    forced: Vec::new(),
                    dead: h.dead,
                }),
                Part::Messages(m) => last(&mut mailboxes)?.messages.extend(m),
                Part::Claims(kind, c) => {
                    let mb = last(&mut mailboxes)?;
                    match kind {
                        ClaimKind::Side => &mut mb.side,
                        ClaimKind::Retracted => &mut mb.retracted,
                        ClaimKind::Pinned => &mut mb.pinned,
                        ClaimKind::Forced => &mut mb.forced,
                    }
                    .extend(c)
                }
            }
        }
        Ok(StateSnapshot { version: head.version, vv: head.vv, account: head.account, mailboxes })
    }
}

/// One mailbox in a snapshot.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SnapMailbox {
    /// Its id.
    pub id: MailboxId,
    /// UIDNEXT.
    pub uid_next: u32,
    /// Highest UIDNEXT each replica announced.
    pub announced: Vec<(ReplicaId, u32)>,
    /// Placed messages, by UID.
    pub messages: Vec<SnapMessage>,
    /// Claims other than the placed messages' own.
    pub side: Vec<SnapClaim>,
    /// Withdrawn claims.
    pub retracted: Vec<SnapClaim>,
    /// Pinned claims.
    pub pinned: Vec<SnapClaim>,
    /// Claims U1 forced (`OpBody::Forced`).
    pub forced: Vec<SnapClaim>,
    /// Spent UIDs (ranges `start..end`): a shown claim of an expunged
    /// message was there; its claims are dropped.
    pub dead: Vec<(u32, u32)>,
}

/// One message in a snapshot.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SnapMessage {
    /// Its id.
    pub id: MessageId,
    /// Its UID.
    pub uid: u32,
    /// Who claimed that UID.
    pub claimant: ReplicaId,
    /// Location version: move sequence and mover.
    pub loc: (u32, ReplicaId),
    /// Live keyword adds.
    pub flags: Vec<(Keyword, Dot)>,
    /// Blob, size, date (absent where the source does not keep them).
    pub envelope: Option<Envelope>,
}

/// A UID claim in a snapshot.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapClaim {
    /// The UID.
    pub uid: u32,
    /// The message.
    pub message: MessageId,
    /// Who claimed.
    pub claimant: ReplicaId,
}

/// Why a snapshot could not be installed.
#[derive(Debug, thiserror::Error)]
pub enum InstallError {
    /// The snapshot lacks ops this replica applied (its own changes have
    /// not reached the snapshot's source yet): installing it would lose them.
    #[error("the snapshot lacks ops this replica applied")]
    Older,
    /// Unknown format version.
    #[error("snapshot version {0} not supported")]
    Version(u8),
    /// The snapshot contradicts itself.
    #[error("invalid snapshot: {0}")]
    Invalid(String),
    /// Writing the state failed.
    #[error(transparent)]
    Storage(#[from] crate::backend::StorageError),
    /// The account document is unreadable.
    #[error(transparent)]
    Account(#[from] crate::account::AccountError),
    /// Applying the ops that were waiting for the snapshot's past failed.
    #[error(transparent)]
    Apply(#[from] crate::replica::ApplyError),
}
