//! The sort cache: per mailbox, what SORT and THREAD compare of each
//! message, the mailbox's order under each of the last few criteria lists
//! and its threads by each algorithm, shared by every session of the
//! server, so that a SORT or THREAD of a large mailbox does not read every
//! message's envelope and sort keys again. Threads are kept only over the
//! whole mailbox and dropped when a message comes or goes (one message can
//! join or split threads anywhere); a THREAD of part of the mailbox, or
//! after a change, is computed from the kept records.
//!
//! An entry is keyed by (account, mailbox) and holds the mailbox's
//! UIDVALIDITY and the HIGHESTMODSEQ it is up to date with. A SORT brings
//! it up to date from the store's own indexes of what changed since that
//! MODSEQ (CONDSTORE's CHANGEDSINCE and QRESYNC's VANISHED): the work done
//! is the number of messages added or expunged, not the mailbox's size. A
//! flag change changes nothing SORT compares (its facts come from the
//! envelope and the body's header, both fixed), so it only moves the MODSEQ
//! on. The entry is built again from every message when the store cannot
//! say what changed (its expunge rows were forgotten, more than
//! [`REFRESH_MAX`] changes, another UIDVALIDITY) or when what it holds
//! does not add up to the mailbox's message count.
//!
//! A message whose body is not here (a partial replica) sorts as an empty
//! header, as without the cache; the entry remembers it (at most
//! [`AWAITING_MAX`] such messages, or the entry is not kept) and reads it
//! again once its body has arrived, which need not raise any MODSEQ.
//!
//! Orders are by the criteria, ties by UID: within any session's view
//! sequence numbers rise with UIDs, so this is SORT's order (ties by
//! sequence number) for every session at once; a session keeps the
//! messages of its view (and of the search) in that order.
//!
//! Bounded by bytes in total ([`crate::Config::sort_cache_bytes`]): the
//! least recently used entries are dropped past it, and a mailbox whose
//! entry alone could not fit is not cached (SORT reads it as before).

use crate::command::sort::{sort_order, Facts, SortFields};
use crate::command::thread::{Threading, Threads};
use crate::context::AWAITING_MAX;
use imap_codec::imap_types::extensions::sort::SortCriterion;
use starling_model::{BlobId, MailboxId, MessageId};
use starling_store::sortkeys::Wanted;
use starling_store::{IdHash, MailboxStatus, MessageInfo, Reader, StoreError};
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

/// Default of [`crate::Config::sort_cache_bytes`]: 64 MiB.
pub const SORT_CACHE_BYTES_DEFAULT: usize = 64 << 20;

/// Messages added or expunged since an entry's MODSEQ that are applied to
/// it one by one at most; past it the entry is built again.
pub const REFRESH_MAX: usize = 10_000;

/// Criteria lists whose order an entry keeps, the most recently used.
pub const ORDERS_MAX: usize = 8;

/// New messages placed in a kept order one by one (binary search) at most;
/// more and the order is sorted again from the facts.
const INSERT_MAX: usize = 256;

/// Every key of the header, so that one entry serves every criterion and
/// THREAD.
const EVERY_KEY: Wanted = Wanted { subject: true, addresses: true, threading: true };

/// What one message costs an entry at least (its facts, its place in an
/// order): a mailbox with more messages than the bound allows is not cached.
fn message_bytes_min() -> usize {
    std::mem::size_of::<(MessageId, Keyed)>() + 4
}

/// Counters of the cache (for tests and operators).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SortCacheStats {
    /// Entries kept now.
    pub entries: usize,
    /// Their bytes (estimated: facts, strings, orders).
    pub bytes: usize,
    /// SORTs answered from an entry already up to date.
    pub hits: u64,
    /// Entries brought up to date from the changes since their MODSEQ.
    pub refreshes: u64,
    /// Entries built from every message.
    pub builds: u64,
    /// Entries dropped for the byte bound.
    pub evictions: u64,
    /// THREADs answered from threads kept over the whole mailbox.
    pub threads_kept: u64,
}

/// The cache (one per server, [`crate::Shared`]).
pub struct SortCache {
    max_bytes: usize,
    enabled: AtomicBool,
    inner: Mutex<Inner>,
    hits: AtomicU64,
    refreshes: AtomicU64,
    builds: AtomicU64,
    evictions: AtomicU64,
    threads_kept: AtomicU64,
}

#[derive(Default)]
struct Inner {
    tick: u64,
    slots: HashMap<(String, MailboxId), Slot>,
}

struct Slot {
    entry: Arc<Mutex<Entry>>,
    bytes: usize,
    used: u64,
}

/// One mailbox's facts and orders.
#[derive(Default)]
struct Entry {
    /// Built at least once (else empty, to be built).
    built: bool,
    uid_validity: u32,
    modseq: u64,
    /// Per message, by UID: the message it is (a UID names one message, but
    /// a changed row is checked) and the keys SORT compares of it.
    facts: Vec<(MessageId, Keyed)>,
    /// UIDs whose body was not here when their facts were read, ascending.
    awaiting: Vec<u32>,
    /// (criteria, UIDs in their order), most recently used first.
    orders: Vec<(Vec<SortCriterion>, Vec<u32>)>,
    /// THREAD's answer over every message (indices into `facts`), per
    /// algorithm (so at most two); dropped when a message comes or goes.
    threads: Vec<(Threading, Threads)>,
    bytes: usize,
}

/// How an entry was brought up to date for one SORT.
enum Fresh {
    Hit,
    Refreshed,
    Built,
    /// The reader is older than the entry: not answered from it.
    Older,
}

impl SortCache {
    /// A cache of at most `max_bytes` (0: none).
    pub fn new(max_bytes: usize) -> SortCache {
        SortCache {
            max_bytes,
            enabled: AtomicBool::new(max_bytes > 0),
            inner: Mutex::default(),
            hits: AtomicU64::new(0),
            refreshes: AtomicU64::new(0),
            builds: AtomicU64::new(0),
            evictions: AtomicU64::new(0),
            threads_kept: AtomicU64::new(0),
        }
    }

    /// Switches the cache off (every entry dropped) or back on (if it has
    /// bytes): SORT then reads every message as without it. Tests compare
    /// the two.
    pub fn set_enabled(&self, on: bool) {
        self.enabled.store(on && self.max_bytes > 0, Ordering::SeqCst);
        if !on {
            self.lock().slots.clear();
        }
    }

    /// The counters now.
    pub fn stats(&self) -> SortCacheStats {
        let inner = self.lock();
        SortCacheStats {
            entries: inner.slots.len(),
            bytes: inner.slots.values().map(|s| s.bytes).sum(),
            hits: self.hits.load(Ordering::Relaxed),
            refreshes: self.refreshes.load(Ordering::Relaxed),
            builds: self.builds.load(Ordering::Relaxed),
            evictions: self.evictions.load(Ordering::Relaxed),
            threads_kept: self.threads_kept.load(Ordering::Relaxed),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Calls `f` with the UIDs of mailbox `id` as `reader` sees it, in the
    /// order of `criteria` (ties by UID), and the messages among them whose
    /// body was not here, as (UID, body) by UID; `None` (and `f` not
    /// called) when the cache cannot answer: switched off, the mailbox too
    /// large for it, or `reader` older than the entry (another session
    /// brought it further meanwhile).
    pub(crate) fn with_order<T>(
        &self,
        account: &str,
        id: MailboxId,
        reader: &Reader,
        criteria: &[SortCriterion],
        f: impl FnOnce(&[u32], &[(u32, BlobId)]) -> T,
    ) -> Result<Option<T>, StoreError> {
        self.with_entry(account, id, reader, |e| {
            let at = e.order_for(criteria);
            let awaiting: Vec<(u32, BlobId)> = e
                .awaiting
                .iter()
                .filter_map(|&u| e.find(u).and_then(|i| e.facts[i].1.awaiting).map(|b| (u, b)))
                .collect();
            f(&e.orders[at].1, &awaiting)
        })
    }

    /// Calls `f` with THREAD's answer by `algorithm` over the messages of
    /// mailbox `id` (as `reader` sees it) to which `seq_of` gives a
    /// sequence number, and those messages as (UID, sequence number) in
    /// UID order, which the answer's indices name. The answer over every
    /// message is kept until a message comes or goes. `None` as for
    /// [`SortCache::with_order`].
    pub(crate) fn with_threads<T>(
        &self,
        account: &str,
        id: MailboxId,
        reader: &Reader,
        algorithm: Threading,
        seq_of: impl Fn(u32) -> Option<u32>,
        f: impl FnOnce(&Threads, &[(u32, u32)]) -> T,
    ) -> Result<Option<T>, StoreError> {
        self.with_entry(account, id, reader, |e| {
            let mut chosen: Vec<usize> = Vec::with_capacity(e.facts.len());
            let mut numbers: Vec<(u32, u32)> = Vec::with_capacity(e.facts.len());
            for (i, (_, k)) in e.facts.iter().enumerate() {
                if let Some(seq) = seq_of(k.uid) {
                    chosen.push(i);
                    numbers.push((k.uid, seq));
                }
            }
            let every = chosen.len() == e.facts.len();
            if let Some((_, kept)) = e.threads.iter().find(|(a, _)| every && *a == algorithm) {
                self.threads_kept.fetch_add(1, Ordering::Relaxed);
                return f(kept, &numbers);
            }
            let facts: Vec<&Keyed> = chosen.iter().map(|&i| &e.facts[i].1).collect();
            let threads = Threads::of(algorithm, &facts);
            let out = f(&threads, &numbers);
            if every {
                e.bytes += threads.bytes() + 64;
                e.threads.push((algorithm, threads));
            }
            out
        })
    }

    /// Brings mailbox `id`'s entry up to date with `reader` (built if
    /// need be) and calls `f` with it, then keeps it within the bound;
    /// `None` when the cache cannot answer (see [`SortCache::with_order`]).
    fn with_entry<T>(
        &self,
        account: &str,
        id: MailboxId,
        reader: &Reader,
        f: impl FnOnce(&mut Entry) -> T,
    ) -> Result<Option<T>, StoreError> {
        if !self.enabled.load(Ordering::Relaxed) {
            return Ok(None);
        }
        let status = reader.status(id)?;
        if (status.messages as u128) * (message_bytes_min() as u128) > self.max_bytes as u128 {
            return Ok(None);
        }
        let key = (account.to_string(), id);
        let entry = {
            let mut inner = self.lock();
            inner.tick += 1;
            let tick = inner.tick;
            let slot = inner.slots.entry(key.clone()).or_insert_with(|| Slot {
                entry: Arc::new(Mutex::new(Entry::default())),
                bytes: 0,
                used: tick,
            });
            slot.used = tick;
            slot.entry.clone()
        };
        let mut e = entry.lock().unwrap_or_else(|p| p.into_inner());
        let fresh = match e.bring_up_to_date(reader, id, &status) {
            Ok(f) => f,
            Err(err) => {
                *e = Entry::default();
                drop(e);
                self.forget(&key, &entry);
                return Err(err);
            }
        };
        let counter = match fresh {
            Fresh::Older => return Ok(None),
            Fresh::Hit => &self.hits,
            Fresh::Refreshed => &self.refreshes,
            Fresh::Built => &self.builds,
        };
        counter.fetch_add(1, Ordering::Relaxed);
        let out = f(&mut e);
        let keep = e.awaiting.len() <= AWAITING_MAX;
        if !keep {
            *e = Entry::default();
        }
        let bytes = e.bytes;
        drop(e);
        if keep {
            self.account_for(&key, &entry, bytes);
        } else {
            self.forget(&key, &entry);
        }
        Ok(Some(out))
    }

    /// Drops `key`'s slot if it still holds `entry`.
    fn forget(&self, key: &(String, MailboxId), entry: &Arc<Mutex<Entry>>) {
        let mut inner = self.lock();
        if inner.slots.get(key).is_some_and(|s| Arc::ptr_eq(&s.entry, entry)) {
            inner.slots.remove(key);
        }
    }

    /// Notes `entry`'s size and drops the least recently used entries
    /// while the total is over the bound (this one too, if it alone is).
    fn account_for(&self, key: &(String, MailboxId), entry: &Arc<Mutex<Entry>>, bytes: usize) {
        let mut inner = self.lock();
        match inner.slots.get_mut(key) {
            Some(s) if Arc::ptr_eq(&s.entry, entry) => s.bytes = bytes,
            _ => return,
        }
        let mut total: usize = inner.slots.values().map(|s| s.bytes).sum();
        while total > self.max_bytes {
            let Some(oldest) = inner.slots.iter().min_by_key(|(_, s)| s.used).map(|(k, _)| k.clone()) else { break };
            if let Some(s) = inner.slots.remove(&oldest) {
                total -= s.bytes;
                self.evictions.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}

impl Entry {
    fn find(&self, uid: u32) -> Option<usize> {
        self.facts.binary_search_by_key(&uid, |(_, f)| f.uid).ok()
    }

    fn facts_of(&self, uid: u32) -> &Keyed {
        &self.facts[self.find(uid).expect("an ordered UID has facts")].1
    }

    /// Brings the entry to `status` (the mailbox as `reader` sees it).
    fn bring_up_to_date(
        &mut self,
        reader: &Reader,
        id: MailboxId,
        status: &MailboxStatus,
    ) -> Result<Fresh, StoreError> {
        if !self.built || self.uid_validity != status.uid_validity {
            self.build(reader, id, status)?;
            return Ok(Fresh::Built);
        }
        if status.highest_modseq < self.modseq {
            return Ok(Fresh::Older);
        }
        let mut fresh = Fresh::Hit;
        if status.highest_modseq > self.modseq {
            if !self.refresh(reader, id, status.highest_modseq)? {
                self.build(reader, id, status)?;
                return Ok(Fresh::Built);
            }
            fresh = Fresh::Refreshed;
        }
        if !self.awaiting.is_empty() && self.bodies_arrived(reader, id)? {
            fresh = Fresh::Refreshed;
        }
        if self.facts.len() as u64 != status.messages {
            // What it holds does not add up: built again, not trusted.
            self.build(reader, id, status)?;
            return Ok(Fresh::Built);
        }
        if !matches!(fresh, Fresh::Hit) {
            self.bytes = self.size();
        }
        Ok(fresh)
    }

    /// Every message read again (the orders are sorted again when asked).
    fn build(&mut self, reader: &Reader, id: MailboxId, status: &MailboxStatus) -> Result<(), StoreError> {
        let infos = reader.messages(id, 1, usize::MAX)?;
        let facts = read_facts(reader, infos);
        *self = Entry {
            built: true,
            uid_validity: status.uid_validity,
            modseq: status.highest_modseq,
            awaiting: facts.iter().filter(|(_, f)| f.awaiting.is_some()).map(|(_, f)| f.uid).collect(),
            facts,
            orders: Vec::new(),
            threads: Vec::new(),
            bytes: 0,
        };
        self.bytes = self.size();
        Ok(())
    }

    /// Applies what changed after the entry's MODSEQ up to `to`; false if
    /// the store cannot say (its expunge rows forgotten) or it is more than
    /// [`REFRESH_MAX`] messages.
    fn refresh(&mut self, reader: &Reader, id: MailboxId, to: u64) -> Result<bool, StoreError> {
        let Some(gone) = reader.vanished_since(id, self.modseq)? else { return Ok(false) };
        let changed = reader.changed_since(id, self.modseq, REFRESH_MAX + 1)?;
        if gone.len() > REFRESH_MAX || changed.len() > REFRESH_MAX {
            return Ok(false);
        }
        // A UID now naming another message than the entry's (or a new one).
        let mut added: Vec<MessageInfo> = Vec::new();
        let mut removed: Vec<u32> = gone.into_iter().filter(|&u| self.find(u).is_some()).collect();
        for m in changed {
            match self.find(m.uid) {
                Some(i) if self.facts[i].0 == m.message => {}
                Some(_) => {
                    removed.push(m.uid);
                    added.push(m);
                }
                None => added.push(m),
            }
        }
        self.replace(reader, removed, added);
        self.modseq = to;
        Ok(true)
    }

    /// Reads again the messages whose body has arrived since; whether any had.
    fn bodies_arrived(&mut self, reader: &Reader, id: MailboxId) -> Result<bool, StoreError> {
        let awaited: Vec<(u32, BlobId)> = self
            .awaiting
            .iter()
            .filter_map(|&u| self.find(u).and_then(|i| self.facts[i].1.awaiting).map(|b| (u, b)))
            .collect();
        let blobs: Vec<BlobId> = awaited.iter().map(|&(_, b)| b).collect();
        // Only whether keys are stored: nothing decoded but the date.
        let none = Wanted { subject: false, addresses: false, threading: false };
        let found = reader.sort_keys(&blobs, none)?;
        let arrived: Vec<u32> = awaited.iter().zip(&found).filter(|(_, k)| k.is_some()).map(|(&(u, _), _)| u).collect();
        if arrived.is_empty() {
            return Ok(false);
        }
        let ranges: Vec<(u32, u32)> = arrived.iter().map(|&u| (u, u)).collect();
        let infos = reader.messages_in(id, &ranges)?;
        self.replace(reader, arrived, infos);
        Ok(true)
    }

    /// Takes `removed` UIDs out (facts and orders) and puts `added` in.
    fn replace(&mut self, reader: &Reader, mut removed: Vec<u32>, mut added: Vec<MessageInfo>) {
        if !removed.is_empty() || !added.is_empty() {
            // A thread may change anywhere when one message comes or goes.
            self.threads.clear();
        }
        removed.sort_unstable();
        removed.dedup();
        if !removed.is_empty() {
            let out = |u: &u32| removed.binary_search(u).is_err();
            self.facts.retain(|(_, f)| out(&f.uid));
            self.awaiting.retain(out);
            for (_, order) in &mut self.orders {
                order.retain(out);
            }
        }
        added.sort_by_key(|m| m.uid);
        added.dedup_by_key(|m| m.uid);
        if added.is_empty() {
            return;
        }
        let new = read_facts(reader, added);
        let fresh: Vec<u32> = new.iter().map(|(_, f)| f.uid).collect();
        room(&mut self.facts, new.len());
        for (m, f) in new {
            let at = self.facts.partition_point(|(_, g)| g.uid < f.uid);
            if f.awaiting.is_some() {
                let a = self.awaiting.partition_point(|&u| u < f.uid);
                self.awaiting.insert(a, f.uid);
            }
            self.facts.insert(at, (m, f));
        }
        // Each order now lacks exactly the new messages.
        let orders = std::mem::take(&mut self.orders);
        for (criteria, mut order) in orders {
            if fresh.len() > INSERT_MAX {
                order = self.sorted(&criteria);
            } else {
                room(&mut order, fresh.len());
                for &u in &fresh {
                    let f = self.facts_of(u);
                    let at = order.partition_point(|&o| sort_order(&criteria, self.facts_of(o), f).is_lt());
                    order.insert(at, u);
                }
            }
            self.orders.push((criteria, order));
        }
    }

    /// Index in `orders` of `criteria`'s order (sorted now if not kept),
    /// moved to the front.
    fn order_for(&mut self, criteria: &[SortCriterion]) -> usize {
        match self.orders.iter().position(|(c, _)| c.as_slice() == criteria) {
            Some(i) => {
                let o = self.orders.remove(i);
                self.orders.insert(0, o);
            }
            None => {
                let order = self.sorted(criteria);
                self.orders.insert(0, (criteria.to_vec(), order));
                self.orders.truncate(ORDERS_MAX);
                self.bytes = self.size();
            }
        }
        0
    }

    /// Every UID in `criteria`'s order, ties by UID.
    fn sorted(&self, criteria: &[SortCriterion]) -> Vec<u32> {
        let mut idx: Vec<u32> = (0..self.facts.len() as u32).collect();
        idx.sort_unstable_by(|&a, &b| sort_order(criteria, &self.facts[a as usize].1, &self.facts[b as usize].1));
        idx.into_iter().map(|i| self.facts[i as usize].1.uid).collect()
    }

    /// Its bytes, estimated: the facts with their strings (and what the
    /// allocator adds to each), the orders.
    fn size(&self) -> usize {
        let boxed = |n: usize| if n == 0 { 0 } else { n.div_ceil(16) * 16 + 16 };
        let strings: usize = self
            .facts
            .iter()
            .map(|(_, f)| {
                boxed(f.subject.len())
                    + boxed(f.from.len())
                    + boxed(f.to.len())
                    + boxed(f.cc.len())
                    + boxed(f.display_from.len())
                    + boxed(f.display_to.len())
                    + boxed(f.references.len() * std::mem::size_of::<IdHash>())
            })
            .sum();
        let orders: usize = self.orders.iter().map(|(c, o)| o.capacity() * 4 + c.len() * 16 + 64).sum();
        let threads: usize = self.threads.iter().map(|(_, t)| t.bytes() + 64).sum(); // as `with_threads` adds
        self.facts.capacity() * std::mem::size_of::<(MessageId, Keyed)>()
            + strings
            + orders
            + threads
            + self.awaiting.len() * 4
    }
}

/// Makes room in `v` for `more` elements with a sixteenth to spare, not
/// the doubling `push` and `insert` would make: an entry's largest vectors
/// stay within ~6% of their length (a 100,000-message entry doubled is
/// ~20 MB more), and a refresh still copies them only now and then.
fn room<T>(v: &mut Vec<T>, more: usize) {
    if v.capacity() - v.len() < more {
        v.reserve_exact(more + v.len() / 16);
    }
}

/// What the cache keeps of a message: the keys SORT and THREAD compare,
/// each string as long as it is.
struct Keyed {
    uid: u32,
    arrival: i64,
    sent: i64,
    size: u64,
    subject: Box<str>,
    from: Box<[u8]>,
    to: Box<[u8]>,
    cc: Box<[u8]>,
    display_from: Box<str>,
    display_to: Box<str>,
    reply: bool,
    message_id: Option<IdHash>,
    references: Box<[IdHash]>,
    /// Its body was not here when it was read.
    awaiting: Option<BlobId>,
}

impl Keyed {
    fn of(f: Facts) -> Keyed {
        Keyed {
            uid: f.uid,
            arrival: f.arrival,
            sent: f.sent,
            size: f.size,
            subject: f.subject.into_boxed_str(),
            from: f.from.into_boxed_slice(),
            to: f.to.into_boxed_slice(),
            cc: f.cc.into_boxed_slice(),
            display_from: f.display_from.into_boxed_str(),
            display_to: f.display_to.into_boxed_str(),
            reply: f.reply,
            message_id: f.message_id,
            references: f.references.into_boxed_slice(),
            awaiting: f.awaiting,
        }
    }
}

impl SortFields for Keyed {
    fn arrival(&self) -> i64 {
        self.arrival
    }
    fn sent(&self) -> i64 {
        self.sent
    }
    fn size(&self) -> u64 {
        self.size
    }
    fn subject(&self) -> &str {
        &self.subject
    }
    fn from(&self) -> &[u8] {
        &self.from
    }
    fn to(&self) -> &[u8] {
        &self.to
    }
    fn cc(&self) -> &[u8] {
        &self.cc
    }
    fn display_from(&self) -> &str {
        &self.display_from
    }
    fn display_to(&self) -> &str {
        &self.display_to
    }
    fn reply(&self) -> bool {
        self.reply
    }
    fn message_id(&self) -> Option<IdHash> {
        self.message_id
    }
    fn references(&self) -> &[IdHash] {
        &self.references
    }
    /// Ties by UID: within any session's view sequence numbers rise with
    /// UIDs, so this is SORT's order for every session at once.
    fn tie(&self) -> u32 {
        self.uid
    }
}

/// The facts of `infos` (by UID) with every header key.
fn read_facts(reader: &Reader, infos: Vec<MessageInfo>) -> Vec<(MessageId, Keyed)> {
    let ids: Vec<MessageId> = infos.iter().map(|m| m.message).collect();
    let matched: Vec<(u32, MessageInfo)> = infos.into_iter().map(|m| (m.uid, m)).collect();
    let facts = Facts::read_all(reader, &matched, Some(EVERY_KEY));
    ids.into_iter().zip(facts).map(|(m, f)| (m, Keyed::of(f))).collect()
}
