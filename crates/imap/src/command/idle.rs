//! IDLE (RFC 2177, RFC 9051): updates are written as they come
//! ([`Session::account_changed`]) until the client's DONE.

use crate::session::{Mode, Session};
use imap_codec::decode::Decoder;
use imap_codec::imap_types::core::Tag;
use imap_codec::IdleDoneCodec;

impl Session {
    /// IDLE: the updates so far, then `+`; from here the next message is
    /// DONE. In the authenticated state too (RFC 9051 §6.3.13): with
    /// NOTIFY, a client idles for other mailboxes' events.
    pub(crate) fn idle(&mut self, tag: &str) {
        self.updates(true);
        self.notify_updates();
        self.out.extend_from_slice(b"+ idling\r\n");
        self.mode = Mode::Idle(Tag::unvalidated(tag.to_string()));
    }

    /// The message that ends IDLE: DONE, or BAD.
    pub(crate) fn idle_done(&mut self, tag: &Tag<'static>, message: &[u8]) {
        match IdleDoneCodec::default().decode(message) {
            Ok((b"", _)) => {
                self.updates(true);
                self.notify_updates();
                self.tagged(tag.as_ref(), "OK", "IDLE terminated");
            }
            _ => {
                self.tagged(tag.as_ref(), "BAD", "expected DONE");
                self.error();
            }
        }
    }
}
