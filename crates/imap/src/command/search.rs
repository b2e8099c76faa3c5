//! SEARCH and UID SEARCH (RFC 9051), with ESEARCH's RETURN (RFC 4731),
//! SEARCHRES's SAVE (RFC 5182), CONTEXT's UPDATE (RFC 5267) and CONDSTORE's
//! MODSEQ (RFC 7162).
//!
//! The matcher, shared with SORT, THREAD, CONTEXT and NOTIFY: whether a
//! message matches a list of search keys ([`Session::matching`] over the
//! selected mailbox, [`matches_noting_absent`] for one message, [`uses_modseq`]),
//! below the SEARCH command.

use crate::context::AWAITING_MAX;
use crate::extended::SearchExtra;
use crate::mime;
use crate::returns::{Item, Returns};
use crate::selected::Selected;
use crate::session::{Done, Fail, Session};
use imap_codec::imap_types::search::SearchKey;
use imap_codec::imap_types::sequence::{SeqOrUid, Sequence, SequenceSet};
use starling_model::backend::Envelope;
use starling_model::{BlobId, Keyword};
use starling_store::{MessageInfo, Reader};

impl Session {
    pub(crate) fn search(
        &mut self,
        charset: Option<&str>,
        criteria: &[SearchKey<'_>],
        uid: bool,
        tag: &str,
        returns: Option<Vec<String>>,
    ) -> Done {
        let returns = returns.map(|r| Returns::parse(&r)).transpose()?;
        let update = returns.as_ref().is_some_and(|r| r.update);
        if update {
            self.update_tag_free(tag)?;
        }
        // An updating search remembers the messages it tested without
        // their body (a partial replica), to test them again when it comes.
        let mut awaiting = Vec::new();
        let matched = charset.map_or(Ok(()), crate::command::sort::charset_ok).and_then(|()| {
            let reader = self.reader()?;
            self.matching_awaiting(&reader, criteria, update.then_some(&mut awaiting))
        });
        // SEARCHRES (RFC 5182): SAVE keeps the result for `$`; a failed
        // SEARCH with SAVE leaves it empty.
        if let Some(r) = returns.as_ref().filter(|r| r.save) {
            let uids: Option<Vec<u32>> =
                matched.as_ref().ok().map(|m| r.saved(m.len()).into_iter().map(|i| m[i].1.uid).collect());
            self.save_result(uids.as_deref());
        }
        let matched = matched?;
        let uses_modseq = criteria.iter().any(uses_modseq);
        if uses_modseq {
            self.condstore_on();
        }
        let done = format!("{}SEARCH completed", if uid { "UID " } else { "" });
        if update {
            let uids: Vec<u32> = matched.iter().map(|(_, m)| m.uid).collect();
            self.start_update(tag, uid, None, criteria, uids, awaiting);
        }
        if returns.as_ref().is_some_and(|r| r.save && r.items.is_empty() && !r.update) {
            // SAVE alone: no answer but OK (RFC 5182 §2.4).
            return Ok(done);
        }
        let hits: Vec<u32> = matched.iter().map(|(seq, m)| if uid { m.uid } else { *seq }).collect();
        // MODSEQ of each hit, in the same order.
        let modseqs: Vec<u64> = matched.iter().map(|(_, m)| m.modseq).collect();
        let modseq_max = modseqs.iter().copied().max().unwrap_or(0);
        let returns = match returns {
            Some(r) => Some(r),
            None if self.enabled.rev2 => Some(Returns::parse(&[])?),
            None => None,
        };
        if let Some(returns) = returns {
            let mut line = format!("ESEARCH (TAG \"{tag}\"){}", if uid { " UID" } else { "" });
            returns.write_items(&mut line, &hits, true);
            if uses_modseq && !hits.is_empty() {
                // The highest MODSEQ of the messages returned: MIN and MAX
                // return one message each, ALL and COUNT every match,
                // PARTIAL those in its range.
                let every = returns.has(&Item::All) || returns.has(&Item::Count);
                let returned = if every {
                    modseq_max
                } else {
                    let min = returns.has(&Item::Min).then(|| modseqs[0]);
                    let max = returns.has(&Item::Max).then(|| modseqs[modseqs.len() - 1]);
                    let part = returns.partial().and_then(|p| modseqs[p.slice(modseqs.len())].iter().copied().max());
                    min.max(max).max(part).unwrap_or(0)
                };
                if returned > 0 {
                    line.push_str(&format!(" MODSEQ {returned}"));
                }
            }
            self.untagged(&line);
        } else {
            let mut line = String::from("SEARCH");
            for h in &hits {
                line.push_str(&format!(" {h}"));
            }
            if uses_modseq && !hits.is_empty() {
                line.push_str(&format!(" (MODSEQ {modseq_max})"));
            }
            self.untagged(&line);
        }
        Ok(done)
    }
}

// The matcher shared with SORT, THREAD, CONTEXT and NOTIFY.

impl Session {
    /// SEARCHRES (RFC 5182): keeps the UIDs a SEARCH or SORT saves
    /// ([`Returns::saved`]; `None` when the command failed, which empties
    /// the saved result) for `$`.
    pub(crate) fn save_result(&mut self, uids: Option<&[u32]>) {
        let sel = self.selected.as_mut().expect("selected");
        let mut kept = uids.unwrap_or_default().to_vec();
        kept.sort_unstable();
        kept.dedup();
        sel.saved = starling_store::ranges::of_sorted(kept);
    }

    /// The messages in this session's view of the selected mailbox that
    /// match every key, with their sequence numbers, in mailbox order: the
    /// one SEARCH evaluation, which SORT and THREAD use too.
    pub(crate) fn matching(
        &self,
        reader: &Reader,
        criteria: &[SearchKey<'_>],
    ) -> Result<Vec<(u32, MessageInfo)>, Fail> {
        self.matching_awaiting(reader, criteria, None)
    }

    /// [`Session::matching`], and into `awaiting` the messages whose
    /// answer needed a body that is not here, as (UID, body) in UID order:
    /// at most [`AWAITING_MAX`] + 1, enough to tell it is over the bound.
    pub(crate) fn matching_awaiting(
        &self,
        reader: &Reader,
        criteria: &[SearchKey<'_>],
        mut awaiting: Option<&mut Vec<(u32, BlobId)>>,
    ) -> Result<Vec<(u32, MessageInfo)>, Fail> {
        let sel = self.selected.as_ref().expect("selected");
        let mut out = Vec::new();
        for m in reader.messages(sel.id, 1, usize::MAX)? {
            let Some(i) = sel.seq_of(m.uid) else { continue };
            let (hit, absent) = matches_noting_absent(reader, sel, &sel.search_extra, &m, criteria);
            if let (Some(list), Some(blob)) = (awaiting.as_deref_mut(), absent) {
                if list.len() <= AWAITING_MAX {
                    list.push((m.uid, blob));
                }
            }
            if hit {
                out.push((i as u32 + 1, m));
            }
        }
        Ok(out)
    }
}

/// Whether one message matches every key (`extra`: the keys lifted off the
/// command, [`crate::extended::EXTRA_KEY`]), and its body if the answer
/// needed it and it is not here (a partial replica: it was tested as an
/// empty message). The body is read only if a key needs it.
pub(crate) fn matches_noting_absent(
    reader: &Reader,
    sel: &Selected,
    extra: &[SearchExtra],
    info: &MessageInfo,
    keys: &[SearchKey<'_>],
) -> (bool, Option<BlobId>) {
    let mut c = Candidate { info, env: None, raw: None, absent: None, reader, sel, extra };
    let hit = keys.iter().all(|k| c.matches(k));
    (hit, c.absent)
}

pub(crate) fn uses_modseq(k: &SearchKey<'_>) -> bool {
    match k {
        SearchKey::ModSequence { .. } => true,
        SearchKey::And(v) => v.as_ref().iter().any(uses_modseq),
        SearchKey::Or(a, b) => uses_modseq(a) || uses_modseq(b),
        SearchKey::Not(a) => uses_modseq(a),
        _ => false,
    }
}

/// One message under test by SEARCH; the body is read only if a key needs it.
struct Candidate<'a> {
    info: &'a MessageInfo,
    env: Option<Option<Envelope>>,
    raw: Option<Vec<u8>>,
    /// The body was needed and is not here.
    absent: Option<BlobId>,
    reader: &'a Reader,
    sel: &'a Selected,
    extra: &'a [SearchExtra],
}

fn day(secs: i64) -> chrono::NaiveDate {
    chrono::DateTime::from_timestamp(secs, 0).unwrap_or_default().date_naive()
}

impl Candidate<'_> {
    fn envelope(&mut self) -> Option<Envelope> {
        if self.env.is_none() {
            self.env = Some(self.reader.envelope(self.info.message).ok().flatten());
        }
        self.env.flatten()
    }

    fn raw(&mut self) -> &[u8] {
        if self.raw.is_none() {
            let body = self.envelope().and_then(|e| match self.reader.body(e.blob) {
                Ok(b) => Some(b),
                Err(starling_store::StoreError::MissingBlob(_)) => {
                    self.absent = Some(e.blob);
                    None
                }
                Err(_) => None,
            });
            self.raw = Some(body.unwrap_or_default());
        }
        self.raw.as_deref().unwrap_or_default()
    }

    fn recent(&self) -> bool {
        self.sel.is_recent(self.info.uid)
    }

    fn has(&self, k: Keyword) -> bool {
        self.info.flags.contains(&k)
    }

    fn header_has(&mut self, name: &str, needle: &[u8]) -> bool {
        let needle = String::from_utf8_lossy(needle).to_lowercase();
        mime::header_values(self.raw(), name).iter().any(|v| v.to_lowercase().contains(&needle))
    }

    /// An address header's text, or one of its addresses as parsed.
    fn address_has(&mut self, name: &str, needle: &[u8]) -> bool {
        if self.header_has(name, needle) {
            return true;
        }
        let needle = String::from_utf8_lossy(needle).to_lowercase();
        mime::address_texts(self.raw(), name).iter().any(|v| v.to_lowercase().contains(&needle))
    }

    /// A key lifted off the command ([`crate::extended::EXTRA_KEY`]), if
    /// `set` stands for one.
    fn extra_key(&self, set: &SequenceSet) -> Option<&SearchExtra> {
        let [Sequence::Single(SeqOrUid::Value(v))] = set.0.as_ref() else { return None };
        let i = crate::extended::EXTRA_KEY.checked_sub(v.get())? as usize;
        self.extra.get(i)
    }

    fn matches_extra(&mut self, key: &SearchExtra) -> bool {
        match key {
            SearchExtra::EmailId(id) => self.envelope().is_some_and(|e| crate::objectid::email_id(&e) == *id),
            // No THREADID is kept (RFC 8474 §5.2: then nothing matches).
            SearchExtra::ThreadId(_) => false,
            // RFC 8514 §4.3: no save date is stored.
            SearchExtra::SaveDateSupported => false,
        }
    }

    fn in_set(&self, set: &SequenceSet, uid: bool) -> bool {
        let ranges = self.sel.uid_ranges(set, uid).unwrap_or_default();
        ranges.iter().any(|&(lo, hi)| lo <= self.info.uid && self.info.uid <= hi)
    }

    fn matches(&mut self, key: &SearchKey<'_>) -> bool {
        let date = |c: &mut Self| c.envelope().map_or(0, |e| e.internal_date);
        let sent = |c: &mut Self| mime::sent_date(c.raw());
        match key {
            SearchKey::And(keys) => keys.as_ref().iter().all(|k| self.matches(k)),
            SearchKey::Or(a, b) => self.matches(a) || self.matches(b),
            SearchKey::Not(k) => !self.matches(k),
            SearchKey::SequenceSet(set) => self.in_set(set, false),
            SearchKey::Uid(set) => match self.extra_key(set).cloned() {
                Some(key) => self.matches_extra(&key),
                None => self.in_set(set, true),
            },
            SearchKey::All => true,
            SearchKey::Answered => self.has(Keyword::Answered),
            SearchKey::Unanswered => !self.has(Keyword::Answered),
            SearchKey::Deleted => self.has(Keyword::Deleted),
            SearchKey::Undeleted => !self.has(Keyword::Deleted),
            SearchKey::Draft => self.has(Keyword::Draft),
            SearchKey::Undraft => !self.has(Keyword::Draft),
            SearchKey::Flagged => self.has(Keyword::Flagged),
            SearchKey::Unflagged => !self.has(Keyword::Flagged),
            SearchKey::Seen => self.has(Keyword::Seen),
            SearchKey::Unseen => !self.has(Keyword::Seen),
            SearchKey::Recent => self.recent(),
            SearchKey::New => self.recent() && !self.has(Keyword::Seen),
            SearchKey::Old => !self.recent(),
            SearchKey::Keyword(k) => Keyword::parse(k.as_ref()).is_ok_and(|k| self.has(k)),
            SearchKey::Unkeyword(k) => !Keyword::parse(k.as_ref()).is_ok_and(|k| self.has(k)),
            SearchKey::Larger(n) => self.envelope().is_some_and(|e| e.size > *n as u64),
            SearchKey::Smaller(n) => self.envelope().is_some_and(|e| e.size < *n as u64),
            SearchKey::Before(d) => day(date(self)) < *d.as_ref(),
            SearchKey::On(d) => day(date(self)) == *d.as_ref(),
            SearchKey::Since(d) => day(date(self)) >= *d.as_ref(),
            SearchKey::SentBefore(d) => sent(self).is_some_and(|s| s < *d.as_ref()),
            SearchKey::SentOn(d) => sent(self).is_some_and(|s| s == *d.as_ref()),
            SearchKey::SentSince(d) => sent(self).is_some_and(|s| s >= *d.as_ref()),
            SearchKey::Bcc(s) => self.address_has("Bcc", s.as_ref()),
            SearchKey::Cc(s) => self.address_has("Cc", s.as_ref()),
            SearchKey::From(s) => self.address_has("From", s.as_ref()),
            SearchKey::To(s) => self.address_has("To", s.as_ref()),
            SearchKey::Subject(s) => self.header_has("Subject", s.as_ref()),
            SearchKey::Header(name, value) => {
                let name = String::from_utf8_lossy(name.as_ref()).into_owned();
                self.header_has(&name, value.as_ref())
            }
            SearchKey::Body(s) => {
                let needle = String::from_utf8_lossy(s.as_ref()).into_owned();
                mime::text_contains(self.raw(), &needle, false)
            }
            SearchKey::Text(s) => {
                let needle = String::from_utf8_lossy(s.as_ref()).into_owned();
                mime::text_contains(self.raw(), &needle, true)
            }
            // A search criterion, compared as a number (RFC 7162 §3.1.5),
            // whichever replica issued it: not a way to sync.
            SearchKey::ModSequence { modseq, .. } => self.info.modseq >= *modseq,
            #[allow(unreachable_patterns)]
            _ => false,
        }
    }
}
