//! Wall-clock time in Unix milliseconds: the unit of every deadline on the wire.

use std::time::{SystemTime, UNIX_EPOCH};

/// The simulator's clock (feature `testing`): on the thread that runs a simulation, wall
/// time is virtual, so deadlines, expiry and timeouts follow tokio's paused clock.
#[cfg(feature = "testing")]
pub(crate) mod sim {
    use std::cell::Cell;

    thread_local! {
        static EPOCH: Cell<Option<(tokio::time::Instant, u64)>> = const { Cell::new(None) };
    }

    /// Makes `now_ms` on this thread read `base_ms` plus the virtual time since now.
    pub(crate) fn set(base_ms: u64) {
        EPOCH.with(|e| e.set(Some((tokio::time::Instant::now(), base_ms))));
    }

    /// Back to the wall clock on this thread.
    pub(crate) fn clear() {
        EPOCH.with(|e| e.set(None));
    }

    pub(super) fn now_ms() -> Option<u64> {
        EPOCH
            .with(|e| e.get())
            .map(|(start, base)| base + start.elapsed().as_millis() as u64)
    }
}

/// Now, in Unix milliseconds. Deadlines are wall-clock so they mean the same on every node
/// of a cluster whose clocks are in sync (NTP); a clock before 1970 reads as 0.
pub fn now_ms() -> u64 {
    #[cfg(feature = "testing")]
    if let Some(ms) = sim::now_ms() {
        return ms;
    }
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}
