//! Hybrid logical clock: a timestamp that follows wall time when clocks behave
//! and never goes backwards when they do not. Used for dates shown to users
//! (e.g. an APPEND without a date); never to decide a conflict.

use serde::{Deserialize, Serialize};

/// A hybrid timestamp: wall milliseconds plus a logical counter for events
/// within the same millisecond or behind a skewed clock.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct HlcTimestamp {
    /// Milliseconds since the Unix epoch (the largest seen, not necessarily ours).
    pub wall_ms: u64,
    /// Breaks ties within one `wall_ms`.
    pub logical: u32,
}

/// The clock. It has no time source of its own: every call takes `now_ms`.
#[derive(Clone, Debug, Default)]
pub struct Hlc {
    last: HlcTimestamp,
}

impl Hlc {
    /// A clock that has seen nothing.
    pub fn new() -> Self {
        Self::default()
    }

    /// Timestamp for a local event at wall time `now_ms`.
    pub fn tick(&mut self, now_ms: u64) -> HlcTimestamp {
        if now_ms > self.last.wall_ms {
            self.last = HlcTimestamp { wall_ms: now_ms, logical: 0 };
        } else {
            self.last.logical = self.last.logical.saturating_add(1);
        }
        self.last
    }

    /// Merges a timestamp received from a peer; the result is after both.
    pub fn observe(&mut self, remote: HlcTimestamp, now_ms: u64) -> HlcTimestamp {
        let wall = now_ms.max(remote.wall_ms).max(self.last.wall_ms);
        let logical = if wall == self.last.wall_ms && wall == remote.wall_ms {
            self.last.logical.max(remote.logical).saturating_add(1)
        } else if wall == self.last.wall_ms {
            self.last.logical.saturating_add(1)
        } else if wall == remote.wall_ms {
            remote.logical.saturating_add(1)
        } else {
            0
        };
        self.last = HlcTimestamp { wall_ms: wall, logical };
        self.last
    }

    /// The last timestamp issued or observed.
    pub fn last(&self) -> HlcTimestamp {
        self.last
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn monotone_under_skew() {
        let mut a = Hlc::new();
        let t1 = a.tick(1000);
        let t2 = a.tick(500); // clock stepped back
        assert!(t2 > t1);
        let remote = HlcTimestamp { wall_ms: 5000, logical: 7 };
        let t3 = a.observe(remote, 600);
        assert!(t3 > remote && t3 > t2);
        let t4 = a.tick(700);
        assert!(t4 > t3);
        assert_eq!(t4.wall_ms, 5000);
    }
}
