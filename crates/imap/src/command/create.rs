//! CREATE (RFC 9051), with CREATE-SPECIAL-USE's `USE` (RFC 6154) and
//! OBJECTID's MAILBOXID in the answer (RFC 8474).

use crate::session::{Done, Fail, Session};
use starling_model::account::DELIMITER;
use starling_model::MailboxId;

impl Session {
    /// CREATE, with CREATE-SPECIAL-USE's `(USE (…))` attributes if given
    /// (RFC 6154 §3): answered `[MAILBOXID (…)]` (RFC 8474 §4.1).
    pub(crate) fn create(&mut self, name: &str, special_use: Option<&[String]>) -> Done {
        let name = name.trim_end_matches(DELIMITER);
        // RFC 6154 §3: a use that cannot be given refuses the CREATE (NO
        // [USEATTR]) and creates nothing.
        let special_use = match special_use.unwrap_or_default() {
            [] => None,
            [one] => match starling_model::account::SpecialUse::parse(one) {
                // Virtual mailboxes (every message, every flagged one) are
                // not kept: a plain mailbox must not claim to be one.
                Some(starling_model::account::SpecialUse::All | starling_model::account::SpecialUse::Flagged) => {
                    return Err(Fail::No("[USEATTR] \\All and \\Flagged mailboxes are not supported".into()))
                }
                Some(u) => Some(u),
                None => return Err(Fail::No("[USEATTR] unknown special-use attribute".into())),
            },
            _ => return Err(Fail::No("[USEATTR] a mailbox has at most one special use here".into())),
        };
        let reader = self.reader()?;
        if Self::resolve(&reader, name).is_some() {
            return Err(Fail::No("[ALREADYEXISTS] mailbox exists".into()));
        }
        let segments: Vec<&str> = name.split(DELIMITER).collect();
        if segments.iter().any(|s| s.is_empty()) {
            return Err(Fail::Bad("invalid mailbox name".into()));
        }
        let existing: Vec<Option<MailboxId>> =
            (1..=segments.len()).map(|n| Self::resolve(&reader, &segments[..n].join("/"))).collect();
        drop(reader);
        let last = segments.len() - 1;
        let id = self.write(|b| {
            let mut parent = None;
            for (i, (seg, have)) in segments.iter().zip(existing).enumerate() {
                let using = if i == last { special_use } else { None };
                parent = Some(match have {
                    Some(id) => id,
                    None => b.replica().create_mailbox(seg, parent, using)?,
                });
            }
            Ok(parent.expect("a name has a segment"))
        })?;
        let validity = self.reader()?.status(id)?.uid_validity;
        Ok(format!("[MAILBOXID ({})] CREATE completed", crate::objectid::mailbox_id(id, validity)))
    }
}
