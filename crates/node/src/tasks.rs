//! The node's tasks that touch the store, tracked so that shutdown can stop
//! them and wait until none is in the middle of a step.
//!
//! A task that is inside a store call (`block_in_place`: a commit waiting for
//! fsync) when the runtime shuts down goes on running on its thread; if it
//! then touched a timer it panicked ("A Tokio 1.x context was found, but it
//! is being shutdown"), and it could be cut off between its commit and its
//! answer. So at shutdown every tracked task is cancelled at its next await
//! point (never inside a step) and the runtime is dropped only once all have
//! ended, or after [`STOP_DEADLINE`]. (IMAP sessions run their store
//! steps on the IMAP server's store pool instead: their tasks await the
//! step, and shutdown then waits for that pool to be idle as well. LMTP
//! sessions run theirs on a pool of their own, and a delivery, from its
//! commit to its answer, is a task of its own that is not cancelled:
//! [`Tasks::spawn_whole`].)

use std::future::Future;
use std::time::Duration;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// How long shutdown waits for tasks to reach an await point.
pub const STOP_DEADLINE: Duration = Duration::from_secs(10);

/// The tracked tasks and their shared stop signal.
#[derive(Clone, Default)]
pub struct Tasks {
    tracker: TaskTracker,
    stop: CancellationToken,
}

impl Tasks {
    /// Runs `f` as a tracked task: it ends when `f` does or at its first
    /// await point after [`Tasks::stop`].
    pub fn spawn<F: Future<Output = ()> + Send + 'static>(&self, f: F) {
        let stop = self.stop.clone();
        self.tracker.spawn(async move {
            tokio::select! {
                biased;
                _ = stop.cancelled() => {}
                _ = f => {}
            }
        });
    }

    /// Runs `f` as a tracked task that is never cancelled: [`Tasks::stop`]
    /// waits for it to end (at most [`STOP_DEADLINE`]). For work that must
    /// not be cut off between two awaits (an LMTP delivery between its
    /// commit and its withdrawal). Dropping the handle does not stop it.
    pub fn spawn_whole<T, F>(&self, f: F) -> tokio::task::JoinHandle<T>
    where
        T: Send + 'static,
        F: Future<Output = T> + Send + 'static,
    {
        self.tracker.spawn(f)
    }

    /// Cancels every task and waits (at most [`STOP_DEADLINE`]) until all
    /// have ended. Returns how many were still running at the deadline.
    pub async fn stop(&self) -> usize {
        self.stop.cancel();
        self.tracker.close();
        let _ = tokio::time::timeout(STOP_DEADLINE, self.tracker.wait()).await;
        self.tracker.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn stop_waits_for_a_step_in_progress_and_cancels_the_rest() {
        let tasks = Tasks::default();
        let finished_step = Arc::new(AtomicBool::new(false));
        let (entered_tx, entered_rx) = tokio::sync::oneshot::channel();
        let done = finished_step.clone();
        tasks.spawn(async move {
            tokio::task::block_in_place(|| {
                let _ = entered_tx.send(());
                std::thread::sleep(Duration::from_millis(300));
                done.store(true, Ordering::SeqCst);
            });
            // Never reached after stop: the next await point is cancelled.
            std::future::pending::<()>().await;
        });
        tasks.spawn(std::future::pending());
        entered_rx.await.unwrap();
        assert_eq!(tasks.stop().await, 0, "every task ended");
        assert!(finished_step.load(Ordering::SeqCst), "the step in progress ran to its end first");
    }
}
