//! The `starling` binary as an operator uses it, as real processes: the
//! README's run command from an empty directory, accounts, Maildir import,
//! dump and export, and clear errors for bad input.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Output, Stdio};

fn starling(dir: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_starling")).current_dir(dir).args(args).output().unwrap()
}

/// Starts `starling serve` (as the README writes it, plus `extra`), waits
/// until the peer endpoint is up, returns what it printed, and stops it.
fn serve_until_up(dir: &Path, extra: &[&str]) -> String {
    serve_while(dir, extra, |_| ())
}

/// Like [`serve_until_up`], running `f` with the output while the node runs.
fn serve_while(dir: &Path, extra: &[&str], f: impl FnOnce(&str)) -> String {
    let mut child = Command::new(env!("CARGO_BIN_EXE_starling"))
        .current_dir(dir)
        .arg("serve")
        .args(extra)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut out = String::new();
    for line in BufReader::new(child.stdout.take().unwrap()).lines() {
        let line = line.unwrap();
        out.push_str(&line);
        out.push('\n');
        if line.starts_with("peers: listening") {
            break;
        }
    }
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| f(&out)));
    child.kill().unwrap();
    child.wait().unwrap();
    if let Err(panic) = result {
        std::panic::resume_unwind(panic);
    }
    out
}

/// LOGIN over plain IMAP on loopback; returns the tagged answer.
fn imap_login(addr: &str, user: &str, password: &str) -> String {
    use std::io::Write;
    let s = std::net::TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(std::time::Duration::from_secs(10))).unwrap();
    let mut r = BufReader::new(s.try_clone().unwrap());
    let mut line = String::new();
    r.read_line(&mut line).unwrap();
    assert!(line.starts_with("* OK [CAPABILITY IMAP4rev1"), "{line}");
    write!(&s, "a LOGIN {user} {password}\r\nb SELECT INBOX\r\n").unwrap();
    let mut answers = String::new();
    while !answers.contains("b OK") && !answers.contains("b NO") && !answers.contains("b BAD") {
        line.clear();
        if r.read_line(&mut line).unwrap() == 0 {
            break;
        }
        answers.push_str(&line);
    }
    answers
}

fn ok(o: &Output) -> String {
    assert!(o.status.success(), "failed: {}", String::from_utf8_lossy(&o.stderr));
    String::from_utf8_lossy(&o.stdout).to_string()
}

#[test]
fn serve_from_an_empty_directory_then_accounts_import_dump_export() {
    let dir = tempfile::tempdir().unwrap();
    // The README's run command, with no config and no data: it creates an
    // account with a one-time password, and an IMAP client logs in with it.
    let out = serve_while(dir.path(), &[], |out| {
        let addr = out.lines().find_map(|l| l.strip_prefix("imap: listening on ")).expect("IMAP address printed");
        assert_eq!(addr, "127.0.0.1:1143", "the default IMAP port");
        let page =
            out.lines().find_map(|l| l.strip_prefix("status: listening on http://")).expect("status page printed");
        assert_eq!(page, "127.0.0.1:8431/", "the status page is on by default, on loopback");
        let line = out.lines().find(|l| l.starts_with("created account ")).expect("account printed");
        let password = line.split("password \"").nth(1).unwrap().split('"').next().unwrap();
        let answers = imap_login(addr, "user", password);
        assert!(answers.contains("a OK") && answers.contains("b OK [READ-WRITE]"), "{answers}");
        assert!(imap_login(addr, "user", "wrong").contains("a NO"));
    });
    assert!(out.contains("node id: "), "{out}");
    assert!(dir.path().join("starling-data/store.redb").exists());
    let id1 = out.lines().find(|l| l.starts_with("node id")).unwrap().to_string();
    // Same node on the next start, and `starling id` agrees.
    let out = serve_until_up(dir.path(), &["--peer-listen", "127.0.0.1:0"]);
    assert!(out.contains(&id1));
    assert!(id1.ends_with(ok(&starling(dir.path(), &["id"])).trim()));

    ok(&starling(dir.path(), &["account", "add", "alice"]));
    let again = starling(dir.path(), &["account", "add", "alice"]);
    assert!(!again.status.success());
    assert!(String::from_utf8_lossy(&again.stderr).contains("exists"));
    assert_eq!(ok(&starling(dir.path(), &["account", "list"])).trim(), "alice\nuser");

    let md = dir.path().join("mail");
    for sub in ["cur", "new", "tmp", ".Work/cur"] {
        std::fs::create_dir_all(md.join(sub)).unwrap();
    }
    std::fs::write(md.join("cur/1.a.host:2,S"), b"Subject: one\n\nhello\n").unwrap();
    std::fs::write(md.join(".Work/cur/2.b.host:2,FS"), b"Subject: two\n\nworld\n").unwrap();
    let out = ok(&starling(dir.path(), &["import", "maildir", "alice", md.to_str().unwrap()]));
    assert!(out.contains("2 messages"), "{out}");
    let dump = ok(&starling(dir.path(), &["dump", "alice"]));
    assert!(dump.contains("mailbox \"Work\"") && dump.contains("(\\Seen \\Flagged)"), "{dump}");
    let exported = dir.path().join("out");
    ok(&starling(dir.path(), &["export", "maildir", "alice", exported.to_str().unwrap()]));
    let files: Vec<_> = std::fs::read_dir(exported.join(".Work/cur")).unwrap().collect();
    assert_eq!(files.len(), 1);
}

/// A Maildir of `n` messages in six folders, one in 25 with a 400 KB
/// attachment (a part the store keeps apart): the shape whose import left a
/// third of the store file free.
fn maildir_with_attachments(root: &Path, n: usize) {
    let mut seed = 7u64;
    let mut next = move || {
        seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        seed >> 33
    };
    for i in 0..n {
        let folder = if i % 3 == 0 { root.to_path_buf() } else { root.join(format!(".F{}", i % 5)) };
        for sub in ["cur", "new", "tmp"] {
            std::fs::create_dir_all(folder.join(sub)).unwrap();
        }
        let words = [800, 3000, 9000, 30000][next() as usize % 4] / 6;
        let text: Vec<&str> = (0..words).map(|_| ["mail", "node", "sync", "the", "of"][next() as usize % 5]).collect();
        let mut msg = format!("Subject: m{i}\nMessage-ID: <{i}@x>\nMIME-Version: 1.0\n");
        if i % 25 == 0 {
            let att: String = (0..300_000 / 57)
                .map(|_| (0..76).map(|_| (b'A' + (next() % 26) as u8) as char).collect::<String>() + "\n")
                .collect();
            msg += &format!("Content-Type: multipart/mixed; boundary=b\n\n--b\n\n{}\n--b\nContent-Transfer-Encoding: base64\n\n{att}--b--\n", text.join(" "));
        } else {
            msg += &format!("\n{}\n", text.join(" "));
        }
        std::fs::write(folder.join(format!("cur/{i}.x.host:2,S")), msg).unwrap();
    }
}

#[test]
fn an_import_leaves_the_store_file_compact() {
    let dir = tempfile::tempdir().unwrap();
    let md = dir.path().join("mail");
    maildir_with_attachments(&md, 2000);
    ok(&starling(dir.path(), &["account", "add", "u"]));
    let out = ok(&starling(dir.path(), &["import", "maildir", "u", md.to_str().unwrap()]));
    assert!(out.contains("2000 messages"), "{out}");
    assert!(out.contains("store: file compacted from"), "{out}");
    // So the node has nothing left to give back: under a quarter of the
    // file is free (what `serve` compacts from).
    let verified = ok(&starling(dir.path(), &["verify"]));
    let free: u64 = verified
        .lines()
        .find_map(|l| l.strip_prefix("file ")?.split(" B (").nth(1)?.split('%').next()?.parse().ok())
        .unwrap_or_else(|| panic!("{verified}"));
    assert!(free < 25, "{verified}");
    assert!(ok(&starling(dir.path(), &["dump", "u"])).matches("\n  ").count() >= 2000);
}

#[test]
fn bad_input_gets_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let o = starling(dir.path(), &["import", "maildir", "nobody", dir.path().to_str().unwrap()]);
    assert!(!o.status.success());
    let e = String::from_utf8_lossy(&o.stderr);
    assert!(e.contains("not a Maildir") || e.contains("no such account"), "{e}");
    // A data directory whose store is not a store.
    let data = dir.path().join("d");
    std::fs::create_dir_all(&data).unwrap();
    std::fs::write(data.join("store.redb"), b"this is not a database").unwrap();
    let o = starling(dir.path(), &["--data-dir", data.to_str().unwrap(), "serve", "--peer-listen", "127.0.0.1:0"]);
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("not a Starling store"));
    // A damaged node identity.
    let data2 = dir.path().join("d2");
    std::fs::create_dir_all(&data2).unwrap();
    std::fs::write(data2.join("node.key"), b"short").unwrap();
    std::fs::write(data2.join("node.crt"), b"short").unwrap();
    let o = starling(dir.path(), &["--data-dir", data2.to_str().unwrap(), "serve"]);
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("node identity"));
    // Bad peers: a bad node id, a bad address, a duplicate.
    let d3 = dir.path().join("d3");
    let d3s = d3.to_str().unwrap();
    let bad_id = starling(dir.path(), &["--data-dir", d3s, "peer", "add", "xyz", "127.0.0.1:1", "--accounts", "a"]);
    assert!(String::from_utf8_lossy(&bad_id.stderr).contains("invalid node id"));
    let id = "ab".repeat(32);
    let bad_addr = starling(dir.path(), &["--data-dir", d3s, "peer", "add", &id, "nowhere", "--accounts", "a"]);
    assert!(String::from_utf8_lossy(&bad_addr.stderr).contains("bad address"));
    ok(&starling(dir.path(), &["--data-dir", d3s, "peer", "add", &id, "127.0.0.1:1", "--accounts", "a"]));
    let dup = starling(dir.path(), &["--data-dir", d3s, "peer", "add", &id, "127.0.0.1:2", "--accounts", "a"]);
    assert!(String::from_utf8_lossy(&dup.stderr).contains("already pinned"));
    // A partial peer's options survive the file; a bad line names itself.
    let id2 = "cd".repeat(32);
    ok(&starling(
        dir.path(),
        &[
            "--data-dir",
            d3s,
            "peer",
            "add",
            &id2,
            "127.0.0.1:3",
            "--accounts",
            "a",
            "--body-cap",
            "1048576",
            "--mailboxes",
            "INBOX",
        ],
    ));
    let list = ok(&starling(dir.path(), &["--data-dir", d3s, "peer", "list"]));
    assert!(list.contains("body-cap=1048576 mailboxes=INBOX"), "{list}");
    std::fs::write(d3.join("peers"), format!("{id} 127.0.0.1:1 a colour=blue\n")).unwrap();
    let bad = starling(dir.path(), &["--data-dir", d3s, "peer", "list"]);
    let e = String::from_utf8_lossy(&bad.stderr);
    assert!(e.contains("line 1") && e.contains("unknown option"), "{e}");
}

/// `starling demo` (the README shows its output): three real nodes converge
/// after a cut with changes on both sides, well within a minute.
#[test]
fn demo_converges_within_a_minute() {
    let dir = tempfile::tempdir().unwrap();
    let t = std::time::Instant::now();
    let o = starling(dir.path(), &["demo", "--dir", dir.path().join("demo").to_str().unwrap()]);
    let out = ok(&o);
    assert!(out.contains("Dumps of n1, n2 and n3 are identical"), "{out}");
    assert!(out.contains("\\Seen \\Flagged $Important"), "both sides' keywords on UID 1: {out}");
    assert!(t.elapsed() < std::time::Duration::from_secs(60));
}

/// A config file that is wrong stops `serve` at once, naming the line and
/// the key; a good one is used (its addresses and the metrics endpoint).
#[test]
fn config_errors_name_line_and_key_and_a_good_config_is_used() {
    let dir = tempfile::tempdir().unwrap();
    let cases: [(&str, &str); 4] = [
        ("[listen]\nimap = \"127.0.0.1:0\"\nimapz = \"127.0.0.1:0\"\n", "line 3"),
        ("[listen]\nlmtp = \"localhost-ish\"\n", "line 2"),
        (
            "[[peer]]\nid = \"ABAB\"\naddr = \"127.0.0.1:1\"\naccounts = [\"a\"]\n[[peer]]\nid = \"ABAB\"\naddr = \"127.0.0.1:2\"\naccounts = [\"a\"]\n",
            "line 6",
        ),
        ("[imap]\ntls_cert = \"/nonexistent/cert.pem\"\ntls_key = \"/nonexistent/key.pem\"\n", "line 2"),
    ];
    let id = "ab".repeat(32);
    for (text, line) in cases {
        let path = dir.path().join("bad.toml");
        std::fs::write(&path, text.replace("ABAB", &id)).unwrap();
        let t = std::time::Instant::now();
        let o = starling(dir.path(), &["serve", "--config", path.to_str().unwrap()]);
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(!o.status.success(), "{text}");
        assert!(err.contains("bad.toml") && err.contains(line), "{text} → {err}");
        assert!(t.elapsed() < std::time::Duration::from_secs(10), "fails fast");
    }
    let err =
        String::from_utf8_lossy(&starling(dir.path(), &["serve", "--config", "/nonexistent.toml"]).stderr).to_string();
    assert!(err.contains("/nonexistent.toml"), "{err}");

    // `init` writes a config that parses; a good config's addresses are used.
    ok(&starling(dir.path(), &["init", "--config", "starling.toml"]));
    let again = starling(dir.path(), &["init", "--config", "starling.toml"]);
    assert!(!again.status.success(), "init does not overwrite");
    let good = dir.path().join("good.toml");
    std::fs::write(
        &good,
        "data_dir = \"d-good\"\n[listen]\nimap = \"127.0.0.1:0\"\nimaps = \"127.0.0.1:0\"\nlmtp = \"127.0.0.1:0\"\npeers = \"127.0.0.1:0\"\nmetrics = \"127.0.0.1:0\"\nstatus = \"off\"\n[log]\nformat = \"json\"\n",
    )
    .unwrap();
    serve_while(dir.path(), &["--config", good.to_str().unwrap()], |out| {
        assert!(!out.contains("127.0.0.1:1143"), "config address used: {out}");
        assert!(!out.contains("status: "), "status = \"off\" turns the page off: {out}");
        let url = out.lines().find_map(|l| l.strip_prefix("metrics: listening on http://")).expect("metrics printed");
        let addr = url.trim_end_matches("/metrics");
        let mut s = std::net::TcpStream::connect(addr).unwrap();
        use std::io::{Read, Write};
        s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
        let mut page = String::new();
        s.read_to_string(&mut page).unwrap();
        assert!(page.starts_with("HTTP/1.1 200 OK"), "{page}");
        assert!(page.contains("starling_messages{account=\"user\"} 0"), "{page}");
        assert!(page.contains("starling_imap_sessions 0"), "{page}");
        assert!(page.contains("starling_imap_sort_cache_bytes 0"), "{page}");
        assert!(page.contains("starling_imap_sort_cache_answers_total{how=\"built\"} 0"), "{page}");
    });
    assert!(dir.path().join("d-good/store.redb").exists(), "data_dir from the config");
}
