//! The selected state: the session's view of one mailbox (sequence numbers
//! to UIDs, and the MODSEQ it last showed of each message), the updates that
//! bring it up to date, and what the commands that work on messages share
//! (UID ranges of a set, the messages a set names, sets as text). The
//! commands themselves are in [`crate::command`].

use crate::extended::SearchExtra;
use crate::session::{Fail, Session};
use crate::uidmap::UidMap;
use imap_codec::imap_types::flag::Flag;
use imap_codec::imap_types::sequence::{SeqOrUid, Sequence, SequenceSet};
use starling_model::{Keyword, MailboxId};
use starling_store::{MessageInfo, Reader, StoreError};
use std::collections::{BTreeSet, HashMap};

/// The selected mailbox as this session has shown it.
pub(crate) struct Selected {
    pub id: MailboxId,
    pub read_only: bool,
    /// The UIDs shown, by sequence number.
    pub uids: UidMap,
    /// HIGHESTMODSEQ of the mailbox when last looked at.
    pub modseq: u64,
    /// UID ranges \Recent in this session.
    pub recent: Vec<(u32, u32)>,
    /// UID → MODSEQ of flags this session reported itself since the last
    /// update (its own STORE, a FETCH of FLAGS) that the update would
    /// otherwise echo back: only MODSEQs above `modseq` are kept, one per
    /// UID, so it holds at most one entry per message shown and nothing for
    /// a client polling an unchanged mailbox.
    pub reported: HashMap<u32, u64>,
    /// How many of the account's keywords the last FLAGS listed.
    pub keywords: usize,
    /// SEARCHRES (RFC 5182): the UID ranges of the last `SEARCH RETURN
    /// (SAVE)`, at most one per message shown; empty after SELECT.
    pub saved: Vec<(u32, u32)>,
    /// The command being run named `$` ([`crate::extended::SAVED`]).
    pub use_saved: bool,
    /// The search keys lifted off the command being run
    /// ([`crate::extended::EXTRA_KEY`]).
    pub search_extra: Vec<SearchExtra>,
    /// CONTEXT (RFC 5267 §4.3): the searches kept up to date, at most
    /// [`crate::context::CONTEXTS_MAX`].
    pub contexts: Vec<crate::context::Context>,
}

impl Selected {
    pub(crate) fn new(id: MailboxId, read_only: bool) -> Selected {
        Selected {
            id,
            read_only,
            uids: UidMap::default(),
            modseq: 0,
            recent: Vec::new(),
            reported: HashMap::new(),
            keywords: 0,
            saved: Vec::new(),
            use_saved: false,
            search_extra: Vec::new(),
            contexts: Vec::new(),
        }
    }

    pub(crate) fn seq_of(&self, uid: u32) -> Option<usize> {
        self.uids.seq_of(uid)
    }

    pub(crate) fn max_uid(&self) -> u32 {
        self.uids.last()
    }

    pub(crate) fn is_recent(&self, uid: u32) -> bool {
        self.recent.iter().any(|&(a, b)| a <= uid && uid <= b)
    }

    /// Messages in view that are \Recent for this session (the ranges do
    /// not overlap: each starts above the floor the last one raised).
    fn recent_count(&self) -> usize {
        self.recent.iter().map(|&(a, b)| self.uids.count_from(a) - self.uids.count_from(b.saturating_add(1))).sum()
    }

    /// Notes that the client was shown `uid`'s flags as of `modseq`.
    pub(crate) fn reported(&mut self, uid: u32, modseq: u64) {
        if modseq > self.modseq {
            self.reported.insert(uid, modseq);
        }
    }

    /// Marks `first..=last` \Recent, joining the last range when adjacent
    /// (each update adds one, so a long session stays one range).
    fn add_recent(&mut self, first: u32, last: u32) {
        match self.recent.last_mut() {
            Some((_, b)) if b.saturating_add(1) >= first => *b = (*b).max(last),
            _ => self.recent.push((first, last)),
        }
    }

    /// A sequence set (UIDs or sequence numbers) as UID ranges.
    pub(crate) fn uid_ranges(&self, set: &SequenceSet, uid: bool) -> Result<Vec<(u32, u32)>, Fail> {
        let largest = if uid { self.max_uid() } else { self.uids.len() as u32 };
        let value = |s: &SeqOrUid| match s {
            SeqOrUid::Value(v) => v.get(),
            SeqOrUid::Asterisk => largest,
        };
        let mut out = Vec::new();
        for seq in set.0.as_ref() {
            if self.use_saved && *seq == Sequence::Single(SeqOrUid::Value(SAVED_NZ)) {
                out.extend_from_slice(&self.saved);
                continue;
            }
            let (a, b) = match seq {
                Sequence::Single(s) => (value(s), value(s)),
                Sequence::Range(a, b) => (value(a), value(b)),
            };
            let (lo, hi) = (a.min(b), a.max(b));
            if uid {
                out.push((lo, hi));
            } else {
                if self.uids.is_empty() {
                    continue;
                }
                if lo == 0 || hi as usize > self.uids.len() {
                    return Err(Fail::Bad("invalid message sequence number".into()));
                }
                self.uids.uid_ranges(lo as usize - 1, hi as usize - 1, &mut out);
            }
        }
        out.sort_unstable();
        Ok(out)
    }
}

/// [`crate::extended::SAVED`] as it is decoded.
const SAVED_NZ: std::num::NonZeroU32 = match std::num::NonZeroU32::new(crate::extended::SAVED) {
    Some(n) => n,
    None => panic!("SAVED is not zero"),
};

/// `1:3,7` for sorted numbers.
pub(crate) fn set_string(numbers: &[u32]) -> String {
    ranges_string(&starling_store::ranges::of_sorted(numbers.iter().copied()))
}

/// A sequence set from inclusive ranges.
pub(crate) fn ranges_string(ranges: &[(u32, u32)]) -> String {
    let parts: Vec<String> =
        ranges.iter().map(|&(lo, hi)| if lo == hi { lo.to_string() } else { format!("{lo}:{hi}") }).collect();
    parts.join(",")
}

pub(crate) fn flags_string(flags: &[Keyword], recent: bool) -> String {
    let mut names: Vec<String> = flags.iter().map(|k| k.to_string()).collect();
    if recent {
        names.push("\\Recent".into());
    }
    format!("({})", names.join(" "))
}

pub(crate) fn keywords(flags: &[Flag<'_>]) -> Result<Vec<Keyword>, Fail> {
    let mut out = Vec::new();
    for f in flags {
        match Keyword::parse(&f.to_string()) {
            Ok(k) => out.push(k),
            // \Recent and unknown system flags cannot be stored: ignored, as
            // RFC 9051 lets servers do with flags they do not keep.
            Err(starling_model::keyword::KeywordError::NotStorable(_)) => {}
            Err(e) => return Err(Fail::Bad(e.to_string())),
        }
    }
    Ok(out)
}

/// UIDs of `known` expunged since `modseq`: from the mailbox's expunge
/// rows, or, when it no longer remembers that far back, by comparing
/// `known` with the UIDs there are now (exact either way).
pub(crate) fn gone_since(reader: &Reader, id: MailboxId, modseq: u64, known: &UidMap) -> Result<Vec<u32>, StoreError> {
    match reader.vanished_since(id, modseq)? {
        Some(gone) => Ok(gone),
        None => Ok(reader.absent_in(id, &known.ranges())?.into_iter().flat_map(|(lo, hi)| lo..=hi).collect()),
    }
}

impl Session {
    /// A MODSEQ the client presented, as a point of this replica's
    /// sequence, or `None` after raising HIGHESTMODSEQ above it
    /// (`Store::place_modseq`).
    pub(crate) fn place_modseq(&mut self, id: MailboxId, token: u64) -> Result<Option<u64>, Fail> {
        Ok(self.shared.store.place_modseq(self.account_name(), id, token)?)
    }

    /// FLAGS and PERMANENTFLAGS: the system flags and every keyword of the
    /// account. Returns how many keywords that is.
    pub(crate) fn flags_lines(&mut self, reader: &Reader) -> usize {
        let names = reader.names();
        let mut keywords: BTreeSet<String> =
            ["\\Answered", "\\Flagged", "\\Deleted", "\\Seen", "\\Draft"].iter().map(|s| s.to_string()).collect();
        keywords.extend(names.keywords.iter().map(|k| k.to_string()));
        let keywords: Vec<String> = keywords.into_iter().collect();
        self.untagged(&format!("FLAGS ({})", keywords.join(" ")));
        self.untagged(&format!("OK [PERMANENTFLAGS ({} \\*)] flags permitted", keywords.join(" ")));
        names.keywords.len()
    }

    /// Before a response that may show a keyword the selected session was
    /// not yet told of (another session's STORE or COPY, or its own), the
    /// new FLAGS (RFC 9051 §7.3.5). The account's keywords only grow.
    pub(crate) fn announce_keywords(&mut self, reader: &Reader) {
        let Some(sel) = &self.selected else { return };
        if reader.names().keywords.len() > sel.keywords {
            let n = self.flags_lines(reader);
            self.selected.as_mut().expect("selected").keywords = n;
        }
    }

    /// A command turned CONDSTORE on (RFC 7162 §3.1): the first time, with
    /// a mailbox selected, the client is told its HIGHESTMODSEQ.
    pub(crate) fn condstore_on(&mut self) {
        if self.enabled.condstore {
            return;
        }
        self.enabled.condstore = true;
        if let Some(sel) = &self.selected {
            let highest = sel.modseq.max(1);
            self.untagged(&format!("OK [HIGHESTMODSEQ {highest}] CONDSTORE on"));
        }
    }

    /// Brings the client's view of the selected mailbox up to date:
    /// expunges (if allowed now), new messages, changed flags.
    pub(crate) fn updates(&mut self, expunges_allowed: bool) {
        let _ = self.try_updates(expunges_allowed);
    }

    fn try_updates(&mut self, expunges_allowed: bool) -> Result<(), Fail> {
        let Some(sel) = &self.selected else { return Ok(()) };
        let id = sel.id;
        let reader = self.reader()?;
        let status = reader.status(id)?;
        if status.highest_modseq == sel.modseq {
            self.changed = false;
            drop(reader);
            // No message changed, but bodies may have come (a partial
            // replica): an updating SORT places them again.
            return self.context_bodies();
        }
        let vanished = gone_since(&reader, id, sel.modseq, &sel.uids)?;
        let gone: Vec<u32> = vanished.into_iter().filter(|&u| sel.seq_of(u).is_some()).collect();
        if !gone.is_empty() && !expunges_allowed {
            return Ok(());
        }
        let mut changed = reader.changed_since(id, sel.modseq, usize::MAX)?;
        self.announce_keywords(&reader);
        drop(reader);
        changed.sort_by_key(|m| m.uid);
        let (qresync, condstore) = (self.enabled.qresync, self.enabled.condstore);
        let sel = self.selected.as_mut().expect("selected");
        // CONTEXT: what leaves a result by expunge, before the EXPUNGE.
        let mut lines = crate::context::expunged(sel, &gone);
        let (removed, new) = sel.uids.advance(&gone, changed.iter().map(|m| m.uid));
        if !removed.is_empty() {
            if qresync {
                lines.push(format!("VANISHED {}", set_string(&gone)));
            } else {
                lines.extend(removed.iter().map(|(_, i)| format!("{} EXPUNGE", i + 1)));
            }
        }
        for m in &changed {
            if new.binary_search(&m.uid).is_ok() || sel.reported.get(&m.uid) == Some(&m.modseq) {
                continue;
            }
            if let Some(i) = sel.seq_of(m.uid) {
                let modseq = if condstore { format!(" MODSEQ ({})", m.modseq) } else { String::new() };
                let flags = flags_string(&m.flags, sel.is_recent(m.uid));
                lines.push(format!("{} FETCH (UID {} FLAGS {flags}{modseq})", i + 1, m.uid));
            }
        }
        let exists = (!new.is_empty()).then_some(sel.uids.len());
        sel.reported = HashMap::new();
        let read_only = sel.read_only;
        sel.modseq = status.highest_modseq;
        self.changed = false;
        if let Some(n) = self.notify.as_mut() {
            n.saw_new(&new);
        }
        if let (Some(&first), Some(&last)) = (new.first(), new.last()) {
            // The first session told of new messages sees them \Recent.
            let floor = self.recent_floor(id, (!read_only).then_some(last))?;
            if !read_only && last >= floor {
                self.selected.as_mut().expect("selected").add_recent(first.max(floor), last);
            }
        }
        for l in lines {
            self.untagged(&l);
        }
        if let Some(n) = exists {
            self.untagged(&format!("{n} EXISTS"));
            // IMAP4rev1 clients still count on RECENT with new messages.
            if !self.enabled.rev2 {
                let recent = self.selected.as_ref().expect("selected").recent_count();
                self.untagged(&format!("{recent} RECENT"));
            }
            self.announce(id)?;
        }
        // CONTEXT: what enters or leaves a result, after the EXISTS.
        for l in self.context_changes(&changed)? {
            self.untagged(&l);
        }
        self.context_bodies()
    }

    /// Messages of the selected mailbox named by a set, that this session has shown.
    pub(crate) fn targets(
        &self,
        reader: &Reader,
        set: &SequenceSet,
        uid: bool,
    ) -> Result<Vec<(usize, MessageInfo)>, Fail> {
        let sel = self.selected.as_ref().expect("selected");
        let ranges = sel.uid_ranges(set, uid)?;
        let mut out: Vec<(usize, MessageInfo)> = reader
            .messages_in(sel.id, &ranges)?
            .into_iter()
            .filter_map(|m| sel.seq_of(m.uid).map(|i| (i + 1, m)))
            .collect();
        out.sort_by_key(|(s, _)| *s);
        out.dedup_by_key(|(s, _)| *s);
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::set_string;

    #[test]
    fn sets_are_compressed() {
        assert_eq!(set_string(&[1, 2, 3, 7, 9, 10]), "1:3,7,9:10");
        assert_eq!(set_string(&[]), "");
    }

    /// Issue 14, item 12: polling `FETCH 1:* FLAGS` on an unchanged mailbox
    /// added an entry per message per poll to `reported` (never cleared while
    /// nothing changed): 100,000 messages grew the session ~1.2 MB a poll.
    #[test]
    fn polling_flags_keeps_the_sessions_bookkeeping_bounded() {
        use crate::session::{Config, Session, Shared};
        use starling_store::{Store, StoreOptions};
        use std::sync::Arc;
        let dir = tempfile::tempdir().unwrap();
        let store =
            Store::open(&dir.path().join("store.redb"), starling_model::ReplicaId(7), StoreOptions::default()).unwrap();
        store.add_account("alice").unwrap();
        store.set_credential("alice", &crate::auth::hash_password("pw")).unwrap();
        let shared = Shared::new(Arc::new(store), Config::default());
        let mut s = Session::new(shared.clone(), false, true, true);
        let mut other = Session::new(shared, false, true, true);
        const N: usize = 40;
        let msg = "Subject: x\r\n\r\nbody\r\n";
        let mut input = b"a LOGIN alice pw\r\n".to_vec();
        for i in 0..N {
            input.extend_from_slice(format!("p{i} APPEND INBOX {{{}+}}\r\n{msg}\r\n", msg.len()).as_bytes());
        }
        input.extend_from_slice(b"s SELECT INBOX\r\n");
        s.receive(&input);
        s.verify_now();
        let out = String::from_utf8_lossy(&s.take_output()).into_owned();
        assert!(out.contains(&format!("* {N} EXISTS")) && out.contains("s OK"), "{out}");
        let reported = |s: &Session| s.selected.as_ref().expect("selected").reported.len();
        for i in 0..5 {
            s.receive(format!("f{i} FETCH 1:* FLAGS\r\n").as_bytes());
            let out = String::from_utf8_lossy(&s.take_output()).into_owned();
            assert!(out.contains(&format!("f{i} OK")), "{out}");
            assert_eq!(reported(&s), 0, "poll {i}: an unchanged mailbox leaves nothing to remember");
        }
        // Its own STORE is not echoed back, and what it remembers for that is
        // at most one entry per message however often it polls meanwhile.
        // An expunge by another session that this one may not report yet
        // (during FETCH and STORE by sequence number) keeps updates waiting,
        // so its own changes stay noted meanwhile.
        other.receive(
            format!("o1 LOGIN alice pw\r\no2 SELECT INBOX\r\no3 STORE {N} +FLAGS (\\Deleted)\r\no4 EXPUNGE\r\n")
                .as_bytes(),
        );
        other.verify_now();
        assert!(String::from_utf8_lossy(&other.take_output()).contains("o4 OK"));
        s.receive(b"t STORE 1:* +FLAGS (\\Flagged)\r\n");
        assert!(String::from_utf8_lossy(&s.take_output()).contains("t OK"));
        let noted = reported(&s);
        assert!(noted > 0 && noted <= N, "{noted}");
        for i in 0..5 {
            s.receive(format!("g{i} FETCH 1:* FLAGS\r\n").as_bytes());
            s.take_output();
            assert_eq!(reported(&s), noted, "poll {i}: one entry per message, however often it polls");
        }
        s.receive(b"n NOOP\r\n");
        let out = String::from_utf8_lossy(&s.take_output()).into_owned();
        assert!(out.contains(&format!("* {N} EXPUNGE")) && out.contains("n OK"), "{out}");
        assert!(!out.contains("FETCH"), "its own changes are not echoed back: {out}");
        assert_eq!(reported(&s), 0, "an update forgets what it no longer needs");
        assert_eq!(s.selected.as_ref().unwrap().recent.len(), 1, "\\Recent stays one range");
    }
}
