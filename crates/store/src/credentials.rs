//! Password hashes: local to this node, never replicated.

use crate::*;
use redb::ReadableDatabase;

impl Store {
    /// Sets the password hash (a PHC string made by the caller) of an
    /// account, durably. Credentials are this node's own, never replicated.
    pub fn set_credential(&self, account: &str, hash: &str) -> Result<(), StoreError> {
        self.account(account)?;
        self.run(|db| {
            let w = db.begin_write().map_err(st)?;
            w.open_table(CREDENTIALS).map_err(st)?.insert(account, hash).map_err(st)?;
            w.commit().map_err(st)
        })?;
        self.core.db.committed();
        Ok(())
    }

    /// The password hash of an account, if one was set.
    pub fn credential(&self, account: &str) -> Result<Option<String>, StoreError> {
        self.run(|db| {
            let r = db.begin_read().map_err(st)?;
            match r.open_table(CREDENTIALS) {
                Ok(t) => Ok(t.get(account).map_err(st)?.map(|g| g.value().to_string())),
                Err(redb::TableError::TableDoesNotExist(_)) => Ok(None),
                Err(e) => Err(st(e)),
            }
        })
    }
}
