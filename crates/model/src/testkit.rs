//! A deterministic in-memory cluster of replicas for tests and benchmarks:
//! per-link queues with reordering, duplication and partitions, a seeded RNG,
//! and the invariant checker of the UID rules (U1–U3), add-wins flags,
//! expunge-wins and move safety. It drives [`Replica::apply`] exactly as the
//! node does; it is not used by the node.

use crate::backend::Backend;
use crate::flags::{FlagDelta, FlagState};
use crate::ids::{BlobId, MailboxId, MessageId, ReplicaId, VersionVector};
use crate::keyword::Keyword;
use crate::op::{Op, OpBody};
use crate::replica::{Replica, ReplicaOptions};
use std::collections::{BTreeMap, BTreeSet, HashMap};

/// SplitMix64: small, seedable, good enough to drive schedules.
#[derive(Clone, Debug)]
pub struct Rng(u64);

impl Rng {
    /// A generator for `seed`.
    pub fn new(seed: u64) -> Self {
        Rng(seed)
    }
    /// Next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    /// Uniform in `0..n` (n > 0).
    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n as u64) as usize
    }
    /// True with probability `p`.
    pub fn chance(&mut self, p: f64) -> bool {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64 <= p
    }
}

/// `n` pseudo-random bytes from `seed` that zstd cannot shrink, so a store
/// keeps them verbatim (tests that find them in the file to damage them).
pub fn incompressible(n: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

/// Keywords the workloads use.
pub fn workload_keywords() -> Vec<Keyword> {
    vec![
        Keyword::Seen,
        Keyword::Flagged,
        Keyword::Answered,
        Keyword::parse("$Junk").unwrap(),
        Keyword::parse("work").unwrap(),
    ]
}

/// N replicas and the links between them.
pub struct Cluster {
    /// The replicas, index = position.
    pub replicas: Vec<Replica>,
    /// In flight from `i` to `j`: `queues[i][j]`.
    queues: Vec<Vec<Vec<Op>>>,
    /// Link `i → j` delivers only while `up[i][j]`.
    up: Vec<Vec<bool>>,
    /// The invariant checker, fed every op and every client look.
    pub checker: Checker,
    blob_seq: u64,
}

impl Cluster {
    /// `n` replicas with ids 1..=n, all links up.
    pub fn new(n: usize) -> Self {
        Self::with_options(n, ReplicaOptions::default())
    }

    /// `n` replicas with options.
    pub fn with_options(n: usize, options: ReplicaOptions) -> Self {
        Cluster {
            replicas: (1..=n as u64).map(|i| Replica::with_options(ReplicaId(i * 0x1000_0001), options)).collect(),
            queues: vec![vec![Vec::new(); n]; n],
            up: vec![vec![true; n]; n],
            checker: Checker::new(n),
            blob_seq: 0,
        }
    }

    /// Number of replicas.
    pub fn len(&self) -> usize {
        self.replicas.len()
    }

    /// Whether the cluster is empty.
    pub fn is_empty(&self) -> bool {
        self.replicas.is_empty()
    }

    /// Moves what replica `i` made into the history and onto its links.
    fn collect(&mut self, i: usize, before: VersionVector) {
        let ops = self.replicas[i].take_outbox();
        let mut vv = before;
        for op in ops {
            self.checker.record(&op, &vv);
            vv.observe(op.dot);
            for d in &op.deps {
                vv.observe(*d);
            }
            for j in 0..self.replicas.len() {
                if j != i {
                    self.queues[i][j].push(op.clone());
                }
            }
        }
    }

    /// Runs a client action on replica `i` and ships what it made.
    pub fn client<T>(&mut self, i: usize, f: impl FnOnce(&mut Replica) -> T) -> T {
        let before = self.replicas[i].version().clone();
        let out = f(&mut self.replicas[i]);
        self.collect(i, before);
        out
    }

    /// Appends a fresh message to `mailbox` on replica `i`.
    pub fn append(&mut self, i: usize, mailbox: MailboxId, flags: Vec<Keyword>) -> Option<MessageId> {
        self.blob_seq += 1;
        let blob = BlobId::of(&self.blob_seq.to_be_bytes());
        self.client(i, |r| r.append(mailbox, blob, 1000, 1_700_000_000, flags).ok())
    }

    /// A client of replica `i` looks at `mailbox`: it announces UIDNEXT and
    /// the checker records every UID it has now shown.
    pub fn look(&mut self, i: usize, mailbox: MailboxId) {
        self.client(i, |r| r.announce(mailbox).ok());
        self.checker.looked(i, &Observation::of(&self.replicas[i]), mailbox);
    }

    /// Cuts or restores the links between `i` and `j`, both ways.
    pub fn set_link(&mut self, i: usize, j: usize, up: bool) {
        self.up[i][j] = up;
        self.up[j][i] = up;
    }

    /// Splits the cluster: links inside each group up, between groups down.
    pub fn partition(&mut self, group_of: &[usize]) {
        for i in 0..self.len() {
            for j in 0..self.len() {
                self.up[i][j] = group_of[i] == group_of[j];
            }
        }
    }

    /// All links up.
    pub fn heal(&mut self) {
        for row in &mut self.up {
            row.iter_mut().for_each(|u| *u = true);
        }
    }

    /// Delivers the `pick`-th op queued from `i` to `j` (if the link is up);
    /// with `duplicate`, the op stays queued to be delivered again.
    pub fn deliver(&mut self, i: usize, j: usize, pick: usize, duplicate: bool) -> bool {
        if !self.up[i][j] || self.queues[i][j].is_empty() {
            return false;
        }
        let k = pick % self.queues[i][j].len();
        let op = if duplicate { self.queues[i][j][k].clone() } else { self.queues[i][j].swap_remove(k) };
        let before = self.replicas[j].version().clone();
        self.replicas[j].apply(op).expect("apply");
        self.collect(j, before);
        true
    }

    /// Every replica's dump, in order, separated by `--` lines: what the
    /// clients of the whole cluster can see, to compare two runs step by
    /// step.
    pub fn dumps(&self) -> String {
        self.replicas.iter().map(|r| r.dump()).collect::<Vec<_>>().join("--\n")
    }

    /// Delivers everything queued from `i` to `j`, whatever the links (the
    /// receiver applies it in causal order whatever the queue's order);
    /// the link is left down.
    pub fn flush(&mut self, i: usize, j: usize) {
        self.set_link(i, j, true);
        while self.deliver(i, j, 0, false) {}
        self.set_link(i, j, false);
    }

    /// Delivers everything on up links in a random order until nothing is left
    /// (settling may create new ops; they are delivered too).
    pub fn deliver_all(&mut self, rng: &mut Rng) {
        loop {
            let links: Vec<(usize, usize)> = (0..self.len())
                .flat_map(|i| (0..self.len()).map(move |j| (i, j)))
                .filter(|(i, j)| self.up[*i][*j] && !self.queues[*i][*j].is_empty())
                .collect();
            if links.is_empty() {
                return;
            }
            let (i, j) = links[rng.below(links.len())];
            let pick = rng.below(1 << 20);
            self.deliver(i, j, pick, false);
        }
    }

    /// Number of ops in flight.
    pub fn in_flight(&self) -> usize {
        self.queues.iter().flatten().map(|q| q.len()).sum()
    }

    /// Checks U1 and U2 at every replica; call after every step.
    pub fn check_step(&mut self) -> Result<(), String> {
        for i in 0..self.len() {
            self.checker.check_step(i, &Observation::of(&self.replicas[i]))?;
        }
        Ok(())
    }

    /// Checks convergence after everything was delivered with all links up
    /// ([`Checker::check_converged`]).
    pub fn check_converged(&self) -> Result<(), String> {
        if self.in_flight() != 0 || self.replicas.iter().any(|r| r.pending_len() != 0) {
            return Err("not quiescent".into());
        }
        let obs: Vec<Observation> = self.replicas.iter().map(Observation::with_flags).collect();
        self.checker.check_converged(&obs)
    }

    /// Messages whose client-visible UID changed ([`Checker::churned`]).
    pub fn churned(&self) -> BTreeSet<MessageId> {
        let obs: Vec<Observation> = self.replicas.iter().map(Observation::of).collect();
        self.checker.churned(&obs)
    }

    /// What dsync's rule would have renumbered ([`Checker::dsync_churned`]).
    pub fn dsync_churned(&self) -> BTreeSet<MessageId> {
        self.checker.dsync_churned()
    }

    /// Number of appends (and copies) in the history.
    pub fn appends(&self) -> usize {
        self.checker.appends()
    }
}

/// What a checker needs to see of one replica at one moment.
#[derive(Clone, Debug, Default)]
pub struct Observation {
    /// Each mailbox's messages by UID, as a client would see them now.
    pub views: BTreeMap<MailboxId, BTreeMap<u32, MessageId>>,
    /// Each mailbox's UIDNEXT as last announced to a client.
    pub announced: BTreeMap<MailboxId, u32>,
    /// The canonical dump (only from [`Observation::with_flags`]).
    pub dump: String,
    /// Keywords of every displayed message (only from [`Observation::with_flags`]).
    pub flags: HashMap<MessageId, BTreeSet<Keyword>>,
}

impl Observation {
    /// Views and announced UIDNEXTs: enough for [`Checker::check_step`].
    pub fn of<B: Backend>(r: &Replica<B>) -> Observation {
        let mut o = Observation::default();
        for mb in r.tree().by_name.values() {
            o.views.insert(*mb, r.view(*mb).into_iter().map(|(u, m, _)| (u, m)).collect());
            o.announced.insert(*mb, r.announced_uid_next(*mb));
        }
        o
    }

    /// Everything, for [`Checker::check_converged`].
    pub fn with_flags<B: Backend>(r: &Replica<B>) -> Observation {
        let mut o = Self::of(r);
        o.dump = r.dump();
        for m in o.views.values().flat_map(|v| v.values()) {
            o.flags.insert(*m, r.flags(*m).unwrap_or_default());
        }
        o
    }

    fn uid_of(&self, m: MessageId) -> Option<(MailboxId, u32)> {
        self.views.iter().find_map(|(mb, v)| v.iter().find(|(_, x)| **x == m).map(|(u, _)| (*mb, *u)))
    }
}

/// The invariant checker of the UID rules (U1–U3), add-wins flags,
/// expunge-wins and move safety, over [`Observation`]s of replicas it is told
/// about by index. The model's cluster and the simulator both feed it.
#[derive(Clone, Debug)]
pub struct Checker {
    /// Every op ever made, with its author's version vector just before it.
    pub history: Vec<(Op, VersionVector)>,
    /// (replica, mailbox, uid) → message, for every UID a replica showed a client.
    shown: BTreeMap<(usize, MailboxId, u32), MessageId>,
    /// What each replica displayed at the previous check.
    previous: Vec<BTreeMap<MailboxId, BTreeMap<u32, MessageId>>>,
    /// The UIDNEXT each replica had announced at the previous check.
    previous_announced: Vec<BTreeMap<MailboxId, u32>>,
    /// A look that showed a UID at or above the UIDNEXT it announced,
    /// reported by the next [`Checker::check_step`].
    unannounced: Option<String>,
}

impl Checker {
    /// A checker for `n` replicas.
    pub fn new(n: usize) -> Self {
        Checker {
            history: Vec::new(),
            shown: BTreeMap::new(),
            previous: vec![BTreeMap::new(); n],
            previous_announced: vec![BTreeMap::new(); n],
            unannounced: None,
        }
    }

    /// An op made by some replica whose version vector was `before`.
    pub fn record(&mut self, op: &Op, before: &VersionVector) {
        self.history.push((op.clone(), before.clone()));
    }

    /// A client of replica `i` looked at `mailbox` (after it announced):
    /// every UID below its announced UIDNEXT is now shown.
    /// A client is shown the whole view, so the look must have announced
    /// past every UID in it (else that UID is shown but not exposed, and
    /// another message can win it).
    pub fn looked(&mut self, i: usize, now: &Observation, mailbox: MailboxId) {
        let announced = now.announced.get(&mailbox).copied().unwrap_or(1);
        let view = now.views.get(&mailbox).cloned().unwrap_or_default();
        for (uid, m) in &view {
            if *uid < announced {
                self.shown.insert((i, mailbox, *uid), *m);
            } else if self.unannounced.is_none() {
                self.unannounced = Some(format!(
                    "a look at replica {i} shows {m:?} at UID {uid}, not below the UIDNEXT {announced} it announced in {mailbox:?}"
                ));
            }
        }
        self.previous[i].insert(mailbox, view);
        self.previous_announced[i].insert(mailbox, announced);
    }

    /// Checks U1 and U2 at replica `i`: a message newly displayed below the
    /// UIDNEXT announced before this step, or a shown UID naming another
    /// message, is a bug. (A step that announces shows what it placed in
    /// the same step: an announce first withdraws claims, which can move
    /// messages no client saw yet.)
    pub fn check_step(&mut self, i: usize, now: &Observation) -> Result<(), String> {
        if let Some(e) = self.unannounced.take() {
            return Err(e);
        }
        for (mb, view) in &now.views {
            let announced = self.previous_announced[i].get(mb).copied().unwrap_or(1);
            let before = self.previous[i].get(mb);
            for (uid, m) in view {
                let was_here = before.and_then(|b| b.get(uid)) == Some(m);
                if !was_here && *uid < announced {
                    return Err(format!(
                        "U1: replica {i} shows {m:?} at new UID {uid} below announced UIDNEXT {announced} in {mb:?}"
                    ));
                }
                if let Some(shown) = self.shown.get(&(i, *mb, *uid)) {
                    if shown != m {
                        return Err(format!("U2: replica {i} showed UID {uid} as {shown:?}, now as {m:?}"));
                    }
                }
            }
        }
        self.previous[i] = now.views.clone();
        self.previous_announced[i] = now.announced.clone();
        Ok(())
    }

    /// Checks, after everything was delivered with all links up (the caller
    /// checks quiescence): identical dumps (U3), U2 across replicas, keywords
    /// equal to the add-wins reference built from the history, expunged
    /// messages gone, every other message in exactly one mailbox.
    pub fn check_converged(&self, replicas: &[Observation]) -> Result<(), String> {
        let Some(first) = replicas.first() else { return Ok(()) };
        for (i, r) in replicas.iter().enumerate().skip(1) {
            if r.dump != first.dump {
                let mut msg = format!("U3: replica 0 and {i} differ:\n{}", dump_diff(&first.dump, &r.dump));
                // The history of the first message whose keywords differ.
                if let Some(m) =
                    first.flags.iter().find(|(m, f)| r.flags.get(*m).is_some_and(|g| g != *f)).map(|(m, _)| *m)
                {
                    msg.push_str(&format!("\nhistory of {m:?}:"));
                    for (op, _) in self.history.iter().filter(|(op, _)| op_touches(op, m)).take(40) {
                        msg.push_str(&format!("\n  {op:?}"));
                    }
                }
                return Err(msg);
            }
        }
        for ((_, mb, uid), m) in &self.shown {
            if let Some(other) = first.views.get(mb).and_then(|v| v.get(uid)) {
                if other != m {
                    return Err(format!("U2: UID {uid} in {mb:?} was shown as {m:?}, converged to {other:?}"));
                }
            }
        }
        // Reference model from the history.
        let mut reference: HashMap<MessageId, FlagState> = HashMap::new();
        let mut expunged = BTreeSet::new();
        let mut created = BTreeSet::new();
        for (op, _) in &self.history {
            let (message, delta) = match &op.body {
                OpBody::Append(a) | OpBody::Copy { append: a, .. } => {
                    created.insert(MessageId(op.dot));
                    (
                        MessageId(op.dot),
                        FlagDelta { add: a.flags.iter().map(|k| (k.clone(), op.dot)).collect(), remove: vec![] },
                    )
                }
                OpBody::Flags { message, add, remove } => (
                    *message,
                    FlagDelta { add: add.iter().map(|k| (k.clone(), op.dot)).collect(), remove: remove.clone() },
                ),
                OpBody::Expunge { messages } => {
                    expunged.extend(messages.iter().copied());
                    continue;
                }
                _ => continue,
            };
            let s = reference.entry(message).or_default();
            *s = s.join(&FlagState::from_delta(&delta));
        }
        let mut seen = BTreeSet::new();
        for view in first.views.values() {
            for m in view.values() {
                if !seen.insert(*m) {
                    return Err(format!("{m:?} shown twice"));
                }
                if expunged.contains(m) {
                    return Err(format!("expunged {m:?} is back"));
                }
                let want = reference.get(m).map(|s| s.keywords()).unwrap_or_default();
                let got = first.flags.get(m).cloned().unwrap_or_default();
                if want != got {
                    return Err(format!("flags of {m:?}: reference {want:?}, replica {got:?}"));
                }
            }
        }
        for m in created.difference(&expunged) {
            if !seen.contains(m) {
                return Err(format!("{m:?} lost"));
            }
        }
        Ok(())
    }

    /// Messages whose client-visible UID changed: some replica showed it at
    /// one UID and shows it at another in the same mailbox now.
    /// A message that entered the mailbox twice (moved out and back) has a
    /// new UID by IMAP's own rules; that is not churn.
    pub fn churned(&self, replicas: &[Observation]) -> BTreeSet<MessageId> {
        let mut entries: BTreeMap<(MessageId, MailboxId), usize> = BTreeMap::new();
        for (op, _) in &self.history {
            let key = match &op.body {
                OpBody::Append(a) | OpBody::Copy { append: a, .. } => (MessageId(op.dot), a.mailbox),
                OpBody::Move { message, to, .. } => (*message, *to),
                _ => continue,
            };
            *entries.entry(key).or_default() += 1;
        }
        let mut out = BTreeSet::new();
        for ((i, mb, uid), m) in &self.shown {
            if entries.get(&(*m, *mb)).copied().unwrap_or(0) > 1 {
                continue;
            }
            if let Some((now_mb, now_uid)) = replicas[*i].uid_of(*m) {
                if now_mb == *mb && now_uid != *uid {
                    out.insert(*m);
                }
            }
        }
        out
    }

    /// What dsync's rule would have renumbered on the same history: every
    /// shown message appended concurrently with an append to the same mailbox
    /// on another replica.
    pub fn dsync_churned(&self) -> BTreeSet<MessageId> {
        let appends: Vec<(&Op, &VersionVector, MailboxId)> = self
            .history
            .iter()
            .filter_map(|(op, vv)| match &op.body {
                OpBody::Append(a) | OpBody::Copy { append: a, .. } => Some((op, vv, a.mailbox)),
                OpBody::Move { to, .. } => Some((op, vv, *to)),
                _ => None,
            })
            .collect();
        let shown: BTreeSet<MessageId> = self.shown.values().copied().collect();
        let mut out = BTreeSet::new();
        for (a, va, ma) in &appends {
            for (b, vb, mb) in &appends {
                let concurrent = a.dot.replica != b.dot.replica && !va.contains(b.dot) && !vb.contains(a.dot);
                if ma == mb && concurrent {
                    let id = match &a.body {
                        OpBody::Move { message, .. } => *message,
                        _ => MessageId(a.dot),
                    };
                    if shown.contains(&id) {
                        out.insert(id);
                    }
                }
            }
        }
        out
    }

    /// Number of appends (and copies) in the history.
    pub fn appends(&self) -> usize {
        self.history.iter().filter(|(op, _)| matches!(op.body, OpBody::Append(_) | OpBody::Copy { .. })).count()
    }
}

/// The lines two dumps do not share (at most 20), marked by side.
pub fn dump_diff(a: &str, b: &str) -> String {
    let (la, lb): (BTreeSet<&str>, BTreeSet<&str>) = (a.lines().collect(), b.lines().collect());
    let mut out: Vec<String> = la.difference(&lb).map(|l| format!("- {l}")).collect();
    out.extend(lb.difference(&la).map(|l| format!("+ {l}")));
    let more = out.len().saturating_sub(20);
    out.truncate(20);
    if more > 0 {
        out.push(format!("… {more} more"));
    }
    out.join("\n")
}

fn op_touches(op: &Op, m: MessageId) -> bool {
    match &op.body {
        OpBody::Append(_) | OpBody::Copy { .. } => MessageId(op.dot) == m,
        OpBody::Flags { message, .. } | OpBody::Move { message, .. } => *message == m,
        OpBody::Expunge { messages } => messages.contains(&m),
        _ => false,
    }
}
