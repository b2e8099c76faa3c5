//! CATENATE (RFC 4469): an APPEND's message built from parts, each a
//! literal (`TEXT`) or an IMAP URL (RFC 5092) naming a message or a part of
//! one already here. The URLs are those of this server and of the user
//! logged in: `/mailbox[;UIDVALIDITY=n]/;UID=n[/;SECTION=s][/;PARTIAL=o[.l]]`,
//! or the same after `imap://[user@]host` (the user, if named, must be the
//! one logged in; the host is not checked). No URLAUTH (RFC 4467). The
//! message is stored by APPEND's one path ([`Session::append`]); this file
//! only builds its bytes. Any URL that names nothing gets
//! `NO [BADURL url]`, a message past APPENDLIMIT `NO [TOOBIG]`.

use crate::command::fetch::load_body;
use crate::extended::{CatPart, Catenate, CATENATE_PARTS_MAX};
use crate::mime;
use crate::session::{Fail, Session};
use imap_codec::decode::Decoder;
use imap_codec::imap_types::command::CommandBody;
use imap_codec::imap_types::fetch::{MacroOrMessageDataItemNames, MessageDataItemName, Section};
use imap_codec::CommandCodec;
use starling_store::StoreError;

/// A URL of a CATENATE, parsed (RFC 5092 §6's `imessagepart`).
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct ImapUrl {
    /// The mailbox, percent-decoded.
    pub mailbox: String,
    pub uid_validity: Option<u32>,
    pub uid: u32,
    /// `;SECTION=`, percent-decoded (a FETCH BODY[] section).
    pub section: Option<String>,
    /// `;PARTIAL=offset[.length]`.
    pub partial: Option<(u64, Option<u64>)>,
}

fn percent_decode(s: &str) -> Option<Vec<u8>> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = std::str::from_utf8(b.get(i + 1..i + 3)?).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    Some(out)
}

fn find_ci(hay: &str, needle: &str) -> Option<usize> {
    hay.as_bytes().windows(needle.len()).position(|w| w.eq_ignore_ascii_case(needle.as_bytes()))
}

/// Parses `url` as a URL of `account`'s own mail (see the module); `None`
/// if it is not one this server can fetch.
pub(crate) fn parse_url(url: &str, account: &str) -> Option<ImapUrl> {
    let path = if url.len() >= 7 && url[..7].eq_ignore_ascii_case("imap://") {
        let rest = &url[7..];
        let slash = rest.find('/')?;
        let authority = &rest[..slash];
        if let Some(at) = authority.rfind('@') {
            let user = authority[..at].split(';').next()?;
            if percent_decode(user)? != account.as_bytes() {
                return None;
            }
        }
        &rest[slash..]
    } else {
        url
    };
    let path = path.strip_prefix('/')?;
    let uid_at = find_ci(path, "/;UID=")?;
    let (mailbox_part, rest) = (&path[..uid_at], &path[uid_at + 1..]);
    let (enc_mailbox, uid_validity) = match find_ci(mailbox_part, ";UIDVALIDITY=") {
        Some(v) => {
            let n: u32 = mailbox_part[v + ";UIDVALIDITY=".len()..].parse().ok()?;
            (&mailbox_part[..v], Some(n).filter(|&n| n > 0)?.into())
        }
        None => (mailbox_part, None),
    };
    let mailbox = String::from_utf8(percent_decode(enc_mailbox)?).ok().filter(|m| !m.is_empty())?;
    let (mut uid, mut section, mut partial) = (None, None, None);
    // `;UID=20/;SECTION=1.2/;PARTIAL=0.10` (a `/` before each `;` is
    // optional here: the RFC's own example leaves one out).
    for segment in rest.split(';').filter(|s| !s.is_empty()) {
        let segment = segment.strip_suffix('/').unwrap_or(segment);
        let (key, value) = segment.split_once('=')?;
        match key.to_ascii_uppercase().as_str() {
            "UID" if uid.is_none() => uid = Some(value.parse::<u32>().ok().filter(|&u| u > 0)?),
            "SECTION" if section.is_none() && uid.is_some() => {
                section = Some(String::from_utf8(percent_decode(value)?).ok().filter(|s| !s.is_empty())?)
            }
            "PARTIAL" if partial.is_none() && uid.is_some() => {
                partial = Some(match value.split_once('.') {
                    Some((o, l)) => (o.parse().ok()?, Some(l.parse::<u64>().ok().filter(|&l| l > 0)?)),
                    None => (value.parse().ok()?, None),
                })
            }
            // URLAUTH, EXPIRE and anything else: not fetchable here.
            _ => return None,
        }
    }
    Some(ImapUrl { mailbox, uid_validity, uid: uid?, section, partial })
}

/// A URL's section as a FETCH section, read by imap-codec from
/// `BODY.PEEK[section]`.
fn fetch_section(section: &str) -> Option<Section<'static>> {
    if section.bytes().any(|b| matches!(b, b']' | b'[' | b'\r' | b'\n' | b'{') || !b.is_ascii()) {
        return None;
    }
    let command = format!("s FETCH 1 BODY.PEEK[{section}]\r\n");
    match CommandCodec::default().decode(command.as_bytes()) {
        Ok((b"", c)) => match c.body {
            CommandBody::Fetch {
                macro_or_item_names: MacroOrMessageDataItemNames::MessageDataItemNames(items),
                ..
            } => match items.as_slice() {
                [MessageDataItemName::BodyExt { section: Some(s), partial: None, .. }] => {
                    Some(imap_codec::imap_types::IntoStatic::into_static(s.clone()))
                }
                _ => None,
            },
            _ => None,
        },
        _ => None,
    }
}

/// The URL as a BADURL response code gives it back: printable ASCII, no `]`.
fn shown(url: &str) -> String {
    let mut out = String::with_capacity(url.len().min(512));
    for b in url.bytes().take(512) {
        if (0x21..0x7f).contains(&b) && b != b']' {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

impl Session {
    /// The bytes of a CATENATE message: its parts in order, the URLs'
    /// data read from the store. At most `limit` bytes (`NO [TOOBIG]`).
    pub(crate) fn catenated(&mut self, cat: &Catenate, limit: u64) -> Result<Vec<u8>, Fail> {
        if cat.too_many {
            return Err(Fail::No(format!("[LIMIT] at most {CATENATE_PARTS_MAX} parts in one CATENATE")));
        }
        let too_big = || Fail::No(format!("[TOOBIG] the message is larger than APPENDLIMIT {limit}"));
        let mut out = Vec::new();
        for part in &cat.parts {
            match part {
                CatPart::Text(_, true) => {
                    return Err(Fail::Bad("NUL in a literal: send binary data as a literal8 (~{n}, RFC 3516)".into()))
                }
                CatPart::Text(data, false) => {
                    if (out.len() + data.len()) as u64 > limit {
                        return Err(too_big());
                    }
                    out.extend_from_slice(data);
                }
                CatPart::Url(url) => {
                    let data = self.url_data(url)?;
                    if (out.len() + data.len()) as u64 > limit {
                        return Err(too_big());
                    }
                    out.extend_from_slice(&data);
                }
            }
        }
        Ok(out)
    }

    /// What a URL names: a message or a part of it, of the user's own mail.
    fn url_data(&mut self, url: &str) -> Result<Vec<u8>, Fail> {
        let bad = || Fail::No(format!("[BADURL {}] CATENATE: no such message or part here", shown(url)));
        let parsed = parse_url(url, self.account_name()).ok_or_else(bad)?;
        let section = match &parsed.section {
            Some(s) => Some(fetch_section(s).ok_or_else(bad)?),
            None => None,
        };
        // An IMAP URL's mailbox is UTF-8 (RFC 5092 §3); as the client's
        // own names, if it wrote those.
        let stored = self.stored_name(parsed.mailbox.as_bytes(), true).ok();
        let reader = self.reader()?;
        let id = stored
            .and_then(|n| Self::resolve(&reader, &n))
            .or_else(|| Self::resolve(&reader, &parsed.mailbox))
            .ok_or_else(bad)?;
        if parsed.uid_validity.is_some_and(|v| v != reader.status(id).map(|s| s.uid_validity).unwrap_or(0)) {
            return Err(bad());
        }
        let info = reader.messages_in(id, &[(parsed.uid, parsed.uid)])?.into_iter().next().ok_or_else(bad)?;
        let env = reader.envelope(info.message)?.ok_or_else(bad)?;
        let raw = match load_body(&reader, &env, true) {
            Ok(raw) => raw,
            Err(StoreError::MissingBlob(_))
                if self.bodies.may_wait(self.now, !self.shared.config.body_wait.is_zero()) =>
            {
                // The command runs again once a peer sent the body.
                return Err(Fail::Wait(vec![(env.blob, env.size)]));
            }
            Err(StoreError::MissingBlob(_)) => {
                return Err(Fail::No(format!(
                    "[BADURL {}] [UNAVAILABLE] body not stored on this replica yet",
                    shown(url)
                )))
            }
            Err(e) => return Err(e.into()),
        };
        let data = mime::section(&raw, section.as_ref()).ok_or_else(bad)?;
        Ok(match parsed.partial {
            None => data.into_owned(),
            Some((offset, length)) => {
                let start = (offset as usize).min(data.len());
                let end = length.map_or(data.len(), |l| start.saturating_add(l as usize).min(data.len()));
                data[start..end].to_vec()
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_parse() {
        let u = parse_url("/Drafts;UIDVALIDITY=385759045/;UID=20/;section=HEADER", "alice").unwrap();
        assert_eq!(
            u,
            ImapUrl {
                mailbox: "Drafts".into(),
                uid_validity: Some(385759045),
                uid: 20,
                section: Some("HEADER".into()),
                partial: None
            }
        );
        let u = parse_url("/INBOX;UIDVALIDITY=785799047/;UID=113330;section=1.5.9", "alice").unwrap();
        assert_eq!((u.uid, u.section.as_deref()), (113330, Some("1.5.9")));
        let u = parse_url("imap://alice@mail.example/a%20b/;UID=3/;PARTIAL=5.10", "alice").unwrap();
        assert_eq!((u.mailbox.as_str(), u.uid_validity, u.partial), ("a b", None, Some((5, Some(10)))));
        assert!(parse_url("imap://bob@mail.example/INBOX/;UID=3", "alice").is_none());
        assert!(parse_url("/INBOX/;UID=3;URLAUTH=anonymous:internal:91354a4", "alice").is_none());
        assert!(parse_url("/INBOX/;UID=0", "alice").is_none());
        assert!(parse_url("/INBOX", "alice").is_none());
        assert!(parse_url("INBOX/;UID=1", "alice").is_none());
        assert!(parse_url("/INBOX/;UID=1/;SECTION=%zz", "alice").is_none());
        assert_eq!(fetch_section("HEADER.FIELDS (Subject From)").map(|_| ()), Some(()));
        assert!(fetch_section("1] BODY[2").is_none());
        assert!(fetch_section("nonsense").is_none());
    }
}
