//! Password hashes: replicated with the account (its document, so every
//! node the account syncs to can log its user in), and a per-node override
//! kept in this node's own table, never replicated, that wins over it.

use crate::*;
use redb::ReadableDatabase;

impl Store {
    /// Sets the password hash (a PHC string made by the caller) of an
    /// account on every replica of it: an op of the account document,
    /// committed durably and sent to the account's peers.
    pub fn set_credential(&self, account: &str, hash: &str) -> Result<(), StoreError> {
        self.write(account, |b| Ok(b.replica().set_password(hash)?))
    }

    /// Sets this node's own password hash of an account, which wins over
    /// the replicated one here and is never sent anywhere; `None` removes it.
    pub fn set_local_credential(&self, account: &str, hash: Option<&str>) -> Result<(), StoreError> {
        self.account(account)?;
        self.run(|db| {
            let w = db.begin_write().map_err(st)?;
            {
                let mut t = w.open_table(CREDENTIALS).map_err(st)?;
                match hash {
                    Some(h) => t.insert(account, h).map(|_| ()).map_err(st)?,
                    None => t.remove(account).map(|_| ()).map_err(st)?,
                }
            }
            w.commit().map_err(st)
        })?;
        self.core.db.committed();
        Ok(())
    }

    /// Deletes an account on every replica of it: an op of the account
    /// document. Wherever it arrives, the account logs nobody in and takes
    /// no delivery ([`Store::is_deleted`]); its sessions with peers go on,
    /// so that the deletion reaches them all. Its mail stays on disk here
    /// until the node forgets it ([`Store::forget_account`], which the
    /// node's housekeeping does once every pinned peer has the deletion).
    pub fn delete_account(&self, account: &str) -> Result<(), StoreError> {
        self.write(account, |b| Ok(b.replica().delete_account()?))
    }

    /// Sets which nodes replicate an account, on every replica of it: an op
    /// of the account document (the value is the node's to interpret; empty
    /// clears it).
    pub fn set_placement(&self, account: &str, placement: &str) -> Result<(), StoreError> {
        self.write(account, |b| Ok(b.replica().set_placement(placement)?))
    }

    /// Sets an account's quota, on every replica of it: an op of the
    /// account document (an unlimited one clears it).
    pub fn set_quota(&self, account: &str, quota: &starling_model::Quota) -> Result<(), StoreError> {
        self.write(account, |b| Ok(b.replica().set_quota(quota)?))
    }

    /// An account's quota (unlimited if none is set).
    pub fn quota(&self, account: &str) -> Result<starling_model::Quota, StoreError> {
        Ok(self.read(account)?.names().tree.quota)
    }

    /// An account's placement, if one is set (`None` also for an account
    /// this node does not have).
    pub fn placement(&self, account: &str) -> Result<Option<String>, StoreError> {
        match self.read(account) {
            Ok(r) => Ok(r.names().tree.placement.clone()),
            Err(StoreError::NoSuchAccount(_)) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Whether an account was deleted, here or on a replica this one heard
    /// from (false for an account this node does not have).
    pub fn is_deleted(&self, account: &str) -> Result<bool, StoreError> {
        match self.read(account) {
            Ok(r) => Ok(r.names().tree.deleted),
            Err(StoreError::NoSuchAccount(_)) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// The password hash an account logs in with here, if any: this node's
    /// own, else the replicated one; none once the account was deleted.
    pub fn credential(&self, account: &str) -> Result<Option<String>, StoreError> {
        if self.is_deleted(account)? {
            return Ok(None);
        }
        let local = self.run(|db| {
            let r = db.begin_read().map_err(st)?;
            match r.open_table(CREDENTIALS) {
                Ok(t) => Ok(t.get(account).map_err(st)?.map(|g| g.value().to_string())),
                Err(redb::TableError::TableDoesNotExist(_)) => Ok(None),
                Err(e) => Err(st(e)),
            }
        })?;
        if local.is_some() {
            return Ok(local);
        }
        match self.read(account) {
            Ok(r) => Ok(r.names().tree.password.clone()),
            Err(StoreError::NoSuchAccount(_)) => Ok(None),
            Err(e) => Err(e),
        }
    }
}
