//! What every TCP (and Unix socket) listener of the node shares: an accept
//! loop that survives errors, and limits on connections in total and per
//! client address.
//!
//! `accept` failing is not the end of a listener: running out of file
//! descriptors (`EMFILE`, `ENFILE`), of memory or buffers, or a connection
//! reset before it was taken, all pass. [`accept_forever`] waits with a
//! growing back-off (so a full descriptor table does not spin a core), logs
//! at most once per [`LOG_EVERY`] with how many failures it saw, and never
//! returns an error.

use std::collections::HashMap;
use std::future::Future;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Back-off after the first failed `accept`.
pub const BACKOFF_MIN: Duration = Duration::from_millis(5);
/// Back-off at most (reached after a few failures in a row).
pub const BACKOFF_MAX: Duration = Duration::from_millis(500);
/// A failing listener logs at most once per this interval.
pub const LOG_EVERY: Duration = Duration::from_secs(10);

/// Failures of one listener since it last logged.
#[derive(Debug, Default)]
pub struct AcceptErrors {
    /// Failures in a row (resets on success): sets the back-off.
    streak: u32,
    /// Failures not yet logged.
    unlogged: u64,
    /// When it last logged.
    logged: Option<Instant>,
    /// Every failure since start.
    pub total: u64,
}

impl AcceptErrors {
    /// The wait after one more failure, and whether to log now (with the
    /// number of failures the line covers).
    fn failed(&mut self, now: Instant) -> (Duration, Option<u64>) {
        self.streak = self.streak.saturating_add(1);
        self.unlogged += 1;
        self.total += 1;
        let backoff = BACKOFF_MIN.saturating_mul(1u32 << self.streak.min(16).saturating_sub(1)).min(BACKOFF_MAX);
        let log = match self.logged {
            Some(t) if now.duration_since(t) < LOG_EVERY => None,
            _ => {
                self.logged = Some(now);
                Some(std::mem::take(&mut self.unlogged))
            }
        };
        (backoff, log)
    }

    fn succeeded(&mut self) {
        self.streak = 0;
    }
}

/// Calls `accept` until it succeeds, waiting and logging as described in the
/// module documentation. `what` names the listener in the log.
pub async fn accept_forever<T, F, Fut>(what: &str, errors: &mut AcceptErrors, mut accept: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = std::io::Result<T>>,
{
    loop {
        match accept().await {
            Ok(v) => {
                errors.succeeded();
                return v;
            }
            Err(e) => {
                let (wait, log) = errors.failed(Instant::now());
                if let Some(n) = log {
                    tracing::warn!(listener = what, failures = n, "accept failed: {e}; retrying");
                }
                tokio::time::sleep(wait).await;
            }
        }
    }
}

/// Connection limits of one listener (or several sharing them).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConnLimits {
    /// Open connections in total.
    pub total: usize,
    /// Open connections from one client address.
    pub per_ip: usize,
}

/// Counts open connections against [`ConnLimits`]. A connection holds a
/// [`ConnGuard`]; dropping it frees its place.
#[derive(Debug)]
pub struct ConnCounter {
    limits: ConnLimits,
    open: Mutex<(usize, HashMap<IpAddr, usize>)>,
}

/// Why a connection was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Refused {
    /// The listener holds its total already.
    Total,
    /// That address holds its share already.
    PerIp,
}

/// One admitted connection's place.
#[derive(Debug)]
pub struct ConnGuard {
    counter: Arc<ConnCounter>,
    ip: IpAddr,
}

impl ConnCounter {
    /// A counter with nothing open.
    pub fn new(limits: ConnLimits) -> Arc<ConnCounter> {
        Arc::new(ConnCounter { limits, open: Mutex::new((0, HashMap::new())) })
    }

    /// Takes a place for a connection from `ip`, or says why not.
    pub fn admit(self: &Arc<Self>, ip: IpAddr) -> Result<ConnGuard, Refused> {
        let mut open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        if open.0 >= self.limits.total {
            return Err(Refused::Total);
        }
        let n = open.1.entry(ip).or_insert(0);
        if *n >= self.limits.per_ip {
            return Err(Refused::PerIp);
        }
        *n += 1;
        open.0 += 1;
        Ok(ConnGuard { counter: self.clone(), ip })
    }

    /// Connections open now.
    pub fn open(&self) -> usize {
        self.open.lock().unwrap_or_else(|p| p.into_inner()).0
    }
}

impl Drop for ConnGuard {
    fn drop(&mut self) {
        let mut open = self.counter.open.lock().unwrap_or_else(|p| p.into_inner());
        open.0 -= 1;
        if let Some(n) = open.1.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                open.1.remove(&self.ip);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_to_its_bound_and_logging_is_rate_limited() {
        let mut e = AcceptErrors::default();
        let t0 = Instant::now();
        let (w1, l1) = e.failed(t0);
        assert_eq!((w1, l1), (BACKOFF_MIN, Some(1)));
        let mut last = w1;
        for i in 0..100 {
            let (w, l) = e.failed(t0 + Duration::from_millis(i));
            assert!(w >= last && w <= BACKOFF_MAX);
            assert_eq!(l, None, "logged twice within {LOG_EVERY:?}");
            last = w;
        }
        assert_eq!(last, BACKOFF_MAX);
        // The next line after the interval counts what was not logged.
        assert_eq!(e.failed(t0 + LOG_EVERY).1, Some(101));
        e.succeeded();
        assert_eq!(e.failed(t0 + LOG_EVERY).0, BACKOFF_MIN);
        assert_eq!(e.total, 103);
    }

    #[test]
    fn limits_hold_in_total_and_per_address_and_free_on_drop() {
        let c = ConnCounter::new(ConnLimits { total: 3, per_ip: 2 });
        let (a, b): (IpAddr, IpAddr) = ("10.0.0.1".parse().unwrap(), "10.0.0.2".parse().unwrap());
        let a1 = c.admit(a).unwrap();
        let _a2 = c.admit(a).unwrap();
        assert_eq!(c.admit(a).unwrap_err(), Refused::PerIp);
        let _b1 = c.admit(b).unwrap();
        assert_eq!(c.admit(b).unwrap_err(), Refused::Total);
        drop(a1);
        assert_eq!(c.open(), 2);
        let _a3 = c.admit(a).unwrap();
        assert_eq!(c.open(), 3);
    }

    #[tokio::test]
    async fn accept_forever_retries_until_it_succeeds() {
        let mut errors = AcceptErrors::default();
        let mut calls = 0;
        let v = accept_forever("test", &mut errors, || {
            calls += 1;
            let n = calls;
            async move {
                if n < 4 {
                    Err(std::io::Error::from_raw_os_error(24)) // EMFILE
                } else {
                    Ok(n)
                }
            }
        })
        .await;
        assert_eq!(v, 4);
        assert_eq!(errors.total, 3);
    }
}
