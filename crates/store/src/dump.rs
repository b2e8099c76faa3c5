//! Canonical dumps of an account, as text and as data.

use crate::*;

/// One mailbox in [`Store::dump_view`].
#[derive(Clone, Debug, serde::Serialize)]
pub struct MailboxDump {
    /// Full name.
    pub name: String,
    /// UIDVALIDITY.
    pub uidvalidity: u32,
    /// UIDNEXT.
    pub uidnext: u32,
    /// Subscribed.
    pub subscribed: bool,
    /// Special-use attribute.
    pub special_use: Option<&'static str>,
    /// Its messages by UID.
    pub messages: Vec<MessageDump>,
}

/// One message in [`Store::dump_view`].
#[derive(Clone, Debug, serde::Serialize)]
pub struct MessageDump {
    /// UID.
    pub uid: u32,
    /// Message id.
    pub id: String,
    /// Keywords, sorted.
    pub flags: Vec<String>,
}

impl Store {
    /// The canonical dump of an account (see [`Replica::dump`]).
    pub fn dump(&self, account: &str) -> Result<String, StoreError> {
        self.inspect(account, |r| r.dump())
    }

    /// The same canonical content as [`Store::dump`], as data (for `dump
    /// --json`): mailboxes by name, messages by UID, keywords sorted.
    pub fn dump_view(&self, account: &str) -> Result<Vec<MailboxDump>, StoreError> {
        let reader = self.read(account)?;
        let tree = &reader.names().tree;
        let mut out = Vec::new();
        for (name, id) in &tree.by_name {
            let st = reader.status(*id)?;
            let entry = tree.entries.get(id);
            let messages = reader
                .messages(*id, 1, usize::MAX)?
                .into_iter()
                .map(|m| MessageDump {
                    uid: m.uid,
                    id: format!("{:?}", m.message),
                    flags: m.flags.iter().map(|k| k.to_string()).collect(),
                })
                .collect();
            out.push(MailboxDump {
                name: name.clone(),
                uidvalidity: st.uid_validity,
                uidnext: st.uid_next,
                subscribed: entry.is_some_and(|e| e.subscribed),
                special_use: entry.and_then(|e| e.special_use).map(|u| u.as_str()),
                messages,
            });
        }
        Ok(out)
    }
}
