//! Deliberately broken merge rules for mutation tests: with the `mutations`
//! feature, a test switches one on at run time and expects the checker to
//! catch it. Without the feature nothing here exists and the checks in the
//! merge code compile to `false`.

/// A merge rule broken on purpose.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Mutation {
    /// A keyword removal also removes concurrent adds (remove-wins instead
    /// of add-wins).
    RemoveWins = 1,
    /// A move applies whenever it arrives (last arrival wins instead of the
    /// highest (sequence, replica)).
    MoveByArrival = 2,
    /// Housekeeping compacts the op log to this replica's own version,
    /// ignoring what the peers acknowledged (the store's).
    CompactPastPeers = 3,
    /// A body named again keeps its candidate row for collection, so
    /// collection deletes a body a message names (the store's).
    KeepCandidate = 4,
    /// A replica reads any client's MODSEQ as a point of its own sequence,
    /// whichever replica issued it (the store's; the under-report issue 16
    /// measured).
    PlaceEveryModseq = 5,
    /// A claim U1 forced counts as a plain claim: a message prefers a UID a
    /// client saw elsewhere below what this replica showed (U1 broken).
    ForcedAsPlain = 6,
    /// A replica counts every connected peer as caught up with before it
    /// shows new UIDs (the store's; exposure after k peers without the
    /// catch-up, so a failover to a lagging replica reuses UIDs).
    CatchUpSkipped = 7,
    /// A mailbox forgets its oldest expunge rows without raising its floor,
    /// so a client older than them is answered as if they never happened
    /// (the store's; a QRESYNC under-report).
    ForgetWithoutFloor = 8,
    /// An expunged message's shown claims are dropped without spending
    /// their UID, so a concurrent claim arriving later wins a UID clients
    /// were shown as the expunged message (U2 broken).
    BuryWithoutMark = 9,
    /// A pin of a claim of an expunged message that was dropped (withdrawn,
    /// unpinned) is recorded like any pin instead of spending the UID, so a
    /// message shown at that UID elsewhere does not lose it here.
    PinSpendsIgnored = 10,
    /// The claims of an expunged message are dropped when a withdrawal of
    /// one arrives even if they are not all withdrawn: a claim still in
    /// effect is lost.
    DropUnwithdrawn = 11,
    /// Withdrawn claims are dropped with their pins.
    DropPinned = 12,
    /// Withdrawn, unpinned claims of live messages are dropped too, so a
    /// later pin of one (it was shown elsewhere) finds nothing.
    DropLive = 13,
    /// A live message between two places (unplaced while settling: moved,
    /// or its UID lost) counts as expunged, as a "not placed" test would
    /// take it: its claims are buried or dropped as if it were gone.
    ExpungedWhileUnplaced = 14,
}

#[cfg(feature = "mutations")]
static ACTIVE: std::sync::atomic::AtomicU8 = std::sync::atomic::AtomicU8::new(0);

/// Switches a broken rule on (`Some`) or every rule back to correct (`None`),
/// for the whole process.
#[cfg(feature = "mutations")]
pub fn set(m: Option<Mutation>) {
    ACTIVE.store(m.map_or(0, |m| m as u8), std::sync::atomic::Ordering::SeqCst);
}

/// Whether `m` is switched on (always false without the feature).
#[cfg(feature = "mutations")]
pub fn active(m: Mutation) -> bool {
    ACTIVE.load(std::sync::atomic::Ordering::Relaxed) == m as u8
}

/// Whether `m` is switched on (always false without the feature).
#[cfg(not(feature = "mutations"))]
#[inline(always)]
pub fn active(_: Mutation) -> bool {
    false
}
