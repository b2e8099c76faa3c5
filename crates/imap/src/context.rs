//! CONTEXT=SEARCH and CONTEXT=SORT (RFC 5267 §4.3): a SEARCH or SORT with
//! `RETURN (UPDATE)` is kept up to date while the mailbox stays selected
//! (or until CANCELUPDATE, [`crate::command::cancelupdate`]): when
//! messages enter or leave its result the session says so, unsolicited,
//! with `* ESEARCH (TAG "t") [UID] ADDTO (…)` / `REMOVEFROM (…)`, where it
//! reports the change itself (EXPUNGE, FETCH, EXISTS: after any command,
//! NOOP and IDLE included).
//!
//! A context keeps its search program and its result as UIDs. Message
//! sequence numbers and `$` in the program are read once, when the
//! command runs (RFC 5267 §4.3: later renumbering changes nothing), and
//! kept as the UIDs they named then.
//!
//! Cost: nothing is searched again. An update looks only at the messages
//! that changed since the last one (the same list its FETCH and EXISTS
//! come from): each is tested against each context's program (its body
//! read only if a key needs it), and an expunged one is looked up in each
//! result (binary search). A SORT context finds where an added message
//! goes by binary search over its result, reading the sort keys of about
//! log₂(n) messages, and removing or inserting moves the result's UIDs in
//! memory (a vector of 4 bytes per result, twice for SORT). So a change
//! of c messages costs O(c · contexts · log n) reads, whatever the size of
//! the mailbox. At most [`CONTEXTS_MAX`] contexts per session: past that
//! the command still answers, with `* NO [NOUPDATE "tag"]` and no context
//! (RFC 5267 §4.3.1).
//!
//! A partial replica: a message whose body is not here sorts as an empty
//! header (docs/imap.md, SORT). A SORT context remembers which of its
//! messages it placed so (at most [`AWAITING_MAX`]); when a body arrives
//! (the store's commit wakes the session, as any change does) the message
//! is placed again by its keys: `REMOVEFROM` at its old position, `ADDTO`
//! at its new one, in one ESEARCH line (RFC 5267 §4.3: a change that moves
//! a message in a sorted result). A context that would have to remember
//! more stops updating, `* NO [NOUPDATE "tag"]` (§4.3.1), rather than let
//! its positions go stale. The bodies are looked for at each update (one
//! sort-keys lookup each, not a read of the body). A SEARCH context
//! likewise remembers the messages whose answer needed a body that was not
//! here (a header or body key: tested as an empty message), within the
//! same bound, and tests each again when its body arrives: `ADDTO` if it
//! matches now, `REMOVEFROM` if it no longer does. (A SORT context's
//! search keys are not tested again on arrival; only its order is.)
//!
//! Order of output: a REMOVEFROM for expunged messages comes before the
//! EXPUNGE (or VANISHED) it is about, while their sequence numbers still
//! hold; an ADDTO of new messages after the EXISTS that numbers them
//! (§4.3.3, §4.3.4). A SEARCH context's updates are in mailbox order at
//! position 0; a SORT context's at their positions in sort order.

use crate::command::search::matches_noting_absent;
use crate::command::sort::{sort_order, wanted, Facts};
use crate::extended::{SearchExtra, SAVED};
use crate::selected::{ranges_string, set_string, Selected};
use crate::session::{Fail, Session};
use imap_codec::imap_types::core::Vec1;
use imap_codec::imap_types::extensions::sort::SortCriterion;
use imap_codec::imap_types::search::SearchKey;
use imap_codec::imap_types::sequence::{SeqOrUid, Sequence, SequenceSet};
use imap_codec::imap_types::ToStatic;
use starling_model::BlobId;
use starling_store::sortkeys::Wanted;
use starling_store::{MessageInfo, Reader};
use std::collections::HashMap;

/// Updating searches (CONTEXT) one session keeps at once, at most.
pub const CONTEXTS_MAX: usize = 8;

/// Messages of one SORT context placed without their body (a partial
/// replica), whose arrival it watches for, at most; past it the context
/// stops updating (`NO [NOUPDATE]`).
pub const AWAITING_MAX: usize = 1000;

/// One search or sort kept up to date.
pub(crate) struct Context {
    /// The tag of the command that asked (the ESEARCH correlator).
    tag: String,
    /// Updates in UIDs (UID SEARCH, UID SORT), else sequence numbers.
    uid: bool,
    /// SORT's criteria; `None` for a SEARCH.
    sort: Option<Vec<SortCriterion>>,
    /// The search program, sequence numbers and `$` as the UIDs they were.
    keys: Vec<SearchKey<'static>>,
    /// The keys lifted off the command ([`crate::extended::EXTRA_KEY`]).
    extra: Vec<SearchExtra>,
    /// The result's UIDs, ascending.
    members: Vec<u32>,
    /// SORT: the result's UIDs in sort order (empty for a SEARCH).
    order: Vec<u32>,
    /// SORT: members placed without their body; SEARCH: messages whose
    /// answer needed a body not here. (UID, body), ascending UIDs; at most
    /// [`AWAITING_MAX`].
    awaiting: Vec<(u32, BlobId)>,
}

/// A key that matches the messages `ranges` (of UIDs) names.
fn uid_key(ranges: &[(u32, u32)]) -> SearchKey<'static> {
    match SequenceSet::try_from(ranges_string(ranges).as_str()) {
        Ok(set) => SearchKey::Uid(set),
        // No message: a key nothing matches.
        Err(_) => SearchKey::Not(Box::new(SearchKey::All)),
    }
}

/// `key` with its sequence sets, and `$`, as the UIDs they name now.
fn pin(sel: &Selected, key: &SearchKey<'_>) -> SearchKey<'static> {
    let saved = Sequence::Single(SeqOrUid::Value(std::num::NonZeroU32::new(SAVED).expect("not zero")));
    match key {
        SearchKey::And(keys) => {
            let pinned: Vec<_> = keys.as_ref().iter().map(|k| pin(sel, k)).collect();
            SearchKey::And(Vec1::try_from(pinned).expect("as many as before"))
        }
        SearchKey::Or(a, b) => SearchKey::Or(Box::new(pin(sel, a)), Box::new(pin(sel, b))),
        SearchKey::Not(k) => SearchKey::Not(Box::new(pin(sel, k))),
        SearchKey::SequenceSet(set) => uid_key(&sel.uid_ranges(set, false).unwrap_or_default()),
        SearchKey::Uid(set) if sel.use_saved && set.0.as_ref().contains(&saved) => {
            uid_key(&sel.uid_ranges(set, true).unwrap_or_default())
        }
        other => other.to_static(),
    }
}

/// `a,b,c`: numbers in the order given, each on its own.
fn list(numbers: &[u32]) -> String {
    numbers.iter().map(|n| n.to_string()).collect::<Vec<_>>().join(",")
}

impl Context {
    /// The number the client knows `uid` by.
    fn number(&self, sel: &Selected, uid: u32) -> u32 {
        if self.uid {
            uid
        } else {
            sel.seq_of(uid).map_or(0, |i| i as u32 + 1)
        }
    }

    /// Takes `gone` (ascending UIDs) out of the result: the REMOVEFROM
    /// data item, if any was in it, numbered as `sel` numbers them now.
    fn remove(&mut self, sel: &Selected, gone: &[u32]) -> Option<String> {
        let removed: Vec<u32> = gone.iter().copied().filter(|u| self.members.binary_search(u).is_ok()).collect();
        if removed.is_empty() {
            return None;
        }
        self.members.retain(|u| removed.binary_search(u).is_err());
        self.awaiting.retain(|(u, _)| removed.binary_search(u).is_err());
        if self.sort.is_none() {
            let numbers: Vec<u32> = removed.iter().map(|&u| self.number(sel, u)).collect();
            return Some(format!("REMOVEFROM (0 {})", set_string(&numbers)));
        }
        // Runs of adjacent positions, last first: each position is then
        // still right when the client comes to it.
        let mut runs: Vec<(usize, Vec<u32>)> = Vec::new();
        for (i, &u) in self.order.iter().enumerate() {
            if removed.binary_search(&u).is_err() {
                continue;
            }
            let n = self.number(sel, u);
            match runs.last_mut() {
                Some((at, ns)) if *at + ns.len() == i => ns.push(n),
                _ => runs.push((i, vec![n])),
            }
        }
        self.order.retain(|u| removed.binary_search(u).is_err());
        let pairs: Vec<String> = runs.iter().rev().map(|(at, ns)| format!("{} {}", at + 1, list(ns))).collect();
        Some(format!("REMOVEFROM ({})", pairs.join(" ")))
    }

    /// Puts `added` (messages in view, ascending UIDs, none in the result)
    /// into it: the ADDTO data item.
    fn add(&mut self, reader: &Reader, sel: &Selected, added: &[&MessageInfo]) -> Option<String> {
        if added.is_empty() {
            return None;
        }
        for m in added {
            let at = self.members.partition_point(|&u| u < m.uid);
            self.members.insert(at, m.uid);
        }
        let Some(criteria) = &self.sort else {
            let numbers: Vec<u32> = added.iter().map(|m| self.number(sel, m.uid)).collect();
            return Some(format!("ADDTO (0 {})", set_string(&numbers)));
        };
        let seq = |uid: u32| sel.seq_of(uid).map_or(0, |i| i as u32 + 1);
        let header = wanted(criteria);
        let matched: Vec<(u32, MessageInfo)> = added.iter().map(|m| (seq(m.uid), (*m).clone())).collect();
        let mut new = Facts::read_all(reader, &matched, header);
        new.sort_by(|a, b| sort_order(criteria, a, b));
        for f in &new {
            if let Some(blob) = f.awaiting {
                let at = self.awaiting.partition_point(|&(u, _)| u < f.uid);
                self.awaiting.insert(at, (f.uid, blob));
            }
        }
        // Where each goes, by binary search over the result: the facts of
        // the messages compared with, read once each.
        let mut known: HashMap<u32, Facts> = HashMap::new();
        let mut probe = |uid: u32| -> Facts {
            known
                .entry(uid)
                .or_insert_with(|| {
                    let info = reader.messages_in(sel.id, &[(uid, uid)]).ok().and_then(|v| v.into_iter().next());
                    match info {
                        Some(info) => Facts::read_all(reader, &[(seq(uid), info)], header).pop().unwrap_or_default(),
                        None => Facts { seq: seq(uid), uid, ..Facts::default() },
                    }
                })
                .clone()
        };
        let mut runs: Vec<(usize, Vec<u32>)> = Vec::new();
        for f in &new {
            let (mut lo, mut hi) = (0, self.order.len());
            while lo < hi {
                let mid = lo + (hi - lo) / 2;
                if sort_order(criteria, &probe(self.order[mid]), f).is_lt() {
                    lo = mid + 1;
                } else {
                    hi = mid;
                }
            }
            self.order.insert(lo, f.uid);
            // Sorted first, so each goes after the ones before it: its
            // position stays what it is now.
            let n = self.number(sel, f.uid);
            match runs.last_mut() {
                Some((at, ns)) if *at + ns.len() == lo => ns.push(n),
                _ => runs.push((lo, vec![n])),
            }
        }
        let pairs: Vec<String> = runs.iter().map(|(at, ns)| format!("{} {}", at + 1, list(ns))).collect();
        Some(format!("ADDTO ({})", pairs.join(" ")))
    }

    /// Remembers that `uid` was tested without its body (SEARCH; a SORT
    /// context's are noted where it places them): kept in UID order, once.
    fn await_body(&mut self, uid: u32, blob: BlobId) {
        if let Err(at) = self.awaiting.binary_search_by_key(&uid, |&(u, _)| u) {
            self.awaiting.insert(at, (uid, blob));
        }
    }

    /// `* ESEARCH (TAG "t") [UID]` and the data items (none: no line).
    fn line(&self, items: &[String]) -> Option<String> {
        (!items.is_empty()).then(|| {
            format!("ESEARCH (TAG \"{}\"){} {}", self.tag, if self.uid { " UID" } else { "" }, items.join(" "))
        })
    }
}

fn awaiting_why() -> String {
    format!("over {AWAITING_MAX} messages sorted without their body; not kept up to date")
}

/// Contexts past [`AWAITING_MAX`] stop updating: their NOUPDATE lines.
fn drop_overfull(contexts: &mut Vec<Context>) -> Vec<String> {
    let mut lines = Vec::new();
    contexts.retain(|c| {
        let keep = c.awaiting.len() <= AWAITING_MAX;
        if !keep {
            lines.push(format!("NO [NOUPDATE \"{}\"] {}", c.tag, awaiting_why()));
        }
        keep
    });
    lines
}

/// The REMOVEFROM lines for messages about to be expunged (`gone`, in
/// view), to go before the EXPUNGE or VANISHED while `sel` still numbers
/// them.
pub(crate) fn expunged(sel: &mut Selected, gone: &[u32]) -> Vec<String> {
    if sel.contexts.is_empty() || gone.is_empty() {
        return Vec::new();
    }
    let mut gone = gone.to_vec();
    gone.sort_unstable();
    let mut contexts = std::mem::take(&mut sel.contexts);
    for c in &mut contexts {
        // Awaited bodies of messages gone from the view, in the result or not.
        c.awaiting.retain(|(u, _)| gone.binary_search(u).is_err());
    }
    let lines = contexts.iter_mut().filter_map(|c| c.remove(sel, &gone).and_then(|i| c.line(&[i]))).collect();
    sel.contexts = contexts;
    lines
}

impl Session {
    /// BAD if `tag` already names an updating search (RFC 5267 §4.3: tags
    /// are not reused).
    pub(crate) fn update_tag_free(&self, tag: &str) -> Result<(), Fail> {
        let sel = self.selected.as_ref().expect("selected");
        if sel.contexts.iter().any(|c| c.tag == tag) {
            return Err(Fail::Bad(format!("tag {tag} already names an updating search (RFC 5267 section 4.3)")));
        }
        Ok(())
    }

    /// Keeps a SEARCH's or SORT's result up to date from now on: `uids` is
    /// the result in the requested order. Past [`CONTEXTS_MAX`]: an
    /// untagged `NO [NOUPDATE "tag"]` instead.
    pub(crate) fn start_update(
        &mut self,
        tag: &str,
        uid: bool,
        sort: Option<&[SortCriterion]>,
        keys: &[SearchKey<'_>],
        uids: Vec<u32>,
        mut awaiting: Vec<(u32, BlobId)>,
    ) {
        let sel = self.selected.as_mut().expect("selected");
        if sel.contexts.len() >= CONTEXTS_MAX {
            let why = format!("at most {CONTEXTS_MAX} updating searches; CANCELUPDATE one first");
            self.untagged(&format!("NO [NOUPDATE \"{tag}\"] {why}"));
            return;
        }
        if awaiting.len() > AWAITING_MAX {
            self.untagged(&format!("NO [NOUPDATE \"{tag}\"] {}", awaiting_why()));
            return;
        }
        awaiting.sort_unstable();
        let pinned = keys.iter().map(|k| pin(sel, k)).collect();
        let mut members = uids.clone();
        members.sort_unstable();
        let context = Context {
            tag: tag.to_string(),
            uid,
            sort: sort.map(|s| s.to_vec()),
            keys: pinned,
            extra: sel.search_extra.clone(),
            members,
            order: if sort.is_some() { uids } else { Vec::new() },
            awaiting,
        };
        sel.contexts.push(context);
    }

    /// Stops the updates of the searches `tags` names (CANCELUPDATE); the
    /// number stopped.
    pub(crate) fn cancel_updates(&mut self, tags: &[String]) -> usize {
        let Some(sel) = self.selected.as_mut() else { return 0 };
        let before = sel.contexts.len();
        sel.contexts.retain(|c| !tags.contains(&c.tag));
        before - sel.contexts.len()
    }

    /// The ADDTO and REMOVEFROM lines for `changed` (the messages changed
    /// since the last update, ascending UIDs, new ones included; `sel`
    /// already shows them), to go after the EXISTS.
    pub(crate) fn context_changes(&mut self, changed: &[MessageInfo]) -> Result<Vec<String>, Fail> {
        if self.selected.as_ref().is_none_or(|s| s.contexts.is_empty()) || changed.is_empty() {
            return Ok(Vec::new());
        }
        let reader = self.reader()?;
        let sel = self.selected.as_mut().expect("selected");
        let mut contexts = std::mem::take(&mut sel.contexts);
        let sel = &*sel;
        let mut lines = Vec::new();
        for c in &mut contexts {
            let (mut added, mut removed) = (Vec::new(), Vec::new());
            let mut last = None;
            for m in changed {
                if last == Some(m.uid) || sel.seq_of(m.uid).is_none() {
                    continue;
                }
                last = Some(m.uid);
                let (now, absent) = matches_noting_absent(&reader, sel, &c.extra, m, &c.keys);
                if let Some(blob) = absent {
                    c.await_body(m.uid, blob);
                }
                match (now, c.members.binary_search(&m.uid).is_ok()) {
                    (true, false) => added.push(m),
                    (false, true) => removed.push(m.uid),
                    _ => {}
                }
            }
            let items: Vec<String> = c.remove(sel, &removed).into_iter().chain(c.add(&reader, sel, &added)).collect();
            lines.extend(c.line(&items));
        }
        lines.extend(drop_overfull(&mut contexts));
        self.selected.as_mut().expect("selected").contexts = contexts;
        Ok(lines)
    }

    /// The updates of contexts whose awaited bodies arrived: each such
    /// message in view is tested again (ADDTO if it matches now,
    /// REMOVEFROM if it no longer does); a SORT's message that still
    /// matches leaves its old position and enters the one its keys give
    /// (REMOVEFROM then ADDTO, one line per context). Written here.
    pub(crate) fn context_bodies(&mut self) -> Result<(), Fail> {
        let Some(sel) = self.selected.as_ref() else { return Ok(()) };
        if sel.contexts.iter().all(|c| c.awaiting.is_empty()) {
            return Ok(());
        }
        let reader = self.reader()?;
        let sel = self.selected.as_mut().expect("selected");
        let mut contexts = std::mem::take(&mut sel.contexts);
        let sel = &*sel;
        let mut lines = Vec::new();
        // Only whether keys are stored: nothing decoded but the date.
        let none = Wanted { subject: false, addresses: false, threading: false };
        for c in &mut contexts {
            if c.awaiting.is_empty() {
                continue;
            }
            let ids: Vec<BlobId> = c.awaiting.iter().map(|&(_, b)| b).collect();
            let Ok(found) = reader.sort_keys(&ids, none) else { continue };
            let arrived: Vec<u32> =
                c.awaiting.iter().zip(&found).filter(|(_, k)| k.is_some()).map(|(&(u, _), _)| u).collect();
            if arrived.is_empty() {
                continue;
            }
            c.awaiting.retain(|(u, _)| arrived.binary_search(u).is_err());
            // Tested again, now with the body; a SORT also places a
            // message it keeps again (its keys came with the body).
            let ranges: Vec<(u32, u32)> =
                arrived.iter().filter(|&&u| sel.seq_of(u).is_some()).map(|&u| (u, u)).collect();
            if ranges.is_empty() {
                continue;
            }
            let mut infos = reader.messages_in(sel.id, &ranges)?;
            infos.sort_by_key(|m| m.uid);
            infos.dedup_by_key(|m| m.uid);
            let (mut added, mut removed) = (Vec::new(), Vec::new());
            for m in &infos {
                let (now, absent) = matches_noting_absent(&reader, sel, &c.extra, m, &c.keys);
                if let Some(blob) = absent {
                    c.await_body(m.uid, blob);
                }
                let member = c.members.binary_search(&m.uid).is_ok();
                if member && (!now || c.sort.is_some()) {
                    removed.push(m.uid);
                }
                if now && (!member || c.sort.is_some()) {
                    added.push(m);
                }
            }
            let items: Vec<String> = c.remove(sel, &removed).into_iter().chain(c.add(&reader, sel, &added)).collect();
            lines.extend(c.line(&items));
        }
        lines.extend(drop_overfull(&mut contexts));
        self.selected.as_mut().expect("selected").contexts = contexts;
        for l in lines {
            self.untagged(&l);
        }
        Ok(())
    }
}
