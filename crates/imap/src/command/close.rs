//! CLOSE and UNSELECT (RFC 9051, RFC 3691): the selected state ends; CLOSE
//! first expunges the messages flagged \Deleted, without reporting them.

use crate::session::{Done, Session};
use starling_model::Keyword;

impl Session {
    /// CLOSE (`expunge`) or UNSELECT.
    pub(crate) fn close_command(&mut self, expunge: bool) -> Done {
        self.close(expunge);
        Ok(if expunge { "CLOSE completed" } else { "UNSELECT completed" }.into())
    }

    pub(crate) fn close(&mut self, expunge: bool) {
        if let Some(sel) = self.selected.take() {
            if expunge && !sel.read_only {
                if let Ok(reader) = self.reader() {
                    let deleted: Vec<_> = reader
                        .messages(sel.id, 1, usize::MAX)
                        .unwrap_or_default()
                        .into_iter()
                        .filter(|m| sel.seq_of(m.uid).is_some() && m.flags.contains(&Keyword::Deleted))
                        .map(|m| m.message)
                        .collect();
                    drop(reader);
                    if !deleted.is_empty() {
                        let _ = self.write(|b| Ok(b.replica().expunge(&deleted)?));
                    }
                }
            }
        }
    }
}
