//! MODSEQ values that name the replica that issued them.
//!
//! Each replica numbers its changes itself (RFC 7162 holds at each replica:
//! a message's MODSEQ rises with every change, HIGHESTMODSEQ never goes
//! back, expunges advance it). A client that moves to another replica
//! presents a MODSEQ from the first one; read as a number of the second
//! one's sequence it names an unrelated point and the answer would miss
//! changes (measured: 280 of 280 changes never reported). So a value
//! carries its issuer: the low [`TAG_BITS`] bits are a tag of the issuing
//! replica, the bits above a counter. A replica answers exactly only for a
//! value that carries its own tag and that it has issued (not above its
//! counter); any other value it cannot place, and it answers as if the
//! client knew nothing (QRESYNC and CHANGEDSINCE then report every message
//! and every UID the client may know that is gone: an over-report, which
//! RFC 7162 allows; never an under-report), after raising the mailbox's
//! HIGHESTMODSEQ above the value, so that what the client sees never goes
//! down.
//!
//! A counter is a Lamport clock: the next value is above both the
//! replica's last and any value a client presented. Values issued before
//! tags (format 5 and older) carry no tag; they read as another replica's
//! and cost one full report.
//!
//! Tags are 24 bits of a hash of the replica id: two replicas of an account
//! share a tag with probability about n²/2²⁵ (2·10⁻⁶ for 8 replicas). A
//! replica that knows of another replica of the account with its own tag
//! places no value at all (every token is answered in full); only a replica
//! that has never heard of the other one could misplace its value.

use starling_model::ReplicaId;

/// Bits of a MODSEQ naming the replica that issued it.
pub const TAG_BITS: u32 = 24;
const TAG_MASK: u64 = (1 << TAG_BITS) - 1;

/// A client's MODSEQ with a counter at or above this raises nothing: no
/// replica issues such values (2³⁸ changes of one account), and following
/// a hostile client's value up would use up the 63-bit space (RFC 7162's
/// maximum) for the account's other clients.
pub const RAISE_MAX_COUNTER: u64 = 1 << 38;

/// The tag of a replica's MODSEQ values.
pub fn tag(replica: ReplicaId) -> u64 {
    let h = blake3::hash(&replica.0.to_le_bytes());
    let mut b = [0u8; 8];
    b.copy_from_slice(&h.as_bytes()[..8]);
    u64::from_le_bytes(b) & TAG_MASK
}

/// The smallest value of `tag` above both `last` and `floor`.
pub(crate) fn next(last: u64, floor: u64, tag: u64) -> u64 {
    let counter = (last.max(floor) >> TAG_BITS) + 1;
    assert!(counter < 1 << (63 - TAG_BITS), "MODSEQ counter {counter} out of the 63-bit range");
    (counter << TAG_BITS) | tag
}

/// Whether a client's value may raise a replica's counter.
pub(crate) fn may_raise(token: u64) -> bool {
    token >> TAG_BITS < RAISE_MAX_COUNTER
}

/// What a client's MODSEQ means at this replica.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Since {
    /// A point of this replica's own sequence (0: before any change).
    Here(u64),
    /// Issued elsewhere (or never issued): answer as if the client knew nothing.
    Unknown,
}

/// Places `token` for a replica with `own` tag whose last value is `last`,
/// among the account's known replicas `replicas`.
pub(crate) fn place(token: u64, own: ReplicaId, last: u64, replicas: &[ReplicaId]) -> Since {
    if token == 0 {
        return Since::Here(0);
    }
    let t = tag(own);
    let shared = replicas.iter().any(|r| *r != own && tag(*r) == t);
    if starling_model::mutation::active(starling_model::mutation::Mutation::PlaceEveryModseq) {
        return Since::Here(token);
    }
    if token & TAG_MASK == t && token <= last && !shared {
        Since::Here(token)
    } else {
        Since::Unknown
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn next_is_above_both_and_carries_the_tag() {
        let t = tag(ReplicaId(7));
        let a = next(0, 0, t);
        assert_eq!(a & TAG_MASK, t);
        let b = next(a, 0, t);
        assert!(b > a && b & TAG_MASK == t);
        let foreign = (5 << TAG_BITS) | ((t + 1) & TAG_MASK);
        let c = next(b, foreign, t);
        assert!(c > foreign && c > b && c & TAG_MASK == t);
        // An untagged value of an older store is below the next one.
        assert!(next(906, 0, t) > 906);
    }

    #[test]
    fn only_own_issued_values_are_placed() {
        let me = ReplicaId(1);
        let other = ReplicaId(2);
        let mine = next(0, 0, tag(me));
        let theirs = next(0, 0, tag(other));
        let last = next(mine, 0, tag(me));
        assert_eq!(place(mine, me, last, &[me, other]), Since::Here(mine));
        assert_eq!(place(0, me, last, &[me]), Since::Here(0));
        assert_eq!(place(theirs, me, last, &[me, other]), Since::Unknown);
        // Own tag, never issued (above the counter): a lost write, or a guess.
        assert_eq!(place(next(last, 0, tag(me)), me, last, &[me]), Since::Unknown);
    }

    #[test]
    fn a_shared_tag_places_nothing() {
        let me = ReplicaId(1);
        let t = tag(me);
        // Another replica with the same tag.
        let twin = (2u64..).map(ReplicaId).find(|r| tag(*r) == t).expect("a twin exists in 2^25 tries");
        let mine = next(0, 0, t);
        assert_eq!(place(mine, me, mine, &[me]), Since::Here(mine));
        assert_eq!(place(mine, me, mine, &[me, twin]), Since::Unknown);
    }

    #[test]
    fn hostile_values_do_not_raise() {
        assert!(may_raise(next(0, 0, 5)));
        assert!(!may_raise(u64::MAX >> 1));
        // The highest value that raises still leaves room.
        let top = ((RAISE_MAX_COUNTER - 1) << TAG_BITS) | TAG_MASK;
        assert!(may_raise(top));
        assert!(next(top, 0, 0) < 1 << 63);
    }
}
