//! LIST and LSUB (RFC 9051, RFC 3501), with LIST-EXTENDED's selection and
//! return options and several patterns (RFC 5258), LIST-STATUS (RFC 5819),
//! SPECIAL-USE (RFC 6154) and CHILDREN (RFC 3348).

use crate::extended::{ListReturn, StatusExtra};
use crate::session::{full_name, name_wire, Done, Fail, Session, NAME_BYTES_MAX};
use imap_codec::imap_types::mailbox::{ListMailbox, Mailbox};
use imap_codec::imap_types::status::StatusDataItemName;
use starling_model::account::DELIMITER;
use std::collections::BTreeSet;

impl Session {
    /// LIST as the client gave it: the reference and the pattern, or the
    /// patterns LIST-EXTENDED lifted off the command ([`crate::extended`]),
    /// with its selection and return options.
    pub(crate) fn list_command(
        &mut self,
        reference: &Mailbox<'_>,
        wildcard: &ListMailbox<'_>,
        patterns: &[String],
        selection: &[String],
        ret: &ListReturn,
    ) -> Done {
        let patterns = if patterns.is_empty() {
            self.client_text(list_pattern(wildcard)).map(|p| vec![p])
        } else {
            patterns.iter().map(|p| self.client_text(p.as_bytes())).collect()
        };
        let reference = self.client_text(mailbox_bytes(reference));
        match (reference, patterns) {
            (Ok(r), Ok(p)) => self.list(&r, &p, selection, ret, false),
            (Err(e), _) | (_, Err(e)) => Err(e),
        }
    }

    /// LSUB as the client gave it: a LIST of the subscribed names.
    pub(crate) fn lsub_command(&mut self, reference: &Mailbox<'_>, wildcard: &ListMailbox<'_>) -> Done {
        let reference = self.client_text(mailbox_bytes(reference));
        let pattern = self.client_text(list_pattern(wildcard));
        match (reference, pattern) {
            (Ok(r), Ok(p)) => self.list(&r, &[p], &["SUBSCRIBED".to_string()], &ListReturn::default(), true),
            (Err(e), _) | (_, Err(e)) => Err(e),
        }
    }

    /// LIST and LSUB: every mailbox whose name matches one of `patterns`
    /// (RFC 5258 §3 allows several), once.
    pub(crate) fn list(
        &mut self,
        reference: &str,
        patterns: &[String],
        selection: &[String],
        ret: &ListReturn,
        lsub: bool,
    ) -> Done {
        let verb = if lsub { "LSUB" } else { "LIST" };
        // (The client's bytes are not echoed: they may hold anything.)
        if selection.iter().any(|o| !LIST_SELECTION.contains(&o.as_str())) {
            return Err(Fail::Bad("unknown LIST selection option".into()));
        }
        if selection.iter().any(|o| o == "RECURSIVEMATCH") && !selection.iter().any(|o| o == "SUBSCRIBED") {
            return Err(Fail::Bad("RECURSIVEMATCH needs another selection option (RFC 5258 section 3)".into()));
        }
        if !ret.unknown.is_empty() {
            return Err(Fail::Bad("unknown LIST return option".into()));
        }
        if patterns.iter().all(|p| p.is_empty()) {
            self.untagged(&format!("{verb} (\\Noselect) \"{DELIMITER}\" \"\""));
            return Ok(format!("{verb} completed"));
        }
        let subscribed_only = selection.iter().any(|s| s == "SUBSCRIBED");
        let special_only = selection.iter().any(|s| s == "SPECIAL-USE");
        let full: Vec<String> = patterns.iter().filter(|p| !p.is_empty()).map(|p| format!("{reference}{p}")).collect();
        // Patterns are in the client's encoding: matched against names as
        // it sees them (a UTF-8 pattern's `*` may end inside a character
        // that modified UTF-7 would have put in one base64 run).
        let utf8 = self.utf8_names();
        let matches = |name: &str| {
            let name = &*crate::mutf7::shown(utf8, name);
            full.iter().any(|f| {
                if name == "INBOX" {
                    list_match(&f.to_ascii_uppercase(), name)
                } else {
                    list_match(f, name)
                }
            })
        };
        let recursive = selection.iter().any(|s| s == "RECURSIVEMATCH");
        let reader = self.reader()?;
        let tree = &reader.names().tree;
        // Subscriptions are by name: a deleted mailbox's stays (RFC 9051
        // §6.3.9), and counts for a mailbox created again with its name.
        let ghosts: BTreeSet<String> = tree
            .entries
            .values()
            .filter(|e| e.deleted && e.subscribed)
            .filter_map(|e| full_name(tree, e.id))
            .filter(|n| tree.by_name.get(n).is_none_or(|id| tree.entries.get(id).is_some_and(|e| !e.subscribed)))
            .collect();
        let subscribed: BTreeSet<&str> = tree
            .by_name
            .iter()
            .filter(|(_, id)| tree.entries.get(id).is_some_and(|e| e.subscribed))
            .map(|(n, _)| n.as_str())
            .chain(ghosts.iter().map(|n| n.as_str()))
            .collect();
        // RECURSIVEMATCH: a name with a subscribed mailbox below it gets
        // CHILDINFO (RFC 5258 §3.5).
        let childinfo = |name: &str| {
            let prefix = format!("{name}{DELIMITER}");
            recursive && subscribed.range(prefix.as_str()..).next().is_some_and(|n| n.starts_with(&prefix))
        };
        const CHILDINFO: &[u8] = b" (\"CHILDINFO\" (\"SUBSCRIBED\"))";
        let mut lines = Vec::new();
        // LSUB with `%`: the matching parent of a subscribed mailbox that
        // does not match itself is listed \Noselect (RFC 3501 §6.3.9).
        let mut parents = BTreeSet::new();
        for (name, id) in &tree.by_name {
            let Some(entry) = tree.entries.get(id) else { continue };
            let is_subscribed = subscribed.contains(name.as_str());
            if !matches(name) {
                if lsub && is_subscribed {
                    let mut at = name.len();
                    while let Some(cut) = name[..at].rfind(DELIMITER) {
                        let parent = &name[..cut];
                        if matches(parent) {
                            parents.insert(parent.to_string());
                            break;
                        }
                        at = cut;
                    }
                }
                continue;
            }
            let child_subscribed = childinfo(name);
            if (subscribed_only && !is_subscribed && !child_subscribed) || (special_only && entry.special_use.is_none())
            {
                continue;
            }
            let prefix = format!("{name}{DELIMITER}");
            let children = tree.by_name.range(prefix.clone()..).next().is_some_and(|(n, _)| n.starts_with(&prefix));
            let mut attrs = vec![if children { "\\HasChildren" } else { "\\HasNoChildren" }];
            if is_subscribed && (subscribed_only || ret.subscribed) && !lsub {
                attrs.push("\\Subscribed");
            }
            if let Some(u) = entry.special_use {
                attrs.push(u.as_str());
            }
            let mut encoded = Vec::new();
            name_wire(utf8, &mut encoded, name);
            let mut line = format!("{verb} ({}) \"{DELIMITER}\" ", attrs.join(" ")).into_bytes();
            line.extend_from_slice(&encoded);
            if child_subscribed {
                line.extend_from_slice(CHILDINFO);
            }
            lines.push((line, Some(*id), String::from_utf8_lossy(&encoded).into_owned()));
        }
        if subscribed_only {
            // Names without a mailbox: subscriptions that outlived their
            // mailbox, and with RECURSIVEMATCH the missing parents of
            // subscribed names.
            let mut missing: BTreeSet<&str> = ghosts.iter().map(|n| n.as_str()).collect();
            if recursive {
                for n in &subscribed {
                    missing.extend(n.match_indices(DELIMITER).map(|(i, _)| &n[..i]));
                }
            }
            for name in missing {
                if tree.by_name.contains_key(name) || !matches(name) {
                    continue;
                }
                let is_subscribed = ghosts.contains(name);
                let child_subscribed = childinfo(name);
                if !is_subscribed && !child_subscribed {
                    continue;
                }
                let attrs = match (lsub, is_subscribed) {
                    (true, _) => "\\Noselect",
                    (false, true) => "\\NonExistent \\Subscribed",
                    (false, false) => "\\NonExistent",
                };
                let mut line = format!("{verb} ({attrs}) \"{DELIMITER}\" ").into_bytes();
                name_wire(utf8, &mut line, name);
                if child_subscribed {
                    line.extend_from_slice(CHILDINFO);
                }
                parents.remove(name);
                lines.push((line, None, String::new()));
            }
        }
        for parent in parents {
            let subscribed = subscribed.contains(parent.as_str());
            if subscribed {
                continue; // listed above
            }
            let mut encoded = Vec::new();
            name_wire(utf8, &mut encoded, &parent);
            let mut line = format!("{verb} (\\Noselect) \"{DELIMITER}\" ").into_bytes();
            line.extend_from_slice(&encoded);
            lines.push((line, None, String::new()));
        }
        drop(reader);
        for (line, id, name) in lines {
            self.out.extend_from_slice(b"* ");
            self.out.extend_from_slice(&line);
            self.out.extend_from_slice(b"\r\n");
            if let (Some(items), Some(id)) = (&ret.status, id) {
                let extra: Vec<StatusExtra> = items
                    .iter()
                    .filter_map(|i| match i.as_str() {
                        "MAILBOXID" => Some(StatusExtra::MailboxId),
                        "APPENDLIMIT" => Some(StatusExtra::AppendLimit),
                        _ => None,
                    })
                    .collect();
                let items: Vec<StatusDataItemName> = items.iter().filter_map(|i| status_item(i)).collect();
                self.status_lines(id, &name, &items, &extra)?;
            }
        }
        Ok(format!("{verb} completed"))
    }

    /// A LIST reference or pattern as text to match shown names against:
    /// from a UTF-8 client valid UTF-8 (in NFC).
    fn client_text(&self, raw: &[u8]) -> Result<String, Fail> {
        use unicode_normalization::UnicodeNormalization;
        if raw.len() > NAME_BYTES_MAX {
            return Err(Fail::No(format!("[LIMIT] mailbox pattern longer than {NAME_BYTES_MAX} bytes")));
        }
        if self.utf8_names() {
            let text = std::str::from_utf8(raw).map_err(|_| Fail::Bad("mailbox pattern is not valid UTF-8".into()))?;
            Ok(text.nfc().collect())
        } else {
            Ok(String::from_utf8_lossy(raw).into_owned())
        }
    }
}

/// A mailbox name's bytes as the client wrote them (INBOX normalised).
fn mailbox_bytes<'a>(m: &'a Mailbox<'_>) -> &'a [u8] {
    match m {
        Mailbox::Inbox => b"INBOX",
        Mailbox::Other(o) => o.as_ref(),
    }
}

fn list_pattern<'a>(m: &'a ListMailbox<'_>) -> &'a [u8] {
    match m {
        ListMailbox::Token(t) => t.as_ref(),
        ListMailbox::String(s) => s.as_ref(),
    }
}

fn status_item(name: &str) -> Option<StatusDataItemName> {
    Some(match name {
        "MESSAGES" => StatusDataItemName::Messages,
        "RECENT" => StatusDataItemName::Recent,
        "UIDNEXT" => StatusDataItemName::UidNext,
        "UIDVALIDITY" => StatusDataItemName::UidValidity,
        "UNSEEN" => StatusDataItemName::Unseen,
        "DELETED" => StatusDataItemName::Deleted,
        "DELETED-STORAGE" => StatusDataItemName::DeletedStorage,
        "HIGHESTMODSEQ" => StatusDataItemName::HighestModSeq,
        "SIZE" => StatusDataItemName::Size,
        _ => return None,
    })
}

/// LIST selection options known here (RFC 5258, RFC 6154); any other is BAD.
const LIST_SELECTION: [&str; 4] = ["SUBSCRIBED", "REMOTE", "RECURSIVEMATCH", "SPECIAL-USE"];

/// LIST pattern matching: `*` matches anything, `%` anything but the
/// hierarchy delimiter.
pub(crate) fn list_match(pattern: &str, name: &str) -> bool {
    fn go(p: &[u8], n: &[u8]) -> bool {
        match p.first() {
            None => n.is_empty(),
            Some(b'*') => (0..=n.len()).any(|i| go(&p[1..], &n[i..])),
            Some(b'%') => {
                (0..=n.len()).take_while(|&i| i == 0 || n[i - 1] != DELIMITER as u8).any(|i| go(&p[1..], &n[i..]))
            }
            Some(&c) => n.first() == Some(&c) && go(&p[1..], &n[1..]),
        }
    }
    // Patterns are short; bound the backtracking by refusing absurd ones.
    pattern.len() <= 1024
        && pattern.bytes().filter(|b| matches!(b, b'*' | b'%')).count() <= 16
        && go(pattern.as_bytes(), name.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::list_match;

    #[test]
    fn list_patterns() {
        assert!(list_match("*", "a/b"));
        assert!(list_match("%", "a"));
        assert!(!list_match("%", "a/b"));
        assert!(list_match("a/%", "a/b"));
        assert!(!list_match("a/%", "a/b/c"));
        assert!(list_match("a*", "a/b/c"));
        assert!(!list_match("b*", "a/b"));
        assert!(list_match("INBOX", "INBOX"));
    }
}
