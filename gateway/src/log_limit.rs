//! Rate-limited logging: a line that can repeat for every record or every librdkafka retry is
//! logged at most once per interval, with the number held back since the last one.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

/// Logs at most once per interval; counts what it held back.
#[derive(Debug)]
pub struct LogLimiter {
    epoch: Instant,
    last_ms: AtomicU64,
    held: AtomicU64,
}

impl Default for LogLimiter {
    fn default() -> Self {
        Self {
            epoch: Instant::now(),
            last_ms: AtomicU64::new(0),
            held: AtomicU64::new(0),
        }
    }
}

impl LogLimiter {
    const INTERVAL_MS: u64 = 10_000;

    /// `Some(n)` when a line may be logged now (`n` lines were held back since the last one).
    pub fn allow(&self) -> Option<u64> {
        // Offset by one interval so that the very first line always passes.
        let now = self.epoch.elapsed().as_millis() as u64 + Self::INTERVAL_MS;
        let last = self.last_ms.load(Ordering::Relaxed);
        if now.saturating_sub(last) >= Self::INTERVAL_MS
            && self
                .last_ms
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            Some(self.held.swap(0, Ordering::Relaxed))
        } else {
            self.held.fetch_add(1, Ordering::Relaxed);
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_limiter_lets_one_line_through_per_interval() {
        let l = LogLimiter::default();
        assert_eq!(l.allow(), Some(0));
        assert_eq!(l.allow(), None);
        assert_eq!(l.allow(), None);
        assert_eq!(l.held.load(Ordering::Relaxed), 2);
    }
}
