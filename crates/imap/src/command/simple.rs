//! The commands that take a few lines each, in one file: CAPABILITY, NOOP,
//! CHECK, LOGOUT, STARTTLS (RFC 9051), NAMESPACE (RFC 2342) and ID
//! (RFC 2971). What NOOP and CHECK do, the updates, is what the dispatch
//! ends every command with.

use crate::session::{Done, Fail, Session, Wants};
use starling_model::account::DELIMITER;

impl Session {
    /// CAPABILITY: [`Session::capabilities`] in the current state.
    pub(crate) fn capability(&mut self) -> Done {
        let caps = self.capabilities();
        self.untagged(&format!("CAPABILITY {caps}"));
        Ok("CAPABILITY completed".into())
    }

    /// NOOP.
    pub(crate) fn noop(&self) -> Done {
        Ok("NOOP completed".into())
    }

    /// CHECK (IMAP4rev1; every change is durable when committed).
    pub(crate) fn check(&self) -> Done {
        Ok("CHECK completed".into())
    }

    /// LOGOUT: answered here; the connection closes once it is written.
    pub(crate) fn logout(&mut self, tag: &str) {
        self.untagged("BYE logging out");
        self.tagged(tag, "OK", "LOGOUT completed");
        self.wants = Wants::Close;
    }

    /// STARTTLS, where it is offered (before login, not yet encrypted):
    /// answered here (`Ok`), and TLS starts once that is written.
    pub(crate) fn starttls(&mut self, tag: &str) -> Result<(), Fail> {
        if self.starttls_offered && self.account.is_none() {
            self.tagged(tag, "OK", "begin TLS negotiation now");
            self.wants = Wants::StartTls;
            return Ok(());
        }
        Err(Fail::Bad("STARTTLS not available here".into()))
    }

    /// NAMESPACE: one personal namespace, no others.
    pub(crate) fn namespace(&mut self) -> Done {
        self.untagged(&format!("NAMESPACE ((\"\" \"{DELIMITER}\")) NIL NIL"));
        Ok("NAMESPACE completed".into())
    }

    /// ID: the server's name and version, whatever the client sent.
    pub(crate) fn id(&mut self) -> Done {
        self.untagged(&format!("ID (\"name\" \"Starling\" \"version\" \"{}\")", env!("CARGO_PKG_VERSION")));
        Ok("ID completed".into())
    }
}
