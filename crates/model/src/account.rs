//! The account document: mailbox tree, subscriptions and special-use, in
//! automerge.
//!
//! Layout: flat keys on the root map, `<mailbox key>/<field>`, scalar values
//! only. Two automerge pitfalls shape it:
//! - concurrently creating the same nested object under one key hides one of
//!   them, so there are no nested objects at all and every key contains a
//!   mailbox id (a dot: no two replicas ever create the same one);
//! - a put of a value equal to the current one is dropped, so a toggle that
//!   must win over a concurrent opposite toggle (subscribe, delete) writes a
//!   fresh value: the dot of the op carrying the change.
//!
//! Concurrent puts to one key resolve by automerge's op id (Lamport counter,
//! then actor): deterministic everywhere and independent of wall clocks.

use crate::ids::{Dot, MailboxId, ReplicaId};
use automerge::transaction::{CommitOptions, Transactable};
use automerge::{ActorId, AutoCommit, Change, ReadDoc, ScalarValue, Value, ROOT};
use std::collections::{BTreeMap, BTreeSet};

/// The implicit INBOX every account has from the start, on every replica.
pub const INBOX: MailboxId = MailboxId(Dot { replica: ReplicaId(0), counter: 0 });

/// Longest mailbox name segment accepted.
pub const MAILBOX_NAME_LEN_MAX: usize = 255;

/// Special-use attributes (RFC 6154).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum SpecialUse {
    /// `\All`
    All,
    /// `\Archive`
    Archive,
    /// `\Drafts`
    Drafts,
    /// `\Flagged`
    Flagged,
    /// `\Junk`
    Junk,
    /// `\Sent`
    Sent,
    /// `\Trash`
    Trash,
}

impl SpecialUse {
    /// The IMAP attribute.
    pub fn as_str(&self) -> &'static str {
        match self {
            SpecialUse::All => "\\All",
            SpecialUse::Archive => "\\Archive",
            SpecialUse::Drafts => "\\Drafts",
            SpecialUse::Flagged => "\\Flagged",
            SpecialUse::Junk => "\\Junk",
            SpecialUse::Sent => "\\Sent",
            SpecialUse::Trash => "\\Trash",
        }
    }

    /// Parses an IMAP attribute, case-insensitively.
    pub fn parse(s: &str) -> Option<SpecialUse> {
        [
            SpecialUse::All,
            SpecialUse::Archive,
            SpecialUse::Drafts,
            SpecialUse::Flagged,
            SpecialUse::Junk,
            SpecialUse::Sent,
            SpecialUse::Trash,
        ]
        .into_iter()
        .find(|u| u.as_str().eq_ignore_ascii_case(s))
    }
}

/// Why an account change was refused.
#[derive(Debug, thiserror::Error)]
pub enum AccountError {
    /// Empty name, too long, or containing the hierarchy delimiter.
    #[error("invalid mailbox name {0:?}")]
    InvalidName(String),
    /// The mailbox does not exist (or is INBOX where INBOX cannot be used).
    #[error("no such mailbox {0:?}")]
    NoSuchMailbox(MailboxId),
    /// Moving a mailbox under itself or one of its children.
    #[error("a mailbox cannot be moved under itself")]
    Cycle,
    /// The bytes are not an automerge change.
    #[error("malformed account change: {0}")]
    Malformed(String),
}

/// One mailbox as the document records it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MailboxEntry {
    /// Its id.
    pub id: MailboxId,
    /// Last segment of its name.
    pub name: String,
    /// Parent, or none at the top level.
    pub parent: Option<MailboxId>,
    /// Special-use attribute.
    pub special_use: Option<SpecialUse>,
    /// Subscribed (LSUB / LIST (SUBSCRIBED)).
    pub subscribed: bool,
    /// Deleted. A deleted mailbox that still holds messages (appended or moved
    /// in concurrently with the delete) is shown again.
    pub deleted: bool,
}

/// The mailbox tree as clients see it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MailboxTree {
    /// Visible mailboxes by full name (`/`-separated).
    pub by_name: BTreeMap<String, MailboxId>,
    /// Mailboxes whose name another, canonical mailbox (the smallest id) also
    /// has: their messages belong in the canonical one.
    pub merged_into: BTreeMap<MailboxId, MailboxId>,
    /// Every mailbox with its record, including deleted ones.
    pub entries: BTreeMap<MailboxId, MailboxEntry>,
    /// The account's incarnation (0 for accounts made before there was
    /// one): part of every mailbox's UIDVALIDITY ([`MailboxId::uid_validity`]).
    pub incarnation: u64,
    /// The account's password hash (a PHC string), replicated with the
    /// account ([`AccountDoc::set_password`]); `None` if none was set.
    pub password: Option<String>,
    /// The account was deleted ([`AccountDoc::delete_account`]) on some
    /// replica: no login, no delivery, anywhere it reaches.
    pub deleted: bool,
    /// Which nodes replicate the account ([`AccountDoc::set_placement`]),
    /// as the node layer wrote it; `None`: every node that syncs it.
    pub placement: Option<String>,
    /// The account's quota ([`AccountDoc::set_quota`]); none by default.
    pub quota: Quota,
}

/// An account's quota, set by the operator for every replica of the
/// account: RFC 9208's STORAGE (in units of 1024 bytes) and MESSAGE
/// resources, each unlimited when `None`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Quota {
    /// At most this many KiB of messages (RFC 9208 §5.1).
    pub storage_kb: Option<u64>,
    /// At most this many messages (RFC 9208 §5.2).
    pub messages: Option<u64>,
}

impl Quota {
    /// As stored in the account document: `storage-kb=N,messages=N`, the
    /// limits set only; empty for none.
    pub fn encode(&self) -> String {
        let mut parts = Vec::new();
        if let Some(n) = self.storage_kb {
            parts.push(format!("storage-kb={n}"));
        }
        if let Some(n) = self.messages {
            parts.push(format!("messages={n}"));
        }
        parts.join(",")
    }

    /// Reads [`Quota::encode`]'s form; `None` if it is not that.
    pub fn parse(s: &str) -> Option<Quota> {
        let mut q = Quota::default();
        for part in s.split(',').filter(|p| !p.is_empty()) {
            let (key, value) = part.split_once('=')?;
            let n: u64 = value.parse().ok()?;
            match key {
                "storage-kb" if q.storage_kb.is_none() => q.storage_kb = Some(n),
                "messages" if q.messages.is_none() => q.messages = Some(n),
                _ => return None,
            }
        }
        Some(q)
    }

    /// Whether no limit is set.
    pub fn is_unlimited(&self) -> bool {
        self.storage_kb.is_none() && self.messages.is_none()
    }

    /// Whether an account using `used` (messages, bytes) may take `added`
    /// (messages, bytes) more. Nothing added is always allowed (a command
    /// that removes or changes flags never fails on quota).
    pub fn allows(&self, used: (u64, u64), added: (u64, u64)) -> bool {
        if added == (0, 0) {
            return true;
        }
        let messages_ok = self.messages.is_none_or(|max| used.0.saturating_add(added.0) <= max);
        let bytes_ok = self.storage_kb.is_none_or(|kb| used.1.saturating_add(added.1) <= kb.saturating_mul(1024));
        messages_ok && bytes_ok
    }
}

impl MailboxTree {
    /// Full name of a visible mailbox.
    pub fn name_of(&self, id: MailboxId) -> Option<&str> {
        self.by_name.iter().find(|(_, m)| **m == id).map(|(n, _)| n.as_str())
    }
}

/// Hierarchy delimiter shown to IMAP clients.
pub const DELIMITER: char = '/';

/// The automerge account document of one replica.
pub struct AccountDoc {
    doc: AutoCommit,
}

impl std::fmt::Debug for AccountDoc {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AccountDoc").finish_non_exhaustive()
    }
}

/// The root key of the account's incarnation (no `/`: never a mailbox field).
const INCARNATION: &str = "incarnation";
/// The root key of the account's password hash.
const PASSWORD: &str = "password";
/// The root key of the account's deletion.
const DELETED: &str = "deleted";
/// The root key of the account's placement (which nodes replicate it).
const PLACEMENT: &str = "placement";
/// The root key of the account's quota ([`Quota::encode`]).
const QUOTA: &str = "quota";

fn field(id: MailboxId, name: &str) -> String {
    format!("{}/{}", id.to_key(), name)
}

fn validate_name(name: &str) -> Result<(), AccountError> {
    if name.is_empty()
        || name.len() > MAILBOX_NAME_LEN_MAX
        || name.contains(DELIMITER)
        || name.chars().any(|c| c.is_control())
        || name.eq_ignore_ascii_case("INBOX")
    {
        return Err(AccountError::InvalidName(name.to_string()));
    }
    Ok(())
}

impl AccountDoc {
    /// An empty document for replica `replica` (automerge actor = replica id).
    pub fn new(replica: ReplicaId) -> Self {
        let doc = AutoCommit::new().with_actor(ActorId::from(replica.0.to_be_bytes()));
        AccountDoc { doc }
    }

    /// Loads a saved document (see [`AccountDoc::save`]) for `replica`.
    pub fn load(replica: ReplicaId, bytes: &[u8]) -> Result<Self, AccountError> {
        let doc = AutoCommit::load(bytes).map_err(|e| AccountError::Malformed(e.to_string()))?;
        Ok(AccountDoc { doc: doc.with_actor(ActorId::from(replica.0.to_be_bytes())) })
    }

    /// The whole document, compacted.
    pub fn save(&mut self) -> Vec<u8> {
        self.doc.save()
    }

    fn commit(&mut self) -> Vec<u8> {
        // Time 0: wall clocks play no part in the account document.
        self.doc.commit_with(CommitOptions::default().with_time(0));
        self.doc.get_last_local_change().map(|c| c.raw_bytes().to_vec()).unwrap_or_default()
    }

    fn place_value(name: &str, parent: Option<MailboxId>) -> String {
        format!("{}/{}", parent.map(|p| p.to_key()).unwrap_or_else(|| "-".into()), name)
    }

    fn exists(&self, id: MailboxId) -> bool {
        id == INBOX || matches!(self.doc.get(ROOT, field(id, "place")), Ok(Some(_)))
    }

    /// Creates mailbox `id` (the dot of the op that will carry the change).
    /// Returns the change to put into an [`crate::op::OpBody::Account`].
    pub fn create(
        &mut self,
        id: MailboxId,
        name: &str,
        parent: Option<MailboxId>,
        special_use: Option<SpecialUse>,
    ) -> Result<Vec<u8>, AccountError> {
        validate_name(name)?;
        if let Some(p) = parent {
            if !self.exists(p) {
                return Err(AccountError::NoSuchMailbox(p));
            }
        }
        let put = |doc: &mut AutoCommit, k: String, v: ScalarValue| doc.put(ROOT, k, v).expect("put on root map");
        put(&mut self.doc, field(id, "place"), Self::place_value(name, parent).into());
        if let Some(u) = special_use {
            put(&mut self.doc, field(id, "special"), u.as_str().into());
        }
        // Not subscribed: CREATE does not subscribe (clients SUBSCRIBE).
        Ok(self.commit())
    }

    /// Renames (and possibly re-parents) a mailbox. Name and parent are one
    /// value so concurrent renames cannot mix one's name with the other's parent.
    pub fn rename(&mut self, id: MailboxId, name: &str, parent: Option<MailboxId>) -> Result<Vec<u8>, AccountError> {
        validate_name(name)?;
        if id == INBOX || !self.exists(id) {
            return Err(AccountError::NoSuchMailbox(id));
        }
        let mut p = parent;
        let tree = self.entries();
        while let Some(pid) = p {
            if pid == id {
                return Err(AccountError::Cycle);
            }
            if !self.exists(pid) {
                return Err(AccountError::NoSuchMailbox(pid));
            }
            p = tree.get(&pid).and_then(|e| e.parent);
        }
        self.doc.put(ROOT, field(id, "place"), Self::place_value(name, parent)).expect("put on root map");
        Ok(self.commit())
    }

    /// Subscribes or unsubscribes. `fresh` is the dot of the op carrying the
    /// change, written so the put is never dropped as a no-op.
    pub fn set_subscribed(&mut self, id: MailboxId, on: bool, fresh: Dot) -> Result<Vec<u8>, AccountError> {
        if !self.exists(id) {
            return Err(AccountError::NoSuchMailbox(id));
        }
        let v = format!("{}{:?}", if on { '+' } else { '-' }, fresh);
        self.doc.put(ROOT, field(id, "sub"), v).expect("put on root map");
        Ok(self.commit())
    }

    /// Sets or clears the special-use attribute.
    pub fn set_special_use(&mut self, id: MailboxId, u: Option<SpecialUse>) -> Result<Vec<u8>, AccountError> {
        if id == INBOX || !self.exists(id) {
            return Err(AccountError::NoSuchMailbox(id));
        }
        let v = u.map(|u| u.as_str()).unwrap_or("");
        self.doc.put(ROOT, field(id, "special"), v).expect("put on root map");
        Ok(self.commit())
    }

    /// Marks a mailbox deleted (with a fresh value, see the module doc). The
    /// caller expunges the messages it observed in it; anything added
    /// concurrently keeps the mailbox visible.
    pub fn delete(&mut self, id: MailboxId, fresh: Dot) -> Result<Vec<u8>, AccountError> {
        if id == INBOX || !self.exists(id) {
            return Err(AccountError::NoSuchMailbox(id));
        }
        self.doc.put(ROOT, field(id, "deleted"), format!("{fresh:?}")).expect("put on root map");
        Ok(self.commit())
    }

    /// Names this incarnation of the account (see [`MailboxTree::incarnation`]):
    /// a random value chosen where the account is created. Two replicas
    /// that created the account apart agree on one of their values once
    /// they meet (automerge orders the concurrent puts), and the clients of
    /// the other see a new UIDVALIDITY once: they resync instead of trusting
    /// UIDs numbered apart.
    pub fn set_incarnation(&mut self, incarnation: u64) -> Vec<u8> {
        self.doc.put(ROOT, INCARNATION, format!("{incarnation:016x}")).expect("put on root map");
        self.commit()
    }

    /// Sets the account's password hash (a PHC string), for every replica
    /// of the account. A change made after seeing another replaces it;
    /// concurrent changes resolve as automerge orders concurrent puts (the
    /// same winner everywhere).
    pub fn set_password(&mut self, hash: &str) -> Vec<u8> {
        self.doc.put(ROOT, PASSWORD, hash).expect("put on root map");
        self.commit()
    }

    /// Deletes the account for every replica of it. Final: nothing puts
    /// the key back, so a deletion wins over any concurrent change.
    pub fn delete_account(&mut self) -> Vec<u8> {
        self.doc.put(ROOT, DELETED, "yes").expect("put on root map");
        self.commit()
    }

    /// Sets which nodes replicate the account, for every replica of it
    /// (the value is the node layer's: a replication factor or a list of
    /// nodes); an empty value clears it. The last change seen wins;
    /// concurrent changes resolve as automerge orders concurrent puts.
    pub fn set_placement(&mut self, placement: &str) -> Vec<u8> {
        self.doc.put(ROOT, PLACEMENT, placement).expect("put on root map");
        self.commit()
    }

    /// Sets the account's quota, for every replica of it (an unlimited
    /// one clears it). The last change seen wins; concurrent changes
    /// resolve as automerge orders concurrent puts.
    pub fn set_quota(&mut self, quota: &Quota) -> Vec<u8> {
        self.doc.put(ROOT, QUOTA, quota.encode()).expect("put on root map");
        self.commit()
    }

    /// The quota (unlimited if none is set, or if what is stored does not
    /// read as one).
    pub fn quota(&self) -> Quota {
        self.get_str(QUOTA).and_then(|q| Quota::parse(&q)).unwrap_or_default()
    }

    /// The placement, if one is set (see [`AccountDoc::set_placement`]).
    pub fn placement(&self) -> Option<String> {
        self.get_str(PLACEMENT).filter(|p| !p.is_empty())
    }

    /// Whether the account was deleted.
    pub fn deleted(&self) -> bool {
        self.get_str(DELETED).is_some()
    }

    /// The password hash, if one was set.
    pub fn password(&self) -> Option<String> {
        self.get_str(PASSWORD)
    }

    /// The incarnation (0 if none was set).
    pub fn incarnation(&self) -> u64 {
        self.get_str(INCARNATION).and_then(|s| u64::from_str_radix(&s, 16).ok()).unwrap_or(0)
    }

    /// Applies a change received from a peer. Changes arrive in causal order
    /// (the op log guarantees it); a malformed change changes nothing.
    pub fn apply_change(&mut self, bytes: &[u8]) -> Result<(), AccountError> {
        let change = Change::from_bytes(bytes.to_vec()).map_err(|e| AccountError::Malformed(e.to_string()))?;
        self.doc.apply_changes([change]).map_err(|e| AccountError::Malformed(e.to_string()))
    }

    fn get_str(&self, key: &str) -> Option<String> {
        match self.doc.get(ROOT, key) {
            Ok(Some((Value::Scalar(s), _))) => match s.as_ref() {
                ScalarValue::Str(s) => Some(s.to_string()),
                _ => None,
            },
            _ => None,
        }
    }

    /// Every mailbox record, INBOX included, deleted ones too.
    pub fn entries(&self) -> BTreeMap<MailboxId, MailboxEntry> {
        let mut out = BTreeMap::new();
        out.insert(
            INBOX,
            MailboxEntry {
                id: INBOX,
                name: "INBOX".into(),
                parent: None,
                special_use: None,
                subscribed: true,
                deleted: false,
            },
        );
        let ids: BTreeSet<MailboxId> =
            self.doc.keys(ROOT).filter_map(|k| k.split_once('/').and_then(|(id, _)| MailboxId::from_key(id))).collect();
        for id in ids {
            let Some(place) = self.get_str(&field(id, "place")) else {
                continue;
            };
            let Some((parent, name)) = place.split_once('/') else {
                continue;
            };
            let parent = if parent == "-" { None } else { MailboxId::from_key(parent) };
            let subscribed = self.get_str(&field(id, "sub")).is_some_and(|s| s.starts_with('+'));
            let special_use = self.get_str(&field(id, "special")).and_then(|s| SpecialUse::parse(&s));
            let deleted = self.get_str(&field(id, "deleted")).is_some();
            out.insert(id, MailboxEntry { id, name: name.to_string(), parent, special_use, subscribed, deleted });
        }
        out
    }

    /// The tree clients see. `occupied` says whether a mailbox holds messages:
    /// a deleted one that does is shown again, so no message is ever hidden.
    pub fn tree(&self, occupied: impl Fn(MailboxId) -> bool) -> MailboxTree {
        let entries = self.entries();
        let visible: BTreeSet<MailboxId> =
            entries.values().filter(|e| !e.deleted || occupied(e.id)).map(|e| e.id).collect();
        let mut tree = MailboxTree {
            entries: entries.clone(),
            incarnation: self.incarnation(),
            password: self.password(),
            deleted: self.deleted(),
            placement: self.placement(),
            quota: self.quota(),
            ..Default::default()
        };
        for id in &visible {
            let name = full_name(&entries, *id);
            match tree.by_name.get(&name) {
                // ids iterate in ascending order: the first holder of a name is canonical
                Some(canonical) => {
                    tree.merged_into.insert(*id, *canonical);
                }
                None => {
                    tree.by_name.insert(name, *id);
                }
            }
        }
        tree
    }
}

/// Full `/`-separated name. A parent chain that loops (two concurrent
/// re-parentings) is cut where it first revisits a mailbox.
fn full_name(entries: &BTreeMap<MailboxId, MailboxEntry>, id: MailboxId) -> String {
    let mut parts = Vec::new();
    let mut seen = BTreeSet::new();
    let mut cur = Some(id);
    while let Some(c) = cur {
        if !seen.insert(c) {
            break;
        }
        let Some(e) = entries.get(&c) else { break };
        parts.push(e.name.clone());
        cur = e.parent;
    }
    parts.reverse();
    parts.join(&DELIMITER.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mb(r: u64, c: u64) -> MailboxId {
        MailboxId(Dot::new(ReplicaId(r), c))
    }

    fn exchange(a: &mut AccountDoc, b: &mut AccountDoc, a_changes: &[Vec<u8>], b_changes: &[Vec<u8>]) {
        for c in a_changes {
            b.apply_change(c).unwrap();
        }
        for c in b_changes {
            a.apply_change(c).unwrap();
        }
    }

    #[test]
    fn same_name_creates_merge_into_smallest_id() {
        let mut a = AccountDoc::new(ReplicaId(1));
        let mut b = AccountDoc::new(ReplicaId(2));
        let ca = a.create(mb(1, 5), "Work", None, None).unwrap();
        let cb = b.create(mb(2, 3), "Work", None, None).unwrap();
        exchange(&mut a, &mut b, &[ca], &[cb]);
        let ta = a.tree(|_| false);
        assert_eq!(ta, b.tree(|_| false));
        assert_eq!(ta.by_name["Work"], mb(1, 5));
        assert_eq!(ta.merged_into[&mb(2, 3)], mb(1, 5));
    }

    #[test]
    fn concurrent_renames_pick_one_winner_everywhere() {
        let mut a = AccountDoc::new(ReplicaId(1));
        let mut b = AccountDoc::new(ReplicaId(2));
        let c0 = a.create(mb(1, 1), "x", None, None).unwrap();
        b.apply_change(&c0).unwrap();
        let ra = a.rename(mb(1, 1), "from-a", None).unwrap();
        let rb = b.rename(mb(1, 1), "from-b", None).unwrap();
        exchange(&mut a, &mut b, &[ra], &[rb]);
        assert_eq!(a.tree(|_| false), b.tree(|_| false));
        assert_eq!(a.tree(|_| false).by_name.len(), 2); // INBOX + the winner
    }

    #[test]
    fn resubscribe_wins_over_concurrent_unsubscribe() {
        let mut a = AccountDoc::new(ReplicaId(1));
        let mut b = AccountDoc::new(ReplicaId(2));
        let c0 = a.create(mb(1, 1), "x", None, None).unwrap();
        b.apply_change(&c0).unwrap();
        // B unsubscribes and subscribes again; A concurrently unsubscribes once.
        let b1 = b.set_subscribed(mb(1, 1), false, Dot::new(ReplicaId(2), 2)).unwrap();
        let b2 = b.set_subscribed(mb(1, 1), true, Dot::new(ReplicaId(2), 3)).unwrap();
        let a1 = a.set_subscribed(mb(1, 1), false, Dot::new(ReplicaId(1), 2)).unwrap();
        exchange(&mut a, &mut b, &[a1], &[b1, b2]);
        // B's later op has the higher Lamport counter and was not dropped as a no-op.
        assert!(a.entries()[&mb(1, 1)].subscribed);
        assert_eq!(a.entries(), b.entries());
    }

    #[test]
    fn deleted_mailbox_with_messages_reappears() {
        let mut a = AccountDoc::new(ReplicaId(1));
        a.create(mb(1, 1), "x", None, None).unwrap();
        a.delete(mb(1, 1), Dot::new(ReplicaId(1), 2)).unwrap();
        assert!(!a.tree(|_| false).by_name.contains_key("x"));
        assert!(a.tree(|id| id == mb(1, 1)).by_name.contains_key("x"));
    }

    #[test]
    fn malformed_change_is_refused() {
        let mut a = AccountDoc::new(ReplicaId(1));
        assert!(a.apply_change(b"not a change").is_err());
        assert!(a.create(mb(1, 1), "a/b", None, None).is_err());
        assert!(a.create(mb(1, 1), "inbox", None, None).is_err());
    }
}
