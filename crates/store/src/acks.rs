//! What each peer has acknowledged of each account, kept across restarts,
//! and the housekeeping it allows: compacting the op log and collecting
//! bodies up to what every known peer holds.
//!
//! A link tells the store each `Have` its peer sends ([`Store::note_ack`],
//! memory only: a write per acknowledgement would cost an fsync per
//! chunk). [`Store::housekeep`] writes them down with the time they were
//! heard (losing the latest ones in a crash only makes the next
//! housekeeping more careful, never less), then per account computes
//! the *stable* version vector: the meet of this replica's version and
//! what every pinned peer of the account has acknowledged. Ops below it
//! are held by every peer, so none will ask for them again; releases
//! below it are known everywhere (see `crate::gc`).
//!
//! A pinned peer never heard from holds everything back, from when it was
//! first listed; a peer not heard from for longer than the horizon no
//! longer does. Such a peer, when it returns below the log's floor, is
//! answered with a snapshot (which an empty replica installs; a replica
//! with changes of its own cannot yet take one, see `docs/operations.md`).

use crate::*;
use redb::{ReadableTable, WriteTransaction};
use serde::{Deserialize, Serialize};

/// (account number, peer replica id) → postcard of [`PeerAck`].
pub(crate) const PEER_ACKS: TableDefinition<(u32, u64), &[u8]> = TableDefinition::new("peer_acks");

/// Most body-collection transactions one housekeeping runs (the rest wait
/// for the next): bounds its time whatever the garbage.
pub const COLLECT_ROUNDS_MAX: usize = 64;

/// A peer's last acknowledgement of an account.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerAck {
    /// What it said it holds.
    pub vv: VersionVector,
    /// When it was last heard from (Unix ms), or first listed if never.
    pub seen_ms: u64,
}

/// What one housekeeping pass is told.
#[derive(Clone, Debug)]
pub struct Housekeeping<'a> {
    /// Now, Unix ms (the simulator passes its own clock).
    pub now_ms: u64,
    /// A peer not heard from for longer no longer holds back compaction
    /// or collection.
    pub horizon_ms: u64,
    /// Every pinned peer and the accounts it syncs.
    pub peers: &'a [(ReplicaId, Vec<String>)],
    /// Peers connected now: heard from now even if they said nothing new.
    pub alive: &'a [ReplicaId],
    /// Drop ops every peer holds from the log.
    pub compact_log: bool,
    /// Delete bodies nothing names once their release is stable.
    pub collect_bodies: bool,
    /// Bodies deleted per transaction.
    pub batch: usize,
}

/// What one housekeeping pass did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Housekept {
    /// Per account.
    pub accounts: Vec<AccountKept>,
    /// Bodies collected (bodies are shared by accounts).
    pub collected: Collected,
}

/// What housekeeping did and saw for one account.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct AccountKept {
    /// The account.
    pub account: String,
    /// What every counted peer holds (and this replica).
    pub stable: VersionVector,
    /// Ops dropped from the log by this pass.
    pub ops_dropped: u64,
    /// The peer furthest behind among those counted (holding the floor
    /// back), with the ops it lacks of this replica's version.
    pub oldest_peer: Option<(ReplicaId, u64)>,
    /// Peers left out because the horizon passed since they were heard.
    pub past_horizon: Vec<ReplicaId>,
}

/// Writes the acknowledgements: keeps the rows of pinned (peer, account)
/// pairs, updated with what was noted and who is alive, and drops the
/// others. Returns them per account number.
fn persist(
    w: &WriteTransaction,
    plan: &Housekeeping,
    numbers: &BTreeMap<String, u32>,
    noted: &BTreeMap<(u32, ReplicaId), VersionVector>,
) -> Result<BTreeMap<u32, Vec<(ReplicaId, PeerAck)>>, StoreError> {
    // Only accounts still here at this commit: one forgotten since
    // `numbers` was read gets no rows back.
    let mut here = BTreeSet::new();
    for item in w.open_table(ACCOUNTS).map_err(st)?.iter().map_err(st)? {
        here.insert(item.map_err(st)?.1.value());
    }
    let mut t = w.open_table(PEER_ACKS).map_err(st)?;
    let mut old: BTreeMap<(u32, u64), PeerAck> = BTreeMap::new();
    for item in t.iter().map_err(st)? {
        let (k, v) = item.map_err(st)?;
        old.insert(k.value(), postcard::from_bytes(v.value()).map_err(|e| damaged("peer acknowledgement", e))?);
    }
    t.retain(|_, _| false).map_err(st)?;
    let mut out: BTreeMap<u32, Vec<(ReplicaId, PeerAck)>> = BTreeMap::new();
    for (peer, accounts) in plan.peers {
        for a in accounts {
            let Some(&n) = numbers.get(a).filter(|n| here.contains(n)) else { continue };
            let mut ack =
                old.remove(&(n, peer.0)).unwrap_or(PeerAck { vv: VersionVector::new(), seen_ms: plan.now_ms });
            if let Some(vv) = noted.get(&(n, *peer)) {
                ack.vv = vv.clone();
                ack.seen_ms = plan.now_ms;
            }
            if plan.alive.contains(peer) {
                ack.seen_ms = plan.now_ms;
            }
            let bytes = postcard::to_stdvec(&ack).map_err(|e| StoreError::Storage(e.to_string()))?;
            t.insert((n, peer.0), bytes.as_slice()).map_err(st)?;
            out.entry(n).or_default().push((*peer, ack));
        }
    }
    Ok(out)
}

impl Store {
    /// `peer` said it holds `vv` of `account` (a link calls this on each
    /// acknowledgement): remembered until the next [`Store::housekeep`].
    pub fn note_ack(&self, account: &str, peer: ReplicaId, vv: &VersionVector) {
        let Ok(acct) = self.account(account) else { return };
        let number = acct.number;
        self.note_live_ack(number, acct.me, peer, vv);
        let mut acks = self.core.acks.lock().unwrap_or_else(PoisonError::into_inner);
        acks.insert((number, peer), vv.clone());
    }

    /// `peer` said it deleted `account` and purged its copy (its
    /// `Deleted` frame): it holds the deletion for good, so a purge here
    /// need not wait for its acknowledgement ([`Store::purged_by`]; memory
    /// only: after a restart the peer says it again when it connects).
    /// Takes the deletion here if the account is not deleted yet (an op,
    /// which goes on to this node's other peers); returns whether it did.
    pub fn peer_purged(&self, account: &str, peer: ReplicaId) -> Result<bool, StoreError> {
        // Purged here too since the session began: nothing left to do.
        let number = match self.account_number(account) {
            Ok(n) => n,
            Err(StoreError::NoSuchAccount(_)) => return Ok(false),
            Err(e) => return Err(e),
        };
        self.core.purged_by.lock().unwrap_or_else(PoisonError::into_inner).insert((number, peer));
        if self.is_deleted(account)? {
            return Ok(false);
        }
        match self.delete_account(account) {
            Ok(()) => Ok(true),
            // Forgotten meanwhile.
            Err(StoreError::NoSuchAccount(_)) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// The peers that said they purged `account` as deleted since this
    /// node started ([`Store::peer_purged`]).
    pub fn purged_by(&self, account: &str) -> Vec<ReplicaId> {
        let Ok(number) = self.account_number(account) else { return Vec::new() };
        let set = self.core.purged_by.lock().unwrap_or_else(PoisonError::into_inner);
        set.range((number, ReplicaId(0))..=(number, ReplicaId(u64::MAX))).map(|(_, p)| *p).collect()
    }

    /// The acknowledgements written down, per account: (peer, ack).
    pub fn peer_acks(&self, account: &str) -> Result<Vec<(ReplicaId, PeerAck)>, StoreError> {
        let number = self.account_number(account)?;
        self.run(|db| {
            let r = redb::ReadableDatabase::begin_read(db).map_err(st)?;
            let mut out = Vec::new();
            if let Some(t) = table(&r, PEER_ACKS)? {
                for item in t.range((number, 0)..=(number, u64::MAX)).map_err(st)? {
                    let (k, v) = item.map_err(st)?;
                    let ack = postcard::from_bytes(v.value()).map_err(|e| damaged("peer acknowledgement", e))?;
                    out.push((ReplicaId(k.value().1), ack));
                }
            }
            Ok(out)
        })
    }

    /// Writes down the peers' acknowledgements, then per account compacts
    /// the op log and collects bodies up to what every pinned peer heard
    /// within the horizon holds (see the module notes). Bounded: at most
    /// [`COLLECT_ROUNDS_MAX`] collection transactions of `plan.batch`
    /// bodies; what is left waits for the next pass.
    pub fn housekeep(&self, plan: &Housekeeping) -> Result<Housekept, StoreError> {
        let numbers: BTreeMap<String, u32> = {
            let map = self.accounts.read().unwrap_or_else(PoisonError::into_inner);
            map.iter().map(|(n, a)| (n.clone(), a.number)).collect()
        };
        let noted = std::mem::take(&mut *self.core.acks.lock().unwrap_or_else(PoisonError::into_inner));
        let acks = self.run(|db| {
            let w = redb::Database::begin_write(db).map_err(st)?;
            let acks = persist(&w, plan, &numbers, &noted)?;
            w.commit().map_err(st)?;
            Ok(acks)
        })?;
        self.core.db.committed();
        let mut out = Housekept::default();
        let mut stable_all = BTreeMap::new();
        for (name, number) in &numbers {
            let mine = match self.version(name) {
                Ok(v) => v,
                // Forgotten since the pass began.
                Err(StoreError::NoSuchAccount(_)) => continue,
                Err(e) => return Err(e),
            };
            let mut report = AccountKept { account: name.clone(), stable: mine.clone(), ..Default::default() };
            for (peer, ack) in acks.get(number).map(Vec::as_slice).unwrap_or_default() {
                if plan.now_ms.saturating_sub(ack.seen_ms) > plan.horizon_ms {
                    report.past_horizon.push(*peer);
                    continue;
                }
                report.stable = report.stable.meet(&ack.vv);
                let lacking = mine.lacking_in(&ack.vv);
                if report.oldest_peer.is_none_or(|(_, l)| lacking > l) {
                    report.oldest_peer = Some((*peer, lacking));
                }
            }
            if plan.compact_log {
                let upto = if starling_model::mutation::active(starling_model::mutation::Mutation::CompactPastPeers) {
                    &mine
                } else {
                    &report.stable
                };
                report.ops_dropped = match self.compact(name, upto) {
                    Ok(n) => n,
                    Err(StoreError::NoSuchAccount(_)) => continue,
                    Err(e) => return Err(e),
                };
            }
            stable_all.insert(name.clone(), report.stable.clone());
            out.accounts.push(report);
        }
        if plan.collect_bodies {
            let total = &mut out.collected;
            for _ in 0..COLLECT_ROUNDS_MAX {
                let c = self.collect_bodies(&stable_all, plan.batch.max(1))?;
                total.bodies += c.bodies;
                total.parts += c.parts;
                total.bytes += c.bytes;
                total.settled += c.settled;
                total.more = c.more;
                if !c.more {
                    break;
                }
            }
        }
        Ok(out)
    }

    /// The op log's floor of `account`: ops at or below it were compacted away.
    pub fn floor(&self, account: &str) -> Result<VersionVector, StoreError> {
        let number = self.account_number(account)?;
        self.run(|db| self.log_floor(&redb::ReadableDatabase::begin_read(db).map_err(st)?, number))
    }
}
