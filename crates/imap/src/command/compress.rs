//! COMPRESS (RFC 4978): the session answers; the shell ([`crate::server`])
//! switches the stream to raw DEFLATE (RFC 1951) both ways once the `OK` is
//! written, as it does for STARTTLS.
//!
//! imap-codec (as configured) does not know the command, so it is read off
//! the raw line before decoding.

use crate::session::{Session, Wants};

impl Session {
    /// `tag COMPRESS mechanism`: answered here (`true`), or not a COMPRESS
    /// command (`false`).
    pub(crate) fn compress_command(&mut self, message: &[u8]) -> bool {
        let Some(line) = message.strip_suffix(b"\r\n").or_else(|| message.strip_suffix(b"\n")) else {
            return false;
        };
        let mut words = line.split(|&b| b == b' ');
        let (Some(tag), Some(verb)) = (words.next(), words.next()) else {
            return false;
        };
        if !verb.eq_ignore_ascii_case(b"COMPRESS") || tag.is_empty() {
            return false;
        }
        let tag = String::from_utf8_lossy(tag).into_owned();
        let mechanism = words.next();
        if words.next().is_some() || mechanism.is_none() {
            self.tagged(&tag, "BAD", "COMPRESS takes one mechanism");
        } else if self.account.is_none() {
            self.tagged(&tag, "BAD", "COMPRESS is valid only once authenticated");
        } else if !mechanism.is_some_and(|m| m.eq_ignore_ascii_case(b"DEFLATE")) {
            self.tagged(&tag, "BAD", "unknown compression mechanism");
        } else if self.compressed {
            // RFC 4978 §3: a second COMPRESS.
            self.tagged(&tag, "NO", "[COMPRESSIONACTIVE] DEFLATE active via COMPRESS");
        } else {
            self.tagged(&tag, "OK", "DEFLATE active");
            self.compressed = true;
            self.wants = Wants::Compress;
        }
        true
    }

    /// The shell now inflates what it reads and deflates what it writes
    /// (after [`Wants::Compress`]). Returns what the client sent after the
    /// COMPRESS command: already compressed, for the shell to inflate and
    /// hand back through [`Session::receive_at`].
    pub fn compress_started(&mut self) -> Vec<u8> {
        if self.wants == Wants::Compress {
            self.wants = Wants::Read;
        }
        std::mem::take(&mut self.input)
    }
}
