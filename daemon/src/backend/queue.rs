//! Per-queue state shared between a queue's thread and the worker pool: whether the driver
//! broke the ring, how many of its requests are in flight, and the ring's generation.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Condvar, Mutex};
use std::time::Duration;

use vhost_user_backend::{VringRwLock, VringT};

/// The state of one virtqueue.
#[derive(Debug, Default)]
pub struct QueueState {
    /// The driver broke the ring; kicks are ignored until the frontend stops it.
    broken: AtomicBool,
    /// Requests popped and not yet completed.
    in_flight: Mutex<usize>,
    /// Signalled when `in_flight` drops to 0.
    idle: Condvar,
    /// Incremented when the frontend stops the ring; a completion is written only into the
    /// generation of the ring it was popped from.
    generation: AtomicU64,
    /// Held across "same generation? then add_used" and across the increment, so a stop
    /// cannot slip between the check and the write.
    ///
    /// Lock order: the vring lock may be held when taking `in_flight` (popping); `completing`
    /// may be held when taking the vring lock (completing); nothing takes `completing` while
    /// holding `in_flight` or the vring lock.
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
        *self.in_flight.lock().unwrap_or_else(|e| e.into_inner()) += 1;
        self.generation()
    }

    /// A request popped with [`begin`](Self::begin) is done (completed or dropped).
    pub fn end(&self) {
        let mut n = self.in_flight.lock().unwrap_or_else(|e| e.into_inner());
        *n = n.saturating_sub(1);
        if *n == 0 {
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
            let n = self.in_flight.lock().unwrap_or_else(|e| e.into_inner());
            let (_n, timeout) = self
                .idle
                .wait_timeout_while(n, wait, |n| *n > 0)
                .unwrap_or_else(|e| e.into_inner());
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
    fn stopping_gives_up_after_the_bound() {
        let q = QueueState::default();
        let g = q.begin();
        let start = Instant::now();
        assert!(q.stopped(Duration::from_millis(50)), "still in flight");
        assert!(start.elapsed() < Duration::from_secs(2));
        assert_ne!(q.generation(), g, "a late completion will be dropped");
    }
}
