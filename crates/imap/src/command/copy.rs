//! COPY and MOVE, and their UID forms (RFC 9051, RFC 6851), answered with
//! COPYUID (RFC 4315).

use crate::session::{Done, Fail, Session};
use imap_codec::imap_types::sequence::SequenceSet;

impl Session {
    pub(crate) fn copy(&mut self, set: &SequenceSet, to: &str, uid: bool, is_move: bool) -> Done {
        let reader = self.reader()?;
        let Some(dest) = Self::resolve(&reader, to) else {
            return Err(Fail::No("[TRYCREATE] no such mailbox".into()));
        };
        let sel = self.selected.as_ref().expect("selected");
        if is_move && sel.read_only {
            return Err(Fail::No("[READ-ONLY] mailbox is read-only".into()));
        }
        let src = sel.id;
        let targets = self.targets(&reader, set, uid)?;
        let validity = reader.status(dest)?.uid_validity;
        drop(reader);
        self.recent_floor(dest, None)?;
        if targets.is_empty() {
            return Ok(format!("{} completed (nothing)", if is_move { "MOVE" } else { "COPY" }));
        }
        let pairs = self.write(|b| {
            let before = b.usage()?;
            let mut pairs = Vec::new();
            for (_, m) in &targets {
                let placed = if is_move && src == dest {
                    // Into the mailbox it is in: a new UID there (a copy)
                    // and the old one expunged, as servers do.
                    let copy = b.replica().copy_message(m.message, dest)?;
                    b.replica().expunge(&[m.message])?;
                    copy
                } else if is_move {
                    b.replica().move_message(m.message, dest)?;
                    m.message
                } else {
                    b.replica().copy_message(m.message, dest)?
                };
                if let Some((_, new)) = b.replica().uid_of(placed) {
                    pairs.push((m.uid, new));
                }
            }
            // RFC 9208 §4.1.3 / §5: over quota, nothing is copied.
            b.within_quota_since(before)?;
            Ok(pairs)
        })?;
        let from: Vec<u32> = pairs.iter().map(|p| p.0).collect();
        let to: Vec<u32> = pairs.iter().map(|p| p.1).collect();
        // COPYUID lists both sets in the same order (RFC 4315).
        let join = |v: &[u32]| v.iter().map(|u| u.to_string()).collect::<Vec<_>>().join(",");
        // No COPYUID when nothing was placed (its sets may not be empty).
        let code = if pairs.is_empty() {
            String::new()
        } else {
            format!("[COPYUID {validity} {} {}] ", join(&from), join(&to))
        };
        if is_move {
            self.untagged(&format!("OK {code}moved"));
            self.updates(true);
            Ok(format!("{}MOVE completed", if uid { "UID " } else { "" }))
        } else {
            Ok(format!("{code}{}COPY completed", if uid { "UID " } else { "" }))
        }
    }
}
