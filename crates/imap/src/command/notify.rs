//! NOTIFY (RFC 5465): the client names the events it wants and for which
//! mailboxes; the server sends them unasked, after every command, during
//! IDLE, and between commands.
//!
//! How a session learns of changes: every commit of the account (this
//! node's sessions, LMTP, a peer's ops applied by sync — all through
//! `Store::write`) wakes it ([`Session::account_changed`]), and the store's
//! change log ([`starling_store::Store::changes_since`]) says which
//! mailboxes each commit changed and whether the mailbox tree did. A
//! session looks only at those mailboxes: per changed mailbox one read of
//! its counters (and, when a STATUS goes out, of its flags for UNSEEN).
//! Only when the log cannot say (a commit touched more than
//! [`starling_store::CHANGE_LOG_MAILBOXES`] mailboxes, a snapshot was
//! installed, or the session fell more than
//! [`starling_store::CHANGE_LOG_COMMITS`] commits behind) does it read the
//! counters of every mailbox it watches, once. A tree change (create,
//! delete, rename, subscribe) is found by comparing the names it last saw
//! with the tree's: one pass over the account's mailboxes, only for
//! commits that changed the tree, and only when MailboxName or
//! SubscriptionChange is asked for.
//!
//! What goes out: for the selected mailbox the usual EXISTS / EXPUNGE /
//! FETCH FLAGS updates and, for new messages, a FETCH of the attributes
//! the client named with MessageNew; for other mailboxes an unsolicited
//! `STATUS (MESSAGES UIDNEXT UIDVALIDITY UNSEEN [HIGHESTMODSEQ])`; for
//! names, `LIST` (with `\NonExistent` for a deleted one and `OLDNAME` for
//! a renamed one); for subscriptions, `LIST` with or without
//! `\Subscribed`. Changes this session made itself are not echoed to it
//! (RFC 5465 §5) when the store numbered no other commit in between.
//!
//! Bounds: at most [`NOTIFY_GROUPS_MAX`] event groups and
//! [`NOTIFY_NAMES_MAX`] mailbox names per NOTIFY SET; one delivery holds at
//! most [`NOTIFY_PENDING_MAX`] notifications. Past that the session says
//! `* OK [NOTIFICATIONOVERFLOW]` and behaves as after NOTIFY NONE (RFC
//! 5465 §5.8): the client re-syncs (the selected mailbox's own EXISTS and
//! EXPUNGE updates still go out as base IMAP sends them). A NOTIFY SET
//! STATUS whose initial STATUS responses would pass the bound is refused
//! `NO [NOTIFICATIONOVERFLOW]` (§3.1).

use crate::command::fetch::FetchExtras;
use crate::extended::FetchExtra;
use crate::session::{full_name, name_wire, Session};
use imap_codec::decode::Decoder;
use imap_codec::imap_types::command::CommandBody;
use imap_codec::imap_types::core::Vec1;
use imap_codec::imap_types::fetch::MacroOrMessageDataItemNames;
use imap_codec::imap_types::sequence::{SeqOrUid, Sequence, SequenceSet};
use imap_codec::imap_types::status::StatusDataItemName;
use imap_codec::imap_types::IntoStatic;
use imap_codec::CommandCodec;
use starling_model::account::DELIMITER;
use starling_model::{MailboxId, MailboxTree};
use starling_store::MailboxStatus;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::num::NonZeroU32;

/// Event groups in one NOTIFY SET.
pub const NOTIFY_GROUPS_MAX: usize = 32;

/// Mailbox names in one NOTIFY SET (over all its `subtree` and `mailboxes`).
pub const NOTIFY_NAMES_MAX: usize = 100;

/// Notifications one delivery may hold (STATUS and LIST responses, and
/// new messages of the selected mailbox to FETCH); past it, the session
/// stops notifying ([`Session::notify_overflow`]).
pub const NOTIFY_PENDING_MAX: usize = 1000;

/// The events this server supports, as BADEVENT lists them.
const SUPPORTED: &str = "MessageNew MessageExpunge FlagChange MailboxName SubscriptionChange";

/// Own commits remembered (not to echo them), at most.
const OWN_MAX: usize = 64;

/// Events asked for a set of mailboxes.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct Events {
    /// MessageNew and MessageExpunge (always together).
    pub message: bool,
    pub flags: bool,
    pub names: bool,
    pub subscriptions: bool,
}

impl Events {
    fn or(self, o: Events) -> Events {
        Events {
            message: self.message || o.message,
            flags: self.flags || o.flags,
            names: self.names || o.names,
            subscriptions: self.subscriptions || o.subscriptions,
        }
    }

    fn status(&self) -> bool {
        self.message || self.flags
    }
}

/// Which mailboxes an event group names (other than the selected one).
#[derive(Clone, Debug, PartialEq, Eq)]
enum Filter {
    Inboxes,
    Personal,
    Subscribed,
    Subtree(Vec<String>),
    Mailboxes(Vec<String>),
}

impl Filter {
    fn matches(&self, name: &str, subscribed: bool) -> bool {
        match self {
            Filter::Inboxes => name == "INBOX",
            Filter::Personal => true,
            Filter::Subscribed => subscribed,
            Filter::Subtree(roots) => roots.iter().any(|r| {
                name == r
                    || (name.len() > r.len() && name.starts_with(r.as_str()) && name[r.len()..].starts_with(DELIMITER))
            }),
            Filter::Mailboxes(names) => names.iter().any(|n| n == name),
        }
    }
}

/// The selected mailbox's events (`selected` or `selected-delayed`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct SelectedWatch {
    /// `selected-delayed`: expunges wait for a command that allows them.
    pub delayed: bool,
    pub flags: bool,
    /// MessageNew's fetch attributes, parsed once at NOTIFY SET.
    pub fetch: Option<NotifyFetch>,
}

/// MessageNew's fetch attributes (RFC 5465 §5.2), typed: what imap-codec
/// parses, and the items it does not ([`crate::extended`]) lifted off.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct NotifyFetch {
    items: MacroOrMessageDataItemNames<'static>,
    extra: Vec<FetchExtra>,
    /// `UID` stood in for `extra` and was not asked for.
    placeholder: bool,
}

/// A session's NOTIFY state.
pub(crate) struct Notify {
    /// `None`: no message events for the selected mailbox (§3.1).
    pub selected: Option<SelectedWatch>,
    groups: Vec<(Filter, Events)>,
    /// The last commit looked at.
    seen: u64,
    /// Commits of this session's own (not echoed).
    own: BTreeSet<u64>,
    /// Counters last seen of each watched mailbox.
    known: HashMap<MailboxId, MailboxStatus>,
    /// The names (and subscriptions) last seen, when asked for.
    tree: Option<BTreeMap<MailboxId, (String, bool)>>,
    /// New messages of the selected mailbox to FETCH.
    pub fresh: Vec<u32>,
    /// Passed [`NOTIFY_PENDING_MAX`]: stop at the next delivery.
    pub overflowed: bool,
}

impl Notify {
    fn events_for(&self, name: &str, subscribed: bool) -> Events {
        self.groups
            .iter()
            .filter(|(f, _)| f.matches(name, subscribed))
            .fold(Events::default(), |acc, (_, e)| acc.or(*e))
    }

    fn wants_tree(&self) -> bool {
        self.groups.iter().any(|(_, e)| e.names || e.subscriptions)
    }

    /// New UIDs of the selected mailbox, to FETCH with MessageNew's
    /// attributes.
    pub(crate) fn saw_new(&mut self, uids: &[u32]) {
        if self.selected.as_ref().is_none_or(|s| s.fetch.is_none()) || self.overflowed {
            return;
        }
        if self.fresh.len() + uids.len() > NOTIFY_PENDING_MAX {
            self.overflowed = true;
            self.fresh = Vec::new();
            return;
        }
        self.fresh.extend_from_slice(uids);
    }

    /// A commit of this session's own.
    pub(crate) fn own(&mut self, seq: u64) {
        if self.own.len() == OWN_MAX {
            self.own.pop_first();
        }
        self.own.insert(seq);
    }
}

/// What NOTIFY SET asked, parsed.
struct Request {
    status: bool,
    selected: Option<SelectedWatch>,
    groups: Vec<(Filter, Events)>,
}

/// Why a NOTIFY is refused.
enum Refusal {
    Bad(String),
    No(String),
}

/// A cursor over a NOTIFY command's bytes.
struct Cursor<'a> {
    b: &'a [u8],
    at: usize,
}

impl<'a> Cursor<'a> {
    fn peek(&self) -> Option<u8> {
        self.b.get(self.at).copied()
    }

    fn eat(&mut self, c: u8) -> bool {
        if self.peek() == Some(c) {
            self.at += 1;
            true
        } else {
            false
        }
    }

    fn expect(&mut self, c: u8) -> Result<(), Refusal> {
        if self.eat(c) {
            Ok(())
        } else {
            Err(bad(&format!("expected '{}'", c as char)))
        }
    }

    /// An atom (up to a space, parenthesis or the line's end).
    fn atom(&mut self) -> &'a [u8] {
        let start = self.at;
        while let Some(c) = self.peek() {
            if matches!(c, b' ' | b'(' | b')' | b'\r' | b'\n' | b'"' | b'{') || c < 0x20 {
                break;
            }
            self.at += 1;
        }
        &self.b[start..self.at]
    }

    /// A mailbox name: an atom, a quoted string or a literal.
    fn mailbox(&mut self) -> Result<String, Refusal> {
        let bytes = match self.peek() {
            Some(b'"') => {
                self.at += 1;
                let mut out = Vec::new();
                loop {
                    match self.peek() {
                        Some(b'"') => {
                            self.at += 1;
                            break;
                        }
                        Some(b'\\') => {
                            self.at += 1;
                            out.push(self.peek().ok_or_else(|| bad("unterminated string"))?);
                            self.at += 1;
                        }
                        Some(b'\r' | b'\n') | None => return Err(bad("unterminated string")),
                        Some(c) => {
                            out.push(c);
                            self.at += 1;
                        }
                    }
                }
                out
            }
            Some(b'{') => {
                let close = self.b[self.at..].iter().position(|&c| c == b'}').ok_or_else(|| bad("bad literal"))?;
                let spec = &self.b[self.at + 1..self.at + close];
                let digits = spec.strip_suffix(b"+").unwrap_or(spec);
                let n: usize =
                    std::str::from_utf8(digits).ok().and_then(|d| d.parse().ok()).ok_or_else(|| bad("bad literal"))?;
                let start = self.at + close + 1;
                let start = start + if self.b[start..].starts_with(b"\r\n") { 2 } else { 1 };
                let end = start.checked_add(n).filter(|&e| e <= self.b.len()).ok_or_else(|| bad("bad literal"))?;
                self.at = end;
                self.b[start..end].to_vec()
            }
            _ => {
                let a = self.atom();
                if a.is_empty() {
                    return Err(bad("expected a mailbox name"));
                }
                a.to_vec()
            }
        };
        let name = String::from_utf8(bytes).map_err(|_| bad("mailbox name is not UTF-8"))?;
        let name = name.trim_end_matches(DELIMITER);
        Ok(if name.eq_ignore_ascii_case("INBOX") { "INBOX".to_string() } else { name.to_string() })
    }

    /// A parenthesised list as it is written (quoted strings and literals
    /// kept whole), for MessageNew's fetch attributes.
    fn raw_list(&mut self) -> Result<&'a [u8], Refusal> {
        let start = self.at;
        self.expect(b'(')?;
        let mut depth = 1usize;
        while depth > 0 {
            match self.peek() {
                None | Some(b'\r' | b'\n') => return Err(bad("unbalanced parentheses")),
                Some(b'(') => depth += 1,
                Some(b')') => depth -= 1,
                Some(b'"') => {
                    self.at += 1;
                    while let Some(c) = self.peek() {
                        if c == b'"' {
                            break;
                        }
                        self.at += usize::from(c == b'\\');
                        self.at += 1;
                    }
                }
                _ => {}
            }
            self.at += 1;
        }
        Ok(&self.b[start..self.at])
    }
}

fn bad(why: &str) -> Refusal {
    Refusal::Bad(format!("NOTIFY: {why}"))
}

/// A MessageNew fetch-att list (`(…)`, as the client wrote it), parsed
/// once at NOTIFY SET as FETCH's own parser takes it (the list put in a
/// `UID FETCH 1` command, items imap-codec does not know lifted off as a
/// FETCH's are): `None` if FETCH would not take it, or it carries a
/// modifier.
fn parse_fetch_atts(atts: &[u8]) -> Option<NotifyFetch> {
    let mut message = b"n UID FETCH 1 ".to_vec();
    message.extend_from_slice(atts);
    message.extend_from_slice(b"\r\n");
    let lifted = crate::extended::lift(&message).unwrap_or_default();
    if lifted.fetch_partial.is_some() {
        return None;
    }
    let input = if lifted.command.is_empty() { &message[..] } else { &lifted.command[..] };
    match CommandCodec::default().decode(input) {
        Ok((b"", c)) => match c.body {
            // At least one attribute (RFC 5465 §8: `"(" fetch-att *(SP
            // fetch-att) ")"`), where imap-codec takes `()`.
            CommandBody::Fetch {
                macro_or_item_names: MacroOrMessageDataItemNames::MessageDataItemNames(v), ..
            } if v.is_empty() && lifted.fetch_extra.is_empty() => None,
            CommandBody::Fetch { macro_or_item_names, modifiers, .. } if modifiers.is_empty() => Some(NotifyFetch {
                items: macro_or_item_names.into_static(),
                extra: lifted.fetch_extra,
                placeholder: lifted.fetch_placeholder,
            }),
            _ => None,
        },
        _ => None,
    }
}

/// `uids` (ascending, distinct, not empty) as a UID set of ranges.
fn uid_set(uids: &[u32]) -> Option<SequenceSet> {
    let value = |u: u32| NonZeroU32::new(u).map(SeqOrUid::Value);
    let mut ranges = Vec::new();
    let mut i = 0;
    while i < uids.len() {
        let mut j = i;
        while j + 1 < uids.len() && uids[j + 1] == uids[j] + 1 {
            j += 1;
        }
        ranges.push(if i == j {
            Sequence::Single(value(uids[i])?)
        } else {
            Sequence::Range(value(uids[i])?, value(uids[j])?)
        });
        i = j + 1;
    }
    Vec1::try_from(ranges).ok().map(SequenceSet)
}

/// Parses `NOTIFY SET …` after the verb (`rest` starts at `SET`).
fn parse_set(rest: &[u8]) -> Result<Request, Refusal> {
    let mut c = Cursor { b: rest, at: 0 };
    let verb = c.atom();
    if !verb.eq_ignore_ascii_case(b"SET") {
        return Err(bad("expected SET or NONE"));
    }
    c.expect(b' ')?;
    let mut status = false;
    if c.peek() != Some(b'(') {
        let s = c.atom();
        if !s.eq_ignore_ascii_case(b"STATUS") {
            return Err(bad("expected STATUS or an event group"));
        }
        status = true;
        c.expect(b' ')?;
    }
    let mut selected: Option<SelectedWatch> = None;
    let mut selected_seen = false;
    let mut groups = Vec::new();
    let mut unsupported = false;
    let mut names = 0usize;
    loop {
        if groups.len() + usize::from(selected_seen) >= NOTIFY_GROUPS_MAX {
            return Err(Refusal::No(format!("[LIMIT] at most {NOTIFY_GROUPS_MAX} event groups")));
        }
        c.expect(b'(')?;
        let which = c.atom().to_ascii_lowercase();
        let filter = match which.as_slice() {
            b"selected" | b"selected-delayed" => None,
            b"inboxes" => Some(Filter::Inboxes),
            b"personal" => Some(Filter::Personal),
            b"subscribed" => Some(Filter::Subscribed),
            b"subtree" | b"mailboxes" => {
                c.expect(b' ')?;
                let mut list = Vec::new();
                if c.eat(b'(') {
                    loop {
                        list.push(c.mailbox()?);
                        if c.eat(b')') {
                            break;
                        }
                        c.expect(b' ')?;
                        if names + list.len() >= NOTIFY_NAMES_MAX {
                            return Err(Refusal::No(format!("[LIMIT] at most {NOTIFY_NAMES_MAX} mailbox names")));
                        }
                    }
                } else {
                    list.push(c.mailbox()?);
                }
                names += list.len();
                if names > NOTIFY_NAMES_MAX {
                    return Err(Refusal::No(format!("[LIMIT] at most {NOTIFY_NAMES_MAX} mailbox names")));
                }
                Some(if which == b"subtree" { Filter::Subtree(list) } else { Filter::Mailboxes(list) })
            }
            _ => return Err(bad("unknown mailbox specifier")),
        };
        c.expect(b' ')?;
        let mut events = Events::default();
        let (mut new, mut expunge, mut annotation, mut other_kind) = (false, false, false, false);
        let mut fetch = None;
        if c.peek() == Some(b'(') {
            c.at += 1;
            loop {
                let name = c.atom().to_ascii_lowercase();
                match name.as_slice() {
                    b"messagenew" => {
                        new = true;
                        if c.peek() == Some(b' ') && c.b.get(c.at + 1) == Some(&b'(') {
                            c.at += 1;
                            fetch = Some(c.raw_list()?);
                        }
                    }
                    b"messageexpunge" => expunge = true,
                    b"flagchange" => events.flags = true,
                    b"annotationchange" => {
                        annotation = true;
                        unsupported = true;
                    }
                    b"mailboxname" => {
                        events.names = true;
                        other_kind = true;
                    }
                    b"subscriptionchange" => {
                        events.subscriptions = true;
                        other_kind = true;
                    }
                    b"" => return Err(bad("expected an event")),
                    // MailboxMetadataChange, ServerMetadataChange (no
                    // METADATA here) and any extension event.
                    _ => {
                        unsupported = true;
                        other_kind = true;
                    }
                }
                if c.eat(b')') {
                    break;
                }
                c.expect(b' ')?;
            }
        } else if !c.atom().eq_ignore_ascii_case(b"NONE") {
            return Err(bad("expected a list of events or NONE"));
        }
        c.expect(b')')?;
        // §5: MessageNew and MessageExpunge together; FlagChange and
        // AnnotationChange only with both (checked once unsupported
        // events are answered, as BADEVENT comes first).
        let composition = if new != expunge {
            Some("MessageNew and MessageExpunge go together")
        } else if (events.flags || annotation) && !new {
            Some("FlagChange needs MessageNew and MessageExpunge")
        } else if filter.is_none() && other_kind {
            Some("only message events apply to the selected mailbox")
        } else if filter.is_some() && fetch.is_some() {
            Some("fetch attributes apply to the selected mailbox only")
        } else {
            None
        };
        if let (Some(why), false) = (composition, unsupported) {
            return Err(bad(why));
        }
        let fetch = match fetch {
            Some(atts) => match parse_fetch_atts(atts) {
                Some(typed) => Some(typed),
                None => return Err(bad("MessageNew's fetch attributes do not parse")),
            },
            None => None,
        };
        events.message = new;
        match filter {
            None => {
                if selected_seen {
                    return Err(bad("selected or selected-delayed, once"));
                }
                selected_seen = true;
                if new {
                    selected =
                        Some(SelectedWatch { delayed: which == b"selected-delayed", flags: events.flags, fetch });
                }
            }
            Some(f) => groups.push((f, events)),
        }
        if c.peek() != Some(b' ') {
            break;
        }
        c.at += 1;
    }
    if !matches!(&c.b[c.at..], b"\r\n" | b"\n" | b"") {
        return Err(bad("unexpected bytes after the event groups"));
    }
    if unsupported {
        return Err(Refusal::No(format!("[BADEVENT ({SUPPORTED})] unsupported event")));
    }
    Ok(Request { status, selected, groups })
}

impl Session {
    /// `tag NOTIFY …`: answered here (`true`), or not a NOTIFY command
    /// (`false`). imap-codec does not know it: it is read off the raw
    /// message (literals included) before decoding.
    pub(crate) fn notify_command(&mut self, message: &[u8]) -> bool {
        let Some(sp) = message.iter().position(|&b| b == b' ') else { return false };
        let (tag, rest) = (&message[..sp], &message[sp + 1..]);
        let verb_len = rest.iter().position(|&b| matches!(b, b' ' | b'\r' | b'\n')).unwrap_or(rest.len());
        if !rest[..verb_len].eq_ignore_ascii_case(b"NOTIFY") || tag.is_empty() {
            return false;
        }
        let tag = String::from_utf8_lossy(tag).into_owned();
        if self.account.is_none() {
            self.tagged(&tag, "BAD", "authenticate first (LOGIN or AUTHENTICATE)");
            return true;
        }
        let args = rest[verb_len..].strip_prefix(b" ").unwrap_or_default();
        let none =
            args.len() >= 4 && args[..4].eq_ignore_ascii_case(b"NONE") && matches!(&args[4..], b"\r\n" | b"\n" | b"");
        if none {
            self.notify = None;
            self.tagged(&tag, "OK", "NOTIFY completed");
            return true;
        }
        match parse_set(args).and_then(|r| self.stored_filters(r)) {
            Ok(request) => match self.notify_set(request) {
                Ok(()) => self.tagged(&tag, "OK", "NOTIFY completed"),
                Err(Refusal::No(why)) => self.tagged(&tag, "NO", &why),
                Err(Refusal::Bad(why)) => self.tagged(&tag, "BAD", &why),
            },
            Err(Refusal::No(why)) => self.tagged(&tag, "NO", &why),
            Err(Refusal::Bad(why)) => self.tagged(&tag, "BAD", &why),
        }
        true
    }

    /// The names the filters give, in their stored form (the client wrote
    /// them in its encoding).
    fn stored_filters(&self, mut request: Request) -> Result<Request, Refusal> {
        for (filter, _) in &mut request.groups {
            if let Filter::Subtree(names) | Filter::Mailboxes(names) = filter {
                for name in names.iter_mut() {
                    if name != "INBOX" {
                        *name = self.stored_name(name.as_bytes(), self.utf8_names()).map_err(|e| match e {
                            crate::session::Fail::Bad(s) => Refusal::Bad(s),
                            crate::session::Fail::No(s) => Refusal::No(s),
                            _ => Refusal::No("[SERVERBUG] NOTIFY could not read the mailboxes".into()),
                        })?;
                    }
                }
            }
        }
        Ok(request)
    }

    fn notify_set(&mut self, request: Request) -> Result<(), Refusal> {
        let failed = |e: crate::session::Fail| match e {
            crate::session::Fail::Bad(s) => Refusal::Bad(s),
            crate::session::Fail::No(s) => Refusal::No(s),
            _ => Refusal::No("[SERVERBUG] NOTIFY could not read the mailboxes".into()),
        };
        let account = self.account_name().to_string();
        let seen = self.shared.store.commit_seq(&account).map_err(|e| failed(e.into()))?;
        let mut notify = Notify {
            selected: request.selected,
            groups: request.groups,
            seen,
            own: BTreeSet::new(),
            known: HashMap::new(),
            tree: None,
            fresh: Vec::new(),
            overflowed: false,
        };
        let reader = self.reader().map_err(failed)?;
        let tree = &reader.names().tree;
        let selected_id = self.selected.as_ref().map(|s| s.id);
        // Counters of every mailbox watched now (one read each, once),
        // and the names when asked for.
        let mut initial = Vec::new();
        for (name, &id) in &tree.by_name {
            let subscribed = tree.entries.get(&id).is_some_and(|e| e.subscribed);
            if !notify.events_for(name, subscribed).status() {
                continue;
            }
            notify.known.insert(id, reader.status(id).map_err(|e| failed(e.into()))?);
            if request.status && Some(id) != selected_id {
                initial.push((id, name.clone()));
            }
        }
        if notify.wants_tree() {
            notify.tree = Some(names_of(tree));
        }
        drop(reader);
        if initial.len() > NOTIFY_PENDING_MAX {
            return Err(Refusal::No(format!(
                "[NOTIFICATIONOVERFLOW] STATUS of {} mailboxes asked; at most {NOTIFY_PENDING_MAX}",
                initial.len()
            )));
        }
        // A successful NOTIFY SET implies a NOOP (§3.1).
        self.updates(true);
        self.notify = Some(notify);
        for (id, name) in initial {
            self.notify_status(id, &name).map_err(failed)?;
        }
        Ok(())
    }

    /// `* STATUS` of a watched mailbox (MESSAGES UIDNEXT UIDVALIDITY
    /// UNSEEN, and HIGHESTMODSEQ with CONDSTORE on).
    fn notify_status(&mut self, id: MailboxId, name: &str) -> Result<(), crate::session::Fail> {
        let mut items = vec![
            StatusDataItemName::Messages,
            StatusDataItemName::UidNext,
            StatusDataItemName::UidValidity,
            StatusDataItemName::Unseen,
        ];
        if self.enabled.condstore {
            items.push(StatusDataItemName::HighestModSeq);
        }
        let mut quoted = Vec::new();
        self.wire_name(&mut quoted, name);
        self.status_lines(id, &String::from_utf8_lossy(&quoted), &items, &[])
    }

    /// Whether the selected mailbox's updates go out unasked (IDLE, and
    /// between commands with NOTIFY): always without NOTIFY, with it only
    /// when the client asked for the selected mailbox's events.
    pub(crate) fn selected_pushed(&self) -> bool {
        self.notify.as_ref().is_none_or(|n| n.selected.is_some())
    }

    /// Whether expunges of the selected mailbox may go out now, whatever
    /// the command (`selected`, not `selected-delayed`: §6.1).
    pub(crate) fn expunges_immediate(&self) -> bool {
        self.notify.as_ref().and_then(|n| n.selected.as_ref()).is_some_and(|s| !s.delayed)
    }

    /// Stops notifying (§5.8): the client must re-sync.
    fn notify_overflow(&mut self) {
        self.notify = None;
        self.untagged("OK [NOTIFICATIONOVERFLOW] too many notifications; NOTIFY is off, please re-sync");
    }

    /// Sends what NOTIFY asked for of the commits since the last look
    /// (see the module's documentation for what it reads).
    pub(crate) fn notify_updates(&mut self) {
        let _ = self.try_notify_updates();
    }

    fn try_notify_updates(&mut self) -> Result<(), crate::session::Fail> {
        let Some(mut n) = self.notify.take() else { return Ok(()) };
        if n.overflowed {
            self.notify_overflow();
            return Ok(());
        }
        let account = self.account_name().to_string();
        let changes = match self.shared.store.changes_since(&account, n.seen) {
            Ok(c) => c,
            Err(e) => {
                self.notify = Some(n);
                return Err(e.into());
            }
        };
        if changes.upto == n.seen && n.fresh.is_empty() {
            self.notify = Some(n);
            return Ok(());
        }
        n.seen = changes.upto;
        // Which mailboxes changed, and whether by another than this session.
        let mut loud: Option<BTreeSet<MailboxId>> = changes.complete.then(BTreeSet::new);
        let mut quiet = BTreeSet::new();
        let (mut tree_changed, mut tree_loud) = (!changes.complete, !changes.complete);
        for c in &changes.commits {
            let own = n.own.remove(&c.seq);
            tree_changed |= c.tree;
            tree_loud |= c.tree && !own;
            match (&c.mailboxes, own) {
                (Some(m), true) => quiet.extend(m.iter().copied()),
                (Some(m), false) => {
                    if let Some(l) = &mut loud {
                        l.extend(m.iter().copied());
                    }
                }
                (None, _) => loud = None,
            }
        }
        n.own.retain(|&s| s > changes.upto);
        let reader = match self.reader() {
            Ok(r) => r,
            Err(e) => {
                self.notify = Some(n);
                return Err(e);
            }
        };
        let tree = &reader.names().tree;
        let mut lists = Vec::new();
        if tree_changed {
            if let Some(old) = n.tree.take() {
                let new = names_of(tree);
                if tree_loud {
                    lists = tree_diff(&n, &old, &new, tree, self.utf8_names());
                }
                n.tree = Some(new);
            }
            n.known.retain(|id, _| tree.entries.get(id).is_some_and(|e| !e.deleted));
        }
        let selected_id = self.selected.as_ref().map(|s| s.id);
        let candidates: Vec<MailboxId> = match &loud {
            Some(l) => l.union(&quiet).copied().collect(),
            None => tree.by_name.values().copied().collect(),
        };
        let mut statuses = Vec::new();
        for id in candidates {
            if Some(id) == selected_id {
                continue;
            }
            let Some(name) = full_name(tree, id).filter(|name| tree.by_name.get(name) == Some(&id)) else {
                continue;
            };
            let subscribed = tree.entries.get(&id).is_some_and(|e| e.subscribed);
            let events = n.events_for(&name, subscribed);
            if !events.status() {
                continue;
            }
            let now = reader.status(id)?;
            let before = n.known.insert(id, now);
            if loud.as_ref().is_some_and(|l| !l.contains(&id)) {
                continue; // this session's own change
            }
            let relevant = match before {
                None => true,
                Some(b) => {
                    (events.message
                        && (b.messages != now.messages
                            || b.uid_next != now.uid_next
                            || b.uid_validity != now.uid_validity))
                        || (events.flags && b.highest_modseq != now.highest_modseq)
                }
            };
            if relevant {
                statuses.push((id, name));
            }
        }
        drop(reader);
        let fresh = std::mem::take(&mut n.fresh);
        if lists.len() + statuses.len() + fresh.len() > NOTIFY_PENDING_MAX {
            self.notify_overflow();
            return Ok(());
        }
        let atts = n.selected.as_ref().and_then(|s| s.fetch.clone());
        self.notify = Some(n);
        for line in lists {
            self.out.extend_from_slice(b"* ");
            self.out.extend_from_slice(&line);
            self.out.extend_from_slice(b"\r\n");
        }
        for (id, name) in statuses {
            self.notify_status(id, &name)?;
        }
        if let (Some(atts), false, true) = (atts, fresh.is_empty(), self.selected.is_some()) {
            self.notify_fetch(&fresh, &atts);
        }
        Ok(())
    }

    /// MessageNew's FETCH of new messages of the selected mailbox. An
    /// answer too long for one part of a FETCH is an overflow.
    fn notify_fetch(&mut self, uids: &[u32], atts: &NotifyFetch) {
        let mut sorted = uids.to_vec();
        sorted.sort_unstable();
        sorted.dedup();
        let Some(set) = uid_set(&sorted) else { return };
        let extra = FetchExtras { items: atts.extra.clone(), placeholder: atts.placeholder, partial: None };
        // (Never called while a client's FETCH is in parts: that one ended.)
        self.part.after = None;
        let r = self.fetch(&set, &atts.items, true, &[], &extra);
        self.part.after = None;
        if matches!(r, Err(crate::session::Fail::More)) {
            self.notify_overflow();
        }
    }

    /// Notes a commit of this session's own when it is the only one since
    /// `before` (then it is not echoed).
    pub(crate) fn notify_own(&mut self, before: u64) {
        let Some(n) = self.notify.as_mut() else { return };
        let Some(account) = self.account.as_deref() else { return };
        if let Ok(after) = self.shared.store.commit_seq(account) {
            if after == before + 1 {
                n.own(after);
            }
        }
    }
}

/// Every visible mailbox's name and subscription.
fn names_of(tree: &MailboxTree) -> BTreeMap<MailboxId, (String, bool)> {
    tree.by_name
        .iter()
        .map(|(name, id)| (*id, (name.clone(), tree.entries.get(id).is_some_and(|e| e.subscribed))))
        .collect()
}

/// LIST responses for what changed between two views of the tree, for
/// the mailboxes whose groups ask for names or subscriptions.
fn tree_diff(
    n: &Notify,
    old: &BTreeMap<MailboxId, (String, bool)>,
    new: &BTreeMap<MailboxId, (String, bool)>,
    tree: &MailboxTree,
    utf8: bool,
) -> Vec<Vec<u8>> {
    let children = |name: &str| {
        let prefix = format!("{name}{DELIMITER}");
        tree.by_name.range(prefix.clone()..).next().is_some_and(|(n, _)| n.starts_with(&prefix))
    };
    let line = |attrs: &[&str], name: &str, oldname: Option<&str>| {
        let mut l = format!("LIST ({}) \"{DELIMITER}\" ", attrs.join(" ")).into_bytes();
        name_wire(utf8, &mut l, name);
        if let Some(o) = oldname {
            l.extend_from_slice(b" (\"OLDNAME\" (");
            name_wire(utf8, &mut l, o);
            l.extend_from_slice(b"))");
        }
        l
    };
    let mut out = Vec::new();
    for (id, (name, subscribed)) in new {
        let events = n.events_for(name, *subscribed);
        let kids = if children(name) { "\\HasChildren" } else { "\\HasNoChildren" };
        let mut attrs = vec![kids];
        if *subscribed {
            attrs.push("\\Subscribed");
        }
        match old.get(id) {
            None if events.names => out.push(line(&attrs, name, None)),
            Some((was, _)) if was != name && events.names => out.push(line(&attrs, name, Some(was))),
            // Renamed out of what is watched: its old name is gone.
            Some((was, was_subscribed)) if was != name && n.events_for(was, *was_subscribed).names => {
                out.push(line(&["\\NonExistent"], was, None))
            }
            Some((_, was_subscribed))
                if was_subscribed != subscribed && (events.subscriptions || n.events_for(name, true).subscriptions) =>
            {
                out.push(line(&attrs, name, None))
            }
            _ => {}
        }
    }
    for (id, (name, subscribed)) in old {
        if !new.contains_key(id) && n.events_for(name, *subscribed).names {
            out.push(line(&["\\NonExistent"], name, None));
        }
    }
    out
}
