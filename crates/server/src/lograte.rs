//! Rate-limited logging: a message that an outsider can trigger at will (failed client
//! authentication, refused handshakes) is logged at most once per interval, with a count
//! of the ones left out, so the log cannot be flooded.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// At most one message per [`RateLimit::EVERY`].
#[derive(Debug, Default)]
pub(crate) struct RateLimit {
    last: Mutex<Option<Instant>>,
    suppressed: AtomicU64,
}

impl RateLimit {
    /// The shortest time between two logged messages.
    pub(crate) const EVERY: Duration = Duration::from_secs(10);

    /// `Some(n)` when a message may be logged now (`n` were left out since the last one);
    /// `None` when this one must be left out.
    pub(crate) fn allow(&self) -> Option<u64> {
        let mut last = self.last.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        match *last {
            Some(t) if now.duration_since(t) < Self::EVERY => {
                self.suppressed.fetch_add(1, Ordering::Relaxed);
                None
            }
            _ => {
                *last = Some(now);
                Some(self.suppressed.swap(0, Ordering::Relaxed))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::RateLimit;

    #[test]
    fn one_message_per_interval_with_a_count_of_the_rest() {
        let r = RateLimit::default();
        assert_eq!(r.allow(), Some(0));
        assert_eq!(r.allow(), None);
        assert_eq!(r.allow(), None);
        *r.last.lock().unwrap() = Some(std::time::Instant::now() - RateLimit::EVERY);
        assert_eq!(r.allow(), Some(2));
    }
}
