//! DELETE (RFC 9051): a mailbox without children, never INBOX.

use crate::session::{Done, Fail, Session};
use starling_model::account::DELIMITER;
use starling_model::INBOX;

impl Session {
    pub(crate) fn delete(&mut self, name: &str) -> Done {
        let reader = self.reader()?;
        let Some(id) = Self::resolve(&reader, name) else {
            return Err(Fail::No("[NONEXISTENT] no such mailbox".into()));
        };
        if id == INBOX {
            return Err(Fail::No("[CANNOT] INBOX cannot be deleted".into()));
        }
        let prefix = format!("{}{DELIMITER}", name.trim_end_matches(DELIMITER));
        if reader.names().tree.by_name.keys().any(|n| n.starts_with(&prefix)) {
            return Err(Fail::No("[INUSE] mailbox has children; delete them first".into()));
        }
        drop(reader);
        if self.selected.as_ref().is_some_and(|s| s.id == id) {
            self.selected = None;
        }
        self.write(|b| Ok(b.replica().delete_mailbox(id)?))?;
        Ok("DELETE completed".into())
    }
}
