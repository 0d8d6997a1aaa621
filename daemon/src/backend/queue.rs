//! Per-queue state shared between a queue's thread and the worker pool: whether the driver
//! broke the ring, how many of its requests are in flight, and the ring's generation.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Condvar, Mutex};
use std::time::Duration;

use vhost_user_backend::{VringRwLock, VringT};

/// The state of one virtqueue.
#[derive(Debug, Default)]
pub struct QueueState {
    /// The driver broke the ring; kicks are ignored until the frontend stops it.
    broken: AtomicBool,
    /// Requests popped and not yet completed. An atomic, not a mutex-guarded count: a request
    /// ending must not cost a futex call (a condvar's notify is one, waiters or not).
    in_flight: AtomicUsize,
    /// Threads in [`stopped`](Self::stopped) waiting for `in_flight` to drop to 0; only then
    /// does a request ending take `idle_lock` and notify `idle`.
    waiters: AtomicUsize,
    /// The mutex `idle` waits with (it guards nothing else).
    idle_lock: Mutex<()>,
    /// Signalled when `in_flight` drops to 0 while someone waits.
    idle: Condvar,
    /// Incremented when the frontend stops the ring; a completion is written only into the
    /// generation of the ring it was popped from.
    generation: AtomicU64,
    /// Held across "same generation? then add_used" and across the increment, so a stop
    /// cannot slip between the check and the write.
    ///
    /// Lock order: `completing` may be held when taking the vring lock (completing); nothing
    /// takes `completing` while holding `idle_lock` or the vring lock.
    completing: Mutex<()>,
}

impl QueueState {
    /// Whether the queue is ignored.
    pub fn is_broken(&self) -> bool {
        self.broken.load(Ordering::Acquire)
    }

    /// Ignores the queue until the frontend stops it.
    pub fn mark_broken(&self) {
        self.broken.store(true, Ordering::Release);
    }

    /// The ring's current generation.
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    /// A request was popped: counts it in flight and returns the generation it belongs to.
    /// Call it while still holding the vring lock the chain was popped under, so a stop either
    /// sees it in flight or finds the ring already not ready.
    pub fn begin(&self) -> u64 {
        self.in_flight.fetch_add(1, Ordering::SeqCst);
        self.generation()
    }

    /// A request popped with [`begin`](Self::begin) is done (completed or dropped).
    pub fn end(&self) {
        let before = self
            .in_flight
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| {
                Some(n.saturating_sub(1))
            })
            .unwrap_or(0);
        // SeqCst on both sides: either a waiter registered before this decrement (and is
        // notified here), or it registers after and reads the count as 0 itself. The lock makes
        // the notify wait until a waiter that read a count above 0 is actually waiting.
        if before <= 1 && self.waiters.load(Ordering::SeqCst) > 0 {
            let _idle = self.idle_lock.lock().unwrap_or_else(|e| e.into_inner());
            self.idle.notify_all();
        }
    }

    /// Returns a served chain to the used ring, if the ring is still the generation the chain
    /// was popped from. Returns whether it was written.
    pub fn complete(
        &self,
        vring: &VringRwLock,
        generation: u64,
        head: u16,
        len: u32,
    ) -> Result<bool, virtio_queue::Error> {
        // Held across `add_used`: `stopped` cannot start a new generation in between.
        let _completing = self.completing.lock().unwrap_or_else(|e| e.into_inner());
        if self.generation() != generation {
            return Ok(false);
        }
        vring.add_used(head, len)?;
        Ok(true)
    }

    /// The frontend stopped the ring (GET_VRING_BASE): waits up to `wait` for the requests in
    /// flight, then starts a new generation and forgets that the old ring was broken. Returns
    /// whether requests were still in flight when it gave up waiting.
    pub fn stopped(&self, wait: Duration) -> bool {
        let timed_out = {
            self.waiters.fetch_add(1, Ordering::SeqCst);
            let guard = self.idle_lock.lock().unwrap_or_else(|e| e.into_inner());
            let (_guard, timeout) = self
                .idle
                .wait_timeout_while(guard, wait, |_| self.in_flight.load(Ordering::SeqCst) > 0)
                .unwrap_or_else(|e| e.into_inner());
            self.waiters.fetch_sub(1, Ordering::SeqCst);
            timeout.timed_out()
        };
        {
            let _completing = self.completing.lock().unwrap_or_else(|e| e.into_inner());
            self.generation.fetch_add(1, Ordering::AcqRel);
        }
        self.broken.store(false, Ordering::Release);
        timed_out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::time::Instant;

    #[test]
    fn stopping_waits_for_requests_in_flight_then_starts_a_new_generation() {
        let q = Arc::new(QueueState::default());
        q.mark_broken();
        let g0 = q.generation();
        assert_eq!(q.begin(), g0);
        let q2 = q.clone();
        let t = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(100));
            q2.end();
        });
        let start = Instant::now();
        assert!(
            !q.stopped(Duration::from_secs(5)),
            "the request finished in time"
        );
        assert!(
            start.elapsed() >= Duration::from_millis(90),
            "it waited for the request"
        );
        t.join().unwrap();
        assert_eq!(q.generation(), g0 + 1);
        assert!(!q.is_broken(), "a stopped ring starts afresh");
    }

    #[test]
    fn requests_ending_on_other_threads_wake_a_waiting_stop() {
        let q = Arc::new(QueueState::default());
        for _ in 0..8 {
            q.begin();
        }
        let ends: Vec<_> = (0..8)
            .map(|_| {
                let q = q.clone();
                std::thread::spawn(move || q.end())
            })
            .collect();
        // The bound is only a safety net: a lost wake-up would show as a timeout.
        assert!(
            !q.stopped(Duration::from_secs(60)),
            "the last end woke the stop"
        );
        for e in ends {
            e.join().unwrap();
        }
        q.end();
        assert!(
            !q.stopped(Duration::from_secs(60)),
            "an extra end does not underflow"
        );
    }

    #[test]
    fn stopping_gives_up_after_the_bound() {
        let q = QueueState::default();
        let g = q.begin();
        let start = Instant::now();
        assert!(q.stopped(Duration::from_millis(50)), "still in flight");
        assert!(start.elapsed() < Duration::from_secs(2));
        assert_ne!(q.generation(), g, "a late completion will be dropped");
    }
}
