//! STATUS (RFC 9051), with STATUS=SIZE (RFC 8438), QUOTA's DELETED-STORAGE
//! (RFC 9208), OBJECTID's MAILBOXID (RFC 8474) and APPENDLIMIT (RFC 7889).
//! [`Session::status_lines`] also answers LIST-STATUS and NOTIFY's STATUS.

use crate::extended::StatusExtra;
use crate::session::{Done, Fail, Session};
use imap_codec::imap_types::mailbox::Mailbox;
use imap_codec::imap_types::status::StatusDataItemName;
use starling_model::MailboxId;
use starling_store::StoreError;

impl Session {
    /// STATUS as the client gave it: `placeholder` when MESSAGES stood in
    /// for items imap-codec does not parse ([`crate::extended`]), which are
    /// in `extra`.
    pub(crate) fn status(
        &mut self,
        mailbox: &Mailbox<'_>,
        item_names: &[StatusDataItemName],
        placeholder: bool,
        extra: &[StatusExtra],
    ) -> Done {
        let mut items = item_names.to_vec();
        if placeholder {
            items.retain(|i| *i != StatusDataItemName::Messages);
        }
        self.name_in(mailbox).and_then(|n| self.status_command(&n, &items, extra))
    }

    fn status_command(&mut self, name: &str, items: &[StatusDataItemName], extra: &[StatusExtra]) -> Done {
        let reader = self.reader()?;
        let Some(id) = Self::resolve(&reader, name) else {
            return Err(Fail::No("[NONEXISTENT] no such mailbox".into()));
        };
        drop(reader);
        let mut quoted = Vec::new();
        self.wire_name(&mut quoted, name);
        self.status_lines(id, &String::from_utf8_lossy(&quoted), items, extra)?;
        Ok("STATUS completed".into())
    }

    /// `* STATUS name (…)` for a mailbox; `name` is already in IMAP syntax.
    pub(crate) fn status_lines(
        &mut self,
        id: MailboxId,
        name: &str,
        items: &[StatusDataItemName],
        extra: &[StatusExtra],
    ) -> Result<(), Fail> {
        self.recent_floor(id, None)?;
        if items.contains(&StatusDataItemName::UidNext) {
            self.announce(id)?;
        }
        let reader = self.reader()?;
        let status = reader.status(id)?;
        let mut all = None;
        let mut count = |k: starling_model::Keyword, want: bool| -> Result<usize, StoreError> {
            if all.is_none() {
                all = Some(reader.messages(id, 1, usize::MAX)?);
            }
            Ok(all.iter().flatten().filter(|m| m.flags.contains(&k) == want).count())
        };
        let mut parts = Vec::new();
        for item in items {
            let part = match item {
                StatusDataItemName::Messages => format!("MESSAGES {}", status.messages),
                StatusDataItemName::Recent => {
                    let floor = self.recent_floor(id, None)?;
                    format!("RECENT {}", reader.messages(id, floor, usize::MAX)?.len())
                }
                StatusDataItemName::UidNext => format!("UIDNEXT {}", status.uid_next),
                StatusDataItemName::UidValidity => format!("UIDVALIDITY {}", status.uid_validity),
                StatusDataItemName::Unseen => format!("UNSEEN {}", count(starling_model::Keyword::Seen, false)?),
                StatusDataItemName::Deleted => format!("DELETED {}", count(starling_model::Keyword::Deleted, true)?),
                StatusDataItemName::DeletedStorage => {
                    // RFC 9208 §4.3: what EXPUNGE would free, in STORAGE's
                    // unit (KiB, rounded up): the \Deleted messages' sizes.
                    let mut size = 0u64;
                    for m in reader.messages(id, 1, usize::MAX)? {
                        if m.flags.contains(&starling_model::Keyword::Deleted) {
                            size += reader.envelope(m.message)?.map_or(0, |e| e.size);
                        }
                    }
                    format!("DELETED-STORAGE {}", size.div_ceil(1024))
                }
                StatusDataItemName::HighestModSeq => format!("HIGHESTMODSEQ {}", status.highest_modseq.max(1)),
                StatusDataItemName::Size => {
                    // RFC 8438: the sum of the messages' RFC822.SIZE.
                    let mut size = 0u64;
                    for m in reader.messages(id, 1, usize::MAX)? {
                        size += reader.envelope(m.message)?.map_or(0, |e| e.size);
                    }
                    format!("SIZE {size}")
                }
            };
            parts.push(part);
        }
        for item in extra {
            parts.push(match item {
                StatusExtra::MailboxId => {
                    format!("MAILBOXID ({})", crate::objectid::mailbox_id(id, status.uid_validity))
                }
                StatusExtra::AppendLimit => format!("APPENDLIMIT {}", self.append_limit()),
            });
        }
        self.untagged(&format!("STATUS {name} ({})", parts.join(" ")));
        Ok(())
    }
}
