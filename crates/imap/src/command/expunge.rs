//! EXPUNGE and UID EXPUNGE (RFC 9051, RFC 4315).

use crate::session::{Done, Fail, Session};
use imap_codec::imap_types::sequence::SequenceSet;
use starling_model::Keyword;

impl Session {
    pub(crate) fn expunge(&mut self, only: Option<&SequenceSet>) -> Done {
        let sel = self.selected.as_ref().expect("selected");
        if sel.read_only {
            return Err(Fail::No("[READ-ONLY] mailbox is read-only".into()));
        }
        let reader = self.reader()?;
        let all = SequenceSet::try_from("1:*").expect("valid set");
        let targets = self.targets(&reader, only.unwrap_or(&all), only.is_some())?;
        drop(reader);
        let deleted: Vec<_> =
            targets.into_iter().filter(|(_, m)| m.flags.contains(&Keyword::Deleted)).map(|(_, m)| m.message).collect();
        if !deleted.is_empty() {
            self.write(|b| {
                // Those another session expunged meanwhile are gone already.
                let live: Vec<_> = deleted.iter().copied().filter(|m| b.replica().is_live(*m)).collect();
                Ok(b.replica().expunge(&live)?)
            })?;
        }
        self.updates(true);
        Ok(format!("{}EXPUNGE completed", if only.is_some() { "UID " } else { "" }))
    }
}
