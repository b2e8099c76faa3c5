//! Forgetting an account on this node (`starling account forget`, and the
//! purge of deleted accounts in housekeeping): when it is safe, and doing
//! it through `Store::forget_account`.
//!
//! **The rule** ([`safety`]). Forgetting frees this node's copy; it is
//! safe when nothing of it exists only here:
//! - *ops*: some pinned peer of the account has acknowledged a version
//!   that covers this replica's whole version (its acknowledgement as
//!   housekeeping last wrote it down, `Store::peer_acks`: a peer heard
//!   only since the last pass is not counted yet);
//! - *bodies*: every body named by a live message this node made (under
//!   its own replica id or a copy's, `Store::replica_id`) — mail delivered
//!   or appended here, the only bodies that may exist nowhere else — some
//!   pinned peer of the account has said it holds (its `Held` frames, in memory since this
//!   node started: after a restart, a peer must fetch again or the check
//!   refuses). Bodies of other replicas' messages came from elsewhere. A
//!   deleted account skips this part: nobody can read its mail anywhere.
//!
//! **The purge** ([`purge_deleted`]): an account deleted (its document
//! says so) is forgotten once every pinned peer of the account (with a
//! fan-out, every neighbour: the peers housekeeping waits for, the only
//! ones that acknowledge to this node) holds the deletion: it acknowledged a version covering this replica's, or it
//! said it purged the account itself (`Store::purged_by`). A pinned peer
//! not heard from for longer than the horizon (`peer_horizon_days`, the
//! one log compaction uses) is not waited for: when it comes back naming
//! the account, this node (which keeps the names it purged as deleted,
//! `Store::was_purged`) tells it the account was deleted, and it takes the
//! deletion and purges in turn. A peer within the horizon that is silent
//! holds the purge back (a deleted account costs only disk).

use crate::peers::Peer;
use starling_model::{BlobId, ReplicaId, VersionVector};
use starling_store::{Exposure, Forgot, Store};
use std::collections::{BTreeMap, BTreeSet};

/// Bodies named by live messages of `account` this node made: the ones
/// that may be stored nowhere else.
fn bodies_made_here(store: &Store, account: &str) -> Result<Vec<BlobId>, String> {
    let mine = [store.node(), store.replica_id(account).map_err(|e| e.to_string())?];
    let reader = store.read(account).map_err(|e| e.to_string())?;
    let mut out = BTreeSet::new();
    for id in reader.names().tree.by_name.values() {
        for m in reader.messages(*id, 1, usize::MAX).map_err(|e| e.to_string())? {
            if mine.contains(&m.message.0.replica) {
                if let Some(env) = reader.envelope(m.message).map_err(|e| e.to_string())? {
                    out.insert(env.blob);
                }
            }
        }
    }
    Ok(out.into_iter().collect())
}

/// The pinned peers (replica ids) of `account`.
pub fn pinned_for(peers: &[Peer], account: &str) -> Vec<ReplicaId> {
    peers.iter().filter(|p| p.accounts.iter().any(|a| a == account)).map(|p| p.id.replica()).collect()
}

/// Whether forgetting `account` here loses nothing (see the module notes):
/// `Ok` with a pinned peer that holds all its ops (each body of mail made
/// here held by some pinned peer), or why not.
pub fn safety(store: &Store, account: &str, pinned: &[ReplicaId]) -> Result<ReplicaId, String> {
    let mine = store.version(account).map_err(|e| e.to_string())?;
    if pinned.is_empty() {
        return Err(format!("no pinned peer syncs {account}: this node may hold its only copy"));
    }
    let acks = store.peer_acks(account).map_err(|e| e.to_string())?;
    let deleted = store.is_deleted(account).map_err(|e| e.to_string())?;
    let local = if deleted { Vec::new() } else { bodies_made_here(store, account)? };
    // The ops: one peer holds them all.
    let mut why = Vec::new();
    let mut covering = None;
    for p in pinned {
        let short = short_id(*p);
        match acks.iter().find(|(id, _)| id == p) {
            None => why.push(format!("peer {short} has acknowledged nothing yet")),
            Some((_, ack)) => match mine.lacking_in(&ack.vv) {
                0 => {
                    covering = Some(*p);
                    break;
                }
                lacks => why.push(format!("peer {short} has not acknowledged {lacks} ops held here")),
            },
        }
    }
    let Some(peer) = covering else { return Err(why.join("; ")) };
    // The bodies of mail made here: each held by some pinned peer (the
    // first to fetch one from here said so; another may have it from
    // that one).
    let unheld = local
        .iter()
        .filter(|b| {
            let e = Exposure { account: account.to_string(), upto: 0, bodies: vec![**b] };
            store.holders(&e, pinned).is_empty()
        })
        .count();
    if unheld > 0 {
        return Err(format!(
            "{unheld} of {} bodies of mail made here: no pinned peer has said it holds them (since this node started)",
            local.len()
        ));
    }
    Ok(peer)
}

fn short_id(p: ReplicaId) -> String {
    format!("{:016x}", p.0)[..8].to_string()
}

/// Forgets `account` on this node if [`safety`] allows it, or anyway with
/// `force`; the error says why not (or what failed).
pub fn forget_if_safe(store: &Store, account: &str, pinned: &[ReplicaId], force: bool) -> Result<Forgot, String> {
    if !store.accounts().iter().any(|a| a == account) {
        return Err(format!("no account {account} here"));
    }
    match safety(store, account, pinned) {
        Ok(peer) => tracing::info!(account, "forgetting: peer {} holds all of it", short_id(peer)),
        Err(why) if force => tracing::warn!(account, "forgetting with --force although {why}"),
        Err(why) => return Err(format!("not forgetting {account}: {why} (`--force` forgets it anyway)")),
    }
    let done = store.forget_account(account).map_err(|e| e.to_string())?;
    tracing::info!(
        account,
        "account forgotten here: {} rows freed in {} transactions, {} bodies released",
        done.rows,
        done.transactions,
        done.bodies_released
    );
    Ok(done)
}

/// What `account forget` prints.
pub fn describe(account: &str, done: &Forgot) -> String {
    format!(
        "account {account} forgotten on this node ({} rows freed in {} transactions, {} bodies released to collection); it stays on its other nodes",
        done.rows, done.transactions, done.bodies_released
    )
}

/// What holds back the purge of deleted `account` (`mine`: this
/// replica's version, which holds the deletion): `Ok` with the peers past
/// the horizon that are not waited for, or `Err` naming a peer within it
/// that does not hold the deletion yet.
fn deletion_held(
    store: &Store,
    account: &str,
    mine: &VersionVector,
    pinned: &[ReplicaId],
    now_ms: u64,
    horizon_ms: u64,
) -> Result<Vec<ReplicaId>, String> {
    let acks = store.peer_acks(account).map_err(|e| e.to_string())?;
    let purged = store.purged_by(account);
    let mut past = Vec::new();
    for p in pinned {
        if purged.contains(p) {
            continue;
        }
        match acks.iter().find(|(id, _)| id == p) {
            Some((_, ack)) if mine.lacking_in(&ack.vv) == 0 => {}
            Some((_, ack)) if now_ms.saturating_sub(ack.seen_ms) > horizon_ms => past.push(*p),
            Some(_) => return Err(format!("peer {} has not acknowledged the deletion", short_id(*p))),
            // Not written down yet: the next housekeeping pass does.
            None => return Err(format!("peer {} has acknowledged nothing yet", short_id(*p))),
        }
    }
    Ok(past)
}

/// What one purge pass did.
#[derive(Debug, Default)]
pub struct PurgePass {
    /// The deleted accounts purged.
    pub purged: Vec<String>,
    /// The deleted accounts left, each with what holds it back (shown by
    /// `starling status` until the next pass).
    pub waiting: BTreeMap<String, String>,
}

/// Housekeeping: forgets every deleted account whose deletion every pinned
/// peer of it holds, or is past the horizon (see the module notes), and
/// finishes any forgetting cut short.
pub fn purge_deleted(store: &Store, peers: &[Peer], now_ms: u64, horizon_ms: u64) -> PurgePass {
    if let Err(e) = store.resume_forgetting() {
        tracing::warn!("finishing a forgotten account: {e}");
    }
    let mut out = PurgePass::default();
    for account in store.accounts() {
        if !store.is_deleted(&account).unwrap_or(false) {
            continue;
        }
        let Ok(mine) = store.version(&account) else { continue };
        let pinned = pinned_for(peers, &account);
        let past = match deletion_held(store, &account, &mine, &pinned, now_ms, horizon_ms) {
            Ok(past) => past,
            Err(why) => {
                tracing::debug!(account, "deleted; not purged yet: {why}");
                out.waiting.insert(account, format!("not purged yet: {why}"));
                continue;
            }
        };
        match store.forget_account(&account) {
            Ok(done) => {
                let past: Vec<String> = past.into_iter().map(short_id).collect();
                tracing::info!(
                    account,
                    "deleted account purged (every pinned peer holds the deletion{}): {} rows freed, {} bodies released",
                    if past.is_empty() {
                        String::new()
                    } else {
                        format!(" but {}, silent past the horizon, told when back", past.join(", "))
                    },
                    done.rows,
                    done.bodies_released
                );
                println!("purged deleted account {account}");
                out.purged.push(account);
            }
            Err(e) => {
                tracing::warn!(account, "purging the deleted account: {e}");
                out.waiting.insert(account, format!("purging failed: {e}"));
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use starling_model::INBOX;
    use starling_store::{Housekeeping, StoreOptions};

    fn housekeep(store: &Store, peer: ReplicaId) {
        let peers = vec![(peer, vec!["alice".to_string()])];
        store
            .housekeep(&Housekeeping {
                now_ms: 1,
                horizon_ms: u64::MAX,
                peers: &peers,
                alive: &[],
                compact_log: false,
                collect_bodies: false,
                batch: 16,
            })
            .unwrap();
    }

    /// Refused until the peer has acknowledged every op and said it holds
    /// the body delivered here; a deleted account needs only the ops.
    #[test]
    fn forgetting_waits_for_a_peer_holding_everything() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("s.redb"), ReplicaId(1), StoreOptions::default()).unwrap();
        let peer = ReplicaId(2);
        store.add_account("alice").unwrap();
        let raw = b"Subject: hi\r\n\r\nhello\r\n";
        let blob = store.write("alice", |b| b.append_body(INBOX, raw, 0, vec![])).unwrap().1;
        let e = forget_if_safe(&store, "alice", &[], false).unwrap_err();
        assert!(e.contains("no pinned peer"), "{e}");
        assert!(forget_if_safe(&store, "alice", &[peer], false).unwrap_err().contains("acknowledged nothing"));
        // Acknowledged all but the last op.
        let mut vv = store.version("alice").unwrap();
        let last = vv.get(ReplicaId(1));
        let mut short = VersionVector::new();
        short.observe(starling_model::Dot::new(ReplicaId(1), last - 1));
        store.note_ack("alice", peer, &short);
        housekeep(&store, peer);
        let e = forget_if_safe(&store, "alice", &[peer], false).unwrap_err();
        assert!(e.contains("has not acknowledged 1 ops"), "{e}");
        vv = store.version("alice").unwrap();
        store.note_ack("alice", peer, &vv);
        housekeep(&store, peer);
        let e = forget_if_safe(&store, "alice", &[peer], false).unwrap_err();
        assert!(e.contains("bodies of mail made here"), "{e}");
        assert!(store.accounts().contains(&"alice".to_string()));
        store.note_held(peer, &[blob]);
        forget_if_safe(&store, "alice", &[peer], false).unwrap();
        assert!(store.accounts().is_empty());
        // A deleted account: the ops alone, from every pinned peer.
        store.add_account("alice").unwrap();
        store.write("alice", |b| b.append(INBOX, b"Subject: 2\r\n\r\nx\r\n", 0, vec![])).unwrap();
        store.delete_account("alice").unwrap();
        let peers = vec![Peer {
            id: starling_net::NodeId([2; 32]),
            addr: "127.0.0.1:1".parse().unwrap(),
            accounts: vec!["alice".into()],
            policy: Default::default(),
        }];
        let pr = peers[0].id.replica();
        let pass = purge_deleted(&store, &peers, 1, u64::MAX);
        assert!(pass.purged.is_empty(), "no acknowledgement yet");
        assert!(pass.waiting["alice"].contains("has acknowledged nothing yet"), "{pass:?}");
        store.note_ack("alice", pr, &store.version("alice").unwrap());
        housekeep(&store, pr);
        let pass = purge_deleted(&store, &peers, 1, u64::MAX);
        assert_eq!(pass.purged, vec!["alice".to_string()]);
        assert!(pass.waiting.is_empty());
        assert!(store.accounts().is_empty());
        assert_eq!(store.check_forgotten().unwrap(), Vec::<String>::new());
    }

    fn peer(n: u8) -> Peer {
        Peer {
            id: starling_net::NodeId([n; 32]),
            addr: "127.0.0.1:1".parse().unwrap(),
            accounts: vec!["alice".into()],
            policy: Default::default(),
        }
    }

    /// Two pinned peers: one acknowledges the deletion; the other is
    /// silent. The silent one holds the purge back within the horizon,
    /// not past it; a peer that said it purged the account counts as
    /// holding the deletion without acknowledging it.
    #[test]
    fn a_peer_silent_past_the_horizon_no_longer_holds_the_purge_back() {
        let day = 86_400_000;
        for said_purged in [false, true] {
            let dir = tempfile::tempdir().unwrap();
            let store = Store::open(&dir.path().join("s.redb"), ReplicaId(1), StoreOptions::default()).unwrap();
            store.add_account("alice").unwrap();
            store.write("alice", |b| b.append(INBOX, b"Subject: 1\r\n\r\nx\r\n", 0, vec![])).unwrap();
            store.delete_account("alice").unwrap();
            let peers = vec![peer(2), peer(3)];
            let (acking, silent) = (peers[0].id.replica(), peers[1].id.replica());
            // Both first listed on day 1; the first acknowledges the deletion.
            store.note_ack("alice", acking, &store.version("alice").unwrap());
            let pinned: Vec<(ReplicaId, Vec<String>)> =
                peers.iter().map(|p| (p.id.replica(), p.accounts.clone())).collect();
            let pass = |now_ms: u64| {
                store
                    .housekeep(&Housekeeping {
                        now_ms,
                        horizon_ms: 30 * day,
                        peers: &pinned,
                        alive: &[acking],
                        compact_log: false,
                        collect_bodies: false,
                        batch: 16,
                    })
                    .unwrap();
            };
            pass(day);
            if said_purged {
                store.peer_purged("alice", silent).unwrap();
                assert_eq!(purge_deleted(&store, &peers, day, 30 * day).purged, vec!["alice".to_string()]);
                assert!(store.was_purged("alice").unwrap());
                continue;
            }
            let left = purge_deleted(&store, &peers, day, 30 * day);
            assert!(left.purged.is_empty(), "the silent peer is within the horizon");
            assert!(left.waiting["alice"].contains("has not acknowledged the deletion"), "{left:?}");
            pass(30 * day);
            assert!(purge_deleted(&store, &peers, 30 * day, 30 * day).purged.is_empty(), "29 days silent");
            pass(32 * day);
            assert_eq!(purge_deleted(&store, &peers, 32 * day, 30 * day).purged, vec!["alice".to_string()]);
            assert!(store.accounts().is_empty());
            assert!(store.was_purged("alice").unwrap(), "the name is kept, to tell the silent peer when back");
        }
    }
}
