//! SUBSCRIBE and UNSUBSCRIBE (RFC 9051): a subscription outlives its
//! mailbox, and UNSUBSCRIBE removes it by name.

use crate::session::{full_name, Done, Fail, Session};
use starling_model::account::DELIMITER;
use starling_model::MailboxId;

impl Session {
    pub(crate) fn subscribe(&mut self, name: &str, on: bool) -> Done {
        let reader = self.reader()?;
        let mut ids: Vec<MailboxId> = Self::resolve(&reader, name).into_iter().collect();
        if !on {
            // The subscription of a deleted mailbox outlives it (RFC 9051
            // §6.3.9): UNSUBSCRIBE removes it by name.
            let tree = &reader.names().tree;
            let name = name.trim_end_matches(DELIMITER);
            ids.extend(
                tree.entries
                    .values()
                    .filter(|e| e.deleted && e.subscribed && full_name(tree, e.id).as_deref() == Some(name))
                    .map(|e| e.id),
            );
        }
        drop(reader);
        if ids.is_empty() {
            return Err(Fail::No("[NONEXISTENT] no such mailbox".into()));
        }
        self.write(|b| {
            for id in ids {
                b.replica().subscribe(id, on)?;
            }
            Ok(())
        })?;
        Ok(if on { "SUBSCRIBE completed" } else { "UNSUBSCRIBE completed" }.into())
    }
}
