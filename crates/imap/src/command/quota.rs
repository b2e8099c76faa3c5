//! QUOTA (RFC 9208): GETQUOTA, GETQUOTAROOT, SETQUOTA. An account has one
//! quota root, `""`, over all its mailboxes, with the STORAGE (KiB) and
//! MESSAGE resources; the limits are the operator's (`starling account
//! quota`, stored in the account document so every replica has them), so
//! SETQUOTA is `NO [NOPERM]`. The usage is the store's counters (no scan).
//! An account without limits has no quota root. Enforcement is where mail
//! is added (APPEND, CATENATE, COPY: `Batch::within_quota`), per replica at
//! that time.

use crate::session::{Done, Fail, Session};

/// The one quota root of an account.
pub(crate) const ROOT: &str = "";

impl Session {
    /// `* QUOTA "" (…)` for the account's limits, if it has any.
    fn quota_line(&mut self) -> Result<bool, Fail> {
        let account = self.account_name().to_string();
        let quota = self.reader()?.names().tree.quota;
        if quota.is_unlimited() {
            return Ok(false);
        }
        let (messages, bytes) = self.shared.store.usage(&account)?;
        let mut resources = Vec::new();
        if let Some(kb) = quota.storage_kb {
            resources.push(format!("STORAGE {} {kb}", bytes.div_ceil(1024)));
        }
        if let Some(max) = quota.messages {
            resources.push(format!("MESSAGE {messages} {max}"));
        }
        self.untagged(&format!("QUOTA \"{ROOT}\" ({})", resources.join(" ")));
        Ok(true)
    }

    /// GETQUOTA root (RFC 9208 §4.1.1).
    pub(crate) fn getquota(&mut self, root: &str) -> Done {
        if root != ROOT || !self.quota_line()? {
            return Err(Fail::No("[NONEXISTENT] no such quota root".into()));
        }
        Ok("GETQUOTA completed".into())
    }

    /// GETQUOTAROOT mailbox (RFC 9208 §4.1.2): the root `""` (when the
    /// account has limits) and its QUOTA.
    pub(crate) fn getquotaroot(&mut self, mailbox: &str) -> Done {
        let reader = self.reader()?;
        if Self::resolve(&reader, mailbox).is_none() {
            return Err(Fail::No("[NONEXISTENT] no such mailbox".into()));
        }
        let limited = !reader.names().tree.quota.is_unlimited();
        drop(reader);
        let mut name = Vec::new();
        self.wire_name(&mut name, mailbox);
        let roots = if limited { format!(" \"{ROOT}\"") } else { String::new() };
        self.untagged(&format!("QUOTAROOT {}{roots}", String::from_utf8_lossy(&name)));
        self.quota_line()?;
        Ok("GETQUOTAROOT completed".into())
    }

    /// SETQUOTA (RFC 9208 §4.1.3): limits are the operator's.
    pub(crate) fn setquota(&mut self) -> Done {
        Err(Fail::No("[NOPERM] quotas are set by the operator (starling account quota)".into()))
    }
}
