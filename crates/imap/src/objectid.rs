//! OBJECTID (RFC 8474): the identifiers a client may cache by.
//!
//! - **MAILBOXID** is the mailbox's id (the dot of its creation, the same
//!   on every replica) with its UIDVALIDITY: it survives RENAME, and a
//!   mailbox of an account made again (a new incarnation, so new
//!   UIDVALIDITYs) gets a new one even where the dot is the same (INBOX).
//! - **EMAILID** is a hash of the message's content (the body's BLAKE3) and
//!   its INTERNALDATE, the immutable parts of a message: COPY and MOVE keep
//!   it (a copy shares the body and the date), every replica computes the
//!   same, and the same bytes appended twice with the same date share it,
//!   as RFC 8474 §5.1 allows.
//! - **THREADID** is NIL: no thread is kept per message (THREAD computes
//!   its threads per command), which RFC 8474 §5.2 allows; a SEARCH
//!   THREADID matches nothing.
//!
//! Both start with a letter and use only letters, digits and `-`
//! (`objectid = 1*255(ALPHA / DIGIT / "_" / "-")`).

use starling_model::backend::Envelope;
use starling_model::MailboxId;

/// A mailbox's MAILBOXID: `M`, its id, its UIDVALIDITY.
pub fn mailbox_id(id: MailboxId, uid_validity: u32) -> String {
    format!("M{:016x}-{:x}-{uid_validity:08x}", id.0.replica.0, id.0.counter)
}

/// A message's EMAILID: `E` and 24 bytes of BLAKE3 over its body's id
/// and its INTERNALDATE.
pub fn email_id(env: &Envelope) -> String {
    let mut h = blake3::Hasher::new();
    h.update(b"starling emailid v1");
    h.update(&env.blob.0);
    h.update(&env.internal_date.to_be_bytes());
    let hash = h.finalize();
    let mut out = String::with_capacity(49);
    out.push('E');
    for b in &hash.as_bytes()[..24] {
        out.push_str(&format!("{b:02x}"));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use starling_model::{BlobId, Dot, ReplicaId};

    fn is_objectid(s: &str) -> bool {
        (1..=255).contains(&s.len())
            && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
            && s.as_bytes()[0].is_ascii_alphabetic()
    }

    #[test]
    fn ids_are_objectids_and_tell_apart_what_differs() {
        let a = MailboxId(Dot::new(ReplicaId(u64::MAX), u64::MAX >> 16));
        let b = MailboxId(Dot::new(ReplicaId(1), 2));
        assert!(is_objectid(&mailbox_id(a, u32::MAX)) && is_objectid(&mailbox_id(b, 1)));
        assert_ne!(mailbox_id(a, 5), mailbox_id(b, 5));
        assert_ne!(mailbox_id(b, 5), mailbox_id(b, 6), "a new incarnation, a new MAILBOXID");
        // (replica 0x1, counter 0x23) and (0x12, 0x3) do not meet.
        let c = MailboxId(Dot::new(ReplicaId(0x1), 0x23));
        let d = MailboxId(Dot::new(ReplicaId(0x12), 0x3));
        assert_ne!(mailbox_id(c, 1), mailbox_id(d, 1));
        let e = Envelope { blob: BlobId::of(b"x"), size: 1, internal_date: 7 };
        assert!(is_objectid(&email_id(&e)));
        assert_eq!(email_id(&e), email_id(&Envelope { size: 1, ..e }));
        assert_ne!(email_id(&e), email_id(&Envelope { internal_date: 8, ..e }));
        assert_ne!(email_id(&e), email_id(&Envelope { blob: BlobId::of(b"y"), ..e }));
    }
}
