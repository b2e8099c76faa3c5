//! State snapshots: the catch-up for a peer that is new, or further behind
//! than any op log reaches. A snapshot is the whole replicated state of an
//! account in portable form (real replica ids, not interned indices), taken
//! at a point described by its version vector. A fresh replica installs it and
//! then continues with the ops after that vector, like any other peer.
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
