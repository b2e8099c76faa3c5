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

    /// Installs a snapshot made by [`Store::snapshot`] into an account that
    /// has applied nothing: its state, and the sender's log tail above the
    /// sender's floor, which becomes this node's floor.
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
            let floor = postcard::to_stdvec(&file.floor).map_err(|e| StoreError::Storage(e.to_string()))?;
            b.replica.import_state(file.state).map_err(|e| StoreError::Snapshot(e.to_string()))?;
            let tail = file.tail.into_iter().map(|(op, mbs)| starling_model::AppliedOp { op, mailboxes: mbs.into() });
            oplog::append(b.txn, b.number, tail.collect())?;
            b.txn.open_table(LOG_FLOOR).map_err(st)?.insert(b.number, floor.as_slice()).map_err(st)?;
            Ok(())
        })
    }
}
