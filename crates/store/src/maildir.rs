//! Maildir (Maildir++) import and export.
//!
//! Import reads a Maildir++ tree: the root's `cur`/`new` are INBOX, each
//! `.A.B` directory is mailbox `A/B`; flags come from the `:2,` suffix,
//! keywords from lower-case letters mapped by Dovecot's `dovecot-keywords`
//! file, the internal date from the file's mtime. Messages go in batches
//! through [`Store::write`], the same path as every other change. Importing
//! the same tree twice adds nothing: per mailbox, a body already present as
//! often as in the source is skipped.
//!
//! Export writes the reverse, one file per message in `cur/`, mtime set to
//! the internal date, and a `dovecot-keywords` file where keywords are used.

use crate::{Store, StoreError};
use indicatif::{ProgressBar, ProgressStyle};
use starling_model::{BlobId, Keyword, MailboxId, INBOX};
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// Messages per commit during import.
pub const IMPORT_BATCH: usize = 256;

/// Why an import or export failed.
#[derive(Debug, thiserror::Error)]
pub enum MaildirError {
    /// Reading or writing files.
    #[error("{path}: {source}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// What failed.
        source: std::io::Error,
    },
    /// Not a Maildir (no `cur` or `new` at the root).
    #[error("{0} is not a Maildir (no cur/ or new/)")]
    NotAMaildir(PathBuf),
    /// The store refused.
    #[error(transparent)]
    Store(#[from] StoreError),
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> MaildirError + '_ {
    move |source| MaildirError::Io { path: path.to_path_buf(), source }
}

/// What an import or export did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Summary {
    /// Mailboxes seen.
    pub mailboxes: usize,
    /// Messages stored (import) or written (export).
    pub messages: u64,
    /// Messages skipped because they were there already (import).
    pub skipped: u64,
    /// Bytes of message content.
    pub bytes: u64,
    /// Wall time.
    pub elapsed: Duration,
}

impl std::fmt::Display for Summary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let secs = self.elapsed.as_secs_f64().max(1e-9);
        write!(
            f,
            "{} mailboxes, {} messages ({} skipped as already present), {:.1} MB in {:.2} s: {:.0} messages/s, {:.1} MB/s",
            self.mailboxes,
            self.messages,
            self.skipped,
            self.bytes as f64 / 1e6,
            secs,
            self.messages as f64 / secs,
            self.bytes as f64 / 1e6 / secs
        )
    }
}

/// Maildir flag letters and the system flags they stand for (`P`, passed,
/// is the `$Forwarded` keyword).
const LETTERS: [(char, Keyword); 5] = [
    ('D', Keyword::Draft),
    ('F', Keyword::Flagged),
    ('R', Keyword::Answered),
    ('S', Keyword::Seen),
    ('T', Keyword::Deleted),
];

fn forwarded() -> Keyword {
    Keyword::parse("$Forwarded").expect("registered keyword")
}

/// Reads `dovecot-keywords`: lines `N name`, letter `a`+N stands for `name`.
fn read_keywords(dir: &Path) -> HashMap<char, Keyword> {
    let mut map = HashMap::new();
    if let Ok(text) = std::fs::read_to_string(dir.join("dovecot-keywords")) {
        for line in text.lines() {
            let Some((n, name)) = line.split_once(' ') else {
                continue;
            };
            let (Ok(n), Ok(kw)) = (n.parse::<u32>(), Keyword::parse(name.trim())) else {
                continue;
            };
            if n < 26 {
                map.insert((b'a' + n as u8) as char, kw);
            }
        }
    }
    map
}

fn flags_of(file_name: &str, keywords: &HashMap<char, Keyword>) -> Vec<Keyword> {
    let Some((_, info)) = file_name.rsplit_once(":2,") else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for c in info.chars() {
        match c {
            'P' => out.push(forwarded()),
            'a'..='z' => out.extend(keywords.get(&c).cloned()),
            _ => out.extend(LETTERS.iter().find(|(l, _)| *l == c).map(|(_, k)| k.clone())),
        }
    }
    out.sort();
    out.dedup();
    out
}

/// Mailbox folders of a Maildir++ tree: (mailbox name, directory), INBOX first.
fn folders(root: &Path) -> Result<Vec<(String, PathBuf)>, MaildirError> {
    if !root.join("cur").is_dir() && !root.join("new").is_dir() {
        return Err(MaildirError::NotAMaildir(root.to_path_buf()));
    }
    let mut out = vec![("INBOX".to_string(), root.to_path_buf())];
    let mut subs = Vec::new();
    for entry in std::fs::read_dir(root).map_err(io(root))? {
        let entry = entry.map_err(io(root))?;
        let name = entry.file_name().to_string_lossy().to_string();
        if let Some(folder) = name.strip_prefix('.') {
            if !folder.is_empty() && folder != "." && entry.path().is_dir() {
                subs.push((folder.replace('.', "/"), entry.path()));
            }
        }
    }
    subs.sort();
    out.extend(subs);
    Ok(out)
}

fn message_files(dir: &Path) -> Result<Vec<PathBuf>, MaildirError> {
    let mut files = Vec::new();
    for sub in ["new", "cur"] {
        let d = dir.join(sub);
        if !d.is_dir() {
            continue;
        }
        for entry in std::fs::read_dir(&d).map_err(io(&d))? {
            let entry = entry.map_err(io(&d))?;
            if entry.file_type().map_err(io(&d))?.is_file() {
                files.push(entry.path());
            }
        }
    }
    files.sort();
    Ok(files)
}

fn progress(total: u64, what: &str) -> ProgressBar {
    let bar = ProgressBar::new(total);
    bar.set_style(
        ProgressStyle::with_template("{msg} [{bar:40}] {pos}/{len} messages {per_sec} eta {eta}")
            .expect("template")
            .progress_chars("=> "),
    );
    bar.set_message(what.to_string());
    bar
}

/// Finds or creates the mailbox `name` (`/`-separated), parents included.
fn ensure_mailbox(store: &Store, account: &str, name: &str) -> Result<MailboxId, StoreError> {
    if name.eq_ignore_ascii_case("INBOX") {
        return Ok(INBOX);
    }
    store.write(account, |b| {
        let r = b.replica();
        let mut parent = None;
        let mut path = String::new();
        for seg in name.split('/') {
            if !path.is_empty() {
                path.push('/');
            }
            path.push_str(seg);
            parent = Some(match r.mailbox_by_name(&path) {
                Some(id) => id,
                None => r.create_mailbox(seg, parent, None)?,
            });
        }
        Ok(parent.expect("non-empty name"))
    })
}

/// Imports a Maildir++ tree into `account`.
pub fn import(store: &Store, account: &str, root: &Path) -> Result<Summary, MaildirError> {
    let start = Instant::now();
    let folders = folders(root)?;
    let mut plan = Vec::new();
    for (name, dir) in &folders {
        plan.push((name.clone(), dir.clone(), message_files(dir)?, read_keywords(dir)));
    }
    let total: u64 = plan.iter().map(|p| p.2.len() as u64).sum();
    let bar = progress(total, "import");
    let mut summary = Summary { mailboxes: folders.len(), ..Default::default() };
    for (name, _dir, files, keywords) in plan {
        let mailbox = ensure_mailbox(store, account, &name)?;
        // How often each body is already in the mailbox: those are skipped.
        let mut present: HashMap<BlobId, u64> = HashMap::new();
        {
            let r = store.read(account)?;
            let mut from = 1;
            loop {
                let page = r.messages(mailbox, from, 4096)?;
                let Some(last) = page.last() else { break };
                from = last.uid + 1;
                for m in &page {
                    if let Some(e) = r.envelope(m.message)? {
                        *present.entry(e.blob).or_default() += 1;
                    }
                }
            }
        }
        for chunk in files.chunks(IMPORT_BATCH) {
            let mut batch = Vec::with_capacity(chunk.len());
            for path in chunk {
                let raw = std::fs::read(path).map_err(io(path))?;
                let mtime = std::fs::metadata(path).and_then(|m| m.modified()).map_err(io(path))?;
                let date = mtime.duration_since(UNIX_EPOCH).map(|d| d.as_secs() as i64).unwrap_or(0);
                let file_name = path.file_name().map(|n| n.to_string_lossy().to_string()).unwrap_or_default();
                let id = BlobId::of(&raw);
                match present.get_mut(&id) {
                    Some(n) if *n > 0 => {
                        *n -= 1;
                        summary.skipped += 1;
                    }
                    _ => batch.push((raw, date, flags_of(&file_name, &keywords))),
                }
            }
            let raws: Vec<&[u8]> = batch.iter().map(|(raw, _, _)| raw.as_slice()).collect();
            let prepared = store.prepare_bodies(&raws);
            store.write(account, |b| {
                for (body, (_, date, flags)) in prepared.iter().zip(&batch) {
                    b.append_prepared(mailbox, body, *date, flags.clone())?;
                }
                Ok(())
            })?;
            summary.messages += batch.len() as u64;
            summary.bytes += batch.iter().map(|m| m.0.len() as u64).sum::<u64>();
            bar.inc(chunk.len() as u64);
        }
    }
    bar.finish_and_clear();
    summary.elapsed = start.elapsed();
    Ok(summary)
}

fn letters_for(flags: &[Keyword], keyword_letters: &mut BTreeMap<Keyword, char>) -> String {
    let mut letters: Vec<char> = Vec::new();
    for k in flags {
        if *k == forwarded() {
            letters.push('P');
        } else if let Some((l, _)) = LETTERS.iter().find(|(_, kw)| kw == k) {
            letters.push(*l);
        } else if let Some(l) = keyword_letters.get(k) {
            letters.push(*l);
        } else if keyword_letters.len() < 26 {
            let l = (b'a' + keyword_letters.len() as u8) as char;
            keyword_letters.insert(k.clone(), l);
            letters.push(l);
        }
    }
    letters.sort_unstable();
    letters.into_iter().collect()
}

/// Exports `account` as a Maildir++ tree under `root` (created if absent).
pub fn export(store: &Store, account: &str, root: &Path) -> Result<Summary, MaildirError> {
    let start = Instant::now();
    let r = store.read(account)?;
    let names = r.names().clone();
    let mut total = 0;
    for id in names.tree.by_name.values() {
        total += r.status(*id)?.messages;
    }
    let bar = progress(total, "export");
    let mut summary = Summary { mailboxes: names.tree.by_name.len(), ..Default::default() };
    for (name, id) in &names.tree.by_name {
        let dir = if *id == INBOX { root.to_path_buf() } else { root.join(format!(".{}", name.replace('/', "."))) };
        for sub in ["cur", "new", "tmp"] {
            std::fs::create_dir_all(dir.join(sub)).map_err(io(&dir))?;
        }
        if *id != INBOX {
            std::fs::write(dir.join("maildirfolder"), b"").map_err(io(&dir))?;
        }
        let mut keyword_letters: BTreeMap<Keyword, char> = BTreeMap::new();
        let mut from = 1;
        loop {
            let page = r.messages(*id, from, 1024)?;
            let Some(last) = page.last() else { break };
            from = last.uid + 1;
            for m in page {
                let Some(env) = r.envelope(m.message)? else {
                    continue;
                };
                let raw = r.body(env.blob)?;
                let letters = letters_for(&m.flags, &mut keyword_letters);
                let file = dir.join("cur").join(format!(
                    "{}.S{:x}_{}.starling,S={}:2,{}",
                    env.internal_date,
                    m.message.0.replica.0,
                    m.message.0.counter,
                    raw.len(),
                    letters
                ));
                std::fs::write(&file, &raw).map_err(io(&file))?;
                let t = SystemTime::UNIX_EPOCH + Duration::from_secs(env.internal_date.max(0) as u64);
                std::fs::File::options().write(true).open(&file).and_then(|f| f.set_modified(t)).map_err(io(&file))?;
                summary.messages += 1;
                summary.bytes += raw.len() as u64;
                bar.inc(1);
            }
        }
        if !keyword_letters.is_empty() {
            let mut text = String::new();
            for (k, l) in &keyword_letters {
                text.push_str(&format!("{} {}\n", (*l as u8 - b'a'), k));
            }
            std::fs::write(dir.join("dovecot-keywords"), text).map_err(io(&dir))?;
        }
    }
    bar.finish_and_clear();
    summary.elapsed = start.elapsed();
    Ok(summary)
}
