//! The replicated data model of Starling: identities, the per-message delta
//! CRDTs (add-wins keywords, expunge tombstones, location with concurrent
//! MOVE, COPY), merged UID allocation that keeps IMAP's rules at every
//! replica, causal buffering, the automerge account document, and the compact
//! versioned encoding of ops.
//!
//! Pure state machines only: no I/O, no threads, no clock or randomness that
//! is not passed in. It must not know redb, tokio or sockets; the store and the
//! simulator drive it.

#![deny(missing_docs)]

pub mod account;
pub mod backend;
mod causal;
pub mod codec;
pub mod flags;
pub mod hlc;
pub mod ids;
pub mod keyword;
pub mod mutation;
pub mod op;
pub mod replica;
pub mod snapshot;
pub mod testkit;

pub use account::{AccountDoc, MailboxTree, Quota, SpecialUse, INBOX};
pub use backend::{Backend, MemBackend, StorageError};
pub use ids::{BlobId, Dot, MailboxId, MessageId, ReplicaId, VersionVector};
pub use keyword::Keyword;
pub use op::{Append, Op, OpBody, Pin};
pub use replica::{AppliedOp, ApplyError, ExportView, LocalError, Names, OpenError, Replica, ReplicaOptions};
