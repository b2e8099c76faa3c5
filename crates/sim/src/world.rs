//! One simulated run: nodes (real stores on crashable memory disks, real
//! sync sessions through [`PeerLink`]), a network of per-connection streams
//! with seeded delays and faults, clients, a timeline, and the checker.
//! Everything random comes from one seed; time is simulated milliseconds.

use crate::memory::{charge, Owner};
use crate::scenario::{Action, Scenario};
use starling_link::PeerLink;
use starling_model::testkit::{Checker, Observation, Rng};
use starling_model::{Dot, Keyword, MailboxId, ReplicaId, VersionVector, INBOX};
use starling_store::memdisk::MemDisk;
use starling_store::{Store, StoreOptions};
use starling_sync::BodyPolicy;
use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap};

/// The one account every node replicates.
pub const ACCOUNT: &str = "sim";

const MS_PER_HOUR: f64 = 3_600_000.0;

/// What one run measured, and whether the checker passed.
#[derive(Clone, Debug)]
pub struct RunReport {
    /// Scenario name.
    pub scenario: String,
    /// The seed.
    pub seed: u64,
    /// The checker's verdict.
    pub result: Result<(), String>,
    /// BLAKE3 of the whole trace (events, frames, final dumps): equal for
    /// equal seeds.
    pub trace: String,
    /// Simulated time of the final heal (ms).
    pub heal_ms: u64,
    /// Simulated time from the final heal to the last state change (ms).
    pub converge_ms: u64,
    /// Frames delivered after the final heal.
    pub frames_after_heal: u64,
    /// Frame bytes sent by all sessions.
    pub bytes: u64,
    /// Client actions that committed.
    pub actions: u64,
    /// Ops authored (client and settling).
    pub ops: u64,
    /// Messages appended or copied.
    pub appends: u64,
    /// Messages whose shown UID changed under our rule.
    pub churn: u64,
    /// Messages dsync's rule would have renumbered on the same history.
    pub churn_dsync: u64,
    /// Connections opened.
    pub connections: u64,
    /// Sessions that ended on a protocol error (broken transport) and reconnected.
    pub protocol_resets: u64,
    /// Crashes.
    pub crashes: u64,
    /// Events processed.
    pub events: u64,
    /// Largest queue sizes any session reached (each checked against its
    /// bound at every step).
    pub queues: starling_sync::QueueSizes,
    /// Most ops any replica held in its causal buffer.
    pub pending_max: usize,
    /// The roaming QRESYNC client (issue 16): syncs, of them answered in
    /// full because the replica could not place the client's MODSEQ, and
    /// UIDs it had cached that a report showed naming another message
    /// (client-side U2 broken: possible while exposure waits for no peer).
    pub roam: (u64, u64, u64),
    /// Looks of the roaming client that degraded, with k ≥ 1: fewer than k
    /// peers to catch up with or to hold the look within the wait.
    pub roam_short: u64,
    /// Resyncs of the roaming client from a MODSEQ the node placed but
    /// older than the expunges it remembers (answered with an over-report).
    pub roam_forgotten: u64,
    /// What a swarm scenario drew for this seed (empty otherwise).
    pub swarm: String,
    /// Largest store (simulated disk) of any node at the end, bytes.
    pub disk_max: usize,
    /// Ops dropped from logs by housekeeping (each pass checked: nothing
    /// a running peer lacks dropped).
    pub ops_compacted: u64,
    /// Bodies collected by housekeeping (each pass checked: no body a
    /// message names deleted).
    pub bodies_collected: u64,
    /// Online compactions of a node's store file by housekeeping (each
    /// checked: the account's dump is the same after it).
    pub file_compactions: u64,
    /// UIDs node 0 spent for good by the end (claims of shown expunged
    /// messages buried).
    pub spent_uids: u64,
    /// Snapshots installed and resumed, by every node.
    pub snapshots: Snapshots,
    /// Bytes per part of the snapshots nodes send in this run.
    pub snapshot_part: usize,
    /// The most each node held (heap of its code, heap of its disk), when
    /// the binary measures ([`crate::memory`]); empty otherwise.
    pub memory: Vec<crate::memory::NodePeak>,
}

/// Snapshots in a run (or a sweep), over every node.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Snapshots {
    /// Installed into a replica that had applied nothing.
    pub into_empty: u64,
    /// Installed into one that had (a state merge).
    pub into_non_empty: u64,
    /// Sent on from where the receiver held part of it (a transfer that
    /// broke off, resumed).
    pub resumed: u64,
    /// Parts held offered by a node's first link to a peer after it
    /// restarted from a crash (its spool survived the crash).
    pub offered_after_restart: u64,
}

impl std::ops::Add for Snapshots {
    type Output = Snapshots;

    /// Both counts added.
    fn add(self, o: Snapshots) -> Snapshots {
        Snapshots {
            into_empty: self.into_empty + o.into_empty,
            into_non_empty: self.into_non_empty + o.into_non_empty,
            resumed: self.resumed + o.resumed,
            offered_after_restart: self.offered_after_restart + o.offered_after_restart,
        }
    }
}

impl RunReport {
    /// An empty report for a run of `scenario` with `seed`.
    pub fn new(scenario: &str, seed: u64) -> RunReport {
        RunReport {
            scenario: scenario.to_string(),
            seed,
            result: Ok(()),
            trace: String::new(),
            heal_ms: 0,
            converge_ms: 0,
            frames_after_heal: 0,
            bytes: 0,
            actions: 0,
            ops: 0,
            appends: 0,
            churn: 0,
            churn_dsync: 0,
            connections: 0,
            protocol_resets: 0,
            crashes: 0,
            events: 0,
            queues: Default::default(),
            pending_max: 0,
            roam: (0, 0, 0),
            roam_short: 0,
            roam_forgotten: 0,
            swarm: String::new(),
            disk_max: 0,
            ops_compacted: 0,
            bodies_collected: 0,
            file_compactions: 0,
            spent_uids: 0,
            snapshots: Snapshots::default(),
            snapshot_part: starling_sync::SNAPSHOT_SEND_PART,
            memory: Vec::new(),
        }
    }
}

#[derive(Debug)]
enum Ev {
    Frame {
        from: usize,
        to: usize,
        conn: u64,
        bytes: Vec<u8>,
    },
    Client {
        node: usize,
    },
    Timeline(Action),
    /// One link cut or restored (a flap).
    Link {
        a: usize,
        b: usize,
        up: bool,
    },
    Connect {
        a: usize,
        b: usize,
    },
    /// A link's session timer is due.
    Timer {
        node: usize,
        peer: usize,
        conn: u64,
    },
    Restart {
        node: usize,
    },
    /// A node's periodic housekeeping (log compaction, body collection).
    Housekeep {
        node: usize,
    },
    /// The roaming client's look waiting for k peers checks again.
    Roam,
    FinalHeal,
}

struct Scheduled {
    at: u64,
    seq: u64,
    ev: Ev,
}

impl PartialEq for Scheduled {
    fn eq(&self, o: &Self) -> bool {
        (self.at, self.seq) == (o.at, o.seq)
    }
}
impl Eq for Scheduled {}
impl PartialOrd for Scheduled {
    fn partial_cmp(&self, o: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(o))
    }
}
impl Ord for Scheduled {
    fn cmp(&self, o: &Self) -> std::cmp::Ordering {
        (self.at, self.seq).cmp(&(o.at, o.seq))
    }
}

struct Conn {
    id: u64,
    link: PeerLink,
    /// Earliest delivery of the next frame on each stream (order kept).
    next_meta: u64,
    next_blob: u64,
    /// The session timer already scheduled (simulated ms).
    timer_at: Option<u64>,
}

struct Node {
    id: ReplicaId,
    disk: MemDisk,
    store: Option<Store>,
    conns: BTreeMap<usize, Conn>,
    policy: BodyPolicy,
    skew_ms: i64,
    /// Own ops already handed to the checker, and the vector then.
    recorded: u64,
    before: VersionVector,
    sent_messages: u64,
    /// False until a `join` event for a node that starts absent.
    joined: bool,
    /// Peers this node has not linked to since it restarted from a crash.
    unlinked_since_restart: std::collections::BTreeSet<usize>,
}

/// The simulated cluster.
pub struct World {
    sc: Scenario,
    rng: Rng,
    now: u64,
    seq: u64,
    queue: BinaryHeap<Reverse<Scheduled>>,
    nodes: Vec<Node>,
    /// Whether `i` and `j` can reach each other (partitions, flaps).
    reach: Vec<Vec<bool>>,
    next_conn: u64,
    checker: Checker,
    trace: blake3::Hasher,
    healed: Option<u64>,
    last_change: u64,
    report: RunReport,
    /// Blob bytes of every body ever delivered, by author, to check
    /// on-demand fetches against.
    bodies: BTreeMap<starling_model::BlobId, usize>,
    /// The instant simulated time 0 stands for (the sessions' clock).
    epoch: std::time::Instant,
    /// A bound broken inside a step, reported after it.
    violation: Option<String>,
    /// One IMAP client that follows the clients' looks from node to node.
    roamer: Roamer,
}

/// A QRESYNC client of INBOX that moves between replicas: what it cached
/// (UID → message and keywords) and the HIGHESTMODSEQ it last saw.
#[derive(Default)]
struct Roamer {
    modseq: u64,
    cache: BTreeMap<u32, (starling_model::MessageId, Vec<Keyword>)>,
    /// Cached UIDs last reported by a look that was held (caught up with
    /// k peers, and k peers held it); with k ≥ 1 only.
    held: std::collections::BTreeSet<u32>,
    /// Its look in progress, with exposure after k peers (one client: one look).
    pending: Option<Look>,
}

/// A look of the roaming client with exposure after k peers.
enum Look {
    /// Asked node `node`'s peers what they have (probe `probe`); waits
    /// until it caught up with k connected peers, or `deadline`.
    CatchUp { node: usize, probe: u64, deadline: u64 },
    /// Shown (announced and answered), waiting until k peers hold it.
    Expose { answer: Answer, exposure: starling_store::Exposure, caught_up: bool, deadline: u64 },
}

/// What a resync at one node answered the roaming client, and the full
/// state it must equal afterwards.
struct Answer {
    node: usize,
    token: u64,
    placed: Option<u64>,
    highest: u64,
    resync: starling_store::Resync,
    /// The node placed the MODSEQ but no longer remembers every expunge since.
    forgotten: bool,
    full: BTreeMap<u32, (starling_model::MessageId, Vec<Keyword>)>,
}

fn err(e: impl std::fmt::Display) -> String {
    e.to_string()
}

/// Free bytes from which housekeeping compacts a node's store file (a
/// quarter of it free too): the simulator's stores are small.
const FILE_COMPACT_MIN_FREE: u64 = 64 << 10;

/// Opens node `i`'s store on its disk, creating the account on first start.
/// Each node remembers few expunges per mailbox (1 to 32, from its id), so
/// the roaming client's resyncs also meet the over-report below them.
fn open_store(disk: &MemDisk, i: usize, id: ReplicaId) -> Result<Store, String> {
    let options = StoreOptions {
        vanished_per_mailbox: 1 << (id.0 % 6),
        file_compact_min_free: FILE_COMPACT_MIN_FREE,
        ..StoreOptions::default()
    };
    let probe = disk.clone();
    let backend = crate::memory::MeteredDisk::new(disk.backend(), i);
    let store = Store::open_on(backend, &format!("node{i}"), id, options)
        .map_err(|e| format!("node {i} does not start: {e}"))?
        .with_size_probe(move || probe.len() as u64);
    if !store.accounts().iter().any(|a| a == ACCOUNT) {
        // Each node makes the account itself (as an operator would on each
        // machine): incarnations differ until the nodes meet. From the
        // replica id, so that a seed replays exactly.
        store.add_account_as(ACCOUNT, id.0.max(1)).map_err(err)?;
    }
    Ok(store)
}

/// The size of the parts nodes send snapshots in, drawn from the seed (on
/// its own stream, so the other draws stay): half the runs the default,
/// the others 256 B to 16 KiB, so that the simulator's snapshots (tens of
/// KB) travel in several parts, and a transfer can break off between two
/// and be resumed.
fn snapshot_part(seed: u64) -> usize {
    let mut rng = Rng::new(seed ^ 0x534e_4150_5041_5254);
    if rng.chance(0.5) {
        starling_sync::SNAPSHOT_SEND_PART
    } else {
        starling_sync::SNAPSHOT_SEND_PART_MIN << (2 * rng.below(4))
    }
}

impl World {
    /// A fresh cluster for `sc` and `seed`.
    pub fn new(sc: &Scenario, seed: u64) -> Result<World, String> {
        crate::memory::begin_run();
        let mut rng = Rng::new(seed ^ 0x5354_4152_4c49_4e47);
        let (sc, draw) = sc.swarm_draw(&mut Rng::new(seed ^ 0x5357_4152_4d00));
        let sc = &sc;
        let skew_max = (sc.clock_skew_minutes * 60_000.0) as i64;
        let mut nodes = Vec::new();
        let late: Vec<usize> = sc
            .events
            .iter()
            .filter_map(|e| match e.action {
                Action::Join { node } => Some(node),
                _ => None,
            })
            .collect();
        for i in 0..sc.nodes {
            // Ids spread like real ones (hashes of certificates).
            let id = ReplicaId(Rng::new(seed.wrapping_mul(31).wrapping_add(i as u64)).next_u64() | 1);
            let disk = MemDisk::new();
            let joined = !late.contains(&i);
            let store = if joined {
                let _node = charge(Owner::Node(i));
                Some(open_store(&disk, i, id)?)
            } else {
                None
            };
            let policy = sc
                .partial
                .iter()
                .find(|p| p.node == i)
                .map(|p| BodyPolicy { mailboxes: p.mailboxes.clone(), size_max: p.size_max, ..BodyPolicy::full() })
                .unwrap_or_default();
            let skew_ms = if skew_max > 0 { rng.below(2 * skew_max as usize + 1) as i64 - skew_max } else { 0 };
            nodes.push(Node {
                id,
                disk,
                store,
                conns: BTreeMap::new(),
                policy,
                skew_ms,
                recorded: 0,
                before: VersionVector::new(),
                sent_messages: 0,
                joined,
                unlinked_since_restart: Default::default(),
            });
        }
        let n = sc.nodes;
        let mut w = World {
            sc: sc.clone(),
            rng,
            now: 0,
            seq: 0,
            queue: BinaryHeap::new(),
            nodes,
            reach: vec![vec![true; n]; n],
            next_conn: 0,
            checker: Checker::new(n),
            trace: blake3::Hasher::new(),
            healed: None,
            last_change: 0,
            report: RunReport { swarm: draw, snapshot_part: snapshot_part(seed), ..RunReport::new(&sc.name, seed) },
            bodies: BTreeMap::new(),
            epoch: std::time::Instant::now(),
            violation: None,
            roamer: Roamer::default(),
        };
        w.build_timeline();
        if w.sc.housekeeping_minutes > 0.0 {
            let every = (w.sc.housekeeping_minutes * 60_000.0) as usize;
            for i in 0..n {
                let first = 1 + w.rng.below(every) as u64;
                w.schedule(first, Ev::Housekeep { node: i });
            }
        }
        for i in 0..n {
            w.schedule_client(i);
            for j in i + 1..n {
                w.schedule(0, Ev::Connect { a: i, b: j });
            }
        }
        Ok(w)
    }

    fn schedule(&mut self, delay: u64, ev: Ev) {
        // The queue is the network's; a frame in it stays its sender's.
        let _net = charge(Owner::World);
        self.seq += 1;
        self.queue.push(Reverse(Scheduled { at: self.now + delay, seq: self.seq, ev }));
    }

    fn end_of_work(&self) -> u64 {
        (self.sc.hours * MS_PER_HOUR) as u64
    }

    /// Expands the scenario's timeline into scheduled events.
    fn build_timeline(&mut self) {
        let ms = |h: f64| (h * MS_PER_HOUR) as u64;
        let mins = |m: f64| (m * 60_000.0) as u64;
        for e in self.sc.events.clone() {
            let at = ms(e.at_hours);
            match e.action {
                Action::Flap { a, b, period_minutes, until_hours } => {
                    let half = mins(period_minutes / 2.0).max(1);
                    let mut t = at;
                    let mut up = false;
                    while t < ms(until_hours) {
                        self.schedule(t, Ev::Link { a, b, up });
                        t += half;
                        up = !up;
                    }
                    self.schedule(t, Ev::Link { a, b, up: true });
                }
                Action::RollingCrashes { every_minutes, down_minutes, until_hours } => {
                    let mut t = at;
                    let mut k = 0;
                    while t < ms(until_hours) {
                        let node = k % self.sc.nodes;
                        self.schedule(t, Ev::Timeline(Action::Crash { node, down_minutes }));
                        t += mins(every_minutes).max(1);
                        k += 1;
                    }
                }
                Action::FlagRounds { writers, rounds, every_minutes } => {
                    for k in 0..rounds {
                        let node = writers[k % writers.len()];
                        let set = k % 2 == 0;
                        self.schedule(
                            at + k as u64 * mins(every_minutes).max(1),
                            Ev::Timeline(Action::FlagAll { node, set }),
                        );
                    }
                }
                other => self.schedule(at, Ev::Timeline(other)),
            }
        }
        let last = self.queue.iter().map(|s| s.0.at).max().unwrap_or(0);
        self.schedule(self.end_of_work().max(last) + 1, Ev::FinalHeal);
    }

    fn schedule_client(&mut self, node: usize) {
        // Exponential gaps: a Poisson stream of client actions.
        let mean = MS_PER_HOUR / self.sc.workload.actions_per_node_hour;
        let u = (self.rng.next_u64() >> 11) as f64 / (1u64 << 53) as f64;
        let gap = (-(1.0 - u).ln() * mean).max(1.0) as u64;
        if self.now + gap < self.end_of_work() {
            self.schedule(gap, Ev::Client { node });
        }
    }

    fn up(&self, i: usize) -> bool {
        self.nodes[i].store.is_some()
    }

    /// Runs to the end; the report says whether every check held.
    pub fn run(mut self) -> RunReport {
        let result = self.run_inner();
        self.report.result = result;
        self.report.memory = crate::memory::peaks(self.nodes.len()).unwrap_or_default();
        self.report.trace = self.trace.finalize().to_hex().to_string();
        self.report
    }

    fn run_inner(&mut self) -> Result<(), String> {
        // Liveness inside a run: simulated time must move on.
        let mut same_instant = (0u64, 0u64);
        while let Some(Reverse(s)) = self.queue.pop() {
            same_instant = if s.at == same_instant.0 { (s.at, same_instant.1 + 1) } else { (s.at, 0) };
            if same_instant.1 > 1_000_000 {
                return Err(format!("livelock: a million events at {} ms without time moving", s.at));
            }
            self.now = s.at;
            if let Some(h) = self.healed {
                if self.now > h + (self.sc.settle_hours * MS_PER_HOUR) as u64 {
                    return Err(format!(
                        "did not converge within {} h of the final heal: {}",
                        self.sc.settle_hours,
                        self.stuck()
                    ));
                }
            }
            self.report.events += 1;
            self.trace.update(&self.now.to_le_bytes());
            self.step(s.ev)?;
            if let Some(v) = self.violation.take() {
                return Err(v);
            }
        }
        self.finish()
    }

    fn step(&mut self, ev: Ev) -> Result<(), String> {
        match ev {
            Ev::Frame { from, to, conn, bytes } => {
                self.trace.update(&[1, from as u8, to as u8]);
                self.trace.update(&bytes);
                self.deliver(from, to, conn, &bytes)
            }
            Ev::Client { node } => {
                self.trace.update(&[2, node as u8]);
                if self.up(node) {
                    self.client_action(node)?;
                }
                self.schedule_client(node);
                Ok(())
            }
            Ev::Timeline(a) => {
                self.trace.update(&[3]);
                self.timeline(a)
            }
            Ev::Link { a, b, up } => {
                self.trace.update(&[8, a as u8, b as u8, up as u8]);
                let reach = self.reach.clone();
                self.set_reach(|i, j| if (i, j) == (a, b) || (i, j) == (b, a) { up } else { reach[i][j] });
                Ok(())
            }
            Ev::Connect { a, b } => {
                self.trace.update(&[4, a as u8, b as u8]);
                self.connect(a, b)
            }
            Ev::Timer { node, peer, conn } => {
                self.trace.update(&[5, node as u8, peer as u8]);
                let _node = charge(Owner::Node(node));
                let now = self.instant();
                let n = &mut self.nodes[node];
                let Some(store) = n.store.as_ref() else { return Ok(()) };
                let Some(c) = n.conns.get_mut(&peer).filter(|c| c.id == conn) else { return Ok(()) };
                c.timer_at = None;
                let progress = c.link.handle_timeout(store, now).map_err(err)?;
                self.progressed(node, peer, progress)?;
                self.flush(node, peer);
                Ok(())
            }
            Ev::Restart { node } => {
                self.trace.update(&[6, node as u8]);
                self.restart(node)
            }
            Ev::Housekeep { node } => {
                self.trace.update(&[9, node as u8]);
                self.housekeep(node)?;
                let every = (self.sc.housekeeping_minutes * 60_000.0) as u64;
                if self.now + every < self.end_of_work() {
                    self.schedule(every, Ev::Housekeep { node });
                }
                Ok(())
            }
            Ev::Roam => {
                self.trace.update(&[10]);
                self.roam_poll()
            }
            Ev::FinalHeal => {
                self.trace.update(&[7]);
                for i in 0..self.nodes.len() {
                    if !self.up(i) {
                        self.restart(i)?;
                    }
                }
                self.set_reach(|_, _| true);
                self.healed = Some(self.now);
                self.report.heal_ms = self.now;
                self.last_change = self.now;
                Ok(())
            }
        }
    }

    fn timeline(&mut self, a: Action) -> Result<(), String> {
        match a {
            Action::Partition { groups } => {
                let mut group_of = vec![0; self.nodes.len()];
                for (g, members) in groups.iter().enumerate() {
                    for i in members {
                        group_of[*i] = g;
                    }
                }
                self.set_reach(|i, j| group_of[i] == group_of[j]);
            }
            Action::Heal => self.set_reach(|_, _| true),
            Action::Isolate { node } => self.set_reach(|i, j| i != node && j != node),
            Action::Crash { node, down_minutes } => {
                if self.up(node) {
                    self.crash(node);
                    self.schedule((down_minutes * 60_000.0) as u64, Ev::Restart { node });
                }
            }
            Action::Compact => {
                // Every running node's housekeeping at once (the node's
                // path: what its peers acknowledged).
                for i in 0..self.nodes.len() {
                    self.housekeep(i)?;
                }
            }
            Action::Join { node } => self.restart(node)?,
            Action::Deliver { node, messages, show } => {
                self.bulk(node, |b, k, _| {
                    if k >= messages {
                        return Ok(false);
                    }
                    let raw =
                        format!("Subject: burst {node}-{k}\r\nMessage-ID: <b{node}.{k}@sim>\r\n\r\nburst {k}\r\n");
                    b.append(INBOX, raw.as_bytes(), 1_700_000_000 + k as i64, vec![])?;
                    Ok(true)
                })?;
                // Then a client selects INBOX: the node announces, every UID is shown.
                if show && self.up(node) {
                    self.bulk(node, |b, k, _| {
                        if k == 0 {
                            b.replica().announce(INBOX)?;
                        }
                        Ok(false)
                    })?;
                    let store = self.nodes[node].store.as_ref().expect("up");
                    let obs = store.inspect(ACCOUNT, |r| Observation::of(r)).map_err(err)?;
                    self.checker.looked(node, &obs, INBOX);
                }
            }
            Action::Roam { node } => {
                if self.up(node) {
                    self.roam(node)?;
                }
            }
            Action::FlagAll { node, set } => {
                let ids: Vec<starling_model::MessageId> = match self.nodes[node].store.as_ref() {
                    Some(st) => st.read(ACCOUNT).map_err(err)?.messages(INBOX, 1, usize::MAX).map_err(err)?,
                    None => Vec::new(),
                }
                .into_iter()
                .map(|m| m.message)
                .collect();
                let kw = [Keyword::Flagged];
                self.bulk(node, |b, k, _| {
                    let Some(m) = ids.get(k) else { return Ok(false) };
                    let (add, remove): (&[Keyword], &[Keyword]) = if set { (&kw, &[]) } else { (&[], &kw) };
                    b.replica().store_flags(*m, add, remove)?;
                    Ok(true)
                })?
            }
            Action::Flap { .. } | Action::RollingCrashes { .. } | Action::FlagRounds { .. } => {
                unreachable!("expanded")
            }
        }
        Ok(())
    }

    /// A bulk client action at `node` (if up): `step(batch, k, node)` for
    /// k = 0, 1, … until it returns false, a thousand per commit; then the
    /// links push and the checker looks.
    fn bulk(
        &mut self,
        node: usize,
        mut step: impl FnMut(&mut starling_store::Batch<'_>, usize, usize) -> Result<bool, starling_store::StoreError>,
    ) -> Result<(), String> {
        let _node = charge(Owner::Node(node));
        let Some(store) = self.nodes[node].store.as_ref() else { return Ok(()) };
        let mut k = 0;
        let mut more = true;
        while more {
            store
                .write(ACCOUNT, |b| {
                    for _ in 0..1000 {
                        more = step(b, k, node)?;
                        if !more {
                            break;
                        }
                        k += 1;
                    }
                    Ok(())
                })
                .map_err(err)?;
        }
        self.report.actions += 1;
        self.trace.update(&(k as u64).to_le_bytes());
        self.changed(node, None)?;
        self.observe(node)
    }

    /// Sets who reaches whom; connections across a cut die, new paths connect.
    fn set_reach(&mut self, f: impl Fn(usize, usize) -> bool) {
        let n = self.nodes.len();
        for i in 0..n {
            for j in 0..n {
                if i == j {
                    continue;
                }
                let now = f(i, j);
                let was = std::mem::replace(&mut self.reach[i][j], now);
                if i < j && was && !now {
                    self.disconnect(i, j);
                } else if i < j && !was && now {
                    let backoff = 100 + self.rng.below(2000) as u64;
                    self.schedule(backoff, Ev::Connect { a: i, b: j });
                }
            }
        }
    }

    /// A node's housekeeping, as `serve` runs it: its pinned peers are the
    /// other nodes that have joined, the alive ones those it has a session
    /// with. Then its safety: its log floor is below every running peer's
    /// version (no op a peer lacks was dropped), and its body indexes are
    /// exact (no body a message names was deleted: it would be neither
    /// stored nor listed missing).
    fn housekeep(&mut self, node: usize) -> Result<(), String> {
        if !self.up(node) {
            return Ok(());
        }
        let _node = charge(Owner::Node(node));
        // With a fan-out, the neighbours only (as `serve` does): each op
        // and body stays with some neighbour of every node that lacks it.
        let n = self.nodes.len();
        let peers: Vec<(ReplicaId, Vec<String>)> = (0..n)
            .filter(|j| *j != node && self.nodes[*j].joined)
            .filter(|j| crate::scenario::linked(self.sc.fanout, n, node, *j))
            .map(|j| (self.nodes[j].id, vec![ACCOUNT.to_string()]))
            .collect();
        let alive: Vec<ReplicaId> = self.nodes[node].conns.keys().map(|j| self.nodes[*j].id).collect();
        let store = self.nodes[node].store.as_ref().expect("up");
        let done = store
            .housekeep(&starling_store::Housekeeping {
                now_ms: self.now,
                horizon_ms: u64::MAX,
                peers: &peers,
                alive: &alive,
                compact_log: true,
                collect_bodies: true,
                batch: 64,
            })
            .map_err(err)?;
        self.report.ops_compacted += done.accounts.iter().map(|a| a.ops_dropped).sum::<u64>();
        self.report.bodies_collected += done.collected.bodies;
        // The file compacted online, as `serve` does (single-threaded
        // here: nothing is in use, so it is never left for later).
        let before = {
            let _check = charge(Owner::World);
            store.dump(ACCOUNT).map_err(err)?
        };
        if store.compact_file(25).map_err(|e| format!("node {node} compacting its file: {e}"))?.is_some() {
            let _check = charge(Owner::World);
            self.report.file_compactions += 1;
            if store.dump(ACCOUNT).map_err(err)? != before {
                return Err(format!("node {node}: its account changed when its file was compacted"));
            }
        }
        let floor = store.floor(ACCOUNT).map_err(err)?;
        // The checks below are the simulator's, not the node's work.
        let _check = charge(Owner::World);
        // Safety of compaction: no running node it waits for (every other
        // with a full mesh, its neighbours with a fan-out) lacks what it
        // dropped. With a fan-out the others get those ops from their own
        // neighbours, which wait for them: the final convergence check
        // shows they do.
        for (j, n) in self.nodes.iter().enumerate() {
            if !crate::scenario::linked(self.sc.fanout, self.nodes.len(), node, j) {
                continue;
            }
            let Some(peer) = n.store.as_ref().filter(|_| j != node) else { continue };
            let theirs = peer.version(ACCOUNT).map_err(err)?;
            // A node that holds nothing of the others (one just joined,
            // perhaps with changes its clients made before its snapshot
            // came) catches up by snapshot, whatever the floor, once its
            // own changes reached the snapshot's source; the final
            // convergence check catches one that never does.
            let only_own = theirs.iter().all(|(r, c)| r == n.id || c == 0);
            if !theirs.dominates(&floor) && !only_own {
                return Err(format!(
                    "node {node} compacted ops node {j} lacks: floor {floor:?}, node {j} holds {theirs:?} (at {} ms)",
                    self.now
                ));
            }
        }
        if let Some(d) = store.check_blob_refs().map_err(err)?.first() {
            return Err(format!("node {node} after housekeeping: {d}"));
        }
        Ok(())
    }

    fn crash(&mut self, node: usize) {
        self.report.crashes += 1;
        let peers: Vec<usize> = self.nodes[node].conns.keys().copied().collect();
        for p in peers {
            self.disconnect(node, p);
        }
        let _disk = charge(Owner::Disk(node));
        self.nodes[node].disk.crash();
        self.nodes[node].store = None;
    }

    fn restart(&mut self, node: usize) -> Result<(), String> {
        if self.up(node) {
            return Ok(());
        }
        let count = self.nodes.len();
        let _node = charge(Owner::Node(node));
        let n = &mut self.nodes[node];
        n.store = Some(open_store(&n.disk, node, n.id)?);
        n.joined = true;
        n.unlinked_since_restart = (0..count).filter(|j| *j != node).collect();
        for j in 0..self.nodes.len() {
            if j != node && self.reach[node][j] {
                let backoff = 100 + self.rng.below(2000) as u64;
                self.schedule(backoff, Ev::Connect { a: node, b: j });
            }
        }
        Ok(())
    }

    fn connect(&mut self, a: usize, b: usize) -> Result<(), String> {
        if !self.up(a)
            || !self.up(b)
            || !self.reach[a][b]
            || self.nodes[a].conns.contains_key(&b)
            || !crate::scenario::linked(self.sc.fanout, self.nodes.len(), a, b)
        {
            return Ok(());
        }
        self.next_conn += 1;
        self.report.connections += 1;
        let id = self.next_conn;
        let accounts = [ACCOUNT.to_string()];
        for (me, peer) in [(a, b), (b, a)] {
            let (mid, pid) = (self.nodes[me].id, self.nodes[peer].id);
            let _node = charge(Owner::Node(me));
            let n = &mut self.nodes[me];
            let store = n.store.as_ref().expect("up");
            let mut link = PeerLink::new(store, mid, Some(pid), &accounts, n.policy.clone()).map_err(err)?;
            link.set_snapshot_part(self.report.snapshot_part);
            if n.unlinked_since_restart.remove(&peer) && !link.offered().is_empty() {
                self.report.snapshots.offered_after_restart += 1;
            }
            for (_, fresh) in link.installed() {
                *if *fresh {
                    &mut self.report.snapshots.into_empty
                } else {
                    &mut self.report.snapshots.into_non_empty
                } += 1;
            }
            n.conns.insert(peer, Conn { id, link, next_meta: 0, next_blob: 0, timer_at: None });
        }
        self.flush(a, b);
        self.flush(b, a);
        Ok(())
    }

    fn disconnect(&mut self, a: usize, b: usize) {
        for (x, y) in [(a, b), (b, a)] {
            if let Some(c) = self.nodes[x].conns.remove(&y) {
                self.report.bytes += c.link.session().bytes().0;
            }
        }
        // Both still up and reachable: the dialer tries again after a backoff.
        if self.up(a) && self.up(b) && self.reach[a][b] {
            let backoff = 100 + self.rng.below(5000) as u64;
            self.schedule(backoff, Ev::Connect { a, b });
        }
    }

    /// The simulated clock as the sessions see it.
    fn instant(&self) -> std::time::Instant {
        self.epoch + std::time::Duration::from_millis(self.now)
    }

    /// Checks a link's queues against their bounds and notes the largest.
    fn check_queues(&mut self, node: usize, peer: usize) -> Result<(), String> {
        let Some(c) = self.nodes[node].conns.get(&peer) else { return Ok(()) };
        let q = c.link.session().queue_sizes();
        let bound = starling_sync::queue_bounds(1);
        let m = &mut self.report.queues;
        let pairs = [
            (q.transmit, bound.transmit, &mut m.transmit, "metadata frames"),
            (q.transmit_bytes, bound.transmit_bytes, &mut m.transmit_bytes, "metadata bytes"),
            (q.transmit_blobs, bound.transmit_blobs, &mut m.transmit_blobs, "body frames"),
            (q.transmit_blob_bytes, bound.transmit_blob_bytes, &mut m.transmit_blob_bytes, "body bytes"),
            (q.events, bound.events, &mut m.events, "events"),
            (q.blobs_queued, bound.blobs_queued, &mut m.blobs_queued, "bodies queued"),
            (q.blobs_in_flight, bound.blobs_in_flight, &mut m.blobs_in_flight, "bodies in flight"),
            (q.peer_wants, bound.peer_wants, &mut m.peer_wants, "bodies the peer wants"),
        ];
        for (got, max, seen, what) in pairs {
            *seen = (*seen).max(got);
            if got > max {
                return Err(format!("node {node} link to {peer}: {what} {got} over the bound {max}"));
            }
        }
        m.chunks_in_flight = m.chunks_in_flight.max(q.chunks_in_flight);
        if q.chunks_in_flight > bound.chunks_in_flight {
            return Err(format!("node {node} link to {peer}: {} chunks in flight", q.chunks_in_flight));
        }
        m.snapshot_in_flight = m.snapshot_in_flight.max(q.snapshot_in_flight);
        if q.snapshot_in_flight > bound.snapshot_in_flight {
            return Err(format!("node {node} link to {peer}: {} snapshot bytes in flight", q.snapshot_in_flight));
        }
        Ok(())
    }

    /// Sends what `node`'s link to `peer` has queued, through the faults,
    /// reading more bodies as body frames leave; then schedules its timer.
    fn flush(&mut self, node: usize, peer: usize) {
        let _node = charge(Owner::Node(node));
        let net = self.sc.network.clone();
        if let Err(e) = self.check_queues(node, peer) {
            self.violation.get_or_insert(e);
        }
        loop {
            let Some(c) = self.nodes[node].conns.get_mut(&peer) else { return };
            let (frame, blob) = match c.link.poll_transmit() {
                Some(f) => (f, false),
                None => match c.link.poll_transmit_blob() {
                    Some(f) => (f, true),
                    None => {
                        let n = &mut self.nodes[node];
                        let store = n.store.as_ref().expect("up");
                        let c = n.conns.get_mut(&peer).expect("listed");
                        match c.link.pump(store) {
                            Ok(p) if p == starling_link::Progress::default() => {}
                            Ok(p) => {
                                if let Err(e) = self.progressed(node, peer, p) {
                                    self.violation.get_or_insert(e);
                                }
                            }
                            Err(e) => {
                                self.violation.get_or_insert(format!("node {node}: {e}"));
                                return;
                            }
                        }
                        let c = self.nodes[node].conns.get_mut(&peer).expect("listed");
                        if c.link.session().queue_sizes().transmit == 0 && !c.link.has_blob_to_send() {
                            break;
                        }
                        continue;
                    }
                },
            };
            let conn = c.id;
            if self.rng.chance(net.reset) {
                self.disconnect(node, peer);
                return;
            }
            let mut delay = net.delay_ms[0] + self.rng.below((net.delay_ms[1] - net.delay_ms[0]) as usize + 1) as u64;
            if self.rng.chance(net.loss) {
                delay += 200 + self.rng.below(800) as u64;
            }
            let reorder = self.rng.chance(net.reorder);
            let duplicate = self.rng.chance(net.duplicate);
            let c = self.nodes[node].conns.get_mut(&peer).expect("still connected");
            let mut at = self.now + delay;
            if !reorder {
                let next = if blob { &mut c.next_blob } else { &mut c.next_meta };
                at = at.max(*next);
                *next = at;
            }
            if duplicate {
                let again = at + self.rng.below(50) as u64 - self.now;
                self.schedule(again, Ev::Frame { from: node, to: peer, conn, bytes: frame.clone() });
            }
            self.schedule(at - self.now, Ev::Frame { from: node, to: peer, conn, bytes: frame });
        }
        // The session's timer, if it set one.
        let epoch = self.epoch;
        let now = self.now;
        let Some(c) = self.nodes[node].conns.get_mut(&peer) else { return };
        if let Some(due) = c.link.poll_timeout() {
            let at = (due.saturating_duration_since(epoch).as_nanos().div_ceil(1_000_000) as u64).max(now);
            if c.timer_at.is_none_or(|t| at < t) {
                c.timer_at = Some(at);
                let conn = c.id;
                self.schedule(at - now, Ev::Timer { node, peer, conn });
            }
        }
    }

    /// What a link's call changed: tells the other links, arms their body
    /// sweeps if the peer lacked a body.
    fn progressed(&mut self, node: usize, peer: usize, progress: starling_link::Progress) -> Result<(), String> {
        self.report.snapshots.into_empty += progress.snapshots.0 as u64;
        self.report.snapshots.into_non_empty += progress.snapshots.1 as u64;
        self.report.snapshots.resumed += progress.snapshots_resumed as u64;
        if !progress.committed.is_empty() || progress.bodies > 0 {
            self.last_change = self.now;
        }
        if !progress.committed.is_empty() {
            self.changed(node, Some(peer))?;
        }
        if !progress.stored.is_empty() {
            // Bodies came: the other links' peers that were told "not
            // here" hear they are (as `serve` does).
            let peers: Vec<usize> = self.nodes[node].conns.keys().copied().filter(|p| *p != peer).collect();
            for p in peers {
                self.nodes[node].conns.get_mut(&p).expect("listed").link.bodies_here(&progress.stored);
                self.flush(node, p);
            }
        }
        if progress.bodies_lacking || progress.bodies_damaged {
            let peers: Vec<usize> = self.nodes[node].conns.keys().copied().collect();
            let now = self.instant();
            for p in peers {
                self.nodes[node].conns.get_mut(&p).expect("listed").link.arm_retry(now);
                if p != peer {
                    self.flush(node, p);
                }
            }
        }
        Ok(())
    }

    fn deliver(&mut self, from: usize, to: usize, conn: u64, bytes: &[u8]) -> Result<(), String> {
        let _node = charge(Owner::Node(to));
        let n = &mut self.nodes[to];
        let Some(store) = n.store.as_ref() else { return Ok(()) };
        let Some(c) = n.conns.get_mut(&from).filter(|c| c.id == conn) else { return Ok(()) };
        if self.healed.is_some() {
            self.report.frames_after_heal += 1;
        }
        let now = self.epoch + std::time::Duration::from_millis(self.now);
        let result = c.link.handle_timeout(store, now).and_then(|p| Ok(p.merge(c.link.handle_frame(store, bytes)?)));
        match result {
            Ok(progress) => {
                self.progressed(to, from, progress)?;
                self.flush(to, from);
                self.observe(to)
            }
            Err(starling_link::LinkError::Protocol(_) | starling_link::LinkError::Restart(_)) => {
                // A broken transport (duplicated or reordered frames) or a
                // misbehaving peer: the connection drops and is redialed.
                self.report.protocol_resets += 1;
                self.disconnect(to, from);
                Ok(())
            }
            Err(e) => Err(format!("node {to}: {e}")),
        }
    }

    /// Node `i` committed changes: every other link pushes them; the checker
    /// learns the ops it authored.
    fn changed(&mut self, i: usize, except: Option<usize>) -> Result<(), String> {
        let _node = charge(Owner::Node(i));
        self.last_change = self.now;
        let peers: Vec<usize> = self.nodes[i].conns.keys().copied().filter(|p| Some(*p) != except).collect();
        for p in peers {
            let n = &mut self.nodes[i];
            let store = n.store.as_ref().expect("up");
            n.conns.get_mut(&p).expect("listed").link.local_changed(store, ACCOUNT).map_err(err)?;
            self.flush(i, p);
        }
        Ok(())
    }

    /// Hands node `i`'s newly authored ops to the checker and checks U1/U2 there.
    fn observe(&mut self, i: usize) -> Result<(), String> {
        let _check = charge(Owner::World);
        let n = &mut self.nodes[i];
        let store = n.store.as_ref().expect("up");
        let vv = store.version(ACCOUNT).map_err(err)?;
        let own = vv.get(n.id);
        if own > n.recorded {
            let mut have = VersionVector::new();
            for (r, c) in vv.iter().filter(|(r, _)| *r != n.id) {
                have.observe(Dot::new(r, c));
            }
            have.observe(Dot::new(n.id, n.recorded));
            let ops = store.ops_since(ACCOUNT, &have).map_err(err)?;
            let mut before = n.before.clone();
            for op in ops {
                self.checker.record(&op, &before);
                self.report.ops += 1;
                before.observe(op.dot);
            }
            n.recorded = own;
        }
        n.before = vv;
        let (obs, pending) = store.inspect(ACCOUNT, |r| (Observation::of(r), r.pending_len())).map_err(err)?;
        self.report.pending_max = self.report.pending_max.max(pending);
        self.report.disk_max = self.report.disk_max.max(n.disk.len());
        self.checker.check_step(i, &obs)
    }

    fn client_action(&mut self, i: usize) -> Result<(), String> {
        let _node = charge(Owner::Node(i));
        let mix = self.sc.workload.mix.clone();
        let weights = [
            mix.deliver,
            mix.append,
            mix.flags,
            mix.moves,
            mix.copy,
            mix.expunge,
            mix.create,
            mix.rename,
            mix.delete,
            mix.select,
        ];
        let total: f64 = weights.iter().sum();
        let mut pick = (self.rng.next_u64() >> 11) as f64 / (1u64 << 53) as f64 * total;
        let mut kind = 0;
        for (k, w) in weights.iter().enumerate() {
            if pick < *w {
                kind = k;
                break;
            }
            pick -= w;
        }
        let keywords = starling_model::testkit::workload_keywords();
        self.nodes[i].sent_messages += 1;
        let serial = self.nodes[i].sent_messages;
        let store = self.nodes[i].store.as_ref().expect("up");
        // What a client would see: mailboxes and their messages.
        let (mailboxes, messages) = {
            let r = store.read(ACCOUNT).map_err(err)?;
            let mbs: Vec<(String, MailboxId)> = r.names().tree.by_name.iter().map(|(k, v)| (k.clone(), *v)).collect();
            let mut msgs = Vec::new();
            for (_, mb) in &mbs {
                msgs.extend(r.messages(*mb, 1, usize::MAX).map_err(err)?.into_iter().map(|m| (*mb, m.message)));
            }
            (mbs, msgs)
        };
        let mb = mailboxes[self.rng.below(mailboxes.len())].1;
        let other = mailboxes[self.rng.below(mailboxes.len())].1;
        let msg = (!messages.is_empty()).then(|| messages[self.rng.below(messages.len())].1);
        let kw = keywords[self.rng.below(keywords.len())].clone();
        let now_s = ((self.now as i64 + self.nodes[i].skew_ms) / 1000).max(0) + 1_700_000_000;
        let big = self.rng.chance(self.sc.workload.big_body);
        let body = |flavor: &str| -> Vec<u8> {
            let mut raw = format!(
                "From: sender@example.net\r\nTo: user@example.org\r\nSubject: {flavor} {i}-{serial}\r\nMessage-ID: <{i}.{serial}@sim>\r\n\r\nHello {serial}.\r\n"
            )
            .into_bytes();
            if big {
                let target = 1_100_000 + (serial as usize * 7919) % 500_000;
                let line = b"QUJDREVGR0hJSktMTU5PUFFSU1RVVldYWVphYmNkZWZnaGlqa2xtbm9wcXJzdHV2d3h5ejAxMjM0\r\n";
                while raw.len() < target {
                    raw.extend_from_slice(line);
                }
            }
            raw
        };
        let flags_pick = if self.rng.chance(0.5) { vec![kw.clone()] } else { vec![] };
        let add = self.rng.chance(0.6);
        let fresh_name = format!("F{}-{}", i, self.rng.below(1000));
        let (old_name, old_id) = mailboxes[self.rng.below(mailboxes.len())].clone();
        let result: Result<Option<MailboxId>, starling_store::StoreError> = store.write(ACCOUNT, |b| {
            match kind {
                0 => {
                    b.append(INBOX, &body("delivered"), now_s, vec![])?;
                }
                1 => {
                    b.append(mb, &body("appended"), now_s, flags_pick)?;
                }
                2 => {
                    if let Some(m) = msg {
                        let (a, r): (&[Keyword], &[Keyword]) =
                            if add { (std::slice::from_ref(&kw), &[]) } else { (&[], std::slice::from_ref(&kw)) };
                        b.replica().store_flags(m, a, r)?;
                    }
                }
                3 => {
                    if let Some(m) = msg {
                        b.replica().move_message(m, other)?;
                    }
                }
                4 => {
                    if let Some(m) = msg {
                        b.replica().copy_message(m, other)?;
                    }
                }
                5 => {
                    if let Some(m) = msg {
                        b.replica().expunge(&[m])?;
                    }
                }
                6 => {
                    b.replica().create_mailbox(&fresh_name, None, None)?;
                }
                7 => {
                    if old_id != INBOX {
                        b.replica().rename_mailbox(old_id, &format!("{old_name}-r"), None)?;
                    }
                }
                8 => {
                    if old_id != INBOX {
                        b.replica().delete_mailbox(old_id)?;
                    }
                }
                _ => {
                    b.replica().announce(mb)?;
                    return Ok(Some(mb));
                }
            }
            Ok(None)
        });
        self.trace.update(&[kind as u8, result.is_ok() as u8]);
        // A client error (name taken, message gone) is a refused command, not a bug.
        let Ok(looked) = result else { return Ok(()) };
        let _check = charge(Owner::World);
        self.report.actions += 1;
        if kind <= 1 {
            // Remember who has this body (the author), for on-demand checks.
            let raw = body(if kind == 0 { "delivered" } else { "appended" });
            self.bodies.insert(starling_model::BlobId::of(&raw), i);
        }
        self.changed(i, None)?;
        self.observe(i)?;
        if let Some(mb) = looked {
            let store = self.nodes[i].store.as_ref().expect("up");
            let (obs, pending) = store.inspect(ACCOUNT, |r| (Observation::of(r), r.pending_len())).map_err(err)?;
            self.report.pending_max = self.report.pending_max.max(pending);
            self.checker.looked(i, &obs, mb);
            if mb == INBOX {
                self.roam(i)?;
            }
        }
        Ok(())
    }

    /// The roaming client looks at INBOX at node `i`. With k = 0 it is
    /// answered at once; with k ≥ 1 as the IMAP server does: first a
    /// catch-up with k connected peers, then the answer once k peers hold
    /// the look (each within the wait, then it degrades).
    fn roam(&mut self, i: usize) -> Result<(), String> {
        let _client = charge(Owner::World);
        let k = self.sc.durability_peers;
        if k == 0 {
            let answer = self.roam_answer(i)?;
            return self.roam_apply(answer, false);
        }
        if self.roamer.pending.is_some() {
            return Ok(());
        }
        let store = self.nodes[i].store.as_ref().expect("up");
        let probe = store.begin_catch_up(ACCOUNT);
        let peers: Vec<usize> = self.nodes[i].conns.keys().copied().collect();
        for p in peers {
            let n = &mut self.nodes[i];
            let store = n.store.as_ref().expect("up");
            n.conns.get_mut(&p).expect("listed").link.probe_due(store);
            self.flush(i, p);
        }
        let deadline = self.now + self.sc.durability_wait_ms;
        self.roamer.pending = Some(Look::CatchUp { node: i, probe, deadline });
        self.roam_poll()
    }

    /// The pinned peers of node `i`: every other node.
    fn pinned(&self, i: usize) -> Vec<ReplicaId> {
        (0..self.nodes.len()).filter(|j| *j != i).map(|j| self.nodes[j].id).collect()
    }

    /// Moves the roaming client's look on when k peers allow it, or its wait
    /// ran out; checks again a little later otherwise.
    fn roam_poll(&mut self) -> Result<(), String> {
        let _client = charge(Owner::World);
        let k = self.sc.durability_peers;
        let Some(look) = self.roamer.pending.take() else { return Ok(()) };
        let node = match &look {
            Look::CatchUp { node, .. } => *node,
            Look::Expose { answer, .. } => answer.node,
        };
        // The node went down: the client's connection with it.
        let Some(store) = self.nodes[node].store.as_ref() else { return Ok(()) };
        let pinned = self.pinned(node);
        let look = match look {
            Look::CatchUp { node, probe, deadline } => {
                // The store's rule, as the IMAP server applies it.
                let policy = starling_store::ExposurePolicy { peers: k, ..Default::default() };
                policy.pinned.insert(ACCOUNT.to_string(), pinned.clone());
                let until = self.epoch + std::time::Duration::from_millis(deadline);
                let status = store.catch_up_status(ACCOUNT, &policy, probe, self.instant(), until);
                let caught_up = matches!(status, Some(starling_store::Exposed::Held { .. }));
                if status.is_none() {
                    self.roamer.pending = Some(Look::CatchUp { node, probe, deadline });
                    self.schedule(20, Ev::Roam);
                    return Ok(());
                }
                store.write(ACCOUNT, |b| Ok(b.replica().announce(INBOX)?)).map_err(err)?;
                self.changed(node, None)?;
                self.observe(node)?;
                let store = self.nodes[node].store.as_ref().expect("up");
                let obs = store.inspect(ACCOUNT, |r| Observation::of(r)).map_err(err)?;
                self.checker.looked(node, &obs, INBOX);
                let answer = self.roam_answer(node)?;
                let store = self.nodes[node].store.as_ref().expect("up");
                let exposure = store.exposure(ACCOUNT, Vec::new()).map_err(err)?;
                let deadline = self.now + self.sc.durability_wait_ms;
                Look::Expose { answer, exposure, caught_up, deadline }
            }
            other => other,
        };
        let Look::Expose { answer, exposure, caught_up, deadline } = look else { unreachable!("caught up above") };
        let store = self.nodes[node].store.as_ref().expect("up");
        let held = store.holders(&exposure, &pinned).len() >= k;
        if !held && self.now < deadline {
            self.roamer.pending = Some(Look::Expose { answer, exposure, caught_up, deadline });
            self.schedule(20, Ev::Roam);
            return Ok(());
        }
        if !(held && caught_up) {
            self.report.roam_short += 1;
        }
        self.roam_apply(answer, held && caught_up)
    }

    /// A resync of INBOX at node `i` (QRESYNC with the roaming client's last
    /// HIGHESTMODSEQ, wherever it came from), as the IMAP server answers:
    /// HIGHESTMODSEQ must not go down.
    fn roam_answer(&mut self, i: usize) -> Result<Answer, String> {
        let store = self.nodes[i].store.as_ref().expect("up");
        let token = self.roamer.modseq;
        let placed = store.place_modseq(ACCOUNT, INBOX, token).map_err(err)?;
        let r = store.read(ACCOUNT).map_err(err)?;
        let highest = r.status(INBOX).map_err(err)?.highest_modseq;
        if highest < token {
            return Err(format!("roaming client: node {i} shows HIGHESTMODSEQ {highest} after {token}"));
        }
        // Its known UIDs go with the request (RFC 7162's known-uids).
        let known = starling_store::ranges::of_sorted(self.roamer.cache.keys().copied());
        let resync = r.resync(INBOX, placed, &known).map_err(err)?;
        let forgotten = match placed {
            Some(p) => r.vanished_since(INBOX, p).map_err(err)?.is_none(),
            None => false,
        };
        let full =
            r.messages(INBOX, 1, usize::MAX).map_err(err)?.into_iter().map(|m| (m.uid, (m.message, m.flags))).collect();
        Ok(Answer { node: i, token, placed, highest, resync, forgotten, full })
    }

    /// The roaming client takes an answer: its cache must then equal a full
    /// sync of that node as of the answer (no under-report). `held`: the
    /// look caught up with k peers and k peers held it; with 2k + 2 > n, a
    /// UID a held look showed must never name another message at a later
    /// held look (client-side U2).
    fn roam_apply(&mut self, answer: Answer, held: bool) -> Result<(), String> {
        let Answer { node: i, token, placed, highest, resync, forgotten, full } = answer;
        self.report.roam.0 += 1;
        self.report.roam_forgotten += forgotten as u64;
        self.report.roam.1 += placed.is_none() as u64;
        let k = self.sc.durability_peers;
        let guaranteed = k >= 1 && 2 * k + 2 > self.nodes.len();
        let cache = &mut self.roamer.cache;
        for &(lo, hi) in &resync.vanished {
            let gone: Vec<u32> = cache.range(lo..=hi).map(|(u, _)| *u).collect();
            for u in gone {
                cache.remove(&u);
                self.roamer.held.remove(&u);
            }
        }
        for m in resync.changed {
            match cache.get(&m.uid) {
                Some((was, _)) if *was != m.message => {
                    if guaranteed && held && self.roamer.held.contains(&m.uid) {
                        return Err(format!(
                            "roaming client: UID {} it was shown as {was:?} by a look {k} peers held names {:?} at node {i}, a look caught up with {k} peers",
                            m.uid, m.message
                        ));
                    }
                    self.report.roam.2 += 1;
                    self.roamer.held.remove(&m.uid);
                }
                _ => {}
            }
            cache.insert(m.uid, (m.message, m.flags));
        }
        if *cache != full {
            let differ = full.iter().find(|(u, v)| cache.get(u) != Some(*v)).map(|(u, _)| *u);
            let extra = cache.keys().find(|u| !full.contains_key(u)).copied();
            return Err(format!(
                "roaming client under-reported at node {i} (MODSEQ {token}, placed {placed:?}): first differing UID {differ:?}, first stale UID {extra:?}"
            ));
        }
        if held {
            // A held look showed every UID it has.
            self.roamer.held = cache.keys().copied().collect();
        }
        self.roamer.modseq = highest;
        Ok(())
    }

    /// What is still going on, for a run that does not settle.
    fn stuck(&self) -> String {
        let mut kinds: BTreeMap<&str, usize> = BTreeMap::new();
        for s in self.queue.iter() {
            let k = match s.0.ev {
                Ev::Frame { .. } => "frames",
                Ev::Client { .. } => "clients",
                Ev::Timeline(_) | Ev::Link { .. } | Ev::FinalHeal => "timeline",
                Ev::Connect { .. } => "connects",
                Ev::Timer { .. } => "session timers",
                Ev::Restart { .. } => "restarts",
                Ev::Housekeep { .. } => "housekeeping",
                Ev::Roam => "roaming look",
            };
            *kinds.entry(k).or_default() += 1;
        }
        let mut out = format!("queued {kinds:?}");
        for (i, n) in self.nodes.iter().enumerate() {
            let Some(st) = &n.store else { continue };
            let missing_ids = st.missing_blobs(ACCOUNT).unwrap_or_default();
            let missing = missing_ids.len();
            if let Some(id) = missing_ids.first() {
                out.push_str(&format!("; node {i} lacks {id:?} (authored on node {:?})", self.bodies.get(id)));
            }
            let links: Vec<usize> = n.conns.keys().copied().collect();
            out.push_str(&format!(
                "; node {i}: {} ops, {missing} bodies missing, links {links:?}",
                n.before.iter().map(|(_, c)| c).sum::<u64>()
            ));
        }
        out
    }

    /// After the queue ran dry: every replica identical, every rule held,
    /// bodies where the policies put them.
    fn finish(&mut self) -> Result<(), String> {
        if self.healed.is_none() {
            return Err("the run ended before the final heal".into());
        }
        self.report.converge_ms = self.last_change.saturating_sub(self.report.heal_ms);
        let mut obs = Vec::new();
        let mut versions = Vec::new();
        for (i, n) in self.nodes.iter().enumerate() {
            let store = n.store.as_ref().ok_or_else(|| format!("node {i} is down at the end"))?;
            let (o, pending) =
                store.inspect(ACCOUNT, |r| (Observation::with_flags(r), r.pending_len())).map_err(err)?;
            if pending != 0 {
                return Err(format!("node {i} still holds {pending} ops waiting for their causes"));
            }
            self.trace.update(o.dump.as_bytes());
            obs.push(o);
            versions.push(store.version(ACCOUNT).map_err(err)?);
        }
        self.report.bytes +=
            self.nodes.iter().flat_map(|n| n.conns.values()).map(|c| c.link.session().bytes().0).sum::<u64>();
        if versions.iter().any(|v| *v != versions[0]) {
            return Err(format!("version vectors differ after quiescence: {versions:?}"));
        }
        self.checker.check_converged(&obs)?;
        self.report.appends = self.checker.appends() as u64;
        self.report.churn = self.checker.churned(&obs).len() as u64;
        self.report.churn_dsync = self.checker.dsync_churned().len() as u64;
        // Bodies: a full node holds all; a partial node holds at least what
        // its policy asks for.
        for (i, n) in self.nodes.iter().enumerate() {
            let store = n.store.as_ref().expect("up");
            // The body indexes (who references a body, what is missing)
            // equal a recount, after every crash and partition of the run.
            if let Some(d) = store.check_blob_refs().map_err(err)?.first() {
                return Err(format!("node {i}: body index differs from a recount: {d}"));
            }
            // The IMAP change index agrees with the messages, within its bounds.
            if let Some(d) = store.check_change_index().map_err(err)?.first() {
                return Err(format!("node {i}: change index: {d}"));
            }
            // Every stored body has its sort keys, and no keys outlive their
            // body (bodies come late, are collected, nodes crash).
            if let Some(d) = store.check_sort_keys().map_err(err)?.first() {
                return Err(format!("node {i}: sort keys: {d}"));
            }
            if i == 0 {
                self.report.spent_uids = store.spent_uids(ACCOUNT).map_err(err)?;
            }
            let missing = store.missing_bodies(ACCOUNT).map_err(err)?;
            if let Some(m) =
                missing.iter().find(|m| n.policy.wants_body(m.mailbox.as_deref(), m.uid, m.size, m.internal_date))
            {
                return Err(format!("node {i} lacks a body its policy wants: {:?} in {:?}", m.blob, m.mailbox));
            }
        }
        self.check_on_demand()
    }

    /// A partial node asks a peer for a body it left out and gets it whole.
    fn check_on_demand(&mut self) -> Result<(), String> {
        for i in 0..self.nodes.len() {
            let store = self.nodes[i].store.as_ref().expect("up");
            let Some(missing) = store.missing_blobs(ACCOUNT).map_err(err)?.into_iter().next() else { continue };
            let Some(&author) = self.bodies.get(&missing) else { continue };
            let Some(c) = self.nodes[i].conns.get_mut(&author) else {
                return Err(format!("node {i} is not connected to node {author} at the end"));
            };
            c.link.fetch_bodies([(missing, 0)]);
            self.flush(i, author);
            while let Some(Reverse(s)) = self.queue.pop() {
                self.now = s.at;
                self.step(s.ev)?;
            }
            // Fetched, got for the account (off its missing list), and read
            // through it.
            let store = self.nodes[i].store.as_ref().expect("up");
            let got = store.read(ACCOUNT).map_err(err)?.body(missing).ok();
            let want = self.nodes[author].store.as_ref().expect("up").blob(missing).map_err(err)?;
            if got.is_none() || got != want || store.missing_blobs(ACCOUNT).map_err(err)?.contains(&missing) {
                return Err(format!("node {i}: on-demand fetch of {missing:?} from node {author} failed"));
            }
        }
        Ok(())
    }
}
