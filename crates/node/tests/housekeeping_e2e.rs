//! Housekeeping in real processes: two pinned `starling serve` nodes; mail
//! expunged over IMAP on one while the other is stopped keeps its bodies
//! until the other has the expunge, then both nodes collect them and
//! compact their logs — seen through `starling status --json`.

mod common;

use common::*;
use std::io::{BufRead, BufReader, Write};

/// Logs in over plain IMAP (loopback), then STORE \Deleted + EXPUNGE of
/// everything in INBOX; returns the answers.
fn expunge_all(port: u16, password: &str) -> String {
    expunge(port, password, "1:*")
}

/// [`expunge_all`], of the messages `set` (sequence numbers) only.
fn expunge(port: u16, password: &str, set: &str) -> String {
    let s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(std::time::Duration::from_secs(20))).unwrap();
    let mut r = BufReader::new(s.try_clone().unwrap());
    let mut line = String::new();
    r.read_line(&mut line).unwrap();
    write!(
        &s,
        "a LOGIN alice {password}\r\nb SELECT INBOX\r\nc STORE {set} +FLAGS.SILENT (\\Deleted)\r\nd EXPUNGE\r\n"
    )
    .unwrap();
    let mut answers = String::new();
    while !answers.contains("d OK") && !answers.contains("d NO") && !answers.contains("d BAD") {
        line.clear();
        if r.read_line(&mut line).unwrap() == 0 {
            break;
        }
        answers.push_str(&line);
    }
    answers
}

/// The running node's `status --json`.
fn node_status(n: &Node) -> serde_json::Value {
    serde_json::from_str(&run(&n.dir, &["status", "--json"])).unwrap()
}

/// Alice's account as the running node's `status --json` shows it.
fn account_status(n: &Node) -> serde_json::Value {
    let v = node_status(n);
    v["accounts"].as_array().unwrap().iter().find(|a| a["name"] == "alice").unwrap().clone()
}

/// (bodies to collect, ops compacted away, live messages) of alice.
fn housekeeping_status(n: &Node) -> (u64, u64, u64) {
    let a = account_status(n);
    (a["bodies_to_collect"].as_u64().unwrap(), a["log_floor_ops"].as_u64().unwrap(), a["messages"].as_u64().unwrap())
}

#[test]
fn bodies_wait_for_the_stopped_peer_then_both_collect() {
    let root = tempfile::tempdir().unwrap();
    let (mut a, mut b) = (Node::new(root.path(), "a"), Node::new(root.path(), "b"));
    a.pin(&b);
    b.pin(&a);
    a.import(root.path(), "x", 40);
    passwd(&a, "secret");
    let config = root.path().join("fast.toml");
    std::fs::write(&config, "[store]\nhousekeeping_secs = 1\n").unwrap();
    let cfg = config.to_str().unwrap();
    a.start_with(&["--config", cfg], None);
    b.start_with(&["--config", cfg], None);
    // (Not `converge`: it follows the ops lines a node prints when it
    // takes a peer's changes, and `a`'s expunge was its own.)
    wait_for("b has every op of a", || account_status(&a)["ops"] == account_status(&b)["ops"]);
    b.stop();
    let answers = expunge_all(a.imap.lock().unwrap().unwrap(), "secret");
    assert!(answers.contains("d OK"), "{answers}");
    // b has not got the expunge: a keeps every body, for seconds of
    // housekeeping passes.
    wait_for("a counts the released bodies", || housekeeping_status(&a).0 == 40);
    std::thread::sleep(std::time::Duration::from_secs(3));
    assert_eq!(housekeeping_status(&a).0, 40, "nothing collected while a peer lacks the expunge");
    b.start_with(&["--config", cfg], None);
    // (Not `converge`: it follows the ops lines a node prints when it
    // takes a peer's changes, and `a`'s expunge was its own.)
    wait_for("b has every op of a", || account_status(&a)["ops"] == account_status(&b)["ops"]);
    for n in [&a, &b] {
        wait_for("bodies collected and the log compacted", || {
            let (to_collect, floor, live) = housekeeping_status(n);
            to_collect == 0 && floor > 0 && live == 0
        });
    }
    a.stop();
    b.stop();
    for n in [&a, &b] {
        let out = run(&n.dir, &["verify"]);
        assert!(out.contains("clean"), "{out}");
    }
}

/// Issue 13, the state merge, with real processes. b is unpinned on a (as
/// an operator does with a peer gone past the horizon), so a compacts its
/// log past b while mail keeps coming to a; meanwhile b's user gets mail
/// there. Pinned again, b is behind a's floor *and* holds changes of its
/// own: it sends them, refuses a snapshot that lacks them, installs one that
/// holds them. Both nodes end with the same mail, b's included.
#[test]
fn a_peer_back_below_the_floor_with_mail_of_its_own_catches_up_and_keeps_it() {
    let root = tempfile::tempdir().unwrap();
    let (mut a, mut b) = (Node::new(root.path(), "a"), Node::new(root.path(), "b"));
    a.pin(&b);
    b.pin(&a);
    a.import(root.path(), "x", 30);
    let config = root.path().join("fast.toml");
    std::fs::write(&config, "[store]\nhousekeeping_secs = 1\n").unwrap();
    let cfg = config.to_str().unwrap();
    a.start_with(&["--config", cfg], None);
    b.start_with(&["--config", cfg], None);
    wait_for("b has every op of a", || account_status(&a)["ops"] == account_status(&b)["ops"]);
    b.stop();
    a.stop();
    run(&a.dir, &["peer", "remove", &b.id]);
    a.start_with(&["--config", cfg], None);
    let deliver = |n: &Node, subject: &str| {
        let port = n.lmtp.lock().unwrap().unwrap();
        let mut d = Delivery::send(port, &format!("Subject: {subject}\r\n\r\nbody of {subject}\r\n"));
        let reply = d.reply().unwrap();
        assert!(reply.starts_with("250"), "{reply}");
    };
    for i in 0..20 {
        deliver(&a, &format!("to a {i}"));
    }
    // Nobody holds a back now: its whole log goes.
    wait_for("a compacted its log past b", || {
        let s = account_status(&a);
        s["log_floor_ops"].as_u64().unwrap() >= s["ops"].as_u64().unwrap()
    });
    a.stop();
    b.start_with(&["--config", cfg], None);
    for i in 0..5 {
        deliver(&b, &format!("to b {i}"));
    }
    b.stop();
    a.pin(&b);
    a.start_with(&["--config", cfg], None);
    b.start_with(&["--config", cfg], None);
    wait_for("both hold the same ops", || {
        let (x, y) = (account_status(&a), account_status(&b));
        x["ops"] == y["ops"] && x["messages"] == y["messages"] && x["messages"].as_u64() == Some(55)
    });
    a.stop();
    b.stop();
    let (da, db) = (a.dump(), b.dump());
    assert_eq!(da, db);
    assert_eq!(messages(&da), 55, "30 + 20 on a, 5 on b:\n{da}");
    let log = std::fs::read_to_string(b.dir.with_extension("log")).unwrap();
    let refused = log.matches("lacks changes held here").count();
    eprintln!("b refused {refused} snapshot(s) that lacked its mail before installing one");
    for n in [&a, &b] {
        let out = run(&n.dir, &["verify"]);
        assert!(out.contains("clean"), "{out}");
    }
}

/// Online file compaction in a running node: 1,500 messages of ~12 KB
/// that compress poorly are imported, then expunged over IMAP; the node
/// collects their bodies and, while it keeps serving, gives the freed
/// pages back (`starling status` shows the file shrink and the compaction
/// counted); IMAP works on after it and the store verifies clean.
/// A Maildir of 1,500 messages of ~12 KB that compress poorly.
fn big_maildir(root: &std::path::Path) -> std::path::PathBuf {
    let md = root.join("maildir-big");
    for sub in ["cur", "new", "tmp"] {
        std::fs::create_dir_all(md.join(sub)).unwrap();
    }
    let mut x: u64 = 0x5eed;
    for i in 0..1_500 {
        let noise: String = (0..1_500)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                format!("{:08x}", x as u32)
            })
            .collect();
        std::fs::write(md.join(format!("cur/{i}.big.host:2,S")), format!("Subject: big {i}\n\n{noise}\n")).unwrap();
    }
    md
}

#[test]
fn a_running_node_gives_the_freed_pages_back() {
    let root = tempfile::tempdir().unwrap();
    let mut a = Node::new(root.path(), "a");
    let md = big_maildir(root.path());
    run(&a.dir, &["import", "maildir", "alice", md.to_str().unwrap()]);
    passwd(&a, "secret");
    let config = root.path().join("fast.toml");
    std::fs::write(&config, "[store]\nhousekeeping_secs = 1\nfile_compact_online_secs = 1\n").unwrap();
    a.start_with(&["--config", config.to_str().unwrap()], None);
    let before = node_status(&a)["store_file_bytes"].as_u64().unwrap();
    assert!(before > 12 << 20, "{before} bytes");
    let answers = expunge_all(a.imap.lock().unwrap().unwrap(), "secret");
    assert!(answers.contains("d OK"), "{answers}");
    wait_for("the bodies collected and the file compacted", || {
        let s = node_status(&a);
        s["file_compactions"]["runs"].as_u64().unwrap() >= 1 && s["store_file_bytes"].as_u64().unwrap() < before / 3
    });
    // Serving goes on: a new message and a look at it.
    let port = a.lmtp.lock().unwrap().unwrap();
    let mut d = Delivery::send(port, "Subject: after\r\n\r\nafter the compaction\r\n");
    assert!(d.reply().unwrap().starts_with("250"));
    wait_for("the new message counted", || account_status(&a)["messages"].as_u64() == Some(1));
    a.stop();
    let out = run(&a.dir, &["verify"]);
    assert!(out.contains("clean"), "{out}");
    assert!(messages(&a.dump()) == 1);
}

/// A node's start does not read its whole store file to learn how much of
/// it is free (redb's database statistics walked every page: 0.17 s of a
/// 0.35 s start for a 185 MB file, far more for a large cold one); the
/// first housekeeping pass after start checks and compacts it, in the
/// background, even when the online period is long.
#[test]
fn a_sparse_file_is_compacted_after_start_not_read_through_at_start() {
    let root = tempfile::tempdir().unwrap();
    let mut a = Node::new(root.path(), "a");
    let md = big_maildir(root.path());
    run(&a.dir, &["import", "maildir", "alice", md.to_str().unwrap()]);
    passwd(&a, "secret");
    // Make the file sparse: the first 1,200 messages expunged and
    // collected, no compaction (the last ones keep the file's end in use,
    // which redb would otherwise cut off at a commit).
    let off = root.path().join("off.toml");
    std::fs::write(&off, "[store]\nhousekeeping_secs = 1\nfile_compact_free_percent = 100\n").unwrap();
    a.start_with(&["--config", off.to_str().unwrap()], None);
    let answers = expunge(a.imap.lock().unwrap().unwrap(), "secret", "1:1200");
    assert!(answers.contains("d OK"), "{answers}");
    wait_for("the bodies collected", || {
        let s = account_status(&a);
        s["messages"].as_u64() == Some(300) && s["bodies_to_collect"].as_u64() == Some(0)
    });
    a.stop();
    let file = a.dir.join("store.redb");
    let before = std::fs::metadata(&file).unwrap().len();
    assert!(before > 12 << 20, "{before} bytes");

    let slow = root.path().join("slow.toml");
    std::fs::write(&slow, "[store]\nhousekeeping_secs = 2\nfile_compact_online_secs = 3600\n").unwrap();
    a.start_with(&["--config", slow.to_str().unwrap()], None);
    // Bytes the process has read by any read call, cached or not.
    let pid = a.child.as_ref().unwrap().id();
    let io = std::fs::read_to_string(format!("/proc/{pid}/io")).unwrap();
    let read: u64 = io.lines().find_map(|l| l.strip_prefix("rchar: ")).unwrap().trim().parse().unwrap();
    wait_for("the file compacted by the first housekeeping pass", || {
        let s = node_status(&a);
        s["file_compactions"]["runs"].as_u64().unwrap() >= 1 && s["store_file_bytes"].as_u64().unwrap() < before / 3
    });
    let after = std::fs::metadata(&file).unwrap().len();
    eprintln!("store file {before} -> {after} bytes; the start read {read} bytes");
    // What is left is the live data (300 bodies, ~3.6 MB): the start read
    // a small part of it, not every page.
    assert!(read < after / 4, "the start read {read} bytes of a store of {after} bytes in use");
    a.stop();
    let out = run(&a.dir, &["verify"]);
    assert!(out.contains("clean"), "{out}");
}

/// Resume with real processes over QUIC (issue 13): `a` alone compacts its
/// whole log, then a new node `b` is pinned and is sent a snapshot, in
/// parts of 1 KiB (`[cluster] snapshot_part_kib`; 60,000 messages make
/// about 2,400 parts, each flushed to disk by `b`). `b` is killed (SIGKILL)
/// while it holds less than half of it; started again, it offers what it held and
/// `a` sends only the rest: `b` ends with all of `a`'s mail.
#[test]
fn a_joiner_killed_mid_snapshot_is_sent_only_the_rest() {
    let root = tempfile::tempdir().unwrap();
    let (mut a, mut b) = (Node::new(root.path(), "a"), Node::new(root.path(), "b"));
    a.import(root.path(), "x", 60_000);
    let config = root.path().join("parts.toml");
    std::fs::write(&config, "[store]\nhousekeeping_secs = 1\n[cluster]\nsnapshot_part_kib = 1\n").unwrap();
    let cfg = config.to_str().unwrap();
    a.start_with(&["--config", cfg], None);
    wait_for("a compacted its whole log", || {
        let s = account_status(&a);
        s["log_floor_ops"].as_u64().unwrap() >= s["ops"].as_u64().unwrap()
    });
    a.stop();
    a.pin(&b);
    b.pin(&a);
    a.start_with(&["--config", cfg], None);
    b.start_with(&["--config", cfg], None);
    let arriving = |n: &Node| {
        let s = account_status(n);
        s["snapshots_arriving"]
            .as_array()
            .and_then(|v| v.first())
            .map(|p| (p["got"].as_u64().unwrap(), p["total"].as_u64().unwrap()))
    };
    let mut held = (0, 0);
    wait_for("b holds part of a's snapshot", || {
        held = arriving(&b).unwrap_or((0, 0));
        held.0 > 0 && held.0 < held.1 / 2
    });
    let mut child = b.child.take().unwrap();
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    b.start_with(&["--config", cfg], None);
    wait_for("b has all of a's mail", || {
        let (x, y) = (account_status(&a), account_status(&b));
        x["ops"] == y["ops"] && y["messages"].as_u64() == Some(60_000)
    });
    a.stop();
    b.stop();
    assert_eq!(a.dump(), b.dump());
    let log_b = std::fs::read_to_string(b.dir.with_extension("log")).unwrap();
    let log_a = std::fs::read_to_string(a.dir.with_extension("log")).unwrap();
    eprintln!("b was killed holding {} of {} bytes", held.0, held.1);
    assert!(log_b.contains("part of a snapshot from this peer is held: offered"), "b did not offer:\n{log_b}");
    assert!(log_a.contains("the peer holds part of a snapshot sent before: sending the rest"), "{log_a}");
    assert_eq!(log_b.matches("snapshot installed").count(), 1, "{log_b}");
}
