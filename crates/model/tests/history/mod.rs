//! Random histories shared by the property tests: actions, and a runner
//! that checks the invariants after every step.

use proptest::prelude::*;
use starling_model::testkit::{workload_keywords, Cluster, Rng};
use starling_model::ReplicaOptions;
use starling_model::{MailboxId, MessageId};

#[derive(Clone, Debug)]
pub enum Action {
    Append {
        r: u8,
        mb: u8,
        flags: u8,
    },
    Flags {
        r: u8,
        msg: u16,
        add: u8,
        remove: u8,
    },
    Move {
        r: u8,
        msg: u16,
        mb: u8,
    },
    Copy {
        r: u8,
        msg: u16,
        mb: u8,
    },
    Expunge {
        r: u8,
        msg: u16,
    },
    Look {
        r: u8,
        mb: u8,
    },
    Create {
        r: u8,
        name: u8,
    },
    Rename {
        r: u8,
        mb: u8,
        name: u8,
    },
    Delete {
        r: u8,
        mb: u8,
    },
    Deliver {
        from: u8,
        to: u8,
        pick: u16,
        dup: bool,
    },
    Partition {
        seed: u8,
    },
    Heal,
    /// Replica `to` installs replica `from`'s state: taken when it holds
    /// every op `to` applied, refused (and nothing changes) otherwise.
    Install {
        from: u8,
        to: u8,
    },
}

pub fn action() -> impl Strategy<Value = Action> {
    prop_oneof![
        6 => (any::<u8>(), any::<u8>(), any::<u8>()).prop_map(|(r, mb, flags)| Action::Append { r, mb, flags }),
        4 => (any::<u8>(), any::<u16>(), any::<u8>(), any::<u8>()).prop_map(|(r, msg, add, remove)| Action::Flags { r, msg, add, remove }),
        2 => (any::<u8>(), any::<u16>(), any::<u8>()).prop_map(|(r, msg, mb)| Action::Move { r, msg, mb }),
        1 => (any::<u8>(), any::<u16>(), any::<u8>()).prop_map(|(r, msg, mb)| Action::Copy { r, msg, mb }),
        1 => (any::<u8>(), any::<u16>()).prop_map(|(r, msg)| Action::Expunge { r, msg }),
        4 => (any::<u8>(), any::<u8>()).prop_map(|(r, mb)| Action::Look { r, mb }),
        1 => (any::<u8>(), any::<u8>()).prop_map(|(r, name)| Action::Create { r, name }),
        1 => (any::<u8>(), any::<u8>(), any::<u8>()).prop_map(|(r, mb, name)| Action::Rename { r, mb, name }),
        1 => (any::<u8>(), any::<u8>()).prop_map(|(r, mb)| Action::Delete { r, mb }),
        14 => (any::<u8>(), any::<u8>(), any::<u16>(), prop::bool::weighted(0.1)).prop_map(|(from, to, pick, dup)| Action::Deliver { from, to, pick, dup }),
        1 => any::<u8>().prop_map(|seed| Action::Partition { seed }),
        1 => Just(Action::Heal),
        1 => (any::<u8>(), any::<u8>()).prop_map(|(from, to)| Action::Install { from, to }),
    ]
}

const NAMES: [&str; 3] = ["Work", "Lists", "Archive"];

pub fn mailboxes(c: &Cluster, r: usize) -> Vec<MailboxId> {
    c.replicas[r].tree().by_name.values().copied().collect()
}

pub fn messages(c: &Cluster, r: usize) -> Vec<MessageId> {
    mailboxes(c, r).into_iter().flat_map(|mb| c.replicas[r].view(mb).into_iter().map(|(_, m, _)| m)).collect()
}

pub fn pick<T: Copy>(v: &[T], k: usize) -> Option<T> {
    (!v.is_empty()).then(|| v[k % v.len()])
}

pub fn run(n: usize, actions: &[Action]) -> Result<Cluster, String> {
    run_with(n, actions, ReplicaOptions::default(), &mut Vec::new())
}

/// Runs a history with `options`, pushing every replica's version and dump
/// after each step and after the final exchange onto `trace` (equal traces:
/// the same ops were made and the same was shown).
pub fn run_with(
    n: usize,
    actions: &[Action],
    options: ReplicaOptions,
    trace: &mut Vec<String>,
) -> Result<Cluster, String> {
    let mut c = Cluster::with_options(n, options);
    let kws = workload_keywords();
    for (step, a) in actions.iter().enumerate() {
        match *a {
            Action::Append { r, mb, flags } => {
                let r = r as usize % n;
                if let Some(mb) = pick(&mailboxes(&c, r), mb as usize) {
                    let f =
                        kws.iter().enumerate().filter(|(i, _)| flags >> i & 1 == 1).map(|(_, k)| k.clone()).collect();
                    c.append(r, mb, f);
                }
            }
            Action::Flags { r, msg, add, remove } => {
                let r = r as usize % n;
                if let Some(m) = pick(&messages(&c, r), msg as usize) {
                    let add = [kws[add as usize % kws.len()].clone()];
                    let remove = [kws[remove as usize % kws.len()].clone()];
                    let (add, remove): (&[_], &[_]) = match step % 3 {
                        0 => (&add, &[]),
                        1 => (&[], &remove),
                        _ => (&add, &remove),
                    };
                    c.client(r, |rep| rep.store_flags(m, add, remove)).map_err(|e| e.to_string())?;
                }
            }
            Action::Move { r, msg, mb } | Action::Copy { r, msg, mb } => {
                let r = r as usize % n;
                let (Some(m), Some(to)) = (pick(&messages(&c, r), msg as usize), pick(&mailboxes(&c, r), mb as usize))
                else {
                    continue;
                };
                if matches!(a, Action::Move { .. }) {
                    c.client(r, |rep| rep.move_message(m, to)).map_err(|e| e.to_string())?;
                } else {
                    c.client(r, |rep| rep.copy_message(m, to).map(|_| ())).map_err(|e| e.to_string())?;
                }
            }
            Action::Expunge { r, msg } => {
                let r = r as usize % n;
                if let Some(m) = pick(&messages(&c, r), msg as usize) {
                    c.client(r, |rep| rep.expunge(&[m])).map_err(|e| e.to_string())?;
                }
            }
            Action::Look { r, mb } => {
                let r = r as usize % n;
                if let Some(mb) = pick(&mailboxes(&c, r), mb as usize) {
                    c.look(r, mb);
                }
            }
            Action::Create { r, name } => {
                let r = r as usize % n;
                let name = NAMES[name as usize % NAMES.len()];
                if c.replicas[r].mailbox_by_name(name).is_none() {
                    c.client(r, |rep| rep.create_mailbox(name, None, None)).map_err(|e| e.to_string())?;
                }
            }
            Action::Rename { r, mb, name } => {
                let r = r as usize % n;
                let name = NAMES[name as usize % NAMES.len()];
                let boxes: Vec<_> = mailboxes(&c, r).into_iter().filter(|m| *m != starling_model::INBOX).collect();
                if let Some(mb) = pick(&boxes, mb as usize) {
                    if c.replicas[r].mailbox_by_name(name).is_none() {
                        c.client(r, |rep| rep.rename_mailbox(mb, name, None)).map_err(|e| e.to_string())?;
                    }
                }
            }
            Action::Delete { r, mb } => {
                let r = r as usize % n;
                let boxes: Vec<_> = mailboxes(&c, r).into_iter().filter(|m| *m != starling_model::INBOX).collect();
                if let Some(mb) = pick(&boxes, mb as usize) {
                    c.client(r, |rep| rep.delete_mailbox(mb)).map_err(|e| e.to_string())?;
                }
            }
            Action::Deliver { from, to, pick, dup } => {
                let (from, to) = (from as usize % n, to as usize % n);
                if from != to {
                    c.deliver(from, to, pick as usize, dup);
                }
            }
            Action::Partition { seed } => {
                let groups: Vec<usize> = (0..n).map(|i| (seed as usize >> i) & 1).collect();
                c.partition(&groups);
            }
            Action::Heal => c.heal(),
            Action::Install { from, to } => {
                let (from, to) = (from as usize % n, to as usize % n);
                if from == to {
                    continue;
                }
                // Mostly as a node does it: `to` first sends `from` what it
                // lacks of `to`'s ops; sometimes `from` is offered its state
                // before that.
                if step % 4 != 0 {
                    let lacking: Vec<_> = c
                        .checker
                        .history
                        .iter()
                        .map(|(op, _)| op)
                        .filter(|op| c.replicas[to].version().contains(op.dot))
                        .filter(|op| !c.replicas[from].version().contains(op.dot))
                        .cloned()
                        .collect();
                    for op in lacking {
                        c.client(from, |rep| rep.apply(op)).map_err(|e| e.to_string())?;
                    }
                }
                let snap = c.replicas[from].export_state().map_err(|e| e.to_string())?;
                let holds_all = snap.vv.dominates(c.replicas[to].version());
                let before = c.replicas[to].dump();
                let got = c.client(to, |rep| rep.import_state(snap));
                match got {
                    Ok(()) if holds_all => {
                        // (Ops `to` held waiting may have gone on past it.)
                        let same_ops = c.replicas[to].version() == c.replicas[from].version();
                        if same_ops && c.replicas[to].dump() != c.replicas[from].dump() {
                            return Err(format!("step {step}: {to} installed {from}'s state and differs from it"));
                        }
                    }
                    Err(starling_model::snapshot::InstallError::Older) if !holds_all => {
                        if c.replicas[to].dump() != before {
                            return Err(format!("step {step}: a refused snapshot changed {to}"));
                        }
                    }
                    other => return Err(format!("step {step}: install {from} → {to}: {other:?}")),
                }
            }
        }
        c.check_step().map_err(|e| format!("after step {step} {a:?}: {e}"))?;
        trace.push(
            c.replicas.iter().map(|r| format!("{:?}\n{}", r.version(), r.dump())).collect::<Vec<_>>().join("--\n"),
        );
    }
    c.heal();
    let mut rng = Rng::new(actions.len() as u64);
    c.deliver_all(&mut rng);
    c.check_step().map_err(|e| format!("during final exchange: {e}"))?;
    c.check_converged()?;
    trace.push(c.replicas.iter().map(|r| format!("{:?}\n{}", r.version(), r.dump())).collect::<Vec<_>>().join("--\n"));
    Ok(c)
}

/// Runs a history under two option sets and requires the same outcome and
/// the same trace (versions and dumps of every replica) at every step.
pub fn same_traces(n: usize, actions: &[Action], a: ReplicaOptions, b: ReplicaOptions) -> Result<(), String> {
    let (mut x, mut y) = (Vec::new(), Vec::new());
    let ra = run_with(n, actions, a, &mut x);
    let rb = run_with(n, actions, b, &mut y);
    if ra.is_ok() != rb.is_ok() {
        return Err(format!("{:?} / {:?}", ra.err(), rb.err()));
    }
    for (step, (p, q)) in x.iter().zip(&y).enumerate() {
        if p != q {
            return Err(format!("step {step}: {a:?}\n{p}\n{b:?}\n{q}"));
        }
    }
    if x.len() != y.len() {
        return Err(format!("{} steps against {}", x.len(), y.len()));
    }
    Ok(())
}
