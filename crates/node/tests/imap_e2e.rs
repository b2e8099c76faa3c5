//! IMAP against real `starling serve` processes: real clients (Python's
//! imaplib covering every command, mbsync syncing a Maildir both ways) and
//! two replicating nodes where a client idling on one sees what a client
//! on the other does.

mod common;

use common::*;
use std::io::Write;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

fn imap_port(node: &Node) -> u16 {
    node.imap.lock().unwrap().expect("IMAP port printed")
}

const MSG1: &str = "From: ann@example.com\r\nSubject: one\r\n\r\nfirst\r\n";
const MSG2: &str = "From: ann@example.com\r\nSubject: two\r\n\r\nsecond\r\n";

/// A client IDLEs on B; a client on A flags a message and appends one; the
/// idling client hears FETCH and EXISTS, and a QRESYNC reselect on B reports
/// exactly those changes.
#[test]
fn a_client_idling_on_one_node_sees_changes_made_on_another() {
    let root = tempfile::tempdir().unwrap();
    let mut a = Node::new(root.path(), "a");
    let mut b = Node::new(root.path(), "b");
    a.pin(&b);
    b.pin(&a);
    passwd(&a, "pw-a");
    passwd(&b, "pw-b");
    a.start();
    b.start();
    let mut ca = Imap::connect(imap_port(&a));
    ca.ok("a1", "LOGIN alice pw-a");
    ca.append("a2", "INBOX", MSG1);
    wait_for("the message on B", || messages(&b.dump()) == 1);

    let mut cb = Imap::connect(imap_port(&b));
    cb.ok("b1", "LOGIN alice pw-b");
    cb.ok("b2", "ENABLE QRESYNC");
    let sel = cb.ok("b3", "SELECT INBOX");
    assert!(sel.contains("* 1 EXISTS"), "{sel}");
    let field = |s: &str, k: &str| -> u64 { s.split(k).nth(1).unwrap().split(']').next().unwrap().parse().unwrap() };
    let (validity, modseq) = (field(&sel, "[UIDVALIDITY "), field(&sel, "[HIGHESTMODSEQ "));
    write!(cb.w, "b4 IDLE\r\n").unwrap();
    assert!(cb.line().unwrap().starts_with("+ "));

    ca.ok("a3", "SELECT INBOX");
    ca.ok("a4", "STORE 1 +FLAGS (\\Flagged)");
    ca.append("a5", "INBOX", MSG2);

    let (mut fetch, mut exists) = (false, false);
    let deadline = Instant::now() + Duration::from_secs(15);
    while !(fetch && exists) && Instant::now() < deadline {
        let l = cb.line().expect("IDLE update");
        fetch |= l.starts_with("* 1 FETCH (") && l.contains("\\Flagged");
        exists |= l.starts_with("* 2 EXISTS");
    }
    assert!(fetch && exists, "IDLE on B heard the flag ({fetch}) and the new message ({exists})");
    write!(cb.w, "DONE\r\n").unwrap();
    // Untagged updates may still come first (RECENT follows EXISTS for an
    // IMAP4rev1 client), then the tagged answer.
    let mut l = cb.line().unwrap();
    while l.starts_with("* ") {
        l = cb.line().unwrap();
    }
    assert!(l.starts_with("b4 OK"), "{l}");

    let mut cq = Imap::connect(imap_port(&b));
    cq.ok("q1", "LOGIN alice pw-b");
    cq.ok("q2", "ENABLE QRESYNC");
    let re = cq.ok("q3", &format!("SELECT INBOX (QRESYNC ({validity} {modseq}))"));
    let fetches: Vec<&str> = re.lines().filter(|l| l.contains(" FETCH (")).collect();
    assert_eq!(fetches.len(), 2, "exactly the flagged and the new message: {re}");
    assert!(fetches.iter().any(|l| l.contains("UID 1 ") && l.contains("\\Flagged")), "{re}");
    assert!(fetches.iter().any(|l| l.contains("UID 2 ")), "{re}");
    assert!(!re.contains("VANISHED"), "nothing was expunged: {re}");
}

fn python_ok(script: &Path, args: &[String]) {
    let o = Command::new("python3").arg(script).args(args).output().expect("python3 runs");
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(o.status.success(), "{}\n{out}\n{}", script.display(), String::from_utf8_lossy(&o.stderr));
    assert!(out.contains("ok "), "the script ran checks: {out}");
}

fn one_node(root: &Path) -> Node {
    let mut n = Node::new(root, "solo");
    passwd(&n, "secret");
    n.start();
    n
}

fn tls_port(node: &Node) -> u16 {
    node.imaps.lock().unwrap().expect("IMAPS port printed")
}

/// Python's imaplib through every command the server implements.
#[test]
fn imaplib_covers_every_command() {
    let root = tempfile::tempdir().unwrap();
    let n = one_node(root.path());
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/imap/imaplib_all.py");
    let args = [
        "--host".to_string(),
        "127.0.0.1".into(),
        "--port".into(),
        imap_port(&n).to_string(),
        "--tls-port".into(),
        tls_port(&n).to_string(),
        "--user".into(),
        "alice".into(),
        "--password".into(),
        "secret".into(),
    ];
    python_ok(&script, &args);
}

/// Python's imaplib using the extensions a client would (OBJECTID,
/// APPENDLIMIT, CREATE-SPECIAL-USE, BINARY's APPEND, MULTIAPPEND, PREVIEW,
/// SAVEDATE:
/// `tests/imap/imaplib_extensions.py`) against a real node.
#[test]
fn imaplib_uses_the_extensions() {
    let root = tempfile::tempdir().unwrap();
    let n = one_node(root.path());
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/imap/imaplib_extensions.py");
    let port = imap_port(&n).to_string();
    let args = ["--host", "127.0.0.1", "--port", &port, "--user", "alice", "--password", "secret"];
    python_ok(&script, &args.map(String::from));
}

/// UTF8=ACCEPT (RFC 6855) from Python's imaplib: a UTF-8 connection and a
/// modified UTF-7 one see one mailbox, each in its encoding; APPEND's
/// `UTF8 (literal8)`; SEARCH in UTF-8 (`tests/imap/imaplib_utf8.py`).
#[test]
fn imaplib_uses_utf8() {
    let root = tempfile::tempdir().unwrap();
    let n = one_node(root.path());
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/imap/imaplib_utf8.py");
    let port = imap_port(&n).to_string();
    let args = ["--host", "127.0.0.1", "--port", &port, "--user", "alice", "--password", "secret"];
    python_ok(&script, &args.map(String::from));
}

/// COMPRESS=DEFLATE from Python's imaplib (zlib, wbits=-15, over the
/// socket: `tests/imap/imaplib_compress.py`) against a real node.
#[test]
fn imaplib_compresses() {
    let root = tempfile::tempdir().unwrap();
    let n = one_node(root.path());
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/imap/imaplib_compress.py");
    let port = imap_port(&n).to_string();
    let args = ["--host", "127.0.0.1", "--port", &port, "--user", "alice", "--password", "secret"];
    python_ok(&script, &args.map(String::from));
}

/// mbsync (isync) syncs a server mailbox to a local Maildir and back, flags included.
#[test]
fn mbsync_round_trip() {
    if Command::new("mbsync").arg("--version").output().is_err() {
        panic!("mbsync is not installed: `apt-get install isync` (.ci/run installs it)");
    }
    let root = tempfile::tempdir().unwrap();
    let n = one_node(root.path());
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/imap/mbsync_roundtrip.sh");
    let work = root.path().join("mbsync");
    std::fs::create_dir_all(&work).unwrap();
    let o = Command::new("bash")
        .arg(script)
        .args(["127.0.0.1", &imap_port(&n).to_string(), "alice", "secret", work.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}\n{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr));
}

/// Terminal clients, driven in tmux through a recording proxy: aerc sorts
/// and threads on the server (SORT, THREAD REFERENCES) and shows that
/// order; neomutt enables UTF8=ACCEPT and QRESYNC, idles, flags, opens a
/// mailbox by its UTF-8 name and, back from its header cache, shows an
/// expunge made while it was away; mutt turns on COMPRESS=DEFLATE, lists
/// the mailbox and stores a flag over the compressed stream
/// (`tests/imap/tui_clients.py`).
#[test]
fn aerc_neomutt_and_mutt_use_the_extensions() {
    for tool in ["tmux", "aerc", "neomutt", "mutt"] {
        if Command::new("sh").args(["-c", &format!("command -v {tool}")]).output().map_or(true, |o| !o.status.success())
        {
            panic!("{tool} is not installed: `apt-get install {tool}` (.ci/run installs it)");
        }
    }
    let root = tempfile::tempdir().unwrap();
    let n = one_node(root.path());
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/imap/tui_clients.py");
    let work = root.path().join("tui");
    std::fs::create_dir_all(&work).unwrap();
    let args = ["--host", "127.0.0.1", "--port", &imap_port(&n).to_string(), "--user", "alice", "--password", "secret"]
        .map(String::from)
        .into_iter()
        .chain(["--work".to_string(), work.display().to_string()])
        .collect::<Vec<_>>();
    python_ok(&script, &args);
}

/// Issue 16: a QRESYNC client (Python's imaplib, cache kept between runs)
/// moves between three real nodes, with changes on two of them, and fails
/// over to the third while it lags. After every switch its cache equals a
/// full sync of the node it asks and HIGHESTMODSEQ has not gone down; on a
/// switch the answer is a full one, back on the same node an incremental one.
#[test]
fn a_qresync_client_moving_between_three_nodes_is_never_short() {
    let root = tempfile::tempdir().unwrap();
    let [mut a, mut b, mut c] = three_pinned(root.path());
    for n in [&a, &b, &c] {
        passwd(n, "pw");
    }
    a.start();
    b.start();
    c.start();
    let mut ca = Imap::connect(imap_port(&a));
    ca.ok("a1", "LOGIN alice pw");
    for i in 0..6 {
        ca.append(&format!("a1{i}"), "INBOX", MSG1);
    }
    wait_for("six messages on b and c", || messages(&b.dump()) == 6 && messages(&c.dump()) == 6);
    let state = root.path().join("client.json");
    assert_eq!(qresync_client(&a, &state), (0, 6), "the first sync is a full one");
    // C stops and will lag. A and B change, each on its own.
    c.stop();
    ca.ok("a2", "SELECT INBOX");
    ca.ok("a3", "UID STORE 2 +FLAGS (\\Seen)");
    ca.ok("a4", "UID STORE 3 +FLAGS (\\Deleted)");
    ca.ok("a5", "EXPUNGE");
    ca.append("a6", "INBOX", MSG2);
    let (fetched, total) = qresync_client(&a, &state);
    assert!(fetched >= 2 && fetched < total, "back on A, only what changed: {fetched} of {total}");
    let mut cb = Imap::connect(imap_port(&b));
    cb.ok("b1", "LOGIN alice pw");
    cb.ok("b2", "SELECT INBOX");
    cb.ok("b3", "UID STORE 4 +FLAGS (\\Flagged)");
    cb.ok("b4", "UID STORE 5 +FLAGS (\\Deleted)");
    cb.ok("b5", "EXPUNGE");
    cb.append("b6", "INBOX", MSG2);
    wait_for("A and B agree", || a.dump() == b.dump());
    let (fetched, total) = qresync_client(&b, &state);
    assert_eq!(fetched, total, "A's MODSEQ on B: answered in full");
    // Failover to the lagging replica: A and B stop, C comes back alone.
    drop((ca, cb));
    a.stop();
    b.stop();
    c.start();
    let (fetched, total) = qresync_client(&c, &state);
    assert_eq!((fetched, total), (6, 6), "C holds the six first messages only, all reported");
    // A and B return; C catches up while the client stays on C.
    a.start();
    b.start();
    wait_for("all three agree", || {
        let d = a.dump();
        d == b.dump() && d == c.dump()
    });
    let (fetched, total) = qresync_client(&c, &state);
    assert!(fetched >= 2 && fetched < total, "on C again, only what C took since: {fetched} of {total}");
}

/// Issue 16: a partial replica (B takes from A only bodies up to 1,000
/// bytes) answers a FETCH of a body it left out by asking A for it; with no
/// peer to ask, it answers `NO [UNAVAILABLE]` at once rather than wait.
#[test]
fn a_partial_replica_fetches_a_left_out_body_when_a_client_asks() {
    let root = tempfile::tempdir().unwrap();
    let mut a = Node::new(root.path(), "a");
    let mut b = Node::new(root.path(), "b");
    a.pin(&b);
    let addr = format!("127.0.0.1:{}", a.port);
    run(&b.dir, &["peer", "add", &a.id, &addr, "--accounts", "alice", "--body-cap", "1000"]);
    passwd(&a, "pw");
    passwd(&b, "pw");
    a.start();
    b.start();
    let big = |n: usize| format!("From: ann@example.com\r\nSubject: big {n}\r\n\r\n{}\r\n", "x".repeat(5000 + n));
    let mut ca = Imap::connect(imap_port(&a));
    ca.ok("a1", "LOGIN alice pw");
    ca.append("a2", "INBOX", MSG1);
    ca.append("a3", "INBOX", &big(1));
    ca.append("a4", "INBOX", &big(2));
    wait_for("three messages on B", || messages(&b.dump()) == 3);
    let mut cb = Imap::connect(imap_port(&b));
    cb.ok("b1", "LOGIN alice pw");
    cb.ok("b2", "SELECT INBOX");
    // The small body is here; the big ones were left out, but their
    // structure is answered without them.
    assert!(cb.ok("b3", "UID FETCH 1 (BODY.PEEK[])").contains("first"));
    let out = cb.ok("b4", "UID FETCH 2 (RFC822.SIZE)");
    assert!(out.contains(&format!("RFC822.SIZE {}", big(1).len())), "{out}");
    // SORT: a message whose body is not here sorts as one with an empty
    // header (no sort keys without the body): 2 and 3 before ONE.
    assert!(cb.ok("s1", "SORT (SUBJECT) UTF-8 ALL").contains("* SORT 2 3 1\r\n"));
    // Asked for, the big body comes from A.
    let out = cb.ok("b5", "UID FETCH 2 (BODY.PEEK[])");
    assert!(out.contains(&"x".repeat(5001)), "{}", &out[..out.len().min(300)]);
    // Its sort keys came with it: "BIG 1" now sorts between 3 and ONE.
    let out = cb.ok("s2", "SORT (SUBJECT) UTF-8 ALL");
    assert!(out.contains("* SORT 3 2 1\r\n"), "{out}");
    // A gone: nobody to ask, so no waiting.
    a.stop();
    std::thread::sleep(Duration::from_secs(1));
    let started = Instant::now();
    let out = cb.answer("b6", "UID FETCH 3 (BODY.PEEK[])");
    assert!(out.contains("b6 NO [UNAVAILABLE]"), "{out}");
    assert!(started.elapsed() < Duration::from_secs(8), "it waited with nobody to ask: {:?}", started.elapsed());
}
