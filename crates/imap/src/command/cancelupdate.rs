//! CANCELUPDATE (RFC 5267 §4.3.5): `tag CANCELUPDATE "t1" "t2" …` stops
//! the updates of the searches those tags started with `RETURN (UPDATE)`
//! ([`crate::context`]). A tag that names none is no error: the search
//! may have ended with its mailbox.
//!
//! imap-codec does not know the command, so it is read off the raw line
//! before decoding, as COMPRESS is.

use crate::session::Session;

/// Tags one CANCELUPDATE names, at most (more is BAD; a session keeps
/// far fewer updating searches, [`crate::context::CONTEXTS_MAX`]).
pub const CANCEL_TAGS_MAX: usize = 64;

/// `1*(SP quoted)`: the strings, or `None` if the arguments are not that.
fn quoted_list(mut s: &[u8]) -> Option<Vec<String>> {
    let mut out = Vec::new();
    while !s.is_empty() {
        s = s.strip_prefix(b" ")?.strip_prefix(b"\"")?;
        let mut value = Vec::new();
        loop {
            match *s.first()? {
                b'\\' => {
                    let c = *s.get(1).filter(|c| matches!(c, b'"' | b'\\'))?;
                    value.push(c);
                    s = &s[2..];
                }
                b'"' => {
                    s = &s[1..];
                    break;
                }
                b'\r' | b'\n' | 0 => return None,
                c => {
                    value.push(c);
                    s = &s[1..];
                }
            }
        }
        if out.len() == CANCEL_TAGS_MAX {
            return None;
        }
        out.push(String::from_utf8(value).ok()?);
    }
    (!out.is_empty()).then_some(out)
}

impl Session {
    /// `tag CANCELUPDATE …`: answered here (`true`), or not a CANCELUPDATE
    /// command (`false`).
    pub(crate) fn cancel_update_command(&mut self, message: &[u8]) -> bool {
        let Some(line) = message.strip_suffix(b"\r\n") else { return false };
        let Some(sp) = line.iter().position(|&b| b == b' ') else { return false };
        let (tag, rest) = (&line[..sp], &line[sp + 1..]);
        let verb = b"CANCELUPDATE";
        if tag.is_empty() || rest.len() < verb.len() || !rest[..verb.len()].eq_ignore_ascii_case(verb) {
            return false;
        }
        let args = &rest[verb.len()..];
        if !(args.is_empty() || args.starts_with(b" ")) {
            return false;
        }
        let tag = String::from_utf8_lossy(tag).into_owned();
        if self.account.is_none() {
            self.tagged(&tag, "BAD", "authenticate first (LOGIN or AUTHENTICATE)");
        } else if self.selected.is_none() {
            self.tagged(&tag, "BAD", "no mailbox selected");
        } else {
            match quoted_list(args) {
                None => self.tagged(
                    &tag,
                    "BAD",
                    &format!("CANCELUPDATE takes 1 to {CANCEL_TAGS_MAX} quoted tags (RFC 5267 section 4.3.5)"),
                ),
                Some(tags) => {
                    self.cancel_updates(&tags);
                    self.updates(true);
                    self.tagged(&tag, "OK", "CANCELUPDATE completed, no further updates");
                }
            }
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tags_are_quoted_strings() {
        assert_eq!(quoted_list(b" \"B01\""), Some(vec!["B01".to_string()]));
        assert_eq!(quoted_list(b" \"a\" \"b\\\"c\""), Some(vec!["a".to_string(), "b\"c".to_string()]));
        for bad in [&b""[..], b" B01", b" \"open", b"\"a\"", b" \"a\"x", b" \"a\\x\"", b" \"a\"  \"b\""] {
            assert_eq!(quoted_list(bad), None, "{:?}", String::from_utf8_lossy(bad));
        }
        let many = " \"t\"".repeat(CANCEL_TAGS_MAX);
        assert_eq!(quoted_list(many.as_bytes()).map(|v| v.len()), Some(CANCEL_TAGS_MAX));
        let too_many = " \"t\"".repeat(CANCEL_TAGS_MAX + 1);
        assert_eq!(quoted_list(too_many.as_bytes()), None);
    }
}
