//! Sync between two real `starling serve` processes over QUIC on loopback:
//! initial sync of a Maildir tree, a 1% flag change, a no-op reconnect, and
//! change latency. Bytes are UDP bytes as quinn counts them (QUIC, TLS and
//! retransmissions included) and, apart, the protocol's frame bytes.

use serde_json::Value;
use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const USER: &str = "u";

struct Node {
    dir: PathBuf,
    port: u16,
    child: Option<Child>,
}

fn cli(bin: &Path, dir: &Path, args: &[&str]) -> String {
    let o = Command::new(bin).arg("--data-dir").arg(dir).args(args).output().expect("run starling");
    assert!(o.status.success(), "{args:?}: {}", String::from_utf8_lossy(&o.stderr));
    String::from_utf8_lossy(&o.stdout).trim().to_string()
}

impl Node {
    fn start(&mut self, bin: &Path) {
        let mut child = Command::new(bin)
            .arg("--data-dir")
            .arg(&self.dir)
            .args(["serve", "--peer-listen", &format!("127.0.0.1:{}", self.port), "--lmtp-listen", "127.0.0.1:0"])
            .args(["--imap-listen", "127.0.0.1:0", "--imaps-listen", "127.0.0.1:0"])
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("start starling");
        let out = child.stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                if line.starts_with("peers: listening") {
                    let _ = tx.send(());
                }
            }
        });
        rx.recv_timeout(Duration::from_secs(30)).expect("node up");
        self.child = Some(child);
    }

    fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = Command::new("kill").arg("-TERM").arg(c.id().to_string()).status();
            let _ = c.wait();
        }
    }

    fn ask(&self, req: &str) -> Value {
        let mut s = UnixStream::connect(self.dir.join("control.sock")).expect("control socket");
        s.write_all(format!("{req}\n").as_bytes()).unwrap();
        let mut line = String::new();
        BufReader::new(s).read_line(&mut line).unwrap();
        let v: Value = serde_json::from_str(&line).unwrap();
        assert!(v.get("error").is_none(), "{req}: {v}");
        v
    }

    fn ops(&self) -> u64 {
        self.ask(&format!(r#"{{"op":"ops","user":"{USER}"}}"#))["text"].as_str().unwrap().parse().unwrap()
    }

    fn status(&self) -> Value {
        self.ask(r#"{"op":"status"}"#)["status"].clone()
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.stop();
    }
}

/// (wire out, wire in, frames out, frames in) of a node towards its one peer.
fn bytes(n: &Node) -> [u64; 4] {
    let p = &n.status()["peers"][0];
    ["wire_out", "wire_in", "bytes_out", "bytes_in"].map(|k| p[k].as_u64().unwrap_or(0))
}

fn wait(what: &str, limit: Duration, mut f: impl FnMut() -> bool) -> Duration {
    let t = Instant::now();
    while t.elapsed() < limit {
        if f() {
            return t.elapsed();
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    panic!("timed out: {what}");
}

fn kb(n: u64) -> String {
    if n >= 1_000_000 {
        format!("{:.1} MB", n as f64 / 1e6)
    } else {
        format!("{:.2} KB", n as f64 / 1e3)
    }
}

pub fn run(maildir: &Path, bin: Option<PathBuf>) {
    let bin = bin.unwrap_or_else(|| std::env::current_exe().unwrap().with_file_name("starling"));
    assert!(bin.exists(), "{} missing: cargo build --release -p starling", bin.display());
    let tmp = tempfile::tempdir().unwrap();
    let free = || std::net::UdpSocket::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let mut a = Node { dir: tmp.path().join("a"), port: free(), child: None };
    let mut b = Node { dir: tmp.path().join("b"), port: free(), child: None };
    let (ia, ib) = (cli(&bin, &a.dir, &["id"]), cli(&bin, &b.dir, &["id"]));
    for (n, other, port) in [(&a, &ib, b.port), (&b, &ia, a.port)] {
        cli(&bin, &n.dir, &["account", "add", USER]);
        cli(&bin, &n.dir, &["peer", "add", other, &format!("127.0.0.1:{port}"), "--accounts", USER]);
    }
    let out = cli(&bin, &a.dir, &["import", "maildir", USER, maildir.to_str().unwrap()]);
    // "imported …", then the compaction at its end, if any.
    let mut lines = out.lines();
    let imported = lines.next().unwrap_or_default().to_string();
    for l in lines {
        eprintln!("{l}");
    }
    let inbox = cli(&bin, &a.dir, &["dump", USER]);
    let inbox_n = inbox
        .split("mailbox \"INBOX\"")
        .nth(1)
        .map_or(0, |r| r.lines().skip(1).take_while(|l| l.starts_with("  ")).count());
    let total: usize = inbox.lines().filter(|l| l.starts_with("  ")).count();

    println!("\n## Sync between two processes over QUIC on loopback ({imported})\n");
    println!("| step | time | wire bytes a→b | wire bytes b→a | frame bytes a→b | frame bytes b→a |");
    println!("|---|---|---|---|---|---|");
    let t = Instant::now();
    a.start(&bin);
    b.start(&bin);
    let want = a.ops();
    // Counting missing bodies costs the node a scan: ask only once the ops
    // agree, and not in a tight loop.
    wait("initial sync", Duration::from_secs(1800), || {
        b.ops() == want && {
            std::thread::sleep(Duration::from_millis(20));
            b.status()["accounts"][0]["bodies_missing"].as_u64() == Some(0)
        }
    });
    let secs = t.elapsed().as_secs_f64();
    let p = &a.status()["peers"][0];
    let lost = format!("{} B lost and resent, RTT {:.2} ms", p["wire_lost"], p["rtt_ms"].as_f64().unwrap_or(0.0));
    let x = bytes(&a);
    println!(
        "| initial sync, both processes started (ops and bodies; {lost}) | {secs:.2} s | {} | {} | {} | {} |",
        kb(x[0]),
        kb(x[1]),
        kb(x[2]),
        kb(x[3])
    );
    let peak = |n: &Node| {
        let pid = n.child.as_ref().map(|c| c.id()).unwrap_or(0);
        std::fs::read_to_string(format!("/proc/{pid}/status"))
            .ok()
            .and_then(|s| s.lines().find(|l| l.starts_with("VmHWM:"))?.split_whitespace().nth(1)?.parse::<u64>().ok())
            .map_or("?".to_string(), |k| format!("{:.0} MB", k as f64 / 1024.0))
    };
    eprintln!("peak RSS during the initial sync: sender {} / receiver {}", peak(&a), peak(&b));

    // 1% flag change in one transaction on A (as one client UID STORE).
    let k = (total / 100).max(1).min(inbox_n);
    let before = bytes(&a);
    let t = Instant::now();
    a.ask(&format!(
        r#"{{"op":"flag","user":"{USER}","mailbox":"INBOX","uids":"1:{k}","add":["\\Flagged"],"remove":[]}}"#
    ));
    let want = a.ops();
    wait("flag change", Duration::from_secs(60), || b.ops() == want);
    let secs = t.elapsed().as_secs_f64();
    let x = bytes(&a);
    println!(
        "| 1% flag change ({k} messages, one commit on A until applied on B) | {:.1} ms | {} | {} | {} | {} |",
        secs * 1000.0,
        kb(x[0] - before[0]),
        kb(x[1] - before[1]),
        kb(x[2] - before[2]),
        kb(x[3] - before[3])
    );

    // Latency of single changes.
    let mut lat = Vec::new();
    for i in 0..100 {
        let kw = if i % 2 == 0 { "\\\\Answered" } else { "\\\\Draft" };
        let t = Instant::now();
        a.ask(&format!(
            r#"{{"op":"flag","user":"{USER}","mailbox":"INBOX","uids":"{}","add":["{kw}"],"remove":[]}}"#,
            i % k.max(1) + 1
        ));
        let want = a.ops();
        wait("one change", Duration::from_secs(10), || b.ops() == want);
        lat.push(t.elapsed());
    }
    lat.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    println!(
        "| change latency, commit on A → applied on B (100 changes, control socket round trips included) | median {:.2} ms, p99 {:.2} ms | | | | |",
        ms(lat[lat.len() / 2]),
        ms(lat[lat.len() * 99 / 100])
    );

    // No-op: both restart and reconnect; nothing to exchange.
    a.stop();
    b.stop();
    a.start(&bin);
    b.start(&bin);
    let t = Instant::now();
    wait("reconnect", Duration::from_secs(30), || {
        let s = a.status();
        let p = &s["peers"][0];
        p["connected"] == true && p["behind"].as_array().is_some_and(|v| !v.is_empty())
    });
    let secs = t.elapsed().as_secs_f64();
    std::thread::sleep(Duration::from_millis(300));
    let x = bytes(&a);
    println!(
        "| no-op (both restarted: QUIC + TLS handshake, hello, version vectors) | {:.1} ms to agree | {} B | {} B | {} B | {} B |",
        secs * 1000.0,
        x[0],
        x[1],
        x[2],
        x[3]
    );
}
