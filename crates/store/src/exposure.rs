//! Exposure after k peers: what this node's peers hold *now*, so that the
//! answer to a client that reports a change (LMTP's `250`, APPEND's `OK`,
//! any IMAP response after a command that wrote, a new UIDNEXT) can wait
//! until k pinned peers hold it as well (see `docs/semantics.md`,
//! "Failover and k").
//!
//! Two facts come from the peers' links, in memory only:
//! * each peer's acknowledged version of each account
//!   ([`Store::note_ack`]): a peer that acknowledged this replica's counter
//!   `n` holds every op this replica wrote up to `n`, and everything they
//!   depend on (ops apply in causal order), durably (a peer acknowledges
//!   only committed ops);
//! * the bodies a peer said it holds ([`Store::note_held`]: the sync
//!   protocol's `Held` frame, sent after the peer committed them), the
//!   most recent [`HELD_BODIES_MAX`] per peer.
//!
//! A change made here is an [`Exposure`]: the account, this replica's
//! counter after the write, and the bodies it brought. [`Store::holders`]
//! counts the pinned peers holding it; [`Store::expose`] waits, within
//! the policy's deadline, until there are enough. Forgetting these facts
//! (a restart) only makes a wait longer, never an answer early.

use crate::*;
use std::collections::{HashSet, VecDeque};
use std::time::Duration;

/// Bodies remembered per peer as held: the most recent ones it reported.
/// A wait for a body the peer reported earlier than that many others
/// ends at its deadline (then the policy decides), never early.
pub const HELD_BODIES_MAX: usize = 16_384;

/// Longest [`ExposurePolicy::wait`] a configuration may set.
pub const EXPOSURE_WAIT_MAX: Duration = Duration::from_secs(600);

/// A change made on this replica that a client is about to be told of.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Exposure {
    /// The account.
    pub account: String,
    /// This replica's own counter in the account's version after the change.
    pub upto: u64,
    /// Bodies the change brought (a delivery's, an APPEND's).
    pub bodies: Vec<BlobId>,
}

/// What to do when fewer than the wanted peers hold a change by the deadline.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum WhenShort {
    /// Answer as if k were 0, counted in a metric and logged.
    #[default]
    Degrade,
    /// Answer with a temporary error where the protocol allows one (LMTP
    /// `451`; the delivery is withdrawn first), degrade elsewhere.
    Refuse,
}

/// How many peers must hold a change before a client is told of it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ExposurePolicy {
    /// k: pinned peers that must hold the change (0: answer at once, after
    /// the local commit).
    pub peers: usize,
    /// Longest wait for them.
    pub wait: Duration,
    /// Then what.
    pub when_short: WhenShort,
    /// Pinned peers per account: an account with fewer than `peers` is
    /// short at once, without waiting. Shared: the node changes them while
    /// it runs, and every exposure reads the current ones.
    pub pinned: PinnedPeers,
}

/// The pinned peers of each account, shared between the node (which
/// changes them when a peer joins, is placed, let go or removed) and every
/// copy of an [`ExposurePolicy`].
#[derive(Clone, Debug, Default)]
pub struct PinnedPeers(Arc<std::sync::RwLock<BTreeMap<String, Vec<ReplicaId>>>>);

impl PinnedPeers {
    /// An account's pinned peers now.
    pub fn of(&self, account: &str) -> Vec<ReplicaId> {
        self.0.read().unwrap_or_else(PoisonError::into_inner).get(account).cloned().unwrap_or_default()
    }

    /// Replaces them all.
    pub fn set(&self, pinned: BTreeMap<String, Vec<ReplicaId>>) {
        *self.0.write().unwrap_or_else(PoisonError::into_inner) = pinned;
    }

    /// Sets one account's.
    pub fn insert(&self, account: String, peers: Vec<ReplicaId>) {
        self.0.write().unwrap_or_else(PoisonError::into_inner).insert(account, peers);
    }
}

impl From<BTreeMap<String, Vec<ReplicaId>>> for PinnedPeers {
    fn from(m: BTreeMap<String, Vec<ReplicaId>>) -> Self {
        PinnedPeers(Arc::new(std::sync::RwLock::new(m)))
    }
}

impl PartialEq for PinnedPeers {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
            || *self.0.read().unwrap_or_else(PoisonError::into_inner)
                == *other.0.read().unwrap_or_else(PoisonError::into_inner)
    }
}

impl Eq for PinnedPeers {}

/// How an exposure ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Exposed {
    /// Nothing to wait for (k = 0, or nothing was written).
    Local,
    /// Enough peers hold it.
    Held {
        /// How many.
        peers: usize,
    },
    /// Fewer than wanted by the deadline (or fewer are pinned).
    Short {
        /// How many held it.
        peers: usize,
    },
}

/// What the peers hold, as their links last said.
#[derive(Default)]
pub(crate) struct Live {
    /// (account number, peer) → this replica's counter the peer holds.
    own: BTreeMap<(u32, ReplicaId), u64>,
    /// Bodies each peer said it holds, most recent last.
    bodies: BTreeMap<ReplicaId, Recent>,
    /// (account number, peer) → the peer's version as its last `Have` on
    /// the open link said (cleared when a link to it opens).
    have: BTreeMap<(u32, ReplicaId), VersionVector>,
    /// Open links per peer ([`Store::link_up`]).
    up: BTreeMap<ReplicaId, usize>,
    /// account number → the latest probe a catch-up wait asked the links
    /// to send ([`Store::probe_wanted`]).
    probe_wanted: BTreeMap<u32, u64>,
    /// (account number, peer) → the highest probe the peer answered on
    /// its open link.
    probe_answered: BTreeMap<(u32, ReplicaId), u64>,
}

/// A link to a peer is open while this lives ([`Store::link_up`]).
pub struct LinkUp {
    core: Arc<Core>,
    peer: ReplicaId,
}

impl std::fmt::Debug for LinkUp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LinkUp").field("peer", &self.peer).finish()
    }
}

impl Drop for LinkUp {
    fn drop(&mut self) {
        let mut live = self.core.live.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(n) = live.up.get_mut(&self.peer) {
            *n -= 1;
            if *n == 0 {
                live.up.remove(&self.peer);
            }
        }
    }
}

/// How often a wait for catch-up looks again, at least (a commit that
/// catches up wakes it at once, unless it lands between look and wait).
const CATCH_UP_POLL: Duration = Duration::from_millis(50);

#[derive(Default)]
struct Recent {
    order: VecDeque<BlobId>,
    set: HashSet<BlobId>,
}

impl Recent {
    fn insert(&mut self, id: BlobId) -> bool {
        if !self.set.insert(id) {
            return false;
        }
        self.order.push_back(id);
        if self.order.len() > HELD_BODIES_MAX {
            if let Some(old) = self.order.pop_front() {
                self.set.remove(&old);
            }
        }
        assert!(self.order.len() == self.set.len() && self.set.len() <= HELD_BODIES_MAX);
        true
    }
}

/// Exposure counters since open (for metrics).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ExposureStats {
    /// Exposures that waited for peers.
    pub waits: u64,
    /// Of those, the ones short of k by the deadline.
    pub short: u64,
    /// Milliseconds spent waiting, in total.
    pub wait_ms: u64,
    /// Times new UIDs were shown without having caught up with k peers.
    pub catch_up_short: u64,
}

impl Store {
    /// This replica's counter in `account` now, with the bodies given: what
    /// a change just committed is exposed as.
    pub fn exposure(&self, account: &str, bodies: Vec<BlobId>) -> Result<Exposure, StoreError> {
        Ok(Exposure {
            account: account.to_string(),
            upto: self.version(account)?.get(self.replica_id(account)?),
            bodies,
        })
    }

    /// `peer` committed these bodies (its `Held` frame): remembered, in
    /// memory, for [`Store::holders`].
    pub fn note_held(&self, peer: ReplicaId, ids: &[BlobId]) {
        let mut live = self.core.live.lock().unwrap_or_else(PoisonError::into_inner);
        let recent = live.bodies.entry(peer).or_default();
        let mut news = false;
        for id in ids {
            news |= recent.insert(*id);
        }
        drop(live);
        if news {
            self.core.held_changed.send_modify(|n| *n += 1);
        }
    }

    /// An account was forgotten: what the links said of it goes.
    pub(crate) fn forget_live(&self, number: u32) {
        let mut live = self.core.live.lock().unwrap_or_else(PoisonError::into_inner);
        live.own.retain(|(n, _), _| *n != number);
        live.have.retain(|(n, _), _| *n != number);
        live.probe_wanted.remove(&number);
        live.probe_answered.retain(|(n, _), _| *n != number);
    }

    /// Called by [`Store::note_ack`]: the live part.
    pub(crate) fn note_live_ack(&self, number: u32, me: ReplicaId, peer: ReplicaId, vv: &VersionVector) {
        let own = vv.get(me);
        let mut live = self.core.live.lock().unwrap_or_else(PoisonError::into_inner);
        live.have.insert((number, peer), vv.clone());
        self.core.live_changed.notify_all();
        let slot = live.own.entry((number, peer)).or_default();
        if own <= *slot {
            return;
        }
        *slot = own;
        drop(live);
        self.core.held_changed.send_modify(|n| *n += 1);
    }

    /// Whether a link to `peer` is open ([`Store::link_up`]).
    pub(crate) fn is_up(&self, peer: ReplicaId) -> bool {
        self.core.live.lock().unwrap_or_else(PoisonError::into_inner).up.contains_key(&peer)
    }

    /// A link to `peer` opened: it counts as connected until the guard is
    /// dropped. What it said on an earlier link is forgotten (its `Have` on
    /// this one will say again).
    pub fn link_up(&self, peer: ReplicaId) -> LinkUp {
        let mut live = self.core.live.lock().unwrap_or_else(PoisonError::into_inner);
        *live.up.entry(peer).or_default() += 1;
        live.have.retain(|(_, p), _| *p != peer);
        live.probe_answered.retain(|(_, p), _| *p != peer);
        LinkUp { core: self.core.clone(), peer }
    }

    /// The peers among `pinned`, connected now, whose latest `Have` of
    /// `account` this replica holds all of: it has caught up with them.
    pub fn caught_up(&self, account: &str, pinned: &[ReplicaId]) -> Vec<ReplicaId> {
        let Ok(acct) = self.account(account) else { return Vec::new() };
        let live = self.core.live.lock().unwrap_or_else(PoisonError::into_inner);
        self.caught_up_in(&live, &acct, pinned, 0)
    }

    /// Peers caught up with: connected, answered probe `probe` or a later
    /// one (0: any `Have` will do), and this replica holds all they had.
    fn caught_up_in(&self, live: &Live, acct: &Account, pinned: &[ReplicaId], probe: u64) -> Vec<ReplicaId> {
        let mine = acct.published.read().unwrap_or_else(PoisonError::into_inner).version.clone();
        let key = |p: &ReplicaId| (acct.number, *p);
        if starling_model::mutation::active(starling_model::mutation::Mutation::CatchUpSkipped) {
            return pinned.iter().copied().filter(|p| live.up.contains_key(p)).collect();
        }
        pinned
            .iter()
            .copied()
            .filter(|p| live.up.contains_key(p))
            .filter(|p| live.probe_answered.get(&key(p)).copied().unwrap_or(0) >= probe)
            .filter(|p| live.have.get(&key(p)).is_some_and(|theirs| mine.dominates(theirs)))
            .collect()
    }

    /// Starts a catch-up before showing clients new UIDs: asks every
    /// connected peer what it has now (a probe, which the links send when
    /// [`Store::probes`] changes). Returns the probe to pass to
    /// [`Store::catch_up_status`].
    pub fn begin_catch_up(&self, account: &str) -> u64 {
        let Ok(number) = self.account_number(account) else { return 0 };
        let mut live = self.core.live.lock().unwrap_or_else(PoisonError::into_inner);
        let slot = live.probe_wanted.entry(number).or_default();
        *slot += 1;
        let probe = *slot;
        drop(live);
        self.core.probes.send_modify(|n| *n += 1);
        probe
    }

    /// One look at a catch-up begun with `probe` ([`Store::begin_catch_up`]),
    /// for a caller that waits its own way (a parked IMAP command, the
    /// simulator): `Held` once `policy.peers` connected pinned peers were
    /// caught up with, `Short` (counted) from `until` on or when fewer
    /// peers are pinned than wanted, `None` while it should wait on.
    pub fn catch_up_status(
        &self,
        account: &str,
        policy: &ExposurePolicy,
        probe: u64,
        now: std::time::Instant,
        until: std::time::Instant,
    ) -> Option<Exposed> {
        if policy.peers == 0 {
            return Some(Exposed::Local);
        }
        let Ok(acct) = self.account(account) else { return Some(Exposed::Local) };
        let pinned = policy.pinned.of(account);
        let live = self.core.live.lock().unwrap_or_else(PoisonError::into_inner);
        let status = self.catch_up_decision(&live, &acct, &pinned, policy.peers, probe, now >= until);
        drop(live);
        if matches!(status, Some(Exposed::Short { .. })) {
            self.note_catch_up_short();
        }
        status
    }

    /// The one rule of a catch-up, for [`Store::catch_up_status`] and
    /// [`Store::wait_caught_up`] (not counted here).
    fn catch_up_decision(
        &self,
        live: &Live,
        acct: &Account,
        pinned: &[ReplicaId],
        peers: usize,
        probe: u64,
        expired: bool,
    ) -> Option<Exposed> {
        let n = self.caught_up_in(live, acct, pinned, probe).len();
        if n >= peers {
            Some(Exposed::Held { peers: n })
        } else if expired || pinned.len() < peers {
            Some(Exposed::Short { peers: n })
        } else {
            None
        }
    }

    /// Counts a catch-up that ended short of the peers wanted (metrics).
    fn note_catch_up_short(&self) {
        self.core.exposure_stats.lock().unwrap_or_else(PoisonError::into_inner).catch_up_short += 1;
    }

    /// The latest probe of `account` catch-up waits want sent (0: none):
    /// each link sends it once ([`Store::probes`] says when it changes).
    pub fn probe_wanted(&self, account: &str) -> u64 {
        let Ok(number) = self.account_number(account) else { return 0 };
        self.core.live.lock().unwrap_or_else(PoisonError::into_inner).probe_wanted.get(&number).copied().unwrap_or(0)
    }

    /// Changes whenever a catch-up wait wants probes sent.
    pub fn probes(&self) -> tokio::sync::watch::Receiver<u64> {
        self.core.probes.subscribe()
    }

    /// `peer` answered probe `probe` of `account` (with the `Have` noted
    /// just before by [`Store::note_ack`]).
    pub fn note_probe_answer(&self, account: &str, peer: ReplicaId, probe: u64) {
        let Ok(number) = self.account_number(account) else { return };
        let mut live = self.core.live.lock().unwrap_or_else(PoisonError::into_inner);
        let slot = live.probe_answered.entry((number, peer)).or_default();
        *slot = (*slot).max(probe);
        self.core.live_changed.notify_all();
    }

    /// Before a replica shows clients new UIDs with exposure after k peers
    /// on: asks every connected peer what it has now (a probe, sent by the
    /// links) and waits (blocking, until `until`) until k connected pinned
    /// peers answered and this replica holds all they had, so that UIDs
    /// another replica showed and a peer holds are known here first and
    /// never given to other messages (`docs/semantics.md`, "Failover and
    /// k"). A replica cut off from its peers gets [`Exposed::Short`] at the
    /// deadline.
    pub fn wait_caught_up(&self, account: &str, policy: &ExposurePolicy, until: std::time::Instant) -> Exposed {
        if policy.peers == 0 {
            return Exposed::Local;
        }
        let Ok(acct) = self.account(account) else { return Exposed::Local };
        let pinned = policy.pinned.of(account);
        let probe = self.begin_catch_up(account);
        let mut live = self.core.live.lock().unwrap_or_else(PoisonError::into_inner);
        loop {
            let now = std::time::Instant::now();
            if let Some(status) = self.catch_up_decision(&live, &acct, &pinned, policy.peers, probe, now >= until) {
                drop(live);
                if matches!(status, Exposed::Short { .. }) {
                    self.note_catch_up_short();
                }
                return status;
            }
            let slice = (until - now).min(CATCH_UP_POLL);
            live = self.core.live_changed.wait_timeout(live, slice).unwrap_or_else(PoisonError::into_inner).0;
        }
    }

    /// The peers among `pinned` holding `e` (its ops and every body).
    pub fn holders(&self, e: &Exposure, pinned: &[ReplicaId]) -> Vec<ReplicaId> {
        let Ok(number) = self.account_number(&e.account) else { return Vec::new() };
        let live = self.core.live.lock().unwrap_or_else(PoisonError::into_inner);
        pinned
            .iter()
            .copied()
            .filter(|p| live.own.get(&(number, *p)).is_some_and(|&n| n >= e.upto))
            .filter(|p| e.bodies.iter().all(|b| live.bodies.get(p).is_some_and(|r| r.set.contains(b))))
            .collect()
    }

    /// Waits until `policy.peers` pinned peers hold `e`, or its deadline;
    /// never fails (a short exposure is counted, and the caller decides by
    /// [`ExposurePolicy::when_short`]). Needs a tokio runtime (its timer).
    pub async fn expose(&self, e: &Exposure, policy: &ExposurePolicy) -> Exposed {
        self.expose_by(e, policy, tokio::time::Instant::now() + policy.wait).await
    }

    /// [`Store::expose`] with a deadline of its own (several exposures
    /// sharing one wait).
    pub async fn expose_by(&self, e: &Exposure, policy: &ExposurePolicy, until: tokio::time::Instant) -> Exposed {
        if policy.peers == 0 {
            return Exposed::Local;
        }
        let pinned = policy.pinned.of(&e.account);
        let mut changed = self.core.held_changed.subscribe();
        let started = std::time::Instant::now();
        let count = |store: &Store| store.holders(e, &pinned).len();
        let wait = async {
            loop {
                changed.borrow_and_update();
                let n = count(self);
                if n >= policy.peers {
                    return n;
                }
                if changed.changed().await.is_err() {
                    return n;
                }
            }
        };
        let held = if pinned.len() < policy.peers { None } else { tokio::time::timeout_at(until, wait).await.ok() };
        let waited = started.elapsed().as_millis() as u64;
        let mut stats = self.core.exposure_stats.lock().unwrap_or_else(PoisonError::into_inner);
        stats.waits += 1;
        stats.wait_ms += waited;
        match held {
            Some(peers) if peers >= policy.peers => Exposed::Held { peers },
            _ => {
                stats.short += 1;
                Exposed::Short { peers: count(self) }
            }
        }
    }

    /// Exposure counters since open.
    pub fn exposure_stats(&self) -> ExposureStats {
        *self.core.exposure_stats.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use starling_model::INBOX;

    const ME: ReplicaId = ReplicaId(1);
    const P: ReplicaId = ReplicaId(2);
    const Q: ReplicaId = ReplicaId(3);

    fn store(dir: &std::path::Path) -> Store {
        let s = Store::open(&dir.join("s.redb"), ME, StoreOptions::default()).unwrap();
        s.add_account("a").unwrap();
        s
    }

    fn policy(k: usize, wait: Duration) -> ExposurePolicy {
        let pinned = BTreeMap::from([("a".to_string(), vec![P, Q])]).into();
        ExposurePolicy { peers: k, wait, when_short: WhenShort::Degrade, pinned }
    }

    fn deliver(s: &Store, body: &[u8]) -> Exposure {
        s.write("a", |b| b.append(INBOX, body, 1, vec![]).map(|_| ())).unwrap();
        s.exposure("a", vec![BlobId::of(body)]).unwrap()
    }

    #[test]
    fn a_peer_holds_a_change_once_it_acknowledged_the_ops_and_the_body() {
        let dir = tempfile::tempdir().unwrap();
        let s = store(dir.path());
        let e = deliver(&s, b"Subject: x\r\n\r\nx\r\n");
        assert!(s.holders(&e, &[P, Q]).is_empty());
        s.note_ack("a", P, &s.version("a").unwrap());
        assert!(s.holders(&e, &[P, Q]).is_empty(), "ops without the body");
        s.note_held(P, &e.bodies);
        s.note_held(Q, &e.bodies);
        assert_eq!(s.holders(&e, &[P, Q]), [P], "Q has the body but not the ops");
        assert!(s.holders(&e, &[Q]).is_empty(), "only pinned peers count");
        let later = deliver(&s, b"Subject: y\r\n\r\ny\r\n");
        assert!(later.upto > e.upto && s.holders(&later, &[P]).is_empty(), "an older ack covers older changes only");
    }

    #[test]
    fn bodies_held_are_remembered_up_to_the_bound() {
        let dir = tempfile::tempdir().unwrap();
        let s = store(dir.path());
        let ids: Vec<BlobId> = (0..=HELD_BODIES_MAX as u32).map(|i| BlobId::of(&i.to_le_bytes())).collect();
        s.note_held(P, &ids);
        s.note_ack("a", P, &s.version("a").unwrap());
        let of = |id| Exposure { account: "a".into(), upto: 0, bodies: vec![id] };
        assert!(s.holders(&of(ids[0]), &[P]).is_empty(), "the oldest is forgotten past the bound");
        assert_eq!(s.holders(&of(ids[1]), &[P]), [P]);
        assert_eq!(s.holders(&of(*ids.last().unwrap()), &[P]), [P]);
    }

    #[tokio::test(flavor = "current_thread", start_paused = true)]
    async fn an_exposure_waits_for_k_peers_or_its_deadline() {
        let dir = tempfile::tempdir().unwrap();
        let s = std::sync::Arc::new(store(dir.path()));
        let e = deliver(&s, b"Subject: x\r\n\r\nx\r\n");
        assert_eq!(s.expose(&e, &policy(0, Duration::ZERO)).await, Exposed::Local);
        assert_eq!(s.expose(&e, &policy(1, Duration::from_secs(5))).await, Exposed::Short { peers: 0 });
        assert_eq!(s.expose(&e, &policy(3, Duration::from_secs(5))).await, Exposed::Short { peers: 0 }, "2 pinned");
        let acks = {
            let (s, e) = (s.clone(), e.clone());
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_secs(1)).await;
                s.note_ack("a", P, &s.version("a").unwrap());
                s.note_held(P, &e.bodies);
            })
        };
        let started = tokio::time::Instant::now();
        assert_eq!(s.expose(&e, &policy(1, Duration::from_secs(60))).await, Exposed::Held { peers: 1 });
        assert!(started.elapsed() < Duration::from_secs(60), "answered when held, not at the deadline");
        acks.await.unwrap();
        let stats = s.exposure_stats();
        assert_eq!((stats.waits, stats.short), (3, 2));
    }

    #[test]
    fn showing_new_uids_waits_until_caught_up_with_a_connected_peer() {
        let dir = tempfile::tempdir().unwrap();
        let s = store(dir.path());
        let p = policy(1, Duration::from_millis(100));
        let soon = || std::time::Instant::now() + Duration::from_millis(100);
        assert_eq!(s.wait_caught_up("a", &p, soon()), Exposed::Short { peers: 0 }, "no link");
        let up = s.link_up(P);
        assert_eq!(s.wait_caught_up("a", &p, soon()), Exposed::Short { peers: 0 }, "no Have yet");
        let mut ahead = s.version("a").unwrap();
        ahead.observe(starling_model::Dot { replica: P, counter: 1 });
        // Each wait asks for a new probe; the peer answers the next one
        // with the version it has then.
        let next = s.probe_wanted("a") + 1;
        s.note_ack("a", P, &ahead);
        s.note_probe_answer("a", P, next);
        assert_eq!(s.wait_caught_up("a", &p, soon()), Exposed::Short { peers: 0 }, "the peer has more");
        s.note_ack("a", P, &s.version("a").unwrap());
        assert_eq!(s.wait_caught_up("a", &p, soon()), Exposed::Short { peers: 0 }, "not an answer to this probe");
        let waiter = std::thread::scope(|scope| {
            let w = scope.spawn(|| s.wait_caught_up("a", &p, std::time::Instant::now() + Duration::from_secs(30)));
            while s.probe_wanted("a") <= next + 1 {
                std::thread::sleep(Duration::from_millis(1));
            }
            s.note_ack("a", P, &s.version("a").unwrap());
            s.note_probe_answer("a", P, s.probe_wanted("a"));
            w.join().unwrap()
        });
        assert_eq!(waiter, Exposed::Held { peers: 1 });
        drop(up);
        assert_eq!(s.caught_up("a", &[P]), [], "a closed link does not count");
        let _again = s.link_up(P);
        assert_eq!(s.caught_up("a", &[P]), [], "a new link waits for a new Have");
        assert_eq!(s.exposure_stats().catch_up_short, 4);
    }
}
