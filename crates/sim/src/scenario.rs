//! Scenario files (TOML): the cluster, the network's faults, the workload and
//! a timeline of partitions and crashes. `simulations/*.toml` are examples;
//! `simulations/README.md` documents every key.

use serde::Deserialize;
use std::path::Path;

/// One simulation setup; the seed varies everything random within it.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Scenario {
    /// Shown in reports.
    pub name: String,
    /// Number of nodes (2–64).
    pub nodes: usize,
    /// How long clients act, in simulated hours; then every fault heals.
    pub hours: f64,
    /// Deadline for convergence after the final heal (simulated hours).
    #[serde(default = "one")]
    pub settle_hours: f64,
    /// Largest clock offset of a node from true time, in minutes (each node
    /// draws its own in ±this).
    #[serde(default)]
    pub clock_skew_minutes: f64,
    /// Faults of the links.
    #[serde(default)]
    pub network: Network,
    /// What clients do.
    #[serde(default)]
    pub workload: Workload,
    /// Partial replicas.
    #[serde(default)]
    pub partial: Vec<Partial>,
    /// Timeline of partitions, crashes and compactions.
    #[serde(default)]
    pub events: Vec<TimedEvent>,
    /// Swarm testing: each seed draws its own node count (down to the
    /// highest node the timeline names), fault rates (up to twice the
    /// given ones), delays, client rate, bulk sizes and timeline length
    /// ([`Scenario::swarm`]), so that a sweep covers many setups.
    #[serde(default)]
    pub swarm: bool,
    /// Each node's housekeeping (log compaction, body collection, as
    /// `serve` runs it) every this many simulated minutes while clients
    /// act; 0: only at the timeline's `compact` events.
    #[serde(default = "housekeeping_minutes")]
    pub housekeeping_minutes: f64,
    /// k, exposure after k peers (`[durability] peers`): the roaming
    /// client's looks first catch up with k connected peers and are
    /// answered once k peers hold them. With 2k + 2 > nodes, a UID it was
    /// shown at such a look must never name another message at a later one.
    #[serde(default)]
    pub durability_peers: usize,
    /// How long (simulated ms) a look waits for that before it degrades
    /// (`[durability] wait_ms`).
    #[serde(default = "durability_wait_ms")]
    pub durability_wait_ms: u64,
    /// Sessions per node: 0 for a full mesh (every pair of nodes holds a
    /// session), else each node holds sessions with at most this many
    /// others (a ring with chords, see [`linked`]) and changes reach the
    /// rest by relaying.
    #[serde(default)]
    pub fanout: usize,
}

pub use starling_gossip::topology::linked;

fn durability_wait_ms() -> u64 {
    10_000
}

fn housekeeping_minutes() -> f64 {
    20.0
}

/// Above zero (false for NaN).
fn positive(x: f64) -> bool {
    x > 0.0
}

fn one() -> f64 {
    1.0
}

/// Per-frame network behaviour. Delays and retransmissions keep each
/// stream's order (what QUIC gives); `duplicate` and `reorder` break it on
/// purpose, to show a broken transport costs a reconnect, never state.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Network {
    /// One-way delay range in milliseconds.
    pub delay_ms: [u64; 2],
    /// Chance a frame's packet is lost and retransmitted (200–1000 ms later,
    /// holding up the frames behind it on its stream).
    pub loss: f64,
    /// Chance a frame is delivered twice.
    pub duplicate: f64,
    /// Chance a frame overtakes the frames before it on its stream.
    pub reorder: f64,
    /// Chance, per frame, that the connection resets.
    pub reset: f64,
}

impl Default for Network {
    fn default() -> Self {
        Network { delay_ms: [1, 30], loss: 0.0, duplicate: 0.0, reorder: 0.0, reset: 0.0 }
    }
}

/// The clients.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Workload {
    /// Client actions per node per simulated hour.
    pub actions_per_node_hour: f64,
    /// Chance a delivered message is large (1.1–1.6 MB).
    pub big_body: f64,
    /// Relative weights of the actions.
    pub mix: Mix,
}

impl Default for Workload {
    fn default() -> Self {
        Workload { actions_per_node_hour: 60.0, big_body: 0.0, mix: Mix::default() }
    }
}

/// Relative weights of client actions.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Mix {
    /// LMTP delivery to INBOX.
    pub deliver: f64,
    /// IMAP APPEND to any mailbox, with keywords.
    pub append: f64,
    /// STORE +/- keywords.
    pub flags: f64,
    /// MOVE.
    pub moves: f64,
    /// COPY.
    pub copy: f64,
    /// EXPUNGE of one message.
    pub expunge: f64,
    /// CREATE.
    pub create: f64,
    /// RENAME.
    pub rename: f64,
    /// DELETE.
    pub delete: f64,
    /// SELECT (announces UIDNEXT; the checker records the UIDs shown).
    pub select: f64,
}

impl Default for Mix {
    fn default() -> Self {
        Mix {
            deliver: 25.0,
            append: 5.0,
            flags: 30.0,
            moves: 8.0,
            copy: 3.0,
            expunge: 6.0,
            create: 1.5,
            rename: 1.0,
            delete: 0.5,
            select: 20.0,
        }
    }
}

/// A node that fetches only some bodies eagerly.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Partial {
    /// Its index.
    pub node: usize,
    /// Mailboxes whose bodies it takes (all if absent).
    pub mailboxes: Option<Vec<String>>,
    /// Largest body it takes eagerly.
    pub size_max: Option<u64>,
}

/// Something that happens at a time.
#[derive(Clone, Debug, Deserialize)]
pub struct TimedEvent {
    /// When, in simulated hours from the start.
    pub at_hours: f64,
    /// What.
    #[serde(flatten)]
    pub action: Action,
}

/// Timeline actions.
#[derive(Clone, Debug, Deserialize)]
#[serde(tag = "do", rename_all = "snake_case")]
pub enum Action {
    /// Links only inside each group.
    Partition {
        /// Node indexes per group; every node in exactly one.
        groups: Vec<Vec<usize>>,
    },
    /// Every link up.
    Heal,
    /// Cut one node from all others.
    Isolate {
        /// Its index.
        node: usize,
    },
    /// A node loses power; it restarts from its store later.
    Crash {
        /// Its index.
        node: usize,
        /// Down for this long.
        down_minutes: f64,
    },
    /// The link between two nodes goes down and up every period.
    Flap {
        /// One end.
        a: usize,
        /// The other end.
        b: usize,
        /// Half a period down, half up.
        period_minutes: f64,
        /// Until then (simulated hours from the start).
        until_hours: f64,
    },
    /// Each node in turn crashes for a while.
    RollingCrashes {
        /// Time between two crashes.
        every_minutes: f64,
        /// Time each stays down.
        down_minutes: f64,
        /// Until then (simulated hours from the start).
        until_hours: f64,
    },
    /// Every running node drops from its log the ops every member holds
    /// (causally stable ones); a node that joins later catches up by snapshot.
    Compact,
    /// A node that was not there before starts empty and joins.
    Join {
        /// Its index (it is absent until now).
        node: usize,
    },
    /// A burst of mail: `messages` deliveries to INBOX at a node (committed
    /// a thousand at a time); with `show`, a client then selects INBOX
    /// (the node announces UIDNEXT: every UID is shown).
    Deliver {
        /// Its index.
        node: usize,
        /// How many.
        messages: usize,
        /// Whether a client looks afterwards.
        #[serde(default)]
        show: bool,
    },
    /// The roaming QRESYNC client looks at INBOX at a node (a user failing
    /// over to it), besides following the clients' looks.
    Roam {
        /// Its index.
        node: usize,
    },
    /// Writers take turns setting and clearing `\Flagged` on every message
    /// of INBOX, one round every `every_minutes` (each round after the
    /// previous one has had time to arrive: a long, causally interleaved
    /// history).
    FlagRounds {
        /// The writers, in turn.
        writers: Vec<usize>,
        /// Rounds in all.
        rounds: usize,
        /// Time between rounds.
        every_minutes: f64,
    },
    /// One round of [`Action::FlagRounds`]: `\Flagged` set (or cleared) on
    /// every message of INBOX at a node, in one commit.
    FlagAll {
        /// Its index.
        node: usize,
        /// Set (true) or clear.
        set: bool,
    },
}

/// A scenario that cannot be run.
#[derive(Debug, thiserror::Error)]
pub enum ScenarioError {
    /// Unreadable file.
    #[error("{path}: {reason}")]
    Io {
        /// The file.
        path: String,
        /// Why.
        reason: String,
    },
    /// Not valid TOML or unknown keys.
    #[error("{path}: {reason}")]
    Syntax {
        /// The file.
        path: String,
        /// The parser's message (with line and column).
        reason: String,
    },
    /// Valid TOML describing an impossible setup.
    #[error("{path}: {reason}")]
    Invalid {
        /// The file.
        path: String,
        /// What is wrong.
        reason: String,
    },
}

/// The scenario files (`*.toml`) in a directory, sorted.
pub fn files_in(dir: &Path) -> Result<Vec<std::path::PathBuf>, String> {
    let mut v: Vec<std::path::PathBuf> = std::fs::read_dir(dir)
        .map_err(|e| format!("{}: {e}", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "toml"))
        .collect();
    v.sort();
    Ok(v)
}

impl Scenario {
    /// Reads and validates a scenario file.
    pub fn load(path: &Path) -> Result<Scenario, ScenarioError> {
        let p = path.display().to_string();
        let text =
            std::fs::read_to_string(path).map_err(|e| ScenarioError::Io { path: p.clone(), reason: e.to_string() })?;
        Self::parse(&text).map_err(|e| match e {
            ScenarioError::Syntax { reason, .. } => ScenarioError::Syntax { path: p.clone(), reason },
            ScenarioError::Invalid { reason, .. } => ScenarioError::Invalid { path: p.clone(), reason },
            other => other,
        })
    }

    /// Parses and validates scenario text.
    pub fn parse(text: &str) -> Result<Scenario, ScenarioError> {
        let s: Scenario =
            toml::from_str(text).map_err(|e| ScenarioError::Syntax { path: String::new(), reason: e.to_string() })?;
        s.validate().map_err(|reason| ScenarioError::Invalid { path: String::new(), reason })?;
        Ok(s)
    }

    fn validate(&self) -> Result<(), String> {
        if !(2..=64).contains(&self.nodes) {
            return Err(format!("nodes = {}: must be 2 to 64", self.nodes));
        }
        if !(positive(self.hours) && self.hours <= 24.0 * 366.0) {
            return Err(format!("hours = {}: must be above 0 and at most a year", self.hours));
        }
        if !positive(self.settle_hours) {
            return Err("settle_hours must be above 0".into());
        }
        if self.durability_peers >= self.nodes {
            return Err(format!("durability_peers = {}: must be below nodes", self.durability_peers));
        }
        if !(1..=600_000).contains(&self.durability_wait_ms) {
            return Err("durability_wait_ms must be 1 to 600000".into());
        }
        let n = &self.network;
        if n.delay_ms[0] > n.delay_ms[1] {
            return Err("network.delay_ms: the first bound is above the second".into());
        }
        for (k, p) in [("loss", n.loss), ("duplicate", n.duplicate), ("reorder", n.reorder), ("reset", n.reset)] {
            if !(0.0..=0.5).contains(&p) {
                return Err(format!("network.{k} = {p}: must be between 0 and 0.5"));
            }
        }
        if !positive(self.workload.actions_per_node_hour) {
            return Err("workload.actions_per_node_hour must be above 0".into());
        }
        let node_ok = |i: usize, what: &str| {
            if i < self.nodes {
                Ok(())
            } else {
                Err(format!("{what}: node {i} does not exist (nodes = {})", self.nodes))
            }
        };
        for p in &self.partial {
            node_ok(p.node, "partial")?;
        }
        for e in &self.events {
            if !(positive(e.at_hours) || e.at_hours == 0.0) {
                return Err("events: at_hours must be 0 or more".into());
            }
            match &e.action {
                Action::Partition { groups } => {
                    let mut seen = vec![false; self.nodes];
                    for i in groups.iter().flatten() {
                        node_ok(*i, "partition")?;
                        if std::mem::replace(&mut seen[*i], true) {
                            return Err(format!("partition: node {i} is in two groups"));
                        }
                    }
                    if seen.contains(&false) {
                        return Err("partition: every node must be in a group".into());
                    }
                }
                Action::Isolate { node }
                | Action::Crash { node, .. }
                | Action::Join { node }
                | Action::Deliver { node, .. }
                | Action::Roam { node }
                | Action::FlagAll { node, .. } => node_ok(*node, "event")?,
                Action::FlagRounds { writers, every_minutes, .. } => {
                    for w in writers {
                        node_ok(*w, "flag_rounds")?;
                    }
                    if writers.is_empty() || !positive(*every_minutes) {
                        return Err("flag_rounds: needs writers and every_minutes above 0".into());
                    }
                }
                Action::Flap { a, b, period_minutes, .. } => {
                    node_ok(*a, "flap")?;
                    node_ok(*b, "flap")?;
                    if a == b || !positive(*period_minutes) {
                        return Err("flap: needs two different nodes and a period above 0".into());
                    }
                }
                Action::RollingCrashes { every_minutes, .. } => {
                    if !positive(*every_minutes) {
                        return Err("rolling_crashes: every_minutes must be above 0".into());
                    }
                }
                Action::Heal | Action::Compact => {}
            }
        }
        Ok(())
    }
}

/// A uniform draw in `[lo, hi]` from a seeded generator.
fn uniform(rng: &mut starling_model::testkit::Rng, lo: f64, hi: f64) -> f64 {
    lo + (rng.next_u64() >> 11) as f64 / (1u64 << 53) as f64 * (hi - lo)
}

impl Scenario {
    /// The highest node index the timeline names outside partitions (those
    /// shrink with the cluster).
    fn highest_named_node(&self) -> usize {
        let mut hi = 1;
        for e in &self.events {
            let named: Vec<usize> = match &e.action {
                Action::Isolate { node }
                | Action::Crash { node, .. }
                | Action::Join { node }
                | Action::Deliver { node, .. }
                | Action::Roam { node }
                | Action::FlagAll { node, .. } => vec![*node],
                Action::Flap { a, b, .. } => vec![*a, *b],
                Action::FlagRounds { writers, .. } => writers.clone(),
                Action::Partition { .. } | Action::Heal | Action::Compact | Action::RollingCrashes { .. } => vec![],
            };
            hi = named.into_iter().fold(hi, usize::max);
        }
        for p in &self.partial {
            hi = hi.max(p.node);
        }
        hi
    }

    /// This scenario as one seed of a swarm draws it (see
    /// [`Scenario::swarm`]'s field); unchanged if `swarm` is off. The draw
    /// is a description of the run, for reports.
    pub fn swarm_draw(&self, rng: &mut starling_model::testkit::Rng) -> (Scenario, String) {
        if !self.swarm {
            return (self.clone(), String::new());
        }
        let mut s = self.clone();
        let lo = self.highest_named_node() + 1;
        s.nodes = lo + rng.below(self.nodes - lo + 1);
        let n = &mut s.network;
        let pick = |rng: &mut starling_model::testkit::Rng, p: f64| uniform(rng, 0.0, (2.0 * p).min(0.5));
        n.loss = pick(rng, n.loss);
        n.duplicate = pick(rng, n.duplicate);
        n.reorder = pick(rng, n.reorder);
        n.reset = pick(rng, n.reset);
        n.delay_ms[1] = n.delay_ms[0] + (uniform(rng, 0.25, 4.0) * (n.delay_ms[1] - n.delay_ms[0]) as f64) as u64;
        s.workload.actions_per_node_hour *= uniform(rng, 0.25, 2.0);
        let time = uniform(rng, 0.5, 1.5);
        let size = uniform(rng, 0.2, 1.0);
        s.hours *= time;
        for e in &mut s.events {
            e.at_hours *= time;
            match &mut e.action {
                Action::Partition { groups } => {
                    for g in groups.iter_mut() {
                        g.retain(|i| *i < s.nodes);
                    }
                    groups.retain(|g| !g.is_empty());
                }
                Action::Deliver { messages, .. } => *messages = ((*messages as f64 * size) as usize).max(1),
                Action::FlagRounds { rounds, .. } => *rounds = ((*rounds as f64 * size) as usize).max(1),
                Action::Flap { until_hours, .. } | Action::RollingCrashes { until_hours, .. } => *until_hours *= time,
                _ => {}
            }
        }
        let d = format!(
            "nodes {} loss {:.3} dup {:.3} reorder {:.3} reset {:.4} delay {:?} rate {:.0}/h time x{time:.2} size x{size:.2}",
            s.nodes,
            s.network.loss,
            s.network.duplicate,
            s.network.reorder,
            s.network.reset,
            s.network.delay_ms,
            s.workload.actions_per_node_hour
        );
        (s, d)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_fanout_bounds_each_nodes_sessions_and_keeps_every_node_in_reach() {
        for n in 2..=64 {
            for fanout in [0, 2, 4, 6, 8] {
                let degree = |a: usize| (0..n).filter(|&b| linked(fanout, n, a, b)).count();
                let bound = if fanout == 0 { n - 1 } else { fanout };
                assert!((0..n).all(|a| degree(a) <= bound), "n {n} fanout {fanout}");
                assert!((0..n).all(|a| (0..n).all(|b| linked(fanout, n, a, b) == linked(fanout, n, b, a))));
                // Connected, within about log2(n) hops.
                let mut hops = vec![usize::MAX; n];
                hops[0] = 0;
                let mut frontier = vec![0];
                while let Some(a) = frontier.pop() {
                    for b in 0..n {
                        if linked(fanout, n, a, b) && hops[b] > hops[a] + 1 {
                            hops[b] = hops[a] + 1;
                            frontier.push(b);
                        }
                    }
                }
                let far = *hops.iter().max().unwrap();
                assert!(far != usize::MAX, "n {n} fanout {fanout}: not connected");
                // Steps 1, 2, …, 2^(fanout/2 - 1): hops about n / 2^(fanout/2) + fanout/2.
                if fanout > 0 {
                    let reach = 1usize << (fanout / 2);
                    assert!(far <= n / reach + fanout, "n {n} fanout {fanout}: {far} hops");
                }
            }
        }
    }

    #[test]
    fn bad_scenarios_name_the_problem() {
        let bad = |t: &str| Scenario::parse(t).unwrap_err().to_string();
        assert!(bad("name = 'x'\nnodes = 1\nhours = 1").contains("nodes = 1"));
        assert!(bad("name = 'x'\nnodes = 3\nhours = 1\nfoo = 2").contains("foo"));
        let e = bad("name='x'\nnodes=3\nhours=1\n[[events]]\nat_hours=1\ndo='partition'\ngroups=[[0,1],[1,2]]");
        assert!(e.contains("two groups"), "{e}");
        assert!(bad("name='x'\nnodes=3\nhours=1\n[[events]]\nat_hours=1\ndo='crash'\nnode=9\ndown_minutes=1")
            .contains("node 9"));
        let ok = Scenario::parse("name='x'\nnodes=3\nhours=1\n[[events]]\nat_hours=0.5\ndo='heal'").unwrap();
        assert_eq!(ok.events.len(), 1);
    }
}
