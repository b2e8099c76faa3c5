//! The harness the IMAP integration tests share: a session against a real
//! store (redb in a temporary directory), every byte it writes checked to
//! parse as IMAP responses. Each test binary uses a part of it.

#![allow(dead_code)]

use imap_codec::decode::Decoder;
use imap_codec::{GreetingCodec, ResponseCodec};
use starling_imap::{Config, Session, Shared, Wants};
use starling_model::ReplicaId;
use starling_store::{Store, StoreOptions};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Instant;

pub struct Server {
    pub _dir: tempfile::TempDir,
    pub shared: Arc<Shared>,
    pub notified: Arc<AtomicUsize>,
}

pub fn server_with(config: Config) -> Server {
    server_on(ReplicaId(7), config)
}

pub fn server_on(replica: ReplicaId, config: Config) -> Server {
    server_with_store(replica, config, StoreOptions::default())
}

pub fn server_with_store(replica: ReplicaId, config: Config, options: StoreOptions) -> Server {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(&dir.path().join("store.redb"), replica, options).unwrap();
    store.add_account("alice").unwrap();
    // This node's own password: the account has no op of its own until a
    // client changes something, so two servers here are replicas of one
    // account (one incarnation) once ops are shipped.
    store.set_local_credential("alice", Some(&starling_imap::auth::hash_password("pw"))).unwrap();
    // The store's commits tell the node (here: a counter).
    let notified = Arc::new(AtomicUsize::new(0));
    let n = notified.clone();
    store.on_commit(move |_| {
        n.fetch_add(1, Ordering::Relaxed);
    });
    let shared = Shared::new(Arc::new(store), config);
    Server { _dir: dir, shared, notified }
}

pub fn server() -> Server {
    server_with(Config::default())
}

/// `objectid = 1*255(ALPHA / DIGIT / "_" / "-")` (RFC 8474 §7).
pub fn is_objectid(s: &[u8]) -> bool {
    (1..=255).contains(&s.len()) && s.iter().all(|&b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

/// imap-codec 2.0 (alpha) parses none of OBJECTID's items (RFC 8474 §7:
/// `EMAILID (id)`, `THREADID (id)` or `THREADID NIL` in FETCH, `MAILBOXID
/// (id)` in STATUS and as a response code) nor APPENDLIMIT's (RFC 7889 §5:
/// `APPENDLIMIT` number or NIL in STATUS): each is checked against its
/// grammar here and replaced by an item imap-codec knows (`RFC822.SIZE 0`,
/// `MESSAGES 0`, `ALERT`), so that the rest of the response is still
/// decoded by it. (Test messages do not hold these words.)
pub fn without_extension_items(bytes: &[u8]) -> Vec<u8> {
    #[derive(PartialEq)]
    enum Value {
        ObjectId,
        Number,
        NString,
    }
    type Rule = (&'static [u8], bool, Value, &'static [u8]);
    // (item name, NIL allowed, its value, stand-in)
    const RULES: [Rule; 7] = [
        (b"EMAILID ", false, Value::ObjectId, b"RFC822.SIZE 0"),
        (b"THREADID ", true, Value::ObjectId, b"RFC822.SIZE 0"),
        (b"[MAILBOXID ", false, Value::ObjectId, b"[ALERT"),
        (b"MAILBOXID ", false, Value::ObjectId, b"MESSAGES 0"),
        (b"APPENDLIMIT ", true, Value::Number, b"MESSAGES 0"),
        // RFC 8970 §7: `"PREVIEW" SP nstring`, UTF-8, at most 256 characters.
        (b"PREVIEW ", true, Value::NString, b"RFC822.SIZE 0"),
        // RFC 8514 §5: `"SAVEDATE" SP (date-time / nil)`.
        (b"SAVEDATE ", true, Value::NString, b"RFC822.SIZE 0"),
    ];
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    'bytes: while i < bytes.len() {
        let boundary = i == 0 || matches!(bytes[i - 1], b' ' | b'(');
        for (name, nil, value, stand_in) in RULES {
            if !boundary && name[0] != b'[' || !bytes[i..].starts_with(name) {
                continue;
            }
            let v = i + name.len();
            if value == Value::NString && !matches!(bytes.get(v), Some(b'"' | b'{' | b'N')) {
                continue; // the capability, not the item (a bad item fails imap-codec below)
            }
            let end = if nil && bytes[v..].starts_with(b"NIL") {
                v + 3
            } else if value == Value::NString {
                let (text, end) = if bytes[v] == b'"' {
                    let mut text = Vec::new();
                    let mut j = v + 1;
                    while bytes[j] != b'"' {
                        j += usize::from(bytes[j] == b'\\');
                        text.push(bytes[j]);
                        j += 1;
                    }
                    (text, j + 1)
                } else {
                    let close = v + bytes[v..].iter().position(|&b| b == b'}').expect("a literal");
                    let n: usize = std::str::from_utf8(&bytes[v + 1..close]).unwrap().parse().unwrap();
                    (bytes[close + 3..close + 3 + n].to_vec(), close + 3 + n)
                };
                let text = String::from_utf8(text).expect("PREVIEW is UTF-8");
                assert!(text.chars().count() <= 256, "PREVIEW too long: {text}");
                end
            } else if value == Value::Number {
                let n = bytes[v..].iter().take_while(|b| b.is_ascii_digit()).count();
                assert!(n > 0, "{} wants a number or NIL", String::from_utf8_lossy(name));
                v + n
            } else {
                assert_eq!(bytes.get(v), Some(&b'('), "{} wants (objectid)", String::from_utf8_lossy(name));
                let close = v + bytes[v..].iter().position(|&b| b == b')').expect("objectid closed");
                assert!(is_objectid(&bytes[v + 1..close]), "not an objectid: {:?}", &bytes[v + 1..close]);
                close + 1
            };
            out.extend_from_slice(stand_in);
            i = end;
            continue 'bytes;
        }
        out.push(bytes[i]);
        i += 1;
    }
    out
}

/// `nz-number` (RFC 9051 §9).
fn is_nz_number(t: &str) -> bool {
    !t.is_empty() && !t.starts_with('0') && t.bytes().all(|b| b.is_ascii_digit()) && t.parse::<u32>().is_ok()
}

/// `sequence-set` as a response gives it: nz-numbers and ranges of them,
/// comma-separated (no `*`).
fn is_sequence_set(t: &str) -> bool {
    t.split(',').all(|part| match part.split_once(':') {
        Some((a, b)) => is_nz_number(a) && is_nz_number(b),
        None => is_nz_number(part),
    })
}

/// Asserts an ESEARCH response line (without CRLF) follows its grammar:
/// RFC 4731 §3.1 with RFC 4466's correlator, `MODSEQ` (RFC 7162 §3.1.5),
/// and RFC 5267 §5's `ADDTO` / `REMOVEFROM` (`(position set *(SP position
/// set))`) and RFC 9394 §4's `PARTIAL (range set-or-NIL)`.
pub fn check_esearch(line: &str) {
    let rest = line.strip_prefix("* ESEARCH").unwrap_or_else(|| panic!("not ESEARCH: {line}"));
    let mut rest = rest;
    if let Some(r) = rest.strip_prefix(" (TAG \"") {
        let close = r.find("\")").unwrap_or_else(|| panic!("correlator not closed: {line}"));
        assert!(r[..close].bytes().all(|b| b.is_ascii_graphic() && b != b'"' && b != b'\\'), "{line}");
        rest = &r[close + 2..];
    }
    if let Some(r) = rest.strip_prefix(" UID") {
        if r.is_empty() || r.starts_with(' ') {
            rest = r;
        }
    }
    let tokens: Vec<&str> = if rest.is_empty() {
        Vec::new()
    } else {
        rest.strip_prefix(' ').unwrap_or_else(|| panic!("{line}")).split(' ').collect()
    };
    let mut i = 0;
    let number = |t: Option<&&str>| t.is_some_and(|t| t.bytes().all(|b| b.is_ascii_digit()) && !t.is_empty());
    while i < tokens.len() {
        match tokens[i] {
            "MIN" | "MAX" => assert!(tokens.get(i + 1).is_some_and(|t| is_nz_number(t)), "{line}"),
            "COUNT" | "MODSEQ" => assert!(number(tokens.get(i + 1)), "{line}"),
            "ALL" => assert!(tokens.get(i + 1).is_some_and(|t| is_sequence_set(t)), "{line}"),
            "ADDTO" | "REMOVEFROM" => {
                // "(" position SP set *(SP position SP set) ")"
                let mut j = i + 1;
                let first = tokens.get(j).and_then(|t| t.strip_prefix('(')).unwrap_or_else(|| panic!("{line}"));
                assert!(number(Some(&first)), "{line}");
                loop {
                    let set = tokens.get(j + 1).unwrap_or_else(|| panic!("{line}"));
                    if let Some(set) = set.strip_suffix(')') {
                        assert!(is_sequence_set(set), "{line}");
                        break;
                    }
                    assert!(is_sequence_set(set), "{line}");
                    assert!(number(tokens.get(j + 2)), "{line}");
                    j += 2;
                }
                i = j + 2;
                continue;
            }
            "PARTIAL" => {
                let range = tokens.get(i + 1).and_then(|t| t.strip_prefix('(')).unwrap_or_else(|| panic!("{line}"));
                let (a, b) = range.split_once(':').unwrap_or_else(|| panic!("{line}"));
                let ok = match (a.strip_prefix('-'), b.strip_prefix('-')) {
                    (Some(a), Some(b)) => is_nz_number(a) && is_nz_number(b),
                    (None, None) => is_nz_number(a) && is_nz_number(b),
                    _ => false,
                };
                assert!(ok, "partial-range: {line}");
                let results = tokens.get(i + 2).and_then(|t| t.strip_suffix(')')).unwrap_or_else(|| panic!("{line}"));
                assert!(results == "NIL" || is_sequence_set(results), "{line}");
                i += 3;
                continue;
            }
            other => panic!("unknown ESEARCH data {other:?}: {line}"),
        }
        i += 2;
    }
}

/// Asserts `bytes` is a sequence of complete IMAP responses.
pub fn assert_responses(bytes: &[u8]) {
    let stripped = without_extension_items(bytes);
    let mut rest = &stripped[..];
    while !rest.is_empty() {
        // imap-codec 2.0 (alpha) has no ESEARCH response: checked by its grammar.
        if rest.starts_with(b"* ESEARCH") {
            let end = rest.windows(2).position(|w| w == b"\r\n").expect("ESEARCH line ends");
            let line = std::str::from_utf8(&rest[..end]).unwrap();
            check_esearch(line);
            rest = &rest[end + 2..];
            continue;
        }
        // Nor LIST-EXTENDED's extended data: checked without it.
        let end = rest.windows(2).position(|w| w == b"\r\n").map_or(rest.len(), |e| e + 2);
        let childinfo = b" (\"CHILDINFO\" (\"SUBSCRIBED\"))\r\n";
        if rest.starts_with(b"* LIST ") && rest[..end].ends_with(childinfo) {
            let mut line = rest[..end - childinfo.len()].to_vec();
            line.extend_from_slice(b"\r\n");
            assert!(matches!(ResponseCodec::default().decode(&line), Ok((b"", _))), "{line:?}");
            rest = &rest[end..];
            continue;
        }
        // NOTIFY's OLDNAME (RFC 5465 §5.4: `"OLDNAME" SP "(" mailbox ")"`,
        // in LIST-EXTENDED's extended data): the old name is checked as a
        // LIST's mailbox, the line without it.
        let oldname = b" (\"OLDNAME\" (";
        if rest.starts_with(b"* LIST ") && rest[..end].ends_with(b"))\r\n") {
            if let Some(at) = rest[..end].windows(oldname.len()).rposition(|w| w == oldname) {
                let mut line = rest[..at].to_vec();
                line.extend_from_slice(b"\r\n");
                assert!(matches!(ResponseCodec::default().decode(&line), Ok((b"", _))), "{line:?}");
                let mut old = b"* LIST () \"/\" ".to_vec();
                old.extend_from_slice(&rest[at + oldname.len()..end - 4]);
                old.extend_from_slice(b"\r\n");
                assert!(matches!(ResponseCodec::default().decode(&old), Ok((b"", _))), "OLDNAME: {old:?}");
                rest = &rest[end..];
                continue;
            }
        }
        match ResponseCodec::default().decode(rest) {
            Ok((r, _)) => rest = r,
            Err(e) => {
                panic!("not a valid response ({e:?}) at: {:?}", String::from_utf8_lossy(&rest[..rest.len().min(300)]))
            }
        }
    }
}

pub struct Client {
    pub s: Session,
}

impl Client {
    pub fn connect(srv: &Server, loopback: bool) -> Client {
        let mut s = Session::new(srv.shared.clone(), false, loopback, true);
        let greeting = s.take_output();
        let (rest, _) = GreetingCodec::default().decode(&greeting).expect("greeting parses");
        assert!(rest.is_empty());
        Client { s }
    }

    pub fn login(srv: &Server) -> Client {
        let mut c = Client::connect(srv, true);
        c.ok("a0 LOGIN alice pw");
        c
    }

    /// Sends raw bytes; returns what the server wrote (checked to parse).
    /// Acts as the shell does on a pause (a login penalty): resumes, without
    /// the wait; and has a login verified (by the guard's pool, waiting).
    pub fn raw(&mut self, bytes: &[u8]) -> String {
        self.s.receive(bytes);
        loop {
            match self.s.wants() {
                Wants::Pause(_) => self.s.resume(Instant::now()),
                Wants::Verify => self.s.verify_now(),
                _ => break,
            }
        }
        let out = self.s.take_output();
        assert_responses(&out);
        String::from_utf8_lossy(&out).into_owned()
    }

    /// What the session wrote since (checked to parse), after a resume.
    pub fn output(&mut self) -> String {
        let out = self.s.take_output();
        assert_responses(&out);
        String::from_utf8_lossy(&out).into_owned()
    }

    pub fn send(&mut self, line: &str) -> String {
        self.raw(format!("{line}\r\n").as_bytes())
    }

    /// Sends a command and asserts its tagged answer is OK.
    pub fn ok(&mut self, line: &str) -> String {
        let tag = line.split(' ').next().unwrap().to_string();
        let out = self.send(line);
        assert!(out.contains(&format!("{tag} OK")), "{line:?} → {out}");
        out
    }

    /// `SEARCH key`'s untagged answer line.
    pub fn search_line(&mut self, key: &str) -> String {
        let out = self.ok(&format!("q SEARCH {key}"));
        out.lines().find(|l| l.starts_with("* SEARCH")).unwrap().trim_end().to_string()
    }

    pub fn append(&mut self, mailbox: &str, flags: &str, msg: &str) -> String {
        let first = self.send(&format!("ap APPEND {mailbox} ({flags}) {{{}}}", msg.len()));
        assert!(first.starts_with("+ "), "{first}");
        let out = self.raw(format!("{msg}\r\n").as_bytes());
        assert!(out.contains("ap OK [APPENDUID "), "{out}");
        out
    }
}

pub const PLAIN: &str = "From: Ann <ann@example.com>\r\nTo: bob@example.com\r\nSubject: lunch plans\r\nDate: Mon, 7 Feb 2022 10:00:00 +0000\r\nMessage-ID: <1@example.com>\r\n\r\nShall we meet at noon?\r\n";
pub const MULTI: &str = "From: carol@example.com\r\nTo: bob@example.com\r\nSubject: report\r\nDate: Tue, 8 Feb 2022 10:00:00 +0000\r\nMIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=\"xx\"\r\n\r\n--xx\r\nContent-Type: text/plain\r\n\r\nsee attached quarterly numbers\r\n--xx\r\nContent-Type: application/pdf; name=\"r.pdf\"\r\nContent-Transfer-Encoding: base64\r\n\r\nJVBERi0xLjQK\r\n--xx--\r\n";

/// A store with alice/pw behind the real `serve` (TCP, the tokio shell) on a
/// loopback port, run on `rt`; its files in `dir`.
pub fn serve_alice(rt: &tokio::runtime::Runtime, dir: &std::path::Path) -> std::net::SocketAddr {
    let store = Store::open(&dir.join("store.redb"), ReplicaId(7), StoreOptions::default()).unwrap();
    store.add_account("alice").unwrap();
    store.set_local_credential("alice", Some(&starling_imap::auth::hash_password("pw"))).unwrap();
    let shared = Shared::new(Arc::new(store), Config::default());
    let tls = starling_imap::tls_acceptor(&dir.join("cert.pem"), &dir.join("key.pem")).unwrap();
    let tcp = rt.block_on(tokio::net::TcpListener::bind("127.0.0.1:0")).unwrap();
    let addr = tcp.local_addr().unwrap();
    let (changes, _) = tokio::sync::broadcast::channel(16);
    let handle = rt.handle().clone();
    let listener = starling_imap::Listener { tcp, implicit_tls: false };
    rt.spawn(starling_imap::serve(listener, shared, tls, changes, move |f| {
        handle.spawn(f);
    }));
    addr
}
