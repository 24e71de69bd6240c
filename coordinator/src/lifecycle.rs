//! How a process's background work starts and stops.
//!
//! - One [`CancellationToken`] per process (node or frontend) says "stop": servers
//!   stop accepting calls, and every background loop ends at its next wait.
//! - Every background task is spawned on the process's [`TaskTracker`], so shutdown
//!   can wait (bounded) until they have all ended rather than leave them detached.
//! - Periodic work waits through [`Ticks`] (a fixed period) or [`pause`] (a delay
//!   chosen each round); both return `false` once the token is cancelled.
//!
//! Invariant: only waits are cut short. A round of work that has begun runs to its
//! end (it may be proposing a command or writing a file), so cancelling never leaves
//! half a round behind; shutdown bounds how long it waits for such rounds.

use std::time::Duration;

use tokio::time::{Interval, MissedTickBehavior};
pub use tokio_util::sync::{CancellationToken, DropGuard};
pub use tokio_util::task::TaskTracker;

/// A process's background work: the token that stops it and the tracker it runs on.
/// Cloned into whatever spawns background tasks.
#[derive(Clone, Default)]
pub struct Background {
    pub stop: CancellationToken,
    pub tasks: TaskTracker,
}

impl Background {
    /// Runs `task` in the background, tracked.
    pub fn spawn<F>(&self, task: F)
    where
        F: std::future::Future<Output = ()> + Send + 'static,
    {
        self.tasks.spawn(task);
    }

    /// Says "stop" to every task, then waits (at most `within`) for them all to end;
    /// `false` if some were still running.
    pub async fn stop_and_wait(&self, within: Duration) -> bool {
        self.stop.cancel();
        wait_for_tasks(&self.tasks, within).await
    }
}

/// A fixed-period tick that ends when a token is cancelled. A late tick is delayed,
/// never bunched with the next one.
pub struct Ticks {
    interval: Interval,
    stop: CancellationToken,
}

impl Ticks {
    /// Ticks every `period`, the first at once.
    pub fn every(period: Duration, stop: CancellationToken) -> Self {
        assert!(!period.is_zero(), "a periodic task needs a period");
        let mut interval = tokio::time::interval(period);
        interval.set_missed_tick_behavior(MissedTickBehavior::Delay);
        Self { interval, stop }
    }

    /// Waits for the next tick: `true`, or `false` once the token is cancelled.
    pub async fn next(&mut self) -> bool {
        self.stop
            .run_until_cancelled(self.interval.tick())
            .await
            .is_some()
    }
}

/// Sleeps for `wait`: `true`, or `false` if `stop` was cancelled first.
pub async fn pause(stop: &CancellationToken, wait: Duration) -> bool {
    stop.run_until_cancelled(tokio::time::sleep(wait))
        .await
        .is_some()
}

/// Waits (at most `within`) for every task on `tasks` to end, after it was told to
/// stop; `false` if some were still running.
pub async fn wait_for_tasks(tasks: &TaskTracker, within: Duration) -> bool {
    tasks.close();
    tokio::time::timeout(within, tasks.wait()).await.is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};
    use std::sync::Arc;

    #[tokio::test]
    async fn waits_end_when_the_token_is_cancelled_and_rounds_do_not() {
        let stop = CancellationToken::new();
        let mut ticks = Ticks::every(Duration::from_millis(10), stop.clone());
        assert!(ticks.next().await, "the first tick is at once");
        assert!(ticks.next().await, "then one a period");
        assert!(pause(&stop, Duration::from_millis(1)).await);
        let tasks = TaskTracker::new();
        let rounds = Arc::new(AtomicU32::new(0));
        let (task_stop, counted) = (stop.clone(), rounds.clone());
        let (began, mut round_began) = tokio::sync::mpsc::channel(1);
        tasks.spawn(async move {
            let mut ticks = Ticks::every(Duration::from_secs(3600), task_stop);
            while ticks.next().await {
                let _ = began.send(()).await;
                // A round in progress when the token is cancelled still finishes.
                tokio::time::sleep(Duration::from_millis(100)).await;
                counted.fetch_add(1, Ordering::SeqCst);
            }
        });
        round_began
            .recv()
            .await
            .expect("the first round begins at once");
        stop.cancel();
        assert!(!pause(&stop, Duration::from_secs(3600)).await);
        assert!(!ticks.next().await);
        assert!(wait_for_tasks(&tasks, Duration::from_secs(10)).await);
        assert_eq!(
            rounds.load(Ordering::SeqCst),
            1,
            "the round finished, no other began"
        );
    }
}
