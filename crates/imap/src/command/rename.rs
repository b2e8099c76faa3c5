//! RENAME (RFC 9051): missing parents are created first; RENAME INBOX
//! moves its messages to a new mailbox.

use crate::session::{Done, Fail, Session};
use starling_model::account::DELIMITER;
use starling_model::INBOX;

impl Session {
    pub(crate) fn rename(&mut self, from: &str, to: &str) -> Done {
        let to = to.trim_end_matches(DELIMITER);
        let reader = self.reader()?;
        let Some(id) = Self::resolve(&reader, from) else {
            return Err(Fail::No("[NONEXISTENT] no such mailbox".into()));
        };
        if Self::resolve(&reader, to).is_some() {
            return Err(Fail::No("[ALREADYEXISTS] target mailbox exists".into()));
        }
        let (parent_name, leaf) = match to.rfind(DELIMITER) {
            Some(i) => (Some(&to[..i]), &to[i + 1..]),
            None => (None, to),
        };
        if leaf.is_empty() {
            return Err(Fail::Bad("invalid mailbox name".into()));
        }
        let parent = parent_name.map(|p| Self::resolve(&reader, p));
        if let Some(None) = parent {
            // Create the missing parents first, as CREATE would.
            drop(reader);
            self.create(parent_name.expect("some"), None)?;
            return self.rename(from, to);
        }
        let parent = parent.flatten();
        if id == INBOX {
            // RENAME INBOX moves its messages to a new mailbox; INBOX stays.
            let messages: Vec<_> = reader.messages(INBOX, 1, usize::MAX)?.into_iter().map(|m| m.message).collect();
            drop(reader);
            self.write(|b| {
                let new = b.replica().create_mailbox(leaf, parent, None)?;
                for m in messages {
                    b.replica().move_message(m, new)?;
                }
                Ok(())
            })?;
        } else {
            drop(reader);
            self.write(|b| Ok(b.replica().rename_mailbox(id, leaf, parent)?))?;
        }
        Ok("RENAME completed".into())
    }
}
