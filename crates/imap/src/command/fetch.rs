//! FETCH and UID FETCH (RFC 9051), with CONDSTORE's CHANGEDSINCE and
//! QRESYNC's VANISHED (RFC 7162), BINARY (RFC 3516), PARTIAL (RFC 9394) and
//! the items imap-codec does not parse ([`crate::extended`]). A long answer
//! goes out in parts ([`FETCH_PART_BYTES`]); bodies this replica left out
//! are waited for ([`crate::ondemand`]).

use crate::extended::FetchExtra;
use crate::mime;
use crate::selected::{flags_string, ranges_string, set_string};
use crate::session::{Done, Fail, Session};
use crate::wire;
use imap_codec::imap_types::command::FetchModifier;
use imap_codec::imap_types::fetch::{MacroOrMessageDataItemNames, MessageDataItemName, Section};
use imap_codec::imap_types::sequence::SequenceSet;
use starling_model::backend::Envelope;
use starling_model::Keyword;
use starling_store::{Reader, StoreError};

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

fn internal_date(secs: i64) -> String {
    chrono::DateTime::from_timestamp(secs, 0).unwrap_or_default().format("\"%d-%b-%Y %H:%M:%S +0000\"").to_string()
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
}
