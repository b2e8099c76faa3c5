//! Command lines, with a bound on what is held of one.

/// A complete command line.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Line {
    /// Its bytes without the CRLF (or bare LF).
    Text(Vec<u8>),
    /// It was longer than the limit; it was discarded.
    TooLong,
}

/// Gathers one command line at a time, holding at most the limit plus one
/// byte of it (a CR that may end it); the rest of a longer line is dropped
/// as it arrives.
#[derive(Debug, Default)]
pub(crate) struct LineReader {
    buf: Vec<u8>,
    discarding: bool,
}

impl LineReader {
    /// Bytes held now.
    pub(crate) fn buffered(&self) -> usize {
        self.buf.capacity()
    }

    /// Consumes `input` up to and including the first LF: how many bytes it
    /// took, and the line if one ended. Lines longer than `max` bytes
    /// (without the CRLF) come out as [`Line::TooLong`].
    pub(crate) fn feed(&mut self, input: &[u8], max: usize) -> (usize, Option<Line>) {
        let end = input.iter().position(|&b| b == b'\n');
        let chunk = &input[..end.unwrap_or(input.len())];
        if !self.discarding {
            if chunk.len() > max + 1 - self.buf.len() {
                self.discarding = true;
                self.buf = Vec::new();
            } else {
                let need = self.buf.len() + chunk.len();
                if need > self.buf.capacity() {
                    let target = (self.buf.capacity() * 2).min(max + 1).max(need);
                    self.buf.reserve_exact(target - self.buf.len());
                }
                self.buf.extend_from_slice(chunk);
            }
        }
        let Some(end) = end else { return (input.len(), None) };
        if std::mem::take(&mut self.discarding) {
            return (end + 1, Some(Line::TooLong));
        }
        let mut line = std::mem::take(&mut self.buf);
        if line.last() == Some(&b'\r') {
            line.pop();
        }
        (end + 1, Some(if line.len() > max { Line::TooLong } else { Line::Text(line) }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_end_at_lf_and_longer_ones_are_dropped_in_bounded_memory() {
        let mut r = LineReader::default();
        assert_eq!(r.feed(b"NOOP\r\nRSET", 10), (6, Some(Line::Text(b"NOOP".to_vec()))));
        assert_eq!(r.feed(b"RSET\n", 10), (5, Some(Line::Text(b"RSET".to_vec()))));
        assert_eq!(r.feed(b"0123456789\r\n", 10), (12, Some(Line::Text(b"0123456789".to_vec()))));
        assert_eq!(r.feed(b"0123456789a\r\n", 10), (13, Some(Line::TooLong)));
        assert_eq!(r.feed(b"0123456789\r\r\n", 10), (13, Some(Line::TooLong)));
        for _ in 0..1000 {
            assert_eq!(r.feed(&[b'x'; 1000], 10), (1000, None));
            assert!(r.buffered() <= 11);
        }
        assert_eq!(r.feed(b"x\r\nNOOP\r\n", 10), (3, Some(Line::TooLong)));
        assert_eq!(r.feed(b"NOOP\r\n", 10), (6, Some(Line::Text(b"NOOP".to_vec()))));
    }
}
