//! A minimal LMTP client (RFC 2033), one recipient per message, one command
//! at a time (no pipelining), for the benchmarks that deliver mail (`heal`,
//! `deliver`).

use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

pub struct Lmtp {
    r: BufReader<TcpStream>,
    w: TcpStream,
}

/// A message as DATA sends it: every line ended by CRLF (a bare LF becomes
/// CRLF), lines that start with a dot get another, then the final `.`.
pub fn data(raw: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(raw.len() + raw.len() / 32 + 8);
    for line in raw.split_inclusive(|&b| b == b'\n') {
        let line = line.strip_suffix(b"\n").unwrap_or(line);
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if line.first() == Some(&b'.') {
            out.push(b'.');
        }
        out.extend_from_slice(line);
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b".\r\n");
    out
}

impl Lmtp {
    /// Connects, reads the greeting and says LHLO.
    pub fn connect(addr: &str) -> Lmtp {
        let s = TcpStream::connect(addr).unwrap_or_else(|e| panic!("LMTP {addr}: {e}"));
        s.set_nodelay(true).unwrap();
        let mut c = Lmtp { r: BufReader::new(s.try_clone().unwrap()), w: s };
        c.expect(220, "greeting");
        c.send(b"LHLO bench.example.org\r\n");
        c.expect(250, "LHLO");
        c
    }

    fn send(&mut self, s: &[u8]) {
        self.w.write_all(s).expect("LMTP write");
    }

    /// Reads one reply (all its continuation lines), returns its code and text.
    pub fn reply(&mut self) -> (u16, String) {
        let mut text = String::new();
        loop {
            let mut line = String::new();
            let n = self.r.read_line(&mut line).expect("LMTP read");
            assert!(n > 0, "LMTP server closed the connection after {text:?}");
            text.push_str(&line);
            let b = line.as_bytes();
            if b.len() < 4 || b[3] != b'-' {
                return (line.get(..3).and_then(|c| c.parse().ok()).unwrap_or(0), text);
            }
        }
    }

    fn expect(&mut self, code: u16, what: &str) {
        let (got, text) = self.reply();
        assert_eq!(got, code, "LMTP {what}: {text}");
    }

    /// MAIL, RCPT and DATA for one message to `rcpt`, each answered before
    /// the next is sent; the server then waits for the message.
    pub fn envelope(&mut self, rcpt: &str) {
        self.send(b"MAIL FROM:<bench@example.org>\r\n");
        self.expect(250, "MAIL");
        self.send(format!("RCPT TO:<{rcpt}>\r\n").as_bytes());
        self.expect(250, "RCPT");
        self.send(b"DATA\r\n");
        self.expect(354, "DATA");
    }

    /// Sends a message made by [`data`] (after [`Lmtp::envelope`]): all but
    /// the final `.` line, then that line; returns the per-recipient reply
    /// and the time from writing the final `.` to reading the reply.
    pub fn message(&mut self, data: &[u8]) -> (u16, String, Duration) {
        let (body, dot) = data.split_at(data.len() - 3);
        debug_assert_eq!(dot, b".\r\n");
        self.send(body);
        let t = Instant::now();
        self.send(dot);
        let (code, text) = self.reply();
        (code, text, t.elapsed())
    }

    /// Delivers one message to `rcpt`; returns once the server said 250
    /// for it (panics otherwise).
    pub fn deliver(&mut self, rcpt: &str, raw: &[u8]) {
        self.envelope(rcpt);
        let (code, text, _) = self.message(&data(raw));
        assert_eq!(code, 250, "LMTP message (per-recipient reply): {text}");
    }

    pub fn quit(&mut self) {
        self.send(b"QUIT\r\n");
        let _ = self.reply();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn data_ends_lines_with_crlf_and_stuffs_dots() {
        assert_eq!(data(b"a\n.b\r\nc"), b"a\r\n..b\r\nc\r\n.\r\n");
        assert_eq!(data(b"x\r\n"), b"x\r\n.\r\n");
    }
}
