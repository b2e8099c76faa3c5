//! Data-model benchmarks.

use starling_model::codec;
use starling_model::testkit::{Cluster, Rng};
use starling_model::{BlobId, Keyword, Op, OpBody, Replica, ReplicaId, ReplicaOptions, INBOX};
use std::time::Instant;

pub fn run(messages: usize, appends: usize) {
    churn(appends);
    flag_ops();
    memory(messages);
}

/// A concurrency pattern: drives a cluster until about `appends` appends.
struct Pattern {
    name: &'static str,
    replicas: usize,
    drive: fn(&mut Cluster, &mut Rng, usize),
}

fn heal_and_sync(c: &mut Cluster, rng: &mut Rng) {
    c.heal();
    c.deliver_all(rng);
}

fn patterns() -> Vec<Pattern> {
    vec![
        Pattern {
            name: "sequential (synced between appends)",
            replicas: 3,
            drive: |c, rng, n| {
                for k in 0..n {
                    let r = k % c.len();
                    c.append(r, INBOX, vec![]);
                    c.look(r, INBOX);
                    heal_and_sync(c, rng);
                }
            },
        },
        Pattern {
            name: "split, both take mail, one side's client looks",
            replicas: 2,
            drive: |c, rng, n| {
                for _ in 0..n / 20 {
                    c.partition(&[0, 1]);
                    for _ in 0..10 {
                        c.append(0, INBOX, vec![]);
                        c.look(0, INBOX);
                        c.append(1, INBOX, vec![]);
                    }
                    heal_and_sync(c, rng);
                    c.look(1, INBOX);
                }
            },
        },
        Pattern {
            name: "split, both take mail, both clients look",
            replicas: 2,
            drive: |c, rng, n| {
                for _ in 0..n / 20 {
                    c.partition(&[0, 1]);
                    for _ in 0..10 {
                        c.append(0, INBOX, vec![]);
                        c.look(0, INBOX);
                        c.append(1, INBOX, vec![]);
                        c.look(1, INBOX);
                    }
                    heal_and_sync(c, rng);
                }
            },
        },
        Pattern {
            name: "delivery on both while exchanging",
            replicas: 2,
            drive: |c, rng, n| {
                for k in 0..n {
                    c.append(k % 2, INBOX, vec![]);
                    if rng.chance(0.5) {
                        c.look(rng.below(2), INBOX);
                    }
                    // a slow link: a few ops cross per append
                    for _ in 0..2 {
                        let i = rng.below(2);
                        c.deliver(i, 1 - i, 0, false);
                    }
                }
                heal_and_sync(c, rng);
            },
        },
        Pattern {
            name: "5 nodes, partitions come and go, clients look 30%",
            replicas: 5,
            drive: |c, rng, n| {
                for k in 0..n {
                    if k % 100 == 0 {
                        if (k / 100) % 2 == 0 {
                            let groups: Vec<usize> = (0..c.len()).map(|_| rng.below(2)).collect();
                            c.partition(&groups);
                        } else {
                            c.heal();
                        }
                    }
                    let r = rng.below(c.len());
                    c.append(r, INBOX, vec![]);
                    if rng.chance(0.3) {
                        c.look(r, INBOX);
                    }
                    c.deliver_all(rng);
                }
            },
        },
        Pattern {
            name: "5 nodes, slow links (almost all concurrent), clients look 30%",
            replicas: 5,
            drive: |c, rng, n| {
                for k in 0..n {
                    if k % 50 == 0 {
                        let groups: Vec<usize> = (0..c.len()).map(|_| rng.below(2)).collect();
                        c.partition(&groups);
                    }
                    let r = rng.below(c.len());
                    c.append(r, INBOX, vec![]);
                    if rng.chance(0.3) {
                        c.look(r, INBOX);
                    }
                    for _ in 0..rng.below(6) {
                        let (i, j) = (rng.below(c.len()), rng.below(c.len()));
                        if i != j {
                            c.deliver(i, j, rng.below(1 << 16), false);
                        }
                    }
                }
                heal_and_sync(c, rng);
            },
        },
    ]
}

fn churn(appends: usize) {
    println!("\n## UID churn: messages whose client-visible UID changed, per 1,000 appends\n");
    println!("| pattern | replicas | appends | Starling | dsync rule | ratio |");
    println!("|---|---|---|---|---|---|");
    for p in patterns() {
        let mut c = Cluster::new(p.replicas);
        let mut rng = Rng::new(1);
        (p.drive)(&mut c, &mut rng, appends);
        heal_and_sync(&mut c, &mut rng);
        c.check_converged().expect("converged");
        let n = c.appends() as f64;
        let ours = c.churned().len() as f64 * 1000.0 / n;
        let dsync = c.dsync_churned().len() as f64 * 1000.0 / n;
        let ratio = if dsync > 0.0 { format!("{:.2}", ours / dsync) } else { "-".into() };
        println!("| {} | {} | {} | {:.1} | {:.1} | {} |", p.name, p.replicas, n, ours, dsync, ratio);
    }
}

fn flag_ops() {
    const MESSAGES: usize = 100_000;
    const OPS: usize = 1_000_000;
    let mut a = Replica::new(ReplicaId(1));
    let ids: Vec<_> =
        (0..MESSAGES).map(|i| a.append(INBOX, BlobId::of(&i.to_be_bytes()), 1000, 0, vec![]).unwrap()).collect();
    let setup = a.take_outbox();
    let mut b = Replica::new(ReplicaId(2));
    for op in setup {
        b.apply(op).unwrap();
    }
    let _ = b.take_outbox();

    // Ops made on A for B to apply (made first, so B has A's whole past).
    let mut ops: Vec<Op> = Vec::with_capacity(OPS);
    for k in 0..OPS {
        let m = ids[k % MESSAGES];
        if (k / MESSAGES).is_multiple_of(2) {
            a.store_flags(m, &[Keyword::Flagged], &[]).unwrap();
        } else {
            a.store_flags(m, &[], &[Keyword::Flagged]).unwrap();
        }
        ops.extend(a.take_outbox());
    }
    let t = Instant::now();
    for op in ops.iter().cloned() {
        b.apply(op).unwrap();
    }
    let remote_ns = t.elapsed().as_nanos() as f64 / OPS as f64;
    assert_eq!(b.pending_len(), 0);
    assert_eq!(b.flags(ids[0]).unwrap(), a.flags(ids[0]).unwrap());

    // Local: STORE +FLAGS / -FLAGS, op made and applied.
    let t = Instant::now();
    for k in 0..OPS {
        let m = ids[k % MESSAGES];
        if (k / MESSAGES).is_multiple_of(2) {
            a.store_flags(m, &[Keyword::Seen], &[]).unwrap();
        } else {
            a.store_flags(m, &[], &[Keyword::Seen]).unwrap();
        }
        if k % 4096 == 0 {
            let _ = a.take_outbox();
        }
    }
    let local_ns = t.elapsed().as_nanos() as f64 / OPS as f64;
    let _ = a.take_outbox();

    println!("\n## One flag op\n");
    println!("| measure | value |");
    println!("|---|---|");
    println!("| apply, local STORE (op made + applied), {MESSAGES} messages | {local_ns:.0} ns |");
    println!("| apply, op received from a peer | {remote_ns:.0} ns |");

    let add = ops.iter().find(|o| matches!(&o.body, OpBody::Flags { add, .. } if !add.is_empty())).unwrap();
    let remove = ops.iter().find(|o| matches!(&o.body, OpBody::Flags { remove, .. } if !remove.is_empty())).unwrap();
    let alone_add = codec::encode(std::slice::from_ref(add), false).len();
    let alone_remove = codec::encode(std::slice::from_ref(remove), false).len();
    let batch: Vec<Op> = ops[..10_000].to_vec();
    let raw = codec::encode(&batch, false).len();
    let zstd = codec::encode(&batch, true).len();
    println!("| bytes, `+\\Flagged` alone (frame header included) | {alone_add} B |");
    println!("| bytes, `-\\Flagged` alone (names the removed add) | {alone_remove} B |");
    println!(
        "| bytes each, batch of 10,000 `+\\Flagged` on one keyword, uncompressed | {:.2} B |",
        raw as f64 / 10_000.0
    );
    println!("| bytes each, same batch, zstd | {:.2} B |", zstd as f64 / 10_000.0);
}

fn memory(messages: usize) {
    println!("\n## Resident bytes per message ({messages} messages, 2 flags each)\n");
    println!("| state | bytes/message |");
    println!("|---|---|");
    for (label, keep) in
        [("CRDT state (flags, location, UID claim, index)", false), ("plus envelope (blob id, size, date)", true)]
    {
        let before = crate::live_bytes();
        let mut r = Replica::with_options(ReplicaId(1), ReplicaOptions { keep_envelopes: keep, ..Default::default() });
        for i in 0..messages {
            r.append(INBOX, BlobId::of(&(i as u64).to_be_bytes()), 1000, 0, vec![Keyword::Seen, Keyword::Flagged])
                .unwrap();
            if i % 4096 == 0 {
                let _ = r.take_outbox();
            }
        }
        let _ = r.take_outbox();
        let after = crate::live_bytes();
        println!("| {label} | {:.1} |", (after - before) as f64 / messages as f64);
        assert_eq!(r.message_count(), messages);
    }
}
