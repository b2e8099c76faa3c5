//! LMTP (RFC 2033) as a state machine without I/O: bytes from the client go
//! in, replies come out, and what needs the store (a recipient's account, a
//! message to deliver) is asked of the driver ([`Wants`]) and answered back.
//! No sockets, no clock, no store: the node drives it over TCP (owns the
//! timeouts, runs the store work on a pool of its own), the fuzz target and
//! the tests drive it directly.
//!
//! # Calling contract
//!
//! [`Session::new`] queues the greeting. Then, in a loop: send
//! [`Session::take_output`] to the client; if [`Session::is_closed`], close;
//! otherwise read some bytes and pass them to [`Session::receive`] until it
//! has taken them all (it stops early once enough output is queued, so that
//! a client pipelining without reading cannot grow it, and whenever it
//! waits for the store). After each [`Session::receive`], look at
//! [`Session::wants`]:
//!
//! * [`Wants::Account`]: a `RCPT TO` needs its account. Look
//!   [`Session::recipient`] up and answer with [`Session::found`], which
//!   queues that command's reply.
//! * [`Wants::Deliver`]: a message ended. Take it with
//!   [`Session::take_delivery`], store it for each account, and answer
//!   with [`Session::delivered`] (one result per account, in order), which
//!   queues one reply per recipient (RFC 2033 §4.2).
//!
//! Until answered the session takes no input. The driver owns time: when
//! the client stays silent too long it calls [`Session::timed_out`], which
//! queues a `421` and closes. [`Session::commands`] and
//! [`Session::in_data`] say whether a read made progress (a complete
//! command, or DATA content) for a per-command timer.
//!
//! # End of data, bare LF (SMTP smuggling)
//!
//! Only `<CRLF>.<CRLF>` ends DATA, as RFC 5321 §4.1.1.4 says: a line holding
//! a single `.`, ended by CRLF, whose preceding line also ended by CRLF (the
//! start of the data counts as such). This is Postfix's
//! `smtpd_forbid_bare_newline = normalize`:
//!
//! * a content line ended by a bare LF is accepted and stored ended by CRLF
//!   (RFC 5321 §2.3.8 forbids bare LF; refusing it would bounce mail from
//!   sloppy but honest senders);
//! * a `.` line ended by a bare LF, or one following a line ended by a bare
//!   LF, is content, dot-unstuffed like any other line, never the end.
//!
//! So a message whose content holds `\n.\nMAIL FROM:…` (which an MTA reading
//! bare LF as a line end would see as the end of one message and the start
//! of another) is one message here: nothing can be smuggled in behind it. A
//! CR not followed by LF is content and kept. Every stored line ends in
//! CRLF.
//!
//! # Bounds
//!
//! A command line is held up to [`Limits::line_max`] bytes; a longer one is
//! dropped as it arrives and answered `500 5.5.2`. A message is held up to
//! [`Limits::message_max`] bytes of content; past that the rest of the data
//! is read and dropped, and each recipient gets `552 5.3.4`. A session so
//! holds at most about `line_max + message_max` bytes of input
//! ([`Session::buffered`]) and 64 KiB plus one reply of output.

#![deny(missing_docs)]

mod data;
mod line;

use data::DataReader;
use line::{Line, LineReader};

/// Longest command line by default, in bytes without the CRLF (RFC 5321
/// §4.5.3.1.4 asks for 512 with it; parameters make lines longer).
pub const LINE_MAX_DEFAULT: usize = 1000;
/// Largest message by default, in bytes (advertised with `SIZE`).
pub const MESSAGE_MAX_DEFAULT: usize = 64 << 20;
/// Most recipients per transaction by default (RFC 5321 §4.5.3.1.8 asks
/// for at least 100).
pub const RECIPIENTS_MAX_DEFAULT: usize = 1000;
/// [`Session::receive`] stops taking input once this much output waits.
pub const OUTPUT_HIGH: usize = 64 << 10;

/// What one session accepts at most.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Longest command line, bytes without the CRLF.
    pub line_max: usize,
    /// Largest message content (after dot-unstuffing, lines ending CRLF),
    /// bytes.
    pub message_max: usize,
    /// Most recipients in one transaction.
    pub recipients_max: usize,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits { line_max: LINE_MAX_DEFAULT, message_max: MESSAGE_MAX_DEFAULT, recipients_max: RECIPIENTS_MAX_DEFAULT }
    }
}

/// Why a delivery was not made; both are temporary (the client retries).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum NotDelivered {
    /// A failure here: `451 4.3.0`.
    Failed(String),
    /// The account is over its quota: `452 4.2.2` (RFC 3463, mailbox
    /// full), which the client retries, as a quota may be raised or mail
    /// expunged meanwhile.
    OverQuota(String),
}

impl From<String> for NotDelivered {
    fn from(why: String) -> Self {
        NotDelivered::Failed(why)
    }
}

impl From<&str> for NotDelivered {
    fn from(why: &str) -> Self {
        NotDelivered::Failed(why.to_string())
    }
}

/// What the session waits for before it takes more input.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Wants {
    /// Input from the client (once the output is sent).
    Read,
    /// The account receiving mail for [`Session::recipient`]: answer with
    /// [`Session::found`].
    Account,
    /// A message to store for its recipients' accounts
    /// ([`Session::take_delivery`]): answer with [`Session::delivered`].
    Deliver,
}

/// A message to deliver, taken from the session ([`Wants::Deliver`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Delivery {
    /// The account of each accepted recipient, in `RCPT` order (an account
    /// named by two recipients is there twice).
    pub accounts: Vec<String>,
    /// The message, `Return-Path` first, every line ended by CRLF.
    pub message: Vec<u8>,
}

/// A store step the session waits for.
#[derive(Debug)]
enum Pending {
    None,
    /// A `RCPT TO` path waiting for its account.
    Account(String),
    /// A message waiting to be stored (taken once by the driver).
    Deliver(Option<Delivery>),
}

/// One LMTP connection's state.
#[derive(Debug)]
pub struct Session {
    limits: Limits,
    greeted: bool,
    from: Option<String>,
    /// (path as given, account) of each accepted recipient.
    rcpts: Vec<(String, String)>,
    line: LineReader,
    data: Option<DataReader>,
    out: Vec<u8>,
    closed: bool,
    commands: u64,
    pending: Pending,
}

impl Session {
    /// A session with its greeting queued.
    pub fn new(limits: Limits) -> Session {
        let mut s = Session {
            limits,
            greeted: false,
            from: None,
            rcpts: Vec::new(),
            line: LineReader::default(),
            data: None,
            out: Vec::new(),
            closed: false,
            commands: 0,
            pending: Pending::None,
        };
        s.reply("220 starling LMTP ready");
        s
    }

    /// Takes bytes from the client: how many it consumed. Fewer than given
    /// once [`OUTPUT_HIGH`] bytes of output wait (send them, then pass the
    /// rest), while the session waits for the store ([`Session::wants`]:
    /// answer, then pass the rest) or once it closed (the rest is ignored).
    pub fn receive(&mut self, input: &[u8]) -> usize {
        let mut pos = 0;
        while pos < input.len() && !self.closed && self.out.len() < OUTPUT_HIGH && self.wants() == Wants::Read {
            let rest = &input[pos..];
            if let Some(data) = &mut self.data {
                let (n, ended) = data.feed(rest);
                pos += n;
                if ended {
                    let data = self.data.take().expect("in DATA");
                    self.end_of_data(data.finish());
                }
            } else {
                let (n, line) = self.line.feed(rest, self.limits.line_max);
                pos += n;
                match line {
                    None => {}
                    Some(Line::TooLong) => {
                        self.commands += 1;
                        self.reply("500 5.5.2 line too long");
                    }
                    Some(Line::Text(l)) => {
                        self.commands += 1;
                        self.command(&String::from_utf8_lossy(&l));
                    }
                }
            }
        }
        pos
    }

    /// The replies queued since the last call.
    #[must_use]
    pub fn take_output(&mut self) -> Vec<u8> {
        std::mem::take(&mut self.out)
    }

    /// What the session waits for: input, or an answer from the store.
    pub fn wants(&self) -> Wants {
        match self.pending {
            Pending::None => Wants::Read,
            Pending::Account(_) => Wants::Account,
            Pending::Deliver(_) => Wants::Deliver,
        }
    }

    /// The `RCPT TO` path to look up ([`Wants::Account`]).
    pub fn recipient(&self) -> Option<&str> {
        match &self.pending {
            Pending::Account(to) => Some(to),
            _ => None,
        }
    }

    /// The answer to [`Wants::Account`]: the account receiving mail for
    /// [`Session::recipient`], or `None` (no such user, or a deleted
    /// account: `550`). Queues the command's reply; ignored when the
    /// session was not waiting for an account.
    pub fn found(&mut self, account: Option<String>) {
        if !matches!(self.pending, Pending::Account(_)) {
            return;
        }
        let Pending::Account(to) = std::mem::replace(&mut self.pending, Pending::None) else { return };
        let reply = match account {
            Some(account) => {
                self.rcpts.push((to, account));
                "250 2.1.5 OK".to_string()
            }
            None => format!("550 5.1.1 <{to}> no such user here"),
        };
        self.reply(&reply);
    }

    /// The message to store ([`Wants::Deliver`]); `None` once taken.
    pub fn take_delivery(&mut self) -> Option<Delivery> {
        match &mut self.pending {
            Pending::Deliver(d) => d.take(),
            _ => None,
        }
    }

    /// The answer to [`Wants::Deliver`]: one result per account of the
    /// [`Delivery`], in order. `Ok` only once the message is durable (the
    /// client is told `250` and will not retry); an error is temporary
    /// (`451`, or `452` over quota: the client retries). A result missing
    /// is answered `451`. Queues one reply per recipient, in `RCPT` order
    /// (RFC 2033 §4.2); ignored when the session was not waiting for it.
    pub fn delivered(&mut self, results: Vec<Result<(), NotDelivered>>) {
        if !matches!(self.pending, Pending::Deliver(_)) {
            return;
        }
        self.pending = Pending::None;
        let rcpts = std::mem::take(&mut self.rcpts);
        let mut results = results.into_iter();
        for (to, _) in &rcpts {
            let reply = match results.next() {
                Some(Ok(())) => format!("250 2.0.0 <{to}> delivered"),
                Some(Err(NotDelivered::Failed(e))) => format!("451 4.3.0 <{to}> not delivered: {}", printable(&e)),
                Some(Err(NotDelivered::OverQuota(e))) => format!("452 4.2.2 <{to}> over quota: {}", printable(&e)),
                None => format!("451 4.3.0 <{to}> not delivered: no answer from the store"),
            };
            self.reply(&reply);
        }
    }

    /// The client was silent too long: queues `421` and closes. A message
    /// being received is dropped (nothing was acknowledged).
    pub fn timed_out(&mut self) {
        if !self.closed {
            self.data = None;
            self.pending = Pending::None;
            self.reply("421 4.4.2 starling idle timeout, closing connection");
            self.closed = true;
        }
    }

    /// After QUIT or a timeout: send the output, then close.
    pub fn is_closed(&self) -> bool {
        self.closed
    }

    /// Inside DATA (between `354` and the end of data).
    pub fn in_data(&self) -> bool {
        self.data.is_some()
    }

    /// Command lines completed so far (over-long ones included).
    pub fn commands(&self) -> u64 {
        self.commands
    }

    /// Input bytes held: the command line or the message being received.
    pub fn buffered(&self) -> usize {
        self.line.buffered() + self.data.as_ref().map_or(0, |d| d.buffered())
    }

    fn reply(&mut self, text: &str) {
        self.out.extend_from_slice(text.as_bytes());
        self.out.extend_from_slice(b"\r\n");
    }

    fn reset(&mut self) {
        self.from = None;
        self.rcpts.clear();
    }

    fn command(&mut self, line: &str) {
        let (verb, arg) = line.split_once(' ').unwrap_or((line, ""));
        let verb = verb.to_ascii_uppercase();
        let reply: String = match verb.as_str() {
            "LHLO" if arg.trim().is_empty() => "501 5.5.4 LHLO needs a host name".into(),
            "LHLO" => {
                self.greeted = true;
                self.reset();
                format!(
                    "250-starling\r\n250-PIPELINING\r\n250-ENHANCEDSTATUSCODES\r\n250-8BITMIME\r\n250 SIZE {}",
                    self.limits.message_max
                )
            }
            "HELO" | "EHLO" => "500 5.5.1 this is LMTP: use LHLO".into(),
            "MAIL" if !self.greeted => "503 5.5.1 LHLO first".into(),
            "MAIL" if self.from.is_some() => "503 5.5.1 nested MAIL".into(),
            "MAIL" => match path(arg, "FROM:") {
                None => "501 5.5.4 expected MAIL FROM:<address>".into(),
                Some((from, params)) => match declared_size(params) {
                    Err(()) => "501 5.5.4 bad SIZE parameter".into(),
                    Ok(Some(n)) if n > self.limits.message_max as u64 => {
                        format!(
                            "552 5.3.4 message size exceeds fixed maximum message size ({})",
                            self.limits.message_max
                        )
                    }
                    Ok(_) => {
                        self.from = Some(from.to_string());
                        "250 2.1.0 OK".into()
                    }
                },
            },
            "RCPT" if self.from.is_none() => "503 5.5.1 MAIL first".into(),
            "RCPT" if self.rcpts.len() >= self.limits.recipients_max => "452 4.5.3 too many recipients".into(),
            "RCPT" => match path(arg, "TO:") {
                Some((to, _)) if !to.is_empty() => {
                    // Answered once the driver looked it up ([`Session::found`]).
                    self.pending = Pending::Account(to.to_string());
                    return;
                }
                _ => "501 5.5.4 expected RCPT TO:<address>".into(),
            },
            "DATA" if self.from.is_none() => "503 5.5.1 MAIL first".into(),
            "DATA" if self.rcpts.is_empty() => "503 5.5.1 no valid recipients".into(),
            "DATA" => {
                // RFC 5321 §4.4: the delivering server adds Return-Path.
                let from = self.from.as_deref().unwrap_or("");
                let prefix = format!("Return-Path: <{from}>\r\n").into_bytes();
                self.data = Some(DataReader::new(prefix, self.limits.message_max));
                "354 2.0.0 send the message, end with <CRLF>.<CRLF>".into()
            }
            "RSET" => {
                self.reset();
                "250 2.0.0 OK".into()
            }
            "NOOP" => "250 2.0.0 OK".into(),
            "VRFY" => "252 2.5.0 cannot verify, send the message".into(),
            "QUIT" => {
                self.closed = true;
                "221 2.0.0 bye".into()
            }
            _ => "500 5.5.1 unknown command".into(),
        };
        self.reply(&reply);
    }

    /// The message ended: handed to the driver to store
    /// ([`Wants::Deliver`]), or, past the size limit, one `552` per
    /// accepted recipient, in RCPT order (RFC 2033 §4.2).
    fn end_of_data(&mut self, message: Option<Vec<u8>>) {
        self.from = None;
        match message {
            Some(message) => {
                let accounts = self.rcpts.iter().map(|(_, a)| a.clone()).collect();
                self.pending = Pending::Deliver(Some(Delivery { accounts, message }));
            }
            None => {
                for (to, _) in std::mem::take(&mut self.rcpts) {
                    self.reply(&format!("552 5.3.4 <{to}> message larger than {} bytes", self.limits.message_max));
                }
            }
        }
    }
}

/// The path inside `<…>` after a `FROM:`/`TO:` prefix, and the parameters
/// after it. `None` if malformed or if the path holds a control character
/// (it is echoed in replies and written into the Return-Path header).
fn path<'a>(arg: &'a str, prefix: &str) -> Option<(&'a str, &'a str)> {
    let head = arg.get(..prefix.len())?;
    if !head.eq_ignore_ascii_case(prefix) {
        return None;
    }
    let rest = arg[prefix.len()..].trim_start().strip_prefix('<')?;
    let (addr, params) = rest.split_once('>')?;
    if addr.chars().any(|c| c.is_control() || c == '<') {
        return None;
    }
    Some((addr, params.trim()))
}

/// The `SIZE=` parameter of MAIL (RFC 1870), if given.
fn declared_size(params: &str) -> Result<Option<u64>, ()> {
    for p in params.split_ascii_whitespace() {
        if let Some((k, v)) = p.split_once('=') {
            if k.eq_ignore_ascii_case("SIZE") {
                return v.parse().map(Some).map_err(|_| ());
            }
        }
    }
    Ok(None)
}

/// `text` fit for one reply line: control characters become spaces, at most
/// 200 characters.
fn printable(text: &str) -> String {
    text.chars().take(200).map(|c| if c.is_control() { ' ' } else { c }).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Default)]
    struct Mailboxes {
        delivered: Vec<(String, Vec<u8>)>,
    }

    impl Mailboxes {
        fn account(&mut self, address: &str) -> Option<String> {
            let local = address.split('@').next()?;
            ["alice", "bob"].contains(&local).then(|| local.to_string())
        }
        fn deliver(&mut self, account: &str, message: &[u8]) -> Result<(), NotDelivered> {
            if account == "bob" && message.ends_with(b"fail\r\n") {
                return Err("disk\r\nfull".into());
            }
            self.delivered.push((account.to_string(), message.to_vec()));
            Ok(())
        }

        /// Answers what the session waits for.
        fn answer(&mut self, s: &mut Session) {
            match s.wants() {
                Wants::Read => {}
                Wants::Account => {
                    let to = s.recipient().unwrap().to_string();
                    s.found(self.account(&to));
                }
                Wants::Deliver => {
                    let d = s.take_delivery().unwrap();
                    s.delivered(d.accounts.iter().map(|a| self.deliver(a, &d.message)).collect());
                }
            }
        }
    }

    fn session(limits: Limits) -> (Session, Mailboxes) {
        (Session::new(limits), Mailboxes::default())
    }

    fn talk((s, m): &mut (Session, Mailboxes), input: &[u8]) -> String {
        let mut out = Vec::new();
        let mut pos = 0;
        while pos < input.len() && !s.is_closed() {
            pos += s.receive(&input[pos..]);
            m.answer(s);
            out.extend(s.take_output());
        }
        out.extend(s.take_output());
        String::from_utf8(out).unwrap()
    }

    /// Pipelined commands stop at each store step: the rest of the input
    /// waits (nothing taken) until it is answered, and the replies keep
    /// the commands' order.
    #[test]
    fn the_session_waits_for_each_store_step_and_takes_no_input_meanwhile() {
        let mut s = Session::new(Limits::default());
        let input = b"LHLO x\r\nMAIL FROM:<s@x>\r\nRCPT TO:<alice@x>\r\nRCPT TO:<bob>\r\nDATA\r\nhi\r\n.\r\nNOOP\r\n";
        let mut pos = s.receive(input);
        assert_eq!(s.wants(), Wants::Account);
        assert_eq!(s.recipient(), Some("alice@x"));
        assert_eq!(&input[pos..pos + 13], b"RCPT TO:<bob>", "stopped after the first RCPT");
        assert_eq!(s.receive(&input[pos..]), 0, "no input while waiting");
        assert_eq!(s.take_delivery(), None);
        s.delivered(vec![Ok(())]);
        assert_eq!(s.wants(), Wants::Account, "a wrong answer is ignored");
        s.found(Some("alice".into()));
        pos += s.receive(&input[pos..]);
        assert_eq!(s.recipient(), Some("bob"));
        s.found(None);
        pos += s.receive(&input[pos..]);
        assert_eq!(s.wants(), Wants::Deliver);
        assert_eq!(&input[pos..], b"NOOP\r\n");
        let d = s.take_delivery().unwrap();
        assert_eq!(d, Delivery { accounts: vec!["alice".into()], message: b"Return-Path: <s@x>\r\nhi\r\n".to_vec() });
        assert_eq!(s.take_delivery(), None, "taken once");
        assert_eq!(s.wants(), Wants::Deliver, "still waiting for the answer");
        s.found(Some("nobody".into()));
        s.delivered(vec![Err(NotDelivered::OverQuota("full".into()))]);
        pos += s.receive(&input[pos..]);
        assert_eq!(pos, input.len());
        let out = String::from_utf8(s.take_output()).unwrap();
        let tail: Vec<&str> = out.lines().skip(6).collect();
        assert_eq!(
            tail,
            [
                "250 2.1.0 OK",
                "250 2.1.5 OK",
                "550 5.1.1 <bob> no such user here",
                "354 2.0.0 send the message, end with <CRLF>.<CRLF>",
                "452 4.2.2 <alice@x> over quota: full",
                "250 2.0.0 OK"
            ],
            "{out}"
        );
    }

    /// A delivery answered with fewer results than recipients: the rest
    /// are `451` (never a `250` for a message not stored).
    #[test]
    fn a_missing_result_is_451() {
        let mut s = Session::new(Limits::default());
        let mut input: &[u8] = b"LHLO x\r\nMAIL FROM:<>\r\nRCPT TO:<a>\r\nRCPT TO:<b>\r\nDATA\r\nx\r\n.\r\n";
        while !input.is_empty() {
            input = &input[s.receive(input)..];
            if s.wants() == Wants::Account {
                s.found(s.recipient().map(str::to_string));
            }
        }
        assert!(s.take_delivery().is_some());
        s.delivered(vec![Ok(())]);
        let out = String::from_utf8(s.take_output()).unwrap();
        assert!(
            out.ends_with("250 2.0.0 <a> delivered\r\n451 4.3.0 <b> not delivered: no answer from the store\r\n"),
            "{out}"
        );
    }

    #[test]
    fn a_transaction_gets_one_reply_per_recipient() {
        let mut s = session(Limits::default());
        let out = talk(
            &mut s,
            b"LHLO x\r\nMAIL FROM:<s@x> SIZE=10 BODY=8BITMIME\r\nRCPT TO:<alice@x>\r\nRCPT TO:<carol>\r\nRCPT TO:<bob>\r\nDATA\r\nhi\r\nfail\r\n.\r\nQUIT\r\nNOOP\r\n",
        );
        let codes: Vec<&str> = out.lines().map(|l| &l[..4]).collect();
        assert_eq!(
            codes,
            [
                "220 ", "250-", "250-", "250-", "250-", "250 ", "250 ", "250 ", "550 ", "250 ", "354 ", "250 ", "451 ",
                "221 "
            ],
            "{out}"
        );
        assert!(out.contains("451 4.3.0 <bob> not delivered: disk  full\r\n"), "{out}");
        assert_eq!(s.1.delivered, [("alice".to_string(), b"Return-Path: <s@x>\r\nhi\r\nfail\r\n".to_vec())]);
        assert!(s.0.is_closed());
    }

    #[test]
    fn smuggled_commands_stay_in_the_message() {
        let mut s = session(Limits::default());
        let out = talk(
            &mut s,
            b"LHLO x\r\nMAIL FROM:<s@x>\r\nRCPT TO:<alice>\r\nDATA\r\nhi\n.\nMAIL FROM:<boss@x>\r\nRCPT TO:<bob>\r\nDATA\r\nforged\r\n.\r\n",
        );
        assert!(out.ends_with("354 2.0.0 send the message, end with <CRLF>.<CRLF>\r\n250 2.0.0 <alice> delivered\r\n"));
        assert_eq!(s.1.delivered.len(), 1);
        assert_eq!(
            s.1.delivered[0].1,
            b"Return-Path: <s@x>\r\nhi\r\n\r\nMAIL FROM:<boss@x>\r\nRCPT TO:<bob>\r\nDATA\r\nforged\r\n"
        );
    }

    #[test]
    fn limits_are_answered_and_the_session_goes_on() {
        let limits = Limits { line_max: 30, message_max: 10, recipients_max: 1 };
        let mut s = session(limits);
        let mut input = b"LHLO x\r\n".to_vec();
        input.extend(std::iter::repeat_n(b'x', 100_000));
        input.extend_from_slice(b"\r\nMAIL FROM:<a> SIZE=11\r\nMAIL FROM:<a> SIZE=x\r\nMAIL FROM:<a\rb>\r\n");
        input.extend_from_slice(b"MAIL FROM:<>\r\nRCPT TO:<alice>\r\nRCPT TO:<bob>\r\nDATA\r\n0123456789x\r\n.\r\n");
        input.extend_from_slice(b"MAIL FROM:<>\r\nRCPT TO:<alice>\r\nDATA\r\n01234567\r\n.\r\n");
        let out = talk(&mut s, &input);
        let codes: Vec<&str> = out.lines().skip(6).map(|l| &l[..3]).collect();
        assert_eq!(
            codes,
            ["500", "552", "501", "501", "250", "250", "452", "354", "552", "250", "250", "354", "250"],
            "{out}"
        );
        assert_eq!(s.1.delivered.len(), 1);
    }

    #[test]
    fn output_is_bounded_when_the_client_does_not_read() {
        let mut s = session(Limits::default());
        let input = b"NOOP\r\n".repeat(100_000);
        let n = s.0.receive(&input);
        assert!(n < input.len());
        assert!(s.0.take_output().len() < OUTPUT_HIGH + 100);
    }

    #[test]
    fn a_timeout_closes_and_drops_the_message() {
        let mut s = session(Limits::default());
        talk(&mut s, b"LHLO x\r\nMAIL FROM:<>\r\nRCPT TO:<alice>\r\nDATA\r\nhalf a mess");
        assert!(s.0.in_data());
        s.0.timed_out();
        assert!(String::from_utf8(s.0.take_output()).unwrap().starts_with("421 4.4.2"));
        assert!(s.0.is_closed() && !s.0.in_data());
        assert!(s.1.delivered.is_empty());
    }
}
