//! APPEND (RFC 9051 §6.3.12), with MULTIAPPEND (RFC 3502) and BINARY's
//! literal8 (RFC 3516) and CATENATE (RFC 4469, its messages built by
//! [`Session::catenated`]). Every message of one command is stored in one
//! transaction (`Store::write`, the one write path): all of them or, if
//! any fails, none. APPENDUID (RFC 4315) names their UIDs in order.

use crate::extended;
use crate::selected::keywords;
use crate::session::{Done, Fail, Session};
use imap_codec::decode::Decoder;
use imap_codec::imap_types::command::CommandBody;
use imap_codec::imap_types::datetime::DateTime;
use imap_codec::imap_types::extensions::binary::LiteralOrLiteral8;
use imap_codec::imap_types::flag::Flag;
use imap_codec::CommandCodec;
use std::borrow::Cow;

/// Messages in one MULTIAPPEND, at most (`NO [LIMIT]` past it): the
/// command is one transaction.
pub const MULTIAPPEND_MAX: usize = 1000;

/// One message of an APPEND: its flags, its date, its bytes.
pub(crate) type Message<'a> = (Vec<Flag<'a>>, Option<DateTime>, LiteralOrLiteral8<'a>);

/// UIDs in the order given, consecutive ascending runs as ranges
/// (RFC 4315's uid-set for APPENDUID keeps the order of the messages).
fn uid_list(uids: &[u32]) -> String {
    let mut parts = Vec::new();
    let mut i = 0;
    while i < uids.len() {
        let mut j = i;
        while j + 1 < uids.len() && uids[j + 1] == uids[j].wrapping_add(1) {
            j += 1;
        }
        parts.push(if i == j { uids[i].to_string() } else { format!("{}:{}", uids[i], uids[j]) });
        i = j + 1;
    }
    parts.join(",")
}

impl Session {
    /// APPEND of `first` and, for MULTIAPPEND, of the messages in `more`
    /// (each a whole APPEND command, [`extended::Lifted::appends`]); the
    /// messages `catenate` names are built from their parts instead.
    pub(crate) fn append(
        &mut self,
        mailbox: &str,
        first: Message<'_>,
        more: &[Vec<u8>],
        catenate: &[extended::Catenate],
    ) -> Done {
        if more.len() >= MULTIAPPEND_MAX {
            return Err(Fail::No(format!("[LIMIT] at most {MULTIAPPEND_MAX} messages in one APPEND")));
        }
        let mut decoded = Vec::with_capacity(more.len());
        for bytes in more {
            match CommandCodec::default().decode(bytes) {
                Ok((b"", command)) => match command.body {
                    CommandBody::Append { flags, date, message, .. } => decoded.push((flags, date, message)),
                    _ => return Err(Fail::Bad("syntax error in MULTIAPPEND".into())),
                },
                _ if extended::nul_in_literal(bytes) => {
                    return Err(Fail::Bad("NUL in a literal: send binary data as a literal8 (~{n}, RFC 3516)".into()))
                }
                _ => return Err(Fail::Bad("syntax error in a message of MULTIAPPEND".into())),
            }
        }
        let reader = self.reader()?;
        let Some(id) = Self::resolve(&reader, mailbox) else {
            return Err(Fail::No("[TRYCREATE] no such mailbox".into()));
        };
        let validity = reader.status(id)?.uid_validity;
        drop(reader);
        self.recent_floor(id, None)?;
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs() as i64);
        let limit = self.append_limit();
        let mut prepared = Vec::with_capacity(1 + decoded.len());
        for (index, (flags, date, message)) in std::iter::once(&first).chain(decoded.iter()).enumerate() {
            let data = match (catenate.iter().find(|c| c.index == index), message) {
                (Some(cat), _) => Cow::Owned(self.catenated(cat, limit)?),
                (None, LiteralOrLiteral8::Literal(l)) => Cow::Borrowed(l.data()),
                (None, LiteralOrLiteral8::Literal8(l)) => Cow::Borrowed(l.data.as_ref()),
            };
            if data.is_empty() {
                // RFC 3502 §6.3.11: an error, and how a client cancels.
                return Err(Fail::No("zero-length message: APPEND cancelled, nothing stored".into()));
            }
            if data.len() as u64 > limit {
                return Err(Fail::No(format!("[TOOBIG] a message is larger than APPENDLIMIT {limit}")));
            }
            // RFC 6855 §4: 8-bit header fields only from a client that
            // enabled UTF-8 (UTF8=ACCEPT, or here IMAP4rev2 as well).
            if !self.utf8_names() && crate::mime::header_block(&data).iter().any(|&b| b >= 0x80) {
                let why =
                    "8-bit characters in the message's header fields: ENABLE UTF8=ACCEPT first (RFC 6855 section 4)";
                return Err(Fail::No(why.into()));
            }
            prepared.push((keywords(flags)?, date.as_ref().map_or(now, |d| d.as_ref().timestamp()), data));
        }
        // One transaction: an error in any message leaves none stored.
        let added = prepared.iter().fold((0u64, 0u64), |(n, bytes), p| (n + 1, bytes + p.2.len() as u64));
        let placed = self.write(|b| {
            // Over quota (RFC 9208 §5): NO [OVERQUOTA], nothing stored.
            b.within_quota(added)?;
            let mut placed = Vec::with_capacity(prepared.len());
            for (flags, date, data) in &prepared {
                let (m, blob) = b.append_body(id, data, *date, flags.clone())?;
                placed.push((b.replica().uid_of(m).map_or(0, |(_, u)| u), blob));
            }
            Ok(placed)
        })?;
        for (_, blob) in &placed {
            self.note_body(*blob);
        }
        let uids: Vec<u32> = placed.iter().map(|p| p.0).collect();
        Ok(format!("[APPENDUID {validity} {}] APPEND completed", uid_list(&uids)))
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn uid_lists_keep_the_order() {
        assert_eq!(super::uid_list(&[5, 6, 7, 9]), "5:7,9");
        assert_eq!(super::uid_list(&[3]), "3");
        assert_eq!(super::uid_list(&[4, 3]), "4,3");
    }
}
