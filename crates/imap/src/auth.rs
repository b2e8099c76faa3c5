//! Passwords and the defences around checking them.
//!
//! - Argon2id hashes (PHC strings) kept by the store, and the SASL PLAIN
//!   message.
//! - [`Guard`]: what every LOGIN of a server goes through. It keeps
//!   - a **penalty** per client address (IPv6 by /64) and per account name
//!     (known or not, so the penalty itself tells nothing): after `n` failures
//!     in a row an attempt waits `delay · 2^(n-1)`, at most `delay_max`,
//!     before it is verified (Dovecot's auth penalty: 2 s doubling to 15 s,
//!     per IP). The wait comes before the verification and applies to a right
//!     password too, so a guesser running attempts in parallel cannot tell a
//!     success from its answering sooner. A success clears both; a penalty is
//!     forgotten `forget` after its last failure.
//!   - a **dummy verification** for accounts without a credential: an unknown
//!     name costs the same Argon2 run as a wrong password (no timing oracle).
//!   - a **cache of successful verifications** (Dovecot's auth cache): a
//!     BLAKE3 hash, keyed with a random per-process key, of (account, stored
//!     credential, password). A correct login after the first skips Argon2
//!     and the penalty (the password was proven right); the plaintext is never
//!     kept; a changed password changes the stored credential, so the old
//!     entries can never match again.
//!   - a **pool of its own** for Argon2 ([`crate::pool::Pool`]; each run
//!     takes ~19 MiB and a core for tens of milliseconds; each thread keeps
//!     its 19 MiB from one run to the next, [`crate::password`]):
//!     `verify_parallel` threads take attempts
//!     from one queue in the order they came (so a burst of logins is served
//!     first come, first served, and the async workers that run every
//!     other session's commands never run Argon2). The queue holds at most
//!     `verify_queue`; past it an attempt is refused at once ([`Busy`]) rather
//!     than left to wait without end. The pool's threads run at a lower
//!     priority ([`VERIFY_NICE`]): a login storm takes the CPU only when
//!     other sessions' commands leave it, as a separate auth process would
//!     at best.
//!
//! Every table has a size bound set by the configuration, never by input.
//! Time is a parameter (`now`), so the rules are tested without sleeping.

use argon2::password_hash::rand_core::{OsRng, RngCore};
use std::collections::HashMap;
use std::hash::Hash;
use std::net::IpAddr;

pub use crate::password::{hash_password, verify_password};
pub use crate::pool::Busy;
use crate::pool::Pool;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// A SASL PLAIN message (RFC 4616): `authzid NUL authcid NUL password`.
/// Returns (authcid, password); an authzid other than empty or the authcid
/// is refused (no proxy authorization).
pub fn parse_plain(message: &[u8]) -> Option<(String, Vec<u8>)> {
    let mut it = message.splitn(3, |&b| b == 0);
    let (authz, authc, pass) = (it.next()?, it.next()?, it.next()?);
    let authc = std::str::from_utf8(authc).ok()?.to_string();
    if !authz.is_empty() && authz != authc.as_bytes() {
        return None;
    }
    Some((authc, pass.to_vec()))
}

/// What an account without a credential is verified against: the hash of a
/// random password (thrown away), made by [`hash_password`], so with the
/// parameters of every real credential (a test checks they still match) and
/// the same cost. Its result is ignored; it is there to take the time.
const DUMMY_HASH: &str =
    "$argon2id$v=19$m=19456,t=2,p=1$UpFNpnTFuSyXuT5DJZJtrA$auMGHhAK2REuHLqe3JDzqLoCGK8TIBm1iMuOLGgA8es";

/// Limits of a [`Guard`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GuardLimits {
    /// Penalty after the first failure (doubling with each further one);
    /// zero turns penalties off.
    pub delay: Duration,
    /// Penalty at most.
    pub delay_max: Duration,
    /// A penalty is forgotten this long after its last failure.
    pub forget: Duration,
    /// Entries of each penalty table (addresses, account names) at most.
    pub penalty_entries: usize,
    /// Cached verifications at most; zero turns the cache off.
    pub cache_entries: usize,
    /// A cached verification is trusted this long.
    pub cache_ttl: Duration,
    /// Argon2 verifications running at once at most: the threads of the
    /// guard's pool.
    pub verify_parallel: usize,
    /// Verifications waiting for a thread of the pool at most; one more is
    /// refused ([`Busy`]).
    pub verify_queue: usize,
}

impl Default for GuardLimits {
    fn default() -> Self {
        GuardLimits {
            delay: Duration::from_millis(500),
            delay_max: Duration::from_secs(15),
            forget: Duration::from_secs(15 * 60),
            penalty_entries: 10_000,
            cache_entries: 10_000,
            cache_ttl: Duration::from_secs(60 * 60),
            // One per core (each is a core's worth of work), at most 4.
            verify_parallel: std::thread::available_parallelism().map_or(4, |n| n.get().min(4)),
            verify_queue: 1024,
        }
    }
}

/// A map of at most `cap` entries, each stamped with a time and valid for
/// `ttl` after it. When full, expired entries go first, then the oldest.
#[derive(Debug)]
struct Bounded<K, V> {
    map: HashMap<K, (Instant, V)>,
    cap: usize,
    ttl: Duration,
}

impl<K: Hash + Eq + Copy, V> Bounded<K, V> {
    fn new(cap: usize, ttl: Duration) -> Self {
        Bounded { map: HashMap::new(), cap, ttl }
    }

    fn fresh(&self, now: Instant, stamp: Instant) -> bool {
        now.saturating_duration_since(stamp) < self.ttl
    }

    fn get(&self, now: Instant, k: &K) -> Option<&V> {
        self.map.get(k).filter(|(t, _)| self.fresh(now, *t)).map(|(_, v)| v)
    }

    /// Inserts or replaces `k`, stamped `now`.
    fn insert(&mut self, now: Instant, k: K, v: V) {
        if self.cap == 0 {
            return;
        }
        if !self.map.contains_key(&k) && self.map.len() >= self.cap {
            // O(n) only when full, and each insertion follows an Argon2 run
            // (tens of milliseconds), so this stays negligible.
            let ttl = self.ttl;
            self.map.retain(|_, (t, _)| now.saturating_duration_since(*t) < ttl);
            if self.map.len() >= self.cap {
                if let Some(oldest) = self.map.iter().min_by_key(|(_, (t, _))| *t).map(|(k, _)| *k) {
                    self.map.remove(&oldest);
                }
            }
        }
        self.map.insert(k, (now, v));
        debug_assert!(self.map.len() <= self.cap);
    }

    fn remove(&mut self, k: &K) {
        self.map.remove(k);
    }

    fn len(&self) -> usize {
        self.map.len()
    }
}

/// Where an attempt comes from, for its penalty: an IPv4 address, or an
/// IPv6 /64 (what one subscriber usually holds).
fn address_key(ip: IpAddr) -> IpAddr {
    match ip.to_canonical() {
        IpAddr::V6(v6) => IpAddr::V6((u128::from(v6) & !((1u128 << 64) - 1)).into()),
        v4 => v4,
    }
}

/// The penalty tables and the cache (under one lock; none is held while
/// Argon2 runs).
struct Tables {
    /// Failures in a row, by address.
    by_address: Bounded<IpAddr, u32>,
    /// Failures in a row, by keyed hash of the account name (fixed size
    /// whatever name a client sends).
    by_account: Bounded<[u8; 16], u32>,
    /// Verifications that succeeded.
    cache: Bounded<[u8; 32], ()>,
}

/// The login defences of one server (see the module documentation).
pub struct Guard {
    limits: GuardLimits,
    /// Random per process: cache and table keys mean nothing elsewhere.
    key: [u8; 32],
    tables: Mutex<Tables>,
    /// Argon2's threads, taking attempts in the order they came.
    pool: Pool,
}

/// How much lower the pool's threads run than the rest (Linux nice
/// levels: at 10 a thread gets about a tenth of the CPU a normal one
/// competing with it gets).
pub const VERIFY_NICE: i32 = 10;

/// Verifies `password` against `credential`, or against the dummy hash
/// when there is none (then always false, at the same cost).
fn verify_job(credential: Option<&str>, password: &[u8]) -> bool {
    match credential {
        Some(c) => verify_password(c, password),
        None => {
            let _ = verify_password(DUMMY_HASH, password);
            false
        }
    }
}

impl Guard {
    /// A guard with nothing recorded.
    pub fn new(limits: GuardLimits) -> Guard {
        let pool = Pool::new("argon2", limits.verify_parallel, limits.verify_queue, VERIFY_NICE);
        let mut key = [0u8; 32];
        OsRng.fill_bytes(&mut key);
        Guard {
            limits,
            key,
            tables: Mutex::new(Tables {
                by_address: Bounded::new(limits.penalty_entries, limits.forget),
                by_account: Bounded::new(limits.penalty_entries, limits.forget),
                cache: Bounded::new(limits.cache_entries, limits.cache_ttl),
            }),
            pool,
        }
    }

    /// Its limits.
    pub fn limits(&self) -> &GuardLimits {
        &self.limits
    }

    fn tables(&self) -> std::sync::MutexGuard<'_, Tables> {
        // Counters only: a panic elsewhere left nothing half-written.
        self.tables.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn account_key(&self, account: &str) -> [u8; 16] {
        let mut h = blake3::Hasher::new_keyed(&self.key);
        h.update(b"account\0");
        h.update(account.as_bytes());
        let mut out = [0u8; 16];
        out.copy_from_slice(&h.finalize().as_bytes()[..16]);
        out
    }

    fn cache_key(&self, account: &str, credential: &str, password: &[u8]) -> [u8; 32] {
        let mut h = blake3::Hasher::new_keyed(&self.key);
        for part in [b"verified".as_slice(), account.as_bytes(), credential.as_bytes(), password] {
            h.update(&(part.len() as u64).to_le_bytes());
            h.update(part);
        }
        *h.finalize().as_bytes()
    }

    /// Whether `password` was verified against `credential` (the account's
    /// stored hash, as it is now) within the cache's lifetime.
    pub fn cached(&self, now: Instant, account: &str, credential: &str, password: &[u8]) -> bool {
        let k = self.cache_key(account, credential, password);
        self.tables().cache.get(now, &k).is_some()
    }

    /// How long an attempt from `ip` on `account` waits before it is
    /// verified (zero if neither failed lately).
    pub fn penalty(&self, now: Instant, ip: IpAddr, account: &str) -> Duration {
        let acct = self.account_key(account);
        let t = self.tables();
        let n = t.by_address.get(now, &address_key(ip)).copied().unwrap_or(0);
        let m = t.by_account.get(now, &acct).copied().unwrap_or(0);
        self.delay_after(n.max(m))
    }

    /// The penalty after `failures` failures in a row.
    pub fn delay_after(&self, failures: u32) -> Duration {
        if failures == 0 {
            return Duration::ZERO;
        }
        let doubled = self.limits.delay.saturating_mul(1u32 << (failures - 1).min(20));
        doubled.min(self.limits.delay_max)
    }

    /// Queues the verification of `password` against `credential`, or
    /// against the dummy hash when there is none (then always false, at the
    /// same cost), for the pool; `done` gets the answer on a pool thread.
    /// Refused at once if `verify_queue` attempts wait already.
    pub fn verify_then(
        &self,
        credential: Option<String>,
        password: Vec<u8>,
        done: impl FnOnce(bool) + Send + 'static,
    ) -> Result<(), Busy> {
        self.pool.try_spawn(move || done(verify_job(credential.as_deref(), &password)))
    }

    /// The same, waiting for the answer (and for room in the queue):
    /// for callers off the async workers, and tests.
    pub fn verify(&self, credential: Option<&str>, password: &[u8]) -> bool {
        let (tx, rx) = std::sync::mpsc::channel();
        let (credential, password) = (credential.map(str::to_string), password.to_vec());
        self.pool.spawn_blocking(move || {
            let _ = tx.send(verify_job(credential.as_deref(), &password));
        });
        rx.recv().expect("a pool thread answers every job")
    }

    /// Records a failed attempt.
    pub fn failed(&self, now: Instant, ip: IpAddr, account: &str) {
        let acct = self.account_key(account);
        let mut t = self.tables();
        let ip = address_key(ip);
        let n = t.by_address.get(now, &ip).copied().unwrap_or(0);
        t.by_address.insert(now, ip, n.saturating_add(1));
        let m = t.by_account.get(now, &acct).copied().unwrap_or(0);
        t.by_account.insert(now, acct, m.saturating_add(1));
    }

    /// Records a successful verification: clears the penalties of `ip` and
    /// `account` and caches the verification.
    pub fn succeeded(&self, now: Instant, ip: IpAddr, account: &str, credential: &str, password: &[u8]) {
        let (acct, k) = (self.account_key(account), self.cache_key(account, credential, password));
        let mut t = self.tables();
        t.by_address.remove(&address_key(ip));
        t.by_account.remove(&acct);
        t.cache.insert(now, k, ());
    }

    /// Entries held: (addresses, account names, cached verifications).
    pub fn sizes(&self) -> (usize, usize, usize) {
        let t = self.tables();
        (t.by_address.len(), t.by_account.len(), t.cache.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_messages() {
        assert_eq!(parse_plain(b"\0alice\0pw"), Some(("alice".into(), b"pw".to_vec())));
        assert_eq!(parse_plain(b"alice\0alice\0pw"), Some(("alice".into(), b"pw".to_vec())));
        assert_eq!(parse_plain(b"bob\0alice\0pw"), None);
        assert_eq!(parse_plain(b"alice"), None);
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn penalties_double_to_their_cap_per_address_and_per_account_and_clear_on_success() {
        let g = Guard::new(GuardLimits::default());
        let t0 = Instant::now();
        let (a, b) = (ip("192.0.2.1"), ip("192.0.2.2"));
        assert_eq!(g.penalty(t0, a, "alice"), Duration::ZERO);
        let mut seen = Vec::new();
        for _ in 0..8 {
            g.failed(t0, a, "alice");
            seen.push(g.penalty(t0, a, "alice").as_millis());
        }
        assert_eq!(seen, [500, 1000, 2000, 4000, 8000, 15000, 15000, 15000]);
        // Another address trying the same account pays the account's penalty;
        // the same address trying another account pays the address's.
        assert_eq!(g.penalty(t0, b, "alice"), Duration::from_secs(15));
        assert_eq!(g.penalty(t0, a, "nobody"), Duration::from_secs(15));
        assert_eq!(g.penalty(t0, b, "nobody"), Duration::ZERO);
        // Forgotten after a while without failures.
        assert_eq!(g.penalty(t0 + g.limits().forget, a, "alice"), Duration::ZERO);
        // A success clears both.
        g.succeeded(t0, a, "alice", "$cred", b"pw");
        assert_eq!(g.penalty(t0, a, "alice"), Duration::ZERO);
        assert_eq!(g.penalty(t0, b, "alice"), Duration::ZERO);
    }

    #[test]
    fn ipv6_addresses_share_a_penalty_per_64() {
        let g = Guard::new(GuardLimits::default());
        let t0 = Instant::now();
        g.failed(t0, ip("2001:db8:1:2::1"), "x");
        assert!(!g.penalty(t0, ip("2001:db8:1:2:ffff::7"), "y").is_zero());
        assert!(g.penalty(t0, ip("2001:db8:1:3::1"), "y").is_zero());
        g.failed(t0, ip("::ffff:192.0.2.9"), "z");
        assert!(!g.penalty(t0, ip("192.0.2.9"), "w").is_zero());
    }

    #[test]
    fn the_cache_holds_a_verification_until_the_credential_changes_or_it_expires() {
        let g = Guard::new(GuardLimits::default());
        let t0 = Instant::now();
        let a = ip("192.0.2.1");
        assert!(!g.cached(t0, "alice", "$old", b"pw"));
        g.succeeded(t0, a, "alice", "$old", b"pw");
        assert!(g.cached(t0, "alice", "$old", b"pw"));
        assert!(!g.cached(t0, "alice", "$old", b"pw2"), "another password");
        assert!(!g.cached(t0, "bob", "$old", b"pw"), "another account");
        assert!(!g.cached(t0, "alice", "$new", b"pw"), "the password was changed");
        assert!(!g.cached(t0 + g.limits().cache_ttl, "alice", "$old", b"pw"), "expired");
    }

    #[test]
    fn every_table_stays_within_its_bound() {
        let limits = GuardLimits { penalty_entries: 50, cache_entries: 20, ..GuardLimits::default() };
        let g = Guard::new(limits);
        let t0 = Instant::now();
        for i in 0..1000u32 {
            let now = t0 + Duration::from_millis(i as u64);
            g.failed(now, IpAddr::V4(i.into()), &format!("user{i}"));
            g.succeeded(now, IpAddr::V4((i + 1_000_000).into()), &format!("u{i}"), "$c", b"pw");
        }
        assert_eq!(g.sizes(), (50, 50, 20));
        // The newest entries are the ones kept.
        let last = t0 + Duration::from_millis(999);
        assert!(!g.penalty(last, IpAddr::V4(999u32.into()), "-").is_zero());
        assert!(g.penalty(last, IpAddr::V4(0u32.into()), "-").is_zero());
        assert!(g.cached(last, "u999", "$c", b"pw") && !g.cached(last, "u0", "$c", b"pw"));
        let off = Guard::new(GuardLimits { cache_entries: 0, delay: Duration::ZERO, ..GuardLimits::default() });
        off.failed(t0, ip("192.0.2.1"), "a");
        off.succeeded(t0, ip("192.0.2.2"), "b", "$c", b"pw");
        assert_eq!(off.penalty(t0, ip("192.0.2.1"), "a"), Duration::ZERO);
        assert!(!off.cached(t0, "b", "$c", b"pw"));
    }

    #[test]
    fn the_pool_serves_in_order_and_refuses_past_its_queue() {
        let g = Guard::new(GuardLimits { verify_parallel: 1, verify_queue: 3, ..GuardLimits::default() });
        let h = hash_password("pw");
        let (order_tx, order) = std::sync::mpsc::channel();
        // The one thread is held by the first job's answer until released.
        let (release, held) = std::sync::mpsc::channel::<()>();
        let (started_tx, started) = std::sync::mpsc::channel();
        let tx = order_tx.clone();
        g.verify_then(Some(h.clone()), b"pw".to_vec(), move |ok| {
            // On a pool thread, below the others' priority.
            #[cfg(target_os = "linux")]
            // SAFETY: reads this thread's own priority.
            assert_eq!(unsafe { libc::getpriority(libc::PRIO_PROCESS, libc::gettid() as libc::id_t) }, VERIFY_NICE);
            started_tx.send(()).unwrap();
            held.recv().unwrap();
            tx.send((0, ok)).unwrap();
        })
        .unwrap();
        started.recv().unwrap();
        for i in 1..=3 {
            let tx = order_tx.clone();
            let pw = if i == 2 { b"wrong".to_vec() } else { b"pw".to_vec() };
            g.verify_then(Some(h.clone()), pw, move |ok| tx.send((i, ok)).unwrap()).unwrap();
        }
        // The queue (3) is full: one more is refused at once, unverified.
        assert_eq!(g.verify_then(Some(h.clone()), b"pw".to_vec(), |_| panic!("not verified")), Err(Busy));
        release.send(()).unwrap();
        let answers: Vec<(i32, bool)> = order.iter().take(4).collect();
        assert_eq!(answers, vec![(0, true), (1, true), (2, false), (3, true)]);
        // With room again, attempts are taken.
        assert!(g.verify(Some(&h), b"pw"));
    }

    #[test]
    fn the_dummy_hash_has_the_parameters_of_new_credentials() {
        fn params(h: &str) -> (String, Option<u32>, String) {
            let h = argon2::password_hash::PasswordHash::new(h).unwrap();
            (h.algorithm.to_string(), h.version, h.params.to_string())
        }
        assert_eq!(params(DUMMY_HASH), params(&hash_password("x")));
    }

    #[test]
    fn an_unknown_account_costs_a_verification_and_never_succeeds() {
        let g = Guard::new(GuardLimits::default());
        let h = hash_password("pw");
        let time = |f: &dyn Fn() -> bool| {
            let t = Instant::now();
            let ok = f();
            (ok, t.elapsed())
        };
        let (ok_known, known) = time(&|| g.verify(Some(&h), b"wrong"));
        let (ok_unknown, unknown) = time(&|| g.verify(None, b"wrong"));
        assert!(!ok_known && !ok_unknown);
        assert!(g.verify(Some(&h), b"pw"));
        // Same Argon2 parameters: the same order of cost (a generous factor
        // for a loaded machine; without the dummy it is 0.07 ms against tens).
        assert!(unknown * 4 > known && known * 4 > unknown, "known {known:?}, unknown {unknown:?}");
    }
}
