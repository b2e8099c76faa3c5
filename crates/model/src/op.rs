//! Ops: the unit of change. Every change, local or remote, is one of these,
//! applied through [`crate::replica::Replica::apply`].

use crate::ids::{BlobId, Dot, MailboxId, MessageId, ReplicaId};
use crate::keyword::Keyword;
use serde::{Deserialize, Serialize};

/// One change, named by its dot, with the causal dependencies it needs before
/// it may be applied.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Op {
    /// Who made it and its position in that replica's sequence.
    pub dot: Dot,
    /// Ops of *other* replicas its author had applied since its previous op.
    /// With the author's own previous op (counter − 1) they name the op's whole
    /// causal past, transitively.
    pub deps: Vec<Dot>,
    /// What changes.
    pub body: OpBody,
}

/// What an op changes.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum OpBody {
    /// A new message instance, named by this op's dot.
    Append(Append),
    /// Keyword changes on one message: `+kw` at this op's dot, `-kw` of the
    /// adds the author observed.
    Flags {
        /// The message.
        message: MessageId,
        /// Keywords added (each at this op's dot).
        add: Vec<Keyword>,
        /// Observed adds removed.
        remove: Vec<(Keyword, Dot)>,
    },
    /// Moves a message to another mailbox, claiming `uid` there.
    Move {
        /// The message.
        message: MessageId,
        /// Destination.
        to: MailboxId,
        /// One more than the move sequence number the author saw; concurrent
        /// moves are ordered by `(seq, author)`.
        seq: u32,
        /// The author's UID claim in the destination.
        uid: u32,
    },
    /// A new instance (named by this op's dot) of an existing message's
    /// content, with the source's flags at that moment.
    Copy {
        /// Copied from.
        source: MessageId,
        /// The content and its immutable attributes.
        append: Append,
    },
    /// Tombstones. Expunge wins over any concurrent change to the message.
    Expunge {
        /// The messages removed.
        messages: Vec<MessageId>,
    },
    /// A UID claim for a message by this op's author, and/or the withdrawal of
    /// one of the author's own unexposed claims that lost a conflict.
    Claim {
        /// Mailbox of the claim.
        mailbox: MailboxId,
        /// The message.
        message: MessageId,
        /// New claim.
        uid: Option<u32>,
        /// The author's own earlier claim on this uid, withdrawn.
        retract: Option<u32>,
    },
    /// The author has shown clients every UID below `uid_next` in `mailbox`.
    /// Its own claims below are exposed; `pins` expose the claims of other
    /// replicas it showed before their authors did.
    Announce {
        /// The mailbox.
        mailbox: MailboxId,
        /// The UIDNEXT shown.
        uid_next: u32,
        /// Other replicas' claims shown.
        pins: Vec<Pin>,
    },
    /// An automerge change to the account document (mailbox tree etc.).
    Account {
        /// The change, as automerge encodes it.
        change: Vec<u8>,
    },
    /// A UID claim that U1 forced on its author: it had shown its clients a
    /// UIDNEXT above every UID the message could keep, so the message must
    /// not appear there below this one. Every replica prefers it, as it
    /// prefers exposed claims, over the message's unexposed claims; against
    /// other messages' claims at the same UID it competes as a plain claim.
    /// Like `Claim`, it may withdraw one of the author's own claims.
    Forced {
        /// Mailbox of the claim.
        mailbox: MailboxId,
        /// The message.
        message: MessageId,
        /// The claimed UID (the author's UIDNEXT).
        uid: u32,
        /// The author's own earlier claim on this uid, withdrawn.
        retract: Option<u32>,
    },
}

/// Immutable attributes of a new message instance.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Append {
    /// Where it lands.
    pub mailbox: MailboxId,
    /// Its content.
    pub blob: BlobId,
    /// Size in bytes (RFC822.SIZE).
    pub size: u64,
    /// INTERNALDATE, seconds since the Unix epoch.
    pub internal_date: i64,
    /// The author's UID claim in `mailbox`.
    pub uid: u32,
    /// Keywords it starts with (each added at the op's dot).
    pub flags: Vec<Keyword>,
}

/// A claim of another replica exposed by an announce.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Pin {
    /// The claimed UID.
    pub uid: u32,
    /// The message.
    pub message: MessageId,
    /// Who claimed it.
    pub claimant: ReplicaId,
}
