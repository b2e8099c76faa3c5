//! Maildir round trip on real files: import → export gives back every message
//! byte for byte with its flags and keywords; a second import adds nothing.

use starling_model::{Keyword, ReplicaId};
use starling_store::maildir;
use starling_store::{Store, StoreOptions};
use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, SystemTime};

/// Per mailbox name: (content, flags) of each message.
type Tree = BTreeMap<String, Vec<(Vec<u8>, Vec<Keyword>)>>;

fn write(dir: &Path, sub: &str, name: &str, bytes: &[u8], mtime: u64) {
    std::fs::create_dir_all(dir.join(sub)).unwrap();
    let p = dir.join(sub).join(name);
    std::fs::write(&p, bytes).unwrap();
    let f = std::fs::File::options().write(true).open(&p).unwrap();
    f.set_modified(SystemTime::UNIX_EPOCH + Duration::from_secs(mtime)).unwrap();
}

fn text_message(i: usize, size: usize) -> Vec<u8> {
    let mut m = format!("From: sender{i}@example.org\nTo: you@example.net\nSubject: message {i}\nDate: Mon, 1 Jan 2024 00:00:00 +0000\n\n").into_bytes();
    while m.len() < size {
        m.extend_from_slice(format!("line {} of message {i} with some words in it\n", m.len()).as_bytes());
    }
    m
}

fn attachment_message(bytes: usize) -> Vec<u8> {
    let mut m = b"From: a@example.org\nSubject: big\nMIME-Version: 1.0\nContent-Type: multipart/mixed; boundary=\"=b\"\n\n--=b\nContent-Type: text/plain\n\nsee attached\n--=b\nContent-Type: application/zip\nContent-Transfer-Encoding: base64\n\n".to_vec();
    let mut x: u32 = 12345;
    let mut line = 0;
    while m.len() < bytes {
        x = x.wrapping_mul(1103515245).wrapping_add(12345);
        m.push(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"[(x >> 16) as usize % 64]);
        line += 1;
        if line % 76 == 0 {
            m.push(b'\n');
        }
    }
    m.extend_from_slice(b"\n--=b--\n");
    m
}

/// A Maildir++ tree: folders, nested folders, flags, keywords, a 2 MB
/// attachment, a truncated and a garbage message. Returns what each
/// mailbox must hold: (content, flags) pairs.
fn make_tree(root: &Path) -> Tree {
    let mut want: Tree = BTreeMap::new();
    let t0 = 1_700_000_000;
    for i in 0..40 {
        let raw = text_message(i, 2_000 + i * 300);
        let (suffix, flags) = match i % 4 {
            0 => (":2,S".to_string(), vec![Keyword::Seen]),
            1 => (":2,RS".to_string(), vec![Keyword::Answered, Keyword::Seen]),
            2 => (":2,FPS".to_string(), vec![Keyword::Seen, Keyword::Flagged, Keyword::parse("$Forwarded").unwrap()]),
            _ => (String::new(), vec![]),
        };
        let sub = if suffix.is_empty() { "new" } else { "cur" };
        write(root, sub, &format!("{}.M{i}P1.host{suffix}", t0 + i), &raw, (t0 + i as i64 as usize) as u64);
        want.entry("INBOX".into()).or_default().push((raw, flags));
    }
    let work = root.join(".Work");
    std::fs::create_dir_all(&work).unwrap();
    std::fs::write(work.join("dovecot-keywords"), "0 work\n1 $junk\n2 Project-X\n").unwrap();
    for i in 0..20 {
        let raw = text_message(100 + i, 5_000);
        let (suffix, flags) = match i % 3 {
            0 => (":2,Sa", vec![Keyword::Seen, Keyword::parse("work").unwrap()]),
            1 => {
                (":2,Sbc", vec![Keyword::Seen, Keyword::parse("$Junk").unwrap(), Keyword::parse("project-x").unwrap()])
            }
            _ => (":2,", vec![]),
        };
        write(&work, "cur", &format!("{}.M{i}P2.host{suffix}", t0 + 100 + i), &raw, (t0 + 100 + i) as u64);
        want.entry("Work".into()).or_default().push((raw, flags));
    }
    let big = attachment_message(2 * 1024 * 1024);
    write(&work, "cur", "1700000500.big.host:2,S", &big, t0 as u64 + 500);
    want.entry("Work".into()).or_default().push((big, vec![Keyword::Seen]));
    let lists = root.join(".Lists.dovecot");
    let truncated = attachment_message(400 * 1024)[..300 * 1024].to_vec();
    let garbage: Vec<u8> = (0..5000u32).map(|i| (i * 7919 % 256) as u8).collect();
    let no_newline = b"Subject: no final newline\n\nbody".to_vec();
    for (i, raw) in [truncated, garbage, no_newline].into_iter().enumerate() {
        write(&lists, "cur", &format!("{}.odd{i}.host:2,D", t0 + 200 + i), &raw, (t0 + 200 + i) as u64);
        want.entry("Lists/dovecot".into()).or_default().push((raw, vec![Keyword::Draft]));
    }
    std::fs::create_dir_all(root.join("tmp")).unwrap();
    want
}

/// Reads an exported tree back: per mailbox, (content, flags).
fn read_tree(root: &Path) -> Tree {
    let mut out: Tree = BTreeMap::new();
    let mut dirs = vec![("INBOX".to_string(), root.to_path_buf())];
    for e in std::fs::read_dir(root).unwrap() {
        let e = e.unwrap();
        let n = e.file_name().to_string_lossy().to_string();
        if let Some(f) = n.strip_prefix('.') {
            dirs.push((f.replace('.', "/"), e.path()));
        }
    }
    for (name, dir) in dirs {
        let kws: BTreeMap<char, Keyword> = std::fs::read_to_string(dir.join("dovecot-keywords"))
            .unwrap_or_default()
            .lines()
            .map(|l| {
                let (n, k) = l.split_once(' ').unwrap();
                ((b'a' + n.parse::<u8>().unwrap()) as char, Keyword::parse(k).unwrap())
            })
            .collect();
        for e in std::fs::read_dir(dir.join("cur")).unwrap() {
            let p = e.unwrap().path();
            let fname = p.file_name().unwrap().to_string_lossy().to_string();
            let (_, letters) = fname.rsplit_once(":2,").unwrap();
            let mut flags: Vec<Keyword> = letters
                .chars()
                .map(|c| match c {
                    'S' => Keyword::Seen,
                    'R' => Keyword::Answered,
                    'F' => Keyword::Flagged,
                    'D' => Keyword::Draft,
                    'T' => Keyword::Deleted,
                    'P' => Keyword::parse("$Forwarded").unwrap(),
                    c => kws[&c].clone(),
                })
                .collect();
            flags.sort();
            out.entry(name.clone()).or_default().push((std::fs::read(&p).unwrap(), flags));
        }
    }
    out
}

fn normalize(mut m: Tree) -> Tree {
    for v in m.values_mut() {
        for (_, f) in v.iter_mut() {
            f.sort();
        }
        v.sort();
    }
    m
}

#[test]
fn import_export_round_trip_is_byte_exact() {
    let dir = tempfile::tempdir().unwrap();
    let src = dir.path().join("src");
    let want = normalize(make_tree(&src));
    let store = Store::open(&dir.path().join("s.redb"), ReplicaId(1), StoreOptions::default()).unwrap();
    store.add_account("u").unwrap();
    let s1 = maildir::import(&store, "u", &src).unwrap();
    assert_eq!(s1.messages, 64);
    assert_eq!(s1.mailboxes, 3);
    // Twice: nothing new.
    let s2 = maildir::import(&store, "u", &src).unwrap();
    assert_eq!((s2.messages, s2.skipped), (0, 64));
    // Across a reopen too.
    drop(store);
    let store = Store::open(&dir.path().join("s.redb"), ReplicaId(1), StoreOptions::default()).unwrap();
    let out = dir.path().join("out");
    let e = maildir::export(&store, "u", &out).unwrap();
    assert_eq!(e.messages, 64);
    let got = normalize(read_tree(&out));
    assert_eq!(got.keys().collect::<Vec<_>>(), want.keys().collect::<Vec<_>>());
    for (name, msgs) in &want {
        assert_eq!(got[name].len(), msgs.len(), "{name}");
        for (a, b) in got[name].iter().zip(msgs) {
            assert!(a.0 == b.0, "{name}: content differs");
            assert_eq!(a.1, b.1, "{name}: flags differ");
        }
    }
    // Internal dates survive as mtimes.
    let inbox_file = std::fs::read_dir(out.join("cur")).unwrap().next().unwrap().unwrap().path();
    let mtime = std::fs::metadata(&inbox_file).unwrap().modified().unwrap();
    let secs = mtime.duration_since(SystemTime::UNIX_EPOCH).unwrap().as_secs();
    assert!((1_700_000_000..1_700_000_100).contains(&secs));
}

#[test]
fn not_a_maildir_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(&dir.path().join("s.redb"), ReplicaId(1), StoreOptions::default()).unwrap();
    store.add_account("u").unwrap();
    assert!(matches!(maildir::import(&store, "u", dir.path()), Err(maildir::MaildirError::NotAMaildir(_))));
}
