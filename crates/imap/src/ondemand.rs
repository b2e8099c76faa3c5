//! Bodies this replica left out (a partial replica), fetched from a peer
//! when a client asks for them.
//!
//! A FETCH that needs a body not stored here does not answer at once: the
//! session parks the whole command ([`Wants::Bodies`](crate::Wants)), the
//! shell asks the node for the bodies ([`Shared::on_want_bodies`](crate::Shared::on_want_bodies);
//! the node asks the peers of the account) and calls
//! [`Session::resume`](crate::Session::resume) when the account changes (a
//! body arrived) or the wait is over. The command then runs again from its
//! bytes, the one path: with the bodies it answers; still without them it
//! waits on until [`Config::body_wait`](crate::Config::body_wait) from the
//! first attempt, then answers what it has and `NO [UNAVAILABLE]`. With no
//! peer to ask, it answers at once.

use starling_model::BlobId;
use std::time::Instant;

/// Most bodies one parked FETCH asks for (the rest on its next attempt).
pub const WANTED_MAX: usize = 256;

/// A FETCH waiting for bodies.
#[derive(Default)]
pub(crate) struct BodyWait {
    /// The parked command's bytes, run again on resume.
    pub parked: Option<Vec<u8>>,
    /// Bodies it needs (id, size), for the shell to ask for.
    pub wanted: Vec<(BlobId, u64)>,
    /// Set by a command that must wait (read after it finishes).
    pub park: Option<Vec<(BlobId, u64)>>,
    /// Until when the command being retried may still wait (from its
    /// first attempt); `None` when no command is being retried.
    pub until: Option<Instant>,
}

impl BodyWait {
    /// Whether a command run at `now` may still wait for bodies.
    pub fn may_wait(&self, now: Instant, enabled: bool) -> bool {
        enabled && self.until.is_none_or(|u| now < u)
    }
}
