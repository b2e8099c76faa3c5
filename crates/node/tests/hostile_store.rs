//! A damaged store, with real processes (issue 14, item 8): bytes of one
//! stored body changed while the node was stopped are found by `starling
//! verify`, and a FETCH of that message over IMAP gets an error — not the
//! changed bytes, not a dropped connection — while the other messages
//! read on.

mod common;

use common::*;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

/// A byte-level IMAP client (bodies here are 8-bit, not UTF-8).
struct Imap {
    r: BufReader<TcpStream>,
    w: TcpStream,
}

impl Imap {
    fn connect(port: u16) -> Imap {
        let s = TcpStream::connect(("127.0.0.1", port)).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        let mut c = Imap { r: BufReader::new(s.try_clone().unwrap()), w: s };
        let greeting = c.line().expect("greeting");
        assert!(greeting.starts_with(b"* OK"), "{}", String::from_utf8_lossy(&greeting));
        c
    }

    /// One response line with the literals it announces; `None` when the
    /// server closed the connection.
    fn line(&mut self) -> Option<Vec<u8>> {
        let mut line = Vec::new();
        if self.r.read_until(b'\n', &mut line).ok()? == 0 {
            return None;
        }
        loop {
            let text = String::from_utf8_lossy(&line).trim_end().to_string();
            let Some(n) =
                text.strip_suffix('}').and_then(|l| l.rsplit_once('{')).and_then(|(_, n)| n.parse::<usize>().ok())
            else {
                return Some(line);
            };
            let mut lit = vec![0; n];
            self.r.read_exact(&mut lit).ok()?;
            line.extend_from_slice(&lit);
            self.r.read_until(b'\n', &mut line).ok()?;
        }
    }

    /// Sends a command; every line up to its tagged answer, and that answer.
    fn command(&mut self, tag: &str, command: &str) -> (Vec<u8>, String) {
        write!(self.w, "{tag} {command}\r\n").unwrap();
        let mut out = Vec::new();
        loop {
            let l = self.line().unwrap_or_else(|| panic!("the server dropped the connection during {command}"));
            if l.starts_with(format!("{tag} ").as_bytes()) {
                return (out, String::from_utf8_lossy(&l).trim_end().to_string());
            }
            out.extend_from_slice(&l);
        }
    }

    fn ok(&mut self, tag: &str, command: &str) -> Vec<u8> {
        let (out, done) = self.command(tag, command);
        assert!(done.starts_with(&format!("{tag} OK")), "{command} → {done}");
        out
    }
}

/// 8-bit bytes zstd cannot shrink (so they are stored verbatim), without
/// NUL, CR or LF (so they are a valid IMAP literal).
fn noise(n: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    let mut out = Vec::with_capacity(n);
    while out.len() < n {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let b = (x >> 24) as u8;
        if !matches!(b, 0 | b'\r' | b'\n') {
            out.push(b);
        }
    }
    out
}

fn message(subject: &str, body: &[u8]) -> Vec<u8> {
    let mut raw = format!("From: ann@example.com\r\nSubject: {subject}\r\n\r\n").into_bytes();
    raw.extend_from_slice(body);
    raw.extend_from_slice(b"\r\n");
    raw
}

fn verify(dir: &Path) -> (bool, String) {
    let o = Command::new(BIN).arg("--data-dir").arg(dir).arg("verify").output().unwrap();
    (o.status.success(), format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr)))
}

/// The body of the message with `subject`, fetched whole over IMAP:
/// `Ok(bytes)` or `Err(the tagged answer)`.
fn fetch_body(c: &mut Imap, subject: &str) -> Result<Vec<u8>, String> {
    let (out, done) = c.command("h", "UID FETCH 1:* (BODY.PEEK[HEADER.FIELDS (SUBJECT)])");
    assert!(done.starts_with("h OK"), "{done}");
    let text = String::from_utf8_lossy(&out).to_string();
    let uid = text
        .split("\r\n* ")
        .find(|r| r.contains(&format!("Subject: {subject}\r\n")))
        .and_then(|r| r.split("UID ").nth(1))
        .and_then(|r| r.split([' ', ')']).next())
        .and_then(|u| u.parse::<u32>().ok())
        .unwrap_or_else(|| panic!("no message {subject:?} in {text}"));
    let (out, done) = c.command("f", &format!("UID FETCH {uid} BODY.PEEK[]"));
    if !done.starts_with("f OK") {
        return Err(done);
    }
    let open = out.windows(2).position(|w| w == b"}\r").expect("a literal") + 3;
    let len: usize = String::from_utf8_lossy(&out[..open - 3]).rsplit('{').next().unwrap().parse().unwrap();
    Ok(out[open..open + len].to_vec())
}

#[test]
fn a_damaged_body_is_reported_by_verify_and_refused_over_imap() {
    let root = tempfile::tempdir().unwrap();
    let mut n = Node::new(root.path(), "n");
    passwd(&n, "secret");
    let payload = noise(120_000, 7);
    let msgs = [message("first", b"hello"), message("damaged", &payload), message("third", &noise(60_000, 8))];
    let md = root.path().join("maildir");
    for sub in ["cur", "new", "tmp"] {
        std::fs::create_dir_all(md.join(sub)).unwrap();
    }
    for (i, m) in msgs.iter().enumerate() {
        std::fs::write(md.join(format!("cur/{i}.m.host:2,S")), m).unwrap();
    }
    run(&n.dir, &["import", "maildir", "alice", md.to_str().unwrap()]);
    let (clean, out) = verify(&n.dir);
    assert!(clean && out.contains("clean"), "{out}");

    // Stopped: one byte of the stored body changes.
    let store = n.dir.join("store.redb");
    let mut bytes = std::fs::read(&store).unwrap();
    let needle = &payload[60_000..60_064];
    let at = bytes.windows(needle.len()).position(|w| w == needle).expect("stored verbatim");
    bytes[at + 10] ^= 0x20;
    std::fs::write(&store, bytes).unwrap();

    let (clean, out) = verify(&n.dir);
    assert!(!clean, "verify exits non-zero on damage: {out}");
    assert!(out.contains("damaged body") && out.contains("alice INBOX UID"), "{out}");
    assert!(out.contains("damage found"), "{out}");

    n.start();
    let mut c = Imap::connect(n.imap.lock().unwrap().expect("IMAP port"));
    c.ok("l", "LOGIN alice secret");
    c.ok("s", "SELECT INBOX");
    assert_eq!(fetch_body(&mut c, "first").unwrap(), msgs[0]);
    let refused = fetch_body(&mut c, "damaged");
    let answer = refused.expect_err("the damaged body is not served");
    assert!(answer.starts_with("f NO"), "{answer}");
    // Same connection, still served: the others read as they were.
    assert_eq!(fetch_body(&mut c, "third").unwrap(), msgs[2]);
    c.ok("z", "NOOP");
    c.ok("o", "LOGOUT");

    // While it runs, verify refuses to take the file from it.
    let (ok, out) = verify(&n.dir);
    assert!(!ok && out.contains("in use"), "{out}");
    n.stop();
}
