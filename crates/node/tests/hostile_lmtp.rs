//! LMTP against a hostile sender, with real `starling serve` processes
//! (issue 14, item 4): SMTP smuggling through bare-LF dot lines, a 300 MB
//! line, a message over the size limit, idle and drip-fed connections,
//! connection caps, running out of file descriptors, and a deeply nested
//! message. Each test fails on the LMTP server before the hardening.

mod common;

use common::*;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::time::{Duration, Instant};

/// A minimal LMTP client (RFC 2033) over TCP.
struct Lmtp {
    r: BufReader<TcpStream>,
    w: TcpStream,
}

impl Lmtp {
    /// Connects and returns the server's first reply.
    fn open(port: u16) -> (Lmtp, String) {
        Self::open_from(port, None)
    }

    /// Connects from `source` (a loopback address) if given.
    fn open_from(port: u16, source: Option<&str>) -> (Lmtp, String) {
        let s = match source {
            None => TcpStream::connect(("127.0.0.1", port)).unwrap(),
            Some(ip) => connect_from(ip, port),
        };
        s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        let mut c = Lmtp { r: BufReader::new(s.try_clone().unwrap()), w: s };
        let first = c.reply();
        (c, first)
    }

    /// Connects and checks the greeting.
    fn connect(port: u16) -> Lmtp {
        let (c, greeting) = Self::open(port);
        assert!(greeting.starts_with("220 "), "greeting: {greeting:?}");
        c
    }

    fn send(&mut self, bytes: &[u8]) {
        self.w.write_all(bytes).unwrap();
    }

    /// One whole reply (every line of a multi-line one); empty at EOF.
    fn reply(&mut self) -> String {
        let mut all = String::new();
        loop {
            let mut line = String::new();
            match self.r.read_line(&mut line) {
                Ok(0) | Err(_) => return all,
                Ok(_) => {}
            }
            all.push_str(&line);
            if line.as_bytes().get(3) != Some(&b'-') {
                return all;
            }
        }
    }

    fn cmd(&mut self, line: &str) -> String {
        self.send(format!("{line}\r\n").as_bytes());
        self.reply()
    }

    /// LHLO, MAIL, RCPT for each recipient (each must be accepted), DATA,
    /// then `data` as given (already dot-stuffed and terminated): the
    /// per-recipient replies.
    fn transaction(&mut self, rcpts: &[&str], data: &[u8]) -> Vec<String> {
        assert!(self.cmd("LHLO test.example").starts_with("250"));
        assert!(self.cmd("MAIL FROM:<sender@example.net>").starts_with("250"));
        for r in rcpts {
            let reply = self.cmd(&format!("RCPT TO:<{r}>"));
            assert!(reply.starts_with("250"), "RCPT {r}: {reply}");
        }
        let reply = self.cmd("DATA");
        assert!(reply.starts_with("354"), "DATA: {reply}");
        self.send(data);
        rcpts.iter().map(|_| self.reply()).collect()
    }

    /// A short message to alice, which must be delivered.
    fn deliver_one(&mut self, subject: &str) {
        let data = format!("Subject: {subject}\r\n\r\nhello\r\n.\r\n");
        let replies = self.transaction(&["alice"], data.as_bytes());
        assert!(replies[0].starts_with("250 "), "{replies:?}");
    }

    /// True once the server closed the connection (EOF or reset).
    fn closed(&mut self) -> bool {
        let mut b = [0u8; 1];
        matches!(self.r.read(&mut b), Ok(0) | Err(_))
    }
}

fn lmtp_port(node: &Node) -> u16 {
    node.lmtp.lock().unwrap().expect("LMTP port printed")
}

/// A node with accounts alice and bob, started with `config` (TOML) if
/// given, and `nofile` as its descriptor limit.
fn node(root: &Path, config: Option<&str>, nofile: Option<u64>) -> Node {
    let mut n = Node::new(root, "n");
    run(&n.dir, &["account", "add", "bob"]);
    passwd(&n, "secret");
    let path = root.join("starling.toml");
    let mut extra = Vec::new();
    if let Some(c) = config {
        std::fs::write(&path, c).unwrap();
        extra = vec!["--config", path.to_str().unwrap()];
    }
    n.start_with(&extra, nofile);
    n
}

fn count(node: &Node, account: &str) -> usize {
    messages(&run(&node.dir, &["dump", account]))
}

/// Writes `total` bytes of `x` to `w`, 1 MiB at a time.
fn write_filler(w: &mut TcpStream, total: usize) {
    let chunk = vec![b'x'; 1 << 20];
    let mut left = total;
    while left > 0 {
        let n = left.min(chunk.len());
        w.write_all(&chunk[..n]).unwrap();
        left -= n;
    }
}

/// A minimal IMAP client: LOGIN, then commands whose tagged answer must be OK.
struct Imap {
    r: BufReader<TcpStream>,
    w: TcpStream,
    tag: u32,
}

impl Imap {
    fn login(node: &Node) -> Imap {
        let port = node.imap.lock().unwrap().expect("IMAP port printed");
        let s = TcpStream::connect(("127.0.0.1", port)).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
        let mut c = Imap { r: BufReader::new(s.try_clone().unwrap()), w: s, tag: 0 };
        let mut greeting = String::new();
        c.r.read_line(&mut greeting).unwrap();
        assert!(greeting.starts_with("* OK"), "{greeting}");
        c.ok("LOGIN alice secret");
        c
    }

    /// Sends a command; returns everything up to its tagged OK (literals
    /// included, as bytes).
    fn ok(&mut self, command: &str) -> Vec<u8> {
        self.tag += 1;
        let tag = format!("t{}", self.tag);
        write!(self.w, "{tag} {command}\r\n").unwrap();
        let mut out = Vec::new();
        loop {
            let mut line = Vec::new();
            assert!(self.r.read_until(b'\n', &mut line).unwrap() > 0, "server closed during {command}");
            out.extend_from_slice(&line);
            let text = String::from_utf8_lossy(&line);
            if let Some(n) = text
                .trim_end()
                .strip_suffix('}')
                .and_then(|l| l.rsplit_once('{'))
                .and_then(|(_, n)| n.parse::<usize>().ok())
            {
                let mut lit = vec![0; n];
                self.r.read_exact(&mut lit).unwrap();
                out.extend_from_slice(&lit);
                continue;
            }
            if text.starts_with(&format!("{tag} ")) {
                assert!(text.starts_with(&format!("{tag} OK")), "{command} → {text}");
                return out;
            }
        }
    }
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

/// SMTP smuggling: a `.` line ended by a bare LF, or after a line ended by
/// one, inside a DATA to alice, followed by a whole forged transaction to
/// bob. Only `<CRLF>.<CRLF>` ends DATA, so alice gets one message holding
/// the forged text as content, and bob gets nothing.
#[test]
fn bare_lf_dot_lines_do_not_end_data_so_nothing_is_smuggled() {
    let root = tempfile::tempdir().unwrap();
    let n = node(root.path(), None, None);
    let forged = "MAIL FROM:<boss@corp.example>\r\nRCPT TO:<bob>\r\nDATA\r\nSubject: forged\r\n\r\npay now\r\n";
    // A bare LF before the dot, then the dot line with a bare LF, with a
    // CRLF, and a dot line after a bare-LF line ended with CRLF.
    for (i, smuggle) in ["\n.\n", "\r\n.\n", "\n.\r\n"].iter().enumerate() {
        let mut c = Lmtp::connect(lmtp_port(&n));
        let data = format!("Subject: to alice {i}\r\n\r\nhello{smuggle}{forged}.\r\n");
        let replies = c.transaction(&["alice"], data.as_bytes());
        assert_eq!(replies.len(), 1);
        assert!(replies[0].starts_with("250 2.0.0 <alice>"), "{smuggle:?}: {replies:?}");
        // The DATA ended at the final CRLF.CRLF, not before: the session is
        // in command state and answers the next command, once.
        assert!(c.cmd("NOOP").starts_with("250 2.0.0 OK"), "{smuggle:?}");
        assert!(c.cmd("QUIT").starts_with("221"));
    }
    assert_eq!(count(&n, "bob"), 0, "a forged message reached bob");
    assert_eq!(count(&n, "alice"), 3);
    let mut imap = Imap::login(&n);
    imap.ok("SELECT INBOX");
    for i in 1..=3 {
        let body = imap.ok(&format!("FETCH {i} BODY.PEEK[]"));
        assert!(contains(&body, b"MAIL FROM:<boss@corp.example>\r\nRCPT TO:<bob>\r\n"), "message {i} keeps the text");
        assert!(contains(&body, b"Subject: forged\r\n\r\npay now\r\n"));
        // Bare LFs are stored as CRLF: every LF follows a CR.
        let lit_start = body.iter().position(|b| *b == b'}').unwrap() + 3;
        let msg = &body[lit_start..];
        assert!(msg.windows(2).all(|w| w[1] != b'\n' || w[0] == b'\r'), "bare LF stored in message {i}");
    }
}

/// A 300 MB command line with no newline: the server keeps at most its line
/// limit of it, answers 500 at the newline, and the session goes on. The
/// node's peak RSS may grow by the read buffer and allocator slack, not by
/// the line: 32 MiB is far above the one (64 KiB + line limit) and far below
/// the other (300 MB).
#[test]
fn a_300_mb_command_line_is_refused_in_bounded_memory() {
    let root = tempfile::tempdir().unwrap();
    let n = node(root.path(), None, None);
    let mut c = Lmtp::connect(lmtp_port(&n));
    let before = n.peak_rss();
    let t = Instant::now();
    write_filler(&mut c.w, 300 << 20);
    c.send(b"\r\n");
    let reply = c.reply();
    let after = n.peak_rss();
    eprintln!("300 MB command line: {:?}, peak RSS {} MiB -> {} MiB", t.elapsed(), before >> 20, after >> 20);
    assert!(reply.starts_with("500 5.5.2"), "{reply}");
    assert!(after - before < 32 << 20, "peak RSS grew from {before} to {after}");
    c.deliver_one("after a long line");
    assert_eq!(count(&n, "alice"), 1);
}

/// DATA over the size limit, as one 300 MB line: read to the end while
/// discarding, `552` for each recipient, and the next transaction on the
/// same connection is delivered. The buffer holds at most the message
/// limit (64 MiB by default): peak RSS grows by less than that plus 32 MiB.
/// A MAIL with a SIZE above the limit is refused at once.
#[test]
fn data_over_the_size_limit_gets_552_and_the_next_transaction_works() {
    let root = tempfile::tempdir().unwrap();
    let n = node(root.path(), None, None);
    let mut c = Lmtp::connect(lmtp_port(&n));
    let before = n.peak_rss();
    let t = Instant::now();
    assert!(c.cmd("LHLO test.example").starts_with("250"));
    assert!(c.cmd("MAIL FROM:<sender@example.net>").starts_with("250"));
    assert!(c.cmd("RCPT TO:<alice>").starts_with("250"));
    assert!(c.cmd("RCPT TO:<bob>").starts_with("250"));
    assert!(c.cmd("DATA").starts_with("354"));
    c.send(b"Subject: huge\r\n\r\n");
    write_filler(&mut c.w, 300 << 20);
    c.send(b"\r\n.\r\n");
    let (r1, r2) = (c.reply(), c.reply());
    let after = n.peak_rss();
    eprintln!("300 MB DATA: {:?}, peak RSS {} MiB -> {} MiB", t.elapsed(), before >> 20, after >> 20);
    assert!(r1.starts_with("552 5.3.4") && r2.starts_with("552 5.3.4"), "{r1}{r2}");
    assert!(after - before < (64 << 20) + (32 << 20), "peak RSS grew from {before} to {after}");
    c.deliver_one("after a huge one");
    assert_eq!((count(&n, "alice"), count(&n, "bob")), (1, 0));
    // RFC 1870: a declared SIZE above the limit is refused before DATA.
    assert!(c.cmd("MAIL FROM:<sender@example.net> SIZE=300000000").starts_with("552"));
    assert!(c.cmd("MAIL FROM:<sender@example.net> SIZE=3000").starts_with("250"));
}

/// With `idle_timeout_secs = 1`: a silent connection, a DATA that stops, and
/// a command line drip-fed a byte at a time are all answered `421` and
/// closed; the stopped DATA delivers nothing.
#[test]
fn idle_and_drip_fed_connections_are_closed() {
    let root = tempfile::tempdir().unwrap();
    let n = node(root.path(), Some("[lmtp]\nidle_timeout_secs = 1\n"), None);
    let port = lmtp_port(&n);

    let mut silent = Lmtp::connect(port);
    let t = Instant::now();
    let reply = silent.reply();
    assert!(reply.starts_with("421 4.4.2"), "{reply:?}");
    assert!(silent.closed());
    let waited = t.elapsed();
    assert!(waited >= Duration::from_millis(900) && waited < Duration::from_secs(5), "{waited:?}");

    let mut stalled = Lmtp::connect(port);
    assert!(stalled.cmd("LHLO test.example").starts_with("250"));
    assert!(stalled.cmd("MAIL FROM:<a@example.net>").starts_with("250"));
    assert!(stalled.cmd("RCPT TO:<alice>").starts_with("250"));
    assert!(stalled.cmd("DATA").starts_with("354"));
    stalled.send(b"Subject: never finished\r\n\r\nhal");
    assert!(stalled.reply().starts_with("421 4.4.2"));
    assert!(stalled.closed());
    assert_eq!(count(&n, "alice"), 0);

    // A byte every 300 ms: reads keep coming, but the command line does not
    // complete within the timeout.
    let mut drip = Lmtp::connect(port);
    let t = Instant::now();
    for b in b"NOOP NOOP NOOP NOOP NOOP NOOP NOOP NOOP NOOP NOOP" {
        if drip.w.write_all(&[*b]).is_err() {
            break;
        }
        std::thread::sleep(Duration::from_millis(300));
        if t.elapsed() > Duration::from_secs(3) {
            break;
        }
    }
    let reply = drip.reply();
    assert!(reply.starts_with("421 4.4.2"), "drip-fed line: {reply:?}");

    // A connection that keeps talking stays.
    let mut busy = Lmtp::connect(port);
    for _ in 0..4 {
        std::thread::sleep(Duration::from_millis(600));
        assert!(busy.cmd("NOOP").starts_with("250"));
    }
    busy.deliver_one("still here");
}

/// With `connections_max = 3` and `connections_per_ip = 2`: a third
/// connection from one address, and a fourth in total, get `421 4.3.2` and
/// are closed; a closed connection frees its place.
#[test]
fn connections_over_the_caps_get_421() {
    let root = tempfile::tempdir().unwrap();
    let n = node(root.path(), Some("[lmtp]\nconnections_max = 3\nconnections_per_ip = 2\n"), None);
    let port = lmtp_port(&n);
    let a1 = Lmtp::connect(port);
    let _a2 = Lmtp::connect(port);
    let (mut a3, reply) = Lmtp::open(port);
    assert!(reply.starts_with("421 4.3.2"), "third from one address: {reply:?}");
    assert!(a3.closed());
    let (_b1, reply) = Lmtp::open_from(port, Some("127.0.0.2"));
    assert!(reply.starts_with("220 "), "another address: {reply:?}");
    let (mut c1, reply) = Lmtp::open_from(port, Some("127.0.0.3"));
    assert!(reply.starts_with("421 4.3.2"), "fourth in total: {reply:?}");
    assert!(c1.closed());
    drop(a1);
    let mut again = None;
    wait_for("a freed place", || {
        let (c, reply) = Lmtp::open(port);
        let ok = reply.starts_with("220 ");
        if ok {
            again = Some(c);
        }
        ok
    });
    again.unwrap().deliver_one("after the cap");
}

/// The node runs with 64 file descriptors; connections exhaust them
/// (accept fails with EMFILE) and then fill the listen backlog. Once they close, LMTP accepts again and
/// delivers: the accept loop backs off instead of exiting.
#[test]
fn lmtp_accepts_again_after_running_out_of_file_descriptors() {
    let root = tempfile::tempdir().unwrap();
    let config = "[lmtp]\nconnections_max = 10000\nconnections_per_ip = 10000\n";
    let n = node(root.path(), Some(config), Some(64));
    let port = lmtp_port(&n);
    // Past the descriptors, connections wait in the listen backlog (128);
    // past that too, a connect times out: stop there.
    let mut conns = Vec::new();
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    while conns.len() < 400 {
        let Ok(s) = TcpStream::connect_timeout(&addr, Duration::from_millis(500)) else { break };
        conns.push(s);
    }
    // Those the node took answered 220; the others wait in the backlog.
    std::thread::sleep(Duration::from_millis(500));
    let mut greeted = 0;
    for s in &mut conns {
        s.set_nonblocking(true).unwrap();
        let mut b = [0u8; 3];
        if s.read(&mut b).is_ok_and(|n| n == 3) && &b == b"220" {
            greeted += 1;
        }
    }
    eprintln!("{greeted} of {} connections taken before the node ran out of descriptors", conns.len());
    assert!(greeted < conns.len(), "the node had descriptors for all {greeted} connections");
    drop(conns);
    let mut c = None;
    wait_for("LMTP accepting again", || match TcpStream::connect(("127.0.0.1", port)) {
        Ok(s) => {
            s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
            let mut l = Lmtp { r: BufReader::new(s.try_clone().unwrap()), w: s };
            let greeting = l.reply();
            let ok = greeting.starts_with("220 ");
            if ok {
                l.r.get_ref().set_read_timeout(Some(Duration::from_secs(20))).unwrap();
                c = Some(l);
            }
            ok
        }
        Err(_) => false,
    });
    c.unwrap().deliver_one("after EMFILE");
    assert_eq!(count(&n, "alice"), 1);
}

/// 60,000 nested message/rfc822 levels around a 300 KB leaf (about 2 MB):
/// the message that crashed the node (issue 14, item 1).
fn deeply_nested() -> Vec<u8> {
    let mut raw = Vec::new();
    for _ in 0..60_000 {
        raw.extend_from_slice(b"Content-Type: message/rfc822\r\n\r\n");
    }
    raw.extend_from_slice(b"Subject: leaf\r\nContent-Type: text/plain\r\n\r\n");
    for _ in 0..(300 * 1024 / 64) {
        raw.extend_from_slice(&[b'y'; 62]);
        raw.extend_from_slice(b"\r\n");
    }
    raw
}

/// The deeply nested message over LMTP: stored, fetchable whole over IMAP
/// with its structure, and the node lives on.
#[test]
fn a_deeply_nested_message_is_delivered_and_fetchable() {
    let root = tempfile::tempdir().unwrap();
    let mut n = node(root.path(), None, None);
    let raw = deeply_nested();
    let mut data = raw.clone();
    data.extend_from_slice(b".\r\n");
    let mut c = Lmtp::connect(lmtp_port(&n));
    let replies = c.transaction(&["alice"], &data);
    assert!(replies[0].starts_with("250 "), "{replies:?}");
    let mut imap = Imap::login(&n);
    imap.ok("SELECT INBOX");
    let size = imap.ok("FETCH 1 RFC822.SIZE");
    let body = imap.ok("FETCH 1 BODY.PEEK[]");
    assert!(contains(&body, &raw), "the message comes back whole");
    let stored = raw.len() + "Return-Path: <sender@example.net>\r\n".len();
    let size = String::from_utf8_lossy(&size);
    assert!(size.contains(&format!("RFC822.SIZE {stored}")), "{size}");
    imap.ok("FETCH 1 BODYSTRUCTURE");
    assert!(n.child.as_mut().unwrap().try_wait().unwrap().is_none(), "the node died");
    c.deliver_one("after the nested one");
    assert_eq!(count(&n, "alice"), 2);
}

/// The deeply nested message by IMAP APPEND (the other way in to the same
/// store code): appended, fetchable whole with its structure, and the node
/// lives on and takes the next APPEND.
#[test]
fn a_deeply_nested_message_is_appended_and_fetchable() {
    let root = tempfile::tempdir().unwrap();
    let mut n = node(root.path(), None, None);
    let raw = deeply_nested();
    let mut imap = Imap::login(&n);
    imap.tag += 1;
    write!(imap.w, "t{} APPEND INBOX {{{}}}\r\n", imap.tag, raw.len()).unwrap();
    let mut go = String::new();
    imap.r.read_line(&mut go).unwrap();
    assert!(go.starts_with('+'), "continuation: {go}");
    imap.w.write_all(&raw).unwrap();
    imap.w.write_all(b"\r\n").unwrap();
    let mut done = String::new();
    imap.r.read_line(&mut done).unwrap();
    assert!(done.starts_with(&format!("t{} OK", imap.tag)), "APPEND: {done}");
    imap.ok("SELECT INBOX");
    let body = imap.ok("FETCH 1 BODY.PEEK[]");
    assert!(contains(&body, &raw), "the message comes back whole");
    let size = String::from_utf8_lossy(&imap.ok("FETCH 1 RFC822.SIZE")).to_string();
    assert!(size.contains(&format!("RFC822.SIZE {}", raw.len())), "{size}");
    imap.ok("FETCH 1 BODYSTRUCTURE");
    assert!(n.child.as_mut().unwrap().try_wait().unwrap().is_none(), "the node died");
    imap.ok("APPEND INBOX {22+}\r\nSubject: next\r\n\r\nhello");
    assert_eq!(count(&n, "alice"), 2);
}
