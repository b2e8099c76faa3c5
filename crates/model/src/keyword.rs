//! Flags and keywords. IMAP system flags and keywords are both just keywords
//! here; names compare case-insensitively, so every replica stores one
//! canonical spelling. `\Recent` is per session and never replicated.

use serde::{Deserialize, Serialize};
use std::fmt;

/// Longest keyword accepted (IMAP sets no limit; we do, to bound decoding).
pub const KEYWORD_LEN_MAX: usize = 128;

/// A flag or keyword in canonical form.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Keyword {
    /// `\Seen`
    Seen,
    /// `\Answered`
    Answered,
    /// `\Flagged`
    Flagged,
    /// `\Deleted`
    Deleted,
    /// `\Draft`
    Draft,
    /// Any other keyword, canonical spelling (see [`Keyword::parse`]).
    Custom(Box<str>),
}

/// Keywords with a registered conventional spelling (IANA IMAP keywords).
const WELL_KNOWN: &[&str] = &[
    "$Forwarded",
    "$MDNSent",
    "$Junk",
    "$NotJunk",
    "$Phishing",
    "$Important",
    "$SubmitPending",
    "$Submitted",
    "$MailFlagBit0",
    "$MailFlagBit1",
    "$MailFlagBit2",
];

/// Why a keyword was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeywordError {
    /// Empty, too long, or contains characters IMAP forbids in an atom.
    #[error("invalid keyword {0:?}")]
    Invalid(String),
    /// `\Recent` is per session, and other `\` names are not flags.
    #[error("flag {0:?} cannot be stored")]
    NotStorable(String),
}

impl Keyword {
    /// Parses a flag or keyword as a client wrote it. System flags are
    /// recognised case-insensitively; well-known keywords take their registered
    /// spelling; any other keyword is lower-cased, so that replicas that saw
    /// `Work` and `work` agree on one spelling without coordination.
    pub fn parse(s: &str) -> Result<Keyword, KeywordError> {
        if s.is_empty() || s.len() > KEYWORD_LEN_MAX {
            return Err(KeywordError::Invalid(s.to_string()));
        }
        if let Some(name) = s.strip_prefix('\\') {
            return match name.to_ascii_lowercase().as_str() {
                "seen" => Ok(Keyword::Seen),
                "answered" => Ok(Keyword::Answered),
                "flagged" => Ok(Keyword::Flagged),
                "deleted" => Ok(Keyword::Deleted),
                "draft" => Ok(Keyword::Draft),
                _ => Err(KeywordError::NotStorable(s.to_string())),
            };
        }
        let atom_ok = s
            .bytes()
            .all(|b| b > 0x20 && b < 0x7f && !matches!(b, b'(' | b')' | b'{' | b'%' | b'*' | b'"' | b'\\' | b']'));
        if !atom_ok {
            return Err(KeywordError::Invalid(s.to_string()));
        }
        if let Some(known) = WELL_KNOWN.iter().find(|k| k.eq_ignore_ascii_case(s)) {
            return Ok(Keyword::Custom((*known).into()));
        }
        Ok(Keyword::Custom(s.to_ascii_lowercase().into()))
    }

    /// Whether a decoded keyword is in canonical form (the decoder rejects others).
    pub fn is_canonical(&self) -> bool {
        match self {
            Keyword::Custom(s) => Keyword::parse(s).as_ref() == Ok(self),
            _ => true,
        }
    }
}

impl fmt::Display for Keyword {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Keyword::Seen => f.write_str("\\Seen"),
            Keyword::Answered => f.write_str("\\Answered"),
            Keyword::Flagged => f.write_str("\\Flagged"),
            Keyword::Deleted => f.write_str("\\Deleted"),
            Keyword::Draft => f.write_str("\\Draft"),
            Keyword::Custom(s) => f.write_str(s),
        }
    }
}

impl fmt::Debug for Keyword {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn case_insensitive_canonical() {
        assert_eq!(Keyword::parse("\\SEEN").unwrap(), Keyword::Seen);
        assert_eq!(Keyword::parse("Work").unwrap(), Keyword::parse("wORK").unwrap());
        assert_eq!(Keyword::parse("$junk").unwrap().to_string(), "$Junk");
        assert!(Keyword::parse("\\Recent").is_err());
        assert!(Keyword::parse("a b").is_err());
        assert!(Keyword::parse("").is_err());
    }
}
