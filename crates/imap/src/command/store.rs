//! STORE and UID STORE (RFC 9051), with CONDSTORE's UNCHANGEDSINCE and
//! MODIFIED (RFC 7162).

use crate::selected::{flags_string, keywords, set_string};
use crate::session::{Done, Fail, Session};
use imap_codec::imap_types::command::StoreModifier;
use imap_codec::imap_types::flag::{Flag, StoreResponse, StoreType};
use imap_codec::imap_types::sequence::SequenceSet;
use starling_model::Keyword;
use starling_store::Since;
use std::collections::BTreeSet;

impl Session {
    pub(crate) fn store(
        &mut self,
        set: &SequenceSet,
        kind: &StoreType,
        response: &StoreResponse,
        flags: &[Flag<'_>],
        uid: bool,
        modifiers: &[StoreModifier],
    ) -> Done {
        if self.selected.as_ref().expect("selected").read_only {
            return Err(Fail::No("[READ-ONLY] mailbox is read-only".into()));
        }
        let wanted = keywords(flags)?;
        let unchanged_since = modifiers.iter().map(|StoreModifier::UnchangedSince(n)| *n).next();
        if unchanged_since.is_some() {
            self.condstore_on();
        }
        let reader = self.reader()?;
        // A MODSEQ this replica cannot place: every message may have changed
        // since, so every conditional change fails (the client refetches).
        let unchanged_since = match unchanged_since {
            Some(token) => Some(match reader.place_modseq(token)? {
                Since::Here(m) => m,
                Since::Unknown => 0,
            }),
            None => None,
        };
        let targets = self.targets(&reader, set, uid)?;
        drop(reader);
        let mut modified = Vec::new();
        let mut changes = Vec::new();
        for (seq, m) in &targets {
            if unchanged_since.is_some_and(|u| m.modseq > u) {
                modified.push(if uid { m.uid } else { *seq as u32 });
                continue;
            }
            let (add, remove): (Vec<Keyword>, Vec<Keyword>) = match kind {
                StoreType::Add => (wanted.clone(), Vec::new()),
                StoreType::Remove => (Vec::new(), wanted.clone()),
                // Every keyword set is an add, shown or not (add wins for
                // every add: `Replica::store_flags`).
                StoreType::Replace => {
                    (wanted.clone(), m.flags.iter().filter(|k| !wanted.contains(k)).cloned().collect())
                }
            };
            changes.push((m.message, add, remove));
        }
        if changes.iter().any(|(_, a, r)| !a.is_empty() || !r.is_empty()) {
            self.write(|b| {
                for (m, add, remove) in &changes {
                    // Another session may have expunged it since: skipped
                    // (RFC 9051 7.5.1: it is reported as EXPUNGE).
                    if b.replica().is_live(*m) {
                        b.replica().store_flags(*m, add, remove)?;
                    }
                }
                Ok(())
            })?;
        }
        let reader = self.reader()?;
        self.announce_keywords(&reader);
        let after = self.targets(&reader, set, uid)?;
        drop(reader);
        let condstore = self.enabled.condstore;
        let silent = matches!(response, StoreResponse::Silent);
        let modseq_before: std::collections::HashMap<usize, u64> =
            targets.iter().map(|(s, m)| (*s, m.modseq)).collect();
        let changed: BTreeSet<_> = changes.iter().map(|(m, _, _)| *m).collect();
        for (seq, m) in after {
            if !changed.contains(&m.message) {
                continue;
            }
            let sel = self.selected.as_mut().expect("selected");
            let moved = modseq_before.get(&seq) != Some(&m.modseq);
            sel.reported(m.uid, m.modseq);
            // .SILENT still reports a MODSEQ change to a CONDSTORE client
            // (RFC 7162 3.2), but not the flags it asked for.
            if silent && !(condstore && moved) {
                continue;
            }
            let uid_item = if uid { format!("UID {} ", m.uid) } else { String::new() };
            let modseq = if condstore { format!(" MODSEQ ({})", m.modseq) } else { String::new() };
            let recent = sel.is_recent(m.uid);
            let flags = if silent { String::new() } else { format!("FLAGS {}", flags_string(&m.flags, recent)) };
            let body = format!("{uid_item}{flags}{modseq}");
            self.untagged(&format!("{seq} FETCH ({})", body.trim()));
        }
        if !modified.is_empty() {
            modified.sort_unstable();
            return Ok(format!("[MODIFIED {}] conditional STORE failed for some", set_string(&modified)));
        }
        Ok(format!("{}STORE completed", if uid { "UID " } else { "" }))
    }
}
