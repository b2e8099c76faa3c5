//! A fixed set of threads for work that blocks, fed by one bounded queue.
//!
//! Two pools of this kind serve a server: the password pool of
//! [`crate::auth::Guard`] (Argon2, at a lower priority) and the store pool
//! of [`crate::Shared`] (every session step that may call the store: a
//! commit waits for fsync, a SELECT or a FETCH reads from disk). Neither
//! kind of work runs on the async workers, so a slow step of one session
//! never holds up another session's commands; and neither grows past its
//! bound, whatever the load (tokio's own blocking pool grows to 512 threads).
//!
//! - **Threads**: a fixed number, started with the pool, ended when it is
//!   dropped (once the queue is empty).
//! - **Queue**: at most `queue` jobs wait for a thread, taken in the order
//!   they came (first come, first served: one queue, and the threads take
//!   from it one at a time). Past it, a caller either is refused at once
//!   ([`Pool::try_spawn`], [`Busy`]: the password pool answers the login
//!   `NO [UNAVAILABLE]`) or waits for room ([`Pool::reserve`]: the store
//!   pool, see [`crate::server`] for why), its turn kept in the order it
//!   began to wait (tokio's bounded channel is fair).
//! - **Panics**: a job that panics ends itself only; its thread goes on
//!   with the next job, and whoever waits for its answer gets [`Panicked`].

use std::future::Future;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use tokio::sync::{mpsc, oneshot};

/// A job for a thread of the pool.
type Job = Box<dyn FnOnce() + Send>;

/// The pool's queue was full: the job was not taken.
#[derive(Debug, PartialEq, Eq)]
pub struct Busy;

/// The job panicked (its thread went on with the next one).
#[derive(Debug, PartialEq, Eq)]
pub struct Panicked;

/// A fixed pool of threads with a bounded queue (see the module
/// documentation).
pub struct Pool {
    queue: mpsc::Sender<Job>,
    /// Jobs queued or running.
    in_flight: Arc<AtomicUsize>,
    threads: usize,
}

/// One thread: runs jobs in queue order until the pool is dropped.
fn worker(name: String, jobs: Arc<Mutex<mpsc::Receiver<Job>>>, in_flight: Arc<AtomicUsize>, nice: i32) {
    #[cfg(target_os = "linux")]
    if nice != 0 {
        // SAFETY: plain system calls on this thread's own id; failing leaves
        // the thread at its priority, which is only slower for others.
        unsafe {
            let tid = libc::gettid();
            let _ = libc::setpriority(libc::PRIO_PROCESS, tid as libc::id_t, nice);
        }
    }
    #[cfg(not(target_os = "linux"))]
    let _ = nice;
    loop {
        // The lock is held only to take the next job (never while one runs,
        // so a panicking job cannot poison it).
        let job = jobs.lock().unwrap_or_else(|p| p.into_inner()).blocking_recv();
        let Some(job) = job else { return };
        if catch_unwind(AssertUnwindSafe(job)).is_err() {
            tracing::error!(pool = name, "a job panicked; its thread goes on");
        }
        in_flight.fetch_sub(1, Ordering::SeqCst);
    }
}

impl Pool {
    /// Starts `threads` threads (at least one) named `name-N`, at the nice
    /// level `nice` (0: left as the process's), taking jobs
    /// from a queue of at most `queue` (at least one).
    pub fn new(name: &str, threads: usize, queue: usize, nice: i32) -> Pool {
        let (tx, rx) = mpsc::channel::<Job>(queue.max(1));
        let jobs = Arc::new(Mutex::new(rx));
        let in_flight = Arc::new(AtomicUsize::new(0));
        let threads = threads.max(1);
        for i in 0..threads {
            let (jobs, in_flight, name) = (jobs.clone(), in_flight.clone(), name.to_string());
            std::thread::Builder::new()
                .name(format!("{name}-{i}"))
                .spawn(move || worker(name, jobs, in_flight, nice))
                .expect("starting a pool thread");
        }
        Pool { queue: tx, in_flight, threads }
    }

    /// Its threads.
    pub fn threads(&self) -> usize {
        self.threads
    }

    /// Jobs queued or running now.
    pub fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::SeqCst)
    }

    /// Queues `job`, or refuses it at once if the queue is full.
    pub fn try_spawn(&self, job: impl FnOnce() + Send + 'static) -> Result<(), Busy> {
        let permit = self.queue.try_reserve().map_err(|_| Busy)?;
        self.in_flight.fetch_add(1, Ordering::SeqCst);
        permit.send(Box::new(job));
        Ok(())
    }

    /// Queues `job`, blocking this thread while the queue is full: for
    /// threads outside the async runtime only (tests, the fuzzer).
    pub fn spawn_blocking(&self, job: impl FnOnce() + Send + 'static) {
        self.in_flight.fetch_add(1, Ordering::SeqCst);
        if self.queue.blocking_send(Box::new(job)).is_err() {
            unreachable!("the threads live as long as the pool");
        }
    }

    /// Waits (without holding a thread) for room in the queue; the room is
    /// kept until the [`Slot`] is used or dropped. Waiters get room in the
    /// order they began to wait.
    pub async fn reserve(&self) -> Slot<'_> {
        let permit = self.queue.reserve().await.expect("the threads live as long as the pool");
        Slot { permit, in_flight: &self.in_flight }
    }

    /// Runs `f` on a thread of the pool, waiting for room in the queue and
    /// then for the answer, without holding a thread of the caller's.
    pub async fn run<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> Result<T, Panicked> {
        self.reserve().await.run(f).await
    }

    /// Waits until no job is queued or running, checking every `every`, at
    /// most until `by`. Whether it got there.
    pub async fn idle_by(&self, by: tokio::time::Instant, every: std::time::Duration) -> bool {
        loop {
            if self.in_flight() == 0 {
                return true;
            }
            if tokio::time::Instant::now() >= by {
                return false;
            }
            tokio::time::sleep(every.min(by.saturating_duration_since(tokio::time::Instant::now()))).await;
        }
    }
}

/// Room in a pool's queue for one job ([`Pool::reserve`]).
pub struct Slot<'a> {
    permit: mpsc::Permit<'a, Job>,
    in_flight: &'a AtomicUsize,
}

impl Slot<'_> {
    /// Queues `f` at once; the answer comes through the returned future.
    pub fn run<T: Send + 'static>(self, f: impl FnOnce() -> T + Send + 'static) -> Answer<T> {
        let (tx, rx) = oneshot::channel();
        self.in_flight.fetch_add(1, Ordering::SeqCst);
        self.permit.send(Box::new(move || {
            // No one may be waiting any more: then the answer is dropped.
            let _ = tx.send(f());
        }));
        Answer(rx)
    }
}

/// The answer of a job queued by [`Slot::run`]: dropping it does not stop
/// the job (it runs, and its answer is dropped).
pub struct Answer<T>(oneshot::Receiver<T>);

impl<T> Future for Answer<T> {
    type Output = Result<T, Panicked>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        // The sender goes unanswered only when the job unwound.
        Pin::new(&mut self.0).poll(cx).map(|r| r.map_err(|_| Panicked))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc::channel;
    use std::time::Duration;

    /// A job that tells it started and then waits to be released.
    fn holding(pool: &Pool) -> std::sync::mpsc::Sender<()> {
        let (release, held) = channel::<()>();
        let (started_tx, started) = channel();
        pool.try_spawn(move || {
            started_tx.send(()).unwrap();
            let _ = held.recv();
        })
        .unwrap();
        started.recv().unwrap();
        release
    }

    #[test]
    fn jobs_run_in_the_order_they_came_and_one_past_the_queue_is_refused() {
        let pool = Pool::new("t", 1, 3, 0);
        let release = holding(&pool);
        let (tx, order) = channel();
        for i in 0..3 {
            let tx = tx.clone();
            pool.try_spawn(move || tx.send(i).unwrap()).unwrap();
        }
        assert_eq!(pool.in_flight(), 4);
        assert_eq!(pool.try_spawn(|| panic!("never run")), Err(Busy));
        release.send(()).unwrap();
        let got: Vec<i32> = order.iter().take(3).collect();
        assert_eq!(got, [0, 1, 2]);
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_full_queue_makes_callers_wait_their_turn_without_holding_the_runtime() {
        let pool = Arc::new(Pool::new("t", 1, 1, 0));
        let release = holding(&pool);
        // One waits in the queue, the next two wait for room, in order.
        let (tx, order) = channel();
        let queued = {
            let tx = tx.clone();
            pool.reserve().await.run(move || tx.send(0).unwrap())
        };
        let mut waiting = Vec::new();
        for i in 1..=2 {
            let (pool, tx) = (pool.clone(), tx.clone());
            waiting.push(tokio::spawn(async move { pool.run(move || tx.send(i).unwrap()).await }));
            // Let it start waiting before the next one does.
            tokio::task::yield_now().await;
        }
        // The runtime (one thread) is free while they wait: a timer fires.
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(waiting.iter().all(|w| !w.is_finished()), "no room yet");
        assert_eq!(pool.try_spawn(|| ()), Err(Busy));
        release.send(()).unwrap();
        queued.await.unwrap();
        for w in waiting {
            w.await.unwrap().unwrap();
        }
        let got: Vec<i32> = order.try_iter().collect();
        assert_eq!(got, [0, 1, 2]);
        assert!(pool.idle_by(tokio::time::Instant::now() + Duration::from_secs(5), Duration::from_millis(1)).await);
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_panicking_job_answers_panicked_and_its_thread_goes_on() {
        let pool = Pool::new("t", 1, 4, 0);
        let thread = || std::thread::current().id();
        let before = pool.run(thread).await.unwrap();
        assert_eq!(pool.run(|| -> u8 { panic!("a job gone wrong") }).await, Err(Panicked));
        assert_eq!(pool.run(thread).await.unwrap(), before, "the same thread");
        assert_eq!(pool.run(|| 6 * 7).await, Ok(42));
        // Counted done just after the answer went out.
        assert!(pool.idle_by(tokio::time::Instant::now() + Duration::from_secs(10), Duration::from_millis(1)).await);
    }

    #[test]
    fn threads_run_at_the_nice_level_asked() {
        let pool = Pool::new("t", 2, 4, 7);
        let (tx, rx) = channel();
        pool.spawn_blocking(move || {
            #[cfg(target_os = "linux")]
            // SAFETY: reads this thread's own priority.
            let nice = unsafe { libc::getpriority(libc::PRIO_PROCESS, libc::gettid() as libc::id_t) };
            #[cfg(not(target_os = "linux"))]
            let nice = 7;
            tx.send((nice, std::thread::current().name().map(str::to_string))).unwrap();
        });
        let (nice, name) = rx.recv().unwrap();
        assert_eq!(nice, 7);
        assert!(name.is_some_and(|n| n.starts_with("t-")));
        assert_eq!(pool.threads(), 2);
    }
}
