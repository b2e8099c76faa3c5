//! The selected state: the session's view of one mailbox (sequence numbers
//! to UIDs, and the MODSEQ it last showed of each message), the updates that
//! bring it up to date, and the commands that work on messages.

use crate::extended::{FetchExtra, SearchExtra};
use crate::mime;
use crate::returns::{Item, Returns};
use crate::session::{Done, Fail, Session};
use crate::uidmap::UidMap;
use crate::wire;
use imap_codec::imap_types::command::FetchModifier;
use imap_codec::imap_types::command::{SelectParameter, StoreModifier};
use imap_codec::imap_types::fetch::{MacroOrMessageDataItemNames, MessageDataItemName, Section};
use imap_codec::imap_types::flag::{Flag, StoreResponse, StoreType};
use imap_codec::imap_types::search::SearchKey;
use imap_codec::imap_types::sequence::{SeqOrUid, Sequence, SequenceSet};
use starling_model::backend::Envelope;
use starling_model::{Keyword, MailboxId};
use starling_store::{MessageInfo, Reader, Since, StoreError};
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

/// FETCH items imap-codec does not parse ([`crate::extended`]).
#[derive(Default)]
pub(crate) struct FetchExtras {
    /// In the order asked.
    pub items: Vec<FetchExtra>,
    /// `UID` stood in for them and was not asked for.
    pub placeholder: bool,
    /// PARTIAL's modifier (RFC 9394 §3.2), its range as written.
    pub partial: Option<String>,
}

/// A FETCH answer goes out in parts of about this many bytes (a part ends
/// after the message that passes it): a session holds one part, not the
/// whole answer ([`crate::Wants::Write`]).
pub const FETCH_PART_BYTES: usize = 4 << 20;

impl Selected {
    fn new(id: MailboxId, read_only: bool) -> Selected {
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

    fn max_uid(&self) -> u32 {
        self.uids.last()
    }

    fn is_recent(&self, uid: u32) -> bool {
        self.recent.iter().any(|&(a, b)| a <= uid && uid <= b)
    }

    /// Messages in view that are \Recent for this session (the ranges do
    /// not overlap: each starts above the floor the last one raised).
    fn recent_count(&self) -> usize {
        self.recent.iter().map(|&(a, b)| self.uids.count_from(a) - self.uids.count_from(b.saturating_add(1))).sum()
    }

    /// Notes that the client was shown `uid`'s flags as of `modseq`.
    fn reported(&mut self, uid: u32, modseq: u64) {
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

fn flags_string(flags: &[Keyword], recent: bool) -> String {
    let mut names: Vec<String> = flags.iter().map(|k| k.to_string()).collect();
    if recent {
        names.push("\\Recent".into());
    }
    format!("({})", names.join(" "))
}

fn internal_date(secs: i64) -> String {
    chrono::DateTime::from_timestamp(secs, 0).unwrap_or_default().format("\"%d-%b-%Y %H:%M:%S +0000\"").to_string()
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

fn section_name(section: Option<&Section<'_>>) -> String {
    fn part(p: &imap_codec::imap_types::fetch::Part) -> String {
        p.0.as_ref().iter().map(|n| n.to_string()).collect::<Vec<_>>().join(".")
    }
    fn with(p: &Option<imap_codec::imap_types::fetch::Part>, what: &str) -> String {
        match p {
            Some(p) => format!("{}.{what}", part(p)),
            None => what.to_string(),
        }
    }
    fn fields(f: &[imap_codec::imap_types::core::AString<'_>]) -> String {
        let mut out = Vec::new();
        for (i, n) in f.iter().enumerate() {
            if i > 0 {
                out.push(b' ');
            }
            wire::astring(&mut out, n.as_ref());
        }
        String::from_utf8_lossy(&out).into_owned()
    }
    match section {
        None => String::new(),
        Some(Section::Part(p)) => part(p),
        Some(Section::Header(p)) => with(p, "HEADER"),
        Some(Section::HeaderFields(p, f)) => format!("{} ({})", with(p, "HEADER.FIELDS"), fields(f.as_ref())),
        Some(Section::HeaderFieldsNot(p, f)) => format!("{} ({})", with(p, "HEADER.FIELDS.NOT"), fields(f.as_ref())),
        Some(Section::Text(p)) => with(p, "TEXT"),
        Some(Section::Mime(p)) => format!("{}.MIME", part(p)),
    }
}

/// Whether a FETCH item reads the header block only (so the body need not be read whole).
fn header_only(item: &MessageDataItemName<'_>) -> bool {
    match item {
        MessageDataItemName::Envelope | MessageDataItemName::Rfc822Header => true,
        MessageDataItemName::BodyExt { section, .. } => matches!(
            section,
            Some(Section::Header(None))
                | Some(Section::HeaderFields(None, _))
                | Some(Section::HeaderFieldsNot(None, _))
        ),
        _ => false,
    }
}

/// A BINARY section's content, or the answer to give instead (RFC 3516).
fn binary_of<'a>(raw: &'a [u8], section: &[std::num::NonZeroU32]) -> Result<std::borrow::Cow<'a, [u8]>, Fail> {
    match mime::binary(raw, section) {
        Ok(d) => Ok(d),
        // A part that does not exist reads as empty, as BODY[n] does.
        Err(mime::BinaryError::NoSuchPart) => Ok(std::borrow::Cow::Borrowed(&[])),
        Err(mime::BinaryError::UnknownCte) => {
            Err(Fail::No("[UNKNOWN-CTE] the part's Content-Transfer-Encoding cannot be decoded".into()))
        }
    }
}

/// A part path as it is written in a response: `1.2`, or nothing.
fn part_path(section: &[std::num::NonZeroU32]) -> String {
    section.iter().map(|n| n.to_string()).collect::<Vec<_>>().join(".")
}

fn needs_body(item: &MessageDataItemName<'_>) -> bool {
    !matches!(
        item,
        MessageDataItemName::Uid
            | MessageDataItemName::Flags
            | MessageDataItemName::InternalDate
            | MessageDataItemName::Rfc822Size
            | MessageDataItemName::ModSeq
    )
}

fn sets_seen(item: &MessageDataItemName<'_>) -> bool {
    matches!(
        item,
        MessageDataItemName::BodyExt { peek: false, .. }
            | MessageDataItemName::Binary { peek: false, .. }
            | MessageDataItemName::Rfc822
            | MessageDataItemName::Rfc822Text
    )
}

/// Prefixes tried for a header block before reading a whole body: most
/// headers are 1–2 KiB, and decompressing a prefix costs its length.
const HEADER_PROBES: [usize; 2] = [2 * 1024, 16 * 1024];

/// UIDs of `known` expunged since `modseq`: from the mailbox's expunge
/// rows, or, when it no longer remembers that far back, by comparing
/// `known` with the UIDs there are now (exact either way).
fn gone_since(reader: &Reader, id: MailboxId, modseq: u64, known: &UidMap) -> Result<Vec<u32>, StoreError> {
    match reader.vanished_since(id, modseq)? {
        Some(gone) => Ok(gone),
        None => Ok(reader.absent_in(id, &known.ranges())?.into_iter().flat_map(|(lo, hi)| lo..=hi).collect()),
    }
}

/// A message's body for one FETCH response: the header block alone when
/// that is all the items need (`whole` false).
pub(crate) fn load_body(reader: &Reader, env: &Envelope, whole: bool) -> Result<Vec<u8>, StoreError> {
    if !whole {
        // Kept apart by the store; used if IMAP's idea of the header agrees.
        if let Some(header) = reader.body_header(env.blob)? {
            if mime::header_block(&header).len() == header.len() {
                return Ok(header);
            }
        }
        for probe in HEADER_PROBES {
            let mut head = reader.body_prefix(env.blob, probe)?;
            let end = mime::header_block(&head).len();
            if end < head.len() || head.len() as u64 == env.size {
                head.truncate(end);
                return Ok(head);
            }
        }
    }
    reader.body(env.blob)
}

impl Session {
    /// A MODSEQ the client presented, as a point of this replica's
    /// sequence, or `None` after raising HIGHESTMODSEQ above it
    /// (`Store::place_modseq`).
    fn place_modseq(&mut self, id: MailboxId, token: u64) -> Result<Option<u64>, Fail> {
        Ok(self.shared.store.place_modseq(self.account_name(), id, token)?)
    }

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

    /// FLAGS and PERMANENTFLAGS: the system flags and every keyword of the
    /// account. Returns how many keywords that is.
    fn flags_lines(&mut self, reader: &Reader) -> usize {
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
    fn announce_keywords(&mut self, reader: &Reader) {
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
    fn targets(&self, reader: &Reader, set: &SequenceSet, uid: bool) -> Result<Vec<(usize, MessageInfo)>, Fail> {
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

    pub(crate) fn fetch(
        &mut self,
        set: &SequenceSet,
        items: &MacroOrMessageDataItemNames<'_>,
        uid: bool,
        modifiers: &[FetchModifier],
        extra: &FetchExtras,
    ) -> Done {
        let mut items: Vec<MessageDataItemName<'_>> = match items {
            MacroOrMessageDataItemNames::Macro(m) => m.expand(),
            MacroOrMessageDataItemNames::MessageDataItemNames(v) => v.clone(),
        };
        if extra.placeholder {
            // `UID` stood in for items imap-codec does not know.
            items.retain(|i| *i != MessageDataItemName::Uid);
        }
        if uid && !items.contains(&MessageDataItemName::Uid) {
            items.insert(0, MessageDataItemName::Uid);
        }
        let mut changed_since = None;
        let mut vanished = false;
        for m in modifiers {
            match m {
                FetchModifier::ChangedSince(n) => changed_since = Some(n.get()),
                FetchModifier::Vanished => vanished = true,
            }
        }
        // A MODSEQ this replica cannot place: every message in the set has
        // changed since, as far as the client can know.
        let placed = match changed_since {
            Some(token) => {
                let id = self.selected.as_ref().expect("selected").id;
                Some(self.place_modseq(id, token)?)
            }
            None => None,
        };
        let changed_since = placed.map(|p| p.unwrap_or(0));
        if vanished && (!uid || !self.enabled.qresync || changed_since.is_none()) {
            return Err(Fail::Bad("VANISHED needs UID FETCH, CHANGEDSINCE and ENABLE QRESYNC".into()));
        }
        if changed_since.is_some() || items.contains(&MessageDataItemName::ModSeq) {
            self.condstore_on();
            if !items.contains(&MessageDataItemName::ModSeq) {
                items.push(MessageDataItemName::ModSeq);
            }
        }
        let reader = self.reader()?;
        self.announce_keywords(&reader);
        let mut targets = self.targets(&reader, set, uid)?;
        if let Some(since) = changed_since {
            targets.retain(|(_, m)| m.modseq > since);
            // (Once, with the first part of an answer in parts.)
            if vanished && self.part.after.is_none() {
                let sel = self.selected.as_ref().expect("selected");
                let ranges = sel.uid_ranges(set, true)?;
                let gone = reader.vanished_within(sel.id, placed.flatten(), &ranges)?;
                if !gone.is_empty() {
                    self.untagged(&format!("VANISHED (EARLIER) {}", ranges_string(&gone)));
                }
            }
        }
        // PARTIAL (RFC 9394 §3.2): only those of the messages (after
        // CHANGEDSINCE) the range names, in UID order; the set becomes
        // their UIDs.
        let partial_set;
        let set = match &extra.partial {
            None => set,
            Some(range) => {
                let Some(p) = crate::returns::Partial::parse(range).filter(|_| uid) else {
                    return Err(Fail::Bad("PARTIAL takes UID FETCH and a range: n:m or -n:-m (RFC 9394)".into()));
                };
                let slice = p.slice(targets.len());
                targets = targets.drain(slice).collect();
                if targets.is_empty() {
                    return Ok("UID FETCH completed".into());
                }
                let uids: Vec<u32> = targets.iter().map(|(_, m)| m.uid).collect();
                partial_set = SequenceSet::try_from(set_string(&uids).as_str()).expect("UIDs make a set");
                &partial_set
            }
        };
        let read_only = self.selected.as_ref().expect("selected").read_only;
        // Set \Seen first (one commit), so the answer shows it.
        if !read_only && items.iter().any(sets_seen) {
            let unseen: Vec<_> =
                targets.iter().filter(|(_, m)| !m.flags.contains(&Keyword::Seen)).map(|(_, m)| m.message).collect();
            if !unseen.is_empty() {
                drop(reader);
                self.write(|b| {
                    for m in &unseen {
                        b.replica().store_flags(*m, &[Keyword::Seen], &[])?;
                    }
                    Ok(())
                })?;
                if !items.contains(&MessageDataItemName::Flags) {
                    items.push(MessageDataItemName::Flags);
                }
                return self.fetch_items(set, &items, &extra.items, uid, changed_since);
            }
        }
        drop(reader);
        self.fetch_items(set, &items, &extra.items, uid, changed_since)
    }

    fn fetch_items(
        &mut self,
        set: &SequenceSet,
        items: &[MessageDataItemName<'_>],
        extra: &[FetchExtra],
        uid: bool,
        changed_since: Option<u64>,
    ) -> Done {
        let reader = self.reader()?;
        self.announce_keywords(&reader);
        let mut targets = self.targets(&reader, set, uid)?;
        if let Some(since) = changed_since {
            targets.retain(|(_, m)| m.modseq > since);
        }
        // An answer in parts goes on after its last part (targets are in
        // sequence order, which is UID order).
        if let Some(after) = self.part.after {
            targets.retain(|(_, m)| m.uid > after);
        }
        let body_items = items.iter().any(needs_body);
        let whole = items.iter().any(|i| needs_body(i) && !header_only(i));
        let mut unavailable = false;
        let may_wait = self.bodies.may_wait(self.now, !self.shared.config.body_wait.is_zero());
        let mut all = std::mem::take(&mut self.out);
        let before = all.len();
        for (i, (seq, m)) in targets.iter().enumerate() {
            let body = if body_items {
                let Some(env) = reader.envelope(m.message)? else { continue };
                match load_body(&reader, &env, whole) {
                    Ok(b) => Some((env, b)),
                    Err(StoreError::MissingBlob(_)) if may_wait => {
                        // Left out here: wait for a peer to send it (and the
                        // others this FETCH lacks), answering nothing yet.
                        all.truncate(before);
                        self.out = all;
                        let mut wanted = vec![(env.blob, env.size)];
                        for (_, m) in &targets[i + 1..] {
                            if wanted.len() >= crate::ondemand::WANTED_MAX {
                                break;
                            }
                            if let Some(e) = reader.envelope(m.message)? {
                                if matches!(reader.body_len(e.blob), Err(StoreError::MissingBlob(_))) {
                                    wanted.push((e.blob, e.size));
                                }
                            }
                        }
                        return Err(Fail::Wait(wanted));
                    }
                    Err(StoreError::MissingBlob(_)) => {
                        unavailable = true;
                        continue;
                    }
                    Err(e) => {
                        self.out = all;
                        return Err(e.into());
                    }
                }
            } else {
                None
            };
            let env = match &body {
                Some((env, _)) => Some(*env),
                None if !extra.is_empty()
                    || items
                        .iter()
                        .any(|i| matches!(i, MessageDataItemName::InternalDate | MessageDataItemName::Rfc822Size)) =>
                {
                    reader.envelope(m.message)?
                }
                None => None,
            };
            if !extra.is_empty() && env.is_none() {
                continue; // expunged meanwhile, as a body item would skip it
            }
            // This message's response is built apart and added whole, so
            // that an item that fails leaves no half-written line behind.
            let mut out = Vec::new();
            out.extend_from_slice(format!("* {seq} FETCH (").as_bytes());
            for (n, item) in items.iter().enumerate() {
                if n > 0 {
                    out.push(b' ');
                }
                let raw = body.as_ref().map(|(_, b)| &b[..]).unwrap_or_default();
                match item {
                    MessageDataItemName::Uid => out.extend_from_slice(format!("UID {}", m.uid).as_bytes()),
                    MessageDataItemName::Flags => {
                        let recent = self.selected.as_ref().is_some_and(|s| s.is_recent(m.uid));
                        out.extend_from_slice(format!("FLAGS {}", flags_string(&m.flags, recent)).as_bytes())
                    }
                    MessageDataItemName::ModSeq => out.extend_from_slice(format!("MODSEQ ({})", m.modseq).as_bytes()),
                    MessageDataItemName::InternalDate => out.extend_from_slice(
                        format!("INTERNALDATE {}", internal_date(env.map_or(0, |e| e.internal_date))).as_bytes(),
                    ),
                    MessageDataItemName::Rfc822Size => {
                        out.extend_from_slice(format!("RFC822.SIZE {}", env.map_or(0, |e| e.size)).as_bytes())
                    }
                    MessageDataItemName::Envelope => {
                        out.extend_from_slice(b"ENVELOPE ");
                        mime::envelope(raw, &mut out);
                    }
                    MessageDataItemName::BodyStructure => {
                        out.extend_from_slice(b"BODYSTRUCTURE ");
                        mime::body_structure(raw, true, &mut out);
                    }
                    MessageDataItemName::Body => {
                        out.extend_from_slice(b"BODY ");
                        mime::body_structure(raw, false, &mut out);
                    }
                    MessageDataItemName::BodyExt { section, partial, .. } => {
                        let data = mime::section(raw, section.as_ref()).unwrap_or_default();
                        out.extend_from_slice(format!("BODY[{}]", section_name(section.as_ref())).as_bytes());
                        match partial {
                            Some((start, len)) => {
                                let s = (*start as usize).min(data.len());
                                let e = s.saturating_add(len.get() as usize).min(data.len());
                                out.extend_from_slice(format!("<{start}> ").as_bytes());
                                wire::literal(&mut out, &data[s..e]);
                            }
                            None => {
                                out.push(b' ');
                                wire::literal(&mut out, &data);
                            }
                        }
                    }
                    MessageDataItemName::Rfc822 => {
                        out.extend_from_slice(b"RFC822 ");
                        wire::literal(&mut out, raw);
                    }
                    MessageDataItemName::Rfc822Header => {
                        out.extend_from_slice(b"RFC822.HEADER ");
                        wire::literal(&mut out, mime::header_block(raw));
                    }
                    MessageDataItemName::Rfc822Text => {
                        let text = mime::section(raw, Some(&Section::Text(None))).unwrap_or_default();
                        out.extend_from_slice(b"RFC822.TEXT ");
                        wire::literal(&mut out, &text);
                    }
                    MessageDataItemName::Binary { section, partial, .. } => {
                        let data = match binary_of(raw, section) {
                            Ok(d) => d,
                            Err(e) => {
                                self.out = all;
                                return Err(e);
                            }
                        };
                        out.extend_from_slice(format!("BINARY[{}]", part_path(section)).as_bytes());
                        // RFC 9051's grammar gives a partial BINARY no origin
                        // in the response (BODY[]<n> has one).
                        let data = match partial {
                            Some((start, len)) => {
                                let s = (*start as usize).min(data.len());
                                let e = s.saturating_add(len.get() as usize).min(data.len());
                                data[s..e].to_vec()
                            }
                            None => data.into_owned(),
                        };
                        out.push(b' ');
                        wire::literal8(&mut out, &data);
                    }
                    MessageDataItemName::BinarySize { section } => match binary_of(raw, section) {
                        Ok(d) => {
                            out.extend_from_slice(format!("BINARY.SIZE[{}] {}", part_path(section), d.len()).as_bytes())
                        }
                        Err(e) => {
                            self.out = all;
                            return Err(e);
                        }
                    },
                }
            }
            for (n, item) in extra.iter().enumerate() {
                if n > 0 || !items.is_empty() {
                    out.push(b' ');
                }
                match item {
                    FetchExtra::EmailId => {
                        let e = env.as_ref().expect("checked above");
                        out.extend_from_slice(format!("EMAILID ({})", crate::objectid::email_id(e)).as_bytes())
                    }
                    FetchExtra::ThreadId => out.extend_from_slice(b"THREADID NIL"),
                    // RFC 8514 §4.2: no save date is stored, so always NIL.
                    FetchExtra::SaveDate => out.extend_from_slice(b"SAVEDATE NIL"),
                    FetchExtra::Preview => {
                        // A fixed prefix of the body, read apart (bounded
                        // work whatever the message's size).
                        let e = env.as_ref().expect("checked above");
                        out.extend_from_slice(b"PREVIEW ");
                        match reader.body_prefix(e.blob, crate::preview::PREVIEW_BYTES) {
                            Ok(prefix) => wire::string(&mut out, crate::preview::preview(&prefix).as_bytes()),
                            // Not on this replica (yet): RFC 8970 allows NIL.
                            Err(StoreError::MissingBlob(_)) => out.extend_from_slice(b"NIL"),
                            Err(e) => {
                                self.out = all;
                                return Err(e.into());
                            }
                        }
                    }
                }
            }
            out.extend_from_slice(b")\r\n");
            all.extend_from_slice(&out);
            if items.contains(&MessageDataItemName::Flags) {
                self.selected.as_mut().expect("selected").reported(m.uid, m.modseq);
            }
            if all.len() - before >= FETCH_PART_BYTES && i + 1 < targets.len() {
                // This part goes out before the next is built.
                self.part.after = Some(m.uid);
                self.out = all;
                return Err(Fail::More);
            }
        }
        self.out = all;
        if unavailable {
            return Err(Fail::No("[UNAVAILABLE] some message bodies are not stored on this replica yet".into()));
        }
        Ok(format!("{}FETCH completed", if uid { "UID " } else { "" }))
    }

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

    pub(crate) fn copy(&mut self, set: &SequenceSet, to: &str, uid: bool, is_move: bool) -> Done {
        let reader = self.reader()?;
        let Some(dest) = Self::resolve(&reader, to) else {
            return Err(Fail::No("[TRYCREATE] no such mailbox".into()));
        };
        let sel = self.selected.as_ref().expect("selected");
        if is_move && sel.read_only {
            return Err(Fail::No("[READ-ONLY] mailbox is read-only".into()));
        }
        let src = sel.id;
        let targets = self.targets(&reader, set, uid)?;
        let validity = reader.status(dest)?.uid_validity;
        drop(reader);
        self.recent_floor(dest, None)?;
        if targets.is_empty() {
            return Ok(format!("{} completed (nothing)", if is_move { "MOVE" } else { "COPY" }));
        }
        let pairs = self.write(|b| {
            let before = b.usage()?;
            let mut pairs = Vec::new();
            for (_, m) in &targets {
                let placed = if is_move && src == dest {
                    // Into the mailbox it is in: a new UID there (a copy)
                    // and the old one expunged, as servers do.
                    let copy = b.replica().copy_message(m.message, dest)?;
                    b.replica().expunge(&[m.message])?;
                    copy
                } else if is_move {
                    b.replica().move_message(m.message, dest)?;
                    m.message
                } else {
                    b.replica().copy_message(m.message, dest)?
                };
                if let Some((_, new)) = b.replica().uid_of(placed) {
                    pairs.push((m.uid, new));
                }
            }
            // RFC 9208 §4.1.3 / §5: over quota, nothing is copied.
            b.within_quota_since(before)?;
            Ok(pairs)
        })?;
        let from: Vec<u32> = pairs.iter().map(|p| p.0).collect();
        let to: Vec<u32> = pairs.iter().map(|p| p.1).collect();
        // COPYUID lists both sets in the same order (RFC 4315).
        let join = |v: &[u32]| v.iter().map(|u| u.to_string()).collect::<Vec<_>>().join(",");
        // No COPYUID when nothing was placed (its sets may not be empty).
        let code = if pairs.is_empty() {
            String::new()
        } else {
            format!("[COPYUID {validity} {} {}] ", join(&from), join(&to))
        };
        if is_move {
            self.untagged(&format!("OK {code}moved"));
            self.updates(true);
            Ok(format!("{}MOVE completed", if uid { "UID " } else { "" }))
        } else {
            Ok(format!("{code}{}COPY completed", if uid { "UID " } else { "" }))
        }
    }

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

    pub(crate) fn search(
        &mut self,
        charset: Option<&str>,
        criteria: &[SearchKey<'_>],
        uid: bool,
        tag: &str,
        returns: Option<Vec<String>>,
    ) -> Done {
        let returns = returns.map(|r| Returns::parse(&r)).transpose()?;
        if returns.as_ref().is_some_and(|r| r.update) {
            self.update_tag_free(tag)?;
        }
        let matched = charset.map_or(Ok(()), crate::command::sort::charset_ok).and_then(|()| {
            let reader = self.reader()?;
            self.matching(&reader, criteria)
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
        if returns.as_ref().is_some_and(|r| r.update) {
            let uids: Vec<u32> = matched.iter().map(|(_, m)| m.uid).collect();
            self.start_update(tag, uid, None, criteria, uids, Vec::new());
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
        let sel = self.selected.as_ref().expect("selected");
        let mut out = Vec::new();
        for m in reader.messages(sel.id, 1, usize::MAX)? {
            let Some(i) = sel.seq_of(m.uid) else { continue };
            if matches_all(reader, sel, &sel.search_extra, &m, criteria) {
                out.push((i as u32 + 1, m));
            }
        }
        Ok(out)
    }
}

/// Whether one message matches every key; `extra` are the keys lifted off
/// the command ([`crate::extended::EXTRA_KEY`]). The body is read only if
/// a key needs it.
pub(crate) fn matches_all(
    reader: &Reader,
    sel: &Selected,
    extra: &[SearchExtra],
    info: &MessageInfo,
    keys: &[SearchKey<'_>],
) -> bool {
    let mut c = Candidate { info, env: None, raw: None, reader, sel, extra };
    keys.iter().all(|k| c.matches(k))
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
            let body = self.envelope().and_then(|e| self.reader.body(e.blob).ok());
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
