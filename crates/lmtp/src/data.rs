//! The DATA section: where it ends, dot-unstuffing, line endings, and the
//! size limit, one byte at a time across any split of the input.

/// Where the reader is within the current line.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum At {
    /// At the start of a line; `after_crlf` if the line before ended with
    /// CRLF (the start of the data counts as such).
    LineStart { after_crlf: bool },
    /// After a `.` at the start of a line.
    Dot { after_crlf: bool },
    /// After `.` and CR at the start of a line.
    DotCr { after_crlf: bool },
    /// Inside a line.
    InLine,
    /// After a CR inside a line.
    Cr,
}

/// Reads one DATA section up to `<CRLF>.<CRLF>` (see the crate
/// documentation for what ends it and what is content).
#[derive(Debug)]
pub(crate) struct DataReader {
    at: At,
    /// The message so far: `prefix_len` bytes given at the start, then content.
    message: Vec<u8>,
    prefix_len: usize,
    /// Content bytes at most.
    max: usize,
    /// The content passed `max`: everything is discarded to the end.
    too_large: bool,
}

impl DataReader {
    /// A reader whose message starts with `prefix` (not counted against
    /// `max`).
    pub(crate) fn new(prefix: Vec<u8>, max: usize) -> DataReader {
        DataReader {
            at: At::LineStart { after_crlf: true },
            prefix_len: prefix.len(),
            message: prefix,
            max,
            too_large: false,
        }
    }

    /// Bytes held now (capacity, not length: what the allocator gave).
    pub(crate) fn buffered(&self) -> usize {
        self.message.capacity()
    }

    /// The message, or `None` if its content passed the limit.
    pub(crate) fn finish(self) -> Option<Vec<u8>> {
        (!self.too_large).then_some(self.message)
    }

    /// Appends content, or drops it all once the limit is passed. The buffer
    /// grows by doubling but never past the prefix plus the limit.
    fn emit(&mut self, bytes: &[u8]) {
        if self.too_large {
            return;
        }
        let content = self.message.len() - self.prefix_len;
        if bytes.len() > self.max - content {
            self.too_large = true;
            self.message = Vec::new();
            return;
        }
        let need = self.message.len() + bytes.len();
        if need > self.message.capacity() {
            let target = (self.message.capacity() * 2).min(self.prefix_len + self.max).max(need);
            self.message.reserve_exact(target - self.message.len());
        }
        self.message.extend_from_slice(bytes);
    }

    /// Consumes `input` up to and including the end of data: how many bytes
    /// it took, and whether the data ended.
    pub(crate) fn feed(&mut self, input: &[u8]) -> (usize, bool) {
        let mut i = 0;
        while i < input.len() {
            match self.at {
                At::InLine => {
                    let rest = &input[i..];
                    let j = rest.iter().position(|&b| b == b'\r' || b == b'\n').unwrap_or(rest.len());
                    self.emit(&rest[..j]);
                    i += j;
                    if let Some(&end) = rest.get(j) {
                        i += 1;
                        if end == b'\r' {
                            self.at = At::Cr;
                        } else {
                            // A bare LF ends the line; it is stored as CRLF.
                            self.emit(b"\r\n");
                            self.at = At::LineStart { after_crlf: false };
                        }
                    }
                }
                At::Cr => {
                    let b = input[i];
                    i += 1;
                    match b {
                        b'\n' => {
                            self.emit(b"\r\n");
                            self.at = At::LineStart { after_crlf: true };
                        }
                        // A CR not before LF is content.
                        b'\r' => self.emit(b"\r"),
                        _ => {
                            self.emit(&[b'\r', b]);
                            self.at = At::InLine;
                        }
                    }
                }
                At::LineStart { after_crlf } => {
                    if input[i] == b'.' {
                        i += 1;
                        self.at = At::Dot { after_crlf };
                    } else {
                        self.at = At::InLine;
                    }
                }
                At::Dot { after_crlf } => match input[i] {
                    b'\r' => {
                        i += 1;
                        self.at = At::DotCr { after_crlf };
                    }
                    b'\n' => {
                        // `.` with a bare LF: content (an empty line once
                        // unstuffed), never the end.
                        i += 1;
                        self.emit(b"\r\n");
                        self.at = At::LineStart { after_crlf: false };
                    }
                    // Dot-stuffing: the leading dot is dropped.
                    _ => self.at = At::InLine,
                },
                At::DotCr { after_crlf } => {
                    let b = input[i];
                    i += 1;
                    match b {
                        b'\n' if after_crlf => return (i, true),
                        // `.` CRLF after a bare-LF line: content.
                        b'\n' => {
                            self.emit(b"\r\n");
                            self.at = At::LineStart { after_crlf: true };
                        }
                        b'\r' => {
                            self.emit(b"\r");
                            self.at = At::Cr;
                        }
                        _ => {
                            self.emit(&[b'\r', b]);
                            self.at = At::InLine;
                        }
                    }
                }
            }
        }
        (i, false)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The message and where the data ended, feeding `input` whole.
    fn read(input: &[u8], max: usize) -> Option<(Option<Vec<u8>>, usize)> {
        let mut r = DataReader::new(Vec::new(), max);
        let (n, end) = r.feed(input);
        end.then(|| (r.finish(), n))
    }

    #[test]
    fn only_crlf_dot_crlf_ends_the_data() {
        assert_eq!(read(b".\r\n", 100), Some((Some(vec![]), 3)));
        assert_eq!(read(b"a\r\n.\r\nNOOP\r\n", 100), Some((Some(b"a\r\n".to_vec()), 6)));
        // A dot line with a bare LF, or after a bare-LF line, is content.
        for input in [&b"a\n.\r\n"[..], b"a\r\n.\n", b"a\n.\n", b"a\r.\r\n", b".\n"] {
            assert_eq!(read(input, 100), None, "{input:?} ended the data");
        }
        // ... and the data ends at the next proper end.
        let (msg, n) = read(b"a\n.\nMAIL FROM:<x>\r\n.\r\nRSET\r\n", 100).unwrap();
        assert_eq!(msg.unwrap(), b"a\r\n\r\nMAIL FROM:<x>\r\n");
        assert_eq!(n, 22);
    }

    #[test]
    fn dots_are_unstuffed_and_bare_lf_becomes_crlf() {
        let (msg, _) = read(b"..x\r\n.y\nz\r\rw\r\n..\r\n.\r\n", 100).unwrap();
        assert_eq!(msg.unwrap(), b".x\r\ny\r\nz\r\rw\r\n.\r\n");
        let (msg, _) = read(b"a\n.\r\r\n\r\n.\r\n", 100).unwrap();
        assert_eq!(msg.unwrap(), b"a\r\n\r\r\n\r\n");
    }

    #[test]
    fn past_the_limit_everything_is_discarded_to_the_end() {
        assert_eq!(read(b"1234\r\n.\r\n", 6), Some((Some(b"1234\r\n".to_vec()), 9)));
        assert_eq!(read(b"12345\r\n.\r\n", 6), Some((None, 10)));
        let mut r = DataReader::new(b"P: x\r\n".to_vec(), 1000);
        for _ in 0..10_000 {
            assert_eq!(r.feed(&[b'x'; 100]), (100, false));
            assert!(r.buffered() <= 6 + 1000);
        }
        assert_eq!(r.feed(b"\r\n.\r\n"), (5, true));
        assert_eq!(r.finish(), None);
    }
}
