//! Rate limiting for log lines a guest can trigger: a guest that sends a million bad requests
//! must not fill the host's journal.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Lets at most `burst` events through per `period`; counts the ones it suppressed so the next
/// line that gets through can say how many were dropped.
#[derive(Debug)]
pub struct RateLimiter {
    period: Duration,
    burst: u32,
    state: Mutex<Window>,
    suppressed: AtomicU64,
}

#[derive(Debug)]
struct Window {
    start: Option<Instant>,
    count: u32,
}

impl RateLimiter {
    /// A limiter letting `burst` events through per `period`.
    pub const fn new(burst: u32, period: Duration) -> Self {
        RateLimiter {
            period,
            burst,
            state: Mutex::new(Window {
                start: None,
                count: 0,
            }),
            suppressed: AtomicU64::new(0),
        }
    }

    /// Whether an event at `now` may be logged. `Some(n)`: yes, and `n` events were suppressed
    /// since the last one that got through. `None`: suppress it.
    pub fn check_at(&self, now: Instant) -> Option<u64> {
        let mut w = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let expired = w
            .start
            .is_none_or(|s| now.saturating_duration_since(s) >= self.period);
        if expired {
            w.start = Some(now);
            w.count = 0;
        }
        if w.count < self.burst {
            w.count += 1;
            Some(self.suppressed.swap(0, Ordering::Relaxed))
        } else {
            self.suppressed.fetch_add(1, Ordering::Relaxed);
            None
        }
    }

    /// [`RateLimiter::check_at`] now.
    pub fn check(&self) -> Option<u64> {
        self.check_at(Instant::now())
    }
}

/// Logs at `$level` through the static limiter `$limiter` (10 lines per 5 s by default via
/// [`GUEST_LOG`]), appending how many lines were suppressed before it.
#[macro_export]
macro_rules! guest_log {
    ($level:expr, $($arg:tt)+) => {{
        if let Some(dropped) = $crate::ratelimit::GUEST_LOG.check() {
            if dropped > 0 {
                log::log!($level, "{} ({} similar messages suppressed)", format_args!($($arg)+), dropped);
            } else {
                log::log!($level, $($arg)+);
            }
        }
    }};
}

/// The limiter shared by every guest-triggerable log line.
pub static GUEST_LOG: RateLimiter = RateLimiter::new(10, Duration::from_secs(5));

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bursts_then_suppresses_then_reports_the_count() {
        let l = RateLimiter::new(3, Duration::from_secs(1));
        let t0 = Instant::now();
        assert_eq!(l.check_at(t0), Some(0));
        assert_eq!(l.check_at(t0), Some(0));
        assert_eq!(l.check_at(t0), Some(0));
        for _ in 0..5 {
            assert_eq!(l.check_at(t0 + Duration::from_millis(10)), None);
        }
        assert_eq!(l.check_at(t0 + Duration::from_millis(1500)), Some(5));
        assert_eq!(l.check_at(t0 + Duration::from_millis(1500)), Some(0));
    }
}
