//! SELECT and EXAMINE (RFC 9051): the mailbox becomes the session's
//! [`Selected`] view, with CONDSTORE's and QRESYNC's parameters (RFC 7162).

use crate::selected::{flags_string, gone_since, ranges_string, Selected};
use crate::session::{Done, Fail, Session};
use crate::uidmap::UidMap;
use imap_codec::imap_types::command::SelectParameter;
use starling_model::MailboxId;
use starling_store::Reader;

impl Session {
    pub(crate) fn select(&mut self, name: &str, read_only: bool, params: &[SelectParameter]) -> Done {
        self.selected = None;
        let reader = self.reader()?;
        let Some(id) = Self::resolve(&reader, name) else {
            return Err(Fail::No("[NONEXISTENT] no such mailbox".into()));
        };
        drop(reader);
        let mut qresync = None;
        for p in params {
            match p {
                SelectParameter::CondStore => self.enabled.condstore = true,
                SelectParameter::QResync { uid_validity, mod_sequence_value, known_uids, .. } => {
                    if !self.enabled.qresync {
                        return Err(Fail::Bad("ENABLE QRESYNC first".into()));
                    }
                    qresync = Some((uid_validity.get(), mod_sequence_value.get(), known_uids.clone()));
                }
            }
        }
        // A client that moved here from another replica finds what the
        // peers hold, not an older state (with k > 0); nothing was written
        // yet, so the command can park and run again.
        self.catch_up_or_park()?;
        // A MODSEQ of another replica (or never issued): raised above first,
        // so HIGHESTMODSEQ below is above it; answered in full below.
        let placed = match &qresync {
            Some((_, since, _)) => self.place_modseq(id, *since)?,
            None => None,
        };
        // The floor's first value is the UIDNEXT announced before this
        // SELECT announces its own.
        self.recent_floor(id, None)?;
        self.announce_after(id, true)?;
        let reader = self.reader()?;
        let status = reader.status(id)?;
        let mut selected = Selected::new(id, read_only);
        selected.uids = self.view_of(&reader, id, status.highest_modseq)?;
        selected.modseq = status.highest_modseq;
        // Read-write: what lies above the floor becomes this session's
        // \Recent and the floor rises past it in one step, so that
        // sessions selecting at once never both take a message.
        let max = selected.max_uid();
        let floor = self.recent_floor(id, (!read_only && max > 0).then_some(max))?;
        let recent_count = selected.uids.count_from(floor);
        if recent_count > 0 {
            selected.recent.push((floor, max));
        }
        let first_unseen = match reader.first_unseen(id)? {
            Some(u) => selected.seq_of(u),
            None => None,
        };
        selected.keywords = self.flags_lines(&reader);
        self.untagged(&format!("{} EXISTS", selected.uids.len()));
        if !self.enabled.rev2 {
            self.untagged(&format!("{recent_count} RECENT"));
        }
        if let Some(i) = first_unseen {
            if !self.enabled.rev2 {
                self.untagged(&format!("OK [UNSEEN {}] first unseen", i + 1));
            }
        }
        self.untagged(&format!("OK [UIDVALIDITY {}] UIDs valid", status.uid_validity));
        self.untagged(&format!("OK [UIDNEXT {}] predicted next UID", status.uid_next));
        self.untagged(&format!("OK [HIGHESTMODSEQ {}] highest", status.highest_modseq.max(1)));
        let mailbox_id = crate::objectid::mailbox_id(id, status.uid_validity);
        self.untagged(&format!("OK [MAILBOXID ({mailbox_id})] mailbox id (RFC 8474)"));
        if let Some((validity, _, known)) = qresync {
            if validity == status.uid_validity {
                // Without known UIDs, those below UIDNEXT (a client given
                // UIDs above it by another replica should send its known
                // UIDs, as RFC 7162 recommends).
                let known_ranges = match &known {
                    Some(set) => Selected::new(id, read_only).uid_ranges(set, true)?,
                    None => vec![(1, status.uid_next.saturating_sub(1))],
                };
                let answer = reader.resync(id, placed, &known_ranges)?;
                if !answer.vanished.is_empty() {
                    self.untagged(&format!("VANISHED (EARLIER) {}", ranges_string(&answer.vanished)));
                }
                for m in answer.changed {
                    if let Some(i) = selected.seq_of(m.uid) {
                        self.untagged(&format!(
                            "{} FETCH (UID {} FLAGS {} MODSEQ ({}))",
                            i + 1,
                            m.uid,
                            flags_string(&m.flags, selected.is_recent(m.uid)),
                            m.modseq
                        ));
                    }
                }
            }
        }
        self.selected = Some(selected);
        Ok(if read_only { "[READ-ONLY] EXAMINE completed" } else { "[READ-WRITE] SELECT completed" }.into())
    }

    /// The UIDs of a mailbox at `modseq`, from the shared cache when it can.
    fn view_of(&self, reader: &Reader, id: MailboxId, modseq: u64) -> Result<UidMap, Fail> {
        let key = (self.account_name().to_string(), id);
        let cached = self.shared.views.lock().expect("views").get(&key).cloned();
        let map = match cached {
            Some((m, map)) if m == modseq => return Ok(map),
            Some((m, mut map)) if m < modseq => {
                let mut changed: Vec<u32> = reader.changed_since(id, m, usize::MAX)?.iter().map(|i| i.uid).collect();
                changed.sort_unstable();
                let gone = gone_since(reader, id, m, &map)?;
                map.advance(&gone, changed);
                map
            }
            _ => UidMap::from_sorted(reader.uids(id)?),
        };
        self.shared.views.lock().expect("views").insert(key, (modseq, map.clone()));
        Ok(map)
    }
}
