//! Which mailboxes each commit of an account changed, in memory: what an
//! IMAP session watching other mailboxes (NOTIFY, RFC 5465) reads when
//! the commit hook wakes it, so that it looks only at those mailboxes and
//! never at every mailbox of the account per commit.
//!
//! Every commit of [`crate::Store::write`] gets the next number of its
//! account (numbers start at 1 each time the store is opened) and leaves
//! an entry: the mailboxes whose messages, flags or counters it changed
//! (those whose HIGHESTMODSEQ or message count it wrote), and whether the
//! mailbox tree (names, subscriptions) may have changed. The log keeps the
//! last [`CHANGE_LOG_COMMITS`] entries, each with at most
//! [`CHANGE_LOG_MAILBOXES`] mailboxes: a commit touching more (a peer's
//! large batch, a snapshot installed) is logged as "any mailbox", and a
//! reader that fell further behind than the log reaches is told so; either
//! way it must then look at every mailbox it watches, once.

use crate::{Store, StoreError};
use starling_model::MailboxId;
use std::collections::VecDeque;
use std::sync::PoisonError;

/// Commits an account's log remembers.
pub const CHANGE_LOG_COMMITS: usize = 256;

/// Mailboxes one entry names; a commit touching more is "any mailbox".
pub const CHANGE_LOG_MAILBOXES: usize = 64;

/// One commit of an account.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Commit {
    /// Its number in the account (from 1, per opening of the store).
    pub seq: u64,
    /// The mailboxes whose messages, flags or counters it changed; `None`:
    /// not known (more than [`CHANGE_LOG_MAILBOXES`], or a snapshot).
    pub mailboxes: Option<Vec<MailboxId>>,
    /// The mailbox tree may have changed (created, deleted, renamed,
    /// subscribed; a deleted mailbox shown or hidden by its messages).
    pub tree: bool,
}

/// The commits after a point ([`crate::Store::changes_since`]).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Changes {
    /// The number of the last commit (the point to ask from next time).
    pub upto: u64,
    /// The commits after the point asked from, oldest first.
    pub commits: Vec<Commit>,
    /// False when the log no longer reaches back to the point asked from:
    /// commits are missing, so any mailbox and the tree may have changed.
    pub complete: bool,
}

/// An account's log.
#[derive(Default)]
pub(crate) struct ChangeLog {
    last: u64,
    entries: VecDeque<Commit>,
}

impl ChangeLog {
    /// Logs a commit; returns its number.
    pub(crate) fn record(&mut self, mailboxes: Option<Vec<MailboxId>>, tree: bool) -> u64 {
        self.last += 1;
        let mailboxes = mailboxes.filter(|m| m.len() <= CHANGE_LOG_MAILBOXES);
        if self.entries.len() == CHANGE_LOG_COMMITS {
            self.entries.pop_front();
        }
        self.entries.push_back(Commit { seq: self.last, mailboxes, tree });
        self.last
    }

    pub(crate) fn last(&self) -> u64 {
        self.last
    }

    pub(crate) fn since(&self, after: u64) -> Changes {
        let oldest = self.entries.front().map_or(self.last + 1, |c| c.seq);
        Changes {
            upto: self.last,
            commits: self.entries.iter().filter(|c| c.seq > after).cloned().collect(),
            // Commits after `after` start at `after + 1`: the log must hold it.
            complete: after >= self.last || after + 1 >= oldest,
        }
    }
}

impl Store {
    /// The number of the account's last commit (0: none since the store
    /// was opened).
    pub fn commit_seq(&self, account: &str) -> Result<u64, StoreError> {
        Ok(self.account(account)?.changes.lock().unwrap_or_else(PoisonError::into_inner).last())
    }

    /// The account's commits after commit `after`, as far as the log
    /// reaches ([`Changes::complete`]). Reads memory only.
    pub fn changes_since(&self, account: &str, after: u64) -> Result<Changes, StoreError> {
        Ok(self.account(account)?.changes.lock().unwrap_or_else(PoisonError::into_inner).since(after))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_log_is_bounded_and_says_when_it_lost_commits() {
        let mut log = ChangeLog::default();
        assert_eq!(log.since(0), Changes { upto: 0, commits: vec![], complete: true });
        let a = MailboxId(starling_model::Dot::new(starling_model::ReplicaId(1), 5));
        assert_eq!(log.record(Some(vec![a]), false), 1);
        let c = log.since(0);
        assert!(c.complete);
        assert_eq!(c.commits[0].mailboxes, Some(vec![a]));
        // Too many mailboxes: "any mailbox".
        log.record(Some(vec![a; CHANGE_LOG_MAILBOXES + 1]), true);
        assert_eq!(log.since(1).commits[0].mailboxes, None);
        for _ in 0..CHANGE_LOG_COMMITS {
            log.record(Some(vec![]), false);
        }
        assert_eq!(log.entries.len(), CHANGE_LOG_COMMITS);
        assert!(!log.since(1).complete, "commit 2 is gone from the log");
        assert!(log.since(log.last() - 1).complete);
        assert_eq!(log.since(log.last()).commits, vec![]);
    }
}
