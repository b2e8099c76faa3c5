//! Hostile conditions around the node as a whole, with real processes: local
//! users reading its files, peers that restart, peers asking for other
//! accounts' mail, shutdown under load (issue 14, items 5, 7, 10, 13).

mod common;

use common::*;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

fn mode(p: &Path) -> u32 {
    std::fs::metadata(p).unwrap().permissions().mode() & 0o777
}

/// Item 7: the data directory, the node's key, the store and the IMAP key
/// are private from creation; wider ones made by hand are tightened (and
/// said so) at the next command.
#[test]
fn data_files_are_private_and_wide_ones_are_tightened() {
    let root = tempfile::tempdir().unwrap();
    let mut a = Node::new(root.path(), "a");
    a.start();
    a.stop();
    let secrets = ["node.key", "store.redb", "imap-key.pem", "peers"];
    assert_eq!(mode(&a.dir), 0o700, "data directory");
    for f in secrets.iter().map(|f| a.dir.join(f)).filter(|p| p.exists()) {
        assert_eq!(mode(&f), 0o600, "{}", f.display());
    }
    assert!(a.dir.join("store.redb").exists() && a.dir.join("node.key").exists());
    // Someone opens them up; the next start closes them again and says so.
    std::fs::set_permissions(&a.dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::set_permissions(a.dir.join("node.key"), std::fs::Permissions::from_mode(0o644)).unwrap();
    std::fs::set_permissions(a.dir.join("store.redb"), std::fs::Permissions::from_mode(0o664)).unwrap();
    let out = Command::new(BIN).arg("--data-dir").arg(&a.dir).args(["account", "list"]).output().unwrap();
    assert!(out.status.success());
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(said.contains("node.key") && said.contains("store.redb"), "not reported: {said}");
    assert_eq!(mode(&a.dir), 0o700);
    assert_eq!(mode(&a.dir.join("node.key")), 0o600);
    assert_eq!(mode(&a.dir.join("store.redb")), 0o600);
}

fn peer_connected(node: &Node) -> bool {
    let st: serde_json::Value = serde_json::from_str(&run(&node.dir, &["status", "--json"])).unwrap();
    st["peers"][0]["connected"].as_bool().unwrap()
}

fn peer_bytes_in(node: &Node) -> u64 {
    let st: serde_json::Value = serde_json::from_str(&run(&node.dir, &["status", "--json"])).unwrap();
    st["peers"][0]["bytes_in"].as_u64().unwrap()
}

/// Item 10: a peer killed and restarted before its old connection timed out
/// dials again at once; when the old connection finally ends, it must not
/// mark the peer as gone, nor stop its byte counters.
#[test]
fn status_stays_right_after_a_quick_peer_restart() {
    let root = tempfile::tempdir().unwrap();
    let (mut x, mut y) = (Node::new(root.path(), "x"), Node::new(root.path(), "y"));
    x.pin(&y);
    y.pin(&x);
    // The node with the larger id dials: kill and restart that one, so the
    // other holds the dead connection while the new one arrives.
    let (stays, restarts) = if x.id < y.id { (&mut x, &mut y) } else { (&mut y, &mut x) };
    stays.start();
    restarts.start();
    wait_for("the peers to connect", || peer_connected(stays));
    restarts.child.as_mut().unwrap().kill().unwrap();
    restarts.child.take().unwrap().wait().unwrap();
    restarts.start();
    let restarted = Instant::now();
    // Past the old connection's idle timeout (9 s), with room to spare.
    while restarted.elapsed() < Duration::from_secs(13) {
        std::thread::sleep(Duration::from_millis(500));
    }
    assert!(peer_connected(stays), "status says the restarted peer is not connected");
    // Counting goes on: a delivery on the restarted node reaches the other.
    let before = peer_bytes_in(stays);
    deliver(restarts, "Subject: after the restart\r\n\r\nhello\r\n");
    wait_for("bytes to count", || peer_bytes_in(stays) > before);
}

/// Delivers one message to alice over LMTP and checks it was accepted.
fn deliver(node: &Node, message: &str) {
    use std::io::{BufRead, BufReader, Write};
    let port = node.lmtp.lock().unwrap().expect("LMTP port");
    let stream = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    stream.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut r = BufReader::new(stream.try_clone().unwrap());
    let mut w = stream;
    let mut reply = || {
        let mut all = String::new();
        loop {
            let mut line = String::new();
            r.read_line(&mut line).unwrap();
            all.push_str(&line);
            if line.len() < 4 || line.as_bytes()[3] != b'-' {
                return all;
            }
        }
    };
    reply();
    for cmd in ["LHLO test", "MAIL FROM:<t@example.org>", "RCPT TO:<alice>", "DATA"] {
        write!(w, "{cmd}\r\n").unwrap();
        let got = reply();
        assert!(got.starts_with('2') || got.starts_with('3'), "{cmd}: {got}");
    }
    write!(w, "{message}.\r\n").unwrap();
    let got = reply();
    assert!(got.starts_with("250"), "DATA: {got}");
}
