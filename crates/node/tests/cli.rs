//! The `starling` binary as an operator uses it, as real processes: the
//! README's run command from an empty directory, accounts, Maildir import,
//! dump and export, and clear errors for bad input.

use std::path::Path;
use std::process::{Command, Output};

fn starling(dir: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_starling")).current_dir(dir).args(args).output().unwrap()
}

fn ok(o: &Output) -> String {
    assert!(o.status.success(), "failed: {}", String::from_utf8_lossy(&o.stderr));
    String::from_utf8_lossy(&o.stdout).to_string()
}

#[test]
fn serve_from_an_empty_directory_then_accounts_import_dump_export() {
    let dir = tempfile::tempdir().unwrap();
    // The README's run command, with no config and no data.
    let out = ok(&starling(dir.path(), &["serve"]));
    assert!(out.contains("node id: "));
    assert!(dir.path().join("starling-data/store.redb").exists());
    let id1 = out.lines().find(|l| l.starts_with("node id")).unwrap().to_string();
    // Same node on the next start.
    let out = ok(&starling(dir.path(), &["serve"]));
    assert!(out.contains(&id1));

    ok(&starling(dir.path(), &["account", "add", "alice"]));
    let again = starling(dir.path(), &["account", "add", "alice"]);
    assert!(!again.status.success());
    assert!(String::from_utf8_lossy(&again.stderr).contains("exists"));
    assert_eq!(ok(&starling(dir.path(), &["account", "list"])).trim(), "alice");

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
    let o = starling(dir.path(), &["--data-dir", data.to_str().unwrap(), "serve"]);
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("not a Starling store"));
    // A node key of the wrong size.
    let data2 = dir.path().join("d2");
    std::fs::create_dir_all(&data2).unwrap();
    std::fs::write(data2.join("node-key"), b"short").unwrap();
    let o = starling(dir.path(), &["--data-dir", data2.to_str().unwrap(), "serve"]);
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("not a node key"));
}
