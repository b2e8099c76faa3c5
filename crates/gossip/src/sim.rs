//! A deterministic simulated network for [`Gossip`]: virtual time,
//! per-datagram delay and loss, crashes, restarts and partitions drawn from
//! a seed. The same `Gossip` code the node runs; the tests and
//! `starling-bench gossip` use it to check safety (no node ever lists a
//! member that does not exist, queues within their bounds) and liveness
//! (everyone alive lists everyone alive once the faults stop) apart.

use crate::{Gossip, Member, Settings, OUT_MAX};
use rand::rngs::SmallRng;
use rand::{RngExt, SeedableRng};
use std::cmp::Reverse;
use std::collections::{BTreeSet, BinaryHeap};
use std::time::{Duration, Instant};

/// What one run does.
#[derive(Clone, Debug)]
pub struct Plan {
    /// Nodes.
    pub nodes: usize,
    /// Seed of every choice (network and nodes).
    pub seed: u64,
    /// One-way delay of a datagram: base, plus up to `jitter`.
    pub delay: Duration,
    /// Added at random to each datagram's delay, at most.
    pub jitter: Duration,
    /// Chance a datagram is lost (until the faults stop).
    pub loss: f64,
    /// Faults: each period, with these chances, a live node crashes, a
    /// crashed one restarts, a new one joins (up to `nodes`), or the network
    /// splits in two for `partition` (none after `faults_until`).
    pub crash: f64,
    /// See `crash`.
    pub restart: f64,
    /// How long a partition lasts, if any (one at most at a time).
    pub partition: Option<Duration>,
    /// Faults stop then; the run goes on until `until` to check that
    /// everyone converges.
    pub faults_until: Duration,
    /// End of the run.
    pub until: Duration,
    /// Nodes that start at once; the others join one by one, each
    /// announcing itself to one random node already in (as with an
    /// invitation), every `join_every`.
    pub initial: usize,
    /// See `initial`.
    pub join_every: Duration,
    /// Nodes (by index) that crash when the faults stop and never come
    /// back: the others must all see them down. Every other node that is
    /// down then restarts.
    pub gone: Vec<usize>,
}

impl Plan {
    /// `nodes` joining one by one on a quiet network, nothing failing.
    pub fn quiet(nodes: usize, seed: u64) -> Plan {
        Plan {
            nodes,
            seed,
            delay: Duration::from_millis(5),
            jitter: Duration::from_millis(5),
            loss: 0.0,
            crash: 0.0,
            restart: 0.0,
            partition: None,
            faults_until: Duration::ZERO,
            until: Duration::from_secs(60 + nodes as u64),
            initial: 1,
            join_every: Duration::from_millis(200),
            gone: Vec::new(),
        }
    }

    /// Faults and sizes drawn from the seed (swarm testing).
    pub fn swarm(seed: u64, nodes_max: usize) -> Plan {
        let mut r = SmallRng::seed_from_u64(seed ^ 0x5157_4152_4d00);
        let nodes = r.random_range(2..=nodes_max.max(2));
        let faults = Duration::from_secs(r.random_range(10..120));
        Plan {
            nodes,
            seed,
            delay: Duration::from_millis(r.random_range(1..60)),
            jitter: Duration::from_millis(r.random_range(0..40)),
            loss: [0.0, 0.01, 0.05, 0.2][r.random_range(0..4)],
            crash: [0.0, 0.02, 0.1][r.random_range(0..3)],
            restart: [0.05, 0.2, 0.5][r.random_range(0..3)],
            partition: r.random_bool(0.5).then(|| Duration::from_secs(r.random_range(5..60))),
            faults_until: faults,
            // Time to converge after the last fault: suspicion and down
            // timeouts, the periodic announce to down members, and a
            // partition that started just before the faults stopped.
            until: faults + Duration::from_secs(240),
            initial: r.random_range(1..=nodes),
            join_every: Duration::from_millis(r.random_range(50..2000)),
            // Never the first node: it is everyone's seed.
            gone: (0..r.random_range(0..3)).map(|_| r.random_range(1..nodes)).collect(),
        }
    }
}

/// What a run saw.
#[derive(Clone, Debug, Default)]
pub struct Report {
    /// Time from the last node's join (or the last fault) until every live
    /// node listed every other live node and no other, if it happened.
    pub converged_after: Option<Duration>,
    /// Datagrams sent in all, and bytes.
    pub datagrams: u64,
    /// See `datagrams`.
    pub bytes: u64,
    /// Datagrams lost on the way (loss, partitions, crashed receivers).
    pub lost: u64,
    /// Largest outgoing queue seen on any node.
    pub max_out_queue: usize,
    /// Crashes, restarts and partitions that happened.
    pub crashes: u64,
    /// See `crashes`.
    pub restarts: u64,
    /// See `crashes`.
    pub partitions: u64,
    /// Safety violations: a node listed a member that never existed, or a
    /// member's address or id did not match what that node advertises.
    pub violations: Vec<String>,
}

/// A datagram on the wire: (due, sequence, receiver, bytes).
type InFlight = (Duration, u64, usize, Vec<u8>);

struct Node {
    gossip: Option<Gossip>,
    member: Member,
    side: bool,
}

/// Runs `plan`; deterministic for a given plan.
pub fn run(plan: &Plan) -> Report {
    let t0 = Instant::now();
    let mut rng = SmallRng::seed_from_u64(plan.seed);
    let settings = Settings { cluster_size: plan.nodes as u32, probe_period: Duration::from_secs(1) };
    let member = |i: usize, generation: u64| {
        let mut id = [0u8; 32];
        id[..8].copy_from_slice(&(i as u64 + 1).to_be_bytes());
        let addr = format!("10.0.{}.{}:7431", i / 250, i % 250 + 1).parse().expect("address");
        Member::new(id, addr, vec!["alice".to_string()], generation)
    };
    let mut nodes: Vec<Node> = Vec::new();
    let mut report = Report::default();
    // In flight: (due, seq) -> (to, from, bytes).
    let mut wire: BinaryHeap<Reverse<InFlight>> = BinaryHeap::new();
    let mut seq = 0u64;
    let mut partition_until: Option<Duration> = None;
    let mut last_change = Duration::ZERO;
    let mut next_join = Duration::ZERO;
    let mut next_fault = Duration::from_secs(1);
    let mut converged_since: Option<Duration> = None;
    let mut faults_over = false;
    let mut now = Duration::ZERO;
    let live_ids = |nodes: &Vec<Node>| -> BTreeSet<[u8; 32]> {
        nodes.iter().filter(|n| n.gossip.is_some()).map(|n| n.member.node).collect()
    };
    let step = Duration::from_millis(10);
    while now <= plan.until {
        // Joins: the first `initial` at once, knowing the first node; the
        // rest one by one, each announcing itself to a random live node.
        while nodes.len() < plan.nodes && now >= next_join {
            let i = nodes.len();
            let m = member(i, 1);
            let mut g =
                Gossip::new(m.clone(), &settings, plan.seed.wrapping_mul(1000).wrapping_add(i as u64), t0 + now);
            let live: Vec<usize> = (0..i).filter(|&j| nodes[j].gossip.is_some()).collect();
            if !live.is_empty() {
                let j = if i < plan.initial { live[0] } else { live[rng.random_range(0..live.len())] };
                introduce(&mut g, &mut nodes[j], plan, &mut rng, t0 + now);
                // The first node is every joiner's second seed (as the
                // addresses of a cluster's first node in its invitations).
                if j != 0 {
                    g.announce(nodes[0].member.clone(), t0 + now);
                }
            }
            nodes.push(Node { gossip: Some(g), member: m, side: rng.random_bool(0.5) });
            last_change = now;
            if nodes.len() >= plan.initial {
                next_join = now + plan.join_every;
            }
        }
        // Faults.
        if now >= next_fault && now < plan.faults_until {
            next_fault = now + Duration::from_secs(1);
            for i in 0..nodes.len() {
                if nodes[i].gossip.is_some() && rng.random_bool(plan.crash) {
                    nodes[i].gossip = None;
                    report.crashes += 1;
                    last_change = now;
                } else if nodes[i].gossip.is_none() && rng.random_bool(plan.restart) {
                    restart(&mut nodes, i, plan, &settings, &mut rng, &member, t0 + now, now);
                    report.restarts += 1;
                    last_change = now;
                }
            }
            if let Some(p) = plan.partition {
                if partition_until.is_none() && rng.random_bool(0.05) {
                    partition_until = Some(now + p);
                    report.partitions += 1;
                    for n in nodes.iter_mut() {
                        n.side = rng.random_bool(0.5);
                    }
                }
            }
        }
        // The faults stop: the nodes gone for good crash, every other
        // crashed node comes back.
        if now >= plan.faults_until && !faults_over && nodes.len() == plan.nodes {
            faults_over = true;
            for i in 0..nodes.len() {
                if plan.gone.contains(&i) {
                    nodes[i].gossip = None;
                } else if nodes[i].gossip.is_none() {
                    restart(&mut nodes, i, plan, &settings, &mut rng, &member, t0 + now, now);
                    report.restarts += 1;
                }
            }
            last_change = now;
        }
        if partition_until.is_some_and(|t| now >= t) {
            partition_until = None;
            last_change = now;
        }
        // Deliver what is due.
        while let Some(Reverse((due, _, _, _))) = wire.peek() {
            if *due > now {
                break;
            }
            let Reverse((_, _, to, bytes)) = wire.pop().expect("peeked");
            match nodes[to].gossip.as_mut() {
                Some(g) => {
                    let _ = g.handle_datagram(&bytes, t0 + now);
                }
                None => report.lost += 1,
            }
        }
        // Timers, then what each node sends.
        let sides: Vec<(bool, bool)> = nodes.iter().map(|n| (n.side, n.gossip.is_some())).collect();
        for i in 0..nodes.len() {
            let Some(g) = nodes[i].gossip.as_mut() else { continue };
            g.handle_timeout(t0 + now);
            report.max_out_queue = report.max_out_queue.max(g.out.len());
            assert!(g.out.len() <= OUT_MAX);
            while let Some((to, bytes)) = g.poll_transmit() {
                report.datagrams += 1;
                report.bytes += bytes.len() as u64;
                let Some(j) = index_of(&to.node).filter(|&j| j < sides.len()) else {
                    report.violations.push(format!("node {i} sent to a node that never existed"));
                    continue;
                };
                let cut = partition_until.is_some() && sides[i].0 != sides[j].0;
                // Loss is a fault too: the network is clean once faults stop.
                if cut || (!faults_over && rng.random_bool(plan.loss)) {
                    report.lost += 1;
                    continue;
                }
                let jitter = if plan.jitter.is_zero() {
                    Duration::ZERO
                } else {
                    Duration::from_micros(rng.random_range(0..plan.jitter.as_micros() as u64))
                };
                seq += 1;
                wire.push(Reverse((now + plan.delay + jitter, seq, j, bytes)));
            }
            while g.poll_event().is_some() {}
        }
        // Safety (every 100 ms): every member listed exists with what it advertised.
        let live = live_ids(&nodes);
        if now.as_millis().is_multiple_of(100) {
            for (i, n) in nodes.iter().enumerate() {
                let Some(g) = &n.gossip else { continue };
                for m in g.members() {
                    match index_of(&m.node).and_then(|j| nodes.get(j)) {
                        None => report.violations.push(format!("node {i} lists a member that never existed")),
                        Some(o) if o.member.addr != m.addr || o.member.accounts != m.accounts => report
                            .violations
                            .push(format!("node {i} lists a member with the wrong address or accounts")),
                        Some(_) => {}
                    }
                }
            }
        }
        // Liveness: once joins and faults are over, everyone alive lists
        // exactly everyone else alive.
        let settled = faults_over && partition_until.is_none();
        let agreed = settled
            && nodes.iter().filter_map(|n| n.gossip.as_ref().map(|g| (n, g))).all(|(n, g)| {
                let listed: BTreeSet<[u8; 32]> = g.members().map(|m| m.node).collect();
                let mut others = live.clone();
                others.remove(&n.member.node);
                listed == others
            });
        match (agreed, converged_since) {
            (true, None) => converged_since = Some(now),
            (false, Some(_)) => converged_since = None,
            _ => {}
        }
        now += step;
    }
    report.converged_after = converged_since.map(|t| t.saturating_sub(last_change));
    report
}

/// Node `i` restarts: a newer generation, introduced by up to three random
/// live nodes (its pinned peers).
#[allow(clippy::too_many_arguments)]
fn restart(
    nodes: &mut [Node],
    i: usize,
    plan: &Plan,
    settings: &Settings,
    rng: &mut SmallRng,
    member: &dyn Fn(usize, u64) -> Member,
    at: Instant,
    now: Duration,
) {
    let generation = nodes[i].member.generation + 1 + now.as_millis() as u64;
    let m = member(i, generation);
    let mut g = Gossip::new(m.clone(), settings, plan.seed ^ generation ^ i as u64, at);
    let live: Vec<usize> = (0..nodes.len()).filter(|&j| j != i && nodes[j].gossip.is_some()).collect();
    for _ in 0..3.min(live.len()) {
        let j = live[rng.random_range(0..live.len())];
        introduce(&mut g, &mut nodes[j], plan, rng, at);
    }
    nodes[i] = Node { gossip: Some(g), member: m, side: rng.random_bool(0.5) };
}

/// A node joining (or back) through `introducer`, as the node does over
/// its QUIC connection to a pinned peer: an announce, and both membership
/// states exchanged over the stream (lost with the plan's loss, as a
/// connection that failed).
fn introduce(g: &mut Gossip, introducer: &mut Node, plan: &Plan, rng: &mut SmallRng, now: Instant) {
    g.announce(introducer.member.clone(), now);
    let Some(other) = introducer.gossip.as_mut() else { return };
    if !rng.random_bool(plan.loss) {
        g.merge_state(&other.state(), now).expect("a state merges");
        other.merge_state(&g.state(), now).expect("a state merges");
    }
}

/// The simulated node index of an id (`member` writes `index + 1` in its
/// first eight bytes).
fn index_of(id: &[u8; 32]) -> Option<usize> {
    let n = u64::from_be_bytes(id[..8].try_into().expect("8 bytes"));
    n.checked_sub(1).map(|i| i as usize)
}
