//! Cluster membership by gossip: which nodes exist, where they listen, which
//! accounts they hold, and which are alive. SWIM (with suspicion and
//! infection-style dissemination) by [`foca`], behind a sans-IO interface in
//! the style of `starling-sync` and quinn-proto: the caller feeds datagrams
//! ([`Gossip::handle_datagram`]) and the clock ([`Gossip::handle_timeout`]),
//! and drains what to send ([`Gossip::poll_transmit`]), when to wake
//! ([`Gossip::poll_timeout`]) and what changed ([`Gossip::poll_event`]).
//! The node drives it over its peer connections; the simulator drives the
//! same code over its simulated network ([`sim`]).
//!
//! Every queue here has a bound that does not depend on the cluster's
//! history: datagrams out ([`OUT_MAX`]), events ([`EVENTS_MAX`]), timers
//! ([`TIMERS_MAX`]); a datagram is at most [`DATAGRAM_MAX`] bytes, and a
//! member's advertised accounts at most [`ACCOUNTS_BYTES_MAX`].

#![deny(missing_docs)]

pub mod sim;
pub mod topology;

use foca::{AccumulatingRuntime, Foca, Identity, NoCustomBroadcast, OwnedNotification, PostcardCodec, Timer};
use rand::rngs::SmallRng;
use rand::SeedableRng;
use serde::{Deserialize, Serialize};
use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap, VecDeque};
use std::net::SocketAddr;
use std::num::NonZeroU32;
use std::time::{Duration, Instant};

/// Largest gossip datagram, bytes: fits a QUIC datagram on any path (QUIC
/// guarantees 1200-byte packets; its headers take some of them).
pub const DATAGRAM_MAX: usize = 1100;
/// Datagrams waiting to be sent at most; past it the oldest are dropped
/// (gossip tolerates loss: what they carried is sent again).
pub const OUT_MAX: usize = 1024;
/// Membership events waiting to be read at most; past it the oldest are
/// dropped and [`Event::Lagged`] says so (read [`Gossip::members`] then).
pub const EVENTS_MAX: usize = 1024;
/// Timers pending at most (foca keeps a few per member being probed or
/// suspected; the cluster's size is bounded by [`MEMBERS_MAX`]).
pub const TIMERS_MAX: usize = 4 * MEMBERS_MAX + 64;
/// Members a node is expected to know at most: what the timer bound and
/// [`Gossip::state`] are sized for. foca's own table holds every node id
/// its (pinned, trusted) peers advertise and forgets down members after an
/// hour; it is not cut here. What the node builds on it is: it pins at
/// most this many peers (`PeerBook`), and lists at most this many members.
pub const MEMBERS_MAX: usize = 1024;
/// Bytes of account names a member advertises at most (they travel in
/// every datagram that mentions the member).
pub const ACCOUNTS_BYTES_MAX: usize = 512;
/// Nodes remembered to announce to while this node knows no live member
/// (its pinned peers, the node that invited it).
pub const SEEDS_MAX: usize = 16;
/// How often a node alone announces itself to its seeds.
pub const SEED_RETRY: Duration = Duration::from_secs(5);
/// Every this many [`SEED_RETRY`] periods, a node in a cluster announces
/// itself to the seeds it does not see alive.
pub const SEED_CHECK_ROUNDS: u64 = 6;
/// Largest membership state exchanged over a stream ([`Gossip::state`]).
pub const STATE_BYTES_MAX: usize = MEMBERS_MAX * (ACCOUNTS_BYTES_MAX + 96);

/// A node as the cluster knows it: its id, where it listens, the accounts
/// it holds, and a generation that grows when it restarts or changes what
/// it advertises (the newer wins).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Member {
    /// The node id (BLAKE3 of its certificate).
    pub node: [u8; 32],
    /// Its peer endpoint.
    pub addr: SocketAddr,
    /// Accounts it holds (sorted; at most [`ACCOUNTS_BYTES_MAX`] bytes of names).
    pub accounts: Vec<String>,
    /// Grows with each restart (start time, ms) and each renewal.
    pub generation: u64,
}

impl Member {
    /// A member; accounts are sorted and cut to [`ACCOUNTS_BYTES_MAX`]
    /// (whole names).
    pub fn new(node: [u8; 32], addr: SocketAddr, mut accounts: Vec<String>, generation: u64) -> Member {
        accounts.sort();
        accounts.dedup();
        let mut bytes = 0;
        accounts.retain(|a| {
            bytes += a.len() + 1;
            bytes <= ACCOUNTS_BYTES_MAX
        });
        Member { node, addr, accounts, generation }
    }
}

impl Identity for Member {
    type Addr = [u8; 32];

    fn renew(&self) -> Option<Self> {
        Some(Member { generation: self.generation + 1, ..self.clone() })
    }

    fn addr(&self) -> [u8; 32] {
        self.node
    }

    fn win_addr_conflict(&self, adversary: &Self) -> bool {
        self.generation > adversary.generation
    }
}

/// What changed in the cluster.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    /// A member is alive (new, back, or with a new generation).
    Up(Member),
    /// A member was declared down by the cluster.
    Down(Member),
    /// This node is known by at least one other.
    Joined,
    /// Every member this node knew is down or gone.
    Alone,
    /// Events were dropped (the reader fell behind): read the members.
    Lagged,
}

/// Why a datagram or a call was refused; the state is unchanged.
#[derive(Debug, thiserror::Error)]
pub enum GossipError {
    /// Larger than [`DATAGRAM_MAX`].
    #[error("gossip datagram of {0} bytes exceeds {DATAGRAM_MAX}")]
    TooBig(usize),
    /// Not a gossip datagram, or from a foreign cluster configuration.
    #[error("gossip: {0}")]
    Protocol(String),
}

/// How fast the cluster probes and forgets.
#[derive(Clone, Debug)]
pub struct Settings {
    /// Members expected (tunes dissemination and suspicion).
    pub cluster_size: u32,
    /// A probe every this long; wide-area timings when over 100 ms.
    pub probe_period: Duration,
}

impl Default for Settings {
    fn default() -> Self {
        Settings { cluster_size: 16, probe_period: Duration::from_secs(1) }
    }
}

fn config(s: &Settings) -> foca::Config {
    let size = NonZeroU32::new(s.cluster_size.max(1)).expect("not zero");
    let mut c =
        if s.probe_period > Duration::from_secs(2) { foca::Config::new_wan(size) } else { foca::Config::new_lan(size) };
    c.max_packet_size = std::num::NonZeroUsize::new(DATAGRAM_MAX).expect("not zero");
    // A node cut off for a long time comes back: others announce to down
    // members, and they to us, often enough that a healed partition
    // merges within a few probe periods.
    c.periodic_announce_to_down_members =
        Some(foca::PeriodicParams { frequency: Duration::from_secs(10), num_members: 2.try_into().expect("2") });
    c.periodic_announce =
        Some(foca::PeriodicParams { frequency: Duration::from_secs(5), num_members: 1.try_into().expect("1") });
    // Forget down members after an hour (bounds the table).
    c.remove_down_after = Some(Duration::from_secs(3600));
    c
}

/// One node's membership state machine.
pub struct Gossip {
    foca: Foca<Member, PostcardCodec, SmallRng, NoCustomBroadcast>,
    runtime: AccumulatingRuntime<Member>,
    /// Due time, sequence, timer.
    timers: BinaryHeap<Reverse<(Instant, u64)>>,
    timer_events: BTreeMap<u64, Timer<Member>>,
    next_timer: u64,
    out: VecDeque<(Member, Vec<u8>)>,
    events: VecDeque<Event>,
    /// This node as an alive member, for [`Gossip::state`].
    me_alive: foca::Member<Member>,
    /// Announced to while this node is alone, every [`SEED_RETRY`].
    seeds: VecDeque<Member>,
    seed_due: Instant,
    seed_rounds: u64,
    /// Whether foca says this node is part of a cluster (`Active`), and not
    /// alone, declared down, or just renewed after being declared down.
    connected: bool,
    lagged: bool,
    /// Datagrams dropped because the queue was full.
    pub dropped_out: u64,
    /// Datagrams sent and received (for reports).
    pub sent: u64,
    /// Datagrams handled.
    pub received: u64,
}

impl Gossip {
    /// A node that knows nobody yet; `seed` makes its choices (whom to
    /// probe, whom to gossip to) reproducible.
    pub fn new(me: Member, settings: &Settings, seed: u64, now: Instant) -> Gossip {
        let me_alive = foca::Member::alive(me.clone());
        let foca = Foca::new(me, config(settings), SmallRng::seed_from_u64(seed), PostcardCodec);
        let mut g = Gossip {
            foca,
            runtime: AccumulatingRuntime::new(),
            timers: BinaryHeap::new(),
            timer_events: BTreeMap::new(),
            next_timer: 0,
            out: VecDeque::new(),
            events: VecDeque::new(),
            me_alive,
            seeds: VecDeque::new(),
            seed_due: now + SEED_RETRY,
            seed_rounds: 0,
            connected: false,
            lagged: false,
            dropped_out: 0,
            sent: 0,
            received: 0,
        };
        g.drain(now);
        g
    }

    /// This node as it advertises itself.
    pub fn me(&self) -> &Member {
        self.foca.identity()
    }

    /// Introduces this node to `peer` (a pinned peer, an inviting node):
    /// from there the cluster learns of it, and it of the cluster.
    /// It is remembered as a seed: while this node knows no live member,
    /// it announces itself to its seeds again every [`SEED_RETRY`].
    pub fn announce(&mut self, peer: Member, now: Instant) {
        if peer.node != self.me().node {
            self.seeds.retain(|s| s.node != peer.node);
            if self.seeds.len() == SEEDS_MAX {
                self.seeds.pop_front();
            }
            self.seeds.push_back(peer.clone());
            let _ = self.foca.announce(peer, &mut self.runtime);
            self.drain(now);
        }
    }

    /// Advertises a change of this node (its accounts or address) under a
    /// new generation.
    pub fn change(&mut self, accounts: Vec<String>, addr: SocketAddr, now: Instant) {
        let me = self.me();
        let next = Member::new(me.node, addr, accounts, me.generation + 1);
        self.me_alive = foca::Member::alive(next.clone());
        let _ = self.foca.change_identity(next, &mut self.runtime);
        self.drain(now);
    }

    /// Handles a datagram from a peer.
    pub fn handle_datagram(&mut self, bytes: &[u8], now: Instant) -> Result<(), GossipError> {
        if bytes.len() > DATAGRAM_MAX {
            return Err(GossipError::TooBig(bytes.len()));
        }
        self.received += 1;
        let r = self.foca.handle_data(bytes, &mut self.runtime);
        self.drain(now);
        r.map_err(|e| GossipError::Protocol(e.to_string()))
    }

    /// Runs the timers due by `now`.
    pub fn handle_timeout(&mut self, now: Instant) {
        if now >= self.seed_due {
            self.seed_due = now + SEED_RETRY;
            self.seed_rounds += 1;
            if !self.connected {
                self.reannounce(now);
            } else if self.seed_rounds.is_multiple_of(SEED_CHECK_ROUNDS) {
                // Seeds (pinned peers) the cluster does not list as alive:
                // a group split off while they joined, or that rejoined
                // unseen, is found again through them.
                let alive: std::collections::BTreeSet<[u8; 32]> = self.members().map(|m| m.node).collect();
                let lost: Vec<Member> = self.seeds.iter().filter(|s| !alive.contains(&s.node)).cloned().collect();
                for m in lost {
                    let _ = self.foca.announce(m, &mut self.runtime);
                }
                self.drain(now);
            }
        }
        while let Some(Reverse((due, seq))) = self.timers.peek().copied() {
            if due > now {
                break;
            }
            self.timers.pop();
            if let Some(t) = self.timer_events.remove(&seq) {
                let _ = self.foca.handle_timer(t, &mut self.runtime);
                self.drain(now);
            }
        }
    }

    /// When [`Gossip::handle_timeout`] must next be called.
    pub fn poll_timeout(&self) -> Option<Instant> {
        let timer = self.timers.peek().map(|Reverse((due, _))| *due);
        Some(timer.map_or(self.seed_due, |t| t.min(self.seed_due)))
    }

    /// The next datagram to send, and to whom.
    pub fn poll_transmit(&mut self) -> Option<(Member, Vec<u8>)> {
        let t = self.out.pop_front();
        self.sent += u64::from(t.is_some());
        t
    }

    /// The next membership change.
    pub fn poll_event(&mut self) -> Option<Event> {
        if self.lagged {
            self.lagged = false;
            return Some(Event::Lagged);
        }
        self.events.pop_front()
    }

    /// The members alive now (this node not included).
    pub fn members(&self) -> impl Iterator<Item = &Member> {
        self.foca.iter_members().map(|m| m.id())
    }

    /// Members known, down ones included.
    pub fn known(&self) -> usize {
        self.foca.iter_membership_state().len()
    }

    /// Members alive now.
    pub fn len(&self) -> usize {
        self.foca.num_members()
    }

    /// Whether this node knows no live member.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The whole membership this node knows, down members too, for a peer
    /// over a reliable stream: a node that joins through an introducer (or
    /// comes back) learns everyone at once rather than over rounds of
    /// gossip, which take a minute in a 50-node cluster (the feed that
    /// answers an announce holds only what fits one datagram).
    pub fn state(&self) -> Vec<u8> {
        let mut all: Vec<&foca::Member<Member>> = self.foca.iter_membership_state().take(MEMBERS_MAX).collect();
        all.push(&self.me_alive);
        let out = postcard::to_stdvec(&all).expect("a state encodes");
        debug_assert!(out.len() <= STATE_BYTES_MAX);
        out
    }

    /// Takes in a peer's [`Gossip::state`]; returns how many members it held.
    pub fn merge_state(&mut self, bytes: &[u8], now: Instant) -> Result<usize, GossipError> {
        if bytes.len() > STATE_BYTES_MAX {
            return Err(GossipError::TooBig(bytes.len()));
        }
        let all: Vec<foca::Member<Member>> =
            postcard::from_bytes(bytes).map_err(|e| GossipError::Protocol(format!("membership state: {e}")))?;
        if all.len() > MEMBERS_MAX + 1 {
            return Err(GossipError::Protocol(format!("membership state of {} members", all.len())));
        }
        let n = all.len();
        let r = self.foca.apply_many(all.into_iter(), true, &mut self.runtime);
        self.drain(now);
        r.map(|()| n).map_err(|e| GossipError::Protocol(e.to_string()))
    }

    /// Tells the cluster this node leaves (a clean stop).
    pub fn leave(&mut self, now: Instant) {
        let _ = self.foca.leave_cluster(&mut self.runtime);
        self.drain(now);
    }

    /// Not part of a cluster (alone, or renewed after being declared down,
    /// when the members it knows may all have renewed too and no longer
    /// take what is addressed to their old selves): announces itself to its
    /// seeds and to members it knows, alive or down, which answer an
    /// announce to any generation of theirs.
    fn reannounce(&mut self, now: Instant) {
        let mut to: Vec<Member> = self.seeds.iter().cloned().collect();
        to.extend(self.foca.iter_membership_state().map(|m| m.id().clone()).take(SEEDS_MAX));
        to.sort_by_key(|m| m.node);
        to.dedup_by(|a, b| a.node == b.node);
        for m in to {
            let _ = self.foca.announce(m, &mut self.runtime);
        }
        self.drain(now);
    }

    /// Takes what foca asked for into the bounded queues.
    fn drain(&mut self, now: Instant) {
        while let Some((to, bytes)) = self.runtime.to_send() {
            if self.out.len() == OUT_MAX {
                self.out.pop_front();
                self.dropped_out += 1;
            }
            self.out.push_back((to, bytes.to_vec()));
        }
        while let Some((after, timer)) = self.runtime.to_schedule() {
            // Foca keeps its timers few; a flood would be a bug, kept in check.
            if self.timer_events.len() >= TIMERS_MAX {
                if let Some((&oldest, _)) = self.timer_events.iter().next() {
                    self.timer_events.remove(&oldest);
                }
            }
            let seq = self.next_timer;
            self.next_timer += 1;
            self.timer_events.insert(seq, timer);
            self.timers.push(Reverse((now + after, seq)));
        }
        // Heap entries of dropped timers are skipped when they come due; keep the heap bounded too.
        if self.timers.len() > 2 * TIMERS_MAX {
            let live = &self.timer_events;
            self.timers.retain(|Reverse((_, seq))| live.contains_key(seq));
        }
        while let Some(n) = self.runtime.to_notify() {
            match &n {
                OwnedNotification::Active => self.connected = true,
                OwnedNotification::Idle | OwnedNotification::Defunct | OwnedNotification::Rejoin(_) => {
                    self.connected = false;
                    // Announce again soon rather than a full period later.
                    self.seed_due = self.seed_due.min(now + SEED_RETRY / 5);
                }
                _ => {}
            }
            let e = match n {
                OwnedNotification::MemberUp(m) => Event::Up(m),
                OwnedNotification::MemberDown(m) => Event::Down(m),
                OwnedNotification::Rename(_, m) => Event::Up(m),
                OwnedNotification::Active => Event::Joined,
                OwnedNotification::Idle => Event::Alone,
                OwnedNotification::Rejoin(_) => Event::Joined,
                _ => continue,
            };
            if self.events.len() == EVENTS_MAX {
                self.events.pop_front();
                self.lagged = true;
            }
            self.events.push_back(e);
        }
        assert!(self.out.len() <= OUT_MAX && self.events.len() <= EVENTS_MAX, "gossip queues within their bounds");
        assert!(self.timer_events.len() <= TIMERS_MAX, "gossip timers within their bound");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn member(i: u8) -> Member {
        Member::new([i; 32], format!("127.0.0.1:{}", 7000 + u16::from(i)).parse().unwrap(), vec!["alice".into()], 1)
    }

    #[test]
    fn advertised_accounts_are_cut_to_the_bound_by_whole_names() {
        let many: Vec<String> = (0..200).map(|i| format!("account-{i:04}")).collect();
        let m = Member::new([1; 32], "127.0.0.1:1".parse().unwrap(), many, 1);
        let bytes: usize = m.accounts.iter().map(|a| a.len() + 1).sum();
        assert!(bytes <= ACCOUNTS_BYTES_MAX && !m.accounts.is_empty(), "{bytes}");
        assert!(m.accounts.windows(2).all(|w| w[0] < w[1]));
        // The encoded member fits a datagram with room for others.
        assert!(postcard::to_stdvec(&m).unwrap().len() < DATAGRAM_MAX / 2);
    }

    #[test]
    fn two_nodes_meet_by_announce_and_an_oversized_datagram_is_refused() {
        let t0 = Instant::now();
        let s = Settings::default();
        let mut a = Gossip::new(member(1), &s, 1, t0);
        let mut b = Gossip::new(member(2), &s, 2, t0);
        a.announce(member(2), t0);
        for _ in 0..4 {
            while let Some((to, d)) = a.poll_transmit() {
                assert_eq!(to.node, [2; 32]);
                b.handle_datagram(&d, t0).unwrap();
            }
            while let Some((to, d)) = b.poll_transmit() {
                assert_eq!(to.node, [1; 32]);
                a.handle_datagram(&d, t0).unwrap();
            }
        }
        assert_eq!(a.members().cloned().collect::<Vec<_>>(), vec![member(2)]);
        assert_eq!(b.members().cloned().collect::<Vec<_>>(), vec![member(1)]);
        assert!(std::iter::from_fn(|| b.poll_event()).any(|e| e == Event::Up(member(1))));
        assert!(matches!(b.handle_datagram(&vec![0u8; DATAGRAM_MAX + 1], t0), Err(GossipError::TooBig(_))));
        assert!(b.handle_datagram(b"not gossip", t0).is_err());
        assert_eq!(b.len(), 1, "a bad datagram changed nothing");
    }
}
