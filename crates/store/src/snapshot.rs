//! Catch-up by state: an account's replicated state plus the log tail above
//! the sender's floor.

use crate::*;
use redb::ReadableDatabase;
use starling_model::VersionVector;

/// What [`Store::snapshot`] produces: the replicated state, and the log
/// above the sender's floor.
#[derive(serde::Serialize, serde::Deserialize)]
struct SnapshotFile {
    format: u8,
    state: starling_model::snapshot::StateSnapshot,
    floor: VersionVector,
    tail: Vec<oplog::Logged>,
}

const SNAPSHOT_FORMAT: u8 = 1;

/// Largest decompressed snapshot accepted.
pub const SNAPSHOT_BYTES_MAX: usize = 4 << 30;

impl Store {
    /// The account's whole replicated state, for a peer that is new or
    /// behind the compacted log ([`starling_model::snapshot`]); compressed.
    pub fn snapshot(&self, account: &str) -> Result<Vec<u8>, StoreError> {
        let state = self.inspect(account, |r| r.export_state())?.map_err(|e| StoreError::Apply(e.into()).lift())?;
        // The log tail from this node's floor up to the state, so that the
        // receiver can serve every peer this node can (its floor is ours).
        let number = self.account_number(account)?;
        let (floor, tail) = self.run(|db| {
            let r = db.begin_read().map_err(st)?;
            let floor = self.log_floor(&r, number)?;
            let ranges: Vec<(u64, u64, u64)> = state
                .vv
                .iter()
                .filter(|(replica, last)| floor.get(*replica) < *last)
                .map(|(replica, last)| (replica.0, floor.get(replica) + 1, last))
                .collect();
            Ok((floor, oplog::read_logged(&r, number, &ranges)?))
        })?;
        let file = SnapshotFile { format: SNAPSHOT_FORMAT, state, floor, tail };
        Ok(blob::pack(&postcard::to_stdvec(&file).map_err(|e| StoreError::Storage(e.to_string()))?))
    }

    /// Installs a snapshot made by [`Store::snapshot`]: its state (see
    /// [`starling_model::Replica::import_state`]: it must hold every op this
    /// account applied, or [`StoreError::SnapshotOlder`] and nothing
    /// changes), and the sender's log tail above the sender's floor. The log
    /// stays able to serve every op above the new floor: per replica, this
    /// node's own log goes on into the tail where they meet (the floor stays
    /// ours, lower); where the tail starts above what this node held, the
    /// sender's floor is taken and this node's older ops of that replica
    /// leave the log (their effect is in the state).
    pub fn install_snapshot(&self, account: &str, bytes: &[u8]) -> Result<(), StoreError> {
        let bad = |e: &dyn std::fmt::Display| StoreError::Snapshot(e.to_string());
        let raw = blob::unpack(bytes, SNAPSHOT_BYTES_MAX).map_err(|e| bad(&e))?;
        let file: SnapshotFile = postcard::from_bytes(&raw).map_err(|e| bad(&e))?;
        if file.format != SNAPSHOT_FORMAT {
            return Err(bad(&format!("snapshot format {}", file.format)));
        }
        // The tail must be the state's own ops above the floor, nothing else.
        if file.tail.iter().any(|(op, _)| !file.state.vv.contains(op.dot) || file.floor.contains(op.dot)) {
            return Err(bad(&"log tail outside the snapshot"));
        }
        self.write(account, |b| {
            b.any_mailbox = true;
            let held = b.replica.version().clone();
            let ours = Store::log_floor_in(b.txn, b.number)?;
            b.replica.import_state(file.state).map_err(|e| match e {
                starling_model::snapshot::InstallError::Older => StoreError::SnapshotOlder,
                e => StoreError::Snapshot(e.to_string()),
            })?;
            let mut floor = ours;
            let mut gone = VersionVector::new();
            for (replica, theirs) in file.floor.iter() {
                if held.get(replica) < theirs {
                    gone.observe(starling_model::Dot::new(replica, held.get(replica)));
                    floor.observe(starling_model::Dot::new(replica, theirs));
                }
            }
            // This node's ops of those replicas end below the tail: out.
            let mut dropped_to = VersionVector::new();
            oplog::compact(b.txn, b.number, &gone, &mut dropped_to)?;
            let tail = file
                .tail
                .into_iter()
                .filter(|(op, _)| !held.contains(op.dot))
                .map(|(op, mbs)| starling_model::AppliedOp { op, mailboxes: mbs.into() });
            oplog::append(b.txn, b.number, tail.collect())?;
            let floor = postcard::to_stdvec(&floor).map_err(|e| StoreError::Storage(e.to_string()))?;
            b.txn.open_table(LOG_FLOOR).map_err(st)?.insert(b.number, floor.as_slice()).map_err(st)?;
            Ok(())
        })
    }
}
